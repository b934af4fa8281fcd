//! Stale sockets: the socket iterators (iter/udp, iter/tcp) that destroy connected
//! sockets socklb translated to a backend that has since left their frontend, so the
//! application gets an error (ECONNABORTED) and reconnects instead of talking to a
//! backend that is gone.
//!
//! The agent runs them only when something departed: it fills [`SOCK_KILL4`] with the
//! (frontend, backend) pairs, runs the iterators once per network namespace (an
//! iterator sees only the sockets of the namespace it was created in), and empties
//! the map again. A socket is destroyed only if all of these hold:
//! - it has socklb's storage naming a translation (`svc_address != 0`): sockets that
//!   connected to a backend address directly have none, and are never touched;
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
use lb_common::{IPPROTO_TCP, IPPROTO_UDP, SockDestroy4, SockKill4Key, SockState4, capacity};

use crate::maps::{SOCK_STATE4, is_node_addr};

/// (frontend, backend) pairs whose connected sockets are destroyed; filled by the
/// agent for one pass only. Read by the iterators alone, hence here and not in
/// maps.rs.
#[aya_ebpf::macros::btf_map(name = "lb4_sk_kill_v1")]
pub static SOCK_KILL4: HashMap<SockKill4Key, u8, { capacity::SOCK_KILL4 as usize }> =
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
/// these offsets (0, 4, 8, 12, 14, 16, 18) have not moved since Linux 2.6 and the
/// verifier checks every load through the BTF-typed pointer against the real type.
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
}

const AF_INET: u16 = 2;

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
    let (family, daddr, dport) = unsafe { ((*skc).skc_family, (*skc).skc_daddr, (*skc).skc_dport) };
    if family != AF_INET || daddr == 0 {
        return; // not connected: never destroyed
    }
    // SAFETY: lookup only (no create flag) in socket storage of a full socket.
    let st = unsafe { bpf_sk_storage_get(map_ptr(&SOCK_STATE4), full_sk, core::ptr::null_mut(), 0) }
        as *const SockState4;
    if st.is_null() {
        return; // never translated by socklb (a direct connect)
    }
    // SAFETY: non-null pointer to this socket's storage; copied out at once (the
    // socket's own hooks may rewrite it meanwhile).
    let state = unsafe { *st };
    if state.svc_address == 0
        || state.backend_address != daddr
        || state.backend_port != dport
        || !departed(&state, proto)
    {
        return;
    }
    // SAFETY: the iterator's trusted socket pointer; the iterator holds its lock.
    let result = unsafe { bpf_sock_destroy(sk) };
    let record = SockDestroy4 {
        // SAFETY: the helper takes any socket pointer of the iterator.
        cookie: unsafe { bpf_get_socket_cookie(sk) },
        svc_address: state.svc_address,
        backend_address: state.backend_address,
        svc_port: state.svc_port,
        backend_port: state.backend_port,
        result,
        proto,
        pad: [0; 7],
    };
    // A full output buffer loses a record (a count), never a destroy.
    // SAFETY: the record lives on the stack for the call; seq is the iterator's file.
    unsafe {
        bpf_seq_write(
            seq.cast(),
            core::ptr::from_ref(&record).cast(),
            core::mem::size_of::<SockDestroy4>() as u32,
        )
    };
}

/// Whether the socket's (frontend, backend) pair is in the kill map. A NodePort's
/// frontend is keyed by address 0 while the storage holds the node address the
/// application used: for a node address, (0, port) is tried as well.
#[inline(always)]
fn departed(state: &SockState4, proto: u8) -> bool {
    let mut key = SockKill4Key {
        svc_address: state.svc_address,
        svc_port: state.svc_port,
        backend_port: state.backend_port,
        backend_address: state.backend_address,
        proto,
        pad: [0; 3],
    };
    if SOCK_KILL4.get_ptr(&key).is_some() {
        return true;
    }
    if !is_node_addr(state.svc_address) {
        return false;
    }
    key.svc_address = 0;
    SOCK_KILL4.get_ptr(&key).is_some()
}
