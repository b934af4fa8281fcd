//! Packets for the TC fixtures in both families: a builder (Ethernet; IPv4 with options
//! and fragments; IPv6 with extension headers and fragment headers; TCP, UDP, ICMP and
//! ICMPv6), a decoder that names every field, a field-by-field diff, and a checksum
//! verifier. Checksums are computed here from scratch (RFC 1071, with the pseudo
//! header of each family), never with the kernel's helpers, so a checksum bug in the
//! data path fails the fixtures.
//!
//! A packet is written with test addresses (IPv4) and a [`Family`]: in IPv6 each
//! stands for its twin ([`crate::family`]).
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4},
};

use crate::family::{Family, test_sock};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ICMPV6: u8 = 58;

/// IPv6 extension headers (Next Header values).
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_DEST: u8 = 60;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_PROT_UNREACH: u8 = 2;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETERPROB: u8 = 12;

pub const ICMP6_DEST_UNREACH: u8 = 1;
pub const ICMP6_PKT_TOOBIG: u8 = 2;
pub const ICMP6_TIME_EXCEED: u8 = 3;
pub const ICMP6_PARAMPROB: u8 = 4;
pub const ICMP6_PORT_UNREACH: u8 = 4;
pub const ICMP6_UNK_NEXTHDR: u8 = 1;
pub const ICMP6_ECHO_REQUEST: u8 = 128;

/// The MACs of every fixture frame: the client's and the node device's (the programs
/// only touch them to send an answer back, swapped).
pub const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x64];
pub const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];

// ---------------------------------------------------------------------------------------
// Checksums (RFC 1071), independent of the kernel.
// ---------------------------------------------------------------------------------------

/// One's complement sum of `data` as big-endian 16-bit words (odd length: padded with
/// a zero byte), added to `initial`, not folded.
pub fn ones_sum(data: &[u8], initial: u32) -> u32 {
    let mut sum = u64::from(initial);
    for chunk in data.chunks(2) {
        let word = match chunk {
            [hi, lo] => u16::from_be_bytes([*hi, *lo]),
            [hi] => u16::from_be_bytes([*hi, 0]),
            _ => 0,
        };
        sum += u64::from(word);
    }
    while sum > 0xffff_ffff {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` with `initial` (a pseudo header sum) added.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    !fold(ones_sum(data, initial))
}

/// Sum of the TCP/UDP/ICMPv6 pseudo header of either family (RFC 793, RFC 8200 8.1).
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize) -> u32 {
    let mut ph = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ph.extend_from_slice(&s.octets());
            ph.extend_from_slice(&d.octets());
            ph.extend_from_slice(&[0, proto]);
            ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ph.extend_from_slice(&s.octets());
            ph.extend_from_slice(&d.octets());
            ph.extend_from_slice(&(l4_len as u32).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("a pseudo header of mixed families: {src} {dst}"),
    }
    ones_sum(&ph, 0)
}

/// Offset of the checksum in an upper-layer header of `proto`.
fn csum_offset(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => 2, // ICMP, ICMPv6
    }
}

/// The checksum a TCP segment, UDP datagram or ICMPv6 message (`l4`, its checksum
/// field zeroed or not) must carry. UDP's computed 0 is sent as 0xffff.
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let mut zeroed = l4.to_vec();
    let off = csum_offset(proto);
    if zeroed.len() >= off + 2 {
        zeroed[off] = 0;
        zeroed[off + 1] = 0;
    }
    let c = checksum(&zeroed, pseudo_header_sum(src, dst, proto, l4.len()));
    if proto == IPPROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

// ---------------------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------------------

/// The L4 part of a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        payload: Vec<u8>,
    },
    /// `checksum: false` sends checksum 0 ("none"; IPv4 only: IPv6 has no such thing).
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        checksum: bool,
    },
    /// ICMP, or ICMPv6 in an IPv6 packet (types are the family's own).
    /// `rest`: the 4 bytes after the checksum (unused / next-hop MTU / echo id+seq).
    Icmp {
        icmp_type: u8,
        code: u8,
        rest: [u8; 4],
        body: Vec<u8>,
    },
    /// Another IP protocol: its bytes as they are.
    Raw { proto: u8, payload: Vec<u8> },
}

/// An IPv6 extension header before the upper-layer header (the fragment header is
/// [`Pkt::fragments`]'s): its Next Header value and its bytes after the Next Header
/// and length fields (6 + 8n bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext {
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Ext {
    /// Hop-by-hop options: a router alert (RFC 2711) and padding.
    pub fn hop_by_hop() -> Self {
        Self {
            kind: NEXTHDR_HOP,
            body: vec![0x05, 0x02, 0x00, 0x00, 0x01, 0x00],
        }
    }

    /// Destination options of 14 bytes (PadN options), so its length field is not 0.
    pub fn dest_opts() -> Self {
        Self {
            kind: NEXTHDR_DEST,
            body: vec![0x01, 0x04, 0, 0, 0, 0, 0x01, 0x06, 0, 0, 0, 0, 0, 0],
        }
    }

    /// A routing header (type 253, experimental) with `segments_left` segments to go
    /// and one address of data.
    pub fn routing(segments_left: u8) -> Self {
        let mut body = vec![253, segments_left, 0, 0, 0, 0];
        body.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]);
        Self {
            kind: NEXTHDR_ROUTING,
            body,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        assert!(
            (self.body.len() + 2).is_multiple_of(8),
            "extension headers fill 8-byte units"
        );
        let mut b = vec![next, ((self.body.len() + 2) / 8 - 1) as u8];
        b.extend_from_slice(&self.body);
        b
    }
}

/// An ICMP error by meaning, for [`Pkt::icmp_error`]: each family has its own numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpError {
    /// Port unreachable (ICMPv6: destination unreachable / port unreachable).
    PortUnreachable,
    /// Fragmentation needed with a next-hop MTU (ICMPv6: packet too big).
    TooBig { mtu: u16 },
    /// Time exceeded in transit (TTL / hop limit).
    TimeExceeded,
    /// Parameter problem at `pointer`, an offset into the quoted packet.
    ParameterProblem { pointer: u8 },
}

impl IcmpError {
    fn wire(self, f: Family) -> (u8, u8, [u8; 4]) {
        match (self, f) {
            (IcmpError::PortUnreachable, Family::V4) => {
                (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, [0; 4])
            }
            (IcmpError::PortUnreachable, Family::V6) => {
                (ICMP6_DEST_UNREACH, ICMP6_PORT_UNREACH, [0; 4])
            }
            (IcmpError::TooBig { mtu }, Family::V4) => {
                let [hi, lo] = mtu.to_be_bytes();
                (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, [0, 0, hi, lo])
            }
            (IcmpError::TooBig { mtu }, Family::V6) => {
                (ICMP6_PKT_TOOBIG, 0, u32::from(mtu).to_be_bytes())
            }
            (IcmpError::TimeExceeded, Family::V4) => (ICMP_TIME_EXCEEDED, 0, [0; 4]),
            (IcmpError::TimeExceeded, Family::V6) => (ICMP6_TIME_EXCEED, 0, [0; 4]),
            (IcmpError::ParameterProblem { pointer }, Family::V4) => {
                (ICMP_PARAMETERPROB, 0, [pointer, 0, 0, 0])
            }
            (IcmpError::ParameterProblem { pointer }, Family::V6) => {
                (ICMP6_PARAMPROB, 0, u32::from(pointer).to_be_bytes())
            }
        }
    }
}

/// An IP packet of either family in an Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub family: Family,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4: the identification. IPv6: the low half of a fragment header's
    /// identification ([`Pkt::fragments`]).
    pub id: u16,
    /// TTL (IPv6: hop limit).
    pub ttl: u8,
    /// TOS (IPv6: traffic class).
    pub tos: u8,
    /// IPv4 only.
    pub df: bool,
    /// IPv4 options (a multiple of 4 bytes): IHL = 5 + options.len() / 4.
    pub options: Vec<u8>,
    /// IPv6 extension headers before the upper-layer header, in order.
    pub ext: Vec<Ext>,
    pub l4: L4,
}

/// The high half of every IPv6 fragment identification: the programs must read all 32
/// bits.
const FRAG6_ID_HIGH: u32 = 0xa5_0000;

impl Pkt {
    fn ip(f: Family, src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            family: f,
            src: f.ip(src),
            dst: f.ip(dst),
            id: 0x4d2e,
            ttl: 63,
            tos: 0,
            df: true,
            options: Vec::new(),
            ext: Vec::new(),
            l4,
        }
    }

    /// A TCP segment with a fixed sequence number (and ack number when ACK is set).
    pub fn tcp(f: Family, src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        let ack = if flags & ACK != 0 { 0x0bad_cafe } else { 0 };
        Self::ip(
            f,
            *src.ip(),
            *dst.ip(),
            L4::Tcp {
                sport: src.port(),
                dport: dst.port(),
                seq: 0x1234_5678,
                ack,
                flags,
                window: 64_240,
                payload: Vec::new(),
            },
        )
    }

    pub fn udp(f: Family, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Self {
        Self::ip(
            f,
            *src.ip(),
            *dst.ip(),
            L4::Udp {
                sport: src.port(),
                dport: dst.port(),
                payload: payload.to_vec(),
                checksum: true,
            },
        )
    }

    /// An ICMP (IPv6: ICMPv6) message with the family's own type and code.
    pub fn icmp(
        f: Family,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        rest: [u8; 4],
        body: &[u8],
    ) -> Self {
        Self {
            df: false,
            ..Self::ip(
                f,
                src,
                dst,
                L4::Icmp {
                    icmp_type,
                    code,
                    rest,
                    body: body.to_vec(),
                },
            )
        }
    }

    /// The ICMP error `error` quoting `quoted`, in the family's numbers.
    pub fn icmp_error(
        f: Family,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        error: IcmpError,
        quoted: &[u8],
    ) -> Self {
        let (icmp_type, code, rest) = error.wire(f);
        Self::icmp(f, src, dst, icmp_type, code, rest, quoted)
    }

    /// An echo request (ping) of the family.
    pub fn echo_request(f: Family, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        let icmp_type = match f {
            Family::V4 => ICMP_ECHO_REQUEST,
            Family::V6 => ICMP6_ECHO_REQUEST,
        };
        Self::icmp(f, src, dst, icmp_type, 0, [0x12, 0x34, 0, 1], b"ping")
    }

    /// A datagram of another IP protocol.
    pub fn raw(f: Family, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Self {
        Self::ip(
            f,
            src,
            dst,
            L4::Raw {
                proto,
                payload: payload.to_vec(),
            },
        )
    }

    pub fn payload(mut self, data: &[u8]) -> Self {
        match &mut self.l4 {
            L4::Tcp { payload, .. } | L4::Udp { payload, .. } | L4::Raw { payload, .. } => {
                *payload = data.to_vec()
            }
            L4::Icmp { body, .. } => *body = data.to_vec(),
        }
        self
    }

    /// IPv4 options.
    pub fn options(mut self, options: &[u8]) -> Self {
        assert_eq!(self.family, Family::V4, "IP options are IPv4's");
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "IP options must fill 32-bit words"
        );
        self.options = options.to_vec();
        self
    }

    /// IPv6 extension headers before the upper-layer header.
    pub fn ext(mut self, ext: &[Ext]) -> Self {
        assert_eq!(self.family, Family::V6, "extension headers are IPv6's");
        self.ext = ext.to_vec();
        self
    }

    pub fn no_udp_checksum(mut self) -> Self {
        if let L4::Udp { checksum, .. } = &mut self.l4 {
            *checksum = false;
        }
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// The packet as a router forwards it: TTL one less.
    pub fn routed(mut self) -> Self {
        self.ttl -= 1;
        self
    }

    /// Source address and port (port 0 for ICMP and other protocols), as the test
    /// address it stands for.
    pub fn src_sa(&self) -> SocketAddrV4 {
        let port = match self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => sport,
            L4::Icmp { .. } | L4::Raw { .. } => 0,
        };
        test_sock((self.src, port).into())
    }

    /// Destination address and port (port 0 for ICMP and other protocols), as the
    /// test address it stands for.
    pub fn dst_sa(&self) -> SocketAddrV4 {
        let port = match self.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => dport,
            L4::Icmp { .. } | L4::Raw { .. } => 0,
        };
        test_sock((self.dst, port).into())
    }

    pub fn no_df(mut self) -> Self {
        self.df = false;
        self
    }

    pub fn id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }

    /// The same packet from another (test) address and port (for TCP/UDP).
    pub fn from(mut self, src: SocketAddrV4) -> Self {
        self.src = self.family.ip(*src.ip());
        match &mut self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = src.port(),
            L4::Icmp { .. } | L4::Raw { .. } => {}
        }
        self
    }

    /// The same packet to another (test) address and port (for TCP/UDP).
    pub fn to(mut self, dst: SocketAddrV4) -> Self {
        self.dst = self.family.ip(*dst.ip());
        match &mut self.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = dst.port(),
            L4::Icmp { .. } | L4::Raw { .. } => {}
        }
        self
    }

    /// The upper-layer protocol.
    pub fn proto(&self) -> u8 {
        match (&self.l4, self.family) {
            (L4::Tcp { .. }, _) => IPPROTO_TCP,
            (L4::Udp { .. }, _) => IPPROTO_UDP,
            (L4::Icmp { .. }, Family::V4) => IPPROTO_ICMP,
            (L4::Icmp { .. }, Family::V6) => IPPROTO_ICMPV6,
            (L4::Raw { proto, .. }, _) => *proto,
        }
    }

    /// The L4 bytes, checksum included (computed over the whole datagram).
    pub fn l4_bytes(&self) -> Vec<u8> {
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                payload,
            } => {
                let mut b = Vec::with_capacity(20 + payload.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&ack.to_be_bytes());
                b.push(5 << 4);
                b.push(*flags);
                b.extend_from_slice(&window.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                b.extend_from_slice(payload);
                let c = l4_checksum(self.src, self.dst, IPPROTO_TCP, &b);
                b[16..18].copy_from_slice(&c.to_be_bytes());
                b
            }
            L4::Udp {
                sport,
                dport,
                payload,
                checksum,
            } => {
                let mut b = Vec::with_capacity(8 + payload.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(payload);
                if *checksum {
                    let c = l4_checksum(self.src, self.dst, IPPROTO_UDP, &b);
                    b[6..8].copy_from_slice(&c.to_be_bytes());
                }
                b
            }
            L4::Icmp {
                icmp_type,
                code,
                rest,
                body,
            } => {
                let mut b = vec![*icmp_type, *code, 0, 0];
                b.extend_from_slice(rest);
                b.extend_from_slice(body);
                // ICMPv6 sums a pseudo header, ICMP does not.
                let c = match self.family {
                    Family::V4 => checksum(&b, 0),
                    Family::V6 => l4_checksum(self.src, self.dst, IPPROTO_ICMPV6, &b),
                };
                b[2..4].copy_from_slice(&c.to_be_bytes());
                b
            }
            L4::Raw { payload, .. } => payload.clone(),
        }
    }

    /// The IP header(s) for `payload_len` bytes of upper-layer data: IPv4 (checksum
    /// computed) with MF and the fragment offset as given; IPv6 with its extension
    /// headers, and a fragment header when `frag` says so (offset, MF).
    fn ip_header(&self, payload_len: usize, mf: bool, frag_offset: usize, frag: bool) -> Vec<u8> {
        assert!(
            frag_offset.is_multiple_of(8),
            "fragment offsets are multiples of 8"
        );
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let ihl = 5 + self.options.len() / 4;
                let mut h = Vec::with_capacity(ihl * 4);
                h.push(0x40 | ihl as u8);
                h.push(self.tos);
                h.extend_from_slice(&((ihl * 4 + payload_len) as u16).to_be_bytes());
                h.extend_from_slice(&self.id.to_be_bytes());
                let flags_off = (if self.df { 0x4000 } else { 0 })
                    | (if mf { 0x2000 } else { 0 })
                    | (frag_offset / 8) as u16;
                h.extend_from_slice(&flags_off.to_be_bytes());
                h.push(self.ttl);
                h.push(self.proto());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&src.octets());
                h.extend_from_slice(&dst.octets());
                h.extend_from_slice(&self.options);
                let c = checksum(&h, 0);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                h
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                // The chain after the fixed header: extension headers, then the
                // fragment header, each naming the next.
                let mut kinds: Vec<u8> = self.ext.iter().map(|e| e.kind).collect();
                if frag {
                    kinds.push(NEXTHDR_FRAGMENT);
                }
                kinds.push(self.proto());
                let mut chain = Vec::new();
                for (i, e) in self.ext.iter().enumerate() {
                    chain.extend_from_slice(&e.bytes(kinds[i + 1]));
                }
                if frag {
                    let next = kinds[kinds.len() - 1];
                    chain.extend_from_slice(&[next, 0]);
                    let off_m = (frag_offset as u16) | u16::from(mf);
                    chain.extend_from_slice(&off_m.to_be_bytes());
                    chain.extend_from_slice(&(FRAG6_ID_HIGH | u32::from(self.id)).to_be_bytes());
                }
                let mut h = Vec::with_capacity(40 + chain.len());
                let ver_tc_flow = (6u32 << 28) | (u32::from(self.tos) << 20);
                h.extend_from_slice(&ver_tc_flow.to_be_bytes());
                h.extend_from_slice(&((chain.len() + payload_len) as u16).to_be_bytes());
                h.push(kinds[0]);
                h.push(self.ttl);
                h.extend_from_slice(&src.octets());
                h.extend_from_slice(&dst.octets());
                h.extend_from_slice(&chain);
                h
            }
            _ => panic!("a packet of mixed families: {self:?}"),
        }
    }

    /// The IP packet (header and L4).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let mut p = self.ip_header(l4.len(), false, 0, false);
        p.extend_from_slice(&l4);
        p
    }

    /// The length of the IP header (IPv6: with its extension headers).
    pub fn ip_hlen(&self) -> usize {
        self.ip_header(0, false, 0, false).len()
    }

    fn ethertype(&self) -> u16 {
        match self.family {
            Family::V4 => ETH_P_IP,
            Family::V6 => ETH_P_IPV6,
        }
    }

    /// The Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        ether(self.ethertype(), &self.ip_bytes())
    }

    /// The Ethernet frame of an answer to a fixture frame: the MACs swapped.
    pub fn reply_frame(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(ETH_HLEN + 20);
        f.extend_from_slice(&SRC_MAC);
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&self.ethertype().to_be_bytes());
        f.extend_from_slice(&self.ip_bytes());
        f
    }

    /// The frames of this datagram split into fragments: the L4 bytes cut at each of
    /// `cuts` (offsets into the L4 bytes, multiples of 8). IPv4: DF cleared. IPv6: a
    /// fragment header after the extension headers (all taken as the unfragmentable
    /// part), identification [`FRAG6_ID_HIGH`] | id.
    pub fn fragments(&self, cuts: &[usize]) -> Vec<Vec<u8>> {
        let me = Self {
            df: false,
            ..self.clone()
        };
        let l4 = me.l4_bytes();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(l4.len());
        bounds
            .windows(2)
            .map(|w| {
                let (start, end) = (w[0], w[1]);
                let last = end == l4.len();
                let mut p = me.ip_header(end - start, !last, start, true);
                p.extend_from_slice(&l4[start..end]);
                ether(me.ethertype(), &p)
            })
            .collect()
    }
}

pub fn ether(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP request (who has `target`? tell `sender`).
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    a.extend_from_slice(&SRC_MAC);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&a);
    f
}

/// The IP packet of an Ethernet frame.
pub fn ip_of(frame: &[u8]) -> &[u8] {
    &frame[ETH_HLEN..]
}

/// The source and destination addresses of a frame's IP packet (either family).
pub fn addrs_of(frame: &[u8]) -> (IpAddr, IpAddr) {
    let ip = ip_of(frame);
    match be16(frame, 12) {
        ETH_P_IP => (ip4(ip, 12).into(), ip4(ip, 16).into()),
        ETH_P_IPV6 => (ip6(ip, 8).into(), ip6(ip, 24).into()),
        other => panic!("no IP in a frame of EtherType {other:#06x}"),
    }
}

/// Where an IPv6 packet's header chain ends: (upper-layer protocol, its offset, the
/// offset of the Next Header byte naming it, the fragment header's offset if any).
/// None when the chain is cut short.
pub fn chain6(p: &[u8]) -> Option<(u8, usize, usize, Option<usize>)> {
    let mut nh = *p.get(6)?;
    let mut nh_off = 6;
    let mut off = 40;
    let mut frag = None;
    loop {
        match nh {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let len = (usize::from(*p.get(off + 1)?) + 1) * 8;
                nh = *p.get(off)?;
                nh_off = off;
                off += len;
            }
            NEXTHDR_FRAGMENT => {
                nh = *p.get(off)?;
                frag = Some(off);
                nh_off = off;
                off += 8;
            }
            _ => return Some((nh, off, nh_off, frag)),
        }
    }
}

/// Reassembles the fragments of one datagram (frames, any order) into one unfragmented
/// frame: IPv4 with a fresh header checksum computed here; IPv6 without its fragment
/// header.
pub fn reassemble(frames: &[Vec<u8>]) -> Vec<u8> {
    let v6 = be16(&frames[0], 12) == ETH_P_IPV6;
    // (offset, data, more fragments)
    let mut parts: Vec<(usize, &[u8], bool)> = frames
        .iter()
        .map(|f| {
            let ip = ip_of(f);
            if v6 {
                let (_, off, _, frag) = chain6(ip).expect("a whole header chain");
                let frag = frag.expect("a fragment header");
                let fo = be16(ip, frag + 2);
                let total = 40 + usize::from(be16(ip, 4));
                (usize::from(fo & 0xfff8), &ip[off..total], fo & 1 != 0)
            } else {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let fo = be16(ip, 6);
                let total = usize::from(be16(ip, 2));
                (
                    usize::from(fo & 0x1fff) * 8,
                    &ip[ihl..total],
                    fo & 0x2000 != 0,
                )
            }
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let mut l4 = Vec::new();
    for (offset, data, _) in &parts {
        assert_eq!(*offset, l4.len(), "fragments leave a hole or overlap");
        l4.extend_from_slice(data);
    }
    assert!(
        !parts.last().is_some_and(|p| p.2),
        "the last fragment has MF set"
    );
    let is_first = |f: &&Vec<u8>| {
        let ip = ip_of(f);
        if v6 {
            let frag = chain6(ip).and_then(|c| c.3).expect("a fragment header");
            be16(ip, frag + 2) & 0xfff8 == 0
        } else {
            be16(ip, 6) & 0x1fff == 0
        }
    };
    let first = frames.iter().find(is_first).expect("a first fragment");
    let ip = ip_of(first);
    let h = if v6 {
        let frag = chain6(ip).and_then(|c| c.3).expect("a fragment header");
        // The header before the fragment header now names what the fragment header
        // did: the fixed header's Next Header, or the last extension header's.
        let mut h = ip[..frag].to_vec();
        let mut named = 6;
        let mut off = 40;
        while off < frag {
            named = off;
            off += (usize::from(ip[off + 1]) + 1) * 8;
        }
        h[named] = ip[frag];
        let payload = h.len() - 40 + l4.len();
        h[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
        h
    } else {
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let mut h = ip[..ihl].to_vec();
        h[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        h[6] &= !0x3f; // MF and offset cleared, DF kept
        h[7] = 0;
        h[10] = 0;
        h[11] = 0;
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    };
    let mut f = first[..ETH_HLEN].to_vec();
    f.extend_from_slice(&h);
    f.extend_from_slice(&l4);
    f
}

// ---------------------------------------------------------------------------------------
// Decoder: every field by name, for readable diffs.
// ---------------------------------------------------------------------------------------

pub type Fields = Vec<(String, String)>;

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "(none)".into();
    }
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn ip4(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

fn ip6(b: &[u8], off: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    Ipv6Addr::from(a)
}

fn tcp_flags(f: u8) -> String {
    let names = [
        (FIN, "FIN"),
        (SYN, "SYN"),
        (RST, "RST"),
        (PSH, "PSH"),
        (ACK, "ACK"),
        (0x20, "URG"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        format!("{f:#04x}")
    } else {
        format!("{} ({f:#04x})", set.join("|"))
    }
}

/// Decodes an Ethernet frame into named fields.
pub fn decode(frame: &[u8]) -> Fields {
    let mut out = Fields::new();
    let mut put = |k: &str, v: String| out.push((k.to_string(), v));
    if frame.len() < ETH_HLEN {
        put("frame", hex(frame));
        return out;
    }
    put("eth.dst", mac(&frame[0..6]));
    put("eth.src", mac(&frame[6..12]));
    let ethertype = be16(frame, 12);
    put("eth.type", format!("{ethertype:#06x}"));
    let rest = &frame[ETH_HLEN..];
    match ethertype {
        ETH_P_IP if rest.len() >= 20 => decode_ipv4(rest, "", &mut out),
        ETH_P_IPV6 if rest.len() >= 40 => decode_ipv6(rest, "", &mut out),
        _ => put("eth.payload", hex(rest)),
    }
    out
}

/// Decodes an IPv4 packet (possibly truncated, as quoted in an ICMP error) with field
/// names prefixed by `prefix`.
fn decode_ipv4(p: &[u8], prefix: &str, out: &mut Fields) {
    let mut put = |k: &str, v: String| out.push((format!("{prefix}{k}"), v));
    let ihl = usize::from(p[0] & 0x0f) * 4;
    put("ip.version", (p[0] >> 4).to_string());
    put("ip.ihl", format!("{} ({} bytes)", p[0] & 0x0f, ihl));
    put("ip.tos", format!("{:#04x}", p[1]));
    put("ip.total_len", be16(p, 2).to_string());
    put("ip.id", format!("{:#06x}", be16(p, 4)));
    let fo = be16(p, 6);
    let flags = format!(
        "{}{}",
        if fo & 0x4000 != 0 { "DF " } else { "" },
        if fo & 0x2000 != 0 { "MF" } else { "" }
    );
    put(
        "ip.flags",
        if flags.is_empty() {
            "-".into()
        } else {
            flags.trim().to_string()
        },
    );
    put(
        "ip.frag_offset",
        format!("{} bytes", usize::from(fo & 0x1fff) * 8),
    );
    put("ip.ttl", p[8].to_string());
    put("ip.proto", p[9].to_string());
    put("ip.checksum", format!("{:#06x}", be16(p, 10)));
    put("ip.src", ip4(p, 12).to_string());
    put("ip.dst", ip4(p, 16).to_string());
    if ihl < 20 || p.len() < ihl {
        put("ip.rest", hex(&p[20.min(p.len())..]));
        return;
    }
    if ihl > 20 {
        put("ip.options", hex(&p[20..ihl]));
    }
    let total = usize::from(be16(p, 2)).clamp(ihl, p.len().max(ihl));
    let l4 = &p[ihl..total.min(p.len())];
    if fo & 0x1fff != 0 {
        put("ip.fragment_data", hex(l4));
        return;
    }
    decode_l4(Family::V4, p[9], l4, prefix, out);
}

/// Decodes an IPv6 packet (possibly truncated, as quoted in an ICMPv6 error) with
/// field names prefixed by `prefix`.
fn decode_ipv6(p: &[u8], prefix: &str, out: &mut Fields) {
    {
        let mut put = |k: &str, v: String| out.push((format!("{prefix}{k}"), v));
        let vtf = be32(p, 0);
        put("ip6.version", (vtf >> 28).to_string());
        put("ip6.tclass", format!("{:#04x}", (vtf >> 20) & 0xff));
        put("ip6.flow", format!("{:#07x}", vtf & 0xf_ffff));
        put("ip6.payload_len", be16(p, 4).to_string());
        put("ip6.nexthdr", p[6].to_string());
        put("ip6.hop_limit", p[7].to_string());
        put("ip6.src", ip6(p, 8).to_string());
        put("ip6.dst", ip6(p, 24).to_string());
    }
    let end = (40 + usize::from(be16(p, 4))).min(p.len());
    let mut nh = p[6];
    let mut off = 40;
    let mut later_fragment = false;
    let mut n = 0;
    loop {
        let mut put = |k: &str, v: String| out.push((format!("{prefix}{k}"), v));
        match nh {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST if off + 2 <= end => {
                let len = (usize::from(p[off + 1]) + 1) * 8;
                let name = match nh {
                    NEXTHDR_HOP => "hop_by_hop",
                    NEXTHDR_ROUTING => "routing",
                    _ => "dest_opts",
                };
                put(
                    &format!("ext{n}.{name}"),
                    format!(
                        "next {} len {len}: {}",
                        p[off],
                        hex(&p[off..(off + len).min(end)])
                    ),
                );
                nh = p[off];
                off += len;
            }
            NEXTHDR_FRAGMENT if off + 8 <= end => {
                let fo = be16(p, off + 2);
                put(
                    &format!("ext{n}.fragment"),
                    format!(
                        "next {} offset {} {}id {:#010x}",
                        p[off],
                        fo & 0xfff8,
                        if fo & 1 != 0 { "MF " } else { "" },
                        be32(p, off + 4)
                    ),
                );
                later_fragment = fo & 0xfff8 != 0;
                nh = p[off];
                off += 8;
            }
            _ => break,
        }
        n += 1;
    }
    let l4 = &p[off.min(end)..end];
    if later_fragment {
        out.push((format!("{prefix}ip6.fragment_data"), hex(l4)));
        return;
    }
    decode_l4(Family::V6, nh, l4, prefix, out);
}

/// Whether an ICMP message of `f` with this type quotes a packet.
fn icmp_quotes(f: Family, icmp_type: u8) -> bool {
    match f {
        Family::V4 => matches!(
            icmp_type,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
        ),
        Family::V6 => icmp_type < 128,
    }
}

fn decode_l4(f: Family, proto: u8, l4: &[u8], prefix: &str, out: &mut Fields) {
    let mut put = |k: &str, v: String| out.push((format!("{prefix}{k}"), v));
    let quoted = !prefix.is_empty();
    let icmp = match f {
        Family::V4 => IPPROTO_ICMP,
        Family::V6 => IPPROTO_ICMPV6,
    };
    match proto {
        IPPROTO_TCP if l4.len() >= 20 => {
            put("tcp.sport", be16(l4, 0).to_string());
            put("tcp.dport", be16(l4, 2).to_string());
            put("tcp.seq", format!("{:#010x}", be32(l4, 4)));
            put("tcp.ack", format!("{:#010x}", be32(l4, 8)));
            let doff = usize::from(l4[12] >> 4) * 4;
            put("tcp.data_offset", doff.to_string());
            put("tcp.flags", tcp_flags(l4[13]));
            put("tcp.window", be16(l4, 14).to_string());
            put("tcp.checksum", format!("{:#06x}", be16(l4, 16)));
            put("tcp.urgent", be16(l4, 18).to_string());
            if doff > 20 && l4.len() >= doff {
                put("tcp.options", hex(&l4[20..doff]));
            }
            put("tcp.payload", hex(&l4[doff.clamp(20, l4.len())..]));
        }
        IPPROTO_UDP if l4.len() >= 8 => {
            put("udp.sport", be16(l4, 0).to_string());
            put("udp.dport", be16(l4, 2).to_string());
            put("udp.len", be16(l4, 4).to_string());
            put("udp.checksum", format!("{:#06x}", be16(l4, 6)));
            put("udp.payload", hex(&l4[8..]));
        }
        IPPROTO_TCP | IPPROTO_UDP if quoted && l4.len() >= 8 => {
            // An ICMP error quotes at least the first 8 bytes of the L4 header.
            put("l4.sport", be16(l4, 0).to_string());
            put("l4.dport", be16(l4, 2).to_string());
            put("l4.bytes_4_8", hex(&l4[4..8]));
            put("l4.rest", hex(&l4[8..]));
        }
        p if p == icmp && l4.len() >= 8 && !quoted => {
            put("icmp.type", l4[0].to_string());
            put("icmp.code", l4[1].to_string());
            put("icmp.checksum", format!("{:#06x}", be16(l4, 2)));
            put("icmp.rest", hex(&l4[4..8]));
            let body = &l4[8..];
            let inner = format!("{prefix}icmp.quoted.");
            match f {
                Family::V4 if icmp_quotes(f, l4[0]) && body.len() >= 20 && body[0] >> 4 == 4 => {
                    decode_ipv4(body, &inner, out)
                }
                Family::V6 if icmp_quotes(f, l4[0]) && body.len() >= 40 && body[0] >> 4 == 6 => {
                    decode_ipv6(body, &inner, out)
                }
                _ => out.push((format!("{prefix}icmp.body"), hex(body))),
            }
        }
        _ => put("ip.payload", hex(l4)),
    }
}

/// A field-by-field comparison: None when the frames are equal byte for byte.
pub fn diff(expected: &[u8], got: &[u8]) -> Option<String> {
    if expected == got {
        return None;
    }
    let (e, g) = (decode(expected), decode(got));
    let mut out = String::new();
    let same_shape = e.len() == g.len() && e.iter().zip(&g).all(|(a, b)| a.0 == b.0);
    if same_shape {
        for ((name, want), (_, have)) in e.iter().zip(&g) {
            if want != have {
                let _ = writeln!(out, "  {name}: expected {want}, got {have}");
            }
        }
    } else {
        let _ = writeln!(out, "  the packets differ in structure");
        let _ = writeln!(out, "  expected:\n{}", render(&e));
        let _ = writeln!(out, "  got:\n{}", render(&g));
    }
    if out.is_empty() {
        let _ = writeln!(out, "  bytes differ outside the decoded fields");
    }
    let _ = writeln!(out, "  expected bytes: {}", hex(expected));
    let _ = writeln!(out, "  got bytes:      {}", hex(got));
    Some(out)
}

pub fn render(fields: &Fields) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("    {k} = {v}\n"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Checksum verification of a frame, from scratch.
// ---------------------------------------------------------------------------------------

/// Every checksum problem of an IP frame: IPv4's header checksum; the TCP/UDP checksum
/// with its family's pseudo header (unfragmented packets only: a fragment's L4
/// checksum covers the whole datagram; use [`reassemble`]; IPv6 UDP must have one);
/// the ICMP checksum (ICMPv6: with its pseudo header), and the header checksum of an
/// IPv4 header quoted in an ICMP error. Frames of no IP have none.
pub fn checksum_problems(frame: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    if frame.len() < ETH_HLEN + 20 {
        return problems;
    }
    let p = ip_of(frame);
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match be16(frame, 12) {
        ETH_P_IP => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p.len() < ihl {
                problems.push(format!(
                    "IPv4 header of {ihl} bytes in a {}-byte packet",
                    p.len()
                ));
                return problems;
            }
            check_ip_header(&p[..ihl], "ip", &mut problems);
            let total = usize::from(be16(p, 2));
            if total != p.len() {
                problems.push(format!(
                    "ip.total_len is {total} but the packet has {} bytes",
                    p.len()
                ));
                return problems;
            }
            if be16(p, 6) & 0x3fff != 0 {
                return problems; // a fragment: see reassemble()
            }
            (ip4(p, 12).into(), ip4(p, 16).into(), p[9], &p[ihl..])
        }
        ETH_P_IPV6 if p.len() >= 40 => {
            let total = 40 + usize::from(be16(p, 4));
            if total != p.len() {
                problems.push(format!(
                    "ip6.payload_len is {} but the packet has {} bytes after the header",
                    be16(p, 4),
                    p.len() - 40
                ));
                return problems;
            }
            let Some((proto, off, _, frag)) = chain6(p) else {
                problems.push("an IPv6 header chain cut short".into());
                return problems;
            };
            if frag.is_some() {
                return problems; // a fragment: see reassemble()
            }
            (
                ip6(p, 8).into(),
                ip6(p, 24).into(),
                proto,
                &p[off.min(p.len())..],
            )
        }
        _ => return problems,
    };
    let v6 = src.is_ipv6();
    match proto {
        IPPROTO_TCP if l4.len() >= 20 => {
            let want = l4_checksum(src, dst, IPPROTO_TCP, l4);
            let have = be16(l4, 16);
            if want != have {
                problems.push(format!(
                    "tcp.checksum is {have:#06x}, should be {want:#06x}"
                ));
            }
        }
        IPPROTO_UDP if l4.len() >= 8 => {
            let have = be16(l4, 6);
            if usize::from(be16(l4, 4)) != l4.len() {
                problems.push(format!(
                    "udp.len is {} but the datagram has {} bytes",
                    be16(l4, 4),
                    l4.len()
                ));
            }
            // 0: the sender computed no checksum (IPv4 only, RFC 8200 8.1).
            if have == 0 && v6 {
                problems.push("udp.checksum is 0 in IPv6".into());
            } else if have != 0 {
                let want = l4_checksum(src, dst, IPPROTO_UDP, l4);
                if want != have {
                    problems.push(format!(
                        "udp.checksum is {have:#06x}, should be {want:#06x}"
                    ));
                }
            }
        }
        IPPROTO_ICMP if !v6 && l4.len() >= 8 => {
            let mut zeroed = l4.to_vec();
            zeroed[2] = 0;
            zeroed[3] = 0;
            let want = checksum(&zeroed, 0);
            let have = be16(l4, 2);
            if want != have {
                problems.push(format!(
                    "icmp.checksum is {have:#06x}, should be {want:#06x}"
                ));
            }
            let body = &l4[8..];
            if icmp_quotes(Family::V4, l4[0]) && body.len() >= 20 && body[0] >> 4 == 4 {
                let inner_ihl = usize::from(body[0] & 0x0f) * 4;
                if body.len() >= inner_ihl {
                    check_ip_header(&body[..inner_ihl], "icmp.quoted.ip", &mut problems);
                }
            }
        }
        IPPROTO_ICMPV6 if v6 && l4.len() >= 8 => {
            let want = l4_checksum(src, dst, IPPROTO_ICMPV6, l4);
            let have = be16(l4, 2);
            if want != have {
                problems.push(format!(
                    "icmp6.checksum is {have:#06x}, should be {want:#06x}"
                ));
            }
        }
        _ => {}
    }
    problems
}

fn check_ip_header(h: &[u8], name: &str, problems: &mut Vec<String>) {
    let mut zeroed = h.to_vec();
    zeroed[10] = 0;
    zeroed[11] = 0;
    let want = checksum(&zeroed, 0);
    let have = be16(h, 10);
    if want != have {
        problems.push(format!(
            "{name}.checksum is {have:#06x}, should be {want:#06x}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(ones_sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data, 0), !0xddf2);
    }

    #[test]
    fn a_known_ipv4_header() {
        // Wikipedia's IPv4 header checksum example: b861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h, 0), 0xb861);
    }
}
