//! The fixture machinery itself: the maps the agent programs, the packet builder's
//! checksums.
use socklb_core::maps::{ServiceMaps, V4, port_to_map};

use crate::{
    common::{
        CLIENT_IP, ETH_UDP_CSUM, NODE_IP, NODE_IP2, NP_WEB_LOCAL, NP_WEB_REMOTE, client, fixture,
        sa,
    },
    harness::Hook,
    packet::{self, IPPROTO_TCP, Pkt, SYN, checksum_problems, reassemble},
};

/// The verifier's work for each TC program, printed for the record (compare before and
/// after a change to the data path: `cargo test -p socklb --test tc_fixtures verified --
/// --nocapture`), and held well below the kernel's limit of one million.
#[test]
fn verified_instruction_counts_stay_far_below_the_kernel_limit() {
    let Some(fx) = fixture() else { return };
    for hook in [Hook::Ingress, Hook::Egress] {
        let Some(n) = fx.verified_insns(hook) else {
            eprintln!("{hook:?}: the kernel does not report verified_insns");
            continue;
        };
        eprintln!("{hook:?}: {n} instructions verified");
        assert!(n < 250_000, "{hook:?}: {n} verified instructions");
    }
}

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
    let svcs = ServiceMaps::<V4>::dump_services(&fx.maps).unwrap();
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
