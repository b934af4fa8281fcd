//! Chaos: the agent killed with SIGKILL at random points of its syncs.
//!
//! A [`Cluster`] with two services whose backends stay ready (web over TCP, dns over
//! UDP; one endpoint of each comes and goes, its pod serving throughout) and clients
//! using them the whole time, next to churn: files of bulk services added, rewritten
//! with new endpoints and removed (large enough that a sync takes a while), a service
//! with session affinity whose endpoints change, a service without endpoints coming
//! and going. Every cycle writes a few changes, kills the agent with SIGKILL after a
//! random delay (sometimes the restarted agent too, during its start), judges from
//! the maps it left whether the kill landed before, in the middle of or after the
//! sync, restarts it and, once it is ready, checks that
//! - the maps hold exactly what `socklb plan` wants: `socklb status -o json` against
//!   `socklb plan -o json` frontend by frontend, and the raw entry counts of the
//!   service, backend and affinity match maps (bpftool) equal to what those frontends
//!   need, so no entry that no reader reaches is left;
//! - the pin directory holds exactly the pins of a clean start (no staging pin of a
//!   link left), and the cgroup has socklb's five programs attached once each.
//!
//! At the end the agent stops, `socklb uninstall` must leave nothing, and the clients
//! must not have lost a single connection or datagram.
//!
//! [`run`] is shared by the short end-to-end test (tests/tests/chaos.rs) and the long
//! run of the benchmark (`cargo xtask chaos`, a stage of `cargo xtask bench`).
//! Every random choice comes from one seed (printed), so a run can be repeated;
//! where a kill lands also depends on the machine's timing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};
use socklb_bench_results::{ChaosClient, ChaosResults, ChaosScale, Spread};
use socklb_core::builders;

use crate::agent::Agent;
use crate::cluster::{Cluster, ClusterOptions, plan_of, status_of};
use crate::multinode::{Plan, Status};
use crate::report::{TcpProbe, TcpReport, UdpProbe, UdpReport};
use crate::tempdir::ManifestDir;

/// The TCP service the clients use.
pub const WEB: &str = "10.96.0.10:80";
/// The UDP service the clients use.
pub const DNS: &str = "10.96.0.53:53";
/// web's backends: the first two always in its slice, the third coming and going.
pub const WEB_PODS: [&str; 3] = ["10.244.0.11", "10.244.0.12", "10.244.0.13"];
/// dns's backends, likewise.
pub const DNS_PODS: [&str; 3] = ["10.244.0.21", "10.244.0.22", "10.244.0.23"];
const NS: &str = "chaos";
/// The very first start is killed within this many milliseconds of its beginning.
const COLD_START_MS: f64 = 300.0;
/// How long an agent may take to get ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Link pins of the socket hooks (`datapath/kernel.rs`).
pub const LINK_PINS: [&str; 5] = [
    "link_connect4",
    "link_getpeername4",
    "link_post_bind4",
    "link_recvmsg4",
    "link_sendmsg4",
];

/// What a run does.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub seed: u64,
    pub cycles: usize,
    /// Files of bulk services (half of them present at the start).
    pub bulk_files: usize,
    pub bulk_services_per_file: usize,
    pub endpoints_per_bulk_service: usize,
    /// Share of cycles that also kill the restarted agent during its start.
    pub start_kill_share: f64,
    /// `--poll-interval-ms` of the agent.
    pub poll_interval_ms: u64,
    /// One line per cycle on stderr.
    pub progress: bool,
}

impl ChaosOptions {
    /// `cycles` cycles with the given seed, at the test's scale.
    pub fn new(seed: u64, cycles: usize) -> Self {
        Self {
            seed,
            cycles,
            bulk_files: 4,
            bulk_services_per_file: 500,
            endpoints_per_bulk_service: 3,
            start_kill_share: 0.3,
            poll_interval_ms: 50,
            progress: true,
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

// ---------------------------------------------------------------------------- objects

/// The objects that change, and what they are now.
struct Churn {
    /// Whether web's and dns's third endpoint is in their slice.
    web_third: bool,
    dns_third: bool,
    /// Last octets of the affinity service's endpoints (10.245.250.x).
    aff: Vec<u8>,
    /// Whether the service without endpoints exists.
    empty: bool,
    /// Which bulk files exist.
    bulk: Vec<bool>,
    services_per_file: usize,
    endpoints_per_service: usize,
}

fn created(svc: Value) -> Value {
    builders::merge(
        svc,
        json!({"metadata": {"creationTimestamp": "2025-01-01T00:00:00Z"}}),
    )
}

fn pods(all: &[&str; 3], third: bool) -> Vec<String> {
    all.iter()
        .take(if third { 3 } else { 2 })
        .map(|s| s.to_string())
        .collect()
}

impl Churn {
    fn web(&self) -> String {
        let svc = builders::service_object(NS, "web", "10.96.0.10", &[("http", "TCP", 80)]);
        let eps = pods(&WEB_PODS, self.web_third);
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        let slice = builders::slice_object(NS, "web-1", "web", &[("http", "TCP", 8080)], &eps);
        builders::manifest_text(&[created(svc), slice])
    }

    fn dns(&self) -> String {
        let svc = builders::service_object(NS, "dns", "10.96.0.53", &[("dns", "UDP", 53)]);
        let eps = pods(&DNS_PODS, self.dns_third);
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        let slice = builders::slice_object(NS, "dns-1", "dns", &[("dns", "UDP", 5353)], &eps);
        builders::manifest_text(&[created(svc), slice])
    }

    fn aff(&self) -> String {
        let svc = builders::merge(
            builders::service_object(NS, "aff", "10.96.0.30", &[("http", "TCP", 80)]),
            json!({"spec": {"sessionAffinity": "ClientIP"}}),
        );
        let eps: Vec<String> = self.aff.iter().map(|o| format!("10.245.250.{o}")).collect();
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        let slice = builders::slice_object(NS, "aff-1", "aff", &[("http", "TCP", 8080)], &eps);
        builders::manifest_text(&[svc, slice])
    }

    fn empty(&self) -> String {
        builders::manifest_text(&[builders::service_object(
            NS,
            "empty",
            "10.96.0.99",
            &[("http", "TCP", 80)],
        )])
    }

    /// Bulk file `k`: services `bulk-K-I` on 10.(100+K).x.y, every fourth with a UDP
    /// port too, each with random endpoints in 10.245.K.0/24; about one in twenty also
    /// has web's first backend, so backends are shared with a service in use.
    fn bulk_text(&self, k: usize, rng: &mut StdRng) -> String {
        let mut objects = Vec::with_capacity(self.services_per_file * 2);
        for i in 0..self.services_per_file {
            let name = format!("bulk-{k}-{i}");
            let ip = format!("10.{}.{}.{}", 100 + k, i / 250, 1 + i % 250);
            let udp = i % 4 == 0;
            let mut ports = vec![("http", "TCP", 80u16)];
            let mut target = vec![("http", "TCP", 8080u16)];
            if udp {
                ports.push(("dns", "UDP", 53));
                target.push(("dns", "UDP", 5353));
            }
            objects.push(builders::service_object(NS, &name, &ip, &ports));
            let mut octets: BTreeSet<u8> = BTreeSet::new();
            while octets.len() < self.endpoints_per_service {
                octets.insert(rng.random_range(1..=250));
            }
            let mut eps: Vec<String> = octets.iter().map(|o| format!("10.245.{k}.{o}")).collect();
            if rng.random_ratio(1, 20) {
                eps[0] = WEB_PODS[0].to_string();
            }
            let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
            objects.push(builders::slice_object(
                NS,
                &format!("{name}-1"),
                &name,
                &target,
                &eps,
            ));
        }
        builders::manifest_text(&objects)
    }

    /// The files the cluster starts from: the stable services (whose endpoints get
    /// pods).
    fn initial(&self, dir: &ManifestDir) -> Result<()> {
        dir.write("web.yaml", &self.web())?;
        dir.write("dns.yaml", &self.dns())
    }

    /// Writes `n` random changes, each to another file (two changes of one file could
    /// cancel out); returns what they were.
    fn changes(&mut self, n: usize, dir: &ManifestDir, rng: &mut StdRng) -> Result<String> {
        let mut touched = BTreeSet::new();
        let mut done = Vec::new();
        while done.len() < n {
            let (file, what) = self.change(dir, rng, &touched)?;
            touched.insert(file);
            done.push(what);
        }
        Ok(done.join(", "))
    }

    /// Writes one random change to a file not in `touched`; returns the file and what
    /// the change was.
    fn change(
        &mut self,
        dir: &ManifestDir,
        rng: &mut StdRng,
        touched: &BTreeSet<String>,
    ) -> Result<(String, String)> {
        // Bulk changes weigh most: they are what makes a sync long.
        let free = |f: &str| !touched.contains(f);
        let bulk_free: Vec<usize> = (0..self.bulk.len())
            .filter(|k| free(&bulk_file(*k)))
            .collect();
        let mut choices: Vec<u8> = Vec::new();
        for (what, file, weight) in [
            (0u8, "web.yaml", 1),
            (1, "dns.yaml", 1),
            (2, "aff.yaml", 1),
            (3, "empty.yaml", 1),
        ] {
            if free(file) {
                choices.extend(std::iter::repeat_n(what, weight));
            }
        }
        if !bulk_free.is_empty() {
            choices.extend([4, 4, 4, 5, 5, 5]);
        }
        let what = *choices.choose(rng).context("every file changed already")?;
        let file = match what {
            0 => "web.yaml".to_string(),
            1 => "dns.yaml".to_string(),
            2 => "aff.yaml".to_string(),
            3 => "empty.yaml".to_string(),
            _ => String::new(),
        };
        if what >= 4 {
            let k = *bulk_free.choose(rng).context("no bulk file left")?;
            let file = bulk_file(k);
            let what = if what == 4 || !self.bulk[k] {
                self.bulk[k] = !self.bulk[k];
                if self.bulk[k] {
                    dir.write(&file, &self.bulk_text(k, rng))?;
                    format!("bulk-{k} added")
                } else {
                    dir.remove(&file)?;
                    format!("bulk-{k} removed")
                }
            } else {
                dir.write(&file, &self.bulk_text(k, rng))?;
                format!("bulk-{k} new endpoints")
            };
            return Ok((file, what));
        }
        let what = match what {
            0 => {
                self.web_third = !self.web_third;
                dir.write("web.yaml", &self.web())?;
                format!("web third endpoint {}", on_off(self.web_third))
            }
            1 => {
                self.dns_third = !self.dns_third;
                dir.write("dns.yaml", &self.dns())?;
                format!("dns third endpoint {}", on_off(self.dns_third))
            }
            2 => {
                let n = rng.random_range(1..=4);
                let mut set = BTreeSet::new();
                while set.len() < n {
                    set.insert(rng.random_range(1..=20u8));
                }
                self.aff = set.into_iter().collect();
                dir.write("aff.yaml", &self.aff())?;
                format!("aff endpoints {:?}", self.aff)
            }
            _ => {
                self.empty = !self.empty;
                if self.empty {
                    dir.write("empty.yaml", &self.empty())?;
                } else {
                    dir.remove("empty.yaml")?;
                }
                format!("service without endpoints {}", on_off(self.empty))
            }
        };
        Ok((file, what))
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "in" } else { "out" }
}

fn bulk_file(k: usize) -> String {
    format!("bulk-{k}.yaml")
}

// ---------------------------------------------------------------------------- the maps

/// What the maps hold (read back) or should hold (from the plan), in comparable terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    /// (address, protocol) -> (action, backends sorted, affinity timeout).
    pub frontends: BTreeMap<(String, String), (String, Vec<String>, u64)>,
    /// Cluster IPs with an address wildcard.
    pub service_addresses: BTreeSet<String>,
    /// Entries of the service map, the backend map and the affinity match map.
    pub svc_entries: u64,
    pub backends: u64,
    pub affinity_matches: u64,
}

impl Programmed {
    /// What the maps must hold for `plan` (ClusterIP frontends, internal scope): one
    /// service map entry per frontend, per backend slot and per cluster IP (its
    /// wildcard), one backend entry per distinct backend, one affinity match per slot
    /// of a frontend with session affinity.
    pub fn wanted(plan: &Plan) -> Programmed {
        let mut p = Programmed::default();
        let mut backends = BTreeSet::new();
        for f in &plan.frontends {
            let mut b = f.backends.clone();
            b.sort();
            p.svc_entries += 1 + b.len() as u64;
            if f.affinity_timeout_s > 0 {
                p.affinity_matches += b.len() as u64;
            }
            for be in &b {
                backends.insert((be.clone(), f.protocol.clone()));
            }
            if let Some((ip, _)) = f.address.rsplit_once(':') {
                p.service_addresses.insert(ip.to_string());
            }
            p.frontends.insert(
                (f.address.clone(), f.protocol.clone()),
                (f.action.clone(), b, f.affinity_timeout_s),
            );
        }
        p.svc_entries += p.service_addresses.len() as u64;
        p.backends = backends.len() as u64;
        p
    }

    /// What the pinned maps hold: `socklb status` (the frontends a reader reaches)
    /// and the raw entry counts of the maps (bpftool: every entry, reachable or not).
    pub fn read(status: &Status, pins: &Path) -> Result<Programmed> {
        let mut p = Programmed::default();
        for f in &status.frontends {
            let mut b = f.backends.clone();
            b.sort();
            let key = (f.address.clone(), f.protocol.clone());
            if f.scope != "internal" {
                p.frontends.insert(
                    (format!("{} ({})", f.address, f.scope), f.protocol.clone()),
                    (f.action.clone(), b, f.affinity_timeout_s),
                );
                continue;
            }
            p.frontends
                .insert(key, (f.action.clone(), b, f.affinity_timeout_s));
        }
        p.service_addresses = status.service_addresses.iter().cloned().collect();
        p.svc_entries = map_entries(&pins.join("lb4_svc_v1"))?;
        p.backends = map_entries(&pins.join("lb4_be_v1"))?;
        p.affinity_matches = map_entries(&pins.join("lb4_affmatch_v1"))?;
        Ok(p)
    }

    /// How `self` (the maps) differs from `want`, one line each (at most `limit`
    /// frontends named); empty when equal.
    pub fn diff(&self, want: &Programmed, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut named = 0;
        for (k, v) in &self.frontends {
            match want.frontends.get(k) {
                None => {
                    named += 1;
                    if named <= limit {
                        out.push(format!("extra frontend {} {}: {v:?}", k.0, k.1));
                    }
                }
                Some(w) if w != v => {
                    named += 1;
                    if named <= limit {
                        out.push(format!("frontend {} {}: maps {v:?}, plan {w:?}", k.0, k.1));
                    }
                }
                Some(_) => {}
            }
        }
        for (k, w) in &want.frontends {
            if !self.frontends.contains_key(k) {
                named += 1;
                if named <= limit {
                    out.push(format!("missing frontend {} {}: plan {w:?}", k.0, k.1));
                }
            }
        }
        if named > limit {
            out.push(format!("... {} frontends differ in all", named));
        }
        if self.service_addresses != want.service_addresses {
            let extra: Vec<_> = self
                .service_addresses
                .difference(&want.service_addresses)
                .take(limit)
                .collect();
            let missing: Vec<_> = want
                .service_addresses
                .difference(&self.service_addresses)
                .take(limit)
                .collect();
            out.push(format!(
                "service addresses: extra {extra:?}, missing {missing:?}"
            ));
        }
        for (what, have, wanted) in [
            ("service map entries", self.svc_entries, want.svc_entries),
            ("backend map entries", self.backends, want.backends),
            (
                "affinity match entries",
                self.affinity_matches,
                want.affinity_matches,
            ),
        ] {
            if have != wanted {
                out.push(format!("{what}: {have} in the map, {wanted} wanted"));
            }
        }
        out
    }
}

/// Entries in a pinned map, as bpftool dumps it.
pub fn map_entries(pin: &Path) -> Result<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool map dump pinned {}: {}",
            pin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool map dump pinned {}", pin.display()))?;
    Ok(v.as_array().map_or(0, |a| a.len() as u64))
}

/// Programs attached to `cgroup`, as bpftool sees them (independent of socklb):
/// (attach type, program name).
pub fn cgroup_programs(cgroup: &Path) -> Result<Vec<(String, String)>> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool cgroup show {}: {}",
            cgroup.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Vec<Value> = serde_json::from_str(&text).context("bpftool cgroup show")?;
    let mut progs: Vec<(String, String)> = v
        .iter()
        .map(|p| {
            (
                p["attach_type"].as_str().unwrap_or_default().to_string(),
                p["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    progs.sort();
    Ok(progs)
}

/// What is wrong with the cgroup's programs: socklb's five hooks, each exactly once.
pub fn link_problems(progs: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let types: BTreeSet<&str> = progs.iter().map(|(t, _)| t.as_str()).collect();
    if progs.len() != LINK_PINS.len() || types.len() != LINK_PINS.len() {
        out.push(format!(
            "{} programs on {} hooks attached to the cgroup, 5 on 5 wanted: {progs:?}",
            progs.len(),
            types.len()
        ));
    }
    for (t, name) in progs {
        if !name.starts_with("sock4_") {
            out.push(format!("not socklb's program on {t}: {name}"));
        }
    }
    out
}

/// What is wrong with the pin directory's entries against those of a clean start.
pub fn pin_problems(have: &[String], clean: &[String]) -> Vec<String> {
    let have: BTreeSet<&String> = have.iter().collect();
    let clean: BTreeSet<&String> = clean.iter().collect();
    let mut out = Vec::new();
    let extra: Vec<_> = have.difference(&clean).collect();
    let missing: Vec<_> = clean.difference(&have).collect();
    if !extra.is_empty() {
        out.push(format!(
            "pins left that a clean start does not have: {extra:?}"
        ));
    }
    if !missing.is_empty() {
        out.push(format!("pins missing: {missing:?}"));
    }
    out
}

// ---------------------------------------------------------------------------- clients

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

// ---------------------------------------------------------------------------- the run

/// The agent's log filter: its default, and the manifest source's debug line
/// "manifests changed", logged right before the events of a change go to the sync.
const AGENT_LOG: &str = "info,kube_client::client::builder=off,socklb::sources::manifest_dir=debug";
/// Logged when the manifest source hands a change to the agent's loop.
const CHANGED: &str = "manifests changed";
/// Logged when a sync wrote the maps.
const UPDATED: &str = "data path updated";
/// Logged when a starting agent has attached its programs (adoption and its first
/// sync follow).
const ATTACHED: &str = "socket hooks and TC programs attached";

/// Reads what a log file gains, as it is written.
struct LogTail {
    file: std::fs::File,
    pending: String,
}

impl LogTail {
    /// From the current end of the file.
    fn at_end(path: &Path) -> Result<LogTail> {
        use std::io::Seek as _;
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        file.seek(std::io::SeekFrom::End(0))?;
        Ok(LogTail {
            file,
            pending: String::new(),
        })
    }

    /// From the start of the file.
    fn from_start(path: &Path) -> Result<LogTail> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(LogTail {
            file,
            pending: String::new(),
        })
    }

    /// Waits (polling every 200 us) for a line with `needle`; returns the line when it
    /// came within `timeout`. Lines before it are consumed.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        use std::io::Read as _;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 8192];
        loop {
            while let Some(nl) = self.pending.find('\n') {
                let line: String = self.pending.drain(..=nl).collect();
                if line.contains(needle) {
                    return Some(line);
                }
            }
            match self.file.read(&mut buf) {
                Ok(n) if n > 0 => {
                    self.pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                    continue;
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
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
    /// re-read, the sync).
    apply_ms: f64,
    /// "manifests changed" until "data path updated": the sync.
    sync_ms: f64,
    /// A restart until "ready".
    start_ms: Vec<f64>,
    /// "attached" until "ready": adoption, cleanup and the first sync of a start.
    start_sync_ms: Vec<f64>,
}

struct Run<'a> {
    opts: &'a ChaosOptions,
    rng: StdRng,
    results: ChaosResults,
    spans: Spans,
    /// The pins of a clean start.
    clean_pins: Vec<String>,
    /// The log tail of the agent killed last (shown with a divergence).
    killed_log: String,
    config: crate::agent::AgentConfig,
}

impl Run<'_> {
    fn say(&self, msg: &str) {
        if self.opts.progress {
            eprintln!("chaos: {msg}");
        }
    }

    fn landed(&mut self, have: &Programmed, before: &Programmed, after: &Programmed) -> Landed {
        self.results.kills.total += 1;
        if have == after {
            self.results.kills.after_sync += 1;
            Landed::After
        } else if have == before {
            self.results.kills.before_sync += 1;
            Landed::Before
        } else {
            self.results.kills.mid_sync += 1;
            Landed::Mid
        }
    }

    fn kill(&mut self, agent: &mut Agent) -> Result<()> {
        agent.kill()?;
        self.killed_log = agent.log_tail(15);
        Ok(())
    }

    /// Kills the running agent at a random point after `changes` were written: three
    /// times in four at a random point of the sync (from the line that hands the
    /// change to it, up to 30% past its calibrated length), else anywhere from the
    /// write to 30% past the calibrated time to apply. Returns where, in words.
    fn kill_after_write(
        &mut self,
        agent: &mut Agent,
        mut tail: LogTail,
        written: Instant,
    ) -> Result<String> {
        let at = if self.rng.random_bool(0.75) {
            let changed = tail.wait_for(
                CHANGED,
                Duration::from_secs_f64(self.spans.apply_ms * 4.0 / 1000.0),
            );
            let seen = Instant::now();
            let d = self.rng.random_range(0.0..=self.spans.sync_ms * 1.3);
            let what = match changed {
                Some(_) => format!("{d:.1} ms into the sync"),
                None => "when no sync came".to_string(),
            };
            (seen + Duration::from_secs_f64(d / 1000.0), what)
        } else {
            let d = self.rng.random_range(0.0..=self.spans.apply_ms * 1.3);
            (
                written + Duration::from_secs_f64(d / 1000.0),
                format!("{d:.0} ms after the write"),
            )
        };
        std::thread::sleep(at.0.saturating_duration_since(Instant::now()));
        self.kill(agent)?;
        Ok(at.1)
    }

    /// Starts an agent and kills it at a random point of its start: half the time in
    /// the part after its programs are attached (adoption, cleanup, first sync), else
    /// anywhere from its start to 20% past the typical time to ready.
    fn kill_during_start(&mut self, agent: &mut Agent) -> Result<String> {
        *agent = Agent::start(&self.config)?;
        let started = Instant::now();
        let typical = median(&self.spans.start_ms);
        let what = if self.rng.random_bool(0.5) {
            let mut tail = LogTail::from_start(agent.log_path())?;
            let attached = tail.wait_for(ATTACHED, READY_TIMEOUT).is_some();
            let seen = Instant::now();
            let d = self
                .rng
                .random_range(0.0..=median(&self.spans.start_sync_ms) * 1.3);
            std::thread::sleep(
                (seen + Duration::from_secs_f64(d / 1000.0))
                    .saturating_duration_since(Instant::now()),
            );
            if attached {
                format!("{d:.1} ms after attaching")
            } else {
                "when it never attached".to_string()
            }
        } else {
            let d = self.rng.random_range(0.0..=typical * 1.2);
            std::thread::sleep(
                (started + Duration::from_secs_f64(d / 1000.0))
                    .saturating_duration_since(Instant::now()),
            );
            format!("{d:.0} ms after its start")
        };
        self.kill(agent)?;
        self.results.kills.during_start += 1;
        Ok(what)
    }

    /// Starts the agent that must repair everything and waits until it is ready.
    fn restart(&mut self, agent: &mut Agent) -> Result<f64> {
        *agent = Agent::start(&self.config)?;
        let t = Instant::now();
        let mut tail = LogTail::from_start(agent.log_path())?;
        let attached = tail
            .wait_for(ATTACHED, READY_TIMEOUT)
            .map(|_| Instant::now());
        if !wait_ready(agent) {
            bail!("the restarted agent did not get ready:\n{}", agent.log());
        }
        let ready = Instant::now();
        let ms = (ready - t).as_secs_f64() * 1000.0;
        self.spans.start_ms.push(ms);
        if let Some(a) = attached {
            self.spans
                .start_sync_ms
                .push((ready - a).as_secs_f64() * 1000.0);
        }
        Ok(ms)
    }
}

/// Runs the chaos cycles (see the module's documentation) and returns what happened;
/// an `Err` is a failure to run (the sandbox, a tool, an agent that does not start),
/// not a finding.
pub fn run(opts: &ChaosOptions) -> Result<ChaosResults> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut churn = Churn {
        web_third: true,
        dns_third: true,
        aff: vec![1, 2, 3],
        empty: false,
        bulk: vec![false; opts.bulk_files.max(1)],
        services_per_file: opts.bulk_services_per_file.max(1),
        endpoints_per_service: opts.endpoints_per_bulk_service.clamp(1, 200),
    };
    // Only the stable services are in the directory the cluster starts from: their
    // endpoints get pods. Every other endpoint is an address no client uses.
    let src = ManifestDir::new()?;
    churn.initial(&src)?;
    let cluster_opts = ClusterOptions {
        agent_args: vec![
            "--poll-interval-ms".into(),
            opts.poll_interval_ms.to_string(),
        ],
        agent_env: vec![("RUST_LOG".into(), AGENT_LOG.into())],
        ..Default::default()
    };
    let mut c = Cluster::start_with(src.path(), &cluster_opts)?;
    // The very first start killed too, at a random point (maps and links half made).
    let cold_ms = rng.random_range(0.0..=COLD_START_MS);
    std::thread::sleep(Duration::from_secs_f64(cold_ms / 1000.0));
    c.agent.kill()?;
    let first_want = Programmed::wanted(&c.plan()?);
    let cold = if c.pins.entries().is_empty() {
        Landed::Before
    } else {
        match status_of(c.pins.path()).and_then(|s| Programmed::read(&s, c.pins.path())) {
            Ok(p) if p == first_want => Landed::After,
            Ok(p) if p == Programmed::default() => Landed::Before,
            // Some maps not pinned yet (status cannot open them), or half written.
            _ => Landed::Mid,
        }
    };
    let config = c.agent.config().clone();
    let t0 = Instant::now();
    c.agent = Agent::start(&config)?;
    if !wait_ready(&mut c.agent) {
        bail!("the agent did not get ready:\n{}", c.agent.log());
    }
    let first_ready_ms = t0.elapsed().as_secs_f64() * 1000.0;
    // What a clean start pins: every map and the five links.
    let clean_pins: Vec<String> = {
        let mut v: Vec<String> = lb_common::map_names::ALL
            .iter()
            .chain(LINK_PINS.iter())
            .map(|s| s.to_string())
            .collect();
        v.sort();
        v
    };

    // The objects without pods, then the calibration: half the bulk files written
    // under the running agent, timed from the write to the agent's log line for the
    // sync.
    c.manifests.write("aff.yaml", &churn.aff())?;
    let mut apply_ms = Vec::new();
    let mut sync_ms = Vec::new();
    for k in 0..churn.bulk.len().div_ceil(2) {
        let mut tail = LogTail::at_end(c.agent.log_path())?;
        churn.bulk[k] = true;
        let text = churn.bulk_text(k, &mut rng);
        let t = Instant::now();
        c.manifests.write(&bulk_file(k), &text)?;
        let changed = tail
            .wait_for(CHANGED, READY_TIMEOUT)
            .map(|_| Instant::now());
        let updated = tail
            .wait_for(UPDATED, READY_TIMEOUT)
            .map(|_| Instant::now());
        let (Some(changed), Some(updated)) = (changed, updated) else {
            bail!(
                "the agent did not apply bulk-{k} (or logged no {CHANGED:?}):\n{}",
                c.agent.log_tail(20)
            );
        };
        apply_ms.push((updated - t).as_secs_f64() * 1000.0);
        sync_ms.push((updated - changed).as_secs_f64() * 1000.0);
    }
    let bulk_apply_ms = Spread::of(&apply_ms);
    let bulk_sync_ms = Spread::of(&sync_ms);

    let mut run = Run {
        opts,
        rng,
        results: ChaosResults {
            seed: opts.seed,
            profile: crate::agent::target_profile_dir()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default(),
            scale: ChaosScale {
                stable_services: 2,
                bulk_files: churn.bulk.len(),
                bulk_services_per_file: churn.services_per_file,
                endpoints_per_bulk_service: churn.endpoints_per_service,
                max_frontends: 0,
            },
            bulk_apply_ms: bulk_apply_ms.clone(),
            bulk_sync_ms: bulk_sync_ms.clone(),
            ..Default::default()
        },
        spans: Spans {
            apply_ms: bulk_apply_ms.max,
            sync_ms: bulk_sync_ms.max,
            start_ms: vec![first_ready_ms],
            start_sync_ms: Vec::new(),
        },
        clean_pins,
        killed_log: String::new(),
        config,
    };
    run.say(&format!(
        "seed {} (SOCKLB_CHAOS_SEED={} repeats it), {} cycles, {} bulk files of {} services",
        opts.seed,
        opts.seed,
        opts.cycles,
        churn.bulk.len(),
        churn.services_per_file
    ));
    run.results.kills.total += 1;
    run.results.kills.during_start += 1;
    match cold {
        Landed::Before => run.results.kills.before_sync += 1,
        Landed::Mid => run.results.kills.mid_sync += 1,
        Landed::After => run.results.kills.after_sync += 1,
    }
    run.say(&format!(
        "the first start killed {cold_ms:.0} ms after it began: {cold:?}; the next one ready in {first_ready_ms:.0} ms"
    ));
    let d = pin_problems(&c.pins.entries(), &run.clean_pins);
    if !d.is_empty() {
        bail!("the pins are not what the test expects a clean start to pin: {d:?}");
    }
    run.say(&format!(
        "calibration: agent ready in {first_ready_ms:.0} ms; a bulk file applied in {:.0} ms, its sync {:.1} ms",
        run.spans.apply_ms, run.spans.sync_ms
    ));

    let plan = c.plan()?;
    let mut want = Programmed::wanted(&plan);
    let d = Programmed::read(&c.status()?, c.pins.path())?.diff(&want, 5);
    if !d.is_empty() {
        bail!("before any kill, the maps differ from the plan: {d:?}");
    }
    run.results.scale.max_frontends = plan.frontends.len();
    // The time from attaching to ready of a start with nothing to repair.
    run.spans.start_sync_ms.push(run.spans.sync_ms);

    let stop = AtomicBool::new(false);
    let clients = Mutex::new(Clients::default());
    let web: SocketAddr = WEB.parse()?;
    let dns: SocketAddr = DNS.parse()?;
    let sandbox = &c.sandbox;
    let cgroup = &c.cgroup;
    let manifests = &c.manifests;
    let pins = &c.pins;
    let agent = &mut c.agent;
    let node = run.config.node.clone();
    let outcome: Result<()> = std::thread::scope(|s| {
        s.spawn(|| {
            let probe = TcpProbe::new(web)
                .duration_ms(1500)
                .interval_ms(3)
                .timeout_ms(2000);
            while !stop.load(Ordering::Relaxed) {
                let r = sandbox.tcp_probe(Some(cgroup), &probe);
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
            let probe = UdpProbe::new(dns)
                .sockets(2)
                .count(2)
                .timeout_ms(2000)
                .duration_ms(1500)
                .interval_ms(5);
            while !stop.load(Ordering::Relaxed) {
                let r = sandbox.udp_probe(Some(cgroup), &probe);
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
                // A few changes written under the running agent, which is then killed.
                let before = want.clone();
                let tail = LogTail::at_end(agent.log_path())?;
                let n = run.rng.random_range(1..=3);
                let changes = churn.changes(n, manifests, &mut run.rng)?;
                let written = Instant::now();
                let when = run.kill_after_write(agent, tail, written)?;
                let plan = plan_of(manifests.path(), &node)?;
                want = Programmed::wanted(&plan);
                run.results.scale.max_frontends =
                    run.results.scale.max_frontends.max(plan.frontends.len());
                let left = Programmed::read(&status_of(pins.path())?, pins.path())?;
                let landed = run.landed(&left, &before, &want);
                let mut line = format!(
                    "cycle {cycle}/{}: {changes}; killed {when}: {landed:?}",
                    opts.cycles
                );
                // Sometimes the next agent is killed too, during its start.
                if run.rng.random_bool(opts.start_kill_share) {
                    let when = run.kill_during_start(agent)?;
                    let again = Programmed::read(&status_of(pins.path())?, pins.path())?;
                    let landed = run.landed(&again, &left, &want);
                    line.push_str(&format!("; restarted and killed {when}: {landed:?}"));
                }
                // The start that must repair everything.
                let repair = run.restart(agent)?;
                line.push_str(&format!("; ready in {repair:.0} ms"));
                let have = Programmed::read(&status_of(pins.path())?, pins.path())?;
                let d = have.diff(&want, 5);
                if !d.is_empty() {
                    for x in &d {
                        run.results
                            .divergences
                            .push(format!("cycle {cycle} ({changes}): {x}"));
                    }
                    line.push_str(&format!("; DIVERGES: {d:?}"));
                    eprintln!(
                        "chaos: cycle {cycle}: the agent killed last logged:\n{}\nthe new one:\n{}",
                        run.killed_log,
                        agent.log_tail(15)
                    );
                }
                let mut leaks = pin_problems(&pins.entries(), &run.clean_pins);
                leaks.extend(link_problems(&cgroup_programs(cgroup.path())?));
                if !leaks.is_empty() {
                    line.push_str(&format!("; LEAKS: {leaks:?}"));
                    for x in leaks {
                        run.results.leaks.push(format!("cycle {cycle}: {x}"));
                    }
                }
                if let Some(status) = agent.try_wait()? {
                    bail!(
                        "cycle {cycle}: the agent exited ({status}):\n{}",
                        agent.log()
                    );
                }
                run.results.cycles = cycle;
                run.say(&line);
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
        to: WEB.into(),
        ..cl.tcp
    };
    run.results.udp = ChaosClient {
        to: DNS.into(),
        ..cl.udp
    };
    // The first start (nothing to repair) is not a repair.
    run.results.repair_ms = Spread::of(&run.spans.start_ms[1..]);
    run.results.repair_sync_ms = Spread::of(&run.spans.start_sync_ms[1..]);

    // A clean stop and uninstall must leave nothing.
    c.shutdown()?;
    if c.pins.exists() {
        run.results
            .left_after_uninstall
            .push(format!("pins: {:?}", c.pins.entries()));
    }
    let progs = cgroup_programs(c.cgroup.path())?;
    if !progs.is_empty() {
        run.results
            .left_after_uninstall
            .push(format!("programs attached to the cgroup: {progs:?}"));
    }
    run.results.elapsed_s = started.elapsed().as_secs_f64();
    Ok(run.results)
}

/// Waits (polling every 5 ms) until the agent logged "ready"; false on timeout or
/// when it exited.
fn wait_ready(agent: &mut Agent) -> bool {
    crate::wait::wait_until_every(READY_TIMEOUT, Duration::from_millis(5), || {
        agent.log().contains("ready") || !agent.is_running()
    }) && agent.log().contains("ready")
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}
