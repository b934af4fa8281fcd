//! IPv4 socket-level translation (connect4, sendmsg4, recvmsg4, getpeername4).
//!
//! A hook never fails a connect because of an internal error of its own: when a
//! lookup that should succeed does not, the socket proceeds untranslated and a
//! counter records it. Only the service's own verdict refuses a connect.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, bpf_sock_addr},
    helpers::{bpf_get_socket_cookie, generated::bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    Backend4, Counter, IPPROTO_TCP, IPPROTO_UDP, RevNat4Key, RevNat4Value, SOCK_STATE_FLAG_SHARED,
    SockBackend4Key, SockBackend4Value, SockState4, SvcAction, scope,
};

use crate::{
    error::Error,
    family::V4,
    lb::{self, Flow, Frontend, Selection},
    maps::{REVNAT4, SOCK_BACKEND4, SOCK_STATE4, count, get_copy},
};

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

/// The hook running the forward translation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FwdHook {
    /// connect(): sets the socket's one peer (TCP, connected UDP).
    Connect,
    /// sendmsg() with an address (unconnected UDP).
    Sendmsg,
}

/// connect4 / sendmsg4 entry: translate a service address to a backend.
#[inline(always)]
pub fn xlate_fwd(ctx: &SockAddrContext, hook: FwdHook) -> i32 {
    match try_xlate_fwd(ctx, hook) {
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
        // An internal error never fails the connect: it proceeds untranslated.
        Err(e) => {
            count(e.counter());
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
fn try_xlate_fwd(ctx: &SockAddrContext, hook: FwdHook) -> Result<Forward, Error> {
    let sa = sock_addr(ctx);
    let proto = match sa.protocol {
        p if p == IPPROTO_TCP as u32 => IPPROTO_TCP,
        p if p == IPPROTO_UDP as u32 => IPPROTO_UDP,
        _ => return Ok(Forward::NotService),
    };
    let address = sa.user_ip4;
    // user_port holds the port in network byte order in its low 16 bits.
    let port = sa.user_port as u16;

    let Some(fe) = lb::lookup_frontend::<V4>(address, port, proto, scope::INTERNAL) else {
        // A service address on a port the service does not have is refused too.
        if lb::is_service_address::<V4>(address) {
            return Ok(Forward::Refuse(ECONNREFUSED));
        }
        if hook == FwdHook::Connect {
            forget_translation(ctx);
        }
        return Ok(Forward::NotService);
    };

    match fe.action()? {
        SvcAction::Forward => {}
        SvcAction::Reject => return Ok(Forward::Refuse(ECONNREFUSED)),
        SvcAction::Drop => return Ok(Forward::Refuse(EHOSTUNREACH)),
    }

    let backend = choose_backend(ctx, hook, proto, (address, port), &fe)?;
    sa.user_ip4 = backend.address;
    sa.user_port = backend.port as u32;
    Ok(Forward::Translated)
}

/// Picks the backend for this connect()/sendmsg() and records what the reverse
/// translation needs.
///
/// The socket's own storage holds its first service: every TCP socket and most UDP
/// sockets never touch a shared map. Only a UDP socket sending to a second service
/// falls back to the LRU maps keyed by socket cookie (as does any socket whose
/// storage could not be allocated).
#[inline(always)]
fn choose_backend(
    ctx: &SockAddrContext,
    hook: FwdHook,
    proto: u8,
    frontend: (u32, u16),
    fe: &Frontend<V4>,
) -> Result<Backend4, Error> {
    let (address, port) = frontend;
    // SAFETY: sock_addr context; the helper only reads the socket it is given.
    let storage = unsafe { SOCK_STATE4.get_ptr_mut(ctx) };
    // Copy out at once: another thread sending on the same socket may rewrite it.
    let current = if storage.is_null() {
        None
    } else {
        Some(unsafe { *storage })
    };
    let same_service = current.is_some_and(|s| s.svc_address == address && s.svc_port == port);

    let shared = current.is_some_and(|s| s.flags & SOCK_STATE_FLAG_SHARED != 0);

    // UDP sticks to the backend chosen before while its slot still holds it.
    if proto == IPPROTO_UDP && same_service {
        if let Some(state) = current {
            if let Some(backend) = lb::still_selected(fe, state.backend_slot, state.backend_id) {
                if shared {
                    remember_reverse(socket_cookie(ctx), &backend, frontend);
                }
                return Ok(backend);
            }
        }
    }

    // connect() (re)defines the socket's one peer; a socket's first service owns
    // the storage too.
    let owns_storage =
        hook == FwdHook::Connect || same_service || current.is_none_or(|s| s.svc_address == 0);
    if owns_storage {
        let picked = lb::select_backend(fe, Flow::Socket(ctx))?;
        let (chosen, backend) = (kept_choice(&picked), picked.backend);
        let mut state = SockState4 {
            svc_address: address,
            svc_port: port,
            backend_slot: chosen.backend_slot,
            backend_id: chosen.backend_id,
            backend_address: backend.address,
            backend_port: backend.port,
            flags: if shared { SOCK_STATE_FLAG_SHARED } else { 0 },
        };
        if !storage.is_null() {
            // SAFETY: non-null pointer to this socket's storage, sized for SockState4.
            unsafe { *storage = state };
            if shared {
                remember_reverse(socket_cookie(ctx), &backend, frontend);
            }
            return Ok(backend);
        }
        // SAFETY: as above; the helper copies `state` into the new storage.
        let created = unsafe { SOCK_STATE4.get_or_insert_ptr_mut(ctx, Some(&mut state)) };
        if !created.is_null() {
            return Ok(backend);
        }
        // No storage (allocation failed): remember the choice in the LRU maps.
        let cookie = socket_cookie(ctx);
        if proto == IPPROTO_UDP {
            let sk_key = sock_backend_key(cookie, fe);
            let _ = SOCK_BACKEND4.insert(&sk_key, &chosen, BPF_ANY as u64);
        }
        remember_reverse(cookie, &backend, frontend);
        return Ok(backend);
    }

    // A further service of a UDP socket: the LRU maps, keyed by socket cookie. The
    // storage exists here (it holds another service).
    if !shared && !storage.is_null() {
        // SAFETY: non-null pointer to this socket's storage.
        unsafe { (*storage).flags |= SOCK_STATE_FLAG_SHARED };
    }
    let cookie = socket_cookie(ctx);
    let backend = udp_backend(ctx, cookie, fe)?;
    remember_reverse(cookie, &backend, frontend);
    Ok(backend)
}

/// connect() to an address that is no service: the socket's one peer is now that
/// address, so what its storage says about an earlier connect to a service no longer
/// holds (getpeername would show that service, and stale-socket termination would
/// take a socket connected to a backend directly for a translated one).
#[inline(always)]
fn forget_translation(ctx: &SockAddrContext) {
    // SAFETY: sock_addr context; lookup only (no create flag).
    let storage = unsafe { SOCK_STATE4.get_ptr_mut(ctx) };
    if !storage.is_null() {
        // SAFETY: non-null pointer to this socket's storage, sized for SockState4.
        unsafe { (*storage).svc_address = 0 };
    }
}

#[inline(always)]
fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the context is a sock_addr context, for which the helper is allowed.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Records (socket, backend) -> service in the LRU map. If it cannot be stored,
/// getpeername()/recvfrom() show the backend, which is still a working socket.
#[inline(always)]
fn remember_reverse(cookie: u64, backend: &Backend4, (address, port): (u32, u16)) {
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
}

/// The choice a UDP socket keeps: backend id and slot, valid while the slot holds it.
#[inline(always)]
fn kept_choice(picked: &Selection<V4>) -> SockBackend4Value {
    SockBackend4Value {
        backend_id: picked.backend_id,
        backend_slot: picked.slot,
        pad: 0,
    }
}

/// Key of a UDP socket's choice for one service in the LRU map.
#[inline(always)]
fn sock_backend_key(cookie: u64, fe: &Frontend<V4>) -> SockBackend4Key {
    SockBackend4Key {
        cookie,
        address: fe.key.address,
        port: fe.key.dport,
        pad: 0,
    }
}

/// UDP beyond the socket's first service: one backend per (socket, service) in the
/// LRU map, kept while its slot still holds it.
#[inline(always)]
fn udp_backend(ctx: &SockAddrContext, cookie: u64, fe: &Frontend<V4>) -> Result<Backend4, Error> {
    let sk_key = sock_backend_key(cookie, fe);
    if let Some(chosen) = get_copy(&SOCK_BACKEND4, &sk_key) {
        if let Some(backend) = lb::still_selected(fe, chosen.backend_slot, chosen.backend_id) {
            return Ok(backend);
        }
    }
    let picked = lb::select_backend(fe, Flow::Socket(ctx))?;
    // Failing to remember the choice only costs stickiness for this datagram.
    let _ = SOCK_BACKEND4.insert(&sk_key, &kept_choice(&picked), BPF_ANY as u64);
    Ok(picked.backend)
}

/// recvmsg4 / getpeername4 entry: show the service address instead of the backend.
#[inline(always)]
pub fn xlate_rev(ctx: &SockAddrContext) -> i32 {
    let sa = sock_addr(ctx);
    let (address, port) = (sa.user_ip4, sa.user_port as u16);
    if let Some((svc_address, svc_port)) = reverse_of(ctx, address, port) {
        sa.user_ip4 = svc_address;
        sa.user_port = svc_port as u32;
        count(Counter::ReverseTranslated);
    }
    // recvmsg4 and getpeername4 must return 1.
    PROCEED
}

/// The service address a socket used for the backend `address:port`, if any: the
/// socket's own storage first, then the LRU map.
#[inline(always)]
fn reverse_of(ctx: &SockAddrContext, address: u32, port: u16) -> Option<(u32, u16)> {
    // SAFETY: sock_addr context; the helper only reads the socket it is given.
    let storage = unsafe { SOCK_STATE4.get_ptr_mut(ctx) };
    // The storage's answer, (0, 0) for none. Plain values rather than an Option: an
    // Option's unset payload is uninitialized stack, which the verifier rejects.
    let mut from_state = (0u32, 0u16);
    if !storage.is_null() {
        // SAFETY: non-null pointer to this socket's storage; copied out at once.
        let state = unsafe { *storage };
        if state.svc_address != 0 && state.backend_address == address && state.backend_port == port
        {
            if state.flags & SOCK_STATE_FLAG_SHARED == 0 {
                return Some((state.svc_address, state.svc_port));
            }
            from_state = (state.svc_address, state.svc_port);
        }
    }
    // Sockets talking to several services (and sockets without storage): the LRU map.
    let key = RevNat4Key {
        cookie: socket_cookie(ctx),
        address,
        port,
        pad: 0,
    };
    if let Some(orig) = get_copy(&REVNAT4, &key) {
        return Some((orig.address, orig.port));
    }
    if from_state.0 != 0 {
        Some(from_state)
    } else {
        None
    }
}
