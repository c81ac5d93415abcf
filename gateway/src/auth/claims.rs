//! `require_claims`: what an accepted caller's token must say for a route to let it through.

use serde_json::Value;

use super::Principal;

/// Each claim must hold its value: equal to it, an array that contains it, or a
/// space-separated string (OAuth's `scope`) that contains it as one word. A dotted name
/// (`realm.role`) looks inside nested objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequiredClaims {
    pub claims: Vec<(String, String)>,
}

impl RequiredClaims {
    /// `Err` names the first claim that does not hold.
    pub fn check(&self, principal: &Principal) -> Result<(), &str> {
        for (name, wanted) in &self.claims {
            if !holds(principal, name, wanted) {
                return Err(name);
            }
        }
        Ok(())
    }
}

fn holds(principal: &Principal, name: &str, wanted: &str) -> bool {
    let Some(claims) = &principal.claims else {
        // API keys and certificates carry no claims: only the subject can be required.
        return name == "sub" && principal.subject == wanted;
    };
    let mut parts = name.split('.');
    let first = parts.next().and_then(|p| claims.get(p));
    let value = parts.try_fold(first, |v, part| Some(v?.get(part)));
    match value.flatten() {
        Some(value) => contains(value, wanted),
        None => false,
    }
}

fn contains(value: &Value, wanted: &str) -> bool {
    match value {
        Value::String(s) => s == wanted || s.split(' ').any(|word| word == wanted),
        Value::Array(items) => items.iter().any(|item| scalar_is(item, wanted)),
        other => scalar_is(other, wanted),
    }
}

fn scalar_is(value: &Value, wanted: &str) -> bool {
    match value {
        Value::String(s) => s == wanted,
        Value::Number(n) => n.to_string() == wanted,
        Value::Bool(b) => b.to_string() == wanted,
        _ => false,
    }
}
