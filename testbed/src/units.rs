//! Parsing of human-friendly durations and sizes for command lines (`500ms`, `64KiB`).

use std::time::Duration;

/// Longest duration [`parse_duration`] accepts, as the balancer's own flags do: far longer
/// than any run, and short enough that a deadline `Instant::now() + d` cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(8760 * 3600);

/// Parses `500ms`, `2s`, `1.5s`, `1m`, `1h`, `250us`; a bare number means seconds. At most
/// [`MAX_DURATION`] (8760h).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 2s, 1m"))?;
    let secs_per_unit = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("invalid duration unit {other:?} in {s:?}")),
    };
    let secs = value * secs_per_unit;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    // Checked before converting: `Duration::from_secs_f64` panics beyond u64 seconds.
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("duration {s:?} is too long; at most 8760h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte count: `1000`, `64k`/`64KiB`, `1M`/`1MiB`, `2G`/`2GiB` (binary multiples).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 4096, 64KiB, 1M"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    value
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        for long in ["8761h", "4000000000000000h", "99999999999999999999999h"] {
            let err = parse_duration(long).unwrap_err();
            assert!(err.contains("too long; at most 8760h"), "{long}: {err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64k"), Ok(65536));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("1M"), Ok(1 << 20));
        assert!(parse_bytes("1.5M").is_err());
        assert!(parse_bytes("12q").is_err());
    }
}
