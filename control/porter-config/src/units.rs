//! Durations (`500ms`, `5s`, `2m`, `1h`, `1m30s`) and byte sizes (`65536`, `64KiB`, `16MiB`).

use std::time::Duration;

use crate::error::InvalidValue;

const DURATION_HINT: &str =
    "expected a duration such as 500ms, 5s, 2m or 1h (a bare number means seconds)";

/// Parses a duration written as one or more `<integer><unit>` parts, units `ms`, `s`, `m`,
/// `h` (`1m30s`), or a bare integer meaning seconds (`120`).
///
/// # Errors
/// [`InvalidValue`] for anything else (fractions, signs, other units, overflow).
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    let bad = || InvalidValue::new(format!("{text:?} is not a duration: {DURATION_HINT}"));
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(bad());
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = trimmed.parse().map_err(|_| bad())?;
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            if rest.starts_with('.') || rest.starts_with('-') {
                return Err(InvalidValue::new(format!(
                    "{text:?} is not a duration: use whole numbers of a smaller unit (1500ms, not 1.5s) and no sign"
                )));
            }
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ms" => Some(Duration::from_millis(number)),
            "s" => Some(Duration::from_secs(number)),
            "m" => number.checked_mul(60).map(Duration::from_secs),
            "h" => number.checked_mul(3600).map(Duration::from_secs),
            "" if rest.starts_with('.') => {
                return Err(InvalidValue::new(format!(
                    "{text:?} is not a duration: use whole numbers of a smaller unit (1500ms, not 1.5s)"
                )))
            }
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| InvalidValue::new(format!("{text:?} is too long a duration")))?;
    }
    Ok(total)
}

/// Formats a duration the way the configuration file writes it (`120s`, `500ms`, `10m`).
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    // Whole multiples only (written without `is_multiple_of`, newer than our rust-version).
    let whole = |unit: u128| ms > 0 && ms / unit * unit == ms;
    if !whole(1000) {
        format!("{ms}ms")
    } else if whole(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if whole(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// Parses a byte size: a bare integer (bytes) or `<integer>[ ]<unit>` with unit `B`, `KiB`,
/// `MiB` or `GiB` (powers of 1024; case does not matter).
///
/// # Errors
/// [`InvalidValue`] for anything else; decimal units (`KB`, `MB`) get a hint.
pub fn parse_byte_size(text: &str) -> Result<u64, InvalidValue> {
    let trimmed = text.trim();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    let bad = |why: &str| {
        InvalidValue::new(format!(
            "{text:?} is not a byte size: {why}expected a number of bytes or a size such as 64KiB or 16MiB"
        ))
    };
    if digits == 0 {
        return Err(bad(""));
    }
    let number: u64 = trimmed[..digits].parse().map_err(|_| bad("too large; "))?;
    let unit = trimmed[digits..].trim_start();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "k" | "kb" | "m" | "mb" | "g" | "gb" => {
            return Err(bad("write binary units (KiB, MiB, GiB: powers of 1024); "))
        }
        _ => return Err(bad("")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| bad("too large; "))
}

/// Formats a byte size the way the configuration file writes it (`64KiB`, `1200`).
pub(crate) fn format_byte_size(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size && n / size * size == n {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("120").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in [
            "",
            "s",
            "5 s",
            "5x",
            "1.5s",
            "-1s",
            "ms5",
            "5sec",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse_duration("1.5s")
            .unwrap_err()
            .message()
            .contains("1500ms"));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("65536").unwrap(), 65536);
        assert_eq!(parse_byte_size("64KiB").unwrap(), 64 * 1024);
        assert_eq!(parse_byte_size("16 MiB").unwrap(), 16 << 20);
        assert_eq!(parse_byte_size("1gib").unwrap(), 1 << 30);
        assert_eq!(parse_byte_size("12B").unwrap(), 12);
        assert!(parse_byte_size("64KB")
            .unwrap_err()
            .message()
            .contains("KiB"));
        for bad in ["", "KiB", "1.5MiB", "-1", "10 TiB", "99999999999999999999"] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for d in [
            Duration::from_millis(500),
            Duration::from_secs(5),
            Duration::from_secs(600),
            Duration::from_secs(7200),
            Duration::ZERO,
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        for n in [0, 1200, 64 << 10, 64 << 20, 3 << 30] {
            assert_eq!(parse_byte_size(&format_byte_size(n)).unwrap(), n);
        }
    }
}
