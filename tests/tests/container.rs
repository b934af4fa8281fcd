//! The socklb image (`cargo xtask image`) run by podman exactly as
//! manifests/daemonset.yaml declares it: the pod spec is read from the file and every
//! field translated into podman flags (tests/src/container.rs), so the privileges, the
//! mounts and the init container tested here are the manifest's, not a copy of them.
//!
//! The pod runs on a test "node": the node's network namespace of a one-node
//! [`MultiNode`] is its host network, the node's test cgroup stands in for the host's
//! cgroup2 root and a pin directory of the test's for the host's bpffs (the
//! manifest's two hostPath volumes), and a manifest directory is mounted into the
//! container (`--manifests`; the DaemonSet itself watches the API server).
//!
//! Under CI=true a missing prerequisite fails the test; podman is installed by
//! `cargo xtask setup`, which `cargo xtask image` (run here to build the image) runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use socklb_core::builders;
use socklb_tests::container::{
    Additions, CgroupParent, Container, ContainerRun, HostPaths, HttpProbe, PodSpec, TEST_LABEL,
    capability_mask, in_netns, mount_options, podman, proc_status, test_image,
};
use socklb_tests::multinode::{AGENT_WAIT, node_addr};
use socklb_tests::{
    MultiNode, Origin, ServeSpec, Status, TcpRun, TempDir, TestCgroup, UdpRun, cgroup2_root, names,
    require_privileges, wait_until,
};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;
/// Where the test mounts its manifest directory in the agent container.
const MANIFESTS_IN_CONTAINER: &str = "/run/socklb/manifests";

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

fn ids() -> BTreeSet<String> {
    [POD_A, POD_B]
        .iter()
        .map(|ip| format!("pod-{ip}"))
        .collect()
}

/// ClusterIP (socket hooks, from the node's cgroup) and NodePort (TC, from the client),
/// TCP and UDP, every backend answering.
fn assert_serves(mn: &mut MultiNode, what: &str) {
    let to = SocketAddr::from((CLUSTER_IP, 80));
    let r = mn
        .wait_tcp(
            Origin::Node(1),
            &TcpRun::new(to).count(20),
            AGENT_WAIT,
            |r| r.ok == 20,
        )
        .unwrap_or_else(|e| panic!("{what}: ClusterIP TCP: {e:#}"));
    assert_eq!(r.seen_from.keys().cloned().collect::<BTreeSet<_>>(), ids());
    let udp = SocketAddr::from((CLUSTER_IP, 53));
    let r = mn
        .udp(Origin::Node(1), &UdpRun::new(udp).sockets(20))
        .unwrap();
    assert_eq!(r.replies, 20, "{what}: ClusterIP UDP: {r:?}");
    assert_eq!(r.reply_sources, BTreeMap::from([(udp.to_string(), 20)]));
    let np = SocketAddr::from((node_addr(1), NODE_PORT));
    let r = mn
        .wait_tcp(
            Origin::Client,
            &TcpRun::new(np).count(20),
            AGENT_WAIT,
            |r| r.ok == 20,
        )
        .unwrap_or_else(|e| panic!("{what}: NodePort TCP: {e:#}"));
    assert_eq!(r.seen_from.keys().cloned().collect::<BTreeSet<_>>(), ids());
    let np_udp = SocketAddr::from((node_addr(1), NODE_PORT_UDP));
    let r = mn
        .udp(Origin::Client, &UdpRun::new(np_udp).sockets(20))
        .unwrap();
    assert_eq!(r.replies, 20, "{what}: NodePort UDP: {r:?}");
}

/// The value after `flag` in a container's args.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("the manifest's args have no {flag}: {args:?}"))
}

/// The kubelet's httpGet probe of a host-network pod: the node's address space, i.e.
/// the node's network namespace, on loopback.
fn probe(netns: &Path, p: &HttpProbe) -> Option<u16> {
    let path = p.path.clone();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p.port));
    in_netns(netns, move || socklb_tests::http::status(addr, &path))
        .ok()
        .flatten()
}

/// Programs attached to a cgroup, as bpftool sees them.
fn attached(cgroup: &Path) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap()
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

/// The containers of this test that podman still knows.
fn containers_left(label: &str) -> String {
    podman([
        "ps",
        "--all",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label={TEST_LABEL}={label}"),
    ])
    .unwrap()
}

fn container_name(label: &str, c: &ContainerRun) -> String {
    format!("{label}-{}", c.name)
}

/// The agent container runs with exactly the manifest's privileges, on a read-only
/// root, in a cgroup under the test's parent; serves ClusterIP and NodePort; answers
/// the manifest's probes and `socklb status` through `podman exec`; its stop leaves
/// the data path serving; its removal and `socklb uninstall` (run from the image with
/// the agent container's privileges) leave no pin, no link and no container.
#[test]
fn the_image_runs_as_the_daemonset_declares_and_leaves_nothing() {
    if !require_privileges() {
        return;
    }
    let image = test_image().unwrap();
    let root_cgroup = cgroup2_root().unwrap();
    let root_before = attached(&root_cgroup);

    let mut mn = MultiNode::builder()
        .nodes(1)
        .pods([POD_A, POD_B])
        .build()
        .unwrap();
    mn.serve_all(&ServeSpec::new(&[8080], &[5353])).unwrap();
    mn.write_manifest("web.yaml", &manifests()).unwrap();
    let parent = CgroupParent::new();
    let label = names::dir_name();
    let netns = mn.node(1).netns().path();
    let cgroup: PathBuf = mn.node(1).cgroup().path().to_path_buf();
    let pins: PathBuf = mn.node(1).pins().path().to_path_buf();
    let add = Additions {
        netns: netns.clone(),
        node_name: "node-1".into(),
        image: image.clone(),
        host_paths: HostPaths::new()
            .map("/sys/fs/bpf", &pins)
            .map("/sys/fs/cgroup", &cgroup),
        mounts_ro: vec![(
            mn.manifests().path().to_path_buf(),
            MANIFESTS_IN_CONTAINER.into(),
        )],
        cgroup_parent: parent.name().into(),
        label: label.clone(),
    };
    let spec = PodSpec::daemonset().unwrap();
    let (init, main) = spec.translate(&add).unwrap();

    // Init containers first, each to completion, as the kubelet runs them. The host's
    // bpffs is there, so mount-bpffs mounts nothing.
    for c in &init {
        let out = Container::run_to_end(&container_name(&label, c), c, &image, &c.args).unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "init container {}: {log}", c.name);
        eprintln!("init container {}: {}", c.name, log.trim());
    }
    assert!(
        pins.read_dir().unwrap().next().is_none(),
        "the init container made nothing in bpffs"
    );

    let run = main.iter().find(|c| c.name == "agent").expect("agent");
    let mut args = run.args.clone();
    args.extend(["--manifests".into(), MANIFESTS_IN_CONTAINER.into()]);
    let agent = Container::start(&container_name(&label, run), run, &image, &args).unwrap();

    // Ready as the kubelet would see it: the manifest's readiness probe.
    let readiness = run.readiness.clone().expect("readinessProbe");
    assert!(
        wait_until(AGENT_WAIT, || probe(&netns, &readiness) == Some(200)),
        "readiness {readiness:?} never answered 200; log:\n{}",
        agent.logs()
    );
    let liveness = run.liveness.clone().expect("livenessProbe");
    assert_eq!(probe(&netns, &liveness), Some(200), "{liveness:?}");

    // Exactly the manifest's capabilities, privilege escalation and root file system
    // as it says, read-only cgroup, writable bpffs.
    let pid = agent.pid().unwrap();
    let sc = &spec.raw()["containers"][0]["securityContext"];
    assert_eq!(spec.raw()["containers"][0]["name"], "agent");
    let add_caps: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let want = capability_mask(&add_caps).unwrap();
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        let have = u64::from_str_radix(&proc_status(pid, set).unwrap(), 16).unwrap();
        assert_eq!(have, want, "{set} of the agent (pid {pid}): {have:#x}");
    }
    let no_new_privs = if sc["allowPrivilegeEscalation"] == json!(false) {
        "1"
    } else {
        "0"
    };
    assert_eq!(
        proc_status(pid, "NoNewPrivs").unwrap(),
        no_new_privs,
        "{sc}"
    );
    let root = if sc["readOnlyRootFilesystem"] == json!(true) {
        "ro"
    } else {
        "rw"
    };
    let cgroup_mount = flag(&run.args, "--cgroup");
    for (path, want) in [("/", root), (cgroup_mount, "ro"), ("/sys/fs/bpf", "rw")] {
        let opts = mount_options(pid, path).unwrap_or_default();
        assert!(
            opts.split(',').any(|o| o == want),
            "{path} in the agent container: {opts}"
        );
    }
    // The container's own cgroup is under the test's parent, not the root cgroup, and
    // nothing was attached to the root cgroup.
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let unified = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default();
    assert!(
        unified.starts_with(&format!("/{}/", parent.name())),
        "agent cgroup {unified}"
    );
    assert!(attached(&root_cgroup.join(unified.trim_start_matches('/'))).is_empty());
    assert_eq!(attached(&root_cgroup), root_before, "root cgroup unchanged");
    assert!(attached(&cgroup).len() >= 5, "hooks on the test cgroup");

    assert_serves(&mut mn, "agent running in its container");

    // `socklb status` through `podman exec`, with the container's privileges.
    let out = agent.exec(&["socklb", "status", "-o", "json"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: Status = serde_json::from_slice(&out.stdout).unwrap();
    let cluster = status
        .frontend("internal", &format!("{CLUSTER_IP}:80"), "TCP")
        .unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!(cluster.backends.len(), 2, "{cluster:?}");
    assert!(
        status
            .frontend("external", &format!("*:{NODE_PORT}"), "TCP")
            .is_some(),
        "{status:?}"
    );
    assert!(!status.hooks.is_empty(), "{status:?}");
    let version = agent.exec(&["socklb", "version"]).unwrap();
    assert!(version.status.success(), "{version:?}");
    let host_version = socklb_tests::socklb(["version"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        String::from_utf8_lossy(&host_version.stdout),
        "the image carries the binary under test"
    );

    // Stopped as the kubelet stops it (SIGTERM, the manifest's grace period): the agent
    // exits 0 and the data path keeps serving without it.
    let links = pinned_links(&pins.join("socklb"));
    assert!(links.len() >= 7, "{links:?}");
    agent.stop(run.grace_seconds).unwrap();
    assert_eq!(agent.inspect("{{.State.ExitCode}}").unwrap(), "0");
    assert_serves(&mut mn, "after the container stopped");
    agent.remove().unwrap();
    assert_serves(&mut mn, "after the container was removed");

    // Uninstall from the image, with the agent container's privileges and mounts.
    let uninstall = [
        "uninstall".to_string(),
        "--cgroup".into(),
        cgroup_mount.into(),
        "--bpffs".into(),
        flag(&run.args, "--bpffs").into(),
    ];
    let name = format!("{label}-uninstall");
    let out = Container::run_to_end(&name, run, &image, &uninstall).unwrap();
    assert!(out.status.success(), "socklb uninstall: {out:?}");

    assert!(
        pins.read_dir().unwrap().next().is_none(),
        "pins left: {:?}",
        std::fs::read_dir(&pins).unwrap().collect::<Vec<_>>()
    );
    for (pin, id) in links {
        let out = Command::new("bpftool")
            .args(["-j", "link", "show", "id", &id.to_string()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "link {id} ({pin}) still exists");
    }
    assert!(
        wait_until(Duration::from_secs(5), || attached(&cgroup).is_empty()),
        "{:?}",
        attached(&cgroup)
    );
    assert_eq!(attached(&root_cgroup), root_before, "root cgroup unchanged");
    assert_eq!(containers_left(&label), "", "containers left");
    // Nothing translates the service any more: the node has no route to it.
    let r = mn
        .tcp(
            Origin::Node(1),
            &TcpRun::new(SocketAddr::from((CLUSTER_IP, 80)))
                .count(1)
                .timeout_ms(3000),
        )
        .unwrap();
    assert_eq!(r.ok, 0, "{r:?}");

    let netns_name = mn.node(1).netns().name().to_string();
    let parent_dirs = parent.dirs();
    assert!(!parent_dirs.is_empty(), "podman made the cgroup parent");
    drop(parent);
    drop(mn);
    for d in parent_dirs {
        assert!(!d.exists(), "{} left", d.display());
    }
    assert!(!cgroup.exists() && !pins.exists());
    assert!(!socklb_tests::netns::netns_exists(&netns_name));
}

// ---------------------------------------------------------------------- init container

/// A bind mount of a directory onto itself, made shared (as the kubelet's root is, for
/// Bidirectional mounts); Drop unmounts whatever is stacked there, then the bind.
struct SharedMount {
    path: PathBuf,
}

impl SharedMount {
    fn new(path: &Path) -> SharedMount {
        let guard = SharedMount {
            path: path.to_path_buf(),
        };
        for args in [
            vec!["--bind", path.to_str().unwrap(), path.to_str().unwrap()],
            vec!["--make-shared", path.to_str().unwrap()],
        ] {
            let out = Command::new("mount").args(&args).output().unwrap();
            assert!(out.status.success(), "mount {args:?}: {out:?}");
        }
        guard
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        for _ in 0..4 {
            let out = Command::new("umount").arg(&self.path).output();
            if !out.is_ok_and(|o| o.status.success()) {
                break;
            }
        }
    }
}

fn statfs_type(path: &Path) -> i64 {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: an all-zero statfs is a valid out parameter; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    t
}

/// On a host without bpffs at the hostPath, the init container mounts one there and,
/// through its Bidirectional mount, the host sees it (so the agent's pins outlive
/// the pod).
#[test]
fn the_init_container_mounts_bpffs_where_the_host_has_none() {
    if !require_privileges() {
        return;
    }
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let image = test_image().unwrap();
    let host_bpffs = TempDir::new("bpffs").unwrap();
    let cgroup = TestCgroup::new().unwrap();
    let netns = socklb_tests::NetNs::new().unwrap();
    let parent = CgroupParent::new();
    let label = names::dir_name();
    let shared = SharedMount::new(host_bpffs.path());
    assert_ne!(statfs_type(host_bpffs.path()), BPF_FS_MAGIC);
    let add = Additions {
        netns: netns.path(),
        node_name: "node-1".into(),
        image: image.clone(),
        host_paths: HostPaths::new()
            .map("/sys/fs/bpf", host_bpffs.path())
            .map("/sys/fs/cgroup", cgroup.path()),
        mounts_ro: vec![],
        cgroup_parent: parent.name().into(),
        label: label.clone(),
    };
    let (init, _) = PodSpec::daemonset().unwrap().translate(&add).unwrap();
    assert!(!init.is_empty(), "the DaemonSet has an init container");
    for c in &init {
        let out = Container::run_to_end(&container_name(&label, c), c, &image, &c.args).unwrap();
        assert!(out.status.success(), "init container {}: {out:?}", c.name);
    }
    assert_eq!(
        statfs_type(host_bpffs.path()),
        BPF_FS_MAGIC,
        "the host sees the bpffs the init container mounted"
    );
    assert_eq!(containers_left(&label), "");
    drop(shared);
    assert_ne!(statfs_type(host_bpffs.path()), BPF_FS_MAGIC, "unmounted");
}
