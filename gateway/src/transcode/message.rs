//! One call's translation: the REST request (path variables, query, JSON body) to the protobuf
//! request message, and each protobuf reply to JSON. The proto3 JSON mapping itself is
//! prost-reflect's; this file only decides which JSON goes where.

use prost::Message as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
};
use serde_json::{Map, Value};

use super::template::{percent_decode, Binding};
use super::{BodyRule, RestRoute};

/// Why a request cannot be translated; answered 400 with this text, never sent on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the body is not valid JSON: {0}")]
    Syntax(String),
    #[error("the JSON does not fit {message}: {reason}")]
    Mapping { message: String, reason: String },
    #[error("query parameter {0:?} is not a field of the request")]
    UnknownParameter(String),
    #[error("malformed query string near {0:?}")]
    Query(String),
    #[error("this route takes no request body")]
    UnexpectedBody,
}

/// Query parameter names deeper than this are refused: each part is a level of nesting that
/// the JSON mapping walks recursively (a recursive message type would otherwise let a long
/// query string exhaust the stack).
const MAX_FIELD_PATH: usize = 16;

/// The request message, encoded, from a matched route's bindings, the query and the body.
///
/// The body is read straight into the message (no JSON tree in between, so memory stays in
/// proportion to the message, and serde_json's nesting limit applies); the path variables and
/// query parameters, a few short strings, are a second message merged over it.
pub fn build_request(
    route: &RestRoute,
    bindings: &[Binding],
    query: Option<&str>,
    body: &[u8],
) -> Result<Vec<u8>, RequestError> {
    let input = route.method.descriptor.input();
    let has_body = !body.iter().all(u8::is_ascii_whitespace);
    let mut message = match (&route.body, has_body) {
        (BodyRule::None, true) => return Err(RequestError::UnexpectedBody),
        (_, false) => DynamicMessage::new(input.clone()),
        (BodyRule::Whole, true) => decode_json(&input, body)?,
        (BodyRule::Field(field), true) => {
            // The body is the field's value: `{"field": <body>}`, still read in one pass.
            let mut wrapped = Vec::with_capacity(body.len() + field.len() + 8);
            wrapped.extend_from_slice(b"{\"");
            wrapped.extend_from_slice(field.as_bytes());
            wrapped.extend_from_slice(b"\":");
            wrapped.extend_from_slice(body);
            wrapped.push(b'}');
            decode_json(&input, &wrapped)?
        }
    };
    let mut overlay = Map::new();
    for binding in bindings {
        let Some((field, names)) = field_at(&input, &binding.field_path) else {
            continue; // checked when the descriptors loaded
        };
        set_path(&mut overlay, &names, scalar(&field, &binding.value), false);
    }
    for (key, value) in query_pairs(query.unwrap_or(""))? {
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        if path.len() > MAX_FIELD_PATH {
            return Err(RequestError::UnknownParameter(key));
        }
        let (field, names) =
            field_at(&input, &path).ok_or(RequestError::UnknownParameter(key.clone()))?;
        set_path(
            &mut overlay,
            &names,
            scalar(&field, &value),
            field.is_list(),
        );
    }
    if !overlay.is_empty() {
        let bound = DynamicMessage::deserialize(input.clone(), Value::Object(overlay))
            .map_err(|e| mapping(&input, e))?;
        // Protobuf merge: what the path and the query set wins over the body, lists append.
        message
            .merge(bound.encode_to_vec().as_slice())
            .map_err(|e| RequestError::Mapping {
                message: input.full_name().to_string(),
                reason: e.to_string(),
            })?;
    }
    Ok(message.encode_to_vec())
}

fn decode_json(input: &MessageDescriptor, json: &[u8]) -> Result<DynamicMessage, RequestError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize(input.clone(), &mut deserializer)
        .and_then(|m| deserializer.end().map(|()| m))
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                RequestError::Syntax(e.to_string())
            }
            _ => mapping(input, e),
        })?;
    Ok(message)
}

fn mapping(input: &MessageDescriptor, e: serde_json::Error) -> RequestError {
    RequestError::Mapping {
        message: input.full_name().to_string(),
        reason: e.to_string(),
    }
}

/// A reply message as JSON: the whole message, or its `response_body` field.
pub fn render_message(
    output: &MessageDescriptor,
    response_body: Option<&str>,
    bytes: &[u8],
) -> Result<Vec<u8>, String> {
    let message = DynamicMessage::decode(output.clone(), bytes)
        .map_err(|e| format!("the backend's reply is not a {}: {e}", output.full_name()))?;
    if !any_nesting_within(&message, 0) {
        return Err(format!(
            "the backend's reply nests google.protobuf.Any more than {MAX_ANY_DEPTH} deep"
        ));
    }
    let rendered = match response_body {
        None => {
            let mut out = Vec::with_capacity(bytes.len() * 2 + 2);
            let mut serializer = serde_json::Serializer::new(&mut out);
            message
                .serialize_with_options(&mut serializer, &SerializeOptions::new())
                .map_err(|e| e.to_string())?;
            return Ok(out);
        }
        Some(field) => {
            let options = SerializeOptions::new().skip_default_fields(false);
            let whole = message
                .serialize_with_options(serde_json::value::Serializer, &options)
                .map_err(|e| e.to_string())?;
            let key = output
                .get_field_by_name(field)
                .map(|f| f.json_name().to_string())
                .unwrap_or_else(|| field.to_string());
            whole.get(&key).cloned().unwrap_or(Value::Null)
        }
    };
    serde_json::to_vec(&rendered).map_err(|e| e.to_string())
}

/// How deep `google.protobuf.Any` may nest in a rendered message. prost-reflect renders each
/// `Any` by decoding its content afresh, outside protobuf's own recursion limit, so a reply of
/// Any inside Any could otherwise exhaust the stack.
pub const MAX_ANY_DEPTH: usize = 8;

/// Whether every `Any` in `message` (with `depth` Anys around it) nests at most
/// [`MAX_ANY_DEPTH`] deep.
pub fn any_nesting_within(message: &DynamicMessage, depth: usize) -> bool {
    fn value_ok(value: &prost_reflect::Value, depth: usize) -> bool {
        match value {
            prost_reflect::Value::Message(inner) => any_nesting_within(inner, depth),
            prost_reflect::Value::List(items) => items.iter().all(|v| value_ok(v, depth)),
            prost_reflect::Value::Map(entries) => entries.values().all(|v| value_ok(v, depth)),
            _ => true,
        }
    }
    let descriptor = message.descriptor();
    if descriptor.full_name() == "google.protobuf.Any" {
        if depth >= MAX_ANY_DEPTH {
            return false;
        }
        let type_url = message
            .get_field_by_name("type_url")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let content = message
            .get_field_by_name("value")
            .and_then(|v| v.as_bytes().cloned())
            .unwrap_or_default();
        let name = type_url.rsplit('/').next().unwrap_or_default();
        return match descriptor.parent_pool().get_message_by_name(name) {
            Some(inner) => match DynamicMessage::decode(inner, content) {
                Ok(inner) => any_nesting_within(&inner, depth + 1),
                Err(_) => true, // not rendered: the mapping reports it
            },
            None => true,
        };
    }
    message.fields().all(|(_, value)| value_ok(value, depth))
}

/// The type's own rendering of a text from the path or the query: numbers and booleans as
/// JSON numbers and booleans where the text is one, everything else as a string (which the
/// proto3 JSON mapping reads for 64-bit integers, enums, bytes and well-known types).
fn scalar(field: &FieldDescriptor, text: &str) -> Value {
    match field.kind() {
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text.to_string()),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(text.to_string())),
        Kind::Float | Kind::Double => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_string())),
        _ => Value::String(text.to_string()),
    }
}

/// The field a dotted path names (each part by its proto or its JSON name), through singular
/// message fields; with the path in proto names, as the JSON object is keyed.
fn field_at(
    message: &MessageDescriptor,
    path: &[String],
) -> Option<(FieldDescriptor, Vec<String>)> {
    let (last, parents) = path.split_last()?;
    let by_either = |message: &MessageDescriptor, name: &str| {
        message
            .get_field_by_name(name)
            .or_else(|| message.get_field_by_json_name(name))
    };
    let mut current = message.clone();
    let mut names = Vec::with_capacity(path.len());
    for name in parents {
        let field = by_either(&current, name)?;
        names.push(field.name().to_string());
        match field.kind() {
            Kind::Message(inner) if !field.is_list() && !field.is_map() => current = inner,
            _ => return None,
        }
    }
    let field = by_either(&current, last)?;
    names.push(field.name().to_string());
    Some((field, names))
}

/// Sets `value` at `path` in a JSON object, creating the objects on the way; `append` adds to
/// a list (repeated query parameters).
fn set_path(root: &mut Map<String, Value>, path: &[String], value: Value, append: bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = root;
    for name in parents {
        let slot = current
            .entry(name.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        current = slot.as_object_mut().expect("made an object above");
    }
    if append {
        match current
            .entry(last.clone())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(value),
            other => *other = Value::Array(vec![value]),
        }
    } else {
        current.insert(last.clone(), value);
    }
}

/// `a=1&b.c=x%20y&b.c=z` as decoded pairs (`+` is a space, as HTML forms write it).
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, RequestError> {
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let decode = |text: &str| {
            percent_decode(&text.replace('+', " "), true)
                .ok_or_else(|| RequestError::Query(part.to_string()))
        };
        pairs.push((decode(key)?, decode(value)?));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Any` wrapping `Any` `levels` times, around an empty `Duration`.
    fn nested_any(levels: usize) -> DynamicMessage {
        let pool = prost_reflect::DescriptorPool::global();
        let any = pool.get_message_by_name("google.protobuf.Any").unwrap();
        let mut inner = (
            "type.googleapis.com/google.protobuf.Duration".to_string(),
            Vec::new(),
        );
        for _ in 0..levels {
            let mut wrapper = DynamicMessage::new(any.clone());
            wrapper.set_field_by_name("type_url", prost_reflect::Value::String(inner.0));
            wrapper.set_field_by_name("value", prost_reflect::Value::Bytes(inner.1.into()));
            inner = (
                "type.googleapis.com/google.protobuf.Any".to_string(),
                wrapper.encode_to_vec(),
            );
        }
        DynamicMessage::decode(any, inner.1.as_slice()).unwrap()
    }

    #[test]
    fn any_nesting_is_bounded() {
        assert!(any_nesting_within(&nested_any(MAX_ANY_DEPTH - 1), 0));
        assert!(!any_nesting_within(&nested_any(MAX_ANY_DEPTH + 1), 0));
        // Deep enough to overflow the stack if it were rendered: refused, not walked.
        assert!(!any_nesting_within(&nested_any(5_000), 0));
    }

    #[test]
    fn query_strings_decode_and_repeat() {
        assert_eq!(
            query_pairs("a=1&b.c=x%20y&b.c=z+w&flag").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b.c".into(), "x y".into()),
                ("b.c".into(), "z w".into()),
                ("flag".into(), "".into()),
            ]
        );
        assert!(query_pairs("a=%zz").is_err());
    }

    #[test]
    fn paths_build_nested_objects_and_lists() {
        let mut root = Map::new();
        set_path(&mut root, &["a".into(), "b".into()], Value::from(1), false);
        set_path(&mut root, &["a".into(), "c".into()], Value::from("x"), true);
        set_path(&mut root, &["a".into(), "c".into()], Value::from("y"), true);
        assert_eq!(
            Value::Object(root),
            serde_json::json!({"a": {"b": 1, "c": ["x", "y"]}})
        );
    }
}
