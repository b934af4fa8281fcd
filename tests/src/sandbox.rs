//! The topology: a "node" network namespace holding a bridge, and one network namespace
//! per pod address, each joined to the bridge by a veth pair. No default route anywhere,
//! in either family: an untranslated packet to a service address has nowhere to go.
//! Dual-stack: the bridge and every pod also have the IPv6 twin of their IPv4 address
//! ([`crate::family`]: 10.244.1.10/16 is also fd00:10:244:1::10/48), so one sandbox
//! serves a test in either family; a pod is named by its IPv4 address.
//!
//! ```text
//!   node netns (slbP-N)                       pod netns (slbP-M), one per pod
//!   ┌───────────────────────────────┐         ┌──────────────────────────┐
//!   │ lo                            │         │ lo                       │
//!   │ br0 10.244.0.1/16 ── vh0 ─────┼─ veth ──┼─ eth0 10.244.1.10/16     │
//!   │ fd00:10:244::1/48             │         │ fd00:10:244:1::10/48     │
//!   │                  └── vh1 ─────┼─ veth ──┼─ ...                     │
//!   └───────────────────────────────┘         └──────────────────────────┘
//! ```
//! Clients run in the node namespace (inside a [`crate::TestCgroup`], where the agent's
//! socket hooks apply); `socklb-probe serve` runs in the pods.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::agent::probe_bin;
use crate::cgroup::TestCgroup;
use crate::child::{Child, SpawnOpts};
use crate::names::{pod_veth_name, valid_ifname};
use crate::netns::NetNs;
use crate::report::{TcpProbe, TcpReport, UdpProbe, UdpReport};

/// The bridge in the node namespace.
pub const BRIDGE: &str = "br0";
/// The pod side of each veth pair.
pub const POD_IF: &str = "eth0";
/// Default bridge address (the node's address on the pod network).
pub const DEFAULT_BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Default pod network prefix length.
pub const DEFAULT_PREFIX: u8 = 16;
/// How long `serve` may take to print its ready line.
pub const SERVE_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Builder of a [`Sandbox`].
#[derive(Clone, Debug)]
pub struct Topology {
    bridge_addr: Ipv4Addr,
    prefix: u8,
    pods: Vec<Ipv4Addr>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    /// A node with bridge 10.244.0.1/16 and no pods yet.
    pub fn new() -> Self {
        Self {
            bridge_addr: DEFAULT_BRIDGE_ADDR,
            prefix: DEFAULT_PREFIX,
            pods: Vec::new(),
        }
    }

    /// Another bridge address / prefix (pods must be inside it).
    pub fn bridge(mut self, addr: Ipv4Addr, prefix: u8) -> Self {
        self.bridge_addr = addr;
        self.prefix = prefix;
        self
    }

    /// Adds a pod address.
    pub fn pod(mut self, ip: Ipv4Addr) -> Self {
        self.pods.push(ip);
        self
    }

    /// Adds pod addresses.
    pub fn pods(mut self, ips: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.pods.extend(ips);
        self
    }

    /// Creates the namespaces, bridge and veths.
    pub fn build(self) -> Result<Sandbox> {
        if !(1..=30).contains(&self.prefix) {
            bail!("bad prefix length {}", self.prefix);
        }
        let node = NetNs::new()?;
        let bridge = format!("{}/{}", self.bridge_addr, self.prefix);
        node.ip(["link", "add", BRIDGE, "type", "bridge"])?;
        node.ip(["addr", "add", &bridge, "dev", BRIDGE])?;
        add_v6_twin(&node, BRIDGE, self.bridge_addr, self.prefix)?;
        node.ip(["link", "set", BRIDGE, "up"])?;
        assert_no_default_route(&node)?;
        let mut sb = Sandbox {
            pods: BTreeMap::new(),
            node,
            bridge_addr: self.bridge_addr,
            prefix: self.prefix,
            next_if: 0,
        };
        for ip in self.pods {
            sb.add_pod(ip)?;
        }
        Ok(sb)
    }
}

/// One pod: its namespace, the host-side veth name and the processes running in it.
#[derive(Debug)]
pub struct Pod {
    // Field order is drop order: processes first, then the namespace.
    servers: Vec<Child>,
    tcp: BTreeSet<u16>,
    udp: BTreeSet<u16>,
    ip: Ipv4Addr,
    host_if: String,
    ns: NetNs,
}

impl Pod {
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    pub fn netns(&self) -> &NetNs {
        &self.ns
    }
    /// The veth end in the node namespace (attached to the bridge).
    pub fn host_if(&self) -> &str {
        &self.host_if
    }
    /// Pids of the `serve` processes.
    pub fn server_pids(&self) -> Vec<u32> {
        self.servers.iter().map(Child::pid).collect()
    }
    /// TCP ports its `serve` processes listen on.
    pub fn served_tcp(&self) -> BTreeSet<u16> {
        self.tcp.clone()
    }
    /// UDP ports its `serve` processes listen on.
    pub fn served_udp(&self) -> BTreeSet<u16> {
        self.udp.clone()
    }
}

/// A built topology. Drop ends the pods' processes, then deletes the pod namespaces
/// (which destroys their veths), then the node namespace (and its bridge).
#[derive(Debug)]
pub struct Sandbox {
    // Field order is drop order: pods (and their processes) before the node.
    pods: BTreeMap<Ipv4Addr, Pod>,
    node: NetNs,
    bridge_addr: Ipv4Addr,
    prefix: u8,
    next_if: u32,
}

fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    (u32::from(ip) & mask) == (u32::from(net) & mask)
}

/// Gives `dev` the IPv6 twin of `v4`/`prefix`, without duplicate address detection
/// (usable at once; the sandbox is the only user of its addresses).
fn add_v6_twin(ns: &NetNs, dev: &str, v4: Ipv4Addr, prefix: u8) -> Result<()> {
    let family = crate::family::Family::V6;
    let addr = format!("{}/{}", family.ip(v4), family.prefix(prefix));
    ns.ip(["-6", "addr", "add", &addr, "dev", dev, "nodad"])?;
    Ok(())
}

/// Fails when the namespace has a default route (it never should).
pub fn assert_no_default_route(ns: &NetNs) -> Result<()> {
    for family in ["-4", "-6"] {
        let out = ns.ip([family, "route", "show", "default"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.trim().is_empty() {
            bail!(
                "network namespace {} has a default route: {}",
                ns.name(),
                text.trim()
            );
        }
    }
    Ok(())
}

impl Sandbox {
    /// The node namespace (bridge, clients).
    pub fn node(&self) -> &NetNs {
        &self.node
    }

    /// The node's address on the bridge.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        self.bridge_addr
    }

    /// Pod addresses, sorted.
    pub fn pod_ips(&self) -> Vec<Ipv4Addr> {
        self.pods.keys().copied().collect()
    }

    pub fn pod(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.pods.get(&ip)
    }

    /// The pod with address `ip` in either family.
    pub fn pod_at(&self, ip: std::net::IpAddr) -> Option<&Pod> {
        self.pods.get(&crate::family::pod_key(ip)?)
    }

    /// Names of every namespace of the sandbox (node first).
    pub fn netns_names(&self) -> Vec<String> {
        std::iter::once(self.node.name().to_string())
            .chain(self.pods.values().map(|p| p.ns.name().to_string()))
            .collect()
    }

    /// Adds a pod namespace with `ip` on its veth, attached to the bridge.
    pub fn add_pod(&mut self, ip: Ipv4Addr) -> Result<()> {
        if self.pods.contains_key(&ip) {
            bail!("pod {ip} exists already");
        }
        let host = u32::from(ip) & !(u32::MAX << (32 - u32::from(self.prefix)));
        let hostmask = !(u32::MAX << (32 - u32::from(self.prefix)));
        if !in_subnet(ip, self.bridge_addr, self.prefix)
            || ip == self.bridge_addr
            || host == 0
            || host == hostmask
        {
            bail!(
                "pod address {ip} is not a host address of {}/{}",
                self.bridge_addr,
                self.prefix
            );
        }
        let host_if = pod_veth_name(self.next_if);
        self.next_if += 1;
        if !valid_ifname(&host_if) {
            bail!("interface name {host_if} too long");
        }
        let ns = NetNs::new()?;
        let created = self.node.ip([
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            POD_IF,
            "netns",
            ns.name(),
        ]);
        if let Err(e) = created {
            return Err(e.context(format!("creating the veth of pod {ip}")));
        }
        let setup = || -> Result<()> {
            self.node
                .ip(["link", "set", &host_if, "master", BRIDGE, "up"])?;
            ns.ip([
                "addr",
                "add",
                &format!("{ip}/{}", self.prefix),
                "dev",
                POD_IF,
            ])?;
            add_v6_twin(&ns, POD_IF, ip, self.prefix)?;
            ns.ip(["link", "set", POD_IF, "up"])?;
            assert_no_default_route(&ns)
        };
        if let Err(e) = setup() {
            let _ = self.node.ip(["link", "del", &host_if]);
            return Err(e.context(format!("setting up pod {ip}")));
        }
        self.pods.insert(
            ip,
            Pod {
                servers: Vec::new(),
                tcp: BTreeSet::new(),
                udp: BTreeSet::new(),
                ip,
                host_if,
                ns,
            },
        );
        Ok(())
    }

    /// Removes a pod at run time: ends its processes, deletes its veth and namespace.
    pub fn remove_pod(&mut self, ip: Ipv4Addr) -> Result<()> {
        let mut pod = self
            .pods
            .remove(&ip)
            .ok_or_else(|| anyhow!("no pod {ip}"))?;
        pod.servers.clear(); // Child guards: SIGTERM/SIGKILL by pid, reaped
        let r = self.node.ip(["link", "del", &pod.host_if]);
        drop(pod); // ip netns del
        r.map(|_| ())
    }

    /// Ends the `serve` processes of a pod (the namespace stays: connections to it are
    /// then refused by its kernel).
    pub fn stop_servers(&mut self, ip: Ipv4Addr) -> Result<()> {
        let pod = self
            .pods
            .get_mut(&ip)
            .ok_or_else(|| anyhow!("no pod {ip}"))?;
        pod.servers.clear();
        pod.tcp.clear();
        pod.udp.clear();
        Ok(())
    }

    /// Starts `socklb-probe serve --id ID --tcp ... --udp ...` in the pod and waits until
    /// it has bound every port. The process belongs to the pod (ended with it). Returns
    /// its pid.
    pub fn serve(&mut self, ip: Ipv4Addr, id: &str, tcp: &[u16], udp: &[u16]) -> Result<u32> {
        let pod = self
            .pods
            .get_mut(&ip)
            .ok_or_else(|| anyhow!("no pod {ip}"))?;
        let mut cmd = Command::new(probe_bin());
        cmd.args(["serve", "--id", id]);
        for p in tcp {
            cmd.arg("--tcp").arg(p.to_string());
        }
        for p in udp {
            cmd.arg("--udp").arg(p.to_string());
        }
        cmd.stdout(Stdio::piped());
        let mut child = Child::spawn(cmd, &SpawnOpts::new().netns(pod.ns.path()))?;
        let line = child.read_line(SERVE_READY_TIMEOUT)?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("serve printed {line:?} instead of its ready line"))?;
        if v.get("ready").and_then(serde_json::Value::as_bool) != Some(true) {
            bail!("serve in pod {ip} is not ready: {line}");
        }
        let pid = child.pid();
        pod.servers.push(child);
        pod.tcp.extend(tcp);
        pod.udp.extend(udp);
        Ok(pid)
    }

    /// Spawns a command in the node namespace, optionally in a cgroup. The caller owns
    /// the guard (drop it before the sandbox).
    pub fn spawn_in_node(&self, cmd: Command, cgroup: Option<&TestCgroup>) -> Result<Child> {
        self.node.spawn(cmd, cgroup.map(TestCgroup::path))
    }

    /// Spawns a command in a pod's namespace. The caller owns the guard.
    pub fn spawn_in_pod(&self, ip: Ipv4Addr, cmd: Command) -> Result<Child> {
        let pod = self.pods.get(&ip).ok_or_else(|| anyhow!("no pod {ip}"))?;
        pod.ns.spawn(cmd, None)
    }

    /// Runs `socklb-probe tcp` in the node namespace (in `cgroup` when given: that is
    /// where the agent's hooks apply).
    pub fn tcp_probe(&self, cgroup: Option<&TestCgroup>, probe: &TcpProbe) -> Result<TcpReport> {
        tcp_probe_in(&self.node, cgroup.map(TestCgroup::path), probe)
    }

    /// Runs `socklb-probe udp` in the node namespace (in `cgroup` when given).
    pub fn udp_probe(&self, cgroup: Option<&TestCgroup>, probe: &UdpProbe) -> Result<UdpReport> {
        udp_probe_in(&self.node, cgroup.map(TestCgroup::path), probe)
    }
}

fn run_probe<T: serde::de::DeserializeOwned>(
    ns: &NetNs,
    cgroup: Option<&Path>,
    args: Vec<String>,
    worst_case_ms: u64,
) -> Result<T> {
    let mut cmd = Command::new(probe_bin());
    cmd.args(&args);
    let timeout = Duration::from_millis(worst_case_ms.saturating_add(10_000));
    let out = ns.output(cmd, cgroup, timeout)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "socklb-probe {} failed ({}): {}",
            args.join(" "),
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

/// Runs `socklb-probe tcp` in any namespace of the sandbox.
pub fn tcp_probe_in(ns: &NetNs, cgroup: Option<&Path>, probe: &TcpProbe) -> Result<TcpReport> {
    run_probe(ns, cgroup, probe.args(), probe.worst_case_ms())
}

/// Runs `socklb-probe udp` in any namespace of the sandbox.
pub fn udp_probe_in(ns: &NetNs, cgroup: Option<&Path>, probe: &UdpProbe) -> Result<UdpReport> {
    run_probe(ns, cgroup, probe.args(), probe.worst_case_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_membership() {
        let net = Ipv4Addr::new(10, 244, 0, 1);
        assert!(in_subnet(Ipv4Addr::new(10, 244, 255, 3), net, 16));
        assert!(!in_subnet(Ipv4Addr::new(10, 245, 0, 3), net, 16));
        assert!(!in_subnet(Ipv4Addr::new(10, 96, 0, 10), net, 16));
        assert!(in_subnet(Ipv4Addr::new(10, 244, 0, 200), net, 24));
        assert!(!in_subnet(Ipv4Addr::new(10, 244, 1, 200), net, 24));
    }
}
