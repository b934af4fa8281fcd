//! A multi-node topology for traffic that enters a node from outside: NodePort,
//! LoadBalancer ingress IPs and external IPs.
//!
//! ```text
//!  client netns                 lan netns (a bridge, no address)
//!  eth0 192.0.2.100/24 ─ veth ─ c0 ─┐
//!       192.0.2.101/24              ├─ bridge "lan"
//!  198.51.100.0/24 via 192.0.2.11   │
//!  (no route to 10.244.0.0/16)      │
//!                                   │
//!  node-1 netns (ip_forward=1)      │            node-2 netns (ip_forward=1)
//!  lan0 192.0.2.11/24 ─ veth ─ n1 ──┤            lan0 192.0.2.12/24 ─ veth ─ n2 ─┘
//!  br0  10.244.1.1/24                            br0  10.244.2.1/24
//!  10.244.2.0/24 via 192.0.2.12                  10.244.1.0/24 via 192.0.2.11
//!   └─ vhK ─ veth ─ pod netns eth0 10.244.1.x/24  └─ vhK ─ veth ─ pod netns eth0 10.244.2.x/24
//!                   192.0.2.0/24, 10.244.0.0/16 via 10.244.1.1   (same via 10.244.2.1)
//! ```
//!
//! - No namespace has a default route (checked at build time): a packet that the data
//!   path failed to translate has nowhere to go. The client reaches services only
//!   through node addresses (NodePort) and 198.51.100.0/24 (LoadBalancer / external
//!   IPs, routed to node-1).
//! - TX checksum offload is off on every veth end (`socklb-probe tx-csum --off`, the
//!   `ethtool -K DEV tx off` ioctl), so every sender computes full checksums in software
//!   and every receiver verifies them: a checksum the data path got wrong is a dropped
//!   packet, not one hidden by offload.
//! - Per node: a [`TestCgroup`] (its socket hooks), a [`PinDir`], and an agent started
//!   inside the node's network namespace (`socklb agent --manifests DIR --node node-N
//!   --cgroup CG --bpffs PINS --devices lan0`). Every agent reads the same manifests
//!   directory: Services and EndpointSlices are cluster-wide.
//! - Pods serve with `socklb-probe serve --id pod-<ip> [--report-peer]`, outside any
//!   cgroup; clients run in the client namespace, in a node namespace (inside its
//!   cgroup, where the hooks apply, or not), or in a pod namespace (inside its node's
//!   cgroup, as a pod's processes are on a real node, or not).
//!
//! Everything is behind Drop guards, in this order: agents, pins, pods' processes,
//! pod namespaces, node namespaces, cgroups, the client and lan namespaces, the
//! manifests directory.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::agent::{Agent, AgentConfig, probe_bin, socklb, try_socklb_bin};
use crate::cgroup::TestCgroup;
use crate::child::{Child, SpawnOpts};
use crate::cluster::pod_id;
use crate::netns::NetNs;
use crate::pins::PinDir;
use crate::report::{TcpProbe, TcpReport, UdpProbe, UdpReport};
use crate::sandbox::{SERVE_READY_TIMEOUT, Sandbox, Topology, assert_no_default_route};
use crate::tempdir::ManifestDir;

/// Each node's interface on the LAN (what the agent gets as `--devices`).
pub const LAN_IF: &str = "lan0";
/// The bridge in the lan namespace.
pub const LAN_BRIDGE: &str = "lan";
/// The client's interface.
pub const CLIENT_IF: &str = "eth0";
/// The LAN's prefix length.
pub const LAN_PREFIX: u8 = 24;
/// The LAN (TEST-NET-1).
pub const LAN_NET: &str = "192.0.2.0/24";
/// The client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// A second address of the client (a source outside loadBalancerSourceRanges).
pub const CLIENT_ALT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
/// LoadBalancer ingress IPs and external IPs (TEST-NET-2): the client routes them to
/// node-1.
pub const EXTERNAL_NET: &str = "198.51.100.0/24";
/// Every pod network (node N has 10.244.N.0/24).
pub const POD_CIDR: &str = "10.244.0.0/16";
/// How long an agent may take to program what a test waits for.
pub const AGENT_WAIT: Duration = Duration::from_secs(15);

/// `node-N`
pub fn node_name(n: u8) -> String {
    format!("node-{n}")
}

/// 192.0.2.(10 + N), node N's address on the LAN.
pub fn node_addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + n)
}

/// 10.244.N.1, node N's address on its pod bridge (the pods' gateway).
pub fn pod_gateway(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, 1)
}

/// `10.244.N.0/24`
pub fn pod_subnet(n: u8) -> String {
    format!("10.244.{n}.0/24")
}

/// The node a pod address belongs to (10.244.N.x -> N).
pub fn node_of_pod(ip: Ipv4Addr) -> Option<u8> {
    let o = ip.octets();
    (o[0] == 10 && o[1] == 244 && (1..=9).contains(&o[2])).then_some(o[2])
}

// ---------------------------------------------------------------------------- helpers

/// Writes `value` to `/proc/sys/<key>` (e.g. `net/ipv4/ip_forward`) from a process that
/// entered `ns` with setns(2): /proc/sys/net belongs to the namespace of the process
/// that opens it.
pub fn write_proc_sys(ns: &NetNs, key: &str, value: &str) -> Result<()> {
    let path = proc_sys_path(key)?;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "printf '%s\\n' \"$1\" > \"$2\"", "sh", value, &path]);
    let out = ns.output(cmd, None, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!(
            "writing {value} to {path} in {} failed: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let now = read_proc_sys(ns, key)?;
    if now != value {
        bail!("{path} in {} is {now:?} after writing {value:?}", ns.name());
    }
    Ok(())
}

/// Reads `/proc/sys/<key>` as seen from inside `ns` (trimmed).
pub fn read_proc_sys(ns: &NetNs, key: &str) -> Result<String> {
    let path = proc_sys_path(key)?;
    let mut cmd = Command::new("cat");
    cmd.arg(&path);
    let out = ns.output(cmd, None, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!(
            "reading {path} in {} failed: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn proc_sys_path(key: &str) -> Result<String> {
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|c| c.is_empty() || c == "..") {
        bail!("bad sysctl key {key:?}");
    }
    Ok(format!("/proc/sys/{key}"))
}

/// Turns TX checksum offload off on interfaces of `ns` (`socklb-probe tx-csum --off`
/// run inside it) and checks it reads back off.
pub fn tx_csum_off(ns: &NetNs, devs: &[&str]) -> Result<()> {
    if devs.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new(probe_bin());
    cmd.arg("tx-csum").arg("--off");
    for d in devs {
        cmd.arg("--dev").arg(d);
    }
    let out = ns.output(cmd, None, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!(
            "socklb-probe tx-csum --off {devs:?} in {} failed: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether TX checksum offload is on, per interface of `ns` (`socklb-probe tx-csum`,
/// the ETHTOOL_GTXCSUM ioctl, run inside it).
pub fn tx_csum_state(ns: &NetNs, devs: &[&str]) -> Result<BTreeMap<String, bool>> {
    #[derive(Deserialize)]
    struct State {
        tx_csum: BTreeMap<String, bool>,
    }
    let mut args = vec!["tx-csum".to_string()];
    for d in devs {
        args.extend(["--dev".to_string(), (*d).to_string()]);
    }
    let s: State = run_probe_json(ns, None, &args, 0)?;
    Ok(s.tx_csum)
}

/// Runs `socklb-probe ARGS` to completion in `ns` (in `cgroup` when given) and parses
/// its one-line JSON report.
pub fn run_probe_json<T: serde::de::DeserializeOwned>(
    ns: &NetNs,
    cgroup: Option<&Path>,
    args: &[String],
    worst_case_ms: u64,
) -> Result<T> {
    let mut cmd = Command::new(probe_bin());
    cmd.args(args);
    let timeout = Duration::from_millis(worst_case_ms.saturating_add(10_000));
    let out = ns.output(cmd, cgroup, timeout)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "socklb-probe {} in {} failed ({}): {}",
            args.join(" "),
            ns.name(),
            out.status,
            stderr.trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "socklb-probe {} printed no report: {:?} (stderr: {})",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            stderr.trim()
        )
    })
}

// ---------------------------------------------------------------------------- probes

/// Backend id -> client IP the backend saw -> count (servers started with
/// `--report-peer`).
pub type SeenFrom = BTreeMap<String, BTreeMap<String, u64>>;

/// A `socklb-probe tcp` run with the multi-node options.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpRun {
    pub probe: TcpProbe,
    /// `--bind IP`: the source address.
    pub bind: Option<Ipv4Addr>,
    /// `--source-port P`: the n-th connection from port P + n.
    pub source_port: Option<u16>,
    /// `--parallel N`
    pub parallel: u64,
    /// `--hold`: every round of `parallel` connections is open at once.
    pub hold: bool,
}

impl TcpRun {
    pub fn new(to: SocketAddr) -> Self {
        Self {
            probe: TcpProbe::new(to),
            bind: None,
            source_port: None,
            parallel: 1,
            hold: false,
        }
    }
    pub fn count(mut self, n: u64) -> Self {
        self.probe = self.probe.count(n);
        self
    }
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.probe = self.probe.timeout_ms(ms);
        self
    }
    pub fn echo(mut self, on: bool) -> Self {
        self.probe = self.probe.echo(on);
        self
    }
    pub fn bind(mut self, ip: Ipv4Addr) -> Self {
        self.bind = Some(ip);
        self
    }
    /// The n-th connection from source port `first + n` (one worker); the report's
    /// `by_source_port` names each connection's backend.
    pub fn source_ports(mut self, first: u16) -> Self {
        self.source_port = Some(first);
        self
    }
    /// `n` workers; with `hold`, `count` must be a multiple of `n` and each round's `n`
    /// connections are all open at the same time.
    pub fn parallel(mut self, n: u64, hold: bool) -> Self {
        self.parallel = n.max(1);
        self.hold = hold;
        self
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = self.probe.args();
        if let Some(ip) = self.bind {
            a.extend(["--bind".into(), ip.to_string()]);
        }
        if let Some(port) = self.source_port {
            a.extend(["--source-port".into(), port.to_string()]);
        }
        if self.parallel > 1 {
            a.extend(["--parallel".into(), self.parallel.to_string()]);
        }
        if self.hold {
            a.push("--hold".into());
        }
        a
    }

    pub fn worst_case_ms(&self) -> u64 {
        let mut p = self.probe.clone();
        if let Some(n) = p.count {
            p.count = Some(n.div_ceil(self.parallel));
        }
        p.worst_case_ms()
    }
}

/// A `socklb-probe udp` run with the multi-node options.
#[derive(Clone, Debug, PartialEq)]
pub struct UdpRun {
    pub probe: UdpProbe,
    /// `--bind IP`
    pub bind: Option<Ipv4Addr>,
}

impl UdpRun {
    pub fn new(to: SocketAddr) -> Self {
        Self {
            probe: UdpProbe::new(to),
            bind: None,
        }
    }
    pub fn sockets(mut self, n: u64) -> Self {
        self.probe = self.probe.sockets(n);
        self
    }
    pub fn count(mut self, n: u64) -> Self {
        self.probe = self.probe.count(n);
        self
    }
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.probe = self.probe.timeout_ms(ms);
        self
    }
    pub fn bind(mut self, ip: Ipv4Addr) -> Self {
        self.bind = Some(ip);
        self
    }
    /// Connected sockets (connect + send/recv): an ICMP unreachable then fails the
    /// receive with ECONNREFUSED at once, where an unconnected socket only times out.
    pub fn connected(mut self, on: bool) -> Self {
        self.probe = self.probe.connected(on);
        self
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = self.probe.args();
        if let Some(ip) = self.bind {
            a.extend(["--bind".into(), ip.to_string()]);
        }
        a
    }

    pub fn worst_case_ms(&self) -> u64 {
        self.probe.worst_case_ms()
    }
}

/// A `socklb-probe transfer` run.
#[derive(Clone, Debug, PartialEq)]
pub struct TransferRun {
    pub to: SocketAddr,
    pub bytes: u64,
    pub seed: u64,
    pub bind: Option<Ipv4Addr>,
    /// connect timeout and longest stall.
    pub timeout_ms: u64,
}

impl TransferRun {
    pub fn new(to: SocketAddr, bytes: u64) -> Self {
        Self {
            to,
            bytes,
            seed: 1,
            bind: None,
            timeout_ms: 5000,
        }
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "transfer".to_string(),
            "--to".into(),
            self.to.to_string(),
            "--bytes".into(),
            self.bytes.to_string(),
            "--seed".into(),
            self.seed.to_string(),
            "--timeout-ms".into(),
            self.timeout_ms.to_string(),
        ];
        if let Some(ip) = self.bind {
            a.extend(["--bind".into(), ip.to_string()]);
        }
        a
    }

    /// Generous: 1 MB/s at the very least, plus stalls.
    pub fn worst_case_ms(&self) -> u64 {
        self.bytes / 1000 + 4 * self.timeout_ms
    }
}

/// `socklb-probe tcp` output plus `seen_from`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct TcpRunReport {
    #[serde(flatten)]
    pub report: TcpReport,
    /// Backend id -> client IP it saw -> count.
    #[serde(default)]
    pub seen_from: SeenFrom,
}

/// `socklb-probe udp` output plus `seen_from`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct UdpRunReport {
    #[serde(flatten)]
    pub report: UdpReport,
    /// Backend id -> client IP it saw -> count.
    #[serde(default)]
    pub seen_from: SeenFrom,
}

impl std::ops::Deref for TcpRunReport {
    type Target = TcpReport;
    fn deref(&self) -> &TcpReport {
        &self.report
    }
}

impl std::ops::Deref for UdpRunReport {
    type Target = UdpReport;
    fn deref(&self) -> &UdpReport {
        &self.report
    }
}

/// Client IP -> count over every backend.
pub fn client_ips(seen: &SeenFrom) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for ips in seen.values() {
        for (ip, n) in ips {
            *out.entry(ip.clone()).or_default() += n;
        }
    }
    out
}

impl TcpRunReport {
    /// Client IP -> count over every backend.
    pub fn client_ips(&self) -> BTreeMap<String, u64> {
        client_ips(&self.seen_from)
    }
}

impl UdpRunReport {
    /// Client IP -> count over every backend.
    pub fn client_ips(&self) -> BTreeMap<String, u64> {
        client_ips(&self.seen_from)
    }
}

/// `socklb-probe transfer` output.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TransferReport {
    pub to: String,
    /// Every byte came back, in order.
    pub ok: bool,
    pub id: Option<String>,
    /// The client address the backend saw (ip:port).
    pub seen_as: Option<String>,
    pub peer: Option<String>,
    pub seed: u64,
    pub bytes: u64,
    pub sent: u64,
    pub received: u64,
    pub mismatch_offset: Option<u64>,
    pub sha256: String,
    pub error: Option<String>,
    pub elapsed_ms: f64,
    pub mbit_per_s: f64,
}

// ---------------------------------------------------------------------------- plan

/// `socklb plan -o json`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Plan {
    pub node: String,
    pub frontends: Vec<PlanFrontend>,
}

/// One frontend of [`Plan`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PlanFrontend {
    pub service: String,
    #[serde(default)]
    pub port: String,
    pub protocol: String,
    /// ClusterIP, NodePort, LoadBalancer, ExternalIP
    #[serde(rename = "type")]
    pub kind: String,
    /// `ip:port`, `*:nodePort` for NodePort.
    pub address: String,
    /// forward, reject, drop
    pub action: String,
    #[serde(default)]
    pub backends: Vec<String>,
    #[serde(default)]
    pub affinity_timeout_s: u64,
    /// An external frontend's connections from the node itself and its pods, where
    /// they differ from the frontend's own (`from_node`: the cluster endpoints).
    #[serde(default)]
    pub from_node: Option<PlanFromNode>,
}

/// [`PlanFrontend::from_node`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PlanFromNode {
    /// forward or reject
    pub action: String,
    #[serde(default)]
    pub backends: Vec<String>,
}

impl Plan {
    /// The frontend of this type, address (`*:30080`, `198.51.100.7:80`) and protocol.
    pub fn frontend(&self, kind: &str, address: &str, protocol: &str) -> Option<&PlanFrontend> {
        self.frontends
            .iter()
            .find(|f| f.kind == kind && f.address == address && f.protocol == protocol)
    }

    /// The frontends from outside the node (NodePort, LoadBalancer, ExternalIP).
    pub fn external(&self) -> impl Iterator<Item = &PlanFrontend> {
        self.frontends.iter().filter(|f| f.kind != "ClusterIP")
    }
}

/// `socklb status -o json`: what the pinned maps hold.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Attached hooks.
    pub hooks: Vec<String>,
    pub frontends: Vec<StatusFrontend>,
    /// The node's addresses (where NodePorts answer).
    pub node_addresses: Vec<String>,
    /// Cluster IPs whose other ports are refused (by the socket hooks).
    pub service_addresses: Vec<String>,
    /// LoadBalancer and external IPs whose other ports are refused from outside.
    pub external_service_addresses: Vec<String>,
    /// Backends reachable from a frontend.
    pub backends: u64,
    /// Service map entries reachable by a reader (frontends, their slots, wildcards).
    pub service_map_entries: u64,
    /// Live conntrack entries (two per external flow).
    pub conntrack_entries: u64,
    pub counters: BTreeMap<String, u64>,
}

/// One programmed frontend of [`Status`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StatusFrontend {
    /// `ip:port`, `*:nodePort` for NodePort.
    pub address: String,
    /// "internal" (socket hooks) or "external" (TC).
    pub scope: String,
    pub protocol: String,
    pub action: String,
    pub backends: Vec<String>,
    /// The Maglev table slot 0 names; 0 = random picks.
    pub maglev_table: u32,
    pub affinity_timeout_s: u64,
}

impl Status {
    /// The frontend of this scope, address and protocol.
    pub fn frontend(&self, scope: &str, address: &str, protocol: &str) -> Option<&StatusFrontend> {
        self.frontends
            .iter()
            .find(|f| f.scope == scope && f.address == address && f.protocol == protocol)
    }
}

impl PlanFrontend {
    /// The backend ids (`pod-<ip>`) of its backends, as the pods answer.
    pub fn backend_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .backends
            .iter()
            .filter_map(|b| b.parse::<SocketAddr>().ok())
            .filter_map(|a| match a.ip() {
                std::net::IpAddr::V4(ip) => Some(pod_id(ip)),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The port of the address (nodePort for NodePort frontends).
    pub fn port_number(&self) -> Option<u16> {
        self.address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
    }
}

// ---------------------------------------------------------------------------- topology

/// What pods serve.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServeSpec {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    /// `--report-peer`: answers carry the client address the pod sees.
    pub report_peer: bool,
}

impl ServeSpec {
    pub fn new(tcp: &[u16], udp: &[u16]) -> Self {
        Self {
            tcp: tcp.to_vec(),
            udp: udp.to_vec(),
            report_peer: true,
        }
    }
}

/// Options of the agents.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// `--devices` (comma-separated); `None`: not passed (auto-detection, or an agent
    /// without the TC data path). Default: `lan0`.
    pub devices: Option<Vec<String>>,
    /// More arguments (e.g. `--poll-interval-ms 50`).
    pub extra_args: Vec<String>,
    /// More environment (e.g. `RUST_LOG=debug`).
    pub env: Vec<(String, String)>,
    /// The agent is started through this command ([`AgentConfig::wrapper`]).
    pub wrapper: Vec<String>,
    /// Another `socklb` binary ([`AgentConfig::bin`]).
    pub bin: Option<std::path::PathBuf>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            devices: Some(vec![LAN_IF.to_string()]),
            extra_args: vec!["--poll-interval-ms".into(), "50".into()],
            env: Vec::new(),
            wrapper: Vec::new(),
            bin: None,
        }
    }
}

impl AgentOptions {
    /// Without `--devices`: the agent picks the devices itself.
    pub fn auto_devices() -> Self {
        Self {
            devices: None,
            ..Self::default()
        }
    }
}

/// Builder of a [`MultiNode`].
#[derive(Clone, Debug)]
pub struct MultiNodeBuilder {
    nodes: u8,
    pods: Vec<Ipv4Addr>,
    tx_csum_off: bool,
}

impl Default for MultiNodeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MultiNodeBuilder {
    /// Two nodes, no pods.
    pub fn new() -> Self {
        Self {
            nodes: 2,
            pods: Vec::new(),
            tx_csum_off: true,
        }
    }

    /// The number of nodes (1..=9).
    pub fn nodes(mut self, n: u8) -> Self {
        self.nodes = n;
        self
    }

    /// A pod at 10.244.N.x, on node N.
    pub fn pod(mut self, ip: Ipv4Addr) -> Self {
        self.pods.push(ip);
        self
    }

    /// Pods (each on the node of its address).
    pub fn pods(mut self, ips: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.pods.extend(ips);
        self
    }

    /// Keep TX checksum offload as the kernel sets it (default: off everywhere).
    pub fn keep_tx_csum_offload(mut self) -> Self {
        self.tx_csum_off = false;
        self
    }

    /// Creates every namespace, link, address and route; starts nothing.
    pub fn build(self) -> Result<MultiNode> {
        if !(1..=9).contains(&self.nodes) {
            bail!("1 to 9 nodes, not {}", self.nodes);
        }
        let manifests = ManifestDir::new()?;
        let lan = NetNs::new()?;
        lan.ip(["link", "add", LAN_BRIDGE, "type", "bridge"])?;
        lan.ip(["link", "set", LAN_BRIDGE, "up"])?;

        let client = NetNs::new()?;
        lan.ip([
            "link",
            "add",
            "c0",
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IF,
            "netns",
            client.name(),
        ])?;
        lan.ip(["link", "set", "c0", "master", LAN_BRIDGE, "up"])?;
        for a in [CLIENT_ADDR, CLIENT_ALT_ADDR] {
            client.ip([
                "addr",
                "add",
                &format!("{a}/{LAN_PREFIX}"),
                "dev",
                CLIENT_IF,
            ])?;
        }
        client.ip(["link", "set", CLIENT_IF, "up"])?;
        client.ip([
            "route",
            "add",
            EXTERNAL_NET,
            "via",
            &node_addr(1).to_string(),
            "dev",
            CLIENT_IF,
        ])?;

        let mut mn = MultiNode {
            nodes: Vec::new(),
            client,
            lan,
            manifests,
            tx_csum_off: self.tx_csum_off,
        };
        let mut lan_ports = vec!["c0".to_string()];
        for n in 1..=self.nodes {
            let node = mn.new_node(n, self.nodes)?;
            lan_ports.push(format!("n{n}"));
            mn.nodes.push(node);
        }
        if self.tx_csum_off {
            let ports: Vec<&str> = lan_ports.iter().map(String::as_str).collect();
            tx_csum_off(&mn.lan, &ports)?;
            tx_csum_off(&mn.client, &[CLIENT_IF])?;
        }
        for ip in self.pods {
            mn.add_pod(ip)?;
        }
        for ns in mn.netns_list() {
            assert_no_default_route(ns)?;
        }
        Ok(mn)
    }
}

/// One node: its namespace (with `lan0`, `br0` and the pods' veths), pods, cgroup, pin
/// directory and agent.
#[derive(Debug)]
pub struct Node {
    // Field order is drop order: the agent first, then its pins (links unpinned), the
    // pods' servers, the namespaces (pods', then the node's), the cgroup.
    agent: Option<Agent>,
    pins: PinDir,
    servers: BTreeMap<Ipv4Addr, Vec<Child>>,
    sandbox: Sandbox,
    cgroup: TestCgroup,
    index: u8,
}

impl Node {
    /// N of node-N.
    pub fn index(&self) -> u8 {
        self.index
    }
    /// `node-N`
    pub fn name(&self) -> String {
        node_name(self.index)
    }
    /// Its LAN address.
    pub fn addr(&self) -> Ipv4Addr {
        node_addr(self.index)
    }
    /// The node's network namespace.
    pub fn netns(&self) -> &NetNs {
        self.sandbox.node()
    }
    /// The node and its pods.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }
    /// Where its agent attaches the socket hooks.
    pub fn cgroup(&self) -> &TestCgroup {
        &self.cgroup
    }
    /// Its agent's pin directory.
    pub fn pins(&self) -> &PinDir {
        &self.pins
    }
    /// Its agent, when started.
    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }
    pub fn agent_mut(&mut self) -> Option<&mut Agent> {
        self.agent.as_mut()
    }
    /// Its pods' addresses, sorted.
    pub fn pod_ips(&self) -> Vec<Ipv4Addr> {
        self.sandbox.pod_ips()
    }
}

/// Where a client runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The client namespace (outside the cluster, 192.0.2.100).
    Client,
    /// Node N's namespace, inside its cgroup (the socket hooks apply).
    Node(u8),
    /// Node N's namespace, outside any test cgroup (only the TC data path applies).
    NodeOutsideCgroup(u8),
    /// A pod's namespace, inside its node's cgroup (as a pod's processes on a node).
    Pod(Ipv4Addr),
    /// A pod's namespace, outside any cgroup.
    PodOutsideCgroup(Ipv4Addr),
}

/// The built topology. See the module documentation.
#[derive(Debug)]
pub struct MultiNode {
    // Field order is drop order.
    nodes: Vec<Node>,
    client: NetNs,
    lan: NetNs,
    manifests: ManifestDir,
    tx_csum_off: bool,
}

impl MultiNode {
    /// [`MultiNodeBuilder::new`]
    pub fn builder() -> MultiNodeBuilder {
        MultiNodeBuilder::new()
    }

    fn new_node(&self, n: u8, count: u8) -> Result<Node> {
        let sandbox = Topology::new().bridge(pod_gateway(n), 24).build()?;
        let ns = sandbox.node();
        let lan_port = format!("n{n}");
        self.lan.ip([
            "link",
            "add",
            &lan_port,
            "type",
            "veth",
            "peer",
            "name",
            LAN_IF,
            "netns",
            ns.name(),
        ])?;
        self.lan
            .ip(["link", "set", &lan_port, "master", LAN_BRIDGE, "up"])?;
        ns.ip([
            "addr",
            "add",
            &format!("{}/{LAN_PREFIX}", node_addr(n)),
            "dev",
            LAN_IF,
        ])?;
        ns.ip(["link", "set", LAN_IF, "up"])?;
        for m in (1..=count).filter(|&m| m != n) {
            ns.ip([
                "route",
                "add",
                &pod_subnet(m),
                "via",
                &node_addr(m).to_string(),
                "dev",
                LAN_IF,
            ])?;
        }
        write_proc_sys(ns, "net/ipv4/ip_forward", "1")?;
        if self.tx_csum_off {
            tx_csum_off(ns, &[LAN_IF])?;
        }
        Ok(Node {
            agent: None,
            pins: PinDir::new()?,
            servers: BTreeMap::new(),
            sandbox,
            cgroup: TestCgroup::new()?,
            index: n,
        })
    }

    /// The nodes, node-1 first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node N (1-based).
    pub fn node(&self, n: u8) -> &Node {
        match self.try_node(n) {
            Some(node) => node,
            None => panic!("no node {n}"),
        }
    }

    fn try_node(&self, n: u8) -> Option<&Node> {
        self.nodes.iter().find(|x| x.index == n)
    }

    fn node_mut(&mut self, n: u8) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|x| x.index == n)
            .ok_or_else(|| anyhow!("no node {n}"))
    }

    /// The client namespace.
    pub fn client(&self) -> &NetNs {
        &self.client
    }

    /// The namespace holding the LAN bridge.
    pub fn lan(&self) -> &NetNs {
        &self.lan
    }

    /// The directory every agent reads.
    pub fn manifests(&self) -> &ManifestDir {
        &self.manifests
    }

    /// Writes (atomically) a manifest file every agent reads.
    pub fn write_manifest(&self, name: &str, text: &str) -> Result<()> {
        self.manifests.write(name, text)
    }

    fn netns_list(&self) -> Vec<&NetNs> {
        let mut v = vec![&self.lan, &self.client];
        for node in &self.nodes {
            v.push(node.netns());
            for ip in node.pod_ips() {
                if let Some(p) = node.sandbox.pod(ip) {
                    v.push(p.netns());
                }
            }
        }
        v
    }

    /// Names of every namespace (lan, client, then each node and its pods).
    pub fn netns_names(&self) -> Vec<String> {
        self.netns_list()
            .iter()
            .map(|n| n.name().to_string())
            .collect()
    }

    /// Every pod address, sorted.
    pub fn pod_ips(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self.nodes.iter().flat_map(Node::pod_ips).collect();
        v.sort();
        v
    }

    /// Adds a pod 10.244.N.x on node N: its namespace, veth on the node's bridge, routes
    /// to the LAN and every pod network via 10.244.N.1, TX checksum offload off.
    pub fn add_pod(&mut self, ip: Ipv4Addr) -> Result<()> {
        let n = node_of_pod(ip).ok_or_else(|| anyhow!("{ip} is not in 10.244.N.0/24"))?;
        let tx_off = self.tx_csum_off;
        let node = self.node_mut(n)?;
        node.sandbox.add_pod(ip)?;
        let pod = node
            .sandbox
            .pod(ip)
            .ok_or_else(|| anyhow!("pod {ip} vanished"))?;
        let gw = pod_gateway(n).to_string();
        let setup = || -> Result<()> {
            for net in [LAN_NET, POD_CIDR] {
                pod.netns().ip([
                    "route",
                    "add",
                    net,
                    "via",
                    &gw,
                    "dev",
                    crate::sandbox::POD_IF,
                ])?;
            }
            if tx_off {
                tx_csum_off(pod.netns(), &[crate::sandbox::POD_IF])?;
                tx_csum_off(node.sandbox.node(), &[pod.host_if()])?;
            }
            assert_no_default_route(pod.netns())
        };
        if let Err(e) = setup() {
            let _ = node.sandbox.remove_pod(ip);
            return Err(e.context(format!("setting up pod {ip} on node-{n}")));
        }
        Ok(())
    }

    /// Ends a pod's servers and deletes it.
    pub fn remove_pod(&mut self, ip: Ipv4Addr) -> Result<()> {
        let n = node_of_pod(ip).ok_or_else(|| anyhow!("{ip} is not a pod address"))?;
        let node = self.node_mut(n)?;
        node.servers.remove(&ip);
        node.sandbox.remove_pod(ip)
    }

    /// Starts `socklb-probe serve --id pod-<ip> ...` in the pod (outside any cgroup)
    /// and waits for its ready line.
    pub fn serve(&mut self, ip: Ipv4Addr, spec: &ServeSpec) -> Result<u32> {
        let n = node_of_pod(ip).ok_or_else(|| anyhow!("{ip} is not a pod address"))?;
        let node = self.node_mut(n)?;
        let pod = node
            .sandbox
            .pod(ip)
            .ok_or_else(|| anyhow!("no pod {ip} on node-{n}"))?;
        let mut cmd = Command::new(probe_bin());
        cmd.args(["serve", "--id", &pod_id(ip)]);
        for p in &spec.tcp {
            cmd.arg("--tcp").arg(p.to_string());
        }
        for p in &spec.udp {
            cmd.arg("--udp").arg(p.to_string());
        }
        if spec.report_peer {
            cmd.arg("--report-peer");
        }
        cmd.stdout(Stdio::piped());
        let mut child = Child::spawn(cmd, &SpawnOpts::new().netns(pod.netns().path()))?;
        let line = child.read_line(SERVE_READY_TIMEOUT)?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("serve printed {line:?} instead of its ready line"))?;
        if v.get("ready").and_then(serde_json::Value::as_bool) != Some(true) {
            bail!("serve in pod {ip} is not ready: {line}");
        }
        let pid = child.pid();
        node.servers.entry(ip).or_default().push(child);
        Ok(pid)
    }

    /// [`MultiNode::serve`] on every pod.
    pub fn serve_all(&mut self, spec: &ServeSpec) -> Result<()> {
        for ip in self.pod_ips() {
            self.serve(ip, spec)?;
        }
        Ok(())
    }

    /// Ends a pod's servers (the pod stays: its kernel then refuses connections).
    pub fn stop_servers(&mut self, ip: Ipv4Addr) -> Result<()> {
        let n = node_of_pod(ip).ok_or_else(|| anyhow!("{ip} is not a pod address"))?;
        self.node_mut(n)?.servers.remove(&ip);
        Ok(())
    }

    /// Starts every node's agent (see [`MultiNode::start_agent`]) and waits until each
    /// has programmed its data path (its "ready" log line): a test may then use any
    /// node at once.
    pub fn start_agents(&mut self, opts: &AgentOptions) -> Result<()> {
        let indexes: Vec<u8> = self.nodes.iter().map(|n| n.index).collect();
        for n in &indexes {
            self.start_agent(*n, opts)?;
        }
        for n in indexes {
            let node = self.node_mut(n)?;
            if let Some(agent) = node.agent.as_mut()
                && !agent.wait_for_log("ready", AGENT_WAIT)
            {
                bail!(
                    "the agent of {} did not get ready within {AGENT_WAIT:?}; its log:\n{}",
                    node_name(n),
                    agent.log()
                );
            }
        }
        Ok(())
    }

    /// Starts `socklb agent --manifests DIR --node node-N --cgroup CG --bpffs PINS
    /// [--devices lan0]` inside node N's network namespace (ends an agent it had).
    pub fn start_agent(&mut self, n: u8, opts: &AgentOptions) -> Result<()> {
        let config = self.agent_config(n, opts)?;
        let node = self.node_mut(n)?;
        node.agent = None;
        node.agent = Some(Agent::start(&config)?);
        Ok(())
    }

    /// How [`MultiNode::start_agent`] starts node N's agent (for a test that starts,
    /// kills and replaces it itself).
    pub fn agent_config(&self, n: u8, opts: &AgentOptions) -> Result<AgentConfig> {
        let node = self.try_node(n).ok_or_else(|| anyhow!("no node {n}"))?;
        let mut config = AgentConfig::new(
            self.manifests.path(),
            node.cgroup.path(),
            node.pins.path(),
            node_name(n),
        )
        .in_netns(node.netns().path());
        if let Some(devs) = &opts.devices {
            config.extra_args.push("--devices".into());
            config.extra_args.push(devs.join(","));
        }
        config.extra_args.extend(opts.extra_args.iter().cloned());
        config.env = opts.env.clone();
        config.wrapper = opts.wrapper.clone();
        config.bin = opts.bin.clone();
        Ok(config)
    }

    /// Restarts node N's agent as a rolling update does: SIGTERM (it must exit 0, the
    /// data path stays pinned), then a new agent with `opts` on the same pins, waited
    /// for until it has programmed its data path.
    pub fn restart_agent(&mut self, n: u8, opts: &AgentOptions) -> Result<()> {
        if let Some(agent) = self.node_mut(n)?.agent.as_mut() {
            let status = agent.stop()?;
            if !status.success() {
                bail!("the agent of {} exited with {status}", node_name(n));
            }
        }
        self.start_agent(n, opts)?;
        let node = self.node_mut(n)?;
        if let Some(agent) = node.agent.as_mut()
            && !agent.wait_for_log("ready", AGENT_WAIT)
        {
            bail!(
                "the restarted agent of {} did not get ready within {AGENT_WAIT:?}; its log:\n{}",
                node_name(n),
                agent.log()
            );
        }
        Ok(())
    }

    /// Fails (with its log) when an agent that was started has exited.
    pub fn check_agents(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            let name = node_name(node.index);
            if let Some(agent) = node.agent.as_mut()
                && let Some(status) = agent.try_wait()?
            {
                bail!(
                    "the agent of {name} exited ({status}); its log:\n{}",
                    agent.log()
                );
            }
        }
        Ok(())
    }

    /// The last lines of every agent's log.
    pub fn agent_logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for node in &self.nodes {
            if let Some(a) = &node.agent {
                s.push_str(&format!(
                    "---- agent of {} ----\n{}\n",
                    node_name(node.index),
                    a.log_tail(lines)
                ));
            }
        }
        s
    }

    /// Stops every agent (SIGTERM; each must exit 0), then runs `socklb uninstall
    /// --cgroup CG --bpffs PINS` inside each node's network namespace (where its TC
    /// attachments are). Every step runs even when an earlier one failed.
    pub fn shutdown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        for node in &mut self.nodes {
            if let Some(agent) = node.agent.as_mut()
                && let Err(e) = agent.stop()
            {
                errors.push(format!("node-{}: {e:#}", node.index));
            }
        }
        for node in &self.nodes {
            if node.agent.is_none() {
                continue;
            }
            if let Err(e) = uninstall_in(node) {
                errors.push(format!("node-{}: {e:#}", node.index));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("\n"))
        }
    }

    /// `socklb uninstall --cgroup CG --bpffs PINS` of node N, in its namespace; fails
    /// unless it exits 0.
    pub fn uninstall(&self, n: u8) -> Result<()> {
        uninstall_in(self.try_node(n).ok_or_else(|| anyhow!("no node {n}"))?)
    }

    /// `socklb plan --manifests DIR --node node-N -o json`.
    pub fn plan(&self, n: u8) -> Result<Plan> {
        let args: Vec<std::ffi::OsString> = vec![
            "plan".into(),
            "--manifests".into(),
            self.manifests.path().into(),
            "--node".into(),
            node_name(n).into(),
            "-o".into(),
            "json".into(),
        ];
        let out = socklb(args)?;
        if !out.status.success() {
            bail!(
                "socklb plan failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "socklb plan printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `socklb status --bpffs PINS -o json` of node N, run inside its namespace.
    pub fn status(&self, n: u8) -> Result<Status> {
        let node = self.try_node(n).ok_or_else(|| anyhow!("no node {n}"))?;
        let mut cmd = Command::new(try_socklb_bin()?);
        cmd.arg("status")
            .arg("--bpffs")
            .arg(node.pins.path())
            .args(["-o", "json"])
            .env("NO_COLOR", "1");
        let out = node
            .netns()
            .output(cmd, None, crate::agent::SOCKLB_COMMAND_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "socklb status failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "socklb status printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn place(&self, origin: Origin) -> Result<(&NetNs, Option<&Path>)> {
        let pod_ns = |ip: Ipv4Addr| -> Result<(&NetNs, &Node)> {
            let n = node_of_pod(ip).ok_or_else(|| anyhow!("{ip} is not a pod address"))?;
            let node = self.try_node(n).ok_or_else(|| anyhow!("no node {n}"))?;
            let pod = node
                .sandbox
                .pod(ip)
                .ok_or_else(|| anyhow!("no pod {ip} on node-{n}"))?;
            Ok((pod.netns(), node))
        };
        let node = |n: u8| self.try_node(n).ok_or_else(|| anyhow!("no node {n}"));
        Ok(match origin {
            Origin::Client => (&self.client, None),
            Origin::Node(n) => {
                let node = node(n)?;
                (node.netns(), Some(node.cgroup.path()))
            }
            Origin::NodeOutsideCgroup(n) => (node(n)?.netns(), None),
            Origin::Pod(ip) => {
                let (ns, node) = pod_ns(ip)?;
                (ns, Some(node.cgroup.path()))
            }
            Origin::PodOutsideCgroup(ip) => (pod_ns(ip)?.0, None),
        })
    }

    /// Runs `socklb-probe tcp` at `origin`.
    pub fn tcp(&self, origin: Origin, run: &TcpRun) -> Result<TcpRunReport> {
        let (ns, cg) = self.place(origin)?;
        run_probe_json(ns, cg, &run.args(), run.worst_case_ms())
    }

    /// Runs `socklb-probe udp` at `origin`.
    pub fn udp(&self, origin: Origin, run: &UdpRun) -> Result<UdpRunReport> {
        let (ns, cg) = self.place(origin)?;
        run_probe_json(ns, cg, &run.args(), run.worst_case_ms())
    }

    /// Runs `socklb-probe transfer` at `origin`.
    pub fn transfer(&self, origin: Origin, run: &TransferRun) -> Result<TransferReport> {
        let (ns, cg) = self.place(origin)?;
        run_probe_json(ns, cg, &run.args(), run.worst_case_ms())
    }

    /// Runs `tcp` every 100 ms until `done` accepts its report; fails with the agents'
    /// log tails on timeout or as soon as an agent exited.
    pub fn wait_tcp(
        &mut self,
        origin: Origin,
        run: &TcpRun,
        timeout: Duration,
        done: impl Fn(&TcpRunReport) -> bool,
    ) -> Result<TcpRunReport> {
        self.wait_for(timeout, |mn| mn.tcp(origin, run), done, &run.probe.to)
    }

    /// [`MultiNode::wait_tcp`] for UDP.
    pub fn wait_udp(
        &mut self,
        origin: Origin,
        run: &UdpRun,
        timeout: Duration,
        done: impl Fn(&UdpRunReport) -> bool,
    ) -> Result<UdpRunReport> {
        self.wait_for(timeout, |mn| mn.udp(origin, run), done, &run.probe.to)
    }

    fn wait_for<T: std::fmt::Debug>(
        &mut self,
        timeout: Duration,
        mut run: impl FnMut(&MultiNode) -> Result<T>,
        done: impl Fn(&T) -> bool,
        to: &SocketAddr,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_agents()?;
            let r = run(self)?;
            if done(&r) {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no acceptable answer from {to} within {timeout:?}; last report {r:?}\n{}",
                    self.agent_logs(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `socklb uninstall` for a node, run inside its network namespace.
fn uninstall_in(node: &Node) -> Result<()> {
    let mut cmd = Command::new(try_socklb_bin()?);
    cmd.arg("uninstall")
        .arg("--cgroup")
        .arg(node.cgroup.path())
        .arg("--bpffs")
        .arg(node.pins.path())
        .env("NO_COLOR", "1");
    let out = node
        .netns()
        .output(cmd, None, crate::agent::SOCKLB_COMMAND_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "socklb uninstall in {} failed ({}):\n{}{}",
            node.netns().name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(node_addr(1), Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(node_addr(2), Ipv4Addr::new(192, 0, 2, 12));
        assert_eq!(pod_gateway(2), Ipv4Addr::new(10, 244, 2, 1));
        assert_eq!(pod_subnet(1), "10.244.1.0/24");
        assert_eq!(node_of_pod(Ipv4Addr::new(10, 244, 2, 10)), Some(2));
        assert_eq!(node_of_pod(Ipv4Addr::new(10, 96, 0, 10)), None);
        assert_eq!(node_name(2), "node-2");
    }

    #[test]
    fn run_command_lines() {
        let to: SocketAddr = "192.0.2.11:30080".parse().unwrap();
        let t = TcpRun::new(to)
            .count(200)
            .parallel(200, true)
            .bind(CLIENT_ALT_ADDR);
        let a = t.args();
        assert_eq!(&a[..3], ["tcp", "--to", "192.0.2.11:30080"]);
        assert!(a.windows(2).any(|w| w == ["--bind", "192.0.2.101"]));
        assert!(a.windows(2).any(|w| w == ["--parallel", "200"]));
        assert!(a.contains(&"--hold".to_string()));
        assert!(t.worst_case_ms() < TcpRun::new(to).count(200).worst_case_ms());
        let u = UdpRun::new(to).sockets(3).bind(CLIENT_ADDR).args();
        assert!(u.windows(2).any(|w| w == ["--bind", "192.0.2.100"]));
        let x = TransferRun::new(to, 1000).seed(3).args();
        assert_eq!(
            x,
            [
                "transfer",
                "--to",
                "192.0.2.11:30080",
                "--bytes",
                "1000",
                "--seed",
                "3",
                "--timeout-ms",
                "5000"
            ]
        );
    }

    #[test]
    fn reports_parse_with_and_without_seen_from() {
        let r: TcpRunReport = serde_json::from_str(
            r#"{"to":"x","attempts":2,"ok":2,"backends":{"pod-a":2},
                "seen_from":{"pod-a":{"192.0.2.11":1,"192.0.2.100":1}}}"#,
        )
        .unwrap();
        assert_eq!(r.ok, 2);
        assert_eq!(r.backends["pod-a"], 2);
        assert_eq!(r.client_ips()["192.0.2.11"], 1);
        let r: UdpRunReport = serde_json::from_str(r#"{"replies":1}"#).unwrap();
        assert_eq!(r.replies, 1);
        assert!(r.seen_from.is_empty());
    }

    #[test]
    fn plan_frontends() {
        let p: Plan = serde_json::from_str(
            r#"{"node":"node-1","frontends":[
              {"service":"e2e/web","port":"http","protocol":"TCP","type":"NodePort",
               "address":"*:30080","action":"forward",
               "backends":["10.244.1.10:8080","10.244.2.10:8080"],"affinity_timeout_s":0},
              {"service":"e2e/web","port":"http","protocol":"TCP","type":"ClusterIP",
               "address":"10.96.0.10:80","action":"forward","backends":[],"affinity_timeout_s":0}]}"#,
        )
        .unwrap();
        let f = p.frontend("NodePort", "*:30080", "TCP").unwrap();
        assert_eq!(f.backend_ids(), ["pod-10.244.1.10", "pod-10.244.2.10"]);
        assert_eq!(f.port_number(), Some(30080));
        assert_eq!(p.external().count(), 1);
    }

    #[test]
    fn sysctl_keys_stay_under_proc_sys() {
        assert_eq!(
            proc_sys_path("net/ipv4/ip_forward").unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert!(proc_sys_path("../x").is_err());
        assert!(proc_sys_path("/etc").is_err());
        assert!(proc_sys_path("net//x").is_err());
    }
}
