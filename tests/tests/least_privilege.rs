//! Least privilege: the agent runs with exactly the capabilities that
//! manifests/daemonset.yaml grants its container (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON,
//! CAP_SYS_ADMIN, CAP_SYS_PTRACE, everything else dropped) and on a read-only root
//! file system. It serves ClusterIP (socket hooks) and NodePort (TC) that way, also
//! across a restart that adopts its own pins, and destroys a pod's stale socket in the
//! pod's network namespace. Each capability is shown to be used: without
//! CAP_SYS_ADMIN (which also grants what CAP_BPF and CAP_PERFMON do), any one of the
//! other three makes the agent refuse to start, name it and leave nothing behind;
//! without CAP_SYS_ADMIN or CAP_SYS_PTRACE it runs and says that stale-socket
//! termination stays in its own network namespace.
//!
//! No container runtime yet: the container's confinement is rebuilt around the real
//! agent with util-linux tools, in the test's own namespaces: `unshare --mount` (a
//! private mount namespace where `/`, `/sys` and the cgroup are remounted read-only,
//! as the DaemonSet's readOnlyRootFilesystem and read-only cgroup volume; bpffs stays
//! writable, as its hostPath volume) and `setpriv` (the bounding set cut to the
//! manifest's `capabilities.add`, no ambient or inheritable capabilities, no_new_privs
//! where the manifest says `allowPrivilegeEscalation: false`).
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use socklb_core::builders;
use socklb_tests::hold::{HoldProbe, HoldSpec, errors, events_of};
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
const CAPABILITY_BITS: [(&str, u32); 7] = [
    ("NET_ADMIN", 12),
    ("SYS_PTRACE", 19),
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

/// The agent container's confinement as the manifest declares it.
struct Declared {
    /// `capabilities.add` (Kubernetes names).
    caps: Vec<String>,
    /// `allowPrivilegeEscalation: false`: no_new_privs.
    no_new_privs: bool,
}

/// The manifest's confinement, after checking that it drops every capability it does
/// not add and grants nothing else (not privileged, read-only root).
fn declared() -> Declared {
    let sc = agent_security_context();
    assert_ne!(sc["privileged"], json!(true), "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], json!(true), "{sc}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sc}");
    let caps: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert!(!caps.is_empty());
    Declared {
        caps,
        no_new_privs: sc["allowPrivilegeEscalation"] == json!(false),
    }
}

impl Declared {
    /// The same without `drop`.
    fn without(&self, drop: &[&str]) -> Declared {
        Declared {
            caps: self
                .caps
                .iter()
                .filter(|c| !drop.contains(&c.as_str()))
                .cloned()
                .collect(),
            no_new_privs: self.no_new_privs,
        }
    }
}

/// `setpriv` with exactly `caps` (Kubernetes names): bounding set, and so the
/// permitted and effective sets of the root process it execs; nothing inheritable or
/// ambient; no_new_privs.
fn setpriv(d: &Declared) -> Vec<String> {
    let mut bounding = String::from("-all");
    for c in &d.caps {
        bounding.push_str(&format!(",+{}", c.to_ascii_lowercase()));
    }
    let mut w: Vec<String> = [
        "setpriv",
        "--bounding-set",
        &bounding,
        "--inh-caps=-all",
        "--ambient-caps=-all",
    ]
    .map(String::from)
    .to_vec();
    if d.no_new_privs {
        w.push("--no-new-privs".into());
    }
    w.push("--".into());
    w
}

/// The container's confinement around the agent: a private mount namespace with `/`,
/// `/sys` and `cgroup` read-only, then [`setpriv`].
fn confined(d: &Declared, cgroup: &Path) -> Vec<String> {
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
    w.extend(setpriv(d));
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

fn assert_confined(agent: &Agent, d: &Declared, cgroup: &Path) {
    let pid = agent.pid();
    let want = mask(&d.caps);
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
    let no_new_privs = if d.no_new_privs { "1" } else { "0" };
    assert_eq!(status_field(pid, "NoNewPrivs"), no_new_privs);
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
    manifests_with(&[POD_A, POD_B])
}

/// web with these endpoints (on node-1), and node-1.
fn manifests_with(pods: &[Ipv4Addr]) -> String {
    let ports = [("http", "TCP", 80), ("dns", "UDP", 53)];
    let service = builders::merge(
        builders::service_object("e2e", "web", &CLUSTER_IP.to_string(), &ports),
        json!({"spec": {"type": "NodePort", "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": NODE_PORT},
            {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": NODE_PORT_UDP},
        ]}}),
    );
    let endpoints: Vec<Value> = pods
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
    let d = declared();
    let mut mn = MultiNode::builder()
        .nodes(1)
        .pods([POD_A, POD_B])
        .build()
        .unwrap();
    mn.serve_all(&ServeSpec::new(&[8080], &[5353])).unwrap();
    mn.write_manifest("web.yaml", &manifests()).unwrap();
    let cgroup: PathBuf = mn.node(1).cgroup().path().to_path_buf();
    let opts = AgentOptions {
        wrapper: confined(&d, &cgroup),
        ..AgentOptions::default()
    };
    mn.start_agents(&opts).unwrap();
    assert_confined(mn.node(1).agent().unwrap(), &d, &cgroup);
    assert_serves(&mut mn);

    // A new agent (as after a pod restart) adopts the pinned maps and links.
    mn.start_agents(&opts).unwrap();
    let agent = mn.node(1).agent().unwrap();
    assert_confined(agent, &d, &cgroup);
    assert!(
        agent.log().contains("adopting pinned maps"),
        "{}",
        agent.log()
    );
    assert_serves(&mut mn);
    assert_destroys_a_pods_stale_socket(&mut mn);
    mn.shutdown().unwrap();
}

/// Connected UDP sockets in pod A's network namespace (a process of the node's cgroup,
/// with every capability: more than the agent has) to the ClusterIP's DNS port; pod B
/// leaves the Service: the sockets it served get ECONNABORTED, so the agent opened and
/// entered the pod's namespace.
fn assert_destroys_a_pods_stale_socket(mn: &mut MultiNode) {
    let dns = SocketAddr::from((CLUSTER_IP, 53));
    let netns = mn.node(1).sandbox().pod(POD_A).unwrap().netns().path();
    let cgroup = mn.node(1).cgroup().path().to_path_buf();
    let mut p = HoldProbe::spawn(
        &netns,
        Some(&cgroup),
        &HoldSpec::new().udp(dns).repeat(12),
        AGENT_WAIT,
    )
    .unwrap();
    let b = format!("pod-{POD_B}");
    let on_b: Vec<usize> = p
        .sockets
        .iter()
        // "pod-IP" (and the peer address the pod saw, with --report-peer).
        .filter(|s| {
            s.backend
                .as_deref()
                .and_then(|x| x.split_whitespace().next())
                == Some(b.as_str())
        })
        .map(|s| s.index)
        .collect();
    assert!(!on_b.is_empty(), "no socket landed on {b}: {:?}", p.sockets);
    mn.write_manifest("web.yaml", &manifests_with(&[POD_A]))
        .unwrap();
    let all_failed = |ev: &[Value]| on_b.iter().all(|i| !events_of(ev, "error", *i).is_empty());
    assert!(
        p.wait(AGENT_WAIT, all_failed),
        "the stale sockets in the pod's namespace got no error: {:?}\n{}",
        p.events(),
        mn.node(1).agent().unwrap().log_tail(10)
    );
    for (index, error, _) in errors(p.events()) {
        assert!(
            on_b.contains(&index),
            "socket {index} was not stale: {error}"
        );
        assert_eq!(error, "ECONNABORTED");
    }
    let log = mn.node(1).agent().unwrap().log();
    assert!(!log.contains("own network namespace only"), "{log}");
    assert!(!log.contains("could not be opened or entered"), "{log}");
    p.quit();
}

/// Without CAP_SYS_ADMIN (which grants what CAP_BPF and CAP_PERFMON do as well), the
/// agent refuses to start without any one of CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON,
/// names it and creates nothing; without CAP_SYS_ADMIN or CAP_SYS_PTRACE it serves and
/// says that stale sockets are destroyed in its own network namespace only.
#[test]
fn each_capability_is_needed_and_a_missing_one_is_named() {
    if !require_privileges() {
        return;
    }
    let d = declared();
    let manifests = socklb_tests::ManifestDir::new().unwrap();
    manifests
        .write("web.yaml", &manifests_text_clusterip())
        .unwrap();
    let run = |without: &[&str]| {
        let cgroup = TestCgroup::new().unwrap();
        let base = PinDir::new().unwrap();
        let pin_dir = base.path().join("agent");
        let mut config = AgentConfig::new(manifests.path(), cgroup.path(), &pin_dir, "node-1");
        config.wrapper = setpriv(&d.without(without));
        let mut agent = Agent::start(&config).unwrap();
        let mut status = None;
        let exited = socklb_tests::wait_until(AGENT_WAIT, || {
            status = agent.try_wait().ok().flatten();
            status.is_some() || agent.log().contains("ready")
        });
        assert!(exited, "without {without:?}: {}", agent.log());
        (agent, status, pin_dir, base, cgroup)
    };
    for required in ["BPF", "NET_ADMIN", "PERFMON"] {
        assert!(d.caps.iter().any(|c| c == required), "{:?}", d.caps);
        let (agent, status, pin_dir, _base, _cgroup) = run(&["SYS_ADMIN", required]);
        let status = status.unwrap_or_else(|| {
            panic!("without {required} the agent kept running: {}", agent.log())
        });
        assert!(!status.success(), "without {required}: {status}");
        let log = agent.log();
        assert!(
            log.contains("missing capabilities") && log.contains(&format!("CAP_{required}")),
            "without {required} the error must name it:\n{log}"
        );
        // The links would be pinned there: no directory, nothing attached or kept.
        assert!(
            !pin_dir.exists(),
            "without {required}: a pin directory was created"
        );
    }
    for optional in ["SYS_ADMIN", "SYS_PTRACE"] {
        assert!(d.caps.iter().any(|c| c == optional), "{:?}", d.caps);
        let (mut agent, status, _pin_dir, _base, cgroup) = run(&[optional]);
        assert!(status.is_none(), "without {optional}: {}", agent.log());
        let log = agent.log();
        assert!(
            log.contains("own network namespace only") && log.contains(&format!("CAP_{optional}")),
            "without {optional} the agent says what it cannot do:\n{log}"
        );
        agent.stop().unwrap();
        let out = socklb_tests::uninstall(cgroup.path(), &_pin_dir).unwrap();
        assert!(out.status.success(), "{out:?}");
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
