//! Service health checks: one HTTP listener per `spec.healthCheckNodePort`, so that a
//! cloud load balancer sends traffic of an `externalTrafficPolicy: Local` Service only to
//! nodes that have a ready endpoint of it.
//!
//! Semantics follow kube-proxy (pkg/proxy/healthcheck/service_health.go and the
//! proxiers' calls to `SyncServices(svcPortMap.HealthCheckNodePorts())` and
//! `SyncEndpoints(endpointsMap.LocalReadyEndpoints())` after each successful sync):
//! - Which Services: type LoadBalancer with externalTrafficPolicy Local
//!   (`apiservice.NeedsHealthCheck`) and a non-zero healthCheckNodePort, that have at
//!   least one port (kube-proxy reads the port from its per-service-port map).
//! - The count: this node's *ready* endpoints, counted once per IP across all the
//!   ports of the Service's EndpointSlices. Serving-but-terminating endpoints do not count, on purpose: with
//!   only terminating endpoints left, the check fails so the load balancer drains the
//!   node while those endpoints still finish their connections (the data path does use
//!   them, see plan.rs).
//! - Each listener answers every request (any path, any method) with 200 when the count
//!   is > 0 and the proxy itself is healthy, else 503; headers `Content-Type:
//!   application/json`, `X-Content-Type-Options: nosniff` and
//!   `X-Load-Balancing-Endpoint-Weight: <count>`; and kube-proxy's body, byte for byte
//!   (tab-indented): `service.namespace`, `service.name`, `localEndpoints`,
//!   `serviceProxyHealthy`.
//! - A port that cannot be bound is logged and left out; the next update tries again.
//!   It never stops the other listeners nor the agent.
//!
//! [`desired_health_checks`] is the pure part (models in, ports out);
//! [`ServiceHealthServers`] owns the listeners and applies a desired set.

use std::{
    collections::{BTreeMap, HashMap, HashSet, btree_map::Entry},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, RwLock},
};

use http_body_util::Full;
use hyper::{
    Response, StatusCode,
    body::Bytes,
    header::{self, HeaderName, HeaderValue},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tracing::{debug, info, warn};

use socklb_core::{
    model::{
        EndpointModel, NodeModel, Protocol, ServiceModel, ServiceType, SliceModel, TrafficPolicy,
    },
    state::ClusterState,
};

use crate::http::health::{self, Health};

/// Where the listeners bind by default: every IPv4 address of the node (kube-proxy binds
/// its wildcard address; pass `::` for IPv6 as well, dual-stack on Linux by default).
pub const DEFAULT_BIND_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// The header Google Cloud's weighted load balancing reads; kube-proxy sets it to the
/// local endpoint count.
pub const ENDPOINT_WEIGHT_HEADER: &str = "x-load-balancing-endpoint-weight";

/// What one health check port reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceHealthInfo {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints of the Service on this node, one per IP.
    pub local_endpoints: usize,
}

impl ServiceHealthInfo {
    /// "namespace/name".
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
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
        debug!(service = %svc.display_name(), "LoadBalancer with externalTrafficPolicy Local has no healthCheckNodePort");
    }
    svc.health_check_node_port
}

/// kube-proxy's `EndpointsMap.LocalReadyEndpoints` for one Service: `slices` are the
/// Service's slices (in slice name order). Endpoints are grouped per slice port
/// (name, protocol) and deduplicated per address:port as the data path does (a
/// non-terminating copy wins over a terminating one, else the first); then the distinct
/// IPs of the ready endpoints on this node are counted. Slice ports need not match a
/// Service port, and a slice without ports contributes nothing, as in kube-proxy.
pub fn local_ready_endpoints(slices: &[&SliceModel], node: &NodeModel) -> usize {
    let mut by_port: HashMap<(&str, Protocol), BTreeMap<SocketAddrV4, &EndpointModel>> =
        HashMap::new();
    for slice in slices {
        for port in &slice.ports {
            let set = by_port
                .entry((port.name.as_str(), port.protocol))
                .or_default();
            for endpoint in &slice.endpoints {
                match set.entry(SocketAddrV4::new(endpoint.address, port.port)) {
                    Entry::Vacant(entry) => {
                        entry.insert(endpoint);
                    }
                    Entry::Occupied(mut entry) => {
                        if entry.get().terminating && !endpoint.terminating {
                            entry.insert(endpoint);
                        }
                    }
                }
            }
        }
    }
    by_port
        .values()
        .flat_map(BTreeMap::values)
        .filter(|e| e.ready && is_local(e, node))
        .map(|e| e.address)
        .collect::<HashSet<Ipv4Addr>>()
        .len()
}

/// kube-proxy's EndpointSliceCache.isLocal: nodeName equals this node's non-empty name.
fn is_local(e: &EndpointModel, node: &NodeModel) -> bool {
    !node.name.is_empty() && e.node_name.as_deref() == Some(node.name.as_str())
}

/// The health check ports this node should serve, keyed by port. Pure.
///
/// Two Services claiming one port (the API server prevents it; manifests can do it):
/// the first in (namespace, name) order keeps it, with a warning. (kube-proxy would
/// bind whichever it happens to open first and fail the other.)
pub fn desired_health_checks(
    services: &[ServiceModel],
    slices: &[SliceModel],
    node: &NodeModel,
) -> BTreeMap<u16, ServiceHealthInfo> {
    let mut slices_by_service: HashMap<(&str, &str), Vec<&SliceModel>> = HashMap::new();
    for slice in slices {
        slices_by_service
            .entry(slice.service_key())
            .or_default()
            .push(slice);
    }
    collect_health_checks(
        services.iter(),
        |svc| {
            let mut own = slices_by_service
                .get(&svc.key())
                .cloned()
                .unwrap_or_default();
            own.sort_by(|a, b| a.name.cmp(&b.name));
            own
        },
        node,
    )
}

/// [`desired_health_checks`] over the agent's [`ClusterState`]: costs a scan of the
/// Services plus the slices of the ones that need a health check.
pub fn desired_health_checks_for_state(state: &ClusterState) -> BTreeMap<u16, ServiceHealthInfo> {
    collect_health_checks(
        state.services(),
        |svc| {
            state
                .slices_for_service(&svc.namespace, &svc.name)
                .collect()
        },
        state.node(),
    )
}

fn collect_health_checks<'a>(
    services: impl Iterator<Item = &'a ServiceModel>,
    slices_of: impl Fn(&ServiceModel) -> Vec<&'a SliceModel>,
    node: &NodeModel,
) -> BTreeMap<u16, ServiceHealthInfo> {
    let mut wanted: Vec<(&ServiceModel, u16)> = services
        .filter_map(|svc| health_check_node_port(svc).map(|port| (svc, port)))
        .collect();
    wanted.sort_by(|a, b| a.0.key().cmp(&b.0.key()));
    let mut desired = BTreeMap::new();
    for (svc, port) in wanted {
        match desired.entry(port) {
            Entry::Occupied(kept) => {
                let kept: &ServiceHealthInfo = kept.get();
                warn!(
                    port, kept = %kept.display_name(), dropped = %svc.display_name(),
                    "two services claim one healthCheckNodePort; keeping the first"
                );
            }
            Entry::Vacant(entry) => {
                let slices = slices_of(svc);
                entry.insert(ServiceHealthInfo {
                    namespace: svc.namespace.clone(),
                    name: svc.name.clone(),
                    local_endpoints: local_ready_endpoints(&slices, node),
                });
            }
        }
    }
    desired
}

/// kube-proxy's response body, byte for byte: tab-indented, no trailing newline.
pub fn response_body(info: &ServiceHealthInfo, proxy_healthy: bool) -> String {
    // Kubernetes names never need escaping; serde_json keeps odd manifest input valid.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        quote(&info.namespace),
        quote(&info.name),
        info.local_endpoints,
        proxy_healthy
    )
}

/// 200 with local endpoints and a healthy proxy, else 503 (kube-proxy's hcHandler).
pub fn response_status(info: &ServiceHealthInfo, proxy_healthy: bool) -> StatusCode {
    if info.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// State one listener reads on every request.
#[derive(Debug)]
struct PortShared {
    /// Replaced whole under the lock: a reader sees the old or the new info, never a mix.
    info: RwLock<Arc<ServiceHealthInfo>>,
    /// The agent's own health (`serviceProxyHealthy`); None: always healthy.
    proxy_health: Option<Arc<Health>>,
}

impl PortShared {
    fn info(&self) -> Arc<ServiceHealthInfo> {
        match self.info.read() {
            Ok(info) => Arc::clone(&info),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the info if it changed.
    fn set_info(&self, new: ServiceHealthInfo) {
        let mut info = match self.info.write() {
            Ok(info) => info,
            Err(poisoned) => poisoned.into_inner(),
        };
        if **info != new {
            *info = Arc::new(new);
        }
    }

    fn respond(&self) -> Response<Full<Bytes>> {
        let info = self.info();
        let proxy_healthy = self
            .proxy_health
            .as_ref()
            .is_none_or(|health| health.healthz().healthy);
        let mut response =
            Response::new(Full::new(Bytes::from(response_body(&info, proxy_healthy))));
        *response.status_mut() = response_status(&info, proxy_healthy);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            HeaderName::from_static(ENDPOINT_WEIGHT_HEADER),
            HeaderValue::from(info.local_endpoints),
        );
        response
    }
}

/// One open health check port.
#[derive(Debug)]
struct PortListener {
    shared: Arc<PortShared>,
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl PortListener {
    /// Stops serving; the port is free once this returns.
    async fn close(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            warn!(addr = %self.local_addr, %error, "service health check listener ended abnormally");
        }
    }
}

/// The health check listeners of this node, one per healthCheckNodePort. Dropping it
/// stops them too (without waiting); [`ServiceHealthServers::shutdown`] waits.
#[derive(Debug)]
pub struct ServiceHealthServers {
    bind: IpAddr,
    proxy_health: Option<Arc<Health>>,
    listeners: BTreeMap<u16, PortListener>,
    /// Ports whose last bind failed, with the error kind: a repeated failure is logged
    /// at debug, not again at warn on every sync.
    failing: BTreeMap<u16, io::ErrorKind>,
    /// Tests: listeners bound on an ephemeral port, used instead of binding that port.
    #[cfg(test)]
    prebound: HashMap<u16, TcpListener>,
}

impl ServiceHealthServers {
    /// No listeners yet; they bind `bind` ([`DEFAULT_BIND_ADDRESS`] in the agent) on
    /// each port [`ServiceHealthServers::update`] asks for. `serviceProxyHealthy` is
    /// always true unless [`ServiceHealthServers::with_proxy_health`] is used.
    pub fn new(bind: IpAddr) -> Self {
        ServiceHealthServers {
            bind,
            proxy_health: None,
            listeners: BTreeMap::new(),
            failing: BTreeMap::new(),
            #[cfg(test)]
            prebound: HashMap::new(),
        }
    }

    /// Reports the agent's health as `serviceProxyHealthy` (kube-proxy's
    /// `healthzServer.Health().Healthy`): while it is false every port answers 503.
    /// Applies to listeners opened afterwards: call it before the first update.
    pub fn with_proxy_health(mut self, health: Arc<Health>) -> Self {
        self.proxy_health = Some(health);
        self
    }

    /// The address the listeners bind.
    pub fn bind_address(&self) -> IpAddr {
        self.bind
    }

    /// The ports being served, ascending.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.listeners.keys().copied()
    }

    /// The address a port's listener is bound to, if it is open.
    pub fn local_addr(&self, port: u16) -> Option<SocketAddr> {
        self.listeners.get(&port).map(|l| l.local_addr)
    }

    /// Makes `desired` the served set: closes the ports no longer wanted (first, so a
    /// port can move between Services), updates the counts and names of the ports kept
    /// (no rebind; each reader sees the old or the new answer), opens the new ones.
    /// Returns the ports that could not be bound (also logged); they are tried again
    /// on the next call, and the others are served regardless.
    pub async fn update(
        &mut self,
        desired: BTreeMap<u16, ServiceHealthInfo>,
    ) -> Vec<(u16, io::Error)> {
        let removed: Vec<u16> = self
            .listeners
            .keys()
            .filter(|port| !desired.contains_key(port))
            .copied()
            .collect();
        for port in removed {
            if let Some(listener) = self.listeners.remove(&port) {
                info!(port, service = %listener.shared.info().display_name(), "closing service health check");
                listener.close().await;
            }
        }
        self.failing.retain(|port, _| desired.contains_key(port));

        let mut errors = Vec::new();
        for (port, info) in desired {
            if let Some(listener) = self.listeners.get(&port) {
                listener.shared.set_info(info);
                continue;
            }
            let service = info.display_name();
            match self.open(port, info).await {
                Ok(listener) => {
                    info!(port, %service, addr = %listener.local_addr, "opened service health check");
                    self.failing.remove(&port);
                    self.listeners.insert(port, listener);
                }
                Err(error) => {
                    let addr = SocketAddr::new(self.bind, port);
                    if self.failing.insert(port, error.kind()) == Some(error.kind()) {
                        debug!(port, %service, %addr, %error, "service health check still cannot listen; will retry");
                    } else {
                        warn!(port, %service, %addr, %error, "failed to start service health check; will retry on the next sync");
                    }
                    errors.push((port, error));
                }
            }
        }
        errors
    }

    /// Closes every listener and waits until the ports are free.
    pub async fn shutdown(mut self) {
        for (_, listener) in std::mem::take(&mut self.listeners) {
            listener.close().await;
        }
    }

    async fn open(&mut self, port: u16, info: ServiceHealthInfo) -> io::Result<PortListener> {
        if port == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "port 0 is not a health check node port",
            ));
        }
        let listener = self.bind_port(port).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(PortShared {
            info: RwLock::new(Arc::new(info)),
            proxy_health: self.proxy_health.clone(),
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, Arc::clone(&shared), stopped));
        Ok(PortListener {
            shared,
            local_addr,
            stop,
            task,
        })
    }

    async fn bind_port(&mut self, port: u16) -> io::Result<TcpListener> {
        #[cfg(test)]
        if let Some(listener) = self.prebound.remove(&port) {
            return Ok(listener);
        }
        TcpListener::bind(SocketAddr::new(self.bind, port)).await
    }

    /// Tests: binds the bind address on a free port now and returns the port; the next
    /// update that asks for it uses this listener (no race with other tests for it).
    #[cfg(test)]
    async fn reserve_port_for_test(&mut self) -> io::Result<u16> {
        let listener = TcpListener::bind(SocketAddr::new(self.bind, 0)).await?;
        let port = listener.local_addr()?.port();
        self.prebound.insert(port, listener);
        Ok(port)
    }
}

/// Serves one port until `stop` fires or its sender is dropped; then closes the
/// listener and the open connections.
async fn serve(listener: TcpListener, shared: Arc<PortShared>, stop: oneshot::Receiver<()>) {
    health::serve_http(
        listener,
        "service health check",
        move |_request| shared.respond(),
        stop,
    )
    .await;
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]
mod tests {
    use std::{
        sync::atomic::{AtomicU64, Ordering},
        time::Duration,
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use socklb_core::{events::ClusterEvent, model::SlicePortModel};

    use crate::http::health::Clock;
    use k8s_openapi::api::core::v1::Service;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A LoadBalancer Service with externalTrafficPolicy Local, through the model's own
    /// validation (so the test does not depend on every field of the model).
    fn lb_local(name: &str, hc_port: Option<u16>) -> ServiceModel {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.10",
                "externalTrafficPolicy": "Local",
                "healthCheckNodePort": hc_port,
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            },
        }))
        .unwrap();
        ServiceModel::from_k8s(&svc).unwrap().unwrap()
    }

    #[derive(Clone, Copy)]
    struct Ep {
        last: u8,
        node: Option<&'static str>,
        ready: bool,
        serving: bool,
        terminating: bool,
    }

    const fn ready(last: u8, node: &'static str) -> Ep {
        Ep {
            last,
            node: Some(node),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    const fn terminating(last: u8, node: &'static str) -> Ep {
        Ep {
            last,
            node: Some(node),
            ready: false,
            serving: true,
            terminating: true,
        }
    }

    fn slice(name: &str, service: &str, ports: &[(&str, u16)], eps: &[Ep]) -> SliceModel {
        SliceModel {
            namespace: "demo".into(),
            name: name.into(),
            service_name: service.into(),
            ports: ports
                .iter()
                .map(|(n, p)| SlicePortModel {
                    name: (*n).into(),
                    protocol: Protocol::Tcp,
                    port: *p,
                })
                .collect(),
            endpoints: eps
                .iter()
                .map(|e| EndpointModel {
                    address: Ipv4Addr::new(10, 244, 0, e.last),
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                    node_name: e.node.map(String::from),
                    zone: None,
                    hints_zones: None,
                    hints_nodes: None,
                })
                .collect(),
            skipped: vec![],
        }
    }

    fn info(name: &str, local_endpoints: usize) -> ServiceHealthInfo {
        ServiceHealthInfo {
            namespace: "demo".into(),
            name: name.into(),
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
        let not_ready = Ep {
            ready: false,
            serving: false,
            ..ready(4, "n1")
        };
        let no_node = Ep {
            node: None,
            ..ready(5, "n1")
        };
        // Counted: .1 and .2 (ready, here). Not: .3 (elsewhere), .4 (not ready), .5 (no
        // nodeName), .6 (serving but terminating: no fallback, unlike the data path).
        let slices = [slice(
            "web-a",
            "web",
            &[("http", 8080)],
            &[
                ready(1, "n1"),
                ready(2, "n1"),
                ready(3, "n2"),
                not_ready,
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
        let draining = [slice(
            "web-a",
            "web",
            &[("http", 8080)],
            &[terminating(1, "n1"), terminating(2, "n1"), ready(3, "n2")],
        )];
        assert_eq!(count(&draining, &n1), 0);

        // One IP on two ports, in two slices, and on a port the Service does not have:
        // one endpoint. Other services' slices do not count.
        let spread = [
            slice(
                "web-a",
                "web",
                &[("http", 8080), ("metrics", 9090)],
                &[ready(1, "n1")],
            ),
            slice(
                "web-b",
                "web",
                &[("http", 8080)],
                &[ready(1, "n1"), ready(7, "n1")],
            ),
            slice("web-c", "web", &[("unknown", 7000)], &[ready(8, "n1")]),
            slice("db-a", "db", &[("http", 8080)], &[ready(9, "n1")]),
        ];
        assert_eq!(count(&spread, &n1), 3, ".1, .7, .8");

        // A slice without usable ports contributes nothing (kube-proxy has no
        // service port to file its endpoints under).
        let portless = [slice("web-a", "web", &[], &[ready(1, "n1")])];
        assert_eq!(count(&portless, &n1), 0);

        // The same address:port twice: the non-terminating copy wins, whichever slice
        // comes first.
        let reused_ip = Ep {
            ready: true,
            ..terminating(1, "n1")
        };
        let moved = [
            slice("web-a", "web", &[("http", 8080)], &[reused_ip]),
            slice("web-b", "web", &[("http", 8080)], &[ready(1, "n2")]),
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
        let slices = [slice(
            "zeta-1",
            "zeta",
            &[("http", 8080)],
            &[ready(1, "n1")],
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
            slice(
                "web-b",
                "web",
                &[("http", 8080)],
                &[ready(1, "n1"), ready(2, "n2")],
            ),
            slice("web-a", "web", &[("http", 8080)], &[ready(3, "n1")]),
            slice("api-a", "api", &[("http", 8080)], &[terminating(4, "n1")]),
            slice("orphan", "gone", &[("http", 8080)], &[ready(5, "n1")]),
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

    #[test]
    fn body_and_status_match_kube_proxy() {
        let web = info("web", 2);
        assert_eq!(
            response_body(&web, true),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"demo\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let json: serde_json::Value = serde_json::from_str(&response_body(&web, false)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "service": {"namespace": "demo", "name": "web"},
                "localEndpoints": 2,
                "serviceProxyHealthy": false,
            })
        );
        assert_eq!(response_status(&web, true), StatusCode::OK);
        assert_eq!(
            response_status(&web, false),
            StatusCode::SERVICE_UNAVAILABLE,
            "an unhealthy proxy fails every check"
        );
        assert_eq!(
            response_status(&info("web", 0), true),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Odd manifest input stays valid JSON.
        let odd = ServiceHealthInfo {
            namespace: "a\"b".into(),
            name: "c\\d".into(),
            local_endpoints: 0,
        };
        let json: serde_json::Value = serde_json::from_str(&response_body(&odd, true)).unwrap();
        assert_eq!(json["service"]["namespace"], "a\"b");
    }

    /// A clock the test moves by hand.
    #[derive(Default)]
    struct FakeClock(AtomicU64);

    impl Clock for FakeClock {
        fn elapsed(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn service_proxy_healthy_follows_the_agent_health() {
        let clock = Arc::new(FakeClock::default());
        let health = Arc::new(Health::with_clock(Duration::from_secs(60), clock.clone()));
        let shared = PortShared {
            info: RwLock::new(Arc::new(info("web", 1))),
            proxy_health: Some(health.clone()),
        };
        assert_eq!(shared.respond().status(), StatusCode::OK);
        health.queued_update();
        clock.0.fetch_add(61_000_000_000, Ordering::SeqCst);
        let response = shared.respond();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        health.updated();
        assert_eq!(shared.respond().status(), StatusCode::OK);
    }

    struct Reply {
        code: u16,
        /// Lower-cased header block.
        head: String,
        body: String,
    }

    async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        Reply {
            code: head.split(' ').nth(1).unwrap().parse().unwrap(),
            head: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    async fn get(addr: SocketAddr) -> Reply {
        request(addr, "GET", "/healthz").await
    }

    fn json(reply: &Reply) -> serde_json::Value {
        serde_json::from_str(&reply.body).unwrap()
    }

    #[tokio::test]
    async fn serves_adds_changes_and_removes_ports() {
        let mut servers = ServiceHealthServers::new(LOOPBACK);
        let p1 = servers.reserve_port_for_test().await.unwrap();
        let p2 = servers.reserve_port_for_test().await.unwrap();
        let errors = servers
            .update(BTreeMap::from([(p1, info("web", 2)), (p2, info("api", 0))]))
            .await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(servers.ports().collect::<Vec<_>>(), {
            let mut ports = vec![p1, p2];
            ports.sort_unstable();
            ports
        });
        let a1 = servers.local_addr(p1).unwrap();
        let a2 = servers.local_addr(p2).unwrap();
        assert_eq!(a1, SocketAddr::new(LOOPBACK, p1));

        // Any path and method: kube-proxy's handler does not route.
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/healthz"),
            ("GET", "/x/y?z=1"),
            ("POST", "/"),
        ] {
            let reply = request(a1, method, path).await;
            assert_eq!(reply.code, 200, "{method} {path}");
            assert!(
                reply.head.contains("content-type: application/json"),
                "{}",
                reply.head
            );
            assert!(
                reply.head.contains("x-content-type-options: nosniff"),
                "{}",
                reply.head
            );
            assert!(
                reply.head.contains("x-load-balancing-endpoint-weight: 2"),
                "{}",
                reply.head
            );
            assert_eq!(reply.body, response_body(&info("web", 2), true));
        }
        let head = request(a1, "HEAD", "/").await;
        assert_eq!(head.code, 200);
        assert!(head.body.is_empty(), "HEAD has no body: {:?}", head.body);

        let reply = get(a2).await;
        assert_eq!(reply.code, 503);
        assert!(
            reply.head.contains("x-load-balancing-endpoint-weight: 0"),
            "{}",
            reply.head
        );
        assert_eq!(json(&reply)["service"]["name"], "api");
        assert_eq!(json(&reply)["localEndpoints"], 0);

        // Counts change in place: same listener, new answer.
        let errors = servers
            .update(BTreeMap::from([(p1, info("web", 0)), (p2, info("api", 3))]))
            .await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(servers.local_addr(p1), Some(a1));
        assert_eq!(get(a1).await.code, 503);
        let reply = get(a2).await;
        assert_eq!(reply.code, 200);
        assert_eq!(json(&reply)["localEndpoints"], 3);

        // The port moves to another Service: no rebind, the body names the new one.
        let errors = servers
            .update(BTreeMap::from([
                (p1, info("web2", 1)),
                (p2, info("api", 3)),
            ]))
            .await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(json(&get(a1).await)["service"]["name"], "web2");

        // Removed: the port is closed when update returns.
        let errors = servers.update(BTreeMap::from([(p2, info("api", 3))])).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(servers.ports().collect::<Vec<_>>(), vec![p2]);
        assert!(
            tokio::net::TcpStream::connect(a1).await.is_err(),
            "p1 closed"
        );
        assert_eq!(get(a2).await.code, 200);

        servers.shutdown().await;
        assert!(
            tokio::net::TcpStream::connect(a2).await.is_err(),
            "p2 closed"
        );
    }

    #[tokio::test]
    async fn a_port_in_use_is_reported_retried_and_does_not_block_others() {
        // Someone else holds a port.
        let squatter = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken = squatter.local_addr().unwrap().port();
        let mut servers = ServiceHealthServers::new(LOOPBACK);
        let free = servers.reserve_port_for_test().await.unwrap();
        let desired = BTreeMap::from([(taken, info("web", 1)), (free, info("api", 1))]);

        let errors = servers.update(desired.clone()).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, taken);
        assert_eq!(errors[0].1.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(servers.ports().collect::<Vec<_>>(), vec![free]);
        assert_eq!(get(servers.local_addr(free).unwrap()).await.code, 200);

        // Still taken: reported again on the next update.
        let errors = servers.update(desired.clone()).await;
        assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), vec![taken]);

        // Freed: the next update binds it (a real bind of 127.0.0.1:taken).
        drop(squatter);
        let errors = servers.update(desired).await;
        assert!(errors.is_empty(), "{errors:?}");
        let addr = servers.local_addr(taken).unwrap();
        assert_eq!(addr, SocketAddr::new(LOOPBACK, taken));
        let reply = get(addr).await;
        assert_eq!(reply.code, 200);
        assert_eq!(json(&reply)["service"]["name"], "web");
        servers.shutdown().await;
    }

    #[tokio::test]
    async fn dropping_the_servers_closes_the_ports() {
        let mut servers = ServiceHealthServers::new(LOOPBACK);
        let port = servers.reserve_port_for_test().await.unwrap();
        assert!(
            servers
                .update(BTreeMap::from([(port, info("web", 1))]))
                .await
                .is_empty()
        );
        let addr = servers.local_addr(port).unwrap();
        assert_eq!(get(addr).await.code, 200);
        drop(servers);
        // The listener task sees its stop channel close and exits on its own.
        let mut closed = false;
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(closed, "port still open after drop");
    }

    #[tokio::test]
    async fn port_zero_is_refused() {
        let mut servers = ServiceHealthServers::new(LOOPBACK);
        let errors = servers.update(BTreeMap::from([(0, info("web", 1))])).await;
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].1.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(servers.ports().count(), 0);
    }

    #[tokio::test]
    async fn proxy_health_reaches_the_listeners() {
        let clock = Arc::new(FakeClock::default());
        let health = Arc::new(Health::with_clock(Duration::from_secs(60), clock.clone()));
        let mut servers = ServiceHealthServers::new(LOOPBACK).with_proxy_health(health.clone());
        let port = servers.reserve_port_for_test().await.unwrap();
        assert!(
            servers
                .update(BTreeMap::from([(port, info("web", 1))]))
                .await
                .is_empty()
        );
        let addr = servers.local_addr(port).unwrap();
        assert_eq!(get(addr).await.code, 200);
        health.queued_update();
        clock.0.fetch_add(61_000_000_000, Ordering::SeqCst);
        let reply = get(addr).await;
        assert_eq!(reply.code, 503);
        assert_eq!(json(&reply)["serviceProxyHealthy"], false);
        assert_eq!(json(&reply)["localEndpoints"], 1);
        servers.shutdown().await;
    }
}
