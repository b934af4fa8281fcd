//! Answers for rejected external traffic, as kube-proxy's REJECT gives them: a packet to
//! a LoadBalancer or external IP whose service has no endpoints, or to a port no
//! service has on such an address, is turned into its answer in place and sent back
//! out of the device it came in on. TCP gets a RST, UDP an ICMP port unreachable, any
//! other protocol an ICMP protocol unreachable (IPv6: `reject6.rs`, with ICMPv6); the
//! answer comes from the address the packet was sent to, with the Ethernet addresses
//! swapped. What is decided ([`answer`]) is the same for both families; this file
//! builds IPv4's answers.
//!
//! No answer is due to a TCP RST, a fragment after the first, a frame for a
//! broadcast, multicast or another host's Ethernet address, a source that is no
//! unicast address (RFC 1122 3.2.2, RFC 4443 2.4), a GRO-merged segment; ICMP never
//! reaches here. Answers are rate-limited per CPU ([`lb_common::reject_rate`], one
//! budget for both families) so spoofed sources cannot make the node a reflector. Every packet that comes here is dropped when it is not answered: the
//! address is a service's, and nobody else owns it. That holds for a failure to build
//! the answer too (counted as an internal error): the service's verdict is to reject,
//! and what is left of a half-rewritten packet must not go anywhere.
use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    helpers::generated::{
        bpf_csum_diff, bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes,
        bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use lb_common::{Counter, IPPROTO_TCP, IPPROTO_UDP, reject_rate, scope};

use super::{
    DROP,
    family::TcFamily,
    hdr::{IP4_OFF, IPPROTO_ICMP, eth, icmp, ip4, tcp},
    parse::{Frag, Packet},
};
use crate::{
    error::{Cause, Error},
    family::V4,
    lb::lookup_service,
    maps::{REJECT_RATE4, count},
};

/// `__sk_buff::pkt_type` of a frame for this host's Ethernet address.
const PACKET_HOST: u32 = 0;

/// The most an ICMP error quotes: a header with the most options (60 bytes) and the
/// first 8 bytes after it.
const QUOTE_MAX: usize = 60 + icmp::QUOTED_L4;

/// An IPv4 header without options, fields in network byte order.
#[repr(C)]
struct Ip4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    csum: u16,
    saddr: u32,
    daddr: u32,
}

/// A TCP header without options, fields in network byte order.
#[repr(C)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack_seq: u32,
    pub doff: u8,
    pub flags: u8,
    pub window: u16,
    pub csum: u16,
    pub urg_ptr: u16,
}

/// The RST answer after the Ethernet header.
#[repr(C)]
struct Rst {
    ip: Ip4Hdr,
    tcp: TcpHdr,
}

/// The ICMP destination unreachable answer after the Ethernet header. Built on the
/// stack without zeroing it first: every field is written, and the quote holds what
/// was loaded into it (only that much is summed and stored).
#[repr(C)]
struct Unreachable {
    ip: Ip4Hdr,
    icmp_type: u8,
    code: u8,
    csum: u16,
    unused: u32,
    quote: MaybeUninit<[u8; QUOTE_MAX]>,
}
const _: () = assert!(size_of::<Rst>() == ip4::MIN_HLEN + tcp::MIN_HLEN);
const _: () = assert!(size_of::<Unreachable>() == ip4::MIN_HLEN + icmp::HLEN + QUOTE_MAX);

/// Whether `address` is a LoadBalancer or external IP whose other ports are refused
/// (its external wildcard entry), and not one of this node's: a node address serves
/// far more than services, and its unknown ports are the stack's to answer.
#[inline(always)]
pub fn refused_address<F: TcFamily>(address: F::Addr) -> bool {
    let wildcard = F::svc_key(address, 0, 0, scope::EXTERNAL);
    lookup_service::<F>(&wildcard).is_some() && !F::is_node_addr(&address)
}

/// Answers `p` (a packet to a rejecting frontend or a refused address) in place and
/// redirects it out of its device, or drops it: see the module documentation.
#[inline(always)]
pub fn answer<F: TcFamily>(ctx: &TcContext, p: &Packet<F>) -> i32 {
    if !answer_due(ctx, p) {
        count(Counter::NpRejectUnanswered);
        return DROP;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if !take_budget(now) {
        count(Counter::NpRejectLimited);
        return DROP;
    }
    match build_framed::<F>(ctx, p) {
        Ok(true) => {}
        Ok(false) => {
            count(Counter::NpRejectUnanswered);
            return DROP;
        }
        Err(e) => {
            count(e.counter());
            return DROP;
        }
    }
    count(Counter::NpRejected);
    // SAFETY: the skb context is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Out of the device the packet came in on (flags 0: its egress).
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Whether the packet may be answered at all (before the budget is asked).
///
/// A GRO-merged segment (gso_size set) is not answered either: the kernel holds it as
/// CHECKSUM_PARTIAL, and a device sending the answer would "complete" the checksum
/// this program already completed. Its sender retransmits one segment at a time, and
/// that one is answered. (A packet from a local sender through a veth with checksum
/// offload is CHECKSUM_PARTIAL too, without gso_size; its answer goes back through
/// the veth, whose peer does not verify checksums of such packets.)
#[inline(always)]
fn answer_due<F: TcFamily>(ctx: &TcContext, p: &Packet<F>) -> bool {
    // SAFETY: the skb context is valid for the program's run.
    let (pkt_type, gso_size) = unsafe { ((*ctx.skb.skb).pkt_type, (*ctx.skb.skb).gso_size) };
    let unicast_source = F::unicast_source(&p.saddr);
    let rst = p.proto == IPPROTO_TCP && p.tcp_flags & tcp::RST != 0;
    p.frag != Frag::Later && pkt_type == PACKET_HOST && gso_size == 0 && unicast_source && !rst
}

/// Takes one answer from this CPU's budget (GCRA): the next answer is due one interval
/// after the later of now and the previous one's due time, and is sent when that is at
/// most BURST intervals ahead of now.
#[inline(always)]
fn take_budget(now: u64) -> bool {
    let Some(due) = REJECT_RATE4.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the only slot of a per-CPU array: only this CPU's program runs touch it,
    // one at a time.
    let due = unsafe { &mut *due };
    let next = if *due > now { *due } else { now } + reject_rate::INTERVAL_NS;
    if next > now + reject_rate::BURST * reject_rate::INTERVAL_NS {
        return false;
    }
    *due = next;
    true
}

/// Rewrites the frame into its answer: the family's IP packet ([`TcFamily::build_answer`]),
/// then the Ethernet header back to the sender; false when the packet is too short to
/// quote as an ICMP error must (nothing was changed then).
#[inline(always)]
fn build_framed<F: TcFamily>(ctx: &TcContext, p: &Packet<F>) -> Result<bool, Error> {
    let macs: [u8; 2 * eth::ALEN] = ctx.load(eth::DEST)?;
    if !F::build_answer(ctx, p)? {
        return Ok(false);
    }
    // Ethernet: back to the sender, from the address it sent to.
    let mut swapped = [0u8; 2 * eth::ALEN];
    swapped[..eth::ALEN].copy_from_slice(&macs[eth::ALEN..]);
    swapped[eth::ALEN..].copy_from_slice(&macs[..eth::ALEN]);
    ctx.store(eth::DEST, &swapped, 0)?;
    Ok(true)
}

/// Rewrites the IPv4 packet into its answer; false when the packet is too short to
/// quote as an ICMP error must (nothing was changed then).
#[inline(always)]
pub fn build(ctx: &TcContext, p: &Packet<V4>) -> Result<bool, Error> {
    // Read again rather than taken from `p`: the verifier then sees its bounds.
    let ihl = ip4::header_len(ctx.load::<u8>(IP4_OFF + ip4::VER_IHL)?);
    if ihl < ip4::MIN_HLEN {
        return Ok(false);
    }
    let tot_len = u16::from_be(ctx.load::<u16>(IP4_OFF + ip4::TOT_LEN)?) as usize;
    let tos: u8 = ctx.load(IP4_OFF + ip4::TOS)?;
    if p.proto == IPPROTO_TCP {
        let rst = rst(ctx, p, ihl, tot_len, tos)?;
        emit(ctx, (&raw const rst).cast(), size_of::<Rst>())?;
    } else {
        let mut answer = MaybeUninit::<Unreachable>::uninit();
        let Some(len) = unreachable(ctx, p, ihl, tot_len, tos, &mut answer)? else {
            return Ok(false);
        };
        emit(ctx, answer.as_ptr().cast(), len)?;
    }
    Ok(true)
}

/// Makes the packet exactly the answer: `len` bytes at `answer` after the Ethernet
/// header (cut or grown at the tail, then overwritten).
#[inline(always)]
pub fn emit(ctx: &TcContext, answer: *const u8, len: usize) -> Result<(), Error> {
    // SAFETY: helper calls with the program's skb; `answer` points to `len` bytes the
    // caller initialized.
    unsafe {
        let skb = ctx.skb.skb;
        if bpf_skb_change_tail(skb, (eth::HLEN + len) as u32, 0) != 0 {
            return Err(Cause::Packet.into());
        }
        if bpf_skb_store_bytes(skb, IP4_OFF as u32, answer.cast(), len as u32, 0) != 0 {
            return Err(Cause::Packet.into());
        }
    }
    Ok(())
}

/// The IP header of an answer to `p` of `len` bytes carrying `proto`: from the address
/// the packet was sent to, back to its source; TOS kept without the ECN bits, TTL 64,
/// identification 0, DF as given. The checksum is computed by [`with_ip_csum`].
#[inline(always)]
fn ip_header(p: &Packet<V4>, tos: u8, len: usize, proto: u8, df: bool) -> Ip4Hdr {
    Ip4Hdr {
        ver_ihl: (ip4::VERSION << 4) | (ip4::MIN_HLEN / 4) as u8,
        tos: tos & !ip4::ECN_MASK,
        tot_len: (len as u16).to_be(),
        id: 0,
        frag_off: if df { ip4::DF.to_be() } else { 0 },
        ttl: ip4::DEFAULT_TTL,
        proto,
        csum: 0,
        saddr: p.daddr,
        daddr: p.saddr,
    }
}

/// `ip` with its header checksum.
#[inline(always)]
fn with_ip_csum(mut ip: Ip4Hdr) -> Result<Ip4Hdr, Error> {
    ip.csum = fold(csum((&raw const ip).cast(), ip4::MIN_HLEN, 0)?);
    Ok(ip)
}

/// The RST answering `p` (RFC 9293 3.10.7.1, a segment to a closed port): to an ACK,
/// the sequence number is its acknowledgment number; otherwise RST|ACK with sequence 0
/// acknowledging all the segment occupies.
#[inline(always)]
fn rst(ctx: &TcContext, p: &Packet<V4>, ihl: usize, tot_len: usize, tos: u8) -> Result<Rst, Error> {
    let mut rst = Rst {
        ip: with_ip_csum(ip_header(p, tos, size_of::<Rst>(), IPPROTO_TCP, true))?,
        tcp: rst_tcp(ctx, p, ihl, tot_len)?,
    };
    let pseudo = pseudo_header(p.daddr, p.saddr, IPPROTO_TCP, tcp::MIN_HLEN as u16);
    let sum = csum(pseudo.as_ptr(), pseudo.len(), 0)?;
    let sum = csum((&raw const rst.tcp).cast(), tcp::MIN_HLEN, sum)?;
    rst.tcp.csum = fold(sum);
    Ok(rst)
}

/// The TCP header of the RST answering `p` (checksum 0, for the caller): to an ACK,
/// the sequence number is its acknowledgment number; otherwise RST|ACK with sequence
/// 0 acknowledging all the segment occupies. `ip_hlen` is the length of the IP
/// headers before the segment (IPv6: with the extension headers) and `tot_len` the
/// packet's length from the IP header on.
#[inline(always)]
pub fn rst_tcp<F: TcFamily>(
    ctx: &TcContext,
    p: &Packet<F>,
    ip_hlen: usize,
    tot_len: usize,
) -> Result<TcpHdr, Error> {
    let seq = u32::from_be(ctx.load::<u32>(p.l4_off + tcp::SEQ)?);
    let ack = u32::from_be(ctx.load::<u32>(p.l4_off + tcp::ACK_SEQ)?);
    let [doff, _flags] = ctx.load::<[u8; 2]>(p.l4_off + tcp::DOFF_FLAGS)?;
    let (rst_seq, rst_ack, flags) = if p.tcp_flags & tcp::ACK != 0 {
        (ack, 0, tcp::RST)
    } else {
        let hlen = ip_hlen + ((doff >> 4) as usize) * 4;
        let data = tot_len.saturating_sub(hlen) as u32;
        let syn = (p.tcp_flags & tcp::SYN != 0) as u32;
        let fin = (p.tcp_flags & tcp::FIN != 0) as u32;
        (0, seq.wrapping_add(data + syn + fin), tcp::RST | tcp::ACK)
    };
    Ok(TcpHdr {
        sport: p.dport,
        dport: p.sport,
        seq: rst_seq.to_be(),
        ack_seq: rst_ack.to_be(),
        doff: ((tcp::MIN_HLEN / 4) as u8) << 4,
        flags,
        window: 0,
        csum: 0,
        urg_ptr: 0,
    })
}

/// The ICMP destination unreachable answering `p` (port unreachable for UDP, protocol
/// unreachable otherwise), quoting its IP header and the first 8 bytes after it, in
/// `answer`; returns its length, or None when the packet is shorter than what must be
/// quoted.
#[inline(always)]
fn unreachable(
    ctx: &TcContext,
    p: &Packet<V4>,
    ihl: usize,
    tot_len: usize,
    tos: u8,
    answer: &mut MaybeUninit<Unreachable>,
) -> Result<Option<usize>, Error> {
    let quote_len = ihl + icmp::QUOTED_L4;
    if tot_len < quote_len || (ctx.len() as usize) < IP4_OFF + quote_len {
        return Ok(None);
    }
    let len = ip4::MIN_HLEN + icmp::HLEN + quote_len;
    let a = answer.as_mut_ptr();
    // SAFETY: `a` points to the caller's Unreachable; fields are written through raw
    // pointers (nothing reads them before), and the quote, at most QUOTE_MAX bytes
    // (ihl <= 60), by the helper.
    unsafe {
        (&raw mut (*a).ip).write(with_ip_csum(ip_header(p, tos, len, IPPROTO_ICMP, false))?);
        (&raw mut (*a).icmp_type).write(icmp::DEST_UNREACH);
        let code = if p.proto == IPPROTO_UDP {
            icmp::PORT_UNREACH
        } else {
            icmp::PROT_UNREACH
        };
        (&raw mut (*a).code).write(code);
        (&raw mut (*a).csum).write(0);
        (&raw mut (*a).unused).write(0);
        let quote = (&raw mut (*a).quote).cast::<u8>();
        if bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            IP4_OFF as u32,
            quote.cast(),
            quote_len as u32,
        ) != 0
        {
            return Err(Cause::Packet.into());
        }
        // The checksum covers the whole ICMP message: header and quote.
        let icmp = (&raw const (*a).icmp_type).cast::<u8>();
        let sum = csum(icmp, icmp::HLEN + quote_len, 0)?;
        (&raw mut (*a).csum).write(fold(sum));
    }
    Ok(Some(len))
}

/// The TCP/UDP pseudo header of a segment of `len` bytes from `saddr` to `daddr`.
#[inline(always)]
fn pseudo_header(saddr: u32, daddr: u32, proto: u8, len: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0..4].copy_from_slice(&saddr.to_ne_bytes());
    h[4..8].copy_from_slice(&daddr.to_ne_bytes());
    h[9] = proto;
    h[10..12].copy_from_slice(&len.to_be_bytes());
    h
}

/// The one's complement sum (unfolded) of `len` bytes at `data` (a multiple of 4),
/// added to `seed`.
#[inline(always)]
pub fn csum(data: *const u8, len: usize, seed: u32) -> Result<u32, Error> {
    // SAFETY: the helper only reads `len` bytes at `data`, which the callers own.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            data.cast_mut().cast(),
            len as u32,
            seed,
        )
    };
    if sum < 0 {
        return Err(Cause::Packet.into());
    }
    Ok(sum as u32)
}

/// The Internet checksum of an unfolded sum, to store as the sum was taken (in memory
/// order).
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
