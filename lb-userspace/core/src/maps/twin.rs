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
    /// Writes and deletes applied so far.
    pub ops_applied: usize,
    /// Fail the op with this index (counting from 0), to test error paths.
    pub fail_at: Option<usize>,
}

impl MemoryMaps {
    /// What a reader sees for every frontend right now: Err if a reader could hit a
    /// missing slot or backend (a half-written service).
    pub fn reader_view(&self) -> Result<(), String> {
        for (key, svc) in self.services.iter().filter(|(k, _)| k.backend_slot == 0) {
            if SvcAction::from_u8(svc.action) != Some(SvcAction::Forward) {
                continue;
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
        // it never reaches another backend than the one the client sticks to. A reader
        // consults the matches of a frontend only once it has found the frontend's
        // slot 0 (lb.rs, select_by_affinity): without one the match is unreachable, as
        // while a restarted agent removes a frontend it found half-written (matches
        // after slots).
        for (m, slot) in &self.affinity_matches {
            let key = Svc4Key::new(m.address, m.dport, m.proto, *slot).with_scope(m.scope);
            if !self.services.contains_key(&key.with_slot(0)) {
                continue;
            }
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

#[cfg(test)]
mod tests {
    use lb_common::{AffinityMatch4Key, Svc4Key, Svc4Value, SvcAction};

    use super::MemoryMaps;

    fn matched(maps: &mut MemoryMaps, key: Svc4Key, slot: u16, backend_id: u32) {
        let m = AffinityMatch4Key {
            address: key.address,
            dport: key.dport,
            proto: key.proto,
            scope: key.scope,
            backend_id,
        };
        maps.affinity_matches.insert(m, slot);
    }

    /// Found by the fuzzer (corpus/event_sequence/regression-affinity-match-of-a-
    /// frontend-without-slot-0): a restarted agent removing a half-written frontend
    /// deletes its slots before its matches; no reader reaches those matches.
    #[test]
    fn a_match_is_reached_only_through_its_frontends_slot_0() {
        let key = Svc4Key::new(1, 2, 6, 0);
        let mut maps = MemoryMaps::default();
        matched(&mut maps, key, 1, 7);
        assert!(maps.reader_view().is_ok(), "no slot 0: unreachable");
        // Slot 0 alone (no slots to check): only the match is looked at.
        maps.services.insert(
            key.with_slot(0),
            Svc4Value::service(SvcAction::Reject, 0, 60, 0),
        );
        assert!(
            maps.reader_view().is_err(),
            "slot 0 and a match to a missing slot"
        );
        maps.services.insert(key.with_slot(1), Svc4Value::slot(7));
        assert!(
            maps.reader_view().is_ok(),
            "the match names its backend's slot"
        );
    }
}
