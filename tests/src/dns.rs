//! A real authoritative DNS server on loopback (hickory-server over UDP and TCP), whose records a
//! test changes while the gateway resolves them, and which it can stop and start again.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;

/// Name (lower case, no trailing dot) to its addresses and their TTL; absent names are NXDOMAIN.
type Zone = HashMap<String, (Vec<IpAddr>, u32)>;

#[derive(Clone, Default)]
struct Records {
    zone: Arc<Mutex<Zone>>,
    queries: Arc<Mutex<HashMap<String, u64>>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[async_trait::async_trait]
impl RequestHandler for Records {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        let Ok(info) = request.request_info() else {
            header.set_response_code(ResponseCode::FormErr);
            return send(&mut response, builder.build_no_records(header), header).await;
        };
        let qname = Name::from(info.query.name());
        let name = key(&qname.to_string());
        *self
            .queries
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default() += 1;
        let entry = self.zone.lock().unwrap().get(&name).cloned();
        let Some((addrs, ttl)) = entry else {
            header.set_response_code(ResponseCode::NXDomain);
            return send(&mut response, builder.build_no_records(header), header).await;
        };
        let records: Vec<Record> = addrs
            .iter()
            .filter_map(|ip| match (ip, info.query.query_type()) {
                (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
                (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
                _ => None,
            })
            .map(|rdata| Record::from_rdata(qname.clone(), ttl, rdata))
            .collect();
        let message = builder.build(header, records.iter(), [], [], []);
        send(&mut response, message, header).await
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    message: hickory_server::authority::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    header: Header,
) -> ResponseInfo {
    match response.send_response(message).await {
        Ok(info) => info,
        Err(_) => header.into(),
    }
}

/// A running DNS server; stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    records: Records,
    server: Option<ServerFuture<Records>>,
}

impl DnsServer {
    /// Starts on a free loopback port, UDP and TCP, in the current runtime.
    pub async fn start() -> DnsServer {
        for _ in 0..20 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("binding the DNS server's UDP socket");
            let addr = udp.local_addr().expect("bound address");
            // TCP on the same port; another test may hold it, then take another port.
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                return Self::serve(addr, udp, tcp, Records::default());
            }
        }
        panic!("no free port for the DNS server on UDP and TCP at once");
    }

    fn serve(
        addr: SocketAddr,
        udp: tokio::net::UdpSocket,
        tcp: tokio::net::TcpListener,
        records: Records,
    ) -> DnsServer {
        let mut server = ServerFuture::new(records.clone());
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5));
        DnsServer {
            addr,
            records,
            server: Some(server),
        }
    }

    /// `name` answers with `addrs` (A and AAAA by family), every record with `ttl` seconds.
    pub fn set(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        self.records
            .zone
            .lock()
            .unwrap()
            .insert(key(name), (addrs.to_vec(), ttl));
    }

    /// `name` answers NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.records.zone.lock().unwrap().remove(&key(name));
    }

    /// Queries (of any type) received for `name`.
    pub fn queries(&self, name: &str) -> u64 {
        self.records
            .queries
            .lock()
            .unwrap()
            .get(&key(name))
            .copied()
            .unwrap_or(0)
    }

    /// Closes both sockets: queries get no answer until `restart`.
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.shutdown_gracefully().await;
        }
    }

    /// Serves again on the same port with the same records.
    pub async fn restart(&mut self) {
        self.stop().await;
        let udp = tokio::net::UdpSocket::bind(self.addr)
            .await
            .expect("rebinding the DNS server's UDP port");
        let tcp = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebinding the DNS server's TCP port");
        let records = self.records.clone();
        *self = Self::serve(self.addr, udp, tcp, records);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.shutdown_token().cancel();
        }
    }
}
