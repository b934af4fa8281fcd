//! An in-memory twin of the service and backend maps. Unit tests apply the diff's
//! ops to it one by one and check after every single op what a kernel reader would
//! see, which is how the ordering rules of `diff` are tested without a kernel.
use std::collections::BTreeMap;

use lb_common::{AffinityMatch4Key, Backend4, Svc4Key, Svc4Value, SvcAction};

use super::{MapOp, ServiceMaps};

/// An op the twin refuses: what the kernel would refuse too (a full map).
#[derive(Debug, thiserror::Error)]
#[error("in-memory map: {0}")]
pub struct TwinError(pub String);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryMaps {
    pub services: BTreeMap<Svc4Key, Svc4Value>,
    pub backends: BTreeMap<u32, Backend4>,
    /// Allowed sources: (frontend address, port, proto, source, prefix length).
    pub src_ranges: std::collections::BTreeSet<(u32, u16, u8, u32, u32)>,
    /// The affinity match map: (frontend, backend id) -> slot.
    pub affinity_matches: BTreeMap<AffinityMatch4Key, u16>,
    /// The Maglev tables by index: entry -> backend id (0: none), as long as the
    /// highest entry written.
    pub maglev: BTreeMap<u32, Vec<u32>>,
    /// Writes and deletes applied so far.
    pub ops_applied: usize,
    /// Fail the op with this index (counting from 0), to test error paths.
    pub fail_at: Option<usize>,
}

impl MemoryMaps {
    /// What a reader sees for every frontend right now: Err if a reader could hit a
    /// missing slot or backend (a half-written service), or a Maglev table slot 0
    /// names with an entry that names no backend (a new table must be written whole
    /// before slot 0 names it; a backend removed only after no entry names it).
    pub fn reader_view(&self) -> Result<(), String> {
        for (key, svc) in self.services.iter().filter(|(k, _)| k.backend_slot == 0) {
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
                    .get(&key.with_slot(slot))
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
            let key = Svc4Key::new(m.address, m.dport, m.proto, *slot).with_scope(m.scope);
            match self.services.get(&key) {
                Some(v) if v.backend_id == m.backend_id => {}
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
    pub fn reader_view_after(&self, op: &MapOp) -> Result<(), String> {
        let MapOp::PutMaglev {
            table,
            index,
            backend_id,
        } = op
        else {
            return self.reader_view();
        };
        for (key, svc) in self.services.iter().filter(|(k, _)| k.backend_slot == 0) {
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
        key: &Svc4Key,
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

impl ServiceMaps for MemoryMaps {
    type Error = TwinError;

    fn apply(&mut self, op: &MapOp) -> Result<(), TwinError> {
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
                self.src_ranges.insert((
                    key.address,
                    key.dport,
                    key.proto,
                    key.source,
                    *prefix_len,
                ));
            }
            MapOp::DeleteSrcRange { key, prefix_len } => {
                self.src_ranges.remove(&(
                    key.address,
                    key.dport,
                    key.proto,
                    key.source,
                    *prefix_len,
                ));
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

    fn dump_services(&self) -> Result<Vec<(Svc4Key, Svc4Value)>, TwinError> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_backends(&self) -> Result<Vec<(u32, Backend4)>, TwinError> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_affinity_matches(&self) -> Result<Vec<(AffinityMatch4Key, u16)>, TwinError> {
        Ok(self
            .affinity_matches
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn read_maglev_table(&self, table: u32) -> Result<Option<Vec<u32>>, TwinError> {
        Ok(self.maglev.get(&table).cloned())
    }

    fn dump_src_ranges(&self) -> Result<Vec<(lb_common::SrcRange4Key, u32)>, TwinError> {
        Ok(self
            .src_ranges
            .iter()
            .map(|(address, dport, proto, source, len)| {
                (
                    lb_common::SrcRange4Key {
                        address: *address,
                        dport: *dport,
                        proto: *proto,
                        pad: 0,
                        source: *source,
                    },
                    *len,
                )
            })
            .collect())
    }
}
