//! Human durations in config files: `250ms`, `5s`, `1m30s`, `2h`.

use std::time::Duration;

/// The longest duration any config value may hold: 365 days. Fields with a tighter natural
/// bound (probe intervals, breaker back-off) check it in validation. Keeping every duration
/// this small makes `Instant + duration`, doubling and jitter arithmetic safe everywhere.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a duration written as one or more `<integer><unit>` parts, units `ms`, `s`, `m`, `h`.
/// A bare number is refused on purpose: `timeout = 5` is ambiguous (seconds? milliseconds?).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write it like \"250ms\" or \"5s\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number, found {rest:?}"
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (use ms, s, m or h, e.g. \"{value}s\")"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
                ))
            }
        };
        total = total.saturating_add(part);
    }
    if total > MAX_DURATION {
        return Err(format!(
            "duration {text:?} is too long: at most 365 days (\"8760h\")"
        ));
    }
    Ok(total)
}

/// A duration field in the TOML file. Deserialising through this type makes a bad value a
/// serde error, which the TOML parser reports with its line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl schemars::JsonSchema for ConfigDuration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h))+$",
            "description": "A duration: one or more <integer><unit> parts, units ms, s, m, h (\"250ms\", \"5s\", \"1m30s\")."
        })
    }
}

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(ConfigDuration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("5").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5 sec")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("s5")
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999999s")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("5000000000000000h")
            .unwrap_err()
            .contains("at most 365 days"));
        assert!(parse_duration("8761h").is_err());
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
    }
}
