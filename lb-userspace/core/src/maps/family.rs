//! The address families of the maps: the diff ([`super::diff`]), the twin
//! ([`super::twin`]) and the agent's kernel maps are written once over [`Family`];
//! [`V4`] and [`V6`] say how a family-agnostic key becomes an entry of the `lb4_*` or
//! the `lb6_*` maps (`v4.rs`, `v6.rs`). Each family has its own maps, backend ids and
//! Maglev tables.
use std::{fmt::Debug, hash::Hash};

use lb_common::{
    AffinityMatch4Key, AffinityMatch6Key, Backend4, Backend6, SockKill4Key, SockKill6Key,
    SrcRange4Key, SrcRange6Key, Svc4Key, Svc6Key,
};

use super::{
    desired::{BackendKey, FrontendKey},
    v4, v6,
};
use crate::model::IpCidr;

/// One address family's map encodings.
pub trait Family:
    Copy + Clone + Debug + Default + PartialEq + Eq + Hash + Send + Sync + 'static
{
    /// Key of the service table.
    type SvcKey: Copy + Debug + Eq + Hash + Ord + Send + Sync;
    /// Value of the backend map.
    type Backend: Copy + Debug + Eq + Send + Sync;
    /// Data of the source range LPM key.
    type SrcRangeKey: Copy + Debug + Eq + Hash + Ord + Send + Sync;
    /// Key of the affinity match map.
    type AffinityMatchKey: Copy + Debug + Eq + Hash + Ord + Send + Sync;
    /// Key of the stale-socket kill map.
    type SockKillKey: Copy + Debug + Eq + Hash + Ord + Send + Sync;

    /// "IPv4" or "IPv6", for messages.
    const NAME: &'static str;

    /// Slot 0 of a frontend; None when the frontend is of the other family.
    fn svc_key(key: &FrontendKey) -> Option<Self::SvcKey>;
    /// The frontend of a service-map key (any slot).
    fn frontend_key(key: &Self::SvcKey) -> Option<FrontendKey>;
    /// The slot of a service-map key (0: the frontend itself).
    fn slot_of(key: &Self::SvcKey) -> u16;
    /// The same frontend at another slot.
    fn with_slot(key: &Self::SvcKey, slot: u16) -> Self::SvcKey;
    /// A backend's map value; None when it is of the other family.
    fn backend(key: &BackendKey) -> Option<Self::Backend>;
    /// The backend of a map value.
    fn backend_key(value: &Self::Backend) -> Option<BackendKey>;
    /// The affinity match entry of `backend_id` in the frontend `svc` (slot 0).
    fn affinity_match(svc: &Self::SvcKey, backend_id: u32) -> Self::AffinityMatchKey;
    /// The frontend (slot 0) and backend id of an affinity match entry.
    fn affinity_match_parts(key: &Self::AffinityMatchKey) -> (Self::SvcKey, u32);
    /// The LPM entry (data, prefix length) allowing `cidr` to reach frontend `svc`.
    fn src_range(svc: &Self::SvcKey, cidr: &IpCidr) -> Option<(Self::SrcRangeKey, u32)>;
    /// The frontend and source prefix of an LPM entry.
    fn src_range_entry(key: &Self::SrcRangeKey, prefix_len: u32) -> Option<(FrontendKey, IpCidr)>;
    /// The kill-map key of `backend` having left the internal frontend `frontend`.
    fn sock_kill_key(frontend: &FrontendKey, backend: &BackendKey) -> Option<Self::SockKillKey>;
}

/// IPv4: the `lb4_*` maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V4;

/// IPv6: the `lb6_*` maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V6;

impl Family for V4 {
    type SvcKey = Svc4Key;
    type Backend = Backend4;
    type SrcRangeKey = SrcRange4Key;
    type AffinityMatchKey = AffinityMatch4Key;
    type SockKillKey = SockKill4Key;
    const NAME: &'static str = "IPv4";

    fn svc_key(key: &FrontendKey) -> Option<Svc4Key> {
        v4::svc_key(key)
    }
    fn frontend_key(key: &Svc4Key) -> Option<FrontendKey> {
        v4::frontend_key(key)
    }
    fn slot_of(key: &Svc4Key) -> u16 {
        key.backend_slot
    }
    fn with_slot(key: &Svc4Key, slot: u16) -> Svc4Key {
        key.with_slot(slot)
    }
    fn backend(key: &BackendKey) -> Option<Backend4> {
        v4::backend(key)
    }
    fn backend_key(value: &Backend4) -> Option<BackendKey> {
        v4::backend_key(value)
    }
    fn affinity_match(svc: &Svc4Key, backend_id: u32) -> AffinityMatch4Key {
        v4::affinity_match(svc, backend_id)
    }
    fn affinity_match_parts(key: &AffinityMatch4Key) -> (Svc4Key, u32) {
        (v4::affinity_match_frontend(key), key.backend_id)
    }
    fn src_range(svc: &Svc4Key, cidr: &IpCidr) -> Option<(SrcRange4Key, u32)> {
        v4::src_range(svc, cidr)
    }
    fn src_range_entry(key: &SrcRange4Key, prefix_len: u32) -> Option<(FrontendKey, IpCidr)> {
        v4::src_range_entry(key, prefix_len)
    }
    fn sock_kill_key(frontend: &FrontendKey, backend: &BackendKey) -> Option<SockKill4Key> {
        v4::sock_kill_key(frontend, backend)
    }
}

impl Family for V6 {
    type SvcKey = Svc6Key;
    type Backend = Backend6;
    type SrcRangeKey = SrcRange6Key;
    type AffinityMatchKey = AffinityMatch6Key;
    type SockKillKey = SockKill6Key;
    const NAME: &'static str = "IPv6";

    fn svc_key(key: &FrontendKey) -> Option<Svc6Key> {
        v6::svc_key(key)
    }
    fn frontend_key(key: &Svc6Key) -> Option<FrontendKey> {
        v6::frontend_key(key)
    }
    fn slot_of(key: &Svc6Key) -> u16 {
        key.backend_slot
    }
    fn with_slot(key: &Svc6Key, slot: u16) -> Svc6Key {
        key.with_slot(slot)
    }
    fn backend(key: &BackendKey) -> Option<Backend6> {
        v6::backend(key)
    }
    fn backend_key(value: &Backend6) -> Option<BackendKey> {
        v6::backend_key(value)
    }
    fn affinity_match(svc: &Svc6Key, backend_id: u32) -> AffinityMatch6Key {
        v6::affinity_match(svc, backend_id)
    }
    fn affinity_match_parts(key: &AffinityMatch6Key) -> (Svc6Key, u32) {
        (v6::affinity_match_frontend(key), key.backend_id)
    }
    fn src_range(svc: &Svc6Key, cidr: &IpCidr) -> Option<(SrcRange6Key, u32)> {
        v6::src_range(svc, cidr)
    }
    fn src_range_entry(key: &SrcRange6Key, prefix_len: u32) -> Option<(FrontendKey, IpCidr)> {
        v6::src_range_entry(key, prefix_len)
    }
    fn sock_kill_key(frontend: &FrontendKey, backend: &BackendKey) -> Option<SockKill6Key> {
        v6::sock_kill_key(frontend, backend)
    }
}
