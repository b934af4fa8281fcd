//! What the TC path needs of an address family beyond the load-balancing core's
//! [`Family`]: its conntrack and device maps, and the few things that differ on the
//! wire (parsing, writing an address with the checksums that cover it, routing, ICMP
//! errors, building a reject answer). The flow of a packet (`mod.rs`), conntrack,
//! SNAT, rewriting and reject decisions are written once over [`TcFamily`]; the
//! family-specific parts live in `parse.rs`, `parse6.rs`, `rewrite.rs`, `route.rs`,
//! `icmp.rs`, `icmp6.rs`, `reject.rs` and `reject6.rs`, and [`V4`] and [`V6`] here say
//! which is whose.
use aya_ebpf::{
    btf_maps::{LruHashMap, ProgramArray},
    programs::TcContext,
};
use lb_common::{
    Addr6, Backend4, Backend6, Ct4Key, Ct4Value, Ct6Key, Ct6Value, capacity, tc6_calls,
};

use super::{
    DROP, PASS, Step,
    hdr::{IP4_OFF, IP6_OFF, eth, ip4, ip6},
    icmp,
    parse::{self, Packet, Parsed},
    parse6, reject, reject6, rewrite, route,
};
use crate::{
    error::{Cause, Error},
    family::{Family, V4, V6},
    lb::Frontend,
    maps::{CT4, DEVICE4, count, get_copy},
    maps6::{CT6, DEVICE6},
};

/// A packet's addresses and ports, network byte order: what a conntrack entry
/// rewrites a packet to, and the tuple a conntrack key is made of.
#[derive(Clone, Copy)]
pub struct Tuple<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
}

impl<A: Copy> Tuple<A> {
    /// The tuple of a packet of the opposite direction.
    #[inline(always)]
    pub fn reversed(&self) -> Self {
        Tuple {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// A conntrack value: [`lb_common::Ct4Value`] and [`lb_common::Ct6Value`] have one
/// layout but for the address width, and this is it.
pub trait CtValue<A: Copy>: Copy {
    /// An entry rewriting packets to `to`.
    fn new(to: &Tuple<A>, flags: u8, direction: u8, expires_ns: u64, backend_id: u32) -> Self;
    /// What packets of this direction are rewritten to.
    fn to(&self) -> Tuple<A>;
    /// `CT_FLAG_*` bits.
    fn flags(&self) -> u8;
    fn set_flags(&mut self, flags: u8);
    /// `CT_DIR_*`.
    fn direction(&self) -> u8;
    /// When the entry expires (bpf_ktime_get_ns clock).
    fn expires_ns(&self) -> u64;
    fn set_expires_ns(&mut self, expires_ns: u64);
}

/// The conntrack maps of both families have the IPv4 map's capacity.
const CT_CAPACITY: usize = capacity::CT4 as usize;

/// One address family as the TC programs see it.
pub trait TcFamily: Family {
    /// Key of the family's conntrack map.
    type CtKey: Copy;
    /// Value of the family's conntrack map.
    type CtValue: CtValue<Self::Addr>;
    /// The EtherType of the family's frames.
    const ETH_P: u16;
    /// Where the source and destination addresses sit in the frame.
    const SADDR_OFF: usize;
    const DADDR_OFF: usize;

    /// Whether two addresses are the same.
    fn addr_eq(a: &Self::Addr, b: &Self::Addr) -> bool;
    /// The conntrack key of a packet with this tuple and protocol.
    fn ct_key(t: &Tuple<Self::Addr>, proto: u8) -> Self::CtKey;
    /// The family's conntrack map.
    fn ct_map() -> &'static LruHashMap<Self::CtKey, Self::CtValue, CT_CAPACITY>;
    /// A backend's address, port (network byte order) and `BACKEND_FLAG_*` bits.
    fn backend(b: &Self::Backend) -> (Self::Addr, u16, u8);
    /// The source address of SNATed flows leaving through device `ifindex`, if the
    /// device has one.
    fn snat_address(ifindex: u32) -> Option<Self::Addr>;
    /// What the translation needs of the packet (its frame starts with Ethernet and
    /// carries this family).
    fn parse(ctx: &TcContext) -> Result<Parsed<Self>, Error>;
    /// Writes the address `new` over `old` at `off` (one of the packet's own
    /// addresses), updating every checksum that covers it: the IPv4 header's, and
    /// the L4 checksum at `l4_csum` (with `l4_flags`) through the pseudo header.
    fn set_addr(
        ctx: &TcContext,
        off: usize,
        old: &Self::Addr,
        new: &Self::Addr,
        l4_csum: Option<usize>,
        l4_flags: u64,
    ) -> Result<(), Error>;
    /// Forwards a rewritten packet this node must route itself ([`route`]).
    fn route(ctx: &TcContext, to: &Tuple<Self::Addr>) -> Result<i32, Error>;
    /// An ICMP error at `l4_off` from `saddr` to `daddr`, translated if it is about
    /// a tracked flow.
    fn icmp_error(
        ctx: &TcContext,
        l4_off: usize,
        saddr: Self::Addr,
        daddr: Self::Addr,
        ingress: bool,
    ) -> Result<i32, Error>;
    /// Whether `saddr` is a unicast address an error or a reset may be sent to.
    fn unicast_source(saddr: &Self::Addr) -> bool;
    /// Rewrites `p` into its reject answer ([`reject`]); false when the packet is
    /// too short to quote as an ICMP error must (nothing was changed then).
    fn build_answer(ctx: &TcContext, p: &Packet<Self>) -> Result<bool, Error>;
    /// The answer to a refused packet ([`reject::answer`]).
    fn refuse(ctx: &TcContext, p: &Packet<Self>) -> i32;
    /// [`super::new_flow`] for this family.
    fn new_flow(
        ctx: &TcContext,
        p: &Packet<Self>,
        fe: &Frontend<Self>,
        now: u64,
    ) -> Result<Step<Self::Addr>, Error>;
}

impl CtValue<u32> for Ct4Value {
    #[inline(always)]
    fn new(to: &Tuple<u32>, flags: u8, direction: u8, expires_ns: u64, backend_id: u32) -> Self {
        Ct4Value {
            to_saddr: to.saddr,
            to_daddr: to.daddr,
            to_sport: to.sport,
            to_dport: to.dport,
            flags,
            direction,
            pad: [0; 2],
            expires_ns,
            backend_id,
            pad2: 0,
        }
    }
    #[inline(always)]
    fn to(&self) -> Tuple<u32> {
        Tuple {
            saddr: self.to_saddr,
            daddr: self.to_daddr,
            sport: self.to_sport,
            dport: self.to_dport,
        }
    }
    #[inline(always)]
    fn flags(&self) -> u8 {
        self.flags
    }
    #[inline(always)]
    fn set_flags(&mut self, flags: u8) {
        self.flags = flags;
    }
    #[inline(always)]
    fn direction(&self) -> u8 {
        self.direction
    }
    #[inline(always)]
    fn expires_ns(&self) -> u64 {
        self.expires_ns
    }
    #[inline(always)]
    fn set_expires_ns(&mut self, expires_ns: u64) {
        self.expires_ns = expires_ns;
    }
}

impl CtValue<Addr6> for Ct6Value {
    #[inline(always)]
    fn new(to: &Tuple<Addr6>, flags: u8, direction: u8, expires_ns: u64, backend_id: u32) -> Self {
        Ct6Value {
            to_saddr: to.saddr,
            to_daddr: to.daddr,
            to_sport: to.sport,
            to_dport: to.dport,
            flags,
            direction,
            pad: [0; 2],
            expires_ns,
            backend_id,
            pad2: 0,
        }
    }
    #[inline(always)]
    fn to(&self) -> Tuple<Addr6> {
        Tuple {
            saddr: self.to_saddr,
            daddr: self.to_daddr,
            sport: self.to_sport,
            dport: self.to_dport,
        }
    }
    #[inline(always)]
    fn flags(&self) -> u8 {
        self.flags
    }
    #[inline(always)]
    fn set_flags(&mut self, flags: u8) {
        self.flags = flags;
    }
    #[inline(always)]
    fn direction(&self) -> u8 {
        self.direction
    }
    #[inline(always)]
    fn expires_ns(&self) -> u64 {
        self.expires_ns
    }
    #[inline(always)]
    fn set_expires_ns(&mut self, expires_ns: u64) {
        self.expires_ns = expires_ns;
    }
}

impl TcFamily for V4 {
    type CtKey = Ct4Key;
    type CtValue = Ct4Value;
    const ETH_P: u16 = eth::P_IP;
    const SADDR_OFF: usize = IP4_OFF + ip4::SADDR;
    const DADDR_OFF: usize = IP4_OFF + ip4::DADDR;

    #[inline(always)]
    fn addr_eq(a: &u32, b: &u32) -> bool {
        a == b
    }
    #[inline(always)]
    fn ct_key(t: &Tuple<u32>, proto: u8) -> Ct4Key {
        Ct4Key {
            saddr: t.saddr,
            daddr: t.daddr,
            sport: t.sport,
            dport: t.dport,
            proto,
            pad: [0; 3],
        }
    }
    #[inline(always)]
    fn ct_map() -> &'static LruHashMap<Ct4Key, Ct4Value, CT_CAPACITY> {
        &CT4
    }
    #[inline(always)]
    fn backend(b: &Backend4) -> (u32, u16, u8) {
        (b.address, b.port, b.flags)
    }
    #[inline(always)]
    fn snat_address(ifindex: u32) -> Option<u32> {
        get_copy(&DEVICE4, &ifindex).map(|d| d.snat_addr)
    }
    #[inline(always)]
    fn parse(ctx: &TcContext) -> Result<Parsed<V4>, Error> {
        parse::parse(ctx)
    }
    #[inline(always)]
    fn set_addr(
        ctx: &TcContext,
        off: usize,
        old: &u32,
        new: &u32,
        l4_csum: Option<usize>,
        l4_flags: u64,
    ) -> Result<(), Error> {
        rewrite::set_addr(ctx, off, *old, *new, IP4_OFF + ip4::CSUM, l4_csum, l4_flags)
    }
    #[inline(always)]
    fn route(ctx: &TcContext, to: &Tuple<u32>) -> Result<i32, Error> {
        route::route(ctx, to.saddr, to.daddr, to.sport, to.dport)
    }
    #[inline(always)]
    fn icmp_error(
        ctx: &TcContext,
        l4_off: usize,
        saddr: u32,
        daddr: u32,
        ingress: bool,
    ) -> Result<i32, Error> {
        icmp::icmp_error(ctx, l4_off, saddr, daddr, ingress)
    }
    #[inline(always)]
    fn unicast_source(saddr: &u32) -> bool {
        let first_octet = saddr.to_ne_bytes()[0];
        first_octet != 0 && first_octet != 127 && first_octet < 224
    }
    #[inline(always)]
    fn build_answer(ctx: &TcContext, p: &Packet<V4>) -> Result<bool, Error> {
        reject::build(ctx, p)
    }
    #[inline(always)]
    fn refuse(ctx: &TcContext, p: &Packet<V4>) -> i32 {
        reject::answer(ctx, p)
    }
    #[inline(always)]
    fn new_flow(
        ctx: &TcContext,
        p: &Packet<V4>,
        fe: &Frontend<V4>,
        now: u64,
    ) -> Result<Step<u32>, Error> {
        super::new_flow(ctx, p, fe, now)
    }
}

impl TcFamily for V6 {
    type CtKey = Ct6Key;
    type CtValue = Ct6Value;
    const ETH_P: u16 = eth::P_IPV6;
    const SADDR_OFF: usize = IP6_OFF + ip6::SADDR;
    const DADDR_OFF: usize = IP6_OFF + ip6::DADDR;

    #[inline(always)]
    fn addr_eq(a: &Addr6, b: &Addr6) -> bool {
        addr6_eq(a, b)
    }
    #[inline(always)]
    fn ct_key(t: &Tuple<Addr6>, proto: u8) -> Ct6Key {
        Ct6Key {
            saddr: t.saddr,
            daddr: t.daddr,
            sport: t.sport,
            dport: t.dport,
            proto,
            pad: [0; 3],
        }
    }
    #[inline(always)]
    fn ct_map() -> &'static LruHashMap<Ct6Key, Ct6Value, CT_CAPACITY> {
        &CT6
    }
    #[inline(always)]
    fn backend(b: &Backend6) -> (Addr6, u16, u8) {
        (b.address, b.port, b.flags)
    }
    #[inline(always)]
    fn snat_address(ifindex: u32) -> Option<Addr6> {
        // All zero: the device has no IPv6 address to use.
        get_copy(&DEVICE6, &ifindex)
            .map(|d| d.snat_addr)
            .filter(|a| !addr6_eq(a, &[0; 4]))
    }
    #[inline(always)]
    fn parse(ctx: &TcContext) -> Result<Parsed<V6>, Error> {
        parse6::parse(ctx)
    }
    #[inline(always)]
    fn set_addr(
        ctx: &TcContext,
        off: usize,
        old: &Addr6,
        new: &Addr6,
        l4_csum: Option<usize>,
        l4_flags: u64,
    ) -> Result<(), Error> {
        rewrite::set_addr6(ctx, off, old, new, l4_csum, l4_flags)
    }
    #[inline(always)]
    fn route(ctx: &TcContext, to: &Tuple<Addr6>) -> Result<i32, Error> {
        route::route6(ctx, &to.saddr, &to.daddr, to.sport, to.dport)
    }
    #[inline(always)]
    fn icmp_error(
        ctx: &TcContext,
        _l4_off: usize,
        _saddr: Addr6,
        _daddr: Addr6,
        ingress: bool,
    ) -> Result<i32, Error> {
        let index = if ingress {
            tc6_calls::ICMP_INGRESS
        } else {
            tc6_calls::ICMP_EGRESS
        };
        tail_call(ctx, index)?;
        Ok(PASS)
    }
    #[inline(always)]
    fn unicast_source(saddr: &Addr6) -> bool {
        reject6::unicast_source(saddr)
    }
    #[inline(always)]
    fn build_answer(ctx: &TcContext, p: &Packet<V6>) -> Result<bool, Error> {
        reject6::build(ctx, p)
    }
    #[inline(always)]
    fn refuse(ctx: &TcContext, _p: &Packet<V6>) -> i32 {
        match tail_call(ctx, tc6_calls::REJECT) {
            Ok(()) => DROP,
            // The verdict was to refuse: dropped, as an answer that cannot be built.
            Err(e) => {
                count(e.counter());
                DROP
            }
        }
    }
    #[inline(always)]
    fn new_flow(
        ctx: &TcContext,
        _p: &Packet<V6>,
        _fe: &Frontend<V6>,
        _now: u64,
    ) -> Result<Step<Addr6>, Error> {
        tail_call(ctx, tc6_calls::NEW_FLOW)?;
        Ok(Step::Verdict(PASS))
    }
}

/// The IPv6 TC programs' tail calls ([`tc6_calls`]), filled by the agent.
#[aya_ebpf::macros::btf_map(name = "lb6_tc_calls")]
static TC6_CALLS: ProgramArray<{ tc6_calls::COUNT as usize }> = ProgramArray::new();

// IPv6 headers and keys are larger than IPv4's, and the eBPF stack of one program is
// 512 bytes: the v6 path inlined into one program needs more. So the parts of it that
// never run together (a new flow, an ICMPv6 error, a reject answer) run in programs of
// their own, tail-called with the packet (each parses it again: the cost of a few
// loads). Subprograms would not do: their frames add up with their caller's. IPv4
// keeps everything in one program.

/// Continues in the IPv6 program at `index` of [`TC6_CALLS`]; returns only when the
/// call failed (the slot is empty: an agent that has not filled the map).
#[inline(always)]
fn tail_call(ctx: &TcContext, index: u32) -> Result<(), Error> {
    // SAFETY: the program at `index` is a TC classifier taking the same context.
    unsafe { TC6_CALLS.tail_call(ctx, index) };
    Err(Cause::TailCall.into())
}

/// Whether two IPv6 addresses are the same (one test, no branch per word).
#[inline(always)]
pub fn addr6_eq(a: &Addr6, b: &Addr6) -> bool {
    ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0
}
