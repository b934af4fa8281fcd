//! ICMP errors about tracked flows, translated like their flow's packets: what is
//! decided is the same for both families ([`quoted_translation`], [`outer_source`]);
//! this file rewrites IPv4's ICMP, `icmp6.rs` ICMPv6.
use aya_ebpf::programs::TcContext;
use lb_common::{Counter, IPPROTO_TCP, IPPROTO_UDP};

use super::{
    PASS,
    family::{CtValue, TcFamily, Tuple},
    hdr::{IP4_OFF, icmp, ip4, l4},
    rewrite::{set_addr, set_port},
    route::route,
};
use crate::{
    error::Error,
    family::V4,
    maps::{count, get_copy, is_node_addr},
};

/// What the packet an ICMP error quotes (`quoted`, protocol `proto`) becomes, if it is
/// a packet of a tracked flow. It went out translated, so the error is translated like
/// a packet of the opposite direction: the quoted packet is rewritten to what its
/// sender saw (and the error goes to that sender).
#[inline(always)]
pub fn quoted_translation<F: TcFamily>(
    quoted: &Tuple<F::Addr>,
    proto: u8,
) -> Option<Tuple<F::Addr>> {
    // Packets of the opposite direction of the quoted one match this key.
    let entry = get_copy(F::ct_map(), &F::ct_key(&quoted.reversed(), proto))?;
    // Opposite-direction packets become `to`, so the quoted packet becomes its reverse.
    Some(entry.to().reversed())
}

/// The source of the translated error, if it changes. An error the quoted packet's
/// destination sent itself (the backend: say a UDP port unreachable) comes from the
/// address that sender addressed, as with netfilter NAT: a pod address means nothing
/// to the client and is often not routable from it. Errors from routers on the way
/// keep their source.
#[inline(always)]
pub fn outer_source<F: TcFamily>(
    outer_saddr: &F::Addr,
    quoted: &Tuple<F::Addr>,
    translated: &Tuple<F::Addr>,
) -> Option<F::Addr> {
    (F::addr_eq(outer_saddr, &quoted.daddr) && !F::addr_eq(&translated.daddr, &quoted.daddr))
        .then_some(translated.daddr)
}

/// An ICMP error (destination unreachable, time exceeded, parameter problem) about a
/// packet of a tracked flow, translated (see [`quoted_translation`]).
#[inline(always)]
pub fn icmp_error(
    ctx: &TcContext,
    icmp_off: usize,
    outer_saddr: u32,
    outer_daddr: u32,
    ingress: bool,
) -> Result<i32, Error> {
    let icmp_type: u8 = ctx.load(icmp_off + icmp::TYPE)?;
    if !matches!(
        icmp_type,
        icmp::DEST_UNREACH | icmp::TIME_EXCEEDED | icmp::PARAMETERPROB
    ) {
        return Ok(PASS);
    }
    let inner = icmp_off + icmp::HLEN;
    let ver_ihl: u8 = ctx.load(inner + ip4::VER_IHL)?;
    let ihl = ip4::header_len(ver_ihl);
    if ip4::version(ver_ihl) != ip4::VERSION || ihl < ip4::MIN_HLEN {
        return Ok(PASS);
    }
    let proto: u8 = ctx.load(inner + ip4::PROTO)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(PASS);
    }
    let inner_l4 = inner + ihl;
    let quoted = Tuple {
        saddr: ctx.load::<u32>(inner + ip4::SADDR)?,
        daddr: ctx.load::<u32>(inner + ip4::DADDR)?,
        sport: ctx.load::<u16>(inner_l4 + l4::SPORT)?,
        dport: ctx.load::<u16>(inner_l4 + l4::DPORT)?,
    };
    let Some(new) = quoted_translation::<V4>(&quoted, proto) else {
        return Ok(PASS);
    };
    let icmp_csum = icmp_off + icmp::CSUM;
    let inner_csum = inner + ip4::CSUM;
    // Inner addresses: the inner IP checksum changes by the opposite amount, so the
    // ICMP checksum (which covers both) is unchanged.
    if new.saddr != quoted.saddr {
        let off = inner + ip4::SADDR;
        set_addr(ctx, off, quoted.saddr, new.saddr, inner_csum, None, 0)?;
    }
    if new.daddr != quoted.daddr {
        let off = inner + ip4::DADDR;
        set_addr(ctx, off, quoted.daddr, new.daddr, inner_csum, None, 0)?;
    }
    // Inner ports are plain ICMP payload.
    if new.sport != quoted.sport {
        let off = inner_l4 + l4::SPORT;
        set_port(ctx, off, quoted.sport, new.sport, icmp_csum, 0)?;
    }
    if new.dport != quoted.dport {
        let off = inner_l4 + l4::DPORT;
        set_port(ctx, off, quoted.dport, new.dport, icmp_csum, 0)?;
    }
    // The outer header: the ICMP checksum does not cover it.
    let ip_csum = IP4_OFF + ip4::CSUM;
    // The error goes to the quoted packet's (new) sender.
    if new.saddr != outer_daddr {
        let off = IP4_OFF + ip4::DADDR;
        set_addr(ctx, off, outer_daddr, new.saddr, ip_csum, None, 0)?;
    }
    let mut new_saddr = outer_saddr;
    if let Some(saddr) = outer_source::<V4>(&outer_saddr, &quoted, &new) {
        let off = IP4_OFF + ip4::SADDR;
        set_addr(ctx, off, outer_saddr, saddr, ip_csum, None, 0)?;
        new_saddr = saddr;
    }
    count(Counter::NpIcmpTranslated);
    if ingress {
        // From a node address now: routed here like any such packet (see route).
        if is_node_addr(new_saddr) {
            return route(ctx, new_saddr, new.saddr, 0, 0);
        }
    }
    Ok(PASS)
}
