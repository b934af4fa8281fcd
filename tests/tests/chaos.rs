//! Chaos: the agent killed with SIGKILL at random points of its syncs, under clients
//! of services whose backends stay ready and while other services and endpoints
//! churn (`socklb_tests::chaos`, whose long run is a stage of `cargo xtask bench`).
//! After each restart the maps hold exactly what `socklb plan` wants, and no pin or
//! link is left over; not one connection or datagram fails.
//!
//! The seed is printed; `SOCKLB_CHAOS_SEED=N` repeats a run's choices.
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use socklb_core::builders;
use socklb_tests::chaos::{self, ChaosOptions, DataPath, maps};
use socklb_tests::multinode::{node_addr, node_name};
use socklb_tests::{Agent, AgentOptions, MultiNode, Origin, ServeSpec, TcpRun, require_privileges};

fn run(datapath: DataPath, cycles: usize, bulk_services: usize) {
    let seed = chaos::seed_from_env();
    eprintln!("chaos seed {seed} (SOCKLB_CHAOS_SEED={seed} repeats it)");
    let mut opts = ChaosOptions::new(seed, cycles);
    opts.datapath = datapath;
    opts.bulk_services_per_file = bulk_services;
    let r = chaos::run(&opts).unwrap();
    for line in r.lines() {
        eprintln!("chaos: {line}");
    }
    assert_eq!(r.cycles, cycles);
    assert!(r.kills.total > cycles, "{:?}", r.kills);
    assert!(r.tcp.attempts > 500, "the TCP client ran: {:?}", r.tcp);
    assert!(r.udp.attempts > 500, "the UDP client ran: {:?}", r.udp);
    assert!(r.clean(), "seed {seed}:\n{}", r.lines().join("\n"));
}

/// The socket hooks (ClusterIP): clients on the node in the cgroup.
#[test]
fn sigkill_at_random_points_of_syncs_fails_no_client_and_leaves_nothing() {
    if !require_privileges() {
        return;
    }
    run(DataPath::SocketHooks, 6, 500);
}

/// The TC path (NodePort): clients outside the node, the agent on the node's LAN
/// device.
#[test]
fn sigkill_under_node_port_traffic_fails_no_client_and_leaves_nothing() {
    if !require_privileges() {
        return;
    }
    run(DataPath::NodePort, 4, 300);
}

/// A SIGKILL between the steps of replacing a link pin (`replace_link_pin` in
/// `datapath/kernel.rs`: the new link pinned as `<name>_new`, the old pin removed,
/// the new one renamed) leaves every link pinned as `<name>_new` alone, or both names
/// pinned. Random kills almost never land in those microseconds, so the states are
/// made by hand from a killed agent's pins: a restarted agent must repair both, and
/// `socklb uninstall` after such a kill must remove everything, the TC links too.
#[test]
fn a_kill_between_the_steps_of_a_link_swap_is_repaired_and_uninstalled() {
    if !require_privileges() {
        return;
    }
    let ips: Vec<Ipv4Addr> = [11u8, 12].map(|x| Ipv4Addr::new(10, 244, 1, x)).to_vec();
    let mut mn = MultiNode::builder()
        .nodes(1)
        .pods(ips.clone())
        .build()
        .unwrap();
    mn.serve_all(&ServeSpec::new(&[8080], &[])).unwrap();
    let svc = builders::merge(
        builders::service_object("e2e", "web", "10.96.0.10", &[]),
        json!({"spec": {"type": "NodePort", "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}]}}),
    );
    let eps: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": node_name(1)}))
        .collect();
    let slice = builders::merge(
        builders::slice_object("e2e", "web-1", "web", &[("http", "TCP", 8080)], &[]),
        json!({ "endpoints": eps }),
    );
    mn.write_manifest("web.yaml", &builders::manifest_text(&[svc, slice]))
        .unwrap();
    let config = mn.agent_config(1, &AgentOptions::default()).unwrap();
    let node = mn.node(1);
    let pins = node.pins();
    let nodeport = SocketAddr::new(node_addr(1).into(), 30080);
    let serves = |what: &str| {
        let r = mn
            .tcp(Origin::Client, &TcpRun::new(nodeport).count(20))
            .unwrap();
        assert_eq!(r.ok, 20, "{what}: {r:?}");
    };
    let links = || -> Vec<String> {
        pins.entries()
            .into_iter()
            .filter(|p| p.starts_with("link_"))
            .collect()
    };
    let start = || {
        let mut a = Agent::start(&config).unwrap();
        assert!(
            a.wait_for_log("ready", Duration::from_secs(30)),
            "{}",
            a.log()
        );
        a
    };

    let mut agent = start();
    serves("a clean start");
    let tc: Vec<String> = links()
        .into_iter()
        .filter(|p| p.starts_with("link_tc_"))
        .collect();
    assert_eq!(
        tc.len(),
        4,
        "ingress and egress of both families on lan0: {tc:?}"
    );
    let clean = maps::clean_pins(&tc);
    assert_eq!(pins.entries(), clean);
    let all_links = links();

    // Killed after the old pins were removed, before the renames: only `_new` pins.
    agent.kill().unwrap();
    for l in &all_links {
        std::fs::rename(pins.pin(l), pins.pin(&format!("{l}_new"))).unwrap();
    }
    serves("only staging pins, no agent");
    agent = start();
    assert_eq!(pins.entries(), clean, "a restart repairs only-staging pins");
    assert!(maps::link_problems(&maps::cgroup_programs(node.cgroup().path()).unwrap()).is_empty());
    serves("after repairing only-staging pins");

    // Killed after pinning the new links, before removing the old pins: both names
    // pinned (here to the same link).
    agent.kill().unwrap();
    for l in &all_links {
        let id = maps::link_id(&pins.pin(l)).unwrap();
        let out = Command::new("bpftool")
            .args(["link", "pin", "id", &id.to_string()])
            .arg(pins.pin(&format!("{l}_new")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serves("both pins, no agent");
    agent = start();
    assert_eq!(pins.entries(), clean, "a restart repairs doubled pins");
    assert!(maps::link_problems(&maps::cgroup_programs(node.cgroup().path()).unwrap()).is_empty());
    serves("after repairing doubled pins");

    // Only staging pins again, and no agent to repair them: uninstall removes all.
    let ids: Vec<u64> = all_links
        .iter()
        .map(|l| maps::link_id(&pins.pin(l)).unwrap())
        .collect();
    agent.kill().unwrap();
    for l in &all_links {
        std::fs::rename(pins.pin(l), pins.pin(&format!("{l}_new"))).unwrap();
    }
    mn.uninstall(1).unwrap();
    assert!(
        !pins.exists(),
        "pins left by uninstall: {:?}",
        pins.entries()
    );
    assert_eq!(maps::cgroup_programs(node.cgroup().path()).unwrap(), []);
    let left: Vec<&u64> = ids.iter().filter(|id| maps::link_exists(**id)).collect();
    assert!(
        left.is_empty(),
        "links left attached after uninstall: {left:?}"
    );
    drop(agent);
}
