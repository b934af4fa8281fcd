//! Hitless upgrade from the previous release, and downgrade back to it.
//!
//! The previous release (`v0.1.0`, tests/src/release.rs) is built from its commit (once,
//! cached under target/upgrade/: a full debug build, several minutes on 2 cores) and
//! runs the node's data path; then it is replaced by the current agent the way the
//! DaemonSet's rolling update replaces it (maxSurge 0: the old agent stops, then the
//! new one starts on the same pins) while TCP and UDP clients run against a ClusterIP
//! (socket hooks) and a NodePort (TC). The map layout differs between the two:
//! 0.1.0 pins `lb_stats_v2`, the current one `lb_stats_v3` and five maps 0.1.0 does
//! not have. Not one connection or datagram may fail, the new programs must replace
//! the old links, and the retired map's pin must be gone once they are attached.
//!
//! The downgrade (README.md, "Upgrades and downgrades") is the same replacement the
//! other way, under the same clients; then an upgrade again, and `socklb uninstall`
//! of the current binary leaves nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use socklb_core::builders;
use socklb_tests::multinode::{AGENT_WAIT, node_addr};
use socklb_tests::release::PREVIOUS;
use socklb_tests::{
    AgentOptions, Child, MultiNode, NetNs, Origin, ServeSpec, TcpProbe, TcpReport, TcpRun,
    UdpProbe, UdpReport, probe_bin, require_privileges,
};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;
/// How long the clients run around one agent replacement.
const CLIENTS_MS: u64 = 8_000;

fn manifests() -> String {
    let ports = [("http", "TCP", 80), ("dns", "UDP", 53)];
    let service = builders::merge(
        builders::service_object("e2e", "web", &CLUSTER_IP.to_string(), &ports),
        json!({"spec": {"type": "NodePort", "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": NODE_PORT},
            {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": NODE_PORT_UDP},
        ]}}),
    );
    let endpoints: Vec<Value> = [POD_A, POD_B]
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "nodeName": "node-1", "conditions": {"ready": true}}))
        .collect();
    let slice = builders::merge(
        builders::slice_object(
            "e2e",
            "web-1",
            "web",
            &[("http", "TCP", 8080), ("dns", "UDP", 5353)],
            &[],
        ),
        json!({ "endpoints": endpoints }),
    );
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": node_addr(1).to_string()}]},
    });
    builders::manifest_text(&[service, slice, node])
}

/// A `socklb-probe` run in the background; its JSON report when it ends.
struct Background {
    child: Child,
    what: String,
}

impl Background {
    fn start(ns: &NetNs, cgroup: Option<&Path>, args: Vec<String>, what: &str) -> Self {
        let mut cmd = Command::new(probe_bin());
        cmd.args(&args).stdout(Stdio::piped());
        Background {
            child: ns.spawn(cmd, cgroup).unwrap(),
            what: what.into(),
        }
    }

    fn finish<T: DeserializeOwned>(mut self) -> T {
        use std::io::Read as _;
        let mut out = String::new();
        let mut stdout = self.child.take_stdout().expect("piped stdout");
        stdout.read_to_string(&mut out).unwrap();
        let status = self
            .child
            .wait_timeout(Duration::from_secs(30))
            .unwrap()
            .expect("the client ended");
        assert!(status.success(), "{}: {status}: {out}", self.what);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}: {out:?}", self.what))
    }
}

/// TCP and UDP clients of the ClusterIP (from the node, in its cgroup) and of the
/// NodePort (from the client namespace), for [`CLIENTS_MS`].
struct Clients {
    tcp: Vec<Background>,
    udp: Vec<Background>,
}

impl Clients {
    fn start(mn: &MultiNode) -> Clients {
        let node = mn.node(1);
        let cg = Some(node.cgroup().path());
        let tcp_args = |to: SocketAddr| {
            TcpProbe::new(to)
                .duration_ms(CLIENTS_MS)
                .interval_ms(2)
                .timeout_ms(2000)
                .args()
        };
        let udp_args = |to: SocketAddr| {
            UdpProbe::new(to)
                .sockets(4)
                .count(2)
                .timeout_ms(2000)
                .duration_ms(CLIENTS_MS)
                .interval_ms(5)
                .args()
        };
        let cluster = |port| SocketAddr::from((CLUSTER_IP, port));
        let nodeport = |port| SocketAddr::from((node_addr(1), port));
        Clients {
            tcp: vec![
                Background::start(node.netns(), cg, tcp_args(cluster(80)), "ClusterIP TCP"),
                Background::start(
                    mn.client(),
                    None,
                    tcp_args(nodeport(NODE_PORT)),
                    "NodePort TCP",
                ),
            ],
            udp: vec![
                Background::start(node.netns(), cg, udp_args(cluster(53)), "ClusterIP UDP"),
                Background::start(
                    mn.client(),
                    None,
                    udp_args(nodeport(NODE_PORT_UDP)),
                    "NodePort UDP",
                ),
            ],
        }
    }

    /// Waits for every client; fails on any failed connect or missing reply.
    fn assert_no_failure(self, what: &str) {
        for c in self.tcp {
            let name = c.what.clone();
            let r: TcpReport = c.finish();
            eprintln!("{what}: {name}: {} connects, {} ok", r.attempts, r.ok);
            assert!(r.attempts > 100, "{what}: {name}: too few connects: {r:?}");
            assert_eq!(r.ok, r.attempts, "{what}: {name}: failed connects: {r:?}");
        }
        for c in self.udp {
            let name = c.what.clone();
            let r: UdpReport = c.finish();
            eprintln!("{what}: {name}: {} sent, {} replies", r.sent, r.replies);
            assert!(r.sent > 100, "{what}: {name}: too few datagrams: {r:?}");
            assert_eq!(r.replies, r.sent, "{what}: {name}: lost datagrams: {r:?}");
        }
    }
}

/// The ids of the links pinned in `dir` (`link_*` pins), by pin name.
fn pinned_links(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.starts_with("link_") {
            continue;
        }
        let o = Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(dir.join(&name))
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        out.insert(name, v["id"].as_u64().unwrap());
    }
    out
}

fn link_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["-j", "link", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Programs attached to a cgroup, as bpftool sees them.
fn attached(cgroup: &Path) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap()
}

fn has(pins: &Path, name: &str) -> bool {
    pins.join(name).exists()
}

/// Whether a link pin is one of an IPv6 hook ("link_connect6", "link_tc_ingress6_3"),
/// which 0.1.0 does not have.
fn is_ipv6_hook(pin: &str) -> bool {
    let base = pin
        .rsplit_once('_')
        .filter(|(_, n)| n.chars().all(|c| c.is_ascii_digit()))
        .map_or(pin, |(base, _)| base);
    base.ends_with('6')
}

/// Replaces node-1's agent by one of `bin` while the clients run: old one stopped
/// (it must exit 0), new one started and ready; every link of a hook both releases
/// have is a new one and the previous links are gone from the kernel. The IPv6 hooks
/// only the current release has: it attaches them (`current`); 0.1.0 does not know
/// them and leaves them attached and serving, as README.md says.
fn replace_agent(mn: &mut MultiNode, bin: &Path, what: &str, current: bool) {
    let pins: PathBuf = mn.node(1).pins().path().to_path_buf();
    let before = pinned_links(&pins);
    assert!(before.len() >= 7, "{what}: links before: {before:?}");
    let clients = Clients::start(mn);
    std::thread::sleep(Duration::from_millis(1500));
    let opts = AgentOptions {
        bin: Some(bin.to_path_buf()),
        ..AgentOptions::default()
    };
    mn.restart_agent(1, &opts).unwrap();
    let after = pinned_links(&pins);
    let both = |links: &BTreeMap<String, u64>| -> Vec<String> {
        links.keys().filter(|p| !is_ipv6_hook(p)).cloned().collect()
    };
    assert_eq!(both(&after), both(&before), "{what}: the same hooks");
    for (pin, id) in &before {
        if is_ipv6_hook(pin) && !current {
            assert_eq!(after.get(pin), Some(id), "{what}: {pin} is left as it was");
            continue;
        }
        assert_ne!(after[pin], *id, "{what}: {pin} is still the old link");
        assert!(
            !link_exists(*id),
            "{what}: old link {id} ({pin}) still exists"
        );
    }
    if current {
        assert!(
            after.keys().any(|p| p.starts_with("link_tc_ingress6_")),
            "{what}: the IPv6 TC programs are attached: {after:?}"
        );
    }
    // Every socket hook pinned is attached to the cgroup, nothing else.
    let cg = mn.node(1).cgroup().path().to_path_buf();
    let socket_hooks = after.keys().filter(|p| !p.starts_with("link_tc_")).count();
    assert_eq!(
        attached(&cg).len(),
        socket_hooks,
        "{what}: {:?}",
        attached(&cg)
    );
    clients.assert_no_failure(what);
    // Still serving, from a fresh client too.
    let r = mn
        .wait_tcp(
            Origin::Node(1),
            &TcpRun::new(SocketAddr::from((CLUSTER_IP, 80))).count(10),
            AGENT_WAIT,
            |r| r.ok == 10,
        )
        .unwrap();
    assert_eq!(r.backends.len(), 2, "{what}: {r:?}");
}

#[test]
fn the_previous_release_is_replaced_without_a_failed_connect_and_back() {
    if !require_privileges() {
        return;
    }
    let old = PREVIOUS.socklb_bin().unwrap();
    let new = socklb_tests::socklb_bin();
    let mut mn = MultiNode::builder()
        .nodes(1)
        .pods([POD_A, POD_B])
        .build()
        .unwrap();
    mn.serve_all(&ServeSpec::new(&[8080], &[5353])).unwrap();
    mn.write_manifest("web.yaml", &manifests()).unwrap();
    let pins: PathBuf = mn.node(1).pins().path().to_path_buf();

    // 0.1.0 runs the node.
    mn.start_agents(&AgentOptions {
        bin: Some(old.clone()),
        ..AgentOptions::default()
    })
    .unwrap();
    assert!(has(&pins, "lb_stats_v2") && !has(&pins, "lb_stats_v3"));
    let new_maps = [
        "lb_stats_v3",
        "lb4_aff_v1",
        "lb4_affmatch_v1",
        "lb_agent_v1",
        "lb4_rej_rate_v1",
        "lb4_maglev_v1",
    ];
    for m in new_maps {
        assert!(!has(&pins, m), "0.1.0 has no {m}");
    }

    // Upgrade: the new maps are there, the retired one's pin is gone.
    replace_agent(&mut mn, &new, "upgrade from 0.1.0", true);
    for m in new_maps {
        assert!(has(&pins, m), "after the upgrade: {m}");
    }
    assert!(
        !has(&pins, "lb_stats_v2"),
        "the retired map's pin is removed once the new programs are attached"
    );

    // Downgrade: 0.1.0 adopts the maps it knows and makes lb_stats_v2 anew; the maps
    // it does not know stay pinned, unused.
    replace_agent(&mut mn, &old, "downgrade to 0.1.0", false);
    assert!(has(&pins, "lb_stats_v2"));
    for m in new_maps {
        assert!(has(&pins, m), "after the downgrade, {m} stays pinned");
    }

    // And up again; the current `socklb uninstall` removes every pin, retired ones too.
    replace_agent(&mut mn, &new, "upgrade again", true);
    assert!(!has(&pins, "lb_stats_v2"));
    mn.shutdown().unwrap();
    let left = mn.node(1).pins().entries();
    assert!(left.is_empty(), "pins left: {left:?}");
}
