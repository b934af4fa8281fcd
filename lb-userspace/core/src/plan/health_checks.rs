//! Which healthCheckNodePorts this node serves and what each reports, as kube-proxy
//! decides (pkg/proxy/healthcheck/service_health.go and the proxiers' calls to
//! `SyncServices(svcPortMap.HealthCheckNodePorts())` and
//! `SyncEndpoints(endpointsMap.LocalReadyEndpoints())` after each successful sync):
//! - which Services: type LoadBalancer with externalTrafficPolicy Local
//!   (`apiservice.NeedsHealthCheck`) and a non-zero healthCheckNodePort, that have at
//!   least one port (kube-proxy reads the port from its per-service-port map);
//! - the count: this node's *ready* endpoints, counted once per IP across all the
//!   ports of the Service's EndpointSlices. Serving-but-terminating endpoints do not
//!   count, on purpose: with only terminating endpoints left, the check fails so the
//!   load balancer drains the node while those endpoints still finish their
//!   connections (the data path does use them, see `endpoints`).
//!
//! The HTTP listeners that answer with these counts are the agent's
//! (`http::service_health`).
use std::collections::{BTreeMap, BTreeSet, HashMap, btree_map::Entry};

use tracing::{debug, warn};

use super::endpoints::{endpoints_for_port, is_local};
use crate::{
    model::{NodeModel, ObjectKey, ServiceModel, ServiceType, SliceModel, TrafficPolicy},
    state::ClusterState,
};

/// What one health check port reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceHealthInfo {
    pub service: ObjectKey,
    /// Ready endpoints of the Service on this node, one per IP.
    pub local_endpoints: usize,
}

/// The health check node port kube-proxy would open for `svc`, if any.
pub fn health_check_node_port(svc: &ServiceModel) -> Option<u16> {
    // apiservice.NeedsHealthCheck: type LoadBalancer and ExternalPolicyLocal (the model's
    // external_traffic_policy already is kube-proxy's ExternalPolicyLocal).
    if svc.service_type != ServiceType::LoadBalancer
        || svc.external_traffic_policy != TrafficPolicy::Local
    {
        return None;
    }
    // ServicePortMap.HealthCheckNodePorts walks service ports: a Service without any
    // port has no entry. kube-proxy keeps SCTP ports, which the model lists as skipped.
    if svc.ports.is_empty() && svc.skipped.is_empty() {
        return None;
    }
    if svc.health_check_node_port.is_none() {
        // kube-proxy logs "Service has no healthcheck nodeport"; only a hand-written
        // manifest can get here (the API server allocates one).
        debug!(service = %svc.key(), "LoadBalancer with externalTrafficPolicy Local has no healthCheckNodePort");
    }
    svc.health_check_node_port
}

/// kube-proxy's `EndpointsMap.LocalReadyEndpoints` for one Service: `slices` are the
/// Service's slices. Endpoints are grouped per slice port (name, protocol) and
/// deduplicated per address:port as the data path does (the same
/// `endpoints_for_port`); then the distinct IPs of the ready endpoints on this node
/// are counted. Slice ports need not match a Service port, and a slice without ports
/// contributes nothing, as in kube-proxy.
pub fn local_ready_endpoints(slices: &[&SliceModel], node: &NodeModel) -> usize {
    let mut slices: Vec<&SliceModel> = slices.to_vec();
    // Name order, as the plan reads slices: the same copy of a duplicate wins.
    slices.sort_by(|a, b| a.name.cmp(&b.name));
    let ports: BTreeSet<(&str, _)> = slices
        .iter()
        .flat_map(|s| s.ports.iter().map(|p| (p.name.as_str(), p.protocol)))
        .collect();
    let mut ips = BTreeSet::new();
    for (name, protocol) in ports {
        for endpoint in endpoints_for_port(&slices, name, protocol).values() {
            if endpoint.ready && is_local(endpoint, node) {
                ips.insert(endpoint.address);
            }
        }
    }
    ips.len()
}

/// The health check ports this node should serve, keyed by port.
///
/// Two Services claiming one port (the API server prevents it; manifests can do it):
/// the first in (namespace, name) order keeps it, with a warning. (kube-proxy would
/// bind whichever it happens to open first and fail the other.)
pub fn desired_health_checks(
    services: &[ServiceModel],
    slices: &[SliceModel],
    node: &NodeModel,
) -> BTreeMap<u16, ServiceHealthInfo> {
    let mut slices_by_service: HashMap<ObjectKey, Vec<&SliceModel>> = HashMap::new();
    for slice in slices {
        slices_by_service
            .entry(slice.service_key())
            .or_default()
            .push(slice);
    }
    collect_health_checks(
        services.iter(),
        |svc| {
            slices_by_service
                .get(&svc.key())
                .cloned()
                .unwrap_or_default()
        },
        node,
    )
}

/// [`desired_health_checks`] over the agent's [`ClusterState`]: costs a scan of the
/// Services plus the slices of the ones that need a health check.
pub fn desired_health_checks_for_state(state: &ClusterState) -> BTreeMap<u16, ServiceHealthInfo> {
    collect_health_checks(
        state.services(),
        |svc| state.slices_for_service(&svc.key()).collect(),
        state.node(),
    )
}

fn collect_health_checks<'a>(
    services: impl Iterator<Item = &'a ServiceModel>,
    slices_of: impl Fn(&ServiceModel) -> Vec<&'a SliceModel>,
    node: &NodeModel,
) -> BTreeMap<u16, ServiceHealthInfo> {
    let mut wanted: Vec<(ObjectKey, &ServiceModel, u16)> = services
        .filter_map(|svc| health_check_node_port(svc).map(|port| (svc.key(), svc, port)))
        .collect();
    wanted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut desired = BTreeMap::new();
    for (key, svc, port) in wanted {
        match desired.entry(port) {
            Entry::Occupied(kept) => {
                let kept: &ServiceHealthInfo = kept.get();
                warn!(
                    port, kept = %kept.service, dropped = %key,
                    "two services claim one healthCheckNodePort; keeping the first"
                );
            }
            Entry::Vacant(entry) => {
                let slices = slices_of(svc);
                entry.insert(ServiceHealthInfo {
                    service: key,
                    local_endpoints: local_ready_endpoints(&slices, node),
                });
            }
        }
    }
    desired
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::{
        builders::{EndpointExt, TCP, ep, service, slice},
        events::ClusterEvent,
        model::EndpointModel,
    };

    /// A LoadBalancer Service with externalTrafficPolicy Local.
    fn lb_local(name: &str, hc_port: Option<u16>) -> ServiceModel {
        let mut svc = service("demo", name, "10.96.0.10", &[("http", TCP, 80)]);
        svc.service_type = ServiceType::LoadBalancer;
        svc.ports[0].node_port = Some(30080);
        svc.external_traffic_policy = TrafficPolicy::Local;
        svc.health_check_node_port = hc_port;
        svc
    }

    fn web_slice(
        name: &str,
        service: &str,
        ports: &[(&str, u16)],
        eps: Vec<EndpointModel>,
    ) -> SliceModel {
        let ports: Vec<(&str, _, u16)> = ports.iter().map(|(n, p)| (*n, TCP, *p)).collect();
        slice("demo", name, service, &ports, eps)
    }

    fn ready(last: u8, node: &str) -> EndpointModel {
        ep(&format!("10.244.0.{last}")).on(node)
    }

    fn terminating(last: u8, node: &str) -> EndpointModel {
        ready(last, node).terminating(true)
    }

    fn info(name: &str, local_endpoints: usize) -> ServiceHealthInfo {
        ServiceHealthInfo {
            service: ObjectKey::new("demo", name),
            local_endpoints,
        }
    }

    fn node() -> NodeModel {
        NodeModel::named("n1")
    }

    #[test]
    fn only_load_balancer_local_with_a_port_gets_a_health_check() {
        let mut cluster_ip = lb_local("cip", Some(32001));
        cluster_ip.service_type = ServiceType::ClusterIP;
        let mut node_port = lb_local("np", Some(32002));
        node_port.service_type = ServiceType::NodePort;
        let mut lb_cluster = lb_local("lbc", Some(32003));
        lb_cluster.external_traffic_policy = TrafficPolicy::Cluster;
        let no_hc_port = lb_local("nohc", None);
        let mut no_ports = lb_local("noports", Some(32004));
        no_ports.ports.clear();
        let mut sctp_only = lb_local("sctp", Some(32005));
        sctp_only.ports.clear();
        sctp_only.skipped = vec!["spec.ports[0] (\"\" 9/SCTP): skipped".into()];
        let services = vec![
            cluster_ip,
            node_port,
            lb_cluster,
            no_hc_port,
            no_ports,
            sctp_only,
            lb_local("web", Some(32000)),
        ];
        let desired = desired_health_checks(&services, &[], &node());
        assert_eq!(
            desired,
            BTreeMap::from([(32000, info("web", 0)), (32005, info("sctp", 0))])
        );
    }

    #[test]
    fn local_count_is_ready_endpoints_on_this_node_by_ip() {
        let count = |slices: &[SliceModel], node: &NodeModel| {
            let services = [lb_local("web", Some(32000))];
            desired_health_checks(&services, slices, node)[&32000].local_endpoints
        };
        let n1 = node();
        let mut no_node = ready(5, "n1");
        no_node.node_name = None;
        // Counted: .1 and .2 (ready, here). Not: .3 (elsewhere), .4 (not ready), .5 (no
        // nodeName), .6 (serving but terminating: no fallback, unlike the data path).
        let slices = [web_slice(
            "web-a",
            "web",
            &[("http", 8080)],
            vec![
                ready(1, "n1"),
                ready(2, "n1"),
                ready(3, "n2"),
                ready(4, "n1").not_ready(),
                no_node,
                terminating(6, "n1"),
            ],
        )];
        assert_eq!(count(&slices, &n1), 2);
        assert_eq!(count(&slices, &NodeModel::named("n2")), 1);
        assert_eq!(
            count(&slices, &NodeModel::named("")),
            0,
            "empty node name: nothing is local"
        );

        // Only terminating endpoints here: 0, so the load balancer drains the node.
        let draining = [web_slice(
            "web-a",
            "web",
            &[("http", 8080)],
            vec![terminating(1, "n1"), terminating(2, "n1"), ready(3, "n2")],
        )];
        assert_eq!(count(&draining, &n1), 0);

        // One IP on two ports, in two slices, and on a port the Service does not have:
        // one endpoint. Other services' slices do not count.
        let spread = [
            web_slice(
                "web-a",
                "web",
                &[("http", 8080), ("metrics", 9090)],
                vec![ready(1, "n1")],
            ),
            web_slice(
                "web-b",
                "web",
                &[("http", 8080)],
                vec![ready(1, "n1"), ready(7, "n1")],
            ),
            web_slice("web-c", "web", &[("unknown", 7000)], vec![ready(8, "n1")]),
            web_slice("db-a", "db", &[("http", 8080)], vec![ready(9, "n1")]),
        ];
        assert_eq!(count(&spread, &n1), 3, ".1, .7, .8");

        // A slice without usable ports contributes nothing (kube-proxy has no
        // service port to file its endpoints under).
        let portless = [web_slice("web-a", "web", &[], vec![ready(1, "n1")])];
        assert_eq!(count(&portless, &n1), 0);

        // The same address:port twice: the non-terminating copy wins, whichever slice
        // comes first.
        let mut reused_ip = terminating(1, "n1");
        reused_ip.ready = true;
        let moved = [
            web_slice("web-a", "web", &[("http", 8080)], vec![reused_ip]),
            web_slice("web-b", "web", &[("http", 8080)], vec![ready(1, "n2")]),
        ];
        assert_eq!(count(&moved, &n1), 0, "the running copy is on n2");
        assert_eq!(count(&moved, &NodeModel::named("n2")), 1);
    }

    #[test]
    fn two_services_on_one_port_keep_the_first_by_name() {
        let services = [
            lb_local("zeta", Some(32000)),
            lb_local("alpha", Some(32000)),
            lb_local("mid", Some(32001)),
        ];
        let slices = [web_slice(
            "zeta-1",
            "zeta",
            &[("http", 8080)],
            vec![ready(1, "n1")],
        )];
        let desired = desired_health_checks(&services, &slices, &node());
        assert_eq!(
            desired,
            BTreeMap::from([(32000, info("alpha", 0)), (32001, info("mid", 0))])
        );
    }

    #[test]
    fn the_state_variant_agrees_with_the_pure_one() {
        let services = vec![
            lb_local("web", Some(32000)),
            lb_local("api", Some(32001)),
            lb_local("nohc", None),
        ];
        let slices = vec![
            web_slice(
                "web-b",
                "web",
                &[("http", 8080)],
                vec![ready(1, "n1"), ready(2, "n2")],
            ),
            web_slice("web-a", "web", &[("http", 8080)], vec![ready(3, "n1")]),
            web_slice(
                "api-a",
                "api",
                &[("http", 8080)],
                vec![terminating(4, "n1")],
            ),
            web_slice("orphan", "gone", &[("http", 8080)], vec![ready(5, "n1")]),
        ];
        let mut state = ClusterState::new(node());
        state.apply(ClusterEvent::Snapshot {
            services: services.clone(),
            slices: slices.clone(),
            node: node(),
        });
        let from_state = desired_health_checks_for_state(&state);
        assert_eq!(
            from_state,
            desired_health_checks(&services, &slices, &node())
        );
        assert_eq!(
            from_state,
            BTreeMap::from([(32000, info("web", 2)), (32001, info("api", 0))])
        );
    }
}
