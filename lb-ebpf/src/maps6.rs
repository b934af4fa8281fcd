//! The IPv6 maps: the twins of the IPv4 ones in maps.rs (lb_common::v6 has the
//! layouts), read through the same helpers. Sizes are the IPv4 ones; the agent sets
//! both families' from the same flags.
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, SkStorage, lpm_trie::Key},
};
use lb_common::{
    Addr6, Affinity4Value, Affinity6Key, AffinityMatch4Value, AffinityMatch6Key, Backend6, Ct6Key,
    Ct6Value, Device6, Frag4Value, Frag6Key, NodeAddr4, RevNat6Key, RevNat6Value,
    SockBackend4Value, SockBackend6Key, SockState6, SrcRange6Key, Svc4Value, Svc6Key, capacity,
    maglev::MaglevEntries,
};

/// IPv6 frontends (slot 0) and their backend slots (1..=count).
#[aya_ebpf::macros::btf_map(name = "lb6_svc_v1")]
pub static SVC6: HashMap<Svc6Key, Svc4Value, { capacity::SVC4 as usize }> = HashMap::new();

/// IPv6 backends by id (an id space of their own).
#[aya_ebpf::macros::btf_map(name = "lb6_be_v1")]
pub static BACKEND6: HashMap<u32, Backend6, { capacity::BACKEND4 as usize }> = HashMap::new();

/// (socket, backend) -> service address, for AF_INET6 sockets.
#[aya_ebpf::macros::btf_map(name = "lb6_rnat_v1")]
pub static REVNAT6: LruHashMap<RevNat6Key, RevNat6Value, { capacity::REVNAT4 as usize }> =
    LruHashMap::new();

/// (UDP socket, service) -> chosen backend, for AF_INET6 sockets.
#[aya_ebpf::macros::btf_map(name = "lb6_sk_be_v1")]
pub static SOCK_BACKEND6: LruHashMap<
    SockBackend6Key,
    SockBackend4Value,
    { capacity::SOCK_BACKEND4 as usize },
> = LruHashMap::new();

/// Per-socket state of AF_INET6 sockets (IPv4-mapped translations included).
#[aya_ebpf::macros::btf_map(name = "lb6_sk_st_v1")]
pub static SOCK_STATE6: SkStorage<SockState6> = SkStorage::new();

/// Tracked IPv6 external flows, one entry per direction.
#[aya_ebpf::macros::btf_map(name = "lb6_ct_v1")]
pub static CT6: LruHashMap<Ct6Key, Ct6Value, { capacity::CT4 as usize }> = LruHashMap::new();

/// This node's IPv6 addresses: NodePorts answer on them.
#[aya_ebpf::macros::btf_map(name = "lb6_node_ip_v1")]
pub static NODE_ADDR6: HashMap<Addr6, NodeAddr4, { capacity::NODE_ADDR4 as usize }> =
    HashMap::new();

/// Devices with the TC programs, and the IPv6 address SNAT uses on each.
#[aya_ebpf::macros::btf_map(name = "lb6_dev_v1")]
pub static DEVICE6: HashMap<u32, Device6, { capacity::DEVICE4 as usize }> = HashMap::new();

/// Ports of fragmented IPv6 datagrams, from their first fragment.
#[aya_ebpf::macros::btf_map(name = "lb6_frag_v1")]
pub static FRAG6: LruHashMap<Frag6Key, Frag4Value, { capacity::FRAG4 as usize }> =
    LruHashMap::new();

/// IPv6 loadBalancerSourceRanges: (frontend, source prefix) -> allowed.
#[aya_ebpf::macros::btf_map(name = "lb6_srcrng_v1")]
pub static SRC_RANGE6: LpmTrie<SrcRange6Key, u8, { capacity::SRC_RANGE4 as usize }> =
    LpmTrie::new();

pub type SrcRange6LpmKey = Key<SrcRange6Key>;

/// IPv6 ClientIP session affinity.
#[aya_ebpf::macros::btf_map(name = "lb6_aff_v1")]
pub static AFFINITY6: LruHashMap<Affinity6Key, Affinity4Value, { capacity::AFFINITY4 as usize }> =
    LruHashMap::new();

/// The backends (and slots) of IPv6 frontends with affinity, written by the agent.
#[aya_ebpf::macros::btf_map(name = "lb6_affmatch_v1")]
pub static AFFINITY_MATCH6: HashMap<
    AffinityMatch6Key,
    AffinityMatch4Value,
    { capacity::AFFINITY_MATCH4 as usize },
> = HashMap::new();

/// Maglev tables of IPv6 external frontends (IPv6 backend ids); sized by the agent.
#[aya_ebpf::macros::btf_map(name = "lb6_maglev_v1")]
pub static MAGLEV6: Array<MaglevEntries, 1, { BPF_F_MMAPABLE as usize }> = Array::new();

#[inline(always)]
pub fn is_node_addr6(addr: &Addr6) -> bool {
    NODE_ADDR6.get_ptr(addr).is_some()
}
