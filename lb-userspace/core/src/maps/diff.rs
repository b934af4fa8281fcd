//! From the programmed state to the desired one in few, well-ordered map writes.
//!
//! Ordering rules (a reader looks up slot 0, then one slot in 1..=count, then the
//! backend):
//! 1. new backends are written before any slot refers to them;
//! 2. slots are written before slot 0 raises the count that exposes them;
//! 3. slot 0 is written before slots beyond the new count are removed;
//! 4. backends are removed only after no slot refers to them.
//!
//! Maglev tables (external frontends with `--lb-algorithm maglev`, see [`super::maglev`])
//! follow the same rules: a table's entries name backends that are already written
//! (after rule 1), a new table is written whole before slot 0 names it, a table that
//! slot 0 already names is rewritten entry by entry where the new backend set's table
//! differs from the old one's (both computed, never kept), and its backends are removed
//! only after (rule 4). A table index is freed only after slot 0 stopped naming it, and
//! like backend ids, indexes are not reused while free ones remain ahead.
//!
//! Slots are stable: a backend keeps its slot while it stays, a removed backend's
//! slot is refilled by an added one or by the last slot's backend, so one changed
//! endpoint costs a few writes however large the service is.
//!
//! Full maps: what is programmed stays programmed. Removals run first and free room;
//! then programmed frontends get room for their changes, then new ones, each group
//! by the owning Service's age ([`DesiredState::room_order`]), so the same objects
//! and map sizes always program the same frontends, before and after a restart. A
//! new frontend is programmed whole or not at all; a programmed one that grows past
//! the room keeps the backends it has that are still wanted and gets as many new ones
//! as fit (truncated). Frontends left out are kept in [`ProgrammedState::incomplete`]
//! and retried at every sync until they fit.
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use lb_common::{Svc4Value, SvcAction};

use super::{
    ServiceMaps,
    desired::{BackendKey, DesiredFrontend, DesiredState, FrontendKey, Scope},
    family::{Family, V4},
    maglev::{self, MaglevConfig, Table},
};
use crate::model::IpCidr;

/// One write to one family's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp<F: Family = V4> {
    PutBackend {
        id: u32,
        backend: F::Backend,
    },
    DeleteBackend {
        id: u32,
    },
    PutSvc {
        key: F::SvcKey,
        value: Svc4Value,
    },
    DeleteSvc {
        key: F::SvcKey,
    },
    /// An allowed source prefix of a frontend (LPM key: data and prefix length).
    PutSrcRange {
        key: F::SrcRangeKey,
        prefix_len: u32,
    },
    DeleteSrcRange {
        key: F::SrcRangeKey,
        prefix_len: u32,
    },
    /// A backend still serves a frontend with session affinity, in this slot.
    PutAffinityMatch {
        key: F::AffinityMatchKey,
        slot: u16,
    },
    DeleteAffinityMatch {
        key: F::AffinityMatchKey,
    },
    /// Entry `index` (0..M) of Maglev table `table` (1, 2, ...) names a backend.
    PutMaglev {
        table: u32,
        index: u32,
        backend_id: u32,
    },
}

/// A frontend as it is in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedFrontend {
    /// Slot 0.
    pub service: Svc4Value,
    /// Backend ids of slots 1..=count (index 0 is slot 1).
    pub slots: Vec<u32>,
    /// Allowed source prefixes (loadBalancerSourceRanges), sorted.
    pub source_ranges: Vec<IpCidr>,
    /// The Maglev table this frontend owns, 0 = none. Its content is the table of the
    /// slots' backends; slot 0 names it (`service.backend_id`). A slot 0 that names a
    /// table the frontend does not own (adopted from an agent with other flags) is
    /// rewritten by the next sync.
    pub maglev_table: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BackendEntry {
    id: u32,
    /// Number of slots (over all frontends) that refer to it.
    refs: u32,
}

/// Capacities the diff must stay within: the maps' max_entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Service map: one entry per frontend plus one per backend slot.
    pub svc_entries: usize,
    /// Backend map: distinct backends.
    pub backends: usize,
    /// Affinity match map: one per slot of a frontend with session affinity.
    pub affinity_matches: usize,
    /// Source range map: loadBalancerSourceRanges over all frontends.
    pub src_ranges: usize,
    /// The Maglev tables: how many there are room for, their size and seed; none with
    /// the random algorithm.
    pub maglev: MaglevConfig,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            svc_entries: lb_common::capacity::SVC4 as usize,
            backends: lb_common::capacity::BACKEND4 as usize,
            affinity_matches: lb_common::capacity::AFFINITY_MATCH4 as usize,
            src_ranges: lb_common::capacity::SRC_RANGE4 as usize,
            maglev: MaglevConfig::default(),
        }
    }
}

/// Why a wanted frontend is not (fully) in the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Incomplete {
    /// Not programmed, or (if it was programmed before) left as it was: the maps have
    /// no room for it.
    MapsFull,
    /// Programmed with `programmed` of its `wanted` backends: the maps had no room for
    /// the others.
    BackendsTruncated { programmed: usize, wanted: usize },
    /// Backends or source ranges of another address family than the frontend's (the
    /// plan never makes such a frontend: a family's frontends get that family's
    /// endpoints).
    AddressFamily,
}

impl Incomplete {
    /// The `reason` label of the not-programmed metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Incomplete::MapsFull => "maps_full",
            Incomplete::BackendsTruncated { .. } => "backends_truncated",
            Incomplete::AddressFamily => "address_family",
        }
    }
}

/// How many wanted frontends are not (fully) programmed, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IncompleteCounts {
    pub maps_full: usize,
    pub backends_truncated: usize,
    pub address_family: usize,
}

impl IncompleteCounts {
    /// The counts of two families' maps together.
    pub fn plus(self, other: IncompleteCounts) -> IncompleteCounts {
        IncompleteCounts {
            maps_full: self.maps_full + other.maps_full,
            backends_truncated: self.backends_truncated + other.backends_truncated,
            address_family: self.address_family + other.address_family,
        }
    }

    /// Whether the data path lacks something because the maps are too small.
    pub fn capacity_short(&self) -> bool {
        self.maps_full > 0 || self.backends_truncated > 0
    }
}

/// How full the maps the diff writes are (entries, not bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fill {
    pub used: Capacity,
    pub capacity: Capacity,
}

/// Mirror of what one family's maps hold, kept by the agent so a sync needs no map
/// reads. It programs the frontends of its family and ignores the others (the other
/// family's state programs them).
#[derive(Clone, Debug, Default)]
pub struct ProgrammedState<F: Family = V4> {
    frontends: HashMap<FrontendKey, ProgrammedFrontend>,
    backends: HashMap<BackendKey, BackendEntry>,
    backend_keys: HashMap<u32, BackendKey>,
    next_backend_id: u32,
    svc_entries: usize,
    /// Entries of the affinity match map: one per slot of a frontend with affinity.
    affinity_matches: usize,
    /// Entries of the source range map.
    src_ranges: usize,
    capacity: Capacity,
    /// Wanted frontends that are not (fully) programmed, retried at every sync.
    incomplete: BTreeMap<FrontendKey, Incomplete>,
    tables: TableIndexes,
    /// Frontends that want a Maglev table but found none free: they pick at random
    /// until one is freed.
    waiting_for_table: BTreeSet<FrontendKey>,
    family: std::marker::PhantomData<F>,
}

/// Maglev table indexes 1..=max: which are taken, and where the next search starts.
#[derive(Clone, Debug, Default)]
struct TableIndexes {
    taken: BTreeSet<u32>,
    next: u32,
}

impl TableIndexes {
    /// A free index of 1..=max, searching from after the last one handed out.
    fn allocate(&mut self, max: u32) -> Option<u32> {
        if self.taken.len() >= max as usize {
            return None;
        }
        let start = self.next.clamp(1, max.max(1));
        let index = (start..=max)
            .chain(1..start)
            .find(|i| !self.taken.contains(i))?;
        self.taken.insert(index);
        self.next = if index >= max { 1 } else { index + 1 };
        Some(index)
    }

    fn free(&mut self, index: u32) {
        self.taken.remove(&index);
    }
}

/// What a sync did (of one family's maps, or of both: [`SyncStats::merge`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub ops: usize,
    pub frontends_changed: usize,
    /// Frontends of this sync left as they were because the maps are full.
    pub skipped_full: Vec<FrontendKey>,
    /// Frontends of this sync programmed with fewer backends than wanted (full maps).
    pub truncated: Vec<FrontendKey>,
    /// Frontends with backends or source ranges of another address family than
    /// theirs, not programmed.
    pub skipped_family: Vec<FrontendKey>,
    /// Frontends that were incomplete before and are fully programmed now.
    pub completed: usize,
    /// Backends that left an internal-scope frontend (the socket hooks' translations),
    /// compared by address, port and protocol: connected sockets translated to that
    /// backend for that frontend are now stale. Per frontend: a backend that stays
    /// behind another frontend is listed only for the one it left.
    pub departed: Vec<(FrontendKey, BackendKey)>,
    /// External frontends that pick at random because no Maglev table is free.
    pub maglev_full: Vec<FrontendKey>,
    /// Of `ops`, the Maglev table entries written.
    pub maglev_entries: usize,
}

impl SyncStats {
    /// Adds what another family's sync did.
    pub fn merge(&mut self, other: SyncStats) {
        self.ops += other.ops;
        self.frontends_changed += other.frontends_changed;
        self.skipped_full.extend(other.skipped_full);
        self.truncated.extend(other.truncated);
        self.skipped_family.extend(other.skipped_family);
        self.completed += other.completed;
        self.departed.extend(other.departed);
        self.maglev_full.extend(other.maglev_full);
        self.maglev_entries += other.maglev_entries;
    }
}

impl<F: Family> ProgrammedState<F> {
    pub fn with_capacity(capacity: Capacity) -> Self {
        Self {
            capacity,
            next_backend_id: 1,
            ..Default::default()
        }
    }

    pub fn frontends(&self) -> &HashMap<FrontendKey, ProgrammedFrontend> {
        &self.frontends
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    pub fn svc_entries(&self) -> usize {
        self.svc_entries
    }

    pub fn backend(&self, id: u32) -> Option<BackendKey> {
        self.backend_keys.get(&id).copied()
    }

    /// Wanted frontends that are not (fully) programmed, and why.
    pub fn incomplete(&self) -> &BTreeMap<FrontendKey, Incomplete> {
        &self.incomplete
    }

    pub fn incomplete_counts(&self) -> IncompleteCounts {
        let mut counts = IncompleteCounts::default();
        for why in self.incomplete.values() {
            match why {
                Incomplete::MapsFull => counts.maps_full += 1,
                Incomplete::BackendsTruncated { .. } => counts.backends_truncated += 1,
                Incomplete::AddressFamily => counts.address_family += 1,
            }
        }
        counts
    }

    /// Entries used and the capacity, per map (for the Maglev map: `used.maglev`'s
    /// `max_tables` is the number of tables in use).
    pub fn fill(&self) -> Fill {
        Fill {
            used: Capacity {
                svc_entries: self.svc_entries,
                backends: self.backends.len(),
                affinity_matches: self.affinity_matches,
                src_ranges: self.src_ranges,
                maglev: MaglevConfig {
                    max_tables: u32::try_from(self.tables.taken.len()).unwrap_or(u32::MAX),
                    ..self.capacity.maglev
                },
            },
            capacity: self.capacity,
        }
    }

    /// Rebuilds the mirror from the maps (a restarted agent adopting the pinned maps).
    /// Returns the state and the ops that remove what no reader can reach: slots
    /// beyond a count or of missing frontends, unreferenced or duplicated backends.
    /// A frontend with a missing slot is adopted with no slots, so the next sync
    /// rewrites it whole.
    pub fn adopt<M: ServiceMaps<F> + ?Sized>(
        maps: &M,
        capacity: Capacity,
    ) -> Result<(Self, Vec<MapOp<F>>), M::Error> {
        let mut state = Self::with_capacity(capacity);
        let entries: HashMap<F::SvcKey, Svc4Value> = maps.dump_services()?.into_iter().collect();
        let mut backends = maps.dump_backends()?;
        backends.sort_by_key(|(id, _)| *id);

        // Canonical id per backend: the lowest; a duplicate id is dropped.
        let mut dropped_backends = Vec::new();
        for (id, be) in &backends {
            let Some(key) =
                F::backend_key(be).filter(|k| *id != 0 && !state.backends.contains_key(k))
            else {
                dropped_backends.push(*id);
                continue;
            };
            state
                .backends
                .insert(key, BackendEntry { id: *id, refs: 0 });
            state.backend_keys.insert(*id, key);
        }

        let mut reachable: HashSet<F::SvcKey> = HashSet::new();
        for (key, value) in entries.iter().filter(|(k, _)| F::slot_of(k) == 0) {
            // An entry this agent would not write (unknown protocol or scope) is
            // unreachable for it: removed below.
            let Some(fkey) = F::frontend_key(key) else {
                continue;
            };
            reachable.insert(*key);
            let slots: Option<Vec<u32>> = (1..=value.count)
                .map(|slot| {
                    entries
                        .get(&F::with_slot(key, slot))
                        .map(|s| s.backend_id)
                        .filter(|id| state.backend_keys.contains_key(id))
                })
                .collect();
            let (service, slots) = match slots {
                Some(slots) => {
                    reachable.extend((1..=value.count).map(|slot| F::with_slot(key, slot)));
                    (*value, slots)
                }
                None => (Svc4Value { count: 0, ..*value }, Vec::new()),
            };
            for id in &slots {
                if let Some(entry) = state
                    .backend_keys
                    .get(id)
                    .and_then(|k| state.backends.get_mut(k))
                {
                    entry.refs += 1;
                }
            }
            state.svc_entries += 1 + slots.len();
            state.frontends.insert(
                fkey,
                ProgrammedFrontend {
                    service,
                    slots,
                    source_ranges: Vec::new(),
                    maglev_table: 0,
                },
            );
        }
        // Source ranges belong to their external frontend; others are unreachable.
        let mut stray_ranges = Vec::new();
        for (rk, prefix_len) in maps.dump_src_ranges()? {
            let owner = F::src_range_entry(&rk, prefix_len)
                .and_then(|(fkey, cidr)| Some((state.frontends.get_mut(&fkey)?, cidr)));
            match owner {
                Some((fe, cidr)) => {
                    fe.source_ranges.push(cidr);
                    state.src_ranges += 1;
                }
                None => stray_ranges.push(MapOp::DeleteSrcRange {
                    key: rk,
                    prefix_len,
                }),
            }
        }
        for fe in state.frontends.values_mut() {
            fe.source_ranges.sort();
        }

        // Affinity matches: the ones that say what the adopted slots say are kept; the
        // others go, and a frontend with affinity gets the ones it lacks.
        let mut matches: HashMap<F::AffinityMatchKey, u16> =
            maps.dump_affinity_matches()?.into_iter().collect();
        let mut match_ops = Vec::new();
        for (fkey, fe) in &state.frontends {
            if fe.service.affinity_timeout_s == 0 {
                continue;
            }
            let Some(svc_key) = F::svc_key(fkey) else {
                continue;
            };
            for (i, id) in fe.slots.iter().enumerate() {
                let key = F::affinity_match(&svc_key, *id);
                if matches.remove(&key) != Some(slot_number(i)) {
                    match_ops.push(MapOp::PutAffinityMatch {
                        key,
                        slot: slot_number(i),
                    });
                }
            }
            state.affinity_matches += fe.slots.len();
        }
        let mut stray_matches: Vec<F::AffinityMatchKey> = matches.into_keys().collect();
        stray_matches.sort();
        let maglev_repairs = state.adopt_maglev_tables(maps)?;

        let mut cleanup: Vec<MapOp<F>> = entries
            .keys()
            .filter(|k| !reachable.contains(*k))
            .map(|key| MapOp::DeleteSvc { key: *key })
            .collect();
        let unreferenced: Vec<u32> = state
            .backends
            .values()
            .filter(|e| e.refs == 0)
            .map(|e| e.id)
            .collect();
        for id in unreferenced {
            if let Some(key) = state.backend_keys.remove(&id) {
                state.backends.remove(&key);
            }
            dropped_backends.push(id);
        }
        cleanup.extend(stray_ranges);
        cleanup.extend(
            stray_matches
                .into_iter()
                .map(|key| MapOp::DeleteAffinityMatch { key }),
        );
        cleanup.extend(match_ops);
        cleanup.extend(maglev_repairs);
        // Backends go after the slots (and table entries) that might still name them.
        cleanup.extend(
            dropped_backends
                .into_iter()
                .map(|id| MapOp::DeleteBackend { id }),
        );
        let max_id = backends.iter().map(|(id, _)| *id).max().unwrap_or(0);
        state.next_backend_id = max_id.wrapping_add(1).max(1);
        Ok((state, cleanup))
    }

    /// Takes over the Maglev tables the adopted frontends' slot 0 names: a frontend
    /// owns its table when this agent would give it one (Maglev on, an external
    /// frontend that forwards, the index within the configured tables and named by no
    /// other frontend). An owned table is compared entry by entry with the table of
    /// the frontend's backends under this agent's size and seed, and the ops that
    /// repair it are returned (entries naming backends the frontend has: they exist).
    /// A frontend that names a table it cannot own keeps that value in the mirror, so
    /// the next sync rewrites its slot 0.
    fn adopt_maglev_tables<M: ServiceMaps<F> + ?Sized>(
        &mut self,
        maps: &M,
    ) -> Result<Vec<MapOp<F>>, M::Error> {
        let config = self.capacity.maglev;
        let mut repairs = Vec::new();
        let mut keys: Vec<FrontendKey> = self.frontends.keys().copied().collect();
        keys.sort();
        for key in keys {
            let Some(fe) = self.frontends.get(&key) else {
                continue;
            };
            let table = fe.service.backend_id;
            let forwards = SvcAction::from_u8(fe.service.action) == Some(SvcAction::Forward);
            if table == 0
                || table > config.tables()
                || self.tables.taken.contains(&table)
                || !uses_table(&config, &key, forwards, fe.slots.len())
            {
                continue;
            }
            let Some(have) = maps.read_maglev_table(table)? else {
                continue;
            };
            if have.len() != config.table_size as usize {
                continue;
            }
            let ids = fe.slots.clone();
            let want = self.table_ids(&ids, &config);
            repairs.extend(table_writes(table, Some(have.as_slice()), &want));
            self.tables.taken.insert(table);
            self.tables.next = if table >= config.tables() {
                1
            } else {
                table + 1
            };
            if let Some(fe) = self.frontends.get_mut(&key) {
                fe.maglev_table = table;
            }
        }
        Ok(repairs)
    }

    /// The table of the backends with these ids, entry by entry as backend ids.
    fn table_ids(&self, ids: &[u32], config: &MaglevConfig) -> Vec<u32> {
        let keyed: Vec<(u32, BackendKey)> = ids
            .iter()
            .filter_map(|id| self.backend_keys.get(id).map(|k| (*id, *k)))
            .collect();
        let backends: Vec<BackendKey> = keyed.iter().map(|(_, k)| *k).collect();
        Table::build(&backends, config.table_size, config.seed)
            .entries()
            .map(|i| keyed[i].0)
            .collect()
    }

    /// Maglev tables in use.
    pub fn maglev_tables(&self) -> usize {
        self.tables.taken.len()
    }

    /// Computes the ops that turn the programmed state into `desired`, updating the
    /// mirror as if they were applied. Frontends that no longer exist are removed.
    pub fn sync_all(&mut self, desired: &DesiredState) -> (Vec<MapOp<F>>, SyncStats) {
        let mut keys: Vec<FrontendKey> = self
            .frontends
            .keys()
            .chain(desired.frontends.keys())
            .copied()
            .collect();
        keys.sort();
        keys.dedup();
        self.sync_keys(desired, &keys)
    }

    /// Like [`Self::sync_all`] for the given frontends only (an incremental update);
    /// frontends that did not fit earlier are retried too.
    pub fn sync_keys(
        &mut self,
        desired: &DesiredState,
        keys: &[FrontendKey],
    ) -> (Vec<MapOp<F>>, SyncStats) {
        let mut ops = Vec::new();
        let mut released = Vec::new();
        let mut stats = SyncStats::default();
        let mut work: Vec<FrontendKey> = keys.to_vec();
        work.extend(
            self.incomplete
                .iter()
                .filter(|(_, why)| **why != Incomplete::AddressFamily)
                .map(|(key, _)| *key),
        );
        // The other family's frontends are the other family's maps' business.
        work.retain(|key| F::svc_key(key).is_some());
        work.sort();
        work.dedup();
        // Removals first: they free room. Then the frontends already programmed, then
        // new ones, each by the room order.
        let (removals, mut updates): (Vec<FrontendKey>, Vec<FrontendKey>) = work
            .into_iter()
            .partition(|k| !desired.frontends.contains_key(k));
        updates.sort_by(|a, b| {
            let is_new = |k: &FrontendKey| !self.frontends.contains_key(k);
            (is_new(a), desired.room_order(a)).cmp(&(is_new(b), desired.room_order(b)))
        });
        let free_tables = |st: &Self| {
            (st.capacity.maglev.tables() as usize).saturating_sub(st.tables.taken.len())
        };
        let mut touched: Vec<FrontendKey> = Vec::new();
        let mut changed: HashSet<FrontendKey> = HashSet::new();
        let mut queue: Vec<FrontendKey> = removals.into_iter().chain(updates).collect();
        let mut retried: HashSet<FrontendKey> = HashSet::new();
        while !queue.is_empty() {
            for key in std::mem::take(&mut queue) {
                let before = ops.len();
                let socket_backends = self.socket_backends(&key);
                let outcome =
                    self.sync_frontend(key, desired.frontends.get(&key), &mut ops, &mut released);
                let was_incomplete = self.incomplete.contains_key(&key);
                let now = match outcome {
                    Ok(Outcome::Complete) => None,
                    Ok(Outcome::Truncated { programmed, wanted }) => {
                        stats.truncated.push(key);
                        Some(Incomplete::BackendsTruncated { programmed, wanted })
                    }
                    Err(Skip::Full) => {
                        stats.skipped_full.push(key);
                        Some(Incomplete::MapsFull)
                    }
                    Err(Skip::Family) => {
                        stats.skipped_family.push(key);
                        Some(Incomplete::AddressFamily)
                    }
                };
                match now {
                    Some(why) if desired.frontends.contains_key(&key) => {
                        self.incomplete.insert(key, why);
                    }
                    _ => {
                        if was_incomplete && desired.frontends.contains_key(&key) {
                            stats.completed += 1;
                        }
                        self.incomplete.remove(&key);
                    }
                }
                if let Some(old) = socket_backends {
                    self.note_departed(key, old, &mut stats.departed);
                }
                if ops.len() > before && changed.insert(key) {
                    stats.frontends_changed += 1;
                }
                touched.push(key);
            }
            // A frontend waiting for a Maglev table gets one as soon as one is free
            // (freed in this batch, or earlier while it was not touched); once per
            // batch each.
            let free = free_tables(self);
            queue = self
                .waiting_for_table
                .iter()
                .copied()
                .filter(|k| desired.frontends.contains_key(k) && !retried.contains(k))
                .take(free)
                .collect();
            retried.extend(queue.iter().copied());
        }
        touched.sort();
        touched.dedup();
        stats.maglev_full = touched
            .into_iter()
            .filter(|k| self.waiting_for_table.contains(k))
            .collect();
        stats.maglev_entries = ops
            .iter()
            .filter(|op| matches!(op, MapOp::PutMaglev { .. }))
            .count();
        for id in released {
            // Released earlier in this batch but taken again by another frontend?
            let still_used = self
                .backend_keys
                .get(&id)
                .and_then(|k| self.backends.get(k))
                .is_some_and(|e| e.refs > 0);
            if !still_used {
                if let Some(key) = self.backend_keys.remove(&id) {
                    self.backends.remove(&key);
                }
                ops.push(MapOp::DeleteBackend { id });
            }
        }
        stats.ops = ops.len();
        (ops, stats)
    }

    fn sync_frontend(
        &mut self,
        key: FrontendKey,
        desired: Option<&DesiredFrontend>,
        ops: &mut Vec<MapOp<F>>,
        released: &mut Vec<u32>,
    ) -> Result<Outcome, Skip> {
        let svc_key = F::svc_key(&key).ok_or(Skip::Family)?;
        let Some(desired) = desired else {
            self.waiting_for_table.remove(&key);
            if let Some(old) = self.frontends.remove(&key) {
                // Affinities to its backends end first; then slot 0: new readers stop
                // at once; then the slots and ranges.
                if old.service.affinity_timeout_s != 0 {
                    for id in &old.slots {
                        ops.push(MapOp::DeleteAffinityMatch {
                            key: F::affinity_match(&svc_key, *id),
                        });
                    }
                    self.affinity_matches -= old.slots.len();
                }
                ops.push(MapOp::DeleteSvc { key: svc_key });
                // Its table is named by no slot 0 any more.
                if old.maglev_table != 0 {
                    self.tables.free(old.maglev_table);
                }
                for (i, id) in old.slots.iter().enumerate() {
                    ops.push(MapOp::DeleteSvc {
                        key: F::with_slot(&svc_key, slot_number(i)),
                    });
                    self.release(*id, released);
                }
                for cidr in &old.source_ranges {
                    ops.extend(src_range_op(&svc_key, cidr, false));
                }
                self.svc_entries -= 1 + old.slots.len();
                self.src_ranges -= old.source_ranges.len();
            }
            return Ok(Outcome::Complete);
        };

        let all_wanted: &[BackendKey] = match desired.action {
            SvcAction::Forward => {
                &desired.backends[..desired.backends.len().min(u16::MAX as usize)]
            }
            SvcAction::Reject | SvcAction::Drop => &[],
        };
        // Backends of another family than the frontend cannot be in its map.
        if all_wanted.iter().any(|b| F::backend(b).is_none())
            || desired
                .source_ranges
                .iter()
                .any(|c| F::src_range(&svc_key, c).is_none())
        {
            return Err(Skip::Family);
        }
        let old = self.frontends.get(&key).cloned();
        let old_slots: &[u32] = old.as_ref().map_or(&[], |o| &o.slots);
        let old_matches = match &old {
            Some(o) if o.service.affinity_timeout_s != 0 => o.slots.len(),
            _ => 0,
        };
        let affinity = desired.affinity_timeout_s != 0;

        // Room check before touching anything: entries added and new backends.
        let old_ranges_len = old.as_ref().map_or(0, |o| o.source_ranges.len());
        if self.src_ranges - old_ranges_len + desired.source_ranges.len() > self.capacity.src_ranges
        {
            return Err(Skip::Full);
        }
        let mut outcome = Outcome::Complete;
        let wanted: Cow<'_, [BackendKey]> = if self.fits(old.as_ref(), all_wanted, affinity) {
            Cow::Borrowed(all_wanted)
        } else {
            let Some(old) = &old else {
                return Err(Skip::Full);
            };
            let trimmed = self.trim_to_room(old, all_wanted, affinity);
            outcome = Outcome::Truncated {
                programmed: trimmed.len(),
                wanted: all_wanted.len(),
            };
            Cow::Owned(trimmed)
        };
        let wanted: &[BackendKey] = &wanted;
        let new_matches = if affinity { wanted.len() } else { 0 };
        let first_op = ops.len();

        let new_count = wanted.len();
        let wanted_set: HashSet<BackendKey> = wanted.iter().copied().collect();
        let mut slots: Vec<Option<u32>> = old_slots.iter().map(|id| Some(*id)).collect();
        slots.resize(new_count.max(slots.len()), None);

        // Which wanted backends already sit in a slot that survives (1..=new_count)?
        let mut placed: HashSet<BackendKey> = HashSet::new();
        for slot in slots.iter_mut().take(new_count) {
            let keep = slot
                .and_then(|id| self.backend_keys.get(&id).copied())
                .filter(|b| wanted_set.contains(b) && !placed.contains(b));
            match keep {
                Some(b) => {
                    placed.insert(b);
                }
                None => *slot = None,
            }
        }
        let mut needed = wanted.iter().filter(|b| !placed.contains(b));

        // Rule 1: backends before the slots that refer to them.
        let mut slot_writes = Vec::new();
        for (i, slot) in slots.iter_mut().take(new_count).enumerate() {
            if slot.is_some() {
                continue;
            }
            let Some(backend) = needed.next() else { break };
            let id = self.acquire(*backend, ops);
            *slot = Some(id);
            slot_writes.push(MapOp::PutSvc {
                key: F::with_slot(&svc_key, slot_number(i)),
                value: Svc4Value::slot(id),
            });
        }
        // Release what left the surviving slots (and everything beyond the new count).
        for (i, old_id) in old_slots.iter().enumerate() {
            let survives = i < new_count && slots[i] == Some(*old_id);
            if !survives {
                self.release(*old_id, released);
            }
        }
        // Affinity matches say which slot holds each backend of the frontend. Those
        // that end or move are removed before any slot changes (first in this
        // frontend's ops), and the new or moved ones written once their slots are: a
        // reader following a match only ever finds the backend it names.
        let final_slots: Vec<Option<u32>> = slots.iter().take(new_count).copied().collect();
        let (match_deletes, match_puts) = affinity_changes(
            &svc_key,
            (old_matches > 0).then_some(old_slots),
            (desired.affinity_timeout_s != 0).then_some(&final_slots[..]),
        );
        ops.splice(first_op..first_op, match_deletes);
        // Rule 2: slots (and allowed sources) before slot 0 that exposes them.
        ops.extend(slot_writes);
        ops.extend(match_puts);
        let old_ranges: &[IpCidr] = old.as_ref().map_or(&[], |o| &o.source_ranges);
        for cidr in desired
            .source_ranges
            .iter()
            .filter(|c| !old_ranges.contains(c))
        {
            ops.extend(src_range_op(&svc_key, cidr, true));
        }
        // The Maglev table: its entries name backends written above, and are written
        // before slot 0 names a new table.
        let final_ids: Vec<u32> = final_slots.iter().flatten().copied().collect();
        let old_table = old.as_ref().map_or(0, |o| o.maglev_table);
        let table = self.sync_table(
            &key,
            old_table,
            old_slots,
            &final_ids,
            uses_table(
                &self.capacity.maglev,
                &key,
                desired.action == SvcAction::Forward,
                new_count,
            ),
            ops,
        );
        let service = Svc4Value::service(
            desired.action,
            new_count as u16,
            desired.affinity_timeout_s,
            desired.flags,
        )
        .with_maglev_table(table);
        if old.as_ref().map(|o| o.service) != Some(service) {
            ops.push(MapOp::PutSvc {
                key: svc_key,
                value: service,
            });
        }
        // A table slot 0 no longer names is free.
        if old_table != 0 && old_table != table {
            self.tables.free(old_table);
        }
        // Rule 3: slots beyond the new count (and sources no longer allowed) go after.
        for i in new_count..old_slots.len() {
            ops.push(MapOp::DeleteSvc {
                key: F::with_slot(&svc_key, slot_number(i)),
            });
        }
        for cidr in old_ranges
            .iter()
            .filter(|c| !desired.source_ranges.contains(c))
        {
            ops.extend(src_range_op(&svc_key, cidr, false));
        }
        slots.truncate(new_count);
        let slots: Vec<u32> = slots.into_iter().flatten().collect();
        self.svc_entries =
            self.svc_entries + 1 + slots.len() - old.as_ref().map_or(0, |o| 1 + o.slots.len());
        self.affinity_matches = self.affinity_matches + new_matches - old_matches;
        self.src_ranges = self.src_ranges + desired.source_ranges.len() - old_ranges_len;
        self.frontends.insert(
            key,
            ProgrammedFrontend {
                service,
                slots,
                source_ranges: desired.source_ranges.clone(),
                maglev_table: table,
            },
        );
        Ok(outcome)
    }

    /// Whether the frontend with `wanted` backends fits where `old` was.
    fn fits(
        &self,
        old: Option<&ProgrammedFrontend>,
        wanted: &[BackendKey],
        affinity: bool,
    ) -> bool {
        let old_entries = old.map_or(0, |o| 1 + o.slots.len());
        let old_matches = old.map_or(0, |o| {
            if o.service.affinity_timeout_s != 0 {
                o.slots.len()
            } else {
                0
            }
        });
        let new_backends = wanted
            .iter()
            .filter(|b| !self.backends.contains_key(b))
            .count();
        let matches = if affinity { wanted.len() } else { 0 };
        self.svc_entries - old_entries + 1 + wanted.len() <= self.capacity.svc_entries
            && self.backends.len() + new_backends <= self.capacity.backends
            && self.affinity_matches - old_matches + matches <= self.capacity.affinity_matches
    }

    /// The backends of `wanted` a programmed frontend gets when not all fit: first the
    /// ones it already has (in their slots' order: nothing moves), then other wanted
    /// ones already in the backend map, then new ones while the backend map has room;
    /// as many as its share of the service (and affinity match) map allows. Its
    /// current entries always fit, so this never needs more room than it has.
    fn trim_to_room(
        &self,
        old: &ProgrammedFrontend,
        wanted: &[BackendKey],
        affinity: bool,
    ) -> Vec<BackendKey> {
        let others = self.svc_entries - (1 + old.slots.len());
        let mut max_slots = self.capacity.svc_entries.saturating_sub(others + 1);
        if affinity {
            let old_matches = if old.service.affinity_timeout_s != 0 {
                old.slots.len()
            } else {
                0
            };
            let others = self.affinity_matches - old_matches;
            max_slots = max_slots.min(self.capacity.affinity_matches.saturating_sub(others));
        }
        let wanted_set: HashSet<&BackendKey> = wanted.iter().collect();
        let mut out: Vec<BackendKey> = Vec::new();
        let mut taken: HashSet<BackendKey> = HashSet::new();
        let have: Vec<BackendKey> = old
            .slots
            .iter()
            .filter_map(|id| self.backend_keys.get(id).copied())
            .filter(|b| wanted_set.contains(b))
            .collect();
        let known = wanted.iter().filter(|b| self.backends.contains_key(b));
        for b in have.into_iter().chain(known.copied()) {
            if out.len() < max_slots && taken.insert(b) {
                out.push(b);
            }
        }
        let mut backend_room = self.capacity.backends.saturating_sub(self.backends.len());
        for b in wanted.iter().filter(|b| !self.backends.contains_key(b)) {
            if out.len() >= max_slots || backend_room == 0 {
                break;
            }
            if taken.insert(*b) {
                out.push(*b);
                backend_room -= 1;
            }
        }
        out
    }

    /// The Maglev table of frontend `key` after this sync (0: none), with the ops that
    /// write it: all entries of a new table, the entries that differ between the old
    /// and the new backends' tables of one it keeps. A frontend that wants a table
    /// and finds none free waits for one (and picks at random meanwhile).
    fn sync_table(
        &mut self,
        key: &FrontendKey,
        old_table: u32,
        old_ids: &[u32],
        new_ids: &[u32],
        wants: bool,
        ops: &mut Vec<MapOp<F>>,
    ) -> u32 {
        if !wants {
            self.waiting_for_table.remove(key);
            return 0;
        }
        let config = self.capacity.maglev;
        let table = if old_table != 0 {
            old_table
        } else {
            match self.tables.allocate(config.tables()) {
                Some(t) => t,
                None => {
                    self.waiting_for_table.insert(*key);
                    return 0;
                }
            }
        };
        self.waiting_for_table.remove(key);
        let want = self.table_ids(new_ids, &config);
        if old_table == 0 {
            ops.extend(table_writes(table, None, &want));
            return table;
        }
        let (mut before, mut after) = (old_ids.to_vec(), new_ids.to_vec());
        before.sort_unstable();
        after.sort_unstable();
        if before != after {
            let have = self.table_ids(old_ids, &config);
            ops.extend(table_writes(table, Some(have.as_slice()), &want));
        }
        table
    }

    /// The backends of an internal-scope frontend with a protocol (whose connected
    /// sockets hold their translation), for [`SyncStats::departed`]; None for others.
    fn socket_backends(&self, key: &FrontendKey) -> Option<Vec<BackendKey>> {
        if key.scope != Scope::Internal || key.is_wildcard() {
            return None;
        }
        let programmed = self.frontends.get(key)?;
        Some(
            programmed
                .slots
                .iter()
                .filter_map(|id| self.backend_keys.get(id).copied())
                .collect(),
        )
    }

    /// Adds to `departed` the backends of `old` the frontend `key` no longer has.
    fn note_departed(
        &self,
        key: FrontendKey,
        old: Vec<BackendKey>,
        departed: &mut Vec<(FrontendKey, BackendKey)>,
    ) {
        let now: HashSet<_> = self
            .socket_backends(&key)
            .unwrap_or_default()
            .into_iter()
            .map(|b| (b.addr, b.protocol))
            .collect();
        departed.extend(
            old.into_iter()
                .filter(|b| !now.contains(&(b.addr, b.protocol)))
                .map(|b| (key, b)),
        );
    }

    /// The id of `backend`, written to the backend map when new. The caller checked
    /// that the backend has an encoding in the map.
    fn acquire(&mut self, backend: BackendKey, ops: &mut Vec<MapOp<F>>) -> u32 {
        if let Some(entry) = self.backends.get_mut(&backend) {
            entry.refs += 1;
            return entry.id;
        }
        let id = self.allocate_id();
        self.backends.insert(backend, BackendEntry { id, refs: 1 });
        self.backend_keys.insert(id, backend);
        if let Some(value) = F::backend(&backend) {
            ops.push(MapOp::PutBackend { id, backend: value });
        }
        id
    }

    fn release(&mut self, id: u32, released: &mut Vec<u32>) {
        if let Some(entry) = self
            .backend_keys
            .get(&id)
            .and_then(|k| self.backends.get_mut(k))
        {
            entry.refs = entry.refs.saturating_sub(1);
            if entry.refs == 0 {
                released.push(id);
            }
        }
    }

    /// Ids are not reused while free ones remain ahead: a UDP socket's remembered
    /// backend id then never silently names another backend.
    fn allocate_id(&mut self) -> u32 {
        loop {
            let id = self.next_backend_id;
            self.next_backend_id = self.next_backend_id.wrapping_add(1).max(1);
            if id != 0 && !self.backend_keys.contains_key(&id) {
                return id;
            }
        }
    }
}

/// The affinity match ops of a frontend going from `old` slots to `new` ones (each
/// `None` when the frontend has no affinity there): (deletes, puts). A backend that
/// stays in its slot needs none.
fn affinity_changes<F: Family>(
    svc_key: &F::SvcKey,
    old: Option<&[u32]>,
    new: Option<&[Option<u32>]>,
) -> (Vec<MapOp<F>>, Vec<MapOp<F>>) {
    let old: HashMap<u32, u16> = old
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, slot_number(i)))
        .collect();
    let new: HashMap<u32, u16> = new
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, id)| id.map(|id| (id, slot_number(i))))
        .collect();
    let mut deletes: Vec<MapOp<F>> = old
        .iter()
        .filter(|(id, slot)| new.get(id) != Some(slot))
        .map(|(id, _)| MapOp::DeleteAffinityMatch {
            key: F::affinity_match(svc_key, *id),
        })
        .collect();
    let mut puts: Vec<MapOp<F>> = new
        .iter()
        .filter(|(id, slot)| old.get(id) != Some(slot))
        .map(|(id, slot)| MapOp::PutAffinityMatch {
            key: F::affinity_match(svc_key, *id),
            slot: *slot,
        })
        .collect();
    // A deterministic order (the maps do not care, tests and op counts do).
    let order = |op: &MapOp<F>| match op {
        MapOp::PutAffinityMatch { key, .. } | MapOp::DeleteAffinityMatch { key } => {
            F::affinity_match_parts(key).1
        }
        _ => 0,
    };
    deletes.sort_by_key(order);
    puts.sort_by_key(order);
    (deletes, puts)
}

/// Whether frontend `key` has a Maglev table (see [`maglev::has_table`]) and there
/// are tables at all.
fn uses_table(config: &MaglevConfig, key: &FrontendKey, forwards: bool, backends: usize) -> bool {
    config.tables() > 0
        && maglev::has_table(
            config.algorithm,
            key.scope == Scope::External,
            forwards && backends > 0,
        )
}

/// The ops that make table `table` hold `want`: every entry, or those that differ from
/// `have` (what it holds now).
fn table_writes<F: Family>(table: u32, have: Option<&[u32]>, want: &[u32]) -> Vec<MapOp<F>> {
    want.iter()
        .enumerate()
        .filter(|(i, id)| have.and_then(|h| h.get(*i)) != Some(*id))
        .map(|(i, id)| MapOp::PutMaglev {
            table,
            index: i as u32,
            backend_id: *id,
        })
        .collect()
}

/// What a sync of one frontend did.
enum Outcome {
    /// It is in the maps as wanted (or removed, as wanted).
    Complete,
    /// In the maps with `programmed` of its `wanted` backends.
    Truncated { programmed: usize, wanted: usize },
}

/// Why a frontend was left as it was.
enum Skip {
    /// The maps have no room for this frontend's new entries.
    Full,
    /// Backends or source ranges of the other address family.
    Family,
}

/// The allowed-source entry of `cidr` for the frontend `svc_key` (the caller checked
/// that it has one).
fn src_range_op<F: Family>(svc_key: &F::SvcKey, cidr: &IpCidr, put: bool) -> Option<MapOp<F>> {
    let (key, prefix_len) = F::src_range(svc_key, cidr)?;
    Some(if put {
        MapOp::PutSrcRange { key, prefix_len }
    } else {
        MapOp::DeleteSrcRange { key, prefix_len }
    })
}

fn slot_number(index: usize) -> u16 {
    // Slots are bounded by u16::MAX backends per frontend (see sync_frontend).
    u16::try_from(index + 1).unwrap_or(u16::MAX)
}

/// Applies ops in order; stops at the first failure (the caller re-adopts the maps).
pub fn apply_ops<F: Family, M: ServiceMaps<F> + ?Sized>(
    maps: &mut M,
    ops: &[MapOp<F>],
) -> Result<(), M::Error> {
    for op in ops {
        maps.apply(op)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        net::{Ipv4Addr, SocketAddr},
    };

    use lb_common::{IPPROTO_TCP, SVC_FLAG_WILDCARD};

    use super::*;
    use crate::maps::v4;
    use crate::{
        maps::{ip_to_map, port_to_map, twin::MemoryMaps},
        model::Protocol,
        plan::FrontendAddr,
    };
    use lb_common::{Backend4, Svc4Key};

    fn be(last: u8, port: u16) -> BackendKey {
        BackendKey {
            local: false,
            addr: SocketAddr::new(Ipv4Addr::new(10, 244, 0, last).into(), port),
            protocol: Protocol::Tcp,
        }
    }

    fn fe(last: u8, port: u16) -> FrontendKey {
        FrontendKey::internal(FrontendAddr {
            ip: Ipv4Addr::new(10, 96, 0, last).into(),
            port,
            protocol: Protocol::Tcp,
        })
    }

    fn v4(key: &FrontendKey) -> Ipv4Addr {
        match key.ip {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => panic!("an IPv4 frontend"),
        }
    }

    fn forward(backends: &[BackendKey]) -> DesiredFrontend {
        let mut backends = backends.to_vec();
        backends.sort();
        DesiredFrontend {
            source_ranges: vec![],
            action: SvcAction::Forward,
            backends,
            affinity_timeout_s: 0,
            flags: 0,
        }
    }

    fn reject() -> DesiredFrontend {
        DesiredFrontend {
            source_ranges: vec![],
            action: SvcAction::Reject,
            backends: vec![],
            affinity_timeout_s: 0,
            flags: 0,
        }
    }

    fn desired(entries: &[(FrontendKey, DesiredFrontend)]) -> DesiredState {
        DesiredState {
            frontends: entries.iter().cloned().collect(),
            ..Default::default()
        }
    }

    /// `entries` owned by Services created in the given order (the first oldest).
    fn desired_by_age(entries: &[(FrontendKey, DesiredFrontend)]) -> DesiredState {
        let mut d = desired(entries);
        for (i, (key, _)) in entries.iter().enumerate() {
            let mut svc = crate::builders::service("demo", &format!("svc-{i}"), "10.96.0.1", &[]);
            svc.created = Some(
                format!("2026-01-01T00:00:{i:02}Z")
                    .parse()
                    .expect("a timestamp"),
            );
            d.owners.insert(*key, crate::plan::Claimant::of(&svc));
        }
        d
    }

    /// Applies ops one at a time, checking the reader invariant after each.
    fn apply_checked(maps: &mut MemoryMaps, ops: &[MapOp]) {
        for op in ops {
            maps.apply(op).unwrap();
            if let Err(e) = maps.reader_view_after(op) {
                panic!("after {op:?} a reader would see a half-written service: {e}");
            }
        }
    }

    /// The maps hold exactly the desired state.
    fn assert_maps_match(maps: &MemoryMaps, want: &DesiredState) {
        let (adopted, cleanup) = ProgrammedState::adopt(maps, Capacity::default()).unwrap();
        assert!(
            cleanup.is_empty(),
            "maps hold unreachable entries: {cleanup:?}"
        );
        let mut got: Vec<(FrontendKey, SvcAction, Vec<BackendKey>)> = adopted
            .frontends()
            .iter()
            .map(|(k, f)| {
                let mut b: Vec<BackendKey> = f
                    .slots
                    .iter()
                    .map(|id| adopted.backend(*id).unwrap())
                    .collect();
                b.sort();
                (*k, SvcAction::from_u8(f.service.action).unwrap(), b)
            })
            .collect();
        got.sort_by_key(|g| g.0);
        let mut expected: Vec<_> = want
            .frontends
            .iter()
            .map(|(k, d)| (*k, d.action, d.backends.clone()))
            .collect();
        expected.sort_by_key(|e| e.0);
        assert_eq!(got, expected);
        // No orphan backends.
        assert_eq!(adopted.backend_count(), maps.backends.len());
    }

    fn sync(state: &mut ProgrammedState, maps: &mut MemoryMaps, want: &DesiredState) -> SyncStats {
        let (ops, stats) = state.sync_all(want);
        apply_checked(maps, &ops);
        assert_maps_match(maps, want);
        stats
    }

    #[test]
    fn cold_program_then_noop() {
        let mut st = ProgrammedState::with_capacity(Capacity::default());
        let mut maps = MemoryMaps::default();
        let want = desired(&[
            (
                fe(10, 80),
                forward(&[be(1, 8080), be(2, 8080), be(3, 8080)]),
            ),
            (
                FrontendKey::wildcard(Ipv4Addr::new(10, 96, 0, 10).into()),
                reject(),
            ),
        ]);
        let stats = sync(&mut st, &mut maps, &want);
        // 3 backends + 3 slots + slot 0 + wildcard
        assert_eq!(stats.ops, 8);
        let stats = sync(&mut st, &mut maps, &want);
        assert_eq!(stats.ops, 0, "an unchanged state writes nothing");
    }

    #[test]
    fn one_endpoint_change_is_a_few_writes_at_any_size() {
        for n in [3u8, 50, 200] {
            let mut st = ProgrammedState::with_capacity(Capacity::default());
            let mut maps = MemoryMaps::default();
            let all: Vec<BackendKey> = (1..=n).map(|i| be(i, 8080)).collect();
            sync(&mut st, &mut maps, &desired(&[(fe(10, 80), forward(&all))]));

            // Remove one in the middle: move the last into its slot, lower the count,
            // delete the last slot, delete the backend.
            let mut fewer = all.clone();
            fewer.remove(1);
            let stats = sync(
                &mut st,
                &mut maps,
                &desired(&[(fe(10, 80), forward(&fewer))]),
            );
            assert_eq!(stats.ops, 4, "n={n}");

            // Add one: backend, slot, count.
            let mut more = fewer.clone();
            more.push(be(250, 9090));
            let stats = sync(
                &mut st,
                &mut maps,
                &desired(&[(fe(10, 80), forward(&more))]),
            );
            assert_eq!(stats.ops, 3, "n={n}");

            // Replace one: backend, slot overwrite, old backend deleted; count unchanged.
            let mut replaced = more.clone();
            replaced[0] = be(251, 9090);
            let stats = sync(
                &mut st,
                &mut maps,
                &desired(&[(fe(10, 80), forward(&replaced))]),
            );
            assert_eq!(stats.ops, 3, "n={n}");
        }
    }

    #[test]
    fn backends_shared_between_frontends_are_refcounted() {
        let mut st = ProgrammedState::with_capacity(Capacity::default());
        let mut maps = MemoryMaps::default();
        let shared = be(1, 53);
        let a = fe(10, 53);
        let b = fe(11, 53);
        sync(
            &mut st,
            &mut maps,
            &desired(&[(a, forward(&[shared])), (b, forward(&[shared, be(2, 53)]))]),
        );
        assert_eq!(maps.backends.len(), 2);
        // Removing frontend a keeps the shared backend for b.
        sync(
            &mut st,
            &mut maps,
            &desired(&[(b, forward(&[shared, be(2, 53)]))]),
        );
        assert_eq!(maps.backends.len(), 2);
        // Moving the backend from one frontend to another in one batch keeps its id.
        let id_before = *maps.backends.keys().next().unwrap();
        sync(&mut st, &mut maps, &desired(&[(a, forward(&[shared]))]));
        assert!(maps.backends.contains_key(&id_before));
        assert_eq!(maps.backends.len(), 1);
    }

    #[test]
    fn departures_are_per_internal_frontend() {
        let mut st = ProgrammedState::with_capacity(Capacity::default());
        let mut maps = MemoryMaps::default();
        let (a, b) = (fe(10, 53), fe(11, 53));
        let external = FrontendKey::new(a.frontend().unwrap(), Scope::External);
        let shared = be(1, 53);
        let all = desired(&[
            (a, forward(&[shared, be(2, 53)])),
            (b, forward(&[shared])),
            (external, forward(&[shared])),
        ]);
        assert!(sync(&mut st, &mut maps, &all).departed.is_empty());
        // The shared backend leaves a only: listed for a, not for b, not for the
        // external (TC) frontend.
        let stats = sync(
            &mut st,
            &mut maps,
            &desired(&[
                (a, forward(&[be(2, 53)])),
                (b, forward(&[shared])),
                (external, forward(&[be(2, 53)])),
            ]),
        );
        assert_eq!(stats.departed, vec![(a, shared)]);
        // A backend that only became local (same address) has not left.
        let local = BackendKey {
            local: true,
            ..be(2, 53)
        };
        let stats = sync(
            &mut st,
            &mut maps,
            &desired(&[(a, forward(&[local])), (b, forward(&[shared]))]),
        );
        assert!(stats.departed.is_empty(), "{:?}", stats.departed);
        // Reject (no endpoints) and removal: every backend left.
        let stats = sync(
            &mut st,
            &mut maps,
            &desired(&[(a, reject()), (b, forward(&[shared]))]),
        );
        assert_eq!(stats.departed, vec![(a, local)]);
        let stats = sync(&mut st, &mut maps, &desired(&[]));
        assert_eq!(stats.departed, vec![(b, shared)]);
    }

    #[test]
    fn forward_to_reject_and_back() {
        let mut st = ProgrammedState::with_capacity(Capacity::default());
        let mut maps = MemoryMaps::default();
        let key = fe(10, 80);
        sync(
            &mut st,
            &mut maps,
            &desired(&[(key, forward(&[be(1, 80), be(2, 80)]))]),
        );
        sync(&mut st, &mut maps, &desired(&[(key, reject())]));
        assert!(maps.backends.is_empty());
        sync(
            &mut st,
            &mut maps,
            &desired(&[(key, forward(&[be(3, 80)]))]),
        );
        sync(&mut st, &mut maps, &desired(&[]));
        assert!(maps.services.is_empty() && maps.backends.is_empty());
    }

    #[test]
    fn random_changes_keep_invariants() {
        // A deterministic pseudo-random walk over backend sets of several frontends.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut st = ProgrammedState::with_capacity(Capacity::default());
        let mut maps = MemoryMaps::default();
        for _round in 0..300 {
            let mut entries = Vec::new();
            for f in 0..4u8 {
                let roll = next() % 10;
                let key = FrontendKey::internal(FrontendAddr {
                    ip: Ipv4Addr::new(10, 96, 1, f).into(),
                    port: 80,
                    protocol: if f % 2 == 0 {
                        Protocol::Tcp
                    } else {
                        Protocol::Udp
                    },
                });
                if roll == 0 {
                    continue; // frontend absent
                }
                if roll == 1 {
                    entries.push((key, reject()));
                    continue;
                }
                let n = next() % 12;
                let backends: Vec<BackendKey> = (0..n)
                    .map(|_| BackendKey {
                        local: false,
                        addr: SocketAddr::new(
                            Ipv4Addr::new(10, 244, 0, (next() % 16) as u8).into(),
                            8080,
                        ),
                        protocol: key.protocol.unwrap(),
                    })
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                let mut frontend = if backends.is_empty() {
                    reject()
                } else {
                    forward(&backends)
                };
                // Affinity comes and goes too: its match entries must follow the slots.
                if next() % 3 == 0 {
                    frontend.affinity_timeout_s = 10;
                }
                entries.push((key, frontend));
            }
            sync(&mut st, &mut maps, &desired(&entries));
            // Every slot of a frontend with affinity has its match, and nothing else.
            let want_matches: usize = st
                .frontends()
                .values()
                .filter(|f| f.service.affinity_timeout_s != 0)
                .map(|f| f.slots.len())
                .sum();
            assert_eq!(maps.affinity_matches.len(), want_matches);
        }
    }

    #[test]
    fn affinity_matches_follow_backends_in_and_out_of_slots() {
        let mut st = ProgrammedState::with_capacity(Capacity::default());
        let mut maps = MemoryMaps::default();
        let mut web = forward(&[be(1, 80), be(2, 80), be(3, 80)]);
        web.affinity_timeout_s = 60;
        sync(&mut st, &mut maps, &desired(&[(fe(10, 80), web.clone())]));
        assert_eq!(maps.affinity_matches.len(), 3);
        let slot_of = |maps: &MemoryMaps, id: u32| {
            maps.affinity_matches
                .iter()
                .find(|(k, _)| k.backend_id == id)
                .map(|(_, slot)| *slot)
        };
        let id_of = |st: &ProgrammedState, b: BackendKey| {
            st.frontends()[&fe(10, 80)]
                .slots
                .iter()
                .copied()
                .find(|id| st.backend(*id) == Some(b))
                .unwrap()
        };
        let (id1, id3) = (id_of(&st, be(1, 80)), id_of(&st, be(3, 80)));
        // Backend 1 leaves: its match goes, backend 3 moves into its slot and its
        // match says so.
        let mut fewer = forward(&[be(2, 80), be(3, 80)]);
        fewer.affinity_timeout_s = 60;
        let stats = sync(&mut st, &mut maps, &desired(&[(fe(10, 80), fewer.clone())]));
        assert_eq!(slot_of(&maps, id1), None);
        assert_eq!(slot_of(&maps, id3), Some(1));
        // Matches of 1 and 3 deleted, slot 1 rewritten to 3, 3's match, slot 0's count,
        // slot 3 and backend 1 deleted.
        assert_eq!(stats.ops, 7, "{stats:?}");
        // Affinity turned off: every match goes; on again: back.
        sync(
            &mut st,
            &mut maps,
            &desired(&[(fe(10, 80), forward(&[be(2, 80), be(3, 80)]))]),
        );
        assert!(maps.affinity_matches.is_empty());
        sync(&mut st, &mut maps, &desired(&[(fe(10, 80), fewer)]));
        assert_eq!(maps.affinity_matches.len(), 2);
        // The frontend removed: nothing left.
        sync(&mut st, &mut maps, &desired(&[]));
        assert!(maps.affinity_matches.is_empty() && maps.services.is_empty());
    }

    #[test]
    fn full_maps_skip_only_what_does_not_fit() {
        let cap = Capacity {
            svc_entries: 5,
            backends: 3,
            ..Capacity::default()
        };
        let mut st = ProgrammedState::with_capacity(cap);
        let mut maps = MemoryMaps::default();
        let small = fe(10, 80);
        let big = fe(11, 80);
        let want = desired(&[
            (small, forward(&[be(1, 80), be(2, 80)])),
            (big, forward(&[be(3, 80), be(4, 80), be(5, 80)])),
        ]);
        let (ops, stats) = st.sync_all(&want);
        apply_checked(&mut maps, &ops);
        assert_eq!(stats.skipped_full, vec![big]);
        // The one that fit is fully served.
        assert_eq!(
            maps.services
                .get(&Svc4Key::new(
                    ip_to_map(v4(&small)),
                    port_to_map(80),
                    IPPROTO_TCP,
                    0
                ))
                .unwrap()
                .count,
            2
        );
        assert!(maps.reader_view().is_ok());
    }

    #[test]
    fn full_maps_go_to_older_services_and_never_evict_programmed_ones() {
        // Room for two frontends of one backend each (2 entries per frontend).
        let cap = Capacity {
            svc_entries: 4,
            ..Capacity::default()
        };
        let mut st = ProgrammedState::with_capacity(cap);
        let mut maps = MemoryMaps::default();
        // Key order is the reverse of age order: age decides.
        let (oldest, middle, youngest) = (fe(30, 80), fe(20, 80), fe(10, 80));
        let entries = vec![
            (oldest, forward(&[be(1, 80)])),
            (middle, forward(&[be(2, 80)])),
            (youngest, forward(&[be(3, 80)])),
        ];
        let want = desired_by_age(&entries);
        let (ops, stats) = st.sync_all(&want);
        apply_checked(&mut maps, &ops);
        assert_eq!(stats.skipped_full, vec![youngest]);
        assert_eq!(
            st.incomplete().clone(),
            BTreeMap::from([(youngest, Incomplete::MapsFull)])
        );
        assert_eq!(st.incomplete_counts().maps_full, 1);
        assert!(st.incomplete_counts().capacity_short());

        // A Service older than all of them arrives: it waits, nothing is evicted.
        let ancient = fe(40, 80);
        let mut entries4 = vec![(ancient, forward(&[be(4, 80)]))];
        entries4.extend(entries.iter().cloned());
        let want4 = desired_by_age(&entries4);
        let (ops, stats) = st.sync_keys(&want4, &[ancient]);
        apply_checked(&mut maps, &ops);
        assert!(ops.is_empty(), "{ops:?}");
        assert_eq!(stats.skipped_full, vec![ancient, youngest]);
        assert!(st.frontends().contains_key(&oldest) && st.frontends().contains_key(&middle));

        // One programmed Service goes: the oldest waiting one gets its room, though
        // only the removed key changed.
        entries4.retain(|(k, _)| *k != middle);
        let mut want3 = desired_by_age(&entries4);
        want3.owners = want4.owners.clone();
        want3.owners.remove(&middle);
        let (ops, stats) = st.sync_keys(&want3, &[middle]);
        apply_checked(&mut maps, &ops);
        assert_eq!(stats.completed, 1);
        assert!(st.frontends().contains_key(&ancient));
        assert_eq!(
            st.incomplete().keys().copied().collect::<Vec<_>>(),
            vec![youngest]
        );

        // A restarted agent adopts the same choice and writes nothing.
        let (mut adopted, cleanup) = ProgrammedState::adopt(&maps, cap).unwrap();
        assert!(cleanup.is_empty());
        let (ops, stats) = adopted.sync_all(&want3);
        assert!(ops.is_empty(), "{ops:?}");
        assert_eq!(stats.skipped_full, vec![youngest]);
    }

    #[test]
    fn a_programmed_frontend_that_outgrows_the_maps_is_truncated_not_frozen() {
        let cap = Capacity {
            svc_entries: 4,
            backends: 4,
            ..Capacity::default()
        };
        let mut st = ProgrammedState::with_capacity(cap);
        let mut maps = MemoryMaps::default();
        let web = fe(10, 80);
        sync(
            &mut st,
            &mut maps,
            &desired(&[(web, forward(&[be(1, 80), be(2, 80)]))]),
        );
        // be(1) goes, four new ones come: room for 3 slots; be(2) keeps its slot.
        let grown = forward(&[be(2, 80), be(3, 80), be(4, 80), be(5, 80), be(6, 80)]);
        let want = desired(&[(web, grown.clone())]);
        let (ops, stats) = st.sync_keys(&want, &[web]);
        apply_checked(&mut maps, &ops);
        assert_eq!(stats.truncated, vec![web]);
        assert_eq!(
            st.incomplete()[&web],
            Incomplete::BackendsTruncated {
                programmed: 3,
                wanted: 5
            }
        );
        let fe_now = &st.frontends()[&web];
        let served: Vec<BackendKey> = fe_now
            .slots
            .iter()
            .map(|id| st.backend(*id).unwrap())
            .collect();
        // be(2) stays in its slot (2); the first new one takes be(1)'s.
        assert_eq!(served, vec![be(3, 80), be(2, 80), be(4, 80)]);
        // A removed backend is removed even from full maps.
        assert_eq!(maps.backends.len(), 3);
        assert!(
            maps.backends
                .keys()
                .all(|id| st.backend(*id).is_some_and(|b| b != be(1, 80)))
        );
        // Room appears (a bigger map after a restart): the next sync completes it.
        let bigger = Capacity {
            svc_entries: 16,
            backends: 16,
            ..Capacity::default()
        };
        let (mut st, cleanup) = ProgrammedState::adopt(&maps, bigger).unwrap();
        assert!(cleanup.is_empty());
        let (ops, _) = st.sync_all(&want);
        apply_checked(&mut maps, &ops);
        assert!(st.incomplete().is_empty());
        assert_eq!(st.frontends()[&web].slots.len(), 5);
    }

    #[test]
    fn adopt_restores_state_and_cleans_strays() {
        let mut st = ProgrammedState::with_capacity(Capacity::default());
        let mut maps = MemoryMaps::default();
        let want = desired(&[
            (fe(10, 80), forward(&[be(1, 80), be(2, 80)])),
            (
                FrontendKey::wildcard(Ipv4Addr::new(10, 96, 0, 10).into()),
                DesiredFrontend {
                    source_ranges: vec![],
                    flags: SVC_FLAG_WILDCARD,
                    ..reject()
                },
            ),
        ]);
        sync(&mut st, &mut maps, &want);
        // Strays: a slot beyond the count and an unreferenced backend.
        let stray_slot = Svc4Key::new(ip_to_map(v4(&fe(10, 80))), port_to_map(80), IPPROTO_TCP, 7);
        maps.services.insert(stray_slot, Svc4Value::slot(1));
        maps.backends.insert(
            999,
            Backend4 {
                address: 1,
                port: 2,
                proto: IPPROTO_TCP,
                flags: 0,
            },
        );
        let (mut adopted, cleanup) = ProgrammedState::adopt(&maps, Capacity::default()).unwrap();
        assert_eq!(
            cleanup,
            vec![
                MapOp::DeleteSvc { key: stray_slot },
                MapOp::DeleteBackend { id: 999 }
            ]
        );
        apply_checked(&mut maps, &cleanup);
        // The adopted mirror needs no writes for the same desired state.
        let (ops, _) = adopted.sync_all(&want);
        assert!(ops.is_empty(), "{ops:?}");
        // New ids continue after the highest seen.
        let (ops, _) = adopted.sync_all(&desired(&[(
            fe(10, 80),
            forward(&[be(1, 80), be(2, 80), be(9, 80)]),
        )]));
        assert!(
            ops.iter()
                .any(|op| matches!(op, MapOp::PutBackend { id, .. } if *id == 1000))
        );
    }

    #[test]
    fn adopt_handles_missing_slots_and_duplicate_backends() {
        let mut maps = MemoryMaps::default();
        let key = Svc4Key::new(
            ip_to_map(Ipv4Addr::new(10, 96, 0, 10)),
            port_to_map(80),
            IPPROTO_TCP,
            0,
        );
        let b = Backend4 {
            address: ip_to_map(Ipv4Addr::new(10, 244, 0, 1)),
            port: port_to_map(80),
            proto: IPPROTO_TCP,
            flags: 0,
        };
        maps.backends.insert(1, b);
        maps.backends.insert(2, b); // the same backend twice
        maps.services
            .insert(key, Svc4Value::service(SvcAction::Forward, 2, 0, 0));
        maps.services.insert(key.with_slot(1), Svc4Value::slot(1)); // slot 2 missing
        let (mut st, cleanup) = ProgrammedState::adopt(&maps, Capacity::default()).unwrap();
        apply_checked(&mut maps, &[]);
        for op in &cleanup {
            maps.apply(op).unwrap();
        }
        let want = desired(&[(fe(10, 80), forward(&[be(1, 80), be(2, 80)]))]);
        let (ops, _) = st.sync_all(&want);
        for op in &ops {
            maps.apply(op).unwrap();
        }
        assert_maps_match(&maps, &want);
    }

    // ---- Maglev tables ------------------------------------------------------------

    const M: u32 = 251;

    fn maglev_capacity(tables: u32) -> Capacity {
        Capacity {
            maglev: MaglevConfig::maglev(M, tables, 7).unwrap(),
            ..Capacity::default()
        }
    }

    /// An external (TC) frontend: NodePort `port` (address 0.0.0.0).
    fn ext(port: u16) -> FrontendKey {
        FrontendKey::new(
            FrontendAddr {
                ip: Ipv4Addr::UNSPECIFIED.into(),
                port,
                protocol: Protocol::Tcp,
            },
            Scope::External,
        )
    }

    fn svc_of(maps: &MemoryMaps, key: &FrontendKey) -> Svc4Value {
        maps.services[&v4::svc_key(key).unwrap()]
    }

    /// The table slot 0 of `key` names, as backends (by identity).
    fn table_of(maps: &MemoryMaps, key: &FrontendKey) -> Vec<SocketAddr> {
        let table = svc_of(maps, key).backend_id;
        assert_ne!(table, 0, "{key} has no table");
        maps.maglev[&table]
            .iter()
            .map(|id| {
                let b = maps.backends[id];
                v4::backend_key(&b).unwrap().addr
            })
            .collect()
    }

    fn expected_table(backends: &[BackendKey], cap: &Capacity) -> Vec<SocketAddr> {
        Table::build(backends, cap.maglev.table_size, cap.maglev.seed)
            .entries()
            .map(|i| backends[i].addr)
            .collect()
    }

    /// Every external frontend that forwards has the table of its backends, and a
    /// restarted agent adopting the maps finds nothing to repair or clean.
    fn assert_tables(maps: &MemoryMaps, want: &DesiredState, cap: Capacity) {
        for (key, d) in &want.frontends {
            let table = svc_of(maps, key).backend_id;
            if key.scope == Scope::External && d.action == SvcAction::Forward && table != 0 {
                assert_eq!(
                    table_of(maps, key),
                    expected_table(&d.backends, &cap),
                    "{key}"
                );
            }
            if key.scope == Scope::Internal {
                assert_eq!(table, 0, "{key}: internal frontends pick at random");
            }
        }
        let (adopted, cleanup) = ProgrammedState::adopt(maps, cap).unwrap();
        assert!(
            cleanup.is_empty(),
            "adoption would repair: {} ops",
            cleanup.len()
        );
        let named: BTreeSet<u32> = maps
            .services
            .iter()
            .filter(|(k, v)| k.backend_slot == 0 && v.backend_id != 0)
            .map(|(_, v)| v.backend_id)
            .collect();
        assert_eq!(
            adopted.maglev_tables(),
            named.len(),
            "every named table is adopted"
        );
    }

    fn sync_with(
        state: &mut ProgrammedState,
        maps: &mut MemoryMaps,
        want: &DesiredState,
        cap: Capacity,
    ) -> SyncStats {
        let stats = sync(state, maps, want);
        assert_tables(maps, want, cap);
        stats
    }

    #[test]
    fn maglev_tables_are_written_whole_then_entry_by_entry() {
        let cap = maglev_capacity(4);
        let mut st = ProgrammedState::with_capacity(cap);
        let mut maps = MemoryMaps::default();
        let four: Vec<BackendKey> = (1..=4).map(|i| be(i, 8080)).collect();
        let want = desired(&[(ext(30080), forward(&four)), (fe(10, 80), forward(&four))]);
        let stats = sync_with(&mut st, &mut maps, &want, cap);
        // 4 backends, 2 x (4 slots + slot 0), the whole table of the external one.
        assert_eq!(stats.maglev_entries, M as usize);
        assert_eq!(stats.ops, 4 + 10 + M as usize);
        assert_eq!(svc_of(&maps, &ext(30080)).backend_id, 1);
        assert_eq!(st.maglev_tables(), 1);
        let stats = sync_with(&mut st, &mut maps, &want, cap);
        assert_eq!(stats.ops, 0, "unchanged: nothing written");

        // One of four leaves: its entries and few others are rewritten in place.
        let three = &four[1..];
        let want = desired(&[(ext(30080), forward(three)), (fe(10, 80), forward(three))]);
        let before = table_of(&maps, &ext(30080));
        let stats = sync_with(&mut st, &mut maps, &want, cap);
        let after = table_of(&maps, &ext(30080));
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let on_gone = before.iter().filter(|a| **a == four[0].addr).count();
        assert_eq!(
            stats.maglev_entries, moved,
            "only entries that change are written"
        );
        // (The builder's tests bound the others at M = 16381; 251 is coarse.)
        assert!(
            moved >= on_gone && moved < 2 * on_gone,
            "{moved} moved, {on_gone} were on the removed backend"
        );
        assert_eq!(svc_of(&maps, &ext(30080)).backend_id, 1, "the same table");

        // Reject: slot 0 stops naming the table, which is freed; forward again: a new
        // index (not reused while others are free), written whole.
        let want = desired(&[(ext(30080), reject()), (fe(10, 80), forward(three))]);
        sync_with(&mut st, &mut maps, &want, cap);
        assert_eq!(svc_of(&maps, &ext(30080)).backend_id, 0);
        assert_eq!(st.maglev_tables(), 0);
        let want = desired(&[(ext(30080), forward(three)), (fe(10, 80), forward(three))]);
        let stats = sync_with(&mut st, &mut maps, &want, cap);
        assert_eq!(svc_of(&maps, &ext(30080)).backend_id, 2);
        assert_eq!(stats.maglev_entries, M as usize);
        // Removed: freed with it.
        sync_with(&mut st, &mut maps, &desired(&[]), cap);
        assert_eq!(st.maglev_tables(), 0);
        assert!(maps.services.is_empty() && maps.backends.is_empty());
    }

    #[test]
    fn maglev_without_a_free_table_picks_at_random_until_one_is_freed() {
        let cap = maglev_capacity(2);
        let mut st = ProgrammedState::with_capacity(cap);
        let mut maps = MemoryMaps::default();
        let two = [be(1, 8080), be(2, 8080)];
        let all = |ports: &[u16]| {
            desired(
                &ports
                    .iter()
                    .map(|p| (ext(*p), forward(&two)))
                    .collect::<Vec<_>>(),
            )
        };
        let stats = sync_with(&mut st, &mut maps, &all(&[30001, 30002, 30003]), cap);
        assert_eq!(stats.maglev_full, vec![ext(30003)]);
        assert_eq!(
            svc_of(&maps, &ext(30003)).backend_id,
            0,
            "random, never failed"
        );
        assert_eq!(svc_of(&maps, &ext(30003)).count, 2);
        // Another sync that does not touch it leaves it waiting.
        let (ops, stats) = st.sync_keys(&all(&[30001, 30002, 30003]), &[ext(30001)]);
        assert!(ops.is_empty() && stats.maglev_full.is_empty());
        // 30001 goes: its table is free, and 30003 gets it in the same batch.
        let stats = sync_with(&mut st, &mut maps, &all(&[30002, 30003]), cap);
        assert!(stats.maglev_full.is_empty());
        assert_ne!(svc_of(&maps, &ext(30003)).backend_id, 0);
        assert_eq!(st.maglev_tables(), 2);
    }

    #[test]
    fn a_restarted_agent_keeps_the_tables_and_repairs_what_differs() {
        let cap = maglev_capacity(4);
        let mut st = ProgrammedState::with_capacity(cap);
        let mut maps = MemoryMaps::default();
        let three = [be(1, 8080), be(2, 8080), be(3, 8080)];
        let want = desired(&[
            (ext(30080), forward(&three)),
            (ext(30081), forward(&three[..2])),
        ]);
        sync_with(&mut st, &mut maps, &want, cap);

        // The same flags: nothing to write, the tables stay where they are.
        let (mut adopted, cleanup) = ProgrammedState::adopt(&maps, cap).unwrap();
        assert!(cleanup.is_empty());
        assert!(adopted.sync_all(&want).0.is_empty());

        // An entry that differs (a failed write): repaired on adoption, in place.
        let t = svc_of(&maps, &ext(30080)).backend_id;
        let other = maps.maglev[&t][1];
        let right = maps.maglev[&t][0];
        if other != right {
            maps.maglev.get_mut(&t).unwrap()[0] = other;
        }
        let (_, cleanup) = ProgrammedState::adopt(&maps, cap).unwrap();
        assert_eq!(cleanup.len(), usize::from(other != right), "{cleanup:?}");
        apply_checked(&mut maps, &cleanup);
        assert_tables(&maps, &want, cap);

        // Two frontends naming one table (not this agent's doing): the first keeps it,
        // the second gets its own before its slot 0 changes.
        let t2 = svc_of(&maps, &ext(30081)).backend_id;
        let key2 = v4::svc_key(&ext(30081)).unwrap();
        let mut v = maps.services[&key2];
        v.backend_id = t;
        maps.services.insert(key2, v);
        maps.maglev.remove(&t2);
        let (mut adopted, cleanup) = ProgrammedState::adopt(&maps, cap).unwrap();
        apply_checked(&mut maps, &cleanup);
        let (ops, _) = adopted.sync_all(&want);
        apply_checked(&mut maps, &ops);
        assert_tables(&maps, &want, cap);
        assert_ne!(svc_of(&maps, &ext(30081)).backend_id, t);

        // An agent with the random algorithm: slot 0 stops naming tables.
        let random = Capacity::default();
        let (mut adopted, cleanup) = ProgrammedState::adopt(&maps, random).unwrap();
        apply_checked(&mut maps, &cleanup);
        let (ops, _) = adopted.sync_all(&want);
        apply_checked(&mut maps, &ops);
        assert_eq!(svc_of(&maps, &ext(30080)).backend_id, 0);
        assert_eq!(svc_of(&maps, &ext(30081)).backend_id, 0);
    }

    #[test]
    fn maglev_random_walk_keeps_tables_and_readers_right() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let cap = maglev_capacity(3);
        let mut st = ProgrammedState::with_capacity(cap);
        let mut maps = MemoryMaps::default();
        for _round in 0..120 {
            let mut entries = Vec::new();
            for f in 0..4u16 {
                let roll = next() % 10;
                if roll == 0 {
                    continue;
                }
                let key = ext(30000 + f);
                if roll == 1 {
                    entries.push((key, reject()));
                    continue;
                }
                let n = next() % 8;
                let backends: Vec<BackendKey> = (0..n)
                    .map(|_| be((next() % 12) as u8, 8080))
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                let mut d = if backends.is_empty() {
                    reject()
                } else {
                    forward(&backends)
                };
                if next() % 4 == 0 {
                    d.affinity_timeout_s = 30;
                }
                entries.push((key, d.clone()));
                // Its internal twin (socket hooks) shares the backends, never a table.
                entries.push((
                    FrontendKey {
                        scope: Scope::Internal,
                        ..key
                    },
                    d,
                ));
            }
            let want = desired(&entries);
            sync_with(&mut st, &mut maps, &want, cap);
            // Three tables for up to four forwarding frontends: the others wait.
            let forwarding = want
                .frontends
                .iter()
                .filter(|(k, d)| k.scope == Scope::External && d.action == SvcAction::Forward)
                .count();
            assert_eq!(st.maglev_tables(), forwarding.min(3));
        }
    }
}
