//! One way to write a Service, an EndpointSlice or an endpoint in every test of the
//! workspace (as kube-proxy's `makeTestService` and controller-rs's fixtures do):
//! models with the defaults a validated object gets, and Kubernetes objects as JSON
//! (which is also valid YAML, for manifest files). Tests change what they need through
//! the models' public fields or the [`EndpointExt`] chain.
//!
//! Built for this crate's tests and, with the `builders` feature, for the other crates'.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test inputs are literals"
)]

use serde_json::{Value, json};

use crate::model::{
    EndpointModel, LABEL_SERVICE_NAME, NodeModel, Protocol, ServiceModel, ServicePortModel,
    ServiceType, SliceModel, SlicePortModel, TrafficPolicy,
};

pub const TCP: Protocol = Protocol::Tcp;
pub const UDP: Protocol = Protocol::Udp;

/// A ClusterIP Service `namespace/name` on `cluster_ip` with `ports` (name, protocol,
/// port), every policy Cluster, no affinity, no external addresses.
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, Protocol, u16)],
) -> ServiceModel {
    ServiceModel {
        namespace: namespace.into(),
        name: name.into(),
        created: None,
        service_type: ServiceType::ClusterIP,
        cluster_ips: vec![cluster_ip.parse().expect("an IPv4 cluster IP")],
        ports: ports
            .iter()
            .map(|(name, protocol, port)| ServicePortModel {
                name: (*name).into(),
                protocol: *protocol,
                port: *port,
                node_port: None,
            })
            .collect(),
        internal_traffic_policy: TrafficPolicy::Cluster,
        external_traffic_policy: TrafficPolicy::Cluster,
        session_affinity_timeout_s: 0,
        traffic_distribution: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        health_check_node_port: None,
        skipped: vec![],
    }
}

/// An EndpointSlice `namespace/name` of Service `service` with `ports` (name, protocol,
/// port) and `endpoints`.
pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    ports: &[(&str, Protocol, u16)],
    endpoints: Vec<EndpointModel>,
) -> SliceModel {
    SliceModel {
        namespace: namespace.into(),
        name: name.into(),
        service_name: service.into(),
        ports: ports
            .iter()
            .map(|(name, protocol, port)| SlicePortModel {
                name: (*name).into(),
                protocol: *protocol,
                port: *port,
            })
            .collect(),
        endpoints,
        skipped: vec![],
    }
}

/// A ready endpoint at `address` on no particular node.
pub fn ep(address: &str) -> EndpointModel {
    EndpointModel {
        address: address.parse().expect("an IPv4 endpoint address"),
        ready: true,
        serving: true,
        terminating: false,
        node_name: None,
        zone: None,
        hints_zones: None,
        hints_nodes: None,
    }
}

/// A node known by name, in `zone`.
pub fn node_in_zone(name: &str, zone: &str) -> NodeModel {
    NodeModel {
        name: name.into(),
        zone: Some(zone.into()),
    }
}

/// Endpoint conditions and placement, chained: `ep("10.244.0.1").on("n1").not_ready()`.
pub trait EndpointExt {
    /// On node `node`.
    fn on(self, node: &str) -> Self;
    /// Neither ready nor serving.
    fn not_ready(self) -> Self;
    /// Terminating; still serving or not.
    fn terminating(self, serving: bool) -> Self;
    fn for_zones(self, zones: &[&str]) -> Self;
    fn for_nodes(self, nodes: &[&str]) -> Self;
}

impl EndpointExt for EndpointModel {
    fn on(mut self, node: &str) -> Self {
        self.node_name = Some(node.into());
        self
    }
    fn not_ready(mut self) -> Self {
        self.ready = false;
        self.serving = false;
        self
    }
    fn terminating(mut self, serving: bool) -> Self {
        self.ready = false;
        self.serving = serving;
        self.terminating = true;
        self
    }
    fn for_zones(mut self, zones: &[&str]) -> Self {
        self.hints_zones = Some(zones.iter().map(|z| (*z).into()).collect());
        self
    }
    fn for_nodes(mut self, nodes: &[&str]) -> Self {
        self.hints_nodes = Some(nodes.iter().map(|n| (*n).into()).collect());
        self
    }
}

/// `base` with the keys of `overrides` (an object) set over it, recursively for
/// objects: `merge(service_object(..), json!({"spec": {"type": "NodePort"}}))`.
pub fn merge(mut base: Value, overrides: Value) -> Value {
    merge_into(&mut base, overrides);
    base
}

fn merge_into(base: &mut Value, overrides: Value) {
    match (base, overrides) {
        (Value::Object(base), Value::Object(overrides)) => {
            for (key, value) in overrides {
                match base.get_mut(&key) {
                    Some(slot) if slot.is_object() && value.is_object() => merge_into(slot, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overrides) => *base = overrides,
    }
}

/// A v1 Service object `namespace/name` on `cluster_ip` with `ports`
/// (name, protocol, port); change it with [`merge`].
pub fn service_object(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, &str, u16)],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, protocol, port)| json!({"name": name, "protocol": protocol, "port": port}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": cluster_ip, "ports": ports},
    })
}

/// A discovery.k8s.io/v1 EndpointSlice object `namespace/name` of Service `service`
/// with `ports` (name, protocol, port) and one endpoint per address (ready, with no
/// node); change it with [`merge`].
pub fn slice_object(
    namespace: &str,
    name: &str,
    service: &str,
    ports: &[(&str, &str, u16)],
    addresses: &[&str],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, protocol, port)| json!({"name": name, "protocol": protocol, "port": port}))
        .collect();
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a]}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL_SERVICE_NAME: service}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// Objects as the text of a manifest file: JSON documents each followed by `---` (JSON
/// is YAML, so a `.yaml` file of these loads), so that texts can be concatenated.
pub fn manifest_text(objects: &[Value]) -> String {
    objects.iter().map(|o| format!("{o}\n---\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_validate_into_the_models_the_model_builders_make() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(service_object(
            "demo",
            "web",
            "10.96.0.10",
            &[("http", "TCP", 80)],
        ))
        .unwrap();
        assert_eq!(
            ServiceModel::from_k8s(&svc).unwrap(),
            Some(service("demo", "web", "10.96.0.10", &[("http", TCP, 80)]))
        );
        let object = merge(
            slice_object(
                "demo",
                "web-1",
                "web",
                &[("http", "TCP", 8080)],
                &["10.244.0.1"],
            ),
            json!({"endpoints": [{"addresses": ["10.244.0.1"], "nodeName": "n1"}]}),
        );
        let s: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(object).unwrap();
        assert_eq!(
            SliceModel::from_k8s(&s).unwrap(),
            Some(slice(
                "demo",
                "web-1",
                "web",
                &[("http", TCP, 8080)],
                vec![ep("10.244.0.1").on("n1")]
            ))
        );
    }

    #[test]
    fn merge_is_recursive_for_objects_only() {
        let merged = merge(
            json!({"a": {"b": 1, "c": [1]}, "d": 1}),
            json!({"a": {"c": [2]}, "e": 2}),
        );
        assert_eq!(merged, json!({"a": {"b": 1, "c": [2]}, "d": 1, "e": 2}));
    }
}
