//! Which endpoints of a Service port serve which traffic, as kube-proxy's
//! `CategorizeEndpoints` (pkg/proxy/topology.go) decides: one deduplication of the
//! slices' endpoints, one test of locality, the cluster and local sets with their
//! fallbacks, topology hints. The data path plan and the healthCheckNodePort counts
//! both use them.
use std::{
    collections::{BTreeMap, btree_map::Entry},
    net::SocketAddr,
};

use super::Action;
use crate::model::{EndpointModel, NodeModel, Protocol, SliceModel, TrafficPolicy};

/// The endpoints of one Service port: endpoints of slices whose ports[] has an entry of
/// that name and protocol, at that entry's port, one per (address, port).
pub fn endpoints_for_port<'a>(
    slices: &[&'a SliceModel],
    port_name: &str,
    protocol: Protocol,
) -> BTreeMap<SocketAddr, &'a EndpointModel> {
    let mut endpoints: BTreeMap<SocketAddr, &EndpointModel> = BTreeMap::new();
    for slice in slices {
        for slice_port in slice
            .ports
            .iter()
            .filter(|p| p.name == port_name && p.protocol == protocol)
        {
            for endpoint in &slice.endpoints {
                match endpoints.entry(SocketAddr::new(endpoint.address, slice_port.port)) {
                    Entry::Vacant(entry) => {
                        entry.insert(endpoint);
                    }
                    // An endpoint moving between slices, or a pod IP reused while the old
                    // pod terminates: like kube-proxy, prefer a copy that is not
                    // terminating. Otherwise the first copy (slice name order) stays.
                    Entry::Occupied(mut entry) => {
                        if entry.get().terminating && !endpoint.terminating {
                            entry.insert(endpoint);
                        }
                    }
                }
            }
        }
    }
    endpoints
}

/// The endpoints of one service port as kube-proxy's `CategorizeEndpoints` sorts them.
pub struct Categorized {
    /// For a Cluster policy: ready endpoints narrowed by topology hints; when none is
    /// ready anywhere, the serving-and-terminating ones.
    cluster: Vec<SocketAddr>,
    /// For a Local policy: this node's ready endpoints; when none of them is ready, this
    /// node's serving-and-terminating ones. Hints do not apply.
    local: Vec<SocketAddr>,
    /// Whether any endpoint anywhere is usable (kube-proxy's hasEndpoints): it decides
    /// between reject (none) and drop (a Local policy with none on this node).
    usable_anywhere: bool,
}

impl Categorized {
    pub fn new(endpoints: &BTreeMap<SocketAddr, &EndpointModel>, node: &NodeModel) -> Categorized {
        Categorized {
            cluster: cluster_endpoints(endpoints, node),
            local: local_endpoints(endpoints, node),
            usable_anywhere: endpoints.values().any(|e| usable_in_cluster(e)),
        }
    }

    /// Action and backends under `policy` (the proxier's choice between the policy
    /// chain, DROP and REJECT).
    pub fn traffic(&self, policy: TrafficPolicy) -> (Action, Vec<SocketAddr>) {
        let chosen = match policy {
            TrafficPolicy::Cluster => &self.cluster,
            TrafficPolicy::Local => &self.local,
        };
        if !chosen.is_empty() {
            (Action::Forward, chosen.clone())
        } else if self.usable_anywhere {
            // Only reachable under Local: the cluster set is empty only when no endpoint
            // is usable anywhere.
            (Action::Drop, Vec::new())
        } else {
            (Action::Reject, Vec::new())
        }
    }
}

/// The endpoints of one service port by condition and place: the facts behind a
/// frontend's action, for `socklb explain`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointCensus {
    /// Every endpoint of the port (one per address and port).
    pub total: usize,
    pub ready: usize,
    /// Not ready, but serving and terminating (the KEP-1669 fallback).
    pub serving_terminating: usize,
    /// On this node.
    pub here: usize,
    pub here_ready: usize,
    pub here_serving_terminating: usize,
}

impl EndpointCensus {
    pub fn of(endpoints: &BTreeMap<SocketAddr, &EndpointModel>, node: &NodeModel) -> Self {
        let mut c = EndpointCensus::default();
        for e in endpoints.values() {
            let here = is_local(e, node);
            let fallback = !e.ready && e.serving && e.terminating;
            c.total += 1;
            c.ready += usize::from(e.ready);
            c.serving_terminating += usize::from(fallback);
            c.here += usize::from(here);
            c.here_ready += usize::from(here && e.ready);
            c.here_serving_terminating += usize::from(here && fallback);
        }
        c
    }
}

/// Ready endpoints, narrowed by topology hints when they apply; when none is ready,
/// serving-and-terminating ones (KEP-1669).
fn cluster_endpoints(
    endpoints: &BTreeMap<SocketAddr, &EndpointModel>,
    node: &NodeModel,
) -> Vec<SocketAddr> {
    let topology = TopologyMode::from_hints(endpoints.values().copied(), node);
    let ready: Vec<SocketAddr> = endpoints
        .iter()
        .filter(|(_, e)| e.ready && topology.admits(e, node))
        .map(|(addr, _)| *addr)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    // Topology is never the reason for an empty set here: a topology mode is only
    // chosen when some ready endpoint matches it.
    endpoints
        .iter()
        .filter(|(_, e)| e.serving && e.terminating)
        .map(|(addr, _)| *addr)
        .collect()
}

/// This node's ready endpoints; when none is ready, its serving-and-terminating ones.
/// Topology hints do not apply.
fn local_endpoints(
    endpoints: &BTreeMap<SocketAddr, &EndpointModel>,
    node: &NodeModel,
) -> Vec<SocketAddr> {
    let local_ready: Vec<SocketAddr> = endpoints
        .iter()
        .filter(|(_, e)| is_local(e, node) && e.ready)
        .map(|(addr, _)| *addr)
        .collect();
    if !local_ready.is_empty() {
        return local_ready;
    }
    endpoints
        .iter()
        .filter(|(_, e)| is_local(e, node) && e.serving && e.terminating)
        .map(|(addr, _)| *addr)
        .collect()
}

/// An endpoint on this node: its nodeName is this node's (non-empty) name, as
/// kube-proxy's EndpointSliceCache.isLocal.
pub fn is_local(e: &EndpointModel, node: &NodeModel) -> bool {
    !node.name.is_empty() && e.node_name.as_deref() == Some(node.name.as_str())
}

/// Whether cluster traffic could use this endpoint somewhere (kube-proxy's
/// hasAnyEndpoints).
fn usable_in_cluster(e: &EndpointModel) -> bool {
    e.ready || (e.serving && e.terminating)
}
/// Which topology hints narrow the cluster endpoints (kube-proxy's topologyModeFromHints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    /// No hints apply: all ready endpoints.
    Any,
    /// Endpoints whose hints.forNodes names this node.
    SameNode,
    /// Endpoints whose hints.forZones names this node's zone.
    SameZone,
}

impl TopologyMode {
    /// Hints apply only if every *ready* endpoint carries them and at least one names
    /// this node (forNodes, checked first) or this node's zone (forZones). Endpoints
    /// that are not ready do not count either way.
    fn from_hints<'a>(
        endpoints: impl Iterator<Item = &'a EndpointModel>,
        node: &NodeModel,
    ) -> TopologyMode {
        let zone = node_zone(node);
        let mut any_ready = false;
        let (mut all_node_hints, mut hinted_for_node) = (true, false);
        let (mut all_zone_hints, mut hinted_for_zone) = (true, false);
        for endpoint in endpoints.filter(|e| e.ready) {
            any_ready = true;
            match &endpoint.hints_nodes {
                None => all_node_hints = false,
                Some(nodes) => hinted_for_node |= nodes.contains(&node.name),
            }
            match &endpoint.hints_zones {
                None => all_zone_hints = false,
                Some(zones) => hinted_for_zone |= zones.iter().any(|z| z == zone),
            }
        }
        if any_ready && all_node_hints && hinted_for_node {
            TopologyMode::SameNode
        } else if any_ready && all_zone_hints && hinted_for_zone {
            TopologyMode::SameZone
        } else {
            TopologyMode::Any
        }
    }

    fn admits(self, endpoint: &EndpointModel, node: &NodeModel) -> bool {
        match self {
            TopologyMode::Any => true,
            TopologyMode::SameNode => endpoint
                .hints_nodes
                .iter()
                .flatten()
                .any(|n| *n == node.name),
            TopologyMode::SameZone => endpoint
                .hints_zones
                .iter()
                .flatten()
                .any(|z| z == node_zone(node)),
        }
    }
}

/// The node's zone as kube-proxy reads it: a missing label is "".
fn node_zone(node: &NodeModel) -> &str {
    node.zone.as_deref().unwrap_or_default()
}
