//! Percentiles of the load generator's latency samples. (Medians over repetitions:
//! `socklb_bench_results::Spread`.)

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
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile_u32(&v, 50.0), 50);
        assert_eq!(percentile_u32(&v, 99.0), 99);
        assert_eq!(percentile_u32(&v, 100.0), 100);
        assert_eq!(percentile_u32(&[7], 99.0), 7);
    }
}
