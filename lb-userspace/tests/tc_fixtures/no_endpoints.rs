//! Verdicts for frontends without usable endpoints, and for addresses that are not
//! ours: a LoadBalancer or external IP without endpoints is answered in place (TCP
//! RST, ICMP port unreachable) as kube-proxy's REJECT answers; a NodePort without
//! endpoints passes to the stack, which answers the same way; a Local policy without
//! local endpoints drops. In IPv6 the answers are a RST and ICMPv6 port unreachable
//! (type 1 code 4), quoting as much of the datagram as fits in 256 bytes, extension
//! headers included.
use lb_common::Counter;

use crate::{
    common::{
        CLIENT_IP, EMPTY_EXT_IP, EMPTY_LB_IP, NODE_IP, NODE_IP2, NP_DNS_LOCAL, NP_LOCAL_POLICY,
        NP_NO_ENDPOINTS, NP_WEB_LOCAL, QUOTE6_MAX, STRANGER_IP, Unreachable, client, expect_answer,
        expect_untouched, fixture, rst_for, sa, unreachable_for, verdict_name,
    },
    family::{Family, each_family},
    harness::TC_ACT_SHOT,
    packet::{ACK, Ext, FIN, L4, PSH, Pkt, RST, SYN},
};

each_family!(
    frontends_without_usable_endpoints_and_foreign_addresses,
    a_syn_to_a_load_balancer_ip_without_endpoints_gets_rst_ack,
    a_segment_with_ack_and_payload_gets_a_rst_from_its_ack_number,
    udp_to_an_external_ip_without_endpoints_gets_port_unreachable,
    an_external_ip_that_is_a_node_address_answers_only_its_service_ports
);

fn frontends_without_usable_endpoints_and_foreign_addresses(f: Family) {
    let Some(fx) = fixture(f) else { return };

    // externalTrafficPolicy Local, no endpoint on this node: dropped.
    let syn = Pkt::tcp(f, client(40000), sa(NODE_IP, NP_LOCAL_POLICY), SYN);
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
        &Pkt::tcp(f, client(40001), sa(NODE_IP, NP_NO_ENDPOINTS), SYN).frame(),
    );
    expect_untouched(
        &fx,
        "NodePort without endpoints, the node's other address",
        &Pkt::tcp(f, client(40001), sa(NODE_IP2, NP_NO_ENDPOINTS), SYN).frame(),
    );

    // A NodePort port on an address that is neither a node address nor a frontend.
    expect_untouched(
        &fx,
        "NodePort on a foreign address",
        &Pkt::tcp(f, client(40003), sa(STRANGER_IP, NP_WEB_LOCAL), SYN).frame(),
    );
    expect_untouched(
        &fx,
        "UDP NodePort on a foreign address",
        &Pkt::udp(f, client(40004), sa(STRANGER_IP, NP_DNS_LOCAL), b"q").frame(),
    );
    assert_eq!(fx.counter(Counter::NpNewFlow), 0);
    assert_eq!(fx.counter(Counter::NpRejected), 0);
    assert!(fx.ct_entries().is_empty());
}

fn a_syn_to_a_load_balancer_ip_without_endpoints_gets_rst_ack(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let syn = Pkt::tcp(f, client(40002), sa(EMPTY_LB_IP, 80), SYN);
    let want = rst_for(&syn);
    // What RFC 9293 has a closed port send, spelled out once.
    let L4::Tcp {
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
        payload,
    } = &want.l4
    else {
        unreachable!()
    };
    assert_eq!((*sport, *dport), (80, 40002));
    assert_eq!((*seq, *ack, *flags), (0, 0x1234_5679, RST | ACK));
    assert_eq!((*window, payload.len()), (0, 0));
    assert_eq!(
        (want.src, want.dst, want.ttl, want.id),
        (f.ip(EMPTY_LB_IP), f.ip(CLIENT_IP), 64, 0)
    );

    let run = expect_answer(
        &fx,
        "SYN to a LoadBalancer IP without endpoints",
        &syn.frame(),
        &want,
    );
    let ip_hlen = syn.ip_hlen();
    assert_eq!(
        run.output.len(),
        14 + ip_hlen + 20,
        "no options, no payload"
    );
    assert_eq!(fx.counter(Counter::NpRejected), 1);
    assert_eq!(fx.counter(Counter::NpDropped), 0, "a reject, not a drop");
    assert!(fx.ct_entries().is_empty(), "an answer tracks nothing");
}

fn a_segment_with_ack_and_payload_gets_a_rst_from_its_ack_number(f: Family) {
    let Some(fx) = fixture(f) else { return };
    // An established flow whose service lost its endpoints (no conntrack entry here).
    let data = Pkt::tcp(f, client(40010), sa(EMPTY_LB_IP, 80), ACK | PSH).payload(&[0x61; 300]);
    let want = rst_for(&data);
    let L4::Tcp {
        seq, ack, flags, ..
    } = &want.l4
    else {
        unreachable!()
    };
    assert_eq!((*seq, *ack, *flags), (0x0bad_cafe, 0, RST));
    let run = expect_answer(&fx, "ACK with 300 bytes of payload", &data.frame(), &want);
    assert_eq!(
        run.output.len(),
        14 + data.ip_hlen() + 20,
        "the payload is cut"
    );

    // Without ACK: RST|ACK acknowledging the payload and the FIN.
    let fin = Pkt::tcp(f, client(40011), sa(EMPTY_LB_IP, 80), FIN).payload(b"bye");
    let want = rst_for(&fin);
    let L4::Tcp { seq, ack, .. } = &want.l4 else {
        unreachable!()
    };
    assert_eq!((*seq, *ack), (0, 0x1234_5678 + 3 + 1));
    expect_answer(&fx, "FIN with payload, no ACK", &fin.frame(), &want);
    if f == Family::V6 {
        // The payload's length is what follows the extension headers and TCP's.
        let fin = Pkt::tcp(f, client(40013), sa(EMPTY_LB_IP, 80), FIN)
            .payload(b"bye")
            .ext(&[Ext::hop_by_hop(), Ext::dest_opts()]);
        let want = rst_for(&fin);
        expect_answer(
            &fx,
            "FIN with payload after extension headers",
            &fin.frame(),
            &want,
        );
    }

    // TOS (traffic class) is kept without its ECN bits; IP options (extension
    // headers) are not copied, and the segment after them is the one answered.
    let syn = Pkt::tcp(f, client(40012), sa(EMPTY_LB_IP, 80), SYN);
    let mut syn = match f {
        Family::V4 => syn.options(&[1, 1, 1, 0]),
        Family::V6 => syn.ext(&[Ext::hop_by_hop(), Ext::routing(0), Ext::dest_opts()]),
    };
    syn.tos = 0xb9;
    let want = rst_for(&syn);
    assert_eq!(want.tos, 0xb8);
    expect_answer(&fx, "SYN with IP options and ECN", &syn.frame(), &want);
    let answered = match f {
        Family::V4 => 3,
        Family::V6 => 4,
    };
    assert_eq!(fx.counter(Counter::NpRejected), answered);
}

fn udp_to_an_external_ip_without_endpoints_gets_port_unreachable(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let query = Pkt::udp(
        f,
        client(40020),
        sa(EMPTY_EXT_IP, 53),
        b"who has example.org?",
    );
    let frame = query.frame();
    let want = unreachable_for(&frame, Unreachable::Port);
    let L4::Icmp { body, .. } = &want.l4 else {
        unreachable!()
    };
    let (ip_hlen, quoted) = match f {
        // The IP header and the UDP header.
        Family::V4 => (20, 20 + 8),
        // The whole datagram.
        Family::V6 => (40, query.ip_bytes().len()),
    };
    assert_eq!(body.len(), quoted);
    let run = expect_answer(
        &fx,
        "UDP to an external IP without endpoints",
        &frame,
        &want,
    );
    assert_eq!(run.output.len(), 14 + ip_hlen + 8 + quoted);

    match f {
        Family::V4 => {
            // A datagram with IP options: all of its header is quoted (and none copied).
            let opts = Pkt::udp(f, client(40021), sa(EMPTY_EXT_IP, 53), b"q?").options(&[1; 40]);
            let frame = opts.frame();
            let want = unreachable_for(&frame, Unreachable::Port);
            let run = expect_answer(&fx, "UDP with 40 bytes of IP options", &frame, &want);
            assert_eq!(run.output.len(), 14 + 20 + 8 + 60 + 8, "the largest answer");
        }
        Family::V6 => {
            // Extension headers are quoted (and none copied); a long datagram is
            // quoted up to QUOTE6_MAX bytes.
            let big = Pkt::udp(f, client(40021), sa(EMPTY_EXT_IP, 53), &[0x51; 600])
                .ext(&[Ext::hop_by_hop(), Ext::dest_opts()]);
            let frame = big.frame();
            let want = unreachable_for(&frame, Unreachable::Port);
            let run = expect_answer(&fx, "UDP with extension headers, 600 bytes", &frame, &want);
            assert_eq!(
                run.output.len(),
                14 + 40 + 8 + QUOTE6_MAX,
                "the largest answer"
            );
        }
    }

    // Without a UDP checksum (IPv4), and the shortest datagram: quoted as they are.
    let bare = Pkt::udp(f, client(40022), sa(EMPTY_EXT_IP, 53), b"");
    let bare = match f {
        Family::V4 => bare.no_udp_checksum(),
        Family::V6 => bare,
    }
    .frame();
    expect_answer(
        &fx,
        "empty UDP datagram without checksum",
        &bare,
        &unreachable_for(&bare, Unreachable::Port),
    );
    assert_eq!(fx.counter(Counter::NpRejected), 3);
}

fn an_external_ip_that_is_a_node_address_answers_only_its_service_ports(f: Family) {
    let Some(fx) = fixture(f) else { return };
    // The service port of a frontend on a node address: answered like any frontend.
    let syn = Pkt::tcp(f, client(40030), sa(NODE_IP2, 8080), SYN);
    expect_answer(
        &fx,
        "external IP = node address, service port",
        &syn.frame(),
        &rst_for(&syn),
    );
    // Its other ports are the node's: the stack answers them (or a listener serves).
    expect_untouched(
        &fx,
        "external IP = node address, another port",
        &Pkt::tcp(f, client(40031), sa(NODE_IP2, 22), SYN).frame(),
    );
    expect_untouched(
        &fx,
        "external IP = node address, UDP",
        &Pkt::udp(f, client(40032), sa(NODE_IP2, 8080), b"q").frame(),
    );
    assert_eq!(fx.counter(Counter::NpRejected), 1);
}
