//! The fuzz targets' logic, as plain functions of bytes: `lb-userspace/core/fuzz` runs
//! them under libFuzzer (`cargo xtask fuzz`), and this crate's tests replay every file
//! of their corpus through them on stable Rust (`cargo test -p socklb-core`), so a
//! crash once found and kept in the corpus stays fixed.
//!
//! Each target panics when an invariant breaks; libFuzzer takes the panic as a crash.
//! Both bound what one input can cost by the limits the input goes through
//! (`manifest::limits`, `model::limits`) and by libFuzzer's `-max_len` and
//! `-rss_limit_mb` (see xtask/src/fuzz.rs).
//!
//! - [`manifest_bytes`]: arbitrary bytes as a manifest file, through the loader, the
//!   model's validation, `ClusterState`, the plan, the desired state and the diff into
//!   the in-memory twin of the maps, whose reader view is checked while it is written.
//! - [`event_sequence`]: structured input: `arbitrary` Services, EndpointSlices and
//!   Nodes (JSON as the API server would send, hostile values included) as a sequence
//!   of watch events, relists and snapshots applied to `ClusterState`, which must agree
//!   with a recomputation from scratch after every sync, while the diff keeps the maps
//!   a reader sees whole, also with full maps, failed writes and restarts.

pub mod check;
pub mod objects;

use std::{collections::BTreeSet, path::Path};

use arbitrary::{Arbitrary, Unstructured};
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::Value;

use self::{
    check::{Mirror, Programmer, check_consistent, check_plan, check_snapshot, differing_keys},
    objects::{NodeSpec, ServiceSpec, SliceSpec},
};
use crate::{
    events::ClusterEvent,
    manifest::{ManifestLoader, limits},
    maps::{Capacity, DesiredState, maglev::MaglevConfig},
    model::{NodeModel, ObjectKey, ServiceModel, SliceModel},
    state::ClusterState,
};

/// A fuzz target: one input, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// The fuzz targets, by the names of their corpus folders and fuzz_targets files.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest_bytes", manifest_bytes),
    ("event_sequence", event_sequence),
];

/// The node the manifests' objects are planned for when they have no Node.
const NODE: &str = "node-a";

/// Arbitrary bytes as the content of a manifest file: loaded as YAML and as JSON into
/// one loader (so the second copy meets every object as a duplicate), then the objects
/// go through the whole core (see [`check::check_objects`]).
pub fn manifest_bytes(data: &[u8]) {
    let mut loader = ManifestLoader::default();
    loader.load_bytes(Path::new("fuzz.yaml"), data);
    loader.load_bytes(Path::new("fuzz.json"), data);
    let set = loader.finish();
    assert_eq!(set.files_read, 2);
    // The loader's limits, for both files together.
    assert!(
        set.warnings.len() <= 2 * (limits::WARNINGS_PER_FILE + 1),
        "{} warnings",
        set.warnings.len()
    );
    assert!(
        set.services.len() + set.slices.len() + set.nodes.len() + set.invalid.len()
            <= 2 * limits::OBJECTS_PER_FILE,
        "more objects than the limit allows"
    );
    let mut keys = BTreeSet::new();
    for service in &set.services {
        assert!(
            keys.insert(("Service", service.key())),
            "{} loaded twice",
            service.key()
        );
    }
    for slice in &set.slices {
        assert!(
            keys.insert(("EndpointSlice", slice.key())),
            "{} loaded twice",
            slice.key()
        );
    }
    let node = set
        .nodes
        .first()
        .cloned()
        .unwrap_or_else(|| NodeModel::named(NODE));
    // Small maps from the input itself: full maps are fuzzed as well as roomy ones.
    let seed = data
        .iter()
        .fold(0usize, |h, b| h.wrapping_mul(31) ^ usize::from(*b));
    let capacity = Capacity {
        svc_entries: 1 + seed % 64,
        backends: 1 + (seed >> 6) % 32,
        affinity_matches: 1 + (seed >> 11) % 64,
        src_ranges: 1 + (seed >> 17) % 16,
        maglev: maglev((seed >> 21) % 8),
    };
    check::check_objects(&set.services, &set.slices, &node, capacity);
}

/// The load-balancing algorithm of small maps: random (`tables` 0), or Maglev with the
/// smallest tables and `tables` of them (few: external frontends then wait for one).
fn maglev(tables: usize) -> MaglevConfig {
    let Some(tables) = u32::try_from(tables).ok().filter(|t| *t > 0) else {
        return MaglevConfig::default();
    };
    match MaglevConfig::maglev(lb_common::maglev::TABLE_SIZES[0], tables, 7) {
        Ok(config) => config,
        Err(e) => panic!("a Maglev configuration of {tables} tables: {e}"),
    }
}

/// The steps of an [`event_sequence`] input.
#[derive(Arbitrary, Debug)]
struct Scenario {
    node: NodeSpec,
    /// Maps this small instead of the kernel's default sizes.
    small_maps: Option<SmallCapacity>,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
struct SmallCapacity {
    svc_entries: u8,
    backends: u8,
    affinity_matches: u8,
    src_ranges: u8,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Watch events: added or modified.
    ApplyService(ServiceSpec),
    ApplySlice(SliceSpec),
    /// A slice of the Service (see `SliceSpec::object_of`), then the Service.
    ApplyPair(SliceSpec, ServiceSpec),
    ApplyNode(NodeSpec),
    /// Watch delete events (namespace, name).
    DeleteService(objects::Pick, objects::Pick),
    DeleteSlice(objects::Pick, objects::Pick),
    /// Complete relists.
    ListServices(Vec<ServiceSpec>),
    ListSlices(Vec<SliceSpec>),
    /// A manifest directory's state at once.
    Snapshot(Vec<ServiceSpec>, Vec<SliceSpec>),
    /// The agent's sync: recompute, check against the mirror, program the changes; a
    /// write may fail after that many ops.
    Sync {
        fail_after: Option<u8>,
    },
    /// The agent restarts and adopts the maps.
    Restart,
}

/// Steps taken from one input: enough for long histories, few enough that every run
/// stays short.
const MAX_STEPS: usize = 48;

/// Structured input: see the module docs.
pub fn event_sequence(data: &[u8]) {
    let Ok(scenario) = Scenario::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let node_name = scenario.node.name();
    let capacity = scenario.small_maps.map_or_else(
        // Roomy maps with Maglev when the number of steps is odd (small maps seldom
        // have room for a forwarding external frontend, which a table needs).
        || Capacity {
            maglev: maglev(4 * (scenario.steps.len() % 2)),
            ..Capacity::default()
        },
        |c| Capacity {
            svc_entries: 1 + usize::from(c.svc_entries),
            backends: 1 + usize::from(c.backends),
            affinity_matches: 1 + usize::from(c.affinity_matches),
            src_ranges: 1 + usize::from(c.src_ranges),
            // From bits that already pick the other sizes, so that the inputs of the
            // corpus keep their meaning.
            maglev: maglev(usize::from(c.src_ranges >> 5)),
        },
    );
    let mut run = Run {
        state: ClusterState::new(NodeModel::named(node_name)),
        mirror: Mirror::new(NodeModel::named(node_name)),
        node_name,
        programmer: Programmer::new(capacity),
        synced: DesiredState::default(),
    };
    for step in scenario.steps.into_iter().take(MAX_STEPS) {
        run.step(step);
    }
    run.step(Step::Sync { fail_after: None });
    check_snapshot(&run.state, &run.mirror);
    run.step(Step::Restart);
    run.step(Step::Sync { fail_after: None });
}

/// An object after validation, as a source sorts it.
enum Validated<M> {
    Proxied(M),
    NotProxied,
    /// Does not parse or fails validation: the last good version stays.
    Invalid,
}

fn service_model(object: Value) -> Validated<ServiceModel> {
    let Ok(service) = serde_json::from_value::<Service>(object) else {
        return Validated::Invalid;
    };
    match ServiceModel::from_k8s(&service) {
        Ok(Some(model)) => Validated::Proxied(model),
        Ok(None) => Validated::NotProxied,
        Err(_) => Validated::Invalid,
    }
}

fn slice_model(object: Value) -> Validated<SliceModel> {
    let Ok(slice) = serde_json::from_value::<EndpointSlice>(object) else {
        return Validated::Invalid;
    };
    match SliceModel::from_k8s(&slice) {
        Ok(Some(model)) => Validated::Proxied(model),
        Ok(None) => Validated::NotProxied,
        Err(_) => Validated::Invalid,
    }
}

/// One run of [`event_sequence`]: the core, the mirror it must agree with, the maps.
struct Run {
    state: ClusterState,
    mirror: Mirror,
    /// This node (the sources watch only their own Node).
    node_name: &'static str,
    programmer: Programmer,
    /// The desired state at the last sync.
    synced: DesiredState,
}

impl Run {
    fn apply_slice(&mut self, spec: &SliceSpec, service: Option<&ServiceSpec>) {
        let (namespace, name) = spec.key_of(service);
        let key = ObjectKey::new(namespace, name);
        match slice_model(spec.object_of(service)) {
            Validated::Proxied(model) => {
                self.mirror.slices.insert(key, model.clone());
                self.state.apply(ClusterEvent::SliceApplied(model));
            }
            Validated::NotProxied => {
                self.mirror.slices.remove(&key);
                self.state.apply(ClusterEvent::SliceDeleted(key));
            }
            Validated::Invalid => {}
        }
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::ApplyService(spec) => {
                let (namespace, name) = spec.key();
                let key = ObjectKey::new(namespace, name);
                match service_model(spec.object()) {
                    Validated::Proxied(model) => {
                        self.mirror.services.insert(key, model.clone());
                        self.state.apply(ClusterEvent::ServiceApplied(model));
                    }
                    Validated::NotProxied => {
                        self.mirror.services.remove(&key);
                        self.state.apply(ClusterEvent::ServiceDeleted(key));
                    }
                    Validated::Invalid => {}
                }
            }
            Step::ApplyPair(slice, service) => {
                self.apply_slice(&slice, Some(&service));
                self.step(Step::ApplyService(service));
            }
            Step::ApplySlice(spec) => self.apply_slice(&spec, None),
            Step::ApplyNode(spec) => {
                let Ok(node) = serde_json::from_value::<Node>(spec.object()) else {
                    return;
                };
                if let Ok(model) = NodeModel::from_k8s(&node)
                    && model.name == self.node_name
                {
                    self.mirror.node = model.clone();
                    self.state.apply(ClusterEvent::NodeApplied(model));
                }
            }
            Step::DeleteService(namespace, name) => {
                let key = ObjectKey::new(
                    objects::namespace(namespace),
                    name.of(objects::SERVICE_NAMES),
                );
                self.mirror.services.remove(&key);
                self.state.apply(ClusterEvent::ServiceDeleted(key));
            }
            Step::DeleteSlice(namespace, name) => {
                let key =
                    ObjectKey::new(objects::namespace(namespace), name.of(objects::SLICE_NAMES));
                self.mirror.slices.remove(&key);
                self.state.apply(ClusterEvent::SliceDeleted(key));
            }
            Step::ListServices(specs) => {
                let listed = first_of_each(specs, ServiceSpec::key)
                    .into_iter()
                    .map(|spec| {
                        let (namespace, name) = spec.key();
                        (
                            ObjectKey::new(namespace, name),
                            service_model(spec.object()),
                        )
                    })
                    .collect();
                let (services, invalid) = relist(&mut self.mirror.services, listed);
                self.state
                    .apply(ClusterEvent::ServicesListed { services, invalid });
            }
            Step::ListSlices(specs) => {
                let listed = first_of_each(specs, SliceSpec::key)
                    .into_iter()
                    .map(|spec| {
                        let (namespace, name) = spec.key();
                        (ObjectKey::new(namespace, name), slice_model(spec.object()))
                    })
                    .collect();
                let (slices, invalid) = relist(&mut self.mirror.slices, listed);
                self.state
                    .apply(ClusterEvent::SlicesListed { slices, invalid });
            }
            Step::Snapshot(services, slices) => {
                let services: Vec<ServiceModel> = first_of_each(services, ServiceSpec::key)
                    .into_iter()
                    .filter_map(|spec| match service_model(spec.object()) {
                        Validated::Proxied(model) => Some(model),
                        Validated::NotProxied | Validated::Invalid => None,
                    })
                    .collect();
                let slices: Vec<SliceModel> = first_of_each(slices, SliceSpec::key)
                    .into_iter()
                    .filter_map(|spec| match slice_model(spec.object()) {
                        Validated::Proxied(model) => Some(model),
                        Validated::NotProxied | Validated::Invalid => None,
                    })
                    .collect();
                self.mirror.services = services.iter().map(|s| (s.key(), s.clone())).collect();
                self.mirror.slices = slices.iter().map(|s| (s.key(), s.clone())).collect();
                let node = self.mirror.node.clone();
                self.state.apply(ClusterEvent::Snapshot {
                    services,
                    slices,
                    node,
                });
            }
            Step::Sync { fail_after } => {
                let changed = self.state.recompute();
                check_consistent(&self.state, &self.mirror);
                check_plan(&self.state.plan());
                let desired = &self.state.index().desired;
                let differing = differing_keys(&self.synced, desired);
                // Every change is reported. A key may be reported that ends unchanged:
                // the services of one batch are recomputed one after another, and a key
                // one of them takes may go back to what it was when the next (a rival
                // claim) is recomputed; syncing it writes nothing.
                let reported: BTreeSet<_> = changed.iter().copied().collect();
                let missed: Vec<_> = differing.difference(&reported).collect();
                assert!(
                    missed.is_empty(),
                    "recompute() did not report changed keys {missed:?}"
                );
                self.programmer
                    .sync(desired, &changed, fail_after.map(usize::from));
                self.synced = desired.clone();
            }
            Step::Restart => {
                self.programmer.restart();
                self.programmer.sync(&self.state.index().desired, &[], None);
            }
        }
    }
}

/// The first spec of each key: a relist or a directory holds an object once.
fn first_of_each<S>(specs: Vec<S>, key: impl Fn(&S) -> (String, String)) -> Vec<S> {
    let mut seen = BTreeSet::new();
    specs.into_iter().filter(|s| seen.insert(key(s))).collect()
}

/// Replaces `store` with a complete list; invalid objects keep their last good
/// version. Returns the list's proxied models and its invalid keys, as the source
/// reports them.
fn relist<M: Clone>(
    store: &mut std::collections::BTreeMap<ObjectKey, M>,
    listed: Vec<(ObjectKey, Validated<M>)>,
) -> (Vec<M>, Vec<ObjectKey>) {
    let mut next = std::collections::BTreeMap::new();
    let (mut models, mut invalid) = (Vec::new(), Vec::new());
    for (key, validated) in listed {
        match validated {
            Validated::Proxied(model) => {
                models.push(model.clone());
                next.insert(key, model);
            }
            Validated::NotProxied => {}
            Validated::Invalid => {
                if let Some(old) = store.remove(&key) {
                    next.insert(key.clone(), old);
                }
                invalid.push(key);
            }
        }
    }
    *store = next;
    (models, invalid)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn corpus(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target)
    }

    /// Every corpus file of every target, through the target's function: the seeds
    /// and every input that once crashed (`regression-*`) pass.
    #[test]
    fn corpus_replays_without_a_crash() {
        for (target, run) in TARGETS {
            let dir = corpus(target);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| {
                    e.map(|e| e.path())
                        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                })
                .collect();
            files.sort();
            assert!(
                files.len() >= 8,
                "{target}: only {} corpus files",
                files.len()
            );
            let mut failed = Vec::new();
            for file in &files {
                let data =
                    std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                if std::panic::catch_unwind(|| run(&data)).is_err() {
                    failed.push(file.display().to_string());
                }
            }
            assert!(failed.is_empty(), "{target}: crashed on {failed:#?}");
        }
    }
}
