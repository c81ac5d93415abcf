//! Metrics, admin endpoints and the status page, scraped from a running gateway.

use std::time::Duration;

use strait_tests::etcd::{self, instance_value, Etcd};
use strait_tests::net::{dead_addr, free_addr, free_port, http_get, metric, wait_metrics};
use strait_tests::pb::EchoRequest;
use strait_tests::{raw, Backend, BackendOptions, Gateway};
use tonic::Code;

use crate::fixture::{call_until, client, etcd_config, req};

fn with_admin(config: String, admin: std::net::SocketAddr) -> String {
    format!("{config}\n[admin]\nlisten = \"{admin}\"\n")
}

/// A known mix of calls; the counters equal what was sent, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_what_was_sent() {
    let live = Backend::start(BackendOptions::named("live")).await;
    let dead = dead_addr();
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        r#"
[[listener]]
name = "public"
listen = "{listen}"

[[route]]
listener = "public"
service = "bench.Echo"
upstream = "echo"

[[route]]
listener = "public"
service = "bench.Echo"
method = "ClientStream"
upstream = "dead"

[[upstream]]
name = "echo"
endpoints = [{{ addr = "{}" }}]
breaker = {{ consecutive_failures = 100 }}

[[upstream]]
name = "dead"
endpoints = [{{ addr = "{dead}" }}]
max_attempts = 1
"#,
        live.addr
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&with_admin(text, admin), listen));
    let mut c = client(listen).await;
    for _ in 0..7 {
        c.unary(req(b"ok")).await.expect("ok call");
    }
    for (code, n) in [(Code::NotFound, 3), (Code::Unavailable, 2)] {
        for _ in 0..n {
            let status = c
                .unary(EchoRequest {
                    fail_code: code as i32,
                    fail_message: "mix".into(),
                    ..Default::default()
                })
                .await
                .expect_err("failing call");
            assert_eq!(status.code(), code);
        }
    }
    for _ in 0..4 {
        let status = c
            .client_stream(tokio_stream::iter(vec![req(b"")]))
            .await
            .expect_err("dead upstream");
        assert_eq!(status.code(), Code::Unavailable);
    }
    let response = raw::call(listen, "/nope.Service/Call", &[], raw::grpc_frame(&[]))
        .await
        .unwrap();
    assert_eq!(response.grpc_status().as_deref(), Some("12"));

    // pingora's logging phase, which counts a call, runs a moment after the client has its
    // answer: wait until all 17 calls are counted and none is in flight.
    let text = tokio::task::block_in_place(|| {
        wait_metrics(admin, Duration::from_secs(10), |m| {
            let counted: f64 = m
                .lines()
                .filter(|l| l.starts_with("strait_calls_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            counted == 17.0
                && metric(m, "strait_calls_in_flight", &[("listener", "public")]) == Some(0.0)
        })
    })
    .expect("all 17 calls counted");
    let calls = |route: &str, upstream: &str, code: &str| {
        metric(
            &text,
            "strait_calls_total",
            &[
                ("listener", "public"),
                ("route", route),
                ("upstream", upstream),
                ("code", code),
            ],
        )
    };
    assert_eq!(calls("bench.Echo", "echo", "OK"), Some(7.0), "{text}");
    assert_eq!(calls("bench.Echo", "echo", "NOT_FOUND"), Some(3.0));
    assert_eq!(calls("bench.Echo", "echo", "UNAVAILABLE"), Some(2.0));
    assert_eq!(calls("bench.Echo", "echo", "INTERNAL"), Some(0.0));
    assert_eq!(
        calls("bench.Echo/ClientStream", "dead", "UNAVAILABLE"),
        Some(4.0)
    );
    assert_eq!(calls("-", "-", "UNIMPLEMENTED"), Some(1.0));
    let live_addr = live.addr.to_string();
    let attempts = |upstream: &str, endpoint: &str, outcome: &str| {
        metric(
            &text,
            "strait_upstream_attempts_total",
            &[
                ("upstream", upstream),
                ("endpoint", endpoint),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(
        attempts("echo", &live_addr, "ok"),
        Some(10.0),
        "OK and NOT_FOUND are successes"
    );
    assert_eq!(attempts("echo", &live_addr, "grpc_failure"), Some(2.0));
    assert_eq!(
        attempts("dead", &dead.to_string(), "connect_error"),
        Some(4.0)
    );
    // Per method: every call of bench.Echo/Unary, whatever its code.
    assert_eq!(
        metric(
            &text,
            "strait_call_duration_seconds_count",
            &[
                ("upstream", "echo"),
                ("service", "bench.Echo"),
                ("method", "Unary")
            ]
        ),
        Some(12.0)
    );
    assert_eq!(
        metric(
            &text,
            "strait_calls_total",
            &[
                ("route", "-"),
                ("service", "-"),
                ("method", "-"),
                ("code", "UNIMPLEMENTED")
            ]
        ),
        Some(1.0),
        "an unrouted call counts under service \"-\""
    );
    assert_eq!(
        metric(&text, "strait_calls_in_flight", &[("listener", "public")]),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "strait_config_loads_total", &[("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "strait_endpoints",
            &[("upstream", "echo"), ("state", "usable")]
        ),
        Some(1.0)
    );
    assert!(metric(&text, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
    drop(gateway);
    every_metric_is_documented_and_dashboarded_names_exist(&text);
}

/// `max_methods = 2`: a caller flooding made-up method names (the backend answers
/// UNIMPLEMENTED) first takes no slot: they all count under service and method "other". Real
/// methods answered by the backend then get the two series; a third real one is beyond the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_method_bound_holds_and_made_up_names_take_no_slot() {
    let live = Backend::start(BackendOptions::named("live")).await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        r#"
[[listener]]
name = "public"
listen = "{listen}"

[[route]]
listener = "public"
service = "*"
upstream = "echo"

[[upstream]]
name = "echo"
endpoints = [{{ addr = "{}" }}]

[admin]
listen = "{admin}"
max_methods = 2
"#,
        live.addr
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    // Routed by "*" to the echo backend, which does not know these services.
    for i in 0..20 {
        let path = format!("/made.Up{i}/M");
        let response = raw::call(listen, &path, &[], raw::grpc_frame(b""))
            .await
            .unwrap();
        assert_eq!(response.grpc_status().as_deref(), Some("12"), "{path}");
    }
    let mut c = client(listen).await;
    c.unary(req(b"")).await.unwrap();
    c.unary(req(b"")).await.unwrap();
    c.client_stream(tokio_stream::iter(vec![req(b"")]))
        .await
        .unwrap();
    let mut replies = c
        .server_stream(strait_tests::pb::EchoRequest {
            reply_count: 1,
            ..req(b"")
        })
        .await
        .unwrap()
        .into_inner();
    while replies.message().await.unwrap().is_some() {}
    let calls = |m: &str, service: &str, method: &str, code: &str| {
        metric(
            m,
            "strait_calls_total",
            &[
                ("route", "*"),
                ("service", service),
                ("method", method),
                ("code", code),
            ],
        )
    };
    let text = tokio::task::block_in_place(|| {
        wait_metrics(admin, Duration::from_secs(10), |m| {
            calls(m, "other", "other", "OK") == Some(1.0)
        })
    })
    .unwrap_or_else(|| {
        let (_, text) = http_get(admin, "/metrics");
        let calls: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("strait_calls_total{"))
            .collect();
        panic!("the third real method counted under other: {calls:#?}")
    });
    assert_eq!(
        calls(&text, "other", "other", "UNIMPLEMENTED"),
        Some(20.0),
        "every made-up name under other"
    );
    assert_eq!(calls(&text, "bench.Echo", "Unary", "OK"), Some(2.0));
    assert_eq!(calls(&text, "bench.Echo", "ClientStream", "OK"), Some(1.0));
    let pairs: std::collections::HashSet<String> = text
        .lines()
        .filter(|l| l.starts_with("strait_calls_total{"))
        .filter_map(|l| {
            let service = l.split("service=\"").nth(1)?.split('"').next()?;
            let method = l.split("method=\"").nth(1)?.split('"').next()?;
            Some(format!("{service}/{method}"))
        })
        .collect();
    let expected: std::collections::HashSet<String> =
        ["bench.Echo/Unary", "bench.Echo/ClientStream", "other/other"]
            .map(String::from)
            .into();
    assert_eq!(
        pairs, expected,
        "two real pairs and other, nothing made up, nothing beyond the bound"
    );
}

/// docs/metrics.md names every metric the gateway exports, and the Grafana dashboard uses only
/// documented metrics.
fn every_metric_is_documented_and_dashboarded_names_exist(exported: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let families: Vec<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("strait_"))
        .collect();
    assert!(families.len() >= 10, "{families:?}");
    for name in &families {
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is not documented in docs/metrics.md"
        );
    }
    let dashboard = std::fs::read_to_string(root.join("docs/grafana/strait.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("strait_").map(|_| word) {
                    let family = name.trim_end_matches("_bucket");
                    assert!(
                        docs.contains(&format!("`{family}`")),
                        "dashboard uses undocumented metric {name}"
                    );
                }
            }
        }
    }
}

/// /upstreams and the breaker metrics show a breaker opening, with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_and_metrics_show_a_breaker_opening() {
    let sick = Backend::start(BackendOptions::named("sick")).await;
    let fine = Backend::start(BackendOptions::named("fine")).await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = crate::fixture::config(
        listen,
        &[
            crate::fixture::Ep {
                addr: sick.addr,
                weight: 100,
                region: "eu-west",
            },
            crate::fixture::Ep {
                addr: fine.addr,
                weight: 100,
                region: "eu-west",
            },
        ],
        "",
        "",
    )
    .replace(
        "max_attempts = 3",
        "max_attempts = 3\nbreaker = { consecutive_failures = 2, open_for = \"60s\" }",
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&with_admin(text, admin), listen));
    let mut c = client(listen).await;
    sick.force_status(Some(Code::Unavailable));
    for _ in 0..10 {
        let _ = c.unary(req(b"")).await;
    }
    let (_, json) = tokio::task::block_in_place(|| http_get(admin, "/upstreams"));
    let view: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let endpoints = view["upstreams"][0]["endpoints"].as_array().unwrap();
    let sick_view = endpoints
        .iter()
        .find(|e| e["addr"] == sick.addr.to_string())
        .unwrap();
    assert_eq!(sick_view["breaker_state"], "open", "{json}");
    assert_eq!(
        sick_view["last_transition"]["reason"],
        "consecutive_failures"
    );
    assert_eq!(sick_view["last_transition"]["open_ms"], 60000);
    let fine_view = endpoints
        .iter()
        .find(|e| e["addr"] == fine.addr.to_string())
        .unwrap();
    assert_eq!(fine_view["breaker_state"], "closed");

    let (_, text) = tokio::task::block_in_place(|| http_get(admin, "/metrics"));
    let sick_addr = sick.addr.to_string();
    assert_eq!(
        metric(&text, "strait_breaker_state", &[("endpoint", &sick_addr)]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "strait_breaker_transitions_total",
            &[
                ("endpoint", &sick_addr),
                ("from", "closed"),
                ("to", "open"),
                ("reason", "consecutive_failures")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "strait_endpoints",
            &[("upstream", "echo"), ("state", "open")]
        ),
        Some(1.0)
    );

    let (status, page) = tokio::task::block_in_place(|| http_get(admin, "/"));
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!(
            "<tr class=\"endpoint\" data-addr=\"{sick_addr}\">"
        )),
        "{page}"
    );
    assert!(
        page.contains("class=\"open\">open</td>"),
        "the open endpoint is marked open"
    );
    assert!(page.contains("consecutive_failures"));
    assert!(
        page.contains("http-equiv=\"refresh\""),
        "the page refreshes itself"
    );
    assert!(
        !page.contains("<script") && !page.contains("src=\"http"),
        "no external assets"
    );
    let (status, _) = tokio::task::block_in_place(|| http_get(admin, "/healthz"));
    assert_eq!(status, 200);
    let (status, _) = tokio::task::block_in_place(|| http_get(admin, "/nothing-here"));
    assert_eq!(status, 404);
}

/// /readyz is 503 until the first etcd sync and 200 after; /upstreams follows etcd changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_etcd_and_upstreams_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut member = Etcd::unstarted_on(dir.path(), free_port());
    let backend = Backend::start(BackendOptions::named("b0")).await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = with_admin(etcd_config(listen, &[member.url()], ""), admin);
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let (status, body) = tokio::task::block_in_place(|| http_get(admin, "/readyz"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("waiting for the first etcd sync"), "{body}");

    tokio::task::block_in_place(|| {
        member.start();
        member.wait_ready();
    });
    let mut etcd = etcd::client(&[member.url()]).await;
    etcd.put(
        "/services/echo/b0",
        instance_value(backend.addr, 80, "eu-west", "v2.3.0", &[("env", "prod")]),
        None,
    )
    .await
    .unwrap();
    let mut c = client(listen).await;
    call_until(
        &mut c,
        Duration::from_secs(20),
        "routed through etcd",
        |b| b == "b0",
    )
    .await;
    let (status, _) = tokio::task::block_in_place(|| http_get(admin, "/readyz"));
    assert_eq!(status, 200);

    let (_, json) = tokio::task::block_in_place(|| http_get(admin, "/upstreams"));
    let view: serde_json::Value = serde_json::from_str(&json).unwrap();
    let e = &view["upstreams"][0]["endpoints"][0];
    assert_eq!(e["source"]["kind"], "etcd");
    assert_eq!(e["source"]["key"], "/services/echo/b0");
    assert_eq!(e["weight"], 80);
    assert_eq!(e["version"], "v2.3.0");
    assert_eq!(e["labels"]["env"], "prod");
    assert_eq!(view["upstreams"][0]["discovery"], "etcd");
    assert_eq!(view["upstreams"][0]["staleness_seconds"], 0.0);

    etcd.put(
        "/services/echo/b0",
        instance_value(backend.addr, 30, "eu-west", "v2.3.1", &[("env", "prod")]),
        None,
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, json) = tokio::task::block_in_place(|| http_get(admin, "/upstreams"));
        let view: serde_json::Value = serde_json::from_str(&json).unwrap();
        if view["upstreams"][0]["endpoints"][0]["weight"] == 30 {
            assert_eq!(view["upstreams"][0]["endpoints"][0]["version"], "v2.3.1");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "etcd change never showed: {json}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `strait healthcheck` (the Docker HEALTHCHECK) passes against a running gateway's admin
/// listener and fails, with a reason, when nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_command_follows_the_admin_listener() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let admin = free_addr();
    let text = with_admin(
        crate::fixture::config(
            free_addr(),
            &[crate::fixture::Ep {
                addr: backend.addr,
                weight: 100,
                region: "eu-west",
            }],
            "",
            "",
        ),
        admin,
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, admin));
    let (code, output) = tokio::task::block_in_place(|| {
        strait_tests::gateway::strait_command(&["healthcheck", "--admin", &admin.to_string()])
    });
    assert_eq!((code, output.as_str()), (0, "ok\n"));
    drop(gateway);
    let (code, output) = tokio::task::block_in_place(|| {
        strait_tests::gateway::strait_command(&["healthcheck", "--admin", &admin.to_string()])
    });
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("cannot reach the admin listener"),
        "{output}"
    );
}

/// The status page and `/upstreams` show each route's and upstream's last minute of traffic
/// (calls, share not OK, percentiles, a 60-second chart) and the listeners' connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_last_minute_of_traffic() {
    let live = Backend::start(BackendOptions::named("live")).await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = with_admin(
        crate::fixture::single_backend_config(listen, live.addr),
        admin,
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut c = client(listen).await;
    for _ in 0..20 {
        c.unary(req(b"ok")).await.unwrap();
    }
    for _ in 0..5 {
        let failing = EchoRequest {
            fail_code: Code::NotFound as i32,
            ..Default::default()
        };
        c.unary(failing).await.expect_err("NOT_FOUND");
    }
    let view: serde_json::Value = tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = http_get(admin, "/upstreams");
            let view: serde_json::Value = serde_json::from_str(&body).unwrap();
            if view["routes"][0]["traffic"]["calls"] == 25 || std::time::Instant::now() >= deadline
            {
                return view;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let route = &view["routes"][0];
    assert_eq!(
        (&route["listener"], &route["route"], &route["upstream"]),
        (&"public".into(), &"bench.Echo".into(), &"echo".into())
    );
    let traffic = &route["traffic"];
    assert_eq!(traffic["calls"], 25, "{view}");
    assert_eq!(traffic["errors"], 5);
    assert_eq!(traffic["error_share"], 0.2);
    assert!(traffic["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(traffic["p99_ms"].as_f64().unwrap() >= traffic["p50_ms"].as_f64().unwrap());
    let per_second = traffic["per_second"].as_array().unwrap();
    assert_eq!(per_second.len(), 60);
    assert_eq!(
        per_second.iter().filter_map(|v| v.as_u64()).sum::<u64>(),
        25
    );
    let upstream = &view["upstreams"][0]["traffic"];
    assert_eq!(
        (&upstream["calls"], &upstream["errors"]),
        (&25.into(), &5.into())
    );
    let listener = &view["listeners"][0];
    assert_eq!(
        (&listener["name"], &listener["protocol"]),
        (&"public".into(), &"grpc".into())
    );
    assert!(
        listener["open_connections"].as_i64().unwrap() >= 1,
        "{listener}"
    );

    let (status, page) = tokio::task::block_in_place(|| http_get(admin, "/"));
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"data-route="bench.Echo" data-calls="25" data-errors="5""#),
        "{page}"
    );
    assert!(page.contains(r#"data-upstream="echo" data-calls="25" data-errors="5""#));
    assert!(page.contains("20.0%"), "the share not OK");
    assert!(page.contains(r#"<svg class="chart""#) && page.contains(r#"<rect class="errors""#));
    assert!(page.contains(r#"<tr class="listener" data-listener="public""#));
    assert!(!page.contains("<script"), "no script on the page");
}
