//! Times on the command line: Unix seconds (`1700003600`) or an offset from now (`+90s`,
//! `+30m`, `+2h`, `+1d`).

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a time: give Unix seconds (1700003600) or an offset from now (+90s, +30m, +2h, +1d)")]
pub struct BadTime(pub String);

pub fn parse_when(text: &str, now: u64) -> Result<u64, BadTime> {
    let bad = || BadTime(text.to_string());
    let t = text.trim();
    if let Some(offset) = t.strip_prefix('+') {
        let split = offset
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(offset.len());
        let (digits, unit) = offset.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let scale = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        return n
            .checked_mul(scale)
            .and_then(|d| now.checked_add(d))
            .ok_or_else(bad);
    }
    t.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_and_relative_times() {
        assert_eq!(parse_when("1700003600", 5), Ok(1_700_003_600));
        assert_eq!(parse_when("+90s", 1000), Ok(1090));
        assert_eq!(parse_when("+90", 1000), Ok(1090));
        assert_eq!(parse_when("+30m", 1000), Ok(2800));
        assert_eq!(parse_when("+2h", 0), Ok(7200));
        assert_eq!(parse_when("+1d", 0), Ok(86_400));
        assert!(parse_when("+1w", 0).is_err());
        assert!(parse_when("tomorrow", 0).is_err());
        assert!(parse_when("+", 0).is_err());
        assert!(parse_when(&format!("+{}d", u64::MAX), 0).is_err());
    }
}
