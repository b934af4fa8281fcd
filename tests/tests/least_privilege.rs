//! Least privilege: the agent runs with exactly the capabilities that
//! manifests/daemonset.yaml grants its container (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON,
//! everything else dropped, no new privileges) and on a read-only root file system,
//! and it serves ClusterIP (socket hooks) and NodePort (TC) that way, also across a
//! restart that adopts its own pins. Without any one of the three it refuses to start,
//! names the missing one, and leaves nothing behind.
//!
//! No container runtime yet: the container's confinement is rebuilt around the real
//! agent with util-linux tools, in the test's own namespaces: `unshare --mount` (a
//! private mount namespace where `/`, `/sys` and the cgroup are remounted read-only,
//! as the DaemonSet's readOnlyRootFilesystem and read-only cgroup volume; bpffs stays
//! writable, as its hostPath volume) and `setpriv` (the bounding set cut to the
//! manifest's `capabilities.add`, no ambient or inheritable capabilities,
//! no_new_privs as `allowPrivilegeEscalation: false`).
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use socklb_core::builders;
use socklb_tests::multinode::{AGENT_WAIT, node_addr};
use socklb_tests::{
    Agent, AgentConfig, AgentOptions, MultiNode, Origin, PinDir, ServeSpec, TcpRun, TestCgroup,
    UdpRun, require_privileges,
};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;

/// Kubernetes capability names (as in a securityContext) and their bits
/// (linux/capability.h), for the ones the manifest may name.
const CAPABILITY_BITS: [(&str, u32); 6] = [
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("SYS_ADMIN", 21),
    ("SYS_RESOURCE", 24),
    ("PERFMON", 38),
    ("BPF", 39),
];

fn bit(name: &str) -> u32 {
    CAPABILITY_BITS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("capability {name} is not in CAPABILITY_BITS"))
}

fn mask(caps: &[String]) -> u64 {
    caps.iter().fold(0, |m, c| m | 1u64 << bit(c))
}

/// The agent container's securityContext in manifests/daemonset.yaml.
fn agent_security_context() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let ds: Value = serde_yaml::from_str(&text).unwrap();
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let agent = containers
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("a container named agent");
    agent["securityContext"].clone()
}

/// The capabilities the manifest adds, after checking that it drops all others and
/// grants nothing else (not privileged, no privilege escalation, read-only root).
fn manifest_capabilities() -> Vec<String> {
    let sc = agent_security_context();
    assert_ne!(sc["privileged"], json!(true), "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], json!(true), "{sc}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sc}");
    let add: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert!(!add.is_empty());
    add
}

/// `setpriv` with exactly `caps` (Kubernetes names): bounding set, and so the
/// permitted and effective sets of the root process it execs; nothing inheritable or
/// ambient; no_new_privs.
fn setpriv(caps: &[String]) -> Vec<String> {
    let mut bounding = String::from("-all");
    for c in caps {
        bounding.push_str(&format!(",+{}", c.to_ascii_lowercase()));
    }
    [
        "setpriv",
        "--bounding-set",
        &bounding,
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--no-new-privs",
        "--",
    ]
    .map(String::from)
    .to_vec()
}

/// The container's confinement around the agent: a private mount namespace with `/`,
/// `/sys` and `cgroup` read-only, then [`setpriv`].
fn confined(caps: &[String], cgroup: &Path) -> Vec<String> {
    let cg = cgroup.display().to_string();
    assert!(!cg.contains('\''), "{cg}");
    let script = format!(
        "mount -o remount,bind,ro / && mount -o remount,bind,ro /sys && \
         mount --bind '{cg}' '{cg}' && mount -o remount,bind,ro '{cg}' && exec \"$@\""
    );
    let mut w: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-ec",
        &script,
        "sh",
    ]
    .map(String::from)
    .to_vec();
    w.extend(setpriv(caps));
    w
}

/// A field of /proc/PID/status.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn hex(field: &str) -> u64 {
    u64::from_str_radix(field, 16).unwrap()
}

/// Mount options of `mount_point` as the process `pid` sees it.
fn mount_options(pid: u32, mount_point: &Path) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4).map(Path::new) == Some(mount_point)).then(|| f[5].to_string())
    })
}

fn assert_confined(agent: &Agent, caps: &[String], cgroup: &Path) {
    let pid = agent.pid();
    let want = mask(caps);
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            hex(&status_field(pid, set)),
            want,
            "{set} of the agent (pid {pid})"
        );
    }
    for set in ["CapInh", "CapAmb"] {
        assert_eq!(hex(&status_field(pid, set)), 0, "{set} of the agent");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for ro in [Path::new("/"), Path::new("/sys"), cgroup] {
        let opts = mount_options(pid, ro).unwrap_or_default();
        assert!(
            opts.split(',').any(|o| o == "ro"),
            "{} must be read-only for the agent: {opts}",
            ro.display()
        );
    }
    let opts = mount_options(pid, Path::new("/sys/fs/bpf")).unwrap_or_default();
    assert!(
        opts.split(',').any(|o| o == "rw"),
        "bpffs stays writable: {opts}"
    );
}

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
        .map(|ip| {
            json!({
                "addresses": [ip.to_string()], "nodeName": "node-1", "conditions": {"ready": true},
            })
        })
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

fn ids() -> BTreeSet<String> {
    [POD_A, POD_B]
        .iter()
        .map(|ip| format!("pod-{ip}"))
        .collect()
}

/// ClusterIP through the socket hooks (TCP; UDP replies from the service address) and
/// NodePort through TC from the client namespace.
fn assert_serves(mn: &mut MultiNode) {
    let to = SocketAddr::from((CLUSTER_IP, 80));
    let r = mn
        .wait_tcp(
            Origin::Node(1),
            &TcpRun::new(to).count(20),
            AGENT_WAIT,
            |r| r.ok == 20,
        )
        .unwrap();
    assert_eq!(r.seen_from.keys().cloned().collect::<BTreeSet<_>>(), ids());
    let udp = SocketAddr::from((CLUSTER_IP, 53));
    let r = mn
        .udp(Origin::Node(1), &UdpRun::new(udp).sockets(20))
        .unwrap();
    assert_eq!(r.replies, 20, "{r:?}");
    assert_eq!(r.reply_sources, BTreeMap::from([(udp.to_string(), 20)]));
    let np = SocketAddr::from((node_addr(1), NODE_PORT));
    let r = mn
        .wait_tcp(
            Origin::Client,
            &TcpRun::new(np).count(20),
            AGENT_WAIT,
            |r| r.ok == 20,
        )
        .unwrap();
    assert_eq!(r.seen_from.keys().cloned().collect::<BTreeSet<_>>(), ids());
    let np_udp = SocketAddr::from((node_addr(1), NODE_PORT_UDP));
    let r = mn
        .udp(Origin::Client, &UdpRun::new(np_udp).sockets(20))
        .unwrap();
    assert_eq!(r.replies, 20, "{r:?}");
    assert_eq!(r.reply_sources, BTreeMap::from([(np_udp.to_string(), 20)]));
}

/// The agent with exactly the manifest's capabilities, on a read-only root, serves
/// ClusterIP and NodePort, and a restarted one adopts its pins the same way.
#[test]
fn the_agent_serves_with_the_daemonsets_capabilities_on_a_read_only_root() {
    if !require_privileges() {
        return;
    }
    let caps = manifest_capabilities();
    let mut mn = MultiNode::builder()
        .nodes(1)
        .pods([POD_A, POD_B])
        .build()
        .unwrap();
    mn.serve_all(&ServeSpec::new(&[8080], &[5353])).unwrap();
    mn.write_manifest("web.yaml", &manifests()).unwrap();
    let cgroup: PathBuf = mn.node(1).cgroup().path().to_path_buf();
    let opts = AgentOptions {
        wrapper: confined(&caps, &cgroup),
        ..AgentOptions::default()
    };
    mn.start_agents(&opts).unwrap();
    assert_confined(mn.node(1).agent().unwrap(), &caps, &cgroup);
    assert_serves(&mut mn);

    // A new agent (as after a pod restart) adopts the pinned maps and links.
    mn.start_agents(&opts).unwrap();
    let agent = mn.node(1).agent().unwrap();
    assert_confined(agent, &caps, &cgroup);
    assert!(
        agent.log().contains("adopting pinned maps"),
        "{}",
        agent.log()
    );
    assert_serves(&mut mn);
    mn.shutdown().unwrap();
}

/// With any one capability of the manifest's set missing, the agent exits at once with
/// an error naming it, before it creates a map, a pin or a link.
#[test]
fn without_any_one_capability_the_agent_refuses_and_names_it() {
    if !require_privileges() {
        return;
    }
    let caps = manifest_capabilities();
    let manifests = socklb_tests::ManifestDir::new().unwrap();
    manifests
        .write("web.yaml", &manifests_text_clusterip())
        .unwrap();
    for drop in &caps {
        let rest: Vec<String> = caps.iter().filter(|c| *c != drop).cloned().collect();
        let cgroup = TestCgroup::new().unwrap();
        let base = PinDir::new().unwrap();
        let pin_dir = base.path().join("agent");
        let mut config = AgentConfig::new(manifests.path(), cgroup.path(), &pin_dir, "node-1");
        config.wrapper = setpriv(&rest);
        let mut agent = Agent::start(&config).unwrap();
        let mut status = None;
        socklb_tests::wait_until(AGENT_WAIT, || {
            status = agent.try_wait().ok().flatten();
            status.is_some()
        });
        let status = status
            .unwrap_or_else(|| panic!("without {drop} the agent kept running: {}", agent.log()));
        assert!(!status.success(), "without {drop}: {status}");
        let log = agent.log();
        assert!(
            log.contains("missing capabilities") && log.contains(&format!("CAP_{drop}")),
            "without {drop} the error must name it:\n{log}"
        );
        // The links would be pinned there: no directory, nothing attached or kept.
        assert!(
            !pin_dir.exists(),
            "without {drop}: a pin directory was created"
        );
    }
}

fn manifests_text_clusterip() -> String {
    let ports = [("http", "TCP", 80)];
    builders::manifest_text(&[
        builders::service_object("e2e", "web", &CLUSTER_IP.to_string(), &ports),
        builders::slice_object(
            "e2e",
            "web-1",
            "web",
            &[("http", "TCP", 8080)],
            &[&POD_A.to_string()],
        ),
    ])
}
