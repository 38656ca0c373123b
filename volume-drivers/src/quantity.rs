//! Kubernetes resource quantities (`128Mi`, `500m`, `1.5G`, `2e3`), parsed
//! exactly into nano-units so sizes and divisors compare and divide without
//! floating-point error. Rounding follows the API machinery: a value is
//! rounded up to the unit asked for (`Value()` rounds up to whole units,
//! `MilliValue()` to thousandths).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity that is not in the Kubernetes quantity syntax.
#[derive(Debug, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}"
)]
pub struct QuantityError(pub String);

const NANO: i128 = 1_000_000_000;

/// A parsed quantity in units of 10^-9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount {
    nanos: i128,
}

impl Amount {
    pub const ZERO: Amount = Amount { nanos: 0 };

    pub fn from_units(units: i128) -> Self {
        Self {
            nanos: units * NANO,
        }
    }

    pub fn from_millis(millis: i128) -> Self {
        Self {
            nanos: millis * 1_000_000,
        }
    }

    /// The value rounded up to whole units (what `Quantity.Value()` gives).
    pub fn value(self) -> i128 {
        div_ceil(self.nanos, NANO)
    }

    /// The value in thousandths, rounded up (`Quantity.MilliValue()`).
    pub fn milli_value(self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }

    pub fn checked_add(self, other: Amount) -> Amount {
        Amount {
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }
}

fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b != 0 && (a > 0) == (b > 0) {
        q + 1
    } else {
        q
    }
}

/// Parses a k8s-openapi [`Quantity`].
pub fn parse_quantity(q: &Quantity) -> Result<Amount, QuantityError> {
    parse(&q.0)
}

/// Parses quantity text such as `64Mi`, `250m`, `1e3`.
pub fn parse(text: &str) -> Result<Amount, QuantityError> {
    let bad = || QuantityError(text.to_owned());
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (negative, digits) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    if digits.is_empty() || digits.contains(['+', '-']) || digits.matches('.').count() > 1 {
        return Err(bad());
    }
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(bad());
    }
    // The mantissa as an integer plus a power of ten for the fraction digits.
    let mantissa_digits = format!("{int_part}{frac_part}");
    let mantissa: i128 = mantissa_digits.parse().map_err(|_| bad())?;
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        s if s.starts_with(['e', 'E']) => {
            exp10 += s[1..].parse::<i32>().map_err(|_| bad())?;
        }
        _ => return Err(bad()),
    }
    // nanos = mantissa * 10^exp10 * 2^exp2 * 10^9, rounded up.
    let mut num: i128 = mantissa.checked_mul(1i128 << exp2).ok_or_else(bad)?;
    let e = exp10 + 9;
    if e >= 0 {
        num = num
            .checked_mul(10i128.checked_pow(e as u32).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    } else {
        let d = 10i128.checked_pow((-e) as u32).ok_or_else(bad)?;
        num = div_ceil(num, d);
    }
    Ok(Amount {
        nanos: if negative { -num } else { num },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes_exactly() {
        assert_eq!(parse("64Mi").unwrap().value(), 64 << 20);
        assert_eq!(parse("1.5Gi").unwrap().value(), 3 << 29);
        assert_eq!(parse("1G").unwrap().value(), 1_000_000_000);
        assert_eq!(parse("250m").unwrap().milli_value(), 250);
        assert_eq!(parse("250m").unwrap().value(), 1);
        assert_eq!(parse("2").unwrap().milli_value(), 2000);
        assert_eq!(parse("1e3").unwrap().value(), 1000);
        assert_eq!(parse("0.5").unwrap().milli_value(), 500);
        assert_eq!(parse("1k").unwrap().value(), 1000);
        assert_eq!(parse("100n").unwrap().milli_value(), 1);
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "Mi", "1.2.3", "12Q", "1-2", "."] {
            assert!(parse(s).is_err(), "{s:?} parsed");
        }
    }
}
