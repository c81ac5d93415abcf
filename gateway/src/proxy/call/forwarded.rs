//! `x-forwarded-for` and its kin towards the backend. The gateway appends the caller's address
//! (the real client's, when an L4 balancer named it in a PROXY header) to the chain a trusted
//! caller sent; anyone else's chain is not believed: it is replaced by the caller's address, and
//! the other forwarding headers it sent are removed, so a backend never acts on an address or
//! scheme a caller made up.

use std::net::IpAddr;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Forwarding headers only a trusted caller may send; removed from anyone else's calls (its
/// `x-forwarded-for` is then set anew).
pub static UNTRUSTED_FORWARDING: [HeaderName; 5] = [
    X_FORWARDED_FOR,
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-proto"),
];

/// A chain longer than this (a loop between proxies, or a caller padding it) is cut to the
/// gateway's own entry: backends should not parse kilobytes of addresses.
const MAX_CHAIN: usize = 1024;

/// The `x-forwarded-for` the backend receives: a trusted caller's chain (every value it sent,
/// in order) with `peer` appended; for anyone else, `peer` alone. `None` when the peer is
/// unknown and the caller is not trusted (the header is then removed).
pub fn forwarded_for(
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    trusted: bool,
) -> Option<HeaderValue> {
    if !(trusted && headers.contains_key(&X_FORWARDED_FOR)) {
        // The common case, a chain of one: the value of the worker's last caller, reused
        // (a connection's calls all come from one address).
        return peer.map(address_value);
    }
    let peer = peer.map(|ip| ip.to_canonical().to_string());
    let mut chain = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(text) = value.to_str() else { continue };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if !chain.is_empty() {
            chain.push_str(", ");
        }
        chain.push_str(text);
    }
    if chain.len() > MAX_CHAIN {
        chain.clear();
    }
    match (chain.is_empty(), peer) {
        (true, None) => None,
        (true, Some(peer)) => HeaderValue::try_from(peer).ok(),
        (false, None) => HeaderValue::try_from(chain).ok(),
        (false, Some(peer)) => HeaderValue::try_from(format!("{chain}, {peer}")).ok(),
    }
}

/// `ip` as a header value, from a one-entry cache per worker thread: the address of the
/// previous call is usually this call's, and a clone of its value costs no allocation.
fn address_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let ip = ip.to_canonical();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((cached, value)) if *cached == ip => value.clone(),
            _ => {
                let value = HeaderValue::try_from(ip.to_string())
                    .expect("an IP address is a valid header value");
                *last = Some((ip, value.clone()));
                value
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn text(v: Option<HeaderValue>) -> Option<String> {
        v.map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn a_trusted_callers_chain_gets_the_peer_appended() {
        let peer = Some("10.1.2.3".parse().unwrap());
        assert_eq!(
            text(forwarded_for(
                &headers(&["198.51.100.1", "203.0.113.9"]),
                peer,
                true
            )),
            Some("198.51.100.1, 203.0.113.9, 10.1.2.3".into())
        );
        assert_eq!(
            text(forwarded_for(&headers(&[]), peer, true)),
            Some("10.1.2.3".into())
        );
        // Another caller on the same worker gets its own address, not the cached one.
        let other = Some("10.1.2.4".parse().unwrap());
        assert_eq!(
            text(forwarded_for(&headers(&[]), other, false)),
            Some("10.1.2.4".into())
        );
        assert_eq!(
            text(forwarded_for(&headers(&[]), peer, false)),
            Some("10.1.2.3".into())
        );
    }

    #[test]
    fn an_untrusted_callers_chain_is_replaced() {
        let peer = Some("203.0.113.50".parse().unwrap());
        assert_eq!(
            text(forwarded_for(&headers(&["127.0.0.1"]), peer, false)),
            Some("203.0.113.50".into())
        );
        assert_eq!(forwarded_for(&headers(&["127.0.0.1"]), None, false), None);
    }

    #[test]
    fn mapped_addresses_read_as_ipv4_and_absurd_chains_are_cut() {
        let mapped = Some("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(
            text(forwarded_for(&headers(&[]), mapped, false)),
            Some("192.0.2.1".into())
        );
        let long = "1.1.1.1, ".repeat(200);
        assert_eq!(
            text(forwarded_for(&headers(&[&long]), mapped, true)),
            Some("192.0.2.1".into())
        );
    }
}
