//! `strait xds-bootstrap`: the bootstrap file a gRPC client reads from `GRPC_XDS_BOOTSTRAP`
//! (gRFC A27), pointing at this gateway's xDS server and stating the client's region.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapSpec {
    /// host:port of the xDS server.
    pub server: String,
    /// The client's region: its endpoints are priority 0 for this client.
    pub region: Option<String>,
    pub node_id: String,
    /// PEM file of the CA that signed the xDS server's certificate; plaintext without it.
    pub ca_file: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootstrapError {
    #[error("--server {0:?} is not host:port")]
    BadServer(String),
    #[error("--node-id must not be empty")]
    EmptyNodeId,
}

/// The default node id: the host's name and a random suffix, so bootstraps written for two
/// clients on one host are told apart in `/upstreams` (clients sharing one file share its id).
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "client".to_string());
    format!("{host}-{:08x}", rand::random::<u32>())
}

pub fn bootstrap(spec: &BootstrapSpec) -> Result<Value, BootstrapError> {
    let valid_server = spec
        .server
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid_server {
        return Err(BootstrapError::BadServer(spec.server.clone()));
    }
    if spec.node_id.trim().is_empty() {
        return Err(BootstrapError::EmptyNodeId);
    }
    let creds = match &spec.ca_file {
        // The "tls" channel credentials of gRFC A65.
        Some(ca) => json!([{"type": "tls", "config": {"ca_certificate_file": ca}}]),
        None => json!([{"type": "insecure"}]),
    };
    let mut locality = serde_json::Map::new();
    if let Some(region) = &spec.region {
        locality.insert("region".into(), json!(region));
    }
    Ok(json!({
        "xds_servers": [{
            "server_uri": spec.server,
            "channel_creds": creds,
            // Without it, clients fall back to xDS v2, which this server does not speak.
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": spec.node_id,
            "locality": locality,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BootstrapSpec {
        BootstrapSpec {
            server: "127.0.0.1:18000".into(),
            region: Some("eu-west".into()),
            node_id: "n1".into(),
            ca_file: None,
        }
    }

    #[test]
    fn plaintext_bootstrap_names_server_node_and_region() {
        let b = bootstrap(&spec()).unwrap();
        assert_eq!(b["xds_servers"][0]["server_uri"], "127.0.0.1:18000");
        assert_eq!(b["xds_servers"][0]["channel_creds"][0]["type"], "insecure");
        assert_eq!(b["xds_servers"][0]["server_features"][0], "xds_v3");
        assert_eq!(b["node"]["id"], "n1");
        assert_eq!(b["node"]["locality"]["region"], "eu-west");
    }

    #[test]
    fn tls_bootstrap_names_the_ca() {
        let mut s = spec();
        s.ca_file = Some("/etc/ca.pem".into());
        let b = bootstrap(&s).unwrap();
        assert_eq!(b["xds_servers"][0]["channel_creds"][0]["type"], "tls");
        assert_eq!(
            b["xds_servers"][0]["channel_creds"][0]["config"]["ca_certificate_file"],
            "/etc/ca.pem"
        );
    }

    #[test]
    fn bad_server_and_empty_node_id_are_refused() {
        for server in ["127.0.0.1", ":18000", "host:port", "h:70000"] {
            let mut s = spec();
            s.server = server.into();
            assert_eq!(bootstrap(&s), Err(BootstrapError::BadServer(server.into())));
        }
        let mut s = spec();
        s.node_id = " ".into();
        assert_eq!(bootstrap(&s), Err(BootstrapError::EmptyNodeId));
    }

    #[test]
    fn default_node_ids_differ() {
        assert_ne!(default_node_id(), default_node_id());
    }
}
