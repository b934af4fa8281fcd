//! The agent: a source of cluster objects (a manifest directory or the Kubernetes
//! API) drives the data path. Events update the [`ClusterState`]; each sync
//! programs only the frontends they changed.
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use socklb_core::{
    events::ClusterEvent,
    maps::{DesiredState, diff::Capacity},
    model::NodeModel,
    plan::{self, Conflict, Plan},
    state::ClusterState,
};

use crate::{
    datapath::{
        DatapathError, devices as node, kernel,
        reconcile::Reconciler,
        stale_sockets::{SocketIterators, StaleSockets},
    },
    http::{
        health::{self, Health},
        service_health::{self, ServiceHealthServers},
    },
    metrics::{Metrics, SyncMetrics},
    sources::{
        kube as kube_source,
        kube::{KubeSourceConfig, SourceMetrics},
        manifest_dir::ManifestDirSource,
        manifest_files as manifests,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("manifest directory {path}: {message}")]
    Manifests { path: PathBuf, message: String },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Kubernetes(#[from] kube_source::KubeSourceError),
    #[error("health endpoint {addr}: {source}")]
    Health {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the {0} source stopped")]
    SourceStopped(&'static str),
    #[error("node devices: {0}")]
    Node(String),
}

/// Where the agent learns about Services, EndpointSlices and its Node.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory of manifests, checked every `poll_interval`.
    Manifests {
        dir: PathBuf,
        poll_interval: Duration,
    },
    /// The Kubernetes API (`kubeconfig`, else KUBECONFIG, else in-cluster).
    Kubernetes { kubeconfig: Option<PathBuf> },
}

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub source: Source,
    pub node: String,
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    /// Bursts of events closer than this are applied in one sync (kube-proxy's
    /// --min-sync-period); 0 applies every event at once.
    pub min_sync_period: Duration,
    /// Where /healthz, /readyz and /metrics are served; None: not served.
    pub health_addr: Option<SocketAddr>,
    /// /healthz fails when an update waits longer than this.
    pub health_timeout: Duration,
    /// Devices for the TC programs (NodePort, LoadBalancer, external IPs from
    /// outside); None: auto-detected (see `node::select_devices`).
    pub devices: Option<Vec<String>>,
    /// Address the healthCheckNodePort listeners bind (LoadBalancer Services with
    /// externalTrafficPolicy Local); kube-proxy binds every node address.
    pub health_check_bind_address: IpAddr,
    /// Also destroy connected TCP sockets whose backend left their service (UDP ones
    /// always are; see `datapath::stale_sockets`).
    pub terminate_stale_tcp: bool,
}

/// Reads a manifest directory and computes the plan (`socklb plan`).
pub fn plan_from_dir(dir: &Path, node: &str) -> Result<(Plan, Vec<String>), AgentError> {
    let set = manifests::load_dir(dir).map_err(|e| AgentError::Manifests {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let node_model = set.node(node);
    let plan = plan::compute_plan(&set.services, &set.slices, &node_model);
    let warnings = set.warnings.iter().map(|w| w.to_string()).collect();
    Ok((plan, warnings))
}

/// Runs until `shutdown` resolves. The data path stays in place afterwards.
pub async fn run_agent(
    opts: AgentOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let all_metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::with_metrics(
        opts.health_timeout,
        all_metrics.clone(),
    ));
    let metrics = &all_metrics.sync;
    metrics
        .conntrack_capacity
        .set(i64::from(lb_common::capacity::CT4));
    // Conflicts known from the last sync: logged when they appear or go away.
    let mut conflicts: Vec<Conflict> = Vec::new();

    let (tx, mut rx) = mpsc::channel::<ClusterEvent>(4096);
    // Read the manifests before touching the kernel: an unreadable directory fails
    // without side effects.
    let mut source_task = match &opts.source {
        Source::Manifests { dir, poll_interval } => {
            let mut source = ManifestDirSource::with_metrics(
                dir,
                &opts.node,
                *poll_interval,
                all_metrics.manifests.invalid_objects.clone(),
            );
            let first = source.load().map_err(|e| AgentError::Manifests {
                path: dir.clone(),
                message: e.to_string(),
            })?;
            // The channel is empty: this cannot fail.
            let _ = tx.try_send(first);
            let tx = tx.clone();
            tokio::spawn(async move {
                source.run(tx).await;
                "manifests"
            })
        }
        Source::Kubernetes { kubeconfig } => {
            let client = kube_source::client_from_env(kubeconfig.clone()).await?;
            let source_metrics = Arc::new(SourceMetrics::new(&all_metrics.kube));
            let config = KubeSourceConfig::new(opts.node.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) =
                    kube_source::run_kube_source(client, config, tx, source_metrics).await
                {
                    warn!(error = %e, "Kubernetes source failed");
                }
                "kubernetes"
            })
        }
    };
    drop(tx);

    let (stop_health, health_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = opts.health_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Health { addr, source })?;
        info!(addr = %listener.local_addr().unwrap_or(addr), "health endpoint listening");
        let health = health.clone();
        tokio::spawn(health::serve_health_on(listener, health, async move {
            let _ = health_stopped.await;
        }));
    }

    let ifaces =
        node::interfaces().map_err(|e| AgentError::Node(format!("listing interfaces: {e}")))?;
    let devices =
        node::select_devices(&ifaces, opts.devices.as_deref()).map_err(AgentError::Node)?;
    let (mut maps, loaded) = kernel::install(&opts.pin_dir, &opts.cgroup, &devices)?;
    let stale_sockets = start_stale_sockets(loaded, &opts, &all_metrics);
    // The kernel BTF the programs were loaded with is gone now: return its memory.
    kernel::release_freed_memory();
    let mut node_addrs = node::node_addresses(&ifaces);
    maps.set_node_addresses(&node_addrs)?;
    info!(
        cgroup = %opts.cgroup.display(),
        pin_dir = %opts.pin_dir.display(),
        devices = ?devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        node_addresses = ?node_addrs,
        "socket hooks and TC programs attached"
    );
    let mut reconciler = Reconciler::adopt(maps, Capacity::default())?;
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = ClusterState::new(NodeModel::named(opts.node.clone()));
    let mut service_health =
        ServiceHealthServers::new(opts.health_check_bind_address).with_proxy_health(health.clone());
    // Ports that failed to bind are retried on the housekeeping tick.
    let mut service_health_failed = false;

    tokio::pin!(shutdown);
    // The first sync after adopting the maps is a full one: it removes what an
    // earlier agent programmed that is no longer wanted. So is the one after a failure.
    let mut full_sync = true;
    let mut ready = false;
    let mut last_sync: Option<Instant> = None;
    let mut batch_started: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let result = loop {
        // When may the next sync run?
        let work = state.synced() && (state.has_pending() || full_sync);
        let due = if !work {
            None
        } else {
            let earliest = last_sync.map_or_else(Instant::now, |t| t + opts.min_sync_period);
            Some(retry_at.map_or(earliest, |r| r.max(earliest)))
        };
        let sleep = async {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            event = rx.recv() => match event {
                Some(event) => {
                    batch_started.get_or_insert_with(Instant::now);
                    health.queued_update();
                    state.apply(event);
                    // Take everything already queued: a burst becomes one sync.
                    while let Ok(event) = rx.try_recv() {
                        state.apply(event);
                    }
                    continue;
                }
                None => {
                    let which = (&mut source_task).await.unwrap_or("event");
                    break Err(AgentError::SourceStopped(which));
                }
            },
            () = sleep => {}
            _ = housekeeping.tick() => {
                housekeep(&mut reconciler, &mut node_addrs, metrics);
                if service_health_failed && ready {
                    let failed = service_health.update(service_health::desired_health_checks_for_state(&state)).await;
                    service_health_failed = !failed.is_empty();
                }
                continue;
            }
        }

        let started = Instant::now();
        let changed = state.recompute();
        let desired: &DesiredState = &state.index().desired;
        let outcome = if full_sync {
            reconciler.sync(desired)
        } else {
            reconciler.sync_keys(desired, &changed)
        };
        last_sync = Some(started);
        let batch_start = batch_started.take();
        match outcome {
            Ok(stats) => {
                // First: the sockets of departed backends (queued, never waited for).
                match &stale_sockets {
                    Some(stale) => {
                        stale.submit(&stats.departed, batch_start.unwrap_or(started));
                    }
                    None if !stats.departed.is_empty() => debug!(
                        departed = stats.departed.len(),
                        "backends left their services; their connected sockets stay (termination unavailable)"
                    ),
                    None => {}
                }
                full_sync = false;
                retry_at = None;
                health.updated();
                // kube-proxy's SyncServices + SyncEndpoints for healthCheckNodePorts; a
                // port that fails to bind is logged inside and retried later.
                let failed = service_health
                    .update(service_health::desired_health_checks_for_state(&state))
                    .await;
                service_health_failed = !failed.is_empty();
                let latency = batch_start.map_or(Duration::ZERO, |t| t.elapsed());
                metrics.syncs.inc();
                metrics.map_operations.inc_by(stats.ops as u64);
                metrics
                    .frontends_changed
                    .inc_by(stats.frontends_changed as u64);
                metrics.last_sync_latency_seconds.set(latency.as_secs_f64());
                metrics
                    .network_programming_duration_seconds
                    .observe(latency.as_secs_f64());
                metrics
                    .sync_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.last_sync_timestamp_seconds.set(unix_now_s());
                metrics
                    .frontends
                    .set(i64::try_from(desired.frontends.len()).unwrap_or(i64::MAX));
                report_conflicts(state.index().conflicts(), &mut conflicts, metrics);
                if stats.ops > 0 {
                    info!(
                        services = state.service_count(),
                        changed = stats.frontends_changed,
                        map_ops = stats.ops,
                        latency_us = latency.as_micros() as u64,
                        "data path updated"
                    );
                }
                if !ready {
                    ready = true;
                    health.set_ready(true);
                    info!(
                        services = state.service_count(),
                        slices = state.slice_count(),
                        "ready"
                    );
                }
            }
            Err(e) => {
                // The batch is not applied yet: its latency keeps counting.
                batch_started = batch_start;
                metrics.sync_errors.inc();
                warn!(error = %e, "data path update failed; retrying with a full sync");
                full_sync = true;
                retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    };
    let _ = stop_health.send(());
    service_health.shutdown().await;
    source_task.abort();
    if result.is_ok() {
        info!("shutting down; the data path stays in place");
    }
    result
}

/// Loads the socket iterators and starts their worker; None (said once in the log)
/// where the kernel cannot destroy sockets: everything else works without them.
fn start_stale_sockets(
    loaded: kernel::LoadedObject,
    opts: &AgentOptions,
    metrics: &Metrics,
) -> Option<StaleSockets> {
    let started = SocketIterators::load(loaded, opts.terminate_stale_tcp)
        .map_err(|e| e.to_string())
        .and_then(|iterators| {
            StaleSockets::start(iterators, opts.cgroup.clone(), metrics.stale.clone())
                .map_err(|e| format!("starting its thread: {e}"))
        });
    match started {
        Ok(stale) => {
            metrics.stale.available.set(1);
            info!(
                tcp = opts.terminate_stale_tcp,
                "stale-socket termination on: connected sockets of departed backends are destroyed"
            );
            Some(stale)
        }
        Err(e) => {
            warn!(error = %e, "stale-socket termination unavailable: connected sockets keep departed backends");
            None
        }
    }
}

/// Logs conflicts once when they appear and once when they are resolved (not at every
/// sync), and shows them on /metrics.
fn report_conflicts(now: Vec<Conflict>, known: &mut Vec<Conflict>, metrics: &SyncMetrics) {
    if *known == now {
        return;
    }
    metrics.set_conflicts(&now);
    for conflict in now.iter().filter(|c| !known.contains(c)) {
        warn!(%conflict, "two services claim one frontend; the other is not served there");
    }
    for conflict in known.iter().filter(|c| !now.contains(c)) {
        info!(
            address = %conflict.address, protocol = %conflict.protocol, service = %conflict.dropped,
            "frontend conflict resolved"
        );
    }
    *known = now;
}

/// A sweep finding the conntrack table at least this full counts as pressure.
const CT_PRESSURE_PERCENT: usize = 95;

/// How often node addresses are re-read and expired conntrack entries removed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// Node addresses may change (DHCP, an added IP); conntrack entries of finished
/// flows are removed before the LRU has to evict live ones.
fn housekeep(
    reconciler: &mut Reconciler<kernel::KernelMaps>,
    node_addrs: &mut Vec<std::net::Ipv4Addr>,
    metrics: &SyncMetrics,
) {
    match node::interfaces() {
        Ok(ifaces) => {
            let now = node::node_addresses(&ifaces);
            if now != *node_addrs {
                match reconciler.maps_mut().set_node_addresses(&now) {
                    Ok(()) => {
                        info!(node_addresses = ?now, "node addresses changed");
                        *node_addrs = now;
                    }
                    Err(e) => warn!(error = %e, "updating node addresses failed"),
                }
            }
        }
        Err(e) => warn!(error = %e, "listing interfaces failed"),
    }
    match reconciler.maps_mut().sweep_conntrack(monotonic_ns()) {
        Ok(sweep) => {
            metrics
                .conntrack_entries
                .set(i64::try_from(sweep.live).unwrap_or(i64::MAX));
            metrics.conntrack_expired.inc_by(sweep.removed as u64);
            // The table is an LRU: when full, new flows still get entries and the
            // least recently used (idle) flows lose theirs. Say so when it gets close.
            let capacity = lb_common::capacity::CT4 as usize;
            if sweep.live * 100 >= capacity * CT_PRESSURE_PERCENT {
                metrics.conntrack_full_sweeps.inc();
                warn!(
                    live = sweep.live,
                    capacity,
                    "conntrack table nearly full: idle flows are being evicted for new ones"
                );
            }
        }
        Err(e) => warn!(error = %e, "conntrack sweep failed"),
    }
}

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Unix time in seconds (wall clock), for the last-sync timestamp.
fn unix_now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
