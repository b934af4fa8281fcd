//! Traffic that is not ours (other protocols, other ports, too short to parse) passes
//! untouched; a frame of another family, or no IP at all, goes to the next program on
//! the device (the other family's) untouched.
use lb_common::Counter;

use crate::{
    common::{
        CLIENT_IP, LOCAL_WEB, NODE_IP, NP_DNS_LOCAL, NP_WEB_LOCAL, client, expect_foreign,
        expect_untouched, fixture, sa,
    },
    packet::{self, ICMP_ECHO_REQUEST, Pkt, SYN, arp_request, ether, ipv6_tcp_syn},
};

#[test]
fn unknown_traffic_passes_untouched() {
    let Some(fx) = fixture() else { return };
    let inconsistent = fx.counter(Counter::Inconsistent);
    expect_foreign(&fx, "ARP", &arp_request(CLIENT_IP, NODE_IP));
    expect_foreign(&fx, "IPv6 SYN to a NodePort", &ipv6_tcp_syn(NP_WEB_LOCAL));
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
    expect_foreign(&fx, "Ethernet header alone", &ether(packet::ETH_P_ARP, &[]));
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
