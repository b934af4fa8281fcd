//! Parsing: what the translation needs of a packet, read once per packet. The
//! packet's description ([`Packet`], [`Parsed`]) is the same for both families; this
//! file parses IPv4, `parse6.rs` IPv6.
use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};
use lb_common::{Counter, Frag4Key, Frag4Value, IPPROTO_TCP, IPPROTO_UDP};

use super::{
    family::{TcFamily, Tuple},
    hdr::{IP4_OFF, IPPROTO_ICMP, ip4, l4, tcp},
};
use crate::{
    error::Error,
    family::{Family, V4},
    maps::{FRAG4, count, get_copy},
};

/// Where a packet sits in a fragmented datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    Whole,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: no L4 header; ports come from the first fragment.
    Later,
}

/// What the translation needs of a packet.
#[derive(Clone, Copy)]
pub struct Packet<F: Family> {
    /// Where the L4 header starts (past the IPv4 options or the IPv6 extension
    /// headers); none in a later fragment.
    pub l4_off: usize,
    /// Where the byte naming `proto` sits: the IPv4 protocol field, or the last Next
    /// Header field of the IPv6 header chain (what a Parameter Problem points at).
    pub proto_off: usize,
    /// IP protocol (IPv6: the upper-layer protocol after the extension headers): TCP
    /// or UDP (another one in [`Parsed::OtherProto`]).
    pub proto: u8,
    /// Source address, network byte order.
    pub saddr: F::Addr,
    /// Destination address, network byte order.
    pub daddr: F::Addr,
    /// Source port, network byte order (a later fragment: its first fragment's; 0
    /// for a protocol without ports).
    pub sport: u16,
    /// Destination port, network byte order (a later fragment: its first fragment's; 0
    /// for a protocol without ports).
    pub dport: u16,
    /// Where the packet sits in a fragmented datagram.
    pub frag: Frag,
    /// TCP flags; 0 for UDP and later fragments.
    pub tcp_flags: u8,
}

impl<F: TcFamily> Packet<F> {
    /// The packet's addresses and ports as it arrived.
    #[inline(always)]
    pub fn tuple(&self) -> Tuple<F::Addr> {
        Tuple {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
        }
    }

    /// The packet's conntrack key: its tuple as it arrived.
    #[inline(always)]
    pub fn ct_key(&self) -> F::CtKey {
        F::ct_key(&self.tuple(), self.proto)
    }
}

/// Outcome of parsing.
pub enum Parsed<F: Family> {
    /// Not ours to look at: not the family's header, a header that is bogus or cut
    /// short, a later fragment of an unknown datagram or of a protocol other than
    /// TCP and UDP (IPv6 also: IPsec, no next header, a routing header with segments
    /// left, more extension headers than parsed).
    Other,
    Flow(Packet<F>),
    /// A protocol other than TCP, UDP and ICMP (not a later fragment): no ports, so
    /// no service; refused on a service address ([`super::reject`]).
    OtherProto(Packet<F>),
    /// An ICMP (ICMPv6) message; `l4_off` is where its header starts.
    Icmp {
        l4_off: usize,
        saddr: F::Addr,
        daddr: F::Addr,
    },
}

/// Reads a `T` at `off`: straight from the packet when the linear area holds it (no
/// helper call: parsing runs for every packet of the device), else through
/// bpf_skb_load_bytes (headers in paged data). Only for `T` of 2 bytes or more:
/// LLVM turns a 1-byte bound check into a form the verifier cannot use, so single
/// bytes are read as half of a [`load_pair`].
#[inline(always)]
pub fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, Error> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: inside [data, data_end), which the check above proves to the verifier.
        return Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    Ok(ctx.load(off)?)
}

/// The bytes at `off` and `off + 1`.
#[inline(always)]
pub fn load_pair(ctx: &TcContext, off: usize) -> Result<(u8, u8), Error> {
    let [first, second] = load::<[u8; 2]>(ctx, off)?;
    Ok((first, second))
}

/// Parses an IPv4 packet (the caller has seen the EtherType).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed<V4>, Error> {
    let (ver_ihl, _tos) = load_pair(ctx, IP4_OFF + ip4::VER_IHL)?;
    let ihl = ip4::header_len(ver_ihl);
    if ip4::version(ver_ihl) != ip4::VERSION || ihl < ip4::MIN_HLEN {
        return Ok(Parsed::Other);
    }
    let frag_off = u16::from_be(load::<u16>(ctx, IP4_OFF + ip4::FRAG_OFF)?);
    let (_ttl, proto) = load_pair(ctx, IP4_OFF + ip4::TTL)?;
    let saddr: u32 = load(ctx, IP4_OFF + ip4::SADDR)?;
    let daddr: u32 = load(ctx, IP4_OFF + ip4::DADDR)?;
    let l4_off = IP4_OFF + ihl;
    let frag = if frag_off & ip4::OFFSET_MASK != 0 {
        Frag::Later
    } else if frag_off & ip4::MF != 0 {
        Frag::First
    } else {
        Frag::Whole
    };
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {}
        IPPROTO_ICMP if frag != Frag::Later => {
            return Ok(Parsed::Icmp {
                l4_off,
                saddr,
                daddr,
            });
        }
        _ if frag == Frag::Later => return Ok(Parsed::Other),
        _ => {
            return Ok(Parsed::OtherProto(Packet {
                l4_off,
                proto_off: IP4_OFF + ip4::PROTO,
                proto,
                saddr,
                daddr,
                sport: 0,
                dport: 0,
                frag,
                tcp_flags: 0,
            }));
        }
    }
    let frag_key = || -> Result<Frag4Key, Error> {
        Ok(Frag4Key {
            saddr,
            daddr,
            id: load(ctx, IP4_OFF + ip4::ID)?,
            proto,
            pad: 0,
        })
    };
    let (sport, dport, tcp_flags) = if frag == Frag::Later {
        match get_copy(&FRAG4, &frag_key()?) {
            Some(ports) => (ports.sport, ports.dport, 0),
            None => {
                count(Counter::NpFragUnknown);
                return Ok(Parsed::Other);
            }
        }
    } else {
        let sport: u16 = load(ctx, l4_off + l4::SPORT)?;
        let dport: u16 = load(ctx, l4_off + l4::DPORT)?;
        let flags: u8 = if proto == IPPROTO_TCP {
            load_pair(ctx, l4_off + tcp::DOFF_FLAGS)?.1
        } else {
            0
        };
        (sport, dport, flags)
    };
    if frag == Frag::First {
        // Remembered whether or not the datagram turns out to be ours: a later
        // fragment cannot be matched otherwise.
        let _ = FRAG4.insert(&frag_key()?, &Frag4Value { sport, dport }, BPF_ANY as u64);
    }
    Ok(Parsed::Flow(Packet {
        l4_off,
        proto_off: IP4_OFF + ip4::PROTO,
        proto,
        saddr,
        daddr,
        sport,
        dport,
        frag,
        tcp_flags,
    }))
}
