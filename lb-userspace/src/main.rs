//! `socklb`: the agent and its inspection commands.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use socklb::{
    agent::{self, AgentOptions, Source},
    datapath::{kernel, status},
};
use socklb_core::maps::maglev::{
    DEFAULT_MAX_TABLES, DEFAULT_SEED, LbAlgorithm, MaglevConfig, check_table_size,
};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "socklb",
    version,
    about = "eBPF service load balancer for Kubernetes (kube-proxy replacement)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `explain --proto`.
#[derive(Clone, Copy, ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Json,
    Table,
}

/// `--lb-algorithm`.
#[derive(Clone, Copy, ValueEnum)]
enum Algorithm {
    /// A random backend per new flow, as kube-proxy.
    Random,
    /// Consistent hashing (Maglev): every node picks the same backend for the same flow.
    Maglev,
}

/// How flows that enter through the TC programs pick their backend.
#[derive(clap::Args)]
struct BalancingArgs {
    /// How new flows through the TC programs (NodePort, LoadBalancer and external IPs
    /// from outside the node) pick a backend: at random, as kube-proxy, or by a
    /// per-frontend Maglev table, so that every node picks the same backend for the
    /// same flow. Connections started on the node always pick at random.
    #[arg(long, value_enum, default_value = "random")]
    lb_algorithm: Algorithm,
    /// Entries per Maglev table: one of the primes 251, 509, 1021, 2039, 4093, 8191,
    /// 16381, 32749, 65521, 131071; at least 100 x the backends of the largest
    /// service. 4 bytes each.
    #[arg(long, default_value_t = lb_common::maglev::DEFAULT_TABLE_SIZE)]
    maglev_table_size: u32,
    /// Maglev tables the kernel map has room for (preallocated): one per external
    /// frontend that forwards (a NodePort, each LoadBalancer IP and each external IP of
    /// each service port). Frontends beyond it pick at random, with a warning.
    #[arg(long, default_value_t = DEFAULT_MAX_TABLES)]
    maglev_max_tables: u32,
    /// Seed of the Maglev hashes (decimal or 0x hex). It must be the same on every
    /// node; choose one per cluster, so that nobody who knows the default can aim
    /// flows at one backend.
    #[arg(long, default_value_t = DEFAULT_SEED, value_parser = parse_u32)]
    maglev_hash_seed: u32,
}

impl BalancingArgs {
    fn config(&self) -> anyhow::Result<MaglevConfig> {
        check_table_size(self.maglev_table_size)
            .map_err(|e| anyhow::anyhow!("--maglev-table-size: {e}"))?;
        match self.lb_algorithm {
            Algorithm::Random => Ok(MaglevConfig {
                algorithm: LbAlgorithm::Random,
                table_size: self.maglev_table_size,
                max_tables: self.maglev_max_tables,
                seed: self.maglev_hash_seed,
            }),
            Algorithm::Maglev => MaglevConfig::maglev(
                self.maglev_table_size,
                self.maglev_max_tables,
                self.maglev_hash_seed,
            )
            .map_err(anyhow::Error::msg),
        }
    }
}

// Parsed once per process: the size of the agent's variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach the socket hooks and keep the maps in sync.
    Agent {
        /// Directory of Service, EndpointSlice and Node manifests (*.yaml, *.yml,
        /// *.json). Without it the agent watches the Kubernetes API.
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// kubeconfig file for the API (default: KUBECONFIG, ~/.kube/config, then the
        /// in-cluster service account).
        #[arg(long, conflicts_with = "manifests")]
        kubeconfig: Option<PathBuf>,
        /// This node's name (endpoint nodeName, topology). Default: the host name.
        #[arg(long, env = "NODE_NAME")]
        node: Option<String>,
        /// cgroup v2 directory the socket hooks attach to. Default: the cgroup2 root.
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Pin directory under bpffs for maps and links.
        #[arg(long, default_value = kernel::DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
        /// How often the manifest directory is checked for changes.
        #[arg(long, default_value_t = 200)]
        poll_interval_ms: u64,
        /// Minimum time between two syncs: bursts of events within it are applied
        /// together (like kube-proxy's --min-sync-period). E.g. 0, 500ms, 1s.
        #[arg(long, default_value = "0", value_parser = parse_duration)]
        min_sync_period: Duration,
        /// Address of /healthz, /livez and /readyz (kube-proxy's
        /// --healthz-bind-address); "off" disables it. Default: 0.0.0.0:10256
        /// (kube-proxy's: cloud load balancers probe it) when watching the API, off
        /// with --manifests.
        #[arg(long, alias = "healthz-bind-address")]
        health_addr: Option<String>,
        /// Address of /metrics (kube-proxy's --metrics-bind-address); "off" disables
        /// it. Default: 127.0.0.1:10249 (kube-proxy's: not reachable from outside the
        /// node) when watching the API, off with --manifests. The same address as
        /// --health-addr serves both on one listener.
        #[arg(long)]
        metrics_bind_address: Option<String>,
        /// /healthz reports unhealthy when an update waits longer than this.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        health_timeout: Duration,
        /// Devices for the TC programs (NodePort, LoadBalancer and external IPs from
        /// outside the node), comma separated. Default: every interface that is up,
        /// has an IPv4 address and is not loopback or a pod/runtime device. "none":
        /// no TC programs (ClusterIP only).
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<String>>,
        /// Address the healthCheckNodePort servers listen on (LoadBalancer Services
        /// with externalTrafficPolicy Local). Default: every IPv4 address of the node.
        #[arg(long, default_value = "0.0.0.0")]
        health_check_bind_address: std::net::IpAddr,
        #[command(flatten)]
        map_sizes: MapSizeArgs,
        /// Also destroy connected TCP sockets whose backend left their Service (the
        /// application gets ECONNABORTED, the backend a reset). Connected UDP sockets
        /// always are; like kube-proxy and Cilium, TCP is left alone by default.
        #[arg(long)]
        terminate_stale_tcp: bool,
        #[command(flatten)]
        balancing: BalancingArgs,
    },
    /// Print the frontends the agent would program, without touching the kernel.
    Plan {
        #[arg(long)]
        manifests: PathBuf,
        #[arg(long, env = "NODE_NAME")]
        node: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        balancing: BalancingArgs,
        /// Say whether the plan fits in maps of the --map-size-* sizes (both
        /// families), which frontends would not be programmed, and exit non-zero
        /// when something does not fit.
        #[arg(long)]
        capacity: bool,
        #[command(flatten)]
        map_sizes: MapSizeArgs,
    },
    /// Show what the pinned maps hold right now.
    Status {
        #[arg(long, default_value = kernel::DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
        /// The cgroup the socket hooks must be attached to (default: any live one).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Say what a connection to ADDR:PORT would get and why, from the live maps: from
    /// a cgroup of this node (default: this process's own) or from outside the node.
    Explain {
        /// The destination, e.g. 10.96.0.10:80, [fd00::10]:80, 192.0.2.11:30080.
        target: std::net::SocketAddr,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: ProtoArg,
        /// A process in this cgroup (a cgroup2 directory) connects.
        #[arg(long, conflicts_with_all = ["from_netns", "from_outside"])]
        from_cgroup: Option<PathBuf>,
        /// The processes in this network namespace (/run/netns/NAME) connect: each of
        /// their cgroups is explained (translation follows the cgroup, not the netns).
        #[arg(long, conflicts_with = "from_outside")]
        from_netns: Option<String>,
        /// A client outside the node, with this source address, sends to a
        /// NodePort, LoadBalancer or external IP (the TC program's view).
        #[arg(long)]
        from_outside: Option<std::net::IpAddr>,
        #[arg(long, default_value = kernel::DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
        /// The manifests the agent serves, to say why (the Service, its endpoints by
        /// condition and node, frontends the maps could not hold).
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// This node's name (with --manifests). Default: the host name.
        #[arg(long, env = "NODE_NAME")]
        node: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Mount bpffs at PATH unless it is one already (the DaemonSet's init container).
    MountBpffs {
        #[arg(default_value = "/sys/fs/bpf")]
        path: PathBuf,
    },
    /// Print the version, the git commit and the SHA-256 of the embedded eBPF object.
    Version,
    /// Detach the socket hooks and remove the pinned maps and links.
    Uninstall {
        /// The cgroup the hooks were attached to: checked afterwards for leftovers.
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long, default_value = kernel::DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
    },
}

/// Sizes of the maps that grow with the cluster. They are fixed when a map is
/// created: a pinned map keeps its size across restarts (the agent warns when a flag
/// asks for another), and a new size needs `socklb uninstall` first. The kernel
/// preallocates each map, charged to the agent's memory cgroup.
#[derive(clap::Args)]
struct MapSizeArgs {
    /// Service map entries: one per frontend (and per service address) plus one per
    /// backend slot; frontends that do not fit are not programmed (readiness fails,
    /// metric socklb_frontends_not_programmed). ~180 bytes each (96 in the service
    /// map, 88 in the affinity match map, which gets the same size).
    #[arg(long, default_value_t = lb_common::capacity::SVC4, value_parser = map_size)]
    map_size_services: u32,
    /// Backend map entries: distinct (address, port, protocol). ~80 bytes each.
    #[arg(long, default_value_t = lb_common::capacity::BACKEND4, value_parser = map_size)]
    map_size_backends: u32,
    /// Connection tracking entries for NodePort/LoadBalancer/external IP flows, two per
    /// flow; the least recently used are evicted when full. ~112 bytes each.
    #[arg(long, default_value_t = lb_common::capacity::CT4, value_parser = map_size)]
    map_size_conntrack: u32,
    /// Session affinity entries: (client, frontend) pairs of Services with
    /// sessionAffinity ClientIP; the least recently used are forgotten first. ~96
    /// bytes each.
    #[arg(long, default_value_t = lb_common::capacity::AFFINITY4, value_parser = map_size)]
    map_size_affinity: u32,
    /// loadBalancerSourceRanges entries over all LoadBalancer frontends (allocated as
    /// used, not in advance).
    #[arg(long, default_value_t = lb_common::capacity::SRC_RANGE4, value_parser = map_size)]
    map_size_source_ranges: u32,
}

impl MapSizeArgs {
    fn sizes(&self) -> kernel::MapSizes {
        kernel::MapSizes {
            services: self.map_size_services,
            backends: self.map_size_backends,
            conntrack: self.map_size_conntrack,
            affinity: self.map_size_affinity,
            source_ranges: self.map_size_source_ranges,
            // Set from the balancing flags (BalancingArgs).
            maglev: MaglevConfig::default(),
        }
    }
}

/// `plan --capacity -o json`'s capacity part.
fn fit_json(fit: &socklb_core::maps::fit::FitReport) -> serde_json::Value {
    use socklb_core::maps::diff::Incomplete;
    serde_json::json!({
        "fits": fit.fits(),
        "maps": fit.maps.iter().map(|m| serde_json::json!({
            "map": m.map, "used": m.used, "capacity": m.capacity,
        })).collect::<Vec<_>>(),
        "not_programmed": fit.unfit.iter().map(|u| serde_json::json!({
            "frontend": u.frontend.to_string(),
            "service": u.service.as_ref().map(ToString::to_string),
            "reason": u.why.reason(),
            "backends": match u.why {
                Incomplete::BackendsTruncated { programmed, wanted } => serde_json::json!({"programmed": programmed, "wanted": wanted}),
                _ => serde_json::Value::Null,
            },
        })).collect::<Vec<_>>(),
        "maglev_full": fit.maglev_full.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn map_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of entries"))?;
    if !(kernel::MapSizes::MIN..=kernel::MapSizes::MAX).contains(&n) {
        return Err(format!(
            "{n} is outside {}..={} entries",
            kernel::MapSizes::MIN,
            kernel::MapSizes::MAX
        ));
    }
    Ok(n)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, not a backtrace: these are user-facing errors.
            eprintln!("socklb: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            // kube-client logs every failed request at ERROR; the source reports watch
            // errors itself, rate-limited, so that one is off unless RUST_LOG says so.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client::client::builder=off".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Agent {
            manifests,
            kubeconfig,
            node,
            cgroup,
            bpffs,
            poll_interval_ms,
            min_sync_period,
            health_addr,
            metrics_bind_address,
            health_timeout,
            devices,
            health_check_bind_address,
            map_sizes,
            terminate_stale_tcp,
            balancing,
        } => {
            let maglev = balancing.config()?;
            let cgroup = match cgroup {
                Some(c) => c,
                None => kernel::cgroup2_root().context("no cgroup2 mount found; pass --cgroup")?,
            };
            let (default_health, default_metrics) = if manifests.is_some() {
                (None, None)
            } else {
                (Some("0.0.0.0:10256"), Some("127.0.0.1:10249"))
            };
            let health_addr =
                listen_address("--health-addr", health_addr.as_deref().or(default_health))?;
            let metrics_addr = listen_address(
                "--metrics-bind-address",
                metrics_bind_address.as_deref().or(default_metrics),
            )?;
            let source = match manifests {
                Some(dir) => Source::Manifests {
                    dir,
                    poll_interval: Duration::from_millis(poll_interval_ms.max(10)),
                },
                None => Source::Kubernetes { kubeconfig },
            };
            // "--devices none": an explicit empty list.
            let devices = devices.map(|d| {
                d.into_iter()
                    .filter(|n| n != "none" && !n.is_empty())
                    .collect()
            });
            let opts = AgentOptions {
                source,
                node: node_name(node)?,
                cgroup,
                pin_dir: bpffs,
                min_sync_period,
                health_addr,
                metrics_addr,
                health_timeout,
                devices,
                health_check_bind_address,
                map_sizes: kernel::MapSizes {
                    maglev,
                    ..map_sizes.sizes()
                },
                terminate_stale_tcp,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(agent::run_agent(opts, shutdown_signal()))?;
        }
        Command::Plan {
            manifests,
            node,
            output,
            balancing,
            capacity,
            map_sizes,
        } => {
            let maglev = balancing.config()?;
            let node = node_name(node)?;
            let (plan, warnings) = agent::plan_from_dir(&manifests, &node)?;
            let plan = plan.with_balancing(&maglev);
            for w in warnings {
                tracing::warn!("skipped: {w}");
            }
            let fit = if capacity {
                let desired = agent::desired_from_dir(&manifests, &node)?;
                let sizes = kernel::MapSizes {
                    maglev,
                    ..map_sizes.sizes()
                };
                Some(socklb_core::maps::fit::fit(&desired, sizes.capacity()))
            } else {
                None
            };
            match (output, &fit) {
                (Output::Json, None) => println!("{}", plan.to_json()),
                (Output::Json, Some(fit)) => {
                    let plan: serde_json::Value = serde_json::from_str(&plan.to_json())?;
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "plan": plan,
                            "capacity": fit_json(fit),
                        }))?
                    );
                }
                (Output::Table, _) => {
                    print!("{}", plan.render_table());
                    if let Some(fit) = &fit {
                        print!("\n{}", fit.render());
                    }
                }
            }
            if let Some(fit) = fit.filter(|f| !f.fits()) {
                anyhow::bail!(
                    "{} frontends do not fit in maps of these sizes",
                    fit.unfit.len() + fit.maglev_full.len()
                );
            }
        }
        Command::Status {
            bpffs,
            cgroup,
            output,
        } => {
            let options = status::StatusOptions { cgroup };
            let report = status::read_status(&bpffs, &options)
                .with_context(|| format!("reading the maps pinned in {}", bpffs.display()))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => print!("{}", report.render_table()),
            }
            // The report is printed either way; the exit status tells a script.
            if !report.attachment_problems.is_empty() {
                anyhow::bail!(
                    "the data path is not attached: {}",
                    report.attachment_problems.join("; ")
                );
            }
        }
        Command::Explain {
            target,
            proto,
            from_cgroup,
            from_netns,
            from_outside,
            bpffs,
            manifests,
            node,
            output,
        } => {
            use socklb::explain::{self, Vantage};
            let protocol = match proto {
                ProtoArg::Tcp => socklb_core::model::Protocol::Tcp,
                ProtoArg::Udp => socklb_core::model::Protocol::Udp,
            };
            let report = status::read_status(&bpffs, &status::StatusOptions::default())
                .with_context(|| format!("reading the maps pinned in {}", bpffs.display()))?;
            let objects = match manifests {
                Some(dir) => {
                    let node = node_name(node)?;
                    let set = socklb::sources::manifest_files::load_dir(&dir)
                        .with_context(|| format!("reading the manifests in {}", dir.display()))?;
                    let node = set.node(&node);
                    Some(explain::Objects {
                        plan: socklb_core::plan::compute_plan(&set.services, &set.slices, &node),
                        services: set.services,
                        slices: set.slices,
                        node,
                    })
                }
                None => None,
            };
            let vantages: Vec<Vantage> = match (from_outside, from_netns, from_cgroup) {
                (Some(source), _, _) => vec![Vantage::Outside { source }],
                (None, Some(name), _) => {
                    let found = explain::cgroups_in_netns(&name).map_err(anyhow::Error::msg)?;
                    if found.is_empty() {
                        anyhow::bail!(
                            "no process runs in netns {name}: translation follows the cgroup of the process that connects; pass --from-cgroup"
                        );
                    }
                    found
                        .into_iter()
                        .map(|(pid, cgroup)| {
                            explain::cgroup_facts(&cgroup, format!("process {pid} in netns {name}"))
                                .map(Vantage::Cgroup)
                        })
                        .collect::<Result<_, _>>()
                        .map_err(anyhow::Error::msg)?
                }
                (None, None, Some(cgroup)) => vec![Vantage::Cgroup(
                    explain::cgroup_facts(&cgroup, "--from-cgroup".into())
                        .map_err(anyhow::Error::msg)?,
                )],
                (None, None, None) => {
                    let own = explain::cgroup_of_pid("self").map_err(anyhow::Error::msg)?;
                    vec![Vantage::Cgroup(
                        explain::cgroup_facts(&own, "this process's".into())
                            .map_err(anyhow::Error::msg)?,
                    )]
                }
            };
            let answers: Vec<explain::Explanation> = vantages
                .iter()
                .map(|v| explain::explain(&report, target, protocol, v, objects.as_ref()))
                .collect();
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&answers)?),
                Output::Table => {
                    let texts: Vec<String> =
                        answers.iter().map(explain::Explanation::render).collect();
                    print!("{}", texts.join("\n"));
                }
            }
        }
        Command::MountBpffs { path } => {
            match socklb::bpffs::ensure_mounted(&path)
                .with_context(|| format!("mounting bpffs at {}", path.display()))?
            {
                socklb::bpffs::Outcome::AlreadyMounted => {
                    info!(path = %path.display(), "bpffs is mounted already")
                }
                socklb::bpffs::Outcome::Mounted => info!(path = %path.display(), "mounted bpffs"),
            }
        }
        Command::Version => print!("{}", version_text()),
        Command::Uninstall { cgroup, bpffs } => {
            if let Some(cgroup) = &cgroup {
                kernel::check_cgroup2(cgroup)?;
            }
            let removed = kernel::uninstall(&bpffs)?;
            info!(links = ?removed.links, maps = ?removed.maps, dir_removed = removed.dir_removed, "uninstalled");
            if let Some(cgroup) = cgroup {
                // The kernel frees a link after its last reference asynchronously:
                // give it a moment before calling anything a leftover.
                let deadline = std::time::Instant::now() + Duration::from_secs(3);
                let left = loop {
                    let left: Vec<_> = kernel::attached_programs(&cgroup)?
                        .into_iter()
                        .filter(|p| kernel::is_socklb_program(&p.name))
                        .collect();
                    if left.is_empty() || std::time::Instant::now() >= deadline {
                        break left;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                if !left.is_empty() {
                    bail!(
                        "socklb programs are still attached to {}: {left:?} (attached from another pin directory?)",
                        cgroup.display()
                    );
                }
            }
        }
    }
    Ok(())
}

/// `socklb version`: which release, which commit ("unknown" when built without git
/// metadata) and which kernel programs (the SHA-256 of the object build.rs embeds,
/// `sha256sum target/<profile>/build/socklb-*/out/lb-ebpf`).
fn version_text() -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, kernel::EBPF_OBJECT);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "socklb {}\ncommit: {}\nebpf object sha256: {hex}\n",
        env!("CARGO_PKG_VERSION"),
        env!("SOCKLB_GIT_COMMIT"),
    )
}

/// An `address:port` flag, or "off" (None).
fn listen_address(flag: &str, value: Option<&str>) -> anyhow::Result<Option<std::net::SocketAddr>> {
    match value {
        None | Some("off") => Ok(None),
        Some(a) => a
            .parse()
            .map(Some)
            .with_context(|| format!("{flag} {a:?} is not an address:port (or \"off\")")),
    }
}

fn node_name(flag: Option<String>) -> anyhow::Result<String> {
    if let Some(n) = flag.filter(|n| !n.is_empty()) {
        return Ok(n);
    }
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name")?;
    Ok(host.trim().to_string())
}

/// Parses "0", "250ms", "1s", "1.5s", "2m".
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 1s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses "42" or "0x2a".
fn parse_u32(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse(),
    };
    parsed.map_err(|e| format!("{text:?}: {e} (a 32-bit number, decimal or 0x hex)"))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the agent can only be killed; run on.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn balancing_flags() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["socklb", "plan", "--manifests", "/nonexistent"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Plan { balancing, .. }) => balancing.config(),
                Ok(_) => unreachable!("a plan command"),
                Err(e) => Err(anyhow::anyhow!("{e}")),
            }
        };
        let random = parse(&[]).unwrap();
        assert!(!random.enabled());
        let maglev = parse(&["--lb-algorithm", "maglev", "--maglev-hash-seed", "0x2a"]).unwrap();
        assert!(maglev.enabled());
        assert_eq!((maglev.table_size, maglev.seed), (16_381, 42));
        let err = parse(&["--lb-algorithm", "maglev", "--maglev-table-size", "16384"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--maglev-table-size") && err.contains("131071"),
            "{err}"
        );
        assert!(parse(&["--lb-algorithm", "round-robin"]).is_err());
        assert_eq!(parse_u32("0x736f_636b"), Ok(DEFAULT_SEED));
    }

    #[test]
    fn version_names_release_commit_and_object() {
        let text = version_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("socklb {}", env!("CARGO_PKG_VERSION")));
        let commit = lines[1].strip_prefix("commit: ").unwrap_or_default();
        assert!(
            commit == "unknown"
                || (commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
            "{text}"
        );
        let sha = lines[2]
            .strip_prefix("ebpf object sha256: ")
            .unwrap_or_default();
        assert_eq!(sha.len(), 64, "{text}");
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
