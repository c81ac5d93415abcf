//! The status page as a browser renders it: headless Debian Chromium loads the admin page while
//! calls flow, and the rendered DOM must show the traffic figures, the chart and the listeners;
//! a screenshot is taken too. A missing Chromium fails the test (`.ci/install-deps` installs it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strait_tests::net::{free_addr, http_get};
use strait_tests::pb::EchoRequest;
use strait_tests::{Backend, BackendOptions, Gateway};
use tonic::Code;

use crate::fixture::{client, req, single_backend_config};

fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("chromium not found: `bash .ci/install-deps` installs Debian's chromium");
}

/// Runs headless Chromium on `url` with `args`, bounded in time; returns its stdout.
pub(crate) fn headless(url: &str, args: &[&str], profile: &Path) -> String {
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url);
    let output = strait_tests::net::run_bounded(command, Duration::from_secs(60))
        .expect("chromium ran and exited within 60 s");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The first attribute `name` of the element whose opening tag contains `marker`.
fn attribute(dom: &str, marker: &str, name: &str) -> Option<String> {
    let start = dom.find(marker)?;
    let tag = &dom[start..start + dom[start..].find('>')?];
    let value = tag.split(&format!("{name}=\"")).nth(1)?;
    Some(value.split('"').next()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_status_page_shows_the_traffic() {
    let live = Backend::start(BackendOptions::named("live")).await;
    let (listen, admin): (SocketAddr, SocketAddr) = (free_addr(), free_addr());
    let text = format!(
        "{}\n[admin]\nlisten = \"{admin}\"\n",
        single_backend_config(listen, live.addr)
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut c = client(listen).await;
    for _ in 0..30 {
        c.unary(req(b"ok")).await.unwrap();
    }
    for _ in 0..10 {
        let failing = EchoRequest {
            fail_code: Code::NotFound as i32,
            ..Default::default()
        };
        c.unary(failing).await.expect_err("NOT_FOUND");
    }
    // Calls go on while the browser loads the page (bounded: at most 2,000, stopped after).
    let flowing = Arc::new(AtomicBool::new(true));
    let traffic = tokio::spawn({
        let flowing = flowing.clone();
        let mut c = c.clone();
        async move {
            for _ in 0..2_000 {
                if !flowing.load(Ordering::Relaxed) {
                    break;
                }
                let _ = c.unary(req(b"flow")).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // The counts are in once pingora's logging phase has run for the 40 calls.
    tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let errors = || {
            let view: serde_json::Value =
                serde_json::from_str(&http_get(admin, "/upstreams").1).unwrap();
            view["routes"][0]["traffic"]["errors"].as_u64()
        };
        while errors() != Some(10) {
            assert!(std::time::Instant::now() < deadline, "calls never counted");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let url = format!("http://{admin}/");
    let profile = gateway.dir.path().join("chromium-profile");
    let dom = tokio::task::block_in_place(|| headless(&url, &["--dump-dom"], &profile));
    let screenshot = gateway.dir.path().join("status-page.png");
    tokio::task::block_in_place(|| {
        headless(
            &url,
            &[
                &format!("--screenshot={}", screenshot.display()),
                "--window-size=1280,900",
            ],
            &profile,
        )
    });
    flowing.store(false, Ordering::Relaxed);
    traffic.await.unwrap();

    assert!(dom.contains("<title>Strait status</title>"), "{dom}");
    let route = r#"<tr class="route" data-listener="public" data-route="bench.Echo""#;
    let calls: u64 = attribute(&dom, route, "data-calls")
        .expect("the route's row")
        .parse()
        .unwrap();
    let errors: u64 = attribute(&dom, route, "data-errors")
        .unwrap()
        .parse()
        .unwrap();
    assert!(calls >= 40, "{calls} calls shown");
    assert_eq!(errors, 10);
    let row = &dom[dom.find(route).unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("<svg class=\"chart\""), "{row}");
    assert!(row.contains("<rect class=\"calls\"") && row.contains("<rect class=\"errors\""));
    assert!(row.contains(" ms</td>"), "p50 and p99 in ms: {row}");
    assert!(row.contains('%'), "the share not OK: {row}");
    assert!(dom.contains(r#"<tr class="listener" data-listener="public""#));
    assert!(dom.contains(r#"data-upstream="echo""#));
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "{} bytes",
        png.len()
    );
    if let Some(keep) = std::env::var_os("STRAIT_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }
}
