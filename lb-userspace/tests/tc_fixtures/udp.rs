//! UDP DNAT and SNAT, with a checksum, without one, and one that becomes 0xffff.
use crate::{
    common::{
        ETH_UDP_CSUM, LOCAL_DNS, NODE_IP, NP_DNS_LOCAL, NP_DNS_REMOTE, REMOTE_DNS, client,
        ct_entry, expect, expect_snat, fixture, sa, xlate,
    },
    harness::{Hook, TC_ACT_OK, TC_ACT_REDIRECT},
    packet::{IPPROTO_UDP, Pkt},
};

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
