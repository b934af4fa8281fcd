//! Stale sockets: how long after a slice change the connected UDP sockets translated
//! to the departed backend get their error, with many network namespaces, and that
//! no decoy does.
//!
//! ```text
//!   host netns: socklb agent (--poll-interval-ms 10), manifests in a temp dir
//!   N client netns (lo, d0 10.245.255.254/16: a veth whose peer is down, no ARP;
//!   no default route),
//!     each with one `socklb-probe hold` in the agent's cgroup:
//!       S sockets connected to dns (10.96.1.53:53 -> the one backend X_r:5353)
//!       decoys: an unconnected socket that sent to dns, a socket connected to
//!       X_r:5353 directly, a socket connected to keep (10.96.1.54:53 -> X_r, stays)
//! ```
//! Round r: dns and keep hold X_r = 10.245.0.(r+1); the probes start (every socket
//! sends one datagram: out through d0, where it is dropped; the translation is
//! what matters); then the dns slice is rewritten to X_{r+1} and each probe reports,
//! with CLOCK_MONOTONIC, when each socket's blocked recv() failed. The time is taken
//! from just before the slice file is renamed into place, so it includes the agent's
//! directory polling (up to the poll interval plus its half for the quiet check);
//! the agent's own figure, from the change reaching it to its pass done in every
//! namespace, comes from its log line.
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use socklb_bench_results::{Percentiles, Spread, StaleSocketsRow};
use socklb_tests::{
    Agent, AgentConfig, HoldProbe, HoldSpec, ManifestDir, NetNs, PinDir, TestCgroup,
    hold::{errors, monotonic_ns},
};

use super::runner::{progress, wait_ready};
use super::util::{self, check_interrupted};

/// What to run.
#[derive(Clone, Debug)]
pub struct StaleConfig {
    pub namespaces: usize,
    pub sockets: usize,
    pub rounds: usize,
    pub poll_interval_ms: u64,
    pub agent_ready_timeout: Duration,
}

const DNS: &str = "10.96.1.53:53";
const KEEP: &str = "10.96.1.54:53";
const BACKEND_PORT: u16 = 5353;
/// How long the sockets may take to fail before they count as missed.
const ERROR_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_LINE: &str = "stale sockets destroyed";
const UPDATED: &str = "data path updated";

fn backend(round: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 245, (round / 250) as u8, (round % 250 + 1) as u8)
}

fn service_yaml() -> String {
    let svc = |name: &str, ip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\n\
             spec:\n  clusterIP: {ip}\n  ports: [{{name: dns, port: 53, targetPort: {BACKEND_PORT}, protocol: UDP}}]\n"
        )
    };
    svc("dns", "10.96.1.53") + &svc("keep", "10.96.1.54")
}

fn slice_yaml(service: &str, ep: Ipv4Addr) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-1, namespace: bench, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{name: dns, port: {BACKEND_PORT}, protocol: UDP}}]\n\
         endpoints: [{{addresses: [\"{ep}\"]}}]\n"
    )
}

/// Runs the measurement; everything it creates is removed on return (guards).
pub fn run(cfg: &StaleConfig) -> Result<StaleSocketsRow> {
    let manifests = ManifestDir::new()?;
    manifests.write("services.yaml", &service_yaml())?;
    manifests.write("dns-slice.yaml", &slice_yaml("dns", backend(0)))?;
    manifests.write("keep-slice.yaml", &slice_yaml("keep", backend(0)))?;

    progress(format!(
        "stale sockets: {} namespaces × {} sockets, {} rounds",
        cfg.namespaces, cfg.sockets, cfg.rounds
    ));
    let started = Instant::now();
    let mut namespaces = Vec::with_capacity(cfg.namespaces);
    for _ in 0..cfg.namespaces {
        check_interrupted()?;
        let ns = NetNs::new()?;
        // A veth pair whose peer stays down, without ARP: datagrams to the backend
        // network leave through d0 and are dropped there, silently (no neighbour to
        // fail, no ICMP error back to the socket). (No `dummy` module needed.)
        ns.ip(["link", "add", "d0", "type", "veth", "peer", "name", "d1"])?;
        ns.ip(["addr", "add", "10.245.255.254/16", "dev", "d0"])?;
        ns.ip(["link", "set", "d0", "arp", "off"])?;
        ns.ip(["link", "set", "d0", "up"])?;
        socklb_tests::sandbox::assert_no_default_route(&ns)?;
        namespaces.push(ns);
    }
    progress(format!(
        "stale sockets: namespaces ready in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    // Drop order: probes (declared in the loop), agent, pins, cgroup, namespaces.
    let cgroup = TestCgroup::new()?;
    let pins = PinDir::new()?;
    let mut agent_cfg = AgentConfig::new(manifests.path(), cgroup.path(), pins.path(), "bench");
    agent_cfg.extra_args = vec![
        "--poll-interval-ms".into(),
        cfg.poll_interval_ms.to_string(),
        "--devices".into(),
        "none".into(),
    ];
    let mut agent = Agent::start(&agent_cfg)?;
    wait_ready(&mut agent, cfg.agent_ready_timeout)?;
    if !agent.log().contains("stale-socket termination on") {
        bail!(
            "the agent cannot destroy sockets on this kernel; log tail:\n{}",
            agent.log_tail(20)
        );
    }

    let (mut latencies, mut agent_ms, mut pass_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut row = StaleSocketsRow {
        namespaces: cfg.namespaces,
        sockets_per_namespace: cfg.sockets,
        rounds: cfg.rounds,
        poll_interval_ms: cfg.poll_interval_ms,
        error_ms: Percentiles::default(),
        agent_ms: Spread::default(),
        pass_ms: Spread::default(),
        netns_visited: 0,
        expected: 0,
        destroyed: 0,
        missed: 0,
        other_errors: 0,
        decoys: 0,
        decoys_destroyed: 0,
    };
    for round in 0..cfg.rounds {
        check_interrupted()?;
        let (x, next) = (backend(round), backend(round + 1));
        if round > 0 {
            // keep follows dns to X_r (dns is there since the last round's change).
            let before = agent.log().matches(UPDATED).count();
            manifests.write("keep-slice.yaml", &slice_yaml("keep", x))?;
            wait_log_count(&mut agent, UPDATED, before + 1, cfg.agent_ready_timeout)?;
        }
        let direct = SocketAddr::new(x.into(), BACKEND_PORT);
        let mut spec = HoldSpec::new().no_reply();
        for _ in 0..cfg.sockets {
            spec = spec.udp(DNS.parse()?);
        }
        spec = spec.udp(direct).udp(KEEP.parse()?).udp_sendto(DNS.parse()?);
        let mut probes = Vec::with_capacity(namespaces.len());
        for ns in &namespaces {
            let p = HoldProbe::spawn(
                &ns.path(),
                Some(cgroup.path()),
                &spec,
                Duration::from_secs(10),
            )?;
            if let Some(bad) = p.sockets.iter().find(|s| s.error.is_some()) {
                bail!("a probe socket failed to start: {bad:?}");
            }
            probes.push(p);
        }
        // Let every first datagram's translation settle.
        util::sleep(Duration::from_millis(200))?;
        let passes_before = agent.log().matches(LOG_LINE).count();
        let t0 = monotonic_ns();
        manifests.write("dns-slice.yaml", &slice_yaml("dns", next))?;
        let deadline = Instant::now() + ERROR_TIMEOUT;
        for p in &mut probes {
            let left = deadline.saturating_duration_since(Instant::now());
            let sockets = cfg.sockets;
            p.wait(left, |ev| {
                errors(ev).iter().filter(|(i, ..)| *i < sockets).count() >= sockets
            });
        }
        // Late decoy errors would come with the same pass: give them a moment.
        util::sleep(Duration::from_millis(300))?;
        for p in &mut probes {
            let errs = errors(p.events());
            for i in 0..cfg.sockets {
                row.expected += 1;
                match errs.iter().find(|(index, ..)| *index == i) {
                    Some((_, e, at)) if e == "ECONNABORTED" => {
                        row.destroyed += 1;
                        latencies.push(at.saturating_sub(t0) as f64 / 1e6);
                    }
                    Some(_) => row.other_errors += 1,
                    None => row.missed += 1,
                }
            }
            row.decoys += 3;
            row.decoys_destroyed += errs.iter().filter(|(i, ..)| *i >= cfg.sockets).count() as u64;
        }
        let line = wait_log_count(&mut agent, LOG_LINE, passes_before + 1, ERROR_TIMEOUT)
            .context("the agent's pass")?;
        let f = util::log_fields(&line);
        let us = |k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok());
        agent_ms.push(us("since_change_us").map_or(f64::NAN, |v| v / 1000.0));
        pass_ms.push(us("pass_us").map_or(f64::NAN, |v| v / 1000.0));
        row.netns_visited = f.get("netns").and_then(|v| v.parse().ok()).unwrap_or(0);
        let round_lat: Vec<f64> =
            latencies[latencies.len().saturating_sub(cfg.namespaces * cfg.sockets)..].to_vec();
        let p = Percentiles::of(&round_lat);
        progress(format!(
            "stale sockets: round {}: {} destroyed, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; agent {:.1} ms (pass {:.1} ms, {} netns); decoys destroyed so far {}",
            round + 1,
            p.count,
            p.p50,
            p.p99,
            p.max,
            agent_ms.last().copied().unwrap_or(f64::NAN),
            pass_ms.last().copied().unwrap_or(f64::NAN),
            row.netns_visited,
            row.decoys_destroyed
        ));
        for p in &mut probes {
            p.quit();
        }
        drop(probes);
    }
    row.error_ms = Percentiles::of(&latencies);
    row.agent_ms = Spread::of(&agent_ms);
    row.pass_ms = Spread::of(&pass_ms);
    agent.stop()?;
    drop(agent);
    drop(pins);
    drop(cgroup);
    drop(namespaces);
    Ok(row)
}

/// Waits until `needle` appears `count` times in the agent's log; the last such line.
fn wait_log_count(
    agent: &mut Agent,
    needle: &str,
    count: usize,
    timeout: Duration,
) -> Result<String> {
    let start = Instant::now();
    loop {
        check_interrupted()?;
        let log = agent.log();
        if log.matches(needle).count() >= count {
            return Ok(log
                .lines()
                .rev()
                .find(|l| l.contains(needle))
                .unwrap_or_default()
                .to_string());
        }
        if !agent.is_running() {
            bail!("the agent exited; log tail:\n{}", agent.log_tail(30));
        }
        if start.elapsed() > timeout {
            bail!(
                "no {needle:?} line within {timeout:?}; log tail:\n{}",
                agent.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
