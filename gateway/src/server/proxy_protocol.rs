//! The PROXY protocol (HAProxy's v1 text and v2 binary header) on listeners behind an L4
//! balancer: the balancer opens the connection, so the socket's peer is the balancer; the header
//! it writes first names the real client. Read only from the listener's `trusted_sources` (a
//! header from anyone else would let a caller pick the address its limits, logs and
//! `x-forwarded-for` see). Parsing is `ppp`'s; this module reads exactly one header off the
//! connection and says which client it names.

use std::net::SocketAddr;

use ppp::v1;
use ppp::v2;
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A header longer than this is refused: v1 is at most 107 bytes; v2's TLVs from real
/// balancers (AWS, GCP, HAProxy) are a few hundred.
pub const MAX_HEADER: usize = 4096;

/// Which connections of a `proxy_protocol` listener must start with a PROXY header: those from
/// its trusted sources, within the handshake timeout.
#[derive(Debug, Clone)]
pub struct HeaderRule {
    pub trusted: std::sync::Arc<[ipnet::IpNet]>,
    pub deadline: std::time::Duration,
}

impl HeaderRule {
    /// Whether a connection from `peer` carries a header (an IPv4-mapped peer as its IPv4).
    pub fn expects_header_from(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|n| n.contains(&peer))
    }
}

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// Not enough bytes yet to tell.
    Incomplete,
    /// A whole header of `len` bytes. `client` is the real client it names, `None` when it
    /// names none (LOCAL, UNKNOWN, UNSPEC, a Unix socket: the balancer's own connection, such
    /// as its health check), so the socket's peer stands.
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// Not a PROXY header.
    Invalid(String),
}

/// Reads `buf` as the start of a connection that must begin with a PROXY header.
pub fn parse(buf: &[u8]) -> Parsed {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(header)) => Parsed::Header {
            len: header.header.len(),
            client: match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(header)) => Parsed::Header {
            len: header.len(),
            client: match (header.command, header.addresses) {
                (v2::Command::Local, _) => None,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
            },
        },
        HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("PROXY v1: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("PROXY v2: {e}")),
    }
}

/// Why a connection that had to start with a PROXY header is refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection ended before a whole PROXY header")]
    Closed,
    #[error("{0}")]
    Invalid(String),
    #[error("a PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// A header read off a connection, and the bytes read after it (the client's own first bytes,
/// to be given back to the stream).
#[derive(Debug)]
pub struct Received {
    pub client: Option<SocketAddr>,
    pub after: Vec<u8>,
}

/// Reads one PROXY header from `stream`. Reads what the socket has, so bytes after the header
/// may come with it: they are returned in `after`.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Received, HeaderError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        // At most MAX_HEADER + one chunk is ever held: past MAX_HEADER the loop ends.
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf) {
            Parsed::Header { len, client } => {
                return Ok(Received {
                    client,
                    after: buf.split_off(len),
                })
            }
            Parsed::Invalid(why) => return Err(HeaderError::Invalid(why)),
            Parsed::Incomplete if buf.len() >= MAX_HEADER => return Err(HeaderError::TooLong),
            Parsed::Incomplete => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

    fn v2_tcp4(client: [u8; 4], port: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x21); // version 2, PROXY
        h.push(0x11); // TCP over IPv4
        h.extend_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(&client);
        h.extend_from_slice(&[10, 0, 0, 1]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        h.extend_from_slice(tlvs);
        h
    }

    #[test]
    fn v1_names_the_client_and_its_length() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n";
        let mut with_data = h.to_vec();
        with_data.extend_from_slice(b"PRI * HTTP/2.0");
        assert_eq!(
            parse(&with_data),
            Parsed::Header {
                len: h.len(),
                client: Some("203.0.113.7:51234".parse().unwrap())
            }
        );
        let h6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n";
        assert_eq!(
            parse(h6),
            Parsed::Header {
                len: h6.len(),
                client: Some("[2001:db8::7]:51234".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                client: None
            }
        );
        assert_eq!(parse(b"PROXY TCP4 203.0"), Parsed::Incomplete);
    }

    #[test]
    fn v2_names_the_client_and_local_names_none() {
        let h = v2_tcp4([198, 51, 100, 9], 40000, &[0x04, 0x00, 0x01, 0x2a]);
        let mut with_data = h.clone();
        with_data.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&with_data),
            Parsed::Header {
                len: h.len(),
                client: Some("198.51.100.9:40000".parse().unwrap())
            }
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                client: None
            }
        );
        assert_eq!(parse(&h[..20]), Parsed::Incomplete);
    }

    #[test]
    fn other_first_bytes_are_not_a_header() {
        for bytes in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert!(matches!(parse(bytes), Parsed::Invalid(_)), "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn reading_keeps_what_follows_the_header() {
        let mut input = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n".to_vec();
        input.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let mut reader = &input[..];
        let got = read_header(&mut reader).await.unwrap();
        assert_eq!(got.client, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(got.after, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let mut short = &b"PROXY TCP4 203.0"[..];
        assert!(matches!(
            read_header(&mut short).await,
            Err(HeaderError::Closed)
        ));
        let endless = vec![b'\r'; MAX_HEADER * 2];
        let mut endless = &endless[..];
        assert!(read_header(&mut endless).await.is_err());
    }

    proptest! {
        /// Any bytes: a verdict, never a panic; a header's length never exceeds the input.
        #[test]
        fn any_bytes_get_a_verdict(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Parsed::Header { len, .. } = parse(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        /// A v2 header followed by anything: the same header, whatever follows.
        #[test]
        fn what_follows_does_not_change_the_header(
            client in any::<[u8; 4]>(), port in any::<u16>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let h = v2_tcp4(client, port, &[]);
            let mut input = h.clone();
            input.extend_from_slice(&tail);
            prop_assert_eq!(
                parse(&input),
                Parsed::Header { len: h.len(), client: Some(SocketAddr::from((client, port))) }
            );
        }
    }
}
