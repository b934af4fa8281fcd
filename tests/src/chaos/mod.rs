//! Chaos: the agent killed with SIGKILL at random points of its syncs.
//!
//! Two services whose backends stay ready (web over TCP, dns over UDP; one endpoint of
//! each comes and goes, its pod serving throughout) with clients using them the whole
//! time, next to churn: files of bulk services added, rewritten with new endpoints and
//! removed (large enough that a sync takes a while; some of their endpoints are web's
//! backend, so backends are shared), a service with session affinity whose endpoints
//! change, a service without endpoints coming and going. Either on the socket hooks
//! ([`DataPath::SocketHooks`]: a [`Cluster`], clients on the node in its cgroup) or on
//! the TC path ([`DataPath::NodePort`]: one node of a [`MultiNode`] with its agent on
//! `lan0`, web and dns NodePorts, clients outside the node).
//!
//! The very first start is killed at a random point. Then every cycle writes a few
//! changes, kills the agent with SIGKILL (three times in four at a random point of the
//! sync the change starts, else anywhere after the write), judges from the maps it
//! left whether the kill landed before, in the middle of or after the sync, sometimes
//! starts an agent and kills it too during its start, and starts the agent that must
//! repair everything. Once that one is ready:
//! - the maps hold exactly what `socklb plan` wants: `socklb status -o json` against
//!   `socklb plan -o json` entry by entry (both scopes), and the raw entry counts of
//!   the service, backend and affinity match maps (bpftool) equal to what those
//!   entries need, so that no entry no reader reaches is left ([`maps::Programmed`]);
//! - the pin directory holds exactly the pins of a clean start (no staging pin of a
//!   link), and the cgroup has socklb's five programs attached once each.
//!
//! At the end the agent stops, `socklb uninstall` must leave nothing (no pin, no
//! program on the cgroup, none of the TC links), and the clients must not have lost a
//! single connection or datagram.
//!
//! [`run`] is shared by the short end-to-end test (tests/tests/chaos.rs) and the long
//! run of the benchmark (`socklb-bench chaos`, `cargo xtask chaos`, a stage of
//! `cargo xtask bench`). Every random choice comes from one seed (printed), so a run
//! can be repeated; where a kill lands also depends on the machine's timing.

pub mod log;
pub mod maps;
pub mod objects;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng, rngs::StdRng};
use socklb_bench_results::{ChaosClient, ChaosResults, ChaosScale, Spread};

use crate::agent::{Agent, AgentConfig, SOCKLB_COMMAND_TIMEOUT, socklb, try_socklb_bin};
use crate::cluster::{Cluster, ClusterOptions, plan_of, status_of};
use crate::multinode::{
    AgentOptions, MultiNode, Origin, ServeSpec, TcpRun, UdpRun, node_addr, node_name,
};
use crate::netns::NetNs;
use crate::pins::PinDir;
use crate::report::{TcpProbe, TcpReport, UdpProbe, UdpReport};
use crate::tempdir::ManifestDir;
use log::{AGENT_LOG, ATTACHED, CHANGED, LogTail, UPDATED, wait_ready};
use maps::{
    Programmed, cgroup_programs, clean_pins, link_exists, link_id, link_problems, pin_problems,
};
use objects::{Churn, DNS_NODE_PORT, DNS_TARGET, WEB_NODE_PORT, WEB_TARGET};

/// The very first start is killed within this many milliseconds of its beginning.
const COLD_START_MS: f64 = 300.0;
/// Calibration: a change is applied once no sync came for this long.
const CALIBRATION_QUIET: Duration = Duration::from_millis(300);
/// How long an agent may take to get ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Which data path a run exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPath {
    /// A [`Cluster`]: the agent in the host's namespace with `--devices none`, the
    /// clients on the node in its cgroup, to the cluster IPs.
    SocketHooks,
    /// Node 1 of a one-node [`MultiNode`]: the agent in the node's namespace with its
    /// TC programs on `lan0`, the clients outside the node, to web's and dns's
    /// NodePorts.
    NodePort,
}

impl DataPath {
    /// The name in the results and on socklb-bench's command line.
    pub fn name(self) -> &'static str {
        match self {
            DataPath::SocketHooks => "socket-hooks",
            DataPath::NodePort => "node-port",
        }
    }
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub seed: u64,
    pub cycles: usize,
    pub datapath: DataPath,
    /// Files of bulk services (half of them present at the start).
    pub bulk_files: usize,
    pub bulk_services_per_file: usize,
    pub endpoints_per_bulk_service: usize,
    /// Share of cycles that also kill the next agent during its start.
    pub start_kill_share: f64,
    /// `--poll-interval-ms` of the agent.
    pub poll_interval_ms: u64,
    /// One line per cycle on stderr.
    pub progress: bool,
    /// Asked before each cycle: true ends the run with an error (Ctrl-C).
    pub interrupted: fn() -> bool,
}

impl ChaosOptions {
    /// `cycles` cycles on the socket hooks with the given seed, at the test's scale.
    pub fn new(seed: u64, cycles: usize) -> Self {
        Self {
            seed,
            cycles,
            datapath: DataPath::SocketHooks,
            bulk_files: 4,
            bulk_services_per_file: 500,
            endpoints_per_bulk_service: 3,
            start_kill_share: 0.3,
            poll_interval_ms: 50,
            progress: true,
            interrupted: || false,
        }
    }
}

/// `SOCKLB_CHAOS_SEED` when set, else a seed from the clock.
pub fn seed_from_env() -> u64 {
    std::env::var("SOCKLB_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// Where the agent's pins, cgroup and manifests are, and how to start it.
struct Env<'a> {
    manifests: &'a ManifestDir,
    pins: &'a PinDir,
    cgroup: &'a Path,
    /// Where `socklb uninstall` runs (the node's namespace for its TC links).
    netns: Option<&'a NetNs>,
    config: AgentConfig,
}

impl Env<'_> {
    fn plan(&self) -> Result<crate::multinode::Plan> {
        plan_of(self.manifests.path(), &self.config.node)
    }

    /// What the pinned maps hold.
    fn programmed(&self) -> Result<Programmed> {
        Programmed::read(&status_of(self.pins.path())?, self.pins.path())
    }

    /// The TC link pins in the pin directory.
    fn tc_pins(&self) -> Vec<String> {
        self.pins
            .entries()
            .into_iter()
            .filter(|p| p.starts_with("link_tc_"))
            .collect()
    }

    /// `socklb uninstall --cgroup CG --bpffs PINS` (in the node's namespace); fails
    /// unless it exits 0.
    fn uninstall(&self) -> Result<()> {
        let out = match self.netns {
            None => socklb([
                "uninstall".as_ref(),
                "--cgroup".as_ref(),
                self.cgroup.as_os_str(),
                "--bpffs".as_ref(),
                self.pins.path().as_os_str(),
            ])?,
            Some(ns) => {
                let mut cmd = Command::new(try_socklb_bin()?);
                cmd.arg("uninstall")
                    .arg("--cgroup")
                    .arg(self.cgroup)
                    .arg("--bpffs")
                    .arg(self.pins.path())
                    .env("NO_COLOR", "1");
                ns.output(cmd, None, SOCKLB_COMMAND_TIMEOUT)?
            }
        };
        if !out.status.success() {
            bail!(
                "socklb uninstall failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// The clients' figures so far.
#[derive(Default)]
struct Clients {
    tcp: ChaosClient,
    udp: ChaosClient,
}

fn add_tcp(c: &mut ChaosClient, r: &TcpReport) {
    c.attempts += r.attempts;
    c.ok += r.ok;
    for (k, v) in &r.errors {
        *c.errors.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &r.backends {
        *c.backends.entry(k.clone()).or_default() += v;
    }
}

fn add_udp(c: &mut ChaosClient, r: &UdpReport) {
    c.attempts += r.sent;
    c.ok += r.replies;
    for (k, v) in &r.errors {
        *c.errors.entry(k.clone()).or_default() += v;
    }
    if r.wrong_source > 0 {
        *c.errors.entry("WRONG_SOURCE".into()).or_default() += r.wrong_source;
    }
    for (k, v) in &r.backends {
        *c.backends.entry(k.clone()).or_default() += v;
    }
}

/// The clients' rounds: each runs for this long, then the next starts.
const ROUND_MS: u64 = 1500;

fn tcp_probe(to: SocketAddr) -> TcpProbe {
    TcpProbe::new(to)
        .duration_ms(ROUND_MS)
        .interval_ms(3)
        .timeout_ms(2000)
}

fn udp_probe(to: SocketAddr) -> UdpProbe {
    UdpProbe::new(to)
        .sockets(2)
        .count(2)
        .timeout_ms(2000)
        .duration_ms(ROUND_MS)
        .interval_ms(5)
}

/// Where one kill landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Landed {
    Before,
    Mid,
    After,
}

/// Spans measured on the running agents, from which kill delays are drawn.
struct Spans {
    /// A change written until its maps are written (the poll, the quiet wait, the
    /// re-read, the syncs).
    apply_ms: f64,
    /// [`CHANGED`] until the last [`UPDATED`] of the change: its syncs.
    sync_ms: f64,
    /// A start until ready.
    start_ms: Vec<f64>,
    /// [`ATTACHED`] until ready: adoption, cleanup and the first sync of a start.
    start_sync_ms: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

fn ms(d: f64) -> Duration {
    Duration::from_secs_f64(d.max(0.0) / 1000.0)
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

struct Run<'a> {
    opts: &'a ChaosOptions,
    env: Env<'a>,
    rng: StdRng,
    churn: Churn,
    results: ChaosResults,
    spans: Spans,
    /// The pins of a clean start.
    clean_pins: Vec<String>,
    /// The log tail of the agent killed last (shown with a divergence).
    killed_log: String,
}

impl Run<'_> {
    fn say(&self, msg: &str) {
        if self.opts.progress {
            eprintln!("chaos: {msg}");
        }
    }

    fn count(&mut self, landed: Landed) {
        let k = &mut self.results.kills;
        k.total += 1;
        match landed {
            Landed::Before => k.before_sync += 1,
            Landed::Mid => k.mid_sync += 1,
            Landed::After => k.after_sync += 1,
        }
    }

    /// Where a kill landed, from the maps it left.
    fn landed(&mut self, have: &Programmed, before: &Programmed, after: &Programmed) -> Landed {
        let l = if have == after {
            Landed::After
        } else if have == before {
            Landed::Before
        } else {
            Landed::Mid
        };
        self.count(l);
        l
    }

    fn kill(&mut self, agent: &mut Agent) -> Result<()> {
        agent.kill()?;
        self.killed_log = agent.log_tail(15);
        Ok(())
    }

    /// Kills the very first start (empty pin directory) at a random point, and starts
    /// the agent again; returns what happened, in words.
    fn cold_start(&mut self, agent: &mut Agent) -> Result<String> {
        let d = self.rng.random_range(0.0..=COLD_START_MS);
        std::thread::sleep(ms(d));
        self.kill(agent)?;
        let want = Programmed::wanted(&self.env.plan()?);
        let landed = if self.env.pins.entries().is_empty() {
            Landed::Before
        } else {
            match self.env.programmed() {
                Ok(p) if p == want => Landed::After,
                Ok(p) if p == Programmed::default() => Landed::Before,
                // Some maps not pinned yet (status cannot open them), or half written.
                _ => Landed::Mid,
            }
        };
        self.count(landed);
        self.results.kills.during_start += 1;
        let t = Instant::now();
        *agent = Agent::start(&self.env.config)?;
        if !wait_ready(agent, READY_TIMEOUT) {
            bail!("the agent did not get ready:\n{}", agent.log());
        }
        let ready = t.elapsed().as_secs_f64() * 1000.0;
        self.spans.start_ms.push(ready);
        Ok(format!(
            "the first start killed {d:.0} ms after it began: {landed:?}; the next one ready in {ready:.0} ms"
        ))
    }

    /// Half the bulk files written under the running agent, timed from the write to
    /// the agent's log lines for them: the spans kill delays are drawn from.
    fn calibrate(&mut self, agent: &Agent) -> Result<()> {
        let mut apply = Vec::new();
        let mut sync = Vec::new();
        for k in 0..self.churn.bulk_files().div_ceil(2) {
            let mut tail = LogTail::at_end(agent.log_path())?;
            self.churn.add_bulk(k, self.env.manifests, &mut self.rng)?;
            let t = Instant::now();
            let changed = tail
                .wait_for(CHANGED, READY_TIMEOUT)
                .map(|_| Instant::now());
            // A large change may be applied in several syncs (the agent starts one as
            // soon as the events it has are applied): up to the last of them.
            let updated = tail.last_of(UPDATED, CALIBRATION_QUIET, READY_TIMEOUT);
            let (Some(changed), Some(updated)) = (changed, updated) else {
                bail!(
                    "the agent did not apply bulk-{k} (or logged no {CHANGED:?}):\n{}",
                    agent.log_tail(20)
                );
            };
            apply.push((updated - t).as_secs_f64() * 1000.0);
            sync.push((updated - changed).as_secs_f64() * 1000.0);
        }
        self.results.bulk_apply_ms = Spread::of(&apply);
        self.results.bulk_sync_ms = Spread::of(&sync);
        self.spans.apply_ms = self.results.bulk_apply_ms.max;
        self.spans.sync_ms = self.results.bulk_sync_ms.max;
        Ok(())
    }

    /// Kills the running agent at a random point after a change was written: three
    /// times in four at a random point of the sync (from the line that hands the
    /// change to it, up to 30% past its calibrated length), else anywhere from the
    /// write to 30% past the calibrated time to apply. Returns where, in words.
    fn kill_after_write(
        &mut self,
        agent: &mut Agent,
        mut tail: LogTail,
        written: Instant,
    ) -> Result<String> {
        let what = if self.rng.random_bool(0.75) {
            let changed = tail.wait_for(CHANGED, ms(self.spans.apply_ms * 4.0));
            let seen = Instant::now();
            let d = self.rng.random_range(0.0..=self.spans.sync_ms * 1.3);
            sleep_until(seen + ms(d));
            match changed {
                Some(_) => format!("{d:.1} ms into the sync"),
                None => "when no sync came".to_string(),
            }
        } else {
            let d = self.rng.random_range(0.0..=self.spans.apply_ms * 1.3);
            sleep_until(written + ms(d));
            format!("{d:.0} ms after the write")
        };
        self.kill(agent)?;
        Ok(what)
    }

    /// Starts an agent and kills it at a random point of its start: half the time in
    /// the part after its programs are attached (adoption, cleanup, first sync), else
    /// anywhere from its start to 20% past the typical time to ready.
    fn kill_during_start(&mut self, agent: &mut Agent) -> Result<String> {
        *agent = Agent::start(&self.env.config)?;
        let started = Instant::now();
        let what = if self.rng.random_bool(0.5) {
            let mut tail = LogTail::from_start(agent.log_path())?;
            let attached = tail.wait_for(ATTACHED, READY_TIMEOUT).is_some();
            let seen = Instant::now();
            let span = median(&self.spans.start_sync_ms).max(self.spans.sync_ms);
            let d = self.rng.random_range(0.0..=span * 1.3);
            sleep_until(seen + ms(d));
            if attached {
                format!("{d:.1} ms after attaching")
            } else {
                "when it never attached".to_string()
            }
        } else {
            let d = self
                .rng
                .random_range(0.0..=median(&self.spans.start_ms) * 1.2);
            sleep_until(started + ms(d));
            format!("{d:.0} ms after its start")
        };
        self.kill(agent)?;
        self.results.kills.during_start += 1;
        Ok(what)
    }

    /// Starts the agent that must repair everything and waits until it is ready;
    /// returns the milliseconds it took.
    fn restart(&mut self, agent: &mut Agent) -> Result<f64> {
        *agent = Agent::start(&self.env.config)?;
        let t = Instant::now();
        let mut tail = LogTail::from_start(agent.log_path())?;
        let attached = tail
            .wait_for(ATTACHED, READY_TIMEOUT)
            .map(|_| Instant::now());
        if !wait_ready(agent, READY_TIMEOUT) {
            bail!("the restarted agent did not get ready:\n{}", agent.log());
        }
        let ready = Instant::now();
        let took = (ready - t).as_secs_f64() * 1000.0;
        self.spans.start_ms.push(took);
        if let Some(a) = attached {
            self.spans
                .start_sync_ms
                .push((ready - a).as_secs_f64() * 1000.0);
        }
        Ok(took)
    }

    /// The checks after a repair; what they found goes into the results and `line`.
    fn check(
        &mut self,
        agent: &Agent,
        cycle: usize,
        changes: &str,
        want: &Programmed,
        line: &mut String,
    ) -> Result<()> {
        let d = self.env.programmed()?.diff(want, 5);
        if !d.is_empty() {
            for x in &d {
                self.results
                    .divergences
                    .push(format!("cycle {cycle} ({changes}): {x}"));
            }
            line.push_str(&format!("; DIVERGES: {d:?}"));
            eprintln!(
                "chaos: cycle {cycle}: the agent killed last logged:\n{}\nthe new one:\n{}",
                self.killed_log,
                agent.log_tail(15)
            );
        }
        let mut leaks = pin_problems(&self.env.pins.entries(), &self.clean_pins);
        leaks.extend(link_problems(&cgroup_programs(self.env.cgroup)?));
        if !leaks.is_empty() {
            line.push_str(&format!("; LEAKS: {leaks:?}"));
            for x in leaks {
                self.results.leaks.push(format!("cycle {cycle}: {x}"));
            }
        }
        Ok(())
    }

    /// One cycle: changes, kills, the repair, the checks.
    fn cycle(&mut self, cycle: usize, agent: &mut Agent, want: &mut Programmed) -> Result<()> {
        let before = want.clone();
        let tail = LogTail::at_end(agent.log_path())?;
        let n = self.rng.random_range(1..=3);
        let changes = self.churn.changes(n, self.env.manifests, &mut self.rng)?;
        let written = Instant::now();
        let when = self.kill_after_write(agent, tail, written)?;
        let plan = self.env.plan()?;
        *want = Programmed::wanted(&plan);
        let scale = &mut self.results.scale;
        scale.max_frontends = scale.max_frontends.max(plan.frontends.len());
        let left = self.env.programmed()?;
        let landed = self.landed(&left, &before, want);
        let mut line = format!(
            "cycle {cycle}/{}: {changes}; killed {when}: {landed:?}",
            self.opts.cycles
        );
        if self.rng.random_bool(self.opts.start_kill_share) {
            let when = self.kill_during_start(agent)?;
            let again = self.env.programmed()?;
            let landed = self.landed(&again, &left, want);
            line.push_str(&format!("; restarted and killed {when}: {landed:?}"));
        }
        let took = self.restart(agent)?;
        line.push_str(&format!("; ready in {took:.0} ms"));
        self.check(agent, cycle, &changes, want, &mut line)?;
        if let Some(status) = agent.try_wait()? {
            bail!(
                "cycle {cycle}: the agent exited ({status}):\n{}",
                agent.log()
            );
        }
        self.results.cycles = cycle;
        self.say(&line);
        Ok(())
    }
}

/// Runs the chaos cycles (see the module's documentation) and returns what happened;
/// an `Err` is a failure to run (the sandbox, a tool, an agent that does not start),
/// not a finding.
pub fn run(opts: &ChaosOptions) -> Result<ChaosResults> {
    match opts.datapath {
        DataPath::SocketHooks => run_socket_hooks(opts),
        DataPath::NodePort => run_node_port(opts),
    }
}

fn agent_args(opts: &ChaosOptions) -> Vec<String> {
    vec![
        "--poll-interval-ms".into(),
        opts.poll_interval_ms.to_string(),
    ]
}

fn pods(third: u8, base: [u8; 3]) -> [Ipv4Addr; 3] {
    base.map(|x| Ipv4Addr::new(10, 244, third, x))
}

fn run_socket_hooks(opts: &ChaosOptions) -> Result<ChaosResults> {
    let started = Instant::now();
    let churn = Churn::new(
        pods(0, [11, 12, 13]),
        pods(0, [21, 22, 23]),
        None,
        false,
        opts.bulk_files,
        opts.bulk_services_per_file,
        opts.endpoints_per_bulk_service,
    );
    // Only the stable services are in the directory the cluster starts from: their
    // endpoints get pods. Every other endpoint is an address no client uses.
    let src = ManifestDir::new()?;
    churn.initial(&src)?;
    let cluster_opts = ClusterOptions {
        agent_args: agent_args(opts),
        agent_env: vec![("RUST_LOG".into(), AGENT_LOG.into())],
        ..Default::default()
    };
    let mut c = Cluster::start_with(src.path(), &cluster_opts)?;
    let env = Env {
        manifests: &c.manifests,
        pins: &c.pins,
        cgroup: c.cgroup.path(),
        netns: None,
        config: c.agent.config().clone(),
    };
    let web = SocketAddr::new(objects::WEB_IP.parse()?, objects::WEB_PORT);
    let dns = SocketAddr::new(objects::DNS_IP.parse()?, objects::DNS_PORT);
    let (sandbox, cgroup) = (&c.sandbox, &c.cgroup);
    let tcp = move || sandbox.tcp_probe(Some(cgroup), &tcp_probe(web));
    let udp = move || sandbox.udp_probe(Some(cgroup), &udp_probe(dns));
    let mut results = drive(opts, env, churn, &mut c.agent, (web, &tcp), (dns, &udp))?;
    results.elapsed_s = started.elapsed().as_secs_f64();
    Ok(results)
}

fn run_node_port(opts: &ChaosOptions) -> Result<ChaosResults> {
    let started = Instant::now();
    let churn = Churn::new(
        pods(1, [11, 12, 13]),
        pods(1, [21, 22, 23]),
        Some(node_name(1)),
        true,
        opts.bulk_files,
        opts.bulk_services_per_file,
        opts.endpoints_per_bulk_service,
    );
    let mut mn = MultiNode::builder()
        .nodes(1)
        .pods(churn.web_pods.iter().chain(&churn.dns_pods).copied())
        .build()?;
    mn.serve_all(&ServeSpec::new(&[WEB_TARGET], &[DNS_TARGET]))?;
    churn.initial(mn.manifests())?;
    let node = mn.node(1);
    let config = mn.agent_config(
        1,
        &AgentOptions {
            extra_args: agent_args(opts),
            env: vec![("RUST_LOG".into(), AGENT_LOG.into())],
            ..AgentOptions::default()
        },
    )?;
    // Started here, not by the MultiNode: this agent is killed and replaced all along.
    // Dropped before `mn` (declared after it).
    let mut agent = Agent::start(&config)?;
    let env = Env {
        manifests: mn.manifests(),
        pins: node.pins(),
        cgroup: node.cgroup().path(),
        netns: Some(node.netns()),
        config,
    };
    let web = SocketAddr::new(node_addr(1).into(), WEB_NODE_PORT);
    let dns = SocketAddr::new(node_addr(1).into(), DNS_NODE_PORT);
    let mn = &mn;
    let tcp = move || {
        let run = TcpRun {
            probe: tcp_probe(web),
            ..TcpRun::new(web)
        };
        mn.tcp(Origin::Client, &run).map(|r| r.report)
    };
    let udp = move || {
        let run = UdpRun {
            probe: udp_probe(dns),
            ..UdpRun::new(dns)
        };
        mn.udp(Origin::Client, &run).map(|r| r.report)
    };
    let mut results = drive(opts, env, churn, &mut agent, (web, &tcp), (dns, &udp))?;
    results.elapsed_s = started.elapsed().as_secs_f64();
    Ok(results)
}

type Probe<'a, R> = (SocketAddr, &'a (dyn Fn() -> Result<R> + Sync));

/// The run on a started topology: `agent` has just been started on an empty pin
/// directory; the clients run `tcp` and `udp` in rounds until the cycles are done.
fn drive(
    opts: &ChaosOptions,
    env: Env<'_>,
    churn: Churn,
    agent: &mut Agent,
    tcp: Probe<'_, TcpReport>,
    udp: Probe<'_, UdpReport>,
) -> Result<ChaosResults> {
    let mut run = Run {
        opts,
        env,
        rng: StdRng::seed_from_u64(opts.seed),
        results: ChaosResults {
            seed: opts.seed,
            datapath: opts.datapath.name().into(),
            profile: crate::agent::target_profile_dir()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default(),
            scale: ChaosScale {
                stable_services: 2,
                bulk_files: churn.bulk_files(),
                bulk_services_per_file: churn.services_per_file,
                endpoints_per_bulk_service: churn.endpoints_per_service,
                max_frontends: 0,
            },
            ..Default::default()
        },
        churn,
        spans: Spans {
            apply_ms: 0.0,
            sync_ms: 0.0,
            start_ms: Vec::new(),
            start_sync_ms: Vec::new(),
        },
        clean_pins: Vec::new(),
        killed_log: String::new(),
    };
    run.say(&format!(
        "seed {} (SOCKLB_CHAOS_SEED={} repeats it), {:?}, {} cycles, {} bulk files of {} services",
        opts.seed,
        opts.seed,
        opts.datapath,
        opts.cycles,
        run.churn.bulk_files(),
        run.churn.services_per_file
    ));
    let line = run.cold_start(agent)?;
    run.say(&line);
    let tc = run.env.tc_pins();
    // Ingress and egress of both families on the one device.
    let want_tc = if opts.datapath == DataPath::NodePort {
        4
    } else {
        0
    };
    if tc.len() != want_tc || tc.iter().any(|p| p.ends_with("_new")) {
        bail!("{want_tc} TC link pins expected after a start: {tc:?}");
    }
    run.clean_pins = clean_pins(&tc);
    let d = pin_problems(&run.env.pins.entries(), &run.clean_pins);
    if !d.is_empty() {
        bail!("the pins are not what a clean start should pin: {d:?}");
    }
    run.env
        .manifests
        .write("aff.yaml", &run.churn.aff())
        .context("writing aff.yaml")?;
    run.calibrate(agent)?;
    run.say(&format!(
        "calibration: a bulk file applied in {:.0} ms, its sync {:.1} ms",
        run.spans.apply_ms, run.spans.sync_ms
    ));
    let plan = run.env.plan()?;
    let mut want = Programmed::wanted(&plan);
    let d = run.env.programmed()?.diff(&want, 5);
    if !d.is_empty() {
        bail!("before the cycles, the maps differ from the plan: {d:?}");
    }
    run.results.scale.max_frontends = plan.frontends.len();
    // A start with nothing to repair: from attaching to ready is about one sync.
    run.spans.start_sync_ms.push(run.spans.sync_ms);

    let stop = AtomicBool::new(false);
    let clients = Mutex::new(Clients::default());
    let outcome: Result<()> = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let r = (tcp.1)();
                let mut cl = clients.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(r) => add_tcp(&mut cl.tcp, &r),
                    Err(e) => {
                        *cl.tcp.errors.entry("PROBE_FAILED".into()).or_default() += 1;
                        eprintln!("chaos: the TCP probe failed: {e:#}");
                    }
                }
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let r = (udp.1)();
                let mut cl = clients.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(r) => add_udp(&mut cl.udp, &r),
                    Err(e) => {
                        *cl.udp.errors.entry("PROBE_FAILED".into()).or_default() += 1;
                        eprintln!("chaos: the UDP probe failed: {e:#}");
                    }
                }
            }
        });
        let r = (|| -> Result<()> {
            std::thread::sleep(Duration::from_millis(300));
            for cycle in 1..=opts.cycles {
                if (opts.interrupted)() {
                    bail!("interrupted after {} cycles", cycle - 1);
                }
                run.cycle(cycle, agent, &mut want)?;
            }
            // The clients run a little longer on the last agent.
            std::thread::sleep(Duration::from_millis(500));
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        r
    });
    outcome?;
    let cl = clients.into_inner().unwrap_or_else(|e| e.into_inner());
    run.results.tcp = ChaosClient {
        to: tcp.0.to_string(),
        ..cl.tcp
    };
    run.results.udp = ChaosClient {
        to: udp.0.to_string(),
        ..cl.udp
    };
    // The first start after the cold kill had nothing of a running agent to repair.
    run.results.repair_ms = Spread::of(run.spans.start_ms.get(1..).unwrap_or_default());
    run.results.repair_sync_ms = Spread::of(run.spans.start_sync_ms.get(1..).unwrap_or_default());

    // A clean stop and uninstall must leave nothing.
    let tc_links: Vec<u64> = run
        .env
        .tc_pins()
        .iter()
        .map(|p| link_id(&run.env.pins.pin(p)))
        .collect::<Result<_>>()?;
    agent.stop()?;
    run.env.uninstall()?;
    let left = &mut run.results.left_after_uninstall;
    if run.env.pins.exists() {
        left.push(format!("pins: {:?}", run.env.pins.entries()));
    }
    let progs = cgroup_programs(run.env.cgroup)?;
    if !progs.is_empty() {
        left.push(format!("programs attached to the cgroup: {progs:?}"));
    }
    for id in tc_links {
        if link_exists(id) {
            left.push(format!("TC link {id}"));
        }
    }
    Ok(run.results)
}
