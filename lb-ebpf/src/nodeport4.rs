//! IPv4 NodePort, LoadBalancer and external IP traffic from outside the node (TC).
//!
//! Ingress on the node's devices: a packet of a tracked flow is rewritten as its
//! conntrack entry says; the first packet of a new flow to an external frontend
//! picks a backend, gets conntrack entries for both directions (with the source
//! rewritten to the node's address when the backend is on another node and the
//! policy is Cluster) and is rewritten (DNAT, maybe SNAT). Egress on the same devices
//! rewrites replies of local backends back to the frontend. ICMP errors about a
//! tracked flow are translated too, and non-first fragments take the ports their
//! first fragment carried.
//!
//! An internal error never drops traffic: the packet passes untranslated and a
//! counter records it. Only a service's own verdict drops.
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    },
    programs::TcContext,
};
use lb_common::{
    BACKEND_FLAG_LOCAL, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_FLAG_CLOSING, CT_FLAG_ESTABLISHED,
    CT_FLAG_ROUTE, CT_FLAG_SNAT, Counter, Ct4Key, Ct4Value, Frag4Key, Frag4Value, IPPROTO_TCP,
    IPPROTO_UDP, SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_FLAG_SNAT, SvcAction, ct_lifetime, scope,
};

use crate::{
    error::{Cause, Error},
    lb::{self, Flow, Frontend, Selection},
    maps::{CT4, DEVICE4, FRAG4, count, get_copy, is_node_addr},
};

/// Tries at finding a free SNAT port before a new flow is dropped.
const SNAT_TRIES: u32 = 8;

const AF_INET: u8 = 2;

/// Size of the field a checksum helper accounts for, in the low bits of its flags.
const CSUM_U32: u64 = 4;
const CSUM_U16: u64 = 2;

/// Conntrack entries are refreshed at most this often (or when the flow's flags change).
const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Header layouts: where each field sits within its header, and its values.
mod hdr {
    /// The IPv4 header starts right after the Ethernet header.
    pub const IP4_OFF: usize = eth::HLEN;

    /// IP protocol number of ICMP (TCP and UDP: [`lb_common`]).
    pub const IPPROTO_ICMP: u8 = 1;

    /// Ethernet II.
    pub mod eth {
        /// Header length.
        pub const HLEN: usize = 14;
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
        /// Length of a header without options.
        pub const MIN_HLEN: usize = 20;
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
        pub const TIME_EXCEEDED: u8 = 11;
        pub const PARAMETERPROB: u8 = 12;
    }
}

use hdr::{IP4_OFF, IPPROTO_ICMP, eth, icmp, ip4, l4, tcp, udp};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Frag {
    /// Not fragmented.
    Whole,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: no L4 header; ports come from the first fragment.
    Later,
}

/// What the translation needs of a packet.
#[derive(Clone, Copy)]
struct Packet {
    l4_off: usize,
    proto: u8,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    frag: Frag,
    tcp_flags: u8,
}

impl Packet {
    fn ct_key(&self) -> Ct4Key {
        Ct4Key {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            pad: [0; 3],
        }
    }

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

/// Outcome of parsing.
enum Parsed {
    /// Not IPv4 TCP/UDP/ICMP, or a later fragment of an unknown datagram.
    Other,
    Flow(Packet),
    /// An ICMP message; `l4_off` is where the ICMP header starts.
    Icmp {
        l4_off: usize,
        saddr: u32,
        daddr: u32,
    },
}

/// Reads a `T` at `off`: straight from the packet when the linear area holds it (no
/// helper call: parsing runs for every packet of the device), else through
/// bpf_skb_load_bytes (headers in paged data). Only for `T` of 2 bytes or more:
/// LLVM turns a 1-byte bound check into a form the verifier cannot use, so single
/// bytes are read as half of a [`load_pair`].
#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, Error> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: inside [data, data_end), which the check above proves to the verifier.
        return Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    Ok(ctx.load(off)?)
}

/// The bytes at `off` and `off + 1`.
#[inline(always)]
fn load_pair(ctx: &TcContext, off: usize) -> Result<(u8, u8), Error> {
    let [first, second] = load::<[u8; 2]>(ctx, off)?;
    Ok((first, second))
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Parsed, Error> {
    let eth_proto: u16 = load(ctx, eth::PROTO)?;
    if eth_proto != eth::P_IP.to_be() {
        return Ok(Parsed::Other);
    }
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
        _ => return Ok(Parsed::Other),
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
        proto,
        saddr,
        daddr,
        sport,
        dport,
        frag,
        tcp_flags,
    }))
}

/// Rewrites addresses and ports, keeping the IP and L4 checksums right.
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Packet, to: &Ct4Value) -> Result<(), Error> {
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

/// The lifetime a packet gives its flow, and the flags it adds.
#[inline(always)]
fn lifetime(p: &Packet, flags: u8) -> (u64, u8) {
    if p.proto != IPPROTO_TCP {
        return (ct_lifetime::UDP_NS, flags);
    }
    if p.tcp_flags & (tcp::FIN | tcp::RST) != 0 || flags & CT_FLAG_CLOSING != 0 {
        return (ct_lifetime::TCP_CLOSING_NS, flags | CT_FLAG_CLOSING);
    }
    let first_syn = p.tcp_flags & tcp::SYN != 0 && p.tcp_flags & tcp::ACK == 0;
    if first_syn && flags & CT_FLAG_ESTABLISHED == 0 {
        (ct_lifetime::TCP_SYN_NS, flags)
    } else if p.frag == Frag::Later {
        (ct_lifetime::TCP_ESTABLISHED_NS, flags)
    } else {
        (ct_lifetime::TCP_ESTABLISHED_NS, flags | CT_FLAG_ESTABLISHED)
    }
}

/// The live conntrack entry for this packet, refreshed; None when absent or expired.
#[inline(always)]
fn ct_track(p: &Packet, now: u64) -> Option<Ct4Value> {
    let key = p.ct_key();
    let entry = CT4.get_ptr_mut(&key)?;
    // SAFETY: a value pointer of this map; the entry may be updated concurrently by
    // another CPU, which at worst loses one refresh.
    let value = unsafe { &mut *entry };
    if value.expires_ns < now {
        return None;
    }
    // A client reusing the tuple of a closing flow starts a new flow (and may get
    // another backend), instead of inheriting the old one's last seconds.
    let first_syn = p.tcp_flags & tcp::SYN != 0 && p.tcp_flags & tcp::ACK == 0;
    if first_syn && value.flags & CT_FLAG_CLOSING != 0 && value.direction == CT_DIR_ORIGINAL {
        return None;
    }
    let (life, flags) = lifetime(p, value.flags);
    let expires = now + life;
    let closing_now = flags & CT_FLAG_CLOSING != 0 && value.flags & CT_FLAG_CLOSING == 0;
    // Refresh at most about once a second, or when the flow starts closing.
    if flags != value.flags
        || expires > value.expires_ns + CT_REFRESH_NS
        || expires < value.expires_ns
    {
        value.flags = flags;
        value.expires_ns = expires;
        // The flow lives as long as either direction is active: a one-way stream (say
        // UDP from the backend) keeps the other direction's entry too. A FIN or RST
        // closes the flow, not one direction: the other entry (which a RST's peer
        // never refreshes, and which may hold the SNAT port) expires as soon.
        let opposite = Ct4Key {
            saddr: value.to_daddr,
            daddr: value.to_saddr,
            sport: value.to_dport,
            dport: value.to_sport,
            proto: p.proto,
            pad: [0; 3],
        };
        if let Some(other) = CT4.get_ptr_mut(&opposite) {
            // SAFETY: as above.
            let other = unsafe { &mut *other };
            if closing_now {
                other.flags |= CT_FLAG_CLOSING;
                if other.expires_ns > expires {
                    other.expires_ns = expires;
                }
            } else if other.flags & CT_FLAG_CLOSING == 0 && other.expires_ns < expires {
                other.expires_ns = expires;
            }
        }
    }
    Some(*value)
}

/// TC ingress on a node device.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> i32 {
    match try_ingress(ctx) {
        Ok(verdict) => verdict,
        Err(e) => {
            count(e.counter());
            TC_ACT_OK as i32
        }
    }
}

/// TC egress on a node device: only tracked flows (replies of local backends).
#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    match try_egress(ctx) {
        Ok(verdict) => verdict,
        Err(e) => {
            count(e.counter());
            TC_ACT_OK as i32
        }
    }
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, Error> {
    let p = match parse(ctx)? {
        Parsed::Flow(p) => p,
        Parsed::Icmp {
            l4_off,
            saddr,
            daddr,
        } => return icmp_error(ctx, l4_off, saddr, daddr, false),
        Parsed::Other => return Ok(TC_ACT_OK as i32),
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = ct_track(&p, now) {
        rewrite(ctx, &p, &entry)?;
        count(Counter::NpTracked);
    }
    Ok(TC_ACT_OK as i32)
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<i32, Error> {
    let p = match parse(ctx)? {
        Parsed::Flow(p) => p,
        Parsed::Icmp {
            l4_off,
            saddr,
            daddr,
        } => return icmp_error(ctx, l4_off, saddr, daddr, true),
        Parsed::Other => return Ok(TC_ACT_OK as i32),
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = ct_track(&p, now) {
        rewrite(ctx, &p, &entry)?;
        count(Counter::NpTracked);
        if entry.flags & CT_FLAG_ROUTE == 0 {
            return Ok(TC_ACT_OK as i32);
        }
        return route(
            ctx,
            entry.to_saddr,
            entry.to_daddr,
            entry.to_sport,
            entry.to_dport,
        );
    }
    if p.frag == Frag::Later {
        // A later fragment of a flow that is not tracked: not ours.
        return Ok(TC_ACT_OK as i32);
    }
    let Some(fe) = lb::lookup_frontend(p.daddr, p.dport, p.proto, scope::EXTERNAL) else {
        return Ok(TC_ACT_OK as i32);
    };
    if !fe.admits(p.saddr) {
        count(Counter::NpSourceDenied);
        return Ok(TC_ACT_SHOT as i32);
    }
    match fe.action()? {
        SvcAction::Forward => {}
        // No endpoint: on a node address nothing listens on the NodePort (bind is
        // refused there), so the stack answers: TCP RST, UDP port unreachable.
        SvcAction::Reject if fe.nodeport => return Ok(TC_ACT_OK as i32),
        SvcAction::Reject | SvcAction::Drop => {
            count(Counter::NpDropped);
            return Ok(TC_ACT_SHOT as i32);
        }
    }
    new_flow(ctx, &p, &fe, now)
}

#[inline(always)]
fn new_flow(ctx: &TcContext, p: &Packet, fe: &Frontend, now: u64) -> Result<i32, Error> {
    let flow = Flow::Packet {
        saddr: p.saddr,
        sport: p.sport,
    };
    let Selection {
        backend_id,
        backend,
        ..
    } = lb::select_backend(fe, flow)?;

    let (life, flags) = lifetime(p, 0);
    let snat = fe.svc.flags & SVC_FLAG_SNAT != 0 && backend.flags & BACKEND_FLAG_LOCAL == 0;
    // The reply direction: backend -> (node address, SNAT port) or -> client.
    let mut reply_key = Ct4Key {
        saddr: backend.address,
        daddr: p.saddr,
        sport: backend.port,
        dport: p.sport,
        proto: p.proto,
        pad: [0; 3],
    };
    let flags = flags | if snat { CT_FLAG_SNAT } else { 0 };
    // Replies leave as the frontend: a NodePort's frontend is a node address.
    let reply_route = if is_node_addr(p.daddr) {
        CT_FLAG_ROUTE
    } else {
        0
    };
    let reply = Ct4Value {
        to_saddr: p.daddr,
        to_daddr: p.saddr,
        to_sport: p.dport,
        to_dport: p.sport,
        flags: flags | reply_route,
        direction: CT_DIR_REPLY,
        pad: [0; 2],
        expires_ns: now + life,
        backend_id,
        pad2: 0,
    };
    if snat {
        // SAFETY: the skb context is valid for the program's run.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let device = get_copy(&DEVICE4, &ifindex).ok_or(Cause::DeviceMissing)?;
        reply_key.daddr = device.snat_addr;
        let mut found = false;
        for _ in 0..SNAT_TRIES {
            // SAFETY: plain helper call.
            let r = unsafe { bpf_get_prandom_u32() };
            let port = SNAT_PORT_MIN as u32 + r % (SNAT_PORT_MAX as u32 - SNAT_PORT_MIN as u32 + 1);
            reply_key.dport = (port as u16).to_be();
            // NOEXIST: a port in use towards this backend belongs to another flow.
            if CT4.insert(&reply_key, &reply, BPF_NOEXIST as u64).is_ok() {
                found = true;
                break;
            }
        }
        if !found {
            count(Counter::NpSnatExhausted);
            return Ok(TC_ACT_SHOT as i32);
        }
    } else if CT4.insert(&reply_key, &reply, BPF_ANY as u64).is_err() {
        count(Counter::NpCtFailed);
        return Ok(TC_ACT_OK as i32);
    }
    let original = Ct4Value {
        to_saddr: reply_key.daddr,
        to_daddr: backend.address,
        to_sport: reply_key.dport,
        to_dport: backend.port,
        // SNATed packets leave with the device's (node) address.
        flags: flags | if snat { CT_FLAG_ROUTE } else { 0 },
        direction: CT_DIR_ORIGINAL,
        pad: [0; 2],
        expires_ns: now + life,
        backend_id,
        pad2: 0,
    };
    if CT4.insert(&p.ct_key(), &original, BPF_ANY as u64).is_err() {
        let _ = CT4.remove(&reply_key);
        count(Counter::NpCtFailed);
        return Ok(TC_ACT_OK as i32);
    }
    rewrite(ctx, p, &original)?;
    count(Counter::NpNewFlow);
    if !snat {
        return Ok(TC_ACT_OK as i32);
    }
    route(
        ctx,
        original.to_saddr,
        original.to_daddr,
        original.to_sport,
        original.to_dport,
    )
}

/// After a rewrite at ingress: a packet whose source is now one of this node's
/// addresses (an SNATed flow, or a reply leaving as the NodePort) would be dropped
/// by the routing input path as a martian, so this node forwards it itself: a FIB
/// lookup for the egress device and a redirect through the neighbour subsystem (as
/// Cilium does). Callers decide (flows: CT_FLAG_ROUTE, set once per flow); every
/// other packet continues up the stack and is routed as usual.
#[inline(always)]
fn route(ctx: &TcContext, saddr: u32, daddr: u32, sport: u16, dport: u16) -> Result<i32, Error> {
    // We route the packet, so we decrement its TTL; at 1, leave it to the stack.
    let ttl: u8 = ctx.load(IP4_OFF + ip4::TTL)?;
    if ttl <= 1 {
        return Ok(TC_ACT_OK as i32);
    }

    // SAFETY: a zeroed bpf_fib_lookup is a valid (empty) request.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ctx.load(IP4_OFF + ip4::PROTO)?;
    fib.sport = sport;
    fib.dport = dport;
    fib.__bindgen_anon_1.tot_len = u16::from_be(ctx.load::<u16>(IP4_OFF + ip4::TOT_LEN)?);
    // SAFETY: the skb context is valid for the program's run.
    fib.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: helper call with a valid context and a pointer to a local of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // Not routable from here: the packet goes up unchanged (beyond the rewrite).
        return Err(Cause::NoRoute.into());
    }
    // Only now that we route it: the checksum covers TTL and protocol as one 16-bit word.
    let old_word: u16 = ctx.load(IP4_OFF + ip4::TTL)?;
    let new_ttl = ttl - 1;
    ctx.store(IP4_OFF + ip4::TTL, &new_ttl, 0)?;
    let new_word: u16 = ctx.load(IP4_OFF + ip4::TTL)?;
    ctx.l3_csum_replace(
        IP4_OFF + ip4::CSUM,
        old_word as u64,
        new_word as u64,
        CSUM_U16,
    )?;
    // SAFETY: helper call; a null nexthop lets the kernel resolve the neighbour.
    Ok(unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}

/// An ICMP error (destination unreachable, time exceeded, parameter problem) about a
/// packet of a tracked flow: the packet it quotes went out translated, so the error
/// is translated like a packet of the opposite direction: the quoted header is
/// rewritten to what its sender saw, and the error goes to that sender.
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    icmp_off: usize,
    outer_saddr: u32,
    outer_daddr: u32,
    ingress: bool,
) -> Result<i32, Error> {
    let icmp_type: u8 = ctx.load(icmp_off + icmp::TYPE)?;
    if !matches!(
        icmp_type,
        icmp::DEST_UNREACH | icmp::TIME_EXCEEDED | icmp::PARAMETERPROB
    ) {
        return Ok(TC_ACT_OK as i32);
    }
    let inner = icmp_off + icmp::HLEN;
    let ver_ihl: u8 = ctx.load(inner + ip4::VER_IHL)?;
    let ihl = ip4::header_len(ver_ihl);
    if ip4::version(ver_ihl) != ip4::VERSION || ihl < ip4::MIN_HLEN {
        return Ok(TC_ACT_OK as i32);
    }
    let proto: u8 = ctx.load(inner + ip4::PROTO)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(TC_ACT_OK as i32);
    }
    let isaddr: u32 = ctx.load(inner + ip4::SADDR)?;
    let idaddr: u32 = ctx.load(inner + ip4::DADDR)?;
    let inner_l4 = inner + ihl;
    let isport: u16 = ctx.load(inner_l4 + l4::SPORT)?;
    let idport: u16 = ctx.load(inner_l4 + l4::DPORT)?;
    // Packets of the opposite direction of the quoted one match this key.
    let key = Ct4Key {
        saddr: idaddr,
        daddr: isaddr,
        sport: idport,
        dport: isport,
        proto,
        pad: [0; 3],
    };
    let Some(entry) = get_copy(&CT4, &key) else {
        return Ok(TC_ACT_OK as i32);
    };
    // Opposite-direction packets become (to_saddr, to_daddr, to_sport, to_dport), so
    // the quoted packet becomes (to_daddr -> to_saddr, to_dport -> to_sport).
    let (new_isaddr, new_idaddr, new_isport, new_idport) = (
        entry.to_daddr,
        entry.to_saddr,
        entry.to_dport,
        entry.to_sport,
    );
    let icmp_csum = icmp_off + icmp::CSUM;
    let inner_csum = inner + ip4::CSUM;
    // Inner addresses: the inner IP checksum changes by the opposite amount, so the
    // ICMP checksum (which covers both) is unchanged.
    if new_isaddr != isaddr {
        ctx.l3_csum_replace(inner_csum, isaddr as u64, new_isaddr as u64, CSUM_U32)?;
        ctx.store(inner + ip4::SADDR, &new_isaddr, 0)?;
    }
    if new_idaddr != idaddr {
        ctx.l3_csum_replace(inner_csum, idaddr as u64, new_idaddr as u64, CSUM_U32)?;
        ctx.store(inner + ip4::DADDR, &new_idaddr, 0)?;
    }
    // Inner ports are plain ICMP payload.
    if new_isport != isport {
        ctx.l4_csum_replace(icmp_csum, isport as u64, new_isport as u64, CSUM_U16)?;
        ctx.store(inner_l4 + l4::SPORT, &new_isport, 0)?;
    }
    if new_idport != idport {
        ctx.l4_csum_replace(icmp_csum, idport as u64, new_idport as u64, CSUM_U16)?;
        ctx.store(inner_l4 + l4::DPORT, &new_idport, 0)?;
    }
    // The error goes to the quoted packet's (new) sender.
    if new_isaddr != outer_daddr {
        ctx.l3_csum_replace(
            IP4_OFF + ip4::CSUM,
            outer_daddr as u64,
            new_isaddr as u64,
            CSUM_U32,
        )?;
        ctx.store(IP4_OFF + ip4::DADDR, &new_isaddr, 0)?;
    }
    // An error the quoted packet's destination sent itself (the backend: say a UDP port
    // unreachable) comes from the address that sender addressed, as with netfilter NAT:
    // a pod address means nothing to the client and is often not routable from it.
    // Errors from routers on the way keep their source.
    let mut new_saddr = outer_saddr;
    if outer_saddr == idaddr && new_idaddr != idaddr {
        ctx.l3_csum_replace(
            IP4_OFF + ip4::CSUM,
            outer_saddr as u64,
            new_idaddr as u64,
            CSUM_U32,
        )?;
        ctx.store(IP4_OFF + ip4::SADDR, &new_idaddr, 0)?;
        new_saddr = new_idaddr;
    }
    count(Counter::NpIcmpTranslated);
    if ingress {
        // From a node address now: routed here like any such packet (see route).
        if is_node_addr(new_saddr) {
            return route(ctx, new_saddr, new_isaddr, 0, 0);
        }
    }
    Ok(TC_ACT_OK as i32)
}
