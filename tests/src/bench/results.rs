//! What `socklb-bench run` writes (JSON). `cargo xtask bench` adds the criterion
//! control-plane figures under `control_plane.socklb` and renders the summary.

use serde::{Deserialize, Serialize};

use super::load::LoadReport;
use super::stats::Spread;
use super::util::MapMemory;

/// Bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub schema: u32,
    pub meta: Meta,
    pub datapath: Vec<DatapathRow>,
    /// Issue 5, item 3: NodePort from outside the node (modes direct, socklb, iptables).
    #[serde(default)]
    pub nodeport: Vec<DatapathRow>,
    pub control_plane: ControlPlane,
    pub memory: Vec<MemoryRow>,
    /// Things the reader must know (skipped parts, capacity limits, sanity failures).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    pub started_unix: u64,
    pub finished_unix: u64,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub iptables_backend: String,
    pub iptables_version: String,
    pub nft_version: String,
    pub bpftool_version: String,
    pub services: Vec<usize>,
    pub endpoints_per_service: usize,
    pub real_pods: usize,
    pub reps: usize,
    pub control_reps: usize,
    pub changes: usize,
    pub duration_ms: u64,
    pub warmup_ms: u64,
    pub threads: usize,
    pub request_bytes: usize,
    pub quick: bool,
    pub profile: String,
}

/// One (N, kind, mode): the runs and their medians, each with the ratio to the direct
/// run of the same repetition.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DatapathRow {
    pub services: usize,
    /// `tcp-short`, `tcp-long`, `udp`.
    pub kind: String,
    /// `direct`, `socklb`, `iptables`, `iptables-first`, `nft`.
    pub mode: String,
    /// Where the client sent (the service's position in KUBE-SERVICES for iptables).
    pub target: String,
    pub ops_per_s: Spread,
    pub p50_us: Spread,
    pub p99_us: Spread,
    /// Per repetition: this mode's figure divided by direct's in the same repetition.
    pub ratio_ops_per_s: Spread,
    pub ratio_p50: Spread,
    pub ratio_p99: Spread,
    /// Distinct backends that answered over all runs, and failed operations.
    pub backends_seen: usize,
    pub errors: u64,
    pub runs: Vec<LoadReport>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ControlPlane {
    pub iptables: Vec<IptablesRow>,
    pub nft: Vec<NftRow>,
    /// The real agent on a manifest directory: one slice file changed at a time.
    pub agent: Vec<AgentChangeRow>,
    /// Filled in by `cargo xtask bench` from lb-userspace's criterion benchmark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socklb: Option<serde_json::Value>,
}

/// kube-proxy's iptables syncs at N services, with one backend binary.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IptablesRow {
    pub services: usize,
    /// `legacy` (x_tables) or `nft` (iptables-nft).
    pub backend: String,
    pub rules: usize,
    pub restore_bytes: usize,
    /// `iptables-restore --noflush --counters` of the full ruleset into empty tables.
    pub cold_ms: Spread,
    /// A full sync (whole ruleset rewritten) carrying one endpoint change.
    pub full_sync_ms: Spread,
    /// A partial sync (changed chains only, KUBE-SERVICES in full) of one change.
    pub partial_sync_ms: Spread,
    pub partial_rules: usize,
}

/// kube-proxy's nftables syncs at N services.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NftRow {
    pub services: usize,
    pub rules: usize,
    pub script_bytes: usize,
    /// `nft -f` of the full sync into an empty namespace.
    pub cold_ms: Spread,
    /// `nft -f` of one transaction changing one endpoint.
    pub change_ms: Spread,
}

/// One slice file changed under a running agent, as its log reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentChangeRow {
    pub services: usize,
    pub changes: usize,
    /// From the directory snapshot's arrival to the maps written (the agent's
    /// `latency_us`), microseconds.
    pub latency_us: Spread,
    pub p99_us: f64,
    /// From the file rename to the agent's log line for it (includes the polling
    /// interval and the re-read of the whole directory), milliseconds; +-5 ms.
    pub wall_ms: Spread,
    pub map_ops: Spread,
    pub frontends_changed: Spread,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemoryRow {
    pub services: usize,
    pub endpoints: usize,
    /// Agent start to its "ready" log line (parse the directory, load and attach the
    /// programs, program every service), milliseconds.
    pub ready_ms: Spread,
    pub rss_mib: Spread,
    pub hwm_mib: Spread,
    /// bytes_memlock of the pinned maps, MiB.
    pub bpf_maps_mib: Spread,
    /// memlock of the distinct maps the agent holds open (fdinfo), MiB.
    pub agent_fd_maps_mib: Spread,
    pub maps: Vec<MapMemory>,
}
