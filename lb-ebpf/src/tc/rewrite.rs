//! Rewriting addresses and ports (NAT), keeping the IP and L4 checksums right.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_common::{Ct4Value, IPPROTO_TCP, IPPROTO_UDP};

use super::{
    hdr::{IP4_OFF, ip4, l4, tcp, udp},
    parse::{Frag, Packet},
};
use crate::error::Error;

/// Size of the field a checksum helper accounts for, in the low bits of its flags.
pub const CSUM_U32: u64 = 4;
pub const CSUM_U16: u64 = 2;

impl Packet {
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

/// Rewrites addresses and ports, keeping the IP and L4 checksums right.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, p: &Packet, to: &Ct4Value) -> Result<(), Error> {
    let ip_csum = IP4_OFF + ip4::CSUM;
    let l4_csum = p.l4_csum_off();
    let l4_flags = p.l4_csum_flags();
    if to.to_saddr != p.saddr {
        let off = IP4_OFF + ip4::SADDR;
        set_addr(ctx, off, p.saddr, to.to_saddr, ip_csum, l4_csum, l4_flags)?;
    }
    if to.to_daddr != p.daddr {
        let off = IP4_OFF + ip4::DADDR;
        set_addr(ctx, off, p.daddr, to.to_daddr, ip_csum, l4_csum, l4_flags)?;
    }
    if let Some(csum) = l4_csum {
        if to.to_sport != p.sport {
            set_port(
                ctx,
                p.l4_off + l4::SPORT,
                p.sport,
                to.to_sport,
                csum,
                l4_flags,
            )?;
        }
        if to.to_dport != p.dport {
            set_port(
                ctx,
                p.l4_off + l4::DPORT,
                p.dport,
                to.to_dport,
                csum,
                l4_flags,
            )?;
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
