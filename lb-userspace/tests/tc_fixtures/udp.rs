//! UDP DNAT and SNAT, with a checksum, without one (IPv4: IPv6 UDP must carry one),
//! and one that becomes 0xffff.
use crate::{
    common::{
        LOCAL_DNS, NODE_IP, NP_DNS_LOCAL, NP_DNS_REMOTE, REMOTE_DNS, client, ct_entry, expect,
        expect_snat, fixture, sa, udp_csum_off, xlate,
    },
    family::{Family, each_family},
    harness::{Hook, TC_ACT_OK, TC_ACT_REDIRECT},
    packet::{IPPROTO_UDP, Pkt},
};

each_family!(udp_dnat_snat_and_checksums);

fn udp_dnat_snat_and_checksums(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);

    // With a checksum: updated for the new pseudo header and port.
    let query = Pkt::udp(
        f,
        client(40000),
        frontend,
        b"\x12\x34\x01\x00\x00\x01 query",
    );
    expect(
        &fx,
        "UDP query",
        Hook::Ingress,
        &query.frame(),
        TC_ACT_OK,
        &query.clone().to(LOCAL_DNS).frame(),
    );
    let answer = Pkt::udp(f, LOCAL_DNS, client(40000), b"\x12\x34\x81\x80 answer");
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

    // Checksum 0 ("none") stays 0 both ways (IPv4 only: in IPv6 it is no datagram).
    if f == Family::V4 {
        let query = Pkt::udp(f, client(40001), frontend, b"no checksum").no_udp_checksum();
        expect(
            &fx,
            "UDP without checksum",
            Hook::Ingress,
            &query.frame(),
            TC_ACT_OK,
            &query.clone().to(LOCAL_DNS).frame(),
        );
        let answer = Pkt::udp(f, LOCAL_DNS, client(40001), b"none either").no_udp_checksum();
        expect(
            &fx,
            "UDP answer without checksum",
            Hook::Egress,
            &answer.frame(),
            TC_ACT_OK,
            &answer.clone().from(frontend).frame(),
        );
    }

    // A datagram whose translated checksum computes to 0 must carry 0xffff: 0 would
    // mean "no checksum".
    let payload = (0..=u16::MAX)
        .map(|v| v.to_be_bytes())
        .find(|p| {
            let out = Pkt::udp(f, client(40002), LOCAL_DNS, p).l4_bytes();
            let input = Pkt::udp(f, client(40002), frontend, p).l4_bytes();
            out[6..8] == [0xff, 0xff] && input[6..8] != [0xff, 0xff]
        })
        .expect("a payload whose translated checksum is 0xffff");
    let query = Pkt::udp(f, client(40002), frontend, &payload);
    let want = query.clone().to(LOCAL_DNS).frame();
    let csum = udp_csum_off(f);
    assert_eq!(&want[csum..csum + 2], &[0xff, 0xff]);
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
    let query = Pkt::udp(f, client(40003), frontend, b"remote query");
    let (snat, _) = expect_snat(&fx, "UDP query via SNAT", &query, REMOTE_DNS);
    let answer = Pkt::udp(f, REMOTE_DNS, snat, b"remote answer");
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
    if f == Family::V6 {
        return;
    }
    let query = Pkt::udp(f, client(40003), frontend, b"no checksum").no_udp_checksum();
    expect(
        &fx,
        "UDP query via SNAT without checksum",
        Hook::Ingress,
        &query.frame(),
        TC_ACT_REDIRECT,
        &query.clone().from(snat).to(REMOTE_DNS).routed().frame(),
    );
    let answer = Pkt::udp(f, REMOTE_DNS, snat, b"no checksum").no_udp_checksum();
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
