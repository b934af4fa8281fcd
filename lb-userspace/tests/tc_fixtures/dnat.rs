//! NodePort DNAT to a local backend: the client's address is kept.
use lb_common::{CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_FLAG_ROUTE, Counter, ct_lifetime};

use crate::{
    common::{
        LOCAL_WEB, NODE_IP, NP_WEB_LOCAL, Xlate, assert_expires, backend_id, client, ct_entry,
        expect, fixture, sa, xlate,
    },
    family::{Family, each_family},
    harness::{Hook, TC_ACT_OK, monotonic_ns},
    packet::{IPPROTO_TCP, Pkt, SYN},
};

each_family!(nodeport_dnat_to_a_local_backend_keeps_the_client_address);

fn nodeport_dnat_to_a_local_backend_keeps_the_client_address(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let syn = Pkt::tcp(f, client(40000), frontend, SYN);

    let before = monotonic_ns();
    expect(
        &fx,
        "SYN to the NodePort",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    let after = monotonic_ns();

    let id = backend_id(&fx, LOCAL_WEB, IPPROTO_TCP);
    let original = ct_entry(&fx, client(40000), frontend, IPPROTO_TCP);
    assert_eq!(
        xlate(&original),
        Xlate {
            to_src: client(40000),
            to_dst: LOCAL_WEB,
            flags: 0,
            direction: CT_DIR_ORIGINAL
        },
        "original direction: DNAT only"
    );
    assert_expires(
        &original,
        before,
        after,
        ct_lifetime::TCP_SYN_NS,
        "original entry after a SYN",
    );
    assert_eq!(original.backend_id, id);
    let reply = ct_entry(&fx, LOCAL_WEB, client(40000), IPPROTO_TCP);
    assert_eq!(
        xlate(&reply),
        Xlate {
            to_src: frontend,
            to_dst: client(40000),
            flags: CT_FLAG_ROUTE, // replies leave as the NodePort, a node address
            direction: CT_DIR_REPLY
        },
        "reply direction: back to the frontend"
    );
    assert_expires(
        &reply,
        before,
        after,
        ct_lifetime::TCP_SYN_NS,
        "reply entry after a SYN",
    );
    assert_eq!(reply.backend_id, id);
    assert_eq!(fx.ct_entries().len(), 2, "one entry per direction");
    assert_eq!(fx.counter(Counter::NpNewFlow), 1);

    // The same flow again (a retransmitted SYN) is tracked, not a new flow.
    expect(
        &fx,
        "retransmitted SYN",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    assert_eq!(fx.counter(Counter::NpNewFlow), 1);
    assert_eq!(fx.counter(Counter::NpTracked), 1);
    assert_eq!(fx.ct_entries().len(), 2);
}
