//! What is never answered (a RST, a fragment after the first, a broadcast frame, a
//! source that is no unicast address, a GRO-merged segment, an ICMP error) and the answers' budget: the node
//! must not become a reflector. Such packets to a rejecting frontend are dropped
//! unanswered, and counted.
use std::time::{Duration, Instant};

use lb_common::{Counter, reject_rate};

use crate::{
    common::{
        CLIENT_IP, EMPTY_EXT_IP, EMPTY_LB_IP, LB_IP, Unreachable, client, expect_answer,
        expect_dropped, expect_untouched, fixture, rst_for, sa, unreachable_for,
    },
    family::{Family, each_family},
    harness::{Hook, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    packet::{ACK, IcmpError, Pkt, RST, SYN},
};

each_family!(
    a_datagram_cut_anywhere_is_answered_with_what_is_there_or_dropped,
    no_answer_to_a_rst_a_later_fragment_a_broadcast_a_bogus_source_or_a_gro_segment,
    answers_stop_after_the_budget_and_resume_after_a_pause
);

fn no_answer_to_a_rst_a_later_fragment_a_broadcast_a_bogus_source_or_a_gro_segment(f: Family) {
    let Some(fx) = fixture(f) else { return };
    expect_dropped(
        &fx,
        "RST to a LoadBalancer IP without endpoints",
        &Pkt::tcp(f, client(40000), sa(EMPTY_LB_IP, 80), RST | ACK).frame(),
    );
    expect_dropped(
        &fx,
        "RST to an unknown port of an LB IP",
        &Pkt::tcp(f, client(40001), sa(LB_IP, 443), RST).frame(),
    );

    // A fragmented datagram: the first fragment carries the UDP header and is
    // answered (quoting it); the later ones are dropped unanswered.
    let query = Pkt::udp(f, client(40002), sa(EMPTY_EXT_IP, 53), &[0x71; 40]).id(0x7777);
    let frags = query.fragments(&[24]);
    expect_answer(
        &fx,
        "first fragment",
        &frags[0],
        &unreachable_for(&frags[0], Unreachable::Port),
    );
    expect_dropped(&fx, "later fragment", &frags[1]);
    // A later fragment whose first was never seen is nobody's (the ports are unknown).
    let other = Pkt::udp(f, client(40003), sa(EMPTY_EXT_IP, 53), &[0x72; 40])
        .id(0x7778)
        .fragments(&[24]);
    expect_untouched(&fx, "later fragment of an unseen datagram", &other[1]);

    // To the Ethernet broadcast address, and from sources that are no unicast address.
    let mut broadcast = Pkt::tcp(f, client(40004), sa(EMPTY_LB_IP, 80), SYN).frame();
    broadcast[..6].copy_from_slice(&[0xff; 6]);
    expect_dropped(&fx, "SYN in a broadcast frame", &broadcast);
    let mut multicast = broadcast.clone();
    multicast[..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]);
    expect_dropped(&fx, "SYN in a multicast frame", &multicast);
    // (IPv6: unspecified, loopback, multicast, IPv4-mapped.)
    let bogus_sources = match f {
        Family::V4 => ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"],
        Family::V6 => ["::", "::1", "ff02::1", "::ffff:192.0.2.100"],
    };
    for bogus in bogus_sources {
        let mut syn = Pkt::tcp(f, client(40005), sa(EMPTY_LB_IP, 80), SYN);
        syn.src = bogus.parse().unwrap();
        expect_dropped(&fx, &format!("SYN from {bogus}"), &syn.frame());
    }
    // A GRO-merged segment (CHECKSUM_PARTIAL in the kernel): unanswered; the same
    // segment alone is answered.
    let data = Pkt::tcp(f, client(40007), sa(EMPTY_LB_IP, 80), ACK).payload(&[0x62; 2896]);
    let run = fx.run_gso(Hook::Ingress, &data.frame(), 2, 1448);
    assert_eq!(
        run.verdict, TC_ACT_SHOT,
        "a GRO-merged segment is not answered"
    );
    assert_eq!(run.output, data.frame());
    expect_answer(&fx, "the segment alone", &data.frame(), &rst_for(&data));
    assert_eq!(fx.counter(Counter::NpRejectUnanswered), 2 + 1 + 2 + 4 + 1);
    assert_eq!(fx.counter(Counter::NpRejected), 2);
    assert_eq!(fx.counter(Counter::NpRejectLimited), 0);

    // An ICMP error about a packet to a VIP goes through the ICMP path: it is about no
    // tracked flow, so it passes untouched, never answered.
    let syn = Pkt::tcp(f, client(40006), sa(EMPTY_LB_IP, 80), SYN);
    let quoted = syn.ip_bytes()[..syn.ip_hlen() + 8].to_vec();
    let error = Pkt::icmp_error(
        f,
        CLIENT_IP,
        EMPTY_LB_IP,
        IcmpError::PortUnreachable,
        &quoted,
    );
    expect_untouched(&fx, "ICMP error to a VIP", &error.frame());
    assert_eq!(fx.counter(Counter::NpRejected), 2);
}

/// Pins the calling thread to the CPU it runs on: the budget is per CPU, and
/// BPF_PROG_TEST_RUN runs the program on the caller's CPU.
fn pin_to_this_cpu() {
    // SAFETY: sched_getcpu has no preconditions; the set is a zeroed cpu_set_t with one
    // bit set, passed with its size, for the calling thread (pid 0).
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn answers_stop_after_the_budget_and_resume_after_a_pause(f: Family) {
    let Some(fx) = fixture(f) else { return };
    pin_to_this_cpu();
    let sent = reject_rate::BURST + 1_000;
    let mut answered = 0u64;
    let mut limited = 0u64;
    let start = Instant::now();
    for i in 0..sent {
        let syn = Pkt::tcp(f, client(20_000 + i as u16), sa(EMPTY_LB_IP, 80), SYN);
        let run = fx.ingress(&syn.frame());
        match run.verdict {
            TC_ACT_REDIRECT => {
                assert_eq!(run.output, rst_for(&syn).reply_frame(), "answer {i}");
                answered += 1;
            }
            TC_ACT_SHOT => {
                assert_eq!(
                    run.output,
                    syn.frame(),
                    "a limited packet is dropped as it came"
                );
                limited += 1;
            }
            other => panic!("SYN {i}: verdict {other}"),
        }
    }
    let elapsed = start.elapsed();
    // A full bucket, plus what refilled while the loop ran (one answer per interval).
    let refilled = elapsed.as_nanos() as u64 / reject_rate::INTERVAL_NS + 1;
    eprintln!("{sent} SYNs in {elapsed:?}: {answered} answered, {limited} limited");
    assert!(answered >= reject_rate::BURST, "{answered} answered");
    assert!(
        answered <= reject_rate::BURST + refilled,
        "{answered} answered in {elapsed:?}: more than the budget"
    );
    assert!(limited > 0, "the budget never ran out in {elapsed:?}");
    assert_eq!(fx.counter(Counter::NpRejected), answered);
    assert_eq!(fx.counter(Counter::NpRejectLimited), limited);

    // The budget refills with time: one answer per interval.
    std::thread::sleep(Duration::from_nanos(3 * reject_rate::INTERVAL_NS));
    let frame = Pkt::udp(f, client(40000), sa(EMPTY_EXT_IP, 53), b"q").frame();
    expect_answer(
        &fx,
        "after a pause",
        &frame,
        &unreachable_for(&frame, Unreachable::Port),
    );
}

/// A datagram to an external IP without endpoints cut at every length after its IP
/// header (IPv6: after extension headers) is answered quoting what is there (IPv4: its
/// header and 8 bytes, when there), or dropped unanswered: the answer never quotes
/// bytes the packet does not have, and its checksums are right.
fn a_datagram_cut_anywhere_is_answered_with_what_is_there_or_dropped(f: Family) {
    let Some(fx) = fixture(f) else { return };
    let query = Pkt::udp(f, client(40000), sa(EMPTY_EXT_IP, 53), &[0x61; 40]);
    let query = match f {
        Family::V4 => query.options(&[1, 1, 1, 0]),
        Family::V6 => query.ext(&[crate::packet::Ext::hop_by_hop()]),
    };
    let full = query.frame();
    let hlen = 14 + query.ip_hlen();
    let mut answered = 0;
    for cut in hlen..full.len() {
        let input = full[..cut].to_vec();
        let run = fx.ingress(&input);
        if run.verdict == TC_ACT_SHOT {
            assert_eq!(run.output, input, "cut at {cut}: dropped as it came");
            continue;
        }
        if cut < hlen + 4 {
            // No whole ports: not a flow, left to the stack.
            assert_eq!(
                (run.verdict, &run.output),
                (TC_ACT_OK, &input),
                "cut at {cut}: without ports"
            );
            continue;
        }
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "cut at {cut}");
        let want = unreachable_for(&input, Unreachable::Port).reply_frame();
        if let Some(d) = crate::packet::diff(&want, &run.output) {
            panic!("cut at {cut} of {}: the answer differs:\n{d}", full.len());
        }
        let problems = crate::packet::checksum_problems(&run.output);
        assert!(problems.is_empty(), "cut at {cut}: {problems:?}");
        answered += 1;
    }
    // Every cut that holds the UDP header is answered (the budget holds them all).
    assert_eq!(answered, full.len() - (hlen + 8));
}
