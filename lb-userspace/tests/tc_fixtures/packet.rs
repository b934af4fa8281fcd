//! Packets for the TC fixtures: a builder (Ethernet, IPv4 with options and fragments,
//! TCP, UDP, ICMP), a decoder that names every field, a field-by-field diff, and a
//! checksum verifier. Checksums are computed here from scratch (RFC 1071), never with
//! the kernel's helpers, so a checksum bug in the data path fails the fixtures.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_GRE: u8 = 47;

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

/// Sum of the TCP/UDP pseudo header.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: usize) -> u32 {
    let mut ph = Vec::with_capacity(12);
    ph.extend_from_slice(&src.octets());
    ph.extend_from_slice(&dst.octets());
    ph.push(0);
    ph.push(proto);
    ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
    ones_sum(&ph, 0)
}

/// The checksum a TCP segment or UDP datagram (`l4`, its checksum field zeroed or not)
/// must carry. UDP's computed 0 is sent as 0xffff.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut zeroed = l4.to_vec();
    let off = if proto == IPPROTO_TCP { 16 } else { 6 };
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
    /// `checksum: false` sends checksum 0 ("none").
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        checksum: bool,
    },
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

/// An IPv4 packet in an Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub id: u16,
    pub ttl: u8,
    pub tos: u8,
    pub df: bool,
    /// IP options (a multiple of 4 bytes): IHL = 5 + options.len() / 4.
    pub options: Vec<u8>,
    pub l4: L4,
}

impl Pkt {
    fn ip(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            src,
            dst,
            id: 0x4d2e,
            ttl: 63,
            tos: 0,
            df: true,
            options: Vec::new(),
            l4,
        }
    }

    /// A TCP segment with a fixed sequence number (and ack number when ACK is set).
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        let ack = if flags & ACK != 0 { 0x0bad_cafe } else { 0 };
        Self::ip(
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

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Self {
        Self::ip(
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

    pub fn icmp(
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

    /// A datagram of another IP protocol.
    pub fn raw(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Self {
        Self::ip(
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

    pub fn options(mut self, options: &[u8]) -> Self {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "IP options must fill 32-bit words"
        );
        self.options = options.to_vec();
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

    /// Source address and port (port 0 for ICMP and other protocols).
    pub fn src_sa(&self) -> SocketAddrV4 {
        match self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => SocketAddrV4::new(self.src, sport),
            L4::Icmp { .. } | L4::Raw { .. } => SocketAddrV4::new(self.src, 0),
        }
    }

    /// Destination address and port (port 0 for ICMP and other protocols).
    pub fn dst_sa(&self) -> SocketAddrV4 {
        match self.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => SocketAddrV4::new(self.dst, dport),
            L4::Icmp { .. } | L4::Raw { .. } => SocketAddrV4::new(self.dst, 0),
        }
    }

    pub fn no_df(mut self) -> Self {
        self.df = false;
        self
    }

    pub fn id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }

    /// The same packet from another address (and port, for TCP/UDP).
    pub fn from(mut self, src: SocketAddrV4) -> Self {
        self.src = *src.ip();
        match &mut self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = src.port(),
            L4::Icmp { .. } | L4::Raw { .. } => {}
        }
        self
    }

    /// The same packet to another address (and port, for TCP/UDP).
    pub fn to(mut self, dst: SocketAddrV4) -> Self {
        self.dst = *dst.ip();
        match &mut self.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = dst.port(),
            L4::Icmp { .. } | L4::Raw { .. } => {}
        }
        self
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::Icmp { .. } => IPPROTO_ICMP,
            L4::Raw { proto, .. } => proto,
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
                let c = checksum(&b, 0);
                b[2..4].copy_from_slice(&c.to_be_bytes());
                b
            }
            L4::Raw { payload, .. } => payload.clone(),
        }
    }

    /// IPv4 header (checksum computed) followed by `payload`.
    fn ip_header(&self, payload_len: usize, mf: bool, frag_offset: usize) -> Vec<u8> {
        assert!(
            frag_offset.is_multiple_of(8),
            "fragment offsets are multiples of 8"
        );
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
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    /// The IPv4 packet (header and L4).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let mut p = self.ip_header(l4.len(), false, 0);
        p.extend_from_slice(&l4);
        p
    }

    /// The Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        ether(ETH_P_IP, &self.ip_bytes())
    }

    /// The Ethernet frame of an answer to a fixture frame: the MACs swapped.
    pub fn reply_frame(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(ETH_HLEN + 20);
        f.extend_from_slice(&SRC_MAC);
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        f.extend_from_slice(&self.ip_bytes());
        f
    }

    /// The frames of this datagram split into fragments: the L4 bytes cut at each of
    /// `cuts` (offsets into the L4 bytes, multiples of 8). DF is cleared.
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
                let mut p = me.ip_header(end - start, !last, start);
                p.extend_from_slice(&l4[start..end]);
                ether(ETH_P_IP, &p)
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

/// An IPv6 TCP SYN (the checksum is not the point: the programs must not look at it).
pub fn ipv6_tcp_syn(dport: u16) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 20, IPPROTO_TCP, 64];
    p.extend_from_slice(&[
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64,
    ]);
    p.extend_from_slice(&[
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b,
    ]);
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[
        0, 0, 0, 1, 0, 0, 0, 0, 0x50, SYN, 0xfa, 0xf0, 0x12, 0x34, 0, 0,
    ]);
    ether(ETH_P_IPV6, &p)
}

/// The IPv4 packet of an Ethernet frame.
pub fn ip_of(frame: &[u8]) -> &[u8] {
    &frame[ETH_HLEN..]
}

/// Reassembles the fragments of one datagram (frames, any order) into one unfragmented
/// frame, with a fresh header checksum computed here.
pub fn reassemble(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut parts: Vec<(usize, &[u8], bool)> = frames
        .iter()
        .map(|f| {
            let ip = ip_of(f);
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let fo = u16::from_be_bytes([ip[6], ip[7]]);
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            (
                usize::from(fo & 0x1fff) * 8,
                &ip[ihl..total],
                fo & 0x2000 != 0,
            )
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
    let first = frames
        .iter()
        .find(|f| u16::from_be_bytes([ip_of(f)[6], ip_of(f)[7]]) & 0x1fff == 0)
        .expect("a first fragment");
    let ip = ip_of(first);
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let mut h = ip[..ihl].to_vec();
    h[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    h[6] &= !0x3f; // MF and offset cleared, DF kept
    h[7] = 0;
    h[10] = 0;
    h[11] = 0;
    let c = checksum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(&l4);
    let mut f = first[..ETH_HLEN].to_vec();
    f.extend_from_slice(&h);
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
    if ethertype != ETH_P_IP || rest.len() < 20 {
        put("eth.payload", hex(rest));
        return out;
    }
    decode_ipv4(rest, "", &mut out);
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
    let quoted = !prefix.is_empty();
    match p[9] {
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
        IPPROTO_ICMP if l4.len() >= 8 && !quoted => {
            put("icmp.type", l4[0].to_string());
            put("icmp.code", l4[1].to_string());
            put("icmp.checksum", format!("{:#06x}", be16(l4, 2)));
            put("icmp.rest", hex(&l4[4..8]));
            let body = &l4[8..];
            if matches!(l4[0], ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | 12)
                && body.len() >= 20
                && body[0] >> 4 == 4
            {
                decode_ipv4(body, &format!("{prefix}icmp.quoted."), out);
            } else {
                out.push((format!("{prefix}icmp.body"), hex(body)));
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

/// Every checksum problem of an IPv4 frame: the header checksum, the TCP/UDP checksum
/// with its pseudo header (unfragmented packets only: a fragment's L4 checksum covers
/// the whole datagram; use [`reassemble`]), the ICMP checksum, and the header
/// checksum of an IPv4 header quoted in an ICMP error. Non-IPv4 frames have none.
pub fn checksum_problems(frame: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    if frame.len() < ETH_HLEN + 20 || be16(frame, 12) != ETH_P_IP {
        return problems;
    }
    let p = ip_of(frame);
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
    let fo = be16(p, 6);
    if fo & 0x3fff != 0 {
        return problems; // a fragment: see reassemble()
    }
    let (src, dst, l4) = (ip4(p, 12), ip4(p, 16), &p[ihl..]);
    match p[9] {
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
            // 0: the sender computed no checksum.
            if have != 0 {
                let want = l4_checksum(src, dst, IPPROTO_UDP, l4);
                if want != have {
                    problems.push(format!(
                        "udp.checksum is {have:#06x}, should be {want:#06x}"
                    ));
                }
            }
        }
        IPPROTO_ICMP if l4.len() >= 8 => {
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
            if matches!(l4[0], ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | 12)
                && body.len() >= 20
                && body[0] >> 4 == 4
            {
                let inner_ihl = usize::from(body[0] & 0x0f) * 4;
                if body.len() >= inner_ihl {
                    check_ip_header(&body[..inner_ihl], "icmp.quoted.ip", &mut problems);
                }
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
