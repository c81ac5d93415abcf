//! One call's translation: the REST request (path variables, query, JSON body) to the protobuf
//! request message, and each protobuf reply to JSON. The proto3 JSON mapping itself is
//! prost-reflect's; this file only decides which JSON goes where.

use prost::Message as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions};
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

/// The request message, encoded, from a matched route's bindings, the query and the body.
pub fn build_request(
    route: &RestRoute,
    bindings: &[Binding],
    query: Option<&str>,
    body: &[u8],
) -> Result<Vec<u8>, RequestError> {
    let input = route.method.descriptor.input();
    let body_json = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(
            serde_json::from_slice::<Value>(body)
                .map_err(|e| RequestError::Syntax(e.to_string()))?,
        )
    };
    let mut root = match (&route.body, body_json) {
        (BodyRule::Whole, Some(Value::Object(object))) => object,
        (BodyRule::Whole, Some(other)) => {
            // Not an object: only a well-known type's JSON form can be this; let the mapping
            // decide (it also writes the reason when it is not).
            return encode(&input, other);
        }
        (BodyRule::Field(field), Some(value)) => {
            let mut object = Map::new();
            object.insert(field.clone(), value);
            object
        }
        (BodyRule::None, Some(_)) => return Err(RequestError::UnexpectedBody),
        (_, None) => Map::new(),
    };
    for binding in bindings {
        let Some((field, names)) = field_at(&input, &binding.field_path) else {
            continue; // checked when the descriptors loaded
        };
        set_path(&mut root, &names, scalar(&field, &binding.value), false);
    }
    for (key, value) in query_pairs(query.unwrap_or(""))? {
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        let (field, names) =
            field_at(&input, &path).ok_or(RequestError::UnknownParameter(key.clone()))?;
        set_path(&mut root, &names, scalar(&field, &value), field.is_list());
    }
    encode(&input, Value::Object(root))
}

fn encode(input: &MessageDescriptor, json: Value) -> Result<Vec<u8>, RequestError> {
    let message =
        DynamicMessage::deserialize(input.clone(), json).map_err(|e| RequestError::Mapping {
            message: input.full_name().to_string(),
            reason: e.to_string(),
        })?;
    Ok(message.encode_to_vec())
}

/// A reply message as JSON: the whole message, or its `response_body` field.
pub fn render_message(
    output: &MessageDescriptor,
    response_body: Option<&str>,
    bytes: &[u8],
) -> Result<Vec<u8>, String> {
    let message = DynamicMessage::decode(output.clone(), bytes)
        .map_err(|e| format!("the backend's reply is not a {}: {e}", output.full_name()))?;
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
