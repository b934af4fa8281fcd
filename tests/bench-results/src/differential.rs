//! What the differential run (`cargo xtask differential`, a stage of `cargo xtask
//! bench`) writes: random Services, EndpointSlices and policies programmed through
//! the agent, every frontend probed through the real socket hooks and the TC ingress
//! program, every choice judged against what `socklb plan` allows.

use serde::{Deserialize, Serialize};

use crate::format::{fmt, group};

/// One differential run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DifferentialResults {
    /// The seed of every random choice: the same seed (and slots) makes the same
    /// objects, rounds and probes.
    pub seed: u64,
    /// The cargo profile of the agent (`release`, `debug`).
    pub profile: String,
    /// Service slots (Services present at once, at most).
    pub slots: usize,
    /// Rounds: changes written, the agent's sync awaited, every frontend probed.
    pub rounds: usize,
    /// Cases: Service versions written (a new random Service with its slices, or new
    /// slices of one), each probed in its round.
    pub cases: usize,
    /// Plan frontends probed, over all rounds.
    pub frontends: usize,
    /// Connections and datagrams through the socket hooks (fresh sockets).
    pub socket_probes: u64,
    /// Flows through the TC ingress program (BPF_PROG_TEST_RUN; each flow's packet
    /// runs twice: the second must follow the first).
    pub tc_probes: u64,
    /// Of the forwarding frontends without affinity: allowed backends, and those the
    /// probes reached (a figure: choices are random).
    pub backends_allowed: u64,
    pub backends_reached: u64,
    /// Rounds whose maps did not match the plan within the wait (then probed anyway).
    pub sync_timeouts: usize,
    /// Every divergence found.
    pub divergences_total: usize,
    /// The first divergences in full: the probe, what it got and wanted, the plan
    /// entry, the Service's objects, the seed to repeat.
    pub divergences: Vec<String>,
    /// Probes of the node's own connections to a NodePort, LoadBalancer or external
    /// IP where the plan's `from_node` set differs from kube-proxy's (the cluster
    /// endpoints whatever the policies), counted with the first examples; target 0.
    #[serde(default)]
    pub kube_proxy_differences: usize,
    #[serde(default)]
    pub kube_proxy_examples: Vec<String>,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
}

impl DifferentialResults {
    /// No divergence and every round synced.
    pub fn clean(&self) -> bool {
        self.divergences_total == 0 && self.sync_timeouts == 0
    }

    /// The figures, one line each (a terminal's and the summary's text).
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![
            format!(
                "seed {}, {} agent: {} cases in {} rounds of up to {} services; {} frontends probed",
                self.seed,
                self.profile,
                group(self.cases as i64),
                self.rounds,
                self.slots,
                group(self.frontends as i64),
            ),
            format!(
                "probes: {} through the socket hooks, {} flows through TC ingress (each packet twice)",
                group(self.socket_probes as i64),
                group(self.tc_probes as i64)
            ),
            format!(
                "backends reached by the probes of forwarding frontends: {} of {} allowed ({} %)",
                group(self.backends_reached as i64),
                group(self.backends_allowed as i64),
                fmt(if self.backends_allowed == 0 {
                    f64::NAN
                } else {
                    100.0 * self.backends_reached as f64 / self.backends_allowed as f64
                })
            ),
            format!(
                "divergences from the plan: {}; rounds whose maps never matched the plan: {}",
                self.divergences_total, self.sync_timeouts
            ),
            format!(
                "the node's own connections to NodePorts, LoadBalancer and external IPs where the data path allows other backends than kube-proxy (internalTrafficPolicy Local): {}",
                self.kube_proxy_differences
            ),
            format!("wall time {} s", fmt(self.elapsed_s)),
        ];
        out.extend(
            self.kube_proxy_examples
                .iter()
                .map(|d| format!("differs from kube-proxy: {d}")),
        );
        out.extend(self.divergences.iter().map(|d| format!("divergence: {d}")));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_means_no_divergence_and_every_round_synced() {
        let mut r = DifferentialResults {
            seed: 3,
            cases: 10,
            ..Default::default()
        };
        assert!(r.clean());
        assert!(r.lines()[0].starts_with("seed 3"));
        r.sync_timeouts = 1;
        assert!(!r.clean());
        r.sync_timeouts = 0;
        r.divergences_total = 1;
        r.divergences.push("round 1: x".into());
        assert!(!r.clean());
        assert!(r.lines().iter().any(|l| l == "divergence: round 1: x"));
        let back: DifferentialResults =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
