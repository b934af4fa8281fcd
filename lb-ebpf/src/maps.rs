//! The data path's maps. Names and layouts come from lb-common (the names are
//! repeated as literals because the attribute needs one; a userspace test checks
//! that the object's map names equal lb_common::map_names).
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SkStorage, lpm_trie::Key},
};
use lb_common::{
    Affinity4Key, Affinity4Value, AffinityMatch4Key, AffinityMatch4Value, AgentStatus, Backend4,
    Counter, Ct4Key, Ct4Value, Device4, Frag4Key, Frag4Value, NodeAddr4, RevNat4Key, RevNat4Value,
    SockBackend4Key, SockBackend4Value, SockState4, SrcRange4Key, Svc4Key, Svc4Value, capacity,
    maglev::MaglevEntries,
};

/// Frontends (slot 0) and their backend slots (1..=count).
#[aya_ebpf::macros::btf_map(name = "lb4_svc_v1")]
pub static SVC4: HashMap<Svc4Key, Svc4Value, { capacity::SVC4 as usize }> = HashMap::new();

/// Backends by id.
#[aya_ebpf::macros::btf_map(name = "lb4_be_v1")]
pub static BACKEND4: HashMap<u32, Backend4, { capacity::BACKEND4 as usize }> = HashMap::new();

/// (socket, backend) -> service address, for getpeername() and UDP replies.
#[aya_ebpf::macros::btf_map(name = "lb4_rnat_v1")]
pub static REVNAT4: LruHashMap<RevNat4Key, RevNat4Value, { capacity::REVNAT4 as usize }> =
    LruHashMap::new();

/// (UDP socket, service) -> chosen backend, so one socket sticks to one backend.
#[aya_ebpf::macros::btf_map(name = "lb4_sk_be_v1")]
pub static SOCK_BACKEND4: LruHashMap<
    SockBackend4Key,
    SockBackend4Value,
    { capacity::SOCK_BACKEND4 as usize },
> = LruHashMap::new();

/// Per-socket state: the first service a socket is translated for and its backend.
/// Lives and dies with the socket; the two LRU maps above only hold what a socket
/// does beyond its first service.
#[aya_ebpf::macros::btf_map(name = "lb4_sk_st_v1")]
pub static SOCK_STATE4: SkStorage<SockState4> = SkStorage::new();

/// Per-CPU event counters, indexed by [`Counter`].
#[aya_ebpf::macros::btf_map(name = "lb_stats_v3")]
pub static STATS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

/// Tracked external flows, one entry per direction.
#[aya_ebpf::macros::btf_map(name = "lb4_ct_v1")]
pub static CT4: LruHashMap<Ct4Key, Ct4Value, { capacity::CT4 as usize }> = LruHashMap::new();

/// This node's addresses: NodePorts answer on them.
#[aya_ebpf::macros::btf_map(name = "lb4_node_ip_v1")]
pub static NODE_ADDR4: HashMap<u32, NodeAddr4, { capacity::NODE_ADDR4 as usize }> = HashMap::new();

/// Devices with the TC programs, and the address SNAT uses on each.
#[aya_ebpf::macros::btf_map(name = "lb4_dev_v1")]
pub static DEVICE4: HashMap<u32, Device4, { capacity::DEVICE4 as usize }> = HashMap::new();

/// Ports of fragmented datagrams, from their first fragment.
#[aya_ebpf::macros::btf_map(name = "lb4_frag_v1")]
pub static FRAG4: LruHashMap<Frag4Key, Frag4Value, { capacity::FRAG4 as usize }> =
    LruHashMap::new();

/// loadBalancerSourceRanges: (frontend, source prefix) -> allowed.
#[aya_ebpf::macros::btf_map(name = "lb4_srcrng_v1")]
pub static SRC_RANGE4: LpmTrie<SrcRange4Key, u8, { capacity::SRC_RANGE4 as usize }> =
    LpmTrie::new();

pub type SrcRangeKey = Key<SrcRange4Key>;

/// ClientIP session affinity: which backend each client of a frontend sticks to.
#[aya_ebpf::macros::btf_map(name = "lb4_aff_v1")]
pub static AFFINITY4: LruHashMap<Affinity4Key, Affinity4Value, { capacity::AFFINITY4 as usize }> =
    LruHashMap::new();

/// The backends (and slots) of the frontends with affinity, written by the agent.
#[aya_ebpf::macros::btf_map(name = "lb4_affmatch_v1")]
pub static AFFINITY_MATCH4: HashMap<
    AffinityMatch4Key,
    AffinityMatch4Value,
    { capacity::AFFINITY_MATCH4 as usize },
> = HashMap::new();

/// The agent's report on its last sync, for `socklb status`. No program reads it:
/// it lives here so that it is created and pinned with the others.
#[aya_ebpf::macros::btf_map(name = "lb_agent_v1")]
pub static AGENT_STATUS: Array<AgentStatus, 1> = Array::new();

/// Per CPU: when the next reject answer is due (GCRA, see [`lb_common::reject_rate`]),
/// bpf_ktime_get_ns clock; 0 before the first.
#[aya_ebpf::macros::btf_map(name = "lb4_rej_rate_v1")]
pub static REJECT_RATE4: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Maglev tables of external frontends: a header, then table after table of backend
/// ids (lb_common::maglev). The agent sizes it at load time and writes it through an
/// mmap of the map (BPF_F_MMAPABLE), tens of thousands of entries per table without
/// a syscall each; its size here is a placeholder.
#[aya_ebpf::macros::btf_map(name = "lb4_maglev_v1")]
pub static MAGLEV4: Array<MaglevEntries, 1, { BPF_F_MMAPABLE as usize }> = Array::new();

/// The hash maps above, read by key (see [`get_copy`]).
pub trait Lookup<K, V> {
    fn lookup(&self, key: &K) -> Option<*const V>;
}

impl<K, V, const N: usize, const F: usize> Lookup<K, V> for HashMap<K, V, N, F> {
    #[inline(always)]
    fn lookup(&self, key: &K) -> Option<*const V> {
        self.get_ptr(key)
    }
}

impl<K, V, const N: usize, const F: usize> Lookup<K, V> for LruHashMap<K, V, N, F> {
    #[inline(always)]
    fn lookup(&self, key: &K) -> Option<*const V> {
        self.get_ptr(key)
    }
}

/// The value under `key`, copied out of the map at once.
///
/// Every read of a map value goes through here, except the conntrack entries the TC
/// program refreshes in place and the socket storage (sock4.rs).
#[inline(always)]
pub fn get_copy<K, V: Copy>(map: &impl Lookup<K, V>, key: &K) -> Option<V> {
    // SAFETY: the lookup helper returned a pointer to a value of this map, of V's
    // size (the map was declared with V) and aligned for it, valid for this program
    // run: an element replaced or deleted meanwhile is freed only after an RCU grace
    // period. The agent replaces elements whole, but programs on other CPUs update
    // some values in place (conntrack refreshes), so the value is copied at once and
    // no reference to it is kept.
    map.lookup(key).map(|p| unsafe { *p })
}

#[inline(always)]
pub fn is_node_addr(addr: u32) -> bool {
    NODE_ADDR4.get_ptr(addr).is_some()
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of a preallocated array; only this CPU writes it and
        // programs are not preempted mid-run by another program on the same CPU
        // touching the same hook's counters in a way that matters for statistics.
        unsafe { *slot += 1 };
    }
}
