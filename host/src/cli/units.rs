//! Sizes and durations as people write them on a command line
//! (`--log-retention-bytes 10GiB`, `--log-retention-age 7d`).

use std::time::Duration;

/// `n` and `noun`, the noun in the plural unless `n` is 1 (`1 event`,
/// `2 events`, `1 dead letter`, `0 follow-ups`); `noun` takes an `s`.
pub fn counted(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Parses a size: a whole number with an optional unit, `B`, decimal
/// (`KB`, `MB`, `GB`, `TB`: powers of 1000) or binary (`KiB`, `MiB`, `GiB`,
/// `TiB`, or `K`, `M`, `G`, `T`: powers of 1024), case-insensitive.
///
/// # Errors
/// What is wrong with `text`, for clap to show beside the flag.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split(text)?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown size unit `{unit}` (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses a log segment size ([`parse_size`]), at least
/// [`plugbus::log::MIN_SEGMENT_BYTES`].
///
/// # Errors
/// As [`parse_size`], or the size is below the smallest.
pub fn parse_segment_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < plugbus::log::MIN_SEGMENT_BYTES {
        return Err(format!(
            "a segment of {bytes} bytes is below the smallest, {}KiB",
            plugbus::log::MIN_SEGMENT_BYTES >> 10
        ));
    }
    Ok(bytes)
}

/// Parses a duration: a whole number with a unit, `s`, `m`, `h` or `d`
/// (`90s`, `30m`, `12h`, `7d`).
///
/// # Errors
/// What is wrong with `text`, for clap to show beside the flag.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split(text)?;
    let seconds: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "" => return Err(format!("`{text}` needs a unit: s, m, h or d (`7d`)")),
        other => return Err(format!("unknown duration unit `{other}` (s, m, h or d)")),
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// The leading whole number of `text` and the unit after it (spaces
/// between them allowed).
fn split(text: &str) -> Result<(u64, &str), String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if digits == 0 {
        return Err(format!("`{text}` does not start with a whole number"));
    }
    let number = text[..digits].parse::<u64>().map_err(|e| format!("`{text}`: {e}"))?;
    Ok((number, text[digits..].trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10 MB"), Ok(10_000_000));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert!(parse_size("MB").unwrap_err().contains("whole number"));
        assert!(parse_size("1.5GB").unwrap_err().contains("unit `.5GB`"));
        assert!(parse_size("10 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("99999999999999TiB").unwrap_err().contains("too large"));
        assert_eq!(parse_segment_size("4KiB"), Ok(4096));
        assert!(parse_segment_size("4KB").unwrap_err().contains("below the smallest"));
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("12 h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("7").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("7w").unwrap_err().contains("unknown duration unit"));
        assert!(parse_duration("-1d").unwrap_err().contains("whole number"));
    }
}
