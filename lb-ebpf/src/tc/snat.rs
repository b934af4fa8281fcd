//! SNAT of new flows to backends on other nodes: the node's address and a free port.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32, programs::TcContext};
use lb_common::{BACKEND_FLAG_LOCAL, SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_FLAG_SNAT};

use super::family::{TcFamily, Tuple};
use crate::{
    error::{Cause, Error},
    lb::Frontend,
};

/// Tries at finding a free SNAT port before a new flow is dropped.
const SNAT_TRIES: u32 = 8;

/// Whether a new flow to `backend` gets the node's address as its source: under
/// externalTrafficPolicy Cluster, when the backend runs on another node, so that its
/// replies come back through this node.
#[inline(always)]
pub fn needed<F: TcFamily>(fe: &Frontend<F>, backend: &F::Backend) -> bool {
    let (_, _, flags) = F::backend(backend);
    fe.svc.flags & SVC_FLAG_SNAT != 0 && flags & BACKEND_FLAG_LOCAL == 0
}

/// The source address of SNATed flows leaving through the packet's device (of the
/// packet's family: the device map of each family has its own).
#[inline(always)]
pub fn address<F: TcFamily>(ctx: &TcContext) -> Result<F::Addr, Error> {
    // SAFETY: the skb context is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    Ok(F::snat_address(ifindex).ok_or(Cause::DeviceMissing)?)
}

/// Inserts the reply entry `reply` under the key of `reply_tuple` (protocol `proto`)
/// with a free SNAT port as its destination port (left in `reply_tuple`); false when
/// every port tried was taken.
#[inline(always)]
pub fn insert_with_free_port<F: TcFamily>(
    reply_tuple: &mut Tuple<F::Addr>,
    proto: u8,
    reply: &F::CtValue,
) -> bool {
    for _ in 0..SNAT_TRIES {
        // SAFETY: plain helper call.
        let r = unsafe { bpf_get_prandom_u32() };
        let port = SNAT_PORT_MIN as u32 + r % (SNAT_PORT_MAX as u32 - SNAT_PORT_MIN as u32 + 1);
        reply_tuple.dport = (port as u16).to_be();
        // NOEXIST: a port in use towards this backend belongs to another flow.
        let key = F::ct_key(reply_tuple, proto);
        if F::ct_map().insert(&key, reply, BPF_NOEXIST as u64).is_ok() {
            return true;
        }
    }
    false
}
