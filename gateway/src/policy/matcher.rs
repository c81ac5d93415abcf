//! A route's `match`: headers a call must carry for the route to take it.

use http::HeaderMap;

use crate::config::HeaderCondition;

/// Every condition must hold; an empty match holds for every call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMatch {
    conditions: Vec<HeaderCondition>,
}

impl HeaderMatch {
    pub fn new(conditions: Vec<HeaderCondition>) -> Self {
        Self { conditions }
    }

    /// True for the route without `match`, the fallback of its service and method.
    pub fn is_fallback(&self) -> bool {
        self.conditions.is_empty()
    }

    /// A header sent more than once matches when any of its values does.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        self.conditions.iter().all(|c| {
            let mut values = headers.get_all(&c.name).iter();
            match &c.value {
                None => values.next().is_some(),
                Some(expected) => values.any(|v| v.as_bytes() == expected.as_bytes()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn condition(name: &'static str, value: Option<&str>) -> HeaderCondition {
        HeaderCondition {
            name: HeaderName::from_static(name),
            value: value.map(str::to_string),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn every_condition_must_hold() {
        let m = HeaderMatch::new(vec![
            condition("x-canary", Some("true")),
            condition("x-tenant", None),
        ]);
        assert!(m.matches(&headers(&[("x-canary", "true"), ("x-tenant", "a")])));
        assert!(!m.matches(&headers(&[("x-canary", "true")])));
        assert!(!m.matches(&headers(&[("x-canary", "TRUE"), ("x-tenant", "a")])));
        assert!(!m.matches(&headers(&[])));
    }

    #[test]
    fn any_value_of_a_repeated_header_may_match() {
        let m = HeaderMatch::new(vec![condition("x-canary", Some("true"))]);
        assert!(m.matches(&headers(&[("x-canary", "false"), ("x-canary", "true")])));
    }

    #[test]
    fn no_conditions_is_the_fallback_and_takes_everything() {
        let m = HeaderMatch::default();
        assert!(m.is_fallback());
        assert!(m.matches(&headers(&[])));
    }
}
