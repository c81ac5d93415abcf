//! Rego policies on routes (`policy = "policies/cart.rego"`), evaluated in process by regorus
//! (Microsoft's Rego interpreter). Compiled when the config loads, so `strait check` proves
//! them; `data.strait.allow` must be `true` for a call to pass. Anything else (false,
//! undefined, not a boolean, an error, the time limit) denies: the policy fails closed.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use http::HeaderMap;
use serde_json::{json, Map, Value};

use super::Principal;

/// The rule a policy must define.
pub const ENTRYPOINT: &str = "data.strait.allow";
/// One evaluation may take this long; longer counts as an error, and the call is denied.
pub const EVAL_LIMIT: Duration = Duration::from_millis(100);
/// Metadata given to a policy: at most this many entries of at most this many bytes each.
const MAX_METADATA: usize = 64;
const MAX_VALUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Compile(String),
}

/// One compiled policy file.
pub struct RegoPolicy {
    compiled: regorus::CompiledPolicy,
}

impl std::fmt::Debug for RegoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegoPolicy(..)")
    }
}

/// What a policy sees of a call (`input` in Rego).
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    pub listener: &'a str,
    pub route: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    pub principal: &'a Principal,
    pub peer: Option<IpAddr>,
    pub headers: &'a HeaderMap,
}

impl RegoPolicy {
    /// Compiles a policy (Rego v1); it must define `data.strait.allow`.
    pub fn compile(file: &Path, text: &str) -> Result<Self, PolicyError> {
        regorus::utils::limits::set_fallback_execution_timer_config(Some(
            regorus::utils::limits::ExecutionTimerConfig {
                limit: EVAL_LIMIT,
                check_interval: NonZeroU32::new(64).expect("non-zero"),
            },
        ));
        let mut engine = regorus::Engine::new();
        engine.set_strict_builtin_errors(false);
        let source = file.display().to_string();
        let package = engine
            .add_policy(source.clone(), text.to_string())
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        // A policy of another package, or without `allow`, would deny every call: refuse it
        // where the operator can see why.
        let declares_allow = engine
            .has_declared_rule_rooted_at(&source, "allow")
            .unwrap_or(false);
        if package != "data.strait" || !declares_allow {
            return Err(PolicyError::Compile(format!(
                "the policy must be `package strait` and define `allow` ({ENTRYPOINT}); it is {package}"
            )));
        }
        let entry: regorus::Rc<str> = ENTRYPOINT.into();
        let compiled = engine
            .compile_with_entrypoint(&entry)
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        Ok(Self { compiled })
    }

    /// `Ok(true)` only when `data.strait.allow` is `true` for this call.
    pub fn allows(&self, input: &PolicyInput<'_>) -> Result<bool, String> {
        self.eval(&input_document(input))
    }

    fn eval(&self, input: &Value) -> Result<bool, String> {
        let value = self
            .compiled
            .eval_with_input(regorus::Value::from(input.clone()))
            .map_err(|e| e.to_string())?;
        Ok(value == regorus::Value::from(true))
    }
}

/// `input`: listener, route, service, method, principal (provider, subject), claims, peer and
/// the call's metadata (credentials left out).
fn input_document(input: &PolicyInput<'_>) -> Value {
    let mut metadata = Map::new();
    for (name, value) in input.headers {
        if metadata.len() >= MAX_METADATA {
            break;
        }
        let name = name.as_str();
        let secret = matches!(name, "authorization" | "cookie" | "x-api-key")
            || name.ends_with("-bin")
            || name.starts_with(':');
        if secret || value.len() > MAX_VALUE || metadata.contains_key(name) {
            continue;
        }
        if let Ok(text) = value.to_str() {
            metadata.insert(name.to_string(), Value::String(text.to_string()));
        }
    }
    json!({
        "listener": input.listener,
        "route": input.route,
        "service": input.service,
        "method": input.method,
        "principal": {
            "provider": &*input.principal.provider,
            "subject": input.principal.subject,
        },
        "claims": input.principal.claims.as_deref().cloned().map(Value::Object).unwrap_or(Value::Null),
        "peer": input.peer.map(|ip| ip.to_string()),
        "metadata": metadata,
    })
}
