//! IP fragments: later fragments follow their first fragment's translation.
use lb_common::Counter;

use crate::{
    common::{
        LOCAL_DNS, NODE_IP, NP_DNS_LOCAL, NP_DNS_REMOTE, REMOTE_DNS, check, client, expect,
        fixture, sa, snat_source,
    },
    family::{Family, each_family},
    harness::{Fixture, Hook, TC_ACT_OK, TC_ACT_REDIRECT},
    packet::{IPPROTO_UDP, Pkt, checksum_problems, diff, reassemble},
};

each_family!(fragments_follow_their_first_fragment);

/// Runs `input[first..]` one fragment after the other through `hook` as [`expect`]
/// does, each against its `want` (`what` and the fragment's index name it); returns the
/// outputs.
#[track_caller]
fn expect_fragments(
    fx: &Fixture,
    what: &str,
    hook: Hook,
    input: &[Vec<u8>],
    first: usize,
    verdict: u32,
    want: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    let mut outputs = Vec::new();
    // A loop, not a closure: #[track_caller] reaches `expect` through it.
    for (i, (frag, want)) in input.iter().zip(want).enumerate().skip(first) {
        let run = expect(fx, &format!("{what} {i}"), hook, frag, verdict, want);
        outputs.push(run.output);
    }
    outputs
}

fn fragments_follow_their_first_fragment(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let payload: Vec<u8> = (0..1400u32).map(|i| (i * 7 + 3) as u8).collect();
    let cuts = [512, 1024];

    // Client -> NodePort, three fragments: the first carries the UDP header (its
    // checksum covers the whole datagram), the others only data.
    let datagram = Pkt::udp(f, client(40000), frontend, &payload).id(0x2222);
    let input = datagram.fragments(&cuts);
    let want = datagram.clone().to(LOCAL_DNS).fragments(&cuts);
    let outputs = expect_fragments(
        &fx,
        "client fragment",
        Hook::Ingress,
        &input,
        0,
        TC_ACT_OK,
        &want,
    );
    let whole = reassemble(&outputs);
    let problems = checksum_problems(&whole);
    assert!(
        problems.is_empty(),
        "the reassembled translated datagram: {problems:?}"
    );
    assert_eq!(whole, datagram.clone().to(LOCAL_DNS).no_df().frame());

    // The backend's fragmented answer through egress.
    let answer = Pkt::udp(f, LOCAL_DNS, client(40000), &payload).id(0x3333);
    let input = answer.fragments(&cuts);
    let want = answer.clone().from(frontend).fragments(&cuts);
    let outputs = expect_fragments(
        &fx,
        "answer fragment",
        Hook::Egress,
        &input,
        0,
        TC_ACT_OK,
        &want,
    );
    assert!(checksum_problems(&reassemble(&outputs)).is_empty());

    // SNAT: a fragmented datagram to a remote backend.
    let frontend = sa(NODE_IP, NP_DNS_REMOTE);
    let datagram = Pkt::udp(f, client(40001), frontend, &payload).id(0x4444);
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
    outputs.extend(expect_fragments(
        &fx,
        "SNAT fragment",
        Hook::Ingress,
        &input,
        1,
        TC_ACT_REDIRECT,
        &want,
    ));
    assert!(checksum_problems(&reassemble(&outputs)).is_empty());

    // A later fragment whose first fragment was never seen: untouched, counted.
    let unknown_before = fx.counter(Counter::NpFragUnknown);
    let orphan = Pkt::udp(f, client(40002), sa(NODE_IP, NP_DNS_LOCAL), &payload)
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
