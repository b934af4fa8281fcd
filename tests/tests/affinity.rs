//! sessionAffinity: ClientIP on the socket path, end to end: the real agent on the
//! real kernel, 8 backends, clients in the node's network namespace and in three pod
//! namespaces of their own (each a client: the socket hooks key affinity by network
//! namespace), all in the test's cgroup.
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use socklb_core::builders;
use socklb_tests::{
    Agent, Cluster, ManifestDir, TcpProbe, TcpReport, UdpProbe,
    family::Family,
    require_privileges,
    sandbox::{tcp_probe_in, udp_probe_in},
    socklb,
};

/// ClientIP affinity with the default timeout (10800 s).
const STICKY: &str = "10.96.0.40:80";
const STICKY_DNS: &str = "10.96.0.40:53";
/// ClientIP affinity with a 2 s timeout.
const BRIEF: &str = "10.96.0.41:80";
const BACKENDS: [&str; 8] = [
    "10.244.0.11",
    "10.244.0.12",
    "10.244.0.13",
    "10.244.0.14",
    "10.244.0.15",
    "10.244.0.16",
    "10.244.0.17",
    "10.244.0.18",
];
/// Pods that only run clients (no endpoint of any service).
const CLIENT_PODS: [&str; 3] = ["10.244.0.101", "10.244.0.102", "10.244.0.103"];
const WAIT: Duration = Duration::from_secs(15);

/// A test's IPv4 socket address in family `f`.
fn addr(f: Family, s: &str) -> SocketAddr {
    f.sock_str(s)
}

/// A Service with ClientIP affinity (`timeout` None: the default), TCP 80 and UDP 53.
fn affinity_service(name: &str, ip: &str, timeout: Option<u32>) -> Value {
    let mut config = json!({});
    if let Some(t) = timeout {
        config = json!({"clientIP": {"timeoutSeconds": t}});
    }
    builders::merge(
        builders::service_object("e2e", name, ip, &[("http", "TCP", 80), ("dns", "UDP", 53)]),
        json!({"spec": {"sessionAffinity": "ClientIP", "sessionAffinityConfig": config}}),
    )
}

fn slice(service: &str, addresses: &[&str]) -> Value {
    builders::slice_object(
        "e2e",
        &format!("{service}-1"),
        service,
        &[("http", "TCP", 8080), ("dns", "UDP", 5353)],
        addresses,
    )
}

fn manifests(backends: &[&str]) -> (String, String) {
    (
        builders::manifest_text(&[
            affinity_service("sticky", "10.96.0.40", None),
            slice("sticky", backends),
        ]),
        builders::manifest_text(&[
            affinity_service("brief", "10.96.0.41", Some(2)),
            slice("brief", &BACKENDS),
        ]),
    )
}

/// The cluster (its manifests in family `f`) with its client pods, ready.
fn cluster(f: Family) -> Cluster {
    let dir = ManifestDir::new().unwrap();
    let (sticky, brief) = manifests(&BACKENDS);
    dir.write("sticky.yaml", &f.manifests(&sticky)).unwrap();
    dir.write("brief.yaml", &f.manifests(&brief)).unwrap();
    let mut c = Cluster::start(dir.path()).unwrap();
    for ip in CLIENT_PODS {
        c.sandbox.add_pod(ip.parse().unwrap()).unwrap();
    }
    c.wait_tcp(&TcpProbe::new(addr(f, STICKY)).count(1), WAIT, |r| {
        r.ok == 1
    })
    .unwrap();
    c
}

/// A client: the node itself, or one of the client pods.
#[derive(Clone, Copy, Debug)]
enum Client {
    Node,
    Pod(&'static str),
}

fn clients() -> Vec<Client> {
    std::iter::once(Client::Node)
        .chain(CLIENT_PODS.iter().map(|ip| Client::Pod(ip)))
        .collect()
}

fn tcp_from(c: &Cluster, client: Client, probe: &TcpProbe) -> TcpReport {
    match client {
        Client::Node => c.tcp(probe).unwrap(),
        Client::Pod(ip) => {
            let pod = c.sandbox.pod(ip.parse::<Ipv4Addr>().unwrap()).unwrap();
            tcp_probe_in(pod.netns(), Some(c.cgroup.path()), probe).unwrap()
        }
    }
}

// Every test in both families (`name::ipv4`, `name::ipv6`): IPv6 clients' affinity
// lives in lb6_aff_v1, keyed by the same network-namespace cookie.
socklb_tests::each_family!(
    every_client_sticks_to_one_backend_over_tcp_and_udp,
    affinity_is_renewed_within_the_timeout_and_ends_after_it,
    a_removed_backend_ends_the_affinity_and_restarts_keep_it,
);

/// The one backend every connection of `r` reached (fails if there were several).
fn only_backend(r: &TcpReport, what: &str) -> String {
    assert_eq!(r.failed(), 0, "{what}: {r:?}");
    assert_eq!(r.backends.len(), 1, "{what}: one backend expected: {r:?}");
    r.backends.keys().next().unwrap().clone()
}

fn every_client_sticks_to_one_backend_over_tcp_and_udp(f: Family) {
    if !require_privileges() {
        return;
    }
    let c = cluster(f);
    for client in clients() {
        let r = tcp_from(&c, client, &TcpProbe::new(addr(f, STICKY)).count(1000));
        only_backend(&r, &format!("{client:?}, 1000 connects"));
        assert_eq!(r.ok, 1000);
        // UDP: 50 new sockets of the same client stick too (to the UDP port's backend:
        // affinity is per service port, as kube-proxy's).
        let probe = UdpProbe::new(addr(f, STICKY_DNS)).sockets(50);
        let u = match client {
            Client::Node => c.udp(&probe).unwrap(),
            Client::Pod(ip) => {
                let pod = c.sandbox.pod(ip.parse::<Ipv4Addr>().unwrap()).unwrap();
                udp_probe_in(pod.netns(), Some(c.cgroup.path()), &probe).unwrap()
            }
        };
        assert_eq!(u.replies, 50, "{client:?}: {u:?}");
        assert_eq!(u.backends.len(), 1, "{client:?}: UDP sticks: {u:?}");
    }
    // `socklb status` shows one live affinity per (client, frontend) used.
    let pins = c.pins.path().display().to_string();
    let out = socklb(["status", "-o", "json", "--bpffs", pins.as_str()]).unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let affinity = status["affinity"].as_array().unwrap();
    let tcp_clients: BTreeSet<&str> = affinity
        .iter()
        .filter(|a| a["frontend"] == addr(f, STICKY).to_string() && a["protocol"] == "TCP")
        .map(|a| a["client"].as_str().unwrap())
        .collect();
    assert_eq!(tcp_clients.len(), clients().len(), "{affinity:?}");
    assert!(tcp_clients.iter().all(|c| c.starts_with("netns:")));
}

fn affinity_is_renewed_within_the_timeout_and_ends_after_it(f: Family) {
    if !require_privileges() {
        return;
    }
    let c = cluster(f);
    let one = move |c: &Cluster| {
        only_backend(
            &c.tcp(&TcpProbe::new(addr(f, BRIEF)).count(20)).unwrap(),
            "20 connects",
        )
    };
    // Within the 2 s timeout, every connect renews it: 6 s of connects 1 s apart
    // stay on one backend.
    let first = one(&c);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(one(&c), first, "renewed within the timeout");
    }
    // Idle for less than a second beyond the timeout: the affinity has ended and the
    // next client picks again (8 backends: 5 rounds all on one backend is ~1 in 4000).
    let mut seen = BTreeSet::from([first]);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(2800));
        seen.insert(one(&c));
    }
    assert!(
        seen.len() > 1,
        "affinity never ended after the timeout: {seen:?}"
    );
}

fn a_removed_backend_ends_the_affinity_and_restarts_keep_it(f: Family) {
    if !require_privileges() {
        return;
    }
    let mut c = cluster(f);
    let before = only_backend(
        &c.tcp(&TcpProbe::new(addr(f, STICKY)).count(50)).unwrap(),
        "before",
    );
    // An agent restart keeps the affinity (the maps are pinned).
    let config = c.agent.config().clone();
    assert!(c.agent.stop().unwrap().success());
    c.agent = Agent::start(&config).unwrap();
    assert!(c.agent.wait_for_log("ready", WAIT), "{}", c.agent.log());
    let after_restart = only_backend(
        &c.tcp(&TcpProbe::new(addr(f, STICKY)).count(50)).unwrap(),
        "after a restart",
    );
    assert_eq!(after_restart, before, "the restart kept the affinity");

    // The backend leaves the service: the client gets another one at once, and
    // sticks to that.
    let gone = before.trim_start_matches("pod-").to_string();
    let remaining: Vec<&str> = BACKENDS.iter().copied().filter(|b| *b != gone).collect();
    let (sticky, _) = manifests(&remaining);
    c.manifests
        .write("sticky.yaml", &f.manifests(&sticky))
        .unwrap();
    let started = Instant::now();
    let r = c
        .wait_tcp(&TcpProbe::new(addr(f, STICKY)).count(1), WAIT, |r| {
            r.ok == 1 && !r.backends.contains_key(&before)
        })
        .unwrap();
    let moved = r.backends.keys().next().unwrap().clone();
    assert!(started.elapsed() < WAIT);
    let r = c.tcp(&TcpProbe::new(addr(f, STICKY)).count(200)).unwrap();
    assert_eq!(
        only_backend(&r, "after the removal"),
        moved,
        "the new affinity holds"
    );
}
