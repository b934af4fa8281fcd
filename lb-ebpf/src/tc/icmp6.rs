//! ICMPv6 errors about tracked flows (destination unreachable, packet too big, time
//! exceeded, parameter problem), translated like their flow's packets, as `icmp.rs`
//! does for IPv4 (the decisions, [`quoted_translation`] and [`outer_source`], are
//! shared). Packet Too Big is translated like the others, so path MTU discovery works
//! through the translation; untracked ones pass as they are. Informational messages
//! (echo, NDP, router advertisements, MLD) are never touched.
//!
//! IPv6 has no header checksum: the ICMPv6 checksum covers the message (the quoted
//! packet included) and a pseudo header with the outer addresses, so every address and
//! port rewritten here is accounted for in that one checksum.
use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use lb_common::{Addr6, Counter, IPPROTO_TCP, IPPROTO_UDP};

use super::{
    PASS,
    family::{Tuple, addr6_eq},
    hdr::{IP6_OFF, icmp6, ip6, l4},
    icmp::{outer_source, quoted_translation},
    parse::{Frag, load, load_pair},
    parse6::walk,
    rewrite::{set_addr6_in, set_port},
    route::route6,
};
use crate::{error::Error, family::V6, maps::count, maps6::is_node_addr6};

/// An ICMPv6 message at `icmp_off` from `outer_saddr` to `outer_daddr`: an error
/// about a packet of a tracked flow is translated (see [`quoted_translation`]);
/// everything else passes untouched.
#[inline(always)]
pub fn icmp_error(
    ctx: &TcContext,
    icmp_off: usize,
    outer_saddr: &Addr6,
    outer_daddr: &Addr6,
    ingress: bool,
) -> Result<i32, Error> {
    let Ok((icmp_type, _code)) = load_pair(ctx, icmp_off + icmp6::TYPE) else {
        return Ok(PASS);
    };
    if !matches!(
        icmp_type,
        icmp6::DEST_UNREACH | icmp6::PKT_TOOBIG | icmp6::TIME_EXCEED | icmp6::PARAMPROB
    ) {
        return Ok(PASS);
    }
    let inner = icmp_off + icmp6::HLEN;
    let Ok((ver_tc, _)) = load_pair(ctx, inner + ip6::VER_TC_FLOW) else {
        return Ok(PASS);
    };
    if ver_tc >> 4 != ip6::VERSION {
        return Ok(PASS);
    }
    // The quoted packet's own header chain, to its ports (a quote of a later fragment
    // has none).
    let Some(chain) = walk(ctx, inner) else {
        return Ok(PASS);
    };
    if (chain.proto != IPPROTO_TCP && chain.proto != IPPROTO_UDP) || chain.frag == Frag::Later {
        return Ok(PASS);
    }
    let inner_l4 = chain.off;
    // A quote cut short is a malformed error: passed. (One load at a time: see
    // parse6::parse.)
    let quoted = Tuple {
        saddr: load::<Addr6>(ctx, inner + ip6::SADDR)?,
        daddr: load::<Addr6>(ctx, inner + ip6::DADDR)?,
        sport: load::<u16>(ctx, inner_l4 + l4::SPORT)?,
        dport: load::<u16>(ctx, inner_l4 + l4::DPORT)?,
    };
    let Some(new) = quoted_translation::<V6>(&quoted, chain.proto) else {
        return Ok(PASS);
    };
    let csum = Some(icmp_off + icmp6::CSUM);
    // The quoted packet is message data: its addresses and ports are summed as such.
    if !addr6_eq(&new.saddr, &quoted.saddr) {
        let off = inner + ip6::SADDR;
        set_addr6_in(ctx, off, &quoted.saddr, &new.saddr, csum, 0)?;
    }
    if !addr6_eq(&new.daddr, &quoted.daddr) {
        let off = inner + ip6::DADDR;
        set_addr6_in(ctx, off, &quoted.daddr, &new.daddr, csum, 0)?;
    }
    let icmp_csum = icmp_off + icmp6::CSUM;
    if new.sport != quoted.sport {
        let off = inner_l4 + l4::SPORT;
        set_port(ctx, off, quoted.sport, new.sport, icmp_csum, 0)?;
    }
    if new.dport != quoted.dport {
        let off = inner_l4 + l4::DPORT;
        set_port(ctx, off, quoted.dport, new.dport, icmp_csum, 0)?;
    }
    // The outer addresses are in the checksum through its pseudo header.
    let pseudo = BPF_F_PSEUDO_HDR as u64;
    // The error goes to the quoted packet's (new) sender.
    if !addr6_eq(&new.saddr, outer_daddr) {
        let off = IP6_OFF + ip6::DADDR;
        set_addr6_in(ctx, off, outer_daddr, &new.saddr, csum, pseudo)?;
    }
    let mut new_saddr = *outer_saddr;
    if let Some(saddr) = outer_source::<V6>(outer_saddr, &quoted, &new) {
        let off = IP6_OFF + ip6::SADDR;
        set_addr6_in(ctx, off, outer_saddr, &saddr, csum, pseudo)?;
        new_saddr = saddr;
    }
    count(Counter::NpIcmpTranslated);
    // From a node address now: routed here like any such packet (see route).
    if ingress && is_node_addr6(&new_saddr) {
        return route6(ctx, &new_saddr, &new.saddr, 0, 0);
    }
    Ok(PASS)
}
