//! Real traffic from outside the nodes: NodePort, LoadBalancer ingress IPs and external
//! IPs through the TC data path, on a client namespace, two node namespaces (each
//! running its own `socklb agent --devices lan0` on a cgroup and pin directory of its
//! own) and pod namespaces behind them (see `socklb_tests::multinode`). No namespace
//! has a default route; TX checksum offload is off on every veth, so a checksum the
//! data path gets wrong is a dropped packet.
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use socklb_core::builders;
use socklb_tests::child::{Child, SpawnOpts};
use socklb_tests::multinode::{
    AGENT_WAIT, CLIENT_ADDR, CLIENT_ALT_ADDR, CLIENT_IF, LAN_IF, node_addr, read_proc_sys,
    tx_csum_state,
};
use socklb_tests::netns::netns_exists;
use socklb_tests::{
    AgentOptions, MultiNode, Origin, PlanFrontend, ServeSpec, TcpRun, TcpRunReport, TransferRun,
    UdpRun, UdpRunReport, pod_id, probe_bin, require_privileges,
};

// ---- the cluster ------------------------------------------------------------------

const POD_1A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const POD_1B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const POD_2A: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
const POD_2B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
const PODS: [Ipv4Addr; 4] = [POD_1A, POD_1B, POD_2A, POD_2B];
const NODE1_PODS: [Ipv4Addr; 2] = [POD_1A, POD_1B];
const NODE2_PODS: [Ipv4Addr; 2] = [POD_2A, POD_2B];

const TCP_TARGET: u16 = 8080;
const UDP_TARGET: u16 = 5353;

/// e2e/web: NodePort, externalTrafficPolicy Cluster, every pod.
const WEB_NP: u16 = 30080;
const WEB_NP_UDP: u16 = 30053;
/// e2e/web-local: NodePort, externalTrafficPolicy Local, every pod.
const LOCAL_NP: u16 = 30081;
const LOCAL_NP_UDP: u16 = 30054;
/// e2e/local-only1: NodePort, Local, endpoints on node-1 only.
const LOCAL1_NP: u16 = 30082;
/// e2e/empty: NodePort without endpoints.
const EMPTY_NP: u16 = 30099;
const EMPTY_NP_UDP: u16 = 30098;
/// e2e/bulk: NodePort, Cluster, its only endpoint on node-2.
const BULK_NP: u16 = 30090;
/// e2e/bulk-local: NodePort, Local, endpoints 10.244.1.10 and 10.244.2.10.
const BULK_LOCAL_NP: u16 = 30091;
/// e2e/lb: LoadBalancer (Cluster) with loadBalancerSourceRanges [192.0.2.100/32].
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const LB_NP: u16 = 30180;
/// e2e/ext: ClusterIP with externalIPs [198.51.100.8].
const EXT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
/// e2e/sticky: NodePort (Cluster) with ClientIP session affinity, every pod.
const STICKY_NP: u16 = 30085;
/// e2e/web's ClusterIP.
const WEB_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// e2e/empty-lb: LoadBalancer without endpoints (TCP 80, UDP 53).
const EMPTY_LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
/// e2e/empty-ext: ClusterIP with externalIPs [198.51.100.10], without endpoints (TCP 80,
/// UDP 53).
const EMPTY_EXT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// e2e/lb-local2: LoadBalancer, externalTrafficPolicy Local, endpoints on node-2 only
/// (its IP is routed to node-1, which has none).
const LOCAL2_LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn np(node: u8, port: u16) -> SocketAddr {
    sa(node_addr(node), port)
}

fn id(ip: Ipv4Addr) -> String {
    pod_id(ip)
}

fn ids(ips: &[Ipv4Addr]) -> BTreeSet<String> {
    ips.iter().map(|ip| id(*ip)).collect()
}

fn node_of(id: &str) -> u8 {
    let ip: Ipv4Addr = id.trim_start_matches("pod-").parse().unwrap();
    ip.octets()[2]
}

// ---- manifests ----------------------------------------------------------------------

struct Port {
    name: &'static str,
    protocol: &'static str,
    port: u16,
    target: u16,
    node_port: Option<u16>,
}

fn tcp(name: &'static str, port: u16, node_port: Option<u16>) -> Port {
    Port {
        name,
        protocol: "TCP",
        port,
        target: TCP_TARGET,
        node_port,
    }
}

fn udp(name: &'static str, port: u16, node_port: Option<u16>) -> Port {
    Port {
        name,
        protocol: "UDP",
        port,
        target: UDP_TARGET,
        node_port,
    }
}

#[derive(Default)]
struct Svc {
    name: &'static str,
    kind: &'static str,
    cluster_ip: &'static str,
    policy: Option<&'static str>,
    ports: Vec<Port>,
    lb_ingress: Vec<Ipv4Addr>,
    source_ranges: Vec<&'static str>,
    external_ips: Vec<Ipv4Addr>,
    /// ClientIP session affinity with this timeout.
    affinity_s: Option<u32>,
}

fn service_yaml(s: &Svc) -> String {
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| {
            let mut port = json!({"name": p.name, "protocol": p.protocol, "port": p.port, "targetPort": p.target});
            if let Some(n) = p.node_port {
                port["nodePort"] = json!(n);
            }
            port
        })
        .collect();
    let mut spec = json!({"type": s.kind, "ports": ports});
    if let Some(p) = s.policy {
        spec["externalTrafficPolicy"] = json!(p);
    }
    if !s.source_ranges.is_empty() {
        spec["loadBalancerSourceRanges"] = json!(s.source_ranges);
    }
    if !s.external_ips.is_empty() {
        spec["externalIPs"] = json!(s.external_ips);
    }
    if let Some(timeout) = s.affinity_s {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
    }
    let mut object = builders::merge(
        builders::service_object("e2e", s.name, s.cluster_ip, &[]),
        json!({ "spec": spec }),
    );
    if !s.lb_ingress.is_empty() {
        let ingress: Vec<Value> = s.lb_ingress.iter().map(|ip| json!({"ip": ip})).collect();
        object["status"] = json!({"loadBalancer": {"ingress": ingress}});
    }
    builders::manifest_text(&[object])
}

/// The service's EndpointSlice: its ports (by name, target port) and these pods, each
/// with the nodeName of its node.
fn slice_yaml(s: &Svc, endpoints: &[Ipv4Addr]) -> String {
    let ports: Vec<(&str, &str, u16)> = s
        .ports
        .iter()
        .map(|p| (p.name, p.protocol, p.target))
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|ip| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", ip.octets()[2]),
            })
        })
        .collect();
    let object = builders::merge(
        builders::slice_object("e2e", &format!("{}-abcde", s.name), s.name, &ports, &[]),
        json!({ "endpoints": endpoints }),
    );
    builders::manifest_text(&[object])
}

fn nodes_yaml() -> String {
    (1..=2u8)
        .map(|n| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-{n}\n  labels: {{kubernetes.io/hostname: node-{n}}}\n\
                 status:\n  addresses:\n  - {{type: InternalIP, address: \"{}\"}}\n---\n",
                node_addr(n)
            )
        })
        .collect()
}

fn web() -> Svc {
    Svc {
        name: "web",
        kind: "NodePort",
        cluster_ip: "10.96.0.10",
        policy: Some("Cluster"),
        ports: vec![
            tcp("http", 80, Some(WEB_NP)),
            udp("dns", 53, Some(WEB_NP_UDP)),
        ],
        ..Svc::default()
    }
}

/// Every service of the suite with its endpoints.
fn services() -> Vec<(Svc, Vec<Ipv4Addr>)> {
    vec![
        (web(), PODS.to_vec()),
        (
            Svc {
                name: "web-local",
                kind: "NodePort",
                cluster_ip: "10.96.0.11",
                policy: Some("Local"),
                ports: vec![
                    tcp("http", 80, Some(LOCAL_NP)),
                    udp("dns", 53, Some(LOCAL_NP_UDP)),
                ],
                ..Svc::default()
            },
            PODS.to_vec(),
        ),
        (
            Svc {
                name: "local-only1",
                kind: "NodePort",
                cluster_ip: "10.96.0.12",
                policy: Some("Local"),
                ports: vec![tcp("http", 80, Some(LOCAL1_NP))],
                ..Svc::default()
            },
            NODE1_PODS.to_vec(),
        ),
        (
            Svc {
                name: "empty",
                kind: "NodePort",
                cluster_ip: "10.96.0.99",
                policy: Some("Cluster"),
                ports: vec![
                    tcp("http", 80, Some(EMPTY_NP)),
                    udp("dns", 53, Some(EMPTY_NP_UDP)),
                ],
                ..Svc::default()
            },
            vec![],
        ),
        (
            Svc {
                name: "bulk",
                kind: "NodePort",
                cluster_ip: "10.96.0.30",
                policy: Some("Cluster"),
                ports: vec![tcp("data", 80, Some(BULK_NP))],
                ..Svc::default()
            },
            vec![POD_2A],
        ),
        (
            Svc {
                name: "bulk-local",
                kind: "NodePort",
                cluster_ip: "10.96.0.31",
                policy: Some("Local"),
                ports: vec![tcp("data", 80, Some(BULK_LOCAL_NP))],
                ..Svc::default()
            },
            vec![POD_1A, POD_2A],
        ),
        (
            Svc {
                name: "lb",
                kind: "LoadBalancer",
                cluster_ip: "10.96.0.20",
                policy: Some("Cluster"),
                ports: vec![tcp("http", 80, Some(LB_NP))],
                lb_ingress: vec![LB_IP],
                source_ranges: vec!["192.0.2.100/32"],
                ..Svc::default()
            },
            PODS.to_vec(),
        ),
        (
            Svc {
                name: "sticky",
                kind: "NodePort",
                cluster_ip: "10.96.0.13",
                policy: Some("Cluster"),
                ports: vec![tcp("http", 80, Some(STICKY_NP))],
                affinity_s: Some(600),
                ..Svc::default()
            },
            PODS.to_vec(),
        ),
        (
            Svc {
                name: "ext",
                kind: "ClusterIP",
                cluster_ip: "10.96.0.21",
                policy: Some("Cluster"),
                ports: vec![tcp("http", 80, None)],
                external_ips: vec![EXT_IP],
                ..Svc::default()
            },
            PODS.to_vec(),
        ),
        (
            Svc {
                name: "empty-lb",
                kind: "LoadBalancer",
                cluster_ip: "10.96.0.22",
                policy: Some("Cluster"),
                ports: vec![tcp("http", 80, None), udp("dns", 53, None)],
                lb_ingress: vec![EMPTY_LB_IP],
                ..Svc::default()
            },
            vec![],
        ),
        (
            Svc {
                name: "empty-ext",
                kind: "ClusterIP",
                cluster_ip: "10.96.0.23",
                policy: Some("Cluster"),
                ports: vec![tcp("http", 80, None), udp("dns", 53, None)],
                external_ips: vec![EMPTY_EXT_IP],
                ..Svc::default()
            },
            vec![],
        ),
        (
            Svc {
                name: "lb-local2",
                kind: "LoadBalancer",
                cluster_ip: "10.96.0.24",
                policy: Some("Local"),
                ports: vec![tcp("http", 80, None)],
                lb_ingress: vec![LOCAL2_LB_IP],
                ..Svc::default()
            },
            NODE2_PODS.to_vec(),
        ),
    ]
}

/// The topology with the four pods serving (`--report-peer`) and every manifest
/// written; no agent yet.
fn topology() -> MultiNode {
    let mut mn = MultiNode::builder().pods(PODS).build().unwrap();
    mn.serve_all(&ServeSpec::new(&[TCP_TARGET], &[UDP_TARGET]))
        .unwrap();
    mn.write_manifest("nodes.yaml", &nodes_yaml()).unwrap();
    for (svc, eps) in services() {
        mn.write_manifest(
            &format!("{}.yaml", svc.name),
            &(service_yaml(&svc) + &slice_yaml(&svc, &eps)),
        )
        .unwrap();
    }
    mn
}

/// [`topology`] with both agents running (`--devices lan0`), once both nodes answer on
/// web's NodePort.
fn cluster() -> MultiNode {
    let mut mn = topology();
    mn.start_agents(&AgentOptions::default()).unwrap();
    for n in [1, 2] {
        mn.wait_tcp(
            Origin::Client,
            &TcpRun::new(np(n, WEB_NP)).timeout_ms(300),
            AGENT_WAIT,
            |r| r.ok == 1,
        )
        .unwrap();
    }
    mn
}

// ---- assertions ---------------------------------------------------------------------

fn backend_set<'a>(m: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    m.into_iter().cloned().collect()
}

#[track_caller]
fn assert_all_ok_tcp(r: &TcpRunReport, n: u64) {
    assert_eq!((r.attempts, r.ok), (n, n), "{r:?}");
}

#[track_caller]
fn assert_backends_tcp(r: &TcpRunReport, want: &BTreeSet<String>) {
    assert_eq!(
        &backend_set(r.backends.keys()),
        want,
        "backends reached: {:?}",
        r.backends
    );
}

#[track_caller]
fn assert_backends_udp(r: &UdpRunReport, want: &BTreeSet<String>) {
    assert_eq!(
        &backend_set(r.backends.keys()),
        want,
        "backends reached: {:?}",
        r.backends
    );
}

/// The client address each backend saw, as `{backend id: {client ip}}`.
fn seen(seen_from: &BTreeMap<String, BTreeMap<String, u64>>) -> BTreeMap<String, BTreeSet<String>> {
    seen_from
        .iter()
        .map(|(id, ips)| (id.clone(), ips.keys().cloned().collect()))
        .collect()
}

/// What each backend should see under externalTrafficPolicy Cluster through node N:
/// remote backends the node's address (SNAT), local ones the client itself (no SNAT
/// towards a backend on the receiving node, so the client address is preserved).
fn expected_seen_cluster(
    via: u8,
    client: Ipv4Addr,
    backends: &BTreeSet<String>,
) -> BTreeMap<String, BTreeSet<String>> {
    backends
        .iter()
        .map(|b| {
            let ip = if node_of(b) == via {
                client
            } else {
                node_addr(via)
            };
            (b.clone(), BTreeSet::from([ip.to_string()]))
        })
        .collect()
}

fn expected_seen_all(
    client: Ipv4Addr,
    backends: &BTreeSet<String>,
) -> BTreeMap<String, BTreeSet<String>> {
    backends
        .iter()
        .map(|b| (b.clone(), BTreeSet::from([client.to_string()])))
        .collect()
}

// ---- the tests ----------------------------------------------------------------------

/// The topology alone, no agent: who reaches whom by plain routing, and nothing else.
#[test]
fn topology_routes_pods_nodes_and_client_and_nothing_else() {
    if !require_privileges() {
        return;
    }
    let mn = topology();
    let names = mn.netns_names();
    assert_eq!(names.len(), 2 + 2 + 4, "{names:?}");

    // No default route anywhere; forwarding on in the nodes; TX checksum offload off on
    // every veth end.
    for n in [1, 2] {
        let node = mn.node(n);
        assert_eq!(
            read_proc_sys(node.netns(), "net/ipv4/ip_forward").unwrap(),
            "1"
        );
        let mut devs = vec![LAN_IF.to_string()];
        for ip in node.pod_ips() {
            devs.push(node.sandbox().pod(ip).unwrap().host_if().to_string());
            let pod_ns = node.sandbox().pod(ip).unwrap().netns();
            assert!(!tx_csum_state(pod_ns, &["eth0"]).unwrap()["eth0"]);
        }
        let devs: Vec<&str> = devs.iter().map(String::as_str).collect();
        let state = tx_csum_state(node.netns(), &devs).unwrap();
        assert!(state.values().all(|on| !on), "node-{n}: {state:?}");
    }
    let state = tx_csum_state(mn.lan(), &["c0", "n1", "n2"]).unwrap();
    assert!(state.values().all(|on| !on), "lan: {state:?}");
    assert!(!tx_csum_state(mn.client(), &[CLIENT_IF]).unwrap()[CLIENT_IF]);
    for name in &names {
        let out = Command::new("ip")
            .args(["-n", name, "-4", "route", "show", "default"])
            .output()
            .unwrap();
        assert!(out.stdout.is_empty(), "{name} has a default route");
    }

    // A node reaches the other node's pods through the LAN route, as itself.
    let r = mn
        .tcp(
            Origin::NodeOutsideCgroup(1),
            &TcpRun::new(sa(POD_2A, TCP_TARGET)).count(3).echo(true),
        )
        .unwrap();
    assert_all_ok_tcp(&r, 3);
    assert_eq!(
        r.client_ips(),
        BTreeMap::from([(node_addr(1).to_string(), 3)]),
        "{r:?}"
    );
    // Pod to pod across nodes: no NAT.
    let r = mn
        .tcp(
            Origin::PodOutsideCgroup(POD_1A),
            &TcpRun::new(sa(POD_2B, TCP_TARGET)).count(3),
        )
        .unwrap();
    assert_all_ok_tcp(&r, 3);
    assert_eq!(r.client_ips(), BTreeMap::from([(POD_1A.to_string(), 3)]));
    let r = mn
        .udp(
            Origin::PodOutsideCgroup(POD_2A),
            &UdpRun::new(sa(POD_1B, UDP_TARGET)).sockets(2),
        )
        .unwrap();
    assert_eq!(r.replies, 2, "{r:?}");
    assert_eq!(r.client_ips(), BTreeMap::from([(POD_2A.to_string(), 2)]));

    // Nodes reach the client; pods route to it through their node (the return path of
    // NodePort replies without SNAT; the client itself has no route back to a pod).
    let mut cmd = Command::new(probe_bin());
    cmd.args(["serve", "--id", "client", "--tcp", "9000", "--report-peer"])
        .stdout(Stdio::piped());
    let mut client_server = Child::spawn(cmd, &SpawnOpts::new().netns(mn.client().path())).unwrap();
    client_server.read_line(Duration::from_secs(10)).unwrap();
    for n in [1u8, 2] {
        let r = mn
            .tcp(
                Origin::NodeOutsideCgroup(n),
                &TcpRun::new(sa(CLIENT_ADDR, 9000)).count(2),
            )
            .unwrap();
        assert_all_ok_tcp(&r, 2);
        assert_eq!(
            r.client_ips(),
            BTreeMap::from([(node_addr(n).to_string(), 2)])
        );
    }
    drop(client_server);
    for pod in PODS {
        let n = pod.octets()[2];
        let ns = mn.node(n).sandbox().pod(pod).unwrap().netns();
        let out = ns
            .ip(["-4", "route", "get", &CLIENT_ADDR.to_string()])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("via 10.244.{n}.1 ")),
            "{pod}: {text}"
        );
    }

    // The client has no route to the pods, nothing listens on a NodePort without an
    // agent (the node's kernel resets), and 198.51.100.0/24 goes to node-1, which has
    // no route for it (ICMP unreachable): nothing escapes the topology.
    let r = mn
        .tcp(
            Origin::Client,
            &TcpRun::new(sa(POD_1A, TCP_TARGET)).timeout_ms(300),
        )
        .unwrap();
    assert_eq!(r.error("ENETUNREACH"), 1, "{r:?}");
    let r = mn
        .tcp(Origin::Client, &TcpRun::new(np(1, WEB_NP)).timeout_ms(300))
        .unwrap();
    assert_eq!(r.error("ECONNREFUSED"), 1, "{r:?}");
    let r = mn
        .tcp(Origin::Client, &TcpRun::new(sa(LB_IP, 80)).timeout_ms(1000))
        .unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    assert!(
        r.error("ENETUNREACH") + r.error("EHOSTUNREACH") == 1,
        "node-1 answers ICMP unreachable: {r:?}"
    );

    drop(mn);
    for name in &names {
        assert!(!netns_exists(name), "{name} left behind");
    }
}

/// The agents run inside the node namespaces (devices auto-detected): ClusterIP traffic
/// from a pod and from a node, through their node's socket hooks, reaches backends on
/// both nodes by plain routing, and the backends see the real source (no NAT).
#[test]
fn agents_in_node_namespaces_serve_cluster_ips_across_nodes() {
    if !require_privileges() {
        return;
    }
    let mut mn = topology();
    mn.start_agents(&AgentOptions::auto_devices()).unwrap();
    let to = sa(WEB_CLUSTER_IP, 80);
    let all = ids(&PODS);
    let r = mn
        .wait_tcp(
            Origin::Pod(POD_1A),
            &TcpRun::new(to).count(80),
            AGENT_WAIT,
            |r| r.ok == 80,
        )
        .unwrap();
    assert_backends_tcp(&r, &all);
    assert_eq!(
        r.peers,
        BTreeMap::from([(to.to_string(), 80)]),
        "getpeername(): the service"
    );
    assert_eq!(r.client_ips(), BTreeMap::from([(POD_1A.to_string(), 80)]));

    // From node-2 itself: its pods see its bridge address, node-1's its LAN address.
    let r = mn.tcp(Origin::Node(2), &TcpRun::new(to).count(80)).unwrap();
    assert_all_ok_tcp(&r, 80);
    assert_backends_tcp(&r, &all);
    let want: BTreeMap<String, BTreeSet<String>> = all
        .iter()
        .map(|b| {
            let src = if node_of(b) == 2 {
                "10.244.2.1"
            } else {
                "192.0.2.12"
            };
            (b.clone(), BTreeSet::from([src.to_string()]))
        })
        .collect();
    assert_eq!(seen(&r.seen_from), want);

    // UDP from a pod on node-2: the reply comes from the service address.
    let udp_to = sa(WEB_CLUSTER_IP, 53);
    let r = mn
        .udp(Origin::Pod(POD_2B), &UdpRun::new(udp_to).sockets(80))
        .unwrap();
    assert_eq!(r.replies, 80, "{r:?}");
    assert_backends_udp(&r, &all);
    assert_eq!(r.reply_sources, BTreeMap::from([(udp_to.to_string(), 80)]));

    // Outside the cgroups there is no translation, and the client has no route.
    let r = mn
        .tcp(
            Origin::PodOutsideCgroup(POD_1A),
            &TcpRun::new(to).timeout_ms(300),
        )
        .unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    let r = mn
        .tcp(Origin::Client, &TcpRun::new(to).timeout_ms(300))
        .unwrap();
    assert_eq!(r.error("ENETUNREACH"), 1, "{r:?}");
    mn.shutdown().unwrap();
}

/// NodePort from outside reaches local and remote backends under the Cluster policy,
/// and only the receiving node's backends under the Local policy; TCP and UDP.
#[test]
fn nodeport_reaches_local_and_remote_backends_under_both_policies() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    let all = ids(&PODS);
    for n in [1u8, 2] {
        let local = ids(if n == 1 { &NODE1_PODS } else { &NODE2_PODS });
        // Cluster: 80 connections, each backend 1/4: all four reached (p(miss) ~ 4e-10).
        let r = mn
            .tcp(
                Origin::Client,
                &TcpRun::new(np(n, WEB_NP)).count(80).echo(true),
            )
            .unwrap();
        assert_all_ok_tcp(&r, 80);
        assert_backends_tcp(&r, &all);
        let r = mn
            .udp(Origin::Client, &UdpRun::new(np(n, WEB_NP_UDP)).sockets(80))
            .unwrap();
        assert_eq!(r.replies, 80, "{r:?}");
        assert_backends_udp(&r, &all);
        assert_eq!(
            r.reply_sources,
            BTreeMap::from([(np(n, WEB_NP_UDP).to_string(), 80)]),
            "replies must come from the NodePort (reverse translation)"
        );
        // Local: only this node's two backends, both reached.
        let r = mn
            .tcp(
                Origin::Client,
                &TcpRun::new(np(n, LOCAL_NP)).count(40).echo(true),
            )
            .unwrap();
        assert_all_ok_tcp(&r, 40);
        assert_backends_tcp(&r, &local);
        let r = mn
            .udp(
                Origin::Client,
                &UdpRun::new(np(n, LOCAL_NP_UDP)).sockets(40),
            )
            .unwrap();
        assert_eq!(r.replies, 40, "{r:?}");
        assert_backends_udp(&r, &local);
        assert_eq!(
            r.reply_sources,
            BTreeMap::from([(np(n, LOCAL_NP_UDP).to_string(), 40)])
        );
    }
}

/// The client address a backend sees: Cluster policy: the receiving node's address for
/// a backend on another node (SNAT, so replies come back through it), the client's own
/// for a backend on the receiving node; Local policy: always the client's own.
#[test]
fn backends_see_the_node_or_the_client_address_per_policy() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    let all = ids(&PODS);
    for n in [1u8, 2] {
        let local = ids(if n == 1 { &NODE1_PODS } else { &NODE2_PODS });
        let r = mn
            .tcp(Origin::Client, &TcpRun::new(np(n, WEB_NP)).count(80))
            .unwrap();
        assert_all_ok_tcp(&r, 80);
        assert_eq!(
            seen(&r.seen_from),
            expected_seen_cluster(n, CLIENT_ADDR, &all),
            "TCP, Cluster policy, via node-{n}"
        );
        let r = mn
            .udp(Origin::Client, &UdpRun::new(np(n, WEB_NP_UDP)).sockets(80))
            .unwrap();
        assert_eq!(r.replies, 80, "{r:?}");
        assert_eq!(
            seen(&r.seen_from),
            expected_seen_cluster(n, CLIENT_ADDR, &all),
            "UDP, Cluster policy, via node-{n}"
        );
        let r = mn
            .tcp(Origin::Client, &TcpRun::new(np(n, LOCAL_NP)).count(40))
            .unwrap();
        assert_all_ok_tcp(&r, 40);
        assert_eq!(
            seen(&r.seen_from),
            expected_seen_all(CLIENT_ADDR, &local),
            "TCP, Local policy, via node-{n}"
        );
        let r = mn
            .udp(
                Origin::Client,
                &UdpRun::new(np(n, LOCAL_NP_UDP)).sockets(40),
            )
            .unwrap();
        assert_eq!(r.replies, 40, "{r:?}");
        assert_eq!(
            seen(&r.seen_from),
            expected_seen_all(CLIENT_ADDR, &local),
            "UDP, Local policy, via node-{n}"
        );
    }
    // From the second client address too (the source is not a constant).
    let r = mn
        .tcp(
            Origin::Client,
            &TcpRun::new(np(1, LOCAL_NP)).count(10).bind(CLIENT_ALT_ADDR),
        )
        .unwrap();
    assert_all_ok_tcp(&r, 10);
    assert_eq!(
        r.client_ips(),
        BTreeMap::from([(CLIENT_ALT_ADDR.to_string(), 10)])
    );
}

/// 50 MB through node-1's NodePort to the only backend, on node-2: DNAT, SNAT and the
/// reverse translation on every packet, checksums verified by the receivers (offload
/// off). Then 20 MB to a local backend under the Local policy (DNAT only).
#[test]
fn a_50_mb_transfer_through_a_nodeport_is_byte_exact() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    let t = mn
        .transfer(
            Origin::Client,
            &TransferRun::new(np(1, BULK_NP), 50_000_000).seed(42),
        )
        .unwrap();
    assert!(t.ok, "{t:?}");
    assert_eq!(
        (t.sent, t.received, t.mismatch_offset),
        (50_000_000, 50_000_000, None)
    );
    assert_eq!(t.id.as_deref(), Some(id(POD_2A).as_str()));
    let seen_ip = t
        .seen_as
        .as_deref()
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .map(|a| a.ip());
    assert_eq!(
        seen_ip,
        Some(node_addr(1).into()),
        "the remote backend sees node-1: {t:?}"
    );
    eprintln!(
        "50 MB via node-1 to node-2: {:.0} Mbit/s, sha256 {}",
        t.mbit_per_s, t.sha256
    );

    let t = mn
        .transfer(
            Origin::Client,
            &TransferRun::new(np(1, BULK_LOCAL_NP), 20_000_000).seed(7),
        )
        .unwrap();
    assert!(t.ok, "{t:?}");
    assert_eq!(t.received, 20_000_000);
    assert_eq!(t.id.as_deref(), Some(id(POD_1A).as_str()));
    let seen_ip = t
        .seen_as
        .as_deref()
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .map(|a| a.ip());
    assert_eq!(seen_ip, Some(CLIENT_ADDR.into()), "{t:?}");
}

/// 200 connections open at the same time through each node's NodePort, each echoing
/// once they are all open: every one succeeds, every backend gets some.
#[test]
fn two_hundred_concurrent_connections_spread_over_the_backends() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    let all = ids(&PODS);
    for n in [1u8, 2] {
        let run = TcpRun::new(np(n, WEB_NP))
            .count(200)
            .parallel(200, true)
            .echo(true)
            .timeout_ms(5000);
        let r = mn.tcp(Origin::Client, &run).unwrap();
        assert_all_ok_tcp(&r, 200);
        assert_backends_tcp(&r, &all);
        assert_eq!(
            seen(&r.seen_from),
            expected_seen_cluster(n, CLIENT_ADDR, &all),
            "via node-{n}"
        );
        // No backend far from its share of 50 (binomial sd ~6: 20 is > 4 sd away).
        assert!(r.backends.values().all(|&c| c >= 20), "{:?}", r.backends);
    }
}

/// An endpoint removed from the slice (its pod still serving) gets no new flows, on
/// either node; once the slice is empty the NodePort refuses at once.
#[test]
fn a_removed_backend_gets_no_new_flows() {
    if !require_privileges() {
        return;
    }
    let mut mn = cluster();
    let r = mn
        .tcp(Origin::Client, &TcpRun::new(np(1, WEB_NP)).count(80))
        .unwrap();
    assert_backends_tcp(&r, &ids(&PODS));

    let svc = web();
    let kept = [POD_1A, POD_2A];
    mn.write_manifest("web.yaml", &(service_yaml(&svc) + &slice_yaml(&svc, &kept)))
        .unwrap();
    let kept = ids(&kept);
    for n in [1u8, 2] {
        // 40 connections all on the two kept backends: the change is in (with 4
        // backends left, p ~ 1e-12).
        mn.wait_tcp(
            Origin::Client,
            &TcpRun::new(np(n, WEB_NP)).count(40),
            AGENT_WAIT,
            |r| r.ok == 40 && backend_set(r.backends.keys()).is_subset(&kept),
        )
        .unwrap();
    }
    for n in [1u8, 2] {
        let r = mn
            .tcp(Origin::Client, &TcpRun::new(np(n, WEB_NP)).count(200))
            .unwrap();
        assert_all_ok_tcp(&r, 200);
        assert_backends_tcp(&r, &kept);
        let r = mn
            .udp(Origin::Client, &UdpRun::new(np(n, WEB_NP_UDP)).sockets(80))
            .unwrap();
        assert_eq!(r.replies, 80, "{r:?}");
        assert_backends_udp(&r, &kept);
    }
    let plan = mn.plan(1).unwrap();
    let f = plan
        .frontend("NodePort", &format!("*:{WEB_NP}"), "TCP")
        .unwrap();
    assert_eq!(f.backend_ids().into_iter().collect::<BTreeSet<_>>(), kept);

    // No endpoint left: refused at once (RST), on both nodes.
    mn.write_manifest("web.yaml", &(service_yaml(&svc) + &slice_yaml(&svc, &[])))
        .unwrap();
    for n in [1u8, 2] {
        let r = mn
            .wait_tcp(
                Origin::Client,
                &TcpRun::new(np(n, WEB_NP)).count(5).timeout_ms(1000),
                AGENT_WAIT,
                |r| r.error("ECONNREFUSED") == 5,
            )
            .unwrap();
        assert!(r.max_error_ms < 500.0, "refused at once: {r:?}");
    }
}

/// Local policy, endpoints only on node-1: node-2 drops (the client times out, no RST),
/// node-1 serves.
#[test]
fn local_policy_without_a_local_endpoint_drops_while_the_other_node_serves() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    let r = mn
        .tcp(Origin::Client, &TcpRun::new(np(1, LOCAL1_NP)).count(40))
        .unwrap();
    assert_all_ok_tcp(&r, 40);
    assert_backends_tcp(&r, &ids(&NODE1_PODS));
    let r = mn
        .tcp(
            Origin::Client,
            &TcpRun::new(np(2, LOCAL1_NP)).count(3).timeout_ms(700),
        )
        .unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(r.error("ETIMEDOUT"), 3, "dropped, not refused: {r:?}");
    assert_eq!(
        mn.plan(2)
            .unwrap()
            .frontend("NodePort", &format!("*:{LOCAL1_NP}"), "TCP")
            .map(|f| f.action.clone()),
        Some("drop".to_string())
    );
}

/// A NodePort whose service has no endpoints: refused at once on both nodes, by the
/// node's own stack (the TC program passes such packets up, and nothing may listen on a
/// NodePort): TCP with a RST, UDP with a port unreachable (a connected socket's
/// ECONNREFUSED).
#[test]
fn a_nodeport_without_endpoints_is_refused_at_once() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    for n in [1u8, 2] {
        let r = mn
            .tcp(
                Origin::Client,
                &TcpRun::new(np(n, EMPTY_NP)).count(5).timeout_ms(1000),
            )
            .unwrap();
        assert_eq!(r.error("ECONNREFUSED"), 5, "{r:?}");
        assert!(r.max_error_ms < 500.0, "refused at once: {r:?}");
        let r = mn
            .udp(
                Origin::Client,
                &UdpRun::new(np(n, EMPTY_NP_UDP))
                    .connected(true)
                    .sockets(3)
                    .timeout_ms(3000),
            )
            .unwrap();
        assert_eq!(r.error("ECONNREFUSED"), 3, "{r:?}");
        assert!(r.elapsed_ms < 3000.0, "refused at once: {r:?}");
        let plan = mn.plan(n).unwrap();
        let f = plan
            .frontend("NodePort", &format!("*:{EMPTY_NP}"), "TCP")
            .unwrap();
        assert_eq!(f.action, "reject");
    }
}

/// No endpoints from outside, as kube-proxy's REJECT answers (kubernetes#121371 for the
/// Local case): a LoadBalancer IP and an external IP whose service has no endpoints,
/// and a known external or LoadBalancer IP on a port (or protocol) its services do not
/// have, refuse at once: TCP with ECONNREFUSED from a RST, UDP on a connected socket
/// with ECONNREFUSED from an ICMP port unreachable. A Local service without a local
/// endpoint drops: the client times out.
#[test]
fn load_balancer_and_external_ips_without_endpoints_refuse_at_once() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    let tcp_refused = [
        sa(EMPTY_LB_IP, 80),
        sa(EMPTY_EXT_IP, 80),
        // Known VIPs with endpoints, on a port their services do not have.
        sa(EXT_IP, 81),
        sa(LB_IP, 443),
    ];
    for to in tcp_refused {
        let r = mn
            .tcp(Origin::Client, &TcpRun::new(to).count(5).timeout_ms(3000))
            .unwrap();
        assert_eq!(r.error("ECONNREFUSED"), 5, "{to}: {r:?}");
        assert!(
            r.max_error_ms < 1000.0,
            "{to}: refused at once, not after a timeout: {r:?}"
        );
    }
    let udp_refused = [
        sa(EMPTY_LB_IP, 53),
        sa(EMPTY_EXT_IP, 53),
        // A known external IP: UDP on its TCP service's port, and another port.
        sa(EXT_IP, 80),
        sa(EXT_IP, 5353),
    ];
    for to in udp_refused {
        let r = mn
            .udp(
                Origin::Client,
                &UdpRun::new(to).connected(true).sockets(3).timeout_ms(3000),
            )
            .unwrap();
        assert_eq!(r.replies, 0, "{to}: {r:?}");
        assert_eq!(r.error("ECONNREFUSED"), 3, "{to}: {r:?}");
        assert!(
            r.elapsed_ms < 3000.0,
            "{to}: three refusals at once, not a timeout: {r:?}"
        );
    }
    // The service ports with endpoints still serve.
    let r = mn
        .tcp(Origin::Client, &TcpRun::new(sa(EXT_IP, 80)).count(10))
        .unwrap();
    assert_all_ok_tcp(&r, 10);

    // externalTrafficPolicy Local, endpoints on node-2 only, the IP routed to node-1:
    // dropped, so the client times out (no RST).
    let r = mn
        .tcp(
            Origin::Client,
            &TcpRun::new(sa(LOCAL2_LB_IP, 80)).count(2).timeout_ms(700),
        )
        .unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(r.error("ETIMEDOUT"), 2, "dropped, not refused: {r:?}");

    // Node-1 answered them all itself, and dropped the Local ones.
    let status = mn.status(1).unwrap();
    let answered = status.counters["nodeport_rejected"];
    assert!(
        answered >= 4 * 5 + 4 * 3,
        "answers counted on node-1: {:?}",
        status.counters
    );
    assert_eq!(status.counters["nodeport_reject_rate_limited"], 0);
    assert!(
        status.counters["nodeport_dropped"] >= 2,
        "{:?}",
        status.counters
    );
    for ip in [LB_IP, EXT_IP, EMPTY_LB_IP, EMPTY_EXT_IP, LOCAL2_LB_IP] {
        assert!(
            status.external_service_addresses.contains(&ip.to_string()),
            "{ip} refuses its other ports: {:?}",
            status.external_service_addresses
        );
    }
    let plan = mn.plan(1).unwrap();
    for (kind, address) in [
        ("LoadBalancer", sa(EMPTY_LB_IP, 80)),
        ("ExternalIP", sa(EMPTY_EXT_IP, 80)),
    ] {
        let f = plan.frontend(kind, &address.to_string(), "TCP").unwrap();
        assert_eq!(f.action, "reject", "{kind} {address}");
    }
}

/// The LoadBalancer ingress IP serves the client within loadBalancerSourceRanges and
/// not a source outside them (while its NodePort still serves that source); the
/// external IP serves too.
#[test]
fn load_balancer_ip_honours_source_ranges_and_external_ip_serves() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    let all = ids(&PODS);
    let r = mn
        .tcp(
            Origin::Client,
            &TcpRun::new(sa(LB_IP, 80))
                .count(80)
                .bind(CLIENT_ADDR)
                .echo(true),
        )
        .unwrap();
    assert_all_ok_tcp(&r, 80);
    assert_backends_tcp(&r, &all);
    assert_eq!(
        seen(&r.seen_from),
        expected_seen_cluster(1, CLIENT_ADDR, &all)
    );

    let r = mn
        .tcp(
            Origin::Client,
            &TcpRun::new(sa(LB_IP, 80))
                .count(3)
                .bind(CLIENT_ALT_ADDR)
                .timeout_ms(700),
        )
        .unwrap();
    assert_eq!(
        r.ok, 0,
        "a source outside loadBalancerSourceRanges is not served: {r:?}"
    );
    eprintln!("LB IP from outside the source ranges: {:?}", r.errors);

    // Source ranges guard the LoadBalancer IP, not the service's NodePort.
    let r = mn
        .tcp(
            Origin::Client,
            &TcpRun::new(np(1, LB_NP)).count(10).bind(CLIENT_ALT_ADDR),
        )
        .unwrap();
    assert_all_ok_tcp(&r, 10);

    let r = mn
        .tcp(
            Origin::Client,
            &TcpRun::new(sa(EXT_IP, 80)).count(80).echo(true),
        )
        .unwrap();
    assert_all_ok_tcp(&r, 80);
    assert_backends_tcp(&r, &all);
    assert_eq!(
        seen(&r.seen_from),
        expected_seen_cluster(1, CLIENT_ADDR, &all)
    );
}

/// ClientIP affinity through the TC program: the client is the source address, on
/// each node (affinity is node-local state, as kube-proxy's).
#[test]
fn session_affinity_through_a_nodeport_sticks_per_client_address() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    for node in [1, 2] {
        for source in [CLIENT_ADDR, CLIENT_ALT_ADDR] {
            let r = mn
                .tcp(
                    Origin::Client,
                    &TcpRun::new(np(node, STICKY_NP)).count(150).bind(source),
                )
                .unwrap();
            assert_all_ok_tcp(&r, 150);
            assert_eq!(
                r.backends.len(),
                1,
                "node-{node}, client {source}: one backend for every connection: {r:?}"
            );
        }
    }
    // Without affinity the same client spreads (web, the same backends).
    let r = mn
        .tcp(Origin::Client, &TcpRun::new(np(1, WEB_NP)).count(150))
        .unwrap();
    assert_backends_tcp(&r, &ids(&PODS));
}

/// From inside the cluster, through the socket hooks: a pod on node-1 and node-1
/// itself (both in node-1's cgroup) reach the NodePort and the external IP; a backend
/// reaching its own service through the NodePort gets answers, from itself too
/// (hairpin); node-2 and a pod on node-2 reach node-1's NodePort.
#[test]
fn nodeport_from_pods_and_nodes_and_hairpin() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    let all = ids(&PODS);

    // Hairpin: 80 connections from a backend to its own service's NodePort reach every
    // backend, itself included.
    let r = mn
        .tcp(
            Origin::Pod(POD_1A),
            &TcpRun::new(np(1, WEB_NP)).count(80).echo(true),
        )
        .unwrap();
    assert_all_ok_tcp(&r, 80);
    assert_backends_tcp(&r, &all);
    assert!(r.backends[&id(POD_1A)] > 0, "hairpin: {r:?}");

    let r = mn
        .udp(
            Origin::Pod(POD_1B),
            &UdpRun::new(np(1, WEB_NP_UDP)).sockets(40),
        )
        .unwrap();
    assert_eq!(r.replies, 40, "{r:?}");
    assert_eq!(
        r.reply_sources,
        BTreeMap::from([(np(1, WEB_NP_UDP).to_string(), 40)])
    );

    for origin in [Origin::Node(1), Origin::Pod(POD_1B)] {
        for to in [np(1, WEB_NP), np(2, WEB_NP), sa(EXT_IP, 80)] {
            let r = mn.tcp(origin, &TcpRun::new(to).count(40)).unwrap();
            assert_all_ok_tcp(&r, 40);
            assert!(
                backend_set(r.backends.keys()).is_subset(&all),
                "{origin:?} -> {to}: {r:?}"
            );
        }
    }
    // Node-2 (outside its cgroup: plain packets to node-1) and a pod on node-2.
    for origin in [
        Origin::NodeOutsideCgroup(2),
        Origin::Node(2),
        Origin::Pod(POD_2A),
    ] {
        let r = mn
            .tcp(origin, &TcpRun::new(np(1, WEB_NP)).count(80))
            .unwrap();
        assert_all_ok_tcp(&r, 80);
        assert_backends_tcp(&r, &all);
    }
}

/// `socklb plan` of each node against the maps (`socklb status`) and the traffic:
/// every external frontend is programmed as planned, and reaches exactly the backends
/// the plan lists (forward), or times out (drop), or is refused (reject).
#[test]
fn plan_and_maps_agree_with_the_traffic_on_every_node() {
    if !require_privileges() {
        return;
    }
    let mn = cluster();
    for n in [1u8, 2] {
        let plan = mn.plan(n).unwrap();
        assert_eq!(plan.node, format!("node-{n}"));
        let status = mn.status(n).unwrap();
        assert!(
            status.node_addresses.contains(&node_addr(n).to_string()),
            "node-{n}: {:?}",
            status.node_addresses
        );
        let external: Vec<&PlanFrontend> = plan.external().collect();
        assert!(external.len() >= 10, "{:?}", plan.frontends);
        for f in &external {
            let what = format!(
                "node-{n} {} {} {} {}",
                f.service, f.kind, f.address, f.protocol
            );
            let programmed = status
                .frontend("external", &f.address, &f.protocol)
                .unwrap_or_else(|| panic!("{what}: not in the maps: {:?}", status.frontends));
            assert_eq!(programmed.action, f.action, "{what}");
            let mut backends = programmed.backends.clone();
            backends.sort();
            assert_eq!(backends, f.backends, "{what}");
        }
        for f in external {
            let port = f.port_number().unwrap();
            let to = match f.kind.as_str() {
                "NodePort" => np(n, port),
                // The client routes 198.51.100.0/24 to node-1 only.
                _ if n != 1 => continue,
                _ => f.address.parse().unwrap(),
            };
            let want: BTreeSet<String> = f.backend_ids().into_iter().collect();
            let what = format!(
                "node-{n} {} {} {} {}",
                f.service, f.kind, f.address, f.protocol
            );
            match (f.action.as_str(), f.protocol.as_str()) {
                ("forward", "TCP") => {
                    let r = mn
                        .tcp(
                            Origin::Client,
                            &TcpRun::new(to)
                                .count(20 * want.len() as u64)
                                .bind(CLIENT_ADDR),
                        )
                        .unwrap();
                    assert_eq!(r.ok, r.attempts, "{what}: {r:?}");
                    let got = backend_set(r.backends.keys());
                    if f.affinity_timeout_s > 0 {
                        // One client sticks to one of the backends.
                        assert!(got.len() == 1 && got.is_subset(&want), "{what}: {got:?}");
                    } else {
                        assert_eq!(got, want, "{what}");
                    }
                }
                ("forward", "UDP") => {
                    let sockets = 20 * want.len() as u64;
                    let r = mn
                        .udp(
                            Origin::Client,
                            &UdpRun::new(to).sockets(sockets).bind(CLIENT_ADDR),
                        )
                        .unwrap();
                    assert_eq!(r.replies, sockets, "{what}: {r:?}");
                    assert_eq!(backend_set(r.backends.keys()), want, "{what}");
                }
                ("drop", "TCP") => {
                    let r = mn
                        .tcp(Origin::Client, &TcpRun::new(to).count(2).timeout_ms(500))
                        .unwrap();
                    assert_eq!(r.error("ETIMEDOUT"), 2, "{what}: {r:?}");
                }
                ("reject", "TCP") => {
                    let r = mn
                        .tcp(Origin::Client, &TcpRun::new(to).count(2).timeout_ms(1000))
                        .unwrap();
                    assert_eq!(r.error("ECONNREFUSED"), 2, "{what}: {r:?}");
                }
                ("drop" | "reject", "UDP") => {
                    let r = mn
                        .udp(Origin::Client, &UdpRun::new(to).sockets(2).timeout_ms(500))
                        .unwrap();
                    assert_eq!(r.replies, 0, "{what}: {r:?}");
                }
                other => panic!("{what}: unexpected {other:?}"),
            }
        }
        // The flows just made are tracked in this node's maps.
        let status = mn.status(n).unwrap();
        assert!(status.conntrack_entries > 0, "node-{n}: {status:?}");
    }
}

/// A clean stop: both agents exit 0, `socklb uninstall` in each node's namespace
/// succeeds, and the TC links the agents had on `lan0` (TCX, pinned in their pin
/// directories) are gone from the kernel.
#[test]
fn shutdown_and_uninstall_detach_the_tc_programs() {
    if !require_privileges() {
        return;
    }
    let mut mn = cluster();
    let mut ids = Vec::new();
    for n in [1u8, 2] {
        let links = tc_links(&mn, n);
        assert!(
            links.len() >= 2,
            "node-{n}: an ingress and an egress TC link on {LAN_IF} expected: {links:?}"
        );
        ids.extend(links.into_iter().map(|(_, id)| id));
    }
    mn.shutdown().unwrap();
    for n in [1u8, 2] {
        let left = mn.node(n).pins().entries();
        assert!(left.is_empty(), "node-{n}: pins left: {left:?}");
    }
    for id in ids {
        let out = Command::new("bpftool")
            .args(["-j", "link", "show", "id", &id.to_string()])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "link {id} still exists: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The TC links pinned by node N's agent: (pin name, link id), from `bpftool link show
/// pinned` on its pin directory's `link_tc_*` pins.
fn tc_links(mn: &MultiNode, n: u8) -> Vec<(String, u64)> {
    let pins = mn.node(n).pins();
    let mut links = Vec::new();
    for name in pins
        .entries()
        .into_iter()
        .filter(|e| e.starts_with("link_tc_"))
    {
        let out = Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(pins.pin(&name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!("node-{n} {name}: {v}");
        links.push((name, v["id"].as_u64().unwrap()));
    }
    links
}
