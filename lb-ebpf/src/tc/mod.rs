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
//!
//! One file per concern: [`parse`] (headers), [`rewrite`] (NAT with checksums),
//! [`conntrack`], [`route`] (forwarding packets this node must route itself),
//! [`icmp`] (errors about tracked flows); [`hdr`] holds the header layouts.
mod conntrack;
mod hdr;
mod icmp;
mod parse;
mod rewrite;
mod route;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use lb_common::{
    BACKEND_FLAG_LOCAL, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_FLAG_ROUTE, CT_FLAG_SNAT, Counter,
    Ct4Key, Ct4Value, SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_FLAG_SNAT, SvcAction, scope,
};

use self::{
    conntrack::{ct_track, lifetime},
    icmp::icmp_error,
    parse::{Frag, Packet, Parsed, parse},
    rewrite::rewrite,
    route::route,
};
use crate::{
    error::{Cause, Error},
    lb::{self, Flow, Frontend, Selection},
    maps::{CT4, DEVICE4, count, get_copy, is_node_addr},
};

/// Tries at finding a free SNAT port before a new flow is dropped.
const SNAT_TRIES: u32 = 8;

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
