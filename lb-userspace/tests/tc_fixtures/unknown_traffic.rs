//! Traffic that is not ours (other protocols, other ports, too short to parse) passes
//! untouched; a frame of another family, or no IP at all, goes to the next program on
//! the device (the other family's) untouched. IPv6 also: header chains the walk does
//! not follow (cut short, a routing header with segments left, IPsec, too many
//! extension headers) pass untouched.
use lb_common::Counter;

use crate::{
    common::{
        CLIENT_IP, LOCAL_DNS, LOCAL_WEB, NODE_IP, NP_DNS_LOCAL, NP_WEB_LOCAL, NP_WEB_REMOTE,
        REMOTE_WEB, client, expect_foreign, expect_untouched, fixture, sa, snat_source,
    },
    family::{Family, each_family},
    packet::{self, Ext, IPPROTO_TCP, Pkt, SYN, arp_request, diff, ether},
};

each_family!(
    unknown_traffic_passes_untouched,
    a_packet_cut_anywhere_is_translated_whole_or_not_at_all,
    a_packet_cut_anywhere_is_snated_whole_or_not_at_all
);

fn unknown_traffic_passes_untouched(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let inconsistent = fx.counter(Counter::Inconsistent);
    expect_foreign(&fx, "ARP", &arp_request(CLIENT_IP, NODE_IP));
    expect_foreign(
        &fx,
        "the other family's SYN to a NodePort",
        &Pkt::tcp(f.other(), client(40000), sa(NODE_IP, NP_WEB_LOCAL), SYN).frame(),
    );
    expect_untouched(
        &fx,
        "ICMP echo to a node address",
        &Pkt::echo_request(f, CLIENT_IP, NODE_IP).frame(),
    );
    expect_untouched(
        &fx,
        "TCP to a node address, not a NodePort",
        &Pkt::tcp(f, client(40000), sa(NODE_IP, 22), SYN).frame(),
    );
    expect_untouched(
        &fx,
        "UDP to a node address, not a NodePort",
        &Pkt::udp(f, client(40000), sa(NODE_IP, 53), b"q").frame(),
    );
    expect_untouched(
        &fx,
        "UDP to a TCP NodePort's number",
        &Pkt::udp(f, client(40000), sa(NODE_IP, NP_WEB_LOCAL), b"q").frame(),
    );
    expect_untouched(
        &fx,
        "TCP to a pod",
        &Pkt::tcp(f, client(40000), LOCAL_WEB, SYN).frame(),
    );
    let mut gre = Pkt::udp(f, client(40000), sa(NODE_IP, NP_DNS_LOCAL), b"....").frame();
    // Another IP protocol (the checksums no longer matter).
    let proto_off = match f {
        Family::V4 => 14 + 9,
        Family::V6 => 14 + 6,
    };
    gre[proto_off] = 47;
    expect_untouched(&fx, "GRE to a node address", &gre);
    assert_eq!(
        fx.counter(Counter::Inconsistent),
        inconsistent,
        "well-formed foreign traffic is no internal error"
    );

    // Too short to parse. (BPF_PROG_TEST_RUN itself refuses an IP frame shorter
    // than Ethernet + the fixed header, so the shortest case here has a whole header.)
    expect_foreign(&fx, "Ethernet header alone", &ether(packet::ETH_P_ARP, &[]));
    let syn = Pkt::tcp(f, client(40000), sa(NODE_IP, NP_WEB_LOCAL), SYN);
    let hlen = 14 + syn.ip_hlen();
    let syn = syn.frame();
    expect_untouched(&fx, "IP header without TCP header", &syn[..hlen]);
    expect_untouched(&fx, "IP header and half the TCP ports", &syn[..hlen + 3]);
    expect_untouched(&fx, "TCP header cut before the flags", &syn[..hlen + 12]);
    match f {
        Family::V4 => {
            let mut long_ihl = syn.clone();
            long_ihl[14] = 0x4f; // a 60-byte header in a 54-byte packet
            expect_untouched(&fx, "IHL beyond the packet", &long_ihl);
            let mut bad_ihl = syn.clone();
            bad_ihl[14] = 0x44;
            expect_untouched(&fx, "IHL 4", &bad_ihl);
        }
        Family::V6 => {
            let nodeport = sa(NODE_IP, NP_WEB_LOCAL);
            let syn = Pkt::tcp(f, client(40000), nodeport, SYN);
            // An extension header cut short, and one whose length runs past the end.
            let hop = syn.clone().ext(&[Ext::hop_by_hop()]).frame();
            expect_untouched(&fx, "hop-by-hop header cut short", &hop[..14 + 40 + 4]);
            let mut long = syn.clone().ext(&[Ext::dest_opts()]).frame();
            long[14 + 40 + 1] = 20; // 168 bytes of options in a short packet
            expect_untouched(&fx, "destination options beyond the packet", &long);
            // A routing header with segments left: the destination is a waypoint.
            let routed = syn.clone().ext(&[Ext::routing(1)]).frame();
            expect_untouched(&fx, "routing header with segments left", &routed);
            // More extension headers than the walk follows.
            let many = vec![Ext::dest_opts(); 7];
            expect_untouched(
                &fx,
                "seven extension headers",
                &syn.clone().ext(&many).frame(),
            );
            // ICMPv6 that is no error: neighbour discovery, router advertisements,
            // multicast listener reports, echo replies, to and from node addresses.
            for (what, icmp_type) in [
                ("neighbour solicitation", 135),
                ("neighbour advertisement", 136),
                ("router solicitation", 133),
                ("router advertisement", 134),
                ("MLDv2 report", 143),
                ("echo reply", 129),
            ] {
                let msg = Pkt::icmp(f, CLIENT_IP, NODE_IP, icmp_type, 0, [0; 4], &[0; 24]).ttl(255);
                expect_untouched(&fx, what, &msg.frame());
            }
            // ESP: the ports are not readable. No next header: nothing to translate.
            for (what, proto) in [("ESP", 50), ("no next header", 59)] {
                let mut frame = syn.clone().frame();
                frame[14 + 6] = proto;
                expect_untouched(&fx, what, &frame);
            }
        }
    }
    assert_eq!(fx.counter(Counter::NpNewFlow), 0);
}

/// A TCP segment or UDP datagram cut at every length after its IP header (IPv6: after
/// four extension headers) comes out either as it went in or as its whole translation
/// cut at the same length: never half rewritten, whatever load or store fails first.
fn a_packet_cut_anywhere_is_translated_whole_or_not_at_all(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let ext = [
        Ext::hop_by_hop(),
        Ext::dest_opts(),
        Ext::routing(0),
        Ext::dest_opts(),
    ];
    let with_ext = |p: Pkt| match f {
        Family::V4 => p,
        Family::V6 => p.ext(&ext),
    };
    let mut port = 41000;
    for (what, frontend, backend) in [
        ("TCP", sa(NODE_IP, NP_WEB_LOCAL), LOCAL_WEB),
        ("UDP", sa(NODE_IP, NP_DNS_LOCAL), LOCAL_DNS),
    ] {
        let template = |port: u16| {
            let p = if what == "TCP" {
                Pkt::tcp(f, client(port), frontend, SYN).payload(b"data")
            } else {
                Pkt::udp(f, client(port), frontend, b"data")
            };
            with_ext(p)
        };
        let full = template(port).frame();
        let hlen = 14 + template(port).ip_hlen();
        for cut in hlen..full.len() {
            port += 1;
            let input = template(port).frame()[..cut].to_vec();
            let translated = template(port).to(backend).frame()[..cut].to_vec();
            let run = fx.ingress(&input);
            assert!(
                run.output == input || run.output == translated,
                "{what} cut at {cut} of {}: verdict {}, half rewritten:\n{}",
                full.len(),
                run.verdict,
                diff(&translated, &run.output).unwrap_or_default()
            );
        }
    }
}

/// [`a_packet_cut_anywhere_is_translated_whole_or_not_at_all`] for a new flow that gets
/// SNAT and is routed by the program: as it came, or wholly translated and routed.
fn a_packet_cut_anywhere_is_snated_whole_or_not_at_all(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let template = |port: u16| {
        let p = Pkt::tcp(f, client(port), frontend, SYN).payload(b"data");
        match f {
            Family::V4 => p,
            Family::V6 => p.ext(&[Ext::hop_by_hop(), Ext::dest_opts()]),
        }
    };
    let full = template(42000).frame();
    let hlen = 14 + template(42000).ip_hlen();
    for cut in hlen..full.len() {
        let port = 42000 + cut as u16;
        let input = template(port).frame()[..cut].to_vec();
        let run = fx.ingress(&input);
        if run.output == input {
            continue;
        }
        let snat = snat_source(&fx, client(port), frontend, IPPROTO_TCP);
        let translated = template(port).from(snat).to(REMOTE_WEB).routed().frame()[..cut].to_vec();
        assert!(
            run.output == translated,
            "cut at {cut} of {}: verdict {}, half rewritten:\n{}",
            full.len(),
            run.verdict,
            diff(&translated, &run.output).unwrap_or_default()
        );
    }
}
