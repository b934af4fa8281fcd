//! Socket-level translation, once for both socket families (connect4/6, sendmsg4/6,
//! recvmsg4/6, getpeername4/6): the forward translation over a socket family `S`
//! (`sock_family.rs`: storage, LRU maps, address field) and the address family `F`
//! of the load-balancing core that serves the destination (an AF_INET6 socket's
//! IPv4-mapped destinations are served by [`V4`]); the reverse translation over `S`.
//!
//! A hook never fails a connect because of an internal error of its own: when a
//! lookup that should succeed does not, the socket proceeds untranslated and a
//! counter records it. Only the service's own verdict refuses a connect.
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_socket_cookie, generated::bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    Counter, IPPROTO_TCP, IPPROTO_UDP, SOCK_STATE_FLAG_SHARED, SockBackend4Value, SvcAction, scope,
    v6::is_v4_mapped,
};

use crate::{
    error::Error,
    family::{Family, V4, V6},
    lb::{self, Flow, Frontend, Selection},
    maps::count,
    sock_family::{Serves, Sock4, Sock6, SockFamily, Translation, remember_reverse},
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

/// connect4 / sendmsg4 entry: translate an IPv4 service address to a backend.
#[inline(always)]
pub fn xlate_fwd4(ctx: &SockAddrContext, hook: FwdHook) -> i32 {
    verdict(match destination::<Sock4>(ctx, hook) {
        Some((proto, dst, port)) => xlate::<Sock4, V4>(ctx, hook, proto, dst, port),
        None => Ok(Forward::NotService),
    })
}

/// connect6 / sendmsg6 entry: an IPv6 service address, or an IPv4 one mapped
/// (`::ffff:a.b.c.d`), to a backend of the same kind.
#[inline(always)]
pub fn xlate_fwd6(ctx: &SockAddrContext, hook: FwdHook) -> i32 {
    verdict(match destination::<Sock6>(ctx, hook) {
        Some((proto, dst, port)) if is_v4_mapped(&dst) => {
            xlate::<Sock6, V4>(ctx, hook, proto, dst, port)
        }
        Some((proto, dst, port)) => xlate::<Sock6, V6>(ctx, hook, proto, dst, port),
        None => Ok(Forward::NotService),
    })
}

/// The hook's return value for what the translation decided.
#[inline(always)]
fn verdict(decided: Result<Forward, Error>) -> i32 {
    match decided {
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
            // SAFETY: helper call with a plain integer; allowed for connect/sendmsg.
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

/// What every forward hook does before the lookup: TCP and UDP only (None for any
/// other protocol), and a connect() forgets what the other family's hooks recorded
/// for the socket. Then the protocol and the destination.
#[inline(always)]
fn destination<S: SockFamily>(ctx: &SockAddrContext, hook: FwdHook) -> Option<(u8, S::Addr, u16)> {
    let sa = sock_addr(ctx);
    let proto = match sa.protocol {
        p if p == IPPROTO_TCP as u32 => IPPROTO_TCP,
        p if p == IPPROTO_UDP as u32 => IPPROTO_UDP,
        _ => return None,
    };
    if hook == FwdHook::Connect {
        S::forget_other(ctx);
    }
    // user_port holds the port in network byte order in its low 16 bits.
    Some((proto, S::user_addr(sa), sa.user_port as u16))
}

/// The forward translation of `dst:port` on a socket of family `S`, served by the
/// frontends of family `F`.
#[inline(always)]
fn xlate<S: Serves<F>, F: Family>(
    ctx: &SockAddrContext,
    hook: FwdHook,
    proto: u8,
    dst: S::Addr,
    port: u16,
) -> Result<Forward, Error> {
    let address = S::lb_addr(dst);
    let Some(fe) = lb::lookup_frontend::<F>(address, port, proto, scope::INTERNAL) else {
        // A service address on a port the service does not have is refused too.
        if lb::is_service_address::<F>(address) {
            return Ok(Forward::Refuse(ECONNREFUSED));
        }
        if hook == FwdHook::Connect {
            forget_translation::<S>(ctx);
            S::forget_other_unserved(ctx);
        }
        return Ok(Forward::NotService);
    };

    match fe.action()? {
        SvcAction::Forward => {}
        SvcAction::Reject => return Ok(Forward::Refuse(ECONNREFUSED)),
        SvcAction::Drop => return Ok(Forward::Refuse(EHOSTUNREACH)),
    }

    let (backend_address, backend_port) =
        choose_backend::<S, F>(ctx, hook, proto, (dst, port), &fe)?;
    let sa = sock_addr(ctx);
    S::set_user_addr(sa, backend_address);
    sa.user_port = backend_port as u32;
    Ok(Forward::Translated)
}

/// Picks the backend for this connect()/sendmsg() and records what the reverse
/// translation needs; the backend as the socket's family writes it.
///
/// The socket's own storage holds its first service: every TCP socket and most UDP
/// sockets never touch a shared map. Only a UDP socket sending to a second service
/// falls back to the LRU maps keyed by socket cookie (as does any socket whose
/// storage could not be allocated).
#[inline(always)]
fn choose_backend<S: Serves<F>, F: Family>(
    ctx: &SockAddrContext,
    hook: FwdHook,
    proto: u8,
    frontend: (S::Addr, u16),
    fe: &Frontend<F>,
) -> Result<(S::Addr, u16), Error> {
    let (address, port) = frontend;
    let storage = S::storage(ctx);
    // Copy out at once: another thread sending on the same socket may rewrite it.
    let current = if storage.is_null() {
        None
    } else {
        // SAFETY: non-null pointer to this socket's storage.
        Some(S::translation(unsafe { &*storage }))
    };
    let same_service = current.is_some_and(|s| s.svc_address == address && s.svc_port == port);

    let shared = current.is_some_and(|s| s.flags & SOCK_STATE_FLAG_SHARED != 0);

    // UDP sticks to the backend chosen before while its slot still holds it.
    if proto == IPPROTO_UDP && same_service {
        if let Some(state) = current {
            if let Some(backend) = lb::still_selected(fe, state.backend_slot, state.backend_id) {
                let backend = S::backend(&backend);
                if shared {
                    remember_reverse::<S>(socket_cookie(ctx), backend, frontend);
                }
                return Ok(backend);
            }
        }
    }

    // connect() (re)defines the socket's one peer; a socket's first service owns
    // the storage too.
    let owns_storage = hook == FwdHook::Connect
        || same_service
        || current.is_none_or(|s| s.svc_address == S::ZERO);
    if owns_storage {
        let picked = lb::select_backend(fe, Flow::Socket(ctx))?;
        let chosen = kept_choice(&picked);
        let backend = S::backend(&picked.backend);
        let mut state = S::state(&Translation {
            svc_address: address,
            svc_port: port,
            backend_slot: chosen.backend_slot,
            backend_id: chosen.backend_id,
            backend_address: backend.0,
            backend_port: backend.1,
            flags: S::FLAGS | if shared { SOCK_STATE_FLAG_SHARED } else { 0 },
        });
        if !storage.is_null() {
            // SAFETY: non-null pointer to this socket's storage, of its layout.
            unsafe { *storage = state };
            if shared {
                remember_reverse::<S>(socket_cookie(ctx), backend, frontend);
            }
            return Ok(backend);
        }
        let created = S::storage_or_insert(ctx, &mut state);
        if !created.is_null() {
            return Ok(backend);
        }
        // No storage (allocation failed): remember the choice in the LRU maps.
        let cookie = socket_cookie(ctx);
        if proto == IPPROTO_UDP {
            S::keep_choice(cookie, choice_key::<S, F>(frontend, fe), &chosen);
        }
        remember_reverse::<S>(cookie, backend, frontend);
        return Ok(backend);
    }

    // A further service of a UDP socket: the LRU maps, keyed by socket cookie. The
    // storage exists here (it holds another service).
    if !shared && !storage.is_null() {
        S::set_flags(storage, SOCK_STATE_FLAG_SHARED);
    }
    let cookie = socket_cookie(ctx);
    let backend = udp_backend::<S, F>(ctx, cookie, frontend, fe)?;
    remember_reverse::<S>(cookie, backend, frontend);
    Ok(backend)
}

/// connect() to an address that is no service: the socket's one peer is now that
/// address, so what its storage says about an earlier connect to a service no longer
/// holds (getpeername would show that service, and stale-socket termination would
/// take a socket connected to a backend directly for a translated one).
#[inline(always)]
fn forget_translation<S: SockFamily>(ctx: &SockAddrContext) {
    let storage = S::storage(ctx);
    if !storage.is_null() {
        S::clear(storage);
    }
}

#[inline(always)]
fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the context is a sock_addr context, for which the helper is allowed.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The choice a UDP socket keeps: backend id and slot, valid while the slot holds it.
#[inline(always)]
fn kept_choice<F: Family>(picked: &Selection<F>) -> SockBackend4Value {
    SockBackend4Value {
        backend_id: picked.backend_id,
        backend_slot: picked.slot,
        pad: 0,
    }
}

/// The service of a UDP socket's choice in the LRU map: the frontend as the service
/// table keys it (a NodePort by the all-zero address), as the socket family writes it.
#[inline(always)]
fn choice_key<S: Serves<F>, F: Family>(
    (address, port): (S::Addr, u16),
    fe: &Frontend<F>,
) -> (S::Addr, u16) {
    (if fe.nodeport { S::NODEPORT } else { address }, port)
}

/// UDP beyond the socket's first service: one backend per (socket, service) in the
/// LRU map, kept while its slot still holds it.
#[inline(always)]
fn udp_backend<S: Serves<F>, F: Family>(
    ctx: &SockAddrContext,
    cookie: u64,
    frontend: (S::Addr, u16),
    fe: &Frontend<F>,
) -> Result<(S::Addr, u16), Error> {
    let key = choice_key::<S, F>(frontend, fe);
    if let Some(chosen) = S::kept_choice(cookie, key) {
        if let Some(backend) = lb::still_selected(fe, chosen.backend_slot, chosen.backend_id) {
            return Ok(S::backend(&backend));
        }
    }
    let picked = lb::select_backend(fe, Flow::Socket(ctx))?;
    // Failing to remember the choice only costs stickiness for this datagram.
    S::keep_choice(cookie, key, &kept_choice(&picked));
    Ok(S::backend(&picked.backend))
}

/// recvmsg4 / getpeername4 entry: show the service address instead of the backend.
#[inline(always)]
pub fn xlate_rev4(ctx: &SockAddrContext) -> i32 {
    xlate_rev::<Sock4>(ctx)
}

/// recvmsg6 / getpeername6 entry: the same for AF_INET6 sockets (mapped addresses
/// included).
#[inline(always)]
pub fn xlate_rev6(ctx: &SockAddrContext) -> i32 {
    xlate_rev::<Sock6>(ctx)
}

#[inline(always)]
fn xlate_rev<S: SockFamily>(ctx: &SockAddrContext) -> i32 {
    let sa = sock_addr(ctx);
    let (address, port) = (S::user_addr(sa), sa.user_port as u16);
    if let Some((svc_address, svc_port)) = S::peer_service(ctx, address, port) {
        let sa = sock_addr(ctx);
        S::set_user_addr(sa, svc_address);
        sa.user_port = svc_port as u32;
        count(Counter::ReverseTranslated);
    }
    // recvmsg and getpeername programs must return 1.
    PROCEED
}

/// The service address a socket used for the backend `address:port`, if any: the
/// socket's own storage first, then the LRU map.
#[inline(always)]
pub fn reverse_of<S: SockFamily>(
    ctx: &SockAddrContext,
    address: S::Addr,
    port: u16,
) -> Option<(S::Addr, u16)> {
    let storage = S::storage(ctx);
    if !storage.is_null() {
        // SAFETY: non-null pointer to this socket's storage; copied out at once.
        let state = S::translation(unsafe { &*storage });
        if state.svc_address != S::ZERO
            && state.backend_address == address
            && state.backend_port == port
        {
            let from_state = (state.svc_address, state.svc_port);
            if state.flags & SOCK_STATE_FLAG_SHARED == 0 {
                return Some(from_state);
            }
            // A socket talking to several services: the LRU map knows which one this
            // backend served, else the storage's. (Two lookups in the code rather
            // than one after a "found in the storage" value: that value costs the
            // verifier more paths.)
            return Some(S::reverse(socket_cookie(ctx), (address, port)).unwrap_or(from_state));
        }
    }
    // Sockets without storage (or whose storage names another peer): the LRU map.
    S::reverse(socket_cookie(ctx), (address, port))
}
