//! `socklb-bench run`: every measurement, in network namespaces, a cgroup and a pin
//! directory of its own, all behind Drop guards.
//!
//! Data path, per N (services):
//! ```text
//!   node netns: br0 10.244.0.1/16 ─┬─ pod 10.244.1.1 ... 10.244.1.E  (socklb-bench serve)
//!                                  ├─ client "direct"   10.244.K.1 (no rules)
//!                                  ├─ client "socklb"   10.244.K.2 (client in the agent's cgroup)
//!                                  ├─ client "iptables" 10.244.K.3 (kube-proxy's iptables rules)
//!                                  ├─ client "nft"      10.244.K.4 (kube-proxy's nftables rules)
//!                                  └─ client "iptables-first" 10.244.K.5 (the same iptables rules)
//! ```
//! `iptables` sends to the last service of KUBE-SERVICES, `iptables-first` to the first
//! one, each from its own namespace: both services have the same pods, and in one
//! namespace a client port reused towards the other service address while conntrack
//! still holds the first connection (TIME_WAIT) would clash on the reply tuple
//! (pod:port -> client:port), and DNAT would drop the SYN.
//! (K = 200 + the index of N: new addresses for every N, so that no pod's neighbour
//! cache still points at the previous N's, deleted, client interface.)
//! Each client namespace plays the node for its mode: identical veths to the same
//! bridge and pods, the same route for the service CIDR (to the bridge; no default
//! route anywhere), only its own rules, so the conntrack and netfilter hooks that
//! iptables and nft bring stay out of the direct and socklb measurements. The modes
//! take turns in every repetition (a different order each time), and each figure is
//! also reported as a ratio to the direct run of the same repetition.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use socklb_bench_results::{
    AgentChangeRow, DatapathRow, IptablesBackend, IptablesRow, Kind, LoadReport, MemoryRow, Meta,
    Mode, NftRow, Results, SCHEMA, Spread, quantile,
};
use socklb_tests::{
    Agent, AgentConfig, Child, ManifestDir, NetNs, PinDir, Sandbox, SpawnOpts, TestCgroup,
    Topology, check_privileges,
};

use super::model::{Change, SERVICE_CIDR, SynthCluster, TCP_TARGET, UDP_TARGET};
use super::synth_files;
use super::util::{self, check_interrupted};
use super::{iptables, nft};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Config {
    pub services: Vec<usize>,
    pub endpoints: usize,
    /// Repetitions of every data-path figure.
    pub reps: usize,
    /// Repetitions of the cold loads and of the agent starts (memory).
    pub control_reps: usize,
    /// Endpoint changes timed per tool and N.
    pub changes: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub threads: usize,
    pub size: usize,
    pub tcp: bool,
    pub udp: bool,
    pub control: bool,
    pub memory: bool,
    /// NodePort from outside the node (TC program vs iptables NodePort DNAT).
    pub nodeport: bool,
    /// Stale-socket termination (once, not per N): namespaces × sockets, rounds.
    pub stale: Option<super::stale::StaleConfig>,
    /// The data path's iptables (and the first control-plane backend).
    pub iptables_backend: IptablesBackend,
    /// Also time the other iptables backend's control plane, up to this N (0: never).
    pub other_backend_max: usize,
    pub quick: bool,
    /// Data-path modes to run (empty: all). `direct` always runs: the ratios need it.
    pub modes: Vec<Mode>,
    pub agent_ready_timeout: Duration,
    /// Where to write the results as they grow (after every N).
    pub out: std::path::PathBuf,
}

impl Config {
    /// Whether `--modes` asks for `mode` (no `--modes`: every mode).
    pub fn wants(&self, mode: Mode) -> bool {
        self.modes.is_empty() || self.modes.contains(&mode)
    }
}

use super::model::NODE_NAME;
/// Client namespaces of one N, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Direct = 1,
    Socklb = 2,
    Iptables = 3,
    Nft = 4,
    IptablesFirst = 5,
}

const CLIENTS: [Client; 5] = [
    Client::Direct,
    Client::Socklb,
    Client::Iptables,
    Client::Nft,
    Client::IptablesFirst,
];
/// Most real pods behind the measured services.
const MAX_REAL_PODS: u8 = 10;
/// Long enough for any rule load seen here (nft at 30 000 services).
pub(super) const TOOL_TIMEOUT: Duration = Duration::from_secs(3600);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn progress(msg: impl AsRef<str>) {
    eprintln!("socklb-bench: {}", msg.as_ref());
}

/// Runs everything `cfg` asks for; writes `cfg.out` after each N and at the end.
pub fn run(cfg: &Config) -> Result<Results> {
    check_privileges().map_err(|why| anyhow!("socklb-bench run needs: {why}"))?;
    // kube-proxy's tools for the comparisons; the stale-socket item alone needs none.
    let baselines = cfg.tcp || cfg.udp || cfg.control || cfg.memory || cfg.nodeport;
    let tools: &[&str] = if baselines {
        &[cfg.iptables_backend.restore(), "nft", "bpftool"]
    } else {
        &[]
    };
    for tool in tools.iter().copied() {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("{tool} not found (cargo xtask bench installs iptables, nftables and bpftool)");
        }
    }
    let work = util::work_dir("bench")?;
    let pods: Vec<Ipv4Addr> = (1..=MAX_REAL_PODS.min(cfg.endpoints.min(255) as u8))
        .map(|i| Ipv4Addr::new(10, 244, 1, i))
        .collect();
    let mut results = Results {
        schema: SCHEMA,
        meta: meta(cfg, pods.len()),
        ..Default::default()
    };
    if baselines && cfg.iptables_backend == IptablesBackend::Legacy && cfg.other_backend_max > 0 {
        results.notes.push(format!(
            "iptables: the data path and the control plane use iptables-legacy-restore; the control plane is also timed with iptables-nft-restore up to {} services (above that it takes minutes here).",
            cfg.other_backend_max
        ));
    }
    let mut bed = if cfg.tcp || cfg.udp {
        Some(Bed::new(&pods)?)
    } else {
        None
    };
    // Items measured per N (the stale-socket item is not).
    for &n in cfg.services.iter().filter(|_| baselines) {
        check_interrupted()?;
        let cluster = SynthCluster::new(n, cfg.endpoints, pods.clone());
        if n * (cfg.endpoints + 1) > lb_capacity_svc() || n * cfg.endpoints > lb_capacity_backends()
        {
            results.notes.push(format!(
                "{n} services x {} endpoints exceed socklb's map capacity ({} service entries, {} backends): some services are not programmed.",
                cfg.endpoints,
                lb_capacity_svc(),
                lb_capacity_backends()
            ));
        }
        let manifest_dir = ManifestDir::new()?;
        synth_files::write_all(&manifest_dir, &cluster)?;
        progress(format!(
            "N={n}: {} services, {} endpoints, manifests in {}",
            n,
            cluster.total_endpoints(),
            manifest_dir.path().display()
        ));
        if let Some(bed) = bed.as_mut() {
            datapath(bed, &cluster, &manifest_dir, cfg, work.path(), &mut results)
                .with_context(|| format!("data path at {n} services"))?;
            write(&cfg.out, &results)?;
        }
        if cfg.nodeport {
            super::nodeport::run(n, cfg, work.path(), &mut results)
                .with_context(|| format!("NodePort at {n} services"))?;
            write(&cfg.out, &results)?;
        }
        if cfg.control {
            control(&cluster, cfg, work.path(), &mut results)
                .with_context(|| format!("control plane at {n} services"))?;
            write(&cfg.out, &results)?;
        }
        if cfg.memory || cfg.control {
            agent_phase(&cluster, &manifest_dir, cfg, &mut results)
                .with_context(|| format!("agent at {n} services"))?;
            write(&cfg.out, &results)?;
        }
    }
    drop(bed);
    if let Some(stale) = &cfg.stale {
        check_interrupted()?;
        let row = super::stale::run(stale).context("stale sockets")?;
        results.stale_sockets.push(row);
        write(&cfg.out, &results)?;
    }
    results.meta.finished_unix = unix_now();
    write(&cfg.out, &results)?;
    Ok(results)
}

// lb-common's map sizes (socklb's capacity), for the note above; the benchmark does not
// link lb-common, so they are repeated here.
fn lb_capacity_svc() -> usize {
    262_144
}
fn lb_capacity_backends() -> usize {
    131_072
}

fn write(path: &Path, r: &Results) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(r)?)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn meta(cfg: &Config, real_pods: usize) -> Meta {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb / 1024);
    Meta {
        started_unix: unix_now(),
        finished_unix: 0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        memory_mib,
        iptables_backend: cfg.iptables_backend,
        iptables_version: util::tool_version(cfg.iptables_backend.restore(), "--version"),
        nft_version: util::tool_version("nft", "--version"),
        bpftool_version: util::tool_version("bpftool", "--version"),
        services: cfg.services.clone(),
        endpoints_per_service: cfg.endpoints,
        real_pods,
        reps: cfg.reps,
        control_reps: cfg.control_reps,
        changes: cfg.changes,
        duration_ms: cfg.duration.as_millis() as u64,
        warmup_ms: cfg.warmup.as_millis() as u64,
        threads: cfg.threads,
        request_bytes: cfg.size,
        quick: cfg.quick,
        profile: if cfg!(debug_assertions) {
            "debug".into()
        } else {
            "release".into()
        },
    }
}

// ----------------------------------------------------------------------------- bed

/// The pods and their servers, for the whole run. Fields drop in order: servers, then
/// the sandbox (pod and node namespaces).
struct Bed {
    servers: Vec<Child>,
    sandbox: Sandbox,
    pods: Vec<Ipv4Addr>,
    /// How many sets of client namespaces were created.
    round: usize,
}

impl Bed {
    fn new(pods: &[Ipv4Addr]) -> Result<Bed> {
        let sandbox = Topology::new().pods(pods.iter().copied()).build()?;
        let mut bed = Bed {
            servers: Vec::new(),
            sandbox,
            pods: pods.to_vec(),
            round: 0,
        };
        let exe = std::env::current_exe()?;
        for ip in pods {
            let mut cmd = Command::new(&exe);
            cmd.args([
                "serve",
                "--ip",
                &ip.to_string(),
                "--tcp",
                &TCP_TARGET.to_string(),
                "--udp",
                &UDP_TARGET.to_string(),
            ])
            .stdout(Stdio::piped());
            let mut child = bed.sandbox.spawn_in_pod(*ip, cmd)?;
            let line = child.read_line(Duration::from_secs(10))?;
            if !line.contains("\"ready\":true") {
                bail!("server in pod {ip} is not ready: {line}");
            }
            bed.servers.push(child);
        }
        Ok(bed)
    }

    /// The address of a client namespace of the `index`-th N.
    fn client_ip(&self, role: Client) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 200 + (self.round % 50) as u8, role as u8)
    }

    /// The client namespaces of the next N (fresh ones, with new addresses: no rules,
    /// no conntrack state, no stale neighbour entries anywhere).
    fn add_clients(&mut self) -> Result<()> {
        self.round += 1;
        for role in CLIENTS {
            let ip = self.client_ip(role);
            self.sandbox.add_pod(ip)?;
            let pod = self.sandbox.pod(ip).context("client namespace")?;
            // Service addresses go to the bridge (untranslated, they reach nothing).
            pod.netns()
                .ip(["route", "add", SERVICE_CIDR, "dev", "eth0"])?;
        }
        Ok(())
    }

    fn remove_clients(&mut self) {
        for role in CLIENTS {
            let ip = self.client_ip(role);
            if self.sandbox.pod(ip).is_some()
                && let Err(e) = self.sandbox.remove_pod(ip)
            {
                progress(format!("removing client namespace {ip}: {e:#}"));
            }
        }
    }

    fn netns(&self, role: Client) -> Result<std::path::PathBuf> {
        Ok(self
            .sandbox
            .pod(self.client_ip(role))
            .context("client namespace")?
            .netns()
            .path())
    }
}

/// Removes the client namespaces when dropped (also on error).
struct Clients<'a>(&'a mut Bed);

impl Drop for Clients<'_> {
    fn drop(&mut self) {
        self.0.remove_clients();
    }
}

// ----------------------------------------------------------------------------- data path

fn targets(
    mode: Mode,
    kind: Kind,
    c: &SynthCluster,
    pods: &[Ipv4Addr],
) -> (Vec<SocketAddrV4>, String) {
    let (svc_port, pod_port) = match kind {
        Kind::Udp => (super::model::UDP_PORT, UDP_TARGET),
        _ => (super::model::TCP_PORT, TCP_TARGET),
    };
    match mode {
        Mode::Direct => (
            pods.iter()
                .map(|p| SocketAddrV4::new(*p, pod_port))
                .collect(),
            format!("{} pods, picked at random", pods.len()),
        ),
        Mode::IptablesFirst => (
            vec![SocketAddrV4::new(c.vip(c.first()), svc_port)],
            format!("{} (first in KUBE-SERVICES)", c.key(c.first())),
        ),
        Mode::Iptables => (
            vec![SocketAddrV4::new(c.vip(c.last()), svc_port)],
            format!("{} (last in KUBE-SERVICES)", c.key(c.last())),
        ),
        Mode::Socklb | Mode::Nft => (
            vec![SocketAddrV4::new(c.vip(c.last()), svc_port)],
            c.key(c.last()),
        ),
    }
}

pub(super) struct LoadRun<'a> {
    pub(super) cfg: &'a Config,
    pub(super) work: &'a Path,
}

impl LoadRun<'_> {
    #[allow(clippy::too_many_arguments)] // one call per figure; a struct would only rename them
    pub(super) fn run(
        &self,
        netns: &Path,
        cgroup: Option<&Path>,
        kind: Kind,
        to: &[SocketAddrV4],
        duration: Duration,
        warmup: Duration,
        threads: usize,
    ) -> Result<LoadReport> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        let to: Vec<String> = to.iter().map(ToString::to_string).collect();
        cmd.args(["load", "--kind", kind.name(), "--to", &to.join(",")])
            .args(["--threads", &threads.to_string()])
            .args(["--duration-ms", &duration.as_millis().to_string()])
            .args(["--warmup-ms", &warmup.as_millis().to_string()])
            .args(["--size", &self.cfg.size.to_string(), "--timeout-ms", "1000"]);
        let opts = SpawnOpts::new().netns(netns).maybe_cgroup(cgroup);
        let f = util::run_to_files(
            cmd,
            &opts,
            duration + warmup + Duration::from_secs(30),
            self.work,
        )?;
        if !f.status.success() {
            bail!("load generator failed ({}): {}", f.status, f.stderr.trim());
        }
        serde_json::from_str(f.stdout.trim())
            .with_context(|| format!("load generator printed {:?}", f.stdout))
    }
}

fn datapath(
    bed: &mut Bed,
    c: &SynthCluster,
    dir: &ManifestDir,
    cfg: &Config,
    work: &Path,
    results: &mut Results,
) -> Result<()> {
    let n = c.services;
    let clients = Clients(bed);
    clients.0.add_clients()?;
    let bed: &Bed = clients.0;

    // socklb: the real agent on the manifest directory. Drop order: agent, pins, cgroup.
    let cgroup = TestCgroup::new()?;
    let pins = PinDir::new()?;
    let mut agent_cfg = AgentConfig::new(dir.path(), cgroup.path(), pins.path(), NODE_NAME);
    // In the host's network namespace: ClusterIP only, no TC on the host's devices.
    agent_cfg.extra_args = ["--poll-interval-ms", "50", "--devices", "none"]
        .map(String::from)
        .to_vec();
    let t0 = Instant::now();
    let mut agent = Agent::start(&agent_cfg)?;
    wait_ready(&mut agent, cfg.agent_ready_timeout)?;
    progress(format!(
        "N={n}: agent ready in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    ));

    // kube-proxy's iptables layout in both iptables client namespaces.
    let ipt_ns = bed.netns(Client::Iptables)?;
    let ipt_first_ns = bed.netns(Client::IptablesFirst)?;
    let base = work.join("ipt-base.rules");
    std::fs::write(&base, iptables::base())?;
    let full = work.join("ipt-full.rules");
    let text = iptables::full(c, None);
    let rules = iptables::rule_count(&text);
    std::fs::write(&full, text)?;
    let restore = cfg.iptables_backend.restore();
    for ns in [&ipt_ns, &ipt_first_ns] {
        util::run_in(ns, restore, &["--noflush"], Some(&base), TOOL_TIMEOUT, work)?;
        let ms = util::timed_in(
            ns,
            restore,
            &["--noflush", "--counters"],
            Some(&full),
            TOOL_TIMEOUT,
            work,
        )?;
        progress(format!(
            "N={n}: {rules} iptables rules loaded in {ms:.0} ms ({restore})"
        ));
    }
    let _ = std::fs::remove_file(&full);

    // kube-proxy's nftables layout in the nft client namespace.
    let nft_ns = bed.netns(Client::Nft)?;
    let script = work.join("nft-full.nft");
    let text = nft::full(c, None);
    let nft_rules = nft::rule_count(&text);
    std::fs::write(&script, text)?;
    let script_arg = script.to_string_lossy().into_owned();
    let ms = util::timed_in(
        &nft_ns,
        "nft",
        &["-f", &script_arg],
        None,
        TOOL_TIMEOUT,
        work,
    )?;
    progress(format!("N={n}: {nft_rules} nft rules loaded in {ms:.0} ms"));
    let _ = std::fs::remove_file(&script);

    // With one service, its first is its last: no `iptables-first`.
    let mut modes = Mode::CLUSTER_IP.to_vec();
    modes.retain(|m| (*m != Mode::IptablesFirst || n > 1) && (*m == Mode::Direct || cfg.wants(*m)));
    let mut kinds = Vec::new();
    if cfg.tcp {
        kinds.extend([Kind::TcpShort, Kind::TcpLong]);
    }
    if cfg.udp {
        kinds.push(Kind::Udp);
    }
    let where_ = |mode: Mode| -> Result<(std::path::PathBuf, Option<&Path>)> {
        Ok(match mode {
            Mode::Direct => (bed.netns(Client::Direct)?, None),
            Mode::Socklb => (bed.netns(Client::Socklb)?, Some(cgroup.path())),
            Mode::Iptables => (bed.netns(Client::Iptables)?, None),
            Mode::IptablesFirst => (bed.netns(Client::IptablesFirst)?, None),
            Mode::Nft => (bed.netns(Client::Nft)?, None),
        })
    };
    let runner = LoadRun { cfg, work };
    let measured = Measured {
        label: format!("N={n}"),
        n,
        kinds: &kinds,
        modes: &modes,
        pods: bed.pods.len(),
    };
    let rows = measure(
        &measured,
        &runner,
        &mut results.notes,
        |mode| where_(mode).map(|(ns, cg)| (ns, cg.map(Path::to_path_buf))),
        |mode, kind| targets(mode, kind, c, &bed.pods),
    )?;
    results.datapath.extend(rows);

    agent.stop()?;
    agent.uninstall()?;
    drop(agent);
    drop(pins);
    drop(cgroup);
    drop(clients);
    Ok(())
}

/// One data-path measurement: every kind in every mode, each mode's client in its own
/// namespace (and cgroup).
pub(super) struct Measured<'a> {
    /// Prefix of progress lines and notes (`N=1000`, `N=1000 NodePort`).
    pub(super) label: String,
    pub(super) n: usize,
    pub(super) kinds: &'a [Kind],
    /// `Mode::Direct` among them: every ratio is taken against it.
    pub(super) modes: &'a [Mode],
    /// Real pods behind the measured service (all should answer).
    pub(super) pods: usize,
}

/// Runs `m`: a short sanity run of every (kind, mode), whose failures go to `notes`,
/// then `cfg.reps` repetitions with the modes in a rotated order each time; one row
/// per (kind, mode) with its ratios to the direct run of the same repetition.
/// `client(mode)` is where the mode's client runs, `targets(mode, kind)` what it
/// sends to and how the row describes it.
pub(super) fn measure(
    m: &Measured<'_>,
    runner: &LoadRun<'_>,
    notes: &mut Vec<String>,
    client: impl Fn(Mode) -> Result<(std::path::PathBuf, Option<std::path::PathBuf>)>,
    targets: impl Fn(Mode, Kind) -> (Vec<SocketAddrV4>, String),
) -> Result<Vec<DatapathRow>> {
    let cfg = runner.cfg;
    // Sanity: every mode reaches every pod without errors, replies from the address sent to.
    for &kind in m.kinds {
        for &mode in m.modes {
            check_interrupted()?;
            let (ns, cg) = client(mode)?;
            let (to, _) = targets(mode, kind);
            let r = runner.run(
                &ns,
                cg.as_deref(),
                kind,
                &to,
                Duration::from_millis(300),
                Duration::from_millis(50),
                1,
            )?;
            let want = if kind == Kind::TcpLong { 1 } else { m.pods };
            let errors = r.error_count();
            if errors > 0
                || r.backends.len() < want.min(r.ops as usize).max(1)
                || r.wrong_source > 0
            {
                let msg = format!(
                    "{} {} {}: sanity check: {} ops, {errors} errors ({:?}), {} backends seen, {} wrong reply sources",
                    m.label,
                    kind.name(),
                    mode.name(),
                    r.ops,
                    r.first_error,
                    r.backends.len(),
                    r.wrong_source
                );
                progress(&msg);
                notes.push(msg);
            }
        }
    }

    // The measurement: repetitions, each with every kind and every mode (rotated).
    let mut runs: Vec<(Kind, Mode, usize, LoadReport)> = Vec::new();
    for rep in 0..cfg.reps {
        for &kind in m.kinds {
            let mut order = m.modes.to_vec();
            order.rotate_left(rep % m.modes.len().max(1));
            for mode in order {
                check_interrupted()?;
                let (ns, cg) = client(mode)?;
                let (to, _) = targets(mode, kind);
                let r = runner.run(
                    &ns,
                    cg.as_deref(),
                    kind,
                    &to,
                    cfg.duration,
                    cfg.warmup,
                    cfg.threads,
                )?;
                progress(format!(
                    "{} rep {}/{} {:9} {:14} {:>9.0} ops/s  p50 {:>7.1} us  p99 {:>7.1} us{}",
                    m.label,
                    rep + 1,
                    cfg.reps,
                    kind.name(),
                    mode.name(),
                    r.ops_per_s,
                    r.latency_us.p50,
                    r.latency_us.p99,
                    if r.errors.is_empty() {
                        String::new()
                    } else {
                        format!("  errors {:?}", r.errors)
                    }
                ));
                runs.push((kind, mode, rep, r));
            }
        }
    }
    let mut rows = Vec::new();
    for &kind in m.kinds {
        for &mode in m.modes {
            let mine: Vec<(usize, &LoadReport)> = runs
                .iter()
                .filter(|r| r.0 == kind && r.1 == mode)
                .map(|r| (r.2, &r.3))
                .collect();
            let direct = |rep: usize| {
                runs.iter()
                    .find(|r| r.0 == kind && r.1 == Mode::Direct && r.2 == rep)
                    .map(|r| &r.3)
            };
            let target = targets(mode, kind).1;
            rows.push(datapath_row(m.n, kind, mode, target, &mine, direct));
        }
    }
    Ok(rows)
}

/// One (N, kind, mode) from its runs `(repetition, report)`, each also as a ratio to
/// `direct(repetition)`, the direct run of the same repetition.
fn datapath_row<'a>(
    n: usize,
    kind: Kind,
    mode: Mode,
    target: String,
    mine: &[(usize, &LoadReport)],
    direct: impl Fn(usize) -> Option<&'a LoadReport>,
) -> DatapathRow {
    let ratio = |f: &dyn Fn(&LoadReport) -> f64| -> Spread {
        Spread::of(
            &mine
                .iter()
                .filter_map(|(rep, r)| direct(*rep).map(|d| f(r) / f(d)))
                .collect::<Vec<_>>(),
        )
    };
    let backends: BTreeSet<&String> = mine.iter().flat_map(|(_, r)| r.backends.keys()).collect();
    DatapathRow {
        services: n,
        kind,
        mode,
        target,
        ops_per_s: Spread::of(&mine.iter().map(|(_, r)| r.ops_per_s).collect::<Vec<_>>()),
        p50_us: Spread::of(
            &mine
                .iter()
                .map(|(_, r)| r.latency_us.p50)
                .collect::<Vec<_>>(),
        ),
        p99_us: Spread::of(
            &mine
                .iter()
                .map(|(_, r)| r.latency_us.p99)
                .collect::<Vec<_>>(),
        ),
        ratio_ops_per_s: ratio(&|r| r.ops_per_s),
        ratio_p50: ratio(&|r| r.latency_us.p50),
        ratio_p99: ratio(&|r| r.latency_us.p99),
        backends_seen: backends.len(),
        errors: mine.iter().map(|(_, r)| r.error_count()).sum(),
        runs: mine.iter().map(|(_, r)| (*r).clone()).collect(),
    }
}

pub(super) fn wait_ready(agent: &mut Agent, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        check_interrupted()?;
        if agent.log().contains(" ready services=") {
            return Ok(start.elapsed());
        }
        if !agent.is_running() {
            bail!(
                "the agent exited before it was ready; log tail:\n{}",
                agent.log_tail(30)
            );
        }
        if start.elapsed() > timeout {
            bail!(
                "the agent was not ready within {timeout:?}; log tail:\n{}",
                agent.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ----------------------------------------------------------------------------- control plane

fn control(c: &SynthCluster, cfg: &Config, work: &Path, results: &mut Results) -> Result<()> {
    let n = c.services;
    let changing = c.changing();
    let change = |g: usize| Change {
        service: changing,
        generation: g as u32,
    };

    // iptables, with the data path's backend, and the other one up to its cap.
    let mut backends = vec![cfg.iptables_backend];
    let other = if cfg.iptables_backend == IptablesBackend::Legacy {
        IptablesBackend::Nft
    } else {
        IptablesBackend::Legacy
    };
    if n <= cfg.other_backend_max {
        backends.push(other);
    }
    let base = work.join("cp-ipt-base.rules");
    std::fs::write(&base, iptables::base())?;
    let full_text = iptables::full(c, None);
    let full = work.join("cp-ipt-full.rules");
    std::fs::write(&full, &full_text)?;
    let partial_rules = iptables::rule_count(&iptables::partial(c, change(1), change(0)));
    for backend in backends {
        let restore = backend.restore();
        let (mut cold, mut full_sync, mut partial) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..cfg.control_reps {
            check_interrupted()?;
            let ns = NetNs::new()?;
            util::run_in(
                &ns.path(),
                restore,
                &["--noflush"],
                Some(&base),
                TOOL_TIMEOUT,
                work,
            )?;
            let ms = util::timed_in(
                &ns.path(),
                restore,
                &["--noflush", "--counters"],
                Some(&full),
                TOOL_TIMEOUT,
                work,
            )?;
            progress(format!(
                "N={n} iptables ({}) cold load {}/{}: {ms:.1} ms",
                backend.name(),
                rep + 1,
                cfg.control_reps
            ));
            cold.push(ms);
            if rep > 0 {
                continue;
            }
            // Changes: first full syncs, then partial syncs, each one endpoint further.
            let mut g = 0;
            let fulls = cfg.control_reps.max(1);
            for k in 0..fulls + cfg.changes {
                check_interrupted()?;
                g += 1;
                let file = work.join("cp-ipt-change.rules");
                let is_full = k < fulls;
                if is_full {
                    std::fs::write(&file, iptables::full(c, Some(change(g))))?;
                } else {
                    std::fs::write(&file, iptables::partial(c, change(g), change(g - 1)))?;
                }
                let ms = util::timed_in(
                    &ns.path(),
                    restore,
                    &["--noflush", "--counters"],
                    Some(&file),
                    TOOL_TIMEOUT,
                    work,
                )?;
                if is_full {
                    full_sync.push(ms)
                } else {
                    partial.push(ms)
                }
            }
            // The rules must now hold the last change: check one address.
            let saved = util::run_in(
                &ns.path(),
                backend.save(),
                &["-t", "nat"],
                None,
                TOOL_TIMEOUT,
                work,
            )?;
            let want = format!(
                "--to-destination {}:",
                c.endpoint(changing, 0, Some(change(g)))
            );
            if !saved.contains(&want) {
                bail!(
                    "iptables ({}) does not hold the last change ({want})",
                    backend.name()
                );
            }
            progress(format!(
                "N={n} iptables ({}) full sync median {:.1} ms, partial sync median {:.1} ms",
                backend.name(),
                Spread::of(&full_sync).median,
                Spread::of(&partial).median
            ));
        }
        results.control_plane.iptables.push(IptablesRow {
            services: n,
            backend,
            rules: iptables::rule_count(&full_text),
            restore_bytes: full_text.len(),
            cold_ms: Spread::of(&cold),
            full_sync_ms: Spread::of(&full_sync),
            partial_sync_ms: Spread::of(&partial),
            partial_rules,
        });
    }
    let _ = std::fs::remove_file(&full);
    drop(full_text);

    // nft: cold loads, then single-endpoint transactions.
    let script_text = nft::full(c, None);
    let script = work.join("cp-nft-full.nft");
    std::fs::write(&script, &script_text)?;
    let script_arg = script.to_string_lossy().into_owned();
    let (mut cold, mut changes) = (Vec::new(), Vec::new());
    for rep in 0..cfg.control_reps {
        check_interrupted()?;
        let ns = NetNs::new()?;
        let ms = util::timed_in(
            &ns.path(),
            "nft",
            &["-f", &script_arg],
            None,
            TOOL_TIMEOUT,
            work,
        )?;
        progress(format!(
            "N={n} nft cold load {}/{}: {ms:.1} ms",
            rep + 1,
            cfg.control_reps
        ));
        cold.push(ms);
        if rep > 0 {
            continue;
        }
        for g in 1..=cfg.changes {
            check_interrupted()?;
            let file = work.join("cp-nft-change.nft");
            let before = if g >= 2 { Some(change(g - 2)) } else { None };
            std::fs::write(&file, nft::change_tx(c, change(g), change(g - 1), before))?;
            let arg = file.to_string_lossy().into_owned();
            changes.push(util::timed_in(
                &ns.path(),
                "nft",
                &["-f", &arg],
                None,
                TOOL_TIMEOUT,
                work,
            )?);
        }
        if cfg.changes > 0 {
            let chain = nft::service_chain(c, changing, &super::model::TCP);
            let listed = util::run_in(
                &ns.path(),
                "nft",
                &["list", "chain", "ip", "kube-proxy", &chain],
                None,
                TOOL_TIMEOUT,
                work,
            )?;
            let want = format!("__{}/", c.endpoint(changing, 0, Some(change(cfg.changes))));
            if !listed.contains(&want) {
                bail!("nft does not hold the last change ({want})");
            }
            progress(format!(
                "N={n} nft change median {:.1} ms",
                Spread::of(&changes).median
            ));
        }
    }
    results.control_plane.nft.push(NftRow {
        services: n,
        rules: nft::rule_count(&script_text),
        script_bytes: script_text.len(),
        cold_ms: Spread::of(&cold),
        change_ms: Spread::of(&changes),
    });
    let _ = std::fs::remove_file(&script);
    Ok(())
}

// ----------------------------------------------------------------------------- agent: memory, changes

fn agent_phase(
    c: &SynthCluster,
    dir: &ManifestDir,
    cfg: &Config,
    results: &mut Results,
) -> Result<()> {
    let n = c.services;
    let starts = if cfg.memory {
        cfg.control_reps.max(1)
    } else {
        1
    };
    let mut row = MemoryRow {
        services: n,
        endpoints: c.total_endpoints(),
        ..Default::default()
    };
    let (mut ready, mut rss, mut hwm, mut maps, mut fd_maps) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for rep in 0..starts {
        check_interrupted()?;
        let cgroup = TestCgroup::new()?;
        let pins = PinDir::new()?;
        let mut agent_cfg = AgentConfig::new(dir.path(), cgroup.path(), pins.path(), NODE_NAME);
        // In the host's network namespace: ClusterIP only, no TC on the host's devices.
        agent_cfg.extra_args = ["--poll-interval-ms", "50", "--devices", "none"]
            .map(String::from)
            .to_vec();
        let mut agent = Agent::start(&agent_cfg)?;
        let took = wait_ready(&mut agent, cfg.agent_ready_timeout)?;
        // Let the allocator and the runtime settle after the initial sync.
        util::sleep(Duration::from_millis(300))?;
        let (r, h) = util::rss_bytes(agent.pid())?;
        let m = util::pinned_map_memory(pins.path())?;
        let fd = util::process_map_memory(agent.pid())?;
        progress(format!(
            "N={n} agent {}/{starts}: ready in {:.0} ms, RSS {:.1} MiB (peak {:.1}), BPF maps {:.1} MiB",
            rep + 1,
            took.as_secs_f64() * 1000.0,
            mib(r),
            mib(h),
            mib(m.iter().map(|x| x.bytes_memlock).sum())
        ));
        ready.push(took.as_secs_f64() * 1000.0);
        rss.push(mib(r));
        hwm.push(mib(h));
        maps.push(mib(m.iter().map(|x| x.bytes_memlock).sum()));
        fd_maps.push(mib(fd));
        row.maps = m;
        if rep == 0 && cfg.control && cfg.changes > 0 {
            let row = agent_changes(&mut agent, c, dir, cfg)?;
            results.control_plane.agent.push(row);
            // Back to the original slice for the next start.
            synth_files::write_changing(dir, c, None)?;
        }
        agent.stop()?;
        agent.uninstall()?;
    }
    if cfg.memory {
        row.ready_ms = Spread::of(&ready);
        row.rss_mib = Spread::of(&rss);
        row.hwm_mib = Spread::of(&hwm);
        row.bpf_maps_mib = Spread::of(&maps);
        row.agent_fd_maps_mib = Spread::of(&fd_maps);
        results.memory.push(row);
    }
    Ok(())
}

const UPDATED: &str = "data path updated";

fn agent_changes(
    agent: &mut Agent,
    c: &SynthCluster,
    dir: &ManifestDir,
    cfg: &Config,
) -> Result<AgentChangeRow> {
    let n = c.services;
    let (mut lat, mut ops, mut changed, mut wall) = (vec![], vec![], vec![], vec![]);
    for g in 1..=cfg.changes {
        check_interrupted()?;
        let before = agent.log().matches(UPDATED).count();
        synth_files::write_changing(
            dir,
            c,
            Some(Change {
                service: c.changing(),
                generation: g as u32,
            }),
        )?;
        let start = Instant::now();
        let line = loop {
            check_interrupted()?;
            let log = agent.log();
            if log.matches(UPDATED).count() > before {
                wall.push(start.elapsed().as_secs_f64() * 1000.0);
                break log
                    .lines()
                    .rev()
                    .find(|l| l.contains(UPDATED))
                    .unwrap_or_default()
                    .to_string();
            }
            if !agent.is_running() {
                bail!("the agent exited; log tail:\n{}", agent.log_tail(30));
            }
            if start.elapsed() > cfg.agent_ready_timeout {
                bail!(
                    "the agent did not apply change {g} within {:?}; log tail:\n{}",
                    cfg.agent_ready_timeout,
                    agent.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let f = util::log_fields(&line);
        let get = |k: &str| {
            f.get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| anyhow!("no {k} in {line:?}"))
        };
        lat.push(get("latency_us")?);
        ops.push(get("map_ops")?);
        changed.push(get("changed")?);
    }
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = quantile(&sorted, 0.99);
    let row = AgentChangeRow {
        services: n,
        changes: lat.len(),
        latency_us: Spread::of(&lat),
        p99_us: p99,
        wall_ms: Spread::of(&wall),
        map_ops: Spread::of(&ops),
        frontends_changed: Spread::of(&changed),
    };
    progress(format!(
        "N={n} agent: one slice file changed -> maps: median {:.0} us, p99 {:.0} us (file written -> maps: {:.0} ms), {:.1} map ops",
        row.latency_us.median, row.p99_us, row.wall_ms.median, row.map_ops.median
    ));
    Ok(row)
}
