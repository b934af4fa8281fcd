//! Keeps the service maps of both address families equal to a desired state,
//! through the diff: one [`ProgrammedState`] per family, each programming the
//! frontends of its family into its own maps.
use std::collections::BTreeMap;

use tracing::{debug, error, warn};

use socklb_core::maps::{
    DesiredState, Family, FrontendKey, MapOp, ServiceMaps, SyncStats, V4, V6,
    diff::{Capacity, Incomplete, IncompleteCounts, ProgrammedState, apply_ops},
};

/// Maps of both families behind one handle (the kernel's, or the twin's).
pub trait DualStackMaps:
    ServiceMaps<V4, Error = <Self as DualStackMaps>::Error>
    + ServiceMaps<V6, Error = <Self as DualStackMaps>::Error>
{
    type Error: std::error::Error + Send + Sync + 'static;
}

impl<M, E> DualStackMaps for M
where
    M: ServiceMaps<V4, Error = E> + ServiceMaps<V6, Error = E>,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;
}

/// One family's mirror and its pending cleanup.
struct FamilyState<F: Family> {
    state: ProgrammedState<F>,
    /// Removals of unreachable entries that failed; retried before the next sync.
    pending_cleanup: Vec<MapOp<F>>,
}

/// Owns the maps and the mirror of what they hold.
pub struct Reconciler<M: DualStackMaps> {
    maps: M,
    v4: FamilyState<V4>,
    v6: FamilyState<V6>,
    capacity: Capacity,
}

impl<M: DualStackMaps> Reconciler<M> {
    /// Adopts whatever the maps hold (a previous agent's state) and removes entries
    /// no reader can reach. Live frontends are left untouched until the first sync.
    pub fn adopt(maps: M, capacity: Capacity) -> Result<Self, <M as DualStackMaps>::Error> {
        let (state4, cleanup4) = ProgrammedState::<V4>::adopt(&maps, capacity)?;
        let (state6, cleanup6) = ProgrammedState::<V6>::adopt(&maps, capacity)?;
        if !cleanup4.is_empty() || !cleanup6.is_empty() {
            debug!(
                ops = cleanup4.len() + cleanup6.len(),
                "removing unreachable map entries left by an earlier agent"
            );
        }
        let mut reconciler = Self {
            maps,
            v4: FamilyState {
                state: state4,
                pending_cleanup: Vec::new(),
            },
            v6: FamilyState {
                state: state6,
                pending_cleanup: Vec::new(),
            },
            capacity,
        };
        run_cleanup(&mut reconciler.maps, &mut reconciler.v4, cleanup4);
        run_cleanup(&mut reconciler.maps, &mut reconciler.v6, cleanup6);
        Ok(reconciler)
    }

    /// Makes the maps hold `desired`. On a failed write the family's mirror is
    /// rebuilt from its maps, so the next call starts from the truth; the other
    /// family is synced all the same.
    pub fn sync(
        &mut self,
        desired: &DesiredState,
    ) -> Result<SyncStats, <M as DualStackMaps>::Error> {
        self.sync_with(desired, None)
    }

    /// Like [`Self::sync`] for the given frontends only: an incremental update.
    pub fn sync_keys(
        &mut self,
        desired: &DesiredState,
        keys: &[FrontendKey],
    ) -> Result<SyncStats, <M as DualStackMaps>::Error> {
        self.sync_with(desired, Some(keys))
    }

    fn sync_with(
        &mut self,
        desired: &DesiredState,
        keys: Option<&[FrontendKey]>,
    ) -> Result<SyncStats, <M as DualStackMaps>::Error> {
        let r4 = sync_family(&mut self.maps, &mut self.v4, self.capacity, desired, keys);
        let r6 = sync_family(&mut self.maps, &mut self.v6, self.capacity, desired, keys);
        let mut stats = r4?;
        stats.merge(r6?);
        Ok(stats)
    }

    pub fn state4(&self) -> &ProgrammedState<V4> {
        &self.v4.state
    }

    pub fn state6(&self) -> &ProgrammedState<V6> {
        &self.v6.state
    }

    /// Wanted frontends not (fully) programmed, both families.
    pub fn incomplete_counts(&self) -> IncompleteCounts {
        self.v4
            .state
            .incomplete_counts()
            .plus(self.v6.state.incomplete_counts())
    }

    /// Wanted frontends not (fully) programmed, and why, both families.
    pub fn incomplete(&self) -> BTreeMap<FrontendKey, Incomplete> {
        let mut all = self.v4.state.incomplete().clone();
        all.extend(self.v6.state.incomplete().iter().map(|(k, v)| (*k, *v)));
        all
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

fn sync_family<F: Family, M: ServiceMaps<F>>(
    maps: &mut M,
    family: &mut FamilyState<F>,
    capacity: Capacity,
    desired: &DesiredState,
    keys: Option<&[FrontendKey]>,
) -> Result<SyncStats, M::Error> {
    if !family.pending_cleanup.is_empty() {
        let cleanup = std::mem::take(&mut family.pending_cleanup);
        run_cleanup(maps, family, cleanup);
    }
    let (ops, stats) = match keys {
        Some(keys) => family.state.sync_keys(desired, keys),
        None => family.state.sync_all(desired),
    };
    for key in &stats.maglev_full {
        warn!(frontend = %key, "no free Maglev table (--maglev-max-tables): new flows pick a backend at random until one is freed");
    }
    if let Err(e) = apply_ops(maps, &ops) {
        error!(error = %e, family = F::NAME, "map update failed; re-reading the maps");
        match ProgrammedState::adopt(maps, capacity) {
            Ok((state, cleanup)) => {
                family.state = state;
                run_cleanup(maps, family, cleanup);
            }
            Err(e2) => warn!(error = %e2, "re-reading the maps failed"),
        }
        return Err(e);
    }
    Ok(stats)
}

/// Removes unreachable entries; what fails stays pending for the next sync.
/// These entries are invisible to readers, so a failure here is not urgent.
fn run_cleanup<F: Family, M: ServiceMaps<F>>(
    maps: &mut M,
    family: &mut FamilyState<F>,
    cleanup: Vec<MapOp<F>>,
) {
    for (i, op) in cleanup.iter().enumerate() {
        if let Err(e) = maps.apply(op) {
            warn!(error = %e, "removing unreachable map entries failed; will retry");
            family.pending_cleanup = cleanup[i..].to_vec();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use lb_common::SvcAction;

    use super::*;
    use socklb_core::{
        maps::{BackendKey, DesiredFrontend, FrontendKey, twin::DualMaps},
        model::Protocol,
        plan::FrontendAddr,
    };

    /// A ClusterIP of each family (10.96.0.10, fd00:96::10) with backends
    /// 10.244.0.N and fd00:244::N for N in `backends`.
    fn state(backends: &[u8]) -> DesiredState {
        let frontend = |ip: IpAddr, backend: &dyn Fn(u8) -> IpAddr| {
            let key = FrontendKey::internal(FrontendAddr {
                ip,
                port: 80,
                protocol: Protocol::Tcp,
            });
            let backends = backends
                .iter()
                .map(|b| BackendKey {
                    local: false,
                    addr: SocketAddr::new(backend(*b), 80),
                    protocol: Protocol::Tcp,
                })
                .collect();
            (
                key,
                DesiredFrontend {
                    source_ranges: vec![],
                    action: SvcAction::Forward,
                    backends,
                    affinity_timeout_s: 0,
                    flags: 0,
                },
            )
        };
        DesiredState {
            frontends: [
                frontend(Ipv4Addr::new(10, 96, 0, 10).into(), &|b| {
                    Ipv4Addr::new(10, 244, 0, b).into()
                }),
                frontend("fd00:96::10".parse().unwrap(), &|b| {
                    Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, u16::from(b)).into()
                }),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn each_family_is_programmed_into_its_own_maps() {
        let mut r = Reconciler::adopt(DualMaps::default(), Capacity::default()).unwrap();
        let stats = r.sync(&state(&[1, 2])).unwrap();
        assert_eq!(stats.frontends_changed, 2);
        assert_eq!(r.maps.v4.backends.len(), 2);
        assert_eq!(r.maps.v6.backends.len(), 2);
        // Slot 0, the two slots, and the address's wildcard entry.
        assert_eq!(r.maps.v4.services.len(), 3);
        assert_eq!(r.maps.v6.services.len(), 3);
        assert!(r.incomplete().is_empty());
        // One IPv6 backend leaves: a few writes to the IPv6 maps only.
        let v4_ops = r.maps.v4.ops_applied;
        let mut desired = state(&[1, 2]);
        let six = FrontendKey::internal(FrontendAddr {
            ip: "fd00:96::10".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        });
        desired.frontends.get_mut(&six).unwrap().backends.pop();
        let stats = r.sync_keys(&desired, &[six]).unwrap();
        assert_eq!(stats.departed.len(), 1);
        assert_eq!(r.maps.v4.ops_applied, v4_ops);
        assert_eq!(r.maps.v6.backends.len(), 1);
    }

    #[test]
    fn a_failed_write_is_recovered_on_the_next_sync() {
        let mut r = Reconciler::adopt(DualMaps::default(), Capacity::default()).unwrap();
        r.sync(&state(&[1, 2])).unwrap();
        r.maps.v4.fail_at = Some(r.maps.v4.ops_applied + 1);
        // The IPv4 write fails; the IPv6 maps are still synced.
        assert!(r.sync(&state(&[3, 4, 5])).is_err());
        assert_eq!(r.maps.v6.backends.len(), 3);
        r.maps.v4.fail_at = None;
        r.sync(&state(&[3, 4, 5])).unwrap();
        assert!(r.maps.v4.reader_view().is_ok());
        assert!(r.maps.v6.reader_view().is_ok());
        let again = r.sync(&state(&[3, 4, 5])).unwrap();
        assert_eq!(again.ops, 0);
        assert_eq!(r.maps.v4.backends.len(), 3);
    }

    #[test]
    fn a_second_agent_adopts_without_writes() {
        let mut first = Reconciler::adopt(DualMaps::default(), Capacity::default()).unwrap();
        first.sync(&state(&[1, 2, 3])).unwrap();
        let maps = first.maps.clone();
        let mut second = Reconciler::adopt(maps, Capacity::default()).unwrap();
        let written_before = (second.maps.v4.ops_applied, second.maps.v6.ops_applied);
        assert_eq!(second.sync(&state(&[1, 2, 3])).unwrap().ops, 0);
        assert_eq!(
            (second.maps.v4.ops_applied, second.maps.v6.ops_applied),
            written_before
        );
    }
}
