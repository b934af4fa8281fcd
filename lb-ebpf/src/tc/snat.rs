//! SNAT of new flows to backends on other nodes: the node's address and a free port.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32, programs::TcContext};
use lb_common::{
    BACKEND_FLAG_LOCAL, Backend4, Ct4Key, Ct4Value, SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_FLAG_SNAT,
};

use crate::{
    error::{Cause, Error},
    family::V4,
    lb::Frontend,
    maps::{CT4, DEVICE4, get_copy},
};

/// Tries at finding a free SNAT port before a new flow is dropped.
const SNAT_TRIES: u32 = 8;

/// Whether a new flow to `backend` gets the node's address as its source: under
/// externalTrafficPolicy Cluster, when the backend runs on another node, so that its
/// replies come back through this node.
#[inline(always)]
pub fn needed(fe: &Frontend<V4>, backend: &Backend4) -> bool {
    fe.svc.flags & SVC_FLAG_SNAT != 0 && backend.flags & BACKEND_FLAG_LOCAL == 0
}

/// The source address of SNATed flows leaving through the packet's device.
#[inline(always)]
pub fn address(ctx: &TcContext) -> Result<u32, Error> {
    // SAFETY: the skb context is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let device = get_copy(&DEVICE4, &ifindex).ok_or(Cause::DeviceMissing)?;
    Ok(device.snat_addr)
}

/// Inserts the reply entry `reply` under `reply_key` with a free SNAT port as the
/// key's destination port (left in `reply_key`); false when every port tried was taken.
#[inline(always)]
pub fn insert_with_free_port(reply_key: &mut Ct4Key, reply: &Ct4Value) -> bool {
    for _ in 0..SNAT_TRIES {
        // SAFETY: plain helper call.
        let r = unsafe { bpf_get_prandom_u32() };
        let port = SNAT_PORT_MIN as u32 + r % (SNAT_PORT_MAX as u32 - SNAT_PORT_MIN as u32 + 1);
        reply_key.dport = (port as u16).to_be();
        // NOEXIST: a port in use towards this backend belongs to another flow.
        if CT4.insert(&*reply_key, reply, BPF_NOEXIST as u64).is_ok() {
            return true;
        }
    }
    false
}
