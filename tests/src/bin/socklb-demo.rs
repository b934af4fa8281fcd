//! socklb-demo: a self-contained demonstration of the load balancer.
//!
//! It builds the test sandbox from the EndpointSlices of a manifests directory (one pod
//! namespace per endpoint address, each running `socklb-probe serve`), creates a cgroup
//! and a bpffs pin directory of its own, starts `socklb agent` on them, and then, for
//! every Service port, sends traffic to the service address from the node namespace
//! inside the cgroup and shows how it spread over the backends. Finally it stops the
//! agent, runs `socklb uninstall` and removes everything. Ctrl-C at any time still
//! cleans up (the handler only sets a flag; every wait checks it; Drop guards do the
//! rest).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use socklb_tests::cluster_spec::{ClusterSpec, Service, ServicePort};
use socklb_tests::netns::netns_exists;
use socklb_tests::{
    Agent, Child, Cluster, ClusterOptions, Protocol, Sandbox, SpawnOpts, TcpProbe, TcpReport,
    TestCgroup, UdpProbe, UdpReport, check_privileges, pod_id, read_cluster_spec, try_probe_bin,
    try_socklb_bin, uninstall,
};

#[derive(Parser, Debug)]
#[command(
    name = "socklb-demo",
    about = "Runs socklb on a throw-away sandbox built from example manifests and shows where connections go",
    version
)]
struct Cli {
    /// Directory of Service and EndpointSlice YAML [default: <repo>/examples/demo].
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// TCP connections per TCP service port.
    #[arg(long, default_value_t = 200)]
    connections: u64,
    /// UDP sockets per UDP service port.
    #[arg(long = "udp-sockets", default_value_t = 8)]
    udp_sockets: u64,
    /// Datagrams per UDP socket.
    #[arg(long = "udp-datagrams", default_value_t = 5)]
    udp_datagrams: u64,
    /// Node name given to the agent [default: the node most endpoints are on].
    #[arg(long)]
    node: Option<String>,
    /// How long to wait for the agent to serve the first service, in seconds.
    #[arg(long = "ready-timeout", default_value_t = 30)]
    ready_timeout: u64,
    /// Keep the sandbox up after the report until Ctrl-C (to inspect the maps).
    #[arg(long = "keep-running")]
    keep_running: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn install_signal_handlers() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an atomic
        // (async-signal-safe); SA_RESTART keeps blocking calls from failing with EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error()).context("sigaction");
            }
        }
    }
    Ok(())
}

/// Sleeps up to `d`, returning early (false) when interrupted.
fn sleep_checked(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if interrupted() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    !interrupted()
}

enum Outcome {
    Done,
    Interrupted,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = install_signal_handlers() {
        eprintln!("socklb-demo: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(&cli) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Interrupted) => {
            eprintln!("socklb-demo: interrupted; everything was cleaned up");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("socklb-demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("demo")
}

/// One service port to probe.
struct Target {
    service: Service,
    port: ServicePort,
    addr: SocketAddr,
    endpoints: Vec<(Ipv4Addr, u16)>,
}

impl Target {
    fn title(&self) -> String {
        let port = if self.port.name.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.port.name)
        };
        format!(
            "{}{}  {}/{}",
            self.service.key(),
            port,
            self.addr,
            self.port.protocol
        )
    }
}

fn targets(m: &ClusterSpec) -> Vec<Target> {
    let mut out = Vec::new();
    for svc in &m.services {
        let Some(ip) = svc.cluster_ip else { continue };
        for port in &svc.ports {
            out.push(Target {
                service: svc.clone(),
                port: port.clone(),
                addr: SocketAddr::new(ip, port.port),
                endpoints: m.endpoints_for(svc, port),
            });
        }
    }
    out
}

fn run(cli: &Cli) -> Result<Outcome> {
    check_privileges().map_err(|why| {
        anyhow::anyhow!("socklb-demo needs root, bpffs, cgroup v2 and iproute2: {why}")
    })?;
    let dir = cli.manifests.clone().unwrap_or_else(default_manifests);
    let dir = dir
        .canonicalize()
        .with_context(|| format!("manifests directory {} not found", dir.display()))?;
    let manifests = read_cluster_spec(&dir)?;
    let targets = targets(&manifests);
    if targets.is_empty() {
        bail!("no Service with a clusterIP in {}", dir.display());
    }
    let socklb = try_socklb_bin()?;
    let probe = try_probe_bin()?;
    let pods = manifests.pod_ports();

    println!("socklb demo");
    println!(
        "  manifests  {} ({} service ports, {} pod addresses)",
        dir.display(),
        targets.len(),
        pods.len()
    );

    // --- sandbox, cgroup, pins, agent (all behind Drop guards) ---------------------------
    let opts = ClusterOptions {
        node: cli.node.clone(),
        ..Default::default()
    };
    let mut cluster = Cluster::start_with(&dir, &opts)?;
    let sandbox = &cluster.sandbox;
    let all_ns = sandbox.netns_names();
    println!(
        "  node netns {} (bridge {}/16, no default route)",
        sandbox.node().name(),
        sandbox.bridge_addr()
    );
    for ip in sandbox.pod_ips() {
        let Some(pod) = sandbox.pod(ip) else { continue };
        println!(
            "  pod        {ip:<15} netns {:<14} serving tcp {:?} udp {:?} as {}",
            pod.netns().name(),
            pod.served_tcp(),
            pod.served_udp(),
            pod_id(ip)
        );
    }
    let cgroup_path = cluster.cgroup.path().to_path_buf();
    let pins_path = cluster.pins.path().to_path_buf();
    println!("  cgroup     {}", cgroup_path.display());
    println!("  pins       {}", pins_path.display());
    println!(
        "  agent      pid {}: {} agent --manifests {} --node {}",
        cluster.agent.pid(),
        socklb.display(),
        cluster.manifests.path().display(),
        cluster.agent.config().node
    );
    println!("             log {}", cluster.agent.log_path().display());

    let Cluster {
        agent,
        cgroup,
        sandbox,
        ..
    } = &mut cluster;
    let result = with_agent(cli, sandbox, cgroup, agent, &targets, &probe, &pins_path);

    // --- teardown: always, also after an error or Ctrl-C ------------------------------
    println!();
    println!("cleanup");
    let mut cleanup_failed = false;
    match cluster.agent.stop() {
        Ok(status) => println!("  agent stopped ({status})"),
        Err(e) => {
            cleanup_failed = true;
            println!("  agent: {e:#}");
        }
    }
    match uninstall(&cgroup_path, &pins_path) {
        Ok(_) => println!(
            "  socklb uninstall --cgroup {} --bpffs {}: ok",
            cgroup_path.display(),
            pins_path.display()
        ),
        Err(e) => {
            cleanup_failed = true;
            println!("  {e:#}");
        }
    }
    drop(cluster); // agent, pins, cgroup, sandbox, manifests copy: in that order
    let left: Vec<&String> = all_ns.iter().filter(|n| netns_exists(n)).collect();
    let gone = |p: &Path| if p.exists() { "STILL THERE" } else { "removed" };
    println!(
        "  network namespaces {}: {}",
        all_ns.join(" "),
        if left.is_empty() {
            "removed".to_string()
        } else {
            format!("STILL THERE: {left:?}")
        }
    );
    println!("  cgroup {}: {}", cgroup_path.display(), gone(&cgroup_path));
    println!(
        "  pin directory {}: {}",
        pins_path.display(),
        gone(&pins_path)
    );
    match result {
        Ok(Outcome::Done) if cleanup_failed => {
            bail!("stopping the agent or `socklb uninstall` failed (see above)")
        }
        other => other,
    }
}

fn with_agent(
    cli: &Cli,
    sandbox: &Sandbox,
    cgroup: &TestCgroup,
    agent: &mut Agent,
    targets: &[Target],
    probe: &Path,
    pins: &Path,
) -> Result<Outcome> {
    // --- wait until the agent serves the first service --------------------------------
    let first = &targets[0];
    print!("  waiting for {} to answer ...", first.title());
    flush();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(cli.ready_timeout);
    loop {
        if interrupted() {
            println!(" interrupted");
            return Ok(Outcome::Interrupted);
        }
        if let Some(status) = agent.try_wait()? {
            println!();
            bail!(
                "the agent exited ({status}) before serving; its log:\n{}",
                agent.log()
            );
        }
        let answered = match first.port.protocol {
            Protocol::Tcp => {
                let p = TcpProbe::new(first.addr).count(1).timeout_ms(300);
                let Some(r) = probe_tcp(sandbox, cgroup, &p)? else {
                    continue;
                };
                if first.endpoints.is_empty() {
                    r.error("ECONNREFUSED") > 0
                } else {
                    r.ok > 0
                }
            }
            Protocol::Udp => {
                let p = UdpProbe::new(first.addr).timeout_ms(300);
                let Some(r) = probe_udp(sandbox, cgroup, &p)? else {
                    continue;
                };
                if first.endpoints.is_empty() {
                    r.error("ECONNREFUSED") > 0
                } else {
                    r.replies > 0
                }
            }
        };
        if answered {
            println!(" ok after {:.1} s", start.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() >= deadline {
            println!();
            bail!(
                "{} did not answer within {} s; agent log tail:\n{}",
                first.title(),
                cli.ready_timeout,
                agent.log_tail(40)
            );
        }
        if !sleep_checked(Duration::from_millis(200)) {
            return Ok(Outcome::Interrupted);
        }
    }

    // --- one report per service port ------------------------------------------------------
    for t in targets {
        if interrupted() {
            return Ok(Outcome::Interrupted);
        }
        println!();
        let eps = if t.endpoints.is_empty() {
            "no endpoints".to_string()
        } else {
            let list: Vec<String> = t
                .endpoints
                .iter()
                .map(|(a, p)| format!("{a}:{p}"))
                .collect();
            format!("{} endpoints: {}", t.endpoints.len(), list.join(" "))
        };
        println!("▶ {}  → {eps}", t.title());
        let done = match t.port.protocol {
            Protocol::Tcp => report_tcp(cli, sandbox, cgroup, t)?,
            Protocol::Udp => report_udp(cli, sandbox, cgroup, t)?,
        };
        if !done {
            return Ok(Outcome::Interrupted);
        }
    }

    if cli.keep_running && !interrupted() {
        let node = sandbox.node().name();
        let cg = cgroup.path().display();
        let svc = targets[0].addr;
        println!();
        println!("The sandbox stays up until Ctrl-C. Inspect it (as root) with:");
        println!("  bpftool map dump pinned {}/lb4_svc_v1", pins.display());
        println!("  bpftool map dump pinned {}/lb4_be_v1", pins.display());
        println!("  bpftool cgroup show {cg}");
        println!("  nsenter --net=/run/netns/{node} ip -br addr");
        println!(
            "  nsenter --net=/run/netns/{node} sh -c 'echo $$ > {cg}/cgroup.procs && exec {} tcp --to {svc} --count 20'",
            probe.display()
        );
        println!("(only processes inside the cgroup {cg} are load-balanced)");
        while !interrupted() {
            if let Some(status) = agent.try_wait()? {
                println!("the agent exited ({status}); cleaning up");
                return Ok(Outcome::Done);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        return Ok(Outcome::Done);
    }
    Ok(if interrupted() {
        Outcome::Interrupted
    } else {
        Outcome::Done
    })
}

fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------- probes (interruptible)

/// Runs socklb-probe in the node namespace and cgroup; None when interrupted.
fn run_probe<T: serde::de::DeserializeOwned>(
    sandbox: &Sandbox,
    cgroup: &TestCgroup,
    args: Vec<String>,
    worst_case_ms: u64,
) -> Result<Option<T>> {
    let mut cmd = Command::new(try_probe_bin()?);
    cmd.args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let opts = SpawnOpts::new()
        .netns(sandbox.node().path())
        .cgroup(cgroup.path());
    let mut child = Child::spawn(cmd, &opts)?;
    let stdout = child.take_stdout();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stdout {
            let _ = std::io::Read::read_to_end(&mut s, &mut buf);
        }
        buf
    });
    let deadline = Instant::now() + Duration::from_millis(worst_case_ms + 10_000);
    let status = loop {
        if interrupted() {
            return Ok(None); // the Child guard ends it
        }
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            bail!("socklb-probe {} did not finish in time", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("socklb-probe {} failed ({status})", args.join(" "));
    }
    let r = serde_json::from_slice(&out).with_context(|| {
        format!(
            "socklb-probe printed no report: {:?}",
            String::from_utf8_lossy(&out)
        )
    })?;
    Ok(Some(r))
}

fn probe_tcp(sb: &Sandbox, cg: &TestCgroup, p: &TcpProbe) -> Result<Option<TcpReport>> {
    run_probe(sb, cg, p.args(), p.worst_case_ms())
}

fn probe_udp(sb: &Sandbox, cg: &TestCgroup, p: &UdpProbe) -> Result<Option<UdpReport>> {
    run_probe(sb, cg, p.args(), p.worst_case_ms())
}

// ------------------------------------------------------------------------------ output

const BAR_WIDTH: usize = 32;

fn bar(count: u64, total: u64) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    if total == 0 {
        return " ".repeat(BAR_WIDTH);
    }
    let eighths = (count as f64 / total as f64 * (BAR_WIDTH * 8) as f64).round() as usize;
    let full = eighths / 8;
    let mut s = "█".repeat(full);
    s.push_str(PARTS[eighths % 8]);
    let used = full + usize::from(!eighths.is_multiple_of(8));
    s.push_str(&" ".repeat(BAR_WIDTH.saturating_sub(used)));
    s
}

fn print_spread(backends: &std::collections::BTreeMap<String, u64>, total: u64) {
    let width = backends.keys().map(String::len).max().unwrap_or(0);
    for (id, n) in backends {
        let pct = if total == 0 {
            0.0
        } else {
            *n as f64 * 100.0 / total as f64
        };
        println!("    {id:<width$}  {} {n:>5}  {pct:5.1}%", bar(*n, total));
    }
}

fn print_errors(errors: &std::collections::BTreeMap<String, u64>, first: Option<&str>) {
    if errors.is_empty() {
        return;
    }
    let list: Vec<String> = errors.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    println!(
        "    errors: {}{}",
        list.join(", "),
        first.map(|f| format!(" (first: {f})")).unwrap_or_default()
    );
}

/// "what getpeername showed" (or where UDP replies came from), judged against the
/// service and backend addresses.
fn print_addresses(label: &str, seen: &std::collections::BTreeMap<String, u64>, t: &Target) {
    for (addr, n) in seen {
        let verdict = if *addr == t.addr.to_string() {
            "✓ the service address (reverse translation)".to_string()
        } else if t.endpoints.iter().any(|(a, p)| format!("{a}:{p}") == *addr) {
            "✗ a backend address: not reverse-translated".to_string()
        } else {
            "? neither the service nor a backend".to_string()
        };
        println!("    {label}: {addr} ×{n}  {verdict}");
    }
}

fn report_tcp(cli: &Cli, sb: &Sandbox, cg: &TestCgroup, t: &Target) -> Result<bool> {
    let count = if t.endpoints.is_empty() {
        5
    } else {
        cli.connections.max(1)
    };
    let p = TcpProbe::new(t.addr)
        .count(count)
        .timeout_ms(1000)
        .echo(!t.endpoints.is_empty());
    let Some(r) = probe_tcp(sb, cg, &p)? else {
        return Ok(false);
    };
    println!(
        "  {} TCP connections from the node (in the cgroup): {} ok, {} failed, {:.0} ms",
        r.attempts,
        r.ok,
        r.failed(),
        r.elapsed_ms
    );
    print_spread(&r.backends, r.ok);
    print_addresses("getpeername()", &r.peers, t);
    if t.endpoints.is_empty() {
        let refused = r.error("ECONNREFUSED");
        if refused == r.attempts {
            println!(
                "    connect(): ECONNREFUSED ×{refused}, slowest {:.3} ms: refused at once by the socket hook, no packet sent",
                r.max_error_ms
            );
        } else {
            print_errors(&r.errors, r.first_error.as_deref());
            println!("    expected every connect() to be refused with ECONNREFUSED");
        }
    } else {
        print_errors(&r.errors, r.first_error.as_deref());
    }
    Ok(true)
}

fn report_udp(cli: &Cli, sb: &Sandbox, cg: &TestCgroup, t: &Target) -> Result<bool> {
    let sockets = if t.endpoints.is_empty() {
        2
    } else {
        cli.udp_sockets.max(1)
    };
    let count = if t.endpoints.is_empty() {
        1
    } else {
        cli.udp_datagrams.max(1)
    };
    let p = UdpProbe::new(t.addr)
        .sockets(sockets)
        .count(count)
        .timeout_ms(1000);
    let Some(r) = probe_udp(sb, cg, &p)? else {
        return Ok(false);
    };
    println!(
        "  {sockets} UDP sockets × {count} datagrams (sendto/recvfrom): {} sent, {} replies, {:.0} ms",
        r.sent, r.replies, r.elapsed_ms
    );
    print_spread(&r.backends, r.replies);
    print_addresses("recvfrom() source", &r.reply_sources, t);
    if r.replies > 0 {
        let sticky = r
            .per_socket
            .iter()
            .filter(|ids| ids.windows(2).all(|w| w[0] == w[1]))
            .count();
        println!(
            "    sockets that stayed on one backend: {sticky}/{}",
            r.per_socket.len()
        );
    }
    print_errors(&r.errors, r.first_error.as_deref());
    if t.endpoints.is_empty() {
        return Ok(true);
    }
    // Connected sockets: what getpeername() shows.
    let p = UdpProbe::new(t.addr)
        .sockets(2)
        .count(2)
        .connected(true)
        .timeout_ms(1000);
    let Some(r) = probe_udp(sb, cg, &p)? else {
        return Ok(false);
    };
    println!(
        "  2 connected UDP sockets × 2 datagrams (connect/send/recv): {} replies",
        r.replies
    );
    print_addresses("getpeername()", &r.reply_sources, t);
    print_errors(&r.errors, r.first_error.as_deref());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_have_a_fixed_width() {
        for (n, total) in [(0, 10), (1, 3), (10, 10), (7, 9), (0, 0)] {
            assert_eq!(bar(n, total).chars().count(), BAR_WIDTH, "{n}/{total}");
        }
        assert_eq!(bar(10, 10), "█".repeat(BAR_WIDTH));
    }

    #[test]
    fn default_manifests_point_at_examples_demo() {
        assert!(default_manifests().ends_with("examples/demo"));
    }
}
