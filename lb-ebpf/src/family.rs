//! The address families of the load-balancing core: what differs between IPv4 and IPv6
//! is the maps and the key layouts, not the logic. `lb.rs` and `maglev.rs` are written
//! once over [`Family`]; [`V4`] and [`V6`] say where each family's maps are and how its
//! keys are built. Monomorphised, each family's code is what a hand-written copy would
//! be, so the verifier sees no cost.
use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    Addr6, Affinity4Key, Affinity4Value, Affinity6Key, AffinityMatch4Key, AffinityMatch4Value,
    AffinityMatch6Key, Backend4, Backend6, SRC_RANGE_FRONTEND_BITS, SRC_RANGE6_FRONTEND_BITS,
    SrcRange4Key, SrcRange6Key, Svc4Key, Svc4Value, Svc6Key,
    maglev::{MaglevEntries, flow_hash, flow_hash6},
};

use crate::{
    maps::{
        AFFINITY_MATCH4, AFFINITY4, BACKEND4, MAGLEV4, SRC_RANGE4, SVC4, SrcRangeKey, get_copy,
        is_node_addr,
    },
    maps6::{
        AFFINITY_MATCH6, AFFINITY6, BACKEND6, MAGLEV6, SRC_RANGE6, SVC6, SrcRange6LpmKey,
        is_node_addr6,
    },
};

/// One address family's maps and keys.
pub trait Family: Copy + 'static {
    /// An address as the maps hold it (network byte order).
    type Addr: Copy;
    /// Key of the service table.
    type SvcKey: Copy;
    /// Value of the backend map.
    type Backend: Copy;
    /// What session affinity keys a client by: a netns cookie or a source address.
    type Client: Copy;
    /// Key of the session-affinity map.
    type AffinityKey: Copy;

    /// Slot 0 of a frontend.
    fn svc_key(address: Self::Addr, port: u16, proto: u8, scope: u8) -> Self::SvcKey;
    /// Slot 0 of a NodePort frontend (the address all zero).
    fn nodeport_key(port: u16, proto: u8, scope: u8) -> Self::SvcKey;
    /// The wildcard entry of a service address.
    fn wildcard(address: Self::Addr) -> Self::SvcKey;
    /// The same frontend at another slot.
    fn with_slot(key: &Self::SvcKey, slot: u16) -> Self::SvcKey;
    /// One entry of the service table.
    fn lookup_service(key: &Self::SvcKey) -> Option<Svc4Value>;
    /// A backend by id.
    fn lookup_backend(id: u32) -> Option<Self::Backend>;
    /// Whether `address` is one of this node's (where NodePorts answer).
    fn is_node_addr(address: &Self::Addr) -> bool;
    /// Whether the frontend keyed `key` lists a source range holding `saddr`.
    fn source_allowed(key: &Self::SvcKey, saddr: &Self::Addr) -> bool;
    /// The affinity client of a socket's network namespace.
    fn client_of_netns(cookie: u64) -> Self::Client;
    /// The affinity client of a packet's source address.
    fn client_of_addr(saddr: &Self::Addr) -> Self::Client;
    /// The affinity entry of `client` for the frontend keyed `key`.
    fn affinity_key(client: Self::Client, key: &Self::SvcKey) -> Self::AffinityKey;
    /// The live affinity entry, for in-place renewal.
    fn affinity_entry(key: &Self::AffinityKey) -> Option<*mut Affinity4Value>;
    /// Records an affinity (losing it only costs stickiness).
    fn remember_affinity(key: &Self::AffinityKey, value: &Affinity4Value);
    /// The slot that holds `backend_id` in the frontend keyed `key`, while the agent
    /// says it still serves it.
    fn affinity_match(key: &Self::SvcKey, backend_id: u32) -> Option<AffinityMatch4Value>;
    /// One value of the family's Maglev map.
    fn maglev_entries(index: u32) -> Option<MaglevEntries>;
    /// The Maglev flow hash of a packet from `saddr`:`sport` to the frontend `key`.
    fn flow_hash(seed: u32, saddr: &Self::Addr, sport: u16, key: &Self::SvcKey) -> u32;
}

/// IPv4: the `lb4_*` maps.
#[derive(Clone, Copy)]
pub struct V4;

/// IPv6: the `lb6_*` maps.
#[derive(Clone, Copy)]
pub struct V6;

impl Family for V4 {
    type Addr = u32;
    type SvcKey = Svc4Key;
    type Backend = Backend4;
    type Client = u64;
    type AffinityKey = Affinity4Key;

    #[inline(always)]
    fn svc_key(address: u32, port: u16, proto: u8, scope: u8) -> Svc4Key {
        Svc4Key::new(address, port, proto, 0).with_scope(scope)
    }
    #[inline(always)]
    fn nodeport_key(port: u16, proto: u8, scope: u8) -> Svc4Key {
        Svc4Key::new(0, port, proto, 0).with_scope(scope)
    }
    #[inline(always)]
    fn wildcard(address: u32) -> Svc4Key {
        Svc4Key::wildcard(address)
    }
    #[inline(always)]
    fn with_slot(key: &Svc4Key, slot: u16) -> Svc4Key {
        key.with_slot(slot)
    }
    #[inline(always)]
    fn lookup_service(key: &Svc4Key) -> Option<Svc4Value> {
        get_copy(&SVC4, key)
    }
    #[inline(always)]
    fn lookup_backend(id: u32) -> Option<Backend4> {
        get_copy(&BACKEND4, &id)
    }
    #[inline(always)]
    fn is_node_addr(address: &u32) -> bool {
        is_node_addr(*address)
    }
    #[inline(always)]
    fn source_allowed(key: &Svc4Key, saddr: &u32) -> bool {
        let lpm = SrcRangeKey::new(
            SRC_RANGE_FRONTEND_BITS + 32,
            SrcRange4Key {
                address: key.address,
                dport: key.dport,
                proto: key.proto,
                pad: 0,
                source: *saddr,
            },
        );
        SRC_RANGE4.get(&lpm).is_some()
    }
    #[inline(always)]
    fn client_of_netns(cookie: u64) -> u64 {
        cookie
    }
    #[inline(always)]
    fn client_of_addr(saddr: &u32) -> u64 {
        u64::from(*saddr)
    }
    #[inline(always)]
    fn affinity_key(client: u64, key: &Svc4Key) -> Affinity4Key {
        Affinity4Key {
            client,
            address: key.address,
            dport: key.dport,
            proto: key.proto,
            scope: key.scope,
        }
    }
    #[inline(always)]
    fn affinity_entry(key: &Affinity4Key) -> Option<*mut Affinity4Value> {
        AFFINITY4.get_ptr_mut(key)
    }
    #[inline(always)]
    fn remember_affinity(key: &Affinity4Key, value: &Affinity4Value) {
        let _ = AFFINITY4.insert(key, value, BPF_ANY as u64);
    }
    #[inline(always)]
    fn affinity_match(key: &Svc4Key, backend_id: u32) -> Option<AffinityMatch4Value> {
        get_copy(
            &AFFINITY_MATCH4,
            &AffinityMatch4Key {
                address: key.address,
                dport: key.dport,
                proto: key.proto,
                scope: key.scope,
                backend_id,
            },
        )
    }
    #[inline(always)]
    fn maglev_entries(index: u32) -> Option<MaglevEntries> {
        MAGLEV4.get(index).copied()
    }
    #[inline(always)]
    fn flow_hash(seed: u32, saddr: &u32, sport: u16, key: &Svc4Key) -> u32 {
        flow_hash(seed, *saddr, key.address, sport, key.dport, key.proto)
    }
}

impl Family for V6 {
    type Addr = Addr6;
    type SvcKey = Svc6Key;
    type Backend = Backend6;
    type Client = Addr6;
    type AffinityKey = Affinity6Key;

    #[inline(always)]
    fn svc_key(address: Addr6, port: u16, proto: u8, scope: u8) -> Svc6Key {
        Svc6Key::new(address, port, proto, 0).with_scope(scope)
    }
    #[inline(always)]
    fn nodeport_key(port: u16, proto: u8, scope: u8) -> Svc6Key {
        Svc6Key::new([0; 4], port, proto, 0).with_scope(scope)
    }
    #[inline(always)]
    fn wildcard(address: Addr6) -> Svc6Key {
        Svc6Key::wildcard(address)
    }
    #[inline(always)]
    fn with_slot(key: &Svc6Key, slot: u16) -> Svc6Key {
        key.with_slot(slot)
    }
    #[inline(always)]
    fn lookup_service(key: &Svc6Key) -> Option<Svc4Value> {
        get_copy(&SVC6, key)
    }
    #[inline(always)]
    fn lookup_backend(id: u32) -> Option<Backend6> {
        get_copy(&BACKEND6, &id)
    }
    #[inline(always)]
    fn is_node_addr(address: &Addr6) -> bool {
        is_node_addr6(address)
    }
    #[inline(always)]
    fn source_allowed(key: &Svc6Key, saddr: &Addr6) -> bool {
        let lpm = SrcRange6LpmKey::new(
            SRC_RANGE6_FRONTEND_BITS + 128,
            SrcRange6Key {
                address: key.address,
                dport: key.dport,
                proto: key.proto,
                pad: 0,
                source: *saddr,
            },
        );
        SRC_RANGE6.get(&lpm).is_some()
    }
    #[inline(always)]
    fn client_of_netns(cookie: u64) -> Addr6 {
        // The cookie's bytes in words 0 and 1, as a u64 in memory.
        [cookie as u32, (cookie >> 32) as u32, 0, 0]
    }
    #[inline(always)]
    fn client_of_addr(saddr: &Addr6) -> Addr6 {
        *saddr
    }
    #[inline(always)]
    fn affinity_key(client: Addr6, key: &Svc6Key) -> Affinity6Key {
        Affinity6Key {
            client,
            address: key.address,
            dport: key.dport,
            proto: key.proto,
            scope: key.scope,
        }
    }
    #[inline(always)]
    fn affinity_entry(key: &Affinity6Key) -> Option<*mut Affinity4Value> {
        AFFINITY6.get_ptr_mut(key)
    }
    #[inline(always)]
    fn remember_affinity(key: &Affinity6Key, value: &Affinity4Value) {
        let _ = AFFINITY6.insert(key, value, BPF_ANY as u64);
    }
    #[inline(always)]
    fn affinity_match(key: &Svc6Key, backend_id: u32) -> Option<AffinityMatch4Value> {
        get_copy(
            &AFFINITY_MATCH6,
            &AffinityMatch6Key {
                address: key.address,
                dport: key.dport,
                proto: key.proto,
                scope: key.scope,
                backend_id,
            },
        )
    }
    #[inline(always)]
    fn maglev_entries(index: u32) -> Option<MaglevEntries> {
        MAGLEV6.get(index).copied()
    }
    #[inline(always)]
    fn flow_hash(seed: u32, saddr: &Addr6, sport: u16, key: &Svc6Key) -> u32 {
        flow_hash6(seed, saddr, &key.address, sport, key.dport, key.proto)
    }
}
