//! Control plane: how long from an event arriving to the maps holding its result.
//!
//! - `cold`: a snapshot of N services x 10 endpoints programmed into empty maps;
//! - `endpoint_change`: one EndpointSlice changes (one endpoint replaced), from the
//!   event to the map writes done: ClusterState::apply + recompute + sync_keys.
//!
//! Each runs against the in-memory twin of the maps (the agent's own cost) and, as
//! root with bpffs, against real BPF maps pinned in a directory of the benchmark's own
//! (no program is attached). N comes from SOCKLB_BENCH_SERVICES (default 1000, comma
//! separated list allowed: "1000,10000").
//!
//! Besides criterion's groups, a summary of its own (what `cargo xtask bench` reads):
//! - `cold`: SOCKLB_BENCH_REPEATS (default 5) separate cold syncs per backend, each
//!   split into its stages (ClusterState::apply of the snapshot, recompute, sync into
//!   the maps), median and spread;
//! - `endpoint_change`: SOCKLB_BENCH_CHANGES (default 2000) single-slice changes,
//!   p50/p90/p99/max and map operations per change;
//! - `proportional`: map operations when 1, 2, 5 or 10 endpoints of one slice change
//!   at once (the cost must follow the size of the change, not N);
//! - `snapshot_change`: SOCKLB_BENCH_SNAPSHOTS (default 30) changes of one slice
//!   delivered as a snapshot of everything, the way a manifest directory source
//!   delivers them, by stage.
//!
//! SOCKLB_BENCH_JSON=FILE writes that summary as JSON; SOCKLB_BENCH_CRITERION=0 skips
//! criterion's own groups (the summary alone, for a quick run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use socklb::datapath::{
    kernel,
    reconcile::{DualStackMaps, Reconciler},
};
use socklb_core::{
    builders::{self, TCP, ep},
    events::ClusterEvent,
    maps::{diff::Capacity, twin::DualMaps},
    model::{NodeModel, ServiceModel, SliceModel},
    state::ClusterState,
};

const ENDPOINTS: usize = 10;

fn service_counts() -> Vec<usize> {
    std::env::var("SOCKLB_BENCH_SERVICES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1000])
}

fn service(i: usize) -> ServiceModel {
    let ip = Ipv4Addr::from(0x0a60_0000u32 + i as u32).to_string();
    builders::service("bench", &format!("svc-{i}"), &ip, &[("http", TCP, 80)])
}

/// Endpoint addresses of service i, generation g: endpoint 0 changes with g.
fn slice(i: usize, generation: u32) -> SliceModel {
    slice_changed(i, generation, 1)
}

/// Endpoint addresses of service i, generation g: endpoints 0..k change with g.
fn slice_changed(i: usize, generation: u32, k: usize) -> SliceModel {
    let endpoints = (0..ENDPOINTS)
        .map(|e| {
            let host = 0x0af4_0000u32
                + (i * ENDPOINTS + e) as u32 * 2
                + if e < k { generation % 2 } else { 0 };
            ep(&Ipv4Addr::from(host).to_string())
        })
        .collect();
    builders::slice(
        "bench",
        &format!("svc-{i}-1"),
        &format!("svc-{i}"),
        &[("http", TCP, 8080)],
        endpoints,
    )
}

fn snapshot(n: usize) -> ClusterEvent {
    ClusterEvent::Snapshot {
        services: (0..n).map(service).collect(),
        slices: (0..n).map(|i| slice(i, 0)).collect(),
        node: NodeModel::named("bench-node"),
    }
}

/// Pin directory of the benchmark's own, removed on drop.
struct BenchPins(PathBuf);

impl BenchPins {
    fn new() -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/sys/fs/bpf").is_dir() {
            eprintln!("kernel benchmarks skipped: they need root and bpffs at /sys/fs/bpf");
            return None;
        }
        Some(Self(PathBuf::from(format!(
            "/sys/fs/bpf/socklb-bench-{}",
            std::process::id()
        ))))
    }
}

impl Drop for BenchPins {
    fn drop(&mut self) {
        let _ = kernel::uninstall(&self.0);
    }
}

fn capacity() -> Capacity {
    Capacity::default()
}

/// How long each stage of a cold sync took.
#[derive(Clone, Copy, Debug, Default)]
struct ColdTimes {
    /// ClusterState::apply of the snapshot (objects indexed).
    apply: Duration,
    /// Frontends of every service computed (plan + desired state).
    recompute: Duration,
    /// Diff and map writes.
    sync: Duration,
    total: Duration,
    ops: usize,
}

/// One sync of a cold snapshot into maps that hold nothing.
fn cold<M: DualStackMaps>(maps: M, n: usize) -> (Duration, M) {
    let (t, m) = cold_stages(maps, n);
    (t.total, m)
}

fn cold_stages<M: DualStackMaps>(maps: M, n: usize) -> (ColdTimes, M) {
    let mut reconciler = Reconciler::adopt(maps, capacity()).unwrap();
    let mut state = ClusterState::new(NodeModel::named("bench-node"));
    let event = snapshot(n);
    let start = Instant::now();
    state.apply(event);
    let applied = Instant::now();
    state.recompute();
    let recomputed = Instant::now();
    let stats = reconciler.sync(&state.index().desired).unwrap();
    let synced = Instant::now();
    let times = ColdTimes {
        apply: applied - start,
        recompute: recomputed - applied,
        sync: synced - recomputed,
        total: synced - start,
        ops: stats.ops,
    };
    // Untimed: empty the maps again for the next iteration.
    state.apply(ClusterEvent::Snapshot {
        services: vec![],
        slices: vec![],
        node: NodeModel::named("bench-node"),
    });
    state.recompute();
    reconciler.sync(&state.index().desired).unwrap();
    (times, reconciler.into_maps())
}

/// Programs n services, then times single-slice changes; returns the latencies and
/// the map operations per change.
fn changes<M: DualStackMaps>(maps: M, n: usize, count: usize) -> (Vec<Duration>, Vec<usize>, M) {
    changes_of(maps, n, count, 1)
}

/// Like [`changes`], with `k` endpoints of the slice replaced by each change.
fn changes_of<M: DualStackMaps>(
    maps: M,
    n: usize,
    count: usize,
    k: usize,
) -> (Vec<Duration>, Vec<usize>, M) {
    let mut reconciler = Reconciler::adopt(maps, capacity()).unwrap();
    let mut state = ClusterState::new(NodeModel::named("bench-node"));
    state.apply(snapshot(n));
    state.recompute();
    reconciler.sync(&state.index().desired).unwrap();
    let k_endpoints = k;
    let mut latencies = Vec::with_capacity(count);
    let mut ops = Vec::with_capacity(count);
    // The generation each slice is at: every change flips its addresses relative to
    // what the maps hold (0: as in the snapshot).
    let mut generations = vec![0u32; n];
    for k in 0..count {
        let i = (k * 7919) % n;
        generations[i] += 1;
        let event = ClusterEvent::SliceApplied(slice_changed(i, generations[i], k_endpoints));
        let start = Instant::now();
        state.apply(event);
        let changed = state.recompute();
        let stats = reconciler
            .sync_keys(&state.index().desired, &changed)
            .unwrap();
        latencies.push(start.elapsed());
        ops.push(stats.ops);
    }
    state.apply(ClusterEvent::Snapshot {
        services: vec![],
        slices: vec![],
        node: NodeModel::named("bench-node"),
    });
    state.recompute();
    reconciler.sync(&state.index().desired).unwrap();
    (latencies, ops, reconciler.into_maps())
}

/// What a manifest directory source sends for one changed slice file: a snapshot of
/// everything, in which one slice differs. Programs n services, then times `count` such
/// snapshots (built outside the timer) by stage: apply, recompute, sync.
fn snapshot_changes<M: DualStackMaps>(maps: M, n: usize, count: usize) -> (Vec<ColdTimes>, M) {
    let mut reconciler = Reconciler::adopt(maps, capacity()).unwrap();
    let mut state = ClusterState::new(NodeModel::named("bench-node"));
    state.apply(snapshot(n));
    state.recompute();
    reconciler.sync(&state.index().desired).unwrap();
    let mut generations = vec![0u32; n];
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let i = (k * 7919) % n;
        generations[i] += 1;
        let event = ClusterEvent::Snapshot {
            services: (0..n).map(service).collect(),
            slices: (0..n).map(|j| slice(j, generations[j])).collect(),
            node: NodeModel::named("bench-node"),
        };
        let start = Instant::now();
        state.apply(event);
        let applied = Instant::now();
        let changed = state.recompute();
        let recomputed = Instant::now();
        let stats = reconciler
            .sync_keys(&state.index().desired, &changed)
            .unwrap();
        let synced = Instant::now();
        out.push(ColdTimes {
            apply: applied - start,
            recompute: recomputed - applied,
            sync: synced - recomputed,
            total: synced - start,
            ops: stats.ops,
        });
    }
    state.apply(ClusterEvent::Snapshot {
        services: vec![],
        slices: vec![],
        node: NodeModel::named("bench-node"),
    });
    state.recompute();
    reconciler.sync(&state.index().desired).unwrap();
    (out, reconciler.into_maps())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report_changes(label: &str, n: usize, mut latencies: Vec<Duration>, ops: &[usize]) {
    latencies.sort();
    let mean_ops = ops.iter().sum::<usize>() as f64 / ops.len().max(1) as f64;
    println!(
        "endpoint_change/{label}/{n}: p50 {:?}  p99 {:?}  max {:?}  map ops per change: mean {mean_ops:.1}, max {}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        ops.iter().max().copied().unwrap_or(0)
    );
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median, quartiles, min, max of repeated measurements (the shape socklb-bench uses).
fn spread(values: &[f64]) -> serde_json::Value {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let pos = (v.len() - 1) as f64 * p;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    serde_json::json!({
        "median": q(0.5), "q1": q(0.25), "q3": q(0.75),
        "min": v.first().copied().unwrap_or(0.0), "max": v.last().copied().unwrap_or(0.0),
        "n": v.len(), "values": values,
    })
}

/// Cold syncs, changes and the proportionality series on one kind of maps.
fn summary<M: DualStackMaps>(
    label: &str,
    n: usize,
    mut make: impl FnMut() -> M,
) -> serde_json::Value {
    let repeats = env_usize("SOCKLB_BENCH_REPEATS", 5).max(1);
    let count = env_usize("SOCKLB_BENCH_CHANGES", 2000).max(1);
    let mut maps = make();
    let mut times = Vec::new();
    for _ in 0..repeats {
        let (t, m) = cold_stages(maps, n);
        maps = m;
        times.push(t);
    }
    drop(maps);
    let stage = |f: &dyn Fn(&ColdTimes) -> Duration| {
        spread(&times.iter().map(|t| ms(f(t))).collect::<Vec<_>>())
    };
    let cold_ms = stage(&|t| t.total);
    println!(
        "summary/{label}/{n}: cold median {:.1} ms (apply {:.1}, recompute {:.1}, sync {:.1}), {} map ops",
        cold_ms["median"].as_f64().unwrap_or(0.0),
        stage(&|t| t.apply)["median"].as_f64().unwrap_or(0.0),
        stage(&|t| t.recompute)["median"].as_f64().unwrap_or(0.0),
        stage(&|t| t.sync)["median"].as_f64().unwrap_or(0.0),
        times[0].ops
    );

    let (mut lat, ops, _) = changes(make(), n, count);
    lat.sort();
    let mean_ops = ops.iter().sum::<usize>() as f64 / ops.len().max(1) as f64;
    let change = serde_json::json!({
        "count": lat.len(),
        "p50_us": us(percentile(&lat, 0.50)),
        "p90_us": us(percentile(&lat, 0.90)),
        "p99_us": us(percentile(&lat, 0.99)),
        "max_us": us(lat.last().copied().unwrap_or_default()),
        "mean_us": lat.iter().map(|d| us(*d)).sum::<f64>() / lat.len().max(1) as f64,
        "map_ops_mean": mean_ops,
        "map_ops_min": ops.iter().min().copied().unwrap_or(0),
        "map_ops_max": ops.iter().max().copied().unwrap_or(0),
    });
    report_changes(label, n, lat, &ops);

    // Map operations against the size of the change.
    let mut proportional = Vec::new();
    for k in [1usize, 2, 5, ENDPOINTS] {
        let (_, ops, _) = changes_of(make(), n, 200.min(count).max(1), k);
        let mean = ops.iter().sum::<usize>() as f64 / ops.len().max(1) as f64;
        println!("summary/{label}/{n}: {k} endpoint(s) changed: {mean:.1} map ops per change");
        proportional.push(
            serde_json::json!({"endpoints_changed": k, "map_ops_mean": mean,
            "map_ops_max": ops.iter().max().copied().unwrap_or(0)}),
        );
    }
    // The manifest-directory path: a whole snapshot per change.
    let snapshots = env_usize("SOCKLB_BENCH_SNAPSHOTS", 30).max(1);
    let (snap, _) = snapshot_changes(make(), n, snapshots);
    let snap_stage = |f: &dyn Fn(&ColdTimes) -> Duration| {
        spread(&snap.iter().map(|t| ms(f(t))).collect::<Vec<_>>())
    };
    let snapshot_change = serde_json::json!({
        "count": snap.len(),
        "total_ms": snap_stage(&|t| t.total),
        "apply_ms": snap_stage(&|t| t.apply),
        "recompute_ms": snap_stage(&|t| t.recompute),
        "sync_ms": snap_stage(&|t| t.sync),
        "map_ops_mean": snap.iter().map(|t| t.ops).sum::<usize>() as f64 / snap.len() as f64,
    });
    println!(
        "summary/{label}/{n}: one slice changed inside a whole snapshot (manifest directory): median {:.2} ms (apply {:.2}, recompute {:.3}, sync {:.3})",
        snapshot_change["total_ms"]["median"]
            .as_f64()
            .unwrap_or(0.0),
        snapshot_change["apply_ms"]["median"]
            .as_f64()
            .unwrap_or(0.0),
        snapshot_change["recompute_ms"]["median"]
            .as_f64()
            .unwrap_or(0.0),
        snapshot_change["sync_ms"]["median"].as_f64().unwrap_or(0.0),
    );
    serde_json::json!({
        "services": n,
        "endpoints": n * ENDPOINTS,
        "maps": label,
        "snapshot_change": snapshot_change,
        "cold_ms": cold_ms,
        "cold_stages_ms": {
            "apply": stage(&|t| t.apply),
            "recompute": stage(&|t| t.recompute),
            "sync": stage(&|t| t.sync),
        },
        "cold_map_ops": times[0].ops,
        "change": change,
        "proportional": proportional,
    })
}

fn bench(c: &mut Criterion) {
    let pins = BenchPins::new();
    let run_criterion = std::env::var("SOCKLB_BENCH_CRITERION").map_or(true, |v| v != "0");
    let mut rows = Vec::new();
    for n in service_counts() {
        if run_criterion {
            criterion_groups(c, n, pins.as_ref());
        }
        // Percentiles over many single changes (criterion reports means), cold syncs
        // by stage, and map operations against the size of a change.
        rows.push(summary("memory", n, DualMaps::default));
        if let Some(pins) = &pins {
            rows.push(summary("kernel", n, || {
                kernel::create_maps(&pins.0).unwrap()
            }));
        }
    }
    if let Ok(path) = std::env::var("SOCKLB_BENCH_JSON") {
        let doc = serde_json::json!({
            "endpoints_per_service": ENDPOINTS,
            "repeats": env_usize("SOCKLB_BENCH_REPEATS", 5).max(1),
            "changes": env_usize("SOCKLB_BENCH_CHANGES", 2000).max(1),
            "kernel_maps": pins.is_some(),
            "criterion": run_criterion,
            "rows": rows,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        println!("summary written to {path}");
    }
}

fn criterion_groups(c: &mut Criterion, n: usize, pins: Option<&BenchPins>) {
    let mut group = c.benchmark_group("cold");
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("memory", n), |b| {
        b.iter_custom(|iters| {
            let mut maps = DualMaps::default();
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (t, m) = cold(maps, n);
                total += t;
                maps = m;
            }
            total
        })
    });
    if let Some(pins) = pins {
        group.bench_function(BenchmarkId::new("kernel", n), |b| {
            b.iter_custom(|iters| {
                let mut maps = kernel::create_maps(&pins.0).unwrap();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (t, m) = cold(maps, n);
                    total += t;
                    maps = m;
                }
                total
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("endpoint_change");
    group.bench_function(BenchmarkId::new("memory", n), |b| {
        b.iter_custom(|iters| {
            let (lat, _, _) = changes(DualMaps::default(), n, iters as usize);
            lat.iter().sum()
        })
    });
    if let Some(pins) = pins {
        group.bench_function(BenchmarkId::new("kernel", n), |b| {
            b.iter_custom(|iters| {
                let (lat, _, _) = changes(kernel::create_maps(&pins.0).unwrap(), n, iters as usize);
                lat.iter().sum()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
