//! ICMP errors about tracked flows are translated back; other ICMP passes. In IPv6:
//! ICMPv6 destination unreachable, packet too big (path MTU discovery through the
//! translation), time exceeded and parameter problem, their checksum over the IPv6
//! pseudo header.
use lb_common::Counter;

use crate::{
    common::{
        CLIENT_IP, LOCAL_POD, LOCAL_WEB, NODE_IP, NP_DNS_LOCAL, NP_DNS_REMOTE, NP_WEB_LOCAL,
        NP_WEB_REMOTE, REMOTE_DNS, REMOTE_POD, ROUTER_IP, client, expect, expect_untouched,
        fixture, open_tcp, sa, snat_source,
    },
    family::{Family, each_family},
    harness::{Hook, TC_ACT_OK, TC_ACT_REDIRECT},
    packet::{ACK, IPPROTO_TCP, IPPROTO_UDP, IcmpError, Pkt, SYN, chain6, ip_of},
};

each_family!(
    icmp_errors_about_tracked_flows_are_translated_back,
    an_icmp_error_cut_anywhere_is_translated_whole_or_not_at_all
);

/// What an ICMP error quotes of `ip` here: its IP header (IPv6: the header chain) and
/// the first 8 bytes after it, the least an error must carry.
fn quote(ip: &[u8]) -> Vec<u8> {
    let hlen = match ip[0] >> 4 {
        4 => usize::from(ip[0] & 0x0f) * 4,
        _ => chain6(ip).expect("a header chain").1,
    };
    ip[..hlen + 8].to_vec()
}

/// What an ICMP error about the datagram `ip` should quote once translated back, when
/// the datagram went out as `sent`: `ip`'s quote with `sent`'s UDP checksum (the last
/// two quoted bytes). The quoted UDP checksum is left as quoted: nothing checks it
/// (Linux's udp_err does not), and an ICMP error may quote too little of a TCP header
/// to fix it.
fn quote_with_sent_udp_checksum(ip: &[u8], sent: &[u8]) -> Vec<u8> {
    let mut quoted = quote(ip);
    let sent_quote = quote(sent);
    let n = quoted.len();
    quoted[n - 2..].copy_from_slice(&sent_quote[n - 2..]);
    quoted
}

fn icmp_errors_about_tracked_flows_are_translated_back(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let too_big = IcmpError::TooBig { mtu: 1400 };

    // A router between this node and the remote backend: fragmentation needed for the
    // SNATed SYN. The client must see it about the packet it sent (as this node
    // forwarded it: TTL one less). From a router's address, the stack forwards it.
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let syn = Pkt::tcp(f, client(40000), frontend, SYN);
    let sent = open_tcp(&fx, client(40000), frontend);
    let snat = snat_source(&fx, client(40000), frontend, IPPROTO_TCP);
    let error = Pkt::icmp_error(f, ROUTER_IP, NODE_IP, too_big, &quote(ip_of(&sent)));
    let want = Pkt::icmp_error(
        f,
        ROUTER_IP,
        CLIENT_IP,
        too_big,
        &quote(&syn.clone().routed().ip_bytes()),
    );
    expect(
        &fx,
        "frag needed from a router (SNAT flow)",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );
    assert_eq!(fx.counter(Counter::NpIcmpTranslated), 1);
    assert_ne!(snat.port(), NP_WEB_REMOTE);

    // Time exceeded about the same SYN, from the same router.
    let error = Pkt::icmp_error(
        f,
        ROUTER_IP,
        NODE_IP,
        IcmpError::TimeExceeded,
        &quote(ip_of(&sent)),
    );
    let want = Pkt::icmp_error(
        f,
        ROUTER_IP,
        CLIENT_IP,
        IcmpError::TimeExceeded,
        &quote(&syn.clone().routed().ip_bytes()),
    );
    expect(
        &fx,
        "time exceeded from a router (SNAT flow)",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );

    // The remote backend itself: port unreachable for a SNATed UDP datagram. The
    // error then comes from the frontend the client addressed (the backend's address
    // means nothing to the client and need not be routable from it), so the program
    // routes it (redirect, TTL one less).
    let frontend = sa(NODE_IP, NP_DNS_REMOTE);
    let query = Pkt::udp(f, client(40001), frontend, b"anyone?");
    let sent = fx.ingress(&query.frame()).output;
    let error = Pkt::icmp_error(
        f,
        REMOTE_POD,
        NODE_IP,
        IcmpError::PortUnreachable,
        &quote(ip_of(&sent)),
    );
    let quoted = quote_with_sent_udp_checksum(&query.clone().routed().ip_bytes(), ip_of(&sent));
    let want = Pkt::icmp_error(f, NODE_IP, CLIENT_IP, IcmpError::PortUnreachable, &quoted).routed();
    expect(
        &fx,
        "port unreachable from the remote backend",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_REDIRECT,
        &want.frame(),
    );

    // The other way: the client's port unreachable about the backend's (SNATed) answer
    // goes to the backend, from the SNAT address its datagram went to.
    let snat = snat_source(&fx, client(40001), frontend, IPPROTO_UDP);
    let answer = Pkt::udp(f, REMOTE_DNS, snat, b"too late");
    let delivered = fx.ingress(&answer.frame()).output;
    let error = Pkt::icmp_error(
        f,
        CLIENT_IP,
        NODE_IP,
        IcmpError::PortUnreachable,
        &quote(ip_of(&delivered)),
    );
    let quoted =
        quote_with_sent_udp_checksum(&answer.clone().routed().ip_bytes(), ip_of(&delivered));
    let want =
        Pkt::icmp_error(f, NODE_IP, REMOTE_POD, IcmpError::PortUnreachable, &quoted).routed();
    expect(
        &fx,
        "port unreachable from the client about a SNATed answer",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_REDIRECT,
        &want.frame(),
    );

    // A local backend's port unreachable leaves through egress: same translation.
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let query = Pkt::udp(f, client(40002), frontend, b"anyone here?");
    let delivered = fx.ingress(&query.frame()).output;
    let error = Pkt::icmp_error(
        f,
        LOCAL_POD,
        CLIENT_IP,
        IcmpError::PortUnreachable,
        &quote(ip_of(&delivered)),
    );
    let quoted = quote_with_sent_udp_checksum(&query.ip_bytes(), ip_of(&delivered));
    let want = Pkt::icmp_error(f, NODE_IP, CLIENT_IP, IcmpError::PortUnreachable, &quoted);
    expect(
        &fx,
        "port unreachable from the local backend",
        Hook::Egress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );

    // A router on the way back to the client, about a local backend's reply (egress
    // saw the reply translated; the error comes in through ingress).
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    open_tcp(&fx, client(40003), frontend);
    let synack = Pkt::tcp(f, LOCAL_WEB, client(40003), SYN | ACK);
    let sent = fx.egress(&synack.frame()).output;
    let error = Pkt::icmp_error(f, ROUTER_IP, NODE_IP, too_big, &quote(ip_of(&sent)));
    let want = Pkt::icmp_error(f, ROUTER_IP, LOCAL_POD, too_big, &quote(&synack.ip_bytes()));
    expect(
        &fx,
        "frag needed about a local backend's reply",
        Hook::Ingress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );
    assert_eq!(fx.counter(Counter::NpIcmpTranslated), 6);

    // A parameter problem from the local backend about the client's query (its
    // pointer, an offset into the quoted packet, unchanged), through egress.
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let query = Pkt::udp(f, client(40004), frontend, b"odd");
    let delivered = fx.ingress(&query.frame()).output;
    let problem = IcmpError::ParameterProblem { pointer: 7 };
    let error = Pkt::icmp_error(f, LOCAL_POD, CLIENT_IP, problem, &quote(ip_of(&delivered)));
    let quoted = quote_with_sent_udp_checksum(&query.ip_bytes(), ip_of(&delivered));
    let want = Pkt::icmp_error(f, NODE_IP, CLIENT_IP, problem, &quoted);
    expect(
        &fx,
        "parameter problem from the local backend",
        Hook::Egress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );
    assert_eq!(fx.counter(Counter::NpIcmpTranslated), 7);

    // The node's own error: too big to forward a DNATed segment to the local pod,
    // sent to the client through egress, must be about the segment the client sent.
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let data = Pkt::tcp(f, client(40005), frontend, ACK).payload(&[0x55; 100]);
    open_tcp(&fx, client(40005), frontend);
    let delivered = fx.ingress(&data.frame()).output;
    let error = Pkt::icmp_error(f, NODE_IP, CLIENT_IP, too_big, &quote(ip_of(&delivered)));
    let want = Pkt::icmp_error(f, NODE_IP, CLIENT_IP, too_big, &quote(&data.ip_bytes()));
    expect(
        &fx,
        "the node's own packet too big about a DNATed segment",
        Hook::Egress,
        &error.frame(),
        TC_ACT_OK,
        &want.frame(),
    );
    assert_eq!(fx.counter(Counter::NpIcmpTranslated), 8);

    // An error about a flow nobody tracks, and ICMP that is no error, pass untouched.
    let foreign = Pkt::tcp(f, sa(NODE_IP, 22), client(50000), ACK);
    expect_untouched(
        &fx,
        "error about an untracked flow",
        &Pkt::icmp_error(f, ROUTER_IP, NODE_IP, too_big, &quote(&foreign.ip_bytes())).frame(),
    );
    expect_untouched(
        &fx,
        "echo request",
        &Pkt::echo_request(f, CLIENT_IP, NODE_IP).frame(),
    );
    assert_eq!(fx.counter(Counter::NpIcmpTranslated), 8);
}

/// An ICMP error about a tracked flow, quoting the whole packet, cut at every length
/// after its own header comes out either as it went in or as its whole translation cut
/// at the same length: never half rewritten.
fn an_icmp_error_cut_anywhere_is_translated_whole_or_not_at_all(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let syn = Pkt::tcp(f, client(40000), frontend, SYN).payload(&[0x44; 32]);
    let sent = fx.ingress(&syn.frame()).output;
    let too_big = IcmpError::TooBig { mtu: 1400 };
    let error = Pkt::icmp_error(f, ROUTER_IP, NODE_IP, too_big, ip_of(&sent)).frame();
    // The whole translation: the quoted TCP checksum stays as sent (see above).
    let mut quoted = syn.clone().routed().ip_bytes();
    let csum = syn.ip_hlen() + 16;
    quoted[csum..csum + 2].copy_from_slice(&ip_of(&sent)[csum..csum + 2]);
    let translated = Pkt::icmp_error(f, ROUTER_IP, CLIENT_IP, too_big, &quoted).frame();
    assert_eq!(fx.ingress(&error).output, translated, "the whole error");
    let hlen = 14 + syn.ip_hlen() + 8;
    for cut in hlen..error.len() {
        let input = error[..cut].to_vec();
        let run = fx.ingress(&input);
        assert!(
            run.output == input || run.output == translated[..cut],
            "cut at {cut} of {}: verdict {}, half rewritten:\n{}",
            error.len(),
            run.verdict,
            crate::packet::diff(&translated[..cut], &run.output).unwrap_or_default()
        );
    }
}
