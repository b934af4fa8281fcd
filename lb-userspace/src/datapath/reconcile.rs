//! Keeps a set of service maps equal to a desired state, through the diff.
use tracing::{debug, error, warn};

use socklb_core::maps::{
    DesiredState, FrontendKey, MapOp, ServiceMaps, SyncStats,
    diff::{Capacity, ProgrammedState, apply_ops},
};

/// Owns the maps and the mirror of what they hold.
pub struct Reconciler<M: ServiceMaps> {
    maps: M,
    state: ProgrammedState,
    capacity: Capacity,
    /// Removals of unreachable entries that failed; retried before the next sync.
    pending_cleanup: Vec<MapOp>,
}

impl<M: ServiceMaps> Reconciler<M> {
    /// Adopts whatever the maps hold (a previous agent's state) and removes entries
    /// no reader can reach. Live frontends are left untouched until the first sync.
    pub fn adopt(maps: M, capacity: Capacity) -> Result<Self, M::Error> {
        let (state, cleanup) = ProgrammedState::adopt(&maps, capacity)?;
        if !cleanup.is_empty() {
            debug!(
                ops = cleanup.len(),
                "removing unreachable map entries left by an earlier agent"
            );
        }
        let mut reconciler = Self {
            maps,
            state,
            capacity,
            pending_cleanup: Vec::new(),
        };
        reconciler.run_cleanup(cleanup);
        Ok(reconciler)
    }

    /// Makes the maps hold `desired`. On a failed write the mirror is rebuilt from
    /// the maps, so the next call starts from the truth.
    pub fn sync(&mut self, desired: &DesiredState) -> Result<SyncStats, M::Error> {
        self.sync_with(desired, None)
    }

    /// Like [`Self::sync`] for the given frontends only: an incremental update.
    pub fn sync_keys(
        &mut self,
        desired: &DesiredState,
        keys: &[FrontendKey],
    ) -> Result<SyncStats, M::Error> {
        self.sync_with(desired, Some(keys))
    }

    fn sync_with(
        &mut self,
        desired: &DesiredState,
        keys: Option<&[FrontendKey]>,
    ) -> Result<SyncStats, M::Error> {
        if !self.pending_cleanup.is_empty() {
            let cleanup = std::mem::take(&mut self.pending_cleanup);
            self.run_cleanup(cleanup);
        }
        let (ops, stats) = match keys {
            Some(keys) => self.state.sync_keys(desired, keys),
            None => self.state.sync_all(desired),
        };
        for key in &stats.maglev_full {
            warn!(frontend = %key, "no free Maglev table (--maglev-max-tables): new flows pick a backend at random until one is freed");
        }
        if let Err(e) = apply_ops(&mut self.maps, &ops) {
            error!(error = %e, "map update failed; re-reading the maps");
            match ProgrammedState::adopt(&self.maps, self.capacity) {
                Ok((state, cleanup)) => {
                    self.state = state;
                    self.run_cleanup(cleanup);
                }
                Err(e2) => warn!(error = %e2, "re-reading the maps failed"),
            }
            return Err(e);
        }
        Ok(stats)
    }

    /// Removes unreachable entries; what fails stays pending for the next sync.
    /// These entries are invisible to readers, so a failure here is not urgent.
    fn run_cleanup(&mut self, cleanup: Vec<MapOp>) {
        for (i, op) in cleanup.iter().enumerate() {
            if let Err(e) = self.maps.apply(op) {
                warn!(error = %e, "removing unreachable map entries failed; will retry");
                self.pending_cleanup = cleanup[i..].to_vec();
                return;
            }
        }
    }

    pub fn state(&self) -> &ProgrammedState {
        &self.state
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn into_maps(self) -> M {
        self.maps
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use lb_common::SvcAction;

    use super::*;
    use socklb_core::{
        maps::{BackendKey, DesiredFrontend, FrontendKey, twin::MemoryMaps},
        model::Protocol,
        plan::FrontendAddr,
    };

    fn state(backends: &[u8]) -> DesiredState {
        let key = FrontendKey::internal(FrontendAddr {
            ip: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 80,
            protocol: Protocol::Tcp,
        });
        let backends = backends
            .iter()
            .map(|b| BackendKey {
                local: false,
                addr: SocketAddr::new(Ipv4Addr::new(10, 244, 0, *b).into(), 80),
                protocol: Protocol::Tcp,
            })
            .collect();
        DesiredState {
            frontends: [(
                key,
                DesiredFrontend {
                    source_ranges: vec![],
                    action: SvcAction::Forward,
                    backends,
                    affinity_timeout_s: 0,
                    flags: 0,
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_write_is_recovered_on_the_next_sync() {
        let mut r = Reconciler::adopt(MemoryMaps::default(), Capacity::default()).unwrap();
        r.sync(&state(&[1, 2])).unwrap();
        r.maps.fail_at = Some(r.maps.ops_applied + 1);
        assert!(r.sync(&state(&[3, 4, 5])).is_err());
        r.maps.fail_at = None;
        r.sync(&state(&[3, 4, 5])).unwrap();
        assert!(r.maps.reader_view().is_ok());
        let again = r.sync(&state(&[3, 4, 5])).unwrap();
        assert_eq!(again.ops, 0);
        assert_eq!(r.maps.backends.len(), 3);
    }

    #[test]
    fn a_second_agent_adopts_without_writes() {
        let mut first = Reconciler::adopt(MemoryMaps::default(), Capacity::default()).unwrap();
        first.sync(&state(&[1, 2, 3])).unwrap();
        let maps = first.maps.clone();
        let mut second = Reconciler::adopt(maps, Capacity::default()).unwrap();
        let written_before = second.maps.ops_applied;
        assert_eq!(second.sync(&state(&[1, 2, 3])).unwrap().ops, 0);
        assert_eq!(second.maps.ops_applied, written_before);
    }
}
