//! One registered instance: the JSON value stored at `{prefix}{service}/{instance_id}`.
//!
//! ```json
//! {"addr": "127.0.0.1:50051", "version": "v2.3.0", "weight": 80,
//!  "labels": {"env": "prod", "region": "eu-west", "canary": "true"}}
//! ```
//! `addr` is required; `weight` is 0-100 (default 100; 0 drains); the region is `labels.region`.
//! Unknown fields are ignored so registrars can add metadata without breaking gateways.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::{Selector, DEFAULT_WEIGHT, MAX_WEIGHT};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub addr: SocketAddr,
    /// As registered (may carry a `v` prefix).
    pub version: Option<String>,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
}

impl Instance {
    pub fn region(&self) -> Option<&str> {
        self.labels.get("region").map(String::as_str)
    }

    /// Does this instance belong to the subset an upstream selected?
    pub fn matches(&self, selector: &Selector) -> bool {
        if let Some(required) = &selector.version {
            let parsed = self
                .version
                .as_deref()
                .map(|v| v.strip_prefix('v').unwrap_or(v))
                .and_then(|v| semver::Version::parse(v).ok());
            match parsed {
                Some(v) if required.matches(&v) => {}
                _ => return false,
            }
        }
        selector
            .labels
            .iter()
            .all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// Why a value was refused; the label value of the rejection counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    #[error("value is not valid JSON of the instance schema: {0}")]
    BadJson(String),
    #[error("missing \"addr\"")]
    MissingAddr,
    #[error("\"addr\" {0:?} is not an IP:port address")]
    BadAddr(String),
    #[error("\"weight\" {0} is outside 0-100")]
    WeightOutOfRange(i64),
    #[error("\"version\" {0:?} is not a semantic version")]
    BadVersion(String),
}

impl InstanceError {
    /// Short, fixed reason for metric labels and log fields.
    pub fn reason(&self) -> &'static str {
        match self {
            InstanceError::BadJson(_) => "bad_json",
            InstanceError::MissingAddr => "missing_addr",
            InstanceError::BadAddr(_) => "bad_addr",
            InstanceError::WeightOutOfRange(_) => "weight_out_of_range",
            InstanceError::BadVersion(_) => "bad_version",
        }
    }
}

#[derive(Deserialize)]
struct RawInstance {
    addr: Option<String>,
    version: Option<String>,
    weight: Option<i64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Parses an etcd value into an instance, or says exactly what is wrong with it.
pub fn parse_instance(value: &[u8]) -> Result<Instance, InstanceError> {
    let raw: RawInstance =
        serde_json::from_slice(value).map_err(|e| InstanceError::BadJson(e.to_string()))?;
    let addr_text = raw.addr.ok_or(InstanceError::MissingAddr)?;
    let addr: SocketAddr = addr_text
        .parse()
        .map_err(|_| InstanceError::BadAddr(addr_text.clone()))?;
    let weight = match raw.weight {
        None => DEFAULT_WEIGHT,
        Some(w) if (0..=MAX_WEIGHT).contains(&w) => w as u32,
        Some(w) => return Err(InstanceError::WeightOutOfRange(w)),
    };
    if let Some(v) = &raw.version {
        if semver::Version::parse(v.strip_prefix('v').unwrap_or(v)).is_err() {
            return Err(InstanceError::BadVersion(v.clone()));
        }
    }
    Ok(Instance {
        addr,
        version: raw.version,
        weight,
        labels: raw.labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_example() {
        let i = parse_instance(
            br#"{"addr": "127.0.0.1:50051", "version": "v2.3.0", "weight": 80,
                 "labels": {"env": "prod", "region": "eu-west", "canary": "true"}}"#,
        )
        .unwrap();
        assert_eq!(i.addr, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(i.weight, 80);
        assert_eq!(i.region(), Some("eu-west"));
        assert_eq!(i.version.as_deref(), Some("v2.3.0"));
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let i = parse_instance(br#"{"addr": "[::1]:9", "zone": "ignored"}"#).unwrap();
        assert_eq!(i.weight, 100);
        assert!(i.labels.is_empty());
        assert_eq!(i.version, None);
    }

    #[test]
    fn rejects_each_kind_of_bad_value() {
        let reason = |v: &[u8]| parse_instance(v).unwrap_err().reason();
        assert_eq!(reason(b"not json"), "bad_json");
        assert_eq!(reason(b"[1,2]"), "bad_json");
        assert_eq!(reason(br#"{"addr": 5}"#), "bad_json");
        assert_eq!(reason(br#"{"addr": "x", "labels": {"a": 1}}"#), "bad_json");
        assert_eq!(reason(br#"{"weight": 5}"#), "missing_addr");
        assert_eq!(reason(br#"{"addr": "localhost:80"}"#), "bad_addr");
        assert_eq!(
            reason(br#"{"addr": "1.2.3.4:1", "weight": 101}"#),
            "weight_out_of_range"
        );
        assert_eq!(
            reason(br#"{"addr": "1.2.3.4:1", "weight": -1}"#),
            "weight_out_of_range"
        );
        assert_eq!(
            reason(br#"{"addr": "1.2.3.4:1", "version": "two"}"#),
            "bad_version"
        );
    }

    #[test]
    fn selector_matches_semver_with_v_prefix_and_labels() {
        let i = parse_instance(
            br#"{"addr": "1.2.3.4:1", "version": "v2.3.0", "labels": {"env": "prod"}}"#,
        )
        .unwrap();
        let mut sel = Selector {
            version: Some(semver::VersionReq::parse("^2.2").unwrap()),
            ..Default::default()
        };
        assert!(i.matches(&sel));
        sel.labels.insert("env".into(), "prod".into());
        assert!(i.matches(&sel));
        sel.labels.insert("env".into(), "staging".into());
        assert!(!i.matches(&sel));
        let old = parse_instance(br#"{"addr": "1.2.3.4:1", "version": "1.9.0"}"#).unwrap();
        assert!(!old.matches(&Selector {
            version: Some(semver::VersionReq::parse("^2.2").unwrap()),
            ..Default::default()
        }));
        let unversioned = parse_instance(br#"{"addr": "1.2.3.4:1"}"#).unwrap();
        assert!(!unversioned.matches(&Selector {
            version: Some(semver::VersionReq::parse("*").unwrap()),
            ..Default::default()
        }));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_instance(&bytes);
        }
    }
}
