//! Medians with their spread, and percentiles.

use serde::{Deserialize, Serialize};

/// A figure over repeated runs: median, quartiles, min, max, and the runs themselves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
    pub values: Vec<f64>,
}

impl Spread {
    /// Spread of `values` (NaNs dropped). Empty input gives n = 0 and zeros.
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

/// Linear-interpolated quantile of sorted values.
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

/// Nearest-rank percentile of sorted integers (latency samples).
pub fn percentile_u32(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
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
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile_u32(&v, 50.0), 50);
        assert_eq!(percentile_u32(&v, 99.0), 99);
        assert_eq!(percentile_u32(&v, 100.0), 100);
        assert_eq!(percentile_u32(&[7], 99.0), 7);
    }
}
