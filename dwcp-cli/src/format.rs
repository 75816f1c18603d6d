//! Human-readable figures for the CLI's tables: rates in bit/s with SI prefixes, durations in
//! the unit that keeps three significant digits, ratios in percent.

/// `1_000_000_000` -> `1 Gbit/s`, `300_000_000` -> `300 Mbit/s`, `1_500` -> `1.5 kbit/s`.
pub fn bits_per_second(bps: f64) -> String {
    let (v, unit) = if bps >= 1e12 {
        (bps / 1e12, "Tbit/s")
    } else if bps >= 1e9 {
        (bps / 1e9, "Gbit/s")
    } else if bps >= 1e6 {
        (bps / 1e6, "Mbit/s")
    } else if bps >= 1e3 {
        (bps / 1e3, "kbit/s")
    } else {
        (bps, "bit/s")
    };
    format!("{} {unit}", trim(v))
}

/// `0.0803` -> `80.3 ms`, `0.2003` -> `200.3 ms` (link latencies differ by tenths of a
/// millisecond, so those are kept), `0.0000123` -> `12.3 µs`, `12.5` -> `12.5 s`.
pub fn seconds(s: f64) -> String {
    let tenths = |v: f64| {
        let t = format!("{v:.1}");
        t.strip_suffix(".0").map(str::to_string).unwrap_or(t)
    };
    if s >= 1.0 {
        format!("{} s", tenths(s))
    } else if s >= 1e-3 {
        format!("{} ms", tenths(s * 1e3))
    } else {
        format!("{} µs", tenths(s * 1e6))
    }
}

/// `9_000_000` -> `9 MB`, `1_536` -> `1.54 kB` (SI, as `ip -h` prints them).
pub fn bytes(b: u64) -> String {
    let b = b as f64;
    let (v, unit) = if b >= 1e12 {
        (b / 1e12, "TB")
    } else if b >= 1e9 {
        (b / 1e9, "GB")
    } else if b >= 1e6 {
        (b / 1e6, "MB")
    } else if b >= 1e3 {
        (b / 1e3, "kB")
    } else {
        (b, "B")
    };
    format!("{} {unit}", trim(v))
}

/// `0.07` -> `7 %`, `0.0012` -> `0.12 %`.
pub fn percent(ratio: f64) -> String {
    format!("{} %", trim(ratio * 100.0))
}

/// An age: `12.5` -> `12 s ago`, `125` -> `2 min 5 s ago`.
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min {} s ago", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min ago", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h ago", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn unix_time(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Three significant digits without trailing zeros: 80.30 -> 80.3, 1.000 -> 1, 123.4 -> 123.
fn trim(v: f64) -> String {
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_an_engineer_writes_them() {
        assert_eq!(bits_per_second(1e9), "1 Gbit/s");
        assert_eq!(bits_per_second(300e6), "300 Mbit/s");
        assert_eq!(bits_per_second(1500.0), "1.5 kbit/s");
        assert_eq!(bits_per_second(12.0), "12 bit/s");
        assert_eq!(seconds(0.0803), "80.3 ms");
        assert_eq!(seconds(0.2011), "201.1 ms");
        assert_eq!(seconds(0.2), "200 ms");
        assert_eq!(bytes(9_000_000), "9 MB");
        assert_eq!(bytes(1_536), "1.54 kB");
        assert_eq!(bytes(12), "12 B");
        assert_eq!(seconds(0.0000123), "12.3 µs");
        assert_eq!(seconds(12.5), "12.5 s");
        assert_eq!(percent(0.07), "7 %");
        assert_eq!(percent(0.0012), "0.12 %");
        assert_eq!(age(12.5), "12 s ago");
        assert_eq!(age(125.0), "2 min 5 s ago");
        assert_eq!(unix_time(0), "1970-01-01 00:00:00");
        assert_eq!(unix_time(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(unix_time(951_782_400), "2000-02-29 00:00:00");
    }
}
