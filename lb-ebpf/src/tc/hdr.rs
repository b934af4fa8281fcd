//! Header layouts: where each field sits within its header, and its values.

/// The IPv4 header starts right after the Ethernet header.
pub const IP4_OFF: usize = eth::HLEN;

/// The IPv6 header starts right after the Ethernet header.
pub const IP6_OFF: usize = eth::HLEN;

/// IP protocol number of ICMP (TCP and UDP: [`lb_common`]).
pub const IPPROTO_ICMP: u8 = 1;

/// Ethernet II.
pub mod eth {
    /// Header length.
    pub const HLEN: usize = 14;
    /// Destination address (6 bytes), followed by the source address.
    pub const DEST: usize = 0;
    /// Length of one address.
    pub const ALEN: usize = 6;
    /// EtherType, network byte order.
    pub const PROTO: usize = 12;
    /// EtherType of IPv4.
    pub const P_IP: u16 = 0x0800;
    /// EtherType of IPv6.
    pub const P_IPV6: u16 = 0x86dd;
}

/// IPv4 (RFC 791).
pub mod ip4 {
    /// Version (high nibble) and header length in 32-bit words (low nibble),
    /// followed by the TOS byte.
    pub const VER_IHL: usize = 0;
    /// Total length.
    pub const TOT_LEN: usize = 2;
    /// Identification (fragments of one datagram share it).
    pub const ID: usize = 4;
    /// Flags and fragment offset.
    pub const FRAG_OFF: usize = 6;
    /// TTL, followed by the protocol: one 16-bit word of the checksum.
    pub const TTL: usize = 8;
    /// Protocol.
    pub const PROTO: usize = 9;
    /// Header checksum.
    pub const CSUM: usize = 10;
    /// Source address.
    pub const SADDR: usize = 12;
    /// Destination address.
    pub const DADDR: usize = 16;
    /// Type of service (DSCP and ECN).
    pub const TOS: usize = 1;
    /// Length of a header without options.
    pub const MIN_HLEN: usize = 20;
    /// FRAG_OFF: don't fragment.
    pub const DF: u16 = 0x4000;
    /// TOS: the ECN bits.
    pub const ECN_MASK: u8 = 0x03;
    /// The TTL of the packets this node sends itself (Linux's default).
    pub const DEFAULT_TTL: u8 = 64;
    /// The version nibble of IPv4.
    pub const VERSION: u8 = 4;
    /// FRAG_OFF: more fragments follow.
    pub const MF: u16 = 0x2000;
    /// FRAG_OFF: the fragment's offset (non-zero in all but the first fragment).
    pub const OFFSET_MASK: u16 = 0x1fff;

    /// The version, from the VER_IHL byte.
    #[inline(always)]
    pub const fn version(ver_ihl: u8) -> u8 {
        ver_ihl >> 4
    }

    /// The header length in bytes, from the VER_IHL byte.
    #[inline(always)]
    pub const fn header_len(ver_ihl: u8) -> usize {
        ((ver_ihl & 0x0f) as usize) * 4
    }
}

/// TCP and UDP headers both start with the ports.
pub mod l4 {
    /// Source port.
    pub const SPORT: usize = 0;
    /// Destination port.
    pub const DPORT: usize = 2;
}

/// TCP (RFC 9293).
pub mod tcp {
    /// Sequence number.
    pub const SEQ: usize = 4;
    /// Acknowledgment number.
    pub const ACK_SEQ: usize = 8;
    /// Length of a header without options.
    pub const MIN_HLEN: usize = 20;
    /// Data offset, followed by the flags byte.
    pub const DOFF_FLAGS: usize = 12;
    /// Checksum.
    pub const CSUM: usize = 16;
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// UDP (RFC 768).
pub mod udp {
    /// Checksum (0: none).
    pub const CSUM: usize = 6;
}

/// ICMP (RFC 792).
pub mod icmp {
    /// Type.
    pub const TYPE: usize = 0;
    /// Checksum (over the ICMP header and payload, no pseudo header).
    pub const CSUM: usize = 2;
    /// Header length: an error message quotes the IP header it is about after it.
    pub const HLEN: usize = 8;
    pub const DEST_UNREACH: u8 = 3;
    /// DEST_UNREACH code: the protocol is not served.
    pub const PROT_UNREACH: u8 = 2;
    /// DEST_UNREACH code: nothing listens on the port.
    pub const PORT_UNREACH: u8 = 3;
    /// How much of the datagram after its IP header an error quotes (RFC 792).
    pub const QUOTED_L4: usize = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETERPROB: u8 = 12;
}

/// IPv6 (RFC 8200).
pub mod ip6 {
    /// Version (high nibble of the first byte), traffic class, flow label.
    pub const VER_TC_FLOW: usize = 0;
    /// Payload length: what follows the fixed header (extension headers included);
    /// 0 in a jumbogram.
    pub const PAYLOAD_LEN: usize = 4;
    /// Next Header, followed by the hop limit.
    pub const NEXTHDR: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address (16 bytes).
    pub const SADDR: usize = 8;
    /// Destination address (16 bytes).
    pub const DADDR: usize = 24;
    /// Length of the fixed header.
    pub const HLEN: usize = 40;
    /// The version nibble of IPv6.
    pub const VERSION: u8 = 6;
    /// The hop limit of the packets this node sends itself (Linux's default).
    pub const DEFAULT_HOP_LIMIT: u8 = 64;
    /// Traffic class: the ECN bits.
    pub const ECN_MASK: u8 = 0x03;

    /// Next Header values (IANA "IPv6 Extension Header Types" and protocols).
    pub const NEXTHDR_HOP: u8 = 0;
    pub const NEXTHDR_ROUTING: u8 = 43;
    pub const NEXTHDR_FRAGMENT: u8 = 44;
    pub const NEXTHDR_ESP: u8 = 50;
    pub const NEXTHDR_AUTH: u8 = 51;
    pub const NEXTHDR_ICMP: u8 = 58;
    pub const NEXTHDR_NONE: u8 = 59;
    pub const NEXTHDR_DEST: u8 = 60;
}

/// IPv6 extension headers: hop-by-hop and destination options and routing headers
/// start with the next header and their length in 8-octet units, not counting the
/// first 8; the fragment header is 8 octets.
pub mod ext6 {
    /// Next Header, followed by the length byte.
    pub const NEXTHDR: usize = 0;
    /// Routing header: the routing type, followed by segments left (0: this node is
    /// the final destination).
    pub const ROUTING_TYPE: usize = 2;
    /// Fragment header: fragment offset (13 bits, in 8-octet units) and the M flag.
    pub const FRAG_OFF: usize = 2;
    /// Fragment header: identification.
    pub const FRAG_ID: usize = 4;
    /// Length of the fragment header.
    pub const FRAG_HLEN: usize = 8;
    /// FRAG_OFF: the offset bits.
    pub const FRAG_OFFSET_MASK: u16 = 0xfff8;
    /// FRAG_OFF: more fragments follow.
    pub const FRAG_MF: u16 = 0x0001;
}

/// ICMPv6 (RFC 4443).
pub mod icmp6 {
    /// Type, followed by the code.
    pub const TYPE: usize = 0;
    /// Checksum (over the message and the IPv6 pseudo header).
    pub const CSUM: usize = 2;
    /// Header length: an error message quotes the packet it is about after it.
    pub const HLEN: usize = 8;
    pub const DEST_UNREACH: u8 = 1;
    pub const PKT_TOOBIG: u8 = 2;
    pub const TIME_EXCEED: u8 = 3;
    pub const PARAMPROB: u8 = 4;
    /// DEST_UNREACH code: nothing listens on the port.
    pub const PORT_UNREACH: u8 = 4;
    /// PARAMPROB code: an unrecognized Next Header type (the protocol is not served).
    pub const UNK_NEXTHDR: u8 = 1;
}
