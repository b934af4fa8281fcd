//! Reverse NAT on egress: a local backend's replies leave as the frontend.
use lb_common::{CT_FLAG_ESTABLISHED, CT_FLAG_ROUTE, Counter, ct_lifetime};

use crate::{
    common::{
        LOCAL_WEB, NODE_IP, NP_WEB_LOCAL, assert_expires, client, ct_entry, expect, fixture,
        open_tcp, sa,
    },
    family::{Family, each_family},
    harness::{Hook, TC_ACT_OK, monotonic_ns},
    packet::{ACK, IPPROTO_TCP, PSH, Pkt, SYN},
};

each_family!(egress_reverse_nat_of_a_local_backend_reply);

fn egress_reverse_nat_of_a_local_backend_reply(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    open_tcp(&fx, client(40000), frontend);

    let synack = Pkt::tcp(f, LOCAL_WEB, client(40000), SYN | ACK);
    let before = monotonic_ns();
    expect(
        &fx,
        "SYN-ACK of the local backend",
        Hook::Egress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(frontend).frame(),
    );
    let after = monotonic_ns();
    let reply = ct_entry(&fx, LOCAL_WEB, client(40000), IPPROTO_TCP);
    assert_eq!(reply.flags, CT_FLAG_ESTABLISHED | CT_FLAG_ROUTE);
    assert_expires(
        &reply,
        before,
        after,
        ct_lifetime::TCP_ESTABLISHED_NS,
        "reply entry after a SYN-ACK",
    );

    let ack = Pkt::tcp(f, client(40000), frontend, ACK);
    expect(
        &fx,
        "client ACK",
        Hook::Ingress,
        &ack.frame(),
        TC_ACT_OK,
        &ack.clone().to(LOCAL_WEB).frame(),
    );
    assert_eq!(
        ct_entry(&fx, client(40000), frontend, IPPROTO_TCP).flags,
        CT_FLAG_ESTABLISHED
    );

    let answer = Pkt::tcp(f, LOCAL_WEB, client(40000), PSH | ACK).payload(&[0x5a; 1000]);
    expect(
        &fx,
        "backend data",
        Hook::Egress,
        &answer.frame(),
        TC_ACT_OK,
        &answer.clone().from(frontend).frame(),
    );
    assert_eq!(fx.counter(Counter::NpTracked), 3);

    // The reply of the backend to a client it has no tracked flow with is not ours.
    let stray = Pkt::tcp(f, LOCAL_WEB, client(40999), PSH | ACK).payload(b"x");
    expect(
        &fx,
        "untracked reply",
        Hook::Egress,
        &stray.frame(),
        TC_ACT_OK,
        &stray.frame(),
    );
}
