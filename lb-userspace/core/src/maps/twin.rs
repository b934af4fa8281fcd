//! An in-memory twin of the service and backend maps. Unit tests apply the diff's
//! ops to it one by one and check after every single op what a kernel reader would
//! see, which is how the ordering rules of `diff` are tested without a kernel.
use std::collections::BTreeMap;

use lb_common::{Svc4Value, SvcAction};

use super::{
    MapOp, ServiceMaps,
    family::{Family, V4, V6},
};

/// An op the twin refuses: what the kernel would refuse too (a full map).
#[derive(Debug, thiserror::Error)]
#[error("in-memory map: {0}")]
pub struct TwinError(pub String);

/// One family's maps in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryMaps<F: Family = V4> {
    pub services: BTreeMap<F::SvcKey, Svc4Value>,
    pub backends: BTreeMap<u32, F::Backend>,
    /// Allowed sources: (LPM key data, prefix length).
    pub src_ranges: std::collections::BTreeSet<(F::SrcRangeKey, u32)>,
    /// The affinity match map: (frontend, backend id) -> slot.
    pub affinity_matches: BTreeMap<F::AffinityMatchKey, u16>,
    /// The Maglev tables by index: entry -> backend id (0: none), as long as the
    /// highest entry written.
    pub maglev: BTreeMap<u32, Vec<u32>>,
    /// Writes and deletes applied so far.
    pub ops_applied: usize,
    /// Fail the op with this index (counting from 0), to test error paths.
    pub fail_at: Option<usize>,
}

impl<F: Family> Default for MemoryMaps<F> {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            src_ranges: std::collections::BTreeSet::new(),
            affinity_matches: BTreeMap::new(),
            maglev: BTreeMap::new(),
            ops_applied: 0,
            fail_at: None,
        }
    }
}

impl<F: Family> MemoryMaps<F> {
    /// What a reader sees for every frontend right now: Err if a reader could hit a
    /// missing slot or backend (a half-written service), or a Maglev table slot 0
    /// names with an entry that names no backend (a new table must be written whole
    /// before slot 0 names it; a backend removed only after no entry names it).
    pub fn reader_view(&self) -> Result<(), String> {
        for (key, svc) in self.services.iter().filter(|(k, _)| F::slot_of(k) == 0) {
            if SvcAction::from_u8(svc.action) != Some(SvcAction::Forward) {
                continue;
            }
            if svc.backend_id != 0 {
                let table = self.maglev.get(&svc.backend_id).ok_or_else(|| {
                    format!(
                        "{key:?}: names Maglev table {} that is not written",
                        svc.backend_id
                    )
                })?;
                for (index, id) in table.iter().enumerate() {
                    self.check_maglev_entry(key, svc.backend_id, index, *id)?;
                }
            }
            for slot in 1..=svc.count {
                let slot_val = self
                    .services
                    .get(&F::with_slot(key, slot))
                    .ok_or_else(|| format!("{key:?}: slot {slot} of {} missing", svc.count))?;
                if !self.backends.contains_key(&slot_val.backend_id) {
                    return Err(format!(
                        "{key:?}: slot {slot} names missing backend {}",
                        slot_val.backend_id
                    ));
                }
            }
        }
        // An affinity match names a slot that holds its backend: a reader following
        // it never reaches another backend than the one the client sticks to.
        for (m, slot) in &self.affinity_matches {
            let (frontend, backend_id) = F::affinity_match_parts(m);
            let key = F::with_slot(&frontend, *slot);
            match self.services.get(&key) {
                Some(v) if v.backend_id == backend_id => {}
                other => {
                    return Err(format!(
                        "affinity match {m:?} -> slot {slot}, which holds {other:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// [`Self::reader_view`] after `op` was applied to maps that passed it before: the
    /// same verdict, cheaper for a Maglev entry (only that entry changed).
    pub fn reader_view_after(&self, op: &MapOp<F>) -> Result<(), String> {
        let MapOp::PutMaglev {
            table,
            index,
            backend_id,
        } = op
        else {
            return self.reader_view();
        };
        for (key, svc) in self.services.iter().filter(|(k, _)| F::slot_of(k) == 0) {
            if svc.backend_id == *table
                && SvcAction::from_u8(svc.action) == Some(SvcAction::Forward)
            {
                self.check_maglev_entry(key, *table, *index as usize, *backend_id)?;
            }
        }
        Ok(())
    }

    fn check_maglev_entry(
        &self,
        key: &F::SvcKey,
        table: u32,
        index: usize,
        id: u32,
    ) -> Result<(), String> {
        if id == 0 {
            return Err(format!(
                "{key:?}: entry {index} of Maglev table {table} names no backend"
            ));
        }
        if !self.backends.contains_key(&id) {
            return Err(format!(
                "{key:?}: entry {index} of Maglev table {table} names missing backend {id}"
            ));
        }
        Ok(())
    }
}

impl<F: Family> ServiceMaps<F> for MemoryMaps<F> {
    type Error = TwinError;

    fn apply(&mut self, op: &MapOp<F>) -> Result<(), TwinError> {
        if self.fail_at == Some(self.ops_applied) {
            return Err(TwinError(format!(
                "injected failure at op {}",
                self.ops_applied
            )));
        }
        match op {
            MapOp::PutBackend { id, backend } => {
                self.backends.insert(*id, *backend);
            }
            MapOp::DeleteBackend { id } => {
                self.backends.remove(id);
            }
            MapOp::PutSvc { key, value } => {
                self.services.insert(*key, *value);
            }
            MapOp::DeleteSvc { key } => {
                self.services.remove(key);
            }
            MapOp::PutSrcRange { key, prefix_len } => {
                self.src_ranges.insert((*key, *prefix_len));
            }
            MapOp::DeleteSrcRange { key, prefix_len } => {
                self.src_ranges.remove(&(*key, *prefix_len));
            }
            MapOp::PutAffinityMatch { key, slot } => {
                self.affinity_matches.insert(*key, *slot);
            }
            MapOp::DeleteAffinityMatch { key } => {
                self.affinity_matches.remove(key);
            }
            MapOp::PutMaglev {
                table,
                index,
                backend_id,
            } => {
                let entries = self.maglev.entry(*table).or_default();
                let i = *index as usize;
                if entries.len() <= i {
                    entries.resize(i + 1, 0);
                }
                entries[i] = *backend_id;
            }
        }
        self.ops_applied += 1;
        Ok(())
    }

    fn dump_services(&self) -> Result<Vec<(F::SvcKey, Svc4Value)>, TwinError> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_backends(&self) -> Result<Vec<(u32, F::Backend)>, TwinError> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_affinity_matches(&self) -> Result<Vec<(F::AffinityMatchKey, u16)>, TwinError> {
        Ok(self
            .affinity_matches
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn read_maglev_table(&self, table: u32) -> Result<Option<Vec<u32>>, TwinError> {
        Ok(self.maglev.get(&table).cloned())
    }

    fn dump_src_ranges(&self) -> Result<Vec<(F::SrcRangeKey, u32)>, TwinError> {
        Ok(self.src_ranges.iter().copied().collect())
    }
}

/// Both families' twins in one value, as the agent holds the kernel's maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DualMaps {
    pub v4: MemoryMaps<V4>,
    pub v6: MemoryMaps<V6>,
}

/// One family's part of a [`DualMaps`].
pub trait DualPart: Family {
    fn part(maps: &DualMaps) -> &MemoryMaps<Self>;
    fn part_mut(maps: &mut DualMaps) -> &mut MemoryMaps<Self>;
}

impl DualPart for V4 {
    fn part(maps: &DualMaps) -> &MemoryMaps<V4> {
        &maps.v4
    }
    fn part_mut(maps: &mut DualMaps) -> &mut MemoryMaps<V4> {
        &mut maps.v4
    }
}

impl DualPart for V6 {
    fn part(maps: &DualMaps) -> &MemoryMaps<V6> {
        &maps.v6
    }
    fn part_mut(maps: &mut DualMaps) -> &mut MemoryMaps<V6> {
        &mut maps.v6
    }
}

impl<F: DualPart> ServiceMaps<F> for DualMaps {
    type Error = TwinError;

    fn apply(&mut self, op: &MapOp<F>) -> Result<(), TwinError> {
        F::part_mut(self).apply(op)
    }
    fn dump_services(&self) -> Result<Vec<(F::SvcKey, Svc4Value)>, TwinError> {
        F::part(self).dump_services()
    }
    fn dump_backends(&self) -> Result<Vec<(u32, F::Backend)>, TwinError> {
        F::part(self).dump_backends()
    }
    fn dump_src_ranges(&self) -> Result<Vec<(F::SrcRangeKey, u32)>, TwinError> {
        F::part(self).dump_src_ranges()
    }
    fn dump_affinity_matches(&self) -> Result<Vec<(F::AffinityMatchKey, u16)>, TwinError> {
        F::part(self).dump_affinity_matches()
    }
    fn read_maglev_table(&self, table: u32) -> Result<Option<Vec<u32>>, TwinError> {
        F::part(self).read_maglev_table(table)
    }
}
