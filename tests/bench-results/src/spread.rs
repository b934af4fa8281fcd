//! Medians with their spread.

use serde::{Deserialize, Deserializer, Serialize};

/// A figure over repeated runs: median, quartiles, min, max, and the runs themselves.
///
/// `n` = 0 means no run gave a finite value (every figure is then 0).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    #[serde(deserialize_with = "f64_or_nan")]
    pub median: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub q1: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub q3: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub min: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub max: f64,
    pub n: usize,
    /// Every run's value, in run order, non-finite ones included (JSON writes them as
    /// `null`, read back as NaN).
    #[serde(deserialize_with = "vec_f64_or_nan")]
    pub values: Vec<f64>,
}

impl Spread {
    /// Spread of `values` (non-finite values are left out of the figures). No finite
    /// value gives n = 0 and zeros.
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        Spread {
            median: quantile(&v, 0.5),
            q1: quantile(&v, 0.25),
            q3: quantile(&v, 0.75),
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
            values: values.to_vec(),
        }
    }
}

/// Linear-interpolated quantile of sorted values (NaN when there are none).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// A number that JSON may hold as `null` (serde_json writes NaN and infinities so).
pub(crate) fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn vec_f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?
        .into_iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_quantiles() {
        let s = Spread::of(&[5.0, 1.0, 3.0, f64::NAN, 2.0, 4.0]);
        assert_eq!((s.median, s.min, s.max, s.n), (3.0, 1.0, 5.0, 5));
        assert_eq!((s.q1, s.q3), (2.0, 4.0));
        assert_eq!(Spread::of(&[]).n, 0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn non_finite_values_survive_a_round_trip_as_nan() {
        let s = Spread::of(&[1.0, f64::INFINITY, 3.0]);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("null"), "{json}");
        let back: Spread = serde_json::from_str(&json).unwrap();
        assert_eq!((back.median, back.n), (2.0, 2));
        assert!(back.values[1].is_nan());
    }
}
