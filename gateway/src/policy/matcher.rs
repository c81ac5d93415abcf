//! A route's `match`: headers a call must carry, and the caller it must be, for the route to
//! take it.

use http::HeaderMap;

use crate::config::HeaderCondition;

/// Every condition must hold; an empty match holds for every call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMatch {
    conditions: Vec<HeaderCondition>,
    /// `provider:subject` the route's `auth` must accept, exact or a prefix ending in `*`.
    principal: Option<String>,
}

impl HeaderMatch {
    pub fn new(conditions: Vec<HeaderCondition>) -> Self {
        Self {
            conditions,
            principal: None,
        }
    }

    /// A match on the accepted caller too (`match.principal`).
    pub fn with_principal(mut self, principal: Option<String>) -> Self {
        self.principal = principal;
        self
    }

    /// True for the route without `match`, the fallback of its service and method.
    pub fn is_fallback(&self) -> bool {
        self.conditions.is_empty() && self.principal.is_none()
    }

    /// Whether the match names the caller (its route must authenticate to be chosen).
    pub fn needs_principal(&self) -> bool {
        self.principal.is_some()
    }

    /// Headers only: a match naming a principal does not hold here.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        self.matches_with(headers, || None)
    }

    /// A header sent more than once matches when any of its values does. `principal` is asked
    /// only when the headers hold and the match names a caller: it authenticates.
    pub fn matches_with(
        &self,
        headers: &HeaderMap,
        principal: impl FnOnce() -> Option<String>,
    ) -> bool {
        let headers_hold = self.conditions.iter().all(|c| {
            let mut values = headers.get_all(&c.name).iter();
            match &c.value {
                None => values.next().is_some(),
                Some(expected) => values.any(|v| v.as_bytes() == expected.as_bytes()),
            }
        });
        let Some(pattern) = &self.principal else {
            return headers_hold;
        };
        headers_hold
            && principal().is_some_and(|who| match pattern.strip_suffix('*') {
                Some(prefix) => who.starts_with(prefix),
                None => who == *pattern,
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
    fn a_principal_condition_asks_who_only_when_the_headers_hold() {
        let m = HeaderMatch::new(vec![condition("x-canary", Some("true"))])
            .with_principal(Some("partners:*".into()));
        assert!(!m.is_fallback() && m.needs_principal());
        let canary = headers(&[("x-canary", "true")]);
        assert!(m.matches_with(&canary, || Some("partners:acme".into())));
        assert!(!m.matches_with(&canary, || Some("users:alice".into())));
        assert!(!m.matches_with(&canary, || None));
        assert!(!m.matches(&canary), "no caller known: no match");
        let asked = std::cell::Cell::new(false);
        assert!(!m.matches_with(&headers(&[]), || {
            asked.set(true);
            Some("partners:acme".into())
        }));
        assert!(
            !asked.get(),
            "no authentication when the headers already fail"
        );
        let exact = HeaderMatch::new(vec![]).with_principal(Some("users:alice".into()));
        assert!(exact.matches_with(&headers(&[]), || Some("users:alice".into())));
        assert!(!exact.matches_with(&headers(&[]), || Some("users:alice2".into())));
    }

    #[test]
    fn no_conditions_is_the_fallback_and_takes_everything() {
        let m = HeaderMatch::default();
        assert!(m.is_fallback());
        assert!(m.matches(&headers(&[])));
    }
}
