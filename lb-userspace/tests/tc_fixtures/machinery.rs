//! The fixture machinery itself: the maps the agent programs, the packet builder's
//! checksums.
use socklb_core::maps::{ServiceMaps, V4, V6, port_to_map, v6::ip6_to_map};

use crate::{
    common::udp_csum_off,
    common::{CLIENT_IP, NODE_IP, NODE_IP2, NP_WEB_LOCAL, NP_WEB_REMOTE, client, fixture, sa},
    family::v6_of,
    family::{Family, each_family},
    harness::Hook,
    packet::{self, IPPROTO_TCP, Pkt, SYN, checksum_problems, reassemble},
};

each_family!(
    verified_instruction_counts_stay_far_below_the_kernel_limit,
    the_maps_hold_what_the_agent_programs,
    packet_builder_checksums_match_known_values
);

/// The verifier's work for each TC program, printed for the record (compare before and
/// after a change to the data path: `cargo test -p socklb --test tc_fixtures verified --
/// --nocapture`), and held well below the kernel's limit of one million.
fn verified_instruction_counts_stay_far_below_the_kernel_limit(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let mut programs: Vec<String> = [Hook::Ingress, Hook::Egress]
        .iter()
        .map(|hook| hook.program(f))
        .collect();
    if f == Family::V6 {
        // The parts of the IPv6 path in programs of their own.
        programs.extend(
            lb_common::tc6_calls::PROGRAMS
                .iter()
                .map(|(_, p)| p.to_string()),
        );
    }
    for program in &programs {
        let Some(n) = fx.verified_insns(program) else {
            eprintln!("{program}: the kernel does not report verified_insns");
            continue;
        };
        eprintln!("{program}: {n} instructions verified");
        assert!(n < 250_000, "{program}: {n} verified instructions");
    }
}

fn the_maps_hold_what_the_agent_programs(f: Family) {
    let Some(fx) = fixture(f) else { return };
    // Pins in the test's own directory, one per map.
    for name in lb_common::map_names::ALL {
        assert!(
            fx.pin_dir().join(name).exists(),
            "{name} not pinned in {}",
            fx.pin_dir().display()
        );
    }
    // The external NodePort entry of web-remote: SNAT and NODEPORT, one backend.
    let np = port_to_map(NP_WEB_REMOTE);
    let external = lb_common::scope::EXTERNAL;
    let value = match f {
        Family::V4 => {
            assert_eq!(fx.maps.node_addresses(), vec![NODE_IP, NODE_IP2]);
            let key = lb_common::Svc4Key::new(0, np, IPPROTO_TCP, 0).with_scope(external);
            ServiceMaps::<V4>::dump_services(&fx.maps)
                .unwrap()
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
        }
        Family::V6 => {
            let mut addrs = fx.maps.node_addresses6();
            addrs.sort();
            assert_eq!(addrs, vec![v6_of(NODE_IP), v6_of(NODE_IP2)]);
            let any = ip6_to_map(std::net::Ipv6Addr::UNSPECIFIED);
            let key = lb_common::Svc6Key::new(any, np, IPPROTO_TCP, 0).with_scope(external);
            ServiceMaps::<V6>::dump_services(&fx.maps)
                .unwrap()
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
        }
    }
    .expect("external NodePort entry");
    assert_eq!(
        value.flags,
        lb_common::SVC_FLAG_SNAT | lb_common::SVC_FLAG_NODEPORT
    );
    assert_eq!(value.count, 1);
    assert!(fx.plan.frontends.iter().any(|fe| fe.port == NP_WEB_REMOTE));
}

/// The builder's own checksums, on packets whose checksums are known.
fn packet_builder_checksums_match_known_values(f: Family) {
    // A TCP SYN 192.0.2.100:40000 -> 192.0.2.11:30080 verified by hand against the
    // one's complement definition: the sum over pseudo header and segment is 0xffff.
    let syn = Pkt::tcp(f, client(40000), sa(NODE_IP, NP_WEB_LOCAL), SYN);
    let hlen = syn.ip_hlen();
    let syn = syn.ip_bytes();
    let l4 = &syn[hlen..];
    let sum = packet::fold(packet::ones_sum(
        l4,
        packet::pseudo_header_sum(f.ip(CLIENT_IP), f.ip(NODE_IP), IPPROTO_TCP, l4.len()),
    ));
    assert_eq!(sum, 0xffff);
    if f == Family::V4 {
        assert_eq!(packet::fold(packet::ones_sum(&syn[..20], 0)), 0xffff);
    }
    // Fragments reassemble to the unfragmented datagram.
    let dgram = Pkt::udp(f, client(1), sa(NODE_IP, 2), &[7u8; 100]).id(9);
    assert_eq!(
        reassemble(&dgram.fragments(&[16, 48])),
        dgram.clone().no_df().frame()
    );
    // A damaged checksum is reported.
    let mut bad = Pkt::udp(f, client(1), sa(NODE_IP, 2), b"x").frame();
    bad[udp_csum_off(f)] ^= 0x01;
    assert_eq!(checksum_problems(&bad).len(), 1);
}
