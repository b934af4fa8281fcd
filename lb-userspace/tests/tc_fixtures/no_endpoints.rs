//! Verdicts for frontends without usable endpoints, and for addresses that are not ours.
use lb_common::Counter;

use crate::{
    common::{
        EMPTY_LB_IP, NODE_IP, NP_DNS_LOCAL, NP_LOCAL_POLICY, NP_NO_ENDPOINTS, NP_WEB_LOCAL,
        STRANGER_IP, client, expect_untouched, fixture, sa, verdict_name,
    },
    harness::TC_ACT_SHOT,
    packet::{Pkt, SYN},
};

#[test]
fn frontends_without_usable_endpoints_and_foreign_addresses() {
    let Some(fx) = fixture() else { return };

    // externalTrafficPolicy Local, no endpoint on this node: dropped.
    let syn = Pkt::tcp(client(40000), sa(NODE_IP, NP_LOCAL_POLICY), SYN);
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
        &Pkt::tcp(client(40001), sa(NODE_IP, NP_NO_ENDPOINTS), SYN).frame(),
    );
    // ... but a LoadBalancer IP without endpoints is no address of ours: dropped.
    let run = fx.ingress(&Pkt::tcp(client(40002), sa(EMPTY_LB_IP, 80), SYN).frame());
    assert_eq!(
        run.verdict, TC_ACT_SHOT,
        "LoadBalancer IP without endpoints"
    );
    assert_eq!(fx.counter(Counter::NpDropped), 2);

    // A NodePort port on an address that is neither a node address nor a frontend.
    expect_untouched(
        &fx,
        "NodePort on a foreign address",
        &Pkt::tcp(client(40003), sa(STRANGER_IP, NP_WEB_LOCAL), SYN).frame(),
    );
    expect_untouched(
        &fx,
        "UDP NodePort on a foreign address",
        &Pkt::udp(client(40004), sa(STRANGER_IP, NP_DNS_LOCAL), b"q").frame(),
    );
    assert_eq!(fx.counter(Counter::NpNewFlow), 0);
    assert!(fx.ct_entries().is_empty());
}
