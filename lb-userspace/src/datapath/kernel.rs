//! The real data path: loading the programs, pinning maps and links under bpffs,
//! attaching to a cgroup, adopting what a previous agent left, and removing it all.
//!
//! Pin directory layout (`--bpffs`, default /sys/fs/bpf/socklb):
//! - one pin per map, named as the map (`lb4_svc_v1`, ...);
//! - one pin per attached program link (`link_connect4`, ...): the links keep the
//!   programs attached while no agent runs, which is what makes restarts hitless.
use std::{
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::{
    Addr6, Affinity4Key, Affinity4Value, Affinity6Key, AgentStatus, Counter, Ct4Key, Ct4Value,
    Ct6Key, Ct6Value, Device4, Device6, NodeAddr4, map_names,
};
use tracing::{debug, info, warn};

use socklb_core::maps::{
    V4, V6,
    maglev::MaglevConfig,
    v6::{ip6_from_map, ip6_to_map},
};

use super::{
    DatapathError,
    kfunc::{KfuncCall, PatchedObject, patch_kfunc_calls},
    service_maps::{ServiceHandles, ignore_missing},
};

/// The kernel programs, built by build.rs. Load [`loadable_object`], not this: the
/// object's kfunc calls need patching first (see `kfunc.rs`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// [`EBPF_OBJECT`] with its kfunc calls patched against `btf` (the running kernel's;
/// None: the kernel has no BTF, and every kfunc call returns -EOPNOTSUPP).
pub fn loadable_object(btf: Option<&Btf>) -> Result<PatchedObject, DatapathError> {
    Ok(patch_kfunc_calls(EBPF_OBJECT, |name| {
        btf?.id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func)
            .ok()
    })?)
}

/// The loaded object as `install` leaves it to the agent: the programs it did not
/// attach (the socket iterators, which the agent runs itself), the maps it did not
/// take, and what they were loaded against.
pub struct LoadedObject {
    pub ebpf: Ebpf,
    /// The running kernel's BTF, None if it has none (iterators need it to load).
    pub btf: Option<Btf>,
    /// The object's kfunc calls and whether the kernel has them.
    pub kfuncs: Vec<KfuncCall>,
}

/// Socket hooks: (program function name, link pin name).
pub const SOCKET_HOOKS: [(&str, &str); 8] = [
    ("sock4_connect", "link_connect4"),
    ("sock4_sendmsg", "link_sendmsg4"),
    ("sock4_recvmsg", "link_recvmsg4"),
    ("sock4_getpeername", "link_getpeername4"),
    ("sock6_connect", "link_connect6"),
    ("sock6_sendmsg", "link_sendmsg6"),
    ("sock6_recvmsg", "link_recvmsg6"),
    ("sock6_getpeername", "link_getpeername6"),
];

/// The bind hooks: (program, link pin name).
pub const BIND_HOOKS: [(&str, &str); 2] = [
    ("sock4_post_bind", "link_post_bind4"),
    ("sock6_post_bind", "link_post_bind6"),
];

/// TC programs: (program, direction, link pin name prefix; the ifindex follows).
pub const TC_HOOKS: [(&str, TcAttachType, &str); 4] = [
    ("lb4_tc_ingress", TcAttachType::Ingress, "link_tc_ingress_"),
    ("lb4_tc_egress", TcAttachType::Egress, "link_tc_egress_"),
    // Each family's pair hands the other's frames on (TCX_NEXT): either order works.
    ("lb6_tc_ingress", TcAttachType::Ingress, "link_tc_ingress6_"),
    ("lb6_tc_egress", TcAttachType::Egress, "link_tc_egress6_"),
];

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/socklb";

/// The sizes (max_entries) of the maps that grow with the cluster, set by the agent's
/// `--map-size-*` flags. The kernel preallocates hash maps: memory is charged at
/// creation, whatever the fill (`socklb agent --help` gives the cost per entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Service map: a frontend's entry plus one per backend slot
    /// (`--map-size-services`); the affinity match map (one per slot of a frontend
    /// with affinity) gets the same size, so it never fills first.
    pub services: u32,
    /// Backend map: distinct (address, port, protocol) (`--map-size-backends`).
    pub backends: u32,
    /// Conntrack LRU, two entries per flow (`--map-size-conntrack`).
    pub conntrack: u32,
    /// Session affinity LRU: (client, frontend) pairs (`--map-size-affinity`).
    pub affinity: u32,
    /// loadBalancerSourceRanges entries (`--map-size-source-ranges`).
    pub source_ranges: u32,
    /// The Maglev tables (`--lb-algorithm`, `--maglev-*`): their number and size give
    /// the Maglev map's. Unlike the maps above, a pinned Maglev map made for other
    /// flags is replaced (see [`super::maglev_map`]): its tables would be wrong.
    pub maglev: MaglevConfig,
}

impl Default for MapSizes {
    fn default() -> Self {
        use lb_common::capacity;
        Self {
            services: capacity::SVC4,
            backends: capacity::BACKEND4,
            conntrack: capacity::CT4,
            affinity: capacity::AFFINITY4,
            source_ranges: capacity::SRC_RANGE4,
            maglev: MaglevConfig::default(),
        }
    }
}

impl MapSizes {
    /// The smallest size a flag accepts.
    pub const MIN: u32 = 8;
    /// The largest: 16 Mi entries. The kernel's own bound on a hash map is its memory
    /// (2^28 buckets at most), which a node runs out of long before.
    pub const MAX: u32 = 1 << 24;

    /// (map, size, flag) of every sized map; each flag sizes both families' maps.
    pub fn by_map(&self) -> [(&'static str, u32, &'static str); 12] {
        use map_names::*;
        let services = "--map-size-services";
        let backends = "--map-size-backends";
        let conntrack = "--map-size-conntrack";
        let affinity = "--map-size-affinity";
        let ranges = "--map-size-source-ranges";
        [
            (SVC4, self.services, services),
            (AFFINITY_MATCH4, self.services, services),
            (BACKEND4, self.backends, backends),
            (CT4, self.conntrack, conntrack),
            (AFFINITY4, self.affinity, affinity),
            (SRC_RANGE4, self.source_ranges, ranges),
            (SVC6, self.services, services),
            (AFFINITY_MATCH6, self.services, services),
            (BACKEND6, self.backends, backends),
            (CT6, self.conntrack, conntrack),
            (AFFINITY6, self.affinity, affinity),
            (SRC_RANGE6, self.source_ranges, ranges),
        ]
    }

    /// What the diff may write, for these sizes.
    pub fn capacity(&self) -> socklb_core::maps::Capacity {
        socklb_core::maps::Capacity {
            svc_entries: self.services as usize,
            backends: self.backends as usize,
            affinity_matches: self.services as usize,
            src_ranges: self.source_ranges as usize,
            maglev: self.maglev,
        }
    }
}

/// Handles on the pinned maps the agent reads and writes.
pub struct KernelMaps {
    /// The sizes the maps really have (pinned maps keep the size they were made with).
    sizes: MapSizes,
    /// The service maps of each family (the diff's ops go there).
    pub(super) v4: ServiceHandles<V4>,
    pub(super) v6: ServiceHandles<V6>,
    stats: PerCpuArray<MapData, u64>,
    node_addrs: BpfHashMap<MapData, u32, NodeAddr4>,
    node_addrs6: BpfHashMap<MapData, Addr6, NodeAddr4>,
    devices: BpfHashMap<MapData, u32, Device4>,
    devices6: BpfHashMap<MapData, u32, Device6>,
    ct: BpfHashMap<MapData, Ct4Key, Ct4Value>,
    ct6: BpfHashMap<MapData, Ct6Key, Ct6Value>,
    affinity: BpfHashMap<MapData, Affinity4Key, Affinity4Value>,
    affinity6: BpfHashMap<MapData, Affinity6Key, Affinity4Value>,
    agent_status: aya::maps::Array<MapData, AgentStatus>,
}

/// A device the TC programs attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub ifindex: u32,
    /// Source address of SNATed IPv4 flows leaving through it (0.0.0.0: the device
    /// has no IPv4 address, and IPv4 SNAT through it fails).
    pub snat_addr: std::net::Ipv4Addr,
    /// Source address of SNATed IPv6 flows (`::`: none).
    pub snat_addr6: std::net::Ipv6Addr,
}

/// What a conntrack sweep found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtSweep {
    pub live: usize,
    pub removed: usize,
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, op, source }
}

impl KernelMaps {
    /// Opens the maps pinned in `pin_dir` (for inspection, or by an agent that only
    /// reconciles).
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, DatapathError> {
        let open = |name: &'static str| -> Result<Map, DatapathError> {
            let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name, "open pin"))?;
            Map::from_map_data(data).map_err(map_err(name, "open pin"))
        };
        let sizes = pinned_sizes_quiet(pin_dir)?;
        Self::from_maps(sizes, open)
    }

    fn from_ebpf(ebpf: &mut Ebpf, sizes: MapSizes) -> Result<Self, DatapathError> {
        Self::from_maps(sizes, |name| {
            ebpf.take_map(name).ok_or_else(|| {
                DatapathError::Inconsistent(format!("the eBPF object has no map {name}"))
            })
        })
    }

    fn from_maps(
        sizes: MapSizes,
        mut get: impl FnMut(&'static str) -> Result<Map, DatapathError>,
    ) -> Result<Self, DatapathError> {
        use map_names::*;
        Ok(Self {
            sizes,
            v4: ServiceHandles::open(&mut get)?,
            v6: ServiceHandles::open(&mut get)?,
            stats: PerCpuArray::try_from(get(STATS)?).map_err(map_err(STATS, "open"))?,
            node_addrs: BpfHashMap::try_from(get(NODE_ADDR4)?)
                .map_err(map_err(NODE_ADDR4, "open"))?,
            node_addrs6: BpfHashMap::try_from(get(NODE_ADDR6)?)
                .map_err(map_err(NODE_ADDR6, "open"))?,
            devices: BpfHashMap::try_from(get(DEVICE4)?).map_err(map_err(DEVICE4, "open"))?,
            devices6: BpfHashMap::try_from(get(DEVICE6)?).map_err(map_err(DEVICE6, "open"))?,
            ct: BpfHashMap::try_from(get(CT4)?).map_err(map_err(CT4, "open"))?,
            ct6: BpfHashMap::try_from(get(CT6)?).map_err(map_err(CT6, "open"))?,
            affinity: BpfHashMap::try_from(get(AFFINITY4)?).map_err(map_err(AFFINITY4, "open"))?,
            affinity6: BpfHashMap::try_from(get(AFFINITY6)?).map_err(map_err(AFFINITY6, "open"))?,
            agent_status: aya::maps::Array::try_from(get(AGENT_STATUS)?)
                .map_err(map_err(AGENT_STATUS, "open"))?,
        })
    }

    /// The Maglev map's layout: (table size, seed, tables it has room for); a size of
    /// 0 when it holds none (the random algorithm).
    pub fn maglev_layout(&self) -> (u32, u32, u32) {
        // Both families' Maglev maps are made for the same flags.
        let (m, seed) = self.v4.maglev.header();
        (m, seed, self.v4.maglev.tables())
    }

    /// The sizes the maps have.
    pub fn sizes(&self) -> MapSizes {
        self.sizes
    }

    /// Records the last sync's outcome for `socklb status`.
    pub fn write_agent_status(&mut self, status: &AgentStatus) -> Result<(), DatapathError> {
        self.agent_status
            .set(0, status, 0)
            .map_err(map_err(map_names::AGENT_STATUS, "update"))
    }

    /// What the agent recorded (all zero: no agent has synced these maps).
    pub fn agent_status(&self) -> Result<AgentStatus, DatapathError> {
        self.agent_status
            .get(&0, 0)
            .map_err(map_err(map_names::AGENT_STATUS, "lookup"))
    }

    /// Makes the node address map hold exactly `addrs`.
    pub fn set_node_addresses(
        &mut self,
        addrs: &[std::net::Ipv4Addr],
    ) -> Result<(), DatapathError> {
        let want: std::collections::HashSet<u32> = addrs
            .iter()
            .map(|a| socklb_core::maps::ip_to_map(*a))
            .collect();
        let have: Vec<u32> = self
            .node_addrs
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::NODE_ADDR4, "dump"))?;
        for addr in &want {
            self.node_addrs
                .insert(addr, NodeAddr4 { flags: 0 }, 0)
                .map_err(map_err(map_names::NODE_ADDR4, "update"))?;
        }
        for addr in have.iter().filter(|a| !want.contains(a)) {
            ignore_missing(self.node_addrs.remove(addr))
                .map_err(map_err(map_names::NODE_ADDR4, "delete"))?;
        }
        Ok(())
    }

    /// Makes the IPv6 node address map hold exactly `addrs`.
    pub fn set_node_addresses6(
        &mut self,
        addrs: &[std::net::Ipv6Addr],
    ) -> Result<(), DatapathError> {
        let want: std::collections::HashSet<Addr6> = addrs.iter().map(|a| ip6_to_map(*a)).collect();
        let have: Vec<Addr6> = self
            .node_addrs6
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::NODE_ADDR6, "dump"))?;
        for addr in &want {
            self.node_addrs6
                .insert(addr, NodeAddr4 { flags: 0 }, 0)
                .map_err(map_err(map_names::NODE_ADDR6, "update"))?;
        }
        for addr in have.iter().filter(|a| !want.contains(*a)) {
            ignore_missing(self.node_addrs6.remove(addr))
                .map_err(map_err(map_names::NODE_ADDR6, "delete"))?;
        }
        Ok(())
    }

    /// Makes the device maps (both families) hold exactly `devices`.
    pub fn set_devices(&mut self, devices: &[Device]) -> Result<(), DatapathError> {
        let have6: Vec<u32> = self
            .devices6
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::DEVICE6, "dump"))?;
        for d in devices {
            let value = Device6 {
                snat_addr: ip6_to_map(d.snat_addr6),
            };
            self.devices6
                .insert(d.ifindex, value, 0)
                .map_err(map_err(map_names::DEVICE6, "update"))?;
        }
        for ifindex in have6
            .iter()
            .filter(|i| !devices.iter().any(|d| d.ifindex == **i))
        {
            ignore_missing(self.devices6.remove(ifindex))
                .map_err(map_err(map_names::DEVICE6, "delete"))?;
        }
        let have: Vec<u32> = self
            .devices
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::DEVICE4, "dump"))?;
        for d in devices {
            let value = Device4 {
                snat_addr: socklb_core::maps::ip_to_map(d.snat_addr),
            };
            self.devices
                .insert(d.ifindex, value, 0)
                .map_err(map_err(map_names::DEVICE4, "update"))?;
        }
        for ifindex in have
            .iter()
            .filter(|i| !devices.iter().any(|d| d.ifindex == **i))
        {
            ignore_missing(self.devices.remove(ifindex))
                .map_err(map_err(map_names::DEVICE4, "delete"))?;
        }
        Ok(())
    }

    /// Removes expired conntrack entries (the LRU map evicts the oldest on its own
    /// when full; this keeps it from filling with dead flows first).
    pub fn sweep_conntrack(&mut self, now_ns: u64) -> Result<CtSweep, DatapathError> {
        let mut sweep = CtSweep::default();
        let entries: Vec<(Ct4Key, Ct4Value)> = self.ct.iter().filter_map(Result::ok).collect();
        for (key, value) in entries {
            if value.expires_ns < now_ns {
                if ignore_missing(self.ct.remove(&key)).is_ok() {
                    sweep.removed += 1;
                }
            } else {
                sweep.live += 1;
            }
        }
        let entries: Vec<(Ct6Key, Ct6Value)> = self.ct6.iter().filter_map(Result::ok).collect();
        for (key, value) in entries {
            if value.expires_ns < now_ns {
                if ignore_missing(self.ct6.remove(&key)).is_ok() {
                    sweep.removed += 1;
                }
            } else {
                sweep.live += 1;
            }
        }
        Ok(sweep)
    }

    /// Live IPv4 conntrack entries (for `status`).
    pub fn conntrack_entries(&self) -> Vec<(Ct4Key, Ct4Value)> {
        self.ct.iter().filter_map(Result::ok).collect()
    }

    /// Live IPv6 conntrack entries (for `status`).
    pub fn conntrack6_entries(&self) -> Vec<(Ct6Key, Ct6Value)> {
        self.ct6.iter().filter_map(Result::ok).collect()
    }

    /// The IPv6 session-affinity entries (see [`Self::affinity_entries`]).
    pub fn affinity6_entries(&self) -> Vec<(Affinity6Key, Affinity4Value)> {
        self.affinity6.iter().filter_map(Result::ok).collect()
    }

    pub fn node_addresses6(&self) -> Vec<std::net::Ipv6Addr> {
        let mut out: Vec<_> = self
            .node_addrs6
            .keys()
            .filter_map(Result::ok)
            .map(|a| ip6_from_map(&a))
            .collect();
        out.sort();
        out
    }

    /// The session-affinity entries: which client sticks to which backend of which
    /// frontend, and since when (expired ones included until the LRU reuses them).
    pub fn affinity_entries(&self) -> Vec<(Affinity4Key, Affinity4Value)> {
        self.affinity.iter().filter_map(Result::ok).collect()
    }

    pub fn node_addresses(&self) -> Vec<std::net::Ipv4Addr> {
        let mut out: Vec<_> = self
            .node_addrs
            .keys()
            .filter_map(Result::ok)
            .map(socklb_core::maps::ip_from_map)
            .collect();
        out.sort();
        out
    }

    /// Counters summed over CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        Counter::ALL
            .iter()
            .map(|c| {
                let per_cpu = self
                    .stats
                    .get(&(*c as u32), 0)
                    .map_err(map_err(map_names::STATS, "read"))?;
                Ok((*c, per_cpu.iter().sum()))
            })
            .collect()
    }
}

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns (conntrack expiry, affinity).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Loads `program` (of aya type `$kind`), attaches it to the cgroup directory
/// `$cgroup` and pins the link at `$pin` (replacing a link pinned there before). The
/// cgroup program types have the same attach API but no common trait, hence a macro.
macro_rules! attach_to_cgroup {
    ($ebpf:expr, $kind:ty, $program:expr, $cgroup:expr, $pin:expr) => {{
        let program: &'static str = $program;
        let pin: &Path = $pin;
        let prog: &mut $kind = $ebpf
            .program_mut(program)
            .ok_or_else(|| {
                DatapathError::Inconsistent(format!("the eBPF object has no program {program}"))
            })?
            .try_into()
            .map_err(|source| DatapathError::Program { program, source })?;
        prog.load()
            .map_err(|source| DatapathError::Program { program, source })?;
        // Links made with bpf_link_create always allow several programs per hook.
        let link_id = prog
            .attach($cgroup.as_fd(), CgroupAttachMode::Single)
            .map_err(|source| DatapathError::Program { program, source })?;
        let link = prog
            .take_link(link_id)
            .map_err(|source| DatapathError::Program { program, source })?;
        let link = FdLink::try_from(link).map_err(|e| DatapathError::Link {
            path: pin.to_path_buf(),
            message: e.to_string(),
        })?;
        replace_link_pin(link, pin)?;
    }};
}

/// Loads the programs with their maps pinned in `pin_dir` (reusing maps a previous
/// agent pinned there), attaches them to `cgroup` and pins the links.
///
/// Hitless: when links of an earlier agent exist, the new programs are attached
/// first and the old links removed after; while both are attached the second
/// program sees an already translated address and leaves it alone.
pub fn install(
    pin_dir: &Path,
    cgroup: &Path,
    devices: &[Device],
    sizes: &MapSizes,
) -> Result<(KernelMaps, LoadedObject), DatapathError> {
    raise_memlock_limit();
    prepare_pin_dir(pin_dir)?;
    let reused: Vec<&str> = map_names::ALL
        .iter()
        .copied()
        .filter(|m| pin_dir.join(m).exists())
        .collect();
    if !reused.is_empty() {
        info!(pin_dir = %pin_dir.display(), maps = ?reused, "adopting pinned maps");
    }
    let (mut loaded, sizes) = load_object(pin_dir, sizes)?;
    let ebpf = &mut loaded.ebpf;

    let cgroup_dir = fs::File::open(cgroup).map_err(|source| DatapathError::Io {
        what: "opening cgroup",
        path: cgroup.to_path_buf(),
        source,
    })?;
    for (program, link_name) in SOCKET_HOOKS {
        attach_to_cgroup!(
            ebpf,
            CgroupSockAddr,
            program,
            &cgroup_dir,
            &pin_dir.join(link_name)
        );
        debug!(program, cgroup = %cgroup.display(), "attached");
    }
    // post_bind4 and post_bind6 on the cgroup: binding a NodePort is refused.
    for (program, link_name) in BIND_HOOKS {
        attach_to_cgroup!(
            ebpf,
            CgroupSock,
            program,
            &cgroup_dir,
            &pin_dir.join(link_name)
        );
        debug!(program, cgroup = %cgroup.display(), "attached");
    }
    attach_tc(ebpf, devices, pin_dir)?;
    let mut maps = KernelMaps::from_ebpf(ebpf, sizes)?;
    maps.set_devices(devices)?;
    // Every program now uses the current maps: pins of retired ones only take memory.
    for retired in map_names::RETIRED {
        let path = pin_dir.join(retired);
        if path.exists() {
            info!(pin = %path.display(), "removing the pin of a map this version no longer uses");
            remove_pin(&path)?;
        }
    }
    Ok((maps, loaded))
}

/// TC ingress and egress on each device (TCX links, pinned). Links of devices no
/// longer selected are removed (detached).
fn attach_tc(ebpf: &mut Ebpf, devices: &[Device], pin_dir: &Path) -> Result<(), DatapathError> {
    // Before the IPv6 programs attach: until then their tail calls would fail (and the
    // packets pass untranslated).
    fill_tc6_calls(ebpf)?;
    let mut wanted: Vec<String> = Vec::new();
    for (program, direction, pin_prefix) in TC_HOOKS {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(program)
            .ok_or_else(|| {
                DatapathError::Inconsistent(format!("the eBPF object has no program {program}"))
            })?
            .try_into()
            .map_err(|source| DatapathError::Program { program, source })?;
        prog.load()
            .map_err(|source| DatapathError::Program { program, source })?;
        for device in devices {
            let pin_name = format!("{pin_prefix}{}", device.ifindex);
            let link_id = prog
                .attach(&device.name, direction)
                .map_err(|source| DatapathError::Program { program, source })?;
            let link = prog
                .take_link(link_id)
                .map_err(|source| DatapathError::Program { program, source })?;
            let link: FdLink = link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| DatapathError::Link {
                    path: pin_dir.join(&pin_name),
                    message: format!("{e} (TCX needs Linux 6.6 or newer)"),
                })?;
            replace_link_pin(link, &pin_dir.join(&pin_name))?;
            debug!(program, device = %device.name, "attached");
            wanted.push(pin_name);
        }
    }
    for stale in tc_link_pins(pin_dir)
        .into_iter()
        .filter(|p| !wanted.contains(p))
    {
        info!(pin = %stale, "detaching TC program from a device no longer selected");
        remove_pin(&pin_dir.join(stale))?;
    }
    Ok(())
}

/// Loads the IPv6 TC programs' tail-call targets and puts each at its index of the
/// program array ([`lb_common::tc6_calls`]); a reused (pinned) array gets this
/// object's programs, which the attached programs of an earlier agent then reach too
/// (the same layouts). Also for tests that run the IPv6 TC programs.
pub fn fill_tc6_calls(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let mut fds = Vec::new();
    for (index, program) in lb_common::tc6_calls::PROGRAMS {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(program)
            .ok_or_else(|| {
                DatapathError::Inconsistent(format!("the eBPF object has no program {program}"))
            })?
            .try_into()
            .map_err(|source| DatapathError::Program { program, source })?;
        prog.load()
            .map_err(|source| DatapathError::Program { program, source })?;
        let fd = prog
            .fd()
            .map_err(|source| DatapathError::Program { program, source })?
            .try_clone()
            .map_err(|source| DatapathError::Program {
                program,
                source: source.into(),
            })?;
        fds.push((index, fd));
    }
    let map = ebpf.map_mut(map_names::TC6_CALLS).ok_or_else(|| {
        DatapathError::Inconsistent(format!(
            "the eBPF object has no map {}",
            map_names::TC6_CALLS
        ))
    })?;
    let mut calls = aya::maps::ProgramArray::try_from(map)
        .map_err(|e| DatapathError::Inconsistent(format!("{}: {e}", map_names::TC6_CALLS)))?;
    for (index, fd) in &fds {
        calls.set(*index, fd, 0).map_err(|e| {
            DatapathError::Inconsistent(format!("{} [{index}]: {e}", map_names::TC6_CALLS))
        })?;
    }
    Ok(())
}

/// Names of the TC link pins in `pin_dir`.
fn tc_link_pins(pin_dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| TC_HOOKS.iter().any(|(_, _, prefix)| n.starts_with(prefix)))
        .collect()
}

/// Parses the object and creates (or reuses) its maps pinned in `pin_dir`, new maps
/// with `sizes`; no program is loaded or attached yet. Returns the sizes the maps
/// really have: a pinned map keeps the size it was created with (making it anew would
/// empty it under live traffic), which is warned about.
///
/// The Maglev map is sized for `sizes.maglev` (a pinned one made for other flags is
/// replaced first), the table size and seed are set in the programs' read-only
/// globals, and the map's header is written.
fn load_object(
    pin_dir: &Path,
    sizes: &MapSizes,
) -> Result<(LoadedObject, MapSizes), DatapathError> {
    let maglev = &sizes.maglev;
    for name in MAGLEV_MAPS {
        replace_maglev_pin_if_stale(pin_dir, name, maglev)?;
    }
    // The kernel BTF is large once parsed (~15 MB here): one copy at a time. The
    // loader parses its own in new(); it is dropped before ours is parsed, and ours
    // serves the loader, the kfunc patch and the iterators.
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    let btf = Btf::from_sys_fs().ok();
    let object = loadable_object(btf.as_ref())?;
    let map_paths: Vec<(&str, PathBuf)> = map_names::ALL
        .iter()
        .map(|m| (*m, pin_dir.join(m)))
        .collect();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    for (name, size, _) in sizes.by_map() {
        loader.map_max_entries(name, size);
    }
    let values = u32::try_from(maglev.map_entries()).map_err(|_| {
        DatapathError::Inconsistent(format!(
            "{} Maglev tables of {} entries do not fit in one map",
            maglev.tables(),
            maglev.table_size
        ))
    })?;
    let table_size = maglev.kernel_table_size();
    for name in MAGLEV_MAPS {
        loader.map_max_entries(name, values);
    }
    loader
        .override_global("MAGLEV_TABLE_SIZE", &table_size, true)
        .override_global("MAGLEV_SEED", &maglev.seed, true);
    let mut ebpf = loader
        .btf(btf.as_ref())
        .load(object.bytes())
        .map_err(|e| map_create_error(e, sizes))?;
    drop(loader);
    // The header says what the tables are; a reused map has it already.
    for name in MAGLEV_MAPS {
        let map = ebpf.map_mut(name).ok_or_else(|| {
            DatapathError::Inconsistent(format!("the eBPF object has no map {name}"))
        })?;
        write_maglev_header(map, name, table_size, maglev.seed)?;
    }
    let mut actual = pinned_sizes(pin_dir, sizes)?;
    actual.maglev = *maglev;
    Ok((
        LoadedObject {
            ebpf,
            btf,
            kfuncs: object.calls,
        },
        actual,
    ))
}

/// [`load_object`] with the default map sizes and the Maglev tables of `maglev`, for
/// tests that load the programs as the agent does (nothing attached).
pub fn load_object_with(pin_dir: &Path, maglev: &MaglevConfig) -> Result<Ebpf, DatapathError> {
    let sizes = MapSizes {
        maglev: *maglev,
        ..MapSizes::default()
    };
    load_object(pin_dir, &sizes).map(|(loaded, _)| loaded.ebpf)
}

/// The Maglev maps, one per family, made for the same flags.
const MAGLEV_MAPS: [&str; 2] = [map_names::MAGLEV4, map_names::MAGLEV6];

/// Writes a Maglev map's header (element 0) with a syscall (the map is mmapped
/// later, by [`KernelMaps`]).
fn write_maglev_header(
    map: &mut Map,
    name: &'static str,
    table_size: u32,
    seed: u32,
) -> Result<(), DatapathError> {
    let mut array: aya::maps::Array<&mut MapData, lb_common::maglev::MaglevEntries> =
        aya::maps::Array::try_from(map).map_err(map_err(name, "open"))?;
    let header = lb_common::maglev::MaglevEntries {
        backend_ids: [table_size, seed],
    };
    if array.get(&0, 0).ok() != Some(header) {
        array.set(0, header, 0).map_err(map_err(name, "update"))?;
    }
    Ok(())
}

/// Moves a pinned Maglev map aside when it was made for other Maglev flags (table size,
/// seed, number of tables): the programs loaded next get a new one (see
/// [`super::maglev_map`]). The programs still attached keep the old map until their
/// links are replaced.
fn replace_maglev_pin_if_stale(
    pin_dir: &Path,
    name: &'static str,
    maglev: &MaglevConfig,
) -> Result<(), DatapathError> {
    let pin = pin_dir.join(name);
    if super::maglev_map::pinned_layout_matches(&pin, name, maglev) == Some(false) {
        warn!(
            pin = %pin.display(),
            "the pinned Maglev tables were made for other flags (--lb-algorithm, \
             --maglev-table-size, --maglev-max-tables or --maglev-hash-seed): starting new \
             tables; new flows pick at random until they are written"
        );
        remove_pin(&pin)?;
    }
    Ok(())
}

/// A map the kernel refused to create names the flag that sized it.
fn map_create_error(e: aya::EbpfError, sizes: &MapSizes) -> DatapathError {
    if let aya::EbpfError::MapError(MapError::CreateError { name, io_error }) = &e
        && let Some((map, entries, flag)) = sizes.by_map().into_iter().find(|(m, ..)| m == name)
    {
        return DatapathError::MapCreate {
            map,
            entries,
            flag,
            source: std::io::Error::new(io_error.kind(), io_error.to_string()),
        };
    }
    DatapathError::Load(e)
}

/// The sizes of the pinned sized maps, warning where one differs from the request.
fn pinned_sizes(pin_dir: &Path, requested: &MapSizes) -> Result<MapSizes, DatapathError> {
    let read = |map: &'static str| -> Result<u32, DatapathError> {
        aya::maps::MapInfo::from_pin(pin_dir.join(map))
            .map(|info| info.max_entries())
            .map_err(|source| DatapathError::Map {
                map,
                op: "info",
                source,
            })
    };
    let mut actual = unsized_maps(requested.maglev);
    for (map, size, flag) in requested.by_map() {
        let have = read(map)?;
        if have != size {
            warn!(
                map,
                entries = have,
                requested = size,
                flag,
                "a pinned map keeps its size: {flag} applies once the map is made anew \
                 (`socklb uninstall`, which interrupts service on this node)"
            );
        }
        set_size(&mut actual, map, have);
    }
    Ok(actual)
}

/// The sizes of the pinned sized maps, for a reader (nothing requested).
fn pinned_sizes_quiet(pin_dir: &Path) -> Result<MapSizes, DatapathError> {
    let mut sizes = unsized_maps(MapSizes::default().maglev);
    for (map, _, _) in MapSizes::default().by_map() {
        let have = aya::maps::MapInfo::from_pin(pin_dir.join(map))
            .map(|info| info.max_entries())
            .map_err(|source| DatapathError::Map {
                map,
                op: "info",
                source,
            })?;
        set_size(&mut sizes, map, have);
    }
    Ok(sizes)
}

/// Sizes to take the smallest of: every field at its maximum.
fn unsized_maps(maglev: MaglevConfig) -> MapSizes {
    MapSizes {
        services: u32::MAX,
        backends: u32::MAX,
        conntrack: u32::MAX,
        affinity: u32::MAX,
        source_ranges: u32::MAX,
        maglev,
    }
}

/// Records a pinned map's size; where maps share a flag (the two families, the
/// affinity match map), the smallest counts: the diff must fit in all of them.
fn set_size(sizes: &mut MapSizes, map: &str, have: u32) {
    use map_names::*;
    let field = match map {
        m if m == SVC4 || m == SVC6 || m == AFFINITY_MATCH4 || m == AFFINITY_MATCH6 => {
            &mut sizes.services
        }
        m if m == BACKEND4 || m == BACKEND6 => &mut sizes.backends,
        m if m == CT4 || m == CT6 => &mut sizes.conntrack,
        m if m == AFFINITY4 || m == AFFINITY6 => &mut sizes.affinity,
        m if m == SRC_RANGE4 || m == SRC_RANGE6 => &mut sizes.source_ranges,
        _ => return,
    };
    *field = (*field).min(have);
}

/// The data path's maps pinned in `pin_dir` (created when missing, with the default
/// sizes), with no program attached: for benchmarks and tools that only need the maps.
pub fn create_maps(pin_dir: &Path) -> Result<KernelMaps, DatapathError> {
    raise_memlock_limit();
    prepare_pin_dir(pin_dir)?;
    let (mut loaded, sizes) = load_object(pin_dir, &MapSizes::default())?;
    KernelMaps::from_ebpf(&mut loaded.ebpf, sizes)
}

/// An exclusive lock on a pin directory, held for as long as the agent runs: two
/// agents programming one set of maps would undo each other's writes. An flock on the
/// directory itself (bpffs holds no regular files to lock); the kernel releases it
/// when the process ends, however it ends.
#[derive(Debug)]
pub struct PinDirLock {
    _dir: fs::File,
}

impl PinDirLock {
    /// Takes the lock, or fails at once if another process holds it.
    pub fn acquire(pin_dir: &Path) -> Result<PinDirLock, DatapathError> {
        use std::os::fd::AsRawFd as _;
        let dir = fs::File::open(pin_dir).map_err(|source| DatapathError::Io {
            what: "opening pin directory",
            path: pin_dir.to_path_buf(),
            source,
        })?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DatapathError::PinDirInUse {
                    path: pin_dir.to_path_buf(),
                });
            }
            return Err(DatapathError::Io {
                what: "locking pin directory",
                path: pin_dir.to_path_buf(),
                source,
            });
        }
        Ok(PinDirLock { _dir: dir })
    }
}

/// Creates the pin directory (mode 0700) when missing, and refuses one that another
/// user could have prepared or can change: whoever can write there can swap the maps
/// and links the data path trusts. It must be a directory (not a symlink) owned by
/// the agent's user (root in the DaemonSet) and writable by nobody else.
pub fn prepare_pin_dir(pin_dir: &Path) -> Result<(), DatapathError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let io = |what: &'static str| {
        move |source| DatapathError::Io {
            what,
            path: pin_dir.to_path_buf(),
            source,
        }
    };
    if !pin_dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(pin_dir)
            .map_err(io("creating pin directory"))?;
    }
    let meta = fs::symlink_metadata(pin_dir).map_err(io("reading pin directory"))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let unsafe_dir = |reason: String| DatapathError::UnsafePinDir {
        path: pin_dir.to_path_buf(),
        reason,
    };
    if !meta.file_type().is_dir() {
        return Err(unsafe_dir(
            "it is not a directory (a symlink or a file)".into(),
        ));
    }
    if meta.uid() != euid {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not by the agent's uid {euid}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "its mode {:o} lets others write to it (chmod go-w)",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Refuses a `--cgroup` that is not in a cgroup v2 hierarchy: the socket hooks attach
/// only there, and the kernel's answer otherwise is a bare EBADF. (A common mistake on
/// hybrid layouts: /sys/fs/cgroup is a tmpfs and the v2 root is .../unified.)
pub fn check_cgroup2(cgroup: &Path) -> Result<(), DatapathError> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(cgroup.as_os_str().as_bytes()).map_err(|_| {
        DatapathError::NotCgroup2 {
            path: cgroup.to_path_buf(),
            found: "the path has a NUL byte".into(),
        }
    })?;
    // SAFETY: an all-zero statfs is a valid out parameter; c_path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if ret != 0 {
        return Err(DatapathError::Io {
            what: "reading cgroup",
            path: cgroup.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    #[allow(clippy::unnecessary_cast)] // f_type is i64 or u32 depending on the libc
    let fs_type = st.f_type as i64;
    if fs_type != CGROUP2_SUPER_MAGIC {
        return Err(DatapathError::NotCgroup2 {
            path: cgroup.to_path_buf(),
            found: format!(
                "file system type {fs_type:#x}; the cgroup2 mount is in /proc/self/mountinfo"
            ),
        });
    }
    if !cgroup.is_dir() {
        return Err(DatapathError::NotCgroup2 {
            path: cgroup.to_path_buf(),
            found: "not a directory".into(),
        });
    }
    Ok(())
}

/// Gives the heap memory freed since (the kernel BTF, parsed once at start) back to
/// the system; otherwise the allocator keeps it and the agent's RSS with it.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Pins `link` at `path`, replacing (and so detaching) a link pinned there before.
fn replace_link_pin(link: FdLink, path: &Path) -> Result<(), DatapathError> {
    let staging = staging_pin(path);
    remove_pin(&staging)?; // left by an agent that died between these steps
    let pinned = link.pin(&staging).map_err(|e| DatapathError::Link {
        path: staging.clone(),
        message: e.to_string(),
    })?;
    // The old link loses its last reference (its pin) and detaches; the new one
    // already runs.
    remove_pin(path)?;
    fs::rename(&staging, path).map_err(|source| DatapathError::Io {
        what: "renaming link pin",
        path: staging.clone(),
        source,
    })?;
    // Keep no link fd in this process: the pin alone holds the attachment, so
    // `socklb uninstall` detaches at once even while an agent runs.
    drop(pinned);
    Ok(())
}

/// Where a new link is pinned before it replaces the old one. bpffs reserves names
/// with a dot (lookups fail with EPERM), hence the underscore.
fn staging_pin(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push("_new");
    path.with_file_name(name)
}

fn remove_pin(path: &Path) -> Result<(), DatapathError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::Io {
            what: "removing pin",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// What `uninstall` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<String>,
    pub maps: Vec<String>,
    pub dir_removed: bool,
}

/// Detaches the programs (by removing their link pins) and removes the pinned maps
/// and the pin directory. Removing what is already gone is not an error.
pub fn uninstall(pin_dir: &Path) -> Result<Removed, DatapathError> {
    let mut removed = Removed::default();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    // Not under a running agent: it would put back what is removed here.
    let _lock = PinDirLock::acquire(pin_dir)?;
    let mut link_names: Vec<String> = SOCKET_HOOKS
        .iter()
        .chain(&BIND_HOOKS)
        .map(|(_, l)| l.to_string())
        .collect();
    for name in tc_link_pins(pin_dir) {
        // A staging pin is removed with its link's name below; one found alone (an
        // agent killed between removing the old pin and renaming the new one) too.
        let name = name
            .strip_suffix("_new")
            .map_or(name.clone(), str::to_string);
        if !link_names.contains(&name) {
            link_names.push(name);
        }
    }
    for link_name in &link_names {
        for path in [
            pin_dir.join(link_name),
            staging_pin(&pin_dir.join(link_name)),
        ] {
            if path.exists() {
                // Confirm it is a link before removing (a pin of anything else in a
                // directory we did not create is left alone).
                match PinnedLink::from_pin(&path) {
                    Ok(link) => {
                        drop(link);
                        remove_pin(&path)?;
                        removed.links.push(link_name.clone());
                    }
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "not a link pin; left in place")
                    }
                }
            }
        }
    }
    for map in map_names::ALL.iter().chain(&map_names::RETIRED) {
        let path = pin_dir.join(map);
        if path.exists() {
            remove_pin(&path)?;
            removed.maps.push(map.to_string());
        }
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => removed.dir_removed = true,
        Err(e) => {
            warn!(path = %pin_dir.display(), error = %e, "pin directory not removed (not empty?)")
        }
    }
    Ok(removed)
}

/// Link pins present in `pin_dir`: which hooks are attached (for `status`).
pub fn attached_hooks(pin_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = SOCKET_HOOKS
        .iter()
        .chain(&BIND_HOOKS)
        .filter(|(_, link)| pin_dir.join(link).exists())
        .map(|(_, link)| link.trim_start_matches("link_").to_string())
        .collect();
    let mut tc = tc_link_pins(pin_dir);
    tc.sort();
    out.extend(
        tc.into_iter()
            .map(|n| n.trim_start_matches("link_").to_string()),
    );
    out
}

/// A program attached to a cgroup hook, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedProgram {
    pub hook: &'static str,
    pub id: u32,
    pub name: String,
}

/// cgroup attach types of the socket hooks (enum bpf_attach_type).
const HOOK_ATTACH_TYPES: [(&str, u32); 10] = [
    ("connect4", 10),
    ("sendmsg4", 14),
    ("recvmsg4", 19),
    ("getpeername4", 29),
    ("post_bind4", 12),
    ("connect6", 11),
    ("sendmsg6", 15),
    ("recvmsg6", 20),
    ("getpeername6", 30),
    ("post_bind6", 13),
];

/// Our programs' names as the kernel keeps them (cut at 15 characters).
pub fn is_socklb_program(name: &str) -> bool {
    SOCKET_HOOKS
        .iter()
        .chain(&BIND_HOOKS)
        .any(|(prog, _)| prog.get(..prog.len().min(15)) == Some(name))
}

/// Programs attached to `cgroup` on the socket hooks socklb uses (BPF_PROG_QUERY).
pub fn attached_programs(cgroup: &Path) -> Result<Vec<AttachedProgram>, DatapathError> {
    use std::os::fd::AsRawFd as _;
    let dir = fs::File::open(cgroup).map_err(|source| DatapathError::Io {
        what: "opening cgroup",
        path: cgroup.to_path_buf(),
        source,
    })?;
    let names: std::collections::HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_string()))
        .collect();
    let mut out = Vec::new();
    for (hook, attach_type) in HOOK_ATTACH_TYPES {
        let mut ids = [0u32; 64];
        // The query part of union bpf_attr (kernel >= 6.6 layout; older kernels read
        // the prefix they know).
        #[repr(C)]
        #[derive(Default)]
        struct ProgQuery {
            target_fd: u32,
            attach_type: u32,
            query_flags: u32,
            attach_flags: u32,
            prog_ids: u64,
            prog_cnt: u32,
            pad: u32,
            prog_attach_flags: u64,
            link_ids: u64,
            link_attach_flags: u64,
            revision: u64,
        }
        let mut attr = ProgQuery {
            target_fd: dir.as_raw_fd() as u32,
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        const BPF_PROG_QUERY: libc::c_long = 16;
        // SAFETY: attr is a valid, initialised bpf_attr prefix and ids outlives the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut ProgQuery,
                std::mem::size_of::<ProgQuery>(),
            )
        };
        if ret != 0 {
            return Err(DatapathError::Io {
                what: "querying cgroup programs",
                path: cgroup.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        for id in ids.iter().take((attr.prog_cnt as usize).min(ids.len())) {
            out.push(AttachedProgram {
                hook,
                id: *id,
                name: names.get(id).cloned().unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// Memory for maps is charged to the cgroup (kernel >= 5.11); older kernels need a
/// raised RLIMIT_MEMLOCK. Raising it can fail without CAP_SYS_RESOURCE: not fatal.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer to a local.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        debug!("could not raise RLIMIT_MEMLOCK (fine on kernels with memcg accounting)");
    }
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_root(&mountinfo)
}

fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> ... - <fstype> <src> <opts>"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let root = left.split_whitespace().nth(3)?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_in_hybrid_and_unified_layouts() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_root(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // A container's view of a sub-cgroup is not the root.
        let sub = "30 1 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_root(sub), None);
        assert_eq!(parse_cgroup2_root(""), None);
    }

    #[test]
    fn object_has_the_programs_and_maps_lb_common_names() {
        let obj = aya_obj_names();
        for (program, _) in SOCKET_HOOKS.iter().chain(&BIND_HOOKS) {
            assert!(
                obj.0.iter().any(|p| p == program),
                "program {program} missing in {:?}",
                obj.0
            );
        }
        for map in map_names::ALL {
            assert!(
                obj.1.iter().any(|m| m == map),
                "map {map} missing in {:?}",
                obj.1
            );
        }
    }

    /// Program and map names in the embedded object, without loading it.
    fn aya_obj_names() -> (Vec<String>, Vec<String>) {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("embedded object parses");
        (
            obj.programs.keys().cloned().collect(),
            obj.maps.keys().cloned().collect(),
        )
    }

    #[test]
    fn pin_directories_others_could_change_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = std::env::temp_dir().join(format!("socklb-pindir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        // Created when missing, mode 0700.
        let fresh = base.join("fresh");
        prepare_pin_dir(&fresh).unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // World-writable: refused.
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare_pin_dir(&open).unwrap_err().to_string();
        assert!(err.contains("lets others write"), "{err}");
        // A symlink to a good directory: refused.
        let link = base.join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let err = prepare_pin_dir(&link).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        // Owned by someone else: refused (needs root to chown, which the suite has).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let other = base.join("other");
            fs::create_dir(&other).unwrap();
            let c = std::ffi::CString::new(other.to_string_lossy().as_bytes()).unwrap();
            // SAFETY: chown with a valid path; 65534 is nobody.
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
            let err = prepare_pin_dir(&other).unwrap_err().to_string();
            assert!(err.contains("owned by uid 65534"), "{err}");
        }
        fs::remove_dir_all(&base).unwrap();
    }
}
