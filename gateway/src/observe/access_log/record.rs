//! One finished call (or tcp connection) as the access log writes it.

use std::fmt::Write;
use std::time::SystemTime;

use serde::Serialize;

/// Every field is always present in JSON; what is unknown is `null`.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// When the call started (RFC 3339, microseconds, UTC).
    #[serde(serialize_with = "rfc3339_micros")]
    pub ts: SystemTime,
    pub listener: String,
    /// The caller's ip:port.
    pub peer: Option<String>,
    /// The `:path`, like `/bench.Echo/Unary`; null for tcp connections.
    pub method: Option<String>,
    /// The route that matched, as written in the file: `bench.Echo`, `bench.Echo/Unary` or `*`.
    pub route: Option<String>,
    pub upstream: Option<String>,
    /// The endpoint that answered (the last one tried).
    pub endpoint: Option<String>,
    pub attempts: u32,
    /// The final gRPC status code; null for tcp connections.
    pub code: Option<u8>,
    /// The code's name (`UNAVAILABLE`); for tcp connections how they ended (`closed`,
    /// `idle_timeout`, `drained`, `error`, `no_endpoint`).
    pub status: Option<&'static str>,
    /// The gateway's own `grpc-message`, when the gateway answered.
    pub message: Option<String>,
    pub duration_ms: f64,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    pub req_msgs: u64,
    pub resp_msgs: u64,
    /// The preferred region used for the endpoint choice.
    pub region: Option<String>,
    pub user_agent: Option<String>,
    pub trace_id: Option<String>,
    /// How the call arrived: `grpc`, `grpc-web` or `json`; `tcp` for tcp connections.
    pub protocol: &'static str,
    /// Who the route's `auth` accepted, as `provider:subject` (never the credential).
    pub principal: Option<String>,
    /// Why the route's `auth` refused the call (`missing`, `invalid`, `expired`, ...).
    pub denied: Option<&'static str>,
}

fn rfc3339_micros<S: serde::Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ts(*ts))
}

pub fn format_ts(ts: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(ts).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl CallRecord {
    /// One JSON object, no newline.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// One readable line, no newline: the fields in a fixed order, `-` for unknown, strings
    /// that may hold spaces quoted.
    pub fn to_text(&self) -> String {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let mut line = String::with_capacity(256);
        let _ = write!(
            line,
            "{} {} {} {} {} {} {:.3}ms route={} upstream={} endpoint={} attempts={} req={}B/{} resp={}B/{} region={} protocol={}",
            format_ts(self.ts),
            self.listener,
            dash(&self.peer),
            dash(&self.method),
            self.status.unwrap_or("-"),
            self.code.map_or("-".to_string(), |c| c.to_string()),
            self.duration_ms,
            dash(&self.route),
            dash(&self.upstream),
            dash(&self.endpoint),
            self.attempts,
            self.req_bytes,
            self.req_msgs,
            self.resp_bytes,
            self.resp_msgs,
            dash(&self.region),
            self.protocol,
        );
        if let Some(ua) = &self.user_agent {
            let _ = write!(line, " user_agent={}", quoted(ua));
        }
        if let Some(trace) = &self.trace_id {
            let _ = write!(line, " trace_id={trace}");
        }
        if let Some(principal) = &self.principal {
            let _ = write!(line, " principal={}", quoted(principal));
        }
        if let Some(denied) = self.denied {
            let _ = write!(line, " denied={denied}");
        }
        if let Some(message) = &self.message {
            let _ = write!(line, " message={}", quoted(message));
        }
        line
    }
}

/// A string as one token: in double quotes, with quotes, backslashes and control characters
/// escaped, so a caller's user agent cannot forge a second line or a field.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A filled-in record for unit tests.
#[cfg(test)]
pub(super) fn example() -> CallRecord {
    use std::time::{Duration, UNIX_EPOCH};
    {
        CallRecord {
            ts: UNIX_EPOCH + Duration::from_micros(1_764_755_200_123_456),
            listener: "public".into(),
            peer: Some("127.0.0.1:5000".into()),
            method: Some("/bench.Echo/Unary".into()),
            route: Some("bench.Echo".into()),
            upstream: Some("echo".into()),
            endpoint: Some("127.0.0.1:50051".into()),
            attempts: 1,
            code: Some(0),
            status: Some("OK"),
            message: None,
            duration_ms: 1.5,
            req_bytes: 10,
            resp_bytes: 20,
            req_msgs: 1,
            resp_msgs: 1,
            region: Some("eu-west".into()),
            user_agent: Some("grpc-rust \"x\"\nforged".into()),
            trace_id: None,
            protocol: "grpc",
            principal: None,
            denied: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CallRecord {
        example()
    }

    #[test]
    fn json_has_every_field_with_nulls_for_the_unknown() {
        let value: serde_json::Value = serde_json::from_str(&record().to_json()).unwrap();
        let object = value.as_object().unwrap();
        for key in [
            "ts",
            "listener",
            "peer",
            "method",
            "route",
            "upstream",
            "endpoint",
            "attempts",
            "code",
            "status",
            "message",
            "duration_ms",
            "req_bytes",
            "resp_bytes",
            "req_msgs",
            "resp_msgs",
            "region",
            "user_agent",
            "trace_id",
            "protocol",
            "principal",
            "denied",
        ] {
            assert!(object.contains_key(key), "{key} missing");
        }
        assert_eq!(object.len(), 22);
        assert_eq!(value["ts"], "2025-12-03T09:46:40.123456Z");
        assert!(value["message"].is_null() && value["trace_id"].is_null());
        assert_eq!(value["code"], 0);
        assert_eq!(value["duration_ms"], 1.5);
    }

    #[test]
    fn text_is_one_line_that_cannot_be_forged() {
        let line = record().to_text();
        assert!(!line.contains('\n'));
        assert!(line.starts_with(
            "2025-12-03T09:46:40.123456Z public 127.0.0.1:5000 /bench.Echo/Unary OK 0 1.500ms route=bench.Echo"
        ), "{line}");
        assert!(
            line.ends_with(r#"user_agent="grpc-rust \"x\"\u{a}forged""#),
            "{line}"
        );
    }
}
