//! The invariants both fuzz targets check, each a panic with what went wrong: the
//! incremental core against a computation from scratch, and the maps a reader sees
//! while the diff writes them.
use std::collections::{BTreeMap, BTreeSet};

use lb_common::SvcAction;

use crate::{
    events::ClusterEvent,
    maps::{
        BackendKey, Capacity, DesiredState, FrontendKey, MapOp, ProgrammedState, Scope,
        ServiceMaps,
        diff::{Incomplete, ProgrammedFrontend},
        family::{Family, V4, V6},
        twin::MemoryMaps,
    },
    model::{IpCidr, NodeModel, ObjectKey, Protocol, ServiceModel, SliceModel},
    plan::{Action, FrontendKind, Plan, compute_plan},
    state::ClusterState,
};

/// Upper bound on `reader_view` work per batch of ops (entries looked at). The check
/// costs one pass over the maps; after every op of a large batch that would be
/// quadratic, so a large batch is checked every few ops (and always at its end).
const READER_CHECK_BUDGET: usize = 1 << 22;

/// The objects the core should hold, kept without `ClusterState`'s indexes.
#[derive(Clone, Debug)]
pub struct Mirror {
    pub services: BTreeMap<ObjectKey, ServiceModel>,
    pub slices: BTreeMap<ObjectKey, SliceModel>,
    pub node: NodeModel,
}

impl Mirror {
    pub fn new(node: NodeModel) -> Mirror {
        Mirror {
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            node,
        }
    }

    pub fn plan(&self) -> Plan {
        let services: Vec<ServiceModel> = self.services.values().cloned().collect();
        let slices: Vec<SliceModel> = self.slices.values().cloned().collect();
        compute_plan(&services, &slices, &self.node)
    }
}

/// Checks that hold for every plan: forward iff backends, NodePort iff the
/// unspecified address, a JSON round trip that changes nothing, a table that renders.
pub fn check_plan(plan: &Plan) {
    for frontend in &plan.frontends {
        assert_eq!(
            frontend.action == Action::Forward,
            !frontend.backends.is_empty(),
            "forward iff backends: {frontend:?}"
        );
        assert_eq!(
            frontend.kind == FrontendKind::NodePort,
            frontend.ip.is_unspecified(),
            "NodePort iff unspecified address: {frontend:?}"
        );
        assert!(
            frontend
                .local_backends
                .iter()
                .all(|b| frontend.backends.contains(b)),
            "local backends are backends: {frontend:?}"
        );
    }
    let json = plan.to_json();
    match Plan::from_json(&json) {
        Ok(back) => assert!(
            back == *plan,
            "the plan's JSON round trip changed it:\n{json}"
        ),
        Err(e) => panic!("the plan's JSON does not parse back: {e}\n{json}"),
    }
    let _ = plan.render_table();
}

/// The incremental state agrees with a computation from scratch over the mirror.
pub fn check_consistent(state: &ClusterState, mirror: &Mirror) {
    assert!(!state.has_pending(), "pending work after recompute()");
    let plan = state.plan();
    let expected = mirror.plan();
    assert!(
        plan == expected,
        "ClusterState::plan() differs from compute_plan over the same objects:\n\
         actual:   {}\nexpected: {}",
        plan.to_json(),
        expected.to_json()
    );
    let from_scratch = DesiredState::from_frontends(&plan.frontends);
    let unknowable = derived_from_lost_claims(&plan);
    let comparable = |desired: &DesiredState| -> BTreeMap<FrontendKey, String> {
        let mut all = sorted(desired);
        all.retain(|key, _| !unknowable.contains(key));
        all
    };
    assert!(
        comparable(&state.index().desired) == comparable(&from_scratch),
        "the incremental desired state differs from DesiredState::from_frontends(plan):\n\
         actual:   {:?}\nexpected: {:?}",
        comparable(&state.index().desired),
        comparable(&from_scratch)
    );
    assert!(
        state.index().conflicts() == plan.conflicts,
        "the index's conflicts differ from the plan's"
    );
}

/// The internal-scope entries of external frontends whose Service lost a ClusterIP
/// frontend to another claim: derived from the lost frontend, which the plan does not
/// hold (see `DesiredState::from_frontends`). By Service and protocol: a conflict does
/// not name the port, so a few more entries than needed go unchecked here.
fn derived_from_lost_claims(plan: &Plan) -> BTreeSet<FrontendKey> {
    let lost: BTreeSet<(&ObjectKey, Protocol)> = plan
        .conflicts
        .iter()
        .filter(|c| c.dropped_type == FrontendKind::ClusterIP)
        .map(|c| (&c.dropped, c.protocol))
        .collect();
    plan.frontends
        .iter()
        .filter(|fe| {
            fe.kind != FrontendKind::ClusterIP && lost.contains(&(&fe.service, fe.protocol))
        })
        .map(|fe| FrontendKey::new(fe.key(), Scope::Internal))
        .collect()
}

/// The same objects at once (a manifest directory's Snapshot) give the same desired
/// state as the events that led to `state`.
pub fn check_snapshot(state: &ClusterState, mirror: &Mirror) {
    let mut snapshot = ClusterState::new(NodeModel::named("elsewhere"));
    snapshot.apply(ClusterEvent::Snapshot {
        services: mirror.services.values().cloned().collect(),
        slices: mirror.slices.values().cloned().collect(),
        node: mirror.node.clone(),
    });
    snapshot.recompute();
    assert!(snapshot.synced(), "a Snapshot leaves the state synced");
    assert!(
        snapshot.index().desired == state.index().desired,
        "one Snapshot of the objects gives another desired state than the events"
    );
}

/// The keys whose desired entry differs between `before` and `after`.
pub fn differing_keys(before: &DesiredState, after: &DesiredState) -> BTreeSet<FrontendKey> {
    let mut out = BTreeSet::new();
    for (key, value) in &after.frontends {
        if before.frontends.get(key) != Some(value) {
            out.insert(*key);
        }
    }
    for key in before.frontends.keys() {
        if !after.frontends.contains_key(key) {
            out.insert(*key);
        }
    }
    out
}

/// The desired state sorted by key, for messages.
fn sorted(desired: &DesiredState) -> BTreeMap<FrontendKey, String> {
    desired
        .frontends
        .iter()
        .map(|(k, v)| (*k, format!("{v:?}")))
        .collect()
}

/// The maps of one agent, both address families: each family's diff mirror and
/// in-memory twin, synced from the same desired state (each programs its own
/// family's frontends).
pub struct Programmer {
    pub v4: FamilyProgrammer<V4>,
    pub v6: FamilyProgrammer<V6>,
}

impl Programmer {
    pub fn new(capacity: Capacity) -> Programmer {
        Programmer {
            v4: FamilyProgrammer::new(capacity),
            v6: FamilyProgrammer::new(capacity),
        }
    }

    /// See [`FamilyProgrammer::sync`]; a failure is injected into the IPv4 maps.
    pub fn sync(
        &mut self,
        desired: &DesiredState,
        changed: &[FrontendKey],
        fail_after: Option<usize>,
    ) {
        self.v4.sync(desired, changed, fail_after);
        self.v6.sync(desired, changed, None);
        // Between them, the families program every wanted frontend or say why not.
        if !self.v4.full_sync && !self.v6.full_sync {
            for key in desired.frontends.keys() {
                assert!(
                    self.v4.state.frontends().contains_key(key)
                        || self.v6.state.frontends().contains_key(key)
                        || self.v4.state.incomplete().contains_key(key)
                        || self.v6.state.incomplete().contains_key(key),
                    "{key} is wanted, in neither family's maps, and not reported incomplete"
                );
            }
        }
    }

    pub fn restart(&mut self) {
        self.v4.restart();
        self.v6.restart();
    }

    /// Whether every map of both families is empty (Maglev tables are left as they
    /// were written: no slot 0 names them).
    pub fn is_empty(&self) -> bool {
        fn empty<F: Family>(m: &MemoryMaps<F>) -> bool {
            m.services.is_empty()
                && m.backends.is_empty()
                && m.src_ranges.is_empty()
                && m.affinity_matches.is_empty()
        }
        empty(&self.v4.maps) && empty(&self.v6.maps)
    }
}

/// One family's maps: the diff's mirror and an in-memory twin of the kernel's maps.
pub struct FamilyProgrammer<F: Family> {
    pub capacity: Capacity,
    pub state: ProgrammedState<F>,
    pub maps: MemoryMaps<F>,
    /// The next sync must be a full one (the start, or after a failed write), as the
    /// agent does it.
    full_sync: bool,
}

impl<F: Family> FamilyProgrammer<F> {
    pub fn new(capacity: Capacity) -> Self {
        FamilyProgrammer {
            capacity,
            state: ProgrammedState::with_capacity(capacity),
            maps: MemoryMaps::default(),
            full_sync: true,
        }
    }

    /// Brings the maps to `desired` as the agent's reconciler does: the changed keys
    /// incrementally, everything after a start or a failure. A write failing (injected
    /// with `fail_after` ops) re-reads the maps, as after a failed map update.
    pub fn sync(
        &mut self,
        desired: &DesiredState,
        changed: &[FrontendKey],
        fail_after: Option<usize>,
    ) {
        let (ops, _stats) = if self.full_sync {
            self.state.sync_all(desired)
        } else {
            self.state.sync_keys(desired, changed)
        };
        self.maps.fail_at = fail_after.map(|n| self.maps.ops_applied + n);
        let applied = apply_checked(&mut self.maps, &ops, self.capacity);
        self.maps.fail_at = None;
        if applied {
            self.full_sync = false;
        } else {
            self.restart();
        }
        self.check(desired);
    }

    /// A new agent adopting the maps (a restart, or a re-read after a failed write):
    /// the cleanup it computes is applied, and the next sync is a full one.
    pub fn restart(&mut self) {
        let (state, cleanup) = match ProgrammedState::adopt(&self.maps, self.capacity) {
            Ok(adopted) => adopted,
            Err(e) => panic!("adopting the twin maps failed: {e}"),
        };
        self.state = state;
        if !apply_checked(&mut self.maps, &cleanup, self.capacity) {
            panic!("the twin refused a cleanup op without an injected failure");
        }
        self.full_sync = true;
    }

    /// The maps hold `desired`'s frontends of this family, except for the ones the
    /// diff reports incomplete (full maps, another address family); the mirror agrees
    /// with the maps; a restarted agent would find nothing to clean up.
    pub fn check(&self, desired: &DesiredState) {
        let (adopted, cleanup) = match ProgrammedState::<F>::adopt(&self.maps, self.capacity) {
            Ok(adopted) => adopted,
            Err(e) => panic!("adopting the twin maps failed: {e}"),
        };
        assert!(
            cleanup.is_empty(),
            "the maps hold entries no reader reaches: {cleanup:?}"
        );
        assert_eq!(
            adopted.svc_entries(),
            self.maps.services.len(),
            "every service map entry belongs to a frontend"
        );
        assert_eq!(
            self.state.svc_entries(),
            self.maps.services.len(),
            "the mirror counts the service entries there are"
        );
        assert_eq!(
            self.state.backend_count(),
            self.maps.backends.len(),
            "the mirror counts the backends there are"
        );
        assert_eq!(
            adopted.frontends().len(),
            self.state.frontends().len(),
            "the mirror holds the frontends the maps hold"
        );
        self.check_maglev_tables();
        if self.full_sync {
            // After a failed write the mirror is the maps re-read; the check below still
            // holds for what is in the maps, but not-yet-synced keys are not incomplete.
            return;
        }
        let incomplete = self.state.incomplete();
        for (key, programmed) in adopted.frontends() {
            let Some(want) = desired.frontends.get(key) else {
                panic!("{key} is in the maps but not wanted");
            };
            let got = Entry::programmed(programmed, &adopted);
            let want = Entry::desired(want);
            match incomplete.get(key) {
                None => assert!(got == want, "{key}: maps {got:?}, wanted {want:?}"),
                Some(Incomplete::BackendsTruncated { .. }) => assert!(
                    got.backends.iter().all(|b| want.backends.contains(b)),
                    "{key}: truncated to backends that are not wanted: {got:?} vs {want:?}"
                ),
                // Left as it was: the maps had no room for the change.
                Some(Incomplete::MapsFull) => {}
                Some(Incomplete::AddressFamily) => {
                    panic!("{key}: programmed, yet of another address family")
                }
            }
        }
        for key in desired.frontends.keys() {
            if F::svc_key(key).is_none() {
                continue; // the other family's
            }
            assert!(
                adopted.frontends().contains_key(key) || incomplete.contains_key(key),
                "{key} is wanted, not in the maps, and not reported incomplete"
            );
        }
        for key in incomplete.keys() {
            assert!(
                desired.frontends.contains_key(key),
                "{key} is reported incomplete but is not wanted"
            );
        }
        let c = self.capacity;
        let smallest = c
            .svc_entries
            .min(c.backends)
            .min(c.affinity_matches)
            .min(c.src_ranges);
        assert!(
            !self.state.incomplete_counts().capacity_short() || desired_entries(desired) > smallest,
            "maps reported full for a desired state that fits in every map"
        );
    }

    /// A frontend's Maglev table names exactly its slots' backends (each at least once
    /// when the table has room for all).
    fn check_maglev_tables(&self) {
        if !self.capacity.maglev.enabled() {
            return;
        }
        for (key, fe) in self.state.frontends() {
            if fe.maglev_table == 0 || fe.slots.is_empty() {
                continue;
            }
            let Some(table) = self.maps.maglev.get(&fe.maglev_table) else {
                panic!("{key}: Maglev table {} not written", fe.maglev_table);
            };
            let size = self.capacity.maglev.table_size as usize;
            assert!(table.len() <= size, "{key}: table longer than {size}");
            let named: BTreeSet<u32> = table.iter().copied().collect();
            let slots: BTreeSet<u32> = fe.slots.iter().copied().collect();
            assert!(
                named.is_subset(&slots),
                "{key}: Maglev table {} names backends {named:?}, slots {slots:?}",
                fe.maglev_table
            );
            if table.len() == size && slots.len() <= size {
                assert!(
                    named == slots,
                    "{key}: Maglev table {} leaves out backends: {named:?} vs {slots:?}",
                    fe.maglev_table
                );
            }
        }
    }
}

/// An upper bound on the entries `desired` needs in any one map.
fn desired_entries(desired: &DesiredState) -> usize {
    desired
        .frontends
        .values()
        .map(|f| 1 + f.backends.len() + f.source_ranges.len())
        .sum()
}

/// One frontend's content, decoded the same way from the maps and from the desired state.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    action: Option<SvcAction>,
    flags: u8,
    affinity_timeout_s: u32,
    backends: Vec<BackendKey>,
    source_ranges: Vec<IpCidr>,
}

impl Entry {
    fn programmed<F: Family>(fe: &ProgrammedFrontend, adopted: &ProgrammedState<F>) -> Entry {
        let mut backends: Vec<BackendKey> = fe
            .slots
            .iter()
            .map(|id| match adopted.backend(*id) {
                Some(key) => key,
                None => panic!("slot names backend {id}, which adoption does not know"),
            })
            .collect();
        backends.sort();
        Entry {
            action: SvcAction::from_u8(fe.service.action),
            flags: fe.service.flags,
            affinity_timeout_s: fe.service.affinity_timeout_s,
            backends,
            source_ranges: fe.source_ranges.clone(),
        }
    }

    fn desired(fe: &crate::maps::DesiredFrontend) -> Entry {
        Entry {
            action: Some(fe.action),
            flags: fe.flags,
            affinity_timeout_s: fe.affinity_timeout_s,
            backends: fe.backends.clone(),
            source_ranges: fe.source_ranges.clone(),
        }
    }
}

/// Applies `ops` in order, checking what a reader sees and that no map grows past its
/// capacity. Returns false when the twin refused an op (an injected failure).
fn apply_checked<F: Family>(
    maps: &mut MemoryMaps<F>,
    ops: &[MapOp<F>],
    capacity: Capacity,
) -> bool {
    let per_check = maps.services.len() + maps.affinity_matches.len() + ops.len() + 1;
    let every = (ops.len() * per_check / READER_CHECK_BUDGET).max(1);
    for (i, op) in ops.iter().enumerate() {
        if maps.apply(op).is_err() {
            return false;
        }
        let cheap = matches!(op, MapOp::PutMaglev { .. });
        if (cheap || (i + 1) % every == 0 || i + 1 == ops.len())
            && let Err(e) = maps.reader_view_after(op)
        {
            panic!("after op {i} ({op:?}) a reader sees a half-written frontend: {e}");
        }
        assert!(
            maps.services.len() <= capacity.svc_entries
                && maps.backends.len() <= capacity.backends
                && maps.affinity_matches.len() <= capacity.affinity_matches
                && maps.src_ranges.len() <= capacity.src_ranges
                && maps.maglev.len() <= capacity.maglev.tables() as usize,
            "after op {i} ({op:?}) a map holds more than its capacity: {} services, {} backends, {} affinity, {} source ranges, {} Maglev tables, capacity {capacity:?}",
            maps.services.len(),
            maps.backends.len(),
            maps.affinity_matches.len(),
            maps.src_ranges.len(),
            maps.maglev.len(),
        );
    }
    true
}

/// The desired state of `services`, `slices` and `node`, computed as a manifest
/// directory's Snapshot, then as one event per object, then programmed into empty
/// maps of `capacity`, then removed again: every step checked.
pub fn check_objects(
    services: &[ServiceModel],
    slices: &[SliceModel],
    node: &NodeModel,
    capacity: Capacity,
) {
    let plan = compute_plan(services, slices, node);
    check_plan(&plan);

    let mut mirror = Mirror::new(node.clone());
    for service in services {
        mirror.services.insert(service.key(), service.clone());
    }
    for slice in slices {
        mirror.slices.insert(slice.key(), slice.clone());
    }
    let mut state = ClusterState::new(NodeModel::named("elsewhere"));
    state.apply(ClusterEvent::Snapshot {
        services: services.to_vec(),
        slices: slices.to_vec(),
        node: node.clone(),
    });
    let changed = state.recompute();
    check_consistent(&state, &mirror);

    // Watch events, slices first (they may come before their Service).
    let mut events = ClusterState::new(NodeModel::named("elsewhere"));
    for slice in slices {
        events.apply(ClusterEvent::SliceApplied(slice.clone()));
    }
    for service in services {
        events.apply(ClusterEvent::ServiceApplied(service.clone()));
    }
    events.apply(ClusterEvent::NodeApplied(node.clone()));
    events.recompute();
    assert!(
        events.index().desired == state.index().desired,
        "watch events give another desired state than a Snapshot"
    );

    let desired = state.index().desired.clone();
    for capacity in [Capacity::default(), capacity] {
        let mut programmer = Programmer::new(capacity);
        programmer.sync(&desired, &changed, None);
        // Everything removed: the maps end empty.
        let mut emptied = ClusterState::new(node.clone());
        emptied.apply(ClusterEvent::Snapshot {
            services: services.to_vec(),
            slices: slices.to_vec(),
            node: node.clone(),
        });
        emptied.recompute();
        emptied.apply(ClusterEvent::Snapshot {
            services: Vec::new(),
            slices: Vec::new(),
            node: node.clone(),
        });
        let removed = emptied.recompute();
        programmer.sync(&emptied.index().desired, &removed, None);
        assert!(
            programmer.is_empty(),
            "maps not empty after every object was removed"
        );
    }
}
