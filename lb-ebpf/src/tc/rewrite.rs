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
        if let Some(off) = l4_csum {
            ctx.l4_csum_replace(
                off,
                p.saddr as u64,
                to.to_saddr as u64,
                BPF_F_PSEUDO_HDR as u64 | CSUM_U32 | l4_flags,
            )?;
        }
        ctx.l3_csum_replace(ip_csum, p.saddr as u64, to.to_saddr as u64, CSUM_U32)?;
        ctx.store(IP4_OFF + ip4::SADDR, &to.to_saddr, 0)?;
    }
    if to.to_daddr != p.daddr {
        if let Some(off) = l4_csum {
            ctx.l4_csum_replace(
                off,
                p.daddr as u64,
                to.to_daddr as u64,
                BPF_F_PSEUDO_HDR as u64 | CSUM_U32 | l4_flags,
            )?;
        }
        ctx.l3_csum_replace(ip_csum, p.daddr as u64, to.to_daddr as u64, CSUM_U32)?;
        ctx.store(IP4_OFF + ip4::DADDR, &to.to_daddr, 0)?;
    }
    if let Some(off) = l4_csum {
        if to.to_sport != p.sport {
            ctx.l4_csum_replace(off, p.sport as u64, to.to_sport as u64, CSUM_U16 | l4_flags)?;
            ctx.store(p.l4_off + l4::SPORT, &to.to_sport, 0)?;
        }
        if to.to_dport != p.dport {
            ctx.l4_csum_replace(off, p.dport as u64, to.to_dport as u64, CSUM_U16 | l4_flags)?;
            ctx.store(p.l4_off + l4::DPORT, &to.to_dport, 0)?;
        }
    }
    Ok(())
}
