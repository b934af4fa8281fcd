//! IPv6 reject answers (see `reject.rs`, which decides when one is due): a TCP RST,
//! an ICMPv6 destination unreachable / port unreachable (type 1 code 4) for UDP, and
//! for any other protocol a parameter problem / unrecognized next header (type 4 code
//! 1, pointing at the Next Header field that names it), which is what the kernel's own
//! stack sends for a protocol it does not serve. The answer comes from the address the
//! packet was sent to, hop limit 64, the traffic class kept without the ECN bits.
//!
//! An ICMPv6 error quotes as much of the packet as fits in [`QUOTE6_MAX`] bytes (RFC
//! 4443 asks for as much as fits in 1280; the answer is built on the eBPF stack, which
//! holds less) and at least its header chain and the first 8 bytes of the upper-layer
//! header (the ports a client matches the error by); a packet with a longer header
//! chain is not answered.
use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::TcContext};
use lb_common::{Addr6, IPPROTO_TCP, IPPROTO_UDP, v6::is_v4_mapped};

use super::{
    family::addr6_eq,
    hdr::{IP6_OFF, icmp, icmp6, ip6, tcp},
    parse::{Packet, load_pair},
    reject::{TcpHdr, csum, emit, fold, rst_tcp},
};
use crate::{
    error::{Cause, Error},
    family::V6,
};

/// The most an ICMPv6 answer quotes of the packet (a multiple of 4).
const QUOTE6_MAX: usize = 256;

/// The IPv6 header, fields in network byte order.
#[repr(C)]
struct Ip6Hdr {
    /// Version, traffic class, flow label.
    ver_tc_flow: u32,
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: Addr6,
    daddr: Addr6,
}

/// The RST answer after the Ethernet header.
#[repr(C)]
struct Rst6 {
    ip: Ip6Hdr,
    tcp: TcpHdr,
}

/// The ICMPv6 error answer after the Ethernet header; the quote is zeroed before the
/// packet is loaded into it, so a length that is no multiple of 4 sums as padded.
#[repr(C)]
struct Error6 {
    ip: Ip6Hdr,
    icmp_type: u8,
    code: u8,
    csum: u16,
    /// Unused (0), or the parameter problem's pointer.
    data: u32,
    quote: [u8; QUOTE6_MAX],
}
const _: () = assert!(size_of::<Ip6Hdr>() == ip6::HLEN);
const _: () = assert!(size_of::<Rst6>() == ip6::HLEN + tcp::MIN_HLEN);
const _: () = assert!(size_of::<Error6>() == ip6::HLEN + icmp6::HLEN + QUOTE6_MAX);

/// Whether `saddr` names one node an answer may go to: not unspecified, loopback,
/// multicast or IPv4-mapped (RFC 4443 2.4 (e)).
#[inline(always)]
pub fn unicast_source(saddr: &Addr6) -> bool {
    let loopback = [0, 0, 0, 1u32.to_be()];
    let first_octet = saddr[0].to_ne_bytes()[0];
    !addr6_eq(saddr, &[0; 4])
        && !addr6_eq(saddr, &loopback)
        && first_octet != 0xff
        && !is_v4_mapped(saddr)
}

/// Rewrites the IPv6 packet into its answer; false when it cannot be quoted as an
/// ICMPv6 error must be (nothing was changed then).
#[inline(always)]
pub fn build(ctx: &TcContext, p: &Packet<V6>) -> Result<bool, Error> {
    let (b0, b1) = load_pair(ctx, IP6_OFF + ip6::VER_TC_FLOW)?;
    let tclass = ((b0 & 0x0f) << 4) | (b1 >> 4);
    let payload_len = u16::from_be(ctx.load::<u16>(IP6_OFF + ip6::PAYLOAD_LEN)?) as usize;
    if payload_len == 0 {
        // A jumbogram: not answered.
        return Ok(false);
    }
    let tot_len = ip6::HLEN + payload_len;
    let ip_hlen = p.l4_off - IP6_OFF;
    if p.proto == IPPROTO_TCP {
        let mut rst = Rst6 {
            ip: ip_header(p, tclass, tcp::MIN_HLEN, IPPROTO_TCP),
            tcp: rst_tcp(ctx, p, ip_hlen, tot_len)?,
        };
        let sum = pseudo_sum(&rst.ip, tcp::MIN_HLEN, IPPROTO_TCP)?;
        let sum = csum((&raw const rst.tcp).cast(), tcp::MIN_HLEN, sum)?;
        rst.tcp.csum = fold(sum);
        emit(ctx, (&raw const rst).cast(), size_of::<Rst6>())?;
        return Ok(true);
    }
    // What is in the packet (a short frame may carry Ethernet padding after it).
    let present = (ctx.len() as usize).saturating_sub(IP6_OFF);
    let mut quote_len = if tot_len < present { tot_len } else { present };
    if quote_len > QUOTE6_MAX {
        quote_len = QUOTE6_MAX;
    }
    if quote_len < ip_hlen + icmp::QUOTED_L4 || quote_len == 0 {
        return Ok(false);
    }
    let (icmp_type, code, data) = if p.proto == IPPROTO_UDP {
        (icmp6::DEST_UNREACH, icmp6::PORT_UNREACH, 0)
    } else {
        let pointer = (p.proto_off - IP6_OFF) as u32;
        (icmp6::PARAMPROB, icmp6::UNK_NEXTHDR, pointer.to_be())
    };
    let msg_len = icmp6::HLEN + quote_len;
    let mut answer = MaybeUninit::<Error6>::zeroed();
    let a = answer.as_mut_ptr();
    // SAFETY: `a` points to a zeroed Error6; the helper writes at most QUOTE6_MAX bytes
    // into its quote.
    unsafe {
        (&raw mut (*a).ip).write(ip_header(p, tclass, msg_len, ip6::NEXTHDR_ICMP));
        (&raw mut (*a).icmp_type).write(icmp_type);
        (&raw mut (*a).code).write(code);
        (&raw mut (*a).data).write(data);
        let quote = (&raw mut (*a).quote).cast::<u8>();
        if bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            IP6_OFF as u32,
            quote.cast(),
            quote_len as u32,
        ) != 0
        {
            return Err(Cause::Packet.into());
        }
        let sum = pseudo_sum(&(*a).ip, msg_len, ip6::NEXTHDR_ICMP)?;
        let icmp = (&raw const (*a).icmp_type).cast::<u8>();
        // Rounded up to whole words: the bytes past the quote are zero.
        let summed = (icmp6::HLEN + quote_len + 3) & !3;
        let sum = csum(icmp, summed, sum)?;
        (&raw mut (*a).csum).write(fold(sum));
    }
    emit(ctx, answer.as_ptr().cast(), ip6::HLEN + msg_len)?;
    Ok(true)
}

/// The IPv6 header of an answer to `p` carrying `payload_len` bytes of `nexthdr`:
/// from the address the packet was sent to, back to its source.
#[inline(always)]
fn ip_header(p: &Packet<V6>, tclass: u8, payload_len: usize, nexthdr: u8) -> Ip6Hdr {
    let tclass = tclass & !ip6::ECN_MASK;
    Ip6Hdr {
        ver_tc_flow: ((u32::from(ip6::VERSION) << 28) | (u32::from(tclass) << 20)).to_be(),
        payload_len: (payload_len as u16).to_be(),
        nexthdr,
        hop_limit: ip6::DEFAULT_HOP_LIMIT,
        saddr: p.daddr,
        daddr: p.saddr,
    }
}

/// The (unfolded) sum of the IPv6 pseudo header of `ip` for an upper-layer packet of
/// `len` bytes of protocol `nexthdr` (RFC 8200 8.1).
#[inline(always)]
fn pseudo_sum(ip: &Ip6Hdr, len: usize, nexthdr: u8) -> Result<u32, Error> {
    let addrs = (&raw const ip.saddr).cast::<u8>();
    let sum = csum(addrs, 32, 0)?;
    let tail: [u32; 2] = [(len as u32).to_be(), u32::from(nexthdr).to_be()];
    csum(tail.as_ptr().cast(), 8, sum)
}
