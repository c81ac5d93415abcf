//! The `grpc-timeout` header: `1*8DIGIT` followed by a unit (H, M, S, m, u, n).

use std::time::Duration;

/// Parses a `grpc-timeout` value; `None` when it breaks the spec's grammar.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a remaining budget for the backend, choosing the finest unit that fits in 8 digits
/// and rounding down never below 1 of that unit (0 would mean "already expired" to some peers).
pub fn format_grpc_timeout(budget: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = budget.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (scale, unit) in units {
        let amount = nanos / scale;
        if amount <= MAX {
            return format!("{}{unit}", amount.max(1));
        }
    }
    format!("{MAX}H")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            &b""[..],
            b"S",
            b"10",
            b"123456789S",
            b"-1S",
            b"1s",
            b"1.5S",
            b" 1S",
            b"1 S",
        ] {
            assert_eq!(
                parse_grpc_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn formats_with_finest_fitting_unit() {
        assert_eq!(format_grpc_timeout(Duration::from_millis(1500)), "1500000u");
        assert_eq!(format_grpc_timeout(Duration::from_secs(30)), "30000000u");
        assert_eq!(format_grpc_timeout(Duration::from_secs(300)), "300000m");
        assert_eq!(format_grpc_timeout(Duration::ZERO), "1n");
        assert_eq!(
            format_grpc_timeout(Duration::from_secs(86_400 * 365)),
            "31536000S"
        );
    }

    proptest! {
        #[test]
        fn formatted_values_parse_back_without_growing(nanos in 1u64..u64::MAX / 2) {
            let budget = Duration::from_nanos(nanos);
            let text = format_grpc_timeout(budget);
            let parsed = parse_grpc_timeout(text.as_bytes()).unwrap();
            prop_assert!(parsed <= budget);
            // The unit is the finest that fits 8 digits, so the value has at least 5 digits
            // and rounding down loses under 1/10^5 of it.
            prop_assert!(budget - parsed <= budget / 100_000 + Duration::from_nanos(1));
        }

        #[test]
        fn parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
            let _ = parse_grpc_timeout(&bytes);
        }
    }
}
