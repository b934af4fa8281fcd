//! Service health checks: one HTTP listener per `spec.healthCheckNodePort`, so that a
//! cloud load balancer sends traffic of an `externalTrafficPolicy: Local` Service only to
//! nodes that have a ready endpoint of it.
//!
//! Which ports and what each reports is decided in the core
//! (socklb_core::plan::health_checks, kube-proxy's rules). Here, as kube-proxy's
//! pkg/proxy/healthcheck/service_health.go serves them:
//! - Each listener answers every request (any path, any method) with 200 when the count
//!   is > 0 and the proxy itself is healthy, else 503; headers `Content-Type:
//!   application/json`, `X-Content-Type-Options: nosniff` and
//!   `X-Load-Balancing-Endpoint-Weight: <count>`; and kube-proxy's body, byte for byte
//!   (tab-indented): `service.namespace`, `service.name`, `localEndpoints`,
//!   `serviceProxyHealthy`.
//! - A port that cannot be bound is logged and left out; the next update tries again.
//!   It never stops the other listeners nor the agent.
//!
//! [`ServiceHealthServers`] owns the listeners and applies a desired set.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use http_body_util::Full;
use hyper::{
    Response, StatusCode,
    body::Bytes,
    header::{self, HeaderName, HeaderValue},
};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::oneshot,
    task::JoinHandle,
};
use tracing::{debug, info, warn};

pub use socklb_core::plan::health_checks::{
    ServiceHealthInfo, desired_health_checks, desired_health_checks_for_state,
};

use crate::http::health::{self, Health};

/// Where the listeners bind by default: every IPv4 address of the node (kube-proxy binds
/// its wildcard address; pass `::` for IPv6 as well, dual-stack on Linux by default).
pub const DEFAULT_BIND_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// The header Google Cloud's weighted load balancing reads; kube-proxy sets it to the
/// local endpoint count.
pub const ENDPOINT_WEIGHT_HEADER: &str = "x-load-balancing-endpoint-weight";

/// kube-proxy's response body, byte for byte: tab-indented, no trailing newline.
pub fn response_body(info: &ServiceHealthInfo, proxy_healthy: bool) -> String {
    // Kubernetes names never need escaping; serde_json keeps odd manifest input valid.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        quote(&info.service.namespace),
        quote(&info.service.name),
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

/// How a listener gets its socket for an address: [`bind_listener`] in the agent; tests
/// hand out listeners they bound on free ports beforehand.
pub type Binder = Box<dyn FnMut(SocketAddr) -> io::Result<TcpListener> + Send>;

/// Binds `addr` with SO_REUSEADDR (as kube-proxy's listeners and tokio's own
/// `TcpListener::bind` do), so a port closed a moment ago can be served again at once.
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The health check listeners of this node, one per healthCheckNodePort. Dropping it
/// stops them too (without waiting); [`ServiceHealthServers::shutdown`] waits.
pub struct ServiceHealthServers {
    bind: IpAddr,
    proxy_health: Option<Arc<Health>>,
    listeners: BTreeMap<u16, PortListener>,
    /// Ports whose last bind failed, with the error kind: a repeated failure is logged
    /// at debug, not again at warn on every sync.
    failing: BTreeMap<u16, io::ErrorKind>,
    binder: Binder,
}

impl std::fmt::Debug for ServiceHealthServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHealthServers")
            .field("bind", &self.bind)
            .field("ports", &self.listeners.keys().collect::<Vec<_>>())
            .field("failing", &self.failing)
            .finish_non_exhaustive()
    }
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
            binder: Box::new(bind_listener),
        }
    }

    /// Gets listeners from `binder` instead of binding their ports.
    pub fn with_binder(mut self, binder: Binder) -> Self {
        self.binder = binder;
        self
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
                info!(port, service = %listener.shared.info().service, "closing service health check");
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
            let service = info.service.to_string();
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
        let listener = (self.binder)(SocketAddr::new(self.bind, port))?;
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
    use socklb_core::model::ObjectKey;

    use crate::http::health::Clock;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// Listeners bound on free ports before the servers ask for them, so tests never
    /// race other tests for a fixed port.
    #[derive(Clone, Default)]
    struct Prebound(Arc<std::sync::Mutex<std::collections::HashMap<u16, TcpListener>>>);

    impl Prebound {
        /// Binds a free loopback port now and returns it; the servers' next bind of
        /// that port gets this listener.
        fn reserve(&self) -> u16 {
            let listener = bind_listener(SocketAddr::new(LOOPBACK, 0)).unwrap();
            let port = listener.local_addr().unwrap().port();
            self.0.lock().unwrap().insert(port, listener);
            port
        }

        fn binder(&self) -> Binder {
            let prebound = self.clone();
            Box::new(
                move |addr| match prebound.0.lock().unwrap().remove(&addr.port()) {
                    Some(listener) => Ok(listener),
                    None => bind_listener(addr),
                },
            )
        }
    }

    /// Servers on loopback whose ports come from `prebound`.
    fn servers(prebound: &Prebound) -> ServiceHealthServers {
        ServiceHealthServers::new(LOOPBACK).with_binder(prebound.binder())
    }

    fn info(name: &str, local_endpoints: usize) -> ServiceHealthInfo {
        ServiceHealthInfo {
            service: ObjectKey::new("demo", name),
            local_endpoints,
        }
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
            service: ObjectKey::new("a\"b", "c\\d"),
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
        let prebound = Prebound::default();
        let mut servers = servers(&prebound);
        let p1 = prebound.reserve();
        let p2 = prebound.reserve();
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
        let prebound = Prebound::default();
        let mut servers = servers(&prebound);
        let free = prebound.reserve();
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
        let prebound = Prebound::default();
        let mut servers = servers(&prebound);
        let port = prebound.reserve();
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
        let prebound = Prebound::default();
        let mut servers = servers(&prebound).with_proxy_health(health.clone());
        let port = prebound.reserve();
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
