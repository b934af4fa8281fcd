//! How figures are written in the summary and the targets.

use crate::spread::Spread;

/// Three significant digits, thousands grouped with a narrow no-break space; `–` for a
/// figure that is not finite.
pub fn fmt(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        group(x.round() as i64)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// An integer with its thousands grouped (narrow no-break space).
pub fn group(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A count of services (or endpoints), grouped.
pub fn count(n: usize) -> String {
    group(n as i64)
}

/// "median (min–max)", or the median alone for a single run.
pub fn spread_text(x: &Spread) -> String {
    if x.n <= 1 {
        fmt(x.median)
    } else {
        format!("{} ({}–{})", fmt(x.median), fmt(x.min), fmt(x.max))
    }
}

/// A ratio with two decimals: "median (min–max)", or the median alone.
pub fn ratio_text(x: &Spread) -> String {
    if !x.median.is_finite() {
        return "–".into();
    }
    if x.n <= 1 {
        format!("{:.2}", x.median)
    } else {
        format!("{:.2} ({:.2}–{:.2})", x.median, x.min, x.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(fmt(12_345.6), "12\u{202f}346");
        assert_eq!(fmt(123.4), "123");
        assert_eq!(fmt(12.34), "12.3");
        assert_eq!(fmt(1.234), "1.23");
        assert_eq!(fmt(0.5), "0.500");
        assert_eq!(fmt(f64::NAN), "–");
        assert_eq!(group(-1_234_567), "-1\u{202f}234\u{202f}567");
        assert_eq!(count(100_000), "100\u{202f}000");
        let s = Spread::of(&[1.0, 2.0, 3.0]);
        assert_eq!(spread_text(&s), "2.00 (1.00–3.00)");
        assert_eq!(ratio_text(&s), "2.00 (1.00–3.00)");
        assert_eq!(ratio_text(&Spread::of(&[0.5])), "0.50");
    }
}
