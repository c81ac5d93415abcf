//! Validation, case by case: every bound accepted at its edge and refused one past it, every
//! refusal at its key, and accepted values landing in the internal model. The end-to-end
//! `config_errors` tests prove the same through `strait check`; these run in-process, so the
//! mutation tests (`make mutants`) can use them.

use std::path::Path;
use std::time::Duration;

use super::*;

const LISTEN: &str = "127.0.0.1:50051";

/// One grpc listener "public", one route to upstream "echo" with one endpoint. `listener` and
/// `upstream` are lines inside those tables (keys, then any sub-tables); `tail` comes last.
fn text(gateway: &str, listener: &str, upstream: &str, tail: &str) -> String {
    format!(
        "[gateway]\n{gateway}\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"{LISTEN}\"\n{listener}\n\n\
         [[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\nupstream = \"echo\"\n\n\
         [[upstream]]\nname = \"echo\"\nendpoints = [{{ addr = \"127.0.0.1:9001\" }}]\n{upstream}\n\n\
         {tail}\n"
    )
}

fn parse_in(source: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    super::parse(source, Path::new("test.toml"), base_dir)
}

fn accepted(source: &str) -> Config {
    parse_in(source, Path::new("/nonexistent"))
        .unwrap_or_else(|e| panic!("refused:\n{e}\n--- config ---\n{source}"))
}

fn problems(source: &str) -> Vec<Problem> {
    match parse_in(source, Path::new("/nonexistent")) {
        Ok(_) => panic!("accepted:\n{source}"),
        Err(e) => e.problems,
    }
}

/// Refused with a problem at `key` whose message contains `needle`.
#[track_caller]
fn refused(source: &str, key: &str, needle: &str) {
    let found = problems(source);
    assert!(
        found
            .iter()
            .any(|p| p.key_path == key && p.message.contains(needle)),
        "no problem at {key} containing {needle:?} in {found:#?}"
    );
}

fn gateway(lines: &str) -> String {
    text(lines, "", "", "")
}

fn limits(lines: &str) -> String {
    text("", &format!("[listener.limits]\n{lines}"), "", "")
}

fn upstream(lines: &str) -> String {
    text("", "", lines, "")
}

#[test]
fn a_minimal_file_gets_every_default() {
    let config = accepted(&gateway(""));
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(config.gateway.threads, parallelism);
    assert_eq!(config.gateway.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(config.gateway.region, None);
    let listener = &config.listeners[0];
    assert_eq!(listener.listen, LISTEN.parse().unwrap());
    assert_eq!(listener.kind, ListenerKind::Grpc);
    assert_eq!(listener.idle_timeout, DEFAULT_GRPC_IDLE_TIMEOUT);
    assert_eq!(listener.limits, ListenerLimits::default());
    let upstream = &config.upstreams[0];
    assert!(matches!(upstream.discovery, Discovery::Static));
    assert_eq!(upstream.endpoints[0].weight, DEFAULT_WEIGHT);
    assert_eq!(upstream.endpoints[0].region, None);
    assert_eq!(upstream.max_attempts, DEFAULT_MAX_ATTEMPTS);
    assert_eq!(upstream.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert!(upstream.health.is_none() && upstream.tls.is_none());
    assert_eq!(upstream.breaker, crate::breaker::BreakerSettings::default());
    let route = &config.routes[0];
    assert_eq!(route.service, ServiceMatch::Exact("bench.Echo".into()));
    assert_eq!((route.method.as_deref(), route.timeout), (None, None));
    assert!(config.etcd.is_none() && config.admin.is_none());
}

#[test]
fn gateway_settings_within_bounds() {
    let config = accepted(&gateway(
        "threads = 1\nregion = \"eu\"\nregion_header = \"x-region\"\nshutdown_grace = \"1h\"",
    ));
    assert_eq!(config.gateway.threads, 1);
    assert_eq!(config.gateway.region.as_deref(), Some("eu"));
    assert_eq!(
        config.gateway.region_header.as_ref().map(|h| h.as_str()),
        Some("x-region")
    );
    assert_eq!(config.gateway.shutdown_grace, Duration::from_secs(3600));
    assert_eq!(accepted(&gateway("threads = 1024")).gateway.threads, 1024);
    assert_eq!(accepted(&gateway("region = \"\"")).gateway.region, None);
    refused(
        &gateway("threads = 0"),
        "gateway.threads",
        "between 1 and 1024",
    );
    refused(&gateway("threads = 1025"), "gateway.threads", "got 1025");
    refused(
        &gateway("region_header = \"bad header\""),
        "gateway.region_header",
        "not a valid HTTP header name",
    );
    refused(
        &gateway("shutdown_grace = \"3601s\""),
        "gateway.shutdown_grace",
        "at most 3600s",
    );
}

#[test]
fn problems_point_at_their_line_and_column() {
    let found = problems(&gateway("threads = 0"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].position, Some((2, 11)), "{found:#?}");
    let found = problems(&upstream("max_attempts = 11"));
    assert_eq!(found[0].key_path, "upstream[0].max_attempts");
    assert_eq!(found[0].position, Some((17, 16)), "{found:#?}");
}

#[test]
fn listener_limits_at_their_edges() {
    let l = accepted(&limits(
        "max_connections = 1\nmax_concurrent_streams = 100000\nmax_header_list_size = 16777216\n\
         max_message_size = 1073741824\nhandshake_timeout = \"1h\"\nrequest_header_timeout = \"1ms\"\n\
         keepalive = \"32767s\"",
    ))
    .listeners[0]
        .limits
        .clone();
    assert_eq!(l.max_connections, 1);
    assert_eq!(l.max_concurrent_streams, 100_000);
    assert_eq!(l.max_header_list_size, 16 * 1024 * 1024);
    assert_eq!(l.max_message_size, 1024 * 1024 * 1024);
    assert_eq!(l.handshake_timeout, Duration::from_secs(3600));
    assert_eq!(l.request_header_timeout, Duration::from_millis(1));
    assert_eq!(l.keepalive, Some(Duration::from_secs(32767)));
    let l = accepted(&limits(
        "max_connections = 1000000\nmax_header_list_size = 1024\nmax_message_size = 1024\nkeepalive = \"0s\"",
    ))
    .listeners[0]
        .limits
        .clone();
    assert_eq!(
        (
            l.max_connections,
            l.max_header_list_size,
            l.max_message_size
        ),
        (1_000_000, 1024, 1024)
    );
    assert_eq!(l.keepalive, None, "0s turns keep-alive off");
    let l = accepted(&limits("keepalive = \"1s\"")).listeners[0]
        .limits
        .clone();
    assert_eq!(l.keepalive, Some(Duration::from_secs(1)));
    let l = accepted(&limits("")).listeners[0].limits.clone();
    assert_eq!(
        (l.ping_interval, l.ping_timeout),
        (Some(Duration::from_secs(30)), Duration::from_secs(10)),
        "PING keepalive is on by default"
    );
    let l = accepted(&limits("ping_interval = \"1s\"\nping_timeout = \"1ms\"")).listeners[0]
        .limits
        .clone();
    assert_eq!(
        (l.ping_interval, l.ping_timeout),
        (Some(Duration::from_secs(1)), Duration::from_millis(1))
    );
    let l = accepted(&limits("ping_interval = \"0s\"")).listeners[0]
        .limits
        .clone();
    assert_eq!(l.ping_interval, None, "0s turns PINGs off");

    let key = |k: &str| format!("listener[0].limits.{k}");
    refused(
        &limits("ping_interval = \"999ms\""),
        &key("ping_interval"),
        "from 1s to 3600s",
    );
    refused(
        &limits("ping_interval = \"3601s\""),
        &key("ping_interval"),
        "from 1s to 3600s",
    );
    refused(
        &limits("ping_timeout = \"0s\""),
        &key("ping_timeout"),
        "greater than 0",
    );
    refused(
        &limits("ping_timeout = \"3601s\""),
        &key("ping_timeout"),
        "at most 3600s",
    );
    refused(
        &limits("max_connections = 0"),
        &key("max_connections"),
        "between 1 and 1000000",
    );
    refused(
        &limits("max_connections = 1000001"),
        &key("max_connections"),
        "got 1000001",
    );
    refused(
        &limits("max_concurrent_streams = 100001"),
        &key("max_concurrent_streams"),
        "between",
    );
    refused(
        &limits("max_header_list_size = 1023"),
        &key("max_header_list_size"),
        "between 1024 and 16777216",
    );
    refused(
        &limits("max_header_list_size = 16777217"),
        &key("max_header_list_size"),
        "got 16777217",
    );
    refused(
        &limits("max_message_size = 1023"),
        &key("max_message_size"),
        "between 1024 and 1073741824",
    );
    refused(
        &limits("max_message_size = 1073741825"),
        &key("max_message_size"),
        "got 1073741825",
    );
    refused(
        &limits("handshake_timeout = \"0s\""),
        &key("handshake_timeout"),
        "greater than 0",
    );
    refused(
        &limits("handshake_timeout = \"3601s\""),
        &key("handshake_timeout"),
        "at most 3600s",
    );
    refused(
        &limits("request_header_timeout = \"0s\""),
        &key("request_header_timeout"),
        "greater than 0",
    );
    refused(
        &limits("keepalive = \"32768s\""),
        &key("keepalive"),
        "whole seconds",
    );
    refused(
        &limits("keepalive = \"1500ms\""),
        &key("keepalive"),
        "whole seconds",
    );
}

#[test]
fn listeners_are_named_addressed_and_typed() {
    let tcp = text("", "protocol = \"tcp\"\nupstream = \"echo\"", "", "").replace(
        "[[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\nupstream = \"echo\"\n",
        "",
    );
    let config = accepted(&tcp);
    assert_eq!(
        config.listeners[0].kind,
        ListenerKind::Tcp {
            upstream: "echo".into(),
            idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT
        }
    );
    assert_eq!(config.listeners[0].idle_timeout, DEFAULT_TCP_IDLE_TIMEOUT);
    let tcp_idle = tcp.replace(
        "protocol = \"tcp\"",
        "protocol = \"tcp\"\nidle_timeout = \"5s\"",
    );
    assert_eq!(
        accepted(&tcp_idle).listeners[0].idle_timeout,
        Duration::from_secs(5)
    );
    refused(
        &tcp.replace(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nidle_timeout = \"0s\"",
        ),
        "listener[0].idle_timeout",
        "greater than 0",
    );
    refused(
        &tcp.replace("upstream = \"echo\"\n\n", "\n\n"),
        "listener[0].upstream",
        "needs `upstream",
    );
    refused(
        &tcp.replace("upstream = \"echo\"\n\n", "upstream = \"nope\"\n\n"),
        "listener[0].upstream",
        "no upstream named \"nope\"",
    );
    refused(
        &tcp.replace(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\ntls = { cert = \"c\", key = \"k\" }",
        ),
        "listener[0].tls",
        "TLS passthrough",
    );
    refused(
        &text("", "protocol = \"udp\"", "", ""),
        "listener[0].protocol",
        "unknown protocol \"udp\"",
    );
    assert_eq!(
        accepted(&text("", "protocol = \"grpc\"", "", "")).listeners[0].kind,
        ListenerKind::Grpc
    );
    refused(
        &text("", "upstream = \"echo\"", "", ""),
        "listener[0].upstream",
        "choose an upstream per call",
    );
    refused(
        &text("", "idle_timeout = \"0s\"", "", ""),
        "listener[0].idle_timeout",
        "greater than 0",
    );
    assert_eq!(
        accepted(&text("", "idle_timeout = \"7s\"", "", "")).listeners[0].idle_timeout,
        Duration::from_secs(7)
    );

    let second = |name: &str, listen: &str| {
        gateway("") + &format!("[[listener]]\nname = \"{name}\"\nlisten = \"{listen}\"\n")
    };
    assert_eq!(
        accepted(&second("other", "127.0.0.1:50052"))
            .listeners
            .len(),
        2
    );
    refused(
        &second("public", "127.0.0.1:50052"),
        "listener[1].name",
        "duplicate listener name",
    );
    refused(
        &second("other", LISTEN),
        "listener[1].listen",
        "already used by listener \"public\"",
    );
    refused(
        &second("other", "localhost:1"),
        "listener[1].listen",
        "not an IP:port address",
    );
    let long = "n".repeat(64);
    assert_eq!(
        accepted(&second(&long, "127.0.0.1:50052")).listeners[1].name,
        long
    );
    refused(
        &second(&"n".repeat(65), "127.0.0.1:50052"),
        "listener[1].name",
        "1-64 characters",
    );
    refused(
        &second("", "127.0.0.1:50052"),
        "listener[1].name",
        "1-64 characters",
    );
    refused(
        &second("a b", "127.0.0.1:50052"),
        "listener[1].name",
        "1-64 characters",
    );
    assert!(
        accepted(&second("a-b_c.d9", "127.0.0.1:50052"))
            .listeners
            .len()
            == 2
    );

    let none = "[[upstream]]\nname = \"echo\"\nendpoints = [{ addr = \"127.0.0.1:9001\" }]\n";
    refused(none, "listener", "no [[listener]] is defined");
}

#[test]
fn upstreams_and_endpoints() {
    let endpoints = |list: &str| {
        text("", "", "", "").replace(
            "endpoints = [{ addr = \"127.0.0.1:9001\" }]",
            &format!("endpoints = [{list}]"),
        )
    };
    let config = accepted(&endpoints(
        "{ addr = \"127.0.0.1:1\", weight = 0 }, { addr = \"127.0.0.1:2\", weight = 100, region = \"eu\" }, { addr = \"127.0.0.1:3\", region = \"\" }",
    ));
    let eps = &config.upstreams[0].endpoints;
    assert_eq!(
        eps.iter().map(|e| e.weight).collect::<Vec<_>>(),
        vec![0, 100, 100]
    );
    assert_eq!(eps[1].region.as_deref(), Some("eu"));
    assert_eq!(eps[2].region, None);
    let key = "upstream[0].endpoints[0]";
    refused(
        &endpoints("{ addr = \"127.0.0.1:1\", weight = 101 }"),
        &format!("{key}.weight"),
        "between 0 and 100, got 101",
    );
    refused(
        &endpoints("{ addr = \"127.0.0.1:1\", weight = -1 }"),
        &format!("{key}.weight"),
        "got -1",
    );
    refused(
        &endpoints("{ addr = \"nowhere\" }"),
        &format!("{key}.addr"),
        "not an IP:port address",
    );
    refused(
        &endpoints("{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:1\" }"),
        "upstream[0].endpoints[1].addr",
        "listed twice",
    );
    refused(
        &endpoints(""),
        "upstream[0].endpoints",
        "at least one endpoint",
    );

    assert_eq!(
        accepted(&upstream("max_attempts = 1")).upstreams[0].max_attempts,
        1
    );
    assert_eq!(
        accepted(&upstream("max_attempts = 10")).upstreams[0].max_attempts,
        10
    );
    refused(
        &upstream("max_attempts = 0"),
        "upstream[0].max_attempts",
        "between 1 and 10",
    );
    refused(
        &upstream("max_attempts = 11"),
        "upstream[0].max_attempts",
        "got 11",
    );
    assert_eq!(
        accepted(&upstream("connect_timeout = \"250ms\"")).upstreams[0].connect_timeout,
        Duration::from_millis(250)
    );
    refused(
        &upstream("connect_timeout = \"0s\""),
        "upstream[0].connect_timeout",
        "greater than 0",
    );
    refused(
        &upstream("service = \"echo\""),
        "upstream[0].service",
        "belongs to etcd upstreams",
    );
    refused(
        &upstream("select = { version = \"1\" }"),
        "upstream[0].select",
        "belongs to etcd upstreams",
    );
    refused(
        &upstream("discovery = \"consul\""),
        "upstream[0].discovery",
        "unknown discovery \"consul\"",
    );
    refused(
        &upstream("hosts = [{ name = \"a.test\", port = 1 }]"),
        "upstream[0].hosts",
        "belongs to dns upstreams",
    );
    assert!(matches!(
        accepted(&upstream("discovery = \"static\"")).upstreams[0].discovery,
        Discovery::Static
    ));
    refused(
        &upstream("tls = { cert = \"c.pem\" }"),
        "upstream[0].tls",
        "cert and key go together",
    );
    let tls = accepted(&upstream("tls = { server_name = \"svc\" }")).upstreams[0]
        .tls
        .clone()
        .expect("tls");
    assert_eq!(
        (tls.server_name.as_str(), tls.ca, tls.identity),
        ("svc", None, None)
    );

    let twice = text(
        "",
        "",
        "",
        "[[upstream]]\nname = \"echo\"\nendpoints = [{ addr = \"127.0.0.1:9002\" }]\n",
    );
    refused(&twice, "upstream[1].name", "duplicate upstream name");
    refused(
        &text(
            "",
            "",
            "",
            "[[upstream]]\nname = \"\"\nendpoints = [{ addr = \"127.0.0.1:9002\" }]\n",
        ),
        "upstream[1].name",
        "1-64 characters",
    );
}

fn health(lines: &str) -> String {
    upstream(&format!("[upstream.health]\n{lines}"))
}

#[test]
fn health_probe_settings() {
    let h = accepted(&health(
        "interval = \"100ms\"\ntimeout = \"100ms\"\nservice = \"svc\"\nunhealthy_after = 1\nhealthy_after = 100",
    ))
    .upstreams[0]
        .health
        .clone()
        .expect("health");
    assert_eq!(h.interval, Duration::from_millis(100));
    assert_eq!(
        h.timeout,
        Duration::from_millis(100),
        "a timeout equal to the interval"
    );
    assert_eq!(
        (h.service.as_str(), h.unhealthy_after, h.healthy_after),
        ("svc", 1, 100)
    );
    assert_eq!(
        accepted(&health("")).upstreams[0].health,
        Some(HealthSettings::default())
    );
    let key = |k: &str| format!("upstream[0].health.{k}");
    refused(
        &health("interval = \"99ms\"\ntimeout = \"50ms\""),
        &key("interval"),
        "at least 100ms",
    );
    refused(
        &health("interval = \"1s\"\ntimeout = \"1001ms\""),
        &key("timeout"),
        "at most the interval",
    );
    refused(
        &health("timeout = \"0s\""),
        &key("timeout"),
        "greater than 0",
    );
    refused(
        &health("unhealthy_after = 0"),
        &key("unhealthy_after"),
        "between 1 and 100",
    );
    refused(
        &health("healthy_after = 101"),
        &key("healthy_after"),
        "got 101",
    );
}

fn breaker(lines: &str) -> String {
    upstream(&format!("[upstream.breaker]\n{lines}"))
}

#[test]
fn breaker_settings() {
    use crate::breaker::Backoff;
    use crate::grpc::Code;
    let b = accepted(&breaker(
        "consecutive_failures = 1\nfailure_rate = 1.0\nwindow = 10000\nmin_calls = 10000\n\
         open_for = \"1s\"\nmax_open_for = \"1s\"\nhalf_open_calls = 1000\nbackoff = \"fixed\"\n\
         failure_codes = [\"UNAVAILABLE\", \"RESOURCE_EXHAUSTED\"]\nmax_ejected_percent = 0",
    ))
    .upstreams[0]
        .breaker
        .clone();
    assert_eq!(b.consecutive_failures, 1);
    assert_eq!(b.failure_rate, 1.0);
    assert_eq!(
        (b.window, b.min_calls, b.half_open_calls),
        (10_000, 10_000, 1000)
    );
    assert_eq!(
        (b.open_for, b.max_open_for),
        (Duration::from_secs(1), Duration::from_secs(1))
    );
    assert_eq!(b.backoff, Backoff::Fixed);
    assert_eq!(
        b.failure_codes,
        [Code::Unavailable, Code::ResourceExhausted]
            .into_iter()
            .collect()
    );
    assert_eq!(b.max_ejected_percent, 0);
    let b = accepted(&breaker(
        "failure_rate = 0.01\nbackoff = \"jittered\"\nmax_ejected_percent = 100",
    ))
    .upstreams[0]
        .breaker
        .clone();
    assert_eq!(
        (b.failure_rate, b.backoff, b.max_ejected_percent),
        (0.01, Backoff::Jittered, 100)
    );
    assert_eq!(
        accepted(&breaker("backoff = \"exponential\"")).upstreams[0]
            .breaker
            .backoff,
        Backoff::Exponential
    );
    let key = |k: &str| format!("upstream[0].breaker.{k}");
    refused(
        &breaker("failure_rate = 0.0"),
        &key("failure_rate"),
        "must be in (0, 1]",
    );
    refused(
        &breaker("failure_rate = 1.01"),
        &key("failure_rate"),
        "got 1.01",
    );
    refused(
        &breaker("failure_rate = -0.5"),
        &key("failure_rate"),
        "got -0.5",
    );
    refused(
        &breaker("backoff = \"linear\""),
        &key("backoff"),
        "unknown backoff \"linear\"",
    );
    refused(
        &breaker("failure_codes = [\"OK\"]"),
        &key("failure_codes"),
        "OK cannot be a failure",
    );
    refused(
        &breaker("failure_codes = [\"SOMETIMES\"]"),
        &key("failure_codes"),
        "SOMETIMES",
    );
    refused(
        &breaker("open_for = \"0s\""),
        &key("open_for"),
        "greater than 0",
    );
    refused(
        &breaker("open_for = \"2s\"\nmax_open_for = \"1s\""),
        &key("max_open_for"),
        "at least open_for",
    );
    refused(
        &breaker("window = 5\nmin_calls = 6"),
        &key("min_calls"),
        "cannot exceed window",
    );
    refused(
        &breaker("consecutive_failures = 1001"),
        &key("consecutive_failures"),
        "between 1 and 1000",
    );
    refused(
        &breaker("max_ejected_percent = 101"),
        &key("max_ejected_percent"),
        "between 0 and 100",
    );
}

const ETCD: &str = "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";

fn etcd_upstream(lines: &str, tail: &str) -> String {
    text("", "", "", tail).replace(
        "endpoints = [{ addr = \"127.0.0.1:9001\" }]\n",
        &format!("discovery = \"etcd\"\n{lines}\n"),
    )
}

#[test]
fn etcd_upstreams() {
    let config = accepted(&etcd_upstream(
        "service = \"echo\"\nselect = { version = \"^1.2\", labels = { tier = \"gold\" } }",
        ETCD,
    ));
    let Discovery::Etcd { service, select } = &config.upstreams[0].discovery else {
        panic!("an etcd upstream");
    };
    assert_eq!(service, "echo");
    assert_eq!(
        select.version.as_ref().map(|v| v.to_string()).as_deref(),
        Some("^1.2")
    );
    assert_eq!(select.labels.get("tier").map(String::as_str), Some("gold"));
    assert!(config.upstreams[0].endpoints.is_empty());

    refused(
        &etcd_upstream("service = \"echo\"", ""),
        "upstream[0].discovery",
        "needs an [etcd] section",
    );
    refused(
        &etcd_upstream("", ETCD),
        "upstream[0].service",
        "needs `service`",
    );
    refused(
        &etcd_upstream("service = \"\"", ETCD),
        "upstream[0].service",
        "non-empty name without '/'",
    );
    refused(
        &etcd_upstream("service = \"a/b\"", ETCD),
        "upstream[0].service",
        "non-empty name without '/'",
    );
    refused(
        &etcd_upstream("service = \"echo\"\nselect = { version = \"one\" }", ETCD),
        "upstream[0].select.version",
        "not a semver range",
    );
    refused(
        &etcd_upstream(
            "service = \"echo\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]",
            ETCD,
        ),
        "upstream[0].endpoints",
        "belongs to static upstreams; this one is etcd",
    );
}

fn dns_upstream(lines: &str, tail: &str) -> String {
    text("", "", "", tail).replace(
        "endpoints = [{ addr = \"127.0.0.1:9001\" }]\n",
        &format!("discovery = \"dns\"\n{lines}\n"),
    )
}

#[test]
fn dns_upstreams() {
    let config = accepted(&dns_upstream(
        "hosts = [{ name = \"Orders.Internal\", port = 50051, weight = 10, region = \"eu\" }, { name = \"orders\", port = 50052 }]\nrefresh = \"30s\"",
        "",
    ));
    let Discovery::Dns { hosts, refresh } = &config.upstreams[0].discovery else {
        panic!("not dns: {:?}", config.upstreams[0].discovery);
    };
    assert_eq!(*refresh, Duration::from_secs(30));
    assert_eq!(
        hosts[0],
        DnsHost {
            name: "orders.internal".into(),
            port: 50051,
            weight: 10,
            region: Some("eu".into())
        }
    );
    assert_eq!((hosts[1].weight, hosts[1].region.as_deref()), (100, None));
    assert_eq!(config.dns, DnsConfig::default());
    let defaults = accepted(&dns_upstream(
        "hosts = [{ name = \"a.test.\", port = 1 }]",
        "",
    ));
    let Discovery::Dns { hosts, refresh } = &defaults.upstreams[0].discovery else {
        panic!("not dns");
    };
    assert_eq!(
        (*refresh, hosts[0].name.as_str()),
        (DEFAULT_DNS_REFRESH, "a.test.")
    );

    let host = |h: &str| dns_upstream(&format!("hosts = [{h}]"), "");
    refused(&dns_upstream("", ""), "upstream[0].hosts", "at least one");
    refused(
        &host("{ name = \"10.0.0.1\", port = 1 }"),
        "upstream[0].hosts[0].name",
        "is an IP address",
    );
    refused(
        &host("{ name = \"::1\", port = 1 }"),
        "upstream[0].hosts[0].name",
        "is an IP address",
    );
    for bad in [
        "",
        "a..b",
        "-a.test",
        "a-.test",
        "a b.test",
        "a.test/x",
        "1.2.3.400",
    ] {
        refused(
            &host(&format!("{{ name = {bad:?}, port = 1 }}")),
            "upstream[0].hosts[0].name",
            "host name",
        );
    }
    refused(
        &host(&format!(
            "{{ name = \"{}.test\", port = 1 }}",
            "a".repeat(64)
        )),
        "upstream[0].hosts[0].name",
        "1-63",
    );
    refused(
        &host("{ name = \"a.test\", port = 0 }"),
        "upstream[0].hosts[0].port",
        "between 1 and 65535",
    );
    refused(
        &host("{ name = \"a.test\", port = 70000 }"),
        "upstream[0].hosts[0].port",
        "between 1 and 65535",
    );
    refused(
        &host("{ name = \"a.test\", port = 1, weight = 101 }"),
        "upstream[0].hosts[0].weight",
        "between 0 and 100",
    );
    refused(
        &host("{ name = \"a.test\", port = 1 }, { name = \"A.test.\", port = 1 }"),
        "upstream[0].hosts[1].name",
        "listed twice",
    );
    refused(
        &host("{ name = \"a.test\", port = 1, ttl = 5 }"),
        "upstream[0].hosts[0].ttl",
        "unknown field",
    );
    for bad in ["\"500ms\"", "\"2h\""] {
        refused(
            &dns_upstream(
                &format!("hosts = [{{ name = \"a.test\", port = 1 }}]\nrefresh = {bad}"),
                "",
            ),
            "upstream[0].refresh",
            "between 1s and 1h",
        );
    }
    refused(
        &dns_upstream(
            "hosts = [{ name = \"a.test\", port = 1 }]\nendpoints = [{ addr = \"127.0.0.1:1\" }]",
            "",
        ),
        "upstream[0].endpoints",
        "belongs to static upstreams; this one is dns",
    );
    refused(
        &dns_upstream(
            "hosts = [{ name = \"a.test\", port = 1 }]\nservice = \"x\"",
            "",
        ),
        "upstream[0].service",
        "belongs to etcd upstreams; this one is dns",
    );
}

#[test]
fn dns_section() {
    let with = |section: &str| {
        dns_upstream(
            "hosts = [{ name = \"a.test\", port = 1 }]",
            &format!("[dns]\n{section}"),
        )
    };
    let config = accepted(&with(
        "servers = [\"127.0.0.1:5353\", \"::1\", \"10.0.0.53\"]\ntimeout = \"500ms\"",
    ));
    assert_eq!(
        config.dns.servers,
        vec![
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            "10.0.0.53:53".parse().unwrap()
        ]
    );
    assert_eq!(config.dns.timeout, Duration::from_millis(500));
    refused(
        &with("servers = [\"dns.example\"]"),
        "dns.servers[0]",
        "not an IP address",
    );
    refused(
        &with("servers = [\"127.0.0.1:0\"]"),
        "dns.servers[0]",
        "not an IP address",
    );
    refused(&with("servers = []"), "dns.servers", "names no server");
    refused(&with("timeout = \"0s\""), "dns.timeout", "greater than 0");
    refused(&with("timeout = \"2m\""), "dns.timeout", "at most 1m");
    refused(&with("retries = 3"), "dns.retries", "unknown field");
}

fn etcd(lines: &str) -> String {
    etcd_upstream("service = \"echo\"", &format!("[etcd]\n{lines}"))
}

#[test]
fn etcd_section() {
    let e = accepted(&etcd(
        "endpoints = [\"http://127.0.0.1:2379\", \"https://10.0.0.1:2379\"]\nprefix = \"/svc\"\ndial_timeout = \"3s\"",
    ))
    .etcd
    .expect("etcd");
    assert_eq!(
        e.endpoints,
        vec!["http://127.0.0.1:2379", "https://10.0.0.1:2379"]
    );
    assert_eq!(e.prefix, "/svc/", "a trailing slash is added");
    assert_eq!(e.dial_timeout, Duration::from_secs(3));
    assert!(e.auth.is_none() && e.tls.is_none());
    let e = accepted(&etcd("endpoints = [\"http://a:1\"]\nprefix = \"/x/\""))
        .etcd
        .unwrap();
    assert_eq!(e.prefix, "/x/");
    let e = accepted(&etcd("endpoints = [\"http://a:1\"]"))
        .etcd
        .unwrap();
    assert_eq!(e.prefix, DEFAULT_ETCD_PREFIX);

    refused(
        &etcd("endpoints = []"),
        "etcd.endpoints",
        "at least one etcd member URL",
    );
    for bad in ["http://", "https://a:1/path", "ftp://a:1", "a:1"] {
        refused(
            &etcd(&format!("endpoints = [\"{bad}\"]")),
            "etcd.endpoints[0]",
            "is not an etcd URL",
        );
    }
    refused(
        &etcd("endpoints = [\"http://a:1\"]\nprefix = \"svc/\""),
        "etcd.prefix",
        "must start with '/'",
    );
    refused(
        &etcd("endpoints = [\"http://a:1\"]\nusername = \"u\""),
        "etcd",
        "go together",
    );
    refused(
        &etcd("endpoints = [\"http://a:1\"]\npassword_file = \"p\""),
        "etcd",
        "go together",
    );
    refused(
        &etcd("endpoints = [\"http://a:1\"]\nusername = \"u\"\npassword_file = \"missing\""),
        "etcd.password_file",
        "cannot read /nonexistent/missing",
    );
    refused(
        &etcd("endpoints = [\"http://a:1\"]\ntls = { cert = \"c\" }"),
        "etcd.tls",
        "go together",
    );
    refused(
        &etcd("endpoints = [\"http://a:1\"]\ntls = { key = \"k\" }"),
        "etcd.tls",
        "go together",
    );
    let e = accepted(&etcd("endpoints = [\"https://a:1\"]\ntls = {}"))
        .etcd
        .unwrap();
    assert_eq!(e.tls.map(|t| (t.ca, t.identity)), Some((None, None)));
}

#[test]
fn relative_files_resolve_against_the_config_directory() {
    let dir = std::env::temp_dir().join(format!("strait-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("password"), "secret\n").unwrap();
    let relative =
        etcd("endpoints = [\"http://a:1\"]\nusername = \"u\"\npassword_file = \"password\"");
    let auth = parse_in(&relative, &dir)
        .expect("accepted")
        .etcd
        .unwrap()
        .auth
        .unwrap();
    assert_eq!(auth.username, "u");
    assert_eq!(auth.password_file, dir.join("password"));
    let absolute = relative.replace(
        "password_file = \"password\"",
        &format!("password_file = \"{}\"", dir.join("password").display()),
    );
    let auth = parse_in(&absolute, Path::new("/elsewhere"))
        .expect("accepted")
        .etcd
        .unwrap()
        .auth
        .unwrap();
    assert_eq!(auth.password_file, dir.join("password"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn route(lines: &str) -> String {
    text("", "", "", "").replace(
        "service = \"bench.Echo\"\nupstream = \"echo\"\n",
        &format!("{lines}\n"),
    )
}

#[test]
fn routes() {
    let r = accepted(&route(
        "service = \"pkg.v1.Svc_2\"\nmethod = \"Call_1\"\nupstream = \"echo\"\ntimeout = \"2s\"",
    ))
    .routes[0]
        .clone();
    assert_eq!(r.service, ServiceMatch::Exact("pkg.v1.Svc_2".into()));
    assert_eq!(r.method.as_deref(), Some("Call_1"));
    assert_eq!(
        (r.listener.as_str(), &r.destination),
        ("public", &Destination::Upstream("echo".into()))
    );
    assert_eq!(r.timeout, Some(Duration::from_secs(2)));
    let r = accepted(&route(
        "service = \"*\"\nupstream = \"echo\"\ntimeout = \"0s\"",
    ))
    .routes[0]
        .clone();
    assert_eq!(
        (r.service, r.timeout),
        (ServiceMatch::Any, None),
        "0s: no timeout"
    );

    refused(
        &route("service = \"x.Y\"\nupstream = \"nope\""),
        "route[0].upstream",
        "no upstream named \"nope\"",
    );
    for bad in ["", "a..b", ".a", "a.", "a-b.C", "a b"] {
        refused(
            &route(&format!("service = \"{bad}\"\nupstream = \"echo\"")),
            "route[0].service",
            "is not a gRPC service name",
        );
    }
    refused(
        &route("service = \"*\"\nmethod = \"M\"\nupstream = \"echo\""),
        "route[0].method",
        "needs a named service",
    );
    for bad in ["a.b", "", "a-b"] {
        refused(
            &route(&format!(
                "service = \"x.Y\"\nmethod = \"{bad}\"\nupstream = \"echo\""
            )),
            "route[0].method",
            "is not a gRPC method name",
        );
    }
    let twice = route("service = \"x.Y\"\nupstream = \"echo\"")
        + "[[route]]\nlistener = \"public\"\nservice = \"x.Y\"\nupstream = \"echo\"\n";
    refused(
        &twice,
        "route[1]",
        "already takes every call of this service and method",
    );
    let other_method = twice.replacen(
        "service = \"x.Y\"\nupstream = \"echo\"\n",
        "service = \"x.Y\"\nmethod = \"A\"\nupstream = \"echo\"\n",
        1,
    );
    assert_eq!(accepted(&other_method).routes.len(), 2);
    refused(
        &text("", "", "", "").replace(
            "listener = \"public\"\nservice",
            "listener = \"nope\"\nservice",
        ),
        "route[0].listener",
        "no listener named \"nope\"",
    );
    let on_tcp = text("", "", "", "[[listener]]\nname = \"raw\"\nlisten = \"127.0.0.1:7000\"\nprotocol = \"tcp\"\nupstream = \"echo\"\n")
        + "[[route]]\nlistener = \"raw\"\nservice = \"x.Y\"\nupstream = \"echo\"\n";
    refused(&on_tcp, "route[1].listener", "is a tcp listener");
}

#[test]
fn admin_section() {
    let with_admin = |lines: &str| text("", "", "", &format!("[admin]\n{lines}"));
    let admin = accepted(&with_admin("listen = \"127.0.0.1:9901\""))
        .admin
        .unwrap();
    assert_eq!(admin.listen, "127.0.0.1:9901".parse().unwrap());
    assert!(admin.endpoint_labels);
    assert_eq!(admin.max_methods, DEFAULT_MAX_METHODS);
    let admin = accepted(&with_admin(
        "listen = \"127.0.0.1:9901\"\nendpoint_labels = false",
    ))
    .admin
    .unwrap();
    assert!(!admin.endpoint_labels);
    let admin = accepted(&with_admin("listen = \"127.0.0.1:9901\"\nmax_methods = 5"))
        .admin
        .unwrap();
    assert_eq!(admin.max_methods, 5);
    for bad in ["0", "100001"] {
        refused(
            &with_admin(&format!("listen = \"127.0.0.1:9901\"\nmax_methods = {bad}")),
            "admin.max_methods",
            "between 1 and 100000",
        );
    }
    refused(
        &with_admin("listen = \"nowhere\""),
        "admin.listen",
        "not an IP:port address",
    );
    refused(
        &with_admin(&format!("listen = \"{LISTEN}\"")),
        "admin.listen",
        "already used by listener \"public\"",
    );
}

#[test]
fn syntax_errors_stop_at_the_first_with_its_place() {
    let found = problems("[gateway]\nthreads = \"two\"\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key_path, "gateway.threads");
    assert_eq!(found[0].position.map(|p| p.0), Some(2));
    let found = problems("[gateway\n");
    assert_eq!(found[0].key_path, "");
    assert!(found[0].position.is_some());
}

#[test]
fn durations_are_an_inline_string_pattern_in_the_schema() {
    let schema = super::json_schema();
    assert!(
        schema.contains("\"pattern\": \"^([0-9]+(ms|s|m|h))+$\""),
        "{schema}"
    );
    assert!(
        !schema.contains("#/$defs/Duration"),
        "durations are inlined, not a shared definition"
    );
}

/// A self-signed certificate and its key written to `dir` as `name.crt` and `name.key`.
fn write_identity(dir: &Path, name: &str) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

#[test]
fn certificates_and_keys_are_checked_and_resolved() {
    let dir = std::env::temp_dir().join(format!("strait-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_identity(&dir, "a");
    write_identity(&dir, "b");
    let listener_tls = |cert: &str, key: &str| {
        text(
            "",
            &format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}"),
            "",
            "",
        )
    };
    let config = parse_in(&listener_tls("a.crt", "a.key"), &dir).expect("accepted");
    let tls = config.listeners[0].tls.clone().expect("tls");
    assert_eq!((tls.cert, tls.key), (dir.join("a.crt"), dir.join("a.key")));

    // A certificate that cannot be read: only it is reported (the key is fine, and the pair
    // cannot be compared without the certificate).
    let found = parse_in(&listener_tls("missing.crt", "a.key"), &dir)
        .expect_err("refused")
        .problems;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key_path, "listener[0].tls.cert");
    // Both readable but not a pair.
    let found = parse_in(&listener_tls("a.crt", "b.key"), &dir)
        .expect_err("refused")
        .problems;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key_path, "listener[0].tls.key");

    let etcd_tls =
        etcd("endpoints = [\"https://a:1\"]\ntls = { cert = \"b.crt\", key = \"b.key\" }");
    let e = parse_in(&etcd_tls, &dir).expect("accepted").etcd.unwrap();
    assert_eq!(
        e.tls.and_then(|t| t.identity),
        Some((dir.join("b.crt"), dir.join("b.key")))
    );
    let upstream_tls = upstream("tls = { cert = \"a.crt\", key = \"a.key\" }");
    let u = parse_in(&upstream_tls, &dir).expect("accepted").upstreams[0]
        .tls
        .clone()
        .unwrap();
    assert_eq!(u.identity, Some((dir.join("a.crt"), dir.join("a.key"))));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn access_log_section() {
    let with = |section: &str| format!("{}\n[access_log]\n{section}\n", gateway(""));
    let config = accepted(&with(""));
    let log = config.access_log.unwrap();
    assert_eq!(
        (log.sink, log.format, log.sample),
        (AccessLogSink::Stderr, AccessLogFormat::Json, 1.0)
    );
    assert!(accepted(&gateway("")).access_log.is_none());
    let config = accepted(&with("path = \"stdout\"\nformat = \"text\"\nsample = 0.25"));
    let log = config.access_log.unwrap();
    assert_eq!(
        (log.sink, log.format, log.sample),
        (AccessLogSink::Stdout, AccessLogFormat::Text, 0.25)
    );
    let dir = std::env::temp_dir();
    let text = with(&format!("path = \"{}/a.log\"", dir.display()));
    assert_eq!(
        accepted(&text).access_log.unwrap().sink,
        AccessLogSink::File(dir.join("a.log"))
    );
    refused(&with("path = \"\""), "access_log.path", "a file path");
    refused(
        &with("path = \"/nonexistent-dir/a.log\""),
        "access_log.path",
        "does not exist",
    );
    refused(
        &with(&format!("path = \"{}\"", dir.display())),
        "access_log.path",
        "is a directory",
    );
    refused(
        &with("format = \"csv\""),
        "access_log.format",
        "unknown format \"csv\"",
    );
    for bad in ["-0.1", "1.5", "nan"] {
        refused(
            &with(&format!("sample = {bad}")),
            "access_log.sample",
            "between 0 and 1",
        );
    }
    refused(&with("rotate = true"), "access_log.rotate", "unknown field");
}

#[test]
fn tracing_section() {
    let with = |section: &str| format!("{}\n[tracing]\n{section}\n", gateway(""));
    assert!(accepted(&gateway("")).tracing.is_none());
    let tracing = accepted(&with("otlp_endpoint = \"http://127.0.0.1:4317\""))
        .tracing
        .unwrap();
    assert_eq!(
        tracing,
        TracingConfig {
            otlp_endpoint: "http://127.0.0.1:4317".into(),
            service_name: "strait".into(),
            sample: 0.01,
        }
    );
    let tracing = accepted(&with(
        "otlp_endpoint = \"https://otel.example.com:4317\"\nservice_name = \"edge\"\nsample = 1",
    ))
    .tracing
    .unwrap();
    assert_eq!(
        (tracing.service_name.as_str(), tracing.sample),
        ("edge", 1.0)
    );
    refused(&with("sample = 0.5"), "tracing", "otlp_endpoint");
    refused(
        &with("otlp_endpoint = \"127.0.0.1:4317\""),
        "tracing.otlp_endpoint",
        "http:// or https://",
    );
    refused(
        &with("otlp_endpoint = \"http://a:4317/v1/traces\""),
        "tracing.otlp_endpoint",
        "host[:port] only",
    );
    for bad in ["-0.1", "1.01", "nan"] {
        refused(
            &with(&format!("otlp_endpoint = \"http://a:1\"\nsample = {bad}")),
            "tracing.sample",
            "between 0 and 1",
        );
    }
    refused(
        &with("otlp_endpoint = \"http://a:1\"\nservice_name = \"\""),
        "tracing.service_name",
        "1 to 255",
    );
    refused(
        &with("otlp_endpoint = \"http://a:1\"\nheaders = {}"),
        "tracing.headers",
        "unknown field",
    );
}

// --- Traffic policy: match, split, rate_limit, max_in_flight, region_overprovision ---

/// Two more upstreams beside "echo", for splits.
const MORE_UPSTREAMS: &str =
    "[[upstream]]\nname = \"v2\"\nendpoints = [{ addr = \"127.0.0.1:9002\" }]\n\n\
     [[upstream]]\nname = \"v3\"\nendpoints = [{ addr = \"127.0.0.1:9003\" }]\n";

/// The route's lines replaced by `lines`, with upstreams "echo", "v2" and "v3".
fn policy_route(lines: &str) -> String {
    text("", "", "", MORE_UPSTREAMS).replace(
        "service = \"bench.Echo\"\nupstream = \"echo\"\n",
        &format!("service = \"bench.Echo\"\n{lines}\n"),
    )
}

/// Refused at `key` with `needle`, on the line of the file that contains `line_has`.
#[track_caller]
fn refused_on_line(source: &str, key: &str, needle: &str, line_has: &str) {
    let line = source
        .lines()
        .position(|l| l.contains(line_has))
        .unwrap_or_else(|| panic!("no line has {line_has:?}"))
        + 1;
    let found = problems(source);
    assert!(
        found.iter().any(|p| p.key_path == key
            && p.message.contains(needle)
            && p.position.map(|(l, _)| l) == Some(line)),
        "no problem at {key}, line {line}, containing {needle:?} in {found:#?}"
    );
}

#[test]
fn a_split_lands_in_the_model() {
    let config = accepted(&policy_route(
        "split = [ { upstream = \"echo\", weight = 90 }, { upstream = \"v2\", weight = 10 } ]\nhash_header = \"X-User-Id\"",
    ));
    let Destination::Split { sides, hash_header } = &config.routes[0].destination else {
        panic!("not a split: {:?}", config.routes[0].destination);
    };
    assert_eq!(
        sides,
        &vec![
            SplitSide {
                upstream: "echo".into(),
                weight: 90
            },
            SplitSide {
                upstream: "v2".into(),
                weight: 10
            }
        ]
    );
    assert_eq!(hash_header.as_ref().map(|h| h.as_str()), Some("x-user-id"));
    let upstreams: Vec<&str> = config.routes[0].upstreams().collect();
    assert_eq!(upstreams, ["echo", "v2"]);
}

#[test]
fn inconsistent_splits_are_refused_at_their_line() {
    let both = policy_route("upstream = \"echo\"\nsplit = [ { upstream = \"v2\", weight = 1 } ]");
    refused_on_line(
        &both,
        "route[0]",
        "either `upstream` or `split`",
        "upstream = \"echo\"",
    );
    let neither = policy_route("timeout = \"1s\"");
    refused_on_line(
        &neither,
        "route[0]",
        "needs `upstream`",
        "service = \"bench.Echo\"",
    );
    let unknown = policy_route("split = [ { upstream = \"nope\", weight = 1 } ]");
    refused_on_line(
        &unknown,
        "route[0].split[0].upstream",
        "no upstream named \"nope\"",
        "nope",
    );
    let twice = policy_route(
        "split = [\n{ upstream = \"v2\", weight = 1 },\n{ upstream = \"v2\", weight = 2 } ]",
    );
    refused_on_line(
        &twice,
        "route[0].split[1].upstream",
        "already a side",
        "weight = 2",
    );
    let heavy = policy_route("split = [\n{ upstream = \"v2\", weight = 10001 } ]");
    refused_on_line(
        &heavy,
        "route[0].split[0].weight",
        "between 0 and 10000",
        "10001",
    );
    let negative = policy_route("split = [\n{ upstream = \"v2\", weight = -1 } ]");
    refused_on_line(
        &negative,
        "route[0].split[0].weight",
        "between 0 and 10000",
        "-1",
    );
    let all_zero = policy_route(
        "split = [ { upstream = \"echo\", weight = 0 }, { upstream = \"v2\", weight = 0 } ]",
    );
    refused_on_line(
        &all_zero,
        "route[0].split",
        "every side has weight 0",
        "split =",
    );
    let empty = policy_route("split = []");
    refused_on_line(&empty, "route[0].split", "1 to 16 sides", "split =");
    let hash_without_split = policy_route("upstream = \"echo\"\nhash_header = \"x-user-id\"");
    refused_on_line(
        &hash_without_split,
        "route[0].hash_header",
        "chooses a side of a `split`",
        "hash_header",
    );
    let bad_hash =
        policy_route("split = [ { upstream = \"v2\", weight = 1 } ]\nhash_header = \"bad header\"");
    refused_on_line(
        &bad_hash,
        "route[0].hash_header",
        "not a valid HTTP header name",
        "hash_header",
    );
    let pseudo =
        policy_route("split = [ { upstream = \"v2\", weight = 1 } ]\nhash_header = \":path\"");
    refused_on_line(
        &pseudo,
        "route[0].hash_header",
        "pseudo-header",
        "hash_header",
    );
}

#[test]
fn matches_land_in_the_model_and_bad_ones_are_refused() {
    let config = accepted(&policy_route(
        "upstream = \"v2\"\nmatch = { headers = { \"x-canary\" = \"true\", \"x-tenant\" = \"*\" } }",
    ));
    let conditions = &config.routes[0].match_headers;
    assert_eq!(conditions.len(), 2);
    assert!(conditions
        .iter()
        .any(|c| c.name == "x-canary" && c.value.as_deref() == Some("true")));
    assert!(conditions
        .iter()
        .any(|c| c.name == "x-tenant" && c.value.is_none()));

    let empty = policy_route("upstream = \"v2\"\nmatch = { headers = {} }");
    refused_on_line(
        &empty,
        "route[0].match.headers",
        "1 to 16 headers",
        "match =",
    );
    let pseudo =
        policy_route("upstream = \"v2\"\nmatch = { headers = { \":authority\" = \"x\" } }");
    refused_on_line(
        &pseudo,
        "route[0].match.headers",
        "pseudo-header",
        "match =",
    );
    let bad_value =
        policy_route("upstream = \"v2\"\nmatch = { headers = { \"x-a\" = \"line\\nbreak\" } }");
    refused_on_line(
        &bad_value,
        "route[0].match.headers.x-a",
        "cannot be a header value",
        "match =",
    );
    let unknown_key = policy_route("upstream = \"v2\"\nmatch = { metadata = { \"x-a\" = \"b\" } }");
    assert!(!problems(&unknown_key).is_empty());
}

#[test]
fn routes_for_the_same_calls_are_told_apart_by_their_match() {
    let second = "\n[[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\n";
    let canary = text("", "", "", MORE_UPSTREAMS)
        + second
        + "match = { headers = { \"x-canary\" = \"true\" } }\nupstream = \"v2\"\n";
    assert_eq!(accepted(&canary).routes.len(), 2);
    let same_match = canary.clone()
        + second
        + "match = { headers = { \"x-canary\" = \"true\" } }\nupstream = \"v3\"\n";
    refused(&same_match, "route[2]", "same service, method and `match`");
    let two_fallbacks = text("", "", "", MORE_UPSTREAMS) + second + "upstream = \"v2\"\n";
    refused(&two_fallbacks, "route[1]", "already takes every call");
}

#[test]
fn rate_limits_land_in_the_model_and_bad_ones_are_refused() {
    let config = accepted(&policy_route(
        "upstream = \"echo\"\nrate_limit = { per_second = 100, burst = 200, key = \"header:X-Tenant\" }",
    ));
    assert_eq!(
        config.routes[0].rate_limit,
        Some(RateLimitConfig {
            per_second: 100,
            burst: 200,
            key: RateLimitKey::Header(http::HeaderName::from_static("x-tenant")),
            scope: crate::config::RateLimitScope::Gateway,
        })
    );
    let default_burst = accepted(&policy_route(
        "upstream = \"echo\"\nrate_limit = { per_second = 7, key = \"peer\" }",
    ));
    assert_eq!(
        default_burst.routes[0].rate_limit,
        Some(RateLimitConfig {
            per_second: 7,
            burst: 7,
            key: RateLimitKey::Peer,
            scope: crate::config::RateLimitScope::Gateway,
        })
    );
    for (limit, key, needle) in [
        ("per_second = 0", "per_second", "between 1 and 1000000"),
        (
            "per_second = 1000001",
            "per_second",
            "between 1 and 1000000",
        ),
        (
            "per_second = 1, burst = 0",
            "burst",
            "between 1 and 1000000",
        ),
        ("per_second = 1, key = \"ip\"", "key", "unknown key \"ip\""),
        (
            "per_second = 1, key = \"header:\"",
            "key",
            "not a valid HTTP header name",
        ),
        (
            "per_second = 1, key = \"header::path\"",
            "key",
            "pseudo-header",
        ),
    ] {
        let source = policy_route(&format!("upstream = \"echo\"\nrate_limit = {{ {limit} }}"));
        refused_on_line(
            &source,
            &format!("route[0].rate_limit.{key}"),
            needle,
            "rate_limit",
        );
    }
}

#[test]
fn load_shaping_keys_land_in_the_model_and_bad_ones_are_refused() {
    let config = accepted(&upstream(
        "max_in_flight = 1000\nregion_overprovision = 2.5",
    ));
    assert_eq!(config.upstreams[0].max_in_flight, Some(1000));
    assert_eq!(config.upstreams[0].region_overprovision, 2.5);
    let defaults = accepted(&upstream(""));
    assert_eq!(defaults.upstreams[0].max_in_flight, None);
    assert_eq!(defaults.upstreams[0].region_overprovision, 1.4);
    let strict = accepted(&upstream("region_overprovision = 0.0"));
    assert_eq!(strict.upstreams[0].region_overprovision, 0.0);
    for bad in ["max_in_flight = 0", "max_in_flight = 1000001"] {
        refused_on_line(
            &upstream(bad),
            "upstream[0].max_in_flight",
            "between 1 and 1000000",
            bad,
        );
    }
    for bad in [
        "region_overprovision = 0.5",
        "region_overprovision = 10.5",
        "region_overprovision = -1.0",
        "region_overprovision = nan",
    ] {
        refused_on_line(
            &upstream(bad),
            "upstream[0].region_overprovision",
            "0 (strict region first) or between 1 and 10",
            bad,
        );
    }
}

#[test]
fn retries_land_in_the_model_and_bad_ones_are_refused() {
    let config = accepted(&policy_route(
        "upstream = \"echo\"\nretry = { on = [\"UNAVAILABLE\", \"RESOURCE_EXHAUSTED\"], max_attempts = 4, backoff = \"10ms\", max_backoff = \"1s\", buffer = \"16KiB\" }",
    ));
    assert_eq!(
        config.routes[0].retry,
        Some(RetryConfig {
            on: vec![
                crate::grpc::Code::Unavailable,
                crate::grpc::Code::ResourceExhausted
            ],
            max_attempts: 4,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            buffer: 16 * 1024,
        })
    );
    let defaults = accepted(&policy_route(
        "upstream = \"echo\"\nretry = { on = [\"UNAVAILABLE\"] }",
    ));
    let retry = defaults.routes[0].retry.clone().unwrap();
    assert_eq!(
        (
            retry.max_attempts,
            retry.backoff,
            retry.max_backoff,
            retry.buffer
        ),
        (
            3,
            Duration::from_millis(25),
            Duration::from_millis(250),
            65536
        )
    );
    let bytes = accepted(&policy_route(
        "upstream = \"echo\"\nretry = { on = [\"UNAVAILABLE\"], buffer = 100 }",
    ));
    assert_eq!(bytes.routes[0].retry.as_ref().unwrap().buffer, 100);
    for (retry, key, needle) in [
        ("on = []", "on", "at least one status"),
        ("on = [\"OK\"]", "on", "OK is not a failure"),
        (
            "on = [\"UNAVAILABLE\", \"UNAVAILABLE\"]",
            "on",
            "listed twice",
        ),
        ("on = [\"NOPE\"]", "on", "NOPE"),
        (
            "on = [\"UNAVAILABLE\"], max_attempts = 1",
            "max_attempts",
            "between 2 and 10",
        ),
        (
            "on = [\"UNAVAILABLE\"], max_attempts = 11",
            "max_attempts",
            "between 2 and 10",
        ),
        (
            "on = [\"UNAVAILABLE\"], backoff = \"0s\"",
            "backoff",
            "above 0",
        ),
        (
            "on = [\"UNAVAILABLE\"], max_backoff = \"2m\"",
            "max_backoff",
            "at most 60s",
        ),
        (
            "on = [\"UNAVAILABLE\"], backoff = \"1s\", max_backoff = \"100ms\"",
            "max_backoff",
            "at least backoff",
        ),
        (
            "on = [\"UNAVAILABLE\"], buffer = \"65KiB\"",
            "buffer",
            "at most 64KiB",
        ),
        (
            "on = [\"UNAVAILABLE\"], buffer = \"1GB\"",
            "buffer",
            "unknown size unit",
        ),
        (
            "on = [\"UNAVAILABLE\"], buffer = -1",
            "buffer",
            "cannot be negative",
        ),
    ] {
        let source = policy_route(&format!("upstream = \"echo\"\nretry = {{ {retry} }}"));
        refused_on_line(&source, &format!("route[0].retry.{key}"), needle, "retry =");
    }
}

#[test]
fn retry_budgets_land_in_the_model_and_bad_ones_are_refused() {
    let config = accepted(&upstream(
        "retry_budget = { percent = 50, min_per_second = 0 }",
    ));
    assert_eq!(
        config.upstreams[0].retry_budget,
        RetryBudgetConfig {
            percent: 50,
            min_per_second: 0
        }
    );
    assert_eq!(
        accepted(&upstream("")).upstreams[0].retry_budget,
        RetryBudgetConfig {
            percent: 20,
            min_per_second: 10
        }
    );
    for (bad, key) in [
        ("retry_budget = { percent = 101 }", "percent"),
        ("retry_budget = { percent = -1 }", "percent"),
        (
            "retry_budget = { min_per_second = 100001 }",
            "min_per_second",
        ),
    ] {
        refused_on_line(
            &upstream(bad),
            &format!("upstream[0].retry_budget.{key}"),
            "between 0 and",
            bad,
        );
    }
}

#[test]
fn cluster_limits_need_etcd_and_a_members_prefix_of_their_own() {
    let cluster = "upstream = \"echo\"\nrate_limit = { per_second = 10, scope = \"cluster\" }";
    refused_on_line(
        &policy_route(cluster),
        "route[0].rate_limit.scope",
        "needs [etcd]",
        "rate_limit",
    );
    let with_etcd = policy_route(cluster) + ETCD;
    let config = accepted(&with_etcd);
    assert_eq!(
        config.routes[0].rate_limit.as_ref().map(|l| l.scope),
        Some(RateLimitScope::Cluster)
    );
    assert_eq!(config.etcd.unwrap().members_prefix, DEFAULT_MEMBERS_PREFIX);
    refused_on_line(
        &policy_route("upstream = \"echo\"\nrate_limit = { per_second = 10, scope = \"fleet\" }"),
        "route[0].rate_limit.scope",
        "unknown scope \"fleet\"",
        "rate_limit",
    );
    let members = |prefix: &str| {
        etcd(&format!(
            "endpoints = [\"http://a:1\"]\nprefix = \"/services/\"\nmembers_prefix = \"{prefix}\""
        ))
    };
    assert_eq!(
        accepted(&members("/fleet/gw")).etcd.unwrap().members_prefix,
        "/fleet/gw/"
    );
    for inside in ["/services/gateways/", "/"] {
        refused_on_line(
            &members(inside),
            "etcd.members_prefix",
            "overlaps",
            "members_prefix",
        );
    }
    refused_on_line(
        &members("gw/"),
        "etcd.members_prefix",
        "must start with '/'",
        "members_prefix",
    );
}

#[test]
fn a_cluster_share_rounds_up_and_never_reaches_zero() {
    let limit = RateLimitConfig {
        per_second: 100,
        burst: 10,
        key: RateLimitKey::Route,
        scope: RateLimitScope::Cluster,
    };
    assert_eq!((limit.share(3).per_second, limit.share(3).burst), (34, 4));
    assert_eq!((limit.share(0).per_second, limit.share(0).burst), (100, 10));
    assert_eq!(
        (limit.share(1000).per_second, limit.share(1000).burst),
        (1, 1)
    );
    let own = RateLimitConfig {
        scope: RateLimitScope::Gateway,
        ..limit
    };
    assert_eq!(own.share(5), own);
}

#[test]
fn hedges_need_idempotent_routes_and_exclude_retries() {
    let config = accepted(&policy_route(
        "upstream = \"echo\"\nidempotent = true\nhedge = { delay = \"20ms\", max_attempts = 3 }",
    ));
    assert_eq!(
        config.routes[0].hedge,
        Some(HedgeConfig {
            delay: Duration::from_millis(20),
            max_attempts: 3
        })
    );
    let default_attempts = accepted(&policy_route(
        "upstream = \"echo\"\nidempotent = true\nhedge = { delay = \"5ms\" }",
    ));
    assert_eq!(
        default_attempts.routes[0]
            .hedge
            .as_ref()
            .unwrap()
            .max_attempts,
        2
    );
    refused_on_line(
        &policy_route("upstream = \"echo\"\nhedge = { delay = \"20ms\" }"),
        "route[0].hedge",
        "idempotent = true",
        "hedge =",
    );
    refused_on_line(
        &policy_route("upstream = \"echo\"\nidempotent = false\nhedge = { delay = \"20ms\" }"),
        "route[0].hedge",
        "idempotent = true",
        "hedge =",
    );
    refused_on_line(
        &policy_route(
            "upstream = \"echo\"\nidempotent = true\nhedge = { delay = \"20ms\" }\nretry = { on = [\"UNAVAILABLE\"] }",
        ),
        "route[0].retry",
        "either `retry` or `hedge`",
        "retry =",
    );
    for (hedge, key, needle) in [
        ("delay = \"0s\"", "delay", "between 1ms and 60s"),
        ("delay = \"61s\"", "delay", "between 1ms and 60s"),
        (
            "delay = \"20ms\", max_attempts = 1",
            "max_attempts",
            "between 2 and 5",
        ),
        (
            "delay = \"20ms\", max_attempts = 6",
            "max_attempts",
            "between 2 and 5",
        ),
    ] {
        let source = policy_route(&format!(
            "upstream = \"echo\"\nidempotent = true\nhedge = {{ {hedge} }}"
        ));
        refused_on_line(&source, &format!("route[0].hedge.{key}"), needle, "hedge =");
    }
    assert!(!problems(&policy_route(
        "upstream = \"echo\"\nidempotent = true\nhedge = {}"
    ))
    .is_empty());
}

/// A directory with an auth provider's files: a JWKS with one EC key, a keys file, a token.
fn auth_files() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "strait-config-auth-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
    std::fs::write(dir.join("jwks.json"), jwks).unwrap();
    std::fs::write(dir.join("garbage.json"), "{\"keys\": 7}").unwrap();
    let hash = "a".repeat(64);
    std::fs::write(dir.join("keys.txt"), format!("ci {hash}\n")).unwrap();
    std::fs::write(dir.join("bad-keys.txt"), "ci not-a-hash\n").unwrap();
    std::fs::write(dir.join("token"), "  s3cret\n").unwrap();
    std::fs::write(dir.join("empty"), " \n").unwrap();
    std::fs::write(
        dir.join("allow.rego"),
        "package strait\n\nallow if input.method == \"Unary\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("other.rego"), "package other\n\nallow := true\n").unwrap();
    dir
}

fn with_route_auth(route: &str, tail: &str) -> String {
    text("", "", "", tail).replace(
        "upstream = \"echo\"\n\n[[upstream]]",
        &format!("upstream = \"echo\"\n{route}\n\n[[upstream]]"),
    )
}

#[test]
fn auth_providers_are_read_and_routes_name_them() {
    let dir = auth_files();
    let tail = "[[auth]]\nname = \"users\"\n[auth.jwt]\nissuer = \"https://id.example.com\"\n\
                audiences = [\"strait\"]\njwks_file = \"jwks.json\"\n\
                claim_headers = { sub = \"x-user-id\" }\n\n\
                [[auth]]\nname = \"keys\"\n[auth.api_keys]\nkeys_file = \"keys.txt\"\n\n\
                [admin]\nlisten = \"127.0.0.1:9901\"\ntoken_file = \"token\"\n";
    let source = with_route_auth(
        "auth = [\"users\", \"keys\"]\nrequire_claims = { scope = \"cart:write\" }",
        tail,
    );
    let config = parse_in(&source, &dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.auth.len(), 2);
    let AuthKind::Jwt { settings, keys } = &config.auth[0].kind else {
        panic!("{:?}", config.auth[0]);
    };
    assert_eq!(settings.clock_skew, Duration::from_secs(30));
    assert_eq!(settings.from_header, "authorization");
    assert_eq!(settings.max_token_bytes, 8192);
    assert!(!settings.forward);
    assert!(matches!(keys, JwtKeys::Fixed(set) if set.len() == 1));
    let AuthKind::ApiKeys {
        header, forward, ..
    } = &config.auth[1].kind
    else {
        panic!("{:?}", config.auth[1]);
    };
    assert_eq!((header.as_str(), *forward), ("x-api-key", false));
    let route = config.routes[0].auth.as_ref().unwrap();
    assert_eq!(route.providers, ["users", "keys"]);
    assert_eq!(
        route.require_claims.claims,
        [("scope".to_string(), "cart:write".to_string())]
    );
    assert_eq!(
        config.admin_token.as_ref().map(|t| t.0.to_vec()),
        Some(b"s3cret".to_vec())
    );
}

#[test]
fn auth_mistakes_are_refused_at_their_key() {
    let dir = auth_files();
    let check = |route: &str, tail: &str, key: &str, needle: &str| {
        let source = with_route_auth(route, tail);
        let found = match parse_in(&source, &dir) {
            Ok(_) => panic!("accepted:\n{source}"),
            Err(e) => e.problems,
        };
        assert!(
            found
                .iter()
                .any(|p| p.key_path == key && p.message.contains(needle)),
            "no problem at {key} containing {needle:?} in {found:#?}"
        );
    };
    let jwt = |keys: &str| {
        format!(
            "[[auth]]\nname = \"users\"\n[auth.jwt]\nissuer = \"https://id.example.com\"\n{keys}\n"
        )
    };
    check(
        "auth = [\"nobody\"]",
        "",
        "route[0].auth[0]",
        "no [[auth]] named",
    );
    check("auth = []", "", "route[0].auth", "lists no provider");
    check(
        "require_claims = { scope = \"x\" }",
        "",
        "route[0].require_claims",
        "needs `auth`",
    );
    check("", "[[auth]]\nname = \"x\"\n", "auth[0]", "exactly one of");
    check("", &jwt(""), "auth[0].jwt", "exactly one of jwks_file");
    check(
        "",
        &jwt("jwks_file = \"jwks.json\"\nsecret_file = \"token\""),
        "auth[0].jwt",
        "exactly one of",
    );
    check(
        "",
        &jwt("jwks_file = \"garbage.json\""),
        "auth[0].jwt.jwks_file",
        "not a JWKS",
    );
    check(
        "",
        &jwt("jwks_file = \"missing.json\""),
        "auth[0].jwt.jwks_file",
        "cannot read",
    );
    check(
        "",
        &jwt("jwks_url = \"http://id.example.com/jwks\""),
        "auth[0].jwt.jwks_url",
        "https://",
    );
    check(
        "",
        &jwt("jwks_url = \"https://id.example.com/jwks\"\njwks_refresh = \"1s\""),
        "auth[0].jwt.jwks_refresh",
        "at least 30s",
    );
    check(
        "",
        &jwt("jwks_file = \"jwks.json\"\njwks_ca = \"ca.pem\""),
        "auth[0].jwt.jwks_ca",
        "only with jwks_url",
    );
    check(
        "",
        &jwt("secret_file = \"empty\""),
        "auth[0].jwt.secret_file",
        "empty",
    );
    check(
        "",
        &jwt("jwks_file = \"jwks.json\"\nclaim_headers = { sub = \"grpc-status\" }"),
        "auth[0].jwt.claim_headers.sub",
        "not a header the gateway may set",
    );
    check(
        "",
        &jwt("jwks_file = \"jwks.json\"\nmax_token_bytes = 100"),
        "auth[0].jwt.max_token_bytes",
        "between 256 and 65536",
    );
    check(
        "",
        "[[auth]]\nname = \"k\"\n[auth.api_keys]\nkeys_file = \"bad-keys.txt\"\n",
        "auth[0].api_keys.keys_file",
        "64 hex digits",
    );
    check(
        "auth = [\"mesh\"]",
        "[[auth]]\nname = \"mesh\"\n[auth.mtls]\n",
        "route[0].auth[0]",
        "asks no client certificate",
    );
    check(
        "",
        "[admin]\nlisten = \"127.0.0.1:9901\"\ntoken_file = \"empty\"\n",
        "admin.token_file",
        "empty",
    );
    check(
        "",
        "[xds]\nlisten = \"0.0.0.0:18000\"\n",
        "xds.listen",
        "not authenticated",
    );
    check(
        "policy = \"allow.rego\"",
        "",
        "route[0].policy",
        "needs `auth`",
    );
    let keys = "[[auth]]\nname = \"k\"\n[auth.api_keys]\nkeys_file = \"keys.txt\"\n";
    check(
        "auth = [\"k\"]\npolicy = \"missing.rego\"",
        keys,
        "route[0].policy",
        "cannot read",
    );
    check(
        "auth = [\"k\"]\npolicy = \"other.rego\"",
        keys,
        "route[0].policy",
        "package strait",
    );
    check(
        "ext_authz = \"nobody\"",
        "",
        "route[0].ext_authz",
        "no [[ext_authz]] named",
    );
    check(
        "",
        "[[ext_authz]]\nname = \"a\"\naddress = \"https://authz:9191\"\n",
        "ext_authz[0].address",
        "h2c gRPC service",
    );
    check(
        "",
        "[[ext_authz]]\nname = \"a\"\naddress = \"127.0.0.1:9191\"\ntimeout = \"1m\"\n",
        "ext_authz[0].timeout",
        "at most 10s",
    );
}

#[test]
fn policies_compile_and_ext_authz_services_are_read() {
    let dir = auth_files();
    let tail = "[[auth]]\nname = \"k\"\n[auth.api_keys]\nkeys_file = \"keys.txt\"\n\n\
                [[ext_authz]]\nname = \"opa\"\naddress = \"127.0.0.1:9191\"\n";
    let source = with_route_auth(
        "auth = [\"k\"]\npolicy = \"allow.rego\"\next_authz = \"opa\"",
        tail,
    );
    let config = parse_in(&source, &dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.routes[0].auth.as_ref().unwrap().policy.is_some());
    assert_eq!(config.routes[0].ext_authz.as_deref(), Some("opa"));
    let service = &config.ext_authz[0];
    assert_eq!(service.uri.to_string(), "http://127.0.0.1:9191/");
    assert_eq!(service.timeout, Duration::from_millis(200));
    assert!(!service.failure_mode_allow);
}

#[test]
fn allowed_networks_apply_to_discovered_upstreams() {
    let config = accepted(&etcd_upstream(
        "service = \"echo\"\nallowed_networks = [\"10.0.0.0/8\", \"fd00::1/8\", \"192.168.1.7\"]",
        &format!("{ETCD}\n[admin]\nlisten = \"127.0.0.1:9901\"\n"),
    ));
    let policy = &config.upstreams[0].address_policy;
    let allowed: Vec<String> = policy
        .allowed
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(allowed, ["10.0.0.0/8", "fd00::/8", "192.168.1.7/32"]);
    let own: Vec<String> = policy.own.iter().map(|a| a.to_string()).collect();
    assert_eq!(own, [LISTEN, "127.0.0.1:9901"], "listeners and admin");
    // Without the key: any address but the default refusals.
    let config = accepted(&etcd_upstream("service = \"echo\"", ETCD));
    assert!(config.upstreams[0].address_policy.allowed.is_none());

    let key = "upstream[0].allowed_networks";
    refused(
        &etcd_upstream(
            "service = \"echo\"\nallowed_networks = [\"10.0.0.0/33\"]",
            ETCD,
        ),
        &format!("{key}[0]"),
        "is not a network",
    );
    refused(
        &etcd_upstream("service = \"echo\"\nallowed_networks = []", ETCD),
        key,
        "would refuse every discovered address",
    );
    refused(
        &text("", "", "allowed_networks = [\"10.0.0.0/8\"]", ""),
        key,
        "belongs to etcd and dns upstreams",
    );
}
