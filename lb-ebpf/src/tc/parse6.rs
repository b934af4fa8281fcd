//! Parsing IPv6: the fixed header, then the extension headers up to the upper-layer
//! protocol ([`walk`], also used for the packet an ICMPv6 error quotes).
//!
//! Hop-by-hop options, destination options and routing headers are skipped by their
//! length; a fragment header says where the packet sits in its datagram (the first
//! fragment carries the upper-layer header and so the ports, later ones get them from
//! [`crate::maps6::FRAG6`]). What the walk does not follow is not ours and passes
//! untouched ([`Parsed::Other`]): a header cut short, a routing header with segments
//! left (the destination address is a waypoint, not where the packet ends), IPsec (AH,
//! ESP: the ports are not readable, or not ours to rewrite), no next header, and more
//! than [`MAX_EXT_HEADERS`] extension headers.
use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};
use lb_common::{Addr6, Counter, Frag4Value, Frag6Key, IPPROTO_TCP, IPPROTO_UDP};

use super::{
    hdr::{IP6_OFF, ext6, ip6, l4, tcp},
    parse::{Frag, Packet, Parsed, load, load_pair},
};
use crate::{
    error::Error,
    family::V6,
    maps::{count, get_copy},
    maps6::FRAG6,
};

/// Extension headers followed before the upper-layer header. RFC 8200's recommended
/// order has at most six (hop-by-hop, destination options, routing, fragment, AH,
/// destination options); a longer chain is not ours.
pub const MAX_EXT_HEADERS: usize = 6;

/// Where a header chain ends.
#[derive(Clone, Copy)]
pub struct Chain {
    /// The upper-layer protocol (for a later fragment: its datagram's).
    pub proto: u8,
    /// Where the upper-layer header starts (a later fragment: its data).
    pub off: usize,
    /// Where the Next Header byte naming `proto` sits.
    pub proto_off: usize,
    /// Where the packet sits in a fragmented datagram.
    pub frag: Frag,
    /// The fragment header's identification, network byte order (0 without one).
    pub frag_id: u32,
}

/// Walks the header chain of the IPv6 packet at `ip_off` to its upper-layer header;
/// None when it is not ours to follow (see the module documentation).
#[inline(always)]
pub fn walk(ctx: &TcContext, ip_off: usize) -> Option<Chain> {
    let (mut nh, _hop_limit) = load_pair(ctx, ip_off + ip6::NEXTHDR).ok()?;
    let mut chain = Chain {
        proto: nh,
        off: ip_off + ip6::HLEN,
        proto_off: ip_off + ip6::NEXTHDR,
        frag: Frag::Whole,
        frag_id: 0,
    };
    for _ in 0..MAX_EXT_HEADERS {
        let off = chain.off;
        let (next, len) = match nh {
            ip6::NEXTHDR_HOP | ip6::NEXTHDR_DEST | ip6::NEXTHDR_ROUTING => {
                let (next, len) = load_pair(ctx, off + ext6::NEXTHDR).ok()?;
                if nh == ip6::NEXTHDR_ROUTING {
                    let (_type, left) = load_pair(ctx, off + ext6::ROUTING_TYPE).ok()?;
                    if left != 0 {
                        return None;
                    }
                }
                (next, (len as usize + 1) * 8)
            }
            ip6::NEXTHDR_FRAGMENT => {
                let (next, _reserved) = load_pair(ctx, off + ext6::NEXTHDR).ok()?;
                let frag_off = u16::from_be(load::<u16>(ctx, off + ext6::FRAG_OFF).ok()?);
                chain.frag_id = load::<u32>(ctx, off + ext6::FRAG_ID).ok()?;
                chain.frag = if frag_off & ext6::FRAG_OFFSET_MASK != 0 {
                    Frag::Later
                } else if frag_off & ext6::FRAG_MF != 0 {
                    Frag::First
                } else {
                    // An atomic fragment (RFC 6946): a whole datagram.
                    Frag::Whole
                };
                (next, ext6::FRAG_HLEN)
            }
            _ => return Some(chain),
        };
        chain.proto = next;
        chain.proto_off = off + ext6::NEXTHDR;
        chain.off = off + len;
        nh = next;
        if chain.frag == Frag::Later {
            // The rest is data of the datagram's upper-layer protocol.
            return Some(chain);
        }
    }
    match nh {
        ip6::NEXTHDR_HOP | ip6::NEXTHDR_DEST | ip6::NEXTHDR_ROUTING | ip6::NEXTHDR_FRAGMENT => None,
        _ => Some(chain),
    }
}

/// Parses an IPv6 packet (the caller has seen the EtherType).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed<V6>, Error> {
    let Ok((ver_tc, _)) = load_pair(ctx, IP6_OFF + ip6::VER_TC_FLOW) else {
        return Ok(Parsed::Other);
    };
    if ver_tc >> 4 != ip6::VERSION {
        return Ok(Parsed::Other);
    }
    // One load at a time, each with its own exit: a tuple of results leaves the
    // second unset where the first failed, and LLVM may still copy it, which the
    // verifier refuses.
    let Ok(saddr) = load::<Addr6>(ctx, IP6_OFF + ip6::SADDR) else {
        return Ok(Parsed::Other);
    };
    let Ok(daddr) = load::<Addr6>(ctx, IP6_OFF + ip6::DADDR) else {
        return Ok(Parsed::Other);
    };
    let Some(chain) = walk(ctx, IP6_OFF) else {
        return Ok(Parsed::Other);
    };
    let (proto, l4_off, frag) = (chain.proto, chain.off, chain.frag);
    let packet = Packet {
        l4_off,
        proto_off: chain.proto_off,
        proto,
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        frag,
        tcp_flags: 0,
    };
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {}
        // NDP, MLD, echo and errors alike: icmp6.rs looks at errors only.
        ip6::NEXTHDR_ICMP if frag != Frag::Later => {
            return Ok(Parsed::Icmp {
                l4_off,
                saddr,
                daddr,
            });
        }
        _ if frag == Frag::Later => return Ok(Parsed::Other),
        ip6::NEXTHDR_AUTH | ip6::NEXTHDR_ESP | ip6::NEXTHDR_NONE => return Ok(Parsed::Other),
        _ => return Ok(Parsed::OtherProto(packet)),
    }
    let frag_key = Frag6Key {
        saddr,
        daddr,
        id: chain.frag_id,
        proto,
        pad: [0; 3],
    };
    let (sport, dport, tcp_flags) = if frag == Frag::Later {
        match get_copy(&FRAG6, &frag_key) {
            Some(ports) => (ports.sport, ports.dport, 0),
            None => {
                count(Counter::NpFragUnknown);
                return Ok(Parsed::Other);
            }
        }
    } else {
        let Ok(sport) = load::<u16>(ctx, l4_off + l4::SPORT) else {
            return Ok(Parsed::Other);
        };
        let Ok(dport) = load::<u16>(ctx, l4_off + l4::DPORT) else {
            return Ok(Parsed::Other);
        };
        let flags = if proto == IPPROTO_TCP {
            match load_pair(ctx, l4_off + tcp::DOFF_FLAGS) {
                Ok((_doff, flags)) => flags,
                Err(_) => return Ok(Parsed::Other),
            }
        } else {
            0
        };
        (sport, dport, flags)
    };
    if frag == Frag::First {
        // Remembered whether or not the datagram turns out to be ours: a later
        // fragment cannot be matched otherwise.
        let _ = FRAG6.insert(&frag_key, &Frag4Value { sport, dport }, BPF_ANY as u64);
    }
    Ok(Parsed::Flow(Packet {
        sport,
        dport,
        tcp_flags,
        ..packet
    }))
}
