//! socklb-bench: the measuring half of `cargo xtask bench`.
//!
//! - `run`: every measurement (data path, UDP, control plane, memory) inside network
//!   namespaces, a cgroup and a pin directory it creates; prints progress to stderr and
//!   writes one JSON file (`socklb_bench_results::Results`). Needs root.
//! - `serve`: a backend (run by `run` inside each pod namespace).
//! - `load`: the load generator (run by `run` inside a client namespace; refuses to
//!   send anywhere but loopback from the host namespace or from one with a default
//!   route).
//! - `chaos`: the long chaos run (`socklb_tests::chaos`), its results as JSON. Needs
//!   root.
//! - `differential`: the long differential run (`socklb_tests::differential`), its
//!   results as JSON. Needs root.
//! - `timed`: runs a tool and prints how long it took (run by `run` inside a namespace).
//! - `rules`: prints the generated kube-proxy rules or socklb manifests, for reading.

#[path = "../bench/mod.rs"]
mod bench;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bench::load::LoadSpec;
use bench::model::{Change, SynthCluster};
use bench::runner::Config;
use clap::{Parser, Subcommand, ValueEnum};
use socklb_bench_results::{IptablesBackend, Kind, Mode};

#[derive(Parser, Debug)]
#[command(
    name = "socklb-bench",
    about = "socklb's benchmarks against kube-proxy's data path and control plane",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the benchmarks and write the results as JSON.
    Run(RunArgs),
    /// The chaos run: the agent SIGKILLed at random points of its syncs, cycle after
    /// cycle, under clients and churn; writes the results as JSON.
    Chaos(bench::chaos::ChaosArgs),
    /// The differential run: random Services and policies programmed through the
    /// agent, every frontend probed and judged against `socklb plan`; writes the
    /// results as JSON.
    Differential(bench::differential::DifferentialArgs),
    /// A backend: answers TCP and UDP requests with its own address.
    Serve {
        /// This pod's address (put in every answer).
        #[arg(long)]
        ip: Ipv4Addr,
        #[arg(long)]
        tcp: u16,
        #[arg(long)]
        udp: u16,
        /// Threads accepting connections (one connection each at a time).
        #[arg(long, default_value_t = 32)]
        workers: usize,
    },
    /// The load generator: prints one JSON report.
    Load {
        #[arg(long, value_enum)]
        kind: Kind,
        /// Targets, comma separated (several: one picked at random per connection).
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<SocketAddrV4>,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long = "duration-ms", default_value_t = 2000)]
        duration_ms: u64,
        #[arg(long = "warmup-ms", default_value_t = 300)]
        warmup_ms: u64,
        /// Request (and answer) size in bytes.
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long = "timeout-ms", default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Runs PROGRAM ARGS (stdin from --stdin) and prints how long it took, as JSON.
    Timed {
        #[arg(long)]
        stdin: Option<PathBuf>,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Prints what the benchmark generates for N services.
    Rules {
        #[arg(value_enum)]
        what: RulesWhat,
        #[arg(long, default_value_t = 10)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RulesWhat {
    /// kube-proxy's start-up chains and jumps (iptables-restore --noflush).
    IptablesBase,
    /// A full iptables sync.
    Iptables,
    /// A partial iptables sync of one endpoint change.
    IptablesPartial,
    /// A full nftables sync.
    Nft,
    /// One nftables transaction changing one endpoint.
    NftChange,
    /// socklb manifests (every file, concatenated).
    ClusterSpec,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Service counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<usize>,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Repetitions of every data-path figure.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Repetitions of cold loads and agent starts.
    #[arg(long = "control-reps", default_value_t = 3)]
    control_reps: usize,
    /// Endpoint changes timed per tool and N.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Measured window of each load run.
    #[arg(long = "duration-ms", default_value_t = 2000)]
    duration_ms: u64,
    #[arg(long = "warmup-ms", default_value_t = 300)]
    warmup_ms: u64,
    /// Load generator threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Request size in bytes.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// What to run, comma separated: tcp, udp, control, memory, nodeport (NodePort from
    /// outside the node: direct, socklb's TC program, iptables' NodePort DNAT; the
    /// kinds of tcp/udp, all three when neither is given), stale (stale-socket
    /// termination: time from a slice change to the error of each connected UDP socket
    /// of the departed backend, in many network namespaces; once, not per N).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tcp,udp,control,memory,nodeport,stale"
    )]
    items: Vec<String>,
    /// stale: client network namespaces (one process each in the agent's cgroup).
    #[arg(long = "stale-netns", default_value_t = 100)]
    stale_netns: usize,
    /// stale: connected UDP sockets per namespace on the departing backend.
    #[arg(long = "stale-sockets", default_value_t = 20)]
    stale_sockets: usize,
    /// stale: backend replacements measured.
    #[arg(long = "stale-rounds", default_value_t = 5)]
    stale_rounds: usize,
    /// stale: the agent's --poll-interval-ms (its manifest directory is polled).
    #[arg(long = "stale-poll-ms", default_value_t = 10)]
    stale_poll_ms: u64,
    /// Data-path modes, comma separated (default: all): socklb, iptables,
    /// iptables-first, nft (direct always runs: every ratio needs it).
    #[arg(long, value_delimiter = ',', value_enum)]
    modes: Vec<Mode>,
    /// iptables binaries for the data path and the first control-plane figures.
    #[arg(long = "iptables-backend", value_enum, default_value = "legacy")]
    iptables_backend: IptablesBackend,
    /// Also time the other iptables backend's control plane up to this many services.
    #[arg(long = "other-backend-max", default_value_t = 1000)]
    other_backend_max: usize,
    /// How long the agent may take to program everything.
    #[arg(long = "agent-timeout-s", default_value_t = 300)]
    agent_timeout_s: u64,
    /// Marks the results as a quick run.
    #[arg(long)]
    quick: bool,
    /// The JSON results file.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("socklb-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run(a) => {
            bench::util::install_signal_handlers()?;
            let mut items = (false, false, false, false, false);
            let mut stale = false;
            for i in &a.items {
                match i.as_str() {
                    "tcp" => items.0 = true,
                    "udp" => items.1 = true,
                    "control" => items.2 = true,
                    "memory" => items.3 = true,
                    "nodeport" => items.4 = true,
                    "stale" => stale = true,
                    other => {
                        bail!("unknown item {other:?} (tcp, udp, control, memory, nodeport, stale)")
                    }
                }
            }
            if a.services.is_empty() || a.reps == 0 {
                bail!("--services and --reps must not be empty or zero");
            }
            let cfg = Config {
                services: a.services,
                endpoints: a.endpoints,
                reps: a.reps,
                control_reps: a.control_reps.max(1),
                changes: a.changes,
                duration: Duration::from_millis(a.duration_ms),
                warmup: Duration::from_millis(a.warmup_ms),
                threads: a.threads.max(1),
                size: a.size,
                tcp: items.0,
                udp: items.1,
                control: items.2,
                memory: items.3,
                nodeport: items.4,
                stale: stale.then(|| bench::stale::StaleConfig {
                    namespaces: a.stale_netns.max(1),
                    sockets: a.stale_sockets.max(1),
                    rounds: a.stale_rounds.max(1),
                    poll_interval_ms: a.stale_poll_ms,
                    agent_ready_timeout: Duration::from_secs(a.agent_timeout_s),
                }),
                iptables_backend: a.iptables_backend,
                other_backend_max: a.other_backend_max,
                quick: a.quick,
                modes: a.modes,
                agent_ready_timeout: Duration::from_secs(a.agent_timeout_s),
                out: a.out.clone(),
            };
            bench::runner::run(&cfg)?;
            eprintln!("socklb-bench: results in {}", a.out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Chaos(a) => {
            bench::chaos::run(&a)?;
            eprintln!("socklb-bench: results in {}", a.out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Differential(a) => {
            bench::differential::run(&a)?;
            eprintln!("socklb-bench: results in {}", a.out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve {
            ip,
            tcp,
            udp,
            workers,
        } => {
            bench::load::serve(ip, tcp, udp, workers)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Load {
            kind,
            to,
            threads,
            duration_ms,
            warmup_ms,
            size,
            timeout_ms,
        } => {
            bench::util::ensure_isolated(&to)?;
            let report = bench::load::run(&LoadSpec {
                kind,
                targets: to,
                threads,
                duration: Duration::from_millis(duration_ms),
                warmup: Duration::from_millis(warmup_ms),
                size,
                timeout: Duration::from_millis(timeout_ms.max(1)),
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Timed { stdin, command } => {
            let (program, args) = command.split_first().context("no command")?;
            let t = bench::util::timed_main(stdin.as_deref(), program, args)?;
            println!("{}", serde_json::to_string(&t)?);
            Ok(if t.success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Rules {
            what,
            services,
            endpoints,
        } => {
            let pods: Vec<Ipv4Addr> = (1..=endpoints.min(10) as u8)
                .map(|i| Ipv4Addr::new(10, 244, 1, i))
                .collect();
            let c = SynthCluster::new(services, endpoints, pods);
            let change = Change {
                service: c.changing(),
                generation: 1,
            };
            let original = Change {
                service: c.changing(),
                generation: 0,
            };
            let text = match what {
                RulesWhat::IptablesBase => bench::iptables::base(),
                RulesWhat::Iptables => bench::iptables::full(&c, None),
                RulesWhat::IptablesPartial => bench::iptables::partial(&c, change, original),
                RulesWhat::Nft => bench::nft::full(&c, None),
                RulesWhat::NftChange => bench::nft::change_tx(&c, change, original, None),
                RulesWhat::ClusterSpec => {
                    let dir = socklb_tests::ManifestDir::new()?;
                    bench::synth_files::write_all(&dir, &c)?;
                    let mut s = String::new();
                    for f in dir.files()? {
                        s.push_str(&dir.read(&f)?);
                    }
                    s
                }
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
