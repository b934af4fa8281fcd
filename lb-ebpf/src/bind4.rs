//! post_bind4: a process on the node cannot bind a port that is a NodePort (as
//! Cilium's post_bind hook does): the port belongs to the service on every node
//! address, and a listener there would silently take its traffic.
use aya_ebpf::programs::SockContext;
use lb_common::{Counter, IPPROTO_TCP, IPPROTO_UDP, SVC_FLAG_NODEPORT, Svc4Key};

use crate::{family::V4, lb, maps::count};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[inline(always)]
pub fn post_bind(ctx: &SockContext) -> i32 {
    // SAFETY: the kernel hands every sock program a valid context.
    let sk = unsafe { &*ctx.sock };
    let proto = match sk.protocol {
        p if p == IPPROTO_TCP as u32 => IPPROTO_TCP,
        p if p == IPPROTO_UDP as u32 => IPPROTO_UDP,
        _ => return ALLOW,
    };
    // src_port is in host byte order here; keys hold network order.
    let port = (sk.src_port as u16).to_be();
    let key = Svc4Key::new(0, port, proto, 0);
    match lb::lookup_service::<V4>(&key).map(|svc| svc.flags) {
        Some(flags) if flags & SVC_FLAG_NODEPORT != 0 => {
            count(Counter::BindRefused);
            REFUSE
        }
        _ => ALLOW,
    }
}
