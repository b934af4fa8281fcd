//! Kubernetes Service semantics as data: every folder `tests/golden/<group>/<case>/` is
//! one case and one test, named `<group>::<case>` (`cargo test -p socklb-core --test
//! golden -- <filter>`, `-- --list`). The layout and formats are described in
//! tests/golden/README.md; in short a case has
//!
//! - `about.txt`: what the case shows, one line;
//! - its input: `objects.yaml` (the objects, applied in order as one step) or
//!   `steps.yaml` (one YAML document per step: `apply`, `delete`, `listServices` or
//!   `listSlices`, and optionally the map keys the step must change, `changes`);
//! - `plan.txt`: the expected `Plan::render_table()` of the final state, node `node-a`;
//! - `maps.txt`: the expected content of the maps once the final desired state is
//!   programmed into empty ones (the format is documented at [`dump_maps`]);
//! - optionally `flags.txt`: agent flags the case runs with (the balancing ones:
//!   `--lb-algorithm`, `--maglev-table-size`, `--maglev-max-tables`,
//!   `--maglev-hash-seed`); without it, the defaults.
//!
//! The cases go through the public API only: real k8s-openapi objects (YAML, as the
//! API server sends them) are validated by `model::*Model::from_k8s`, fed to
//! `state::ClusterState` as the `events::ClusterEvent`s a source emits (a valid object
//! replaces, a not-proxied one deletes, an invalid one is skipped in a watch event and
//! keeps its last good version in a relist), and the resulting frontends are compared
//! with what kube-proxy does (../shared/reference/service-semantics.md; kube-proxy's
//! pkg/proxy/topology.go `CategorizeEndpoints`, endpointslicecache.go, serviceport.go and
//! the nftables proxier).
//!
//! Every case also checks, after every step, that the incremental core agrees with a
//! computation from scratch: `ClusterState::plan()` equals `plan::compute_plan` over the
//! same objects (kept here independently, with the sources' rules above), and
//! `state.index().desired` equals `DesiredState::from_frontends(&plan.frontends)`. At the
//! end the same objects as one `Snapshot` (the manifest directory's path) must give the
//! same plan and desired state; the plan must survive a JSON round trip; and the desired
//! state, programmed into the in-memory twin of the maps (`maps::twin::MemoryMaps`) by
//! `ProgrammedState::sync_all` + `diff::apply_ops`, must leave no reader a half-written
//! frontend before it is dumped and compared with `maps.txt`.
//!
//! `SOCKLB_GOLDEN_BLESS=1 cargo test -p socklb-core --test golden` rewrites `plan.txt`
//! and `maps.txt` of the cases run from their actual output (and writes them for a new
//! case that has only `about.txt` and its input). The consistency checks above are never
//! blessed. Blessing is refused when `CI` is set (CI=true): CI compares, it never writes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::ExitCode,
};

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use lb_common::{
    AffinityMatch4Key, AffinityMatch6Key, BACKEND_FLAG_LOCAL, Backend4, Backend6, IPPROTO_TCP,
    IPPROTO_UDP, SRC_RANGE_FRONTEND_BITS, SRC_RANGE6_FRONTEND_BITS, SVC_FLAG_NODEPORT,
    SVC_FLAG_SNAT, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_WILDCARD, SrcRange4Key, SrcRange6Key, Svc4Key,
    Svc4Value, Svc6Key, SvcAction, scope,
};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;
use socklb_core::{
    events::{ClusterEvent, ObjectKey},
    maps::{
        Capacity, DesiredState, Family, ProgrammedState, ServiceMaps, V4, V6,
        maglev::{LbAlgorithm, MaglevConfig},
        twin::MemoryMaps,
    },
    model::{NodeModel, ServiceModel, SliceModel},
    plan::{Action, FrontendKind, Plan, compute_plan},
    state::ClusterState,
};

/// The namespace of `delete` steps.
const NS: &str = "demo";
/// The node the plan is computed for.
const NODE: &str = "node-a";
/// Set to 1 to rewrite the expected files from the actual output.
const BLESS_VAR: &str = "SOCKLB_GOLDEN_BLESS";

const ABOUT: &str = "about.txt";
const OBJECTS: &str = "objects.yaml";
const STEPS: &str = "steps.yaml";
const PLAN: &str = "plan.txt";
const MAPS: &str = "maps.txt";
const FLAGS: &str = "flags.txt";

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let bless = env_flag(BLESS_VAR);
    if bless && env_flag("CI") {
        eprintln!("golden: {BLESS_VAR} is set in CI (CI=true): CI compares, it never blesses");
        return ExitCode::FAILURE;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let cases = match discover(&root) {
        Ok(cases) => cases,
        Err(err) => {
            eprintln!("golden: {}: {err}", root.display());
            return ExitCode::FAILURE;
        }
    };
    let trials = cases
        .into_iter()
        .map(|case| {
            Trial::test(case.name.clone(), move || {
                run_case(&case.dir, bless).map_err(Failed::from)
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Printed after the run: the tests run in parallel and their output is not captured.
    let blessed = BLESSED.lock().map(|b| b.clone()).unwrap_or_default();
    if !blessed.is_empty() {
        eprintln!("golden: blessed (rewritten from the actual output):");
        for path in blessed {
            eprintln!("  {path}");
        }
    }
    conclusion.exit_code()
}

/// The files blessing rewrote.
static BLESSED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Set to something other than "", "0" or "false".
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

// ---------------------------------------------------------------------------------------
// Discovery: golden/<group>/<case>/.
// ---------------------------------------------------------------------------------------

struct CaseDir {
    /// `<group>::<case>`.
    name: String,
    dir: PathBuf,
}

/// The entries of `dir`, sorted by name: (name, is a directory).
fn entries(dir: &Path) -> Result<Vec<(String, bool)>, String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| format!("{}: name {n:?} is not UTF-8", dir.display()))?;
        let is_dir = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", entry.path().display()))?
            .is_dir();
        out.push((name, is_dir));
    }
    out.sort();
    Ok(out)
}

fn valid_name(name: &str, extra: char) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == extra)
}

/// Every case folder. A stray file or a badly named folder, or two cases with the same
/// about.txt, fail the whole run; what is wrong inside a case folder fails its test.
fn discover(root: &Path) -> Result<Vec<CaseDir>, String> {
    let mut cases = Vec::new();
    let mut abouts: HashMap<String, String> = HashMap::new();
    for (group, is_dir) in entries(root)? {
        if !is_dir {
            if group == "README.md" {
                continue;
            }
            return Err(format!(
                "unexpected file {group:?} (only group folders and README.md)"
            ));
        }
        if !valid_name(&group, '_') {
            return Err(format!("group folder {group:?}: use [a-z0-9_]"));
        }
        let group_dir = root.join(&group);
        for (case, is_dir) in entries(&group_dir)? {
            if !is_dir {
                return Err(format!(
                    "{group}/{case}: unexpected file (only case folders)"
                ));
            }
            if !valid_name(&case, '-') {
                return Err(format!("{group}/{case}: case folder names use [a-z0-9-]"));
            }
            let name = format!("{group}::{case}");
            let dir = group_dir.join(&case);
            if let Ok(about) = fs::read_to_string(dir.join(ABOUT))
                && let Some(other) = abouts.insert(about.trim().to_owned(), name.clone())
            {
                return Err(format!("{other} and {name} have the same {ABOUT}"));
            }
            cases.push(CaseDir { name, dir });
        }
    }
    if cases.is_empty() {
        return Err("no case folders".to_owned());
    }
    Ok(cases)
}

// ---------------------------------------------------------------------------------------
// A case's input.
// ---------------------------------------------------------------------------------------

enum Op {
    /// Watch events (added or modified), in order.
    Apply(Vec<Value>),
    /// Watch delete events: (kind, name) in namespace demo.
    Delete(Vec<(String, String)>),
    /// A complete (re)list of Services.
    ListServices(Vec<Value>),
    /// A complete (re)list of EndpointSlices.
    ListSlices(Vec<Value>),
}

struct Step {
    op: Op,
    /// When set, the map keys (FrontendKey display) the step must change, sorted.
    changes: Option<Vec<String>>,
}

/// The documents of a YAML stream (empty documents skipped).
fn yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: serde_yaml::Value =
            serde::Deserialize::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        let value = serde_json::to_value(value).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// Checks that `object` is a Kubernetes object of one of `kinds` with a name.
fn check_object(object: &Value, kinds: &[&str]) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap_or("");
    if !kinds.contains(&kind) {
        return Err(format!(
            "an object of kind {kind:?}, expected one of {kinds:?}"
        ));
    }
    if object["metadata"]["name"].as_str().is_none() {
        return Err(format!("a {kind} without metadata.name"));
    }
    Ok(())
}

fn objects_of(value: &Value, kinds: &[&str]) -> Result<Vec<Value>, String> {
    let list = value.as_array().ok_or("expected a list of objects")?;
    for object in list {
        check_object(object, kinds)?;
    }
    Ok(list.clone())
}

fn parse_objects(text: &str) -> Result<Vec<Step>, String> {
    let objects = yaml_docs(text)?;
    for (i, object) in objects.iter().enumerate() {
        check_object(object, &["Service", "EndpointSlice", "Node"])
            .map_err(|e| format!("document {}: {e}", i + 1))?;
    }
    Ok(vec![Step {
        op: Op::Apply(objects),
        changes: None,
    }])
}

fn parse_step(doc: &Value) -> Result<Step, String> {
    let map = doc.as_object().ok_or("a step is a mapping")?;
    let mut op = None;
    let mut changes = None;
    for (key, value) in map {
        let this = match key.as_str() {
            "apply" => Op::Apply(objects_of(value, &["Service", "EndpointSlice", "Node"])?),
            "listServices" => Op::ListServices(objects_of(value, &["Service"])?),
            "listSlices" => Op::ListSlices(objects_of(value, &["EndpointSlice"])?),
            "delete" => {
                let list = value.as_array().ok_or("delete: expected a list")?;
                let mut keys = Vec::new();
                for item in list {
                    let fields = item.as_object().ok_or("delete: {kind: K, name: N}")?;
                    let (Some(kind), Some(name), 2) = (
                        fields.get("kind").and_then(Value::as_str),
                        fields.get("name").and_then(Value::as_str),
                        fields.len(),
                    ) else {
                        return Err(format!("delete: {item}: expected {{kind: K, name: N}}"));
                    };
                    if !["Service", "EndpointSlice"].contains(&kind) {
                        return Err(format!("delete: kind {kind:?}: Service or EndpointSlice"));
                    }
                    keys.push((kind.to_owned(), name.to_owned()));
                }
                Op::Delete(keys)
            }
            "changes" => {
                let list = value.as_array().ok_or("changes: expected a list")?;
                let keys: Option<Vec<String>> =
                    list.iter().map(|k| k.as_str().map(str::to_owned)).collect();
                changes = Some(keys.ok_or("changes: expected a list of strings")?);
                continue;
            }
            other => {
                return Err(format!(
                    "unknown key {other:?} (apply, delete, listServices, listSlices, changes)"
                ));
            }
        };
        if op.replace(this).is_some() {
            return Err("more than one of apply, delete, listServices, listSlices".to_owned());
        }
    }
    let op = op.ok_or("no apply, delete, listServices or listSlices")?;
    Ok(Step { op, changes })
}

fn parse_steps(text: &str) -> Result<Vec<Step>, String> {
    let docs = yaml_docs(text)?;
    if docs.is_empty() {
        return Err("no steps".to_owned());
    }
    docs.iter()
        .enumerate()
        .map(|(i, doc)| parse_step(doc).map_err(|e| format!("step {}: {e}", i + 1)))
        .collect()
}

/// The case's files, checked: its steps, and the expected plan and maps (None when
/// missing, which only blessing accepts).
struct Input {
    steps: Vec<Step>,
    plan: Option<String>,
    maps: Option<String>,
    /// From `flags.txt`, else the defaults.
    balancing: MaglevConfig,
}

/// The balancing flags of `flags.txt`: whitespace-separated `--flag value` pairs.
fn parse_flags(text: &str) -> Result<MaglevConfig, String> {
    let mut words = text.split_whitespace();
    let mut config = MaglevConfig::default();
    while let Some(flag) = words.next() {
        let value = words.next().ok_or(format!("{flag}: a value is missing"))?;
        let number = || -> Result<u32, String> {
            match value.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => value.parse(),
            }
            .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag {
            "--lb-algorithm" => config.algorithm = value.parse::<LbAlgorithm>()?,
            "--maglev-table-size" => config.table_size = number()?,
            "--maglev-max-tables" => config.max_tables = number()?,
            "--maglev-hash-seed" => config.seed = number()?,
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    if config.algorithm == LbAlgorithm::Maglev {
        config = MaglevConfig::maglev(config.table_size, config.max_tables, config.seed)?;
    }
    Ok(config)
}

fn read_input(dir: &Path, bless: bool) -> Result<Input, String> {
    let files = entries(dir)?;
    for (name, is_dir) in &files {
        if *is_dir || ![ABOUT, OBJECTS, STEPS, PLAN, MAPS, FLAGS].contains(&name.as_str()) {
            return Err(format!(
                "unexpected {} {name:?} in the case folder (only {ABOUT}, {OBJECTS} or {STEPS}, {PLAN}, {MAPS}, {FLAGS})",
                if *is_dir { "folder" } else { "file" }
            ));
        }
    }
    let has = |file: &str| files.iter().any(|(name, _)| name == file);
    let read = |file: &str| fs::read_to_string(dir.join(file)).map_err(|e| format!("{file}: {e}"));
    if !has(ABOUT) {
        return Err(format!("{ABOUT} is missing"));
    }
    let about = read(ABOUT)?;
    if about.trim().is_empty() || about.trim_end_matches('\n').contains('\n') {
        return Err(format!("{ABOUT}: one line saying what the case shows"));
    }
    let steps = match (has(OBJECTS), has(STEPS)) {
        (true, false) => parse_objects(&read(OBJECTS)?).map_err(|e| format!("{OBJECTS}: {e}"))?,
        (false, true) => parse_steps(&read(STEPS)?).map_err(|e| format!("{STEPS}: {e}"))?,
        (true, true) => return Err(format!("both {OBJECTS} and {STEPS}: keep one")),
        (false, false) => return Err(format!("{OBJECTS} or {STEPS} is missing")),
    };
    let expected = |file: &str| -> Result<Option<String>, String> {
        match (has(file), bless) {
            (true, _) => read(file).map(Some),
            (false, true) => Ok(None),
            (false, false) => Err(format!(
                "{file} is missing (write it, or create it with {BLESS_VAR}=1)"
            )),
        }
    };
    let balancing = if has(FLAGS) {
        parse_flags(&read(FLAGS)?).map_err(|e| format!("{FLAGS}: {e}"))?
    } else {
        MaglevConfig::default()
    };
    Ok(Input {
        steps,
        plan: expected(PLAN)?,
        maps: expected(MAPS)?,
        balancing,
    })
}

// ---------------------------------------------------------------------------------------
// Running the steps: they become ClusterEvents as a source emits them.
// ---------------------------------------------------------------------------------------

enum Validated<M> {
    Proxied(M),
    NotProxied,
    Invalid,
}

fn validated<M, E>(result: Result<Option<M>, E>) -> Validated<M> {
    match result {
        Ok(Some(model)) => Validated::Proxied(model),
        Ok(None) => Validated::NotProxied,
        Err(_) => Validated::Invalid,
    }
}

fn object_key(object: &Value) -> ObjectKey {
    let meta = &object["metadata"];
    ObjectKey::new(
        meta["namespace"].as_str().unwrap_or("default"),
        meta["name"].as_str().unwrap_or_default(),
    )
}

fn service_of(object: &Value) -> Result<Validated<ServiceModel>, String> {
    let svc: Service = serde_json::from_value(object.clone())
        .map_err(|e| format!("Service {}: {e}", object_key(object)))?;
    Ok(validated(ServiceModel::from_k8s(&svc)))
}

fn slice_of(object: &Value) -> Result<Validated<SliceModel>, String> {
    let slice: EndpointSlice = serde_json::from_value(object.clone())
        .map_err(|e| format!("EndpointSlice {}: {e}", object_key(object)))?;
    Ok(validated(SliceModel::from_k8s(&slice)))
}

/// The objects the core should hold, kept without ClusterState's indexes.
struct Objects {
    services: BTreeMap<ObjectKey, ServiceModel>,
    slices: BTreeMap<ObjectKey, SliceModel>,
    node: NodeModel,
}

impl Objects {
    fn plan(&self) -> Plan {
        let services: Vec<ServiceModel> = self.services.values().cloned().collect();
        let slices: Vec<SliceModel> = self.slices.values().cloned().collect();
        compute_plan(&services, &slices, &self.node)
    }
}

/// Replaces `store` with a complete list; invalid objects keep their last good version.
fn relist<M>(
    store: &mut BTreeMap<ObjectKey, M>,
    listed: Vec<(ObjectKey, Validated<M>)>,
) -> (Vec<M>, Vec<ObjectKey>)
where
    M: Clone,
{
    let mut next = BTreeMap::new();
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

/// The events a source emits for `op`, applied to `objects` as well.
fn events_of(op: &Op, objects: &mut Objects) -> Result<Vec<ClusterEvent>, String> {
    let mut out = Vec::new();
    match op {
        Op::Apply(list) => {
            for object in list {
                let key = object_key(object);
                match object["kind"].as_str().unwrap_or_default() {
                    "Service" => match service_of(object)? {
                        Validated::Proxied(model) => {
                            objects.services.insert(key, model.clone());
                            out.push(ClusterEvent::ServiceApplied(model));
                        }
                        Validated::NotProxied => {
                            objects.services.remove(&key);
                            out.push(ClusterEvent::ServiceDeleted(key));
                        }
                        Validated::Invalid => {}
                    },
                    "EndpointSlice" => match slice_of(object)? {
                        Validated::Proxied(model) => {
                            objects.slices.insert(key, model.clone());
                            out.push(ClusterEvent::SliceApplied(model));
                        }
                        Validated::NotProxied => {
                            objects.slices.remove(&key);
                            out.push(ClusterEvent::SliceDeleted(key));
                        }
                        Validated::Invalid => {}
                    },
                    "Node" => {
                        let node: Node = serde_json::from_value(object.clone())
                            .map_err(|e| format!("Node {key}: {e}"))?;
                        let model =
                            NodeModel::from_k8s(&node).map_err(|e| format!("Node {key}: {e}"))?;
                        objects.node = model.clone();
                        out.push(ClusterEvent::NodeApplied(model));
                    }
                    other => return Err(format!("unexpected kind {other:?}")),
                }
            }
        }
        Op::Delete(list) => {
            for (kind, name) in list {
                let key = ObjectKey::new(NS, name);
                match kind.as_str() {
                    "Service" => {
                        objects.services.remove(&key);
                        out.push(ClusterEvent::ServiceDeleted(key));
                    }
                    "EndpointSlice" => {
                        objects.slices.remove(&key);
                        out.push(ClusterEvent::SliceDeleted(key));
                    }
                    other => return Err(format!("unexpected kind {other:?}")),
                }
            }
        }
        Op::ListServices(list) => {
            let mut listed = Vec::new();
            for object in list {
                listed.push((object_key(object), service_of(object)?));
            }
            let (services, invalid) = relist(&mut objects.services, listed);
            out.push(ClusterEvent::ServicesListed { services, invalid });
        }
        Op::ListSlices(list) => {
            let mut listed = Vec::new();
            for object in list {
                listed.push((object_key(object), slice_of(object)?));
            }
            let (slices, invalid) = relist(&mut objects.slices, listed);
            out.push(ClusterEvent::SlicesListed { slices, invalid });
        }
    }
    Ok(out)
}

/// A desired state as sorted lines, to diff two of them.
fn desired_lines(desired: &DesiredState) -> String {
    let mut lines: Vec<String> = desired
        .frontends
        .iter()
        .map(|(key, value)| format!("{key}: {value:?}\n"))
        .collect();
    lines.sort();
    lines.concat()
}

/// `expected == actual`, or an error with what differs.
fn same(what: &str, expected: &str, actual: &str) -> Result<(), String> {
    if expected == actual {
        return Ok(());
    }
    Err(format!(
        "{what}:\n{}",
        unified_diff("expected", "actual", expected, actual)
    ))
}

/// The incremental core agrees with a computation from scratch over the same objects.
fn check_consistent(state: &ClusterState, objects: &Objects) -> Result<(), String> {
    let plan = state.plan();
    same(
        "ClusterState::plan() (actual) vs compute_plan over the same objects (expected)",
        &objects.plan().to_json(),
        &plan.to_json(),
    )?;
    same(
        "the incremental desired state (actual) vs DesiredState::from_frontends(plan) (expected)",
        &desired_lines(&DesiredState::from_frontends(&plan.frontends)),
        &desired_lines(&state.index().desired),
    )?;
    if state.has_pending() {
        return Err("ClusterState has pending work after recompute()".to_owned());
    }
    Ok(())
}

/// Checks of the final plan that hold for every case.
fn check_plan(plan: &Plan) -> Result<(), String> {
    if plan.node != NODE {
        return Err(format!("plan for node {:?}, expected {NODE:?}", plan.node));
    }
    for frontend in &plan.frontends {
        if (frontend.action == Action::Forward) == frontend.backends.is_empty() {
            return Err(format!("forward iff backends: {frontend:?}"));
        }
        if (frontend.kind == FrontendKind::NodePort) != frontend.ip.is_unspecified() {
            return Err(format!("NodePort iff unspecified address: {frontend:?}"));
        }
    }
    let json = plan.to_json();
    let back = Plan::from_json(&json).map_err(|e| format!("plan JSON: {e}\n{json}"))?;
    same("JSON round trip of the plan", &json, &back.to_json())?;
    if back != *plan {
        return Err("JSON round trip of the plan changed it".to_owned());
    }
    Ok(())
}

/// Runs the steps; returns the final state and the objects it should hold.
fn run_steps(steps: &[Step]) -> Result<(ClusterState, Objects), String> {
    let mut state = ClusterState::new(NodeModel::named(NODE));
    let mut objects = Objects {
        services: BTreeMap::new(),
        slices: BTreeMap::new(),
        node: NodeModel::named(NODE),
    };
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        for event in events_of(&step.op, &mut objects).map_err(|e| format!("step {n}: {e}"))? {
            state.apply(event);
        }
        let changed: Vec<String> = state.recompute().iter().map(ToString::to_string).collect();
        if let Some(want) = &step.changes
            && changed != *want
        {
            return Err(format!(
                "step {n}: changed map keys\n  expected: {want:?}\n  actual:   {changed:?}"
            ));
        }
        check_consistent(&state, &objects).map_err(|e| format!("step {n}: {e}"))?;
    }
    Ok((state, objects))
}

/// The manifest directory's path: the same objects at once give the same result.
fn check_snapshot(state: &ClusterState, objects: &Objects) -> Result<(), String> {
    let mut snapshot = ClusterState::new(NodeModel::named("elsewhere"));
    snapshot.apply(ClusterEvent::Snapshot {
        services: objects.services.values().cloned().collect(),
        slices: objects.slices.values().cloned().collect(),
        node: objects.node.clone(),
    });
    snapshot.recompute();
    if !snapshot.synced() {
        return Err("snapshot: not synced".to_owned());
    }
    same(
        "plan from one Snapshot (actual) vs from the steps (expected)",
        &state.plan().to_json(),
        &snapshot.plan().to_json(),
    )?;
    same(
        "desired state from one Snapshot (actual) vs from the steps (expected)",
        &desired_lines(&state.index().desired),
        &desired_lines(&snapshot.index().desired),
    )
}

fn run_case(dir: &Path, bless: bool) -> Result<(), String> {
    let input = read_input(dir, bless)?;
    let (state, objects) = run_steps(&input.steps)?;
    let plan = state.plan();
    check_plan(&plan)?;
    check_snapshot(&state, &objects)?;
    let plan = plan.with_balancing(&input.balancing);
    let maps = dump_maps(&state.index().desired, &input.balancing)?;

    let actual = [
        (PLAN, input.plan, plan.render_table()),
        (MAPS, input.maps, maps),
    ];
    let mut failures = Vec::new();
    for (file, expected, actual) in actual {
        if expected.as_deref() == Some(actual.as_str()) {
            continue;
        }
        if bless {
            let path = dir.join(file);
            fs::write(&path, &actual).map_err(|e| format!("{}: {e}", path.display()))?;
            if let Ok(mut blessed) = BLESSED.lock() {
                blessed.push(path.display().to_string());
            }
            continue;
        }
        failures.push(format!(
            "{file} differs (expected: the file, actual: this run; {BLESS_VAR}=1 rewrites it):\n{}",
            unified_diff(
                &format!("{file} (expected)"),
                "actual",
                expected.as_deref().unwrap_or(""),
                &actual
            )
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

// ---------------------------------------------------------------------------------------
// maps.txt: the maps, programmed from scratch, one line per entry.
// ---------------------------------------------------------------------------------------

/// Programs `desired` into empty in-memory maps and renders every entry, one line each:
///
/// ```text
/// svc <frontend> <scope> slot 0: <action> count=<n> flags=<flags> affinity=<seconds>
/// svc <frontend> <scope> slot <n>: backend <id>
/// backend <id>: <ip>:<port>/<proto> local=<true|false>
/// src <frontend>: <source prefix>
/// affinity <frontend> <scope>: backend <id> in slot <n>
/// maglev table <n>: <frontend> <scope>, <M> entries: backend <id> x<entries>, ...
/// maglev full <frontend key>: no free table, picks at random
/// skipped <frontend key>: not IPv4
/// ```
///
/// - `<frontend>` is `<ip>:<port>/<proto>`; `*:<port>/<proto>` for a NodePort (address
///   0.0.0.0); `<ip>:*` for the wildcard entry of a service address (port 0, protocol 0).
/// - `<scope>` is `internal` (socket hooks) or `external` (TC program).
/// - `<action>` is forward, reject or drop; `<flags>` the SVC_FLAG_* names (wildcard,
///   snat, nodeport, source-ranges) joined by commas, `-` for none.
/// - a `src` line is one allowed source (loadBalancerSourceRanges) of an external
///   frontend: the LPM key's frontend and its source prefix.
/// - an `affinity` line is one entry of the affinity match map: a backend that still
///   serves a frontend with session affinity, and the slot that holds it.
/// - a `maglev table` line sums up one Maglev table (with `--lb-algorithm maglev`):
///   the frontend whose slot 0 names it (`maglev=<n>` there) and how many of its
///   entries each backend holds; every entry must name one of that frontend's slots.
///   `maglev full` lists the frontends that wanted a table when none was free.
/// - `skipped` lines list desired frontends the IPv4 maps cannot hold.
///
/// Fields the layout says are zero (padding; a slot's count, action, flags and
/// affinity) are shown as `name=value` only when they are not,
/// and numbers nobody names (an unknown action, protocol, scope or flag bit) as
/// numbers, so a wrong entry always shows. The values are decoded from the raw map
/// layout (network byte order), not with the agent's own decoders.
///
/// Lines are sorted: service entries by address, port, protocol, scope and slot
/// (numerically); then backends by id; then source ranges by frontend and prefix;
/// then affinity matches by frontend and backend id; then Maglev tables by index;
/// then skipped frontends. Backend
/// ids come from `ProgrammedState` on a fresh state,
/// so they are deterministic.
fn dump_maps(desired: &DesiredState, balancing: &MaglevConfig) -> Result<String, String> {
    let mut out = dump_family::<V4>(desired, balancing)?;
    let v6 = dump_family::<V6>(desired, balancing)?;
    if !v6.is_empty() {
        out.push_str("# IPv6 maps (backend ids and Maglev tables of their own)\n");
        out.push_str(&v6);
    }
    Ok(out)
}

/// One family's map entries, decoded from the raw layout.
trait Dump: Family {
    /// (address, port, protocol, scope, slot, pad is zero) of a service key.
    fn svc(key: &Self::SvcKey) -> (IpAddr, u16, u8, u8, u16, bool);
    /// (address, port, protocol, flags) of a backend.
    fn backend(b: &Self::Backend) -> (IpAddr, u16, u8, u8);
    /// (frontend address, port, protocol, source, pad is zero) of a source range key.
    fn src(key: &Self::SrcRangeKey) -> (IpAddr, u16, u8, IpAddr, bool);
    /// Bits of a source range key before the source prefix.
    const SRC_FRONTEND_BITS: u32;
    /// (frontend address, port, protocol, scope, backend id) of an affinity match key.
    fn affinity(key: &Self::AffinityMatchKey) -> (IpAddr, u16, u8, u8, u32);
}

impl Dump for V4 {
    fn svc(k: &Svc4Key) -> (IpAddr, u16, u8, u8, u16, bool) {
        (
            ip(k.address).into(),
            k.dport,
            k.proto,
            k.scope,
            k.backend_slot,
            k.pad == [0; 2],
        )
    }
    fn backend(b: &Backend4) -> (IpAddr, u16, u8, u8) {
        (ip(b.address).into(), b.port, b.proto, b.flags)
    }
    fn src(k: &SrcRange4Key) -> (IpAddr, u16, u8, IpAddr, bool) {
        (
            ip(k.address).into(),
            k.dport,
            k.proto,
            ip(k.source).into(),
            k.pad == 0,
        )
    }
    const SRC_FRONTEND_BITS: u32 = SRC_RANGE_FRONTEND_BITS;
    fn affinity(k: &AffinityMatch4Key) -> (IpAddr, u16, u8, u8, u32) {
        (
            ip(k.address).into(),
            k.dport,
            k.proto,
            k.scope,
            k.backend_id,
        )
    }
}

impl Dump for V6 {
    fn svc(k: &Svc6Key) -> (IpAddr, u16, u8, u8, u16, bool) {
        (
            ip6(&k.address).into(),
            k.dport,
            k.proto,
            k.scope,
            k.backend_slot,
            k.pad == [0; 2],
        )
    }
    fn backend(b: &Backend6) -> (IpAddr, u16, u8, u8) {
        (ip6(&b.address).into(), b.port, b.proto, b.flags)
    }
    fn src(k: &SrcRange6Key) -> (IpAddr, u16, u8, IpAddr, bool) {
        (
            ip6(&k.address).into(),
            k.dport,
            k.proto,
            ip6(&k.source).into(),
            k.pad == 0,
        )
    }
    const SRC_FRONTEND_BITS: u32 = SRC_RANGE6_FRONTEND_BITS;
    fn affinity(k: &AffinityMatch6Key) -> (IpAddr, u16, u8, u8, u32) {
        (
            ip6(&k.address).into(),
            k.dport,
            k.proto,
            k.scope,
            k.backend_id,
        )
    }
}

fn dump_family<F: Dump>(
    desired: &DesiredState,
    balancing: &MaglevConfig,
) -> Result<String, String> {
    let mut programmed = ProgrammedState::<F>::with_capacity(Capacity {
        maglev: *balancing,
        ..Capacity::default()
    });
    let (ops, stats) = programmed.sync_all(desired);
    if !stats.skipped_full.is_empty() {
        return Err(format!("maps full: {:?}", stats.skipped_full));
    }
    let mut maps = MemoryMaps::<F>::default();
    for op in &ops {
        maps.apply(op).map_err(|e| e.to_string())?;
        maps.reader_view_after(op)
            .map_err(|e| format!("after {op:?} a reader could see a half-written frontend: {e}"))?;
    }

    let mut out = String::new();
    let mut services = maps.dump_services().map_err(|e| e.to_string())?;
    services.sort_by_key(|(key, _)| {
        let (address, dport, proto, scope, slot, pad_zero) = F::svc(key);
        (address, port(dport), proto, scope, slot, pad_zero)
    });
    for (key, value) in &services {
        out.push_str(&svc_line(F::svc(key), value));
    }
    let mut backends = maps.dump_backends().map_err(|e| e.to_string())?;
    backends.sort_by_key(|(id, _)| *id);
    for (id, backend) in &backends {
        out.push_str(&backend_line(*id, <F as Dump>::backend(backend)));
    }
    let mut ranges = maps.dump_src_ranges().map_err(|e| e.to_string())?;
    ranges.sort_by_key(|(key, len)| {
        let (address, dport, proto, source, pad_zero) = F::src(key);
        (address, port(dport), proto, source, *len, pad_zero)
    });
    for (key, len) in &ranges {
        out.push_str(&src_line(F::src(key), *len, F::SRC_FRONTEND_BITS));
    }
    let mut matches = maps.dump_affinity_matches().map_err(|e| e.to_string())?;
    matches.sort_by_key(|(key, _)| {
        let (address, dport, proto, scope, id) = F::affinity(key);
        (address, port(dport), proto, scope, id)
    });
    for (key, slot) in &matches {
        let (address, dport, proto, scope, id) = F::affinity(key);
        let _ = writeln!(
            out,
            "affinity {} {}: backend {id} in slot {slot}",
            frontend(address, dport, proto),
            scope_name(scope),
        );
    }
    for (table, entries) in &maps.maglev {
        let named: Vec<&(F::SvcKey, Svc4Value)> = services
            .iter()
            .filter(|(k, v)| F::slot_of(k) == 0 && v.backend_id == *table)
            .collect();
        let [(key, value)] = named.as_slice() else {
            return Err(format!(
                "Maglev table {table} is named by {} frontends",
                named.len()
            ));
        };
        let slots: Vec<u32> = (1..=value.count)
            .filter_map(|slot| {
                services
                    .iter()
                    .find(|(k, _)| *k == F::with_slot(key, slot))
                    .map(|(_, v)| v.backend_id)
            })
            .collect();
        let mut held: BTreeMap<u32, usize> = BTreeMap::new();
        for id in entries {
            if !slots.contains(id) {
                return Err(format!(
                    "Maglev table {table} names backend {id}, not a slot of its frontend"
                ));
            }
            *held.entry(*id).or_default() += 1;
        }
        let held: Vec<String> = held
            .iter()
            .map(|(id, n)| format!("backend {id} x{n}"))
            .collect();
        let (address, dport, proto, scope, ..) = F::svc(key);
        let _ = writeln!(
            out,
            "maglev table {table}: {} {}, {} entries: {}",
            frontend(address, dport, proto),
            scope_name(scope),
            entries.len(),
            held.join(", ")
        );
    }
    for key in &stats.maglev_full {
        let _ = writeln!(out, "maglev full {key}: no free table, picks at random");
    }
    let mut skipped: Vec<String> = stats
        .skipped_family
        .iter()
        .map(ToString::to_string)
        .collect();
    skipped.sort();
    for key in skipped {
        let _ = writeln!(
            out,
            "skipped {key}: backends or source ranges not {}",
            F::NAME
        );
    }
    Ok(out)
}

/// An address as the maps store it: network byte order in the u32's memory.
fn ip(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// An IPv6 address as the maps store it: four u32 words in network byte order.
fn ip6(raw: &[u32; 4]) -> Ipv6Addr {
    let mut bytes = [0u8; 16];
    for (i, word) in raw.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(bytes)
}

/// A port as the maps store it: network byte order in the u16's memory.
fn port(raw: u16) -> u16 {
    u16::from_be_bytes(raw.to_ne_bytes())
}

fn proto(raw: u8) -> String {
    match raw {
        IPPROTO_TCP => "TCP".to_owned(),
        IPPROTO_UDP => "UDP".to_owned(),
        other => format!("proto{other}"),
    }
}

fn frontend(ip: IpAddr, dport: u16, protocol: u8) -> String {
    let shown = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    match (dport, protocol) {
        (0, 0) => format!("{shown}:*"),
        _ if ip.is_unspecified() => format!("*:{}/{}", port(dport), proto(protocol)),
        _ => format!("{shown}:{}/{}", port(dport), proto(protocol)),
    }
}

fn flag_names(flags: u8, names: &[(u8, &str)]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut rest = flags;
    for (bit, name) in names {
        if flags & bit != 0 {
            out.push((*name).to_owned());
            rest &= !bit;
        }
    }
    if rest != 0 {
        out.push(format!("{rest:#04x}"));
    }
    if out.is_empty() {
        "-".to_owned()
    } else {
        out.join(",")
    }
}

fn scope_name(raw: u8) -> String {
    match raw {
        scope::INTERNAL => "internal".to_owned(),
        scope::EXTERNAL => "external".to_owned(),
        other => format!("scope{other}"),
    }
}

fn svc_line(key: (IpAddr, u16, u8, u8, u16, bool), value: &Svc4Value) -> String {
    let (address, dport, protocol, scope, slot, pad_zero) = key;
    let scope = scope_name(scope);
    let mut line = format!(
        "svc {} {scope} slot {slot}:",
        frontend(address, dport, protocol)
    );
    if slot == 0 {
        let action = match SvcAction::from_u8(value.action) {
            Some(SvcAction::Forward) => "forward".to_owned(),
            Some(SvcAction::Reject) => "reject".to_owned(),
            Some(SvcAction::Drop) => "drop".to_owned(),
            None => format!("action{}", value.action),
        };
        let flags = flag_names(
            value.flags,
            &[
                (SVC_FLAG_WILDCARD, "wildcard"),
                (SVC_FLAG_SNAT, "snat"),
                (SVC_FLAG_NODEPORT, "nodeport"),
                (SVC_FLAG_SOURCE_RANGES, "source-ranges"),
            ],
        );
        let _ = write!(
            line,
            " {action} count={} flags={flags} affinity={}",
            value.count, value.affinity_timeout_s
        );
        if value.backend_id != 0 {
            let _ = write!(line, " maglev={}", value.backend_id);
        }
    } else {
        let _ = write!(line, " backend {}", value.backend_id);
        for (name, v) in [
            ("count", u32::from(value.count)),
            ("action", u32::from(value.action)),
            ("flags", u32::from(value.flags)),
            ("affinity", value.affinity_timeout_s),
        ] {
            if v != 0 {
                let _ = write!(line, " {name}={v}");
            }
        }
    }
    if !pad_zero {
        line.push_str(" pad!=0");
    }
    line.push('\n');
    line
}

fn backend_line(id: u32, backend: (IpAddr, u16, u8, u8)) -> String {
    let (address, port_raw, protocol, flags) = backend;
    let shown = match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let mut line = format!(
        "backend {id}: {shown}:{}/{} local={}",
        port(port_raw),
        proto(protocol),
        flags & BACKEND_FLAG_LOCAL != 0
    );
    let rest = flags & !BACKEND_FLAG_LOCAL;
    if rest != 0 {
        let _ = write!(line, " flags={rest:#04x}");
    }
    line.push('\n');
    line
}

fn src_line(key: (IpAddr, u16, u8, IpAddr, bool), prefix_len: u32, frontend_bits: u32) -> String {
    let (address, dport, protocol, source, pad_zero) = key;
    let mut line = format!("src {}: ", frontend(address, dport, protocol));
    match prefix_len.checked_sub(frontend_bits) {
        Some(len) => {
            let _ = write!(line, "{source}/{len}");
        }
        None => {
            let _ = write!(line, "{source} prefix_len={prefix_len}");
        }
    }
    if !pad_zero {
        line.push_str(" pad!=0");
    }
    line.push('\n');
    line
}

// ---------------------------------------------------------------------------------------
// A unified diff of two texts, by lines.
// ---------------------------------------------------------------------------------------

/// Lines of context around each change.
const CONTEXT: usize = 3;

#[derive(Clone, Copy, PartialEq)]
enum Edit {
    Same,
    Removed,
    Added,
}

/// `--- a`/`+++ b` and `@@ -l,n +l,n @@` hunks, as diff -u prints them.
fn unified_diff(a_name: &str, b_name: &str, a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    // Longest common subsequence, from the ends.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // The edit script: (edit, line of a, line of b, text), lines counted from 0.
    let mut script: Vec<(Edit, usize, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            script.push((Edit::Same, i, j, a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removed lines first, as diff -u shows a changed line.
            script.push((Edit::Removed, i, j, a[i]));
            i += 1;
        } else {
            script.push((Edit::Added, i, j, b[j]));
            j += 1;
        }
    }
    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    let changed: Vec<usize> = (0..script.len())
        .filter(|&k| script[k].0 != Edit::Same)
        .collect();
    if changed.is_empty() {
        out.push_str("(the lines are the same; the texts differ in line endings)\n");
        return out;
    }
    // Hunks: changes with CONTEXT lines around them, merged when they touch.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &k in &changed {
        let start = k.saturating_sub(CONTEXT);
        let end = (k + CONTEXT + 1).min(script.len());
        match hunks.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => hunks.push((start, end)),
        }
    }
    for (start, end) in hunks {
        let lines = &script[start..end];
        let a_len = lines.iter().filter(|l| l.0 != Edit::Added).count();
        let b_len = lines.iter().filter(|l| l.0 != Edit::Removed).count();
        // diff -u counts from 1, and names the line before an empty range.
        let a_start = lines[0].1 + usize::from(a_len > 0);
        let b_start = lines[0].2 + usize::from(b_len > 0);
        let _ = writeln!(out, "@@ -{a_start},{a_len} +{b_start},{b_len} @@");
        for (edit, _, _, text) in lines {
            let mark = match edit {
                Edit::Same => ' ',
                Edit::Removed => '-',
                Edit::Added => '+',
            };
            let _ = writeln!(out, "{mark}{text}");
        }
    }
    out
}
