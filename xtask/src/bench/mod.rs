//! `cargo xtask bench`: socklb against kube-proxy's data path and control plane.
//!
//! 1. `setup::ensure()`, then iptables and nftables from Debian's packages if missing;
//! 2. builds the agent and `socklb-bench` (release);
//! 3. `socklb-bench run`: data path (TCP short/long, UDP), kube-proxy's control plane
//!    (iptables-restore, nft), the agent's memory and one-file changes, all inside
//!    network namespaces, a cgroup and a pin directory it creates;
//! 4. the socklb package's criterion benchmark `control_plane` (objects in memory -> maps);
//! 5. the chaos stage (`chaos.rs`: the agent SIGKILLed at random points of its syncs)
//!    and the differential stage (`differential.rs`: random services probed through
//!    the kernel and judged against the plan);
//! 6. merges them into `bench/results/<name>.json` and renders `docs/bench/README.md`
//!    with SVG plots (drawn here with plotters' SVG backend);
//! 7. the fuzz stage: each fuzz target of socklb-core for a bounded time
//!    (`crate::fuzz`, 60 s, quick 10 s, `--fuzz-seconds N`, 0 skips it), recorded in
//!    `fuzz.md` beside the summary and `results/fuzz/`.
//!
//! `--render FILE` only re-renders the summary from a saved results file.
//!
//! The results are `socklb_bench_results::Results`, the types socklb-bench writes; the
//! targets they are judged against, and how figures are written, come from there too.
//! Here: running and merging (this file), the summary (`summary.rs`), the plots
//! (`plots.rs`).

pub mod chaos;
pub mod differential;
mod plots;
mod summary;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use socklb_bench_results::{Kind, Mode, Results, SocklbControlPlane};

use plots::Metric;

/// What `cargo xtask bench` was asked.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub quick: bool,
    pub services: Option<Vec<usize>>,
    pub with_30k: bool,
    pub out: Option<PathBuf>,
    pub reps: Option<usize>,
    pub render: Option<PathBuf>,
    /// Only these items of socklb-bench (None: all).
    pub items: Option<Vec<String>>,
    /// Cycles of the chaos stage (0: skipped; default [`chaos::CYCLES`], quick
    /// [`chaos::QUICK_CYCLES`]).
    pub chaos_cycles: Option<usize>,
    /// Seconds per fuzz target of the fuzz stage (0: skipped; default
    /// [`FUZZ_SECONDS`], quick [`FUZZ_QUICK_SECONDS`]).
    pub fuzz_seconds: Option<u64>,
    /// Cases of the differential stage (0: skipped; default
    /// [`differential::CASES`], quick [`differential::QUICK_CASES`]).
    pub differential_cases: Option<usize>,
}

/// Seconds per fuzz target in the fuzz stage.
pub const FUZZ_SECONDS: u64 = 60;
pub const FUZZ_QUICK_SECONDS: u64 = 10;

/// socklb-bench's items measured per N (the others run once).
const PER_N_ITEMS: &[&str] = &["tcp", "udp", "control", "memory", "nodeport"];

/// Debian packages the baselines need (the binaries socklb-bench runs).
const BASELINE_PACKAGES: &[(&str, &str)] =
    &[("iptables", "iptables-legacy-restore"), ("nftables", "nft")];

pub fn run(root: &Path, opts: Options) -> Result<()> {
    let (docs_dir, results_dir) = match &opts.out {
        Some(dir) => (dir.clone(), dir.join("results")),
        None if opts.items.is_some() => (
            root.join("target/bench-items"),
            root.join("target/bench-items/results"),
        ),
        None if opts.quick => (
            root.join("target/bench-quick"),
            root.join("target/bench-quick/results"),
        ),
        None => (root.join("docs/bench"), root.join("bench/results")),
    };
    if let Some(file) = &opts.render {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let results =
            parse_results(&text).with_context(|| format!("reading {}", file.display()))?;
        render(&results, &relative_link(&docs_dir, file), &docs_dir)?;
        eprintln!("xtask: summary in {}", docs_dir.join("README.md").display());
        return Ok(());
    }

    // `chaos` is a stage of its own here, not an item of socklb-bench: alone, it is
    // `cargo xtask chaos`.
    let cycles = opts.chaos_cycles.unwrap_or(if opts.quick {
        chaos::QUICK_CYCLES
    } else {
        chaos::CYCLES
    });
    let with_chaos = opts
        .items
        .as_ref()
        .is_none_or(|items| items.iter().any(|i| i == "chaos"));
    // `fuzz` and `differential` likewise (alone: `cargo xtask fuzz`, `cargo xtask
    // differential`).
    let with_fuzz = opts
        .items
        .as_ref()
        .is_none_or(|items| items.iter().any(|i| i == "fuzz"));
    let fuzz_seconds = if with_fuzz {
        opts.fuzz_seconds.unwrap_or(if opts.quick {
            FUZZ_QUICK_SECONDS
        } else {
            FUZZ_SECONDS
        })
    } else {
        0
    };
    let cases = opts.differential_cases.unwrap_or(if opts.quick {
        differential::QUICK_CASES
    } else {
        differential::CASES
    });
    let with_differential = opts
        .items
        .as_ref()
        .is_none_or(|items| items.iter().any(|i| i == "differential"));
    let mut opts = opts;
    if let Some(items) = &mut opts.items {
        items.retain(|i| i != "chaos" && i != "fuzz" && i != "differential");
        if items.is_empty() {
            if with_chaos && cycles > 0 {
                let chaos_opts = chaos::Options {
                    cycles,
                    ..Default::default()
                };
                chaos::run(root, &chaos_opts)?;
            }
            if with_differential && cases > 0 {
                let diff_opts = differential::Options {
                    cases,
                    ..Default::default()
                };
                differential::run(root, &diff_opts)?;
            }
            return fuzz_stage(root, fuzz_seconds, &docs_dir, &results_dir);
        }
    }

    crate::setup::ensure()?;
    ensure_baseline_tools()?;
    super::cargo(
        root,
        &[
            "build",
            "--release",
            "--package",
            "socklb",
            "--package",
            "socklb-tests",
            "--bins",
        ],
    )?;

    let mut services = opts.services.clone().unwrap_or_else(|| {
        if opts.quick {
            vec![1, 1000]
        } else {
            vec![1, 1000, 10_000]
        }
    });
    if opts.with_30k && !services.contains(&30_000) {
        services.push(30_000);
    }
    let per_n = opts
        .items
        .as_ref()
        .is_none_or(|items| items.iter().any(|i| PER_N_ITEMS.contains(&i.as_str())));
    if !per_n && opts.services.is_none() {
        services = vec![1]; // not used by the items asked for
    }
    services.sort_unstable();
    services.dedup();
    let list = |v: &[usize]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };

    let scratch = root.join("target/bench");
    std::fs::create_dir_all(&scratch)?;
    let stamp = utc_stamp();
    let raw = scratch.join(format!("socklb-bench-{stamp}.json"));
    let bench_bin = root.join("target/release/socklb-bench");
    let mut cmd = Command::new(&bench_bin);
    cmd.arg("run")
        .arg("--services")
        .arg(list(&services))
        .arg("--out")
        .arg(&raw);
    let reps = opts.reps.unwrap_or(if opts.quick { 3 } else { 5 });
    cmd.arg("--reps").arg(reps.to_string());
    if let Some(items) = &opts.items {
        cmd.arg("--items").arg(items.join(","));
    }
    if opts.quick {
        cmd.args([
            "--duration-ms",
            "500",
            "--warmup-ms",
            "100",
            "--changes",
            "5",
            "--stale-rounds",
            "2",
            "--quick",
        ]);
    }
    cmd.env("SOCKLB_BIN", root.join("target/release/socklb"))
        .current_dir(root);
    eprintln!(
        "xtask: {} run --services {} (this takes a while: progress below)",
        bench_bin.display(),
        list(&services)
    );
    let status = with_sigint_ignored(|| cmd.status()).context("running socklb-bench")?;
    if !status.success() {
        bail!(
            "socklb-bench failed ({status}); partial results, if any, in {}",
            raw.display()
        );
    }
    let mut results = parse_results(&std::fs::read_to_string(&raw)?)
        .with_context(|| format!("reading {}", raw.display()))?;

    // The socklb package's criterion benchmark: objects in memory -> maps. Always at 10 000
    // services too (the cold-programming target is stated there). Only with the control
    // plane (all items, or `control` among them).
    let criterion = opts
        .items
        .as_ref()
        .is_none_or(|items| items.iter().any(|i| i == "control"));
    if criterion {
        run_criterion(
            root,
            &services,
            reps,
            opts.quick,
            &scratch,
            &stamp,
            &mut results,
        )?;
    }

    if with_chaos && cycles > 0 {
        let opts = chaos::Options {
            cycles,
            ..Default::default()
        };
        results.chaos = chaos::stage(root, &opts, &scratch, &stamp)?;
        for c in results.chaos.iter().filter(|c| !c.clean()) {
            results.notes.push(format!(
                "The chaos stage found problems on {} (seed {}): see its section.",
                c.datapath, c.seed
            ));
        }
    }

    if with_differential && cases > 0 {
        let opts = differential::Options {
            cases,
            ..Default::default()
        };
        let d = differential::stage(root, &opts, &scratch, &stamp)?;
        if !d.clean() {
            results.notes.push(format!(
                "The differential stage found {} divergences from the plan (seed {}): see its section.",
                d.divergences_total, d.seed
            ));
        }
        results.differential = Some(d);
    }

    std::fs::create_dir_all(&results_dir)?;
    let name = match &opts.items {
        Some(items) => format!("{stamp}-{}", items.join("-")),
        None => format!("{stamp}-{}", if opts.quick { "quick" } else { "full" }),
    };
    let results_file = results_dir.join(format!("{name}.json"));
    std::fs::write(&results_file, serde_json::to_vec_pretty(&results)?)?;
    render(
        &results,
        &relative_link(&docs_dir, &results_file),
        &docs_dir,
    )?;
    eprintln!("xtask: results in {}", results_file.display());
    eprintln!("xtask: summary in {}", docs_dir.join("README.md").display());
    fuzz_stage(root, fuzz_seconds, &docs_dir, &results_dir)
}

/// 7. The fuzz targets for `seconds` each (0: skipped), recorded beside the summary.
fn fuzz_stage(root: &Path, seconds: u64, docs_dir: &Path, results_dir: &Path) -> Result<()> {
    if seconds == 0 {
        return Ok(());
    }
    crate::fuzz::bench_stage(root, seconds, docs_dir, results_dir)
}

/// lb-userspace's criterion benchmark `control_plane`, added to `results`.
fn run_criterion(
    root: &Path,
    services: &[usize],
    reps: usize,
    quick: bool,
    scratch: &Path,
    stamp: &str,
    results: &mut Results,
) -> Result<()> {
    let list = |v: &[usize]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut cp_services = services.to_vec();
    if !cp_services.contains(&10_000) {
        cp_services.push(10_000);
        cp_services.sort_unstable();
    }
    let cp_json = scratch.join(format!("control-plane-{stamp}.json"));
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut bench = Command::new(&cargo_bin);
    bench
        .args([
            "bench",
            "--package",
            "socklb",
            "--bench",
            "control_plane",
            "--",
            "--warm-up-time",
            "1",
        ])
        .env("SOCKLB_BENCH_SERVICES", list(&cp_services))
        .env("SOCKLB_BENCH_JSON", &cp_json)
        .env("SOCKLB_BENCH_REPEATS", reps.max(3).to_string())
        .env("SOCKLB_BENCH_CHANGES", if quick { "500" } else { "2000" })
        .env("SOCKLB_BENCH_CRITERION", if quick { "0" } else { "1" })
        .current_dir(root);
    eprintln!(
        "xtask: cargo bench -p socklb --bench control_plane (SOCKLB_BENCH_SERVICES={})",
        list(&cp_services)
    );
    let status = bench.status().context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench --bench control_plane failed ({status})");
    }
    let cp: SocklbControlPlane = serde_json::from_slice(&std::fs::read(&cp_json)?)
        .with_context(|| format!("reading {}", cp_json.display()))?;
    results.control_plane.socklb = Some(cp);

    Ok(())
}

/// A results file (socklb-bench's, or a saved one).
fn parse_results(text: &str) -> Result<Results> {
    let r: Results = serde_json::from_str(text)?;
    if r.schema != socklb_bench_results::SCHEMA {
        bail!(
            "results schema {}, this xtask reads {}",
            r.schema,
            socklb_bench_results::SCHEMA
        );
    }
    Ok(r)
}

/// Installs iptables and nftables from Debian's packages when their tools are missing.
fn ensure_baseline_tools() -> Result<()> {
    let missing: Vec<&str> = BASELINE_PACKAGES
        .iter()
        .filter(|(_, tool)| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: apt-get install {}", missing.join(" "));
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    if !ok(Command::new("apt-get").arg("update")) {
        bail!("apt-get update failed");
    }
    if !ok(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}

/// Runs `f` with SIGINT ignored here, so that Ctrl-C reaches socklb-bench (in the same
/// process group), which removes what it created and exits, and we report after it.
fn with_sigint_ignored<T>(f: impl FnOnce() -> T) -> T {
    const SIGINT: i32 = 2;
    const SIG_IGN: usize = 1;
    // SAFETY: signal(2) with SIG_IGN and then the previous disposition; no handler code.
    let previous = unsafe { signal(SIGINT, SIG_IGN) };
    let r = f();
    // SAFETY: as above.
    unsafe { signal(SIGINT, previous) };
    r
}

/// `YYYY-MM-DDTHHMM` (UTC) of now.
pub(crate) fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

pub(crate) fn date_of(unix: u64) -> String {
    let (y, m, d) = civil_from_days((unix / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 -> (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A link from `docs_dir` to `file` (relative when both are under one root).
pub(crate) fn relative_link(docs_dir: &Path, file: &Path) -> String {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (from, to) = (abs(docs_dir), abs(file));
    let from_parts: Vec<_> = from.components().collect();
    let to_parts: Vec<_> = to.components().collect();
    let common = from_parts
        .iter()
        .zip(&to_parts)
        .take_while(|(a, b)| a == b)
        .count();
    if common <= 1 {
        return to.display().to_string();
    }
    let mut s = String::new();
    for _ in common..from_parts.len() {
        s.push_str("../");
    }
    let rest: Vec<String> = to_parts[common..]
        .iter()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    s.push_str(&rest.join("/"));
    s
}

// ============================================================================ summary and plots

/// The NodePort tables' modes, in their order.
pub(crate) const NODEPORT_MODES: &[(Mode, &str)] = &[
    (Mode::Direct, "direct (routed to a pod, no rule)"),
    (Mode::Socklb, "socklb (TC)"),
    (Mode::Iptables, "kube-proxy iptables (NodePort last)"),
];

/// The ClusterIP tables' modes, in their order.
pub(crate) const MODES: &[(Mode, &str)] = &[
    (Mode::Direct, "direct (no load balancer)"),
    (Mode::Socklb, "socklb"),
    (Mode::Iptables, "kube-proxy iptables (service last)"),
    (Mode::IptablesFirst, "kube-proxy iptables (service first)"),
    (Mode::Nft, "kube-proxy nftables"),
];
/// Kind, title, unit of its rate.
pub(crate) const KINDS: &[(Kind, &str, &str)] = &[
    (Kind::TcpShort, "TCP short connections", "connections/s"),
    (Kind::TcpLong, "TCP long connections", "requests/s"),
    (Kind::Udp, "UDP request/response (DNS-like)", "queries/s"),
];

/// docs/bench/: the summary and its plots.
fn render(r: &Results, results_link: &str, docs: &Path) -> Result<()> {
    std::fs::create_dir_all(docs)?;
    let mut drawn = Vec::new();
    if !r.datapath.is_empty() {
        for (file, metric) in [
            ("datapath-rate.svg", Metric::RateRatio),
            ("datapath-p99.svg", Metric::P99),
        ] {
            plots::datapath(&r.datapath, MODES, &docs.join(file), metric, "")?;
        }
        drawn.push("datapath");
    }
    if !r.nodeport.is_empty() {
        let prefix = "NodePort from outside: ";
        for (file, metric) in [
            ("nodeport-rate.svg", Metric::RateRatio),
            ("nodeport-p99.svg", Metric::P99),
        ] {
            plots::datapath(
                &r.nodeport,
                NODEPORT_MODES,
                &docs.join(file),
                metric,
                prefix,
            )?;
        }
        drawn.push("nodeport");
    }
    if !r.control_plane.iptables.is_empty() || !r.socklb_control_rows().is_empty() {
        plots::control_plane(r, &docs.join("control-plane.svg"))?;
        drawn.push("control");
    }
    if !r.memory.is_empty() {
        plots::memory(&r.memory, &docs.join("memory.svg"))?;
        drawn.push("memory");
    }
    let md = summary::markdown(r, results_link, &drawn);
    std::fs::write(docs.join("README.md"), md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_links() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(date_of(1_709_164_800), "2024-02-29");
        assert_eq!(
            relative_link(
                Path::new("/a/docs/bench"),
                Path::new("/a/bench/results/x.json")
            ),
            "../../bench/results/x.json"
        );
    }

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Every committed results file still loads as the results types.
    #[test]
    fn committed_results_files_load() {
        let dir = root().join("bench/results");
        let mut seen = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&path).unwrap();
                parse_results(&text).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0, "no results file in {}", dir.display());
    }

    /// docs/bench/ is what the renderer makes of the results file its README names.
    #[test]
    fn committed_summary_is_what_its_results_render_to() {
        let docs = root().join("docs/bench");
        let readme = std::fs::read_to_string(docs.join("README.md")).unwrap();
        let link = readme
            .split_once("](")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(link, _)| link)
            .expect("the README links its results file");
        let results = parse_results(&std::fs::read_to_string(docs.join(link)).unwrap()).unwrap();
        let out = std::env::temp_dir().join(format!("xtask-render-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let rendered = render(&results, link, &out);
        let compare = || -> Result<()> {
            rendered?;
            for e in std::fs::read_dir(&out)? {
                let name = e?.file_name();
                let (want, got) = (
                    std::fs::read_to_string(docs.join(&name))
                        .with_context(|| format!("docs/bench/{name:?}"))?,
                    std::fs::read_to_string(out.join(&name))?,
                );
                if want != got {
                    bail!(
                        "docs/bench/{} differs from its re-render (cargo xtask bench --render {})",
                        name.to_string_lossy(),
                        link.trim_start_matches("../../")
                    );
                }
            }
            Ok(())
        };
        let result = compare();
        let _ = std::fs::remove_dir_all(&out);
        result.unwrap();
    }
}
