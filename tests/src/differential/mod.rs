//! Differential testing of the kernel against the model: random Services,
//! EndpointSlices and policies ([`generate`]) programmed through the agent, then every
//! frontend of `socklb plan -o json` probed through the real socket hooks and the TC
//! ingress program the agent attached, every outcome judged against what the plan
//! allows ([`oracle`]).
//!
//! The sandbox is one network namespace (the node) with a veth `lan0` (the node's
//! address; its peer stays in the namespace) and a `local` route for the whole pod
//! block, so every backend address is the node's own: one reflector per backend port
//! (`socklb-diffprobe reflect`, outside the cgroup) tells each client which backend it
//! reached ([`sock`]). The agent runs in that namespace with the test's cgroup, pin
//! directory and manifest directory, its TC programs on `lan0`. Socket probes run as
//! `socklb-diffprobe probe` in the namespace and the cgroup; TC probes run the
//! agent's own ingress program (found from its link pin) through BPF_PROG_TEST_RUN
//! on a thread inside the namespace ([`tc`]).
//!
//! Round after round the generator rewrites some Services (new versions, new
//! endpoints only, removals), the run waits until the maps hold what the plan wants
//! (`socklb status` against `socklb plan`, entry by entry, and the raw map entry
//! counts), then probes. A divergence is printed with the seed, the round, the plan
//! entry and the Service's objects; `SOCKLB_DIFF_SEED=N` repeats a run's choices.
//!
//! [`run`] is shared by the end-to-end test (tests/tests/differential.rs) and the
//! benchmark (`socklb-bench differential`, `cargo xtask differential`, a stage of
//! `cargo xtask bench`).

pub mod generate;
pub mod oracle;
pub mod sock;
pub mod tc;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::{SeedableRng, rngs::StdRng};
use socklb_bench_results::DifferentialResults;

use crate::agent::{Agent, AgentConfig, SOCKLB_COMMAND_TIMEOUT, socklb, target_profile_dir};
use crate::cgroup::TestCgroup;
use crate::chaos::maps::Programmed;
use crate::child::{Child, SpawnOpts};
use crate::cluster::status_of;
use crate::multinode::Plan;
use crate::netns::NetNs;
use crate::pins::PinDir;
use crate::tempdir::{ManifestDir, TempDir};
use generate::{Addresses, Case, GenOptions, Generator, NODE, TARGET_PORTS};
use oracle::{Clients, Coverage, Divergence, PlanJson, SockProbe, TcOutcome, TcProbe};

/// The node's device.
pub const DEVICE: &str = "lan0";
const PEER: &str = "lan0p";
/// Divergences kept in full in the results (all are counted).
const KEPT: usize = 50;
/// How long a round waits for the maps to match the plan.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// What a run does.
#[derive(Clone, Debug)]
pub struct DiffOptions {
    pub seed: u64,
    /// Rounds run until at least this many cases were written.
    pub cases: usize,
    pub generator: GenOptions,
    /// Socket probe targets run at once.
    pub parallel: usize,
    /// One line per round on stderr.
    pub progress: bool,
    /// Asked before each round: true ends the run with an error (Ctrl-C).
    pub interrupted: fn() -> bool,
}

impl DiffOptions {
    pub fn new(seed: u64, cases: usize) -> Self {
        Self {
            seed,
            cases,
            generator: GenOptions::default(),
            parallel: 4,
            progress: true,
            interrupted: || false,
        }
    }
}

/// `SOCKLB_DIFF_SEED` when set, else a seed from the clock.
pub fn seed_from_env() -> u64 {
    std::env::var("SOCKLB_DIFF_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// The `socklb-diffprobe` binary: `$SOCKLB_DIFFPROBE_BIN`, else next to the running
/// executable's profile directory.
pub fn diffprobe_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SOCKLB_DIFFPROBE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let p = target_profile_dir()
        .context("cannot find the current executable")?
        .join("socklb-diffprobe");
    if !p.is_file() {
        bail!(
            "{} not found: build it first: cargo build -p socklb-tests --bins (or set SOCKLB_DIFFPROBE_BIN)",
            p.display()
        );
    }
    Ok(p)
}

/// Everything the run created. Fields drop in order: the agent first, the reflector,
/// then the pins (TC and socket links unpinned), the cgroup, the namespace, the
/// directories.
struct Sandbox {
    agent: Agent,
    _reflector: Child,
    pins: PinDir,
    cgroup: TestCgroup,
    netns: NetNs,
    /// What the agent watches.
    manifests: ManifestDir,
    /// The same objects with internalTrafficPolicy Cluster (the oracle's cluster plan).
    cluster_manifests: ManifestDir,
    work: TempDir,
    ifindex: u32,
}

impl Sandbox {
    fn new() -> Result<Sandbox> {
        let a = Addresses;
        let netns = NetNs::new()?;
        let mac = tc::DEVICE_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        netns.ip(["link", "add", DEVICE, "type", "veth", "peer", "name", PEER])?;
        netns.ip(["link", "set", DEVICE, "address", &mac])?;
        netns.ip([
            "addr",
            "add",
            &format!("{}/{}", a.node(), a.node_prefix()),
            "dev",
            DEVICE,
        ])?;
        netns.ip(["link", "set", PEER, "up"])?;
        netns.ip(["link", "set", DEVICE, "up"])?;
        // Every pod address is this node's own: the reflector answers for all.
        netns.ip(["route", "add", "local", a.pod_block(), "dev", "lo"])?;
        let ifindex = ifindex_in(&netns, DEVICE)?;

        let manifests = ManifestDir::new()?;
        let cluster_manifests = ManifestDir::new()?;
        let node = builders_text(&[generate::node_object()]);
        manifests.write("node.yaml", &node)?;
        cluster_manifests.write("node.yaml", &node)?;
        let work = TempDir::new("differential")?;

        let mut cmd = Command::new(diffprobe_bin()?);
        cmd.arg("reflect")
            .arg("--ports")
            .arg(
                TARGET_PORTS
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .stdout(Stdio::piped());
        let mut reflector = Child::spawn(cmd, &SpawnOpts::new().netns(netns.path()))?;
        reflector
            .read_line(Duration::from_secs(10))
            .context("the reflector did not get ready")?;

        let cgroup = TestCgroup::new()?;
        let pins = PinDir::new()?;
        let mut config = AgentConfig::new(manifests.path(), cgroup.path(), pins.path(), NODE)
            .in_netns(netns.path());
        config.extra_args = vec![
            "--devices".into(),
            DEVICE.into(),
            "--poll-interval-ms".into(),
            "50".into(),
        ];
        let mut agent = Agent::start(&config)?;
        if !agent.wait_for_log("ready", Duration::from_secs(60)) {
            bail!("the agent did not get ready:\n{}", agent.log_tail(40));
        }
        Ok(Sandbox {
            agent,
            _reflector: reflector,
            pins,
            cgroup,
            netns,
            manifests,
            cluster_manifests,
            work,
            ifindex,
        })
    }

    /// `socklb plan -o json` of `dir`: the oracle's form and the chaos checker's.
    fn plan(&self, dir: &Path) -> Result<(PlanJson, Plan)> {
        let out = socklb([
            "plan".as_ref(),
            "--manifests".as_ref(),
            dir.as_os_str(),
            "--node".as_ref(),
            NODE.as_ref(),
            "-o".as_ref(),
            "json".as_ref(),
        ])?;
        if !out.status.success() {
            bail!(
                "socklb plan failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((
            serde_json::from_slice(&out.stdout).context("socklb plan -o json")?,
            serde_json::from_slice(&out.stdout).context("socklb plan -o json")?,
        ))
    }

    /// Waits until the maps hold what `plan` wants; the differences if they never do.
    fn wait_synced(&mut self, plan: &Plan) -> Result<Vec<String>> {
        let want = Programmed::wanted(plan);
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            if let Some(status) = self.agent.try_wait()? {
                bail!("the agent exited ({status}):\n{}", self.agent.log_tail(40));
            }
            let have = Programmed::read(&status_of(self.pins.path())?, self.pins.path())?;
            let d = have.diff(&want, 5);
            if d.is_empty() {
                return Ok(d);
            }
            if Instant::now() >= deadline {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the socket probes in the namespace and the cgroup.
    fn sock_probes(&self, probes: &[SockProbe], parallel: usize) -> Result<Vec<Vec<String>>> {
        let reqs: Vec<sock::ProbeRequest> = probes
            .iter()
            .map(|p| sock::ProbeRequest {
                to: p.to,
                protocol: p.protocol.clone(),
                n: p.n,
            })
            .collect();
        let file = self.work.path().join("requests.json");
        std::fs::write(&file, serde_json::to_vec(&reqs)?)?;
        let mut cmd = Command::new(diffprobe_bin()?);
        cmd.arg("probe")
            .arg("--requests")
            .arg(&file)
            .arg("--parallel")
            .arg(parallel.to_string());
        let out = self
            .netns
            .output(cmd, Some(self.cgroup.path()), Duration::from_secs(600))?;
        if !out.status.success() {
            bail!(
                "socklb-diffprobe probe failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let got: Vec<Vec<String>> =
            serde_json::from_slice(&out.stdout).context("socklb-diffprobe probe's output")?;
        if got.len() != probes.len() {
            bail!("{} outcomes for {} probes", got.len(), probes.len());
        }
        Ok(got)
    }

    /// Runs the TC probes through the agent's ingress program.
    fn tc_probes(&self, probes: &[TcProbe]) -> Result<Vec<TcOutcome>> {
        let pin = self.pins.pin(&format!("link_tc_ingress_{}", self.ifindex));
        let ifindex = self.ifindex;
        tc::in_netns(&self.netns.path(), || {
            let prog = tc::program_of_link_pin(&pin)?;
            let mut out = Vec::with_capacity(probes.len());
            for p in probes {
                let mut o = TcOutcome {
                    runs: Vec::new(),
                    frames: Vec::new(),
                };
                for k in 0..p.n {
                    let src = std::net::SocketAddr::new(p.src.ip(), p.src.port() + k as u16);
                    let f = tc::frame(src, p.dst, p.proto)?;
                    let first = tc::test_run(&prog, ifindex, &f)?;
                    let again = tc::test_run(&prog, ifindex, &f)?;
                    o.runs.push((first, again));
                    o.frames.push(f);
                }
                out.push(o);
            }
            Ok(out)
        })
    }

    fn uninstall(&self) -> Result<()> {
        let mut cmd = Command::new(crate::agent::try_socklb_bin()?);
        cmd.arg("uninstall")
            .arg("--cgroup")
            .arg(self.cgroup.path())
            .arg("--bpffs")
            .arg(self.pins.path())
            .env("NO_COLOR", "1");
        let out = self.netns.output(cmd, None, SOCKLB_COMMAND_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "socklb uninstall failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

fn builders_text(objects: &[serde_json::Value]) -> String {
    socklb_core::builders::manifest_text(objects)
}

fn ifindex_in(ns: &NetNs, dev: &str) -> Result<u32> {
    let out = ns.ip(["-j", "link", "show", dev])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v[0]["ifindex"]
        .as_u64()
        .map(|i| i as u32)
        .with_context(|| format!("no ifindex for {dev}: {v}"))
}

/// A divergence in full: what happened, the objects, how to repeat.
fn full(d: &Divergence, round: usize, opts: &DiffOptions, g: &Generator) -> String {
    let objects = g
        .slots
        .iter()
        .flatten()
        .find(|c| c.key() == d.service)
        .map(Case::text)
        .unwrap_or_else(|| "(no objects: the service is gone)".into());
    format!(
        "round {round}: {}\n  objects of {}:\n{}  repeat: SOCKLB_DIFF_SEED={} with {} slots (cargo xtask differential --seed {} --slots {})",
        d.line,
        d.service,
        objects
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>(),
        opts.seed,
        g.opts.slots,
        opts.seed,
        g.opts.slots
    )
}

/// Runs rounds until `opts.cases` cases were probed (see the module's
/// documentation); an `Err` is a failure to run, not a finding.
pub fn run(opts: &DiffOptions) -> Result<DifferentialResults> {
    let started = Instant::now();
    let mut sb = Sandbox::new()?;
    let mut g = Generator::new(opts.generator.clone());
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut clients = Clients::default();
    let mut coverage = Coverage::default();
    let mut r = DifferentialResults {
        seed: opts.seed,
        profile: target_profile_dir()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default(),
        slots: g.opts.slots,
        ..Default::default()
    };
    let say = |m: &str| {
        if opts.progress {
            eprintln!("differential: {m}");
        }
    };
    say(&format!(
        "seed {} (SOCKLB_DIFF_SEED={} repeats it), {} slots, at least {} cases",
        opts.seed, opts.seed, g.opts.slots, opts.cases
    ));
    let mut round = 0;
    while r.cases < opts.cases.max(1) {
        if (opts.interrupted)() {
            bail!("interrupted after {round} rounds");
        }
        let t = Instant::now();
        let ch = g.round(round, &mut rng);
        for &s in &ch.written {
            if let Some(c) = &g.slots[s] {
                sb.manifests.write(&c.file(), &c.text())?;
                sb.cluster_manifests
                    .write(&c.file(), &c.cluster_policy_text())?;
            }
        }
        for &s in &ch.removed {
            sb.manifests.remove(&generate::slot_file(s))?;
            sb.cluster_manifests.remove(&generate::slot_file(s))?;
        }
        let (plan, checked) = sb.plan(sb.manifests.path())?;
        let (cluster, _) = sb.plan(sb.cluster_manifests.path())?;
        let mut found: Vec<Divergence> = Vec::new();
        if !plan.conflicts.is_empty() {
            bail!(
                "the generator made conflicting frontends: {:?}",
                plan.conflicts
            );
        }
        let unsynced = sb.wait_synced(&checked)?;
        let synced_ms = t.elapsed().as_millis();
        if !unsynced.is_empty() {
            say(&format!(
                "round {round}: the maps did not match the plan within {SYNC_TIMEOUT:?}; the agent logged:\n{}",
                sb.agent.log_tail(20)
            ));
            r.sync_timeouts += 1;
            for line in &unsynced {
                found.push(Divergence {
                    service: String::new(),
                    line: format!("the maps never matched the plan: {line}"),
                });
            }
        }
        let (sp, tp) = oracle::probes(&plan, &cluster, g.addrs, &mut clients);
        let so = sb.sock_probes(&sp, opts.parallel)?;
        for (p, o) in sp.iter().zip(&so) {
            found.extend(oracle::judge_sock(p, o, &mut coverage));
            if let Some(note) = &p.kube_proxy {
                r.kube_proxy_differences += 1;
                if r.kube_proxy_examples.len() < 5 {
                    r.kube_proxy_examples
                        .push(format!("round {round}: {}", note.line(p)));
                }
            }
        }
        let to = sb.tc_probes(&tp)?;
        for (p, o) in tp.iter().zip(&to) {
            found.extend(oracle::judge_tc(p, o, &mut coverage));
        }
        r.rounds = round + 1;
        r.cases += ch.written.len();
        r.frontends += plan.frontends.len();
        r.socket_probes += so.iter().map(|o| o.len() as u64).sum::<u64>();
        r.tc_probes += to.iter().map(|o| o.runs.len() as u64).sum::<u64>();
        r.divergences_total += found.len();
        for d in &found {
            let text = full(d, round, opts, &g);
            eprintln!("differential: DIVERGENCE {text}");
            if r.divergences.len() < KEPT {
                r.divergences.push(text);
            }
        }
        say(&format!(
            "round {round}: {} written ({} new), {} removed; {} frontends; synced in {synced_ms} ms; {} socket probes, {} TC flows; {} divergences; {} cases so far",
            ch.written.len(),
            ch.regenerated,
            ch.removed.len(),
            plan.frontends.len(),
            so.iter().map(Vec::len).sum::<usize>(),
            to.iter().map(|o| o.runs.len()).sum::<usize>(),
            found.len(),
            r.cases
        ));
        round += 1;
    }
    r.backends_allowed = coverage.allowed;
    r.backends_reached = coverage.reached;
    let status = sb.agent.stop()?;
    if !status.success() {
        bail!("the agent exited with {status}:\n{}", sb.agent.log_tail(40));
    }
    sb.uninstall()?;
    r.elapsed_s = started.elapsed().as_secs_f64();
    Ok(r)
}
