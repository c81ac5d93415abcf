//! A bad config never starts: `check` and `run` exit 2 and name the line and key.

use std::process::Command;

use strait_tests::gateway::{check_config, strait_bin};

const GOOD: &str = r#"
[[listener]]
name = "public"
listen = "127.0.0.1:18080"

[[route]]
listener = "public"
service = "bench.Echo"
upstream = "echo"

[[upstream]]
name = "echo"
endpoints = [{ addr = "127.0.0.1:50051", weight = 100, region = "eu-west" }]
"#;

/// Asserts that `check` and `run` refuse `config`, pointing at the line that contains
/// `bad_line` and printing every `expected` text.
fn assert_rejected(config: &str, bad_line: &str, expected: &[&str]) {
    let expected_line = config
        .lines()
        .position(|l| l.contains(bad_line))
        .expect("the bad line is in the config")
        + 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let (code, output) = check_config(&path);
    assert_eq!(code, 2, "check must exit 2; output:\n{output}");
    let location = format!("bad.toml:{expected_line}:");
    assert!(
        output.contains(&location),
        "expected {location} in:\n{output}"
    );
    for needle in expected {
        assert!(output.contains(needle), "expected {needle:?} in:\n{output}");
    }
    // `run` refuses the same file the same way, without starting anything.
    let run = Command::new(strait_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains(&location));
}

#[test]
fn the_good_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(&path, GOOD).unwrap();
    let (code, output) = check_config(&path);
    assert_eq!(code, 0, "{output}");
}

#[test]
fn the_shipped_demo_config_passes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/strait.toml");
    let (code, output) = check_config(&path);
    assert_eq!(code, 0, "{output}");
}

#[test]
fn the_shipped_static_example_passes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/static.toml");
    let (code, output) = check_config(&path);
    assert_eq!(code, 0, "{output}");
}

#[test]
fn the_shipped_etcd_example_passes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/strait-etcd.toml");
    let (code, output) = check_config(&path);
    assert_eq!(code, 0, "{output}");
}

#[test]
fn etcd_upstream_without_etcd_section_is_rejected() {
    let config = GOOD.replace(
        "endpoints = [{ addr = \"127.0.0.1:50051\", weight = 100, region = \"eu-west\" }]",
        "discovery = \"etcd\"\nservice = \"echo\"",
    );
    assert_rejected(
        &config,
        "discovery = \"etcd\"",
        &["upstream[0].discovery", "needs an [etcd] section"],
    );
}

#[test]
fn bad_etcd_settings_are_rejected() {
    let config = format!(
        "{}\n[etcd]\nendpoints = [\"127.0.0.1:2379\"]\nprefix = \"services\"\n",
        GOOD.replace(
            "endpoints = [{ addr = \"127.0.0.1:50051\", weight = 100, region = \"eu-west\" }]",
            "discovery = \"etcd\"\nservice = \"echo\"\nselect = { version = \"not-a-range!\" }",
        )
    );
    assert_rejected(
        &config,
        "not-a-range",
        &["select.version", "etcd.endpoints[0]", "etcd.prefix"],
    );
}

#[test]
fn unknown_key_is_rejected() {
    let config = GOOD.replace("name = \"echo\"", "name = \"echo\"\nretries = 4");
    assert_rejected(
        &config,
        "retries = 4",
        &["upstream[0].retries", "unknown field"],
    );
}

#[test]
fn bad_duration_is_rejected() {
    let config = GOOD.replace(
        "upstream = \"echo\"",
        "upstream = \"echo\"\ntimeout = \"30 seconds\"",
    );
    assert_rejected(
        &config,
        "30 seconds",
        &["route[0].timeout", "invalid duration"],
    );
}

#[test]
fn missing_upstream_is_rejected() {
    let config = GOOD.replace("upstream = \"echo\"", "upstream = \"nowhere\"");
    assert_rejected(
        &config,
        "nowhere",
        &["route[0].upstream", "no upstream named \"nowhere\""],
    );
}

#[test]
fn duplicate_listen_address_is_rejected() {
    let config =
        format!("{GOOD}\n[[listener]]\nname = \"second\"\nlisten = \"127.0.0.1:18080\" # again\n");
    assert_rejected(
        &config,
        "# again",
        &["listener[1].listen", "already used by listener \"public\""],
    );
}

#[test]
fn weight_out_of_range_is_rejected() {
    let config = GOOD.replace("weight = 100", "weight = 250");
    assert_rejected(
        &config,
        "weight = 250",
        &["upstream[0].endpoints[0].weight", "between 0 and 100"],
    );
}

#[test]
fn unreadable_certificate_is_rejected() {
    let config = GOOD.replace(
        "listen = \"127.0.0.1:18080\"",
        "listen = \"127.0.0.1:18080\"\ntls = { cert = \"missing/server.crt\", key = \"missing/server.key\" }",
    );
    assert_rejected(
        &config,
        "missing/server.crt",
        &["listener[0].tls.cert", "cannot read", "listener[0].tls.key"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let config = GOOD
        .replace("upstream = \"echo\"", "upstream = \"nowhere\"")
        .replace("weight = 100", "weight = -1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let (code, output) = check_config(&path);
    assert_eq!(code, 2);
    assert!(output.contains("2 problems"), "{output}");
    assert!(
        output.contains("no upstream named") && output.contains("weight must be"),
        "{output}"
    );
}

#[test]
fn tcp_listener_mistakes_are_rejected() {
    let tcp = GOOD.replace(
        "listen = \"127.0.0.1:18080\"",
        "listen = \"127.0.0.1:18080\"\nprotocol = \"tcp\"",
    );
    // A tcp listener needs an upstream, cannot take routes, and does not terminate TLS.
    assert_rejected(
        &tcp,
        "name = \"public\"",
        &["listener[0].upstream", "needs `upstream"],
    );
    assert_rejected(
        &tcp.replace(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nupstream = \"echo\"",
        ),
        "listener = \"public\"",
        &["route[0].listener", "is a tcp listener"],
    );
    assert_rejected(
        &GOOD.replace(
            "listen = \"127.0.0.1:18080\"",
            "listen = \"127.0.0.1:18080\"\nprotocol = \"tcp\"\nupstream = \"missing\"",
        ),
        "upstream = \"missing\"",
        &["listener[0].upstream", "no upstream named \"missing\""],
    );
    assert_rejected(
        &GOOD.replace(
            "listen = \"127.0.0.1:18080\"",
            "listen = \"127.0.0.1:18080\"\nprotocol = \"udp\"",
        ),
        "protocol = \"udp\"",
        &["unknown protocol \"udp\"", "\"grpc\" or \"tcp\""],
    );
    assert_rejected(
        &GOOD.replace(
            "listen = \"127.0.0.1:18080\"",
            "listen = \"127.0.0.1:18080\"\nupstream = \"echo\"",
        ),
        "upstream = \"echo\"",
        &["gRPC listeners choose an upstream per call"],
    );
}

#[test]
fn tls_file_mistakes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let pki = strait_tests::tls::generate(dir.path());
    // An upstream client certificate without its key.
    assert_rejected(
        &GOOD.replace(
            "endpoints = [",
            &format!(
                "tls = {{ ca = \"{}\", cert = \"{}\" }}\nendpoints = [",
                pki.ca_cert.display(),
                pki.server_cert.display()
            ),
        ),
        "tls = {",
        &["upstream[0].tls", "cert and key go together"],
    );
    // A key that belongs to another certificate: `check` says so, as `run` would.
    let other = strait_tests::tls::generate_named(dir.path(), "other");
    assert_rejected(
        &GOOD.replace(
            "listen = \"127.0.0.1:18080\"",
            &format!(
                "listen = \"127.0.0.1:18080\"\ntls = {{ cert = \"{}\", key = \"{}\" }}",
                pki.server_cert.display(),
                other.server_key.display()
            ),
        ),
        "tls = {",
        &["listener[0].tls.key", "does not belong to the certificate"],
    );
    // A client CA file that is not a certificate.
    let not_a_cert = dir.path().join("notes.txt");
    std::fs::write(&not_a_cert, "hello").unwrap();
    assert_rejected(
        &GOOD.replace(
            "listen = \"127.0.0.1:18080\"",
            &format!(
                "listen = \"127.0.0.1:18080\"\ntls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
                pki.server_cert.display(),
                pki.server_key.display(),
                not_a_cert.display()
            ),
        ),
        "client_ca",
        &["listener[0].tls.client_ca", "holds no PEM certificate"],
    );
}

#[test]
fn listener_limits_out_of_range_are_rejected() {
    let with_limits = |limits: &str| {
        GOOD.replace(
            "listen = \"127.0.0.1:18080\"",
            &format!("listen = \"127.0.0.1:18080\"\n\n[listener.limits]\n{limits}"),
        )
    };
    assert_rejected(
        &with_limits("max_connections = 0"),
        "max_connections = 0",
        &[
            "listener[0].limits.max_connections",
            "between 1 and 1000000",
        ],
    );
    assert_rejected(
        &with_limits("max_message_size = 10"),
        "max_message_size = 10",
        &["listener[0].limits.max_message_size", "between 1024"],
    );
    assert_rejected(
        &with_limits("handshake_timeout = \"10\""),
        "handshake_timeout",
        &["missing unit"],
    );
    // Every limit at a sane value, keepalive off: accepted.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.toml");
    std::fs::write(
        &path,
        with_limits(
            "max_connections = 100\nmax_concurrent_streams = 10\nmax_header_list_size = 8192\n\
             max_message_size = 4096\nhandshake_timeout = \"2s\"\nkeepalive = \"0s\"",
        ),
    )
    .unwrap();
    let (code, output) = check_config(&path);
    assert_eq!(code, 0, "{output}");
}

/// The finding behind the duration bounds: a route timeout of 5e15 hours passed `check` and
/// then panicked every call. Now it is refused at its line, as are bounded fields past their
/// bound.
#[test]
fn durations_past_their_bounds_are_refused_at_their_line() {
    let huge = GOOD.replace(
        "upstream = \"echo\"\n",
        "upstream = \"echo\"\ntimeout = \"5000000000000000h\"\n",
    );
    assert_rejected(
        &huge,
        "timeout = \"5000000000000000h\"",
        &["at most 365 days"],
    );
    let breaker = GOOD.replace(
        "[[upstream]]\nname = \"echo\"\n",
        "[[upstream]]\nname = \"echo\"\nbreaker = { open_for = \"2h\" }\n",
    );
    assert_rejected(
        &breaker,
        "open_for = \"2h\"",
        &["upstream[0].breaker.open_for", "must be at most 3600s"],
    );
}

/// `[[transcode]]` and the browser settings: `check` reads the descriptors and refuses what
/// cannot serve, at its line.
#[test]
fn transcoding_and_cors_mistakes_are_refused_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let good_pb = dir.path().join("api.pb");
    std::fs::write(&good_pb, strait_tests::ECHO_DESCRIPTORS).unwrap();
    let garbage = dir.path().join("garbage.pb");
    std::fs::write(&garbage, b"\x0a\xff\xff\xff\xff\x0fnot a descriptor set").unwrap();
    let transcode = |descriptors: &str, services: &str| {
        format!(
            "{GOOD}\n[[transcode]]\nlistener = \"public\"\ndescriptors = \"{descriptors}\"\nservices = [{services}]\n"
        )
    };
    // The good one passes.
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        transcode(&good_pb.display().to_string(), "\"bench.Echo\""),
    )
    .unwrap();
    let (code, output) = check_config(&path);
    assert_eq!(code, 0, "{output}");

    assert_rejected(
        &transcode("/nonexistent/api.pb", "\"bench.Echo\""),
        "descriptors = \"/nonexistent/api.pb\"",
        &["transcode[0].descriptors", "cannot read"],
    );
    let garbage_path = garbage.display().to_string();
    assert_rejected(
        &transcode(&garbage_path, "\"bench.Echo\""),
        &format!("descriptors = \"{garbage_path}\""),
        &["is not a FileDescriptorSet", "--include_imports"],
    );
    assert_rejected(
        &transcode(&good_pb.display().to_string(), "\"shop.Cart\""),
        "services = [\"shop.Cart\"]",
        &["service \"shop.Cart\" is not in the descriptors"],
    );
    let wrong_listener = transcode(&good_pb.display().to_string(), "\"bench.Echo\"").replace(
        "[[transcode]]\nlistener = \"public\"",
        "[[transcode]]\nlistener = \"nope\"",
    );
    assert_rejected(
        &wrong_listener,
        "listener = \"nope\"",
        &["no listener named \"nope\""],
    );
    let bad_origin = GOOD.replace(
        "listen = \"127.0.0.1:18080\"",
        "listen = \"127.0.0.1:18080\"\ngrpc_web = true\ncors = { allow_origins = [\"https://app.example.com/path\"] }",
    );
    assert_rejected(
        &bad_origin,
        "cors = {",
        &["listener[0].cors.allow_origins[0]", "is not an origin"],
    );
    let long_age = GOOD.replace(
        "listen = \"127.0.0.1:18080\"",
        "listen = \"127.0.0.1:18080\"\ncors = { allow_origins = [\"*\"], max_age = \"48h\" }",
    );
    assert_rejected(&long_age, "max_age = \"48h\"", &["at most 24h"]);
}

/// `[xds]`: the address, the upstreams it publishes and its TLS files are checked at their line.
#[test]
fn xds_mistakes_are_refused_at_their_line() {
    let xds = |body: &str| format!("{GOOD}\n[xds]\n{body}\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        xds("listen = \"127.0.0.1:18000\"\nupstreams = [\"echo\"]"),
    )
    .unwrap();
    let (code, output) = check_config(&path);
    assert_eq!(code, 0, "{output}");

    assert_rejected(
        &xds("listen = \"localhost\""),
        "listen = \"localhost\"",
        &["xds.listen", "is not an IP:port address"],
    );
    assert_rejected(
        &xds("listen = '127.0.0.1:18080'"),
        "listen = '127.0.0.1:18080'",
        &["xds.listen", "already used by listener \"public\""],
    );
    assert_rejected(
        &xds("listen = \"127.0.0.1:18000\"\nupstreams = [\"echo\", \"nope\"]"),
        "upstreams = [\"echo\", \"nope\"]",
        &["xds.upstreams[1]", "no upstream is named \"nope\""],
    );
    assert_rejected(
        &xds("listen = \"127.0.0.1:18000\"\ntls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }"),
        "tls = {",
        &["xds.tls"],
    );
    assert_rejected(
        &xds("listen = \"127.0.0.1:0\""),
        "listen = \"127.0.0.1:0\"",
        &["xds.listen", "port 0"],
    );
    assert_rejected(
        &xds("listen = \"127.0.0.1:18000\"\nupstreams = []"),
        "upstreams = []",
        &["xds.upstreams", "lists no upstream"],
    );
    assert_rejected(
        &xds("listen = \"127.0.0.1:18000\"\nregion = \"eu\""),
        "region = \"eu\"",
        &["unknown field `region`"],
    );
}
