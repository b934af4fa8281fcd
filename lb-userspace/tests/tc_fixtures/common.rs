//! What every fixture shares: the cluster it runs against (node addresses, services,
//! endpoints, as Kubernetes objects), the fixture built from it, and the checks that
//! judge a program's output (verdict, packet field by field, checksums, conntrack).
//!
//! Everything here is written in IPv4 test addresses; a fixture of [`Family::V6`] has
//! the cluster's objects rewritten to the twins ([`in_family`]) and reads conntrack
//! entries back as test addresses.
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use lb_common::{SNAT_PORT_MAX, SNAT_PORT_MIN};
use serde_json::{Value, json};
use socklb_core::maps::{
    ServiceMaps, V4, V6, ip_from_map, maglev::MaglevConfig, port_from_map, v6::ip6_from_map,
};

pub use crate::harness::{CtEntry, CtKey};
use crate::{
    family::{Family, test_addr},
    harness::{
        Fixture, Hook, Network, Run, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    packet::{
        ACK, FIN, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, ICMP_PROT_UNREACH, ICMP6_DEST_UNREACH,
        ICMP6_PARAMPROB, ICMP6_PORT_UNREACH, ICMP6_UNK_NEXTHDR, L4, Pkt, RST, SYN, addrs_of,
        chain6, checksum_problems, decode, diff, ip_of, render,
    },
};

// ---------------------------------------------------------------------------------------
// The cluster every fixture runs against.
// ---------------------------------------------------------------------------------------

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
/// A second address of the node: NodePorts answer there too.
pub const NODE_IP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// A source outside the LoadBalancer's loadBalancerSourceRanges (192.0.2.0/24).
pub const OUTSIDER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// node-b, where the remote pods (10.244.2.0/24) live.
const REMOTE_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
pub const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 12);
pub const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const EMPTY_LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// The external IP of a UDP service without endpoints.
pub const EMPTY_EXT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 21);
/// Neither a node address nor a frontend.
pub const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);

/// NodePorts: TCP to a local / a remote backend, UDP to a local / a remote backend,
/// the LoadBalancer service's, a Local policy without local endpoints, no endpoints.
pub const NP_WEB_LOCAL: u16 = 30080;
pub const NP_WEB_REMOTE: u16 = 30090;
pub const NP_DNS_LOCAL: u16 = 30053;
pub const NP_DNS_REMOTE: u16 = 30054;
pub const NP_LB: u16 = 30081;
pub const NP_LOCAL_POLICY: u16 = 30082;
pub const NP_NO_ENDPOINTS: u16 = 30083;

pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

pub fn client(port: u16) -> SocketAddrV4 {
    sa(CLIENT_IP, port)
}

pub const LOCAL_WEB: SocketAddrV4 = SocketAddrV4::new(LOCAL_POD, 8080);
pub const REMOTE_WEB: SocketAddrV4 = SocketAddrV4::new(REMOTE_POD, 8080);
pub const LOCAL_DNS: SocketAddrV4 = SocketAddrV4::new(LOCAL_POD, 5353);
pub const REMOTE_DNS: SocketAddrV4 = SocketAddrV4::new(REMOTE_POD, 5353);

/// A Service of namespace demo with one port "p" (`port` -> targetPort `target`);
/// `overrides.spec` and `overrides.status` are merged over the defaults (their
/// top-level keys replace).
pub fn service(
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
pub fn slice(service: &str, proto: &str, port: u16, endpoints: &[(Ipv4Addr, &str)]) -> Value {
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
        // No endpoints: a UDP external IP, and an external IP that is a node address.
        service(
            "empty-dns",
            "10.96.0.42",
            "UDP",
            53,
            5353,
            None,
            json!({"spec": {"externalIPs": [EMPTY_EXT_IP.to_string()]}}),
        ),
        service(
            "on-node",
            "10.96.0.43",
            "TCP",
            8080,
            8080,
            None,
            json!({"spec": {"externalIPs": [NODE_IP2.to_string()]}}),
        ),
    ]
}

/// The fixture cluster on node-a with addresses NODE_IP and NODE_IP2, SNAT to NODE_IP,
/// in family `f`. None when skipped.
pub fn fixture(f: Family) -> Option<Fixture> {
    fixture_with(f, Vec::new(), MaglevConfig::default())
}

/// [`fixture`] with `more` objects, as an agent with the balancing flags `maglev`.
pub fn fixture_with(f: Family, more: Vec<Value>, maglev: MaglevConfig) -> Option<Fixture> {
    let net = Network {
        node_addresses: &[(NODE_IP, 24), (NODE_IP2, 24)],
        snat_addr: NODE_IP,
        routes: &[("10.244.2.0/24", REMOTE_NODE_IP)],
    };
    Fixture::with_balancing(f, &cluster_with(f, more), &net, maglev)
}

/// The fixture cluster's objects with `more` (for [`Fixture::reprogram`]), in family
/// `f`.
pub fn cluster_with(f: Family, more: Vec<Value>) -> Vec<Value> {
    let mut objects = cluster();
    objects.extend(more);
    objects.iter().map(|o| in_family(f, o)).collect()
}

/// A Kubernetes object written with IPv4 test addresses, in family `f`: every string
/// that is a test address or CIDR becomes its twin, "IPv4" (address type, IP
/// families) the family's name.
pub fn in_family(f: Family, object: &Value) -> Value {
    match object {
        Value::String(s) => {
            if let Ok(ip) = s.parse::<Ipv4Addr>() {
                Value::String(f.ip(ip).to_string())
            } else if s.contains('/')
                && s.split('/')
                    .next()
                    .is_some_and(|a| a.parse::<Ipv4Addr>().is_ok())
            {
                Value::String(f.cidr(s))
            } else if s == "IPv4" {
                Value::String(f.name().into())
            } else {
                object.clone()
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| in_family(f, i)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), in_family(f, v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------

/// Offset of the UDP checksum in a frame of `f` with a header of the least length.
pub fn udp_csum_off(f: Family) -> usize {
    match f {
        Family::V4 => 14 + 20 + 6,
        Family::V6 => 14 + 40 + 6,
    }
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        TC_ACT_OK => "TC_ACT_OK",
        TC_ACT_SHOT => "TC_ACT_SHOT",
        TC_ACT_REDIRECT => "TC_ACT_REDIRECT",
        TC_ACT_UNSPEC => "TC_ACT_UNSPEC (next program)",
        _ => "other",
    }
}

/// Runs `input` through `hook` and checks the verdict, the output field by field
/// against `expected`, and every checksum of the output from scratch.
#[track_caller]
pub fn expect(
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
pub fn check(
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
pub fn expect_untouched(fx: &Fixture, what: &str, input: &[u8]) {
    expect_untouched_with(fx, what, input, TC_ACT_OK);
}

/// A frame of another family (or no IP at all) is handed to the next program on the
/// device untouched.
#[track_caller]
pub fn expect_foreign(fx: &Fixture, what: &str, input: &[u8]) {
    expect_untouched_with(fx, what, input, TC_ACT_UNSPEC);
}

#[track_caller]
fn expect_untouched_with(fx: &Fixture, what: &str, input: &[u8], verdict: u32) {
    let before = fx.ct_entries().len();
    for hook in [Hook::Ingress, Hook::Egress] {
        let run = fx.run(hook, input);
        assert_eq!(
            run.verdict,
            verdict,
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

pub fn ct_key(src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> CtKey {
    CtKey { src, dst, proto }
}

/// A conntrack value in readable terms (expiry and backend id checked apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Xlate {
    pub to_src: SocketAddrV4,
    pub to_dst: SocketAddrV4,
    pub flags: u8,
    pub direction: u8,
}

pub fn xlate(v: &CtEntry) -> Xlate {
    Xlate {
        to_src: v.to_src,
        to_dst: v.to_dst,
        flags: v.flags,
        direction: v.direction,
    }
}

#[track_caller]
pub fn ct_entry(fx: &Fixture, src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> CtEntry {
    fx.ct(&ct_key(src, dst, proto)).unwrap_or_else(|| {
        let all: Vec<String> = fx
            .ct_entries()
            .iter()
            .map(|(k, v)| format!("{} -> {} = {:?}", k.src, k.dst, xlate(v)))
            .collect();
        panic!("no conntrack entry for {src} -> {dst} (proto {proto}); entries: {all:#?}")
    })
}

/// `v` expires `lifetime` after a moment in [before, after].
#[track_caller]
pub fn assert_expires(v: &CtEntry, before: u64, after: u64, lifetime: u64, what: &str) {
    assert!(
        (before + lifetime..=after + lifetime).contains(&v.expires_ns),
        "{what}: expires at {} ns, expected {} s after a moment in [{before}, {after}] (that is {:.3} s from {after})",
        v.expires_ns,
        lifetime / 1_000_000_000,
        (v.expires_ns as f64 - after as f64) / 1e9,
    );
}

/// The id the agent gave backend `addr` (proto), from the backend map.
pub fn backend_id(fx: &Fixture, addr: SocketAddrV4, proto: u8) -> u32 {
    // (id, address as its test address, port, protocol) of every backend.
    let backends: Vec<(u32, Option<Ipv4Addr>, u16, u8)> = match fx.family {
        Family::V4 => ServiceMaps::<V4>::dump_backends(&fx.maps)
            .unwrap()
            .into_iter()
            .map(|(id, b)| (id, Some(ip_from_map(b.address)), b.port, b.proto))
            .collect(),
        Family::V6 => ServiceMaps::<V6>::dump_backends(&fx.maps)
            .unwrap()
            .into_iter()
            .map(|(id, b)| {
                let ip = test_addr(ip6_from_map(&b.address).into());
                (id, ip, b.port, b.proto)
            })
            .collect(),
    };
    backends
        .into_iter()
        .find(|(_, ip, port, p)| {
            *ip == Some(*addr.ip()) && port_from_map(*port) == addr.port() && *p == proto
        })
        .map(|(id, ..)| id)
        .unwrap_or_else(|| panic!("backend {addr} not in the backend map"))
}

/// Sends the first packet of a TCP flow (SYN) from `from` to `frontend` and returns
/// the translated SYN.
pub fn open_tcp(fx: &Fixture, from: SocketAddrV4, frontend: SocketAddrV4) -> Vec<u8> {
    let run = fx.ingress(&Pkt::tcp(fx.family, from, frontend, SYN).frame());
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
pub fn expect_snat(
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
pub fn snat_source(
    fx: &Fixture,
    from: SocketAddrV4,
    frontend: SocketAddrV4,
    proto: u8,
) -> SocketAddrV4 {
    xlate(&ct_entry(fx, from, frontend, proto)).to_src
}

// ---------------------------------------------------------------------------------------
// Answers to rejected traffic, as the expected packets of the checks above.
// ---------------------------------------------------------------------------------------

/// The RST answering the TCP segment `input` the way a closed port answers (RFC 9293
/// 3.10.7.1): to an ACK, sequence number = its acknowledgment number; otherwise RST|ACK
/// with sequence 0 acknowledging all the segment occupies. From the address it was
/// sent to, no options or extension headers, no payload, TTL (hop limit) 64, DF,
/// identification 0.
pub fn rst_for(input: &Pkt) -> Pkt {
    let L4::Tcp {
        sport,
        dport,
        seq,
        ack,
        flags,
        payload,
        ..
    } = &input.l4
    else {
        panic!("rst_for: not TCP: {input:?}");
    };
    let (seq, ack, flags) = if flags & ACK != 0 {
        (*ack, 0, RST)
    } else {
        let occupied =
            payload.len() as u32 + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0);
        (0, seq.wrapping_add(occupied), RST | ACK)
    };
    Pkt {
        family: input.family,
        src: input.dst,
        dst: input.src,
        id: 0,
        ttl: 64,
        tos: input.tos & !0x03,
        df: true,
        options: Vec::new(),
        ext: Vec::new(),
        l4: L4::Tcp {
            sport: *dport,
            dport: *sport,
            seq,
            ack,
            flags,
            window: 0,
            payload: Vec::new(),
        },
    }
}

/// What an unreachable answer says is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// No UDP service on the port: ICMP port unreachable (ICMPv6: destination
    /// unreachable / port unreachable, type 1 code 4).
    Port,
    /// No such protocol: ICMP protocol unreachable (ICMPv6: parameter problem /
    /// unrecognized next header, type 4 code 1, pointing at the Next Header field).
    Protocol,
}

/// The most an ICMPv6 answer quotes (reject6.rs: what fits its stack buffer).
pub const QUOTE6_MAX: usize = 256;

/// The ICMP error answering the IP packet of `frame` as unreachable: IPv4 quotes its
/// header (options included) and the first 8 bytes after it; IPv6 as much of the
/// packet as fits in [`QUOTE6_MAX`] bytes. From the address it was sent to, TTL (hop
/// limit) 64, no DF, identification 0, TOS (traffic class) without ECN.
pub fn unreachable_for(frame: &[u8], what: Unreachable) -> Pkt {
    let ip = ip_of(frame);
    let (src, dst) = addrs_of(frame);
    let (family, tos, icmp_type, code, rest, body) = match src {
        IpAddr::V4(_) => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let code = match what {
                Unreachable::Port => ICMP_PORT_UNREACH,
                Unreachable::Protocol => ICMP_PROT_UNREACH,
            };
            let body = ip[..ihl + 8].to_vec();
            (Family::V4, ip[1], ICMP_DEST_UNREACH, code, [0; 4], body)
        }
        IpAddr::V6(_) => {
            let tclass = (ip[0] << 4) | (ip[1] >> 4);
            let (icmp_type, code, rest) = match what {
                Unreachable::Port => (ICMP6_DEST_UNREACH, ICMP6_PORT_UNREACH, [0; 4]),
                Unreachable::Protocol => {
                    let (_, _, nh_off, _) = chain6(ip).expect("a whole header chain");
                    (
                        ICMP6_PARAMPROB,
                        ICMP6_UNK_NEXTHDR,
                        (nh_off as u32).to_be_bytes(),
                    )
                }
            };
            let body = ip[..ip.len().min(QUOTE6_MAX)].to_vec();
            (Family::V6, tclass, icmp_type, code, rest, body)
        }
    };
    Pkt {
        family,
        src: dst,
        dst: src,
        id: 0,
        ttl: 64,
        tos: tos & !0x03,
        df: false,
        options: Vec::new(),
        ext: Vec::new(),
        l4: L4::Icmp {
            icmp_type,
            code,
            rest,
            body,
        },
    }
}

/// `input` must come back as `answer` (MACs swapped, every checksum right), redirected
/// out of the device it came in on.
#[track_caller]
pub fn expect_answer(fx: &Fixture, what: &str, input: &[u8], answer: &Pkt) -> Run {
    let run = expect(
        fx,
        what,
        Hook::Ingress,
        input,
        TC_ACT_REDIRECT,
        &answer.reply_frame(),
    );
    // The answer's source is the address the packet was sent to.
    assert_eq!(addrs_of(&run.output).0, addrs_of(input).1, "{what}");
    run
}

/// `input` must be dropped unanswered: TC_ACT_SHOT, the packet as it came.
#[track_caller]
pub fn expect_dropped(fx: &Fixture, what: &str, input: &[u8]) {
    let run = fx.ingress(input);
    assert_eq!(
        run.verdict,
        TC_ACT_SHOT,
        "{what}: verdict {} ({}), counters {:?}",
        run.verdict,
        verdict_name(run.verdict),
        fx.counters()
    );
    if let Some(d) = diff(input, &run.output) {
        panic!("{what}: dropped, but rewritten first:\n{d}");
    }
}
