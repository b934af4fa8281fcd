//! The agent's own HTTP endpoint: `/healthz` (and `/livez`), `/readyz` and `/metrics`.
//!
//! Semantics follow kube-proxy (pkg/proxy/healthcheck/proxier_health.go):
//! - [`Health::queued_update`] is called when an event arrives that the data path must
//!   reflect, [`Health::updated`] once the data path has been programmed. `/healthz` is
//!   200 unless the oldest update queued since the last [`Health::updated`] is older than
//!   `health_timeout`: a stuck or wedged sync loop fails the liveness probe, an idle one
//!   does not. The JSON body names `lastUpdated` and `currentTime` like kube-proxy's.
//! - `/readyz` is 200 once the agent said it is ready (initial sync done and the data
//!   path programmed, see [`Health::set_ready`]), else 503.
//! - `/metrics` is every family of the agent's [`Metrics`] (OpenMetrics text), with the
//!   health gauges read at the moment of the scrape.
//!
//! The server is hyper 1 (http1 only, behind hyper-util's tokio glue): hyper, hyper-util
//! and http-body-util are already compiled into the agent through kube's client, so a
//! real HTTP/1.1 implementation (keep-alive, pipelining, header limits, read timeouts
//! against slow clients) costs only hyper's `server` feature. A hand-written responder
//! would be smaller but would have to get all of that right on its own.

use std::{
    convert::Infallible,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::jiff::Timestamp;
use tokio::{net::TcpListener, task::JoinSet};
use tracing::{debug, warn};

use crate::metrics::{self, Metrics};

/// kube-proxy's default `--healthz` timeout (2 x its default iptables sync period).
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A monotonic clock: time elapsed since an arbitrary origin. The real one is
/// [`MonotonicClock`]; tests drive a fake one.
pub trait Clock: Send + Sync {
    fn elapsed(&self) -> Duration;
}

/// `Instant`-based [`Clock`] whose origin is its creation.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock(Instant::now())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Prometheus metric type, for `# TYPE` lines.
/// What `/healthz` reports at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthzStatus {
    pub healthy: bool,
    /// When the data path was last programmed; `None` before the first time.
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
    /// Where the data path is not attached, as the kernel says (unhealthy then).
    pub detached: Option<String>,
}

impl HealthzStatus {
    /// kube-proxy's body: `{"lastUpdated": "...", "currentTime": "..."}` (RFC 3339; a
    /// never-updated proxy reports the zero time, as kube-proxy's Go zero value does).
    pub fn body(&self) -> String {
        let last_updated = match self.last_updated {
            Some(time) => rfc3339(time),
            None => "0001-01-01T00:00:00Z".to_owned(),
        };
        let mut body = serde_json::json!({
            "lastUpdated": last_updated,
            "currentTime": rfc3339(self.current_time),
        });
        if let Some(why) = &self.detached {
            body["notAttached"] = serde_json::Value::String(why.clone());
        }
        body.to_string()
    }
}

fn rfc3339(time: SystemTime) -> String {
    Timestamp::try_from(time)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "0001-01-01T00:00:00Z".to_owned())
}

/// Health and readiness of the agent, shared between the sync loop (writer) and the HTTP
/// endpoint (reader). Cheap to update from any thread.
pub struct Health {
    health_timeout: Duration,
    clock: Arc<dyn Clock>,
    /// Wall time at the clock's origin, to report times in the JSON body.
    origin_wall: SystemTime,
    /// Clock time (ns) + 1 of the oldest update queued and not applied since; 0 = none.
    oldest_pending: AtomicU64,
    /// Clock time (ns) + 1 of the last time the data path was programmed; 0 = never.
    last_updated: AtomicU64,
    ready: AtomicBool,
    /// Why the data path lacks frontends (maps too small); None: it has them all.
    incomplete: std::sync::Mutex<Option<String>>,
    /// Where the programs are not attached (the kernel's answer at the last check);
    /// None: attached everywhere.
    detached: std::sync::Mutex<Option<String>>,
    /// Every metric of the agent, served on /metrics; the health ones are kept here.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("health_timeout", &self.health_timeout)
            .field("ready", &self.is_ready())
            .field("healthy", &self.healthz().healthy)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// A health tracker on the real monotonic clock, with metrics of its own.
    pub fn new(health_timeout: Duration) -> Health {
        Health::with_clock(health_timeout, Arc::new(MonotonicClock::new()))
    }

    /// A health tracker whose /metrics serves `metrics` (the agent's).
    pub fn with_metrics(health_timeout: Duration, metrics: Arc<Metrics>) -> Health {
        Health {
            metrics,
            ..Health::new(health_timeout)
        }
    }

    /// A health tracker on the given clock (tests use a fake one).
    pub fn with_clock(health_timeout: Duration, clock: Arc<dyn Clock>) -> Health {
        let origin_wall = SystemTime::now()
            .checked_sub(clock.elapsed())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Health {
            health_timeout,
            clock,
            origin_wall,
            oldest_pending: AtomicU64::new(0),
            last_updated: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            incomplete: std::sync::Mutex::new(None),
            detached: std::sync::Mutex::new(None),
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn now_stamp(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn wall(&self, stamp: u64) -> SystemTime {
        self.origin_wall + Duration::from_nanos(stamp.saturating_sub(1))
    }

    /// An event arrived that the data path must reflect. Only the oldest pending one
    /// counts (kube-proxy's `QueuedUpdate`).
    pub fn queued_update(&self) {
        self.metrics.health.updates_queued.inc();
        let now = self.now_stamp();
        let _ = self
            .oldest_pending
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The data path was programmed with everything queued so far (kube-proxy's
    /// `Updated`).
    pub fn updated(&self) {
        self.metrics.health.updates_applied.inc();
        let now = self.now_stamp();
        self.last_updated.store(now, Ordering::Release);
        self.oldest_pending.store(0, Ordering::Release);
    }

    /// Ready means: initial sync done and the data path programmed from it.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Ready and nothing missing from the data path.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.incomplete().is_none()
            && self.detached().is_none()
    }

    /// The data path lacks frontends (`Some(why)`, /readyz fails and says why) or has
    /// every one (`None`).
    pub fn set_incomplete(&self, why: Option<String>) {
        if let Ok(mut slot) = self.incomplete.lock() {
            *slot = why;
        }
    }

    fn incomplete(&self) -> Option<String> {
        self.incomplete.lock().ok().and_then(|s| s.clone())
    }

    /// The programs are not attached where they should be (`Some(where)`: /healthz and
    /// /readyz fail and say so) or are (`None`).
    pub fn set_detached(&self, why: Option<String>) {
        if let Ok(mut slot) = self.detached.lock() {
            *slot = why;
        }
    }

    fn detached(&self) -> Option<String> {
        self.detached.lock().ok().and_then(|s| s.clone())
    }

    /// `/healthz` now: unhealthy when an update has been pending for longer than the
    /// health timeout (kube-proxy's rule), or when the programs are not attached.
    pub fn healthz(&self) -> HealthzStatus {
        let now = self.now_stamp();
        let pending = self.oldest_pending.load(Ordering::Acquire);
        let detached = self.detached();
        let healthy = detached.is_none()
            && (pending == 0
                || Duration::from_nanos(now.saturating_sub(pending)) <= self.health_timeout);
        let last_updated = self.last_updated.load(Ordering::Acquire);
        HealthzStatus {
            healthy,
            last_updated: (last_updated != 0).then(|| self.wall(last_updated)),
            current_time: self.wall(now),
            detached,
        }
    }

    /// The `/metrics` body: the health gauges as of now, then every family.
    pub fn render_metrics(&self) -> String {
        let status = self.healthz();
        let health = &self.metrics.health;
        health.healthy.set(i64::from(status.healthy));
        health.ready.set(i64::from(self.is_ready()));
        if let Some(last) = status.last_updated {
            let seconds = last
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            health.last_updated_timestamp_seconds.set(seconds);
        }
        self.metrics.encode()
    }

    /// Answers one request (method, path without query) on a listener serving
    /// `routes`. Separate from the server so the routing is unit-testable.
    pub fn respond(
        &self,
        routes: Routes,
        method: &Method,
        path: &str,
    ) -> (StatusCode, &'static str, String) {
        if method != Method::GET && method != Method::HEAD {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "method not allowed\n".to_owned(),
            );
        }
        match path {
            "/healthz" | "/livez" if routes.health => {
                let status = self.healthz();
                let code = if status.healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, "application/json", status.body())
            }
            "/readyz" if routes.health => {
                let synced = self.ready.load(Ordering::Acquire);
                if let Some(why) = self.detached() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain; charset=utf-8",
                        format!("not ready: data path not attached: {why}\n"),
                    )
                } else if let Some(why) = self.incomplete().filter(|_| synced) {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain; charset=utf-8",
                        format!("not ready: data path incomplete: {why}\n"),
                    )
                } else if synced {
                    (
                        StatusCode::OK,
                        "text/plain; charset=utf-8",
                        "ok\n".to_owned(),
                    )
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain; charset=utf-8",
                        "not ready: initial sync not done or data path not programmed\n".to_owned(),
                    )
                }
            }
            "/metrics" if routes.metrics => {
                (StatusCode::OK, metrics::CONTENT_TYPE, self.render_metrics())
            }
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n".to_owned(),
            ),
        }
    }
}

/// What one listener serves: kube-proxy serves health (`--healthz-bind-address`,
/// 0.0.0.0:10256: cloud load balancers probe it) and metrics
/// (`--metrics-bind-address`, 127.0.0.1:10249: not exposed) on separate listeners; one
/// listener may serve both when they are given the same address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routes {
    /// `/healthz`, `/livez`, `/readyz`.
    pub health: bool,
    /// `/metrics`.
    pub metrics: bool,
}

impl Routes {
    pub const HEALTH: Routes = Routes {
        health: true,
        metrics: false,
    };
    pub const METRICS: Routes = Routes {
        health: false,
        metrics: true,
    };
    pub const ALL: Routes = Routes {
        health: true,
        metrics: true,
    };
}

fn handle(health: &Health, routes: Routes, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) =
        health.respond(routes, request.method(), request.uri().path());
    let body = if request.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

/// Serves `routes` on `listener` until `shutdown` completes (tests bind 127.0.0.1:0).
/// Open connections are closed at shutdown.
pub async fn serve_health_on(
    listener: TcpListener,
    health: Arc<Health>,
    routes: Routes,
    shutdown: impl Future,
) {
    let what = match (routes.health, routes.metrics) {
        (true, true) => "health and metrics endpoint",
        (false, true) => "metrics endpoint",
        _ => "health endpoint",
    };
    serve_http(
        listener,
        what,
        move |request| handle(&health, routes, request),
        shutdown,
    )
    .await;
}

/// Serves HTTP/1.1 on `listener`, answering every request with `respond`, until
/// `shutdown` completes; then closes the listener and the open connections.
pub async fn serve_http<R>(
    listener: TcpListener,
    what: &'static str,
    respond: R,
    shutdown: impl Future,
) where
    R: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off briefly.
                        warn!(%error, "{what}: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let respond = respond.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let response = respond(&request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = connection.await {
                        debug!(%peer, %error, "{what}: connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::atomic::AtomicU64};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A clock the test moves by hand.
    #[derive(Default)]
    struct FakeClock(AtomicU64);

    impl FakeClock {
        fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn elapsed(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    fn fake(timeout_s: u64) -> (Arc<FakeClock>, Health) {
        let clock = Arc::new(FakeClock::default());
        let health = Health::with_clock(Duration::from_secs(timeout_s), clock.clone());
        (clock, health)
    }

    #[test]
    fn health_starts_healthy_and_not_ready() {
        let (clock, health) = fake(60);
        clock.advance(Duration::from_secs(3600));
        let status = health.healthz();
        assert!(status.healthy);
        assert_eq!(status.last_updated, None);
        assert!(!health.is_ready());
        let (code, _, body) = health.respond(Routes::ALL, &Method::GET, "/readyz");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }

    #[test]
    fn detached_programs_fail_health_and_readiness_and_say_where() {
        let (_clock, health) = fake(60);
        health.updated();
        health.set_ready(true);
        assert!(health.healthz().healthy && health.is_ready());
        health.set_detached(Some("link_connect4 is detached".into()));
        let (code, _, body) = health.respond(Routes::ALL, &Method::GET, "/healthz");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["notAttached"], "link_connect4 is detached");
        let (code, _, body) = health.respond(Routes::ALL, &Method::GET, "/readyz");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("data path not attached: link_connect4"),
            "{body}"
        );
        assert!(!health.is_ready());
        health.set_detached(None);
        assert!(health.healthz().healthy && health.is_ready());
        let (_, _, body) = health.respond(Routes::ALL, &Method::GET, "/healthz");
        assert!(!body.contains("notAttached"), "{body}");
    }

    #[test]
    fn health_unhealthy_only_when_an_update_is_pending_too_long() {
        let (clock, health) = fake(60);
        health.queued_update();
        clock.advance(Duration::from_secs(59));
        assert!(health.healthz().healthy, "pending 59s < 60s timeout");
        // A newer queued update does not reset the age of the oldest pending one.
        health.queued_update();
        clock.advance(Duration::from_secs(2));
        assert!(!health.healthz().healthy, "pending 61s > 60s timeout");
        let (code, content_type, body) = health.respond(Routes::ALL, &Method::GET, "/healthz");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type, "application/json");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["lastUpdated"], "0001-01-01T00:00:00Z");
        assert!(
            json["currentTime"].as_str().unwrap().ends_with('Z'),
            "{body}"
        );

        // Applying clears the pending update; idle time afterwards is healthy.
        health.updated();
        assert!(health.healthz().healthy);
        clock.advance(Duration::from_secs(3600));
        let status = health.healthz();
        assert!(status.healthy, "no update pending: idle is healthy");
        let last = status.last_updated.unwrap();
        assert_eq!(
            status.current_time.duration_since(last).unwrap(),
            Duration::from_secs(3600)
        );
        let (code, _, body) = health.respond(Routes::ALL, &Method::GET, "/healthz");
        assert_eq!(code, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_ne!(json["lastUpdated"], "0001-01-01T00:00:00Z");

        // A new event starts a new pending period from now, not from the old one.
        health.queued_update();
        clock.advance(Duration::from_secs(30));
        assert!(health.healthz().healthy);
        clock.advance(Duration::from_secs(31));
        assert!(!health.healthz().healthy);
    }

    #[test]
    fn health_ready_flag_and_routes() {
        let (_clock, health) = fake(60);
        health.set_ready(true);
        // A listener serves only its routes (kube-proxy's separate health and metrics
        // addresses).
        assert_eq!(
            health.respond(Routes::HEALTH, &Method::GET, "/metrics").0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            health.respond(Routes::METRICS, &Method::GET, "/healthz").0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            health.respond(Routes::METRICS, &Method::GET, "/metrics").0,
            StatusCode::OK
        );
        assert_eq!(
            health.respond(Routes::ALL, &Method::GET, "/readyz").0,
            StatusCode::OK
        );
        assert_eq!(
            health.respond(Routes::ALL, &Method::HEAD, "/livez").0,
            StatusCode::OK
        );
        assert_eq!(
            health.respond(Routes::ALL, &Method::GET, "/nope").0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            health.respond(Routes::ALL, &Method::POST, "/healthz").0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        // Synced, but frontends did not fit: not ready, and the body says why.
        health.set_incomplete(Some("3 frontends not programmed (maps full)".into()));
        let (code, _, body) = health.respond(Routes::ALL, &Method::GET, "/readyz");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("data path incomplete: 3 frontends"), "{body}");
        assert!(!health.is_ready());
        health.set_incomplete(None);
        assert!(health.is_ready());
        health.set_ready(false);
        assert_eq!(
            health.respond(Routes::ALL, &Method::GET, "/readyz").0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn health_metrics_are_read_at_the_scrape() {
        let (clock, health) = fake(60);
        health.queued_update();
        health.updated();
        let text = health.render_metrics();
        for want in [
            "socklb_updates_queued_total 1\n",
            "socklb_updates_applied_total 1\n",
            "socklb_healthy 1\n",
            "socklb_ready 0\n",
            "# TYPE socklb_last_updated_timestamp_seconds gauge\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // An update pending for longer than the timeout: unhealthy at the next scrape.
        health.queued_update();
        clock.advance(Duration::from_secs(61));
        health.set_ready(true);
        let text = health.render_metrics();
        assert!(text.contains("socklb_healthy 0\n"), "{text}");
        assert!(text.contains("socklb_ready 1\n"), "{text}");
        // Every non-comment line is `name[{labels}] value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn health_serves_real_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_health_on(
            listener,
            health.clone(),
            Routes::ALL,
            async {
                let _ = stop_rx.await;
            },
        ));

        let (code, _, body) = get(addr, "/readyz").await;
        assert_eq!(code, 503, "{body}");
        health.set_ready(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);

        let (code, head, body) = get(addr, "/healthz").await;
        assert_eq!(code, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(json.get("lastUpdated").is_some() && json.get("currentTime").is_some());

        let (code, head, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(head.contains("application/openmetrics-text"), "{head}");
        assert!(body.contains("socklb_ready 1\n"), "{body}");
        assert_eq!(get(addr, "/other").await.0, 404);

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops at shutdown")
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener closed"
        );
    }
}
