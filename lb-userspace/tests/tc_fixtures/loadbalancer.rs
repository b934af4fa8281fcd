//! LoadBalancer IPs and external IPs, and loadBalancerSourceRanges.
use lb_common::Counter;

use crate::{
    common::{
        EXTERNAL_IP, LB_IP, LOCAL_WEB, NODE_IP, NODE_IP2, NP_LB, OUTSIDER_IP, client, ct_key,
        expect, expect_untouched, fixture, sa,
    },
    family::{Family, each_family},
    harness::{Hook, TC_ACT_OK, TC_ACT_SHOT},
    packet::{ACK, IPPROTO_TCP, Pkt, SYN},
};

each_family!(loadbalancer_and_external_ips_with_source_ranges);

fn loadbalancer_and_external_ips_with_source_ranges(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let lb = sa(LB_IP, 80);

    // An allowed source (192.0.2.0/24) is translated; the reply answers as the LB IP.
    let syn = Pkt::tcp(f, client(40000), lb, SYN);
    expect(
        &fx,
        "SYN to the LB IP",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    let synack = Pkt::tcp(f, LOCAL_WEB, client(40000), SYN | ACK);
    expect(
        &fx,
        "SYN-ACK as the LB IP",
        Hook::Egress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(lb).frame(),
    );

    // Another source is dropped, and leaves no state.
    let denied = Pkt::tcp(f, sa(OUTSIDER_IP, 40000), lb, SYN);
    let run = fx.ingress(&denied.frame());
    assert_eq!(
        run.verdict, TC_ACT_SHOT,
        "a source outside loadBalancerSourceRanges"
    );
    assert_eq!(fx.counter(Counter::NpSourceDenied), 1);
    assert!(
        fx.ct(&ct_key(sa(OUTSIDER_IP, 40000), lb, IPPROTO_TCP))
            .is_none()
    );

    // Source ranges restrict the LB IP only: the external IP and the NodePort of the
    // same service take that source.
    let ext = sa(EXTERNAL_IP, 80);
    let syn = Pkt::tcp(f, sa(OUTSIDER_IP, 40001), ext, SYN);
    expect(
        &fx,
        "SYN to the external IP",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    let synack = Pkt::tcp(f, LOCAL_WEB, sa(OUTSIDER_IP, 40001), SYN | ACK);
    expect(
        &fx,
        "SYN-ACK as the external IP",
        Hook::Egress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(ext).frame(),
    );
    let np = sa(NODE_IP2, NP_LB);
    let syn = Pkt::tcp(f, sa(OUTSIDER_IP, 40002), np, SYN);
    expect(
        &fx,
        "SYN to the service's NodePort",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );

    // The LB IP and external IP match exactly: another port of those addresses is
    // refused (refused_ports.rs), and the service port on a node address is not a
    // frontend.
    expect_untouched(
        &fx,
        "service port on a node address",
        &Pkt::tcp(f, client(40005), sa(NODE_IP, 80), SYN).frame(),
    );
    assert_eq!(fx.counter(Counter::NpNewFlow), 3);

    // The range's edges in IPv6 (192.0.2.0/24 stands for fd00:192:0:2::/64): sources
    // no test address stands for (so no conntrack entry is read back after this).
    if f == Family::V6 {
        for (source, allowed) in [
            ("fd00:192:0:2::", true),
            ("fd00:192:0:2:ffff:ffff:ffff:ffff", true),
            ("fd00:192:0:1:ffff:ffff:ffff:ffff", false),
            ("fd00:192:0:3::", false),
            ("fd01:192:0:2::100", false),
        ] {
            let mut syn = Pkt::tcp(f, client(40010), lb, SYN);
            syn.src = source.parse().unwrap();
            if allowed {
                expect(
                    &fx,
                    &format!("SYN from {source}, inside the range"),
                    Hook::Ingress,
                    &syn.frame(),
                    TC_ACT_OK,
                    &syn.clone().to(LOCAL_WEB).frame(),
                );
            } else {
                let run = fx.ingress(&syn.frame());
                assert_eq!(
                    run.verdict, TC_ACT_SHOT,
                    "SYN from {source}, outside the range"
                );
            }
        }
        assert_eq!(fx.counter(Counter::NpSourceDenied), 1 + 3);
    }
}
