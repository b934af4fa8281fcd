//! The IPv6 maps' layouts: the IPv4 ones with 128-bit addresses.
//!
//! Addresses are `[u32; 4]` holding the 16 address bytes in network order, exactly as
//! `bpf_sock_addr.user_ip6` and a packet's header have them. Values that carry no
//! address are shared with IPv4 ([`crate::Svc4Value`], [`crate::SockBackend4Value`],
//! [`crate::Affinity4Value`], [`crate::AffinityMatch4Value`], [`crate::NodeAddr4`],
//! [`crate::Frag4Value`]): one meaning, one type.
//!
//! IPv4-mapped addresses (`::ffff:a.b.c.d`) never appear as IPv6 frontends or
//! backends: an AF_INET6 socket that connects to one is served from the IPv4 maps
//! (see [`SOCK_STATE_FLAG_MAPPED`]).
//!
//! The same rules as every map type: `#[repr(C)]`, explicit padding, a size assertion
//! and a comment per field.

use crate::scope;

/// An IPv6 address as the maps hold it: the 16 bytes in network order.
pub type Addr6 = [u32; 4];

/// Whether `a` is an IPv4-mapped address (`::ffff:a.b.c.d`).
pub const fn is_v4_mapped(a: &Addr6) -> bool {
    // The bytes in memory are 00..00 ff ff a b c d: word 2 is 0x0000ffff in network
    // order, whatever the host's byte order.
    a[0] == 0 && a[1] == 0 && a[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// The IPv4 address (network order, as [`crate::Svc4Key::address`]) in a mapped one.
pub const fn mapped_v4(a: &Addr6) -> u32 {
    a[3]
}

/// `::ffff:` + an IPv4 address in network order.
pub const fn v4_mapped(v4: u32) -> Addr6 {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4]
}

/// Key of the IPv6 service table; the same two-level layout as [`crate::Svc4Key`]
/// (slot 0: the frontend, slots 1..=count: backend ids in [`Backend6`]'s map, and one
/// wildcard entry per service address). Its value is [`crate::Svc4Value`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Svc6Key {
    /// Frontend IPv6 address; all zero for a NodePort.
    pub address: Addr6,
    /// Frontend L4 port, network byte order; 0 in the address's wildcard entry.
    pub dport: u16,
    /// 0 = the service entry; 1..=count = a backend slot.
    pub backend_slot: u16,
    /// IP protocol; 0 in the wildcard entry.
    pub proto: u8,
    /// [`scope::INTERNAL`] or [`scope::EXTERNAL`].
    pub scope: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Svc6Key>() == 24);

impl Svc6Key {
    /// `dport` in network byte order.
    pub const fn new(address: Addr6, dport: u16, proto: u8, backend_slot: u16) -> Self {
        Self {
            address,
            dport,
            backend_slot,
            proto,
            scope: scope::INTERNAL,
            pad: [0; 2],
        }
    }

    /// The same frontend in another scope.
    pub const fn with_scope(self, scope: u8) -> Self {
        Self { scope, ..self }
    }

    /// The wildcard entry of a service address.
    pub const fn wildcard(address: Addr6) -> Self {
        Self::new(address, 0, 0, 0)
    }

    /// The same frontend at another slot.
    pub const fn with_slot(self, backend_slot: u16) -> Self {
        Self {
            backend_slot,
            ..self
        }
    }
}

/// An IPv6 backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend6 {
    /// Backend IPv6 address.
    pub address: Addr6,
    /// Backend L4 port, network byte order.
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// `BACKEND_FLAG_*` bits.
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<Backend6>() == 20);

/// Key of the IPv6 reverse translation map (see [`crate::RevNat4Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat6Key {
    /// Socket cookie of the client socket.
    pub cookie: u64,
    /// Backend address the socket was translated to.
    pub address: Addr6,
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<RevNat6Key>() == 32);

/// Value of the IPv6 reverse translation map: the service address the socket asked
/// for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat6Value {
    /// Service address.
    pub address: Addr6,
    /// Service port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<RevNat6Value>() == 20);

/// Key of the per-socket backend choice of IPv6 UDP sockets (see
/// [`crate::SockBackend4Key`]); the value is [`crate::SockBackend4Value`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockBackend6Key {
    /// Socket cookie of the UDP socket.
    pub cookie: u64,
    /// Service address.
    pub address: Addr6,
    /// Service port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SockBackend6Key>() == 32);

/// Per-socket state of AF_INET6 sockets (see [`crate::SockState4`]). A socket that
/// talks to an IPv4-mapped service address keeps it here too, mapped, with
/// [`SOCK_STATE_FLAG_MAPPED`]: its backend id then names an IPv4 backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState6 {
    /// Service address the application used; all zero while the storage is unused.
    pub svc_address: Addr6,
    /// Backend address the socket was translated to.
    pub backend_address: Addr6,
    /// Chosen backend id; still valid only while slot `backend_slot` holds it.
    pub backend_id: u32,
    /// Service port the application used, network byte order.
    pub svc_port: u16,
    /// The service slot the backend was chosen from (UDP stickiness).
    pub backend_slot: u16,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// `SOCK_STATE_FLAG_*` bits.
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<SockState6>() == 44);

/// [`SockState6::flags`]: the translation is of an IPv4-mapped address, served from the
/// IPv4 maps (`backend_id` is an IPv4 backend's).
pub const SOCK_STATE_FLAG_MAPPED: u16 = 2;

/// IPv6 conntrack key: a packet's tuple as it arrives, before translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ct6Key {
    /// Source address.
    pub saddr: Addr6,
    /// Destination address.
    pub daddr: Addr6,
    /// Source port, network byte order (the ICMPv6 echo id for echo).
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol (the upper-layer header after the extension headers).
    pub proto: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Ct6Key>() == 40);

/// IPv6 conntrack value (see [`crate::Ct4Value`]; flags and directions are the same).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ct6Value {
    /// New source address.
    pub to_saddr: Addr6,
    /// New destination address.
    pub to_daddr: Addr6,
    /// New source port, network byte order.
    pub to_sport: u16,
    /// New destination port, network byte order.
    pub to_dport: u16,
    /// `CT_FLAG_*` bits.
    pub flags: u8,
    /// [`crate::CT_DIR_ORIGINAL`] or [`crate::CT_DIR_REPLY`].
    pub direction: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
    /// When the entry expires (bpf_ktime_get_ns clock); refreshed by traffic.
    pub expires_ns: u64,
    /// Backend id of the flow (for inspection).
    pub backend_id: u32,
    /// Explicit padding, always zero.
    pub pad2: u32,
}
const _: () = assert!(core::mem::size_of::<Ct6Value>() == 56);

/// Value of the IPv6 device map (keyed by ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device6 {
    /// Address used as the source of SNATed flows leaving through this device (a
    /// global address of it; all zero: the device has none and SNAT fails).
    pub snat_addr: Addr6,
}
const _: () = assert!(core::mem::size_of::<Device6>() == 16);

/// Key of the IPv6 fragment map: one datagram (the Fragment header's identification).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frag6Key {
    /// Source address.
    pub saddr: Addr6,
    /// Destination address.
    pub daddr: Addr6,
    /// Fragment header identification, network byte order.
    pub id: u32,
    /// Upper-layer protocol.
    pub proto: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Frag6Key>() == 40);

/// Data of the IPv6 loadBalancerSourceRanges LPM key: the frontend (always matched in
/// full: [`SRC_RANGE6_FRONTEND_BITS`]) and then the source prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrcRange6Key {
    /// Frontend address.
    pub address: Addr6,
    /// Frontend port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding, always zero.
    pub pad: u8,
    /// Source address (prefix).
    pub source: Addr6,
}
const _: () = assert!(core::mem::size_of::<SrcRange6Key>() == 36);

/// Bits of a [`SrcRange6Key`] that are always matched (address, port, proto, pad).
pub const SRC_RANGE6_FRONTEND_BITS: u32 = 160;

/// Key of the IPv6 session-affinity map (see [`crate::Affinity4Key`]); the value is
/// [`crate::Affinity4Value`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity6Key {
    /// Internal scope: the netns cookie in words 0 and 1 (as a u64 in memory), the
    /// rest zero; external scope: the source address.
    pub client: Addr6,
    /// Frontend address as the service table keys it (zero for a NodePort).
    pub address: Addr6,
    /// Frontend port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`scope::INTERNAL`] or [`scope::EXTERNAL`]: also says what `client` is.
    pub scope: u8,
}
const _: () = assert!(core::mem::size_of::<Affinity6Key>() == 36);

/// Key of the IPv6 affinity match map (see [`crate::AffinityMatch4Key`]); the value is
/// [`crate::AffinityMatch4Value`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityMatch6Key {
    /// Frontend address as the service table keys it.
    pub address: Addr6,
    /// Frontend port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`scope::INTERNAL`] or [`scope::EXTERNAL`].
    pub scope: u8,
    /// The backend id.
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityMatch6Key>() == 24);

/// Key of the IPv6 kill map of stale-socket termination (see
/// [`crate::SockKill4Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKill6Key {
    /// Frontend address as [`Svc6Key::address`] has it (zero for a NodePort).
    pub svc_address: Addr6,
    /// Backend address.
    pub backend_address: Addr6,
    /// Frontend port, network byte order.
    pub svc_port: u16,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// IP protocol of frontend and backend.
    pub proto: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SockKill6Key>() == 40);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_recognised_in_network_order() {
        // ::ffff:10.96.0.10 as the kernel hands it over: the 16 bytes in order.
        let bytes: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10];
        let a: Addr6 = [
            u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            u32::from_ne_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
        ];
        assert!(is_v4_mapped(&a));
        assert_eq!(mapped_v4(&a).to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(v4_mapped(mapped_v4(&a)), a);
        let not: Addr6 = [u32::from_ne_bytes([0xfd, 0, 0, 0]), 0, 0, 1];
        assert!(!is_v4_mapped(&not));
    }
}
