//! IPv4 socket-level translation (connect4, sendmsg4, recvmsg4, getpeername4).
//!
//! A hook never fails a connect because of an internal error of its own: when a
//! lookup that should succeed does not, the socket proceeds untranslated and a
//! counter records it. Only the service's own verdict refuses a connect.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, bpf_sock_addr},
    helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie, generated::bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    Backend4, Counter, IPPROTO_TCP, IPPROTO_UDP, RevNat4Key, RevNat4Value, SockBackend4Key,
    SockBackend4Value, Svc4Key, Svc4Value, SvcAction,
};

use crate::maps::{BACKEND4, REVNAT4, SOCK_BACKEND4, SVC4, count, is_node_addr};

/// Return codes of cgroup sock_addr programs.
const PROCEED: i32 = 1;
const REJECT: i32 = 0;

const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

/// What the forward translation decided.
enum Forward {
    /// Not a service address: leave the socket alone.
    NotService,
    /// Translated to this backend.
    Translated,
    /// The service refuses new connections with this errno.
    Refuse(i32),
}

/// Internal lookup failures; the socket proceeds untranslated.
struct Inconsistent;

/// connect4 / sendmsg4 entry: translate a service address to a backend.
#[inline(always)]
pub fn xlate_fwd(ctx: &SockAddrContext) -> i32 {
    match try_xlate_fwd(ctx) {
        Ok(Forward::NotService) => PROCEED,
        Ok(Forward::Translated) => {
            count(Counter::Translated);
            PROCEED
        }
        Ok(Forward::Refuse(errno)) => {
            count(if errno == ECONNREFUSED {
                Counter::Rejected
            } else {
                Counter::Dropped
            });
            // SAFETY: helper call with a plain integer; allowed for connect4/sendmsg4.
            unsafe { bpf_set_retval(-errno) };
            REJECT
        }
        Err(Inconsistent) => {
            count(Counter::Inconsistent);
            PROCEED
        }
    }
}

#[inline(always)]
fn sock_addr(ctx: &SockAddrContext) -> &mut bpf_sock_addr {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    unsafe { &mut *ctx.sock_addr }
}

#[inline(always)]
fn try_xlate_fwd(ctx: &SockAddrContext) -> Result<Forward, Inconsistent> {
    let sa = sock_addr(ctx);
    let proto = match sa.protocol {
        p if p == IPPROTO_TCP as u32 => IPPROTO_TCP,
        p if p == IPPROTO_UDP as u32 => IPPROTO_UDP,
        _ => return Ok(Forward::NotService),
    };
    let address = sa.user_ip4;
    // user_port holds the port in network byte order in its low 16 bits.
    let port = sa.user_port as u16;

    let Some((key, svc)) = lookup_frontend(address, port, proto) else {
        // A service address on a port the service does not have is refused too.
        return Ok(match lookup_svc(&Svc4Key::wildcard(address)) {
            Some(_) => Forward::Refuse(ECONNREFUSED),
            None => Forward::NotService,
        });
    };

    match SvcAction::from_u8(svc.action) {
        Some(SvcAction::Forward) => {}
        Some(SvcAction::Reject) => return Ok(Forward::Refuse(ECONNREFUSED)),
        Some(SvcAction::Drop) => return Ok(Forward::Refuse(EHOSTUNREACH)),
        None => return Err(Inconsistent),
    }
    if svc.count == 0 {
        return Err(Inconsistent);
    }

    // SAFETY: the context is a sock_addr context, for which the helper is allowed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let backend = if proto == IPPROTO_UDP {
        udp_backend(cookie, &key, svc.count)?
    } else {
        let (_, backend) = random_backend(&key, svc.count)?;
        backend
    };

    // Record the reverse translation before rewriting: if it cannot be stored,
    // getpeername() would show the backend, which is still a working socket.
    let rev_key = RevNat4Key {
        cookie,
        address: backend.address,
        port: backend.port,
        pad: 0,
    };
    let rev_val = RevNat4Value {
        address,
        port,
        pad: 0,
    };
    if REVNAT4.insert(&rev_key, &rev_val, BPF_ANY as u64).is_err() {
        count(Counter::RevNatUpdateFailed);
    }

    sa.user_ip4 = backend.address;
    sa.user_port = backend.port as u32;
    Ok(Forward::Translated)
}

/// The frontend of a connection started on this node: the exact address (ClusterIP,
/// LoadBalancer or external IP), else a NodePort when the address is the node's.
#[inline(always)]
fn lookup_frontend(address: u32, port: u16, proto: u8) -> Option<(Svc4Key, Svc4Value)> {
    let key = Svc4Key::new(address, port, proto, 0);
    if let Some(svc) = lookup_svc(&key) {
        return Some((key, svc));
    }
    if !is_node_addr(address) {
        return None;
    }
    let nodeport = Svc4Key::new(0, port, proto, 0);
    lookup_svc(&nodeport).map(|svc| (nodeport, svc))
}

#[inline(always)]
fn lookup_svc(key: &Svc4Key) -> Option<Svc4Value> {
    // Copy out at once: the entry may be rewritten by the agent at any time.
    SVC4.get_ptr(key).map(|p| unsafe { *p })
}

#[inline(always)]
fn lookup_backend(id: u32) -> Option<Backend4> {
    BACKEND4.get_ptr(id).map(|p| unsafe { *p })
}

/// Picks one of the `count` slots at random and resolves it.
#[inline(always)]
fn random_backend(
    key: &Svc4Key,
    count: u16,
) -> Result<(SockBackend4Value, Backend4), Inconsistent> {
    // SAFETY: helper without arguments.
    let rnd = unsafe { bpf_get_prandom_u32() };
    let slot = 1 + (rnd % count as u32) as u16;
    let slot_val = lookup_svc(&key.with_slot(slot)).ok_or(Inconsistent)?;
    let backend = lookup_backend(slot_val.backend_id).ok_or(Inconsistent)?;
    Ok((
        SockBackend4Value {
            backend_id: slot_val.backend_id,
            backend_slot: slot,
            pad: 0,
        },
        backend,
    ))
}

/// UDP: one backend per (socket, service), kept while its slot still holds it.
#[inline(always)]
fn udp_backend(cookie: u64, key: &Svc4Key, count: u16) -> Result<Backend4, Inconsistent> {
    let sk_key = SockBackend4Key {
        cookie,
        address: key.address,
        port: key.dport,
        pad: 0,
    };
    if let Some(chosen) = SOCK_BACKEND4.get_ptr(&sk_key).map(|p| unsafe { *p }) {
        if chosen.backend_slot >= 1 && chosen.backend_slot <= count {
            let still_there = lookup_svc(&key.with_slot(chosen.backend_slot))
                .is_some_and(|s| s.backend_id == chosen.backend_id);
            if still_there {
                if let Some(backend) = lookup_backend(chosen.backend_id) {
                    return Ok(backend);
                }
            }
        }
    }
    let (chosen, backend) = random_backend(key, count)?;
    // Failing to remember the choice only costs stickiness for this datagram.
    let _ = SOCK_BACKEND4.insert(&sk_key, &chosen, BPF_ANY as u64);
    Ok(backend)
}

/// recvmsg4 / getpeername4 entry: show the service address instead of the backend.
#[inline(always)]
pub fn xlate_rev(ctx: &SockAddrContext) -> i32 {
    let sa = sock_addr(ctx);
    // SAFETY: the context is a sock_addr context, for which the helper is allowed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevNat4Key {
        cookie,
        address: sa.user_ip4,
        port: sa.user_port as u16,
        pad: 0,
    };
    if let Some(orig) = REVNAT4.get_ptr(&key).map(|p| unsafe { *p }) {
        sa.user_ip4 = orig.address;
        sa.user_port = orig.port as u32;
        count(Counter::ReverseTranslated);
    }
    // recvmsg4 and getpeername4 must return 1.
    PROCEED
}
