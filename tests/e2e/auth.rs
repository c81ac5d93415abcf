//! Who may call (issue #33): JWTs checked against a JWKS file and against one served over HTTPS
//! (rotation, an endpoint that is down or answers garbage), API keys, client certificates on a
//! TLS listener, denials that never reach a backend, identity headers a caller cannot spoof,
//! and the admin API behind its token. Real gateway, real tonic backends and clients, tokens
//! signed here; gRPC-Web and JSON callers are in `web.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use strait_tests::jwt::{self, JwksAnswer, JwksServer, SigningKey};
use strait_tests::net::{free_addr, http_get, http_request_with, metric, wait_metrics};
use strait_tests::pb::echo_client::EchoClient;
use strait_tests::tls::{self, Issued};
use strait_tests::{Backend, BackendOptions, Gateway};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};

use crate::fixture::{client, req, single_backend_config};

/// A unary call carrying `metadata`; the reply's echoed headers, or the status.
async fn call(
    client: &mut EchoClient<Channel>,
    metadata: &[(&str, &str)],
) -> Result<tonic::metadata::MetadataMap, tonic::Status> {
    let mut request = Request::new(req(b"auth"));
    for (name, value) in metadata {
        request.metadata_mut().insert(
            tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    client.unary(request).await.map(|r| r.metadata().clone())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[track_caller]
fn refused(result: Result<tonic::metadata::MetadataMap, tonic::Status>, code: Code, text: &str) {
    match result {
        Ok(_) => panic!("accepted; expected {code:?} ({text})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(text), "{status:?} lacks {text:?}");
        }
    }
}

/// A gateway with one h2c listener whose bench.Echo route has `route_auth`, the `[[auth]]`
/// sections in `auth`, and an admin listener; `files` are written beside the config.
fn start(
    backend: SocketAddr,
    route_auth: &str,
    auth: &str,
    files: &[(&str, &[u8])],
) -> (Gateway, SocketAddr, SocketAddr) {
    let listen = free_addr();
    let admin = free_addr();
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let text = single_backend_config(listen, backend).replace(
        "upstream = \"echo\"\n",
        &format!("upstream = \"echo\"\n{route_auth}\n"),
    ) + &format!("\n{auth}\n[admin]\nlisten = \"{admin}\"\n");
    let gateway = Gateway::start_in(dir, &text, listen);
    (gateway, listen, admin)
}

fn denied(admin: SocketAddr, reason: &str) -> Option<f64> {
    metric(
        &http_get(admin, "/metrics").1,
        "strait_auth_denied_total",
        &[("route", "bench.Echo"), ("reason", reason)],
    )
}

/// A JWT route: a caller without a token, with an expired one, one for another audience, an
/// unsigned one, an oversized one, or one lacking the required scope is refused (16 or 7) and
/// never reaches the backend; an accepted caller's `sub` reaches it as a header the caller
/// could not forge, and its token does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_callers_are_checked_before_any_backend_sees_them() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let key = SigningKey::es256("k1");
    let jwks = jwt::jwks(&[&key]);
    let (_gateway, listen, admin) = tokio::task::block_in_place(|| {
        start(
            backend.addr,
            "auth = [\"users\"]\nrequire_claims = { scope = \"cart:write\" }",
            &format!(
                "[[auth]]\nname = \"users\"\n[auth.jwt]\nissuer = \"{}\"\naudiences = [\"strait\"]\n\
                 jwks_file = \"jwks.json\"\nclaim_headers = {{ sub = \"x-echo-user\" }}\n",
                jwt::ISSUER
            ),
            &[("jwks.json", jwks.as_bytes())],
        )
    });
    let mut c = client(listen).await;
    let scoped = json!({"scope": "cart:read cart:write"});

    refused(
        call(&mut c, &[]).await,
        Code::Unauthenticated,
        "requires a credential",
    );
    let expired = key.sign(&jwt::claims("alice", -120, scoped.clone()));
    refused(
        call(&mut c, &[("authorization", &bearer(&expired))]).await,
        Code::Unauthenticated,
        "token expired",
    );
    let mut other_audience = jwt::claims("alice", 600, scoped.clone());
    other_audience["aud"] = json!("billing");
    let token = key.sign(&other_audience);
    refused(
        call(&mut c, &[("authorization", &bearer(&token))]).await,
        Code::Unauthenticated,
        "another audience",
    );
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&jwt::claims("alice", 600, scoped.clone()))
    );
    refused(
        call(&mut c, &[("authorization", &bearer(&unsigned))]).await,
        Code::Unauthenticated,
        "malformed",
    );
    let oversized = format!("{}.{}.x", "e".repeat(9000), "e".repeat(10));
    refused(
        call(&mut c, &[("authorization", &bearer(&oversized))]).await,
        Code::Unauthenticated,
        "too large",
    );
    let unscoped = key.sign(&jwt::claims("alice", 600, json!({"scope": "cart:read"})));
    refused(
        call(&mut c, &[("authorization", &bearer(&unscoped))]).await,
        Code::PermissionDenied,
        "requires the claim \"scope\"",
    );
    assert_eq!(backend.calls(), 0, "no refused call reached the backend");

    let good = key.sign(&jwt::claims("alice", 600, scoped));
    let echoed = call(
        &mut c,
        &[
            ("authorization", &bearer(&good)),
            ("x-echo-user", "mallory"),
            ("x-echo-seen", "authorization"),
        ],
    )
    .await
    .expect("a good token is accepted");
    let users: Vec<_> = echoed.get_all("x-echo-user").iter().collect();
    assert_eq!(
        users,
        ["alice"],
        "the claim header replaced the caller's own"
    );
    assert!(
        echoed.get("x-seen-authorization").is_none(),
        "the token is not sent upstream"
    );
    // The same token again is answered from the verified-token cache: still accepted.
    call(&mut c, &[("authorization", &bearer(&good))])
        .await
        .expect("a reused token");
    assert_eq!(backend.calls(), 2);

    let counts = tokio::task::block_in_place(|| {
        wait_metrics(admin, Duration::from_secs(5), |text| {
            metric(
                text,
                "strait_auth_denied_total",
                &[("route", "bench.Echo"), ("reason", "invalid")],
            ) == Some(3.0)
        })
    });
    assert!(counts.is_some(), "three invalid tokens counted");
    tokio::task::block_in_place(|| {
        assert_eq!(denied(admin, "missing"), Some(1.0));
        assert_eq!(denied(admin, "expired"), Some(1.0));
        assert_eq!(denied(admin, "forbidden"), Some(1.0));
    });
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
async fn within<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn jwks_url_auth(server: &JwksServer) -> String {
    format!(
        "[[auth]]\nname = \"users\"\n[auth.jwt]\nissuer = \"{}\"\naudiences = [\"strait\"]\n\
         jwks_url = \"{}\"\njwks_ca = \"ca.crt\"\njwks_timeout = \"2s\"\n",
        jwt::ISSUER,
        server.url()
    )
}

/// A JWKS served over HTTPS: the gateway is not ready and refuses with UNAVAILABLE until its
/// first good fetch, then follows a key rotation on the first token naming the new key, after
/// which a token of the removed key is refused even though it was verified before; made-up
/// `kid`s do not make it fetch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_fetched_over_https_and_follows_a_rotation() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::generate(dir.path());
    let server = JwksServer::start(&pki, JwksAnswer::Status(503)).await;
    let ca = std::fs::read(&pki.ca_cert).unwrap();
    let (_gateway, listen, admin) = tokio::task::block_in_place(|| {
        start(
            backend.addr,
            "auth = [\"users\"]",
            &jwks_url_auth(&server),
            &[("ca.crt", &ca)],
        )
    });
    let (a, b) = (SigningKey::es256("a"), SigningKey::es256("b"));
    let token_a = a.sign(&jwt::claims("alice", 600, json!({})));
    let token_b = b.sign(&jwt::claims("bob", 600, json!({})));
    let mut c = client(listen).await;

    let (status, body) = tokio::task::block_in_place(|| http_get(admin, "/readyz"));
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("waiting for the first JWKS of auth provider \"users\""),
        "{body}"
    );
    refused(
        call(&mut c, &[("authorization", &bearer(&token_a))]).await,
        Code::Unavailable,
        "no keys",
    );

    server.answer(JwksAnswer::Document(jwt::jwks(&[&a])));
    let ready = within(Duration::from_secs(15), || async {
        let (status, _) = tokio::task::block_in_place(|| http_get(admin, "/readyz"));
        (status == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "ready once the JWKS endpoint answers");
    call(&mut c, &[("authorization", &bearer(&token_a))])
        .await
        .expect("a token of the fetched key");

    // Rotation: the endpoint now publishes only key b.
    server.answer(JwksAnswer::Document(jwt::jwks(&[&b])));
    let fetched_before = server.requests();
    let rotated = within(Duration::from_secs(10), || {
        let mut c = c.clone();
        let token = token_b.clone();
        async move {
            call(&mut c, &[("authorization", &bearer(&token))])
                .await
                .ok()
        }
    })
    .await;
    assert!(
        rotated.is_some(),
        "a token of the new key is accepted after one early refresh"
    );
    assert_eq!(server.requests(), fetched_before + 1, "one early refresh");
    refused(
        call(&mut c, &[("authorization", &bearer(&token_a))]).await,
        Code::Unauthenticated,
        "no known key",
    );

    // Made-up kids within the next 30 s fetch nothing more.
    let fetched = server.requests();
    for i in 0..20 {
        let forged = a.sign_as(&format!("made-up-{i}"), &jwt::claims("eve", 600, json!({})));
        refused(
            call(&mut c, &[("authorization", &bearer(&forged))]).await,
            Code::Unauthenticated,
            "no known key",
        );
    }
    call(&mut c, &[("authorization", &bearer(&token_b))])
        .await
        .expect("the gateway still serves");
    let more = within(Duration::from_millis(500), || async {
        (server.requests() > fetched).then_some(())
    })
    .await;
    assert!(
        more.is_none(),
        "{} fetches after made-up kids",
        server.requests() - fetched
    );
    let text = tokio::task::block_in_place(|| http_get(admin, "/metrics").1);
    assert_eq!(
        metric(&text, "strait_jwks_keys", &[("provider", "users")]),
        Some(1.0)
    );
    assert!(metric(
        &text,
        "strait_jwks_fetches_total",
        &[("provider", "users"), ("result", "error")]
    )
    .is_some_and(|n| n >= 1.0));
    assert_eq!(
        metric(
            &text,
            "strait_jwks_fetches_total",
            &[("provider", "users"), ("result", "ok")]
        ),
        Some(2.0)
    );
}

/// A JWKS endpoint that starts answering garbage, or stops answering at all: the fetch fails
/// (at `jwks_timeout` for the silent one), is counted, and the last good keys stay in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_keys_stay_when_the_jwks_endpoint_fails() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::generate(dir.path());
    let a = SigningKey::es256("a");
    let ca = std::fs::read(&pki.ca_cert).unwrap();
    for failure in [JwksAnswer::Garbage, JwksAnswer::Hang] {
        let server = JwksServer::start(&pki, JwksAnswer::Document(jwt::jwks(&[&a]))).await;
        let (_gateway, listen, admin) = tokio::task::block_in_place(|| {
            start(
                backend.addr,
                "auth = [\"users\"]",
                &jwks_url_auth(&server),
                &[("ca.crt", &ca)],
            )
        });
        let mut c = client(listen).await;
        let token = a.sign(&jwt::claims("alice", 600, json!({})));
        let first = within(Duration::from_secs(10), || {
            let mut c = c.clone();
            let token = token.clone();
            async move {
                call(&mut c, &[("authorization", &bearer(&token))])
                    .await
                    .ok()
            }
        })
        .await;
        assert!(first.is_some(), "the first fetch gives the keys");

        server.answer(failure.clone());
        // An unknown kid asks for an early refresh: it fails.
        let forged = a.sign_as("rotated", &jwt::claims("alice", 600, json!({})));
        refused(
            call(&mut c, &[("authorization", &bearer(&forged))]).await,
            Code::Unauthenticated,
            "no known key",
        );
        let failed = tokio::task::block_in_place(|| {
            wait_metrics(admin, Duration::from_secs(10), |text| {
                metric(
                    text,
                    "strait_jwks_fetches_total",
                    &[("provider", "users"), ("result", "error")],
                )
                .is_some_and(|n| n >= 1.0)
            })
        });
        assert!(
            failed.is_some(),
            "the failed fetch ({failure:?}) is counted"
        );
        call(&mut c, &[("authorization", &bearer(&token))])
            .await
            .expect("the last good keys stay");
        let (status, body) = tokio::task::block_in_place(|| http_get(admin, "/readyz"));
        assert_eq!(status, 200, "keys held: still ready ({body})");
    }
}

/// A token far beyond any bound: 1 MiB of `authorization` sent as raw HEADERS and CONTINUATION
/// frames (a well-behaved client library refuses to send it). The gateway refuses it without
/// buffering it whole or reaching the backend, and serves the next caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_token_is_refused_and_harms_no_one() {
    use strait_tests::attack::{self, CONTINUATION, END_HEADERS, END_STREAM, HEADERS, RST_STREAM};
    use tokio::io::AsyncWriteExt;

    let backend = Backend::start(BackendOptions::named("a")).await;
    let key = SigningKey::es256("k1");
    let jwks = jwt::jwks(&[&key]);
    let (_gateway, listen, _admin) = tokio::task::block_in_place(|| {
        start(
            backend.addr,
            "auth = [\"users\"]",
            &format!(
                "[[auth]]\nname = \"users\"\n[auth.jwt]\nissuer = \"{}\"\njwks_file = \"jwks.json\"\n",
                jwt::ISSUER
            ),
            &[("jwks.json", jwks.as_bytes())],
        )
    });
    let huge = format!("Bearer {}", "a".repeat(1024 * 1024));
    let block = attack::request_block("/bench.Echo/Unary", &[(b"authorization", huge.as_bytes())]);
    let mut s = attack::open(listen).await.expect("connect");
    let pieces: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    let last = pieces.len() - 1;
    for (i, piece) in pieces.iter().enumerate() {
        let (kind, flags) = match i {
            0 => (HEADERS, END_STREAM),
            _ => (CONTINUATION, 0),
        };
        let flags = if i == last {
            flags | END_HEADERS
        } else {
            flags
        };
        // The gateway may close the connection part way through: that is a refusal too.
        if s.write_all(&attack::frame(kind, flags, 1, piece))
            .await
            .is_err()
        {
            break;
        }
    }
    let (frames, closed) = attack::read_frames(&mut s, Duration::from_secs(5)).await;
    let refused_stream = frames.iter().any(|f| f.0 == RST_STREAM && f.2 == 1)
        || frames.iter().any(|f| f.0 == HEADERS && f.2 == 1);
    assert!(
        closed || refused_stream || attack::goaway_code(&frames).is_some(),
        "the 1 MiB header block was answered: {:?}",
        frames.iter().map(|f| (f.0, f.2)).collect::<Vec<_>>()
    );
    let good = key.sign(&jwt::claims("alice", 600, json!({})));
    let mut fresh = client(listen).await;
    call(&mut fresh, &[("authorization", &bearer(&good))])
        .await
        .expect("the next caller is served");
    assert_eq!(
        backend.calls(),
        1,
        "the huge token never reached the backend"
    );
}

/// `[admin.tls]` with `client_ca`: only an operator's certificate gets a handshake, and the
/// token is still asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_can_require_a_client_certificate() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::generate(dir.path());
    let operator = pki.issue_client("operator", "ops", false);
    std::fs::write(dir.path().join("admin-token"), "t0ken").unwrap();
    let listen = free_addr();
    let admin = free_addr();
    let text = single_backend_config(listen, backend.addr)
        + &format!(
            "\n[admin]\nlisten = \"{admin}\"\ntoken_file = \"admin-token\"\n\
             tls = {{ cert = \"server.crt\", key = \"server.key\", client_ca = \"ca.crt\" }}\n"
        );
    let _gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &text, listen));
    let curl = |args: &[&str]| -> (bool, String) {
        let mut command = std::process::Command::new("curl");
        command
            .args(["-s", "-S", "--max-time", "10", "--cacert"])
            .arg(&pki.ca_cert)
            .args(args)
            .arg(format!("https://localhost:{}/metrics", admin.port()));
        let out = strait_tests::net::run_bounded(command, Duration::from_secs(20))
            .expect("curl ran (`bash .ci/install-deps` installs it)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let cert = operator.cert.display().to_string();
    let key = operator.key.display().to_string();
    let (ok, _) = curl(&["-H", "authorization: Bearer t0ken"]);
    assert!(!ok, "no client certificate: no handshake");
    let (ok, body) = curl(&["--cert", &cert, "--key", &key, "-w", "%{http_code}"]);
    assert!(
        ok && body.ends_with("401"),
        "a certificate without the token: {body}"
    );
    let (ok, body) = curl(&[
        "--cert",
        &cert,
        "--key",
        &key,
        "-H",
        "authorization: Bearer t0ken",
    ]);
    assert!(ok && body.contains("# HELP strait_"), "{body}");
}

/// `channel` to a TLS listener trusting `ca_pem`, presenting `identity`.
async fn tls_client(listen: SocketAddr, ca_pem: &str, identity: &Issued) -> EchoClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    let channel = Channel::from_shared(format!("https://localhost:{}", listen.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("TLS connect");
    EchoClient::new(channel)
}

/// On a TLS listener with `client_ca`: one method takes callers by their certificate's SPIFFE
/// ID (and tells the backend who they are with XFCC, replacing any the caller sent), one takes
/// JWTs, the rest of the service takes API keys; the identity goes nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_and_api_keys_name_the_caller() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::generate(dir.path());
    let cart = pki.issue_client_uri("cart", "spiffe://strait.test/ns/shop/sa/cart", "cart.shop");
    let billing = pki.issue_client_uri(
        "billing",
        "spiffe://strait.test/ns/billing/sa/x",
        "billing.x",
    );
    std::fs::write(
        dir.path().join("keys.txt"),
        jwt::api_key_line("ci", "key-ci"),
    )
    .unwrap();
    let signer = SigningKey::es256("k1");
    std::fs::write(dir.path().join("jwks.json"), jwt::jwks(&[&signer])).unwrap();
    let issuer = jwt::ISSUER;
    let listen = free_addr();
    let backend_addr = backend.addr;
    let text = format!(
        r#"
[[listener]]
name = "public"
listen = "{listen}"
tls = {{ cert = "server.crt", key = "server.key", client_ca = "ca.crt" }}

[[route]]
listener = "public"
service = "bench.Echo"
method = "Unary"
upstream = "echo"
auth = ["mesh"]

[[route]]
listener = "public"
service = "bench.Echo"
method = "ClientStream"
upstream = "echo"
auth = ["users"]

[[route]]
listener = "public"
service = "bench.Echo"
upstream = "echo"
auth = ["keys"]

[[upstream]]
name = "echo"
endpoints = [{{ addr = "{backend_addr}" }}]

[[auth]]
name = "mesh"
[auth.mtls]
allowed_sans = ["spiffe://strait.test/ns/shop/*"]
forward_client_cert = true

[[auth]]
name = "keys"
[auth.api_keys]
keys_file = "keys.txt"

[[auth]]
name = "users"
[auth.jwt]
issuer = "{issuer}"
jwks_file = "jwks.json"
claim_headers = {{ sub = "x-user-id" }}
"#
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &text, listen));
    let mut as_cart = tls_client(listen, &pki.ca_pem, &cart).await;
    let echoed = call(
        &mut as_cart,
        &[
            ("x-echo-seen", "x-forwarded-client-cert"),
            ("x-forwarded-client-cert", "URI=spiffe://forged"),
        ],
    )
    .await
    .expect("the shop's certificate is allowed");
    let xfcc: Vec<_> = echoed
        .get_all("x-seen-x-forwarded-client-cert")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(xfcc.len(), 1, "{xfcc:?}");
    assert!(
        xfcc[0].contains("URI=spiffe://strait.test/ns/shop/sa/cart") && xfcc[0].contains("Hash="),
        "{xfcc:?}"
    );
    assert!(!xfcc[0].contains("forged"));

    let mut as_billing = tls_client(listen, &pki.ca_pem, &billing).await;
    refused(
        call(&mut as_billing, &[]).await,
        Code::PermissionDenied,
        "not allowed",
    );

    // The rest of the service takes API keys (a certificate is not one).
    let stream = |mut c: EchoClient<Channel>, key: Option<&'static str>| async move {
        let mut request = Request::new(strait_tests::pb::EchoRequest {
            reply_count: 1,
            ..req(b"s")
        });
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("x-api-key", key.parse().unwrap());
        }
        match c.server_stream(request).await {
            Ok(response) => {
                let mut replies = response.into_inner();
                let mut n = 0;
                while let Some(reply) = replies.message().await.transpose() {
                    reply.map_err(|s| s.code())?;
                    n += 1;
                }
                Ok(n)
            }
            Err(status) => Err(status.code()),
        }
    };
    assert_eq!(stream(as_cart.clone(), Some("key-ci")).await, Ok(1));
    assert_eq!(
        stream(as_cart.clone(), None).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        stream(as_cart.clone(), Some("key-other")).await,
        Err(Code::Unauthenticated)
    );

    // A JWT over TLS: the token decides, whichever certificate carried it.
    let upload = |mut c: EchoClient<Channel>, token: Option<String>| async move {
        let mut request = Request::new(tokio_stream::iter(vec![req(b"u")]));
        request
            .metadata_mut()
            .insert("x-echo-seen", "x-user-id".parse().unwrap());
        request
            .metadata_mut()
            .insert("x-user-id", "forged".parse().unwrap());
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", bearer(&token).parse().unwrap());
        }
        c.client_stream(request)
            .await
            .map(|r| r.metadata().get("x-seen-x-user-id").cloned())
    };
    let token = signer.sign(&jwt::claims("alice", 600, json!({})));
    let seen = upload(as_billing.clone(), Some(token))
        .await
        .expect("a good token is accepted over TLS");
    assert_eq!(
        seen.unwrap(),
        "alice",
        "the claim header replaced the forged one"
    );
    refused(
        upload(as_billing, None).await.map(|_| Default::default()),
        Code::Unauthenticated,
        "",
    );
    assert_eq!(backend.calls(), 3, "refused calls reached no backend");
}

/// `[admin] token_file`: every endpoint but the probes wants the token; a reload re-reads the
/// token file and the keys files; many reload requests at once share reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_and_reloads_reread_secrets() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let (gateway, listen, admin) = tokio::task::block_in_place(|| {
        start(
            backend.addr,
            "auth = [\"keys\"]",
            "[[auth]]\nname = \"keys\"\n[auth.api_keys]\nkeys_file = \"keys.txt\"\n",
            &[
                ("keys.txt", jwt::api_key_line("ci", "one").as_bytes()),
                ("admin-token", b"first-token\n"),
            ],
        )
    });
    // The config the helper wrote has no token yet: add it (a restart-free change).
    let config = std::fs::read_to_string(&gateway.config_path).unwrap();
    let with_token = config.replace("[admin]\n", "[admin]\ntoken_file = \"admin-token\"\n");
    gateway.write_config(&with_token);
    let (status, body) =
        tokio::task::block_in_place(|| http_request_with(admin, "POST", "/reload", ""));
    assert_eq!(status, 200, "adding a token is a reload: {body}");

    let get = |path: &str, token: Option<&str>| {
        let extra = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        tokio::task::block_in_place(|| http_request_with(admin, "GET", path, &extra))
    };
    for path in ["/metrics", "/upstreams", "/"] {
        assert_eq!(get(path, None).0, 401, "{path} without the token");
        assert_eq!(get(path, Some("wrong")).0, 401, "{path} with a wrong token");
        assert_eq!(
            get(path, Some("first-token")).0,
            200,
            "{path} with the token"
        );
    }
    assert_eq!(get("/healthz", None).0, 200);
    assert_eq!(get("/readyz", None).0, 200);
    let post = |token: &str| {
        tokio::task::block_in_place(|| {
            http_request_with(
                admin,
                "POST",
                "/reload",
                &format!("Authorization: Bearer {token}\r\n"),
            )
        })
    };
    assert_eq!(post("wrong").0, 401);

    let mut c = client(listen).await;
    call(&mut c, &[("x-api-key", "one")])
        .await
        .expect("the first key");
    // New secrets on disk, then one reload: both follow.
    let dir = gateway.config_path.parent().unwrap().to_path_buf();
    std::fs::write(dir.join("keys.txt"), jwt::api_key_line("ci", "two")).unwrap();
    std::fs::write(dir.join("admin-token"), "second-token").unwrap();
    let (status, body) = post("first-token");
    assert_eq!(status, 200, "{body}");
    refused(
        call(&mut c, &[("x-api-key", "one")]).await,
        Code::Unauthenticated,
        "unknown API key",
    );
    call(&mut c, &[("x-api-key", "two")])
        .await
        .expect("the new key");
    assert_eq!(get("/metrics", Some("first-token")).0, 401);
    assert_eq!(get("/metrics", Some("second-token")).0, 200);

    // Thirty requests at once: every one answered, by fewer reloads.
    let before = gateway.count_logs("reloaded:");
    let answers: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..30)
            .map(|_| {
                s.spawn(|| {
                    http_request_with(
                        admin,
                        "POST",
                        "/reload",
                        "Authorization: Bearer second-token\r\n",
                    )
                    .0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    let reloads = gateway.count_logs("reloaded:") - before;
    assert!(
        (1..30).contains(&reloads),
        "{reloads} reloads for 30 requests"
    );
}

/// A Rego policy and an ext_authz service on one route: the policy sees the principal and the
/// metadata, the service (a real gRPC server of Envoy's API) is asked only about calls the
/// policy allowed, its headers reach the backend, its denials and its silence deny; a service
/// with `failure_mode_allow` that cannot be reached lets calls through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rego_policies_and_ext_authz_decide_who_may_call() {
    use strait_tests::ext_authz::AuthzServer;
    let backend = Backend::start(BackendOptions::named("a")).await;
    let authz = AuthzServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.txt"),
        jwt::api_key_line("ci", "key-ci") + &jwt::api_key_line("other", "key-other"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policy.rego"),
        "package strait\n\nallow if {\n    input.principal.subject == \"ci\"\n    \
         input.metadata[\"x-tenant\"] == \"t1\"\n    input.method == \"Unary\"\n}\n",
    )
    .unwrap();
    let listen = free_addr();
    let admin = free_addr();
    let dead = strait_tests::net::dead_addr();
    let text = format!(
        r#"
[[listener]]
name = "public"
listen = "{listen}"

[[route]]
listener = "public"
service = "bench.Echo"
method = "Unary"
upstream = "echo"
auth = ["keys"]
policy = "policy.rego"
ext_authz = "authz"

[[route]]
listener = "public"
service = "bench.Echo"
upstream = "echo"
ext_authz = "gone"

[[upstream]]
name = "echo"
endpoints = [{{ addr = "{}" }}]

[[auth]]
name = "keys"
[auth.api_keys]
keys_file = "keys.txt"

[[ext_authz]]
name = "authz"
address = "{}"
timeout = "300ms"

[[ext_authz]]
name = "gone"
address = "{dead}"
failure_mode_allow = true

[admin]
listen = "{admin}"
"#,
        backend.addr, authz.addr
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &text, listen));
    let mut c = client(listen).await;
    let ok = call(
        &mut c,
        &[
            ("x-api-key", "key-ci"),
            ("x-tenant", "t1"),
            ("x-authz", "allow"),
            ("x-echo-authz", "forged"),
        ],
    )
    .await
    .expect("policy and service allow");
    let authz_headers: Vec<_> = ok.get_all("x-echo-authz").iter().collect();
    assert_eq!(
        authz_headers,
        ["checked:ci"],
        "the service's header replaced the caller's"
    );
    let seen = authz.last();
    assert_eq!(seen.path, "/bench.Echo/Unary");
    assert_eq!(
        seen.context.get("route").map(String::as_str),
        Some("bench.Echo/Unary")
    );
    assert_eq!(
        seen.context.get("principal_subject").map(String::as_str),
        Some("ci")
    );
    assert!(
        seen.header_names.contains(&"x-tenant".to_string()),
        "{seen:?}"
    );
    let checks = authz.checks();

    refused(
        call(
            &mut c,
            &[
                ("x-api-key", "key-ci"),
                ("x-tenant", "t2"),
                ("x-authz", "allow"),
            ],
        )
        .await,
        Code::PermissionDenied,
        "policy does not allow",
    );
    refused(
        call(
            &mut c,
            &[
                ("x-api-key", "key-other"),
                ("x-tenant", "t1"),
                ("x-authz", "allow"),
            ],
        )
        .await,
        Code::PermissionDenied,
        "policy does not allow",
    );
    assert_eq!(
        authz.checks(),
        checks,
        "the service is not asked about calls the policy refused"
    );
    refused(
        call(
            &mut c,
            &[
                ("x-api-key", "key-ci"),
                ("x-tenant", "t1"),
                ("x-authz", "deny"),
            ],
        )
        .await,
        Code::PermissionDenied,
        "does not allow",
    );
    refused(
        call(
            &mut c,
            &[
                ("x-api-key", "key-ci"),
                ("x-tenant", "t1"),
                ("x-authz", "unauthenticated"),
            ],
        )
        .await,
        Code::Unauthenticated,
        "does not allow",
    );
    let started = Instant::now();
    refused(
        call(
            &mut c,
            &[
                ("x-api-key", "key-ci"),
                ("x-tenant", "t1"),
                ("x-authz", "hang"),
            ],
        )
        .await,
        Code::PermissionDenied,
        "could not be asked",
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the check's timeout bounds it"
    );
    assert_eq!(
        backend.calls(),
        1,
        "only the allowed call reached the backend"
    );

    // The rest of the service: its service is unreachable, but fails open by configuration.
    let mut request = Request::new(strait_tests::pb::EchoRequest {
        reply_count: 1,
        ..req(b"s")
    });
    request
        .metadata_mut()
        .insert("x-authz", "deny".parse().unwrap());
    let mut replies = c
        .server_stream(request)
        .await
        .expect("failure_mode_allow lets the call through")
        .into_inner();
    assert!(replies.message().await.unwrap().is_some());

    let text = tokio::task::block_in_place(|| http_get(admin, "/metrics").1);
    let denied = |reason: &str| {
        metric(
            &text,
            "strait_auth_denied_total",
            &[("route", "bench.Echo/Unary"), ("reason", reason)],
        )
    };
    assert_eq!(denied("policy"), Some(2.0));
    assert_eq!(denied("ext_authz"), Some(2.0));
    assert_eq!(denied("ext_authz_error"), Some(1.0));
}

/// `rate_limit.key = "principal"`: each accepted caller has its own bucket, counted after
/// authentication (refused credentials spend nobody's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_keyed_by_principal_gives_each_caller_its_own_bucket() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let keys = jwt::api_key_line("ci", "key-ci") + &jwt::api_key_line("other", "key-other");
    let (_gateway, listen, _admin) = tokio::task::block_in_place(|| {
        start(
            backend.addr,
            "auth = [\"keys\"]\nrate_limit = { per_second = 1, burst = 2, key = \"principal\" }",
            "[[auth]]\nname = \"keys\"\n[auth.api_keys]\nkeys_file = \"keys.txt\"\n",
            &[("keys.txt", keys.as_bytes())],
        )
    });
    let mut c = client(listen).await;
    for _ in 0..5 {
        refused(
            call(&mut c, &[("x-api-key", "forged")]).await,
            Code::Unauthenticated,
            "unknown API key",
        );
    }
    call(&mut c, &[("x-api-key", "key-ci")])
        .await
        .expect("first");
    call(&mut c, &[("x-api-key", "key-ci")])
        .await
        .expect("second (burst 2)");
    refused(
        call(&mut c, &[("x-api-key", "key-ci")]).await,
        Code::ResourceExhausted,
        "per caller",
    );
    call(&mut c, &[("x-api-key", "key-other")])
        .await
        .expect("another caller has its own bucket");
}

/// `match = { principal = ... }`: the caller a route's `auth` accepts picks the route (a VIP
/// caller to its own upstream), everyone else takes the fallback, which checks them as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_on_the_principal_picks_the_route() {
    let standard = Backend::start(BackendOptions::named("standard")).await;
    let vip = Backend::start(BackendOptions::named("vip")).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.txt"),
        jwt::api_key_line("ci", "key-ci") + &jwt::api_key_line("vip-acme", "key-vip"),
    )
    .unwrap();
    let listen = free_addr();
    let text = format!(
        r#"
[[listener]]
name = "public"
listen = "{listen}"

[[route]]
listener = "public"
service = "bench.Echo"
upstream = "vip"
auth = ["keys"]
match = {{ principal = "keys:vip-*" }}

[[route]]
listener = "public"
service = "bench.Echo"
upstream = "standard"
auth = ["keys"]

[[upstream]]
name = "vip"
endpoints = [{{ addr = "{}" }}]

[[upstream]]
name = "standard"
endpoints = [{{ addr = "{}" }}]

[[auth]]
name = "keys"
[auth.api_keys]
keys_file = "keys.txt"
"#,
        vip.addr, standard.addr
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &text, listen));
    let c = client(listen).await;
    let served_by = |key: Option<&'static str>| {
        let mut c = c.clone();
        async move {
            let mut request = Request::new(req(b"who"));
            if let Some(key) = key {
                request
                    .metadata_mut()
                    .insert("x-api-key", key.parse().unwrap());
            }
            c.unary(request)
                .await
                .map(|r| r.into_inner().served_by)
                .map_err(|s| s.code())
        }
    };
    assert_eq!(served_by(Some("key-vip")).await, Ok("vip".to_string()));
    assert_eq!(served_by(Some("key-ci")).await, Ok("standard".to_string()));
    assert_eq!(served_by(None).await, Err(Code::Unauthenticated));
    assert_eq!(served_by(Some("forged")).await, Err(Code::Unauthenticated));
}
