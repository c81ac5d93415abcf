//! Routing and balancing: regions, weights, failover, and the gateway's own errors.

use strait_tests::net::{dead_addr, free_addr};
use strait_tests::raw;
use strait_tests::{Backend, BackendOptions, Gateway};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

use crate::fixture::{client, config, req, Ep, Setup};

fn served_by_counts(setup: &Setup) -> Vec<(String, u64)> {
    setup
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.calls()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_region_is_preferred() {
    let setup = Setup::start(&[("eu", 100, "eu-west"), ("us", 100, "us-east")]).await;
    let mut client = setup.client().await;
    for _ in 0..30 {
        assert_eq!(
            client.unary(req(b"")).await.unwrap().into_inner().served_by,
            "eu"
        );
    }
    assert_eq!(setup.backend("us").calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_region_header_overrides_gateway_region() {
    let setup = Setup::start(&[("eu", 100, "eu-west"), ("us", 100, "us-east")]).await;
    let mut client = setup.client().await;
    for _ in 0..30 {
        let mut request = Request::new(req(b""));
        request
            .metadata_mut()
            .insert("x-strait-region", MetadataValue::from_static("us-east"));
        assert_eq!(
            client.unary(request).await.unwrap().into_inner().served_by,
            "us"
        );
    }
}

/// A caller outside the listener's `trusted_sources` cannot choose its region: the header is
/// ignored and calls stay in the gateway's region. (Loopback, trusted by default, is not
/// listed here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_caller_cannot_choose_its_region() {
    let eu = Backend::start(BackendOptions::named("eu")).await;
    let us = Backend::start(BackendOptions::named("us")).await;
    let listen = free_addr();
    let text = config(
        listen,
        &[
            Ep {
                addr: eu.addr,
                weight: 100,
                region: "eu-west",
            },
            Ep {
                addr: us.addr,
                weight: 100,
                region: "us-east",
            },
        ],
        "",
        "",
    )
    .replace(
        &format!("listen = \"{listen}\"\n"),
        &format!("listen = \"{listen}\"\ntrusted_sources = [\"10.0.0.0/8\"]\n"),
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut client = client(listen).await;
    for _ in 0..20 {
        let mut request = Request::new(req(b""));
        request
            .metadata_mut()
            .insert("x-strait-region", MetadataValue::from_static("us-east"));
        assert_eq!(
            client.unary(request).await.unwrap().into_inner().served_by,
            "eu",
            "the gateway's region, not the caller's"
        );
    }
    assert_eq!(us.calls(), 0);
}

/// Within a region, calls split exactly by weight (smooth WRR is deterministic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_split_by_weight_within_a_region() {
    let setup = Setup::start(&[
        ("heavy", 100, "eu-west"),
        ("light", 50, "eu-west"),
        ("far", 100, "us-east"),
    ])
    .await;
    let mut client = setup.client().await;
    for _ in 0..300 {
        client.unary(req(b"")).await.expect("ok");
    }
    assert_eq!(
        served_by_counts(&setup),
        vec![
            ("heavy".into(), 200),
            ("light".into(), 100),
            ("far".into(), 0)
        ]
    );
}

/// Weight 0 drains an endpoint; a region with only drained endpoints falls back to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_drains_and_region_falls_back() {
    let setup = Setup::start(&[
        ("eu-drained", 0, "eu-west"),
        ("us-a", 30, "us-east"),
        ("ap-b", 10, "ap-south"),
    ])
    .await;
    let mut client = setup.client().await;
    for _ in 0..40 {
        client.unary(req(b"")).await.expect("ok");
    }
    assert_eq!(
        served_by_counts(&setup),
        vec![
            ("eu-drained".into(), 0),
            ("us-a".into(), 30),
            ("ap-b".into(), 10)
        ]
    );
}

/// One endpoint refuses connections: every call still succeeds on the other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_endpoint_is_retried_elsewhere() {
    let live = Backend::start(BackendOptions::named("live")).await;
    let dead = dead_addr(); // nothing listens here
    let listen = free_addr();
    let text = config(
        listen,
        &[
            Ep {
                addr: dead,
                weight: 100,
                region: "eu-west",
            },
            Ep {
                addr: live.addr,
                weight: 100,
                region: "eu-west",
            },
        ],
        "",
        "",
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut client = client(listen).await;
    for i in 0..50 {
        let reply = client
            .unary(req(b""))
            .await
            .unwrap_or_else(|s| panic!("call {i} failed: {s:?}"));
        assert_eq!(reply.into_inner().served_by, "live");
    }
    assert_eq!(live.calls(), 50);
}

/// Nothing can take the call: UNAVAILABLE, trailers-only, naming the upstream and the reason but
/// no endpoint's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_down_gives_unavailable_with_reason() {
    let listen = free_addr();
    let text = config(
        listen,
        &[
            Ep {
                addr: dead_addr(),
                weight: 100,
                region: "eu-west",
            },
            Ep {
                addr: dead_addr(),
                weight: 50,
                region: "us-east",
            },
        ],
        "",
        "",
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut client = client(listen).await;
    let status = client.unary(req(b"")).await.expect_err("no backend is up");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("\"echo\""),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("connection refused"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("2 attempts"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("127.0.0.1"),
        "no endpoint address reaches the caller: {}",
        status.message()
    );

    let response = raw::call(listen, "/bench.Echo/Unary", &[], raw::grpc_frame(&[]))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "never a bare HTTP 502");
    assert!(response.headers_ended_stream, "trailers-only");
    assert_eq!(response.grpc_status().as_deref(), Some("14"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_gives_unimplemented_naming_the_path() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let response = raw::call(setup.addr, "/other.Service/Call", &[], raw::grpc_frame(&[]))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert!(response.headers_ended_stream);
    assert_eq!(response.grpc_status().as_deref(), Some("12"));
    assert!(response
        .grpc_message()
        .unwrap()
        .contains("/other.Service/Call"));

    let malformed = raw::call(setup.addr, "/not-grpc", &[], raw::grpc_frame(&[]))
        .await
        .unwrap();
    assert_eq!(malformed.grpc_status().as_deref(), Some("12"));
    assert_eq!(setup.backend("a").calls(), 0);
}

/// service+method beats service beats "*".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_specific_route_wins() {
    let by_method = Backend::start(BackendOptions::named("by-method")).await;
    let by_service = Backend::start(BackendOptions::named("by-service")).await;
    let fallback = Backend::start(BackendOptions::named("fallback")).await;
    let listen = free_addr();
    let text = format!(
        r#"
[[listener]]
name = "l"
listen = "{listen}"

[[route]]
listener = "l"
service = "*"
upstream = "fallback"

[[route]]
listener = "l"
service = "bench.Echo"
upstream = "by-service"

[[route]]
listener = "l"
service = "bench.Echo"
method = "Unary"
upstream = "by-method"

[[upstream]]
name = "by-method"
endpoints = [{{ addr = "{}" }}]

[[upstream]]
name = "by-service"
endpoints = [{{ addr = "{}" }}]

[[upstream]]
name = "fallback"
endpoints = [{{ addr = "{}" }}]
"#,
        by_method.addr, by_service.addr, fallback.addr
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut client = client(listen).await;
    assert_eq!(
        client.unary(req(b"")).await.unwrap().into_inner().served_by,
        "by-method"
    );
    let reply = client
        .client_stream(tokio_stream::iter(vec![req(b"")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.served_by, "by-service");
    // Any other service falls to "*": the echo backend answers UNIMPLEMENTED itself.
    let response = raw::call(listen, "/other.Svc/M", &[], raw::grpc_frame(&[]))
        .await
        .unwrap();
    assert_eq!(response.grpc_status().as_deref(), Some("12"));
    assert_eq!(
        fallback.calls(),
        0,
        "tonic rejects unknown services before the handler"
    );
    assert!(
        !response
            .grpc_message()
            .unwrap_or_default()
            .contains("no route"),
        "the '*' route forwarded the call instead of the gateway refusing it"
    );
    // The positive side: a service only "*" matches is served, by the fallback upstream. Only
    // the fallback backend reports NOT_SERVING (no health probes are configured, so the
    // gateway still routes to it): that answer can have come from nowhere else.
    fallback
        .set_health(tonic_health::ServingStatus::NotServing)
        .await;
    let health = raw::call(
        listen,
        "/grpc.health.v1.Health/Check",
        &[],
        raw::grpc_frame(&[]),
    )
    .await
    .unwrap();
    assert_eq!(health.grpc_status().as_deref(), Some("0"), "{health:?}");
    let answer: tonic_health::pb::HealthCheckResponse =
        prost::Message::decode(&health.body[5..]).expect("a HealthCheckResponse");
    assert_eq!(
        answer.status, 2,
        "NOT_SERVING, as only the fallback backend says"
    );
}
