//! CORS for browser callers of a listener: the gateway answers preflights itself and marks the
//! answers of allowed origins so the page's script may read them.

use std::time::Duration;

use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{AllowedOrigins, CorsConfig};

/// What gRPC-Web and JSON callers send beyond the CORS-safelisted headers.
const ALLOWED_HEADERS: &str = "content-type, x-grpc-web, x-user-agent, grpc-timeout, \
                               authorization, traceparent, tracestate";
/// What a page's script must read of an answer: gRPC-Web statuses may ride in the headers.
const EXPOSED_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin, \
                               grpc-retry-pushback-ms";
const ALLOWED_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";

#[derive(Debug, Clone, PartialEq)]
pub struct CorsPolicy {
    origins: AllowedOrigins,
    max_age: Duration,
}

/// A preflight's answer.
pub enum Preflight {
    Allowed(Box<ResponseHeader>),
    /// The origin is not allowed: 403, and the browser refuses the call.
    Refused(String),
}

impl CorsPolicy {
    pub fn new(config: &CorsConfig) -> Self {
        Self {
            origins: config.allow_origins.clone(),
            max_age: config.max_age,
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    pub fn allow(&self, req: &RequestHeader) -> Option<HeaderValue> {
        let origin = req.headers.get(http::header::ORIGIN)?;
        match &self.origins {
            AllowedOrigins::Any => Some(HeaderValue::from_static("*")),
            AllowedOrigins::List(list) => list
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }

    /// Whether answers depend on the caller's origin (a list, not `*`).
    pub fn varies(&self) -> bool {
        matches!(self.origins, AllowedOrigins::List(_))
    }

    /// Whether `req` is a CORS preflight (not just any OPTIONS request).
    pub fn is_preflight(req: &RequestHeader) -> bool {
        req.method == http::Method::OPTIONS
            && req.headers.contains_key(http::header::ORIGIN)
            && req
                .headers
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    pub fn preflight(&self, req: &RequestHeader) -> Preflight {
        let Some(origin) = self.allow(req) else {
            let origin = req
                .headers
                .get(http::header::ORIGIN)
                .map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned())
                .unwrap_or_default();
            return Preflight::Refused(format!(
                "origin {origin:?} is not allowed by this listener's cors"
            ));
        };
        let mut resp = ResponseHeader::build(204, Some(6)).expect("static status");
        let _ = resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        let _ = resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS);
        // Metadata is arbitrary headers: the ones the page asks for are allowed (the origin
        // check above is the gate), on top of gRPC-Web's own.
        let requested = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 4096 && v.split(',').all(|h| is_token(h.trim())));
        let allowed = match requested {
            Some(extra) if !extra.trim().is_empty() => format!("{ALLOWED_HEADERS}, {extra}"),
            _ => ALLOWED_HEADERS.to_string(),
        };
        let _ = resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_HEADERS, allowed);
        let _ = resp.insert_header(
            http::header::ACCESS_CONTROL_MAX_AGE,
            self.max_age.as_secs().to_string(),
        );
        let _ = resp.insert_header(http::header::VARY, "Origin");
        let _ = resp.insert_header(http::header::CONTENT_LENGTH, "0");
        Preflight::Allowed(Box::new(resp))
    }

    /// Marks an answer to an allowed origin as readable by the page.
    pub fn decorate(origin: &HeaderValue, resp: &mut ResponseHeader) {
        let _ = resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        let _ = resp.insert_header(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED_HEADERS);
        if origin.as_bytes() != b"*" {
            let _ = resp.append_header(http::header::VARY, "Origin");
        }
    }
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: &str) -> RequestHeader {
        let mut req = RequestHeader::build("OPTIONS", b"/bench.Echo/Unary", None).unwrap();
        req.insert_header("origin", origin).unwrap();
        req.insert_header("access-control-request-method", "POST")
            .unwrap();
        req.insert_header("access-control-request-headers", "x-grpc-web, x-tenant")
            .unwrap();
        req
    }

    fn policy(origins: AllowedOrigins) -> CorsPolicy {
        CorsPolicy::new(&CorsConfig {
            allow_origins: origins,
            max_age: Duration::from_secs(600),
        })
    }

    #[test]
    fn listed_origins_get_a_preflight_answer_and_others_a_refusal() {
        let cors = policy(AllowedOrigins::List(vec!["https://app.example.com".into()]));
        let req = request("https://app.example.com");
        assert!(CorsPolicy::is_preflight(&req));
        let Preflight::Allowed(resp) = cors.preflight(&req) else {
            panic!("allowed origin refused");
        };
        assert_eq!(resp.status, 204);
        let header = |name: &str| {
            resp.headers
                .get(name)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            header("access-control-allow-origin"),
            "https://app.example.com"
        );
        assert!(header("access-control-allow-headers").contains("x-tenant"));
        assert!(header("access-control-allow-headers").contains("x-grpc-web"));
        assert_eq!(header("access-control-max-age"), "600");
        assert!(matches!(
            cors.preflight(&request("https://evil.example.com")),
            Preflight::Refused(_)
        ));
    }

    #[test]
    fn any_origin_is_a_star_and_bad_requested_headers_are_not_echoed() {
        let cors = policy(AllowedOrigins::Any);
        let mut req = request("https://x.example");
        req.insert_header("access-control-request-headers", "a b, \"c\"")
            .unwrap();
        let Preflight::Allowed(resp) = cors.preflight(&req) else {
            panic!("refused");
        };
        assert_eq!(
            resp.headers.get("access-control-allow-origin").unwrap(),
            "*"
        );
        assert_eq!(
            resp.headers.get("access-control-allow-headers").unwrap(),
            ALLOWED_HEADERS
        );
    }
}
