//! ICMP errors about tracked flows, translated like their flow's packets.
use aya_ebpf::programs::TcContext;
use lb_common::{Counter, Ct4Key, IPPROTO_TCP, IPPROTO_UDP};

use super::{
    PASS,
    hdr::{IP4_OFF, icmp, ip4, l4},
    rewrite::{set_addr, set_port},
    route::route,
};
use crate::{
    error::Error,
    maps::{CT4, count, get_copy, is_node_addr},
};

/// An ICMP error (destination unreachable, time exceeded, parameter problem) about a
/// packet of a tracked flow: the packet it quotes went out translated, so the error
/// is translated like a packet of the opposite direction: the quoted header is
/// rewritten to what its sender saw, and the error goes to that sender.
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
    let isaddr: u32 = ctx.load(inner + ip4::SADDR)?;
    let idaddr: u32 = ctx.load(inner + ip4::DADDR)?;
    let inner_l4 = inner + ihl;
    let isport: u16 = ctx.load(inner_l4 + l4::SPORT)?;
    let idport: u16 = ctx.load(inner_l4 + l4::DPORT)?;
    // Packets of the opposite direction of the quoted one match this key.
    let key = Ct4Key {
        saddr: idaddr,
        daddr: isaddr,
        sport: idport,
        dport: isport,
        proto,
        pad: [0; 3],
    };
    let Some(entry) = get_copy(&CT4, &key) else {
        return Ok(PASS);
    };
    // Opposite-direction packets become (to_saddr, to_daddr, to_sport, to_dport), so
    // the quoted packet becomes (to_daddr -> to_saddr, to_dport -> to_sport).
    let (new_isaddr, new_idaddr, new_isport, new_idport) = (
        entry.to_daddr,
        entry.to_saddr,
        entry.to_dport,
        entry.to_sport,
    );
    let icmp_csum = icmp_off + icmp::CSUM;
    let inner_csum = inner + ip4::CSUM;
    // Inner addresses: the inner IP checksum changes by the opposite amount, so the
    // ICMP checksum (which covers both) is unchanged.
    if new_isaddr != isaddr {
        set_addr(
            ctx,
            inner + ip4::SADDR,
            isaddr,
            new_isaddr,
            inner_csum,
            None,
            0,
        )?;
    }
    if new_idaddr != idaddr {
        set_addr(
            ctx,
            inner + ip4::DADDR,
            idaddr,
            new_idaddr,
            inner_csum,
            None,
            0,
        )?;
    }
    // Inner ports are plain ICMP payload.
    if new_isport != isport {
        set_port(ctx, inner_l4 + l4::SPORT, isport, new_isport, icmp_csum, 0)?;
    }
    if new_idport != idport {
        set_port(ctx, inner_l4 + l4::DPORT, idport, new_idport, icmp_csum, 0)?;
    }
    // The outer header: the ICMP checksum does not cover it.
    let ip_csum = IP4_OFF + ip4::CSUM;
    // The error goes to the quoted packet's (new) sender.
    if new_isaddr != outer_daddr {
        let off = IP4_OFF + ip4::DADDR;
        set_addr(ctx, off, outer_daddr, new_isaddr, ip_csum, None, 0)?;
    }
    // An error the quoted packet's destination sent itself (the backend: say a UDP port
    // unreachable) comes from the address that sender addressed, as with netfilter NAT:
    // a pod address means nothing to the client and is often not routable from it.
    // Errors from routers on the way keep their source.
    let mut new_saddr = outer_saddr;
    if outer_saddr == idaddr && new_idaddr != idaddr {
        let off = IP4_OFF + ip4::SADDR;
        set_addr(ctx, off, outer_saddr, new_idaddr, ip_csum, None, 0)?;
        new_saddr = new_idaddr;
    }
    count(Counter::NpIcmpTranslated);
    if ingress {
        // From a node address now: routed here like any such packet (see route).
        if is_node_addr(new_saddr) {
            return route(ctx, new_saddr, new_isaddr, 0, 0);
        }
    }
    Ok(PASS)
}
