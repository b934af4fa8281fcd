//! What `socklb-bench run` writes and `cargo xtask bench` completes, saves in
//! `bench/results/<name>.json` and renders.
//!
//! Fields that results files written before them lack are `Option`s or `#[serde(default)]`
//! with the meaning of their absence said on each; every other field is required, so a
//! file that does not match fails to load with the field's name instead of rendering
//! zeros.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spread::{Spread, f64_or_nan};

/// Bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

/// One benchmark run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub schema: u32,
    pub meta: Meta,
    /// ClusterIP data path: one service while N exist, client on the node.
    pub datapath: Vec<DatapathRow>,
    /// NodePort from a client outside the node (modes direct, socklb, iptables).
    /// Empty: not measured (runs before the NodePort measurement existed have none).
    #[serde(default)]
    pub nodeport: Vec<DatapathRow>,
    pub control_plane: ControlPlane,
    pub memory: Vec<MemoryRow>,
    /// Stale-socket termination (connected UDP sockets of a departed backend in many
    /// network namespaces). Empty: not measured (runs before it existed have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_sockets: Vec<crate::StaleSocketsRow>,
    /// The chaos stage, one run per data path (`cargo xtask bench` adds it). Empty:
    /// not run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chaos: Vec<crate::ChaosResults>,
    /// The differential stage (`cargo xtask bench` adds it). None: not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differential: Option<crate::DifferentialResults>,
    /// Things the reader must know (skipped parts, capacity limits, sanity failures).
    pub notes: Vec<String>,
}

/// The machine, the tools and what the run was asked.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    pub started_unix: u64,
    pub finished_unix: u64,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    /// The iptables of the data path and of the first control-plane figures.
    pub iptables_backend: IptablesBackend,
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
    /// The cargo profile socklb-bench was built with (`release`, `debug`).
    pub profile: String,
}

/// What one load operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Connect, one request and answer, close.
    TcpShort,
    /// Request and answer on a connection kept open.
    TcpLong,
    /// DNS-like: one query per new UDP socket.
    Udp,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::TcpShort, Kind::TcpLong, Kind::Udp];

    /// The name in the results and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::TcpShort => "tcp-short",
            Kind::TcpLong => "tcp-long",
            Kind::Udp => "udp",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the client reaches the measured service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Straight to a pod: no load balancer (every ratio is taken against it).
    Direct,
    /// Through socklb: its socket hooks (ClusterIP) or its TC program (NodePort).
    Socklb,
    /// Through kube-proxy's iptables layout, the measured service last in it.
    Iptables,
    /// Through the same iptables layout, the measured service first in it (ClusterIP).
    IptablesFirst,
    /// Through kube-proxy's nftables layout (ClusterIP).
    Nft,
}

impl Mode {
    /// The ClusterIP data path's modes, in the order of its tables.
    pub const CLUSTER_IP: [Mode; 5] = [
        Mode::Direct,
        Mode::Socklb,
        Mode::Iptables,
        Mode::IptablesFirst,
        Mode::Nft,
    ];
    /// The NodePort data path's modes, in the order of its tables.
    pub const NODE_PORT: [Mode; 3] = [Mode::Direct, Mode::Socklb, Mode::Iptables];

    /// The name in the results and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Socklb => "socklb",
            Mode::Iptables => "iptables",
            Mode::IptablesFirst => "iptables-first",
            Mode::Nft => "nft",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The iptables binaries kube-proxy's rules are loaded with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum IptablesBackend {
    /// iptables-legacy-restore (x_tables).
    #[default]
    Legacy,
    /// iptables-nft-restore (iptables on nf_tables).
    Nft,
}

impl IptablesBackend {
    pub fn name(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "legacy",
            IptablesBackend::Nft => "nft",
        }
    }
    /// `iptables-legacy`, `iptables-nft`.
    pub fn iptables(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "iptables-legacy",
            IptablesBackend::Nft => "iptables-nft",
        }
    }
    pub fn restore(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "iptables-legacy-restore",
            IptablesBackend::Nft => "iptables-nft-restore",
        }
    }
    pub fn save(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "iptables-legacy-save",
            IptablesBackend::Nft => "iptables-nft-save",
        }
    }
}

// ----------------------------------------------------------------------------- data path

/// One (N, kind, mode): the runs and their medians, each with the ratio to the direct
/// run of the same repetition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatapathRow {
    pub services: usize,
    pub kind: Kind,
    pub mode: Mode,
    /// Where the client sent (the service's position in KUBE-SERVICES for iptables).
    pub target: String,
    pub ops_per_s: Spread,
    pub p50_us: Spread,
    pub p99_us: Spread,
    /// Per repetition: this mode's figure divided by direct's in the same repetition.
    pub ratio_ops_per_s: Spread,
    pub ratio_p50: Spread,
    pub ratio_p99: Spread,
    /// Distinct backends that answered over all runs.
    pub backends_seen: usize,
    /// Failed operations over all runs.
    pub errors: u64,
    pub runs: Vec<LoadReport>,
}

/// Latency percentiles of one load run, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// One load run, as `socklb-bench load` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub kind: Kind,
    pub threads: usize,
    /// The measured window (warm-up excluded), seconds.
    pub duration_s: f64,
    /// Operations that succeeded inside the window.
    pub ops: u64,
    pub ops_per_s: f64,
    /// Failed operations by error name (whole run, warm-up included).
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    pub latency_us: Latency,
    /// Answers per backend address (whole run).
    pub backends: BTreeMap<String, u64>,
    /// UDP answers whose source was not the address the query went to.
    pub wrong_source: u64,
}

impl LoadReport {
    /// Failed operations, all errors together.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

// ----------------------------------------------------------------------------- control plane

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ControlPlane {
    pub iptables: Vec<IptablesRow>,
    pub nft: Vec<NftRow>,
    /// The real agent on a manifest directory: one slice file changed at a time.
    pub agent: Vec<AgentChangeRow>,
    /// lb-userspace's criterion benchmark `control_plane`, added by `cargo xtask bench`.
    /// None: not run (what `socklb-bench run` writes on its own, and runs that measured
    /// only kube-proxy's side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socklb: Option<SocklbControlPlane>,
}

/// kube-proxy's iptables syncs at N services, with one backend binary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IptablesRow {
    pub services: usize,
    pub backend: IptablesBackend,
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
#[derive(Clone, Debug, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentChangeRow {
    pub services: usize,
    pub changes: usize,
    /// From the changed objects' arrival in the agent to the maps written (the agent's
    /// `latency_us`), microseconds.
    pub latency_us: Spread,
    /// p99 of `latency_us` (NaN, `null` in JSON, without changes).
    #[serde(deserialize_with = "f64_or_nan")]
    pub p99_us: f64,
    /// From the file rename to the agent's log line for it (includes the polling
    /// interval and the re-read of the changed file), milliseconds; +-5 ms.
    pub wall_ms: Spread,
    pub map_ops: Spread,
    pub frontends_changed: Spread,
}

/// What lb-userspace's criterion benchmark `control_plane` writes (`SOCKLB_BENCH_JSON`):
/// objects in memory -> maps, in-process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SocklbControlPlane {
    pub endpoints_per_service: usize,
    /// Cold syncs per row.
    pub repeats: usize,
    /// Single-EndpointSlice changes timed per row.
    pub changes: usize,
    /// Whether real BPF maps could be created (rows with `maps: kernel`).
    pub kernel_maps: bool,
    /// Whether criterion's own groups ran too (they are not in this file).
    pub criterion: bool,
    pub rows: Vec<SocklbControlRow>,
}

/// The maps a control-plane row wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Maps {
    /// Real BPF maps pinned in a directory of the benchmark's own: the agent's full cost.
    Kernel,
    /// The in-memory twin of the maps: the agent's CPU cost alone.
    Memory,
}

impl Maps {
    pub fn name(self) -> &'static str {
        match self {
            Maps::Kernel => "kernel",
            Maps::Memory => "memory",
        }
    }
}

impl fmt::Display for Maps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// N services × `endpoints_per_service` on one kind of maps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SocklbControlRow {
    pub services: usize,
    pub endpoints: usize,
    pub maps: Maps,
    /// A snapshot of everything applied to an empty state and written into empty maps.
    pub cold_ms: Spread,
    pub cold_stages_ms: ColdStages,
    /// Map operations of one cold sync.
    pub cold_map_ops: u64,
    /// Single-EndpointSlice changes (one endpoint replaced each).
    pub change: ChangeLatency,
    /// Map operations against the size of one change.
    pub proportional: Vec<Proportional>,
    /// One slice changed, delivered as a snapshot of all N services (the manifest
    /// directory's path before it sent per-object events).
    pub snapshot_change: SnapshotChange,
}

/// A cold sync's stages, milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ColdStages {
    /// Objects into `ClusterState`.
    pub apply: Spread,
    /// Every frontend computed.
    pub recompute: Spread,
    /// Map writes.
    pub sync: Spread,
}

/// Percentiles over many single changes, microseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChangeLatency {
    pub count: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    pub map_ops_mean: f64,
    pub map_ops_min: u64,
    pub map_ops_max: u64,
}

/// Map operations when `endpoints_changed` endpoints of one slice change at once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proportional {
    pub endpoints_changed: usize,
    pub map_ops_mean: f64,
    pub map_ops_max: u64,
}

/// One slice changed inside a whole snapshot, milliseconds by stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotChange {
    pub count: usize,
    pub total_ms: Spread,
    pub apply_ms: Spread,
    pub recompute_ms: Spread,
    pub sync_ms: Spread,
    pub map_ops_mean: f64,
}

// ----------------------------------------------------------------------------- memory

/// The agent started on N services.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemoryRow {
    pub services: usize,
    pub endpoints: usize,
    /// Agent start to its "ready" log line (parse the directory, load and attach the
    /// programs, program every service), milliseconds.
    pub ready_ms: Spread,
    /// `VmRSS` after ready, MiB.
    pub rss_mib: Spread,
    /// `VmHWM` (peak RSS, the initial parse and sync), MiB.
    pub hwm_mib: Spread,
    /// bytes_memlock of the pinned maps, MiB.
    pub bpf_maps_mib: Spread,
    /// memlock of the distinct maps the agent holds open (fdinfo), MiB.
    pub agent_fd_maps_mib: Spread,
    /// The pinned maps of the last start.
    pub maps: Vec<MapMemory>,
}

/// One BPF map, as bpftool reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MapMemory {
    pub name: String,
    #[serde(rename = "type")]
    pub map_type: String,
    pub max_entries: u64,
    pub bytes_memlock: u64,
}

// ----------------------------------------------------------------------------- queries

impl Results {
    /// The ClusterIP row of (N, kind, mode).
    pub fn datapath_row(&self, services: usize, kind: Kind, mode: Mode) -> Option<&DatapathRow> {
        self.datapath
            .iter()
            .find(|d| d.services == services && d.kind == kind && d.mode == mode)
    }

    /// The criterion benchmark's rows (empty when it did not run).
    pub fn socklb_control_rows(&self) -> &[SocklbControlRow] {
        self.control_plane
            .socklb
            .as_ref()
            .map_or(&[], |s| s.rows.as_slice())
    }
}

/// The distinct service counts of `rows`, ascending.
pub fn service_counts<'a>(rows: impl IntoIterator<Item = &'a DatapathRow>) -> Vec<usize> {
    let mut ns: Vec<usize> = rows.into_iter().map(|d| d.services).collect();
    ns.sort_unstable();
    ns.dedup();
    ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialized_ones() {
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
        for m in Mode::CLUSTER_IP {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
        for b in [IptablesBackend::Legacy, IptablesBackend::Nft] {
            assert_eq!(serde_json::to_value(b).unwrap(), b.name());
        }
        for m in [Maps::Kernel, Maps::Memory] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
    }

    #[test]
    fn a_file_without_nodeport_or_criterion_rows_loads() {
        let mut r = Results {
            schema: SCHEMA,
            ..Default::default()
        };
        r.notes.push("x".into());
        let mut v = serde_json::to_value(&r).unwrap();
        v.as_object_mut().unwrap().remove("nodeport");
        assert!(v["control_plane"].get("socklb").is_none());
        let back: Results = serde_json::from_value(v).unwrap();
        assert!(back.nodeport.is_empty() && back.control_plane.socklb.is_none());
        assert!(back.socklb_control_rows().is_empty());
    }
}
