//! IP fragments: later fragments follow their first fragment's translation.
use lb_common::Counter;

use crate::{
    common::{
        LOCAL_DNS, NODE_IP, NP_DNS_LOCAL, NP_DNS_REMOTE, REMOTE_DNS, check, client, expect,
        fixture, sa, snat_source,
    },
    harness::{Hook, TC_ACT_OK, TC_ACT_REDIRECT},
    packet::{IPPROTO_UDP, Pkt, checksum_problems, diff, reassemble},
};

#[test]
fn fragments_follow_their_first_fragment() {
    let Some(fx) = fixture() else { return };
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let payload: Vec<u8> = (0..1400u32).map(|i| (i * 7 + 3) as u8).collect();
    let cuts = [512, 1024];

    // Client -> NodePort, three fragments: the first carries the UDP header (its
    // checksum covers the whole datagram), the others only data.
    let datagram = Pkt::udp(client(40000), frontend, &payload).id(0x2222);
    let input = datagram.fragments(&cuts);
    let want = datagram.clone().to(LOCAL_DNS).fragments(&cuts);
    let mut outputs = Vec::new();
    for (i, (frag, want)) in input.iter().zip(&want).enumerate() {
        let run = expect(
            &fx,
            &format!("client fragment {i}"),
            Hook::Ingress,
            frag,
            TC_ACT_OK,
            want,
        );
        outputs.push(run.output);
    }
    let whole = reassemble(&outputs);
    let problems = checksum_problems(&whole);
    assert!(
        problems.is_empty(),
        "the reassembled translated datagram: {problems:?}"
    );
    assert_eq!(whole, datagram.clone().to(LOCAL_DNS).no_df().frame());

    // The backend's fragmented answer through egress.
    let answer = Pkt::udp(LOCAL_DNS, client(40000), &payload).id(0x3333);
    let input = answer.fragments(&cuts);
    let want = answer.clone().from(frontend).fragments(&cuts);
    let mut outputs = Vec::new();
    for (i, (frag, want)) in input.iter().zip(&want).enumerate() {
        outputs.push(
            expect(
                &fx,
                &format!("answer fragment {i}"),
                Hook::Egress,
                frag,
                TC_ACT_OK,
                want,
            )
            .output,
        );
    }
    assert!(checksum_problems(&reassemble(&outputs)).is_empty());

    // SNAT: a fragmented datagram to a remote backend.
    let frontend = sa(NODE_IP, NP_DNS_REMOTE);
    let datagram = Pkt::udp(client(40001), frontend, &payload).id(0x4444);
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
    for (i, frag) in input.iter().enumerate().skip(1) {
        outputs.push(
            expect(
                &fx,
                &format!("SNAT fragment {i}"),
                Hook::Ingress,
                frag,
                TC_ACT_REDIRECT,
                &want[i],
            )
            .output,
        );
    }
    assert!(checksum_problems(&reassemble(&outputs)).is_empty());

    // A later fragment whose first fragment was never seen: untouched, counted.
    let unknown_before = fx.counter(Counter::NpFragUnknown);
    let orphan = Pkt::udp(client(40002), sa(NODE_IP, NP_DNS_LOCAL), &payload)
        .id(0x7777)
        .fragments(&cuts);
    let run = fx.ingress(&orphan[1]);
    assert_eq!(run.verdict, TC_ACT_OK);
    if let Some(d) = diff(&orphan[1], &run.output) {
        panic!("orphan fragment must pass untouched: {d}");
    }
    assert_eq!(
        fx.counter(Counter::NpFragUnknown),
        unknown_before + 1,
        "nodeport_fragment_unknown"
    );
}
