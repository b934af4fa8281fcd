//! The agent: a source of cluster objects (a manifest directory or the Kubernetes
//! API) drives the data path. Events update the [`ClusterState`]; each sync
//! programs only the frontends they changed.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use socklb_core::{
    events::{ClusterEvent, ObjectKey},
    maps::{
        DesiredState, FrontendKey, V4, V6,
        diff::{Incomplete, IncompleteCounts},
        maglev::human_bytes,
    },
    model::NodeModel,
    plan::{self, Conflict, Plan},
    state::ClusterState,
};

use crate::{
    datapath::{
        DatapathError, attachment, devices as node, kernel,
        reconcile::Reconciler,
        service_maps::{self, KernelFamily},
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
    /// Where /healthz, /livez and /readyz are served; None: not served.
    pub health_addr: Option<SocketAddr>,
    /// Where /metrics is served; None: not served. The same address as `health_addr`
    /// serves both on one listener.
    pub metrics_addr: Option<SocketAddr>,
    /// /healthz fails when an update waits longer than this.
    pub health_timeout: Duration,
    /// Devices for the TC programs (NodePort, LoadBalancer, external IPs from
    /// outside); None: auto-detected (see `node::select_devices`).
    pub devices: Option<Vec<String>>,
    /// Address the healthCheckNodePort listeners bind (LoadBalancer Services with
    /// externalTrafficPolicy Local); kube-proxy binds every node address.
    pub health_check_bind_address: IpAddr,
    /// Sizes of the maps created (pinned ones keep theirs).
    pub map_sizes: kernel::MapSizes,
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

/// The desired map state of a manifest directory for `node`, as the agent builds it
/// (its owners too, which decide who gets the room in full maps).
pub fn desired_from_dir(dir: &Path, node: &str) -> Result<DesiredState, AgentError> {
    let set = manifests::load_dir(dir).map_err(|e| AgentError::Manifests {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let node_model = set.node(node);
    let mut state = ClusterState::new(node_model.clone());
    state.apply(ClusterEvent::Snapshot {
        services: set.services,
        slices: set.slices,
        node: node_model,
    });
    state.recompute();
    Ok(state.index().desired.clone())
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
    // Conflicts and orphan slices known from the last sync: logged when they appear
    // (and conflicts when they go away), not at every sync.
    let mut conflicts: Vec<Conflict> = Vec::new();
    let mut orphans: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut wrong_family: BTreeSet<ObjectKey> = BTreeSet::new();

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

    // Before the kernel is touched: a container without the capabilities gets one
    // clear error instead of an EPERM from some program load.
    kernel::check_cgroup2(&opts.cgroup)?;
    crate::datapath::capabilities::check_agent()?;

    // One agent per pin directory; held until this function returns (the process's
    // end releases it in any case).
    kernel::prepare_pin_dir(&opts.pin_dir)?;
    let _pin_dir_lock = kernel::PinDirLock::acquire(&opts.pin_dir)?;

    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    for (addr, routes) in listeners(opts.health_addr, opts.metrics_addr) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Health { addr, source })?;
        info!(addr = %listener.local_addr().unwrap_or(addr), ?routes, "HTTP endpoint listening");
        let health = health.clone();
        let mut stopped = http_stopped.clone();
        tokio::spawn(health::serve_health_on(
            listener,
            health,
            routes,
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ));
    }

    let ifaces =
        node::interfaces().map_err(|e| AgentError::Node(format!("listing interfaces: {e}")))?;
    let devices =
        node::select_devices(&ifaces, opts.devices.as_deref()).map_err(AgentError::Node)?;
    let maglev = &opts.map_sizes.maglev;
    if maglev.enabled() {
        info!(
            table_size = maglev.table_size,
            tables = maglev.max_tables,
            seed = maglev.seed,
            "Maglev for external traffic: {} per external frontend that forwards, {} preallocated for {} tables",
            human_bytes(maglev.table_bytes()),
            human_bytes(maglev.map_bytes()),
            maglev.max_tables,
        );
    }
    let (mut maps, loaded) =
        kernel::install(&opts.pin_dir, &opts.cgroup, &devices, &opts.map_sizes)?;
    let sizes = maps.sizes();
    metrics.conntrack_capacity.set(i64::from(sizes.conntrack));
    let stale_sockets = start_stale_sockets(loaded, &opts, &all_metrics);
    // The kernel BTF the programs were loaded with is gone now: return its memory.
    kernel::release_freed_memory();
    let mut node_addrs = NodeAddresses::of(&ifaces);
    maps.set_node_addresses(&node_addrs.v4)?;
    maps.set_node_addresses6(&node_addrs.v6)?;
    info!(
        cgroup = %opts.cgroup.display(),
        pin_dir = %opts.pin_dir.display(),
        devices = ?devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        node_addresses = ?node_addrs.v4,
        node_addresses6 = ?node_addrs.v6,
        "socket hooks and TC programs attached"
    );
    let mut reconciler = Reconciler::adopt(maps, sizes.capacity())?;
    let mut attachment = AttachmentWatch::new(&opts.pin_dir, &opts.cgroup, devices.clone());
    attachment.check(&health);
    let mut incomplete_log = IncompleteLog::default();
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
                housekeep(&mut reconciler, &mut node_addrs, metrics, sizes);
                attachment.check(&health);
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
                report_programmed(
                    &mut reconciler,
                    desired,
                    &health,
                    metrics,
                    &mut incomplete_log,
                );
                report_conflicts(state.index().conflicts(), &mut conflicts, metrics);
                report_orphans(&state, &mut orphans, metrics);
                report_wrong_family(&state, &mut wrong_family);
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
    let _ = stop_http.send(true);
    service_health.shutdown().await;
    source_task.abort();
    if result.is_ok() {
        info!("shutting down; the data path stays in place");
    }
    result
}

/// The listeners to open: health and metrics on their addresses, one listener when
/// the addresses are the same.
fn listeners(
    health: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) -> Vec<(SocketAddr, health::Routes)> {
    match (health, metrics) {
        (Some(h), Some(m)) if h == m => vec![(h, health::Routes::ALL)],
        (h, m) => h
            .map(|h| (h, health::Routes::HEALTH))
            .into_iter()
            .chain(m.map(|m| (m, health::Routes::METRICS)))
            .collect(),
    }
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
            if let Some(missing) = crate::datapath::capabilities::stale_sockets_in_pods_missing() {
                warn!(
                    missing = %missing,
                    "stale-socket termination reaches the agent's own network namespace only, not the pods'"
                );
            }
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

/// Warns once about each EndpointSlice of an address family its Service has no
/// cluster IP of (say an IPv6 slice of an IPv4-only Service): it serves nothing.
fn report_wrong_family(state: &ClusterState, known: &mut BTreeSet<ObjectKey>) {
    let mut now = BTreeSet::new();
    for slice in state.wrong_family_slices() {
        let key = slice.key();
        if !known.contains(&key) {
            let family = match slice.endpoints.first().map(|e| e.address) {
                Some(std::net::IpAddr::V6(_)) => "IPv6",
                _ => "IPv4",
            };
            warn!(
                slice = %key, service = %slice.service_key(),
                "{family} EndpointSlice of a Service without an {family} cluster IP: not used"
            );
        }
        now.insert(key);
    }
    *known = now;
}

/// Warns once about each EndpointSlice that names a Service that does not exist.
fn report_orphans(state: &ClusterState, known: &mut BTreeSet<ObjectKey>, metrics: &SyncMetrics) {
    let mut now = BTreeSet::new();
    for slice in state.orphan_slices() {
        let key = slice.key();
        if !known.contains(&key) {
            warn!(
                slice = %key, service = %slice.service_key(),
                "EndpointSlice for a Service that does not exist: not used until it does"
            );
        }
        now.insert(key);
    }
    metrics
        .orphan_slices
        .set(i64::try_from(now.len()).unwrap_or(i64::MAX));
    *known = now;
}

/// How often an unchanged incomplete data path is logged again.
const INCOMPLETE_LOG_INTERVAL: Duration = Duration::from_secs(300);

/// What was last logged about frontends that are not programmed.
#[derive(Default)]
struct IncompleteLog {
    last: IncompleteCounts,
    logged_at: Option<Instant>,
}

/// After a sync: what is not programmed and how full the maps are, on /metrics,
/// /readyz, in the status map and in one log line (when it changes, and every
/// [`INCOMPLETE_LOG_INTERVAL`] while it lasts), never one per frontend.
fn report_programmed(
    reconciler: &mut Reconciler<kernel::KernelMaps>,
    desired: &DesiredState,
    health: &Health,
    metrics: &SyncMetrics,
    log: &mut IncompleteLog,
) {
    let counts = reconciler.incomplete_counts();
    let fill = service_maps::fill_rows(reconciler);
    metrics.set_programmed(&counts, &fill);
    metrics.set_maglev(&service_maps::maglev_rows(reconciler));
    let summary = counts
        .capacity_short()
        .then(|| incomplete_summary(&counts, &fill, &reconciler.incomplete(), desired));
    health.set_incomplete(summary.clone());
    let status = lb_common::AgentStatus {
        synced_at_ns: kernel::monotonic_ns(),
        wanted: u32::try_from(desired.frontends.len()).unwrap_or(u32::MAX),
        maps_full: u32::try_from(counts.maps_full).unwrap_or(u32::MAX),
        backends_truncated: u32::try_from(counts.backends_truncated).unwrap_or(u32::MAX),
        address_family: u32::try_from(counts.address_family).unwrap_or(u32::MAX),
        agent_pid: std::process::id(),
        pad: 0,
    };
    if let Err(e) = reconciler.maps_mut().write_agent_status(&status) {
        warn!(error = %e, "recording the sync in the status map failed");
    }
    let changed = counts != log.last;
    let due = log
        .logged_at
        .is_none_or(|t| t.elapsed() >= INCOMPLETE_LOG_INTERVAL);
    match summary {
        Some(summary) if changed || due => {
            warn!("data path incomplete: {summary}");
            log.logged_at = Some(Instant::now());
        }
        None if changed && log.last.capacity_short() => {
            info!("data path complete: every wanted frontend is programmed");
            log.logged_at = None;
        }
        _ => {}
    }
    if counts.address_family > 0 && counts.address_family != log.last.address_family {
        warn!(
            frontends = counts.address_family,
            "frontends of an address family the data path does not hold are not programmed"
        );
    }
    log.last = counts;
}

/// One line: how many frontends lack what, which maps are full and which flag sizes
/// them, and a few of the frontends with their Services.
fn incomplete_summary(
    counts: &IncompleteCounts,
    fill: &[(&'static str, usize, usize)],
    incomplete: &std::collections::BTreeMap<FrontendKey, Incomplete>,
    desired: &DesiredState,
) -> String {
    let mut parts = Vec::new();
    if counts.maps_full > 0 {
        parts.push(format!(
            "{} frontends not programmed (maps full)",
            counts.maps_full
        ));
    }
    if counts.backends_truncated > 0 {
        parts.push(format!(
            "{} frontends with fewer backends than wanted",
            counts.backends_truncated
        ));
    }
    // The maps in use that can fill up (the affinity match map has the service
    // map's size and fewer entries).
    let maps: Vec<String> = fill
        .iter()
        .filter(|(map, used, _)| {
            let matches = *map == <V4 as KernelFamily>::MAPS.affinity_matches
                || *map == <V6 as KernelFamily>::MAPS.affinity_matches;
            !matches && *used > 0
        })
        .map(|(map, used, capacity)| format!("{map} {used}/{capacity} ({})", flag_of(map)))
        .collect();
    let mut examples: Vec<(&Incomplete, Option<&ObjectKey>, &FrontendKey)> = incomplete
        .iter()
        .filter(|(_, why)| !matches!(why, Incomplete::AddressFamily))
        .map(|(key, why)| (why, desired.owners.get(key).map(|c| &c.service), key))
        .collect();
    examples.sort_by_key(|(_, owner, key)| (owner.is_none(), *owner, **key));
    let examples: Vec<String> = examples
        .iter()
        .take(3)
        .map(|(why, owner, key)| {
            let owner = owner.map_or_else(|| "-".to_string(), |o| o.to_string());
            match why {
                Incomplete::BackendsTruncated { programmed, wanted } => {
                    format!("{owner} {key} ({programmed} of {wanted} backends)")
                }
                _ => format!("{owner} {key}"),
            }
        })
        .collect();
    format!(
        "{}; maps: {}; e.g. {}",
        parts.join(", "),
        maps.join(", "),
        examples.join(", ")
    )
}

/// The flag that sizes `map`.
fn flag_of(map: &str) -> &'static str {
    kernel::MapSizes::default()
        .by_map()
        .iter()
        .find(|(m, ..)| *m == map)
        .map_or("-", |(_, _, flag)| *flag)
}

/// Asks the kernel whether the programs are still attached where the agent attached
/// them (a removed cgroup or device, a `bpftool link detach`), and says so on
/// /healthz, /readyz and in the log when that changes.
struct AttachmentWatch {
    pin_dir: std::path::PathBuf,
    cgroup: std::path::PathBuf,
    devices: Vec<kernel::Device>,
    last: Vec<String>,
}

impl AttachmentWatch {
    fn new(
        pin_dir: &std::path::Path,
        cgroup: &std::path::Path,
        devices: Vec<kernel::Device>,
    ) -> Self {
        Self {
            pin_dir: pin_dir.to_path_buf(),
            cgroup: cgroup.to_path_buf(),
            devices,
            last: Vec::new(),
        }
    }

    fn check(&mut self, health: &Health) {
        let problems = match attachment::cgroup_id(&self.cgroup) {
            Some(id) => attachment::check(
                &self.pin_dir,
                &attachment::Expected {
                    cgroup: Some(id),
                    devices: &self.devices,
                },
            ),
            None => vec![format!("cgroup {} is gone", self.cgroup.display())],
        };
        if problems != self.last {
            if problems.is_empty() {
                info!("every hook is attached again");
            } else {
                warn!(problems = ?problems, "the data path is not attached as configured (restart the agent to attach it again)");
            }
        }
        health.set_detached((!problems.is_empty()).then(|| problems.join("; ")));
        self.last = problems;
    }
}

/// This node's addresses that NodePorts answer on, per family.
#[derive(Debug, PartialEq, Eq)]
struct NodeAddresses {
    v4: Vec<std::net::Ipv4Addr>,
    v6: Vec<std::net::Ipv6Addr>,
}

impl NodeAddresses {
    fn of(ifaces: &[node::Interface]) -> Self {
        Self {
            v4: node::node_addresses(ifaces),
            v6: node::node_addresses6(ifaces),
        }
    }
}

/// A sweep finding the conntrack table at least this full counts as pressure.
const CT_PRESSURE_PERCENT: usize = 95;

/// How often node addresses are re-read and expired conntrack entries removed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// Node addresses may change (DHCP, an added IP); conntrack entries of finished
/// flows are removed before the LRU has to evict live ones.
fn housekeep(
    reconciler: &mut Reconciler<kernel::KernelMaps>,
    node_addrs: &mut NodeAddresses,
    metrics: &SyncMetrics,
    sizes: kernel::MapSizes,
) {
    match node::interfaces() {
        Ok(ifaces) => {
            let now = NodeAddresses::of(&ifaces);
            if now != *node_addrs {
                let maps = reconciler.maps_mut();
                match maps
                    .set_node_addresses(&now.v4)
                    .and_then(|()| maps.set_node_addresses6(&now.v6))
                {
                    Ok(()) => {
                        info!(node_addresses = ?now.v4, node_addresses6 = ?now.v6, "node addresses changed");
                        *node_addrs = now;
                    }
                    Err(e) => warn!(error = %e, "updating node addresses failed"),
                }
            }
        }
        Err(e) => warn!(error = %e, "listing interfaces failed"),
    }
    match reconciler
        .maps_mut()
        .sweep_conntrack(kernel::monotonic_ns())
    {
        Ok(sweep) => {
            metrics
                .conntrack_entries
                .set(i64::try_from(sweep.live).unwrap_or(i64::MAX));
            metrics.conntrack_expired.inc_by(sweep.removed as u64);
            // The table is an LRU: when full, new flows still get entries and the
            // least recently used (idle) flows lose theirs. Say so when it gets close.
            let capacity = sizes.conntrack as usize;
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

/// Unix time in seconds (wall clock), for the last-sync timestamp.
fn unix_now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
