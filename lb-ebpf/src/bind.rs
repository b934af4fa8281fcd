//! post_bind4 / post_bind6: a process on the node cannot bind a port that is a
//! NodePort (as Cilium's post_bind hook does): the port belongs to the service on
//! every node address, and a listener there would silently take its traffic.
//!
//! An AF_INET6 socket bound to `::` also receives IPv4 traffic (unless IPV6_V6ONLY,
//! which the hook cannot see), and one bound to an IPv4-mapped address receives only
//! IPv4: so post_bind6 refuses an IPv6 NodePort's port unless the address is mapped,
//! and an IPv4 NodePort's port when the address is `::` or mapped.
use aya_ebpf::{bindings::bpf_sock, programs::SockContext};
use lb_common::{Counter, IPPROTO_TCP, IPPROTO_UDP, SVC_FLAG_NODEPORT, scope, v6::is_v4_mapped};

use crate::{
    family::{Family, V4, V6},
    lb,
    maps::count,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[inline(always)]
fn sock(ctx: &SockContext) -> &bpf_sock {
    // SAFETY: the kernel hands every sock program a valid context.
    unsafe { &*ctx.sock }
}

/// The protocol and port (network byte order) of a bound TCP or UDP socket.
#[inline(always)]
fn bound(sk: &bpf_sock) -> Option<(u8, u16)> {
    let proto = match sk.protocol {
        p if p == IPPROTO_TCP as u32 => IPPROTO_TCP,
        p if p == IPPROTO_UDP as u32 => IPPROTO_UDP,
        _ => return None,
    };
    // src_port is in host byte order here; keys hold network order.
    Some((proto, (sk.src_port as u16).to_be()))
}

/// Whether `port` is a NodePort of family `F`.
#[inline(always)]
fn is_nodeport<F: Family>(port: u16, proto: u8) -> bool {
    let key = F::nodeport_key(port, proto, scope::INTERNAL);
    lb::lookup_service::<F>(&key).is_some_and(|svc| svc.flags & SVC_FLAG_NODEPORT != 0)
}

#[inline(always)]
fn verdict(refuse: bool) -> i32 {
    if refuse {
        count(Counter::BindRefused);
        REFUSE
    } else {
        ALLOW
    }
}

/// post_bind4 entry.
#[inline(always)]
pub fn post_bind4(ctx: &SockContext) -> i32 {
    let Some((proto, port)) = bound(sock(ctx)) else {
        return ALLOW;
    };
    verdict(is_nodeport::<V4>(port, proto))
}

/// post_bind6 entry.
#[inline(always)]
pub fn post_bind6(ctx: &SockContext) -> i32 {
    let sk = sock(ctx);
    let Some((proto, port)) = bound(sk) else {
        return ALLOW;
    };
    let address = sk.src_ip6;
    let mapped = is_v4_mapped(&address);
    let any = address == [0; 4];
    verdict(
        (!mapped && is_nodeport::<V6>(port, proto))
            || ((any || mapped) && is_nodeport::<V4>(port, proto)),
    )
}
