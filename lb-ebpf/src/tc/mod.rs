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
//! One file per concern: [`parse`] (headers), [`rewrite`] (NAT with checksums),
//! [`conntrack`], [`snat`], [`route`] (forwarding the packets this node must route
//! itself), [`icmp`] (errors about tracked flows), [`reject`] (answers for refused
//! traffic); [`hdr`] holds the header layouts.
mod conntrack;
mod hdr;
mod icmp;
mod parse;
mod reject;
mod rewrite;
mod route;
mod snat;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use lb_common::{CT_FLAG_ROUTE, Counter, SvcAction, scope};

use self::{
    conntrack::{Created, ct_track},
    icmp::icmp_error,
    parse::{Frag, Packet, Parsed, parse},
    rewrite::rewrite,
    route::route,
};
use crate::{
    error::Error,
    family::V4,
    lb::{self, Flow, Frontend},
    maps::count,
};

/// Verdict: the packet continues (up the stack at ingress, out at egress).
const PASS: i32 = TC_ACT_OK as i32;
/// Verdict: the packet is dropped (never for an internal error).
const DROP: i32 = TC_ACT_SHOT as i32;

/// TC ingress on a node device.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> i32 {
    let mut refused = None;
    let verdict = match try_ingress(ctx, &mut refused) {
        Ok(verdict) => verdict,
        Err(e) => {
            count(e.counter());
            PASS
        }
    };
    // Answers are built in one place, whichever verdict point refused the packet (one
    // copy of that code for the verifier).
    match refused {
        Some(p) => reject::answer(ctx, &p),
        None => verdict,
    }
}

/// TC egress on a node device: only tracked flows (replies of local backends).
#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    match try_egress(ctx) {
        Ok(verdict) => verdict,
        Err(e) => {
            count(e.counter());
            PASS
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
        Parsed::OtherProto(_) | Parsed::Other => return Ok(PASS),
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = ct_track(&p, now) {
        rewrite(ctx, &p, &entry)?;
        count(Counter::NpTracked);
    }
    Ok(PASS)
}

/// The verdict on a packet arriving from outside. A packet to refuse is left in
/// `refused` (with DROP) for [`reject::answer`].
#[inline(always)]
fn try_ingress(ctx: &TcContext, refused: &mut Option<Packet>) -> Result<i32, Error> {
    let p = match parse(ctx)? {
        Parsed::Flow(p) => p,
        Parsed::Icmp {
            l4_off,
            saddr,
            daddr,
        } => return icmp_error(ctx, l4_off, saddr, daddr, true),
        Parsed::OtherProto(p) if reject::refused_address(p.daddr) => {
            *refused = Some(p);
            return Ok(DROP);
        }
        Parsed::OtherProto(_) | Parsed::Other => return Ok(PASS),
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = ct_track(&p, now) {
        rewrite(ctx, &p, &entry)?;
        count(Counter::NpTracked);
        if entry.flags & CT_FLAG_ROUTE == 0 {
            return Ok(PASS);
        }
        return route(
            ctx,
            entry.to_saddr,
            entry.to_daddr,
            entry.to_sport,
            entry.to_dport,
        );
    }
    let Some(fe) = lb::lookup_frontend::<V4>(p.daddr, p.dport, p.proto, scope::EXTERNAL) else {
        // A LoadBalancer or external IP on a port no service has: refused.
        if reject::refused_address(p.daddr) {
            *refused = Some(p);
            return Ok(DROP);
        }
        return Ok(PASS);
    };
    if !fe.admits(&p.saddr) {
        count(Counter::NpSourceDenied);
        return Ok(DROP);
    }
    match fe.action()? {
        SvcAction::Forward => {}
        // No endpoint: on a node address nothing listens on the NodePort (bind is
        // refused there), so the stack answers: TCP RST, UDP port unreachable.
        SvcAction::Reject if fe.nodeport => return Ok(PASS),
        // A LoadBalancer or external IP: nobody else answers for it, so we do.
        SvcAction::Reject => {
            *refused = Some(p);
            return Ok(DROP);
        }
        SvcAction::Drop => {
            count(Counter::NpDropped);
            return Ok(DROP);
        }
    }
    if p.frag == Frag::Later {
        // A later fragment of a flow that is not tracked: not ours. (Its frontend's
        // verdicts above still apply: a source outside the ranges, a dropping or
        // refusing frontend drop it, never answered.)
        return Ok(PASS);
    }
    new_flow(ctx, &p, &fe, now)
}

/// The first packet of a new flow to a forwarding frontend: pick a backend, track
/// both directions, rewrite (and route what was SNATed).
#[inline(always)]
fn new_flow(ctx: &TcContext, p: &Packet, fe: &Frontend<V4>, now: u64) -> Result<i32, Error> {
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
            return Ok(DROP);
        }
        Created::Failed => {
            count(Counter::NpCtFailed);
            return Ok(PASS);
        }
    };
    rewrite(ctx, p, &original)?;
    count(Counter::NpNewFlow);
    if !snat {
        return Ok(PASS);
    }
    route(
        ctx,
        original.to_saddr,
        original.to_daddr,
        original.to_sport,
        original.to_dport,
    )
}
