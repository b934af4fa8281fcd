//! Stale-socket termination: a backend leaves a Service while connected UDP sockets
//! in many network namespaces are translated to it; how long until each gets its
//! error, and that no decoy does.

use serde::{Deserialize, Serialize};

use crate::spread::{Spread, f64_or_nan};

/// One configuration (namespaces × sockets), over several rounds (one backend
/// replaced per round).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StaleSocketsRow {
    /// Client network namespaces, each with one process in the agent's cgroup.
    pub namespaces: usize,
    /// Connected UDP sockets per namespace translated to the departing backend.
    pub sockets_per_namespace: usize,
    /// Backend replacements measured.
    pub rounds: usize,
    /// The agent's `--poll-interval-ms` (the manifest directory is polled).
    pub poll_interval_ms: u64,
    /// From the slice file written (renamed into place) to each socket's blocked
    /// recv() returning its error, milliseconds, over every socket of every round.
    /// Includes the directory polling.
    pub error_ms: Percentiles,
    /// The agent's own figure per round (`since_change_us` of its log line): from the
    /// change reaching it to the pass done in every namespace, milliseconds.
    pub agent_ms: Spread,
    /// The pass alone per round (`pass_us`): kill map written, iterators run in every
    /// namespace, map emptied, milliseconds.
    pub pass_ms: Spread,
    /// Network namespaces the agent's pass ran in (its own included), last round.
    pub netns_visited: usize,
    /// Sockets expected to get an error, over all rounds.
    pub expected: u64,
    /// Of those, how many got ECONNABORTED.
    pub destroyed: u64,
    /// Expected sockets without any error within the timeout.
    pub missed: u64,
    /// Expected sockets that got another error than ECONNABORTED.
    pub other_errors: u64,
    /// Decoy sockets (an unconnected one sending to the Service, one connected to the
    /// backend directly, one of another Service keeping the backend, per namespace
    /// and round).
    pub decoys: u64,
    /// Decoys that got any error (must be 0).
    pub decoys_destroyed: u64,
}

/// Percentiles of many single measurements.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub p50: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub p90: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub p99: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub max: f64,
}

impl Percentiles {
    /// Of `values` (NaN figures when empty).
    pub fn of(values: &[f64]) -> Percentiles {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        Percentiles {
            count: v.len(),
            p50: crate::quantile(&v, 0.5),
            p90: crate::quantile(&v, 0.9),
            p99: crate::quantile(&v, 0.99),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!((p.count, p.max), (100, 100.0));
        assert!((p.p50 - 50.5).abs() < 1e-9 && (p.p99 - 99.01).abs() < 1e-9);
        assert!(Percentiles::of(&[]).p99.is_nan());
    }
}
