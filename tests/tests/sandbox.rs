//! Self-tests of the sandbox: real namespaces, veths, a bridge, a cgroup and a pin
//! directory, traffic straight to pod addresses (no agent, no service address), and
//! cleanup, also after a panic.
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use socklb_tests::child::pid_alive;
use socklb_tests::family::Family;
use socklb_tests::netns::netns_exists;
use socklb_tests::{
    PinDir, Sandbox, TcpProbe, TestCgroup, Topology, UdpProbe, probe_bin, require_privileges,
    wait_until,
};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 20);
const POD_C: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 30);
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// A pod's address in `family` (its IPv6 twin for IPv6).
fn addr_in(family: Family, ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(family.ip(ip), port)
}

/// What must be gone after the guards dropped.
#[derive(Debug, Default)]
struct Leftovers {
    netns: Vec<String>,
    cgroup: Option<PathBuf>,
    pins: Option<PathBuf>,
    pids: Vec<u32>,
}

impl Leftovers {
    fn record(&mut self, sb: &Sandbox, cg: &TestCgroup, pins: &PinDir) {
        self.netns = sb.netns_names();
        self.cgroup = Some(cg.path().to_path_buf());
        self.pins = Some(pins.path().to_path_buf());
        for ip in sb.pod_ips() {
            self.pids.extend(sb.pod(ip).unwrap().server_pids());
        }
    }

    fn assert_gone(&self) {
        let listed = String::from_utf8(
            Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(!self.netns.is_empty());
        for ns in &self.netns {
            assert!(!netns_exists(ns), "netns {ns} still exists");
            assert!(
                !listed
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(ns.as_str())),
                "`ip netns list` still shows {ns}:\n{listed}"
            );
        }
        let cg = self.cgroup.as_ref().unwrap();
        assert!(!cg.exists(), "cgroup {} still exists", cg.display());
        let pins = self.pins.as_ref().unwrap();
        assert!(!pins.exists(), "pin dir {} still exists", pins.display());
        for pid in &self.pids {
            assert!(!pid_alive(*pid), "process {pid} still runs");
        }
    }
}

fn start_servers(sb: &mut Sandbox) {
    for ip in sb.pod_ips() {
        sb.serve(ip, &format!("pod-{ip}"), &[TCP_PORT], &[UDP_PORT])
            .unwrap();
    }
}

/// Every pod answers in both families (the sandbox is dual-stack); the IPv4 and the
/// IPv6 runs share one sandbox.
#[test]
fn two_pods_answer_tcp_and_udp_then_everything_is_removed() {
    if !require_privileges() {
        return;
    }
    let mut gone = Leftovers::default();
    {
        let mut sb = Topology::new().pod(POD_A).pod(POD_B).build().unwrap();
        let cg = TestCgroup::new().unwrap();
        let pins = PinDir::new().unwrap();
        start_servers(&mut sb);
        gone.record(&sb, &cg, &pins);

        for (family, ip) in Family::BOTH
            .into_iter()
            .flat_map(|f| [(f, POD_A), (f, POD_B)])
        {
            let id = format!("pod-{ip}");
            let addr = |ip, port| addr_in(family, ip, port);
            // TCP from the node namespace, inside the (hook-less) test cgroup.
            let r = sb
                .tcp_probe(
                    Some(&cg),
                    &TcpProbe::new(addr(ip, TCP_PORT)).count(5).echo(true),
                )
                .unwrap();
            assert_eq!((r.attempts, r.ok), (5, 5), "{r:?}");
            assert_eq!(r.backends.get(&id), Some(&5), "{r:?}");
            assert_eq!(
                r.peers.get(&addr(ip, TCP_PORT).to_string()),
                Some(&5),
                "{r:?}"
            );
            assert!(r.errors.is_empty(), "{r:?}");

            // UDP, unconnected and connected.
            for connected in [false, true] {
                let p = UdpProbe::new(addr(ip, UDP_PORT))
                    .sockets(3)
                    .count(2)
                    .connected(connected);
                let r = sb.udp_probe(Some(&cg), &p).unwrap();
                assert_eq!((r.sent, r.replies), (6, 6), "{r:?}");
                assert_eq!(r.backends.get(&id), Some(&6), "{r:?}");
                assert_eq!(
                    r.reply_sources.get(&addr(ip, UDP_PORT).to_string()),
                    Some(&6)
                );
                assert!(r.sockets_sticky());
                assert_eq!(r.per_socket.len(), 3);
            }
        }

        for family in Family::BOTH {
            // A port nobody serves: the pod's kernel refuses.
            let r = sb
                .tcp_probe(None, &TcpProbe::new(addr_in(family, POD_A, 9)).count(2))
                .unwrap();
            assert_eq!(r.error("ECONNREFUSED"), 2, "{family}: {r:?}");

            // An address outside every namespace's routes: nothing can leave.
            let r = sb
                .tcp_probe(
                    None,
                    &TcpProbe::new(family.sock_str("10.96.0.10:80")).count(1),
                )
                .unwrap();
            assert_eq!(r.error("ENETUNREACH"), 1, "{family}: {r:?}");
        }

        // Only the probes ran in the cgroup and they are gone.
        assert!(wait_until(Duration::from_secs(2), || cg.procs().is_empty()));
    }
    gone.assert_gone();
}

#[test]
fn pods_can_be_added_and_removed_at_run_time() {
    if !require_privileges() {
        return;
    }
    let mut sb = Topology::new().pod(POD_A).build().unwrap();
    start_servers(&mut sb);
    sb.add_pod(POD_C).unwrap();
    sb.serve(POD_C, "late", &[TCP_PORT], &[]).unwrap();
    let r = sb
        .tcp_probe(None, &TcpProbe::new(addr(POD_C, TCP_PORT)).count(2))
        .unwrap();
    assert_eq!(r.backends.get("late"), Some(&2), "{r:?}");

    let ns = sb.pod(POD_C).unwrap().netns().name().to_string();
    let pid = sb.pod(POD_C).unwrap().server_pids()[0];
    sb.remove_pod(POD_C).unwrap();
    assert!(!netns_exists(&ns));
    assert!(!pid_alive(pid));
    assert!(sb.pod(POD_C).is_none());
    let r = sb
        .tcp_probe(
            None,
            &TcpProbe::new(addr(POD_C, TCP_PORT))
                .count(1)
                .timeout_ms(300),
        )
        .unwrap();
    assert_eq!(r.ok, 0, "{r:?}");

    // Servers can be stopped while the pod stays.
    sb.stop_servers(POD_A).unwrap();
    let r = sb
        .tcp_probe(None, &TcpProbe::new(addr(POD_A, TCP_PORT)).count(1))
        .unwrap();
    assert_eq!(r.error("ECONNREFUSED"), 1, "{r:?}");

    assert!(sb.add_pod(POD_A).is_err(), "duplicate pod");
    assert!(
        sb.add_pod(Ipv4Addr::new(10, 96, 0, 10)).is_err(),
        "outside the pod network"
    );
    assert!(
        sb.add_pod(Ipv4Addr::new(10, 244, 0, 1)).is_err(),
        "the bridge address"
    );
}

#[test]
fn everything_is_removed_after_a_panic() {
    if !require_privileges() {
        return;
    }
    let gone = Mutex::new(Leftovers::default());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sb = Topology::new().pod(POD_A).pod(POD_B).build().unwrap();
        let cg = TestCgroup::new().unwrap();
        let pins = PinDir::new().unwrap();
        start_servers(&mut sb);
        // A long-running process in the node namespace, inside the cgroup.
        let mut sleeper = Command::new("sleep");
        sleeper.arg("300");
        let sleeper = sb.spawn_in_node(sleeper, Some(&cg)).unwrap();
        assert_eq!(cg.procs(), vec![sleeper.pid()]);
        // Something pinned in the pin dir: a nested directory and, when bpftool is
        // there, a real pinned map.
        std::fs::create_dir(pins.path().join("links")).unwrap();
        let map_pin = pins.pin("slb_test_map");
        let pinned = Command::new("bpftool")
            .args(["map", "create"])
            .arg(&map_pin)
            .args([
                "type",
                "array",
                "key",
                "4",
                "value",
                "4",
                "entries",
                "1",
                "name",
                "slb_test_map",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if pinned {
            assert!(map_pin.exists());
        }
        {
            let mut g = gone.lock().unwrap();
            g.record(&sb, &cg, &pins);
            g.pids.push(sleeper.pid());
        }
        panic!("on purpose, with the sandbox up");
    }));
    assert!(result.is_err(), "the closure should have panicked");
    gone.into_inner().unwrap().assert_gone();
}

#[test]
fn probe_clients_refuse_the_host_network_namespace() {
    // Needs no privileges: the probe checks where it runs before it opens a socket, so
    // nothing is sent. (As non-root /proc/1/ns/net is unreadable: also a refusal.)
    let out = Command::new(probe_bin())
        .args(["tcp", "--to", "10.244.1.10:8080", "--count", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing"),
        "{out:?}"
    );
    let out = Command::new(probe_bin())
        .args(["udp", "--to", "10.96.0.10:53"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
