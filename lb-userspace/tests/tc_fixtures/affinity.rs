//! ClientIP session affinity through the TC path: every new flow of a client to a
//! NodePort goes to the backend its first flow got (through either node address),
//! while other clients are spread over the backends.
use std::{collections::BTreeSet, net::Ipv4Addr};

use lb_common::IPPROTO_TCP;
use serde_json::json;

use crate::{
    common::{NODE_IP, NODE_IP2, ct_entry, fixture_with, open_tcp, sa, service, slice, xlate},
    family::{Family, each_family},
    harness::Fixture,
};

each_family!(new_flows_of_a_client_stick_to_its_backend);

/// The NodePort of the ClientIP service.
const NP: u16 = 30200;
const PODS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 244, 1, 31),
    Ipv4Addr::new(10, 244, 1, 32),
    Ipv4Addr::new(10, 244, 1, 33),
    Ipv4Addr::new(10, 244, 1, 34),
];

/// The backend a new TCP flow from `client` to `to` got.
fn backend(fx: &Fixture, client: std::net::SocketAddrV4, to: std::net::SocketAddrV4) -> Ipv4Addr {
    open_tcp(fx, client, to);
    *xlate(&ct_entry(fx, client, to, IPPROTO_TCP)).to_dst.ip()
}

fn new_flows_of_a_client_stick_to_its_backend(f: Family) {
    let endpoints: Vec<(Ipv4Addr, &str)> = PODS.iter().map(|p| (*p, "node-a")).collect();
    let more = vec![
        service(
            "sticky",
            "10.96.0.60",
            "TCP",
            80,
            8080,
            Some(NP),
            json!({"spec": {
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
            }}),
        ),
        slice("sticky", "TCP", 8080, &endpoints),
    ];
    let Some(fx) = fixture_with(f, more, Default::default()) else {
        return;
    };
    let mut firsts = BTreeSet::new();
    for c in 0..16u8 {
        let client_ip = Ipv4Addr::new(192, 0, 2, 120 + c);
        let first = backend(&fx, sa(client_ip, 40000), sa(NODE_IP, NP));
        assert!(PODS.contains(&first), "{first} is no backend");
        for port in 40001..40008 {
            let node_ip = if port % 2 == 0 { NODE_IP } else { NODE_IP2 };
            assert_eq!(
                backend(&fx, sa(client_ip, port), sa(node_ip, NP)),
                first,
                "client {client_ip}:{port} via {node_ip}: the backend of its first flow"
            );
        }
        firsts.insert(first);
    }
    // 16 clients over 4 backends at random: all on one has odds of 4^-15.
    assert!(firsts.len() > 1, "every client got {firsts:?}");
}
