//! Forwarding the packets this node must route itself (FIB lookup, redirect).
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};

use lb_common::Addr6;

use super::{
    PASS,
    hdr::{IP4_OFF, IP6_OFF, ip4, ip6},
    rewrite::CSUM_U16,
};
use crate::error::{Cause, Error};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// bpf_skb_store_bytes: update skb->csum (CHECKSUM_COMPLETE) for the bytes stored.
const BPF_F_RECOMPUTE_CSUM: u64 = 1;

/// After a rewrite at ingress: a packet whose source is now one of this node's
/// addresses (an SNATed flow, or a reply leaving as the NodePort) would be dropped
/// by the routing input path as a martian, so this node forwards it itself: a FIB
/// lookup for the egress device and a redirect through the neighbour subsystem (as
/// Cilium does). Callers decide (flows: CT_FLAG_ROUTE, set once per flow); every
/// other packet continues up the stack and is routed as usual.
#[inline(always)]
pub fn route(
    ctx: &TcContext,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
) -> Result<i32, Error> {
    // We route the packet, so we decrement its TTL; at 1, leave it to the stack.
    let ttl: u8 = ctx.load(IP4_OFF + ip4::TTL)?;
    if ttl <= 1 {
        return Ok(PASS);
    }

    // SAFETY: a zeroed bpf_fib_lookup is a valid (empty) request.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ctx.load(IP4_OFF + ip4::PROTO)?;
    fib.sport = sport;
    fib.dport = dport;
    fib.__bindgen_anon_1.tot_len = u16::from_be(ctx.load::<u16>(IP4_OFF + ip4::TOT_LEN)?);
    // SAFETY: the skb context is valid for the program's run.
    fib.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: helper call with a valid context and a pointer to a local of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // Not routable from here: the packet goes up unchanged (beyond the rewrite).
        return Err(Cause::NoRoute.into());
    }
    // Only now that we route it: the checksum covers TTL and protocol as one 16-bit word.
    let old_word: u16 = ctx.load(IP4_OFF + ip4::TTL)?;
    let new_ttl = ttl - 1;
    ctx.store(IP4_OFF + ip4::TTL, &new_ttl, 0)?;
    let new_word: u16 = ctx.load(IP4_OFF + ip4::TTL)?;
    ctx.l3_csum_replace(
        IP4_OFF + ip4::CSUM,
        old_word as u64,
        new_word as u64,
        CSUM_U16,
    )?;
    // SAFETY: helper call; a null nexthop lets the kernel resolve the neighbour.
    Ok(unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}

/// [`route`] for IPv6: the same FIB lookup (AF_INET6) and redirect through the
/// neighbour subsystem (NDP), with the hop limit one less. IPv6 has no header
/// checksum; the store keeps a CHECKSUM_COMPLETE packet's skb->csum right.
#[inline(always)]
pub fn route6(
    ctx: &TcContext,
    saddr: &Addr6,
    daddr: &Addr6,
    sport: u16,
    dport: u16,
) -> Result<i32, Error> {
    let [next_header, hop_limit]: [u8; 2] = ctx.load(IP6_OFF + ip6::NEXTHDR)?;
    if hop_limit <= 1 {
        return Ok(PASS);
    }
    // SAFETY: a zeroed bpf_fib_lookup is a valid (empty) request.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET6;
    // The first Next Header: the kernel's own forwarding looks up flows the same way
    // (it does not walk extension headers for the FIB either).
    fib.l4_protocol = next_header;
    fib.sport = sport;
    fib.dport = dport;
    // 0 for a jumbo payload length (the MTU check then goes by the skb).
    let payload_len = u16::from_be(ctx.load::<u16>(IP6_OFF + ip6::PAYLOAD_LEN)?);
    if payload_len != 0 {
        fib.__bindgen_anon_1.tot_len = payload_len.saturating_add(ip6::HLEN as u16);
    }
    // SAFETY: the skb context is valid for the program's run.
    fib.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    fib.__bindgen_anon_3.ipv6_src = *saddr;
    fib.__bindgen_anon_4.ipv6_dst = *daddr;
    // SAFETY: helper call with a valid context and a pointer to a local of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Err(Cause::NoRoute.into());
    }
    let new_hop_limit = hop_limit - 1;
    ctx.store(
        IP6_OFF + ip6::HOP_LIMIT,
        &new_hop_limit,
        BPF_F_RECOMPUTE_CSUM,
    )?;
    // SAFETY: helper call; a null nexthop lets the kernel resolve the neighbour.
    Ok(unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}
