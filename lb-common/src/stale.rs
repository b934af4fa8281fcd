//! Layouts of stale-socket termination: the (frontend, backend) pairs whose connected
//! sockets the socket iterators destroy ([`SockKill4Key`], map
//! [`crate::map_names::SOCK_KILL4`], and [`crate::SockKill6Key`] in
//! [`crate::map_names::SOCK_KILL6`]), and what the iterators report per socket they
//! destroyed ([`SockDestroy`], written to the iterator's output, not a map).
//!
//! The same rules as every map type: `#[repr(C)]`, explicit padding, a size assertion
//! and a comment per field.

/// Key of the kill map: a backend that left one frontend, as a socket's storage
/// ([`crate::SockState4`]) names them. All fields in network byte order.
///
/// A backend leaves a frontend, not the cluster: the same backend may stay behind
/// another frontend, whose sockets keep working. Hence the frontend in the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKill4Key {
    /// Frontend address as [`crate::Svc4Key::address`] has it: the service address,
    /// or 0 for a NodePort (which the storage records as the node address the
    /// application used; the iterator also tries 0 for a node address).
    pub svc_address: u32,
    /// Frontend port, network byte order.
    pub svc_port: u16,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// Backend IPv4 address, network byte order.
    pub backend_address: u32,
    /// IP protocol ([`crate::IPPROTO_UDP`] or [`crate::IPPROTO_TCP`]) of frontend and
    /// backend.
    pub proto: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SockKill4Key>() == 16);

/// Value of the kill map: reserved, always [`SOCK_KILL_PRESENT`].
pub const SOCK_KILL_PRESENT: u8 = 1;

// The IPv6 kill map ([`crate::map_names::SOCK_KILL6`]) is keyed by
// [`crate::SockKill6Key`], the same pair with IPv6 addresses. An AF_INET6 socket
// translated for an IPv4-mapped service is looked up in the IPv4 map: its frontend and
// backend are IPv4 ones.

/// One socket an iterator destroyed (or tried to), of either family: the iterator
/// writes one per socket with `bpf_seq_write`, the agent reads them back from the
/// iterator's file. Addresses are IPv6; an AF_INET socket's, and an AF_INET6 socket's
/// IPv4-mapped ones, are written `::ffff:a.b.c.d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockDestroy {
    /// Socket cookie (`SO_COOKIE`) of the destroyed socket.
    pub cookie: u64,
    /// Service address of its translation (the storage's `svc_address`).
    pub svc_address: crate::Addr6,
    /// Backend address it was connected to.
    pub backend_address: crate::Addr6,
    /// Service port, network byte order.
    pub svc_port: u16,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// What `bpf_sock_destroy` returned: 0, or a negative errno.
    pub result: i32,
    /// IP protocol of the socket.
    pub proto: u8,
    /// Address family of the socket: [`SOCK_DESTROY_INET`] or [`SOCK_DESTROY_INET6`].
    pub family: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SockDestroy>() == 56);

/// [`SockDestroy::family`] of an AF_INET socket (the kernel's AF_INET).
pub const SOCK_DESTROY_INET: u8 = 2;
/// [`SockDestroy::family`] of an AF_INET6 socket (the kernel's AF_INET6).
pub const SOCK_DESTROY_INET6: u8 = 10;

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(size_of::<SockKill4Key>(), 16);
        assert_eq!(offset_of!(SockKill4Key, svc_port), 4);
        assert_eq!(offset_of!(SockKill4Key, backend_port), 6);
        assert_eq!(offset_of!(SockKill4Key, backend_address), 8);
        assert_eq!(offset_of!(SockKill4Key, proto), 12);
        assert_eq!(size_of::<SockDestroy>(), 56);
        assert_eq!(align_of::<SockDestroy>(), 8);
        assert_eq!(offset_of!(SockDestroy, svc_address), 8);
        assert_eq!(offset_of!(SockDestroy, backend_address), 24);
        assert_eq!(offset_of!(SockDestroy, svc_port), 40);
        assert_eq!(offset_of!(SockDestroy, result), 44);
        assert_eq!(offset_of!(SockDestroy, proto), 48);
        assert_eq!(offset_of!(SockDestroy, family), 49);
    }
}
