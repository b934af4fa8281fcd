//! A LoadBalancer or external IP on a port (or protocol) none of its services has is
//! refused, not dropped: its address wildcard is in the external scope, so a known VIP's
//! unknown port gets a RST or an ICMP unreachable, as a closed port of a host would
//! (IPv6: another protocol gets a parameter problem pointing at its Next Header).
use lb_common::Counter;

use crate::{
    common::{
        CLIENT_IP, EMPTY_LB_IP, EXTERNAL_IP, LB_IP, LOCAL_WEB, OUTSIDER_IP, STRANGER_IP,
        Unreachable, client, expect, expect_answer, expect_untouched, fixture, rst_for, sa,
        unreachable_for,
    },
    family::{Family, each_family},
    harness::{Hook, TC_ACT_OK},
    packet::{Ext, IPPROTO_GRE, Pkt, SYN},
};

each_family!(
    a_known_vip_on_an_unknown_port_is_refused,
    another_protocol_to_a_vip_gets_protocol_unreachable,
    icmp_to_a_vip_is_not_answered
);

fn a_known_vip_on_an_unknown_port_is_refused(f: Family) {
    let Some(fx) = fixture(f) else { return };
    // The service port still forwards.
    let syn = Pkt::tcp(f, client(40000), sa(LB_IP, 80), SYN);
    expect(
        &fx,
        "the LB IP's service port",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );

    for (what, vip) in [
        ("LB IP", LB_IP),
        ("external IP", EXTERNAL_IP),
        ("empty LB IP", EMPTY_LB_IP),
    ] {
        let syn = Pkt::tcp(f, client(40001), sa(vip, 443), SYN);
        expect_answer(
            &fx,
            &format!("{what}, TCP to another port"),
            &syn.frame(),
            &rst_for(&syn),
        );
        // UDP on the service's own port number: no UDP service there.
        let frame = Pkt::udp(f, client(40002), sa(vip, 80), b"q").frame();
        expect_answer(
            &fx,
            &format!("{what}, UDP to the TCP service's port"),
            &frame,
            &unreachable_for(&frame, Unreachable::Port),
        );
    }
    // loadBalancerSourceRanges guard the service ports; an unknown port is refused to
    // every source, as it would be by any host.
    let syn = Pkt::tcp(f, sa(OUTSIDER_IP, 40003), sa(LB_IP, 443), SYN);
    expect_answer(
        &fx,
        "outside the source ranges, unknown port",
        &syn.frame(),
        &rst_for(&syn),
    );
    assert_eq!(fx.counter(Counter::NpRejected), 7);
    assert_eq!(fx.counter(Counter::NpNewFlow), 1);
    assert_eq!(
        fx.ct_entries().len(),
        2,
        "only the forwarded flow is tracked"
    );
}

fn another_protocol_to_a_vip_gets_protocol_unreachable(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let gre = Pkt::raw(
        f,
        CLIENT_IP,
        LB_IP,
        IPPROTO_GRE,
        &[0, 0, 0x08, 0, 1, 2, 3, 4, 5, 6],
    )
    .frame();
    expect_answer(
        &fx,
        "GRE to an LB IP",
        &gre,
        &unreachable_for(&gre, Unreachable::Protocol),
    );
    if f == Family::V6 {
        // After extension headers: the pointer names the last Next Header field.
        let gre = Pkt::raw(
            f,
            CLIENT_IP,
            LB_IP,
            IPPROTO_GRE,
            &[0, 0, 0x08, 0, 1, 2, 3, 4],
        )
        .ext(&[Ext::hop_by_hop(), Ext::dest_opts()])
        .frame();
        expect_answer(
            &fx,
            "GRE after extension headers",
            &gre,
            &unreachable_for(&gre, Unreachable::Protocol),
        );
    }
    // Shorter than the 8 bytes an ICMP error must quote: dropped unanswered.
    let short = Pkt::raw(f, CLIENT_IP, LB_IP, IPPROTO_GRE, &[0, 0, 0x08, 0]).frame();
    crate::common::expect_dropped(&fx, "GRE with 4 bytes", &short);
    assert_eq!(fx.counter(Counter::NpRejectUnanswered), 1);
    // Not a service address: untouched.
    let foreign = Pkt::raw(f, CLIENT_IP, STRANGER_IP, IPPROTO_GRE, &[0; 12]).frame();
    expect_untouched(&fx, "GRE to a foreign address", &foreign);
    let answered = match f {
        Family::V4 => 1,
        Family::V6 => 2,
    };
    assert_eq!(fx.counter(Counter::NpRejected), answered);
}

fn icmp_to_a_vip_is_not_answered(f: Family) {
    let Some(fx) = fixture(f) else { return };
    for vip in [LB_IP, EMPTY_LB_IP, EXTERNAL_IP] {
        let ping = Pkt::echo_request(f, CLIENT_IP, vip);
        expect_untouched(&fx, &format!("ping to {vip}"), &ping.frame());
    }
    assert_eq!(fx.counter(Counter::NpRejected), 0);
    assert_eq!(fx.counter(Counter::NpRejectUnanswered), 0);
}
