//! Header layouts: where each field sits within its header, and its values.

/// The IPv4 header starts right after the Ethernet header.
pub const IP4_OFF: usize = eth::HLEN;

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
