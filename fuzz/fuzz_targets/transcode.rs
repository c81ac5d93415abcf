//! gRPC-JSON transcoding of hostile callers and backends, with the test service's descriptors
//! (config/echo.pb, `protoc --include_imports` of tests/proto/echo.proto): any REST path,
//! query and body either becomes a request message or a clear error, and any reply bytes
//! become JSON or an INTERNAL answer; never a panic.
#![no_main]

use bytes::Bytes;
use http::Method;
use libfuzzer_sys::fuzz_target;
use pingora::protocols::http::HttpTask;
use strait::proxy::web::json::JsonCall;
use strait::transcode::{build_request, TranscodeTable};

fuzz_target!(|input: (u8, &str, &[u8], &[u8])| {
    let (selector, target, body, reply) = input;
    static TABLE: std::sync::OnceLock<TranscodeTable> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        TranscodeTable::from_bytes(
            include_bytes!("../../config/echo.pb"),
            &["bench.Echo".to_string()],
            "echo.pb",
        )
        .expect("the test descriptors load")
    });
    let verb =
        [Method::GET, Method::POST, Method::PUT, Method::DELETE][usize::from(selector % 4)].clone();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(matched) = table.find(&verb, path) else {
        return;
    };
    let _ = build_request(&matched.route, &matched.bindings, Some(query), body);
    // The backend's answer, cut in two anywhere.
    let method = &matched.route.method;
    let mut call = JsonCall::new(
        method.descriptor.output(),
        matched.route.response_body.clone(),
        method.server_streaming(),
        true,
        16 * 1024 * 1024,
    );
    let head = pingora::http::ResponseHeader::build(200, None).unwrap();
    let _ = call.shape(HttpTask::Header(Box::new(head), false));
    let cut = usize::from(selector).min(reply.len());
    let _ = call.shape(HttpTask::Body(
        Some(Bytes::copy_from_slice(&reply[..cut])),
        false,
    ));
    let _ = call.shape(HttpTask::Body(
        Some(Bytes::copy_from_slice(&reply[cut..])),
        false,
    ));
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = call.shape(HttpTask::Trailer(Some(Box::new(trailers))));
});
