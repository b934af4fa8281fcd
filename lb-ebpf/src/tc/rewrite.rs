//! Rewriting addresses and ports (NAT), keeping the IP and L4 checksums right: once
//! for both families ([`rewrite`]), with each family's way of writing an address
//! ([`set_addr`]: IPv4 and its header checksum; [`set_addr6`]: IPv6, which has none,
//! so only the L4 checksum's pseudo header changes).
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_csum_diff,
    programs::TcContext,
};
use lb_common::{Addr6, IPPROTO_TCP, IPPROTO_UDP};

use super::{
    family::{TcFamily, Tuple},
    hdr::{l4, tcp, udp},
    parse::{Frag, Packet},
};
use crate::{
    error::{Cause, Error},
    family::Family,
};

/// Size of the field a checksum helper accounts for, in the low bits of its flags.
pub const CSUM_U32: u64 = 4;
pub const CSUM_U16: u64 = 2;

impl<F: Family> Packet<F> {
    /// Offset of the L4 checksum, if this packet carries the L4 header.
    fn l4_csum_off(&self) -> Option<usize> {
        match (self.frag, self.proto) {
            (Frag::Later, _) => None,
            (_, IPPROTO_TCP) => Some(self.l4_off + tcp::CSUM),
            (_, IPPROTO_UDP) => Some(self.l4_off + udp::CSUM),
            _ => None,
        }
    }

    fn l4_csum_flags(&self) -> u64 {
        // UDP checksum 0 means "none": leave it 0 (and never produce 0).
        if self.proto == IPPROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        }
    }
}

/// Rewrites the packet's addresses and ports to `to`, keeping the IP (IPv4) and L4
/// checksums right.
#[inline(always)]
pub fn rewrite<F: TcFamily>(
    ctx: &TcContext,
    p: &Packet<F>,
    to: &Tuple<F::Addr>,
) -> Result<(), Error> {
    let l4_csum = p.l4_csum_off();
    let l4_flags = p.l4_csum_flags();
    if !F::addr_eq(&to.saddr, &p.saddr) {
        F::set_addr(ctx, F::SADDR_OFF, &p.saddr, &to.saddr, l4_csum, l4_flags)?;
    }
    if !F::addr_eq(&to.daddr, &p.daddr) {
        F::set_addr(ctx, F::DADDR_OFF, &p.daddr, &to.daddr, l4_csum, l4_flags)?;
    }
    if let Some(csum) = l4_csum {
        if to.sport != p.sport {
            set_port(ctx, p.l4_off + l4::SPORT, p.sport, to.sport, csum, l4_flags)?;
        }
        if to.dport != p.dport {
            set_port(ctx, p.l4_off + l4::DPORT, p.dport, to.dport, csum, l4_flags)?;
        }
    }
    Ok(())
}

/// Writes the IPv4 address `new` over `old` at `off`, updating the IP header checksum
/// at `ip_csum` and, if there is one (`l4_csum`), the L4 checksum that covers the
/// address through the pseudo header.
#[inline(always)]
pub fn set_addr(
    ctx: &TcContext,
    off: usize,
    old: u32,
    new: u32,
    ip_csum: usize,
    l4_csum: Option<usize>,
    l4_flags: u64,
) -> Result<(), Error> {
    if let Some(csum) = l4_csum {
        let flags = BPF_F_PSEUDO_HDR as u64 | CSUM_U32 | l4_flags;
        ctx.l4_csum_replace(csum, old as u64, new as u64, flags)?;
    }
    ctx.l3_csum_replace(ip_csum, old as u64, new as u64, CSUM_U32)?;
    ctx.store(off, &new, 0)?;
    Ok(())
}

/// Writes the port `new` over `old` at `off`, updating the checksum at `csum` that
/// covers it (the L4 checksum; the ICMP checksum for a port an ICMP error quotes).
#[inline(always)]
pub fn set_port(
    ctx: &TcContext,
    off: usize,
    old: u16,
    new: u16,
    csum: usize,
    flags: u64,
) -> Result<(), Error> {
    ctx.l4_csum_replace(csum, old as u64, new as u64, CSUM_U16 | flags)?;
    ctx.store(off, &new, 0)?;
    Ok(())
}

/// `BPF_F_IPV6` of bpf_l4_csum_replace (uapi linux/bpf.h; aya's bindings predate it):
/// the packet is IPv6, so a pseudo-header field's change, which no IP header checksum
/// offsets there, leaves `skb->csum` of a CHECKSUM_COMPLETE packet alone.
const BPF_F_IPV6: u64 = 1 << 7;

/// Writes the IPv6 address `new` over `old` at `off` (one of the packet's own, or of
/// a packet an ICMPv6 error quotes), updating the checksum at `csum`, if any, that
/// covers it: `pseudo` when it covers the address through a pseudo header (the
/// packet's own L4 or ICMPv6 checksum), not when the address is data it sums (a
/// quoted header inside an ICMPv6 message). IPv6 has no header checksum.
#[inline(always)]
pub fn set_addr6_in(
    ctx: &TcContext,
    off: usize,
    old: &Addr6,
    new: &Addr6,
    csum: Option<usize>,
    flags: u64,
) -> Result<(), Error> {
    if let Some(csum) = csum {
        // SAFETY: the helper reads 16 bytes at each pointer: two addresses.
        let diff =
            unsafe { bpf_csum_diff(old.as_ptr().cast_mut(), 16, new.as_ptr().cast_mut(), 16, 0) };
        if diff < 0 {
            return Err(Cause::Packet.into());
        }
        // Size 0 in the flags: `to` is the difference of the field (from must be 0).
        if flags & BPF_F_PSEUDO_HDR as u64 != 0
            && ctx
                .l4_csum_replace(csum, 0, diff as u64, flags | BPF_F_IPV6)
                .is_ok()
        {
            // Done, with skb->csum right.
        } else {
            // Not a pseudo-header field, or a kernel older than BPF_F_IPV6 (it
            // refuses the flag): the plain update. On such a kernel a
            // CHECKSUM_COMPLETE packet's skb->csum ends up off, which only makes the
            // stack verify the L4 checksum in software.
            ctx.l4_csum_replace(csum, 0, diff as u64, flags)?;
        }
    }
    ctx.store(off, new, 0)?;
    Ok(())
}

/// Writes the IPv6 address `new` over `old` at `off` (the packet's own source or
/// destination), updating the L4 checksum at `l4_csum`, if any, through its pseudo
/// header.
#[inline(always)]
pub fn set_addr6(
    ctx: &TcContext,
    off: usize,
    old: &Addr6,
    new: &Addr6,
    l4_csum: Option<usize>,
    l4_flags: u64,
) -> Result<(), Error> {
    set_addr6_in(
        ctx,
        off,
        old,
        new,
        l4_csum,
        BPF_F_PSEUDO_HDR as u64 | l4_flags,
    )
}
