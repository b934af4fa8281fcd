//! Kubernetes Service semantics, table-driven and without IO, through the public API
//! only: real k8s-openapi objects (JSON and YAML literals, as the API server sends them)
//! are validated by `model::*Model::from_k8s`, fed to `state::ClusterState` as the
//! `source::ClusterEvent`s a source emits, and the resulting frontends are compared with
//! what kube-proxy does (../shared/reference/service-semantics.md; kube-proxy's
//! pkg/proxy/topology.go `CategorizeEndpoints`, endpointslicecache.go, serviceport.go and
//! the nftables proxier).
//!
//! Every case also checks, after every step, that the incremental core agrees with a
//! computation from scratch: `ClusterState::plan()` equals `plan::compute_plan` over the
//! same objects (kept here independently, with the sources' rules: a valid object
//! replaces, a not-proxied one deletes, an invalid one leaves the last good version),
//! and `state.index().desired` equals `DesiredState::from_frontends(&plan.frontends)`.
//! At the end the same objects as one `Snapshot` (the manifest directory's path) must
//! give the same plan and desired state.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

use std::collections::BTreeMap;

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};
use socklb_core::{
    events::{ClusterEvent, ObjectKey},
    maps::DesiredState,
    model::{NodeModel, ServiceModel, SliceModel},
    plan::{Action, Frontend, FrontendKind, Plan, compute_plan},
    state::ClusterState,
};

const NS: &str = "demo";
const NODE: &str = "node-a";

// ---------------------------------------------------------------------------------------
// Objects, as the API server would send them.
// ---------------------------------------------------------------------------------------

/// Deep-merges `overrides` into `base`: objects merge key by key, a `null` removes the
/// key, anything else replaces.
fn merge(mut base: Value, overrides: Value) -> Value {
    fn merge_into(base: &mut Value, overrides: Value) {
        match (base, overrides) {
            (Value::Object(base), Value::Object(overrides)) => {
                for (key, value) in overrides {
                    if value.is_null() {
                        base.remove(&key);
                    } else {
                        merge_into(base.entry(key).or_insert(Value::Null), value);
                    }
                }
            }
            (base, overrides) => *base = overrides,
        }
    }
    merge_into(&mut base, overrides);
    base
}

/// A ClusterIP Service `name` on `ip` with port http 80 -> targetPort http and a
/// selector, as the API server returns it; `spec` is merged over its spec.
fn svc(name: &str, ip: &str, spec: Value) -> Value {
    merge(
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS, "resourceVersion": "1"},
            "spec": {
                "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "selector": {"app": name},
                "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
            },
            "status": {"loadBalancer": {}},
        }),
        json!({ "spec": spec }),
    )
}

fn web(spec: Value) -> Value {
    svc("web", "10.96.0.10", spec)
}

/// `web` as type NodePort, nodePort 30080, with `spec` merged over it.
fn web_node_port(spec: Value) -> Value {
    web(merge(
        json!({
            "type": "NodePort", "externalTrafficPolicy": "Cluster",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30080}],
        }),
        spec,
    ))
}

/// An EndpointSlice of Service `service`, as the EndpointSlice controller writes it.
fn slice(name: &str, service: &str, ports: Value, endpoints: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": NS, "resourceVersion": "1",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// Port http -> 8080/TCP.
fn http() -> Value {
    json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
}

/// A slice of `web` with port http -> 8080.
fn web_slice(name: &str, endpoints: Value) -> Value {
    slice(name, "web", http(), endpoints)
}

/// A ready endpoint with the conditions the controller writes, on no particular node.
fn ep(ip: &str) -> Value {
    json!({
        "addresses": [ip],
        "conditions": {"ready": true, "serving": true, "terminating": false},
    })
}

/// A ready endpoint on `node`.
fn ep_on(ip: &str, node: &str) -> Value {
    merge(ep(ip), json!({"nodeName": node}))
}

fn not_ready(endpoint: Value) -> Value {
    merge(
        endpoint,
        json!({"conditions": {"ready": false, "serving": false, "terminating": false}}),
    )
}

/// Terminating (never ready), still `serving` or not.
fn terminating(endpoint: Value, serving: bool) -> Value {
    merge(
        endpoint,
        json!({"conditions": {"ready": false, "serving": serving, "terminating": true}}),
    )
}

fn for_zones(endpoint: Value, zones: &[&str]) -> Value {
    let zones: Vec<Value> = zones.iter().map(|z| json!({"name": z})).collect();
    merge(endpoint, json!({"hints": {"forZones": zones}}))
}

fn for_nodes(endpoint: Value, nodes: &[&str]) -> Value {
    let nodes: Vec<Value> = nodes.iter().map(|n| json!({"name": n})).collect();
    merge(endpoint, json!({"hints": {"forNodes": nodes}}))
}

/// This node's Node object, with a zone label or none.
fn node(zone: Option<&str>) -> Value {
    let mut labels = json!({"kubernetes.io/hostname": NODE});
    if let Some(zone) = zone {
        labels["topology.kubernetes.io/zone"] = json!(zone);
    }
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": labels}})
}

/// The documents of a YAML stream.
fn yaml(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::to_value(value).unwrap()
        })
        .filter(|value| !value.is_null())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The harness: steps become ClusterEvents as a source emits them.
// ---------------------------------------------------------------------------------------

enum Op {
    /// Watch events (added or modified), in order.
    Apply(Vec<Value>),
    /// Watch delete events: (kind, name) in namespace demo.
    Delete(Vec<(&'static str, &'static str)>),
    /// A complete (re)list of Services.
    ListServices(Vec<Value>),
    /// A complete (re)list of EndpointSlices.
    ListSlices(Vec<Value>),
}

struct Step {
    op: Op,
    /// When set, the map keys (FrontendKey display) the step must change, sorted.
    changes: Option<Vec<&'static str>>,
}

impl Step {
    fn changes(mut self, keys: &[&'static str]) -> Step {
        self.changes = Some(keys.to_vec());
        self
    }
}

fn apply(objects: Vec<Value>) -> Step {
    Step {
        op: Op::Apply(objects),
        changes: None,
    }
}

fn delete(objects: &[(&'static str, &'static str)]) -> Step {
    Step {
        op: Op::Delete(objects.to_vec()),
        changes: None,
    }
}

fn list_services(objects: Vec<Value>) -> Step {
    Step {
        op: Op::ListServices(objects),
        changes: None,
    }
}

fn list_slices(objects: Vec<Value>) -> Step {
    Step {
        op: Op::ListSlices(objects),
        changes: None,
    }
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    /// "service TYPE address/PROTO action backends [affinity=N]" per frontend, in plan
    /// order (service without its "demo/" namespace).
    want: Vec<&'static str>,
}

/// A case made of one step applying `objects`.
fn objects(name: &'static str, objects: Vec<Value>, want: &[&'static str]) -> Case {
    Case {
        name,
        steps: vec![apply(objects)],
        want: want.to_vec(),
    }
}

fn events(name: &'static str, steps: Vec<Step>, want: &[&'static str]) -> Case {
    Case {
        name,
        steps,
        want: want.to_vec(),
    }
}

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
        meta["name"].as_str().unwrap(),
    )
}

fn service_of(object: &Value) -> Validated<ServiceModel> {
    let svc: Service = serde_json::from_value(object.clone()).expect("a Service");
    validated(ServiceModel::from_k8s(&svc))
}

fn slice_of(object: &Value) -> Validated<SliceModel> {
    let slice: EndpointSlice = serde_json::from_value(object.clone()).expect("an EndpointSlice");
    validated(SliceModel::from_k8s(&slice))
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
fn events_of(op: Op, objects: &mut Objects) -> Vec<ClusterEvent> {
    let mut out = Vec::new();
    match op {
        Op::Apply(list) => {
            for object in list {
                let key = object_key(&object);
                match object["kind"].as_str().unwrap() {
                    "Service" => match service_of(&object) {
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
                    "EndpointSlice" => match slice_of(&object) {
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
                        let node: Node = serde_json::from_value(object).unwrap();
                        let model = NodeModel::from_k8s(&node).unwrap();
                        objects.node = model.clone();
                        out.push(ClusterEvent::NodeApplied(model));
                    }
                    other => panic!("unexpected kind {other}"),
                }
            }
        }
        Op::Delete(list) => {
            for (kind, name) in list {
                let key = ObjectKey::new(NS, name);
                match kind {
                    "Service" => {
                        objects.services.remove(&key);
                        out.push(ClusterEvent::ServiceDeleted(key));
                    }
                    "EndpointSlice" => {
                        objects.slices.remove(&key);
                        out.push(ClusterEvent::SliceDeleted(key));
                    }
                    other => panic!("unexpected kind {other}"),
                }
            }
        }
        Op::ListServices(list) => {
            let listed = list
                .iter()
                .map(|o| (object_key(o), service_of(o)))
                .collect();
            let (services, invalid) = relist(&mut objects.services, listed);
            out.push(ClusterEvent::ServicesListed { services, invalid });
        }
        Op::ListSlices(list) => {
            let listed = list.iter().map(|o| (object_key(o), slice_of(o))).collect();
            let (slices, invalid) = relist(&mut objects.slices, listed);
            out.push(ClusterEvent::SlicesListed { slices, invalid });
        }
    }
    out
}

fn summary(frontends: &[Frontend]) -> Vec<String> {
    frontends
        .iter()
        .map(|f| {
            let backends: Vec<String> = f.backends.iter().map(ToString::to_string).collect();
            let mut line = format!(
                "{} {} {}/{} {} {}",
                if f.service.namespace == "demo" {
                    f.service.name.clone()
                } else {
                    f.service.to_string()
                },
                f.kind,
                f.address_string(),
                f.protocol,
                f.action,
                backends.join(",")
            )
            .trim_end()
            .to_owned();
            if f.affinity_timeout_s != 0 {
                line.push_str(&format!(" affinity={}", f.affinity_timeout_s));
            }
            line
        })
        .collect()
}

/// The incremental core agrees with a computation from scratch over the same objects.
fn assert_consistent(case: &str, step: usize, state: &ClusterState, objects: &Objects) {
    let plan = state.plan();
    assert_eq!(
        plan,
        objects.plan(),
        "{case}, step {step}: plan() vs compute_plan"
    );
    let from_scratch = DesiredState::from_frontends(&plan.frontends);
    assert_eq!(
        state.index().desired,
        from_scratch,
        "{case}, step {step}: incremental desired state vs from_frontends(plan)"
    );
    assert!(!state.has_pending(), "{case}, step {step}");
}

fn run(case: Case) {
    let name = case.name;
    let mut state = ClusterState::new(NodeModel::named(NODE));
    let mut objects = Objects {
        services: BTreeMap::new(),
        slices: BTreeMap::new(),
        node: NodeModel::named(NODE),
    };
    for (i, step) in case.steps.into_iter().enumerate() {
        for event in events_of(step.op, &mut objects) {
            state.apply(event);
        }
        let changed: Vec<String> = state.recompute().iter().map(ToString::to_string).collect();
        if let Some(want) = step.changes {
            assert_eq!(changed, want, "{name}, step {i}: changed map keys");
        }
        assert_consistent(name, i, &state, &objects);
    }

    let plan = state.plan();
    assert_eq!(summary(&plan.frontends), case.want, "{name}");
    assert_eq!(plan.node, NODE, "{name}");
    for frontend in &plan.frontends {
        assert_eq!(
            frontend.action == Action::Forward,
            !frontend.backends.is_empty(),
            "{name}: {frontend:?}"
        );
        assert_eq!(
            frontend.kind == FrontendKind::NodePort,
            frontend.ip.is_unspecified(),
            "{name}: {frontend:?}"
        );
    }
    assert_eq!(
        Plan::from_json(&plan.to_json()).unwrap(),
        plan,
        "{name}: JSON round trip"
    );

    // The manifest directory's path: the same objects at once.
    let mut snapshot = ClusterState::new(NodeModel::named("elsewhere"));
    snapshot.apply(ClusterEvent::Snapshot {
        services: objects.services.values().cloned().collect(),
        slices: objects.slices.values().cloned().collect(),
        node: objects.node.clone(),
    });
    snapshot.recompute();
    assert!(snapshot.synced(), "{name}");
    assert_eq!(snapshot.plan(), plan, "{name}: snapshot");
    assert_eq!(
        snapshot.index().desired,
        state.index().desired,
        "{name}: snapshot"
    );
}

// ---------------------------------------------------------------------------------------
// The table.
// ---------------------------------------------------------------------------------------

fn which_objects() -> Vec<Case> {
    vec![
        objects(
            "ClusterIP Service with ready endpoints",
            vec![
                web(json!({})),
                web_slice(
                    "web-1",
                    json!([ep("10.244.0.13"), ep("10.244.0.11"), ep("10.244.0.12")]),
                ),
            ],
            &[
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080,10.244.0.13:8080",
            ],
        ),
        objects(
            "type omitted means ClusterIP",
            vec![
                web(json!({"type": null})),
                web_slice("web-1", json!([ep("10.244.0.11")])),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        objects(
            "headless Service (clusterIP None) is not proxied, its headless slices are ignored",
            vec![
                svc("db", "None", json!({})),
                merge(
                    slice("db-1", "db", http(), json!([ep("10.244.0.31")])),
                    json!({"metadata": {"labels": {"service.kubernetes.io/headless": ""}}}),
                ),
            ],
            &[],
        ),
        objects(
            "ExternalName Service is not proxied",
            vec![
                svc(
                    "ext",
                    "",
                    json!({"type": "ExternalName", "externalName": "db.example.com", "clusterIP": null, "clusterIPs": null, "ipFamilies": null, "ipFamilyPolicy": null, "selector": null}),
                ),
                slice("ext-1", "ext", http(), json!([ep("10.244.0.31")])),
            ],
            &[],
        ),
        objects(
            "a Service labelled service.kubernetes.io/service-proxy-name belongs to another proxy",
            vec![
                merge(
                    web(json!({})),
                    json!({"metadata": {"labels": {"service.kubernetes.io/service-proxy-name": "other-proxy"}}}),
                ),
                web_slice("web-1", json!([ep("10.244.0.11")])),
            ],
            &[],
        ),
        objects(
            "a slice labelled service.kubernetes.io/headless is ignored",
            vec![
                web(json!({})),
                merge(
                    web_slice("web-1", json!([ep("10.244.0.11")])),
                    json!({"metadata": {"labels": {"service.kubernetes.io/headless": ""}}}),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP reject"],
        ),
        objects(
            "slices join by kubernetes.io/service-name in the Service's namespace only",
            vec![
                web(json!({})),
                web_slice("web-1", json!([ep("10.244.0.11")])),
                merge(
                    web_slice("web-x", json!([ep("10.244.0.98")])),
                    json!({"metadata": {"namespace": "elsewhere"}}),
                ),
                slice("other-1", "other", http(), json!([ep("10.244.0.99")])),
                // No service-name label: invalid, skipped.
                merge(
                    web_slice("web-y", json!([ep("10.244.0.97")])),
                    json!({"metadata": {"labels": {"kubernetes.io/service-name": null}}}),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        objects(
            "Service without selector: hand-written and mirrored slices are used the same",
            yaml(
                r#"
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: demo}
spec:
  clusterIP: 10.96.0.40
  clusterIPs: [10.96.0.40]
  ports:
  - {name: pg, port: 5432, protocol: TCP, targetPort: 5432}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-by-hand
  namespace: demo
  labels: {kubernetes.io/service-name: legacy}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [192.168.10.5]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-abcde
  namespace: demo
  labels:
    kubernetes.io/service-name: legacy
    endpointslice.kubernetes.io/managed-by: endpointslicemirroring-controller.k8s.io
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [192.168.10.6]
  conditions: {ready: true}
"#,
            ),
            &["legacy ClusterIP 10.96.0.40:5432/TCP forward 192.168.10.5:5432,192.168.10.6:5432"],
        ),
        objects(
            "IPv6 and FQDN slices are ignored",
            vec![
                web(json!({})),
                web_slice("web-1", json!([ep("10.244.0.11")])),
                merge(
                    web_slice("web-v6", json!([ep("fd00::11")])),
                    json!({"addressType": "IPv6"}),
                ),
                merge(
                    web_slice("web-fqdn", json!([ep("web.example.com")])),
                    json!({"addressType": "FQDN"}),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        objects(
            "two Services claiming one address (hand-written): the first by name keeps it",
            vec![
                svc("web-b", "10.96.0.10", json!({})),
                svc("web-a", "10.96.0.10", json!({})),
                slice("web-a-1", "web-a", http(), json!([ep("10.244.0.11")])),
                slice("web-b-1", "web-b", http(), json!([ep("10.244.0.12")])),
            ],
            &["web-a ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
    ]
}

fn ports() -> Vec<Case> {
    vec![
        objects(
            "multi-port: each Service port takes the slice port of its name and protocol",
            vec![
                svc(
                    "dns",
                    "10.96.0.53",
                    json!({"ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5354},
                    ]}),
                ),
                slice(
                    "dns-1",
                    "dns",
                    json!([{"name": "dns-tcp", "port": 5354, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
                    json!([ep("10.244.0.21"), ep("10.244.0.22")]),
                ),
            ],
            &[
                "dns ClusterIP 10.96.0.53:53/TCP forward 10.244.0.21:5354,10.244.0.22:5354",
                "dns ClusterIP 10.96.0.53:53/UDP forward 10.244.0.21:5353,10.244.0.22:5353",
            ],
        ),
        objects(
            "named targetPort: one Service port, different numbers per pod; a pod without it is absent",
            vec![
                web(json!({})),
                web_slice("web-1", json!([ep("10.244.0.11")])),
                slice(
                    "web-2",
                    "web",
                    json!([{"name": "http", "port": 9090, "protocol": "TCP"}]),
                    json!([ep("10.244.0.12")]),
                ),
                slice(
                    "web-3",
                    "web",
                    json!([{"name": "metrics", "port": 9100, "protocol": "TCP"}]),
                    json!([ep("10.244.0.13")]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:9090"],
        ),
        objects(
            "one address on two port numbers (named targetPort) is two backends",
            vec![
                web(json!({})),
                web_slice("web-1", json!([ep("10.244.0.11")])),
                slice(
                    "web-2",
                    "web",
                    json!([{"name": "http", "port": 9090, "protocol": "TCP"}]),
                    json!([ep("10.244.0.11")]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.11:9090"],
        ),
        objects(
            "the protocol must match as well as the name",
            vec![
                web(json!({})),
                slice(
                    "web-1",
                    "web",
                    json!([{"name": "http", "port": 8080, "protocol": "UDP"}]),
                    json!([ep("10.244.0.11")]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP reject"],
        ),
        objects(
            "unnamed port: slice ports named \"\" (or without a name, which the API server defaults to \"\") match; ports without a number are ignored",
            vec![
                svc(
                    "one",
                    "10.96.0.30",
                    json!({"ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}),
                ),
                slice(
                    "one-1",
                    "one",
                    json!([{"port": 8080, "protocol": "TCP"}]),
                    json!([ep("10.244.0.11")]),
                ),
                slice(
                    "one-2",
                    "one",
                    json!([{"name": "", "protocol": "TCP"}]),
                    json!([ep("10.244.0.12")]),
                ),
                slice(
                    "one-3",
                    "one",
                    json!([{"name": "", "port": 8080, "protocol": "TCP"}]),
                    json!([ep("10.244.0.13")]),
                ),
            ],
            &["one ClusterIP 10.96.0.30:80/TCP forward 10.244.0.11:8080,10.244.0.13:8080"],
        ),
        objects(
            "SCTP ports are skipped, the Service's TCP ports still served",
            vec![
                web(json!({"ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                    {"name": "assoc", "port": 9000, "protocol": "SCTP", "targetPort": 9000},
                ]})),
                slice(
                    "web-1",
                    "web",
                    json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "assoc", "port": 9000, "protocol": "SCTP"}]),
                    json!([ep("10.244.0.11")]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        objects(
            "a Service port no slice has is rejected, the others forward",
            vec![
                web(json!({"ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                    {"name": "metrics", "port": 9100, "protocol": "TCP", "targetPort": "metrics"},
                ]})),
                web_slice("web-1", json!([ep("10.244.0.11")])),
            ],
            &[
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080",
                "web ClusterIP 10.96.0.10:9100/TCP reject",
            ],
        ),
    ]
}

fn slices_and_dedup() -> Vec<Case> {
    vec![
        objects(
            "endpoints over several slices, an address in two slices served once",
            vec![
                web(json!({})),
                web_slice("web-1", json!([ep("10.244.0.11"), ep("10.244.0.12")])),
                web_slice(
                    "web-2",
                    json!([ep("10.244.0.12"), ep("10.244.0.13"), ep("10.244.0.13")]),
                ),
            ],
            &[
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080,10.244.0.13:8080",
            ],
        ),
        objects(
            "a duplicate address: the copy that is not terminating wins (earlier slice terminating)",
            vec![
                web(json!({})),
                web_slice(
                    "web-1",
                    json!([terminating(ep("10.244.0.11"), false), ep("10.244.0.12")]),
                ),
                web_slice("web-2", json!([ep("10.244.0.11")])),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
        ),
        objects(
            "a duplicate address: the copy that is not terminating wins (later slice terminating)",
            vec![
                web(json!({})),
                web_slice("web-1", json!([ep("10.244.0.11"), ep("10.244.0.12")])),
                web_slice("web-2", json!([terminating(ep("10.244.0.11"), false)])),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
        ),
    ]
}

fn endpoint_conditions() -> Vec<Case> {
    vec![
        objects(
            "absent conditions: ready and serving, not terminating",
            vec![
                web(json!({})),
                web_slice(
                    "web-1",
                    json!([{"addresses": ["10.244.0.11"]}, {"addresses": ["10.244.0.12"], "conditions": {}}]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
        ),
        objects(
            "only ready endpoints are used (not ready, serving-but-not-ready and terminating are not)",
            vec![
                web(json!({})),
                web_slice(
                    "web-1",
                    json!([
                        ep("10.244.0.11"),
                        not_ready(ep("10.244.0.12")),
                        merge(
                            ep("10.244.0.13"),
                            json!({"conditions": {"ready": false, "serving": true}})
                        ),
                        terminating(ep("10.244.0.14"), true),
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        objects(
            "no ready endpoint anywhere: serving-and-terminating ones are used (KEP-1669)",
            vec![
                web(json!({})),
                web_slice(
                    "web-1",
                    json!([
                        terminating(ep("10.244.0.11"), true),
                        terminating(ep("10.244.0.12"), false),
                        not_ready(ep("10.244.0.13")),
                        merge(
                            ep("10.244.0.14"),
                            json!({"conditions": {"ready": false, "serving": true, "terminating": false}})
                        ),
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        objects(
            "terminating with serving absent counts as serving",
            vec![
                web(json!({})),
                web_slice(
                    "web-1",
                    json!([{"addresses": ["10.244.0.11"], "conditions": {"ready": false, "terminating": true}}]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        objects(
            "only not-ready and non-serving terminating endpoints: reject",
            vec![
                web(json!({})),
                web_slice(
                    "web-1",
                    json!([
                        not_ready(ep("10.244.0.11")),
                        terminating(ep("10.244.0.12"), false)
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP reject"],
        ),
        objects(
            "no slices: reject",
            vec![web(json!({}))],
            &["web ClusterIP 10.96.0.10:80/TCP reject"],
        ),
        objects(
            "the placeholder slice of a Service without endpoints: reject",
            vec![
                web(json!({})),
                slice("web-abcde", "web", json!([]), json!([])),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP reject"],
        ),
    ]
}

fn internal_traffic_policy() -> Vec<Case> {
    let local = || web(json!({"internalTrafficPolicy": "Local"}));
    vec![
        objects(
            "internalTrafficPolicy Local: this node's endpoints only",
            vec![
                local(),
                web_slice(
                    "web-1",
                    json!([
                        ep_on("10.244.0.11", NODE),
                        ep_on("10.244.0.12", "node-b"),
                        ep("10.244.0.13")
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        objects(
            "internalTrafficPolicy Local: none here, ready elsewhere: drop",
            vec![
                local(),
                web_slice("web-1", json!([ep_on("10.244.0.12", "node-b")])),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP drop"],
        ),
        objects(
            "internalTrafficPolicy Local: none here, serving-terminating elsewhere: drop",
            vec![
                local(),
                web_slice(
                    "web-1",
                    json!([terminating(ep_on("10.244.0.12", "node-b"), true)]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP drop"],
        ),
        objects(
            "internalTrafficPolicy Local: nothing usable anywhere: reject",
            vec![
                local(),
                web_slice(
                    "web-1",
                    json!([
                        not_ready(ep_on("10.244.0.11", NODE)),
                        terminating(ep_on("10.244.0.12", "node-b"), false)
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP reject"],
        ),
        objects(
            "internalTrafficPolicy Local: local serving-terminating fallback even with ready endpoints elsewhere",
            vec![
                local(),
                web_slice(
                    "web-1",
                    json!([
                        terminating(ep_on("10.244.0.11", NODE), true),
                        ep_on("10.244.0.12", "node-b")
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        objects(
            "internalTrafficPolicy Local ignores topology hints",
            vec![
                node(Some("zone-a")),
                local(),
                web_slice(
                    "web-1",
                    json!([
                        for_zones(ep_on("10.244.0.11", NODE), &["zone-b"]),
                        for_zones(ep_on("10.244.0.12", NODE), &["zone-a"]),
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
        ),
    ]
}

fn external_traffic_policy() -> Vec<Case> {
    let two_nodes = || {
        web_slice(
            "web-1",
            json!([ep_on("10.244.0.11", NODE), ep_on("10.244.0.12", "node-b")]),
        )
    };
    vec![
        objects(
            "NodePort, Cluster policy: *:nodePort with the cluster endpoints, next to the ClusterIP",
            vec![web_node_port(json!({})), two_nodes()],
            &[
                "web NodePort *:30080/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
            ],
        ),
        objects(
            "NodePort: one frontend per port and protocol",
            vec![
                svc(
                    "dns",
                    "10.96.0.53",
                    json!({"type": "NodePort", "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": 30053},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353, "nodePort": 30053},
                    ]}),
                ),
                slice(
                    "dns-1",
                    "dns",
                    json!([{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 5353, "protocol": "TCP"}]),
                    json!([ep("10.244.0.21")]),
                ),
            ],
            &[
                "dns NodePort *:30053/TCP forward 10.244.0.21:5353",
                "dns NodePort *:30053/UDP forward 10.244.0.21:5353",
                "dns ClusterIP 10.96.0.53:53/TCP forward 10.244.0.21:5353",
                "dns ClusterIP 10.96.0.53:53/UDP forward 10.244.0.21:5353",
            ],
        ),
        objects(
            "NodePort, Local policy: the NodePort uses this node's endpoints, the ClusterIP all",
            vec![
                web_node_port(json!({"externalTrafficPolicy": "Local"})),
                two_nodes(),
            ],
            &[
                "web NodePort *:30080/TCP forward 10.244.0.11:8080",
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
            ],
        ),
        objects(
            "NodePort, Local policy, none here but elsewhere: the NodePort drops",
            vec![
                web_node_port(json!({"externalTrafficPolicy": "Local"})),
                web_slice("web-1", json!([ep_on("10.244.0.12", "node-b")])),
            ],
            &[
                "web NodePort *:30080/TCP drop",
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.12:8080",
            ],
        ),
        objects(
            "NodePort, Local policy, no endpoint anywhere: both reject",
            vec![
                web_node_port(json!({"externalTrafficPolicy": "Local"})),
                web_slice("web-1", json!([not_ready(ep_on("10.244.0.11", NODE))])),
            ],
            &[
                "web NodePort *:30080/TCP reject",
                "web ClusterIP 10.96.0.10:80/TCP reject",
            ],
        ),
        objects(
            "NodePort, Local policy: local serving-terminating fallback while the ClusterIP uses ready remote ones",
            vec![
                web_node_port(json!({"externalTrafficPolicy": "Local"})),
                web_slice(
                    "web-1",
                    json!([
                        terminating(ep_on("10.244.0.11", NODE), true),
                        ep_on("10.244.0.12", "node-b")
                    ]),
                ),
            ],
            &[
                "web NodePort *:30080/TCP forward 10.244.0.11:8080",
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.12:8080",
            ],
        ),
        objects(
            "LoadBalancer, Local policy: NodePort and each VIP-mode IPv4 ingress IP",
            yaml(
                r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  selector: {app: web}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: http, nodePort: 30080}
status:
  loadBalancer:
    ingress:
    - ip: 198.51.100.7
    - {ip: 198.51.100.8, ipMode: VIP}
    - {ip: 198.51.100.9, ipMode: Proxy}
    - hostname: lb.example.com
    - ip: 2001:db8::7
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.0.11], nodeName: node-a}
- {addresses: [10.244.0.12], nodeName: node-b}
"#,
            ),
            &[
                "web NodePort *:30080/TCP forward 10.244.0.11:8080",
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
                "web LoadBalancer 198.51.100.7:80/TCP forward 10.244.0.11:8080",
                "web LoadBalancer 198.51.100.8:80/TCP forward 10.244.0.11:8080",
            ],
        ),
        objects(
            "LoadBalancer without node ports (allocateLoadBalancerNodePorts false), Local policy, none here: drop",
            vec![
                merge(
                    web(json!({
                        "type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                        "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                    })),
                    json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}}),
                ),
                web_slice("web-1", json!([ep_on("10.244.0.12", "node-b")])),
            ],
            &[
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.12:8080",
                "web LoadBalancer 198.51.100.7:80/TCP drop",
            ],
        ),
        objects(
            "LoadBalancer still pending (no ingress yet): NodePort and ClusterIP only",
            vec![web_node_port(json!({"type": "LoadBalancer"})), two_nodes()],
            &[
                "web NodePort *:30080/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
            ],
        ),
        objects(
            "externalIPs on a ClusterIP Service: one frontend per IPv4 external IP and port, Cluster policy",
            vec![
                web(json!({"externalIPs": ["192.0.2.10", "2001:db8::10", "192.0.2.11"]})),
                two_nodes(),
            ],
            &[
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
                "web ExternalIP 192.0.2.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
                "web ExternalIP 192.0.2.11:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
            ],
        ),
        objects(
            "externalIPs make a ClusterIP Service externally accessible: its Local policy applies",
            vec![
                web(json!({"externalIPs": ["192.0.2.10"], "externalTrafficPolicy": "Local"})),
                two_nodes(),
            ],
            &[
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
                "web ExternalIP 192.0.2.10:80/TCP forward 10.244.0.11:8080",
            ],
        ),
        objects(
            "externalTrafficPolicy on a ClusterIP Service without externalIPs is invalid (the API server rejects it): nothing programmed",
            vec![
                web(json!({"externalTrafficPolicy": "Local"})),
                web_slice("web-1", json!([ep_on("10.244.0.12", "node-b")])),
            ],
            &[],
        ),
        objects(
            "internalTrafficPolicy Local with externalTrafficPolicy Cluster: ClusterIP drops, NodePort forwards",
            vec![
                web_node_port(json!({"internalTrafficPolicy": "Local"})),
                web_slice("web-1", json!([ep_on("10.244.0.12", "node-b")])),
            ],
            &[
                "web NodePort *:30080/TCP forward 10.244.0.12:8080",
                "web ClusterIP 10.96.0.10:80/TCP drop",
            ],
        ),
        objects(
            "both policies Local",
            vec![
                web_node_port(
                    json!({"internalTrafficPolicy": "Local", "externalTrafficPolicy": "Local"}),
                ),
                two_nodes(),
            ],
            &[
                "web NodePort *:30080/TCP forward 10.244.0.11:8080",
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080",
            ],
        ),
        objects(
            "external Cluster-policy traffic uses the hint-narrowed cluster endpoints too",
            vec![
                node(Some("zone-a")),
                web_node_port(json!({"externalIPs": ["192.0.2.10"]})),
                web_slice(
                    "web-1",
                    json!([
                        for_zones(ep_on("10.244.0.11", NODE), &["zone-a"]),
                        for_zones(ep_on("10.244.0.12", "node-b"), &["zone-b"])
                    ]),
                ),
            ],
            &[
                "web NodePort *:30080/TCP forward 10.244.0.11:8080",
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080",
                "web ExternalIP 192.0.2.10:80/TCP forward 10.244.0.11:8080",
            ],
        ),
        objects(
            "external Local-policy traffic ignores hints",
            vec![
                node(Some("zone-a")),
                web_node_port(json!({"externalTrafficPolicy": "Local"})),
                web_slice(
                    "web-1",
                    json!([
                        for_zones(ep_on("10.244.0.11", NODE), &["zone-b"]),
                        for_zones(ep_on("10.244.0.12", "node-b"), &["zone-a"]),
                    ]),
                ),
            ],
            &[
                "web NodePort *:30080/TCP forward 10.244.0.11:8080",
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.12:8080",
            ],
        ),
    ]
}

fn topology() -> Vec<Case> {
    let zoned = |zone_a: &[&str], zone_b: &[&str]| {
        web_slice(
            "web-1",
            json!([
                for_zones(ep_on("10.244.0.11", NODE), zone_a),
                for_zones(ep_on("10.244.0.12", "node-b"), zone_b)
            ]),
        )
    };
    vec![
        objects(
            "zone hints: only endpoints hinted for this node's zone",
            vec![
                node(Some("zone-a")),
                web(json!({"trafficDistribution": "PreferClose"})),
                web_slice(
                    "web-1",
                    json!([
                        for_zones(ep("10.244.0.11"), &["zone-a"]),
                        for_zones(ep("10.244.0.12"), &["zone-b"]),
                        for_zones(ep("10.244.0.13"), &["zone-b", "zone-a"]),
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.13:8080"],
        ),
        objects(
            "zone hints ignored: one ready endpoint has none",
            vec![
                node(Some("zone-a")),
                web(json!({})),
                web_slice(
                    "web-1",
                    json!([for_zones(ep("10.244.0.11"), &["zone-a"]), ep("10.244.0.12")]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
        ),
        objects(
            "zone hints ignored: none names this node's zone",
            vec![
                node(Some("zone-c")),
                web(json!({})),
                zoned(&["zone-a"], &["zone-b"]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
        ),
        objects(
            "zone hints ignored: the Node has no zone label",
            vec![node(None), web(json!({})), zoned(&["zone-a"], &["zone-b"])],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
        ),
        objects(
            "zone hints ignored: no Node object known",
            vec![web(json!({})), zoned(&["zone-a"], &["zone-b"])],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
        ),
        objects(
            "zone hints: endpoints that are not ready do not count either way",
            vec![
                node(Some("zone-a")),
                web(json!({})),
                web_slice(
                    "web-1",
                    json!([
                        for_zones(ep("10.244.0.11"), &["zone-a"]),
                        for_zones(ep("10.244.0.12"), &["zone-b"]),
                        terminating(ep("10.244.0.13"), true),
                        not_ready(ep("10.244.0.14")),
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        objects(
            "no ready endpoint: the terminating fallback ignores hints",
            vec![
                node(Some("zone-a")),
                web(json!({})),
                web_slice(
                    "web-1",
                    json!([
                        for_zones(terminating(ep("10.244.0.11"), true), &["zone-b"]),
                        for_zones(terminating(ep("10.244.0.12"), true), &["zone-a"]),
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
        ),
        objects(
            "trafficDistribution PreferSameNode: node hints first",
            vec![
                node(Some("zone-a")),
                web(json!({"trafficDistribution": "PreferSameNode"})),
                web_slice(
                    "web-1",
                    json!([
                        for_zones(for_nodes(ep_on("10.244.0.11", NODE), &[NODE]), &["zone-b"]),
                        for_zones(
                            for_nodes(ep_on("10.244.0.12", "node-b"), &["node-b"]),
                            &["zone-a"]
                        ),
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        objects(
            "node hints for other nodes only: zone hints decide",
            vec![
                node(Some("zone-a")),
                web(json!({"trafficDistribution": "PreferSameNode"})),
                web_slice(
                    "web-1",
                    json!([
                        for_zones(
                            for_nodes(ep_on("10.244.0.11", "node-c"), &["node-c"]),
                            &["zone-b"]
                        ),
                        for_zones(
                            for_nodes(ep_on("10.244.0.12", "node-b"), &["node-b"]),
                            &["zone-a"]
                        ),
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.12:8080"],
        ),
        objects(
            "node hints ignored when a ready endpoint lacks them: zone hints decide",
            vec![
                node(Some("zone-a")),
                web(json!({})),
                web_slice(
                    "web-1",
                    json!([
                        for_zones(for_nodes(ep_on("10.244.0.11", NODE), &[NODE]), &["zone-b"]),
                        for_zones(ep_on("10.244.0.12", "node-b"), &["zone-a"]),
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.12:8080"],
        ),
        objects(
            "node hints alone, none for this node, no zone hints: all endpoints",
            vec![
                web(json!({"trafficDistribution": "PreferSameNode"})),
                web_slice(
                    "web-1",
                    json!([
                        for_nodes(ep_on("10.244.0.11", "node-b"), &["node-b"]),
                        for_nodes(ep_on("10.244.0.12", "node-c"), &["node-c"])
                    ]),
                ),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
        ),
    ]
}

fn session_affinity() -> Vec<Case> {
    vec![
        objects(
            "ClientIP affinity defaults to 10800 s, on every frontend of the Service",
            vec![
                web_node_port(
                    json!({"sessionAffinity": "ClientIP", "externalIPs": ["192.0.2.10"]}),
                ),
                web_slice("web-1", json!([ep("10.244.0.11")])),
            ],
            &[
                "web NodePort *:30080/TCP forward 10.244.0.11:8080 affinity=10800",
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080 affinity=10800",
                "web ExternalIP 192.0.2.10:80/TCP forward 10.244.0.11:8080 affinity=10800",
            ],
        ),
        objects(
            "ClientIP affinity with a custom timeout (as the API server defaults the config)",
            vec![
                web(
                    json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
                ),
                web_slice("web-1", json!([ep("10.244.0.11")])),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080 affinity=60"],
        ),
        objects(
            "ClientIP affinity on a Service without endpoints is kept on the reject frontend",
            vec![web(
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86400}}}),
            )],
            &["web ClusterIP 10.96.0.10:80/TCP reject affinity=86400"],
        ),
        objects(
            "an affinity timeout out of range (0) makes the Service invalid: skipped",
            vec![
                web(
                    json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
                ),
                web_slice("web-1", json!([ep("10.244.0.11")])),
            ],
            &[],
        ),
    ]
}

fn dual_stack() -> Vec<Case> {
    vec![
        objects(
            "dual-stack Service: served on its IPv4 cluster IP and external IPs, from the IPv4 slices",
            yaml(
                r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: ClusterIP
  clusterIP: fd00::10
  clusterIPs: [fd00::10, 10.96.0.10]
  ipFamilies: [IPv6, IPv4]
  ipFamilyPolicy: RequireDualStack
  externalIPs: [2001:db8::10, 192.0.2.10]
  selector: {app: web}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: http}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: ["fd00:244::11"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v4
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.0.11]
"#,
            ),
            &[
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080",
                "web ExternalIP 192.0.2.10:80/TCP forward 10.244.0.11:8080",
            ],
        ),
        objects(
            "IPv6-only Service: not proxied",
            vec![web(
                json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10"], "ipFamilies": ["IPv6"]}),
            )],
            &[],
        ),
    ]
}

fn event_ordering() -> Vec<Case> {
    let web_1 = || web_slice("web-1", json!([ep("10.244.0.11")]));
    vec![
        events(
            "slice before its Service: nothing until the Service arrives",
            vec![
                apply(vec![web_1()]).changes(&[]),
                apply(vec![web(json!({}))]).changes(&["10.96.0.10:*", "10.96.0.10:80/TCP"]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        events(
            "Service deleted before its slices, then the slices",
            vec![
                apply(vec![web(json!({})), web_1()]),
                delete(&[("Service", "web")]).changes(&["10.96.0.10:*", "10.96.0.10:80/TCP"]),
                delete(&[("EndpointSlice", "web-1")]).changes(&[]),
            ],
            &[],
        ),
        events(
            "Service deleted and created again: its slices still there are used",
            vec![
                apply(vec![web(json!({})), web_1()]),
                delete(&[("Service", "web")]),
                apply(vec![web(json!({}))]).changes(&["10.96.0.10:*", "10.96.0.10:80/TCP"]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        events(
            "a slice moves to another Service (label change)",
            vec![
                apply(vec![
                    svc("a", "10.96.0.20", json!({})),
                    svc("b", "10.96.0.21", json!({})),
                    slice("s-1", "a", http(), json!([ep("10.244.0.11")])),
                ]),
                apply(vec![slice("s-1", "b", http(), json!([ep("10.244.0.11")]))])
                    .changes(&["10.96.0.20:80/TCP", "10.96.0.21:80/TCP"]),
            ],
            &["a ClusterIP 10.96.0.20:80/TCP reject", "b ClusterIP 10.96.0.21:80/TCP forward 10.244.0.11:8080"],
        ),
        events(
            "scale up, readiness flip and scale down touch that frontend only",
            vec![
                apply(vec![web(json!({})), svc("db", "10.96.0.11", json!({})), web_1()]),
                apply(vec![web_slice("web-1", json!([ep("10.244.0.11"), ep("10.244.0.12")]))]).changes(&["10.96.0.10:80/TCP"]),
                apply(vec![web_slice("web-1", json!([ep("10.244.0.11"), not_ready(ep("10.244.0.12"))]))]).changes(&["10.96.0.10:80/TCP"]),
                apply(vec![web_slice("web-1", json!([ep("10.244.0.11"), not_ready(ep("10.244.0.12"))]))]).changes(&[]),
                apply(vec![web_slice("web-1", json!([ep("10.244.0.12")]))]).changes(&["10.96.0.10:80/TCP"]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.12:8080", "db ClusterIP 10.96.0.11:80/TCP reject"],
        ),
        events(
            "initial lists, slices first; a relist of the same objects changes nothing",
            vec![
                list_slices(vec![web_1(), slice("db-1", "db", http(), json!([ep("10.244.0.21")]))]).changes(&[]),
                list_services(vec![web(json!({})), svc("db", "10.96.0.11", json!({}))])
                    .changes(&["10.96.0.10:*", "10.96.0.10:80/TCP", "10.96.0.11:*", "10.96.0.11:80/TCP"]),
                list_services(vec![svc("db", "10.96.0.11", json!({})), web(json!({}))]).changes(&[]),
                list_slices(vec![slice("db-1", "db", http(), json!([ep("10.244.0.21")])), web_1()]).changes(&[]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080", "db ClusterIP 10.96.0.11:80/TCP forward 10.244.0.21:8080"],
        ),
        events(
            "a relist without an object removes only that object",
            vec![
                apply(vec![
                    web(json!({})),
                    svc("db", "10.96.0.11", json!({})),
                    web_1(),
                    web_slice("web-2", json!([ep("10.244.0.12")])),
                    slice("db-1", "db", http(), json!([ep("10.244.0.21")])),
                ]),
                list_services(vec![web(json!({}))]).changes(&["10.96.0.11:*", "10.96.0.11:80/TCP"]),
                list_slices(vec![web_1(), slice("db-1", "db", http(), json!([ep("10.244.0.21")]))]).changes(&["10.96.0.10:80/TCP"]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        events(
            "a relist that brings missed changes (an add and an update)",
            vec![
                apply(vec![web(json!({})), web_1()]),
                list_services(vec![web(json!({})), svc("db", "10.96.0.11", json!({}))]).changes(&["10.96.0.11:*", "10.96.0.11:80/TCP"]),
                list_slices(vec![web_slice("web-1", json!([ep("10.244.0.12")]))]).changes(&["10.96.0.10:80/TCP"]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.12:8080", "db ClusterIP 10.96.0.11:80/TCP reject"],
        ),
        events(
            "invalid objects in a relist keep their last good version",
            vec![
                apply(vec![web(json!({})), web_1()]),
                list_services(vec![web(json!({"ports": [{"name": "http", "port": 70000, "protocol": "TCP"}]}))]).changes(&[]),
                list_slices(vec![web_slice("web-1", json!([ep("10.244.0.999")]))]).changes(&[]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        events(
            "an invalid object in a watch event keeps the last good version",
            vec![
                apply(vec![web(json!({})), web_1()]),
                apply(vec![web(json!({"internalTrafficPolicy": "Nearby"}))]).changes(&[]),
                apply(vec![web_slice("web-1", json!([{"addresses": []}]))]).changes(&[]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        events(
            "a Service taken by another proxy, and a slice labelled headless, are removed",
            vec![
                apply(vec![web(json!({})), svc("db", "10.96.0.11", json!({})), web_1(), slice("db-1", "db", http(), json!([ep("10.244.0.21")]))]),
                apply(vec![merge(web(json!({})), json!({"metadata": {"labels": {"service.kubernetes.io/service-proxy-name": "other"}}}))])
                    .changes(&["10.96.0.10:*", "10.96.0.10:80/TCP"]),
                apply(vec![merge(
                    slice("db-1", "db", http(), json!([ep("10.244.0.21")])),
                    json!({"metadata": {"labels": {"service.kubernetes.io/headless": ""}}}),
                )])
                .changes(&["10.96.0.11:80/TCP"]),
            ],
            &["db ClusterIP 10.96.0.11:80/TCP reject"],
        ),
        events(
            "the Node's zone label changing recomputes the hints",
            vec![
                apply(vec![
                    node(Some("zone-a")),
                    web(json!({})),
                    web_slice("web-1", json!([for_zones(ep("10.244.0.11"), &["zone-a"]), for_zones(ep("10.244.0.12"), &["zone-b"])])),
                ]),
                apply(vec![node(Some("zone-b"))]).changes(&["10.96.0.10:80/TCP"]),
                apply(vec![node(Some("zone-b"))]).changes(&[]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.12:8080"],
        ),
        events(
            "the Node's zone label removed: hints ignored",
            vec![
                apply(vec![
                    node(Some("zone-a")),
                    web(json!({})),
                    web_slice("web-1", json!([for_zones(ep("10.244.0.11"), &["zone-a"]), for_zones(ep("10.244.0.12"), &["zone-b"])])),
                ]),
                apply(vec![node(None)]).changes(&["10.96.0.10:80/TCP"]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
        ),
        events(
            "ClusterIP -> NodePort -> ClusterIP: the NodePort's entries (internal and external) come and go; the ClusterIP's stay",
            vec![
                apply(vec![web(json!({})), web_1()]),
                apply(vec![web_node_port(json!({"externalTrafficPolicy": "Local"}))])
                    .changes(&["*:30080/TCP", "*:30080/TCP (external)"]),
                apply(vec![web(json!({}))]).changes(&["*:30080/TCP", "*:30080/TCP (external)"]),
            ],
            &["web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080"],
        ),
        events(
            "LoadBalancer ingress IP assigned later: its two entries and its address's external wildcard are added, nothing else changes",
            vec![
                apply(vec![web_node_port(json!({"type": "LoadBalancer"})), web_1()]),
                apply(vec![merge(
                    web_node_port(json!({"type": "LoadBalancer"})),
                    json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}}),
                )])
                .changes(&[
                    "198.51.100.7:* (external)",
                    "198.51.100.7:80/TCP",
                    "198.51.100.7:80/TCP (external)",
                ]),
            ],
            &[
                "web NodePort *:30080/TCP forward 10.244.0.11:8080",
                "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.11:8080",
                "web LoadBalancer 198.51.100.7:80/TCP forward 10.244.0.11:8080",
            ],
        ),
        events(
            "externalTrafficPolicy Local: an endpoint moving here and away flips the external NodePort entry (drop/forward) and changes the cluster ones",
            vec![
                apply(vec![web_node_port(json!({"externalTrafficPolicy": "Local"})), web_slice("web-1", json!([ep_on("10.244.0.12", "node-b")]))]),
                apply(vec![web_slice("web-1", json!([ep_on("10.244.0.12", "node-b"), ep_on("10.244.0.11", NODE)]))])
                    .changes(&["*:30080/TCP", "*:30080/TCP (external)", "10.96.0.10:80/TCP"]),
                apply(vec![web_slice("web-1", json!([ep_on("10.244.0.12", "node-b")]))])
                    .changes(&["*:30080/TCP", "*:30080/TCP (external)", "10.96.0.10:80/TCP"]),
            ],
            &["web NodePort *:30080/TCP drop", "web ClusterIP 10.96.0.10:80/TCP forward 10.244.0.12:8080"],
        ),
    ]
}

fn all_cases() -> Vec<Case> {
    [
        which_objects(),
        ports(),
        slices_and_dedup(),
        endpoint_conditions(),
        internal_traffic_policy(),
        external_traffic_policy(),
        topology(),
        session_affinity(),
        dual_stack(),
        event_ordering(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[test]
fn service_semantics() {
    let cases = all_cases();
    let mut names = std::collections::HashSet::new();
    for case in &cases {
        assert!(
            names.insert(case.name),
            "duplicate case name {:?}",
            case.name
        );
    }
    let total = cases.len();
    let mut failed = Vec::new();
    for case in cases {
        let name = case.name;
        // Run every case and report all failures, not only the first.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(case))).is_err() {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {total} cases failed: {failed:#?}",
        failed.len()
    );
}
