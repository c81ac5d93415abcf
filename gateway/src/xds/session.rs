//! One ADS stream's protocol state, as a plain type: what the client subscribed to per resource
//! type, what was last sent (version, nonce, resources), and what the client said about it.
//!
//! The xDS rules it follows (state of the world):
//! - a request whose `response_nonce` is not the last one sent for its type is stale and ignored;
//! - a request answering the last nonce ACKs it, or NACKs it when it carries `error_detail`: a
//!   NACKed set is not sent again, only a changed one;
//! - a request that changes the subscription, or the first one of a type, is answered at once,
//!   even with no resources (for Listener and Cluster, an empty answer tells the client the name
//!   does not exist);
//! - a new view is pushed for every subscribed type whose resources changed for this client.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;

use super::resources::{self, ResourceType};
use super::view::PublishedView;

/// The client, as its first request's `node` describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub region: Option<String>,
}

/// What one request was, for logs, metrics and the list of clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// The first request of a type.
    Subscribe(ResourceType),
    Ack {
        kind: ResourceType,
        version: String,
    },
    Nack {
        kind: ResourceType,
        /// The version rejected (the one the client last sent).
        version: String,
        /// The client's reason (`error_detail.message`).
        detail: String,
    },
    /// Answers a response that is no longer the latest; ignored.
    Stale(ResourceType),
    /// A type this server does not serve.
    UnknownType(String),
}

#[derive(Debug, Default)]
struct Subscription {
    /// Names asked for; empty with `wildcard` for Listener and Cluster means all.
    names: BTreeSet<String>,
    wildcard: bool,
    last_sent: Option<Sent>,
}

#[derive(Debug)]
struct Sent {
    nonce: String,
    resources: Vec<Any>,
}

#[derive(Debug, Default)]
pub struct Session {
    node: Option<NodeInfo>,
    next_nonce: u64,
    subscriptions: HashMap<ResourceType, Subscription>,
}

impl Session {
    /// The client, once its first request named it.
    pub fn node(&self) -> Option<&NodeInfo> {
        self.node.as_ref()
    }

    /// Takes one request; returns what it was and the response to send, if any.
    pub fn on_request(
        &mut self,
        request: &DiscoveryRequest,
        view: &PublishedView,
        version: u64,
    ) -> (RequestKind, Option<DiscoveryResponse>) {
        if self.node.is_none() {
            // Only the first request must carry the node; later ones may leave it out.
            let node = request.node.as_ref();
            self.node = Some(NodeInfo {
                id: node.map(|n| n.id.clone()).unwrap_or_default(),
                region: node
                    .and_then(|n| n.locality.as_ref())
                    .map(|l| l.region.clone())
                    .filter(|r| !r.is_empty()),
            });
        }
        let Some(kind) = ResourceType::from_type_url(&request.type_url) else {
            return (RequestKind::UnknownType(request.type_url.clone()), None);
        };
        let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
        let subscription = self.subscriptions.entry(kind).or_default();
        let outcome = match &subscription.last_sent {
            Some(sent) if request.response_nonce != sent.nonce => {
                return (RequestKind::Stale(kind), None);
            }
            None => RequestKind::Subscribe(kind),
            Some(_) => match &request.error_detail {
                Some(status) => RequestKind::Nack {
                    kind,
                    version: request.version_info.clone(),
                    detail: status.message.clone(),
                },
                None => RequestKind::Ack {
                    kind,
                    version: request.version_info.clone(),
                },
            },
        };
        let wildcard = names.is_empty() && kind.absence_means_removal();
        let changed_names = subscription.last_sent.is_none()
            || subscription.names != names
            || subscription.wildcard != wildcard;
        subscription.names = names;
        subscription.wildcard = wildcard;
        if !changed_names {
            // An ACK or a NACK of the current set: nothing new to send.
            return (outcome, None);
        }
        let response = self.respond(kind, view, version, true);
        (outcome, response)
    }

    /// A new view: the responses for every subscribed type whose resources changed.
    pub fn on_view(&mut self, view: &PublishedView, version: u64) -> Vec<DiscoveryResponse> {
        // `respond` skips the types this client has not subscribed to.
        ResourceType::ALL
            .into_iter()
            .filter_map(|t| self.respond(t, view, version, false))
            .collect()
    }

    fn respond(
        &mut self,
        kind: ResourceType,
        view: &PublishedView,
        version: u64,
        always: bool,
    ) -> Option<DiscoveryResponse> {
        let region = self.node.as_ref().and_then(|n| n.region.clone());
        let subscription = self.subscriptions.get_mut(&kind)?;
        let resources: Vec<Any> = view
            .upstreams
            .iter()
            .filter(|(name, _)| subscription.wildcard || subscription.names.contains(*name))
            .map(|(name, endpoints)| match kind {
                ResourceType::Listener => resources::listener(name),
                ResourceType::Route => resources::route_configuration(name),
                ResourceType::Cluster => resources::cluster(name),
                ResourceType::Endpoint => {
                    resources::load_assignment(name, endpoints, region.as_deref())
                }
            })
            .collect();
        let unchanged = subscription
            .last_sent
            .as_ref()
            .is_some_and(|sent| sent.resources == resources);
        if unchanged && !always {
            return None;
        }
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        subscription.last_sent = Some(Sent {
            nonce: nonce.clone(),
            resources: resources.clone(),
        });
        Some(DiscoveryResponse {
            version_info: version.to_string(),
            resources,
            type_url: kind.type_url(),
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::view::{Health, PublishedEndpoint};
    use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
    use envoy_types::pb::google::rpc::Status;

    fn view(ports: &[u16]) -> PublishedView {
        let mut v = PublishedView::default();
        v.upstreams.insert(
            "echo".into(),
            ports
                .iter()
                .map(|p| PublishedEndpoint {
                    region: Some("eu-west".into()),
                    zone: None,
                    addr: format!("127.0.0.1:{p}").parse().unwrap(),
                    weight: 100,
                    health: Health::Unknown,
                })
                .collect(),
        );
        v.upstreams.insert("other".into(), Vec::new());
        v
    }

    fn request(kind: ResourceType, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: kind.type_url(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.to_string(),
            node: Some(Node {
                id: "client-1".into(),
                locality: Some(Locality {
                    region: "eu-west".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn first_request_is_answered_and_names_the_client() {
        let mut s = Session::default();
        let (kind, response) = s.on_request(
            &request(ResourceType::Listener, &["echo"], ""),
            &view(&[1]),
            7,
        );
        assert_eq!(kind, RequestKind::Subscribe(ResourceType::Listener));
        let r = response.expect("answered");
        assert_eq!((r.version_info.as_str(), r.resources.len()), ("7", 1));
        assert_eq!(
            s.node(),
            Some(&NodeInfo {
                id: "client-1".into(),
                region: Some("eu-west".into())
            })
        );
    }

    #[test]
    fn unknown_names_get_an_empty_answer() {
        let mut s = Session::default();
        let (_, response) = s.on_request(
            &request(ResourceType::Cluster, &["nope"], ""),
            &view(&[1]),
            1,
        );
        assert!(response.expect("answered").resources.is_empty());
    }

    #[test]
    fn wildcard_listener_request_gets_every_upstream() {
        let mut s = Session::default();
        let (_, response) = s.on_request(&request(ResourceType::Listener, &[], ""), &view(&[1]), 1);
        assert_eq!(response.unwrap().resources.len(), 2);
    }

    #[test]
    fn ack_sends_nothing_and_a_change_is_pushed_once() {
        let mut s = Session::default();
        let (_, r) = s.on_request(
            &request(ResourceType::Endpoint, &["echo"], ""),
            &view(&[1]),
            1,
        );
        let nonce = r.unwrap().nonce;
        let mut ack = request(ResourceType::Endpoint, &["echo"], &nonce);
        ack.version_info = "1".into();
        let (kind, r) = s.on_request(&ack, &view(&[1]), 1);
        assert_eq!(
            kind,
            RequestKind::Ack {
                kind: ResourceType::Endpoint,
                version: "1".into()
            }
        );
        assert!(r.is_none());
        assert!(
            s.on_view(&view(&[1]), 2).is_empty(),
            "same endpoints: no push"
        );
        let pushed = s.on_view(&view(&[1, 2]), 3);
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].version_info, "3");
        assert_ne!(pushed[0].nonce, nonce);
    }

    #[test]
    fn stale_nonce_is_ignored_and_nack_is_reported_without_a_resend() {
        let mut s = Session::default();
        let (_, r) = s.on_request(
            &request(ResourceType::Endpoint, &["echo"], ""),
            &view(&[1]),
            1,
        );
        let first = r.unwrap().nonce;
        let second = s.on_view(&view(&[1, 2]), 2).remove(0).nonce;
        let (kind, r) = s.on_request(
            &request(ResourceType::Endpoint, &["echo", "other"], &first),
            &view(&[1, 2]),
            2,
        );
        assert_eq!(kind, RequestKind::Stale(ResourceType::Endpoint));
        assert!(r.is_none(), "a stale request changes nothing");
        let mut nack = request(ResourceType::Endpoint, &["echo"], &second);
        nack.version_info = "1".into();
        nack.error_detail = Some(Status {
            code: 3,
            message: "bad weight".into(),
            details: vec![],
        });
        let (kind, r) = s.on_request(&nack, &view(&[1, 2]), 2);
        assert_eq!(
            kind,
            RequestKind::Nack {
                kind: ResourceType::Endpoint,
                version: "1".into(),
                detail: "bad weight".into()
            }
        );
        assert!(r.is_none(), "the rejected set is not sent again");
        assert!(s.on_view(&view(&[1, 2]), 3).is_empty());
        assert_eq!(s.on_view(&view(&[2]), 4).len(), 1, "a changed set is");
    }

    #[test]
    fn changing_the_names_answers_at_once() {
        let mut s = Session::default();
        let (_, r) = s.on_request(&request(ResourceType::Route, &["echo"], ""), &view(&[1]), 1);
        let nonce = r.unwrap().nonce;
        let (kind, r) = s.on_request(
            &request(ResourceType::Route, &["echo", "other"], &nonce),
            &view(&[1]),
            1,
        );
        assert!(matches!(kind, RequestKind::Ack { .. }), "{kind:?}");
        assert_eq!(r.unwrap().resources.len(), 2);
    }

    #[test]
    fn unknown_type_is_reported_not_answered() {
        let mut s = Session::default();
        let mut req = request(ResourceType::Listener, &[], "");
        req.type_url =
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into();
        let (kind, r) = s.on_request(&req, &view(&[1]), 1);
        assert!(matches!(kind, RequestKind::UnknownType(_)));
        assert!(r.is_none());
    }

    #[test]
    fn endpoint_priorities_follow_the_clients_region() {
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        use prost::Message;
        let mut v = view(&[1]);
        v.upstreams
            .get_mut("echo")
            .unwrap()
            .push(PublishedEndpoint {
                region: Some("us-east".into()),
                zone: None,
                addr: "127.0.0.1:9".parse().unwrap(),
                weight: 100,
                health: Health::Unknown,
            });
        let mut s = Session::default();
        let (_, r) = s.on_request(&request(ResourceType::Endpoint, &["echo"], ""), &v, 1);
        let cla = ClusterLoadAssignment::decode(r.unwrap().resources[0].value.as_slice()).unwrap();
        let priorities: Vec<_> = cla
            .endpoints
            .iter()
            .map(|l| (l.locality.clone().unwrap().region, l.priority))
            .collect();
        assert_eq!(
            priorities,
            vec![("eu-west".to_string(), 0), ("us-east".to_string(), 1)]
        );
    }
}
