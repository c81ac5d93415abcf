//! One ADS stream's protocol state, as a plain type: what the client subscribed to per resource
//! type, what was last sent (version, nonce, resources), and what the client said about it.
//!
//! The xDS rules it follows (state of the world):
//! - a request whose `response_nonce` is not the last one sent for its type is stale and ignored;
//! - the first request answering the last nonce ACKs it, or NACKs it when it carries
//!   `error_detail` (counted once per response, with this server's version of it); a NACKed set
//!   is not sent again, only a changed one;
//! - a request that changes the subscription, or the first one of a type, is answered at once,
//!   even with no resources (a client that had a Listener or Cluster missing from the answer
//!   drops it; one that never had it waits for its does-not-exist timer);
//! - Listener and Cluster requests are wildcards (every resource) when a type's first request
//!   names nothing, or when one names `*`; a later empty list unsubscribes;
//! - a new view is pushed for every subscribed type whose resources changed for this client.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;

use super::resources::{self, ResourceType};
use super::view::PublishedView;

/// The longest node id or NACK detail kept and logged: a client's own strings are bounded.
const MAX_CLIENT_TEXT: usize = 256;
/// Resource names kept per type: far more than any client asks for, few enough that a client
/// cannot make its session large.
const MAX_NAMES: usize = 1024;

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
    /// The client accepted the latest response.
    Ack {
        kind: ResourceType,
        /// The version of the response accepted, as this server sent it.
        version: String,
    },
    /// The client rejected the latest response.
    Nack {
        kind: ResourceType,
        /// The version of the response rejected, as this server sent it.
        version: String,
        /// The client's reason (`error_detail.message`), cut to `MAX_CLIENT_TEXT`.
        detail: String,
    },
    /// A further request about a response already ACKed or NACKed: a change of the names
    /// subscribed, or a repeat.
    Update(ResourceType),
    /// Answers a response that is no longer the latest; ignored.
    Stale(ResourceType),
    /// A type this server does not serve.
    UnknownType(String),
}

#[derive(Debug, Default)]
struct Subscription {
    /// Names asked for (without `*`).
    names: BTreeSet<String>,
    /// Every resource of the type: Listener and Cluster requests that start with no names, or
    /// that name `*`.
    wildcard: bool,
    /// A wildcard by the old rule (no names from the first request on): an empty list keeps it
    /// one until the client names something.
    implicit_wildcard: bool,
    last_sent: Option<Sent>,
}

#[derive(Debug)]
struct Sent {
    nonce: String,
    version: String,
    resources: Vec<Any>,
    /// The client ACKed or NACKed it: later requests naming its nonce are updates or repeats.
    answered: bool,
}

#[derive(Debug, Default)]
pub struct Session {
    node: Option<NodeInfo>,
    next_nonce: u64,
    subscriptions: HashMap<ResourceType, Subscription>,
}

/// `text` cut to at most `MAX_CLIENT_TEXT` bytes, on a character boundary.
fn bounded(text: &str) -> String {
    let mut end = text.len().min(MAX_CLIENT_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
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
                id: bounded(node.map_or("", |n| n.id.as_str())),
                region: node
                    .and_then(|n| n.locality.as_ref())
                    .map(|l| bounded(&l.region))
                    .filter(|r| !r.is_empty()),
            });
        }
        let Some(kind) = ResourceType::from_type_url(&request.type_url) else {
            return (RequestKind::UnknownType(bounded(&request.type_url)), None);
        };
        let mut names: BTreeSet<String> = request
            .resource_names
            .iter()
            .take(MAX_NAMES)
            .cloned()
            .collect();
        let star = names.remove("*");
        let subscription = self.subscriptions.entry(kind).or_default();
        let first = subscription.last_sent.is_none();
        let outcome = match &mut subscription.last_sent {
            Some(sent) if request.response_nonce != sent.nonce => {
                return (RequestKind::Stale(kind), None);
            }
            None => RequestKind::Subscribe(kind),
            Some(sent) if sent.answered => RequestKind::Update(kind),
            Some(sent) => {
                sent.answered = true;
                match &request.error_detail {
                    Some(status) => RequestKind::Nack {
                        kind,
                        version: sent.version.clone(),
                        detail: bounded(&status.message),
                    },
                    None => RequestKind::Ack {
                        kind,
                        version: sent.version.clone(),
                    },
                }
            }
        };
        // An empty list is a wildcard only while the client has never named anything; once it
        // has, an empty list unsubscribes from everything.
        let implicit = kind.absence_means_removal()
            && !star
            && names.is_empty()
            && (first || subscription.implicit_wildcard);
        let wildcard = implicit || (star && kind.absence_means_removal());
        let changed_names =
            first || subscription.names != names || subscription.wildcard != wildcard;
        subscription.names = names;
        subscription.wildcard = wildcard;
        subscription.implicit_wildcard = implicit;
        if !changed_names {
            // An ACK or a NACK of the current set, or a repeat: nothing new to send.
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
            .filter_map(|(name, endpoints)| match kind {
                ResourceType::Listener => Some(resources::listener(name)),
                ResourceType::Route => Some(resources::route_configuration(name)),
                ResourceType::Cluster => Some(resources::cluster(name)),
                // Not known yet: left out, so a client keeps the assignment it has.
                ResourceType::Endpoint => endpoints.as_ref().map(|endpoints| {
                    resources::load_assignment(name, endpoints, region.as_deref())
                }),
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
        // Unpredictable, so no one but the client that got a response can answer for it: a
        // random part, and the count so that two responses never share one.
        let nonce = format!("{:016x}-{}", rand::random::<u64>(), self.next_nonce);
        let version = version.to_string();
        subscription.last_sent = Some(Sent {
            nonce: nonce.clone(),
            version: version.clone(),
            resources: resources.clone(),
            answered: false,
        });
        Some(DiscoveryResponse {
            version_info: version,
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
            Some(
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
            ),
        );
        v.upstreams.insert("other".into(), Some(Vec::new()));
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
    fn wildcard_only_on_the_first_request_or_with_a_star() {
        let mut s = Session::default();
        let (_, r) = s.on_request(&request(ResourceType::Listener, &[], ""), &view(&[1]), 1);
        let r = r.unwrap();
        assert_eq!(r.resources.len(), 2, "an empty first request is a wildcard");
        // The ACK repeats the empty list: still a wildcard, nothing to send.
        let (kind, again) = s.on_request(
            &request(ResourceType::Listener, &[], &r.nonce),
            &view(&[1]),
            1,
        );
        assert!(matches!(kind, RequestKind::Ack { .. }));
        assert!(again.is_none());

        let mut s = Session::default();
        let (_, r) = s.on_request(
            &request(ResourceType::Cluster, &["echo"], ""),
            &view(&[1]),
            1,
        );
        let r = r.unwrap();
        assert_eq!(r.resources.len(), 1);
        // Later, an empty list unsubscribes: the answer holds nothing.
        let (_, r) = s.on_request(
            &request(ResourceType::Cluster, &[], &r.nonce),
            &view(&[1]),
            1,
        );
        let r = r.unwrap();
        assert!(r.resources.is_empty());
        // `*` asks for everything; dropping it (an empty list) unsubscribes again.
        let (_, r) = s.on_request(
            &request(ResourceType::Cluster, &["*"], &r.nonce),
            &view(&[1]),
            1,
        );
        let r = r.unwrap();
        assert_eq!(r.resources.len(), 2);
        let (_, r) = s.on_request(
            &request(ResourceType::Cluster, &[], &r.nonce),
            &view(&[1]),
            1,
        );
        assert!(r.unwrap().resources.is_empty());
    }

    #[test]
    fn an_upstream_awaiting_discovery_has_no_assignment_but_a_listener() {
        let mut v = view(&[1]);
        v.upstreams.insert("echo".into(), None);
        let mut s = Session::default();
        let (_, r) = s.on_request(&request(ResourceType::Endpoint, &["echo"], ""), &v, 1);
        assert!(
            r.unwrap().resources.is_empty(),
            "the client keeps what it has"
        );
        let (_, r) = s.on_request(&request(ResourceType::Listener, &["echo"], ""), &v, 1);
        assert_eq!(r.unwrap().resources.len(), 1);
    }

    #[test]
    fn a_repeated_nack_is_counted_once_with_the_servers_version() {
        let mut s = Session::default();
        let (_, r) = s.on_request(
            &request(ResourceType::Endpoint, &["echo"], ""),
            &view(&[1]),
            9,
        );
        let nonce = r.unwrap().nonce;
        let mut nack = request(ResourceType::Endpoint, &["echo"], &nonce);
        nack.version_info = "whatever the client says".into();
        nack.error_detail = Some(Status {
            code: 3,
            message: "x".repeat(10_000),
            details: vec![],
        });
        let (kind, _) = s.on_request(&nack, &view(&[1]), 9);
        let RequestKind::Nack {
            version, detail, ..
        } = kind
        else {
            panic!("{kind:?}")
        };
        assert_eq!(version, "9");
        assert_eq!(
            detail.len(),
            MAX_CLIENT_TEXT,
            "the client's text is bounded"
        );
        let (kind, r) = s.on_request(&nack, &view(&[1]), 9);
        assert_eq!(kind, RequestKind::Update(ResourceType::Endpoint));
        assert!(r.is_none());
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
    fn nonces_cannot_be_guessed() {
        let first_of = || {
            let mut s = Session::default();
            let (_, r) = s.on_request(
                &request(ResourceType::Endpoint, &["echo"], ""),
                &view(&[1]),
                1,
            );
            r.unwrap().nonce
        };
        let (a, b) = (first_of(), first_of());
        assert_ne!(a, b, "two sessions' first nonces differ");
        assert!(a.len() >= 16, "{a}");
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
                version: "2".into(),
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
            .and_then(Option::as_mut)
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
