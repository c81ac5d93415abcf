//! `google.api.http` path templates: parsed once when the descriptors load, matched per call.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```

use std::fmt;

/// One segment of the request path a template matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: any number of segments, the empty path included.
    Rest,
}

/// A variable: the field it sets and the template segments it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field_path: Vec<String>,
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: String,
}

/// A matched variable: the field path it binds and the text it matched (percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub field_path: Vec<String>,
    pub value: String,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let fail = |reason: &str| TemplateError {
            template: template.to_string(),
            reason: reason.to_string(),
        };
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| fail("must start with '/'"))?;
        // The verb is the text after the last ':' that is outside any variable.
        let (body, verb) = split_verb(rest);
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        let mut chars = body;
        loop {
            if let Some(after) = chars.strip_prefix('{') {
                let close = after
                    .find('}')
                    .ok_or_else(|| fail("a '{' is never closed"))?;
                let inner = &after[..close];
                let (path, pattern) = match inner.split_once('=') {
                    Some((path, pattern)) => (path, pattern),
                    None => (inner, "*"),
                };
                let field_path: Vec<String> = path.split('.').map(str::to_string).collect();
                if field_path.iter().any(|p| !is_ident(p)) {
                    return Err(fail(&format!("{path:?} is not a field path")));
                }
                let start = segments.len();
                for part in pattern.split('/') {
                    segments.push(plain_segment(part).ok_or_else(|| {
                        fail(&format!("{part:?} is not a segment of a variable"))
                    })?);
                }
                variables.push(Variable {
                    field_path,
                    start,
                    end: segments.len(),
                });
                chars = &after[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                let part = &chars[..end];
                if part.contains(['{', '}']) {
                    return Err(fail("a variable must be a whole segment"));
                }
                segments.push(plain_segment(part).ok_or_else(|| fail("empty segment"))?);
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some(next) => chars = next,
                None if chars.is_empty() => break,
                None => return Err(fail("a variable must be followed by '/' or the end")),
            }
        }
        if verb.is_some_and(|v| v.is_empty() || v.contains(['/', '{', '}'])) {
            return Err(fail("malformed verb"));
        }
        let rests = segments.iter().filter(|s| **s == Segment::Rest).count();
        if rests > 1 || (rests == 1 && segments.last() != Some(&Segment::Rest)) {
            return Err(fail("'**' may only be the last segment"));
        }
        Ok(Self {
            segments,
            variables,
            verb: verb.map(str::to_string),
            source: template.to_string(),
        })
    }

    /// How specific the template is: literal segments count most, so `/v1/a/b` is tried before
    /// `/v1/a/{x}`.
    pub fn literal_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    /// The variables' values when `path` (without the query) matches.
    pub fn matches(&self, path: &str) -> Option<Vec<Binding>> {
        let rest = path.strip_prefix('/')?;
        let body = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        // Where each template segment's match starts in `parts` (`**` is last, so it takes the
        // remainder; everything before it maps one to one).
        let fixed = self
            .segments
            .iter()
            .take_while(|s| **s != Segment::Rest)
            .count();
        let has_rest = fixed < self.segments.len();
        if parts.len() < fixed || (!has_rest && parts.len() != fixed) {
            return None;
        }
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(text) if text != part => return None,
                Segment::One if part.is_empty() => return None,
                _ => {}
            }
        }
        let span = |start: usize, end: usize| -> (usize, usize) {
            let to = if end > fixed { parts.len() } else { end };
            (start.min(parts.len()), to)
        };
        let mut bindings = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            let (from, to) = span(variable.start, variable.end);
            let single = to - from == 1;
            let value = parts[from..to]
                .iter()
                .map(|p| percent_decode(p, single))
                .collect::<Option<Vec<_>>>()?
                .join("/");
            bindings.push(Binding {
                field_path: variable.field_path.clone(),
                value,
            });
        }
        Some(bindings)
    }

    /// The fields the template's variables set.
    pub fn bound_fields(&self) -> impl Iterator<Item = &[String]> {
        self.variables.iter().map(|v| v.field_path.as_slice())
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn split_verb(rest: &str) -> (&str, Option<&str>) {
    let last_close = rest.rfind('}').map_or(0, |i| i + 1);
    match rest[last_close..].rfind(':') {
        Some(i) => (&rest[..last_close + i], Some(&rest[last_close + i + 1..])),
        None => (rest, None),
    }
}

fn plain_segment(part: &str) -> Option<Segment> {
    match part {
        "" => None,
        "*" => Some(Segment::One),
        "**" => Some(Segment::Rest),
        literal if literal.contains(['{', '}', '=', '*']) => None,
        literal => Some(Segment::Literal(literal.to_string())),
    }
}

fn is_ident(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Percent-decodes one path segment. A variable of one segment decodes `%2F` too; in a
/// multi-segment variable it stays encoded, as the google.api.http rules say. A broken escape
/// (`%` not followed by two hex digits) or bytes that are not UTF-8 make it `None`: the path
/// matches no route.
pub fn percent_decode(text: &str, decode_slash: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    if decode_slash {
        return decode(text);
    }
    // An encoded slash stays encoded: decode the pieces between them.
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_encoded_slash(rest) {
        out.push_str(&decode(&rest[..at])?);
        out.push_str(&rest[at..at + 3]);
        rest = &rest[at + 3..];
    }
    out.push_str(&decode(rest)?);
    Some(out)
}

fn find_encoded_slash(text: &str) -> Option<usize> {
    text.as_bytes()
        .windows(3)
        .position(|w| w[0] == b'%' && w[1] == b'2' && (w[2] == b'F' || w[2] == b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(template)
            .unwrap()
            .matches(path)
            .map(|b| {
                b.into_iter()
                    .map(|b| (b.field_path.join("."), b.value))
                    .collect()
            })
    }

    #[test]
    fn literal_templates_match_only_themselves() {
        assert_eq!(bound("/v1/echo", "/v1/echo"), Some(vec![]));
        assert_eq!(bound("/v1/echo", "/v1/echo/x"), None);
        assert_eq!(bound("/v1/echo", "/v1/ech"), None);
        assert_eq!(bound("/v1/echo", "/v1"), None);
    }

    #[test]
    fn variables_bind_one_segment_by_default() {
        assert_eq!(
            bound(
                "/v1/shelves/{shelf}/books/{book.id}",
                "/v1/shelves/7/books/b%20c"
            ),
            Some(vec![
                ("shelf".into(), "7".into()),
                ("book.id".into(), "b c".into())
            ])
        );
        assert_eq!(bound("/v1/shelves/{shelf}", "/v1/shelves/"), None);
        assert_eq!(bound("/v1/shelves/{shelf}", "/v1/shelves/a/b"), None);
    }

    #[test]
    fn variables_with_patterns_and_rest() {
        assert_eq!(
            bound("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2"),
            Some(vec![("name".into(), "shelves/1/books/2".into())])
        );
        assert_eq!(
            bound("/v1/files/{path=**}", "/v1/files/a/b%2Fc/d"),
            Some(vec![("path".into(), "a/b%2Fc/d".into())])
        );
        assert_eq!(
            bound("/v1/files/{path=**}", "/v1/files"),
            Some(vec![("path".into(), "".into())])
        );
    }

    #[test]
    fn verbs_are_part_of_the_last_segment() {
        assert_eq!(
            bound("/v1/{name}:cancel", "/v1/op1:cancel"),
            Some(vec![("name".into(), "op1".into())])
        );
        assert_eq!(bound("/v1/{name}:cancel", "/v1/op1"), None);
        assert_eq!(bound("/v1/echo:stream", "/v1/echo:stream"), Some(vec![]));
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "v1/echo",
            "/v1/{name",
            "/v1/{na me}",
            "/v1/**/x",
            "/v1//x",
            "/v1/a{b}",
            "/v1/{a}x",
            "/v1/x:",
            "/v1/{1a}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn specificity_counts_literals() {
        let a = PathTemplate::parse("/v1/a/b").unwrap();
        let b = PathTemplate::parse("/v1/a/{x}").unwrap();
        assert!(a.literal_count() > b.literal_count());
    }

    #[test]
    fn percent_decoding_rejects_broken_escapes() {
        assert_eq!(percent_decode("a%2", true), None);
        assert_eq!(percent_decode("a%zz", true), None);
        assert_eq!(percent_decode("%ff", true), None); // not UTF-8
        assert_eq!(percent_decode("a%2Fb", true).as_deref(), Some("a/b"));
        assert_eq!(percent_decode("a%2Fb", false).as_deref(), Some("a%2Fb"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_and_matching_never_panic(template in "[/a-z{}=*:.%0-9]{0,24}", path in "[/a-z:%0-9]{0,24}") {
            if let Ok(t) = PathTemplate::parse(&template) {
                let _ = t.matches(&path);
            }
        }
    }
}
