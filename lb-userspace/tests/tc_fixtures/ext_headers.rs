//! IPv6 extension headers (the IPv6 analogue of ip_options.rs): hop-by-hop options, a
//! routing header without segments left and destination options before TCP or UDP
//! are skipped to the ports and kept as they are through DNAT, SNAT and reverse NAT; a
//! fragment header after them puts the datagram's later fragments on their first
//! fragment's translation; ICMPv6 errors with extension headers of their own, or
//! quoting a packet that has some, are translated back.
use lb_common::Counter;

use crate::{
    common::{
        CLIENT_IP, LOCAL_DNS, LOCAL_POD, LOCAL_WEB, NODE_IP, NP_DNS_LOCAL, NP_DNS_REMOTE,
        NP_WEB_LOCAL, NP_WEB_REMOTE, REMOTE_DNS, REMOTE_WEB, ROUTER_IP, check, client, expect,
        expect_snat, fixture, sa, snat_source,
    },
    family::Family,
    harness::{Hook, TC_ACT_OK, TC_ACT_REDIRECT},
    packet::{
        ACK, Ext, IPPROTO_UDP, IcmpError, PSH, Pkt, SYN, checksum_problems, ip_of, reassemble,
    },
};

/// Every extension header the walk skips before the upper-layer header, in RFC 8200's
/// order.
fn chain() -> Vec<Ext> {
    vec![
        Ext::hop_by_hop(),
        Ext::dest_opts(),
        Ext::routing(0),
        Ext::dest_opts(),
    ]
}

#[test]
fn extension_headers_are_skipped_and_kept_through_dnat_snat_and_reverse_nat() {
    let f = Family::V6;
    let Some(fx) = fixture(f) else { return };

    // DNAT to a local backend: the ports after four extension headers.
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let syn = Pkt::tcp(f, client(40000), frontend, SYN).ext(&chain());
    expect(
        &fx,
        "SYN with four extension headers",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    // The backend's reply with a header of its own, through egress.
    let synack = Pkt::tcp(f, LOCAL_WEB, client(40000), SYN | ACK).ext(&[Ext::dest_opts()]);
    expect(
        &fx,
        "SYN-ACK with destination options",
        Hook::Egress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(frontend).frame(),
    );
    // Data with a payload, and each header alone.
    for (what, ext) in [
        ("hop-by-hop", vec![Ext::hop_by_hop()]),
        ("routing", vec![Ext::routing(0)]),
        ("destination options", vec![Ext::dest_opts()]),
    ] {
        let data = Pkt::tcp(f, client(40000), frontend, PSH | ACK)
            .payload(b"GET / HTTP/1.1\r\n\r\n")
            .ext(&ext);
        expect(
            &fx,
            &format!("data after {what}"),
            Hook::Ingress,
            &data.frame(),
            TC_ACT_OK,
            &data.clone().to(LOCAL_WEB).frame(),
        );
    }

    // SNAT to a remote backend, routed by the program (hop limit one less), and the
    // backend's answer back to the client.
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let syn = Pkt::tcp(f, client(40001), frontend, SYN).ext(&chain());
    let (snat, _) = expect_snat(&fx, "SNATed SYN with extension headers", &syn, REMOTE_WEB);
    let synack = Pkt::tcp(f, REMOTE_WEB, snat, SYN | ACK).ext(&[Ext::hop_by_hop()]);
    expect(
        &fx,
        "SYN-ACK from the remote backend with hop-by-hop options",
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

    // UDP: DNAT and its answer.
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let query = Pkt::udp(f, client(40002), frontend, b"query").ext(&chain());
    expect(
        &fx,
        "UDP with extension headers",
        Hook::Ingress,
        &query.frame(),
        TC_ACT_OK,
        &query.clone().to(LOCAL_DNS).frame(),
    );
    let answer = Pkt::udp(f, LOCAL_DNS, client(40002), b"answer").ext(&[Ext::routing(0)]);
    expect(
        &fx,
        "UDP answer with a routing header",
        Hook::Egress,
        &answer.frame(),
        TC_ACT_OK,
        &answer.clone().from(frontend).frame(),
    );
    assert_eq!(fx.counter(Counter::NpNewFlow), 3);
}

#[test]
fn fragments_after_extension_headers_follow_their_first_fragment() {
    let f = Family::V6;
    let Some(fx) = fixture(f) else { return };
    let payload: Vec<u8> = (0..1400u32).map(|i| (i * 5 + 1) as u8).collect();
    let cuts = [512, 1024];

    // DNAT: hop-by-hop and destination options, then the fragment header.
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let datagram = Pkt::udp(f, client(40000), frontend, &payload)
        .ext(&[Ext::hop_by_hop(), Ext::dest_opts()])
        .id(0x2222);
    let input = datagram.fragments(&cuts);
    let want = datagram.clone().to(LOCAL_DNS).fragments(&cuts);
    let mut outputs = Vec::new();
    for (i, (frag, want)) in input.iter().zip(&want).enumerate() {
        let run = expect(
            &fx,
            &format!("fragment {i}"),
            Hook::Ingress,
            frag,
            TC_ACT_OK,
            want,
        );
        outputs.push(run.output);
    }
    let whole = reassemble(&outputs);
    assert!(
        checksum_problems(&whole).is_empty(),
        "the reassembled datagram: {:?}",
        checksum_problems(&whole)
    );
    assert_eq!(whole, datagram.clone().to(LOCAL_DNS).frame());

    // SNAT: the later fragments are routed as the first.
    let frontend = sa(NODE_IP, NP_DNS_REMOTE);
    let datagram = Pkt::udp(f, client(40001), frontend, &payload)
        .ext(&[Ext::routing(0)])
        .id(0x4444);
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
    for (i, (frag, want)) in input.iter().zip(&want).enumerate().skip(1) {
        let run = expect(
            &fx,
            &format!("SNAT fragment {i}"),
            Hook::Ingress,
            frag,
            TC_ACT_REDIRECT,
            want,
        );
        outputs.push(run.output);
    }
    assert!(checksum_problems(&reassemble(&outputs)).is_empty());

    // Path MTU discovery of the fragmented datagram: a router's packet too big
    // quoting the first SNATed fragment (its header chain, fragment header included,
    // and the UDP header) goes back to the client about the fragment it sent.
    let quote = |ip: &[u8]| ip[..40 + 24 + 8 + 8].to_vec();
    let error = Pkt::icmp_error(
        f,
        ROUTER_IP,
        NODE_IP,
        IcmpError::TooBig { mtu: 1280 },
        &quote(ip_of(&outputs[0])),
    );
    let mut quoted = quote(ip_of(&datagram.clone().routed().fragments(&cuts)[0]));
    // The quoted UDP checksum stays as sent (see icmp.rs).
    let csum = 40 + 24 + 8 + 6;
    quoted[csum..csum + 2].copy_from_slice(&ip_of(&outputs[0])[csum..csum + 2]);
    let want = Pkt::icmp_error(
        f,
        ROUTER_IP,
        CLIENT_IP,
        IcmpError::TooBig { mtu: 1280 },
        &quoted,
    );
    expect(
        &fx,
        "packet too big about a first fragment",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );

    // An atomic fragment (offset 0, no more fragments) is a whole datagram.
    let atomic = Pkt::udp(f, client(40002), sa(NODE_IP, NP_DNS_LOCAL), b"atomic").id(0x5555);
    let frames = atomic.fragments(&[]);
    let want = atomic.clone().to(LOCAL_DNS).fragments(&[]);
    expect(
        &fx,
        "an atomic fragment",
        Hook::Ingress,
        &frames[0],
        TC_ACT_OK,
        &want[0],
    );
}

#[test]
fn icmpv6_errors_with_extension_headers_are_translated_back() {
    let f = Family::V6;
    let Some(fx) = fixture(f) else { return };

    // A SNATed SYN with extension headers and a payload; a router's packet too big
    // quotes all of it (as RFC 4443 asks: as much as fits), headers included.
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let syn = Pkt::tcp(f, client(40000), frontend, SYN)
        .ext(&[Ext::hop_by_hop(), Ext::dest_opts()])
        .payload(&[0x33; 64]);
    let sent = fx.ingress(&syn.frame()).output;
    let error = Pkt::icmp_error(
        f,
        ROUTER_IP,
        NODE_IP,
        IcmpError::TooBig { mtu: 1280 },
        ip_of(&sent),
    );
    // Translated back, but for the quoted TCP checksum: left as sent (nothing checks
    // it, see icmp.rs).
    let mut quoted = syn.clone().routed().ip_bytes();
    let csum = syn.ip_hlen() + 16;
    quoted[csum..csum + 2].copy_from_slice(&ip_of(&sent)[csum..csum + 2]);
    let want = Pkt::icmp_error(
        f,
        ROUTER_IP,
        CLIENT_IP,
        IcmpError::TooBig { mtu: 1280 },
        &quoted,
    );
    expect(
        &fx,
        "packet too big quoting extension headers and the whole segment",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );

    // The error itself after a hop-by-hop header (a router alert, say).
    let error = error.clone().ext(&[Ext::hop_by_hop()]);
    let want = want.clone().ext(&[Ext::hop_by_hop()]);
    expect(
        &fx,
        "packet too big after a hop-by-hop header",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );

    // A local backend's port unreachable about a query that came with extension
    // headers (kept by the DNAT), through egress: the quote's header chain is walked
    // to its ports.
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let query = Pkt::udp(f, client(40001), frontend, b"q").ext(&chain());
    let delivered = fx.ingress(&query.frame()).output;
    let error = Pkt::icmp_error(
        f,
        LOCAL_POD,
        CLIENT_IP,
        IcmpError::PortUnreachable,
        ip_of(&delivered),
    );
    // Quoted whole; the quoted UDP checksum stays as delivered (see icmp.rs).
    let mut quoted = query.ip_bytes();
    let csum = query.ip_hlen() + 6;
    quoted[csum..csum + 2].copy_from_slice(&ip_of(&delivered)[csum..csum + 2]);
    let want = Pkt::icmp_error(f, NODE_IP, CLIENT_IP, IcmpError::PortUnreachable, &quoted);
    expect(
        &fx,
        "port unreachable about a query with extension headers",
        Hook::Egress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );
    assert_eq!(fx.counter(Counter::NpIcmpTranslated), 3);
}
