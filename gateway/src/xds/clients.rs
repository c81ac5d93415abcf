//! The xDS clients connected now, for `/upstreams`, the status page and the metrics. Written
//! by the ADS streams (a few events per client, never on the gateway's call path), read by the
//! admin listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::XdsMetrics;

use super::resources::ResourceType;
use super::session::{NodeInfo, RequestKind};

/// One connected client as operators see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct XdsClientView {
    pub node_id: String,
    pub region: Option<String>,
    pub peer: Option<String>,
    pub connected_unix_ms: u64,
    /// The last version the client accepted, per type (lds, rds, cds, eds).
    pub acked: BTreeMap<&'static str, String>,
    pub nacks: u64,
    /// The client's reason for its latest NACK.
    pub last_nack: Option<String>,
}

/// The ADS server's clients and instruments. Cheap to share.
#[derive(Default)]
pub struct XdsClients {
    next_id: AtomicU64,
    clients: Mutex<BTreeMap<u64, XdsClientView>>,
    metrics: Option<XdsMetrics>,
}

impl XdsClients {
    pub fn new(metrics: Option<XdsMetrics>) -> Self {
        Self {
            metrics,
            ..Default::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, XdsClientView>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The clients connected now, oldest first.
    pub fn list(&self) -> Vec<XdsClientView> {
        self.lock().values().cloned().collect()
    }

    /// A client named itself in its first request: listed until the guard drops (the stream
    /// ended, however it ended).
    pub fn connected(
        self: &Arc<Self>,
        node: &NodeInfo,
        peer: Option<SocketAddr>,
    ) -> ConnectedClient {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connected_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.lock().insert(
            id,
            XdsClientView {
                node_id: node.id.clone(),
                region: node.region.clone(),
                peer: peer.map(|p| p.to_string()),
                connected_unix_ms,
                acked: BTreeMap::new(),
                nacks: 0,
                last_nack: None,
            },
        );
        if let Some(m) = &self.metrics {
            m.clients.inc();
        }
        ConnectedClient {
            id,
            clients: self.clone(),
        }
    }

    pub fn count_push(&self, kind: ResourceType) {
        if let Some(m) = &self.metrics {
            m.pushes.with_label_values(&[kind.label()]).inc();
        }
    }

    /// A request, stream or connection the server refused (`unknown_type`, `stream_error`,
    /// `delta`, `max_connections`).
    pub fn count_rejected(&self, reason: &'static str) {
        if let Some(m) = &self.metrics {
            m.rejected.with_label_values(&[reason]).inc();
        }
    }
}

/// A listed client; dropping it removes it from the list.
pub struct ConnectedClient {
    id: u64,
    clients: Arc<XdsClients>,
}

impl ConnectedClient {
    /// Records what the client said about a response (ACK or NACK).
    pub fn note(&self, kind: &RequestKind) {
        let mut clients = self.clients.lock();
        let Some(view) = clients.get_mut(&self.id) else {
            return;
        };
        match kind {
            RequestKind::Ack { kind, version } => {
                view.acked.insert(kind.label(), version.clone());
            }
            RequestKind::Nack { kind, detail, .. } => {
                view.nacks += 1;
                view.last_nack = Some(detail.clone());
                if let Some(m) = &self.clients.metrics {
                    m.nacks.with_label_values(&[kind.label()]).inc();
                }
            }
            _ => {}
        }
    }
}

impl Drop for ConnectedClient {
    fn drop(&mut self) {
        self.clients.lock().remove(&self.id);
        if let Some(m) = &self.clients.metrics {
            m.clients.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_while_connected_with_acks_and_nacks() {
        let clients = Arc::new(XdsClients::default());
        let node = NodeInfo {
            id: "n1".into(),
            region: Some("eu-west".into()),
        };
        let client = clients.connected(&node, None);
        client.note(&RequestKind::Ack {
            kind: ResourceType::Endpoint,
            version: "4".into(),
        });
        client.note(&RequestKind::Nack {
            kind: ResourceType::Cluster,
            version: "3".into(),
            detail: "no".into(),
        });
        let list = clients.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].acked.get("eds").map(String::as_str), Some("4"));
        assert_eq!(
            (list[0].nacks, list[0].last_nack.as_deref()),
            (1, Some("no"))
        );
        drop(client);
        assert!(clients.list().is_empty());
    }
}
