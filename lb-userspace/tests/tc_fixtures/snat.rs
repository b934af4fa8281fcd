//! NodePort SNAT to a remote backend, and its replies back in through ingress.
use std::net::Ipv4Addr;

use lb_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_FLAG_ESTABLISHED, CT_FLAG_ROUTE, CT_FLAG_SNAT, Counter,
};

use crate::{
    common::{
        NODE_IP, NODE_IP2, NP_WEB_REMOTE, REMOTE_WEB, Xlate, backend_id, check, client, ct_entry,
        expect, expect_snat, fixture, sa, snat_source, xlate,
    },
    family::{Family, each_family},
    harness::{Hook, TC_ACT_OK, TC_ACT_REDIRECT},
    packet::{ACK, IPPROTO_TCP, PSH, Pkt, SYN},
};

each_family!(nodeport_snat_to_a_remote_backend_and_back);

fn nodeport_snat_to_a_remote_backend_and_back(f: Family) {
    let Some(fx) = fixture(f) else { return };
    for (node_ip, cport) in [(NODE_IP, 40000), (NODE_IP2, 40001)] {
        let frontend = sa(node_ip, NP_WEB_REMOTE);
        let syn = Pkt::tcp(f, client(cport), frontend, SYN);
        let (snat, out) = expect_snat(&fx, &format!("SYN via {node_ip}"), &syn, REMOTE_WEB);
        let out = out.output;

        let original = ct_entry(&fx, client(cport), frontend, IPPROTO_TCP);
        assert_eq!(
            xlate(&original),
            Xlate {
                to_src: snat,
                to_dst: REMOTE_WEB,
                flags: CT_FLAG_SNAT | CT_FLAG_ROUTE,
                direction: CT_DIR_ORIGINAL
            }
        );
        let reply = ct_entry(&fx, REMOTE_WEB, snat, IPPROTO_TCP);
        assert_eq!(
            xlate(&reply),
            Xlate {
                to_src: frontend,
                to_dst: client(cport),
                flags: CT_FLAG_SNAT | CT_FLAG_ROUTE,
                direction: CT_DIR_REPLY
            },
            "the reply answers from the address the client used"
        );
        assert_eq!(
            original.backend_id,
            backend_id(&fx, REMOTE_WEB, IPPROTO_TCP)
        );

        // The translated SYN leaves through egress untouched (no second translation).
        expect(
            &fx,
            "translated SYN on egress",
            Hook::Egress,
            &out,
            TC_ACT_OK,
            &out,
        );

        // The backend's SYN-ACK to the SNAT address comes back in and goes to the
        // client, from the node address: routed by the program too.
        let synack = Pkt::tcp(f, REMOTE_WEB, snat, SYN | ACK);
        expect(
            &fx,
            "SYN-ACK from the remote backend",
            Hook::Ingress,
            &synack.frame(),
            TC_ACT_REDIRECT,
            &synack
                .clone()
                .from(frontend)
                .to(client(cport))
                .routed()
                .frame(),
        );
        let reply = ct_entry(&fx, REMOTE_WEB, snat, IPPROTO_TCP);
        assert_eq!(
            reply.flags,
            CT_FLAG_SNAT | CT_FLAG_ESTABLISHED | CT_FLAG_ROUTE,
            "a SYN-ACK establishes the reply direction"
        );

        // Data both ways.
        let data =
            Pkt::tcp(f, client(cport), frontend, PSH | ACK).payload(b"GET / HTTP/1.1\r\n\r\n");
        expect(
            &fx,
            "client data",
            Hook::Ingress,
            &data.frame(),
            TC_ACT_REDIRECT,
            &data.clone().from(snat).to(REMOTE_WEB).routed().frame(),
        );
        let answer =
            Pkt::tcp(f, REMOTE_WEB, snat, PSH | ACK).payload(b"HTTP/1.1 200 OK\r\n\r\nhello");
        expect(
            &fx,
            "backend data",
            Hook::Ingress,
            &answer.frame(),
            TC_ACT_REDIRECT,
            &answer
                .clone()
                .from(frontend)
                .to(client(cport))
                .routed()
                .frame(),
        );
    }
    let ports: Vec<u16> = [(NODE_IP, 40000), (NODE_IP2, 40001)]
        .iter()
        .map(|(ip, p)| snat_source(&fx, client(*p), sa(*ip, NP_WEB_REMOTE), IPPROTO_TCP).port())
        .collect();
    assert_ne!(
        ports[0], ports[1],
        "two flows to one backend never share an SNAT port"
    );
    assert_eq!(fx.counter(Counter::NpNewFlow), 2);
    assert_eq!(fx.ct_entries().len(), 4);

    // A reply towards a client this node has no route to: not routed by the program
    // (no redirect, TTL untouched); it goes up translated and the miss is counted.
    let lost = sa(Ipv4Addr::new(100, 64, 0, 5), 40002);
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let (snat, _) = expect_snat(
        &fx,
        "SYN from an unroutable client",
        &Pkt::tcp(f, lost, frontend, SYN),
        REMOTE_WEB,
    );
    let inconsistent = fx.counter(Counter::Inconsistent);
    let synack = Pkt::tcp(f, REMOTE_WEB, snat, SYN | ACK);
    expect(
        &fx,
        "SYN-ACK to an unroutable client",
        Hook::Ingress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(frontend).to(lost).frame(),
    );
    assert_eq!(fx.counter(Counter::Inconsistent), inconsistent + 1);

    // TTL 1: translated, but left to the stack (which answers time exceeded).
    let syn = Pkt::tcp(f, client(40003), frontend, SYN).ttl(1);
    let run = fx.ingress(&syn.frame());
    let snat = snat_source(&fx, client(40003), frontend, IPPROTO_TCP);
    check(
        &fx,
        "SYN with TTL 1",
        Hook::Ingress,
        &syn.frame(),
        &run,
        TC_ACT_OK,
        &syn.clone().from(snat).to(REMOTE_WEB).frame(),
    );
}
