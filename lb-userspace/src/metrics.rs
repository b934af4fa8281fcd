//! The agent's metrics: every family registered once, in one registry, and encoded by
//! prometheus-client's text encoder for `/metrics` (OpenMetrics text). The parts of
//! the agent update their own handles (cheap atomics, shared by clone); nothing here
//! formats exposition text by hand.
//!
//! Where kube-proxy has the same figure, the name is kube-proxy's
//! (`kubeproxy_sync_proxy_rules_duration_seconds`,
//! `kubeproxy_network_programming_duration_seconds`,
//! `kubeproxy_sync_proxy_rules_last_timestamp_seconds`), so its dashboards apply.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use socklb_core::plan::Conflict;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A floating-point gauge.
pub type GaugeF64 = Gauge<f64, AtomicU64>;

/// Every metric family of the agent.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub health: HealthMetrics,
    pub sync: SyncMetrics,
    pub kube: KubeMetrics,
    pub manifests: ManifestMetrics,
    pub stale: StaleSocketMetrics,
}

/// The agent's own health (kube-proxy's healthz semantics; see `http::health`).
#[derive(Debug, Clone, Default)]
pub struct HealthMetrics {
    pub healthy: Gauge,
    pub ready: Gauge,
    pub updates_queued: Counter,
    pub updates_applied: Counter,
    pub last_updated_timestamp_seconds: GaugeF64,
}

/// The sync loop: what was written to the maps and how long it took.
#[derive(Debug, Clone)]
pub struct SyncMetrics {
    pub syncs: Counter,
    pub sync_errors: Counter,
    pub map_operations: Counter,
    pub frontends_changed: Counter,
    pub frontends: Gauge,
    pub last_sync_latency_seconds: GaugeF64,
    /// kube-proxy's: the time one sync took (recompute, diff, map writes).
    pub sync_duration_seconds: Histogram,
    /// kube-proxy's: from the first change of a batch to its maps written.
    pub network_programming_duration_seconds: Histogram,
    pub last_sync_timestamp_seconds: GaugeF64,
    pub conflicts: Gauge,
    pub conflict: Family<ConflictLabels, Gauge>,
    /// EndpointSlices naming a Service that does not exist.
    pub orphan_slices: Gauge,
    pub conntrack_expired: Counter,
    pub conntrack_full_sweeps: Counter,
    pub conntrack_capacity: Gauge,
    pub conntrack_entries: Gauge,
    /// Wanted frontends not (fully) in the maps, by reason.
    pub frontends_not_programmed: Family<ReasonLabels, Gauge>,
    /// Entries the agent keeps in each sized map, and its size.
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_capacity: Family<MapLabels, Gauge>,
    /// Maglev tables in use and room for, per family's map, and their memory.
    pub maglev_tables: Family<MapLabels, Gauge>,
    pub maglev_tables_capacity: Family<MapLabels, Gauge>,
    pub maglev_bytes: Family<MapLabels, Gauge>,
}

/// Why frontends are not programmed (`maps_full`, `backends_truncated`,
/// `address_family`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// A map by its kernel name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: &'static str,
}

/// One lost claim on a frontend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabels {
    pub address: String,
    pub protocol: String,
    pub kept: String,
    pub dropped: String,
}

/// The kind of a watched object.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// The Kubernetes source, per watched kind.
#[derive(Debug, Clone, Default)]
pub struct KubeMetrics {
    pub watch_events: Family<KindLabels, Counter>,
    pub cluster_events: Family<KindLabels, Counter>,
    pub invalid_objects: Family<KindLabels, Counter>,
    pub relists: Family<KindLabels, Counter>,
    pub watch_errors: Family<KindLabels, Counter>,
    pub synced: Family<KindLabels, Gauge>,
}

/// The manifest directory source.
#[derive(Debug, Clone, Default)]
pub struct ManifestMetrics {
    /// Objects and files skipped as invalid in the current content of the directory.
    pub invalid_objects: Gauge,
}

/// Stale-socket termination (`datapath::stale_sockets`).
#[derive(Debug, Clone)]
pub struct StaleSocketMetrics {
    /// Connected sockets destroyed, by protocol.
    pub destroyed: Family<ProtocolLabels, Counter>,
    /// `bpf_sock_destroy` calls that failed, by protocol.
    pub destroy_failures: Family<ProtocolLabels, Counter>,
    /// Iterator passes (one per sync with departed backends, batched while one runs).
    pub passes: Counter,
    /// Network namespaces the last pass ran in.
    pub namespaces: Gauge,
    /// From the first change of a batch to its stale sockets destroyed everywhere.
    pub duration_seconds: Histogram,
    /// 1 when this kernel lets the agent destroy stale sockets.
    pub available: Gauge,
}

/// A socket's protocol.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// `udp` or `tcp`.
    pub protocol: &'static str,
}

impl Default for StaleSocketMetrics {
    fn default() -> Self {
        StaleSocketMetrics {
            destroyed: Family::default(),
            destroy_failures: Family::default(),
            passes: Counter::default(),
            namespaces: Gauge::default(),
            // 100 µs .. ~105 s, as the sync histograms.
            duration_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 21)),
            available: Gauge::default(),
        }
    }
}

impl Default for SyncMetrics {
    fn default() -> Self {
        // 100 µs .. ~105 s: one endpoint change at the low end, a cold sync of a large
        // cluster or a wedged loop at the high end.
        let buckets = || Histogram::new(exponential_buckets(0.000_1, 2.0, 21));
        SyncMetrics {
            syncs: Counter::default(),
            sync_errors: Counter::default(),
            map_operations: Counter::default(),
            frontends_changed: Counter::default(),
            frontends: Gauge::default(),
            last_sync_latency_seconds: GaugeF64::default(),
            sync_duration_seconds: buckets(),
            network_programming_duration_seconds: buckets(),
            last_sync_timestamp_seconds: GaugeF64::default(),
            conflicts: Gauge::default(),
            conflict: Family::default(),
            orphan_slices: Gauge::default(),
            conntrack_expired: Counter::default(),
            conntrack_full_sweeps: Counter::default(),
            conntrack_capacity: Gauge::default(),
            conntrack_entries: Gauge::default(),
            frontends_not_programmed: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            maglev_tables: Family::default(),
            maglev_tables_capacity: Family::default(),
            maglev_bytes: Family::default(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let health = HealthMetrics::default();
        let sync = SyncMetrics::default();
        let kube = KubeMetrics::default();
        let manifests = ManifestMetrics::default();
        let stale = StaleSocketMetrics::default();
        let mut r = Registry::default();

        r.register(
            "socklb_healthy",
            "1 unless an update has been pending for longer than the health timeout",
            health.healthy.clone(),
        );
        r.register(
            "socklb_ready",
            "1 once the initial sync is done and the data path programmed",
            health.ready.clone(),
        );
        r.register(
            "socklb_updates_queued",
            "Events queued for the data path",
            health.updates_queued.clone(),
        );
        r.register(
            "socklb_updates_applied",
            "Times the data path was programmed",
            health.updates_applied.clone(),
        );
        r.register(
            "socklb_last_updated_timestamp_seconds",
            "Unix time the data path was last programmed",
            health.last_updated_timestamp_seconds.clone(),
        );

        r.register(
            "socklb_syncs",
            "Data path syncs applied",
            sync.syncs.clone(),
        );
        r.register(
            "socklb_sync_errors",
            "Data path syncs that failed (retried)",
            sync.sync_errors.clone(),
        );
        r.register(
            "socklb_map_operations",
            "BPF map writes and deletes",
            sync.map_operations.clone(),
        );
        r.register(
            "socklb_frontends_changed",
            "Frontends rewritten by syncs",
            sync.frontends_changed.clone(),
        );
        r.register("socklb_frontends", "Frontends (service address, port, protocol, plus address wildcards) wanted in the maps", sync.frontends.clone());
        r.register(
            "socklb_last_sync_latency_seconds",
            "Time from the first event of the last applied batch to its maps written",
            sync.last_sync_latency_seconds.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "The time one sync of the data path took (recompute, diff, map writes)",
            sync.sync_duration_seconds.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "From the first change of a batch to its maps written",
            sync.network_programming_duration_seconds.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "Unix time of the last successful sync",
            sync.last_sync_timestamp_seconds.clone(),
        );
        r.register(
            "socklb_frontend_conflicts",
            "Claims on a frontend that another Service keeps (not served for the claimant)",
            sync.conflicts.clone(),
        );
        r.register("socklb_frontend_conflict", "One per frontend claim that lost: the frontend, the Service that keeps it and the one that does not", sync.conflict.clone());
        r.register(
            "socklb_orphan_slices",
            "EndpointSlices whose kubernetes.io/service-name names a Service that does not exist (they serve nothing)",
            sync.orphan_slices.clone(),
        );
        r.register(
            "socklb_conntrack_expired",
            "Expired conntrack entries removed by the agent's sweeps",
            sync.conntrack_expired.clone(),
        );
        r.register("socklb_conntrack_full_sweeps", "Sweeps that found the conntrack table at 95% of its capacity or more: new flows evict the least recently used ones", sync.conntrack_full_sweeps.clone());
        r.register(
            "socklb_conntrack_capacity",
            "Conntrack table size (entries; two per flow)",
            sync.conntrack_capacity.clone(),
        );
        r.register(
            "socklb_conntrack_entries",
            "Live conntrack entries (both directions of each external flow) at the last sweep",
            sync.conntrack_entries.clone(),
        );

        r.register(
            "socklb_frontends_not_programmed",
            "Wanted frontends that are not in the maps as wanted, by reason: maps_full (not programmed, or left as it was), backends_truncated (fewer backends than wanted), address_family",
            sync.frontends_not_programmed.clone(),
        );
        r.register(
            "socklb_map_entries",
            "Entries the agent has written to each map it sizes by what the cluster needs",
            sync.map_entries.clone(),
        );
        r.register(
            "socklb_map_capacity",
            "Size (max_entries) of each of those maps",
            sync.map_capacity.clone(),
        );

        r.register(
            "socklb_maglev_tables",
            "Maglev tables in use (one per external frontend that forwards, with --lb-algorithm maglev), per family's map",
            sync.maglev_tables.clone(),
        );
        r.register(
            "socklb_maglev_tables_capacity",
            "Maglev tables each map has room for (--maglev-max-tables)",
            sync.maglev_tables_capacity.clone(),
        );
        r.register(
            "socklb_maglev_bytes",
            "Memory of the Maglev tables in use (bytes; the map itself is preallocated for its capacity)",
            sync.maglev_bytes.clone(),
        );
        r.register(
            "socklb_kube_watch_events",
            "Watch events received from the API server",
            kube.watch_events.clone(),
        );
        r.register(
            "socklb_kube_cluster_events",
            "Changes forwarded to the agent's core",
            kube.cluster_events.clone(),
        );
        r.register(
            "socklb_kube_invalid_objects",
            "Objects skipped because they failed validation",
            kube.invalid_objects.clone(),
        );
        r.register(
            "socklb_kube_relists",
            "Relists after the initial list (410 Gone and the like)",
            kube.relists.clone(),
        );
        r.register(
            "socklb_kube_watch_errors",
            "Errors of the list/watch (retried with backoff)",
            kube.watch_errors.clone(),
        );
        r.register(
            "socklb_kube_synced",
            "1 once the first complete list was delivered",
            kube.synced.clone(),
        );

        r.register(
            "socklb_manifest_invalid_objects",
            "Objects and files skipped as invalid in the current content of the manifest directory",
            manifests.invalid_objects.clone(),
        );

        r.register(
            "socklb_sockets_destroyed",
            "Connected sockets destroyed because the backend they were translated to left their service",
            stale.destroyed.clone(),
        );
        r.register(
            "socklb_socket_destroy_failures",
            "Stale sockets whose destruction (bpf_sock_destroy) failed",
            stale.destroy_failures.clone(),
        );
        r.register(
            "socklb_stale_socket_passes",
            "Socket iterator passes over the network namespaces of the cgroup (one per batch of departed backends)",
            stale.passes.clone(),
        );
        r.register(
            "socklb_stale_socket_namespaces",
            "Network namespaces the last stale-socket pass ran in",
            stale.namespaces.clone(),
        );
        r.register(
            "socklb_stale_socket_duration_seconds",
            "From the first change of a batch to its stale sockets destroyed in every network namespace",
            stale.duration_seconds.clone(),
        );
        r.register(
            "socklb_stale_socket_termination_available",
            "1 when stale sockets can be destroyed on this kernel (bpf_sock_destroy, Linux 6.5 or newer)",
            stale.available.clone(),
        );

        Metrics {
            registry: r,
            health,
            sync,
            kube,
            manifests,
            stale,
        }
    }

    /// The exposition of every family (OpenMetrics text, [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl SyncMetrics {
    /// Shows what is not programmed and how full the maps are.
    /// Maglev tables per family's map: (map, tables in use, room for, bytes per table).
    pub fn set_maglev(&self, rows: &[(&'static str, u32, u32, u64)]) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for &(map, in_use, capacity, table_bytes) in rows {
            let labels = MapLabels { map };
            self.maglev_tables
                .get_or_create(&labels)
                .set(i64::from(in_use));
            self.maglev_tables_capacity
                .get_or_create(&labels)
                .set(i64::from(capacity));
            self.maglev_bytes
                .get_or_create(&labels)
                .set(gauge(u64::from(in_use) * table_bytes));
        }
    }

    /// Frontends not programmed by reason, and (map, entries, capacity) rows.
    pub fn set_programmed(
        &self,
        incomplete: &socklb_core::maps::diff::IncompleteCounts,
        fill: &[(&'static str, usize, usize)],
    ) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for (reason, n) in [
            ("maps_full", incomplete.maps_full),
            ("backends_truncated", incomplete.backends_truncated),
            ("address_family", incomplete.address_family),
        ] {
            self.frontends_not_programmed
                .get_or_create(&ReasonLabels { reason })
                .set(gauge(n));
        }
        for &(map, used, capacity) in fill {
            self.map_entries
                .get_or_create(&MapLabels { map })
                .set(gauge(used));
            self.map_capacity
                .get_or_create(&MapLabels { map })
                .set(gauge(capacity));
        }
    }

    /// Makes `socklb_frontend_conflict` and `socklb_frontend_conflicts` show `now`.
    pub fn set_conflicts(&self, now: &[Conflict]) {
        self.conflict.clear();
        for c in now {
            self.conflict
                .get_or_create(&ConflictLabels {
                    address: c.address.clone(),
                    protocol: c.protocol.to_string(),
                    kept: c.kept.to_string(),
                    dropped: c.dropped.to_string(),
                })
                .set(1);
        }
        self.conflicts
            .set(i64::try_from(now.len()).unwrap_or(i64::MAX));
    }
}

/// The counters of one watched kind of the Kubernetes source: handles into the
/// [`KubeMetrics`] families, labelled with the kind; and whether its first complete
/// list was delivered.
#[derive(Debug, Default)]
pub struct KindMetrics {
    pub watch_events: Counter,
    pub cluster_events: Counter,
    pub invalid_objects: Counter,
    pub relists: Counter,
    pub watch_errors: Counter,
    synced_gauge: Gauge,
    synced: AtomicBool,
}

impl KindMetrics {
    /// The handles of `kind` in `families`.
    pub fn of(families: &KubeMetrics, kind: &'static str) -> KindMetrics {
        let labels = KindLabels { kind };
        KindMetrics {
            watch_events: families.watch_events.get_or_create_owned(&labels),
            cluster_events: families.cluster_events.get_or_create_owned(&labels),
            invalid_objects: families.invalid_objects.get_or_create_owned(&labels),
            relists: families.relists.get_or_create_owned(&labels),
            watch_errors: families.watch_errors.get_or_create_owned(&labels),
            synced_gauge: families.synced.get_or_create_owned(&labels),
            synced: AtomicBool::new(false),
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Marks the first complete list delivered; true if it was not before.
    pub fn mark_synced(&self) -> bool {
        self.synced_gauge.set(1);
        !self.synced.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    #[test]
    fn families_are_encoded_once_with_kube_proxy_names_and_labels() {
        let metrics = Metrics::new();
        metrics.sync.syncs.inc();
        metrics.sync.sync_duration_seconds.observe(0.002);
        let service = KindMetrics::of(&metrics.kube, "service");
        service.invalid_objects.inc_by(2);
        assert!(service.mark_synced());
        assert!(!service.mark_synced());
        let text = metrics.encode();
        assert!(text.contains("socklb_syncs_total 1\n"), "{text}");
        assert!(
            text.contains("socklb_kube_invalid_objects_total{kind=\"service\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("socklb_kube_synced{kind=\"service\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 1\n"),
            "{text}"
        );
        metrics
            .stale
            .destroyed
            .get_or_create(&ProtocolLabels { protocol: "udp" })
            .inc_by(3);
        let text = metrics.encode();
        assert!(
            text.contains("socklb_sockets_destroyed_total{protocol=\"udp\"} 3\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# TYPE socklb_syncs counter").count(), 1);
    }

    #[test]
    fn maglev_tables_and_their_memory_per_family() {
        let metrics = Metrics::new();
        metrics.sync.set_maglev(&[
            ("lb4_maglev_v1", 3, 64, 65_524),
            ("lb6_maglev_v1", 0, 64, 65_524),
        ]);
        let text = metrics.encode();
        for line in [
            "socklb_maglev_tables{map=\"lb4_maglev_v1\"} 3\n",
            "socklb_maglev_tables{map=\"lb6_maglev_v1\"} 0\n",
            "socklb_maglev_tables_capacity{map=\"lb4_maglev_v1\"} 64\n",
            "socklb_maglev_bytes{map=\"lb4_maglev_v1\"} 196572\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }
}
