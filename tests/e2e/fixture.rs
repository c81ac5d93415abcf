//! Shared set-up: backends, a gateway in front of them, and a client.

use std::net::SocketAddr;
use std::time::Duration;

use strait_tests::h2_backend::{Misbehaviour, RawH2Backend};
use strait_tests::net::free_addr;
use strait_tests::pb::echo_client::EchoClient;
use strait_tests::pb::EchoRequest;
use strait_tests::{Backend, BackendOptions, Gateway, MAX_MESSAGE};
use tonic::transport::Channel;

/// One endpoint line of an upstream.
pub struct Ep {
    pub addr: SocketAddr,
    pub weight: u32,
    pub region: &'static str,
}

/// Renders a config with one h2c listener routing `bench.Echo` to upstream "echo".
pub fn config(
    listen: SocketAddr,
    endpoints: &[Ep],
    extra_gateway: &str,
    extra_route: &str,
) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| {
            format!(
                "{{ addr = \"{}\", weight = {}, region = \"{}\" }}",
                e.addr, e.weight, e.region
            )
        })
        .collect();
    format!(
        r#"
[gateway]
region = "eu-west"
region_header = "x-strait-region"
threads = 2
shutdown_grace = "10s"
{extra_gateway}

[[listener]]
name = "public"
listen = "{listen}"

[[route]]
listener = "public"
service = "bench.Echo"
upstream = "echo"
{extra_route}

[[upstream]]
name = "echo"
endpoints = [{}]
connect_timeout = "500ms"
max_attempts = 3
"#,
        eps.join(", ")
    )
}

/// `config` with one endpoint (weight 100, eu-west) and nothing extra.
pub fn single_backend_config(listen: SocketAddr, backend: SocketAddr) -> String {
    config(
        listen,
        &[Ep {
            addr: backend,
            weight: 100,
            region: "eu-west",
        }],
        "",
        "",
    )
}

/// `single_backend_config` with the listener on TLS; `tls` is the inline table's inside.
pub fn tls_listener_config(listen: SocketAddr, backend: SocketAddr, tls: &str) -> String {
    single_backend_config(listen, backend).replace(
        &format!("listen = \"{listen}\""),
        &format!("listen = \"{listen}\"\ntls = {{ {tls} }}"),
    )
}

pub struct Setup {
    pub backends: Vec<Backend>,
    pub gateway: Gateway,
    pub addr: SocketAddr,
}

impl Setup {
    /// Starts one backend per (name, weight, region) and a gateway in front of them.
    pub async fn start(specs: &[(&str, u32, &'static str)]) -> Setup {
        Self::start_with(specs, "", "").await
    }

    pub async fn start_with(
        specs: &[(&str, u32, &'static str)],
        extra_gateway: &str,
        extra_route: &str,
    ) -> Setup {
        let mut backends = Vec::new();
        for (name, _, _) in specs {
            backends.push(Backend::start(BackendOptions::named(name)).await);
        }
        let endpoints: Vec<Ep> = specs
            .iter()
            .zip(&backends)
            .map(|((_, weight, region), b)| Ep {
                addr: b.addr,
                weight: *weight,
                region,
            })
            .collect();
        let addr = free_addr();
        let text = config(addr, &endpoints, extra_gateway, extra_route);
        let gateway = tokio::task::block_in_place(|| Gateway::start(&text, addr));
        Setup {
            backends,
            gateway,
            addr,
        }
    }

    pub async fn client(&self) -> EchoClient<Channel> {
        client(self.addr).await
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .expect("known backend")
    }
}

pub async fn client(addr: SocketAddr) -> EchoClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(5))
        // hyper's default is 16 KiB; calls.rs sends header blocks larger than one frame.
        .http2_max_header_list_size(1 << 20)
        .connect()
        .await
        .expect("connecting to the gateway");
    EchoClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

pub fn req(payload: &[u8]) -> EchoRequest {
    EchoRequest {
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// A gateway config whose upstream "echo" is discovered from etcd.
pub fn etcd_config(listen: SocketAddr, etcd_urls: &[String], extra_upstream: &str) -> String {
    let urls: Vec<String> = etcd_urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"
[gateway]
region = "eu-west"
threads = 2
shutdown_grace = "2s"

[etcd]
endpoints = [{}]
prefix = "/services/"
dial_timeout = "1s"

[[listener]]
name = "public"
listen = "{listen}"

[[route]]
listener = "public"
service = "bench.Echo"
upstream = "echo"

[[upstream]]
name = "echo"
discovery = "etcd"
service = "echo"
connect_timeout = "500ms"
{extra_upstream}
"#,
        urls.join(", ")
    )
}

/// A gateway whose first pick is the misbehaving backend (weight 100 against 1: smooth WRR
/// gives the heavier endpoint the first call), the echo backend second.
pub async fn behind_misbehaving(
    behaviour: Misbehaviour,
) -> (RawH2Backend, Backend, Gateway, SocketAddr) {
    let odd = RawH2Backend::start(behaviour).await;
    let echo = Backend::start(BackendOptions::named("echo")).await;
    let listen = free_addr();
    let text = config(
        listen,
        &[
            Ep {
                addr: odd.addr,
                weight: 100,
                region: "eu-west",
            },
            Ep {
                addr: echo.addr,
                weight: 1,
                region: "eu-west",
            },
        ],
        "",
        "",
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    (odd, echo, gateway, listen)
}

/// Makes calls until `done` holds for the backend that served one, or `timeout` passes.
/// Returns how many calls it took, panicking on timeout.
pub async fn call_until(
    client: &mut EchoClient<Channel>,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&str) -> bool,
) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut calls = 0;
    loop {
        calls += 1;
        if let Ok(reply) = client.unary(req(b"")).await {
            if done(&reply.into_inner().served_by) {
                return calls;
            }
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {calls} calls waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Makes calls until `count` different backends have served one (panics after `timeout`).
pub async fn call_until_served_by_n(
    client: &mut EchoClient<Channel>,
    timeout: Duration,
    count: usize,
) {
    let mut seen = std::collections::HashSet::new();
    let what = format!("{count} backends serve");
    call_until(client, timeout, &what, |b| {
        seen.insert(b.to_string());
        seen.len() == count
    })
    .await;
}

/// Who served each of `n` calls (all must succeed).
pub async fn served_by(client: &mut EchoClient<Channel>, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let reply = client
            .unary(req(b""))
            .await
            .unwrap_or_else(|s| panic!("call {i} failed: {s:?}"));
        out.push(reply.into_inner().served_by);
    }
    out
}

pub fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

/// One bidi stream and its way of sending the next ping and reading the reply.
pub struct PingPong {
    tx: tokio::sync::mpsc::Sender<strait_tests::pb::EchoRequest>,
    replies: tonic::Streaming<strait_tests::pb::EchoReply>,
    round: u32,
}

impl PingPong {
    pub async fn open(addr: SocketAddr) -> PingPong {
        Self::on(client(addr).await).await
    }

    /// A stream on an existing client (a TLS channel, say).
    pub async fn on(mut c: EchoClient<Channel>) -> PingPong {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let replies = c
            .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("bidi starts")
            .into_inner();
        PingPong {
            tx,
            replies,
            round: 0,
        }
    }

    /// One round trip; returns who served the stream.
    pub async fn ping(&mut self) -> String {
        let payload = format!("ping-{}", self.round);
        self.tx
            .send(req(payload.as_bytes()))
            .await
            .expect("stream open");
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_stream::StreamExt::next(&mut self.replies),
        )
        .await
        .expect("a reply")
        .expect("stream not ended")
        .expect("reply ok");
        assert_eq!(reply.payload, payload.into_bytes());
        self.round += 1;
        reply.served_by
    }

    /// Cancels the stream the way a caller giving up does: RST_STREAM(CANCEL) while the
    /// request side is still open (a half-close first would let the backend finish with OK).
    pub fn cancel(self) {
        let PingPong { tx, replies, .. } = self;
        drop(replies);
        drop(tx);
    }

    /// Half-closes and expects the stream to end with OK.
    pub async fn finish(mut self) {
        drop(self.tx);
        assert!(
            tokio_stream::StreamExt::next(&mut self.replies)
                .await
                .is_none(),
            "the stream ends cleanly after the client half-closes"
        );
        assert!(self.replies.trailers().await.is_ok(), "ends with OK");
    }
}
