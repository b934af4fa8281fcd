//! The two socket families of the socket hooks: where AF_INET and AF_INET6 sockets
//! keep their translation state (socket storage, the reverse and UDP-choice LRU
//! maps), how their hooks read and write the address (`user_ip4`, `user_ip6`), and
//! which address family of the load-balancing core serves which destination
//! ([`Serves`]). `sock.rs` holds the hooks' logic, written once over these.
//!
//! An AF_INET6 socket reaches IPv4 services through IPv4-mapped addresses
//! (`::ffff:a.b.c.d`): [`Sock6`] serves them from the IPv4 maps ([`V4`]) and keeps
//! the translation, mapped, in its own storage with [`SOCK_STATE_FLAG_MAPPED`].
//! The kernel also hands some of an AF_INET6 socket's calls to the IPv4 hooks: a
//! datagram to a mapped address goes through sendmsg4 (udpv6_sendmsg calls
//! udp_sendmsg), and a UDP connect() with a `sockaddr_in` through connect4. Those
//! keep their state in [`Sock4`]'s storage of that socket, so the reverse hooks of
//! [`Sock6`] look there first for a mapped address ([`SockFamily::peer_service`]).
//! connect6 forgets what the IPv4 hooks recorded ([`SockFamily::forget_other`]);
//! connect4 only when it translates nothing (a translation of its own takes
//! precedence for a mapped peer anyway): the check of the socket's family would cost
//! every IPv4 connect, for a case (a `sockaddr_in` passed to an AF_INET6 socket)
//! applications hardly ever make.
use aya_ebpf::{bindings::BPF_ANY, bindings::bpf_sock_addr, programs::SockAddrContext};
use lb_common::{
    Addr6, Backend4, Backend6, Counter, RevNat4Key, RevNat4Value, RevNat6Key, RevNat6Value,
    SOCK_STATE_FLAG_MAPPED, SockBackend4Key, SockBackend4Value, SockBackend6Key, SockState4,
    SockState6,
    v6::{is_v4_mapped, mapped_v4, v4_mapped},
};

use crate::{
    family::{Family, V4, V6},
    maps::{REVNAT4, SOCK_BACKEND4, SOCK_STATE4, count, get_copy},
    maps6::{REVNAT6, SOCK_BACKEND6, SOCK_STATE6},
};

/// AF_INET6, as `bpf_sock_addr.family` has it.
pub const AF_INET6: u32 = 10;

/// A socket's translation as the hooks read and write it, whatever its storage's
/// layout: addresses as the socket's family has them.
#[derive(Clone, Copy)]
pub struct Translation<A> {
    /// Service address the application used; zero while the storage is unused.
    pub svc_address: A,
    /// Service port, network byte order.
    pub svc_port: u16,
    /// The slot the backend was chosen from.
    pub backend_slot: u16,
    /// The chosen backend's id (in the id space of the family that served it).
    pub backend_id: u32,
    /// Backend address the socket was translated to.
    pub backend_address: A,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// `SOCK_STATE_FLAG_*` bits.
    pub flags: u16,
}

/// A socket family: its storage, its LRU maps and its hooks' address field.
pub trait SockFamily: Copy + 'static {
    /// An address as the family's hooks see it (network byte order).
    type Addr: Copy + PartialEq;
    /// The layout of its socket storage.
    type State: Copy;

    /// The all-zero address ("no translation" in a storage's service address).
    const ZERO: Self::Addr;

    /// The destination of connect()/sendmsg(), the peer of getpeername()/recvmsg().
    fn user_addr(sa: &bpf_sock_addr) -> Self::Addr;
    /// Rewrites it.
    fn set_user_addr(sa: &mut bpf_sock_addr, address: Self::Addr);

    /// The socket's storage, null when it has none (lookup only).
    fn storage(ctx: &SockAddrContext) -> *mut Self::State;
    /// The socket's storage, created from `init` when it has none; null when it
    /// cannot be allocated.
    fn storage_or_insert(ctx: &SockAddrContext, init: &mut Self::State) -> *mut Self::State;
    /// The storage layout of a translation.
    fn state(t: &Translation<Self::Addr>) -> Self::State;
    /// The translation a storage holds.
    fn translation(state: &Self::State) -> Translation<Self::Addr>;
    /// Marks the storage at `state` unused (service address zero).
    fn clear(state: *mut Self::State);
    /// Sets `flags` in the storage at `state`.
    fn set_flags(state: *mut Self::State, flags: u16);

    /// Records (socket, backend) -> service in the reverse LRU map; false when it
    /// could not be stored.
    fn remember_reverse(cookie: u64, backend: (Self::Addr, u16), svc: (Self::Addr, u16)) -> bool;
    /// The service a socket used for `backend`, from the reverse LRU map.
    fn reverse(cookie: u64, backend: (Self::Addr, u16)) -> Option<(Self::Addr, u16)>;
    /// The backend choice a UDP socket keeps for `svc` (an address as the service
    /// table keys it), from the LRU map.
    fn kept_choice(cookie: u64, svc: (Self::Addr, u16)) -> Option<SockBackend4Value>;
    /// Records it (losing it only costs stickiness).
    fn keep_choice(cookie: u64, svc: (Self::Addr, u16), choice: &SockBackend4Value);

    /// connect() redefines the socket's one peer: what the other family's hooks
    /// recorded for this socket no longer holds. Called before the lookup.
    fn forget_other(ctx: &SockAddrContext);
    /// The same for a connect() to an address that is no service (after the lookup).
    fn forget_other_unserved(ctx: &SockAddrContext);
    /// The service address a socket used for its peer `address:port`, if any: what
    /// this family's hooks recorded ([`crate::sock::reverse_of`]), and what the other
    /// family's hooks recorded for the socket.
    fn peer_service(
        ctx: &SockAddrContext,
        address: Self::Addr,
        port: u16,
    ) -> Option<(Self::Addr, u16)>;
}

/// How a socket family reaches the frontends of one address family `F` of the
/// load-balancing core.
pub trait Serves<F: Family>: SockFamily {
    /// Flags every translation of this kind carries in the storage.
    const FLAGS: u16;
    /// The address a NodePort's frontend is keyed by (all zero), as the socket
    /// family writes it.
    const NODEPORT: Self::Addr;
    /// A socket address as the service table keys it.
    fn lb_addr(address: Self::Addr) -> F::Addr;
    /// Where a backend is, as the socket family writes it.
    fn backend(backend: &F::Backend) -> (Self::Addr, u16);
}

/// AF_INET sockets: `user_ip4`, the `lb4_*` socket maps.
#[derive(Clone, Copy)]
pub struct Sock4;

/// AF_INET6 sockets: `user_ip6`, the `lb6_*` socket maps.
#[derive(Clone, Copy)]
pub struct Sock6;

impl SockFamily for Sock4 {
    type Addr = u32;
    type State = SockState4;
    const ZERO: u32 = 0;

    #[inline(always)]
    fn user_addr(sa: &bpf_sock_addr) -> u32 {
        sa.user_ip4
    }
    #[inline(always)]
    fn set_user_addr(sa: &mut bpf_sock_addr, address: u32) {
        sa.user_ip4 = address;
    }
    #[inline(always)]
    fn storage(ctx: &SockAddrContext) -> *mut SockState4 {
        // SAFETY: sock_addr context; the helper only reads the socket it is given.
        unsafe { SOCK_STATE4.get_ptr_mut(ctx) }
    }
    #[inline(always)]
    fn storage_or_insert(ctx: &SockAddrContext, init: &mut SockState4) -> *mut SockState4 {
        // SAFETY: as above; the helper copies `init` into the new storage.
        unsafe { SOCK_STATE4.get_or_insert_ptr_mut(ctx, Some(init)) }
    }
    #[inline(always)]
    fn state(t: &Translation<u32>) -> SockState4 {
        SockState4 {
            svc_address: t.svc_address,
            svc_port: t.svc_port,
            backend_slot: t.backend_slot,
            backend_id: t.backend_id,
            backend_address: t.backend_address,
            backend_port: t.backend_port,
            flags: t.flags,
        }
    }
    #[inline(always)]
    fn translation(s: &SockState4) -> Translation<u32> {
        Translation {
            svc_address: s.svc_address,
            svc_port: s.svc_port,
            backend_slot: s.backend_slot,
            backend_id: s.backend_id,
            backend_address: s.backend_address,
            backend_port: s.backend_port,
            flags: s.flags,
        }
    }
    #[inline(always)]
    fn clear(state: *mut SockState4) {
        // SAFETY: callers pass a non-null pointer to this socket's storage.
        unsafe { (*state).svc_address = 0 };
    }
    #[inline(always)]
    fn set_flags(state: *mut SockState4, flags: u16) {
        // SAFETY: as above.
        unsafe { (*state).flags |= flags };
    }
    #[inline(always)]
    fn remember_reverse(cookie: u64, backend: (u32, u16), svc: (u32, u16)) -> bool {
        let key = RevNat4Key {
            cookie,
            address: backend.0,
            port: backend.1,
            pad: 0,
        };
        let value = RevNat4Value {
            address: svc.0,
            port: svc.1,
            pad: 0,
        };
        REVNAT4.insert(&key, &value, BPF_ANY as u64).is_ok()
    }
    #[inline(always)]
    fn reverse(cookie: u64, backend: (u32, u16)) -> Option<(u32, u16)> {
        let key = RevNat4Key {
            cookie,
            address: backend.0,
            port: backend.1,
            pad: 0,
        };
        get_copy(&REVNAT4, &key).map(|v| (v.address, v.port))
    }
    #[inline(always)]
    fn kept_choice(cookie: u64, svc: (u32, u16)) -> Option<SockBackend4Value> {
        get_copy(&SOCK_BACKEND4, &sock_backend4_key(cookie, svc))
    }
    #[inline(always)]
    fn keep_choice(cookie: u64, svc: (u32, u16), choice: &SockBackend4Value) {
        let _ = SOCK_BACKEND4.insert(&sock_backend4_key(cookie, svc), choice, BPF_ANY as u64);
    }
    #[inline(always)]
    fn forget_other(_: &SockAddrContext) {
        // A translation by connect4 wins over connect6's for a mapped peer
        // ([`Sock6::peer_service`]); nothing to do before the lookup.
    }
    #[inline(always)]
    fn forget_other_unserved(ctx: &SockAddrContext) {
        // Only an AF_INET6 socket reaches an IPv4 hook with storage of the other kind.
        // SAFETY: the kernel hands every sock_addr program a valid context.
        if unsafe { (*ctx.sock_addr).family } == AF_INET6 {
            forget::<Sock6>(Sock6::storage(ctx));
        }
    }
    #[inline(always)]
    fn peer_service(ctx: &SockAddrContext, address: u32, port: u16) -> Option<(u32, u16)> {
        // The IPv6 hooks never translate for an AF_INET socket.
        crate::sock::reverse_of::<Sock4>(ctx, address, port)
    }
}

#[inline(always)]
fn sock_backend4_key(cookie: u64, (address, port): (u32, u16)) -> SockBackend4Key {
    SockBackend4Key {
        cookie,
        address,
        port,
        pad: 0,
    }
}

#[inline(always)]
fn sock_backend6_key(cookie: u64, (address, port): (Addr6, u16)) -> SockBackend6Key {
    SockBackend6Key {
        cookie,
        address,
        port,
        pad: [0; 6],
    }
}

/// Marks a storage unused, if the socket has one.
#[inline(always)]
fn forget<S: SockFamily>(state: *mut S::State) {
    if !state.is_null() {
        S::clear(state);
    }
}

impl SockFamily for Sock6 {
    type Addr = Addr6;
    type State = SockState6;
    const ZERO: Addr6 = [0; 4];

    #[inline(always)]
    fn user_addr(sa: &bpf_sock_addr) -> Addr6 {
        // One 32-bit load per word at its own context offset: the verifier refuses
        // context accesses through a pointer moved off the context's start, which is
        // what an array copy compiles to.
        // SAFETY: reads of the context's fields through references to them.
        unsafe {
            [
                core::ptr::read_volatile(&sa.user_ip6[0]),
                core::ptr::read_volatile(&sa.user_ip6[1]),
                core::ptr::read_volatile(&sa.user_ip6[2]),
                core::ptr::read_volatile(&sa.user_ip6[3]),
            ]
        }
    }
    #[inline(always)]
    fn set_user_addr(sa: &mut bpf_sock_addr, address: Addr6) {
        // One 32-bit store per word, as above.
        // SAFETY: writes of the context's fields through references to them.
        unsafe {
            core::ptr::write_volatile(&mut sa.user_ip6[0], address[0]);
            core::ptr::write_volatile(&mut sa.user_ip6[1], address[1]);
            core::ptr::write_volatile(&mut sa.user_ip6[2], address[2]);
            core::ptr::write_volatile(&mut sa.user_ip6[3], address[3]);
        }
    }
    #[inline(always)]
    fn storage(ctx: &SockAddrContext) -> *mut SockState6 {
        // SAFETY: sock_addr context; the helper only reads the socket it is given.
        unsafe { SOCK_STATE6.get_ptr_mut(ctx) }
    }
    #[inline(always)]
    fn storage_or_insert(ctx: &SockAddrContext, init: &mut SockState6) -> *mut SockState6 {
        // SAFETY: as above; the helper copies `init` into the new storage.
        unsafe { SOCK_STATE6.get_or_insert_ptr_mut(ctx, Some(init)) }
    }
    #[inline(always)]
    fn state(t: &Translation<Addr6>) -> SockState6 {
        SockState6 {
            svc_address: t.svc_address,
            backend_address: t.backend_address,
            backend_id: t.backend_id,
            svc_port: t.svc_port,
            backend_slot: t.backend_slot,
            backend_port: t.backend_port,
            flags: t.flags,
        }
    }
    #[inline(always)]
    fn translation(s: &SockState6) -> Translation<Addr6> {
        Translation {
            svc_address: s.svc_address,
            svc_port: s.svc_port,
            backend_slot: s.backend_slot,
            backend_id: s.backend_id,
            backend_address: s.backend_address,
            backend_port: s.backend_port,
            flags: s.flags,
        }
    }
    #[inline(always)]
    fn clear(state: *mut SockState6) {
        // SAFETY: callers pass a non-null pointer to this socket's storage.
        unsafe { (*state).svc_address = [0; 4] };
    }
    #[inline(always)]
    fn set_flags(state: *mut SockState6, flags: u16) {
        // SAFETY: as above.
        unsafe { (*state).flags |= flags };
    }
    #[inline(always)]
    fn remember_reverse(cookie: u64, backend: (Addr6, u16), svc: (Addr6, u16)) -> bool {
        let key = RevNat6Key {
            cookie,
            address: backend.0,
            port: backend.1,
            pad: [0; 6],
        };
        let value = RevNat6Value {
            address: svc.0,
            port: svc.1,
            pad: 0,
        };
        REVNAT6.insert(&key, &value, BPF_ANY as u64).is_ok()
    }
    #[inline(always)]
    fn reverse(cookie: u64, backend: (Addr6, u16)) -> Option<(Addr6, u16)> {
        let key = RevNat6Key {
            cookie,
            address: backend.0,
            port: backend.1,
            pad: [0; 6],
        };
        get_copy(&REVNAT6, &key).map(|v| (v.address, v.port))
    }
    #[inline(always)]
    fn kept_choice(cookie: u64, svc: (Addr6, u16)) -> Option<SockBackend4Value> {
        get_copy(&SOCK_BACKEND6, &sock_backend6_key(cookie, svc))
    }
    #[inline(always)]
    fn keep_choice(cookie: u64, svc: (Addr6, u16), choice: &SockBackend4Value) {
        let _ = SOCK_BACKEND6.insert(&sock_backend6_key(cookie, svc), choice, BPF_ANY as u64);
    }
    #[inline(always)]
    fn forget_other(ctx: &SockAddrContext) {
        forget::<Sock4>(Sock4::storage(ctx));
    }
    #[inline(always)]
    fn forget_other_unserved(_: &SockAddrContext) {
        // Done before the lookup.
    }
    #[inline(always)]
    fn peer_service(ctx: &SockAddrContext, address: Addr6, port: u16) -> Option<(Addr6, u16)> {
        // For a mapped peer, an IPv4 hook's translation first: sendmsg4 (a datagram to
        // a mapped address, or a sockaddr_in), connect4 (UDP connect() with a
        // sockaddr_in after a connect6 whose record it does not clear).
        if is_v4_mapped(&address) {
            if let Some((svc, svc_port)) =
                crate::sock::reverse_of::<Sock4>(ctx, mapped_v4(&address), port)
            {
                return Some((v4_mapped(svc), svc_port));
            }
        }
        crate::sock::reverse_of::<Sock6>(ctx, address, port)
    }
}

impl Serves<V4> for Sock4 {
    const FLAGS: u16 = 0;
    const NODEPORT: u32 = 0;
    #[inline(always)]
    fn lb_addr(address: u32) -> u32 {
        address
    }
    #[inline(always)]
    fn backend(b: &Backend4) -> (u32, u16) {
        (b.address, b.port)
    }
}

impl Serves<V6> for Sock6 {
    const FLAGS: u16 = 0;
    const NODEPORT: Addr6 = [0; 4];
    #[inline(always)]
    fn lb_addr(address: Addr6) -> Addr6 {
        address
    }
    #[inline(always)]
    fn backend(b: &Backend6) -> (Addr6, u16) {
        (b.address, b.port)
    }
}

/// IPv4-mapped destinations of AF_INET6 sockets: the IPv4 maps, addresses mapped.
impl Serves<V4> for Sock6 {
    const FLAGS: u16 = SOCK_STATE_FLAG_MAPPED;
    const NODEPORT: Addr6 = v4_mapped(0);
    #[inline(always)]
    fn lb_addr(address: Addr6) -> u32 {
        mapped_v4(&address)
    }
    #[inline(always)]
    fn backend(b: &Backend4) -> (Addr6, u16) {
        (v4_mapped(b.address), b.port)
    }
}

/// Counts a reverse translation that could not be stored: getpeername()/recvfrom()
/// then show the backend, which is still a working socket.
#[inline(always)]
pub fn remember_reverse<S: SockFamily>(cookie: u64, backend: (S::Addr, u16), svc: (S::Addr, u16)) {
    if !S::remember_reverse(cookie, backend, svc) {
        count(Counter::RevNatUpdateFailed);
    }
}
