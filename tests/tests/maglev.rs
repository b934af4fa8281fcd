//! `--lb-algorithm maglev` end to end: two nodes, each with its own agent on Maglev, a
//! NodePort with four backends (two per node) and a client outside the nodes. The same
//! client flows (same source ports) reach the same backend through node-1 and node-2,
//! the one the core's table builder and flow hash predict; removing one of the four
//! backends moves only the flows the new table moves (those of the removed backend and
//! at most 1% of the others); an agent restart keeps the tables where they are.
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use socklb_core::{
    builders,
    maps::{
        BackendKey, ip_to_map,
        maglev::{FlowTuple, Table, flow_entry},
        port_to_map,
    },
    model::Protocol,
};
use socklb_tests::multinode::{AGENT_WAIT, CLIENT_ADDR, node_addr};
use socklb_tests::{
    AgentOptions, MultiNode, Origin, ServeSpec, TcpRun, pod_id, require_privileges,
};

const PODS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 244, 1, 10),
    Ipv4Addr::new(10, 244, 1, 11),
    Ipv4Addr::new(10, 244, 2, 10),
    Ipv4Addr::new(10, 244, 2, 11),
];
const TARGET: u16 = 8080;
/// e2e/mg: NodePort, externalTrafficPolicy Cluster.
const NP: u16 = 30200;
const TABLE_SIZE: u32 = 16_381;
const SEED: u32 = 0x2a;
/// Flows per sample.
const FLOWS: u16 = 200;

fn options() -> AgentOptions {
    let mut opts = AgentOptions::default();
    opts.extra_args.extend(
        [
            "--lb-algorithm",
            "maglev",
            "--maglev-table-size",
            "16381",
            "--maglev-max-tables",
            "16",
            "--maglev-hash-seed",
            "0x2a",
        ]
        .map(String::from),
    );
    opts
}

fn manifests(endpoints: &[Ipv4Addr]) -> String {
    let service = builders::merge(
        builders::service_object("e2e", "mg", "10.96.0.60", &[]),
        json!({"spec": {"type": "NodePort", "externalTrafficPolicy": "Cluster",
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": TARGET, "nodePort": NP}]}}),
    );
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|ip| {
            json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", ip.octets()[2])})
        })
        .collect();
    let slice = builders::merge(
        builders::slice_object("e2e", "mg-abcde", "mg", &[("http", "TCP", TARGET)], &[]),
        json!({ "endpoints": endpoints }),
    );
    builders::manifest_text(&[service, slice])
}

/// Both agents on Maglev, once both nodes answer on the NodePort.
fn cluster() -> MultiNode {
    let mut mn = MultiNode::builder().pods(PODS).build().unwrap();
    mn.serve_all(&ServeSpec::new(&[TARGET], &[])).unwrap();
    mn.write_manifest("mg.yaml", &manifests(&PODS)).unwrap();
    mn.start_agents(&options()).unwrap();
    for n in [1, 2] {
        mn.wait_tcp(
            Origin::Client,
            &TcpRun::new(SocketAddr::new(node_addr(n).into(), NP)).timeout_ms(300),
            AGENT_WAIT,
            |r| r.ok == 1,
        )
        .unwrap();
    }
    mn
}

/// Source port -> backend id, for `FLOWS` connections from CLIENT_ADDR:`first`.. to
/// the NodePort on node `n`.
fn flows(mn: &MultiNode, n: u8, first: u16) -> BTreeMap<u16, String> {
    let to = SocketAddr::new(node_addr(n).into(), NP);
    let run = TcpRun::new(to)
        .count(u64::from(FLOWS))
        .bind(CLIENT_ADDR)
        .source_ports(first)
        .timeout_ms(2000);
    let r = mn.tcp(Origin::Client, &run).unwrap();
    assert_eq!(
        (r.report.attempts, r.report.ok),
        (u64::from(FLOWS), u64::from(FLOWS)),
        "{r:?}"
    );
    r.report
        .by_source_port
        .iter()
        .map(|(port, id)| (port.parse().unwrap(), id.clone()))
        .collect()
}

/// The backend id the core predicts for a client flow from CLIENT_ADDR:`port` to the
/// NodePort, with these endpoints (any node: a NodePort hashes as address 0).
fn predict(endpoints: &[Ipv4Addr], port: u16) -> String {
    let backends: Vec<BackendKey> = endpoints
        .iter()
        .map(|ip| BackendKey {
            addr: SocketAddr::new((*ip).into(), TARGET),
            protocol: Protocol::Tcp,
            local: false,
        })
        .collect();
    let table = Table::build(&backends, TABLE_SIZE, SEED);
    let flow = FlowTuple {
        saddr: ip_to_map(CLIENT_ADDR),
        frontend_addr: 0,
        sport: port_to_map(port),
        dport: port_to_map(NP),
        proto: 6,
    };
    let at = table
        .backend_at(flow_entry(&flow, TABLE_SIZE, SEED))
        .unwrap();
    match backends[at].addr {
        SocketAddr::V4(a) => pod_id(*a.ip()),
        SocketAddr::V6(_) => unreachable!("IPv4 pods"),
    }
}

/// The Maglev table node `n`'s external NodePort frontend names, and its backends.
fn external(mn: &MultiNode, n: u8) -> (u32, usize) {
    let status = mn.status(n).unwrap();
    let f = status
        .frontend("external", &format!("*:{NP}"), "TCP")
        .expect("the external NodePort frontend");
    (f.maglev_table, f.backends.len())
}

#[test]
fn the_same_flows_reach_the_same_backends_through_either_node_and_a_removal_moves_few() {
    if !require_privileges() {
        return;
    }
    let mut mn = cluster();
    for n in [1, 2] {
        let (table, backends) = external(&mn, n);
        assert!(
            table != 0 && backends == 4,
            "node-{n}: table {table}, {backends} backends"
        );
    }

    // The same client flows through node-1 and through node-2: the same backends, the
    // ones predicted, spread over all four.
    let via1 = flows(&mn, 1, 41_000);
    let via2 = flows(&mn, 2, 41_000);
    assert_eq!(via1, via2, "node-1 and node-2 chose differently");
    for (port, id) in &via1 {
        assert_eq!(*id, predict(&PODS, *port), "flow from port {port}");
    }
    let mut spread: BTreeMap<&String, u32> = BTreeMap::new();
    for id in via1.values() {
        *spread.entry(id).or_default() += 1;
    }
    eprintln!("Maglev e2e: {FLOWS} flows, the same through both nodes: {spread:?}");
    assert_eq!(spread.len(), 4, "{spread:?}");

    // Flows of a second sample through node-1, then one of the four backends leaves.
    let before = flows(&mn, 1, 42_000);
    let gone = PODS[3];
    let kept = [PODS[0], PODS[1], PODS[2]];
    mn.write_manifest("mg.yaml", &manifests(&kept)).unwrap();
    let deadline = Instant::now() + AGENT_WAIT;
    while [1, 2].iter().any(|n| external(&mn, *n).1 != 3) {
        assert!(
            Instant::now() < deadline,
            "the agents did not apply the removal"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same flows again, through node-2 (node-1 still tracks them as closing; a
    // NodePort flow hashes the same on every node): only the table's changes move.
    let after = flows(&mn, 2, 42_000);
    let (mut moved, mut on_gone) = (0, 0);
    for (port, was) in &before {
        let now = &after[port];
        assert_eq!(
            *now,
            predict(&kept, *port),
            "flow from port {port} after the removal"
        );
        assert_ne!(
            *now,
            pod_id(gone),
            "flow from port {port} went to the removed backend"
        );
        on_gone += usize::from(*was == pod_id(gone));
        moved += usize::from(now != was);
    }
    eprintln!(
        "Maglev e2e: removing 1 of 4 backends moved {moved} of {FLOWS} flows, {on_gone} of them on the removed backend"
    );
    assert!(on_gone > 0);
    assert!(
        moved - on_gone <= usize::from(FLOWS) / 100 + 2,
        "{} flows moved that were not on the removed backend",
        moved - on_gone
    );

    // A restart of node-1's agent keeps its table where it is (adopted, not rewritten):
    // new flows through node-1 still agree with node-2.
    let (table, _) = external(&mn, 1);
    mn.restart_agent(1, &options()).unwrap();
    assert_eq!(
        external(&mn, 1).0,
        table,
        "the restarted agent kept the table"
    );
    let log = mn.node(1).agent().unwrap().log();
    assert!(
        !log.contains("data path updated"),
        "the restarted agent rewrote maps it adopted:\n{log}"
    );
    let via1 = flows(&mn, 1, 43_000);
    let via2 = flows(&mn, 2, 43_000);
    assert_eq!(
        via1, via2,
        "after the restart, node-1 and node-2 chose differently"
    );
    for (port, id) in &via1 {
        assert_eq!(
            *id,
            predict(&kept, *port),
            "flow from port {port} after the restart"
        );
    }
}

#[test]
fn plan_and_status_show_maglev_and_its_memory() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    let status = mn.status(1).unwrap();
    let internal = status
        .frontend("internal", &format!("*:{NP}"), "TCP")
        .expect("the internal NodePort frontend");
    assert_eq!(internal.maglev_table, 0, "the socket hooks pick at random");
    // `socklb plan` with the agent's flags: the NodePort picks by Maglev, one table of
    // 64 KiB.
    let out = socklb_tests::socklb(
        [
            "plan",
            "--manifests",
            &mn.manifests().path().display().to_string(),
            "--node",
            "node-1",
            "-o",
            "json",
            "--lb-algorithm",
            "maglev",
        ]
        .map(std::ffi::OsString::from),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodeport = plan["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == "NodePort")
        .unwrap();
    assert_eq!(nodeport["algorithm"], "maglev");
    assert_eq!(plan["maglev"]["services"][0]["bytes"], 65_524);
    // A table size that is not one of the allowed primes is refused, with the list.
    let out = socklb_tests::socklb(
        [
            "plan",
            "--manifests",
            &mn.manifests().path().display().to_string(),
            "--lb-algorithm",
            "maglev",
            "--maglev-table-size",
            "10000",
        ]
        .map(std::ffi::OsString::from),
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("131071"));
}
