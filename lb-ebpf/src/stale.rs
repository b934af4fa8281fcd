//! Stale sockets: the socket iterators (iter/udp, iter/tcp) that destroy connected
//! sockets socklb translated to a backend that has since left their frontend, so the
//! application gets an error (ECONNABORTED) and reconnects instead of talking to a
//! backend that is gone.
//!
//! The agent runs them only when something departed: it fills [`SOCK_KILL4`] and
//! [`SOCK_KILL6`] with the (frontend, backend) pairs, runs the iterators once per
//! network namespace (an iterator sees only the sockets of the namespace it was
//! created in), and empties the maps again. The iterators see the sockets of both
//! families: an AF_INET socket's translation is in `lb4_sk_st_v1`, an AF_INET6
//! socket's in `lb6_sk_st_v1` (an IPv4-mapped one flagged, its pair in the IPv4 kill
//! map), or, for a UDP socket connected through connect4 with a `sockaddr_in`, in
//! `lb4_sk_st_v1`, which is read first for a mapped peer (see `sock_family.rs`). A socket is destroyed only if all of these
//! hold:
//! - it has socklb's storage naming a translation (service address not zero): sockets
//!   that connected to a backend address directly have none, and are never touched;
//! - the storage's (frontend, backend) pair is in the kill map: a socket translated
//!   to another backend, or by another frontend that keeps this backend, stays;
//! - it is connected to exactly that backend (destination address and port): an
//!   unconnected UDP socket that sends to the service with sendto() has storage but
//!   no destination and stays (destroying it would change its source port under the
//!   application). The check also makes a second pass harmless: a destroyed UDP
//!   socket is disconnected.
//!
//! `bpf_sock_destroy` is a kfunc (Linux >= 6.5, allowed from these iterators only,
//! which hold the socket lock). bpf-linker emits an `extern "C"` function as a call to
//! an undefined symbol; the agent's loader rewrites that call into a kfunc call
//! against the kernel's BTF before aya sees the object (lb-userspace
//! `datapath/kfunc.rs`), or into `r0 = -EOPNOTSUPP` on kernels without it, where these
//! programs are then not loaded.
use core::ffi::c_void;

use aya_ebpf::{
    btf_maps::HashMap,
    helpers::generated::{
        bpf_get_socket_cookie, bpf_seq_write, bpf_sk_storage_get, bpf_skc_to_tcp_sock,
    },
};
use lb_common::{
    Addr6, IPPROTO_TCP, IPPROTO_UDP, SOCK_DESTROY_INET, SOCK_DESTROY_INET6, SOCK_STATE_FLAG_MAPPED,
    SockDestroy, SockKill4Key, SockKill6Key, capacity,
    v6::{is_v4_mapped, mapped_v4, v4_mapped},
};

use crate::{
    family::{Family, V4, V6},
    maps::SOCK_STATE4,
    maps6::SOCK_STATE6,
    sock_family::{Serves, Sock4, Sock6, SockFamily, Translation},
};

/// (frontend, backend) pairs whose connected sockets are destroyed; filled by the
/// agent for one pass only. Read by the iterators alone, hence here and not in
/// maps.rs.
#[aya_ebpf::macros::btf_map(name = "lb4_sk_kill_v1")]
pub static SOCK_KILL4: HashMap<SockKill4Key, u8, { capacity::SOCK_KILL4 as usize }> =
    HashMap::new();

/// The same for IPv6 frontends (an IPv4-mapped translation's pair is in
/// [`SOCK_KILL4`]).
#[aya_ebpf::macros::btf_map(name = "lb6_sk_kill_v1")]
pub static SOCK_KILL6: HashMap<SockKill6Key, u8, { capacity::SOCK_KILL4 as usize }> =
    HashMap::new();

/// vmlinux `struct bpf_iter_meta`.
#[repr(C)]
pub struct bpf_iter_meta {
    /// The iterator's seq_file (output of `bpf_seq_write`).
    pub seq: *mut c_void,
    /// Iteration session.
    pub session_id: u64,
    /// Objects shown so far in this session.
    pub seq_num: u64,
}

/// vmlinux `struct bpf_iter__udp`: the context of an iter/udp program.
#[repr(C)]
pub struct bpf_iter__udp {
    /// Iteration metadata.
    pub meta: *mut bpf_iter_meta,
    /// `struct udp_sock *` (it starts with `struct sock`); NULL once at the end.
    pub udp_sk: *mut c_void,
    /// Owner uid of the socket.
    pub uid: u32,
    /// Hash bucket of the socket.
    pub bucket: i32,
}

/// vmlinux `struct bpf_iter__tcp`: the context of an iter/tcp program.
#[repr(C)]
pub struct bpf_iter__tcp {
    /// Iteration metadata.
    pub meta: *mut bpf_iter_meta,
    /// `struct sock_common *`: a full, request or timewait socket; NULL at the end.
    pub sk_common: *mut c_void,
    /// Owner uid of the socket.
    pub uid: u32,
}

/// The head of vmlinux `struct sock_common`, the fields read here. Rust has no CO-RE:
/// these offsets (0, 4, 8, 12, 14, 16, 18) have not moved since Linux 2.6, the IPv6
/// addresses (56, 72) follow `skc_prot` and `skc_net` since Linux 3.13 (checked
/// against the running kernel's BTF by lb-userspace's `sock_common_layout` test), and
/// the verifier checks every load through the BTF-typed pointer against the real type.
#[repr(C)]
struct SockCommon {
    /// Destination (peer) address, network byte order; 0 unless connected.
    skc_daddr: u32,
    /// Bound local address, network byte order.
    skc_rcv_saddr: u32,
    /// Hash of the socket in its table.
    skc_hash: u32,
    /// Destination port, network byte order.
    skc_dport: u16,
    /// Local port, host byte order.
    skc_num: u16,
    /// Address family.
    skc_family: u16,
    /// Socket state (TCP states; UDP: 1 = connected).
    skc_state: u8,
    /// Bit fields (reuse, reuseport, ipv6only, net_refcnt), then the bound device,
    /// the bind hash node, `skc_prot` and `skc_net`: not read.
    _skipped: [u8; 37],
    /// IPv6 destination (peer) address of an AF_INET6 socket; all zero unless
    /// connected (`::ffff:a.b.c.d` when connected to an IPv4 peer).
    skc_v6_daddr: Addr6,
    /// Bound local IPv6 address.
    skc_v6_rcv_saddr: Addr6,
}
const _: () = assert!(core::mem::offset_of!(SockCommon, skc_v6_daddr) == 56);
const _: () = assert!(core::mem::offset_of!(SockCommon, skc_v6_rcv_saddr) == 72);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

unsafe extern "C" {
    /// kfunc (Linux >= 6.5): aborts the socket; the application's next (or blocked)
    /// call fails with ECONNABORTED, a TCP peer gets a reset. 0 on success.
    fn bpf_sock_destroy(sk: *mut c_void) -> i32;
}

/// The address of a map definition, as the helpers take it (the loader relocates it).
#[inline(always)]
fn map_ptr<T>(map: &T) -> *mut c_void {
    core::ptr::from_ref(map).cast_mut().cast()
}

/// iter/udp entry.
#[inline(always)]
pub fn udp(ctx: *mut bpf_iter__udp) -> i32 {
    // SAFETY: the kernel hands every iter/udp program a valid context.
    let (meta, sk) = unsafe { ((*ctx).meta, (*ctx).udp_sk) };
    // NULL marks the end of the iteration; the verifier insists on the check.
    if sk.is_null() {
        return 0;
    }
    // A udp_sock starts with its struct sock: the storage helper takes it as is.
    // SAFETY: meta is valid for the program's run.
    visit(unsafe { (*meta).seq }, sk, sk, IPPROTO_UDP);
    0
}

/// iter/tcp entry.
#[inline(always)]
pub fn tcp(ctx: *mut bpf_iter__tcp) -> i32 {
    // SAFETY: the kernel hands every iter/tcp program a valid context.
    let (meta, sk) = unsafe { ((*ctx).meta, (*ctx).sk_common) };
    if sk.is_null() {
        return 0;
    }
    // Request and timewait sockets have no storage (and nothing to abort): NULL.
    // SAFETY: the helper checks the socket's type itself.
    let full = unsafe { bpf_skc_to_tcp_sock(sk) };
    if full.is_null() {
        return 0;
    }
    // SAFETY: as in `udp`.
    visit(unsafe { (*meta).seq }, sk, full.cast(), IPPROTO_TCP);
    0
}

/// Destroys `sk` if it is stale (see the module documentation) and reports it.
/// `sk` is the iterator's own pointer, passed to the kfunc unmodified (it takes
/// trusted pointers only); `full_sk` is the same socket as a full `struct sock`, for
/// the storage. Inlined: a separate function would lose the pointers' trusted type.
#[inline(always)]
fn visit(seq: *mut c_void, sk: *mut c_void, full_sk: *mut c_void, proto: u8) {
    let skc = sk as *const SockCommon;
    // SAFETY: loads through the BTF-typed socket pointer, checked by the verifier.
    let (family, dport) = unsafe { ((*skc).skc_family, (*skc).skc_dport) };
    // The stale translation, addresses as IPv6 ones.
    let stale = match family {
        AF_INET => {
            // SAFETY: as above.
            let daddr = unsafe { (*skc).skc_daddr };
            if daddr == 0 {
                return; // not connected: never destroyed
            }
            stale_translation::<Sock4>(&SOCK_STATE4, full_sk, daddr, dport, proto)
                .map(mapped_record)
        }
        AF_INET6 => {
            // SAFETY: as above.
            let daddr = unsafe { (*skc).skc_v6_daddr };
            if daddr == [0; 4] {
                return; // not connected
            }
            // For a mapped peer, the IPv4 hooks' translation first (connect4 with a
            // sockaddr_in), as getpeername6 reads them (see sock_family.rs).
            let v4 = if is_v4_mapped(&daddr) {
                stale_translation::<Sock4>(&SOCK_STATE4, full_sk, mapped_v4(&daddr), dport, proto)
                    .map(mapped_record)
            } else {
                Found::Untranslated
            };
            match v4 {
                Found::Untranslated => {
                    stale_translation::<Sock6>(&SOCK_STATE6, full_sk, daddr, dport, proto)
                }
                found => found,
            }
        }
        _ => return,
    };
    let Found::Stale(t) = stale else {
        return;
    };
    // SAFETY: the iterator's trusted socket pointer; the iterator holds its lock.
    let result = unsafe { bpf_sock_destroy(sk) };
    let record = SockDestroy {
        // SAFETY: the helper takes any socket pointer of the iterator.
        cookie: unsafe { bpf_get_socket_cookie(sk) },
        svc_address: t.svc_address,
        backend_address: t.backend_address,
        svc_port: t.svc_port,
        backend_port: t.backend_port,
        result,
        proto,
        family: if family == AF_INET {
            SOCK_DESTROY_INET
        } else {
            SOCK_DESTROY_INET6
        },
        pad: [0; 6],
    };
    // A full output buffer loses a record (a count), never a destroy.
    // SAFETY: the record lives on the stack for the call; seq is the iterator's file.
    unsafe {
        bpf_seq_write(
            seq.cast(),
            core::ptr::from_ref(&record).cast(),
            core::mem::size_of::<SockDestroy>() as u32,
        )
    };
}

/// What a socket's storage says about its connection.
enum Found<A> {
    /// No translation for the peer it is connected to.
    Untranslated,
    /// Translated, and its (frontend, backend) pair is still served.
    Current,
    /// Translated, and the pair departed.
    Stale(Translation<A>),
}

impl<A> Found<A> {
    #[inline(always)]
    fn map<B>(self, f: impl FnOnce(Translation<A>) -> Translation<B>) -> Found<B> {
        match self {
            Found::Untranslated => Found::Untranslated,
            Found::Current => Found::Current,
            Found::Stale(t) => Found::Stale(f(t)),
        }
    }
}

/// An AF_INET translation as the record writes it.
#[inline(always)]
fn mapped_record(t: Translation<u32>) -> Translation<Addr6> {
    Translation {
        svc_address: v4_mapped(t.svc_address),
        svc_port: t.svc_port,
        backend_slot: t.backend_slot,
        backend_id: t.backend_id,
        backend_address: v4_mapped(t.backend_address),
        backend_port: t.backend_port,
        flags: t.flags,
    }
}

/// The translation in `storage` (a map of `S`'s storage) of the full socket
/// `full_sk`, connected to `daddr:dport`.
#[inline(always)]
fn stale_translation<S: Stale>(
    storage: &S::Map,
    full_sk: *mut c_void,
    daddr: S::Addr,
    dport: u16,
    proto: u8,
) -> Found<S::Addr> {
    // SAFETY: lookup only (no create flag) in socket storage of a full socket.
    let st = unsafe { bpf_sk_storage_get(map_ptr(storage), full_sk, core::ptr::null_mut(), 0) }
        as *const S::State;
    if st.is_null() {
        return Found::Untranslated; // never translated by socklb (a direct connect)
    }
    // SAFETY: non-null pointer to this socket's storage; copied out at once (the
    // socket's own hooks may rewrite it meanwhile).
    let t = S::translation(unsafe { &*st });
    if t.svc_address == S::ZERO || t.backend_address != daddr || t.backend_port != dport {
        return Found::Untranslated;
    }
    if S::departed(&t, proto) {
        Found::Stale(t)
    } else {
        Found::Current
    }
}

/// A socket family as the iterators see it: its storage map and which kill map
/// names its translations.
trait Stale: SockFamily {
    /// The socket storage map.
    type Map;
    /// Whether the translation's (frontend, backend) pair is in a kill map.
    fn departed(t: &Translation<Self::Addr>, proto: u8) -> bool;
}

impl Stale for Sock4 {
    type Map = aya_ebpf::btf_maps::SkStorage<lb_common::SockState4>;
    #[inline(always)]
    fn departed(t: &Translation<u32>, proto: u8) -> bool {
        departed::<Sock4, V4>(t, proto)
    }
}

impl Stale for Sock6 {
    type Map = aya_ebpf::btf_maps::SkStorage<lb_common::SockState6>;
    #[inline(always)]
    fn departed(t: &Translation<Addr6>, proto: u8) -> bool {
        if t.flags & SOCK_STATE_FLAG_MAPPED != 0 {
            departed::<Sock6, V4>(t, proto)
        } else {
            departed::<Sock6, V6>(t, proto)
        }
    }
}

/// Whether the pair of `t`, a translation served by family `F`, is in `F`'s kill
/// map. A NodePort's frontend is keyed by the all-zero address while the storage holds
/// the node address the application used: for a node address, the NodePort's key is
/// tried as well.
#[inline(always)]
fn departed<S: Serves<F>, F: Killed>(t: &Translation<S::Addr>, proto: u8) -> bool {
    let svc = S::lb_addr(t.svc_address);
    let backend = S::lb_addr(t.backend_address);
    if F::in_kill_map(svc, t.svc_port, backend, t.backend_port, proto, false) {
        return true;
    }
    F::is_node_addr(&svc) && F::in_kill_map(svc, t.svc_port, backend, t.backend_port, proto, true)
}

/// An address family's kill map.
trait Killed: Family {
    /// Whether (frontend `svc:svc_port`, or the NodePort `svc_port` when `nodeport`;
    /// backend) is in the map.
    fn in_kill_map(
        svc: Self::Addr,
        svc_port: u16,
        backend: Self::Addr,
        backend_port: u16,
        proto: u8,
        nodeport: bool,
    ) -> bool;
}

impl Killed for V4 {
    #[inline(always)]
    fn in_kill_map(
        svc: u32,
        svc_port: u16,
        backend: u32,
        backend_port: u16,
        proto: u8,
        nodeport: bool,
    ) -> bool {
        let key = SockKill4Key {
            svc_address: if nodeport { 0 } else { svc },
            svc_port,
            backend_port,
            backend_address: backend,
            proto,
            pad: [0; 3],
        };
        SOCK_KILL4.get_ptr(&key).is_some()
    }
}

impl Killed for V6 {
    #[inline(always)]
    fn in_kill_map(
        svc: Addr6,
        svc_port: u16,
        backend: Addr6,
        backend_port: u16,
        proto: u8,
        nodeport: bool,
    ) -> bool {
        let key = SockKill6Key {
            svc_address: if nodeport { [0; 4] } else { svc },
            backend_address: backend,
            svc_port,
            backend_port,
            proto,
            pad: [0; 3],
        };
        SOCK_KILL6.get_ptr(&key).is_some()
    }
}
