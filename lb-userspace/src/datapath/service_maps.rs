//! One address family's service maps in the kernel (`lb4_*` or `lb6_*`): the handles
//! the diff's ops are applied through and the adopting agent reads back. The diff is
//! written once over [`Family`]; [`KernelFamily`] adds what the kernel side needs (the
//! map names and key types aya can copy), and `KernelMaps` holds one
//! [`ServiceHandles`] per family.
use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key as LpmKey},
};
use lb_common::{AffinityMatch4Value, Svc4Value, map_names};
use socklb_core::maps::{Family, MapOp, ServiceMaps, V4, V6};

use super::{DatapathError, kernel::KernelMaps, maglev_map::MaglevMap};

/// The names of one family's service maps.
#[derive(Clone, Copy, Debug)]
pub struct ServiceMapNames {
    pub svc: &'static str,
    pub backends: &'static str,
    pub src_ranges: &'static str,
    pub affinity_matches: &'static str,
    pub maglev: &'static str,
}

/// A family whose maps the agent holds in the kernel.
pub trait KernelFamily:
    Family<SvcKey: Pod, Backend: Pod, SrcRangeKey: Pod, AffinityMatchKey: Pod>
{
    const MAPS: ServiceMapNames;
    fn handles(maps: &KernelMaps) -> &ServiceHandles<Self>;
    fn handles_mut(maps: &mut KernelMaps) -> &mut ServiceHandles<Self>;
}

impl KernelFamily for V4 {
    const MAPS: ServiceMapNames = ServiceMapNames {
        svc: map_names::SVC4,
        backends: map_names::BACKEND4,
        src_ranges: map_names::SRC_RANGE4,
        affinity_matches: map_names::AFFINITY_MATCH4,
        maglev: map_names::MAGLEV4,
    };
    fn handles(maps: &KernelMaps) -> &ServiceHandles<V4> {
        &maps.v4
    }
    fn handles_mut(maps: &mut KernelMaps) -> &mut ServiceHandles<V4> {
        &mut maps.v4
    }
}

impl KernelFamily for V6 {
    const MAPS: ServiceMapNames = ServiceMapNames {
        svc: map_names::SVC6,
        backends: map_names::BACKEND6,
        src_ranges: map_names::SRC_RANGE6,
        affinity_matches: map_names::AFFINITY_MATCH6,
        maglev: map_names::MAGLEV6,
    };
    fn handles(maps: &KernelMaps) -> &ServiceHandles<V6> {
        &maps.v6
    }
    fn handles_mut(maps: &mut KernelMaps) -> &mut ServiceHandles<V6> {
        &mut maps.v6
    }
}

/// Handles on one family's service, backend, source range, affinity match and Maglev
/// maps.
pub struct ServiceHandles<F: KernelFamily> {
    svc: BpfHashMap<MapData, F::SvcKey, Svc4Value>,
    backends: BpfHashMap<MapData, u32, F::Backend>,
    src_ranges: LpmTrie<MapData, F::SrcRangeKey, u8>,
    affinity_matches: BpfHashMap<MapData, F::AffinityMatchKey, AffinityMatch4Value>,
    pub(super) maglev: MaglevMap,
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, op, source }
}

/// A delete of an entry that is already gone has reached its goal.
pub(super) fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl<F: KernelFamily> ServiceHandles<F> {
    /// Opens the family's maps through `get` (a loaded object's or the pins).
    pub fn open(
        mut get: impl FnMut(&'static str) -> Result<Map, DatapathError>,
    ) -> Result<Self, DatapathError> {
        let n = F::MAPS;
        Ok(Self {
            svc: BpfHashMap::try_from(get(n.svc)?).map_err(map_err(n.svc, "open"))?,
            backends: BpfHashMap::try_from(get(n.backends)?)
                .map_err(map_err(n.backends, "open"))?,
            src_ranges: LpmTrie::try_from(get(n.src_ranges)?)
                .map_err(map_err(n.src_ranges, "open"))?,
            affinity_matches: BpfHashMap::try_from(get(n.affinity_matches)?)
                .map_err(map_err(n.affinity_matches, "open"))?,
            maglev: MaglevMap::new(get(n.maglev)?, n.maglev)?,
        })
    }
}

impl<F: KernelFamily> ServiceMaps<F> for KernelMaps {
    type Error = DatapathError;

    fn apply(&mut self, op: &MapOp<F>) -> Result<(), DatapathError> {
        let n = F::MAPS;
        let h = F::handles_mut(self);
        match op {
            MapOp::PutBackend { id, backend } => h
                .backends
                .insert(id, backend, 0)
                .map_err(map_err(n.backends, "update")),
            MapOp::DeleteBackend { id } => {
                ignore_missing(h.backends.remove(id)).map_err(map_err(n.backends, "delete"))
            }
            MapOp::PutSvc { key, value } => h
                .svc
                .insert(key, value, 0)
                .map_err(map_err(n.svc, "update")),
            MapOp::DeleteSvc { key } => {
                ignore_missing(h.svc.remove(key)).map_err(map_err(n.svc, "delete"))
            }
            MapOp::PutSrcRange { key, prefix_len } => h
                .src_ranges
                .insert(&LpmKey::new(*prefix_len, *key), 1, 0)
                .map_err(map_err(n.src_ranges, "update")),
            MapOp::DeleteSrcRange { key, prefix_len } => {
                ignore_missing(h.src_ranges.remove(&LpmKey::new(*prefix_len, *key)))
                    .map_err(map_err(n.src_ranges, "delete"))
            }
            MapOp::PutAffinityMatch { key, slot } => h
                .affinity_matches
                .insert(
                    key,
                    AffinityMatch4Value {
                        slot: *slot,
                        pad: 0,
                    },
                    0,
                )
                .map_err(map_err(n.affinity_matches, "update")),
            MapOp::DeleteAffinityMatch { key } => ignore_missing(h.affinity_matches.remove(key))
                .map_err(map_err(n.affinity_matches, "delete")),
            MapOp::PutMaglev {
                table,
                index,
                backend_id,
            } => h.maglev.put(*table, *index, *backend_id),
        }
    }

    fn read_maglev_table(&self, table: u32) -> Result<Option<Vec<u32>>, DatapathError> {
        Ok(F::handles(self).maglev.read_table(table))
    }

    fn dump_affinity_matches(&self) -> Result<Vec<(F::AffinityMatchKey, u16)>, DatapathError> {
        F::handles(self)
            .affinity_matches
            .iter()
            .map(|entry| entry.map(|(k, v)| (k, v.slot)))
            .collect::<Result<_, _>>()
            .map_err(map_err(F::MAPS.affinity_matches, "dump"))
    }

    fn dump_services(&self) -> Result<Vec<(F::SvcKey, Svc4Value)>, DatapathError> {
        F::handles(self)
            .svc
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(F::MAPS.svc, "dump"))
    }

    fn dump_backends(&self) -> Result<Vec<(u32, F::Backend)>, DatapathError> {
        F::handles(self)
            .backends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(F::MAPS.backends, "dump"))
    }

    fn dump_src_ranges(&self) -> Result<Vec<(F::SrcRangeKey, u32)>, DatapathError> {
        F::handles(self)
            .src_ranges
            .keys()
            .map(|k| k.map(|k| (k.data(), k.prefix_len())))
            .collect::<Result<_, _>>()
            .map_err(map_err(F::MAPS.src_ranges, "dump"))
    }
}

/// (map, entries used, capacity) of one family's maps the diff fills.
pub fn fill_by_map<F: KernelFamily>(
    fill: &socklb_core::maps::diff::Fill,
) -> [(&'static str, usize, usize); 4] {
    let n = F::MAPS;
    [
        (n.svc, fill.used.svc_entries, fill.capacity.svc_entries),
        (n.backends, fill.used.backends, fill.capacity.backends),
        (
            n.affinity_matches,
            fill.used.affinity_matches,
            fill.capacity.affinity_matches,
        ),
        (n.src_ranges, fill.used.src_ranges, fill.capacity.src_ranges),
    ]
}

/// Both families' [`fill_by_map`] rows of a reconciler.
pub fn fill_rows<M: super::reconcile::DualStackMaps>(
    reconciler: &super::reconcile::Reconciler<M>,
) -> Vec<(&'static str, usize, usize)> {
    let mut rows = fill_by_map::<V4>(&reconciler.state4().fill()).to_vec();
    rows.extend(fill_by_map::<V6>(&reconciler.state6().fill()));
    rows
}

/// Both families' Maglev maps: (map, tables in use, room for, bytes per table).
pub fn maglev_rows<M: super::reconcile::DualStackMaps>(
    reconciler: &super::reconcile::Reconciler<M>,
) -> [(&'static str, u32, u32, u64); 2] {
    let row = |name: &'static str, fill: socklb_core::maps::diff::Fill| {
        (
            name,
            fill.used.maglev.max_tables,
            fill.capacity.maglev.tables(),
            fill.capacity.maglev.table_bytes(),
        )
    };
    [
        row(V4::MAPS.maglev, reconciler.state4().fill()),
        row(V6::MAPS.maglev, reconciler.state6().fill()),
    ]
}
