//! ClusterIP end to end: the real `socklb agent` with its real kernel programs, on a
//! cgroup, pin directory and network namespaces of the test's own, with backends
//! serving in pod namespaces and clients in the node namespace. Service addresses
//! have no route anywhere in the sandbox: a packet that was not translated has
//! nowhere to go.
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use socklb_core::builders;
use socklb_tests::{
    Agent, Cluster, TcpProbe, TcpReport, UdpProbe,
    cluster::pod_id,
    family::{Family, manifests_dir},
    probe_bin, require_privileges, socklb, wait_until,
};

const WEB: &str = "10.96.0.10:80";
const DNS: &str = "10.96.0.53:53";
const EMPTY: &str = "10.96.0.99:80";
const WAIT: Duration = Duration::from_secs(15);

fn examples(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// A test's IPv4 socket address ("10.96.0.10:80") in family `f`.
fn addr(f: Family, s: &str) -> SocketAddr {
    f.sock_str(s)
}

/// How the probes show `addr(f, s)` (getpeername, reply sources).
fn shown(f: Family, s: &str) -> String {
    addr(f, s).to_string()
}

fn pod(ip: &str) -> String {
    pod_id(ip.parse().unwrap())
}

/// Starts the agent on the demo manifests (rewritten for `f`) and waits until the web
/// service answers.
fn demo_cluster(f: Family) -> Cluster {
    let src = manifests_dir(f, &examples("demo")).unwrap();
    let mut c = Cluster::start(src.path()).unwrap();
    c.wait_tcp(&TcpProbe::new(addr(f, WEB)).count(1), WAIT, |r| r.ok == 1)
        .unwrap();
    c
}

// ---- manifests written by the tests ------------------------------------------------

/// (port name, protocol, port)
type Port<'a> = (&'a str, &'a str, u16);

fn service_yaml(name: &str, ip: &str, ports: &[Port]) -> String {
    builders::manifest_text(&[builders::service_object("e2e", name, ip, ports)])
}

/// Endpoint: (address, ready)
fn slice_yaml(name: &str, service: &str, ports: &[Port], endpoints: &[(&str, bool)]) -> String {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, ready)| serde_json::json!({"addresses": [ip], "conditions": {"ready": ready}}))
        .collect();
    let object = builders::merge(
        builders::slice_object("e2e", name, service, ports, &[]),
        serde_json::json!({ "endpoints": endpoints }),
    );
    builders::manifest_text(&[object])
}

/// Writes `files` (rewritten for `f`) into an empty temp dir used as the cluster's
/// source.
fn source_dir(f: Family, files: &[(&str, String)]) -> socklb_tests::ManifestDir {
    let dir = socklb_tests::ManifestDir::new().unwrap();
    for (name, text) in files {
        dir.write(name, &f.manifests(text)).unwrap();
    }
    dir
}

fn spread_ok(r: &TcpReport, ids: &[&str]) -> bool {
    ids.iter()
        .all(|id| r.backends.get(&pod(id)).copied().unwrap_or(0) > 0)
}

// ---- the tests ----------------------------------------------------------------------

// The socket hooks' semantics, in both families (`name::ipv4`, `name::ipv6`).
socklb_tests::each_family!(
    tcp_reaches_every_backend_and_getpeername_shows_the_service,
    udp_replies_come_from_the_service_and_each_socket_sticks_to_one_backend,
    no_endpoints_and_unknown_ports_are_refused_at_once,
    endpoint_changes_take_effect_for_new_connections,
    one_backend_behind_two_services_answers_as_each,
    one_socket_talking_to_several_services_sees_each_service_answer,
    binding_a_node_port_is_refused_in_the_cgroup,
    internal_traffic_policy_local_without_a_local_endpoint_is_unreachable,
);

fn tcp_reaches_every_backend_and_getpeername_shows_the_service(f: Family) {
    if !require_privileges() {
        return;
    }
    let mut c = demo_cluster(f);
    let r = c.tcp(&TcpProbe::new(addr(f, WEB)).count(300)).unwrap();
    assert_eq!(r.ok, 300, "{r:?}");
    // 300 random picks over 3 backends: each one is chosen (p(miss) ~ 1e-52).
    assert!(
        spread_ok(&r, &["10.244.0.11", "10.244.0.12", "10.244.0.13"]),
        "{r:?}"
    );
    assert_eq!(r.backends.len(), 3, "only the service's endpoints: {r:?}");
    assert_eq!(
        r.peers,
        BTreeMap::from([(shown(f, WEB), 300)]),
        "getpeername() must show the service"
    );

    // The TCP port of a multi-port service on another protocol, backends on another port.
    let r = c.tcp(&TcpProbe::new(addr(f, DNS)).count(100)).unwrap();
    assert_eq!(r.ok, 100, "{r:?}");
    assert!(spread_ok(&r, &["10.244.0.21", "10.244.0.22"]), "{r:?}");
    assert_eq!(r.peers, BTreeMap::from([(shown(f, DNS), 100)]));
    c.shutdown().unwrap();
}

fn udp_replies_come_from_the_service_and_each_socket_sticks_to_one_backend(f: Family) {
    if !require_privileges() {
        return;
    }
    let mut c = demo_cluster(f);
    // Unconnected sockets (sendto/recvfrom), as a resolver uses them.
    let r = c
        .udp(&UdpProbe::new(addr(f, DNS)).sockets(40).count(5))
        .unwrap();
    assert_eq!(r.replies, 200, "{r:?}");
    assert_eq!(
        r.reply_sources,
        BTreeMap::from([(shown(f, DNS), 200)]),
        "recvfrom() must report the service address, or a resolver drops the reply"
    );
    assert!(
        r.sockets_sticky(),
        "every datagram of one socket goes to one backend: {:?}",
        r.per_socket
    );
    // 40 sockets over 2 backends: both are chosen (p(miss) ~ 2e-12).
    assert_eq!(r.backends.len(), 2, "{r:?}");

    // Connected sockets: getpeername() shows the service.
    let r = c
        .udp(
            &UdpProbe::new(addr(f, DNS))
                .sockets(10)
                .count(3)
                .connected(true),
        )
        .unwrap();
    assert_eq!(r.replies, 30, "{r:?}");
    assert_eq!(r.reply_sources, BTreeMap::from([(shown(f, DNS), 30)]));
    assert!(r.sockets_sticky());
    c.shutdown().unwrap();
}

fn no_endpoints_and_unknown_ports_are_refused_at_once(f: Family) {
    if !require_privileges() {
        return;
    }
    let mut c = demo_cluster(f);
    // A hang would show as ETIMEDOUT after 3 s; a refusal is ECONNREFUSED.
    let r = c
        .tcp(&TcpProbe::new(addr(f, EMPTY)).count(5).timeout_ms(3000))
        .unwrap();
    assert_eq!(
        r.error("ECONNREFUSED"),
        5,
        "a service without endpoints refuses: {r:?}"
    );

    let r = c
        .tcp(
            &TcpProbe::new(addr(f, "10.96.0.10:81"))
                .count(3)
                .timeout_ms(3000),
        )
        .unwrap();
    assert_eq!(
        r.error("ECONNREFUSED"),
        3,
        "a port the service does not have is refused: {r:?}"
    );

    // UDP to a service address on a port it does not have: sendto() is refused.
    let r = c
        .udp(
            &UdpProbe::new(addr(f, "10.96.0.10:53"))
                .count(1)
                .timeout_ms(3000),
        )
        .unwrap();
    assert_eq!(r.replies, 0);
    assert_eq!(r.error("ECONNREFUSED"), 1, "{r:?}");

    // Addresses that are not services are left alone: no route in the sandbox.
    let r = c
        .tcp(
            &TcpProbe::new(addr(f, "10.96.0.200:80"))
                .count(1)
                .timeout_ms(3000),
        )
        .unwrap();
    assert_eq!(r.error("ENETUNREACH"), 1, "{r:?}");
    c.shutdown().unwrap();
}

fn endpoint_changes_take_effect_for_new_connections(f: Family) {
    if !require_privileges() {
        return;
    }
    let web = [("http", "TCP", 80)];
    let ep = [("http", "TCP", 8080)];
    let src = source_dir(
        f,
        &[
            ("svc.yaml", service_yaml("web", "10.96.0.10", &web)),
            (
                "eps.yaml",
                slice_yaml(
                    "web-1",
                    "web",
                    &ep,
                    &[
                        ("10.244.0.11", true),
                        ("10.244.0.12", true),
                        ("10.244.0.13", false),
                    ],
                ),
            ),
        ],
    );
    let mut c = Cluster::start(src.path()).unwrap();
    let probe = TcpProbe::new(addr(f, WEB)).count(150);
    // A not-ready endpoint gets nothing, even though its pod answers.
    let r = c
        .wait_tcp(&probe, WAIT, |r| {
            r.ok == 150 && spread_ok(r, &["10.244.0.11", "10.244.0.12"])
        })
        .unwrap();
    assert_eq!(r.backends.get(&pod("10.244.0.13")), None, "{r:?}");

    // Scale: .11 leaves (its pod keeps serving, so any connection still sent there
    // would show up), .13 becomes ready, .14 is added.
    c.sandbox.add_pod("10.244.0.14".parse().unwrap()).unwrap();
    c.sandbox
        .serve(
            "10.244.0.14".parse().unwrap(),
            &pod("10.244.0.14"),
            &[8080],
            &[],
        )
        .unwrap();
    c.manifests
        .write(
            "eps.yaml",
            &f.manifests(&slice_yaml(
                "web-1",
                "web",
                &ep,
                &[
                    ("10.244.0.12", true),
                    ("10.244.0.13", true),
                    ("10.244.0.14", true),
                ],
            )),
        )
        .unwrap();
    c.wait_tcp(&probe, WAIT, |r| {
        r.ok == 150
            && !r.backends.contains_key(&pod("10.244.0.11"))
            && r.backends.contains_key(&pod("10.244.0.14"))
    })
    .unwrap();
    let r = c.tcp(&TcpProbe::new(addr(f, WEB)).count(300)).unwrap();
    assert_eq!(r.ok, 300);
    assert!(
        spread_ok(&r, &["10.244.0.12", "10.244.0.13", "10.244.0.14"]),
        "{r:?}"
    );
    assert_eq!(
        r.backends.len(),
        3,
        "the removed backend gets no new connections: {r:?}"
    );

    // All endpoints gone: refused. Back: served again.
    c.manifests
        .write(
            "eps.yaml",
            &f.manifests(&slice_yaml("web-1", "web", &ep, &[])),
        )
        .unwrap();
    c.wait_tcp(
        &TcpProbe::new(addr(f, WEB)).count(1).timeout_ms(3000),
        WAIT,
        |r| r.error("ECONNREFUSED") == 1,
    )
    .unwrap();
    c.manifests
        .write(
            "eps.yaml",
            &f.manifests(&slice_yaml("web-1", "web", &ep, &[("10.244.0.12", true)])),
        )
        .unwrap();
    c.wait_tcp(&TcpProbe::new(addr(f, WEB)).count(1), WAIT, |r| r.ok == 1)
        .unwrap();

    // Service deleted: its address is no longer translated (and has no route).
    c.manifests.remove("svc.yaml").unwrap();
    c.wait_tcp(
        &TcpProbe::new(addr(f, WEB)).count(1).timeout_ms(3000),
        WAIT,
        |r| r.error("ENETUNREACH") == 1,
    )
    .unwrap();
    c.shutdown().unwrap();
}

fn one_backend_behind_two_services_answers_as_each(f: Family) {
    if !require_privileges() {
        return;
    }
    let ports = [("dns", "UDP", 53), ("web", "TCP", 80)];
    let ep = [("dns", "UDP", 5353), ("web", "TCP", 8080)];
    let src = source_dir(
        f,
        &[
            (
                "a.yaml",
                service_yaml("a", "10.96.5.1", &ports)
                    + &slice_yaml("a-1", "a", &ep, &[("10.244.0.31", true)]),
            ),
            (
                "b.yaml",
                service_yaml("b", "10.96.5.2", &ports)
                    + &slice_yaml("b-1", "b", &ep, &[("10.244.0.31", true)]),
            ),
        ],
    );
    let mut c = Cluster::start(src.path()).unwrap();
    for svc in ["10.96.5.1", "10.96.5.2"] {
        let tcp = format!("{svc}:80");
        let r = c
            .wait_tcp(&TcpProbe::new(addr(f, &tcp)).count(20), WAIT, |r| {
                r.ok == 20
            })
            .unwrap();
        assert_eq!(r.peers, BTreeMap::from([(shown(f, &tcp), 20)]), "{r:?}");
        let udp = format!("{svc}:53");
        let r = c
            .udp(&UdpProbe::new(addr(f, &udp)).sockets(5).count(4))
            .unwrap();
        assert_eq!(
            r.reply_sources,
            BTreeMap::from([(shown(f, &udp), 20)]),
            "each service answers as itself: {r:?}"
        );
    }
    c.shutdown().unwrap();
}

/// One unconnected socket sending to several services in turn (a resolver with
/// several upstreams): its first service lives in the socket's own storage, the others
/// in the LRU maps. Every reply must come from the service it answers, also when two
/// of the services share a backend, and each (socket, service) sticks to one backend.
fn one_socket_talking_to_several_services_sees_each_service_answer(f: Family) {
    if !require_privileges() {
        return;
    }
    let ports = [("dns", "UDP", 53)];
    let ep = [("dns", "UDP", 5353)];
    let services = [
        (
            "s1",
            "10.96.6.1",
            vec![("10.244.0.41", true), ("10.244.0.42", true)],
        ),
        (
            "s2",
            "10.96.6.2",
            vec![("10.244.0.43", true), ("10.244.0.44", true)],
        ),
        // Shares 10.244.0.41 with s1: the same reply source for two services.
        ("s3", "10.96.6.3", vec![("10.244.0.41", true)]),
    ];
    let files: Vec<(String, String)> = services
        .iter()
        .map(|(name, ip, eps)| {
            let text =
                service_yaml(name, ip, &ports) + &slice_yaml(&format!("{name}-1"), name, &ep, eps);
            (format!("{name}.yaml"), text)
        })
        .collect();
    let src = source_dir(
        f,
        &files
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect::<Vec<_>>(),
    );
    let mut c = Cluster::start(src.path()).unwrap();
    for (_, ip, _) in &services {
        let to = format!("{ip}:53");
        c.wait_udp(&UdpProbe::new(addr(f, &to)), WAIT, |r| r.replies == 1)
            .unwrap();
    }

    let targets: Vec<SocketAddr> = services
        .iter()
        .map(|(_, ip, _)| addr(f, &format!("{ip}:53")))
        .collect();
    let probe = UdpProbe::new(targets[0])
        .also(targets[1])
        .also(targets[2])
        .sockets(20)
        .count(4);
    let r = c.udp(&probe).unwrap();
    assert_eq!(r.replies, 20 * 4 * 3, "{r:?}");
    assert_eq!(
        r.wrong_source, 0,
        "a reply shown as coming from another service: {r:?}"
    );
    let per_service: BTreeMap<String, u64> = targets.iter().map(|t| (t.to_string(), 80)).collect();
    assert_eq!(r.reply_sources, per_service, "{r:?}");
    assert!(
        r.sockets_sticky(),
        "each (socket, service) sticks to one backend: {:?}",
        r.per_socket
    );
    for (i, ids) in r.per_socket.iter().enumerate() {
        let (_, _, eps) = &services[i % services.len()];
        let allowed: Vec<String> = eps.iter().map(|(ip, _)| pod(ip)).collect();
        assert!(
            ids.iter().all(|id| allowed.contains(id)),
            "socket {} service {}: {ids:?} not in {allowed:?}",
            i / 3,
            i % 3
        );
    }
    c.shutdown().unwrap();
}

#[test]
fn agent_restarts_do_not_fail_a_single_connection() {
    if !require_privileges() {
        return;
    }
    let mut c = demo_cluster(Family::V4);
    // A client connecting continuously for the whole test, in the cgroup.
    let mut cmd = Command::new(probe_bin());
    cmd.args(
        TcpProbe::new(addr(Family::V4, WEB))
            .duration_ms(7000)
            .interval_ms(2)
            .timeout_ms(2000)
            .args(),
    );
    cmd.stdout(Stdio::piped());
    let mut client = c.sandbox.spawn_in_node(cmd, Some(&c.cgroup)).unwrap();

    let config = c.agent.config().clone();
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        let status = c.agent.stop().unwrap();
        assert!(status.success(), "round {round}: agent exit {status}");
        // While no agent runs, the pinned programs and maps keep serving.
        std::thread::sleep(Duration::from_millis(300));
        c.agent = Agent::start(&config).unwrap();
        assert!(
            c.agent.wait_for_log("ready", WAIT),
            "round {round}: the restarted agent did not get ready:\n{}",
            c.agent.log()
        );
    }
    let out = client.wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(out.is_some(), "the client did not finish");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut client.take_stdout().unwrap(), &mut stdout).unwrap();
    let r: TcpReport = serde_json::from_str(&stdout).unwrap();
    assert!(r.attempts > 200, "the client ran: {r:?}");
    assert_eq!(
        r.failed(),
        0,
        "no connection may fail across agent restarts: {r:?}"
    );
    assert_eq!(r.ok, r.attempts);
    assert!(
        spread_ok(&r, &["10.244.0.11", "10.244.0.12", "10.244.0.13"]),
        "{r:?}"
    );
    c.shutdown().unwrap();
}

/// An agent upgraded over the pins of an older version removes the pins of the maps it
/// no longer uses (lb_common::map_names::RETIRED: here the counters of the version
/// before lb_stats_v3) and keeps serving.
#[test]
fn an_upgraded_agent_removes_the_pins_of_retired_maps() {
    if !require_privileges() {
        return;
    }
    let mut c = demo_cluster(Family::V4);
    let config = c.agent.config().clone();
    let status = c.agent.stop().unwrap();
    assert!(status.success(), "agent exit {status}");
    // What an older agent left: its counters under their old name.
    let retired = c.pins.path().join("lb_stats_v2");
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&retired)
        .args([
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "15",
            "name",
            "lb_stats_v2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool map create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(retired.exists());
    c.agent = Agent::start(&config).unwrap();
    assert!(
        c.agent.wait_for_log("ready", WAIT),
        "the upgraded agent did not get ready:\n{}",
        c.agent.log()
    );
    assert!(!retired.exists(), "{} is still pinned", retired.display());
    assert!(c.pins.path().join("lb_stats_v3").exists());
    let r = c
        .tcp(&TcpProbe::new(addr(Family::V4, WEB)).count(20))
        .unwrap();
    assert_eq!(r.ok, 20, "{r:?}");
    c.shutdown().unwrap();
}

#[test]
fn a_restarted_agent_applies_changes_made_while_it_was_down() {
    if !require_privileges() {
        return;
    }
    let ep = [("http", "TCP", 8080)];
    let src = source_dir(
        Family::V4,
        &[
            (
                "svc.yaml",
                service_yaml("web", "10.96.0.10", &[("http", "TCP", 80)]),
            ),
            (
                "eps.yaml",
                slice_yaml(
                    "web-1",
                    "web",
                    &ep,
                    &[("10.244.0.11", true), ("10.244.0.12", true)],
                ),
            ),
        ],
    );
    let mut c = Cluster::start(src.path()).unwrap();
    c.wait_tcp(&TcpProbe::new(addr(Family::V4, WEB)).count(50), WAIT, |r| {
        r.ok == 50
    })
    .unwrap();
    let config = c.agent.config().clone();
    assert!(c.agent.stop().unwrap().success());
    c.manifests
        .write(
            "eps.yaml",
            &slice_yaml("web-1", "web", &ep, &[("10.244.0.12", true)]),
        )
        .unwrap();
    c.agent = Agent::start(&config).unwrap();
    let r = c
        .wait_tcp(&TcpProbe::new(addr(Family::V4, WEB)).count(60), WAIT, |r| {
            r.ok == 60 && r.backends.len() == 1
        })
        .unwrap();
    assert_eq!(r.backends.get(&pod("10.244.0.12")), Some(&60), "{r:?}");
    c.shutdown().unwrap();
}

#[test]
fn uninstall_leaves_nothing_behind() {
    if !require_privileges() {
        return;
    }
    let mut c = demo_cluster(Family::V4);
    let pins = c.pins.path().to_path_buf();
    let cgroup = c.cgroup.path().to_path_buf();
    assert!(
        bpftool_cgroup_show(&cgroup).len() >= 5,
        "hooks attached while running"
    );
    c.shutdown().unwrap();
    assert!(
        !pins.exists(),
        "pin directory {} is still there",
        pins.display()
    );
    assert!(
        wait_until(Duration::from_secs(5), || bpftool_cgroup_show(&cgroup)
            .is_empty()),
        "programs still attached to {}: {:?}",
        cgroup.display(),
        bpftool_cgroup_show(&cgroup)
    );
    // The service address is no longer translated.
    let r = c
        .tcp(
            &TcpProbe::new(addr(Family::V4, WEB))
                .count(1)
                .timeout_ms(3000),
        )
        .unwrap();
    assert_eq!(r.error("ENETUNREACH"), 1, "{r:?}");
    // Uninstalling again is not an error.
    let out = socklb(["uninstall", "--bpffs", pins.to_str().unwrap()]).unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Programs attached to a cgroup, as bpftool sees them (independent of socklb).
fn bpftool_cgroup_show(cgroup: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool cgroup show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap()
}

#[test]
fn invalid_manifests_next_to_valid_ones_do_not_stop_the_valid_services() {
    if !require_privileges() {
        return;
    }
    let mut c = Cluster::start(&examples("invalid")).unwrap();
    for (svc, backend) in [
        ("10.96.1.10:80", "10.244.1.11"),
        ("10.96.1.20:80", "10.244.1.21"),
    ] {
        let r = c
            .wait_tcp(&TcpProbe::new(addr(Family::V4, svc)).count(10), WAIT, |r| {
                r.ok == 10
            })
            .unwrap();
        assert_eq!(r.backends.get(&pod(backend)), Some(&10), "{r:?}");
    }
    let log = c.agent.log();
    for file in [
        "not-yaml.yaml",
        "bad-cluster-ip.yaml",
        "bad-port.yaml",
        "bad-protocol.yaml",
        "bad-slice-address.yaml",
        "mixed-list.yaml",
    ] {
        assert!(
            log.contains(file),
            "the agent names {file} in a warning:\n{log}"
        );
    }
    // Garbage written while running: the agent warns, stays up and keeps serving.
    c.manifests
        .write("zz-garbage.yaml", "kind: Service\nspec: [this is not\n")
        .unwrap();
    assert!(
        c.agent.wait_for_log("zz-garbage.yaml", WAIT),
        "{}",
        c.agent.log()
    );
    let r = c
        .tcp(&TcpProbe::new(addr(Family::V4, "10.96.1.10:80")).count(10))
        .unwrap();
    assert_eq!(r.ok, 10, "{r:?}");
    assert!(c.agent.is_running());
    c.shutdown().unwrap();
}

#[test]
fn bpftool_dumps_the_service_map_with_named_fields() {
    if !require_privileges() {
        return;
    }
    let mut c = demo_cluster(Family::V4);
    let map = c.pins.path().join("lb4_svc_v1");
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&map)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!entries.is_empty());
    // With BTF, bpftool prints each entry's key and value with their field names.
    let web_ip = u32::from_ne_bytes(Ipv4Addr::new(10, 96, 0, 10).octets());
    let web_port = u16::from_ne_bytes(80u16.to_be_bytes());
    let slot0 = entries
        .iter()
        .map(|e| e.get("formatted").unwrap_or(e))
        .find(|e| {
            e["key"]["address"] == web_ip
                && e["key"]["dport"] == web_port
                && e["key"]["backend_slot"] == 0
        })
        .unwrap_or_else(|| panic!("no named slot-0 entry for {WEB} in {entries:#?}"));
    for field in ["address", "dport", "backend_slot", "proto", "scope", "pad"] {
        assert!(
            slot0["key"].get(field).is_some(),
            "key field {field} in {slot0}"
        );
    }
    for field in [
        "backend_id",
        "count",
        "action",
        "flags",
        "affinity_timeout_s",
    ] {
        assert!(
            slot0["value"].get(field).is_some(),
            "value field {field} in {slot0}"
        );
    }
    assert_eq!(slot0["value"]["count"], 3);
    assert_eq!(slot0["key"]["proto"], 6);
    c.shutdown().unwrap();
}

#[test]
fn status_reads_back_what_plan_computes() {
    if !require_privileges() {
        return;
    }
    let mut c = demo_cluster(Family::V4);
    let node = c.agent.config().node.clone();
    let plan = socklb([
        "plan",
        "--manifests",
        c.manifests.path().to_str().unwrap(),
        "--node",
        &node,
        "-o",
        "json",
    ])
    .unwrap();
    assert!(plan.status.success(), "{plan:?}");
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let status = socklb([
        "status",
        "--bpffs",
        c.pins.path().to_str().unwrap(),
        "-o",
        "json",
    ])
    .unwrap();
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();

    let project = |v: &serde_json::Value| -> Vec<(String, String, String, Vec<String>)> {
        let mut out: Vec<_> = v["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let mut b: Vec<String> = f["backends"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_str().unwrap().to_string())
                    .collect();
                b.sort();
                (
                    f["address"].as_str().unwrap().to_string(),
                    f["protocol"].as_str().unwrap().to_string(),
                    f["action"].as_str().unwrap().to_string(),
                    b,
                )
            })
            .collect();
        out.sort();
        out
    };
    assert_eq!(
        project(&plan),
        project(&status),
        "the maps hold what plan computes"
    );
    assert_eq!(
        status["hooks"],
        serde_json::json!([
            "connect4",
            "sendmsg4",
            "recvmsg4",
            "getpeername4",
            "connect6",
            "sendmsg6",
            "recvmsg6",
            "getpeername6",
            "post_bind4",
            "post_bind6"
        ]),
        "{status}"
    );
    let addrs: Vec<&str> = status["service_addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(addrs, ["10.96.0.10", "10.96.0.53", "10.96.0.99"]);
    c.shutdown().unwrap();
}

fn binding_a_node_port_is_refused_in_the_cgroup(f: Family) {
    if !require_privileges() {
        return;
    }
    let src = source_dir(
        f,
        &[(
            "np.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: np, namespace: e2e}\n\
         spec:\n  type: NodePort\n  clusterIP: 10.96.0.30\n  ports:\n\
         \x20 - {name: web, protocol: TCP, port: 80, nodePort: 30080}\n\
         \x20 - {name: dns, protocol: UDP, port: 53, nodePort: 30053}\n"
                .to_string(),
        )],
    );
    let mut c = Cluster::start(src.path()).unwrap();
    c.wait_tcp(
        &TcpProbe::new(addr(f, "10.96.0.30:80"))
            .count(1)
            .timeout_ms(3000),
        WAIT,
        |r| r.error("ECONNREFUSED") == 1,
    )
    .unwrap();
    // The family's unspecified address, and the other family's.
    let (any, other) = match f {
        Family::V4 => ("0.0.0.0", "::"),
        Family::V6 => ("::", "0.0.0.0"),
    };
    let bind_on = |ip: &str, port: u16| -> serde_json::Value {
        let mut cmd = Command::new(probe_bin());
        cmd.args(["bind", "--ip", ip, "--port", &port.to_string()]);
        let opts = socklb_tests::SpawnOpts::new()
            .netns(c.sandbox.node().path())
            .cgroup(c.cgroup.path());
        let out = socklb_tests::Child::output(cmd, &opts, Duration::from_secs(10)).unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let bind = |port: u16| bind_on(any, port);
    // The NodePort's protocol is refused (EPERM from the post_bind4/post_bind6 hook);
    // other ports and protocols are free.
    let r = bind(30080);
    assert_eq!(r["tcp"], "EPERM", "{r}");
    assert_eq!(r["udp"], "ok", "30080 is a TCP NodePort only: {r}");
    let r = bind(30053);
    assert_eq!(r["udp"], "EPERM", "{r}");
    assert_eq!(r["tcp"], "ok", "{r}");
    let r = bind(30081);
    assert_eq!(
        (r["tcp"].as_str(), r["udp"].as_str()),
        (Some("ok"), Some("ok")),
        "{r}"
    );
    // `::` also receives IPv4: an IPv4 NodePort's port is refused there too; an IPv6
    // NodePort's port stays free on 0.0.0.0.
    let r = bind_on(other, 30080);
    let want = match f {
        Family::V4 => "EPERM",
        Family::V6 => "ok",
    };
    assert_eq!(r["tcp"], want, "[{other}]:30080: {r}");
    // An IPv4-mapped address on an AF_INET6 socket receives IPv4 only: refused for an
    // IPv4 NodePort, free for an IPv6 one.
    let r = bind_on("::ffff:127.0.0.1", 30080);
    assert_eq!(r["tcp"], want, "[::ffff:127.0.0.1]:30080: {r}");
    c.shutdown().unwrap();
}

/// internalTrafficPolicy Local (and externalTrafficPolicy Local) with the only
/// endpoint elsewhere: the cluster IP is unreachable from this node, while the
/// service's external IP, from this node, gets the cluster endpoints (kube-proxy
/// short-circuits in-cluster clients of external destinations to its cluster chain).
fn internal_traffic_policy_local_without_a_local_endpoint_is_unreachable(f: Family) {
    if !require_privileges() {
        return;
    }
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: e2e}\n\
               spec:\n  clusterIP: 10.96.0.40\n  internalTrafficPolicy: Local\n\
               \x20 externalTrafficPolicy: Local\n  externalIPs: [10.96.1.40]\n\
               \x20 ports: [{name: http, protocol: TCP, port: 80}]\n---\n";
    // The only endpoint runs on another node.
    let eps = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
               metadata: {name: local-1, namespace: e2e, labels: {kubernetes.io/service-name: local}}\n\
               ports: [{name: http, protocol: TCP, port: 8080}]\n\
               endpoints: [{addresses: [\"10.244.0.51\"], nodeName: elsewhere}]\n";
    let src = source_dir(f, &[("svc.yaml", svc.to_string() + eps)]);
    let opts = socklb_tests::ClusterOptions {
        node: Some("here".into()),
        ..Default::default()
    };
    let mut c = Cluster::start_with(src.path(), &opts).unwrap();
    // kube-proxy drops such traffic; at the socket the hook fails connect() at once.
    let r = c
        .wait_tcp(
            &TcpProbe::new(addr(f, "10.96.0.40:80"))
                .count(3)
                .timeout_ms(3000),
            WAIT,
            |r| r.error("EHOSTUNREACH") == 3,
        )
        .unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    let r = c
        .tcp(&TcpProbe::new(addr(f, "10.96.1.40:80")).count(20))
        .unwrap();
    assert_eq!(r.ok, 20, "the external IP from this node: {r:?}");
    assert_eq!(
        r.backends,
        BTreeMap::from([(pod("10.244.0.51"), 20)]),
        "the cluster endpoint"
    );
    c.shutdown().unwrap();
}

/// A dual-stack Service (clusterIPs of both families, a slice of each for the same
/// pods) reached over both families by the same client: each family translates to
/// the pods' addresses of its own and shows its own service address.
#[test]
fn a_dual_stack_service_answers_over_both_families() {
    if !require_privileges() {
        return;
    }
    let ports = [("web", "TCP", 80), ("dns", "UDP", 53)];
    let ep = [("web", "TCP", 8080), ("dns", "UDP", 5353)];
    let pods = [("10.244.0.61", true), ("10.244.0.62", true)];
    let v6 = Family::V6.ip_str("10.96.0.70").to_string();
    let service = builders::merge(
        builders::service_object("e2e", "ds", "10.96.0.70", &ports),
        serde_json::json!({"spec": {
            "clusterIPs": ["10.96.0.70", v6],
            "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "RequireDualStack",
        }}),
    );
    let src = source_dir(
        Family::V4,
        &[
            ("svc.yaml", builders::manifest_text(&[service])),
            ("eps4.yaml", slice_yaml("ds-4", "ds", &ep, &pods)),
            (
                "eps6.yaml",
                Family::V6.manifests(&slice_yaml("ds-6", "ds", &ep, &pods)),
            ),
        ],
    );
    let mut c = Cluster::start(src.path()).unwrap();
    let ids: Vec<&str> = pods.iter().map(|(ip, _)| *ip).collect();
    for f in Family::BOTH {
        let r = c
            .wait_tcp(
                &TcpProbe::new(addr(f, "10.96.0.70:80")).count(60),
                WAIT,
                |r| r.ok == 60 && spread_ok(r, &ids),
            )
            .unwrap();
        assert_eq!(r.backends.len(), 2, "{f}: {r:?}");
        assert_eq!(
            r.peers,
            BTreeMap::from([(shown(f, "10.96.0.70:80"), 60)]),
            "{f}: {r:?}"
        );
        for connected in [false, true] {
            let r = c
                .udp(
                    &UdpProbe::new(addr(f, "10.96.0.70:53"))
                        .sockets(10)
                        .count(2)
                        .connected(connected),
                )
                .unwrap();
            assert_eq!(r.replies, 20, "{f} connected {connected}: {r:?}");
            assert_eq!(
                r.reply_sources,
                BTreeMap::from([(shown(f, "10.96.0.70:53"), 20)]),
                "{f} connected {connected}: {r:?}"
            );
            assert!(r.sockets_sticky(), "{f}: {r:?}");
        }
    }
    c.shutdown().unwrap();
}

/// An AF_INET6 socket to an IPv4 service through its IPv4-mapped address
/// (::ffff:10.96.0.10): served from the IPv4 maps, shown as the mapped service address
/// (getpeername, UDP reply sources); a service without endpoints refuses.
#[test]
fn an_ipv6_socket_reaches_an_ipv4_service_through_its_mapped_address() {
    if !require_privileges() {
        return;
    }
    let mut c = demo_cluster(Family::V4);
    let web = "[::ffff:10.96.0.10]:80";
    let r = c
        .tcp(&TcpProbe::new(web.parse().unwrap()).count(60))
        .unwrap();
    assert_eq!(r.ok, 60, "{r:?}");
    assert!(
        spread_ok(&r, &["10.244.0.11", "10.244.0.12", "10.244.0.13"]),
        "{r:?}"
    );
    assert_eq!(r.peers, BTreeMap::from([(web.to_string(), 60)]), "{r:?}");
    // Unconnected: the kernel runs sendmsg4 for a mapped destination, recvmsg6 for
    // the reply; connected: connect6 and getpeername6.
    let dns = "[::ffff:10.96.0.53]:53";
    for connected in [false, true] {
        let r = c
            .udp(
                &UdpProbe::new(dns.parse().unwrap())
                    .sockets(10)
                    .count(3)
                    .connected(connected),
            )
            .unwrap();
        assert_eq!(r.replies, 30, "connected {connected}: {r:?}");
        assert_eq!(
            r.reply_sources,
            BTreeMap::from([(dns.to_string(), 30)]),
            "connected {connected}: {r:?}"
        );
        assert_eq!(r.wrong_source, 0, "{r:?}");
        assert!(r.sockets_sticky(), "{r:?}");
    }
    let r = c
        .tcp(
            &TcpProbe::new("[::ffff:10.96.0.99]:80".parse().unwrap())
                .count(2)
                .timeout_ms(3000),
        )
        .unwrap();
    assert_eq!(r.error("ECONNREFUSED"), 2, "{r:?}");
    c.shutdown().unwrap();
}
