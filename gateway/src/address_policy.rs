//! Which discovered addresses an upstream may send calls to. etcd and DNS are written by other
//! teams and other programs: a registration of `169.254.169.254:80` (a cloud's metadata
//! service) or of the gateway's own admin port would otherwise be routed like any backend.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// An upstream's rule for discovered addresses (static endpoints are the operator's own and
/// are not checked).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressPolicy {
    /// `allowed_networks`: when set, only addresses inside one of these are taken.
    pub allowed: Option<Vec<IpNet>>,
    /// The gateway's own listening addresses (listeners, admin, xDS): never a backend.
    pub own: Vec<SocketAddr>,
}

/// Why a discovered address was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressRefusal {
    /// One of the gateway's own listening addresses: calls would loop back into it.
    OwnAddress,
    /// 0.0.0.0 or `::`: connecting to it reaches this host.
    Unspecified,
    /// 169.254.0.0/16 or fe80::/10 (cloud metadata services live there), refused unless
    /// `allowed_networks` names it.
    LinkLocal,
    /// Outside every network of `allowed_networks`.
    NotAllowed,
}

impl AddressRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressRefusal::OwnAddress => "own_address",
            AddressRefusal::Unspecified => "unspecified",
            AddressRefusal::LinkLocal => "link_local",
            AddressRefusal::NotAllowed => "not_allowed",
        }
    }
}

impl AddressPolicy {
    /// Whether a discovered `addr` may be an endpoint.
    pub fn check(&self, addr: SocketAddr) -> Result<(), AddressRefusal> {
        // `::ffff:169.254.169.254` is 169.254.169.254 to the kernel.
        let ip = addr.ip().to_canonical();
        if ip.is_unspecified() {
            return Err(AddressRefusal::Unspecified);
        }
        if self.own.iter().any(|own| is_own(*own, ip, addr.port())) {
            return Err(AddressRefusal::OwnAddress);
        }
        match &self.allowed {
            Some(networks) if networks.iter().any(|n| n.contains(&ip)) => Ok(()),
            Some(_) => Err(AddressRefusal::NotAllowed),
            None if is_link_local(ip) => Err(AddressRefusal::LinkLocal),
            None => Ok(()),
        }
    }
}

/// `ip:port` reaches the gateway's own `listen`: the same address, or, for a listener on all
/// interfaces, the same port on a loopback address.
fn is_own(listen: SocketAddr, ip: IpAddr, port: u16) -> bool {
    if listen.port() != port {
        return false;
    }
    let listen_ip = listen.ip().to_canonical();
    listen_ip == ip || (listen_ip.is_unspecified() && ip.is_loopback())
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        // fe80::/10
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_default_refuses_link_local_unspecified_and_the_gateway_itself() {
        let policy = AddressPolicy {
            allowed: None,
            own: vec![addr("0.0.0.0:8443"), addr("127.0.0.1:9901")],
        };
        assert_eq!(policy.check(addr("10.0.0.7:50051")), Ok(()));
        assert_eq!(policy.check(addr("[2001:db8::1]:50051")), Ok(()));
        for (text, why) in [
            ("169.254.169.254:80", AddressRefusal::LinkLocal),
            ("[::ffff:169.254.169.254]:80", AddressRefusal::LinkLocal),
            ("[fe80::1]:50051", AddressRefusal::LinkLocal),
            ("0.0.0.0:50051", AddressRefusal::Unspecified),
            ("[::]:50051", AddressRefusal::Unspecified),
            ("127.0.0.1:9901", AddressRefusal::OwnAddress),
            ("127.0.0.1:8443", AddressRefusal::OwnAddress),
            ("127.0.0.2:8443", AddressRefusal::OwnAddress),
            ("[::1]:8443", AddressRefusal::OwnAddress),
        ] {
            assert_eq!(policy.check(addr(text)), Err(why), "{text}");
        }
        // Another port on loopback, or the wildcard listener's port on another host: fine.
        assert_eq!(policy.check(addr("127.0.0.1:50051")), Ok(()));
        assert_eq!(policy.check(addr("10.0.0.7:8443")), Ok(()));
    }

    #[test]
    fn allowed_networks_is_an_allow_list_that_can_name_link_local() {
        let policy = AddressPolicy {
            allowed: Some(vec![
                "10.0.0.0/8".parse().unwrap(),
                "169.254.10.0/24".parse().unwrap(),
            ]),
            own: vec![addr("10.0.0.1:8443")],
        };
        assert_eq!(policy.check(addr("10.1.2.3:50051")), Ok(()));
        assert_eq!(policy.check(addr("169.254.10.9:50051")), Ok(()));
        assert_eq!(
            policy.check(addr("169.254.169.254:80")),
            Err(AddressRefusal::NotAllowed)
        );
        assert_eq!(
            policy.check(addr("192.168.1.1:50051")),
            Err(AddressRefusal::NotAllowed)
        );
        assert_eq!(
            policy.check(addr("10.0.0.1:8443")),
            Err(AddressRefusal::OwnAddress),
            "never the gateway itself, whatever the list"
        );
    }
}
