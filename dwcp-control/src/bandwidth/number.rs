//! Numbers as the API receives them. Every JSON number (negative, fractional, larger than any
//! integer type) and number-like string is accepted by deserialisation so that validation,
//! not the JSON parser, rejects it — with an error that names the field.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

use super::error::BandwidthError;

/// A number from a request, not yet checked.
#[derive(Clone, Debug, PartialEq)]
pub enum RawNumber {
    Int(i128),
    /// JSON numbers with a fraction or exponent, and integers too large for `i128`.
    Float(f64),
    /// A string such as `"100M"` (rates) or `"1700000000"`.
    Text(String),
}

impl From<u64> for RawNumber {
    fn from(v: u64) -> Self {
        RawNumber::Int(v.into())
    }
}

impl From<i64> for RawNumber {
    fn from(v: i64) -> Self {
        RawNumber::Int(v.into())
    }
}

impl From<&str> for RawNumber {
    fn from(v: &str) -> Self {
        RawNumber::Text(v.to_owned())
    }
}

impl fmt::Display for RawNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawNumber::Int(v) => write!(f, "{v}"),
            // Integers too large for i128 arrive as floats; show them as such, not as digits
            // the user never wrote.
            RawNumber::Float(v) if v.abs() >= 1e15 => write!(f, "{v:e}"),
            RawNumber::Float(v) => write!(f, "{v}"),
            RawNumber::Text(v) => write!(f, "{v:?}"),
        }
    }
}

impl Serialize for RawNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RawNumber::Int(v) => match i64::try_from(*v) {
                Ok(small) => s.serialize_i64(small),
                Err(_) => s.serialize_i128(*v),
            },
            RawNumber::Float(v) => s.serialize_f64(*v),
            RawNumber::Text(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl Visitor<'_> for RawVisitor {
            type Value = RawNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a numeric string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawNumber, E> {
                Ok(RawNumber::Int(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawNumber, E> {
                Ok(RawNumber::Int(v.into()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawNumber, E> {
                Ok(RawNumber::Int(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawNumber, E> {
                Ok(i128::try_from(v)
                    .map(RawNumber::Int)
                    .unwrap_or(RawNumber::Float(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawNumber, E> {
                Ok(RawNumber::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawNumber, E> {
                Ok(RawNumber::Text(v.to_owned()))
            }
        }
        d.deserialize_any(RawVisitor)
    }
}

impl RawNumber {
    /// A whole number in `0..=max`.
    pub fn to_u64(&self, field: &'static str, max: u64) -> Result<u64, BandwidthError> {
        let value = match self {
            RawNumber::Int(v) => *v,
            RawNumber::Float(v) => float_to_int(*v, field, self)?,
            RawNumber::Text(t) => {
                t.trim()
                    .parse::<i128>()
                    .map_err(|_| BandwidthError::NotANumber {
                        field,
                        value: self.to_string(),
                        expected: "a whole number",
                    })?
            }
        };
        check_range(value, field, self, max)
    }

    /// A rate in bits/s in `1..=max`: a whole number, or a string with an SI suffix in the
    /// style of `tc` (`"250k"`, `"100M"`, `"1.5G"`, optionally followed by `bit` or `bps`).
    pub fn to_rate(&self, field: &'static str, max: u64) -> Result<u64, BandwidthError> {
        let value = match self {
            RawNumber::Text(t) => parse_si_rate(t).ok_or_else(|| BandwidthError::NotANumber {
                field,
                value: self.to_string(),
                expected: "bits per second, e.g. 100000000 or \"100M\"",
            })?,
            _ => {
                return self
                    .to_u64(field, max)
                    .and_then(|v| positive(v, field, self))
            }
        };
        let value = float_to_int(value, field, self)?;
        check_range(value, field, self, max).and_then(|v| positive(v, field, self))
    }
}

fn positive(v: u64, field: &'static str, raw: &RawNumber) -> Result<u64, BandwidthError> {
    if v == 0 {
        return Err(BandwidthError::NotPositive {
            field,
            value: raw.to_string(),
        });
    }
    Ok(v)
}

fn float_to_int(v: f64, field: &'static str, raw: &RawNumber) -> Result<i128, BandwidthError> {
    if !v.is_finite() || v.fract() != 0.0 {
        return Err(BandwidthError::NotANumber {
            field,
            value: raw.to_string(),
            expected: "a whole number",
        });
    }
    // Saturating cast: anything beyond i128 is out of range anyway.
    Ok(v as i128)
}

fn check_range(
    v: i128,
    field: &'static str,
    raw: &RawNumber,
    max: u64,
) -> Result<u64, BandwidthError> {
    if v < 0 {
        return Err(BandwidthError::Negative {
            field,
            value: raw.to_string(),
        });
    }
    if v > i128::from(max) {
        return Err(BandwidthError::OutOfRange {
            field,
            value: raw.to_string(),
            max,
        });
    }
    Ok(v as u64)
}

/// `"100M"` → 1e8. Returns the value as a float so that `"1.5k"` works; the caller checks that
/// it is whole and in range.
fn parse_si_rate(text: &str) -> Option<f64> {
    let t = text.trim();
    let t = t
        .strip_suffix("bit/s")
        .or_else(|| t.strip_suffix("bps"))
        .or_else(|| t.strip_suffix("bit"))
        .unwrap_or(t)
        .trim_end();
    let (digits, scale) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1e3),
        'M' => (&t[..t.len() - 1], 1e6),
        'G' => (&t[..t.len() - 1], 1e9),
        'T' => (&t[..t.len() - 1], 1e12),
        _ => (t, 1.0),
    };
    let digits = digits.trim();
    // Plain decimal only: no exponent, sign, "inf" or "nan" sneaking through f64 parsing.
    if digits.is_empty()
        || !digits
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
    {
        return None;
    }
    let v: f64 = digits.parse().ok()?;
    // Round away float noise such as 1.1 * 1e9 = 1100000000.0000002.
    Some((v * scale * 1e3).round() / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> RawNumber {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn every_json_number_deserialises() {
        assert_eq!(raw("5"), RawNumber::Int(5));
        assert_eq!(raw("-5"), RawNumber::Int(-5));
        assert_eq!(raw("1.5"), RawNumber::Float(1.5));
        assert!(matches!(
            raw("123456789012345678901234567890123456789012"),
            RawNumber::Float(_)
        ));
        assert_eq!(raw("\"100M\""), RawNumber::Text("100M".into()));
    }

    #[test]
    fn rates_accept_si_suffixes() {
        let r = |s: &str| RawNumber::from(s).to_rate("rate", u64::MAX);
        assert_eq!(r("100M").unwrap(), 100_000_000);
        assert_eq!(r("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(r("1.1Gbit").unwrap(), 1_100_000_000);
        assert_eq!(r("250kbit/s").unwrap(), 250_000);
        assert_eq!(r("64000").unwrap(), 64_000);
        assert!(matches!(r("0.5"), Err(BandwidthError::NotANumber { .. })));
        assert!(matches!(r("fast"), Err(BandwidthError::NotANumber { .. })));
        assert!(matches!(r("1e9"), Err(BandwidthError::NotANumber { .. })));
        assert!(matches!(r("inf"), Err(BandwidthError::NotANumber { .. })));
        assert!(matches!(r("-1M"), Err(BandwidthError::Negative { .. })));
        assert!(matches!(r("0M"), Err(BandwidthError::NotPositive { .. })));
    }

    #[test]
    fn bad_numbers_name_their_field() {
        let e = RawNumber::Int(-3).to_rate("rate", 1000).unwrap_err();
        assert_eq!(e.to_string(), "rate: -3 is negative; it must be positive");
        let e = RawNumber::Int(0).to_rate("rate", 1000).unwrap_err();
        assert!(e.to_string().starts_with("rate: 0"), "{e}");
        let e = RawNumber::Float(1e30).to_u64("end", 1000).unwrap_err();
        assert!(
            matches!(
                e,
                BandwidthError::OutOfRange {
                    field: "end",
                    max: 1000,
                    ..
                }
            ),
            "{e}"
        );
        let e = RawNumber::Int(i128::MAX)
            .to_u64("start", u64::MAX)
            .unwrap_err();
        assert!(
            matches!(e, BandwidthError::OutOfRange { field: "start", .. }),
            "{e}"
        );
        let e = RawNumber::Float(2.5).to_u64("priority", 7).unwrap_err();
        assert!(
            matches!(
                e,
                BandwidthError::NotANumber {
                    field: "priority",
                    ..
                }
            ),
            "{e}"
        );
    }
}
