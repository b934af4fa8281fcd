//! Map capacity, with the real agent at small map sizes (`--map-size-services 12`):
//! which Services get the room (the oldest by creationTimestamp; wildcards of every
//! service address first, so a Service that did not fit is refused at once rather
//! than sent towards an address nobody owns), that a programmed Service is never
//! evicted for a newer or even an older one, that freed room goes to the oldest
//! waiting one, that the choice survives a restart, that a programmed Service that
//! grows is truncated and keeps serving, and that all of it is visible: /readyz,
//! /metrics, `socklb status` and one log line per change. Then the flags: a value out
//! of range is refused before anything is created, a pinned map keeps its size with a
//! warning, and a new size takes effect once the maps are made anew.
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};
use socklb_core::builders;
use socklb_tests::http::{self, free_loopback_port};
use socklb_tests::{
    Agent, Cluster, ClusterOptions, ManifestDir, TcpProbe, TcpReport, require_privileges, socklb,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(15);
const POD_A: &str = "10.244.0.11";
const POD_B: &str = "10.244.0.12";

/// The Services, by name, with their age (seconds after a fixed instant): names,
/// addresses and ages are in different orders, so only age can explain the choice.
const SERVICES: [(&str, u8, u32); 6] = [
    ("svc-a", 1, 20),
    ("svc-b", 2, 40),
    ("svc-c", 3, 10),
    ("svc-d", 4, 60),
    ("svc-e", 5, 30),
    ("svc-f", 6, 50),
];

fn cluster_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 1, last)
}

fn frontend(last: u8) -> SocketAddr {
    SocketAddr::from((cluster_ip(last), 80))
}

fn last_of(name: &str) -> u8 {
    SERVICES
        .iter()
        .chain(std::iter::once(&OLDEST))
        .find(|(n, _, _)| *n == name)
        .map(|(_, l, _)| *l)
        .unwrap()
}

/// A Service older than all of [`SERVICES`], added later.
const OLDEST: (&str, u8, u32) = ("svc-z", 9, 1);

fn manifest(name: &str, last: u8, age_s: u32, endpoints: &[&str]) -> String {
    let service = builders::merge(
        builders::service_object(
            "cap",
            name,
            &cluster_ip(last).to_string(),
            &[("http", "TCP", 80)],
        ),
        json!({"metadata": {"creationTimestamp": format!("2026-01-01T00:00:{age_s:02}Z")},
               "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}}),
    );
    let slice = builders::slice_object(
        "cap",
        &format!("{name}-1"),
        name,
        &[("http", "TCP", 8080)],
        endpoints,
    );
    builders::manifest_text(&[service, slice])
}

fn write_service(dir: &ManifestDir, (name, last, age): (&str, u8, u32), endpoints: &[&str]) {
    dir.write(
        &format!("{name}.yaml"),
        &manifest(name, last, age, endpoints),
    )
    .unwrap();
}

/// One connect to each Service: the ones that answered.
fn served(c: &Cluster, names: &[&str]) -> BTreeSet<String> {
    names
        .iter()
        .filter(|name| probe(c, name).ok == 1)
        .map(|name| name.to_string())
        .collect()
}

fn probe(c: &Cluster, name: &str) -> TcpReport {
    c.tcp(
        &TcpProbe::new(frontend(last_of(name)))
            .count(1)
            .timeout_ms(500),
    )
    .unwrap()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn all_names() -> Vec<&'static str> {
    SERVICES
        .iter()
        .chain(std::iter::once(&OLDEST))
        .map(|(n, _, _)| *n)
        .collect()
}

fn status_json(c: &Cluster) -> Value {
    let out = socklb([
        "status",
        "--bpffs",
        &c.pins.path().display().to_string(),
        "-o",
        "json",
    ])
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn metric(addr: SocketAddr, sample: &str) -> Option<f64> {
    http::sample(&http::body(addr, "/metrics")?, sample)
}

fn incomplete_lines(agent: &Agent) -> usize {
    agent.log().matches("data path incomplete:").count()
}

#[test]
fn full_maps_serve_the_oldest_services_and_never_evict_a_programmed_one() {
    if !require_privileges() {
        return;
    }
    let src = ManifestDir::new().unwrap();
    for s in SERVICES {
        write_service(&src, s, &[POD_A]);
    }
    // The youngest is served by pod B (so the sandbox has it for later).
    write_service(&src, SERVICES[3], &[POD_B]);
    let addr = free_loopback_port();
    // 12 service map entries: the six address wildcards first, then 2 per Service
    // (its entry and one backend slot): room for the three oldest, c, a and e.
    let opts = ClusterOptions {
        agent_args: [
            "--map-size-services",
            "12",
            "--health-addr",
            &addr.to_string(),
            "--metrics-bind-address",
            &addr.to_string(),
        ]
        .map(String::from)
        .to_vec(),
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start_with(src.path(), &opts).unwrap();
    assert!(
        wait_until(WAIT, || c.agent.log().contains("ready")),
        "{}",
        c.agent.log()
    );
    let names: Vec<&str> = SERVICES.iter().map(|(n, _, _)| *n).collect();
    assert!(
        wait_until(WAIT, || served(&c, &names)
            == set(&["svc-c", "svc-a", "svc-e"])),
        "the three oldest: {:?}\n{}",
        served(&c, &names),
        c.agent.log_tail(20)
    );

    // The others are refused at once (their address wildcards are programmed), not
    // sent towards an address nobody owns.
    for name in ["svc-b", "svc-d", "svc-f"] {
        let r = probe(&c, name);
        assert_eq!(r.error("ECONNREFUSED"), 1, "{name}: {r:?}");
    }

    // Visible everywhere, and logged once, not per frontend.
    let (code, body) = (
        http::status(addr, "/readyz"),
        http::body(addr, "/readyz").unwrap_or_default(),
    );
    assert_eq!(code, Some(503), "{body}");
    assert!(
        body.contains("data path incomplete: 3 frontends not programmed (maps full)"),
        "{body}"
    );
    assert_eq!(
        metric(
            addr,
            r#"socklb_frontends_not_programmed{reason="maps_full"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(addr, r#"socklb_map_capacity{map="lb4_svc_v1"}"#),
        Some(12.0)
    );
    assert_eq!(
        metric(addr, r#"socklb_map_entries{map="lb4_svc_v1"}"#),
        Some(12.0)
    );
    let st = status_json(&c);
    assert_eq!(st["agent"]["not_programmed_maps_full"], 3, "{st}");
    assert_eq!(st["agent"]["complete"], false, "{st}");
    assert_eq!(
        st["map_fill"]["lb4_svc_v1"],
        json!({"entries": 12, "capacity": 12})
    );
    let table = socklb(["status", "--bpffs", &c.pins.path().display().to_string()]).unwrap();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("data path: INCOMPLETE: 3 frontends not programmed (maps full)"),
        "{table}"
    );
    assert_eq!(incomplete_lines(&c.agent), 1, "{}", c.agent.log());

    // A client of the oldest Service runs through everything that follows.
    let steady = TcpProbe::new(frontend(last_of("svc-c")))
        .duration_ms(8_000)
        .interval_ms(5)
        .timeout_ms(2_000);
    let c_ref = &c;
    let report = std::thread::scope(|s| {
        let client = s.spawn(|| c_ref.tcp(&steady));
        std::thread::sleep(Duration::from_millis(300));
        // An older Service than all arrives: it waits (the maps are full: not even its
        // wildcard fits); nothing is evicted.
        write_service(&c_ref.manifests, OLDEST, &[POD_A]);
        assert!(
            wait_until(WAIT, || metric(
                addr,
                r#"socklb_frontends_not_programmed{reason="maps_full"}"#
            ) == Some(5.0)),
            "{}",
            c_ref.agent.log_tail(10)
        );
        assert_eq!(
            served(c_ref, &all_names()),
            set(&["svc-c", "svc-a", "svc-e"])
        );
        assert_eq!(incomplete_lines(&c_ref.agent), 2, "one line per change");
        // A programmed one goes: the oldest waiting one (svc-z, 3 entries with its
        // wildcard) gets the room, not the older-by-name or lower-address ones.
        c_ref.manifests.remove("svc-a.yaml").unwrap();
        let mut names: Vec<&str> = all_names();
        names.retain(|n| *n != "svc-a");
        assert!(
            wait_until(WAIT, || served(c_ref, &names)
                == set(&["svc-c", "svc-z", "svc-e"])),
            "{:?}\n{}",
            served(c_ref, &names),
            c_ref.agent.log_tail(10)
        );
        // A programmed Service grows while the maps are full: it keeps what it has
        // and says so (backends_truncated), and keeps serving.
        write_service(&c_ref.manifests, SERVICES[2], &[POD_A, POD_B]);
        assert!(
            wait_until(WAIT, || metric(
                addr,
                r#"socklb_frontends_not_programmed{reason="backends_truncated"}"#
            ) == Some(1.0)),
            "{}",
            c_ref.agent.log_tail(10)
        );
        client.join().unwrap().unwrap()
    });
    assert!(report.attempts > 200, "{report:?}");
    assert_eq!(
        report.failed(),
        0,
        "svc-c's clients never notice: {report:?}"
    );
    let body = http::body(addr, "/readyz").unwrap_or_default();
    assert!(
        body.contains("1 frontends with fewer backends than wanted"),
        "{body}"
    );
    assert!(
        body.contains("cap/svc-c 10.96.1.3:80/TCP (1 of 2 backends)"),
        "{body}"
    );

    // A restarted agent adopts the maps and makes the same choice: no map writes.
    let before = status_json(&c)["frontends"].clone();
    c.agent.stop().unwrap();
    c.agent = Agent::start(c.agent.config()).unwrap();
    assert!(wait_until(WAIT, || c.agent.log().contains("ready")));
    assert!(
        !c.agent.log().contains("data path updated"),
        "a restart rewrites nothing: {}",
        c.agent.log()
    );
    assert_eq!(status_json(&c)["frontends"], before);
    let mut names = all_names();
    names.retain(|n| *n != "svc-a");
    assert_eq!(served(&c, &names), set(&["svc-c", "svc-z", "svc-e"]));
    c.shutdown().unwrap();
}

#[test]
fn map_size_flags_are_checked_and_a_pinned_map_keeps_its_size() {
    if !require_privileges() {
        return;
    }
    let src = ManifestDir::new().unwrap();
    for s in SERVICES {
        write_service(&src, s, &[POD_A]);
    }
    let size = |n: &str| ["--map-size-services", n].map(String::from).to_vec();
    // Out of range: refused by the command line, before any map or pin exists.
    let mut c = Cluster::start_with(
        src.path(),
        &ClusterOptions {
            agent_args: size("0"),
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let mut status = None;
    wait_until(WAIT, || {
        status = c.agent.try_wait().ok().flatten();
        status.is_some()
    });
    assert!(status.is_some_and(|s| !s.success()), "{}", c.agent.log());
    assert!(
        c.agent.log().contains("0 is outside 8..=16777216 entries"),
        "{}",
        c.agent.log()
    );
    assert!(c.pins.entries().is_empty(), "{:?}", c.pins.entries());
    drop(c);

    // Made with 12 entries; asked for 64 later: the pinned map stays at 12 (making it
    // anew would empty it under traffic), with a warning.
    let mut c = Cluster::start_with(
        src.path(),
        &ClusterOptions {
            agent_args: size("12"),
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    assert!(wait_until(WAIT, || c.agent.log().contains("ready")));
    c.agent.stop().unwrap();
    let mut config = c.agent.config().clone();
    let at = config
        .extra_args
        .iter()
        .position(|a| a == "--map-size-services")
        .unwrap();
    config.extra_args[at + 1] = "64".into();
    c.agent = Agent::start(&config).unwrap();
    assert!(wait_until(WAIT, || c.agent.log().contains("ready")));
    assert!(
        c.agent.log().contains("a pinned map keeps its size"),
        "{}",
        c.agent.log()
    );
    assert_eq!(status_json(&c)["map_fill"]["lb4_svc_v1"]["capacity"], 12);
    assert_eq!(status_json(&c)["agent"]["complete"], false);

    // Made anew (uninstall) with 64: every Service fits, and the agent says so.
    c.agent.stop().unwrap();
    let out = socklb_tests::uninstall(c.cgroup.path(), c.pins.path()).unwrap();
    assert!(out.status.success(), "{out:?}");
    c.agent = Agent::start(&config).unwrap();
    assert!(wait_until(WAIT, || c.agent.log().contains("ready")));
    let st = status_json(&c);
    assert_eq!(st["map_fill"]["lb4_svc_v1"]["capacity"], 64, "{st}");
    assert_eq!(st["agent"]["complete"], true, "{st}");
    assert!(!c.agent.log().contains("data path incomplete"));
    let names: Vec<&str> = SERVICES.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(served(&c, &names), set(&names));
    c.shutdown().unwrap();
}
