//! What the chaos run (`cargo xtask chaos`, a stage of `cargo xtask bench`) writes: the
//! agent killed with SIGKILL at random points of its syncs while clients use services
//! whose backends stay ready, and what the next agent found and repaired.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::format::{fmt, group};
use crate::spread::Spread;

/// One chaos run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChaosResults {
    /// The seed of every random choice (the same seed makes the same changes and kill
    /// delays; where a kill lands still depends on the machine's timing).
    pub seed: u64,
    /// `socket-hooks` (cluster IPs, clients on the node in its cgroup) or `node-port`
    /// (the TC programs on the node's device, clients outside the node).
    pub datapath: String,
    /// The cargo profile of the agent (`release`, `debug`).
    pub profile: String,
    pub scale: ChaosScale,
    /// Cycles run: changes written, a SIGKILL, a restart, the checks.
    pub cycles: usize,
    /// SIGKILLs sent, by where they landed.
    pub kills: ChaosKills,
    /// The clients of the services whose backends stayed ready, over the whole run.
    pub tcp: ChaosClient,
    pub udp: ChaosClient,
    /// After a restart: the maps did not hold what `socklb plan` wants (extra, missing
    /// or different frontends, map entries no frontend reaches), one line each.
    pub divergences: Vec<String>,
    /// Pins the pin directory should not hold (or lacks), programs attached to the
    /// cgroup more or fewer times than once per hook, one line each.
    pub leaks: Vec<String>,
    /// What `socklb uninstall` left after the last cycle (pins, attached programs).
    pub left_after_uninstall: Vec<String>,
    /// From the restart (process start) to the agent's "ready" (its first sync done,
    /// after adopting and repairing what the killed agent left), milliseconds.
    pub repair_ms: Spread,
    /// The part of `repair_ms` after the agent attached its programs: adopting the
    /// maps, removing what no reader reaches, the first full sync; milliseconds.
    pub repair_sync_ms: Spread,
    /// Calibration: a bulk file written under a running agent until its maps are
    /// written, milliseconds (from the file's rename to the agent's last "data path
    /// updated" line for it).
    pub bulk_apply_ms: Spread,
    /// Calibration: the syncs of that change (from the manifest source's "manifests
    /// changed" line to that last line), milliseconds.
    pub bulk_sync_ms: Spread,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
}

/// What the run used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChaosScale {
    /// Services the clients use (their backends stay ready; one endpoint each comes and
    /// goes, its pod serving throughout).
    pub stable_services: usize,
    /// Files of bulk services added, rewritten (new endpoints) and removed.
    pub bulk_files: usize,
    pub bulk_services_per_file: usize,
    pub endpoints_per_bulk_service: usize,
    /// The most frontends `socklb plan` wanted at one time.
    pub max_frontends: usize,
}

/// Where the SIGKILLs landed, judged from the maps the killed agent left (read back
/// before the next agent starts): as they were before the change, as the plan after it
/// wants, or neither (mid-sync).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChaosKills {
    pub total: usize,
    /// The maps held neither the state before the change nor the one after it.
    pub mid_sync: usize,
    /// The maps were as before the change (killed before its sync wrote anything).
    pub before_sync: usize,
    /// The maps were as the plan after the change wants (killed after its sync).
    pub after_sync: usize,
    /// Of all kills, those of an agent during its start (install, adoption, first
    /// sync), with changes made while no agent ran.
    pub during_start: usize,
}

/// One client's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChaosClient {
    /// The service address.
    pub to: String,
    /// TCP connections tried, UDP datagrams sent.
    pub attempts: u64,
    /// TCP connections that got an answer, UDP replies.
    pub ok: u64,
    /// Failures by name (errno names, `TIMEOUT`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Answers per backend id.
    pub backends: BTreeMap<String, u64>,
}

impl ChaosClient {
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl ChaosResults {
    /// Whether the run met every target: no failed connect or datagram, no
    /// divergence, no leak, nothing left after uninstall.
    pub fn clean(&self) -> bool {
        self.tcp.failed() == 0
            && self.udp.failed() == 0
            && self.tcp.ok == self.tcp.attempts
            && self.udp.ok == self.udp.attempts
            && self.divergences.is_empty()
            && self.leaks.is_empty()
            && self.left_after_uninstall.is_empty()
    }
}

impl ChaosResults {
    /// The figures, one line each (a terminal's and the summary's text).
    pub fn lines(&self) -> Vec<String> {
        let k = &self.kills;
        let client = |what: &str, c: &ChaosClient, unit: &str| {
            format!(
                "{what} {}: {} {unit}, {} failed{}",
                c.to,
                group(c.attempts as i64),
                group(c.failed() as i64),
                if c.errors.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", c.errors)
                }
            )
        };
        let ms = |s: &Spread| {
            format!(
                "median {} ms (min {}, max {}, n = {})",
                fmt(s.median),
                fmt(s.min),
                fmt(s.max),
                s.n
            )
        };
        let mut out = vec![
            format!(
                "{}: seed {}, {} cycles, {} agent ({} bulk files of {} services x {} endpoints next to {} stable services; up to {} frontends)",
                self.datapath,
                self.seed,
                self.cycles,
                self.profile,
                self.scale.bulk_files,
                group(self.scale.bulk_services_per_file as i64),
                self.scale.endpoints_per_bulk_service,
                self.scale.stable_services,
                group(self.scale.max_frontends as i64),
            ),
            format!(
                "kills: {} ({} mid-sync, {} before the sync wrote anything, {} after it; {} of them during an agent's start)",
                k.total, k.mid_sync, k.before_sync, k.after_sync, k.during_start
            ),
            client("TCP", &self.tcp, "connections"),
            client("UDP", &self.udp, "datagrams"),
            format!(
                "divergences from the plan after a restart: {}",
                self.divergences.len()
            ),
            format!("leaked pins or links: {}", self.leaks.len()),
            format!(
                "left after uninstall: {}",
                if self.left_after_uninstall.is_empty() {
                    "nothing".to_string()
                } else {
                    self.left_after_uninstall.join("; ")
                }
            ),
            format!("restart to ready (repair): {}", ms(&self.repair_ms)),
            format!(
                "  of which adoption, cleanup and the first sync: {}",
                ms(&self.repair_sync_ms)
            ),
            format!(
                "a bulk file under a running agent: applied in {}, its sync {}",
                ms(&self.bulk_apply_ms),
                ms(&self.bulk_sync_ms)
            ),
            format!("wall time {} s", fmt(self.elapsed_s)),
        ];
        out.extend(self.divergences.iter().map(|d| format!("divergence: {d}")));
        out.extend(self.leaks.iter().map(|d| format!("leak: {d}")));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_means_no_failure_divergence_or_leak() {
        let mut r = ChaosResults {
            datapath: "socket-hooks".into(),
            cycles: 2,
            ..Default::default()
        };
        r.tcp.attempts = 10;
        r.tcp.ok = 10;
        assert!(r.clean());
        assert!(r.lines()[0].starts_with("socket-hooks: seed 0, 2 cycles"));
        r.tcp.ok = 9;
        assert!(!r.clean(), "a connection without an answer");
        r.tcp.ok = 10;
        r.leaks
            .push("cycle 1: pins a clean start does not have".into());
        assert!(!r.clean());
        assert!(r.lines().iter().any(|l| l.starts_with("leak: cycle 1")));
        let back: ChaosResults = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
