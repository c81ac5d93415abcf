//! Issue #34 item 7: who the caller is, behind an L4 balancer and in front of a backend. A
//! listener with `proxy_protocol = true` reads a PROXY header (v1 or v2) from its trusted
//! sources (the balancer) and takes the client it names as the caller: the access log and the
//! backend's `x-forwarded-for` show it. A connection from a trusted source without a header is
//! closed and counted; anyone else is served as a direct client and its own forwarding headers
//! are not believed.

use std::net::SocketAddr;
use std::time::Duration;

use strait_tests::net::{free_addr, wait_metric};
use strait_tests::raw::{self, grpc_frame, RawResponse};
use strait_tests::{Backend, BackendOptions, Gateway};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::fixture::{config, Ep};

/// A unary call over `tcp` after writing `preamble` (a PROXY header, or nothing), asking the
/// backend which forwarding headers reached it.
async fn call_over(
    mut tcp: TcpStream,
    listen: SocketAddr,
    preamble: &[u8],
    headers: &[(&str, &str)],
) -> Result<RawResponse, h2::Error> {
    tcp.write_all(preamble).await.expect("writing the preamble");
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut headers = headers.to_vec();
    headers.push(("x-echo-seen", "x-forwarded-for,x-forwarded-host,forwarded"));
    raw::send(
        client,
        listen,
        "/bench.Echo/Unary",
        &headers,
        grpc_frame(&[]),
    )
    .await
}

/// A connection from `from` (a loopback address of the test's choosing).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("binding a loopback source address");
    socket.connect(to).await.expect("connecting")
}

fn seen(response: &RawResponse, name: &str) -> Option<String> {
    response
        .headers
        .get(format!("x-seen-{name}"))
        .map(|v| v.to_str().unwrap().to_string())
}

fn proxy_v2(client: [u8; 4], port: u16, to: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&to.port().to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_and_forwarded_for_name_the_real_client() {
    let backend = Backend::start(BackendOptions::named("b")).await;
    let (listen, admin) = (free_addr(), free_addr());
    // The balancer is 127.0.0.1; callers connecting from 127.0.0.2 are direct, untrusted ones.
    let text =
        config(
            listen,
            &[Ep {
                addr: backend.addr,
                weight: 1,
                region: "eu-west",
            }],
            "",
            "",
        )
        .replace(
            &format!("listen = \"{listen}\"\n"),
            &format!(
            "listen = \"{listen}\"\ntrusted_sources = [\"127.0.0.1/32\"]\nproxy_protocol = true\n"
        ),
        ) + &format!("\n[admin]\nlisten = \"{admin}\"\n\n[access_log]\npath = \"access.log\"\n");
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, admin));

    // v1 from the balancer: the client it names is the caller. That client is not itself a
    // trusted source, so the chain it claims is replaced and its x-forwarded-host removed.
    let v1 = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 51234 {}\r\n",
        listen.port()
    );
    let r = call_over(
        connect_from("127.0.0.1", listen).await,
        listen,
        v1.as_bytes(),
        &[
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-host", "evil.example"),
        ],
    )
    .await
    .expect("served");
    assert_eq!(r.grpc_status().as_deref(), Some("0"), "{r:?}");
    assert_eq!(seen(&r, "x-forwarded-for").as_deref(), Some("203.0.113.7"));
    assert_eq!(seen(&r, "x-forwarded-host"), None);

    // v2 from the balancer.
    let r = call_over(
        connect_from("127.0.0.1", listen).await,
        listen,
        &proxy_v2([198, 51, 100, 20], 40000, listen),
        &[],
    )
    .await
    .expect("served");
    assert_eq!(
        seen(&r, "x-forwarded-for").as_deref(),
        Some("198.51.100.20")
    );

    // A direct caller (127.0.0.2, not trusted) sends no header and is served as itself; its
    // own forwarding headers are not believed.
    let r = call_over(
        connect_from("127.0.0.2", listen).await,
        listen,
        b"",
        &[
            ("x-forwarded-for", "10.9.9.9"),
            ("forwarded", "for=10.9.9.9"),
        ],
    )
    .await
    .expect("served");
    assert_eq!(seen(&r, "x-forwarded-for").as_deref(), Some("127.0.0.2"));
    assert_eq!(seen(&r, "forwarded"), None);

    // The balancer's connection without a header is closed and counted.
    let refused = call_over(connect_from("127.0.0.1", listen).await, listen, b"", &[]).await;
    assert!(refused.is_err(), "{refused:?}");
    let counted = tokio::task::block_in_place(|| {
        wait_metric(
            admin,
            "strait_listener_rejected_total",
            &[("listener", "public"), ("reason", "proxy_protocol")],
            1.0,
        )
    });
    assert_eq!(counted, Some(1.0), "the refusal is counted");

    // The access log names the real clients.
    let log = gateway.dir.path().join("access.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let peers = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let peers: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| v["peer"].as_str().unwrap_or("-").to_string())
            .collect();
        if peers.len() >= 3 || std::time::Instant::now() > deadline {
            break peers;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ips: Vec<&str> = peers
        .iter()
        .map(|p| p.rsplit_once(':').map_or(p.as_str(), |(ip, _)| ip))
        .collect();
    assert_eq!(ips, vec!["203.0.113.7", "198.51.100.20", "127.0.0.2"]);
}

/// A trusted caller's chain is kept, with its own address appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_callers_forwarded_for_is_appended_to() {
    let backend = Backend::start(BackendOptions::named("b")).await;
    let listen = free_addr();
    let text = config(
        listen,
        &[Ep {
            addr: backend.addr,
            weight: 1,
            region: "eu-west",
        }],
        "",
        "",
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let r = call_over(
        connect_from("127.0.0.1", listen).await,
        listen,
        b"",
        &[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-host", "shop.example"),
        ],
    )
    .await
    .expect("served");
    assert_eq!(
        seen(&r, "x-forwarded-for").as_deref(),
        Some("198.51.100.1, 127.0.0.1")
    );
    assert_eq!(
        seen(&r, "x-forwarded-host").as_deref(),
        Some("shop.example")
    );
}
