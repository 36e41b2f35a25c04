//! Durations as written in flags and the file: `500ms`, `2s`, `5m`, `1h`.

use std::time::Duration;

/// Longest accepted duration. Deadlines are `Instant + Duration`, which panics on overflow;
/// a year is far beyond any sensible timeout and far from that overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `500ms`, `2s`, `5m`, `1h`; a decimal such as `1.5s` is accepted too. A bare number is
/// an error: `--connect-timeout 5` is ambiguous between seconds and milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "e.g. 500ms, 2s, 5m, 1h";
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!("expected a duration ({HINT}), got '{s}'"));
    }
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => {
            return Err(format!(
                "duration '{s}' needs a unit: ms, s, m or h ({HINT})"
            ))
        }
        other => {
            return Err(format!(
                "unknown unit '{other}' in duration '{s}'; expected ms, s, m or h"
            ))
        }
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(format!("expected a duration ({HINT}), got '{s}'"));
    }
    let too_long = || format!("duration '{s}' is too long; at most 8760h");
    let int: u128 = int.parse().map_err(|_| too_long())?;
    let mut nanos = int.checked_mul(unit_nanos).ok_or_else(too_long)?;
    // Nanoseconds are the resolution; digits beyond 18 cannot matter.
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let digits: u128 = frac.parse().map_err(|_| too_long())?;
        // Checked: an integer part just below u128::MAX nanoseconds plus a fraction would
        // wrap (in release) to a short, accepted duration.
        nanos = nanos
            .checked_add(digits * unit_nanos / 10u128.pow(frac.len() as u32))
            .ok_or_else(too_long)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
    let d = Duration::new(secs, (nanos % 1_000_000_000) as u32);
    check_duration(d).map_err(|_| too_long())?;
    Ok(d)
}

pub(crate) fn check_duration(d: Duration) -> Result<(), String> {
    if d > MAX_DURATION {
        return Err("too long; at most 8760h".to_string());
    }
    Ok(())
}

pub(crate) fn check_positive(d: Duration) -> Result<(), String> {
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    check_duration(d)
}

/// A duration that must be greater than zero (timeouts, intervals).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    check_positive(d).map_err(|m| format!("duration {m}"))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("2s"), Ok(ms(2000)));
        assert_eq!(parse_duration("5m"), Ok(ms(300_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("0.25ms"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        let err = |s: &str| parse_duration(s).expect_err(s);
        assert!(err("5").contains("needs a unit"));
        assert!(err("2sec").contains("unknown unit 'sec'"));
        for bad in [
            "",
            "s",
            "-1s",
            "1..5s",
            "1.s",
            ".5s",
            "1e3s",
            "8761h",
            "99999999999999999999999999999999999999999h",
        ] {
            let e = err(bad);
            assert!(!e.contains('\n'), "{e}");
        }
        assert_eq!(parse_positive_duration("0ms").ok(), None);
    }

    /// The integer part times the unit fits in u128 but the fraction pushed it over: this
    /// wrapped to about 36 minutes in release builds instead of being refused.
    #[test]
    fn duration_fraction_overflow_is_refused() {
        let s = "94522879700260684295381835.999999999999999999h";
        assert_eq!(
            parse_duration(s),
            Err(format!("duration '{s}' is too long; at most 8760h"))
        );
    }
}
