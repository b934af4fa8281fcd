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
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use socklb::{
    datapath::{ServiceMaps, diff::Capacity, kernel, memory::MemoryMaps},
    model::{EndpointModel, NodeModel, Protocol, ServiceModel, ServicePortModel, ServiceType, SliceModel, SlicePortModel, TrafficPolicy},
    reconcile::Reconciler,
    source::ClusterEvent,
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
    ServiceModel {
        namespace: "bench".into(),
        name: format!("svc-{i}"),
        service_type: ServiceType::ClusterIP,
        cluster_ips: vec![Ipv4Addr::from(0x0a60_0000u32 + i as u32)],
        ports: vec![ServicePortModel { name: "http".into(), protocol: Protocol::Tcp, port: 80, node_port: None }],
        internal_traffic_policy: TrafficPolicy::Cluster,
        external_traffic_policy: TrafficPolicy::Cluster,
        session_affinity_timeout_s: 0,
        traffic_distribution: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        health_check_node_port: None,
        skipped_ports: vec![],
    }
}

/// Endpoint addresses of service i, generation g: endpoint 0 changes with g.
fn slice(i: usize, generation: u32) -> SliceModel {
    let endpoints = (0..ENDPOINTS)
        .map(|e| {
            let host = 0x0af4_0000u32 + (i * ENDPOINTS + e) as u32 * 2 + if e == 0 { generation % 2 } else { 0 };
            EndpointModel {
                address: Ipv4Addr::from(host),
                ready: true,
                serving: true,
                terminating: false,
                node_name: None,
                zone: None,
                hints_zones: None,
                hints_nodes: None,
            }
        })
        .collect();
    SliceModel {
        namespace: "bench".into(),
        name: format!("svc-{i}-1"),
        service_name: format!("svc-{i}"),
        ports: vec![SlicePortModel { name: "http".into(), protocol: Protocol::Tcp, port: 8080 }],
        endpoints,
        skipped_ports: vec![],
    }
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
        Some(Self(PathBuf::from(format!("/sys/fs/bpf/socklb-bench-{}", std::process::id()))))
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

/// One sync of a cold snapshot into maps that hold nothing.
fn cold<M: ServiceMaps>(maps: M, n: usize) -> (Duration, M) {
    let mut reconciler = Reconciler::adopt(maps, capacity()).unwrap();
    let mut state = ClusterState::new(NodeModel::named("bench-node"));
    let event = snapshot(n);
    let start = Instant::now();
    state.apply(event);
    state.recompute();
    reconciler.sync(&state.index().desired).unwrap();
    let elapsed = start.elapsed();
    // Untimed: empty the maps again for the next iteration.
    state.apply(ClusterEvent::Snapshot { services: vec![], slices: vec![], node: NodeModel::named("bench-node") });
    state.recompute();
    reconciler.sync(&state.index().desired).unwrap();
    (elapsed, reconciler.into_maps())
}

/// Programs n services, then times single-slice changes; returns the latencies and
/// the map operations per change.
fn changes<M: ServiceMaps>(maps: M, n: usize, count: usize) -> (Vec<Duration>, Vec<usize>, M) {
    let mut reconciler = Reconciler::adopt(maps, capacity()).unwrap();
    let mut state = ClusterState::new(NodeModel::named("bench-node"));
    state.apply(snapshot(n));
    state.recompute();
    reconciler.sync(&state.index().desired).unwrap();
    let mut latencies = Vec::with_capacity(count);
    let mut ops = Vec::with_capacity(count);
    for k in 0..count {
        let i = (k * 7919) % n;
        let event = ClusterEvent::SliceApplied(slice(i, k as u32 / n as u32 + 1 + (k as u32 % 2)));
        let start = Instant::now();
        state.apply(event);
        let changed = state.recompute();
        let stats = reconciler.sync_keys(&state.index().desired, &changed).unwrap();
        latencies.push(start.elapsed());
        ops.push(stats.ops);
    }
    state.apply(ClusterEvent::Snapshot { services: vec![], slices: vec![], node: NodeModel::named("bench-node") });
    state.recompute();
    reconciler.sync(&state.index().desired).unwrap();
    (latencies, ops, reconciler.into_maps())
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

fn bench(c: &mut Criterion) {
    let pins = BenchPins::new();
    for n in service_counts() {
        let mut group = c.benchmark_group("cold");
        group.sample_size(10);
        group.bench_function(BenchmarkId::new("memory", n), |b| {
            b.iter_custom(|iters| {
                let mut maps = MemoryMaps::default();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (t, m) = cold(maps, n);
                    total += t;
                    maps = m;
                }
                total
            })
        });
        if let Some(pins) = &pins {
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
                let (lat, _, _) = changes(MemoryMaps::default(), n, iters as usize);
                lat.iter().sum()
            })
        });
        if let Some(pins) = &pins {
            group.bench_function(BenchmarkId::new("kernel", n), |b| {
                b.iter_custom(|iters| {
                    let (lat, _, _) = changes(kernel::create_maps(&pins.0).unwrap(), n, iters as usize);
                    lat.iter().sum()
                })
            });
        }
        group.finish();

        // Percentiles over many single changes (criterion reports means).
        let (lat, ops, _) = changes(MemoryMaps::default(), n, 2000);
        report_changes("memory", n, lat, &ops);
        if let Some(pins) = &pins {
            let (lat, ops, _) = changes(kernel::create_maps(&pins.0).unwrap(), n, 2000);
            report_changes("kernel", n, lat, &ops);
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
