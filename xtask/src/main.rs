//! Developer tasks: `cargo xtask <task>`.
//!
//! - `setup`: installs what a fresh machine lacks (idempotent);
//! - `build-ebpf`: builds the kernel programs and prints the object's path;
//! - `test`: the whole test suite (what CI runs);
//! - `demo`: the self-contained demo sandbox;
//! - `bench`, `chaos`, `differential`: the benchmarks, and their chaos and differential
//!   stages on their own.
//! - `image`: the socklb OCI image, without pulling a base image.
//! - `fuzz`: the fuzz targets for a bounded time (also a stage of `bench`).
mod bench;
mod fuzz;
mod image;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install apt packages, rust-src, bpf-linker and mount bpffs where missing.
    Setup {
        /// Reinstall bpf-linker even when the right version is present.
        #[arg(long)]
        force: bool,
    },
    /// Build the eBPF programs and print where the object is.
    BuildEbpf,
    /// Run the whole test suite: unit tests and the real-kernel end-to-end tests.
    Test {
        /// Extra arguments for the test binaries (after `--`), e.g. a test name filter.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks against kube-proxy's data path and control plane (root; see docs/bench/).
    Bench {
        /// A short run: N = 1, 1000 (unless --services), fewer and shorter repetitions,
        /// written under target/bench-quick/ (unless --out).
        #[arg(long)]
        quick: bool,
        /// Service counts, comma separated (default 1,1000,10000).
        #[arg(long, value_delimiter = ',')]
        services: Option<Vec<usize>>,
        /// Also measure 30 000 services.
        #[arg(long = "with-30k")]
        with_30k: bool,
        /// Write the summary, plots and results JSON under DIR instead of docs/bench/ and
        /// bench/results/.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Repetitions of every data-path figure (default 5, quick 3).
        #[arg(long)]
        reps: Option<usize>,
        /// Only re-render the summary and plots from a results file.
        #[arg(long, value_name = "RESULTS_JSON")]
        render: Option<PathBuf>,
        /// Only these items, comma separated (tcp, udp, control, memory, nodeport,
        /// stale, chaos, fuzz, differential), written under target/bench-items/ (unless
        /// --out); the criterion benchmark runs only with `control`, the chaos stage
        /// only with `chaos` (alone: `cargo xtask chaos`), the fuzz stage only with
        /// `fuzz` (alone: `cargo xtask fuzz`), the differential stage only with
        /// `differential` (alone: `cargo xtask differential`).
        #[arg(long, value_delimiter = ',')]
        items: Option<Vec<String>>,
        /// Cycles of the chaos stage (default 100, quick 20; 0 skips it).
        #[arg(long = "chaos-cycles")]
        chaos_cycles: Option<usize>,
        /// Seconds per fuzz target of the fuzz stage (default 60, quick 10; 0 skips it).
        #[arg(long = "fuzz-seconds")]
        fuzz_seconds: Option<u64>,
        /// Cases of the differential stage (default 10000, quick 2000; 0 skips it).
        #[arg(long = "differential-cases")]
        differential_cases: Option<usize>,
    },
    /// The differential run alone (root): random Services and policies programmed
    /// through the agent, every frontend probed through the socket hooks and the TC
    /// program; fails unless every outcome is one `socklb plan` allows.
    Differential {
        #[arg(long, default_value_t = bench::differential::CASES)]
        cases: usize,
        /// The seed of every random choice (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Service slots (Services present at once).
        #[arg(long, default_value_t = bench::differential::SLOTS)]
        slots: usize,
    },
    /// The chaos run alone (root): the agent SIGKILLed at random points of its syncs
    /// under clients and churn; fails unless nothing failed, diverged or leaked.
    Chaos {
        #[arg(long, default_value_t = bench::chaos::CYCLES)]
        cycles: usize,
        /// The seed of every random choice (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Services per bulk file (default 2500).
        #[arg(long = "bulk-services")]
        bulk_services: Option<usize>,
        /// Data paths, comma separated: socket-hooks, node-port (default: both).
        #[arg(long, value_delimiter = ',')]
        datapath: Vec<String>,
    },
    /// Build the socklb OCI image (podman, FROM scratch: no registry needed), tagged
    /// localhost/socklb:<version>, and a docker-archive of it under target/image/.
    Image {
        /// Package this socklb binary instead of `cargo build --release -p socklb`.
        #[arg(long)]
        socklb: Option<PathBuf>,
        /// Image name (default localhost/socklb:<version>).
        #[arg(long)]
        tag: Option<String>,
        /// Only make the image's file tree in DIR (what manifests/Dockerfile runs).
        #[arg(long, value_name = "DIR")]
        rootfs_only: Option<PathBuf>,
        /// Do not write the docker-archive.
        #[arg(long)]
        no_archive: bool,
    },
    /// Run each fuzz target (cargo-fuzz, nightly) for a bounded time; fails on a crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (repeatable): manifest_bytes, event_sequence.
        #[arg(long)]
        target: Vec<String>,
        /// Record the results in docs/bench/fuzz.md and bench/results/fuzz/, as the
        /// benchmark's fuzz stage does.
        #[arg(long)]
        record: bool,
        /// Only re-render docs/bench/fuzz.md from a results file.
        #[arg(long, value_name = "RESULTS_JSON")]
        render: Option<PathBuf>,
    },
    /// Run the demo: a sandbox with backends, the agent and clients of a ClusterIP.
    Demo {
        /// Arguments for socklb-demo (e.g. --keep-running).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.task {
        Task::Setup { force } => {
            setup::setup(force)?;
            // Only here, not in setup::ensure(): the tests and the demo do not need it.
            fuzz::ensure_tools()
        }
        Task::Fuzz {
            render: Some(file), ..
        } => fuzz::render(&file, &root.join("docs/bench")),
        Task::Fuzz {
            seconds,
            target,
            record,
            render: None,
        } => {
            let record = record.then(|| (root.join("docs/bench"), root.join("bench/results")));
            fuzz::run(
                &root,
                &fuzz::Options {
                    seconds,
                    targets: target,
                    record,
                },
            )
            .map(|_| ())
        }
        Task::BuildEbpf => {
            setup::ensure()?;
            let object = build_ebpf(&root)?;
            println!("{}", object.display());
            Ok(())
        }
        Task::Test { args } => {
            setup::ensure()?;
            test(&root, &args)
        }
        Task::Bench {
            quick,
            services,
            with_30k,
            out,
            reps,
            render,
            items,
            chaos_cycles,
            fuzz_seconds,
            differential_cases,
        } => bench::run(
            &root,
            bench::Options {
                quick,
                services,
                with_30k,
                out,
                reps,
                render,
                items,
                chaos_cycles,
                fuzz_seconds,
                differential_cases,
            },
        ),
        Task::Differential { cases, seed, slots } => {
            bench::differential::run(&root, &bench::differential::Options { cases, seed, slots })
        }
        Task::Chaos {
            cycles,
            seed,
            bulk_services,
            datapath,
        } => bench::chaos::run(
            &root,
            &bench::chaos::Options {
                cycles,
                seed,
                bulk_services,
                datapaths: datapath,
            },
        ),
        Task::Image {
            socklb,
            tag,
            rootfs_only,
            no_archive,
        } => image::run(
            &root,
            image::Options {
                socklb,
                tag,
                rootfs_only,
                no_archive,
            },
        ),
        Task::Demo { args } => {
            setup::ensure()?;
            cargo(
                &root,
                &[
                    "build",
                    "--package",
                    "socklb",
                    "--package",
                    "socklb-tests",
                    "--bins",
                ],
            )?;
            let demo = root.join("target/debug/socklb-demo");
            let status = Command::new(&demo)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", demo.display()))?;
            if !status.success() {
                bail!("the demo failed ({status})");
            }
            Ok(())
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The same build aya-build runs from lb-userspace/build.rs (package socklb), into target/.
fn build_ebpf(root: &Path) -> Result<PathBuf> {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        "lb-ebpf",
        "--bins",
        "--release",
    ])
    .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        [
            "--cfg=bpf_target_arch=\"x86_64\"",
            "-Cdebuginfo=2",
            "-Clink-arg=--btf",
        ]
        .join("\x1f"),
    )
    .current_dir(root);
    // rustup sets these for the outer (stable) cargo; they would override `nightly`.
    for var in [
        "RUSTC",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .context("running rustup run nightly cargo build")?;
    if !status.success() {
        bail!("building lb-ebpf failed ({status})");
    }
    let object = root.join("target/bpfel-unknown-none/release/lb-ebpf");
    if !object.exists() {
        bail!("the build succeeded but {} is missing", object.display());
    }
    Ok(object)
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    // The end-to-end tests run the socklb, socklb-probe binaries: build them first.
    cargo(
        root,
        &[
            "build",
            "--package",
            "socklb",
            "--package",
            "socklb-tests",
            "--bins",
        ],
    )?;
    let mut test_args: Vec<&str> = vec!["test", "--workspace", "--exclude", "lb-ebpf"];
    if !args.is_empty() {
        test_args.push("--");
        test_args.extend(args.iter().map(String::as_str));
    }
    cargo(root, &test_args)
}
