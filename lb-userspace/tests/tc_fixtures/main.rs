//! Packet fixtures for the TC data path (lb4_tc_ingress, lb4_tc_egress) through
//! BPF_PROG_TEST_RUN, in the manner of Katran's and Cilium's BPF tests: an input
//! packet, the expected output packet, the expected verdict.
//!
//! The maps are programmed by the agent's own code (Kubernetes objects -> models ->
//! plan -> desired state -> diff -> `KernelMaps`), so the fixtures test the pairing of
//! agent and kernel, not a hand-written map layout; only conntrack setups the programs
//! cannot produce themselves (an expired entry) are written raw.
//!
//! Every output is compared field by field with the expected packet (built by the
//! test's own packet builder, with checksums computed here) and every checksum of the
//! output is recomputed from scratch, so a checksum bug fails. One blind spot: a test
//! run's skb is CHECKSUM_NONE, for which the kernel's l4_csum_replace ignores
//! BPF_F_PSEUDO_HDR; that flag matters with checksum offload (CHECKSUM_PARTIAL) and
//! only the real-traffic suite (tests/tests/nodeport.rs) can see it.
//!
//! Packets whose source becomes a node address are routed by the ingress program
//! itself (FIB lookup, redirect, TTL one less), so each fixture runs on a thread moved
//! into a network namespace of its own with the node's device, addresses and a route
//! to the remote pods (see harness.rs): the lookups are deterministic and the host's
//! routing never matters.
//!
//! Needs root, bpffs and iproute2: without them a fixture prints `SKIPPED: ...`, or
//! fails under `CI=true`. Nothing is attached anywhere and no packet leaves the test:
//! BPF_PROG_TEST_RUN runs the program on a buffer (a redirect is only a verdict).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

mod harness;
#[allow(dead_code, reason = "a toolbox: not every fixture uses every helper")]
mod packet;

use std::net::{Ipv4Addr, SocketAddrV4};

use harness::{Fixture, Hook, Network, Run, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, monotonic_ns};
use lb_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_FLAG_CLOSING, CT_FLAG_ESTABLISHED, CT_FLAG_ROUTE,
    CT_FLAG_SNAT, Counter, Ct4Key, Ct4Value, SNAT_PORT_MAX, SNAT_PORT_MIN, ct_lifetime,
};
use packet::{
    ACK, FIN, ICMP_DEST_UNREACH, ICMP_ECHO_REQUEST, ICMP_FRAG_NEEDED, ICMP_PORT_UNREACH,
    IPPROTO_TCP, IPPROTO_UDP, PSH, Pkt, RST, SYN, arp_request, checksum_problems, decode, diff,
    ether, ip_of, ipv6_tcp_syn, reassemble, render,
};
use serde_json::{Value, json};
use socklb_core::maps::{ServiceMaps as _, ip_from_map, ip_to_map, port_from_map, port_to_map};

// ---------------------------------------------------------------------------------------
// The cluster every fixture runs against.
// ---------------------------------------------------------------------------------------

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
/// A second address of the node: NodePorts answer there too.
const NODE_IP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// A source outside the LoadBalancer's loadBalancerSourceRanges (192.0.2.0/24).
const OUTSIDER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// node-b, where the remote pods (10.244.2.0/24) live.
const REMOTE_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 12);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const EMPTY_LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// Neither a node address nor a frontend.
const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);

/// NodePorts: TCP to a local / a remote backend, UDP to a local / a remote backend,
/// the LoadBalancer service's, a Local policy without local endpoints, no endpoints.
const NP_WEB_LOCAL: u16 = 30080;
const NP_WEB_REMOTE: u16 = 30090;
const NP_DNS_LOCAL: u16 = 30053;
const NP_DNS_REMOTE: u16 = 30054;
const NP_LB: u16 = 30081;
const NP_LOCAL_POLICY: u16 = 30082;
const NP_NO_ENDPOINTS: u16 = 30083;

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn client(port: u16) -> SocketAddrV4 {
    sa(CLIENT_IP, port)
}

const LOCAL_WEB: SocketAddrV4 = SocketAddrV4::new(LOCAL_POD, 8080);
const REMOTE_WEB: SocketAddrV4 = SocketAddrV4::new(REMOTE_POD, 8080);
const LOCAL_DNS: SocketAddrV4 = SocketAddrV4::new(LOCAL_POD, 5353);
const REMOTE_DNS: SocketAddrV4 = SocketAddrV4::new(REMOTE_POD, 5353);

/// A Service of namespace demo with one port "p" (`port` -> targetPort `target`);
/// `overrides.spec` and `overrides.status` are merged over the defaults (their
/// top-level keys replace).
fn service(
    name: &str,
    cluster_ip: &str,
    proto: &str,
    port: u16,
    target: u16,
    node_port: Option<u16>,
    overrides: Value,
) -> Value {
    let mut port_spec = json!({"name": "p", "port": port, "protocol": proto, "targetPort": target});
    if let Some(np) = node_port {
        port_spec["nodePort"] = json!(np);
    }
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "demo", "resourceVersion": "1"},
        "spec": {
            "type": if node_port.is_some() { "NodePort" } else { "ClusterIP" },
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "selector": {"app": name},
            "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
            "externalTrafficPolicy": "Cluster",
            "ports": [port_spec],
        },
        "status": {"loadBalancer": {}},
    });
    for part in ["spec", "status"] {
        for (k, v) in overrides[part].as_object().cloned().unwrap_or_default() {
            svc[part][k] = v;
        }
    }
    svc
}

/// The EndpointSlice of `service`: ready endpoints (address, node) on port "p".
fn slice(service: &str, proto: &str, port: u16, endpoints: &[(Ipv4Addr, &str)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node)| {
            json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node,
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-1"), "namespace": "demo", "resourceVersion": "1",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": port, "protocol": proto}],
        "endpoints": endpoints,
    })
}

fn cluster() -> Vec<Value> {
    vec![
        // NodePorts, externalTrafficPolicy Cluster, one backend each.
        service(
            "web-local",
            "10.96.0.10",
            "TCP",
            80,
            8080,
            Some(NP_WEB_LOCAL),
            json!({}),
        ),
        slice("web-local", "TCP", 8080, &[(LOCAL_POD, "node-a")]),
        service(
            "web-remote",
            "10.96.0.11",
            "TCP",
            80,
            8080,
            Some(NP_WEB_REMOTE),
            json!({}),
        ),
        slice("web-remote", "TCP", 8080, &[(REMOTE_POD, "node-b")]),
        service(
            "dns-local",
            "10.96.0.12",
            "UDP",
            53,
            5353,
            Some(NP_DNS_LOCAL),
            json!({}),
        ),
        slice("dns-local", "UDP", 5353, &[(LOCAL_POD, "node-a")]),
        service(
            "dns-remote",
            "10.96.0.13",
            "UDP",
            53,
            5353,
            Some(NP_DNS_REMOTE),
            json!({}),
        ),
        slice("dns-remote", "UDP", 5353, &[(REMOTE_POD, "node-b")]),
        // A LoadBalancer with an external IP and source ranges, local backend.
        service(
            "lb",
            "10.96.0.20",
            "TCP",
            80,
            8080,
            Some(NP_LB),
            json!({
                "spec": {"type": "LoadBalancer", "externalIPs": [EXTERNAL_IP.to_string()], "loadBalancerSourceRanges": ["192.0.2.0/24"]},
                "status": {"loadBalancer": {"ingress": [{"ip": LB_IP.to_string()}]}},
            }),
        ),
        slice("lb", "TCP", 8080, &[(LOCAL_POD, "node-a")]),
        // externalTrafficPolicy Local with its only endpoint on another node.
        service(
            "local-only",
            "10.96.0.30",
            "TCP",
            80,
            8080,
            Some(NP_LOCAL_POLICY),
            json!({"spec": {"externalTrafficPolicy": "Local"}}),
        ),
        slice("local-only", "TCP", 8080, &[(REMOTE_POD, "node-b")]),
        // No endpoints at all: a NodePort and a LoadBalancer IP.
        service(
            "empty",
            "10.96.0.40",
            "TCP",
            80,
            8080,
            Some(NP_NO_ENDPOINTS),
            json!({}),
        ),
        service(
            "empty-lb",
            "10.96.0.41",
            "TCP",
            80,
            8080,
            Some(30084),
            json!({
                "spec": {"type": "LoadBalancer"},
                "status": {"loadBalancer": {"ingress": [{"ip": EMPTY_LB_IP.to_string()}]}},
            }),
        ),
    ]
}

/// The fixture cluster on node-a with addresses NODE_IP and NODE_IP2, SNAT to NODE_IP.
/// None when skipped.
fn fixture() -> Option<Fixture> {
    let net = Network {
        node_addresses: &[(NODE_IP, 24), (NODE_IP2, 24)],
        snat_addr: NODE_IP,
        routes: &[("10.244.2.0/24", REMOTE_NODE_IP)],
    };
    Fixture::new(&cluster(), &net)
}

// ---------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------

fn verdict_name(v: u32) -> &'static str {
    match v {
        TC_ACT_OK => "TC_ACT_OK",
        TC_ACT_SHOT => "TC_ACT_SHOT",
        TC_ACT_REDIRECT => "TC_ACT_REDIRECT",
        _ => "other",
    }
}

/// Runs `input` through `hook` and checks the verdict, the output field by field
/// against `expected`, and every checksum of the output from scratch.
#[track_caller]
fn expect(
    fx: &Fixture,
    what: &str,
    hook: Hook,
    input: &[u8],
    verdict: u32,
    expected: &[u8],
) -> Run {
    // The fixtures' own packets must be right before they can judge the program's.
    let sane = checksum_problems(expected);
    assert!(
        sane.is_empty(),
        "{what}: the expected packet is broken: {sane:?}"
    );
    let run = fx.run(hook, input);
    check(fx, what, hook, input, &run, verdict, expected);
    run
}

/// Checks a run: verdict, output field by field, every checksum of the output.
#[track_caller]
fn check(
    fx: &Fixture,
    what: &str,
    hook: Hook,
    input: &[u8],
    run: &Run,
    verdict: u32,
    expected: &[u8],
) {
    assert_eq!(
        run.verdict,
        verdict,
        "{what}: verdict {} ({}), expected {} ({})\ninput:\n{}output:\n{}counters: {:?}",
        run.verdict,
        verdict_name(run.verdict),
        verdict,
        verdict_name(verdict),
        render(&decode(input)),
        render(&decode(&run.output)),
        fx.counters(),
    );
    if let Some(d) = diff(expected, &run.output) {
        panic!("{what} ({hook:?}): the output differs from the expected packet:\n{d}");
    }
    let problems = checksum_problems(&run.output);
    assert!(
        problems.is_empty(),
        "{what}: checksum errors in the output: {problems:?}"
    );
}

/// `input` must come out byte for byte as it went in, with TC_ACT_OK, through both
/// programs, and create no conntrack entry.
#[track_caller]
fn expect_untouched(fx: &Fixture, what: &str, input: &[u8]) {
    let before = fx.ct_entries().len();
    for hook in [Hook::Ingress, Hook::Egress] {
        let run = fx.run(hook, input);
        assert_eq!(
            run.verdict,
            TC_ACT_OK,
            "{what} ({hook:?}): verdict {}",
            verdict_name(run.verdict)
        );
        if let Some(d) = diff(input, &run.output) {
            panic!("{what} ({hook:?}): must pass untouched, but:\n{d}");
        }
    }
    assert_eq!(
        fx.ct_entries().len(),
        before,
        "{what}: created conntrack entries"
    );
}

fn ct_key(src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> Ct4Key {
    Ct4Key {
        saddr: ip_to_map(*src.ip()),
        daddr: ip_to_map(*dst.ip()),
        sport: port_to_map(src.port()),
        dport: port_to_map(dst.port()),
        proto,
        pad: [0; 3],
    }
}

/// A conntrack value in readable terms (expiry and backend id checked apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Xlate {
    to_src: SocketAddrV4,
    to_dst: SocketAddrV4,
    flags: u8,
    direction: u8,
}

fn xlate(v: &Ct4Value) -> Xlate {
    Xlate {
        to_src: sa(ip_from_map(v.to_saddr), port_from_map(v.to_sport)),
        to_dst: sa(ip_from_map(v.to_daddr), port_from_map(v.to_dport)),
        flags: v.flags,
        direction: v.direction,
    }
}

#[track_caller]
fn ct_entry(fx: &Fixture, src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> Ct4Value {
    fx.ct(&ct_key(src, dst, proto)).unwrap_or_else(|| {
        let all: Vec<String> = fx
            .ct_entries()
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}:{} -> {}:{} = {:?}",
                    ip_from_map(k.saddr),
                    port_from_map(k.sport),
                    ip_from_map(k.daddr),
                    port_from_map(k.dport),
                    xlate(v)
                )
            })
            .collect();
        panic!("no conntrack entry for {src} -> {dst} (proto {proto}); entries: {all:#?}")
    })
}

/// `v` expires `lifetime` after a moment in [before, after].
#[track_caller]
fn assert_expires(v: &Ct4Value, before: u64, after: u64, lifetime: u64, what: &str) {
    assert!(
        (before + lifetime..=after + lifetime).contains(&v.expires_ns),
        "{what}: expires at {} ns, expected {} s after a moment in [{before}, {after}] (that is {:.3} s from {after})",
        v.expires_ns,
        lifetime / 1_000_000_000,
        (v.expires_ns as f64 - after as f64) / 1e9,
    );
}

/// The id the agent gave backend `addr` (proto), from the backend map.
fn backend_id(fx: &Fixture, addr: SocketAddrV4, proto: u8) -> u32 {
    fx.maps
        .dump_backends()
        .unwrap()
        .into_iter()
        .find(|(_, b)| {
            ip_from_map(b.address) == *addr.ip()
                && port_from_map(b.port) == addr.port()
                && b.proto == proto
        })
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("backend {addr} not in the backend map"))
}

/// Sends the first packet of a TCP flow (SYN) from `from` to `frontend` and returns
/// the translated SYN.
fn open_tcp(fx: &Fixture, from: SocketAddrV4, frontend: SocketAddrV4) -> Vec<u8> {
    let run = fx.ingress(&Pkt::tcp(from, frontend, SYN).frame());
    assert!(
        [TC_ACT_OK, TC_ACT_REDIRECT].contains(&run.verdict),
        "SYN {from} -> {frontend}: verdict {}",
        verdict_name(run.verdict)
    );
    run.output
}

/// Sends the first packet of a flow that gets SNAT and checks what comes out: from the
/// device's SNAT address, with a port of the SNAT range, to `backend`, routed by the
/// program itself (a packet from a node address would be a martian to the stack):
/// redirect verdict, TTL one less. Returns the SNAT source.
#[track_caller]
fn expect_snat(
    fx: &Fixture,
    what: &str,
    input: &Pkt,
    backend: SocketAddrV4,
) -> (SocketAddrV4, Run) {
    let run = fx.ingress(&input.frame());
    let snat = snat_source(fx, input.src_sa(), input.dst_sa(), input.proto());
    assert_eq!(
        *snat.ip(),
        NODE_IP,
        "{what}: the device's SNAT address, whichever node address was used"
    );
    assert!(
        (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&snat.port()),
        "{what}: SNAT port {} outside {SNAT_PORT_MIN}-{SNAT_PORT_MAX}",
        snat.port()
    );
    let want = input.clone().from(snat).to(backend).routed().frame();
    check(
        fx,
        what,
        Hook::Ingress,
        &input.frame(),
        &run,
        TC_ACT_REDIRECT,
        &want,
    );
    (snat, run)
}

/// The SNAT source a flow from `from` to `frontend` got, from its conntrack entry.
fn snat_source(
    fx: &Fixture,
    from: SocketAddrV4,
    frontend: SocketAddrV4,
    proto: u8,
) -> SocketAddrV4 {
    xlate(&ct_entry(fx, from, frontend, proto)).to_src
}

// ---------------------------------------------------------------------------------------
// 1. DNAT to a local backend
// ---------------------------------------------------------------------------------------

#[test]
fn nodeport_dnat_to_a_local_backend_keeps_the_client_address() {
    let Some(fx) = fixture() else { return };
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let syn = Pkt::tcp(client(40000), frontend, SYN);

    let before = monotonic_ns();
    expect(
        &fx,
        "SYN to the NodePort",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    let after = monotonic_ns();

    let id = backend_id(&fx, LOCAL_WEB, IPPROTO_TCP);
    let original = ct_entry(&fx, client(40000), frontend, IPPROTO_TCP);
    assert_eq!(
        xlate(&original),
        Xlate {
            to_src: client(40000),
            to_dst: LOCAL_WEB,
            flags: 0,
            direction: CT_DIR_ORIGINAL
        },
        "original direction: DNAT only"
    );
    assert_expires(
        &original,
        before,
        after,
        ct_lifetime::TCP_SYN_NS,
        "original entry after a SYN",
    );
    assert_eq!(original.backend_id, id);
    let reply = ct_entry(&fx, LOCAL_WEB, client(40000), IPPROTO_TCP);
    assert_eq!(
        xlate(&reply),
        Xlate {
            to_src: frontend,
            to_dst: client(40000),
            flags: CT_FLAG_ROUTE, // replies leave as the NodePort, a node address
            direction: CT_DIR_REPLY
        },
        "reply direction: back to the frontend"
    );
    assert_expires(
        &reply,
        before,
        after,
        ct_lifetime::TCP_SYN_NS,
        "reply entry after a SYN",
    );
    assert_eq!(reply.backend_id, id);
    assert_eq!(fx.ct_entries().len(), 2, "one entry per direction");
    assert_eq!(fx.counter(Counter::NpNewFlow), 1);

    // The same flow again (a retransmitted SYN) is tracked, not a new flow.
    expect(
        &fx,
        "retransmitted SYN",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    assert_eq!(fx.counter(Counter::NpNewFlow), 1);
    assert_eq!(fx.counter(Counter::NpTracked), 1);
    assert_eq!(fx.ct_entries().len(), 2);
}

// ---------------------------------------------------------------------------------------
// 2. SNAT to a remote backend, and the reply through ingress
// ---------------------------------------------------------------------------------------

#[test]
fn nodeport_snat_to_a_remote_backend_and_back() {
    let Some(fx) = fixture() else { return };
    for (node_ip, cport) in [(NODE_IP, 40000), (NODE_IP2, 40001)] {
        let frontend = sa(node_ip, NP_WEB_REMOTE);
        let syn = Pkt::tcp(client(cport), frontend, SYN);
        let (snat, out) = expect_snat(&fx, &format!("SYN via {node_ip}"), &syn, REMOTE_WEB);
        let out = out.output;

        let original = ct_entry(&fx, client(cport), frontend, IPPROTO_TCP);
        assert_eq!(
            xlate(&original),
            Xlate {
                to_src: snat,
                to_dst: REMOTE_WEB,
                flags: CT_FLAG_SNAT | CT_FLAG_ROUTE,
                direction: CT_DIR_ORIGINAL
            }
        );
        let reply = ct_entry(&fx, REMOTE_WEB, snat, IPPROTO_TCP);
        assert_eq!(
            xlate(&reply),
            Xlate {
                to_src: frontend,
                to_dst: client(cport),
                flags: CT_FLAG_SNAT | CT_FLAG_ROUTE,
                direction: CT_DIR_REPLY
            },
            "the reply answers from the address the client used"
        );
        assert_eq!(
            original.backend_id,
            backend_id(&fx, REMOTE_WEB, IPPROTO_TCP)
        );

        // The translated SYN leaves through egress untouched (no second translation).
        expect(
            &fx,
            "translated SYN on egress",
            Hook::Egress,
            &out,
            TC_ACT_OK,
            &out,
        );

        // The backend's SYN-ACK to the SNAT address comes back in and goes to the
        // client, from the node address: routed by the program too.
        let synack = Pkt::tcp(REMOTE_WEB, snat, SYN | ACK);
        expect(
            &fx,
            "SYN-ACK from the remote backend",
            Hook::Ingress,
            &synack.frame(),
            TC_ACT_REDIRECT,
            &synack
                .clone()
                .from(frontend)
                .to(client(cport))
                .routed()
                .frame(),
        );
        let reply = ct_entry(&fx, REMOTE_WEB, snat, IPPROTO_TCP);
        assert_eq!(
            reply.flags,
            CT_FLAG_SNAT | CT_FLAG_ESTABLISHED | CT_FLAG_ROUTE,
            "a SYN-ACK establishes the reply direction"
        );

        // Data both ways.
        let data = Pkt::tcp(client(cport), frontend, PSH | ACK).payload(b"GET / HTTP/1.1\r\n\r\n");
        expect(
            &fx,
            "client data",
            Hook::Ingress,
            &data.frame(),
            TC_ACT_REDIRECT,
            &data.clone().from(snat).to(REMOTE_WEB).routed().frame(),
        );
        let answer = Pkt::tcp(REMOTE_WEB, snat, PSH | ACK).payload(b"HTTP/1.1 200 OK\r\n\r\nhello");
        expect(
            &fx,
            "backend data",
            Hook::Ingress,
            &answer.frame(),
            TC_ACT_REDIRECT,
            &answer
                .clone()
                .from(frontend)
                .to(client(cport))
                .routed()
                .frame(),
        );
    }
    let ports: Vec<u16> = [(NODE_IP, 40000), (NODE_IP2, 40001)]
        .iter()
        .map(|(ip, p)| snat_source(&fx, client(*p), sa(*ip, NP_WEB_REMOTE), IPPROTO_TCP).port())
        .collect();
    assert_ne!(
        ports[0], ports[1],
        "two flows to one backend never share an SNAT port"
    );
    assert_eq!(fx.counter(Counter::NpNewFlow), 2);
    assert_eq!(fx.ct_entries().len(), 4);

    // A reply towards a client this node has no route to: not routed by the program
    // (no redirect, TTL untouched); it goes up translated and the miss is counted.
    let lost = sa(Ipv4Addr::new(100, 64, 0, 5), 40002);
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let (snat, _) = expect_snat(
        &fx,
        "SYN from an unroutable client",
        &Pkt::tcp(lost, frontend, SYN),
        REMOTE_WEB,
    );
    let inconsistent = fx.counter(Counter::Inconsistent);
    let synack = Pkt::tcp(REMOTE_WEB, snat, SYN | ACK);
    expect(
        &fx,
        "SYN-ACK to an unroutable client",
        Hook::Ingress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(frontend).to(lost).frame(),
    );
    assert_eq!(fx.counter(Counter::Inconsistent), inconsistent + 1);

    // TTL 1: translated, but left to the stack (which answers time exceeded).
    let syn = Pkt::tcp(client(40003), frontend, SYN).ttl(1);
    let run = fx.ingress(&syn.frame());
    let snat = snat_source(&fx, client(40003), frontend, IPPROTO_TCP);
    check(
        &fx,
        "SYN with TTL 1",
        Hook::Ingress,
        &syn.frame(),
        &run,
        TC_ACT_OK,
        &syn.clone().from(snat).to(REMOTE_WEB).frame(),
    );
}

// ---------------------------------------------------------------------------------------
// 3. Reverse NAT on egress for a local backend
// ---------------------------------------------------------------------------------------

#[test]
fn egress_reverse_nat_of_a_local_backend_reply() {
    let Some(fx) = fixture() else { return };
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    open_tcp(&fx, client(40000), frontend);

    let synack = Pkt::tcp(LOCAL_WEB, client(40000), SYN | ACK);
    let before = monotonic_ns();
    expect(
        &fx,
        "SYN-ACK of the local backend",
        Hook::Egress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(frontend).frame(),
    );
    let after = monotonic_ns();
    let reply = ct_entry(&fx, LOCAL_WEB, client(40000), IPPROTO_TCP);
    assert_eq!(reply.flags, CT_FLAG_ESTABLISHED | CT_FLAG_ROUTE);
    assert_expires(
        &reply,
        before,
        after,
        ct_lifetime::TCP_ESTABLISHED_NS,
        "reply entry after a SYN-ACK",
    );

    let ack = Pkt::tcp(client(40000), frontend, ACK);
    expect(
        &fx,
        "client ACK",
        Hook::Ingress,
        &ack.frame(),
        TC_ACT_OK,
        &ack.clone().to(LOCAL_WEB).frame(),
    );
    assert_eq!(
        ct_entry(&fx, client(40000), frontend, IPPROTO_TCP).flags,
        CT_FLAG_ESTABLISHED
    );

    let answer = Pkt::tcp(LOCAL_WEB, client(40000), PSH | ACK).payload(&[0x5a; 1000]);
    expect(
        &fx,
        "backend data",
        Hook::Egress,
        &answer.frame(),
        TC_ACT_OK,
        &answer.clone().from(frontend).frame(),
    );
    assert_eq!(fx.counter(Counter::NpTracked), 3);

    // The reply of the backend to a client it has no tracked flow with is not ours.
    let stray = Pkt::tcp(LOCAL_WEB, client(40999), PSH | ACK).payload(b"x");
    expect(
        &fx,
        "untracked reply",
        Hook::Egress,
        &stray.frame(),
        TC_ACT_OK,
        &stray.frame(),
    );
}

// ---------------------------------------------------------------------------------------
// 4. UDP, with a checksum and without
// ---------------------------------------------------------------------------------------

#[test]
fn udp_dnat_snat_and_checksums() {
    let Some(fx) = fixture() else { return };
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);

    // With a checksum: updated for the new pseudo header and port.
    let query = Pkt::udp(client(40000), frontend, b"\x12\x34\x01\x00\x00\x01 query");
    expect(
        &fx,
        "UDP query",
        Hook::Ingress,
        &query.frame(),
        TC_ACT_OK,
        &query.clone().to(LOCAL_DNS).frame(),
    );
    let answer = Pkt::udp(LOCAL_DNS, client(40000), b"\x12\x34\x81\x80 answer");
    expect(
        &fx,
        "UDP answer",
        Hook::Egress,
        &answer.frame(),
        TC_ACT_OK,
        &answer.clone().from(frontend).frame(),
    );
    let original = ct_entry(&fx, client(40000), frontend, IPPROTO_UDP);
    assert_eq!(xlate(&original).to_dst, LOCAL_DNS);

    // Checksum 0 ("none") stays 0 both ways.
    let query = Pkt::udp(client(40001), frontend, b"no checksum").no_udp_checksum();
    expect(
        &fx,
        "UDP without checksum",
        Hook::Ingress,
        &query.frame(),
        TC_ACT_OK,
        &query.clone().to(LOCAL_DNS).frame(),
    );
    let answer = Pkt::udp(LOCAL_DNS, client(40001), b"none either").no_udp_checksum();
    expect(
        &fx,
        "UDP answer without checksum",
        Hook::Egress,
        &answer.frame(),
        TC_ACT_OK,
        &answer.clone().from(frontend).frame(),
    );

    // A datagram whose translated checksum computes to 0 must carry 0xffff: 0 would
    // mean "no checksum".
    let payload = (0..=u16::MAX)
        .map(|v| v.to_be_bytes())
        .find(|p| {
            let out = Pkt::udp(client(40002), LOCAL_DNS, p).l4_bytes();
            let input = Pkt::udp(client(40002), frontend, p).l4_bytes();
            out[6..8] == [0xff, 0xff] && input[6..8] != [0xff, 0xff]
        })
        .expect("a payload whose translated checksum is 0xffff");
    let query = Pkt::udp(client(40002), frontend, &payload);
    let want = query.clone().to(LOCAL_DNS).frame();
    assert_eq!(&want[ETH_UDP_CSUM..ETH_UDP_CSUM + 2], &[0xff, 0xff]);
    expect(
        &fx,
        "UDP whose new checksum is 0xffff",
        Hook::Ingress,
        &query.frame(),
        TC_ACT_OK,
        &want,
    );

    // SNAT for UDP to a remote backend, and the answer back in.
    let frontend = sa(NODE_IP, NP_DNS_REMOTE);
    let query = Pkt::udp(client(40003), frontend, b"remote query");
    let (snat, _) = expect_snat(&fx, "UDP query via SNAT", &query, REMOTE_DNS);
    let query = Pkt::udp(client(40003), frontend, b"no checksum").no_udp_checksum();
    expect(
        &fx,
        "UDP query via SNAT without checksum",
        Hook::Ingress,
        &query.frame(),
        TC_ACT_REDIRECT,
        &query.clone().from(snat).to(REMOTE_DNS).routed().frame(),
    );
    let answer = Pkt::udp(REMOTE_DNS, snat, b"remote answer");
    expect(
        &fx,
        "UDP answer via SNAT",
        Hook::Ingress,
        &answer.frame(),
        TC_ACT_REDIRECT,
        &answer
            .clone()
            .from(frontend)
            .to(client(40003))
            .routed()
            .frame(),
    );
    let answer = Pkt::udp(REMOTE_DNS, snat, b"no checksum").no_udp_checksum();
    expect(
        &fx,
        "UDP answer via SNAT without checksum",
        Hook::Ingress,
        &answer.frame(),
        TC_ACT_REDIRECT,
        &answer
            .clone()
            .from(frontend)
            .to(client(40003))
            .routed()
            .frame(),
    );
}

/// Offset of the UDP checksum in a frame with a 20-byte IP header.
const ETH_UDP_CSUM: usize = 14 + 20 + 6;

// ---------------------------------------------------------------------------------------
// 5. LoadBalancer IPs, external IPs, loadBalancerSourceRanges
// ---------------------------------------------------------------------------------------

#[test]
fn loadbalancer_and_external_ips_with_source_ranges() {
    let Some(fx) = fixture() else { return };
    let lb = sa(LB_IP, 80);

    // An allowed source (192.0.2.0/24) is translated; the reply answers as the LB IP.
    let syn = Pkt::tcp(client(40000), lb, SYN);
    expect(
        &fx,
        "SYN to the LB IP",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    let synack = Pkt::tcp(LOCAL_WEB, client(40000), SYN | ACK);
    expect(
        &fx,
        "SYN-ACK as the LB IP",
        Hook::Egress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(lb).frame(),
    );

    // Another source is dropped, and leaves no state.
    let denied = Pkt::tcp(sa(OUTSIDER_IP, 40000), lb, SYN);
    let run = fx.ingress(&denied.frame());
    assert_eq!(
        run.verdict, TC_ACT_SHOT,
        "a source outside loadBalancerSourceRanges"
    );
    assert_eq!(fx.counter(Counter::NpSourceDenied), 1);
    assert!(
        fx.ct(&ct_key(sa(OUTSIDER_IP, 40000), lb, IPPROTO_TCP))
            .is_none()
    );

    // Source ranges restrict the LB IP only: the external IP and the NodePort of the
    // same service take that source.
    let ext = sa(EXTERNAL_IP, 80);
    let syn = Pkt::tcp(sa(OUTSIDER_IP, 40001), ext, SYN);
    expect(
        &fx,
        "SYN to the external IP",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    let synack = Pkt::tcp(LOCAL_WEB, sa(OUTSIDER_IP, 40001), SYN | ACK);
    expect(
        &fx,
        "SYN-ACK as the external IP",
        Hook::Egress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(ext).frame(),
    );
    let np = sa(NODE_IP2, NP_LB);
    let syn = Pkt::tcp(sa(OUTSIDER_IP, 40002), np, SYN);
    expect(
        &fx,
        "SYN to the service's NodePort",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );

    // The LB IP and external IP match exactly: another port of those addresses, or the
    // service port on a node address, is not a frontend.
    expect_untouched(
        &fx,
        "LB IP, another port",
        &Pkt::tcp(client(40003), sa(LB_IP, 443), SYN).frame(),
    );
    expect_untouched(
        &fx,
        "external IP, another port",
        &Pkt::tcp(client(40004), sa(EXTERNAL_IP, 8080), SYN).frame(),
    );
    expect_untouched(
        &fx,
        "service port on a node address",
        &Pkt::tcp(client(40005), sa(NODE_IP, 80), SYN).frame(),
    );
    assert_eq!(fx.counter(Counter::NpNewFlow), 3);
}

// ---------------------------------------------------------------------------------------
// 6. Verdicts without usable endpoints, and addresses that are not ours
// ---------------------------------------------------------------------------------------

#[test]
fn frontends_without_usable_endpoints_and_foreign_addresses() {
    let Some(fx) = fixture() else { return };

    // externalTrafficPolicy Local, no endpoint on this node: dropped.
    let syn = Pkt::tcp(client(40000), sa(NODE_IP, NP_LOCAL_POLICY), SYN);
    let run = fx.ingress(&syn.frame());
    assert_eq!(
        run.verdict,
        TC_ACT_SHOT,
        "Local policy without local endpoints: {}",
        verdict_name(run.verdict)
    );
    assert_eq!(fx.counter(Counter::NpDropped), 1);

    // No endpoints at all on a NodePort: passed untouched, the stack answers (RST).
    expect_untouched(
        &fx,
        "NodePort without endpoints",
        &Pkt::tcp(client(40001), sa(NODE_IP, NP_NO_ENDPOINTS), SYN).frame(),
    );
    // ... but a LoadBalancer IP without endpoints is no address of ours: dropped.
    let run = fx.ingress(&Pkt::tcp(client(40002), sa(EMPTY_LB_IP, 80), SYN).frame());
    assert_eq!(
        run.verdict, TC_ACT_SHOT,
        "LoadBalancer IP without endpoints"
    );
    assert_eq!(fx.counter(Counter::NpDropped), 2);

    // A NodePort port on an address that is neither a node address nor a frontend.
    expect_untouched(
        &fx,
        "NodePort on a foreign address",
        &Pkt::tcp(client(40003), sa(STRANGER_IP, NP_WEB_LOCAL), SYN).frame(),
    );
    expect_untouched(
        &fx,
        "UDP NodePort on a foreign address",
        &Pkt::udp(client(40004), sa(STRANGER_IP, NP_DNS_LOCAL), b"q").frame(),
    );
    assert_eq!(fx.counter(Counter::NpNewFlow), 0);
    assert!(fx.ct_entries().is_empty());
}

// ---------------------------------------------------------------------------------------
// 7. Fragments
// ---------------------------------------------------------------------------------------

#[test]
fn fragments_follow_their_first_fragment() {
    let Some(fx) = fixture() else { return };
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let payload: Vec<u8> = (0..1400u32).map(|i| (i * 7 + 3) as u8).collect();
    let cuts = [512, 1024];

    // Client -> NodePort, three fragments: the first carries the UDP header (its
    // checksum covers the whole datagram), the others only data.
    let datagram = Pkt::udp(client(40000), frontend, &payload).id(0x2222);
    let input = datagram.fragments(&cuts);
    let want = datagram.clone().to(LOCAL_DNS).fragments(&cuts);
    let mut outputs = Vec::new();
    for (i, (frag, want)) in input.iter().zip(&want).enumerate() {
        let run = expect(
            &fx,
            &format!("client fragment {i}"),
            Hook::Ingress,
            frag,
            TC_ACT_OK,
            want,
        );
        outputs.push(run.output);
    }
    let whole = reassemble(&outputs);
    let problems = checksum_problems(&whole);
    assert!(
        problems.is_empty(),
        "the reassembled translated datagram: {problems:?}"
    );
    assert_eq!(whole, datagram.clone().to(LOCAL_DNS).no_df().frame());

    // The backend's fragmented answer through egress.
    let answer = Pkt::udp(LOCAL_DNS, client(40000), &payload).id(0x3333);
    let input = answer.fragments(&cuts);
    let want = answer.clone().from(frontend).fragments(&cuts);
    let mut outputs = Vec::new();
    for (i, (frag, want)) in input.iter().zip(&want).enumerate() {
        outputs.push(
            expect(
                &fx,
                &format!("answer fragment {i}"),
                Hook::Egress,
                frag,
                TC_ACT_OK,
                want,
            )
            .output,
        );
    }
    assert!(checksum_problems(&reassemble(&outputs)).is_empty());

    // SNAT: a fragmented datagram to a remote backend.
    let frontend = sa(NODE_IP, NP_DNS_REMOTE);
    let datagram = Pkt::udp(client(40001), frontend, &payload).id(0x4444);
    let input = datagram.fragments(&cuts);
    let first = fx.ingress(&input[0]);
    let snat = snat_source(&fx, client(40001), frontend, IPPROTO_UDP);
    let want = datagram
        .clone()
        .from(snat)
        .to(REMOTE_DNS)
        .routed()
        .fragments(&cuts);
    check(
        &fx,
        "first SNAT fragment",
        Hook::Ingress,
        &input[0],
        &first,
        TC_ACT_REDIRECT,
        &want[0],
    );
    let mut outputs = vec![first.output];
    for (i, frag) in input.iter().enumerate().skip(1) {
        outputs.push(
            expect(
                &fx,
                &format!("SNAT fragment {i}"),
                Hook::Ingress,
                frag,
                TC_ACT_REDIRECT,
                &want[i],
            )
            .output,
        );
    }
    assert!(checksum_problems(&reassemble(&outputs)).is_empty());

    // A later fragment whose first fragment was never seen: untouched, counted.
    let unknown_before = fx.counter(Counter::NpFragUnknown);
    let orphan = Pkt::udp(client(40002), sa(NODE_IP, NP_DNS_LOCAL), &payload)
        .id(0x7777)
        .fragments(&cuts);
    let run = fx.ingress(&orphan[1]);
    assert_eq!(run.verdict, TC_ACT_OK);
    if let Some(d) = diff(&orphan[1], &run.output) {
        panic!("orphan fragment must pass untouched: {d}");
    }
    assert_eq!(
        fx.counter(Counter::NpFragUnknown),
        unknown_before + 1,
        "nodeport_fragment_unknown"
    );
}

// ---------------------------------------------------------------------------------------
// 8. IP options
// ---------------------------------------------------------------------------------------

#[test]
fn ip_options_do_not_confuse_the_translation() {
    let Some(fx) = fixture() else { return };
    // Router alert (IHL 6).
    let router_alert = [0x94, 0x04, 0x00, 0x00];
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let syn = Pkt::tcp(client(40000), frontend, SYN).options(&router_alert);
    expect(
        &fx,
        "SYN with options (DNAT)",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    let synack = Pkt::tcp(LOCAL_WEB, client(40000), SYN | ACK).options(&router_alert);
    expect(
        &fx,
        "SYN-ACK with options",
        Hook::Egress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(frontend).frame(),
    );

    // A timestamp option padded to 12 bytes (IHL 8), with SNAT.
    let timestamp = [0x44, 0x0c, 0x05, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let syn = Pkt::tcp(client(40001), frontend, SYN).options(&timestamp);
    let (snat, _) = expect_snat(&fx, "SYN with options (SNAT)", &syn, REMOTE_WEB);
    let synack = Pkt::tcp(REMOTE_WEB, snat, SYN | ACK).options(&timestamp);
    expect(
        &fx,
        "SYN-ACK with options (SNAT)",
        Hook::Ingress,
        &synack.frame(),
        TC_ACT_REDIRECT,
        &synack
            .clone()
            .from(frontend)
            .to(client(40001))
            .routed()
            .frame(),
    );

    // UDP with the longest options (IHL 15).
    let nops = [[0x01u8; 39].as_slice(), &[0x00]].concat();
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let query = Pkt::udp(client(40002), frontend, b"with options").options(&nops);
    expect(
        &fx,
        "UDP with 40 bytes of options",
        Hook::Ingress,
        &query.frame(),
        TC_ACT_OK,
        &query.clone().to(LOCAL_DNS).frame(),
    );
}

// ---------------------------------------------------------------------------------------
// 9. ICMP errors about tracked flows
// ---------------------------------------------------------------------------------------

/// What an ICMP error quotes of `ip`: its IP header and the first 8 bytes after it.
fn quote(ip: &[u8]) -> Vec<u8> {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    ip[..ihl + 8].to_vec()
}

#[test]
fn icmp_errors_about_tracked_flows_are_translated_back() {
    let Some(fx) = fixture() else { return };
    let mtu_1400 = [0, 0, 0x05, 0x78];

    // A router between this node and the remote backend: fragmentation needed for the
    // SNATed SYN. The client must see it about the packet it sent (as this node
    // forwarded it: TTL one less). From a router's address, the stack forwards it.
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let syn = Pkt::tcp(client(40000), frontend, SYN);
    let sent = open_tcp(&fx, client(40000), frontend);
    let snat = snat_source(&fx, client(40000), frontend, IPPROTO_TCP);
    let error = Pkt::icmp(
        ROUTER_IP,
        NODE_IP,
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        mtu_1400,
        &quote(ip_of(&sent)),
    );
    let want = Pkt::icmp(
        ROUTER_IP,
        CLIENT_IP,
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        mtu_1400,
        &quote(&syn.routed().ip_bytes()),
    );
    expect(
        &fx,
        "frag needed from a router (SNAT flow)",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );
    assert_eq!(fx.counter(Counter::NpIcmpTranslated), 1);
    assert_ne!(snat.port(), NP_WEB_REMOTE);

    // The remote backend itself: port unreachable for a SNATed UDP datagram. The
    // error then comes from the frontend the client addressed (the backend's address
    // means nothing to the client and need not be routable from it), so the program
    // routes it (redirect, TTL one less).
    let frontend = sa(NODE_IP, NP_DNS_REMOTE);
    let query = Pkt::udp(client(40001), frontend, b"anyone?");
    let sent = fx.ingress(&query.frame()).output;
    let error = Pkt::icmp(
        REMOTE_POD,
        NODE_IP,
        ICMP_DEST_UNREACH,
        ICMP_PORT_UNREACH,
        [0; 4],
        &quote(ip_of(&sent)),
    );
    // The quoted UDP checksum is left as quoted: nothing checks it (Linux's udp_err
    // does not), and an ICMP error may quote too little of a TCP header to fix it.
    let mut quoted = quote(&query.clone().routed().ip_bytes());
    let sent_quote = quote(ip_of(&sent));
    let n = quoted.len();
    quoted[n - 2..].copy_from_slice(&sent_quote[n - 2..]);
    let want = Pkt::icmp(
        NODE_IP,
        CLIENT_IP,
        ICMP_DEST_UNREACH,
        ICMP_PORT_UNREACH,
        [0; 4],
        &quoted,
    )
    .routed();
    expect(
        &fx,
        "port unreachable from the remote backend",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_REDIRECT,
        &want.frame(),
    );

    // The other way: the client's port unreachable about the backend's (SNATed) answer
    // goes to the backend, from the SNAT address its datagram went to.
    let snat = snat_source(&fx, client(40001), frontend, IPPROTO_UDP);
    let answer = Pkt::udp(REMOTE_DNS, snat, b"too late");
    let delivered = fx.ingress(&answer.frame()).output;
    let error = Pkt::icmp(
        CLIENT_IP,
        NODE_IP,
        ICMP_DEST_UNREACH,
        ICMP_PORT_UNREACH,
        [0; 4],
        &quote(ip_of(&delivered)),
    );
    let mut quoted = quote(&answer.clone().routed().ip_bytes());
    let delivered_quote = quote(ip_of(&delivered));
    let n = quoted.len();
    quoted[n - 2..].copy_from_slice(&delivered_quote[n - 2..]);
    let want = Pkt::icmp(
        NODE_IP,
        REMOTE_POD,
        ICMP_DEST_UNREACH,
        ICMP_PORT_UNREACH,
        [0; 4],
        &quoted,
    )
    .routed();
    expect(
        &fx,
        "port unreachable from the client about a SNATed answer",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_REDIRECT,
        &want.frame(),
    );

    // A local backend's port unreachable leaves through egress: same translation.
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let query = Pkt::udp(client(40002), frontend, b"anyone here?");
    let delivered = fx.ingress(&query.frame()).output;
    let error = Pkt::icmp(
        LOCAL_POD,
        CLIENT_IP,
        ICMP_DEST_UNREACH,
        ICMP_PORT_UNREACH,
        [0; 4],
        &quote(ip_of(&delivered)),
    );
    let mut quoted = quote(&query.ip_bytes());
    let delivered_quote = quote(ip_of(&delivered));
    let n = quoted.len();
    quoted[n - 2..].copy_from_slice(&delivered_quote[n - 2..]);
    let want = Pkt::icmp(
        NODE_IP,
        CLIENT_IP,
        ICMP_DEST_UNREACH,
        ICMP_PORT_UNREACH,
        [0; 4],
        &quoted,
    );
    expect(
        &fx,
        "port unreachable from the local backend",
        Hook::Egress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );

    // A router on the way back to the client, about a local backend's reply (egress
    // saw the reply translated; the error comes in through ingress).
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    open_tcp(&fx, client(40003), frontend);
    let synack = Pkt::tcp(LOCAL_WEB, client(40003), SYN | ACK);
    let sent = fx.egress(&synack.frame()).output;
    let error = Pkt::icmp(
        ROUTER_IP,
        NODE_IP,
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        mtu_1400,
        &quote(ip_of(&sent)),
    );
    let want = Pkt::icmp(
        ROUTER_IP,
        LOCAL_POD,
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        mtu_1400,
        &quote(&synack.ip_bytes()),
    );
    expect(
        &fx,
        "frag needed about a local backend's reply",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );
    assert_eq!(fx.counter(Counter::NpIcmpTranslated), 5);

    // An error about a flow nobody tracks, and ICMP that is no error, pass untouched.
    let foreign = Pkt::tcp(sa(NODE_IP, 22), client(50000), ACK);
    expect_untouched(
        &fx,
        "error about an untracked flow",
        &Pkt::icmp(
            ROUTER_IP,
            NODE_IP,
            ICMP_DEST_UNREACH,
            ICMP_FRAG_NEEDED,
            mtu_1400,
            &quote(&foreign.ip_bytes()),
        )
        .frame(),
    );
    expect_untouched(
        &fx,
        "echo request",
        &Pkt::icmp(
            CLIENT_IP,
            NODE_IP,
            ICMP_ECHO_REQUEST,
            0,
            [0, 1, 0, 1],
            b"ping",
        )
        .frame(),
    );
    assert_eq!(fx.counter(Counter::NpIcmpTranslated), 5);
}

// ---------------------------------------------------------------------------------------
// 10. TCP FIN and RST, expiry
// ---------------------------------------------------------------------------------------

#[test]
fn tcp_fin_and_rst_close_tracked_flows_and_expired_entries_are_not_used() {
    let Some(mut fx) = fixture() else { return };

    // An established flow to a local backend.
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let c = client(40000);
    open_tcp(&fx, c, frontend);
    let synack = Pkt::tcp(LOCAL_WEB, c, SYN | ACK);
    expect(
        &fx,
        "SYN-ACK",
        Hook::Egress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(frontend).frame(),
    );
    let ack = Pkt::tcp(c, frontend, ACK);
    expect(
        &fx,
        "ACK",
        Hook::Ingress,
        &ack.frame(),
        TC_ACT_OK,
        &ack.clone().to(LOCAL_WEB).frame(),
    );
    assert_eq!(
        ct_entry(&fx, c, frontend, IPPROTO_TCP).flags,
        CT_FLAG_ESTABLISHED
    );

    // The client's FIN is translated and closes the flow, both directions.
    let fin = Pkt::tcp(c, frontend, FIN | ACK);
    let before = monotonic_ns();
    expect(
        &fx,
        "client FIN",
        Hook::Ingress,
        &fin.frame(),
        TC_ACT_OK,
        &fin.clone().to(LOCAL_WEB).frame(),
    );
    let after = monotonic_ns();
    for (what, src, dst) in [("original", c, frontend), ("reply", LOCAL_WEB, c)] {
        let entry = ct_entry(&fx, src, dst, IPPROTO_TCP);
        assert!(
            entry.flags & CT_FLAG_CLOSING != 0,
            "{what} entry after a FIN: flags {:#x}",
            entry.flags
        );
        assert_expires(
            &entry,
            before,
            after,
            ct_lifetime::TCP_CLOSING_NS,
            &format!("{what} entry after a FIN"),
        );
    }
    // The backend's FIN and the last ACK are still translated.
    let fin_back = Pkt::tcp(LOCAL_WEB, c, FIN | ACK);
    expect(
        &fx,
        "backend FIN",
        Hook::Egress,
        &fin_back.frame(),
        TC_ACT_OK,
        &fin_back.clone().from(frontend).frame(),
    );
    expect(
        &fx,
        "last ACK",
        Hook::Ingress,
        &ack.frame(),
        TC_ACT_OK,
        &ack.clone().to(LOCAL_WEB).frame(),
    );
    let entry = ct_entry(&fx, c, frontend, IPPROTO_TCP);
    assert_eq!(entry.flags, CT_FLAG_ESTABLISHED | CT_FLAG_CLOSING);
    assert!(
        entry.expires_ns <= monotonic_ns() + ct_lifetime::TCP_CLOSING_NS,
        "the last ACK must not reopen the flow"
    );

    // A SNATed flow reset by the client: both entries close, so the SNAT port is free
    // again within seconds, not hours.
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let c = client(40001);
    let (snat, _) = expect_snat(&fx, "SYN (SNAT)", &Pkt::tcp(c, frontend, SYN), REMOTE_WEB);
    let synack = Pkt::tcp(REMOTE_WEB, snat, SYN | ACK);
    expect(
        &fx,
        "SYN-ACK (SNAT)",
        Hook::Ingress,
        &synack.frame(),
        TC_ACT_REDIRECT,
        &synack.clone().from(frontend).to(c).routed().frame(),
    );
    let rst = Pkt::tcp(c, frontend, RST);
    let before = monotonic_ns();
    expect(
        &fx,
        "client RST",
        Hook::Ingress,
        &rst.frame(),
        TC_ACT_REDIRECT,
        &rst.clone().from(snat).to(REMOTE_WEB).routed().frame(),
    );
    let after = monotonic_ns();
    for (what, src, dst) in [("original", c, frontend), ("reply", REMOTE_WEB, snat)] {
        let entry = ct_entry(&fx, src, dst, IPPROTO_TCP);
        assert!(
            entry.flags & CT_FLAG_CLOSING != 0,
            "{what} entry after a RST: flags {:#x}",
            entry.flags
        );
        assert_expires(
            &entry,
            before,
            after,
            ct_lifetime::TCP_CLOSING_NS,
            &format!("{what} entry after a RST"),
        );
    }
    // The backend's RST (answering a late segment) is translated too.
    let rst_back = Pkt::tcp(REMOTE_WEB, snat, RST);
    expect(
        &fx,
        "backend RST",
        Hook::Ingress,
        &rst_back.frame(),
        TC_ACT_REDIRECT,
        &rst_back.clone().from(frontend).to(c).routed().frame(),
    );

    // Expired entries are not used. A raw pair that would send client:40002 to a
    // backend that no longer exists, expired: the next packet is a new flow to the
    // real backend, and the entries are replaced.
    let now = monotonic_ns();
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let c = client(40002);
    let gone = sa(Ipv4Addr::new(10, 244, 9, 9), 9999);
    let stale = |to_src: SocketAddrV4, to_dst: SocketAddrV4, direction: u8| Ct4Value {
        to_saddr: ip_to_map(*to_src.ip()),
        to_daddr: ip_to_map(*to_dst.ip()),
        to_sport: port_to_map(to_src.port()),
        to_dport: port_to_map(to_dst.port()),
        flags: CT_FLAG_ESTABLISHED,
        direction,
        pad: [0; 2],
        expires_ns: now - 1,
        backend_id: 999,
        pad2: 0,
    };
    fx.put_ct(
        ct_key(c, frontend, IPPROTO_TCP),
        stale(c, gone, CT_DIR_ORIGINAL),
    );
    fx.put_ct(
        ct_key(gone, c, IPPROTO_TCP),
        stale(frontend, c, CT_DIR_REPLY),
    );
    let tracked = fx.counter(Counter::NpTracked);
    let data = Pkt::tcp(c, frontend, PSH | ACK).payload(b"late");
    expect(
        &fx,
        "packet of an expired flow",
        Hook::Ingress,
        &data.frame(),
        TC_ACT_OK,
        &data.clone().to(LOCAL_WEB).frame(),
    );
    let renewed = ct_entry(&fx, c, frontend, IPPROTO_TCP);
    assert_eq!(
        xlate(&renewed).to_dst,
        LOCAL_WEB,
        "the expired entry was replaced"
    );
    assert!(renewed.expires_ns > now);
    // The stale reply entry does not translate either.
    let late = Pkt::tcp(gone, c, PSH | ACK).payload(b"late answer");
    expect(
        &fx,
        "reply matching only an expired entry",
        Hook::Egress,
        &late.frame(),
        TC_ACT_OK,
        &late.frame(),
    );
    assert_eq!(
        fx.counter(Counter::NpTracked),
        tracked,
        "expired entries count as untracked"
    );
}

// ---------------------------------------------------------------------------------------
// 11. Traffic that is not ours
// ---------------------------------------------------------------------------------------

#[test]
fn a_syn_on_a_closing_flow_starts_afresh_and_one_way_streams_keep_both_entries() {
    let Some(mut fx) = fixture() else { return };

    // A flow reset by the client, then the same tuple again: a new flow, not the
    // closing one's last seconds.
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let c = client(41000);
    open_tcp(&fx, c, frontend);
    let rst = Pkt::tcp(c, frontend, RST);
    expect(
        &fx,
        "client RST",
        Hook::Ingress,
        &rst.frame(),
        TC_ACT_OK,
        &rst.clone().to(LOCAL_WEB).frame(),
    );
    assert!(ct_entry(&fx, c, frontend, IPPROTO_TCP).flags & CT_FLAG_CLOSING != 0);
    let flows_before = fx.counter(Counter::NpNewFlow);
    let before = monotonic_ns();
    let syn = Pkt::tcp(c, frontend, SYN);
    expect(
        &fx,
        "SYN reusing the tuple",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    let after = monotonic_ns();
    assert_eq!(
        fx.counter(Counter::NpNewFlow),
        flows_before + 1,
        "the SYN starts a new flow"
    );
    let entry = ct_entry(&fx, c, frontend, IPPROTO_TCP);
    assert_eq!(
        entry.flags & CT_FLAG_CLOSING,
        0,
        "the new flow is not closing"
    );
    assert_expires(
        &entry,
        before,
        after,
        ct_lifetime::TCP_SYN_NS,
        "the new flow's entry",
    );

    // A one-way UDP stream from the backend: the client's entry lives as long as the
    // stream does, so the client's next datagram still reaches the same backend.
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let c = client(41001);
    let query = Pkt::udp(c, frontend, b"subscribe");
    expect(
        &fx,
        "UDP subscribe",
        Hook::Ingress,
        &query.frame(),
        TC_ACT_OK,
        &query.clone().to(LOCAL_DNS).frame(),
    );
    // Age both entries to a second from now, as if the client had been quiet.
    let soon = monotonic_ns() + 1_000_000_000;
    for (src, dst) in [(c, frontend), (LOCAL_DNS, c)] {
        let mut entry = ct_entry(&fx, src, dst, IPPROTO_UDP);
        entry.expires_ns = soon;
        fx.put_ct(ct_key(src, dst, IPPROTO_UDP), entry);
    }
    let before = monotonic_ns();
    let update = Pkt::udp(LOCAL_DNS, c, b"update");
    expect(
        &fx,
        "backend update",
        Hook::Egress,
        &update.frame(),
        TC_ACT_OK,
        &update.clone().from(frontend).frame(),
    );
    let after = monotonic_ns();
    let client_entry = ct_entry(&fx, c, frontend, IPPROTO_UDP);
    assert_expires(
        &client_entry,
        before,
        after,
        ct_lifetime::UDP_NS,
        "the quiet direction's entry",
    );
}

#[test]
fn unknown_traffic_passes_untouched() {
    let Some(fx) = fixture() else { return };
    let inconsistent = fx.counter(Counter::Inconsistent);
    expect_untouched(&fx, "ARP", &arp_request(CLIENT_IP, NODE_IP));
    expect_untouched(&fx, "IPv6 SYN to a NodePort", &ipv6_tcp_syn(NP_WEB_LOCAL));
    expect_untouched(
        &fx,
        "ICMP echo to a node address",
        &Pkt::icmp(
            CLIENT_IP,
            NODE_IP,
            ICMP_ECHO_REQUEST,
            0,
            [0x12, 0x34, 0, 1],
            b"ping",
        )
        .frame(),
    );
    expect_untouched(
        &fx,
        "TCP to a node address, not a NodePort",
        &Pkt::tcp(client(40000), sa(NODE_IP, 22), SYN).frame(),
    );
    expect_untouched(
        &fx,
        "UDP to a node address, not a NodePort",
        &Pkt::udp(client(40000), sa(NODE_IP, 53), b"q").frame(),
    );
    expect_untouched(
        &fx,
        "UDP to a TCP NodePort's number",
        &Pkt::udp(client(40000), sa(NODE_IP, NP_WEB_LOCAL), b"q").frame(),
    );
    expect_untouched(
        &fx,
        "TCP to a pod",
        &Pkt::tcp(client(40000), LOCAL_WEB, SYN).frame(),
    );
    let mut gre = Pkt::udp(client(40000), sa(NODE_IP, NP_DNS_LOCAL), b"....").frame();
    gre[14 + 9] = 47; // another IP protocol (the checksum no longer matters)
    expect_untouched(&fx, "GRE to a node address", &gre);
    assert_eq!(
        fx.counter(Counter::Inconsistent),
        inconsistent,
        "well-formed foreign traffic is no internal error"
    );

    // Too short to parse. (BPF_PROG_TEST_RUN itself refuses an IPv4 frame shorter
    // than Ethernet + 20 bytes, so the shortest IPv4 case here has a whole header.)
    expect_untouched(&fx, "Ethernet header alone", &ether(packet::ETH_P_ARP, &[]));
    let syn = Pkt::tcp(client(40000), sa(NODE_IP, NP_WEB_LOCAL), SYN).frame();
    expect_untouched(&fx, "IP header without TCP header", &syn[..14 + 20]);
    expect_untouched(&fx, "IP header and half the TCP ports", &syn[..14 + 20 + 3]);
    expect_untouched(&fx, "TCP header cut before the flags", &syn[..14 + 20 + 12]);
    let mut long_ihl = syn.clone();
    long_ihl[14] = 0x4f; // a 60-byte header in a 54-byte packet
    expect_untouched(&fx, "IHL beyond the packet", &long_ihl);
    let mut bad_ihl = syn.clone();
    bad_ihl[14] = 0x44;
    expect_untouched(&fx, "IHL 4", &bad_ihl);
    assert_eq!(fx.counter(Counter::NpNewFlow), 0);
}

// ---------------------------------------------------------------------------------------
// The fixture machinery itself
// ---------------------------------------------------------------------------------------

#[test]
fn the_maps_hold_what_the_agent_programs() {
    let Some(fx) = fixture() else { return };
    // Pins in the test's own directory, one per map.
    for name in lb_common::map_names::ALL {
        assert!(
            fx.pin_dir().join(name).exists(),
            "{name} not pinned in {}",
            fx.pin_dir().display()
        );
    }
    assert_eq!(fx.maps.node_addresses(), vec![NODE_IP, NODE_IP2]);
    // The external NodePort entry of web-remote: SNAT and NODEPORT, one backend.
    let svcs = fx.maps.dump_services().unwrap();
    let key = lb_common::Svc4Key::new(0, port_to_map(NP_WEB_REMOTE), IPPROTO_TCP, 0)
        .with_scope(lb_common::scope::EXTERNAL);
    let (_, value) = svcs
        .iter()
        .find(|(k, _)| *k == key)
        .expect("external NodePort entry");
    assert_eq!(
        value.flags,
        lb_common::SVC_FLAG_SNAT | lb_common::SVC_FLAG_NODEPORT
    );
    assert_eq!(value.count, 1);
    assert!(fx.plan.frontends.iter().any(|f| f.port == NP_WEB_REMOTE));
}

/// The builder's own checksums, on packets whose checksums are known.
#[test]
fn packet_builder_checksums_match_known_values() {
    // A TCP SYN 192.0.2.100:40000 -> 192.0.2.11:30080 verified by hand against the
    // one's complement definition: the sum over pseudo header and segment is 0xffff.
    let syn = Pkt::tcp(client(40000), sa(NODE_IP, NP_WEB_LOCAL), SYN).ip_bytes();
    let l4 = &syn[20..];
    let sum = packet::fold(packet::ones_sum(
        l4,
        packet::pseudo_header_sum(CLIENT_IP, NODE_IP, IPPROTO_TCP, l4.len()),
    ));
    assert_eq!(sum, 0xffff);
    assert_eq!(packet::fold(packet::ones_sum(&syn[..20], 0)), 0xffff);
    // Fragments reassemble to the unfragmented datagram.
    let dgram = Pkt::udp(client(1), sa(NODE_IP, 2), &[7u8; 100]).id(9);
    assert_eq!(
        reassemble(&dgram.fragments(&[16, 48])),
        dgram.clone().no_df().frame()
    );
    // A damaged checksum is reported.
    let mut bad = Pkt::udp(client(1), sa(NODE_IP, 2), b"x").frame();
    bad[ETH_UDP_CSUM] ^= 0x01;
    assert_eq!(checksum_problems(&bad).len(), 1);
}
