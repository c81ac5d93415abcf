//! Mutual TLS on listeners, client certificates towards upstreams, and certificates re-read on
//! reload without dropping connections.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use strait_tests::net::{free_addr, metric, wait_metrics};
use strait_tests::pb::echo_client::EchoClient;
use strait_tests::tls::{self, Issued};
use strait_tests::{Backend, BackendOptions, Gateway};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::fixture::{req, single_backend_config, tls_listener_config, PingPong};

/// A TLS client trusting `ca_pem`, presenting `identity` if given; one call's outcome.
async fn call(
    listen: SocketAddr,
    ca_pem: &str,
    identity: Option<&Issued>,
) -> Result<String, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    let channel = Channel::from_shared(format!("https://localhost:{}", listen.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    EchoClient::new(channel)
        .unary(req(b"mtls"))
        .await
        .map(|r| r.into_inner().served_by)
        .map_err(|s| format!("{s:?}"))
}

fn wait_for_log(gateway: &Gateway, needle: &str, also: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = gateway
            .logs()
            .into_iter()
            .find(|l| l.contains(needle) && l.to_lowercase().contains(&also.to_lowercase()))
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?} and {also:?}:\n{}",
            gateway.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With `client_ca`, only callers presenting a valid certificate from that CA get in; a missing
/// certificate, one from another CA and an expired one are each refused with a clear reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_valid_certificate() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::generate(dir.path());
    let other = tls::generate_named(dir.path(), "other");
    let good = pki.issue_client("good", "client-a", false);
    let expired = pki.issue_client("expired", "client-b", true);
    let foreign = other.issue_client("foreign", "client-c", false);
    let listen = free_addr();
    let text = tls_listener_config(
        listen,
        backend.addr,
        "cert = \"server.crt\", key = \"server.key\", client_ca = \"ca.crt\"",
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &text, listen));

    assert_eq!(call(listen, &pki.ca_pem, Some(&good)).await, Ok("a".into()));

    // TLS 1.3 sends the server's verdict after the client finished its side of the handshake:
    // the client sees its connection closed; the gateway's log says why.
    let missing = call(listen, &pki.ca_pem, None).await;
    assert!(missing.is_err(), "{missing:?}");
    tokio::task::block_in_place(|| {
        wait_for_log(
            &gateway,
            "TLS handshake failed",
            "peer sent no certificates",
        )
    });

    let refused = call(listen, &pki.ca_pem, Some(&foreign)).await;
    assert!(refused.is_err(), "{refused:?}");
    tokio::task::block_in_place(|| {
        wait_for_log(&gateway, "client certificate refused", "UnknownIssuer")
    });

    let stale = call(listen, &pki.ca_pem, Some(&expired)).await;
    assert!(stale.is_err(), "{stale:?}");
    tokio::task::block_in_place(|| wait_for_log(&gateway, "client certificate refused", "expired"));

    assert_eq!(backend.calls(), 1, "no refused caller reached the backend");
    assert_eq!(
        call(listen, &pki.ca_pem, Some(&good)).await,
        Ok("a".into()),
        "refusals do not disturb other callers"
    );
}

/// A backend that requires client certificates: the gateway presents the configured one, for
/// calls and for health probes; without it the call fails with UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_client_certificate_is_presented() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::generate(dir.path());
    let gateway_identity = pki.issue_client("gateway-client", "strait", false);
    let backend = Backend::start(BackendOptions {
        name: "strict".into(),
        addr: None,
        tls: Some((
            std::fs::read_to_string(&pki.server_cert).unwrap(),
            std::fs::read_to_string(&pki.server_key).unwrap(),
        )),
        client_ca: Some(pki.ca_pem.clone()),
        arrivals_log: None,
    })
    .await;
    let ca = pki.ca_cert.display().to_string();
    for (identity, should_work) in [
        (
            format!(
                ", cert = \"{}\", key = \"{}\"",
                gateway_identity.cert.display(),
                gateway_identity.key.display()
            ),
            true,
        ),
        (String::new(), false),
    ] {
        let listen = free_addr();
        let text = single_backend_config(listen, backend.addr)
        .replace(
            "max_attempts = 3",
            &format!(
                "max_attempts = 1\ntls = {{ ca = \"{ca}\", server_name = \"localhost\"{identity} }}\n\
                 health = {{ interval = \"1s\", timeout = \"1s\" }}"
            ),
        );
        let admin = free_addr();
        let text = format!("{text}\n[admin]\nlisten = \"{admin}\"\n");
        let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
        let mut client = crate::fixture::client(listen).await;
        if should_work {
            // Probes run over the same mutual TLS: they pass, none fails. (The generous probe
            // timeout of a whole second keeps a slow handshake on a busy machine from counting
            // as a failure.)
            let metrics = tokio::task::block_in_place(|| {
                wait_metrics(admin, Duration::from_secs(10), |m| {
                    metric(m, "strait_health_probes_total", &[("result", "ok")])
                        .is_some_and(|ok| ok >= 2.0)
                })
            })
            .expect("two probes passed");
            let failed = metric(
                &metrics,
                "strait_health_probes_total",
                &[("result", "failed")],
            );
            assert_eq!(
                failed.unwrap_or(0.0),
                0.0,
                "probes present the client certificate"
            );
            let reply = client
                .unary(req(b"mtls upstream"))
                .await
                .expect("call with client cert");
            assert_eq!(reply.into_inner().served_by, "strict");
        } else {
            let status = client.unary(req(b"no cert")).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        }
        drop(gateway);
    }
    assert_eq!(backend.calls(), 1);
}

fn replace_files(from: &Issued, cert: &Path, key: &Path) {
    // Write then rename, as certificate tooling does: a reader never sees half a file.
    let tmp_cert = cert.with_extension("new");
    let tmp_key = key.with_extension("newkey");
    std::fs::write(&tmp_cert, &from.cert_pem).unwrap();
    std::fs::write(&tmp_key, &from.key_pem).unwrap();
    std::fs::rename(tmp_cert, cert).unwrap();
    std::fs::rename(tmp_key, key).unwrap();
}

/// Rotating the listener certificate: after the files change and SIGHUP, new connections get
/// the new certificate; a connection opened before keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_certificate_is_reread_on_reload_without_dropping_connections() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let dir = tempfile::tempdir().unwrap();
    let old_ca = tls::generate(dir.path());
    let new_ca = tls::generate_named(dir.path(), "next");
    let rotated = new_ca.issue_server("rotated");
    let listen = free_addr();
    let text = tls_listener_config(
        listen,
        backend.addr,
        "cert = \"server.crt\", key = \"server.key\"",
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &text, listen));

    let channel = Channel::from_shared(format!("https://localhost:{}", listen.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&old_ca.ca_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut established = EchoClient::new(channel);
    established
        .unary(req(b"before"))
        .await
        .expect("old certificate works");
    // A stream open across the rotation runs to completion.
    let mut stream = PingPong::on(established.clone()).await;
    assert_eq!(stream.ping().await, "a");

    replace_files(&rotated, &old_ca.server_cert, &old_ca.server_key);
    gateway.signal("HUP");
    tokio::task::block_in_place(|| {
        wait_for_log(&gateway, "reloaded", "certificates re-read: public")
    });

    assert_eq!(
        call(listen, &new_ca.ca_pem, None).await,
        Ok("a".into()),
        "new handshakes get the new certificate"
    );
    let stale = call(listen, &old_ca.ca_pem, None).await.unwrap_err();
    assert!(
        stale.contains("UnknownIssuer"),
        "the old CA no longer verifies: {stale}"
    );
    for i in 0..3 {
        established
            .unary(req(format!("after {i}").as_bytes()))
            .await
            .expect("the connection opened before the rotation keeps working");
        assert_eq!(stream.ping().await, "a", "the stream outlives the rotation");
    }
    stream.finish().await;
}
