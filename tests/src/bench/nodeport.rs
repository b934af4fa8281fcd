//! NodePort from outside the node, through socklb's TC program and through
//! kube-proxy's iptables NodePort DNAT, against plain forwarding.
//!
//! One "node" per mode, each built the same way and holding only its own mode's
//! machinery, so that no mode pays for another's hooks (conntrack, netfilter):
//! ```text
//!   client netns  lan0 192.168.77.2/24 ──veth── lan0 192.168.77.1/24  node netns (ip_forward=1)
//!                                                br0 10.244.1.254/24 ─┬─ pod 10.244.1.1 (serve)
//!                                                                     └─ pod 10.244.1.E
//! ```
//! - **direct**: the client sends straight to the pod addresses (a route to 10.244.1.0/24
//!   via the node): the node forwards without any rule; the physical limit;
//! - **socklb**: `socklb agent --devices lan0` in the node namespace on the NodePort
//!   services; the client sends to 192.168.77.1:NODE_PORT. The TC program DNATs to a
//!   pod, keeps the client address (the pods are local) and reverse-translates the
//!   replies on the way out;
//! - **iptables**: kube-proxy's iptables layout with the NodePort rules
//!   (KUBE-SERVICES → `--dst-type LOCAL` → KUBE-NODEPORTS → KUBE-EXT-x → KUBE-MARK-MASQ,
//!   KUBE-SVC-x → KUBE-SEP DNAT, then MASQUERADE in POSTROUTING), loaded with
//!   iptables-restore in the node namespace; the same client traffic.
//!
//! Nothing has a default route; the pods route only the client's /24 back to the node.
//! The measured service is the last one (its NodePort is the last rule of
//! KUBE-NODEPORTS, kube-proxy's worst case).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use socklb_bench_results::{IptablesBackend, Kind, Mode, Results};
use socklb_tests::{
    Agent, AgentConfig, Child, ManifestDir, NetNs, PinDir, Sandbox, TestCgroup, Topology,
    sandbox::assert_no_default_route,
};

use super::iptables;
use super::model::{NODE_NAME, SynthCluster, TCP_TARGET, UDP_TARGET};
use super::runner::{Config, LoadRun, Measured, TOOL_TIMEOUT, measure, progress, wait_ready};
use super::synth_files;
use super::util;

/// NodePort of service i: `NODE_PORT_BASE + i`.
pub const NODE_PORT_BASE: u16 = 20_000;
/// Most services the NodePort measurement runs at (NodePorts from 20000 up stay below
/// 65536).
pub const MAX_SERVICES: usize = 40_000;
/// Real pods behind each node.
const PODS: u8 = 4;
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const LAN: &str = "192.168.77.0/24";
const LAN_IF: &str = "lan0";
const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 254);
const POD_NET: &str = "10.244.1.0/24";

/// The pod addresses behind every node.
pub fn pods() -> Vec<Ipv4Addr> {
    (1..=PODS).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect()
}

/// One node with its pods, their servers and an outside client. Fields drop in
/// order: servers, then the client namespace, then the node and pod namespaces (the
/// veths go with their namespaces).
struct Node {
    servers: Vec<Child>,
    client: NetNs,
    sandbox: Sandbox,
}

impl Node {
    fn new(mode: Mode) -> Result<Node> {
        let sandbox = Topology::new()
            .bridge(POD_GATEWAY, 24)
            .pods(pods())
            .build()?;
        let client = NetNs::new()?;
        let mut node = Node {
            servers: Vec::new(),
            client,
            sandbox,
        };
        let ns = node.sandbox.node();
        ns.ip([
            "link",
            "add",
            LAN_IF,
            "type",
            "veth",
            "peer",
            "name",
            LAN_IF,
            "netns",
            node.client.name(),
        ])
        .context("creating the node's LAN veth")?;
        ns.ip(["addr", "add", &format!("{NODE_IP}/24"), "dev", LAN_IF])?;
        ns.ip(["link", "set", LAN_IF, "up"])?;
        let sysctl = ns.output(
            {
                let mut c = Command::new("sysctl");
                c.args(["-qw", "net.ipv4.ip_forward=1"]);
                c
            },
            None,
            Duration::from_secs(10),
        )?;
        if !sysctl.status.success() {
            bail!(
                "sysctl ip_forward in the node namespace: {}",
                String::from_utf8_lossy(&sysctl.stderr)
            );
        }
        let client = &node.client;
        client.ip(["addr", "add", &format!("{CLIENT_IP}/24"), "dev", LAN_IF])?;
        client.ip(["link", "set", LAN_IF, "up"])?;
        if mode == Mode::Direct {
            client.ip(["route", "add", POD_NET, "via", &NODE_IP.to_string()])?;
        }
        assert_no_default_route(client)?;
        for ip in pods() {
            let pod = node.sandbox.pod(ip).context("pod namespace")?;
            pod.netns()
                .ip(["route", "add", LAN, "via", &POD_GATEWAY.to_string()])?;
        }
        let exe = std::env::current_exe()?;
        for ip in pods() {
            let mut cmd = Command::new(&exe);
            cmd.args(["serve", "--ip", &ip.to_string()])
                .args(["--tcp", &TCP_TARGET.to_string()])
                .args(["--udp", &UDP_TARGET.to_string()])
                .stdout(Stdio::piped());
            let mut child = node.sandbox.spawn_in_pod(ip, cmd)?;
            let line = child.read_line(Duration::from_secs(10))?;
            if !line.contains("\"ready\":true") {
                bail!("server in pod {ip} is not ready: {line}");
            }
            node.servers.push(child);
        }
        Ok(node)
    }
}

fn targets(mode: Mode, kind: Kind, c: &SynthCluster) -> (Vec<SocketAddrV4>, String) {
    let pod_port = if kind == Kind::Udp {
        UDP_TARGET
    } else {
        TCP_TARGET
    };
    match mode {
        Mode::Direct => (
            pods()
                .into_iter()
                .map(|p| SocketAddrV4::new(p, pod_port))
                .collect(),
            format!("{PODS} pods through the node, picked at random"),
        ),
        // socklb and iptables (the only other NodePort modes): to the node's NodePort.
        _ => {
            let np = c.node_port(c.last()).unwrap_or(0);
            (
                vec![SocketAddrV4::new(NODE_IP, np)],
                format!(
                    "{NODE_IP}:{np} ({}, last in KUBE-NODEPORTS)",
                    c.key(c.last())
                ),
            )
        }
    }
}

/// NodePort at `n` services: builds the three nodes, runs every kind in every mode
/// `cfg.reps` times (rotating the order) and adds the rows to `results.nodeport`.
pub fn run(n: usize, cfg: &Config, work: &Path, results: &mut Results) -> Result<()> {
    if n > MAX_SERVICES {
        results.notes.push(format!(
            "NodePort: {n} services is more than the {MAX_SERVICES} NodePorts this benchmark numbers; not measured."
        ));
        return Ok(());
    }
    let c = SynthCluster::new(n, cfg.endpoints, pods()).with_node_ports(NODE_PORT_BASE);
    let dir = ManifestDir::new()?;
    synth_files::write_all(&dir, &c)?;

    let direct = Node::new(Mode::Direct).context("the direct node")?;
    let socklb = Node::new(Mode::Socklb).context("the socklb node")?;
    let ipt = Node::new(Mode::Iptables).context("the iptables node")?;

    // socklb: the agent in its node's namespace, TC on the LAN device. Drop order:
    // agent, pins, cgroup (no process is in the cgroup: only the outside client sends).
    let cgroup = TestCgroup::new()?;
    let pins = PinDir::new()?;
    let mut agent_cfg = AgentConfig::new(dir.path(), cgroup.path(), pins.path(), NODE_NAME)
        .in_netns(socklb.sandbox.node().path());
    agent_cfg.extra_args = ["--poll-interval-ms", "50", "--devices", LAN_IF]
        .map(String::from)
        .to_vec();
    let t0 = Instant::now();
    let mut agent = Agent::start(&agent_cfg)?;
    wait_ready(&mut agent, cfg.agent_ready_timeout)?;
    progress(format!(
        "N={n} NodePort: agent ready in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    ));

    // iptables: kube-proxy's layout with the NodePort rules in its node's namespace.
    let ipt_ns = ipt.sandbox.node().path();
    let restore = cfg.iptables_backend.restore();
    let base = work.join("ipt-np-base.rules");
    std::fs::write(&base, iptables::base())?;
    let full = work.join("ipt-np-full.rules");
    let text = iptables::full(&c, None);
    let rules = iptables::rule_count(&text);
    std::fs::write(&full, text)?;
    util::run_in(
        &ipt_ns,
        restore,
        &["--noflush"],
        Some(&base),
        TOOL_TIMEOUT,
        work,
    )?;
    let ms = util::timed_in(
        &ipt_ns,
        restore,
        &["--noflush", "--counters"],
        Some(&full),
        TOOL_TIMEOUT,
        work,
    )?;
    let _ = std::fs::remove_file(&full);
    progress(format!(
        "N={n} NodePort: {rules} iptables rules loaded in {ms:.0} ms ({restore})"
    ));
    if cfg.iptables_backend == IptablesBackend::Nft {
        results
            .notes
            .push("NodePort: iptables rules loaded with iptables-nft-restore.".into());
    }

    let client_of = |mode: Mode| -> Result<std::path::PathBuf> {
        Ok(match mode {
            Mode::Direct => direct.client.path(),
            Mode::Socklb => socklb.client.path(),
            Mode::Iptables => ipt.client.path(),
            Mode::IptablesFirst | Mode::Nft => bail!("no NodePort node for {mode}"),
        })
    };
    // The kinds the ClusterIP items ask for; all three when only `nodeport` is asked.
    let (tcp, udp) = if cfg.tcp || cfg.udp {
        (cfg.tcp, cfg.udp)
    } else {
        (true, true)
    };
    let mut kinds = Vec::new();
    if tcp {
        kinds.extend([Kind::TcpShort, Kind::TcpLong]);
    }
    if udp {
        kinds.push(Kind::Udp);
    }
    let modes: Vec<Mode> = Mode::NODE_PORT
        .into_iter()
        .filter(|m| *m == Mode::Direct || cfg.wants(*m))
        .collect();
    let runner = LoadRun { cfg, work };
    let measured = Measured {
        label: format!("N={n} NodePort"),
        n,
        kinds: &kinds,
        modes: &modes,
        pods: usize::from(PODS),
    };
    let rows = measure(
        &measured,
        &runner,
        &mut results.notes,
        |mode| Ok((client_of(mode)?, None)),
        |mode, kind| targets(mode, kind, &c),
    )?;
    results.nodeport.extend(rows);

    agent.stop()?;
    agent.uninstall()?;
    drop(agent);
    drop(pins);
    drop(cgroup);
    drop((ipt, socklb, direct));
    Ok(())
}
