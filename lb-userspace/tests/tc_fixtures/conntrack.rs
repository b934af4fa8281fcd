//! Conntrack lifetime: FIN and RST close flows, expired entries are not used, a SYN on
//! a closing flow starts afresh, one-way streams keep both entries alive.
use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_FLAG_CLOSING, CT_FLAG_ESTABLISHED, Counter, ct_lifetime,
};

use crate::{
    common::{
        CtEntry, LOCAL_DNS, LOCAL_WEB, NODE_IP, NP_DNS_LOCAL, NP_WEB_LOCAL, NP_WEB_REMOTE,
        REMOTE_WEB, assert_expires, client, ct_entry, ct_key, expect, expect_snat, fixture,
        open_tcp, sa, xlate,
    },
    family::{Family, each_family},
    harness::{Fixture, Hook, TC_ACT_OK, TC_ACT_REDIRECT, monotonic_ns},
    packet::{ACK, FIN, IPPROTO_TCP, IPPROTO_UDP, PSH, Pkt, RST, SYN},
};

each_family!(
    tcp_fin_and_rst_close_tracked_flows_and_expired_entries_are_not_used,
    a_syn_on_a_closing_flow_starts_afresh_and_one_way_streams_keep_both_entries
);

/// Both entries of a TCP flow, `original` (client to frontend) and `reply` (backend to
/// client or SNAT source), are closing after `event` and expire
/// [`ct_lifetime::TCP_CLOSING_NS`] after a moment in [before, after].
#[track_caller]
fn assert_closing(
    fx: &Fixture,
    event: &str,
    original: (SocketAddrV4, SocketAddrV4),
    reply: (SocketAddrV4, SocketAddrV4),
    before: u64,
    after: u64,
) {
    for (what, (src, dst)) in [("original", original), ("reply", reply)] {
        let entry = ct_entry(fx, src, dst, IPPROTO_TCP);
        assert!(
            entry.flags & CT_FLAG_CLOSING != 0,
            "{what} entry after {event}: flags {:#x}",
            entry.flags
        );
        assert_expires(
            &entry,
            before,
            after,
            ct_lifetime::TCP_CLOSING_NS,
            &format!("{what} entry after {event}"),
        );
    }
}

fn tcp_fin_and_rst_close_tracked_flows_and_expired_entries_are_not_used(f: Family) {
    let Some(mut fx) = fixture(f) else { return };

    // An established flow to a local backend.
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let c = client(40000);
    open_tcp(&fx, c, frontend);
    let synack = Pkt::tcp(f, LOCAL_WEB, c, SYN | ACK);
    expect(
        &fx,
        "SYN-ACK",
        Hook::Egress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(frontend).frame(),
    );
    let ack = Pkt::tcp(f, c, frontend, ACK);
    expect(
        &fx,
        "ACK",
        Hook::Ingress,
        &ack.frame(),
        TC_ACT_OK,
        &ack.clone().to(LOCAL_WEB).frame(),
    );
    assert_eq!(
        ct_entry(&fx, c, frontend, IPPROTO_TCP).flags,
        CT_FLAG_ESTABLISHED
    );

    // The client's FIN is translated and closes the flow, both directions.
    let fin = Pkt::tcp(f, c, frontend, FIN | ACK);
    let before = monotonic_ns();
    expect(
        &fx,
        "client FIN",
        Hook::Ingress,
        &fin.frame(),
        TC_ACT_OK,
        &fin.clone().to(LOCAL_WEB).frame(),
    );
    let after = monotonic_ns();
    assert_closing(&fx, "a FIN", (c, frontend), (LOCAL_WEB, c), before, after);
    // The backend's FIN and the last ACK are still translated.
    let fin_back = Pkt::tcp(f, LOCAL_WEB, c, FIN | ACK);
    expect(
        &fx,
        "backend FIN",
        Hook::Egress,
        &fin_back.frame(),
        TC_ACT_OK,
        &fin_back.clone().from(frontend).frame(),
    );
    expect(
        &fx,
        "last ACK",
        Hook::Ingress,
        &ack.frame(),
        TC_ACT_OK,
        &ack.clone().to(LOCAL_WEB).frame(),
    );
    let entry = ct_entry(&fx, c, frontend, IPPROTO_TCP);
    assert_eq!(entry.flags, CT_FLAG_ESTABLISHED | CT_FLAG_CLOSING);
    assert!(
        entry.expires_ns <= monotonic_ns() + ct_lifetime::TCP_CLOSING_NS,
        "the last ACK must not reopen the flow"
    );

    // A SNATed flow reset by the client: both entries close, so the SNAT port is free
    // again within seconds, not hours.
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let c = client(40001);
    let (snat, _) = expect_snat(
        &fx,
        "SYN (SNAT)",
        &Pkt::tcp(f, c, frontend, SYN),
        REMOTE_WEB,
    );
    let synack = Pkt::tcp(f, REMOTE_WEB, snat, SYN | ACK);
    expect(
        &fx,
        "SYN-ACK (SNAT)",
        Hook::Ingress,
        &synack.frame(),
        TC_ACT_REDIRECT,
        &synack.clone().from(frontend).to(c).routed().frame(),
    );
    let rst = Pkt::tcp(f, c, frontend, RST);
    let before = monotonic_ns();
    expect(
        &fx,
        "client RST",
        Hook::Ingress,
        &rst.frame(),
        TC_ACT_REDIRECT,
        &rst.clone().from(snat).to(REMOTE_WEB).routed().frame(),
    );
    let after = monotonic_ns();
    assert_closing(
        &fx,
        "a RST",
        (c, frontend),
        (REMOTE_WEB, snat),
        before,
        after,
    );
    // The backend's RST (answering a late segment) is translated too.
    let rst_back = Pkt::tcp(f, REMOTE_WEB, snat, RST);
    expect(
        &fx,
        "backend RST",
        Hook::Ingress,
        &rst_back.frame(),
        TC_ACT_REDIRECT,
        &rst_back.clone().from(frontend).to(c).routed().frame(),
    );

    // Expired entries are not used. A raw pair that would send client:40002 to a
    // backend that no longer exists, expired: the next packet is a new flow to the
    // real backend, and the entries are replaced.
    let now = monotonic_ns();
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let c = client(40002);
    let gone = sa(Ipv4Addr::new(10, 244, 9, 9), 9999);
    let stale = |to_src: SocketAddrV4, to_dst: SocketAddrV4, direction: u8| CtEntry {
        to_src,
        to_dst,
        flags: CT_FLAG_ESTABLISHED,
        direction,
        expires_ns: now - 1,
        backend_id: 999,
    };
    fx.put_ct(
        ct_key(c, frontend, IPPROTO_TCP),
        stale(c, gone, CT_DIR_ORIGINAL),
    );
    fx.put_ct(
        ct_key(gone, c, IPPROTO_TCP),
        stale(frontend, c, CT_DIR_REPLY),
    );
    let tracked = fx.counter(Counter::NpTracked);
    let data = Pkt::tcp(f, c, frontend, PSH | ACK).payload(b"late");
    expect(
        &fx,
        "packet of an expired flow",
        Hook::Ingress,
        &data.frame(),
        TC_ACT_OK,
        &data.clone().to(LOCAL_WEB).frame(),
    );
    let renewed = ct_entry(&fx, c, frontend, IPPROTO_TCP);
    assert_eq!(
        xlate(&renewed).to_dst,
        LOCAL_WEB,
        "the expired entry was replaced"
    );
    assert!(renewed.expires_ns > now);
    // The stale reply entry does not translate either.
    let late = Pkt::tcp(f, gone, c, PSH | ACK).payload(b"late answer");
    expect(
        &fx,
        "reply matching only an expired entry",
        Hook::Egress,
        &late.frame(),
        TC_ACT_OK,
        &late.frame(),
    );
    assert_eq!(
        fx.counter(Counter::NpTracked),
        tracked,
        "expired entries count as untracked"
    );
}
fn a_syn_on_a_closing_flow_starts_afresh_and_one_way_streams_keep_both_entries(f: Family) {
    let Some(mut fx) = fixture(f) else { return };

    // A flow reset by the client, then the same tuple again: a new flow, not the
    // closing one's last seconds.
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let c = client(41000);
    open_tcp(&fx, c, frontend);
    let rst = Pkt::tcp(f, c, frontend, RST);
    expect(
        &fx,
        "client RST",
        Hook::Ingress,
        &rst.frame(),
        TC_ACT_OK,
        &rst.clone().to(LOCAL_WEB).frame(),
    );
    assert!(ct_entry(&fx, c, frontend, IPPROTO_TCP).flags & CT_FLAG_CLOSING != 0);
    let flows_before = fx.counter(Counter::NpNewFlow);
    let before = monotonic_ns();
    let syn = Pkt::tcp(f, c, frontend, SYN);
    expect(
        &fx,
        "SYN reusing the tuple",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    let after = monotonic_ns();
    assert_eq!(
        fx.counter(Counter::NpNewFlow),
        flows_before + 1,
        "the SYN starts a new flow"
    );
    let entry = ct_entry(&fx, c, frontend, IPPROTO_TCP);
    assert_eq!(
        entry.flags & CT_FLAG_CLOSING,
        0,
        "the new flow is not closing"
    );
    assert_expires(
        &entry,
        before,
        after,
        ct_lifetime::TCP_SYN_NS,
        "the new flow's entry",
    );

    // A one-way UDP stream from the backend: the client's entry lives as long as the
    // stream does, so the client's next datagram still reaches the same backend.
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let c = client(41001);
    let query = Pkt::udp(f, c, frontend, b"subscribe");
    expect(
        &fx,
        "UDP subscribe",
        Hook::Ingress,
        &query.frame(),
        TC_ACT_OK,
        &query.clone().to(LOCAL_DNS).frame(),
    );
    // Age both entries to a second from now, as if the client had been quiet.
    let soon = monotonic_ns() + 1_000_000_000;
    for (src, dst) in [(c, frontend), (LOCAL_DNS, c)] {
        let mut entry = ct_entry(&fx, src, dst, IPPROTO_UDP);
        entry.expires_ns = soon;
        fx.put_ct(ct_key(src, dst, IPPROTO_UDP), entry);
    }
    let before = monotonic_ns();
    let update = Pkt::udp(f, LOCAL_DNS, c, b"update");
    expect(
        &fx,
        "backend update",
        Hook::Egress,
        &update.frame(),
        TC_ACT_OK,
        &update.clone().from(frontend).frame(),
    );
    let after = monotonic_ns();
    let client_entry = ct_entry(&fx, c, frontend, IPPROTO_UDP);
    assert_expires(
        &client_entry,
        before,
        after,
        ct_lifetime::UDP_NS,
        "the quiet direction's entry",
    );
}
