//! socklb kernel programs.
//!
//! cgroup socket hooks translate a service address to a backend once per connect() or
//! sendmsg(), so packets leave already addressed to the backend, and translate the
//! backend back to the service address for getpeername() and recvmsg() so the
//! application only ever sees the service. TC programs on the node's devices do the
//! same for NodePort, LoadBalancer and external IP traffic from outside the node.
//!
//! - `lb.rs`: the load-balancing core every hook calls: frontends, backend selection,
//!   written once over `family.rs` (where IPv4 and IPv6 keep their maps and keys);
//! - `maglev.rs`: backend selection by a frontend's Maglev table (TC, new flows);
//! - `sock.rs`: the socket hooks of both families (connect4/6, sendmsg4/6, recvmsg4/6,
//!   getpeername4/6), written once over `sock_family.rs` (where AF_INET and AF_INET6
//!   sockets keep their state, and which lb family serves an IPv4-mapped address);
//! - `bind.rs`: post_bind4 and post_bind6, which keep NodePorts' ports from local
//!   listeners;
//! - `tc/`: the TC programs of both families (parse, rewrite, conntrack, snat, route,
//!   icmp, reject), one pair per family from the same code;
//! - `stale.rs`: socket iterators that destroy connected sockets whose backend left
//!   their service (with the kill map they read);
//! - `maps.rs`, `maps6.rs`: the IPv4 and IPv6 maps and the helpers that read them;
//!   `error.rs`: the error type.
//!
//! Entry points here stay thin; their names are the program names the agent attaches.
#![no_std]
#![no_main]

mod bind;
mod error;
// Parts of V6 and the lb6_* maps are used only by the IPv6 TC path, which follows.
#[allow(dead_code)]
mod family;
mod lb;
mod maglev;
mod maps;
#[allow(dead_code)]
mod maps6;
mod sock;
mod sock_family;
mod stale;
mod tc;

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, classifier},
    programs::{SockAddrContext, SockContext, TcContext},
};

#[cgroup_sock_addr(connect4)]
pub fn sock4_connect(ctx: SockAddrContext) -> i32 {
    sock::xlate_fwd4(&ctx, sock::FwdHook::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock4_sendmsg(ctx: SockAddrContext) -> i32 {
    sock::xlate_fwd4(&ctx, sock::FwdHook::Sendmsg)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock4_recvmsg(ctx: SockAddrContext) -> i32 {
    sock::xlate_rev4(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock4_getpeername(ctx: SockAddrContext) -> i32 {
    sock::xlate_rev4(&ctx)
}

#[cgroup_sock(post_bind4)]
pub fn sock4_post_bind(ctx: SockContext) -> i32 {
    bind::post_bind4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn sock6_connect(ctx: SockAddrContext) -> i32 {
    sock::xlate_fwd6(&ctx, sock::FwdHook::Connect)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock6_sendmsg(ctx: SockAddrContext) -> i32 {
    sock::xlate_fwd6(&ctx, sock::FwdHook::Sendmsg)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock6_recvmsg(ctx: SockAddrContext) -> i32 {
    sock::xlate_rev6(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock6_getpeername(ctx: SockAddrContext) -> i32 {
    sock::xlate_rev6(&ctx)
}

#[cgroup_sock(post_bind6)]
pub fn sock6_post_bind(ctx: SockContext) -> i32 {
    bind::post_bind6(&ctx)
}

#[classifier]
pub fn lb4_tc_ingress(ctx: TcContext) -> i32 {
    tc::ingress::<family::V4>(&ctx)
}

#[classifier]
pub fn lb4_tc_egress(ctx: TcContext) -> i32 {
    tc::egress::<family::V4>(&ctx)
}

#[classifier]
pub fn lb6_tc_ingress(ctx: TcContext) -> i32 {
    tc::ingress::<family::V6>(&ctx)
}

#[classifier]
pub fn lb6_tc_egress(ctx: TcContext) -> i32 {
    tc::egress::<family::V6>(&ctx)
}

// The IPv6 TC programs' tail calls (lb_common::tc6_calls, filled by the agent).
#[classifier]
pub fn lb6_tc_new(ctx: TcContext) -> i32 {
    tc::new_flow_tail::<family::V6>(&ctx)
}

#[classifier]
pub fn lb6_tc_icmp_in(ctx: TcContext) -> i32 {
    tc::icmp6_tail(&ctx, true)
}

#[classifier]
pub fn lb6_tc_icmp_eg(ctx: TcContext) -> i32 {
    tc::icmp6_tail(&ctx, false)
}

#[classifier]
pub fn lb6_tc_reject(ctx: TcContext) -> i32 {
    tc::reject_tail::<family::V6>(&ctx)
}

// Socket iterators: aya-ebpf 0.2 has no `iter` macro; the section name is what aya's
// loader and the kernel go by.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub fn sock_stale_udp(ctx: *mut stale::bpf_iter__udp) -> i32 {
    stale::udp(ctx)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn sock_stale_tcp(ctx: *mut stale::bpf_iter__tcp) -> i32 {
    stale::tcp(ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves programs free of panics; this is never reached.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
