//! NodePort, LoadBalancer and external IP traffic from outside the node (TC), for
//! IPv4 and IPv6: one program pair per family (`lb4_tc_*`, `lb6_tc_*`), each written
//! from the same code over [`TcFamily`] ([`family`] says what differs). A program
//! hands a frame of the other family (or no IP at all) to the next program on the
//! device untouched ([`NEXT`]), so the two pairs share each device in either order;
//! one program serving both would make the verifier walk both paths in one program.
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
//! A LoadBalancer or external IP without endpoints, and a port no service has on such
//! an address, answer as kube-proxy's REJECT does ([`reject`]: TCP RST, ICMP
//! unreachable, sent back out of the device); a NodePort without endpoints passes to
//! the stack, which answers the same way since nothing may listen there.
//!
//! An internal error never drops traffic: the packet passes untranslated and a
//! counter records it. Only a service's own verdict drops, and a new flow that finds
//! no free SNAT port; a reject answer that cannot be built drops too, since the
//! verdict was to refuse (see [`reject`]).
//!
//! One file per concern: [`parse`] and [`parse6`] (headers), [`rewrite`] (NAT with
//! checksums), [`conntrack`], [`snat`], [`route`] (forwarding the packets this node
//! must route itself), [`icmp`] and [`icmp6`] (errors about tracked flows), [`reject`]
//! and [`reject6`] (answers for refused traffic); [`hdr`] holds the header layouts.
//! ICMPv6 that is no error (NDP, router advertisements, MLD, echo) is never touched.
mod conntrack;
mod family;
mod hdr;
mod icmp;
mod icmp6;
mod parse;
mod parse6;
mod reject;
mod reject6;
mod rewrite;
mod route;
mod snat;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use lb_common::{CT_FLAG_ROUTE, Counter, SvcAction, scope};

pub use self::family::TcFamily;
use self::{
    conntrack::{Created, ct_track},
    family::{CtValue, Tuple},
    hdr::eth,
    parse::{Frag, Packet, Parsed, load},
    rewrite::rewrite,
};
use crate::{
    error::Error,
    lb::{self, Flow, Frontend},
    maps::count,
};

/// Verdict: the packet continues (up the stack at ingress, out at egress).
const PASS: i32 = TC_ACT_OK as i32;
/// Verdict: the packet is dropped (never for an internal error).
const DROP: i32 = TC_ACT_SHOT as i32;
/// Verdict: not this program's family; the next program on the device decides (TCX
/// passes the packet when none is left).
const NEXT: i32 = TC_ACT_UNSPEC;

/// Whether the frame carries the family's IP (its EtherType).
#[inline(always)]
fn carries<F: TcFamily>(ctx: &TcContext) -> bool {
    matches!(load::<u16>(ctx, eth::PROTO), Ok(proto) if proto == F::ETH_P.to_be())
}

/// What the ingress path decided for a packet of a flow.
pub enum Step<A> {
    /// The verdict, or [`REFUSE`].
    Verdict(i32),
    /// Rewritten to `to`, now from a node address: this node routes it ([`route`]).
    Route(Tuple<A>),
}

/// [`Step::Verdict`]: refused, the packet is turned into its answer
/// ([`reject::answer`]). A verdict value rather than a variant of its own: a variant
/// without the verdict leaves the register LLVM reads it from unset on that path,
/// which the verifier refuses even where the value is not used.
pub const REFUSE: i32 = i32::MIN;

/// TC ingress on a node device.
#[inline(always)]
pub fn ingress<F: TcFamily>(ctx: &TcContext) -> i32 {
    if !carries::<F>(ctx) {
        return NEXT;
    }
    let parsed = match F::parse(ctx) {
        Ok(parsed) => parsed,
        Err(e) => return failed(e),
    };
    // The packet stays where parsing put it, whichever step follows.
    let (p, step) = match parsed {
        Parsed::Flow(p) => {
            let step = try_ingress::<F>(ctx, &p);
            (p, step)
        }
        // No ports, so no service; refused on a service address.
        Parsed::OtherProto(p) => {
            let step = if reject::refused_address::<F>(p.daddr) {
                Step::Verdict(REFUSE)
            } else {
                Step::Verdict(PASS)
            };
            (p, Ok(step))
        }
        Parsed::Icmp {
            l4_off,
            saddr,
            daddr,
        } => return verdict(F::icmp_error(ctx, l4_off, saddr, daddr, true)),
        Parsed::Other => return PASS,
    };
    match step {
        // Answers are built in one place, whichever verdict point refused the packet
        // (one copy of that code for the verifier).
        Ok(Step::Verdict(REFUSE)) => F::refuse(ctx, &p),
        Ok(Step::Verdict(v)) => v,
        Ok(Step::Route(to)) => verdict(F::route(ctx, &to)),
        Err(e) => failed(e),
    }
}

/// The verdict on an internal error: counted, and the packet passes.
#[inline(always)]
fn failed(e: Error) -> i32 {
    count(e.counter());
    PASS
}

/// A verdict, or [`failed`].
#[inline(always)]
fn verdict(r: Result<i32, Error>) -> i32 {
    match r {
        Ok(v) => v,
        Err(e) => failed(e),
    }
}

/// TC egress on a node device: only tracked flows (replies of local backends).
#[inline(always)]
pub fn egress<F: TcFamily>(ctx: &TcContext) -> i32 {
    if !carries::<F>(ctx) {
        return NEXT;
    }
    match try_egress::<F>(ctx) {
        Ok(verdict) => verdict,
        Err(e) => {
            count(e.counter());
            PASS
        }
    }
}

#[inline(always)]
fn try_egress<F: TcFamily>(ctx: &TcContext) -> Result<i32, Error> {
    let p = match F::parse(ctx)? {
        Parsed::Flow(p) => p,
        Parsed::Icmp {
            l4_off,
            saddr,
            daddr,
        } => return F::icmp_error(ctx, l4_off, saddr, daddr, false),
        Parsed::OtherProto(_) | Parsed::Other => return Ok(PASS),
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = ct_track(&p, now) {
        rewrite(ctx, &p, &entry.to())?;
        count(Counter::NpTracked);
    }
    Ok(PASS)
}

/// What becomes of a TCP or UDP packet arriving from outside.
#[inline(always)]
fn try_ingress<F: TcFamily>(ctx: &TcContext, p: &Packet<F>) -> Result<Step<F::Addr>, Error> {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = ct_track(p, now) {
        let to = entry.to();
        rewrite(ctx, p, &to)?;
        count(Counter::NpTracked);
        if entry.flags() & CT_FLAG_ROUTE == 0 {
            return Ok(Step::Verdict(PASS));
        }
        return Ok(Step::Route(to));
    }
    let Some(fe) = lb::lookup_frontend::<F>(p.daddr, p.dport, p.proto, scope::EXTERNAL) else {
        // A LoadBalancer or external IP on a port no service has: refused.
        if reject::refused_address::<F>(p.daddr) {
            return Ok(Step::Verdict(REFUSE));
        }
        return Ok(Step::Verdict(PASS));
    };
    if !fe.admits(&p.saddr) {
        count(Counter::NpSourceDenied);
        return Ok(Step::Verdict(DROP));
    }
    match fe.action()? {
        SvcAction::Forward => {}
        // No endpoint: on a node address nothing listens on the NodePort (bind is
        // refused there), so the stack answers: TCP RST, UDP port unreachable.
        SvcAction::Reject if fe.nodeport => return Ok(Step::Verdict(PASS)),
        // A LoadBalancer or external IP: nobody else answers for it, so we do.
        SvcAction::Reject => return Ok(Step::Verdict(REFUSE)),
        SvcAction::Drop => {
            count(Counter::NpDropped);
            return Ok(Step::Verdict(DROP));
        }
    }
    if p.frag == Frag::Later {
        // A later fragment of a flow that is not tracked: not ours. (Its frontend's
        // verdicts above still apply: a source outside the ranges, a dropping or
        // refusing frontend drop it, never answered.)
        return Ok(Step::Verdict(PASS));
    }
    F::new_flow(ctx, p, &fe, now)
}

/// The first packet of a new flow to a forwarding frontend: pick a backend, track
/// both directions, rewrite (and have what was SNATed routed).
#[inline(always)]
pub(super) fn new_flow<F: TcFamily>(
    ctx: &TcContext,
    p: &Packet<F>,
    fe: &Frontend<F>,
    now: u64,
) -> Result<Step<F::Addr>, Error> {
    let flow = Flow::Packet {
        saddr: p.saddr,
        sport: p.sport,
    };
    let picked = lb::select_backend(fe, flow)?;
    let snat = snat::needed(fe, &picked.backend);
    let original = match conntrack::create(ctx, p, &picked, snat, now)? {
        Created::Tracked(original) => original,
        Created::NoSnatPort => {
            count(Counter::NpSnatExhausted);
            return Ok(Step::Verdict(DROP));
        }
        Created::Failed => {
            count(Counter::NpCtFailed);
            return Ok(Step::Verdict(PASS));
        }
    };
    let to = original.to();
    rewrite(ctx, p, &to)?;
    count(Counter::NpNewFlow);
    if !snat {
        return Ok(Step::Verdict(PASS));
    }
    Ok(Step::Route(to))
}

/// The rest of a new flow, in a program of its own (IPv6: [`TcFamily::new_flow`]): the
/// packet as ingress found it, whose frontend forwards.
#[inline(always)]
pub fn new_flow_tail<F: TcFamily>(ctx: &TcContext) -> i32 {
    let p = match F::parse(ctx) {
        Ok(Parsed::Flow(p)) => p,
        Ok(_) => return PASS,
        Err(e) => return failed(e),
    };
    let Some(fe) = lb::lookup_frontend::<F>(p.daddr, p.dport, p.proto, scope::EXTERNAL) else {
        return PASS;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    match new_flow(ctx, &p, &fe, now) {
        Ok(Step::Verdict(v)) => v,
        Ok(Step::Route(to)) => verdict(F::route(ctx, &to)),
        Err(e) => failed(e),
    }
}

/// An ICMPv6 error, in a program of its own ([`TcFamily::icmp_error`]).
#[inline(always)]
pub fn icmp6_tail(ctx: &TcContext, ingress: bool) -> i32 {
    match parse6::parse(ctx) {
        Ok(Parsed::Icmp {
            l4_off,
            saddr,
            daddr,
        }) => verdict(icmp6::icmp_error(ctx, l4_off, &saddr, &daddr, ingress)),
        Ok(_) => PASS,
        Err(e) => failed(e),
    }
}

/// The answer to a refused packet, in a program of its own (IPv6: [`TcFamily::refuse`]).
#[inline(always)]
pub fn reject_tail<F: TcFamily>(ctx: &TcContext) -> i32 {
    match F::parse(ctx) {
        Ok(Parsed::Flow(p) | Parsed::OtherProto(p)) => reject::answer(ctx, &p),
        // Refused, whatever it is now.
        Ok(_) => DROP,
        Err(e) => {
            count(e.counter());
            DROP
        }
    }
}
