//! Stale sockets end to end: the real agent on the sandbox; a backend leaves a
//! Service's slice and the connected sockets translated to it for that Service get
//! ECONNABORTED (in the node's network namespace and in a pod's), while every decoy
//! stays: unconnected sockets sending to the Service, sockets connected to the
//! backend's address directly, sockets translated to another backend, sockets of
//! another Service that keeps the backend, and TCP unless asked for.
//!
//! The removed backend's pod keeps serving throughout: a socket that was not
//! destroyed would still get its answers, so an error can only come from socklb.
//!
//! They need root, bpffs, cgroup v2, iproute2 and Linux >= 6.5 (bpf_sock_destroy):
//! outside CI they print SKIPPED and pass when the first four are missing; under
//! CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use socklb_tests::http::{self, free_loopback_port};

use serde_json::Value;
use socklb_core::builders;
use socklb_tests::{
    Agent, Cluster, ClusterOptions, HeldSocket, HoldProbe, HoldSpec, ManifestDir, UdpProbe,
    cluster::pod_id,
    family::Family,
    hold::{errors, events_of, monotonic_ns},
    require_privileges,
};

const DNS: &str = "10.96.0.53:53";
const DNS2: &str = "10.96.0.54:53";
/// The backend that leaves `dns` (it stays in `dns2`).
const A: &str = "10.244.0.21";
/// The backend that stays.
const B: &str = "10.244.0.22";
const BACKEND_PORT: u16 = 5353;
/// `dns`'s NodePort, reached on a node address from inside the cgroup.
const NODE_PORT: u16 = 30053;
/// A pod whose process is a client in the cgroup.
const CLIENT_POD: &str = "10.244.0.50";
const WAIT: Duration = Duration::from_secs(15);
/// From the slice change to the application's error (the agent polls every 20 ms).
const ERROR_WITHIN: Duration = Duration::from_secs(1);

/// A test's IPv4 socket address in family `f`.
fn addr(f: Family, s: &str) -> SocketAddr {
    f.sock_str(s)
}

/// How the hold probe names the target `addr(f, s)`.
fn shown(f: Family, s: &str) -> String {
    addr(f, s).to_string()
}

fn direct_a(f: Family) -> SocketAddr {
    SocketAddr::new(f.ip_str(A), BACKEND_PORT)
}

/// `dns` through its IPv4-mapped address, from an AF_INET6 socket (IPv4 runs only).
const DNS_MAPPED: &str = "[::ffff:10.96.0.53]:53";

fn pod(ip: &str) -> String {
    pod_id(ip.parse().unwrap())
}

/// `dns` (UDP and TCP 53 -> 5353 on `endpoints`, NodePort [`NODE_PORT`]) and `dns2`
/// (UDP 53 -> A:5353), in family `f`.
fn write_manifests(f: Family, dir: &ManifestDir, endpoints: &[&str]) {
    let svc = builders::merge(
        builders::service_object("e2e", "dns", "10.96.0.53", &[]),
        serde_json::json!({"spec": {"type": "NodePort", "ports": [
            {"name": "dns", "protocol": "UDP", "port": 53, "nodePort": NODE_PORT},
            {"name": "dns-tcp", "protocol": "TCP", "port": 53, "nodePort": NODE_PORT},
        ]}}),
    );
    let svc2 = builders::service_object("e2e", "dns2", "10.96.0.54", &[("dns", "UDP", 53)]);
    dir.write(
        "services.yaml",
        &f.manifests(&builders::manifest_text(&[svc, svc2])),
    )
    .unwrap();
    dir.write(
        "dns2-slice.yaml",
        &f.manifests(&builders::manifest_text(&[builders::slice_object(
            "e2e",
            "dns2-1",
            "dns2",
            &[("dns", "UDP", BACKEND_PORT)],
            &[A],
        )])),
    )
    .unwrap();
    write_dns_slice(f, dir, endpoints);
}

fn write_dns_slice(f: Family, dir: &ManifestDir, endpoints: &[&str]) {
    let slice = builders::slice_object(
        "e2e",
        "dns-1",
        "dns",
        &[
            ("dns", "UDP", BACKEND_PORT),
            ("dns-tcp", "TCP", BACKEND_PORT),
        ],
        endpoints,
    );
    dir.write(
        "dns-slice.yaml",
        &f.manifests(&builders::manifest_text(&[slice])),
    )
    .unwrap();
}

struct Env {
    f: Family,
    c: Cluster,
    health: SocketAddr,
}

/// The agent on `dns` = {A, B}, `dns2` = {A} (family `f`), a client pod, and
/// /metrics on loopback.
fn start(f: Family, extra: &[&str]) -> Env {
    let src = ManifestDir::new().unwrap();
    write_manifests(f, &src, &[A, B]);
    let health = free_loopback_port();
    let mut agent_args: Vec<String> = vec![
        "--poll-interval-ms".into(),
        "20".into(),
        "--health-addr".into(),
        health.to_string(),
        "--metrics-bind-address".into(),
        health.to_string(),
    ];
    agent_args.extend(extra.iter().map(|s| s.to_string()));
    let opts = ClusterOptions {
        agent_args,
        ..Default::default()
    };
    let mut c = Cluster::start_with(src.path(), &opts).unwrap();
    c.wait_udp(&UdpProbe::new(addr(f, DNS)).sockets(8), WAIT, |r| {
        r.replies == 8 && r.backends.len() == 2
    })
    .unwrap();
    c.sandbox.add_pod(CLIENT_POD.parse().unwrap()).unwrap();
    assert!(
        c.agent.log().contains("stale-socket termination on"),
        "this kernel cannot destroy sockets (Linux >= 6.5 with BTF is needed):\n{}",
        c.agent.log()
    );
    Env { f, c, health }
}

impl Env {
    /// `dns` through its NodePort on the agent's first node address (the socket hook
    /// translates it at connect(); the address itself is never sent to).
    fn node_port(&self) -> SocketAddr {
        let log = self.c.agent.log();
        let field = match self.f {
            Family::V4 => "node_addresses=[",
            Family::V6 => "node_addresses6=[",
        };
        let first = log
            .split_once(field)
            .and_then(|(_, rest)| rest.split([',', ']']).next())
            .and_then(|a| a.trim().parse::<IpAddr>().ok())
            .unwrap_or_else(|| panic!("the agent found no {} node address:\n{log}", self.f));
        SocketAddr::new(first, NODE_PORT)
    }

    fn node_netns(&self) -> PathBuf {
        self.c.sandbox.node().path()
    }

    fn pod_netns(&self) -> PathBuf {
        self.c
            .sandbox
            .pod(CLIENT_POD.parse().unwrap())
            .unwrap()
            .netns()
            .path()
    }

    /// A hold probe in `netns` inside the cgroup whose sockets satisfy `enough` (new
    /// probes until they do: backends are picked at random).
    fn hold_until(
        &self,
        netns: &Path,
        spec: &HoldSpec,
        enough: impl Fn(&[HeldSocket]) -> bool,
    ) -> HoldProbe {
        for _ in 0..8 {
            let p = HoldProbe::spawn(netns, Some(self.c.cgroup.path()), spec, WAIT).unwrap();
            for s in &p.sockets {
                assert_eq!(s.error, None, "{s:?}");
            }
            if enough(&p.sockets) {
                return p;
            }
        }
        panic!("no random pick gave the sockets the test needs");
    }

    fn metric(&self, name: &str) -> u64 {
        let body = http::body(self.health, "/metrics").expect("/metrics");
        http::sample(&body, name).map_or(0, |v| v as u64)
    }

    /// Removes A from `dns` and returns when (CLOCK_MONOTONIC ns).
    fn remove_a(&self) -> u64 {
        let at = monotonic_ns();
        write_dns_slice(self.f, &self.c.manifests, &[B]);
        at
    }
}

fn on<'a>(sockets: &'a [HeldSocket], to: &str, backend: &str) -> Vec<&'a HeldSocket> {
    sockets
        .iter()
        .filter(|s| s.to == to && s.backend.as_deref() == Some(backend))
        .collect()
}

/// Waits until each socket of `stale` reported an error; checks it is ECONNABORTED,
/// that it came within [`ERROR_WITHIN`] of `since`, and that the reconnected socket
/// answers from B.
fn expect_destroyed(p: &mut HoldProbe, stale: &[usize], since: u64, what: &str) {
    let all_failed = |ev: &[Value]| stale.iter().all(|i| !events_of(ev, "error", *i).is_empty());
    assert!(
        p.wait(WAIT, all_failed),
        "{what}: not every stale socket got an error: {:?}",
        p.events()
    );
    for (index, error, at) in errors(p.events()) {
        assert!(
            stale.contains(&index),
            "{what}: socket {index} is not stale but got {error}"
        );
        assert_eq!(error, "ECONNABORTED", "{what}: socket {index}");
        let after = Duration::from_nanos(at.saturating_sub(since));
        assert!(
            after < ERROR_WITHIN,
            "{what}: socket {index} got its error {after:?} after the slice change"
        );
    }
    // Reconnected to the service: a remaining backend answers.
    let answered = |ev: &[Value]| {
        stale.iter().all(|i| {
            events_of(ev, "reply", *i)
                .iter()
                .any(|r| r["backend"].as_str() == Some(&pod(B)))
        })
    };
    assert!(
        p.wait(WAIT, answered),
        "{what}: a reconnected socket was not answered by {B}: {:?}",
        p.events()
    );
}

/// Makes every socket of `p` send a query and checks each is answered by the expected
/// backend from an unchanged local address, without any error.
fn expect_untouched(p: &mut HoldProbe, expect: impl Fn(&HeldSocket) -> String, what: &str) {
    assert!(
        errors(p.events()).is_empty(),
        "{what}: {:?}",
        errors(p.events())
    );
    let before = p.events().len();
    p.query().unwrap();
    let n = p.sockets.len();
    let done = |ev: &[Value]| {
        let new = &ev[before.min(ev.len())..];
        // The probe's "queried" line may come after the replies it lists.
        new.iter().any(|e| e["event"] == "queried")
            && (0..n).all(|i| !events_of(new, "reply", i).is_empty())
    };
    assert!(
        p.wait(WAIT, done),
        "{what}: not every socket answered: {:?}",
        p.events()
    );
    let events = p.events().to_vec();
    assert!(errors(&events).is_empty(), "{what}: {:?}", errors(&events));
    let queried = events
        .iter()
        .find(|e| e["event"] == "queried")
        .expect("queried line");
    for s in &p.sockets {
        let q = &queried["sockets"][s.index];
        assert_eq!(q["error"], Value::Null, "{what}: {s:?} {q}");
        assert_eq!(
            q["local"].as_str(),
            s.local.as_deref(),
            "{what}: {s:?} changed its local address"
        );
        let reply = events_of(&events[before..], "reply", s.index)[0];
        assert_eq!(
            reply["backend"].as_str(),
            Some(expect(s).as_str()),
            "{what}: {s:?}: {reply}"
        );
    }
}

// ---- the tests ----------------------------------------------------------------------

// Both in each family (`name::ipv4`, `name::ipv6`): IPv6 pairs are in lb6_sk_kill_v1.
socklb_tests::each_family!(
    connected_udp_sockets_of_a_departed_backend_get_econnaborted_and_decoys_stay,
    tcp_connections_are_destroyed_with_the_flag_and_a_restart_destroys_nothing,
);

fn connected_udp_sockets_of_a_departed_backend_get_econnaborted_and_decoys_stay(f: Family) {
    if !require_privileges() {
        return;
    }
    let mut env = start(f, &[]);
    let node_ns = env.node_netns();
    let pod_ns = env.pod_netns();
    let np = env.node_port();
    let nps = np.to_string();
    let dns = shown(f, DNS);
    let mapped = f == Family::V4;
    let both = |s: &[HeldSocket]| {
        !on(s, &dns, &pod(A)).is_empty()
            && !on(s, &dns, &pod(B)).is_empty()
            && !on(s, &nps, &pod(A)).is_empty()
            && (!mapped || !on(s, DNS_MAPPED, &pod(A)).is_empty())
    };
    // Connected resolvers in the node's namespace (to the ClusterIP, and to the
    // NodePort on a node address; in IPv4 runs also AF_INET6 sockets to the mapped
    // ClusterIP, whose pair is in the IPv4 kill map) and in a pod's.
    let mut node_spec = HoldSpec::new().udp(addr(f, DNS)).udp(np);
    if mapped {
        node_spec = node_spec.udp(DNS_MAPPED.parse().unwrap());
    }
    let node_spec = node_spec.repeat(8).reconnect();
    let mut node = env.hold_until(&node_ns, &node_spec, both);
    let mut in_pod = env.hold_until(
        &pod_ns,
        &HoldSpec::new().udp(addr(f, DNS)).repeat(6).reconnect(),
        |s| !on(s, &dns, &pod(A)).is_empty(),
    );
    // Decoys: a socket connected to A directly, two sockets of dns2 (on A, which stays
    // there), unconnected sockets sending to dns (some on A), a socket connected to dns
    // and then to A directly, TCP connections to dns (some on A).
    let decoy_spec = HoldSpec::new()
        .udp(direct_a(f))
        .udp(addr(f, DNS2))
        .udp(addr(f, DNS2))
        .udp_sendto(addr(f, DNS))
        .udp_sendto(addr(f, DNS))
        .udp_sendto(addr(f, DNS))
        .udp_sendto(addr(f, DNS))
        .udp_moved(addr(f, DNS), direct_a(f))
        .tcp(addr(f, DNS))
        .tcp(addr(f, DNS))
        .tcp(addr(f, DNS))
        .tcp(addr(f, DNS));
    let mut decoys = env.hold_until(&node_ns, &decoy_spec, |s| {
        let on_a = |kind: &str| {
            s.iter()
                .any(|s| s.kind == kind && s.backend.as_deref() == Some(&pod(A)))
        };
        on_a("tcp") && on_a("udp-sendto")
    });
    for s in &decoys.sockets {
        if s.kind != "tcp" && s.to != dns {
            assert_eq!(s.backend.as_deref(), Some(pod(A).as_str()), "{s:?}");
        }
    }
    let stale_node: Vec<usize> = node
        .sockets
        .iter()
        .filter(|s| s.backend.as_deref() == Some(&pod(A)))
        .map(|s| s.index)
        .collect();
    let stale_pod: Vec<usize> = on(&in_pod.sockets, &dns, &pod(A))
        .iter()
        .map(|s| s.index)
        .collect();
    let destroyed_before = env.metric("socklb_sockets_destroyed_total{protocol=\"udp\"}");

    let since = env.remove_a();
    expect_destroyed(&mut node, &stale_node, since, "node namespace");
    expect_destroyed(&mut in_pod, &stale_pod, since, "pod namespace");
    assert!(
        env.c.agent.wait_for_log("stale sockets destroyed", WAIT),
        "{}",
        env.c.agent.log()
    );

    // Sockets on B, in both namespaces, were never touched.
    for (p, stale) in [(&mut node, &stale_node), (&mut in_pod, &stale_pod)] {
        let events = p.events().to_vec();
        for s in p.sockets.iter().filter(|s| !stale.contains(&s.index)) {
            assert!(events_of(&events, "error", s.index).is_empty(), "{s:?}");
        }
    }
    // The decoys: no error, same local ports, answers as before (the unconnected
    // sockets now from B through the service address; the TCP connections on A keep
    // talking to A: TCP is left alone without --terminate-stale-tcp).
    expect_untouched(
        &mut decoys,
        |s| match (s.kind.as_str(), s.to.as_str()) {
            ("tcp", _) => "hold".to_string(), // the echo of the query
            ("udp-sendto", _) => pod(B),
            _ => pod(A),
        },
        "decoys",
    );
    let events = decoys.events().to_vec();
    for r in events
        .iter()
        .filter(|e| e["event"] == "reply" && e["from"].is_string())
    {
        let s = &decoys.sockets[r["index"].as_u64().unwrap() as usize];
        if s.kind == "udp-sendto" {
            assert_eq!(
                r["from"].as_str(),
                Some(dns.as_str()),
                "replies come from the service address: {r}"
            );
        }
    }

    let destroyed =
        env.metric("socklb_sockets_destroyed_total{protocol=\"udp\"}") - destroyed_before;
    assert_eq!(
        destroyed,
        (stale_node.len() + stale_pod.len()) as u64,
        "socklb_sockets_destroyed_total"
    );
    assert_eq!(
        env.metric("socklb_sockets_destroyed_total{protocol=\"tcp\"}"),
        0
    );
    assert_eq!(env.metric("socklb_stale_socket_termination_available"), 1);
    node.quit();
    in_pod.quit();
    decoys.quit();
    drop((node, in_pod, decoys));
    env.c.shutdown().unwrap();
}

fn tcp_connections_are_destroyed_with_the_flag_and_a_restart_destroys_nothing(f: Family) {
    if !require_privileges() {
        return;
    }
    let mut env = start(f, &["--terminate-stale-tcp"]);
    let node_ns = env.node_netns();
    let spec = HoldSpec::new()
        .tcp(addr(f, DNS))
        .repeat(8)
        .udp(addr(f, DNS));
    let mut p = env.hold_until(&node_ns, &spec, |s| {
        let tcp_on = |b: &str| {
            s.iter()
                .any(|s| s.kind == "tcp" && s.backend.as_deref() == Some(&pod(b)))
        };
        tcp_on(A) && tcp_on(B)
    });

    // A restart of the agent changes nothing for live sockets: nothing departed.
    env.c.agent.stop().unwrap();
    let config = env.c.agent.config().clone();
    env.c.agent = Agent::start(&config).unwrap();
    assert!(
        env.c.agent.wait_for_log("ready", WAIT),
        "{}",
        env.c.agent.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        errors(p.events()).is_empty(),
        "a restart destroyed sockets: {:?}",
        p.events()
    );
    assert_eq!(
        env.metric("socklb_sockets_destroyed_total{protocol=\"tcp\"}"),
        0
    );

    let stale: Vec<usize> = p
        .sockets
        .iter()
        .filter(|s| s.backend.as_deref() == Some(&pod(A)))
        .map(|s| s.index)
        .collect();
    let since = env.remove_a();
    let all_failed = |ev: &[Value]| stale.iter().all(|i| !events_of(ev, "error", *i).is_empty());
    assert!(
        p.wait(WAIT, all_failed),
        "{:?}\n{}",
        p.events(),
        env.c.agent.log()
    );
    for (index, error, at) in errors(p.events()) {
        assert!(stale.contains(&index), "socket {index} on B got {error}");
        assert_eq!(error, "ECONNABORTED", "socket {index}");
        assert!(Duration::from_nanos(at - since) < ERROR_WITHIN);
    }
    let tcp_stale = stale
        .iter()
        .filter(|i| p.sockets[**i].kind == "tcp")
        .count() as u64;
    assert!(wait_metric(
        &env,
        "socklb_sockets_destroyed_total{protocol=\"tcp\"}",
        tcp_stale
    ));
    p.quit();
    drop(p);
    env.c.shutdown().unwrap();
}

fn wait_metric(env: &Env, name: &str, want: u64) -> bool {
    socklb_tests::wait_until(WAIT, || env.metric(name) == want)
}
