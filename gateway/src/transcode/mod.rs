//! gRPC-JSON transcoding: the REST routes of a `[[transcode]]` section, read from a
//! FileDescriptorSet and its `google.api.http` annotations when the config loads (and so checked
//! by `strait check` and re-read on reload), and the translation of one call's JSON to protobuf
//! and back (`message.rs`). Dynamic messages and the proto3 JSON mapping are prost-reflect's.

mod message;
mod template;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use http::Method;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

pub use message::{any_nesting_within, build_request, render_message, RequestError, MAX_ANY_DEPTH};
pub use template::{Binding, PathTemplate, TemplateError};

/// Why descriptors could not be turned into routes.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a FileDescriptorSet (make it with protoc --include_imports --descriptor_set_out=...): {reason}")]
    Decode { path: String, reason: String },
    #[error("service {0:?} is not in the descriptors")]
    NoService(String),
    #[error("method {method}: {reason}")]
    Rule { method: String, reason: String },
    #[error("{first} and {second} both map {verb} {template}")]
    Conflict {
        verb: String,
        template: String,
        first: String,
        second: String,
    },
}

/// One exposed gRPC method.
#[derive(Debug)]
pub struct MethodInfo {
    pub descriptor: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: String,
}

impl MethodInfo {
    pub fn server_streaming(&self) -> bool {
        self.descriptor.is_server_streaming()
    }
}

/// Where the request message's fields come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// No body: every field from the path and the query.
    None,
    /// `body: "*"`: the JSON body is the whole message (path variables set on top).
    Whole,
    /// `body: "field"`: the JSON body is that field; the rest from the path and the query.
    Field(String),
}

/// One REST route: an HTTP method and a path template onto a gRPC method.
#[derive(Debug)]
pub struct RestRoute {
    pub verb: Method,
    pub template: PathTemplate,
    pub body: BodyRule,
    /// `response_body`: the response is this field of the reply instead of the whole reply.
    pub response_body: Option<String>,
    pub method: Arc<MethodInfo>,
}

/// A call that matched a route.
#[derive(Debug)]
pub struct Matched {
    pub route: Arc<RestRoute>,
    pub bindings: Vec<Binding>,
}

/// Every REST route of one listener, most specific first.
#[derive(Debug)]
pub struct TranscodeTable {
    routes: Vec<Arc<RestRoute>>,
    /// `POST /package.Service/Method` with a JSON body, for every exposed method.
    by_grpc_path: HashMap<String, Arc<RestRoute>>,
    /// Identifies the inputs, so two loads of the same files compare equal.
    fingerprint: String,
}

impl PartialEq for TranscodeTable {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl TranscodeTable {
    /// Reads `file` and builds the routes of `services`.
    pub fn load(file: &Path, services: &[String]) -> Result<Self, TranscodeError> {
        let display = file.display().to_string();
        let bytes = std::fs::read(file).map_err(|source| TranscodeError::Read {
            path: display.clone(),
            source,
        })?;
        // prost-reflect decodes options lazily and unwraps there; a hostile file must end as an
        // error, not a panic of `strait check` or of a reload.
        std::panic::catch_unwind(|| Self::from_bytes(&bytes, services, &display)).unwrap_or_else(
            |_| {
                Err(TranscodeError::Decode {
                    path: display.clone(),
                    reason: "malformed options".into(),
                })
            },
        )
    }

    pub fn from_bytes(
        bytes: &[u8],
        services: &[String],
        display: &str,
    ) -> Result<Self, TranscodeError> {
        let pool = DescriptorPool::decode(bytes).map_err(|e| TranscodeError::Decode {
            path: display.to_string(),
            reason: e.to_string(),
        })?;
        let http_rule = pool.get_extension_by_name("google.api.http");
        let mut routes = Vec::new();
        let mut by_grpc_path = HashMap::new();
        for name in services {
            let service = pool
                .get_service_by_name(name)
                .ok_or_else(|| TranscodeError::NoService(name.clone()))?;
            for descriptor in service.methods() {
                if descriptor.is_client_streaming() {
                    // REST has one request body: client streams are left to gRPC and gRPC-Web.
                    continue;
                }
                let grpc_path = format!("/{}/{}", service.full_name(), descriptor.name());
                let method = Arc::new(MethodInfo {
                    descriptor: descriptor.clone(),
                    grpc_path: grpc_path.clone(),
                });
                by_grpc_path.insert(
                    grpc_path.clone(),
                    Arc::new(RestRoute {
                        verb: Method::POST,
                        template: PathTemplate::parse(&grpc_path).map_err(|e| {
                            TranscodeError::Rule {
                                method: grpc_path.clone(),
                                reason: e.to_string(),
                            }
                        })?,
                        body: BodyRule::Whole,
                        response_body: None,
                        method: method.clone(),
                    }),
                );
                let options = descriptor.options();
                let Some(ext) = http_rule.as_ref().filter(|ext| options.has_extension(ext)) else {
                    continue;
                };
                let Value::Message(rule) = options.get_extension(ext).into_owned() else {
                    continue;
                };
                let mut pending = vec![rule];
                while let Some(rule) = pending.pop() {
                    let route =
                        rest_route(&rule, &method).map_err(|reason| TranscodeError::Rule {
                            method: grpc_path.clone(),
                            reason,
                        })?;
                    routes.push(Arc::new(route));
                    if let Some(Value::List(more)) =
                        rule.get_field_by_name("additional_bindings").as_deref()
                    {
                        pending.extend(more.iter().filter_map(|v| v.as_message().cloned()));
                    }
                }
            }
        }
        // Most literal segments first; the file's order among equals.
        routes.sort_by_key(|r| std::cmp::Reverse(r.template.literal_count()));
        for (i, a) in routes.iter().enumerate() {
            if let Some(b) = routes[..i]
                .iter()
                .find(|b| b.verb == a.verb && b.template == a.template)
            {
                return Err(TranscodeError::Conflict {
                    verb: a.verb.to_string(),
                    template: a.template.to_string(),
                    first: b.method.grpc_path.clone(),
                    second: a.method.grpc_path.clone(),
                });
            }
        }
        Ok(Self {
            routes,
            by_grpc_path,
            fingerprint: format!("{display}|{}|{services:?}", fnv(bytes)),
        })
    }

    /// The route a REST call takes: an annotated one, else `POST /package.Service/Method`.
    pub fn find(&self, verb: &Method, path: &str) -> Option<Matched> {
        for route in &self.routes {
            if route.verb != verb {
                continue;
            }
            if let Some(bindings) = route.template.matches(path) {
                return Some(Matched {
                    route: route.clone(),
                    bindings,
                });
            }
        }
        if verb == Method::POST {
            return self.by_grpc_path.get(path).map(|route| Matched {
                route: route.clone(),
                bindings: Vec::new(),
            });
        }
        None
    }

    /// Whether `path` names a route for any verb (a wrong verb is answered 405, not 404).
    pub fn knows_path(&self, path: &str) -> bool {
        self.by_grpc_path.contains_key(path)
            || self
                .routes
                .iter()
                .any(|r| r.template.matches(path).is_some())
    }

    pub fn route_count(&self) -> usize {
        self.routes.len() + self.by_grpc_path.len()
    }

    /// Merges the routes of another section of the same listener.
    pub fn merge(mut self, other: TranscodeTable) -> Result<Self, TranscodeError> {
        for b in &other.routes {
            if let Some(a) = self
                .routes
                .iter()
                .find(|a| a.verb == b.verb && a.template == b.template)
            {
                return Err(TranscodeError::Conflict {
                    verb: b.verb.to_string(),
                    template: b.template.to_string(),
                    first: a.method.grpc_path.clone(),
                    second: b.method.grpc_path.clone(),
                });
            }
        }
        self.routes.extend(other.routes);
        self.routes
            .sort_by_key(|r| std::cmp::Reverse(r.template.literal_count()));
        self.by_grpc_path.extend(other.by_grpc_path);
        self.fingerprint = format!("{}+{}", self.fingerprint, other.fingerprint);
        Ok(self)
    }
}

/// One `google.api.HttpRule` as a route; `Err` says what is wrong with it.
fn rest_route(rule: &DynamicMessage, method: &Arc<MethodInfo>) -> Result<RestRoute, String> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|s| !s.is_empty())
    };
    let mut patterns = Vec::new();
    for (field, verb) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if let Some(path) = text(field) {
            patterns.push((verb, path));
        }
    }
    if let Some(custom) = rule
        .get_field_by_name("custom")
        .and_then(|v| v.as_message().cloned())
    {
        let kind = custom
            .get_field_by_name("kind")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let path = custom
            .get_field_by_name("path")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if !kind.is_empty() {
            let verb = Method::from_bytes(kind.as_bytes())
                .map_err(|_| format!("custom verb {kind:?} is not an HTTP method"))?;
            patterns.push((verb, path));
        }
    }
    let (verb, path) = match patterns.len() {
        1 => patterns.pop().expect("one pattern"),
        0 => {
            return Err(
                "google.api.http names no pattern (get, put, post, delete, patch or custom)".into(),
            )
        }
        _ => return Err("google.api.http names more than one pattern".into()),
    };
    let template = PathTemplate::parse(&path).map_err(|e| e.to_string())?;
    let input = method.descriptor.input();
    for field_path in template.bound_fields() {
        check_field_path(&input, field_path)?;
    }
    let body = match text("body").as_deref() {
        None => BodyRule::None,
        Some("*") => BodyRule::Whole,
        Some(field) => {
            if input.get_field_by_name(field).is_none() {
                return Err(format!(
                    "body {field:?} is not a field of {}",
                    input.full_name()
                ));
            }
            BodyRule::Field(field.to_string())
        }
    };
    let response_body = text("response_body");
    if let Some(field) = &response_body {
        let output = method.descriptor.output();
        if output.get_field_by_name(field).is_none() {
            return Err(format!(
                "response_body {field:?} is not a field of {}",
                output.full_name()
            ));
        }
    }
    Ok(RestRoute {
        verb,
        template,
        body,
        response_body,
        method: method.clone(),
    })
}

/// Path variables must name fields (through messages) of the request message.
fn check_field_path(
    message: &prost_reflect::MessageDescriptor,
    path: &[String],
) -> Result<(), String> {
    let mut current = message.clone();
    for (i, name) in path.iter().enumerate() {
        let field = current.get_field_by_name(name).ok_or_else(|| {
            format!(
                "path variable {:?}: {name:?} is not a field of {}",
                path.join("."),
                current.full_name()
            )
        })?;
        if i + 1 < path.len() {
            match field.kind() {
                prost_reflect::Kind::Message(inner) if !field.is_list() && !field.is_map() => {
                    current = inner
                }
                _ => {
                    return Err(format!(
                        "path variable {:?}: {name:?} is not a message field",
                        path.join(".")
                    ))
                }
            }
        }
    }
    Ok(())
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}
