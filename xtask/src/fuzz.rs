//! `cargo xtask fuzz [--seconds N]`: runs each fuzz target of socklb-core
//! (lb-userspace/core/fuzz, cargo-fuzz on nightly) for N seconds and reports what it
//! did: executions, corpus size, crashes (which must be 0) and peak RSS.
//! `cargo xtask bench` runs it as one of its stages and records the results next to
//! its own (`docs/bench/fuzz.md`, `bench/results/fuzz/<stamp>.json`).
//!
//! Memory is bounded per input by `-max_len` and per process by libFuzzer's
//! `-rss_limit_mb`: going over is a crash ("oom-"),
//! as is a panic ("crash-") or an input slower than `-timeout` ("timeout-"), which is
//! how a quadratic blowup shows. Each target reads the corpus kept in the repository
//! (`lb-userspace/core/fuzz/corpus/<target>/`, never written here) and grows a scratch
//! corpus of its own under `target/fuzz/corpus/<target>/`, which later runs continue.
//! Crash inputs go to `target/fuzz/artifacts/<target>/`: a fixed crash's input belongs
//! in the repository's corpus as `regression-<what>`, where the core's tests replay it.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

/// The cargo-fuzz release `cargo xtask setup` installs (`cargo install --locked`).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Per process: more is a crash (libFuzzer's -rss_limit_mb).
const RSS_LIMIT_MB: u64 = 2048;
/// Per input: slower is a crash (libFuzzer's -timeout), seconds.
const TIMEOUT_S: u64 = 10;
const FUZZ_DIR: &str = "lb-userspace/core/fuzz";
/// No sanitizer: the fuzzed code is safe Rust (socklb-core and lb-common's layouts),
/// where AddressSanitizer finds nothing and costs half the executions and hundreds of
/// MiB of quarantine. Panics, overflows (debug assertions stay on), timeouts and the
/// RSS limit are what the runs check. Without it `-malloc_limit_mb` has no hooks: the
/// RSS limit (sampled every second) is the memory bound.
const SANITIZER: [&str; 2] = ["--sanitizer", "none"];

/// The fuzz targets and the largest input each is given.
const TARGETS: &[(&str, usize)] = &[
    // A manifest file: 32 KiB holds hundreds of objects; the loader's own limits (16 MiB
    // files) are tested by its unit tests, where one input of that size is enough.
    ("manifest_bytes", 32 * 1024),
    // Structured: a few hundred bytes already make dozens of objects and steps.
    ("event_sequence", 4096),
];

/// What `cargo xtask fuzz` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    pub seconds: u64,
    /// Only these targets (default: all).
    pub targets: Vec<String>,
    /// Record the results: `<docs>/fuzz.md` and `<results>/fuzz/<stamp>.json`.
    pub record: Option<(PathBuf, PathBuf)>,
}

/// One target's run, as libFuzzer reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRun {
    pub name: String,
    pub seconds: u64,
    pub max_len: usize,
    pub execs: u64,
    pub execs_per_s: u64,
    /// Units in the corpus at the end, and their total size.
    pub corpus_units: u64,
    pub corpus_bytes: String,
    /// Files in the repository's corpus the run started from.
    pub seed_files: usize,
    pub new_units: u64,
    /// Coverage at the end: edges (libFuzzer's `cov`) and features (`ft`).
    pub coverage: u64,
    pub features: u64,
    pub peak_rss_mb: u64,
    /// Crash, oom, timeout and leak inputs this run wrote.
    pub crashes: Vec<String>,
}

/// A whole `cargo xtask fuzz` run.
#[derive(Debug, Clone, PartialEq)]
pub struct FuzzResults {
    pub date: String,
    pub commit: String,
    pub toolchain: String,
    pub cargo_fuzz: String,
    pub rss_limit_mb: u64,
    pub timeout_s: u64,
    pub targets: Vec<TargetRun>,
}

impl FuzzResults {
    pub fn crashes(&self) -> usize {
        self.targets.iter().map(|t| t.crashes.len()).sum()
    }
}

/// Installs the nightly toolchain (cargo-fuzz builds the targets with it) and
/// cargo-fuzz when missing, saying so: part of `cargo xtask setup`, and run by
/// `cargo xtask fuzz` itself.
pub fn ensure_tools() -> Result<()> {
    if nightly_version().is_none() {
        eprintln!(
            "xtask: the nightly toolchain is missing (cargo-fuzz needs it): rustup toolchain install nightly --profile minimal"
        );
        let status = Command::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .status()
            .context("running rustup toolchain install nightly")?;
        if !status.success() || nightly_version().is_none() {
            bail!("rustup toolchain install nightly failed ({status})");
        }
    }
    if cargo_fuzz_version().is_some() {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz is missing");
    eprintln!("xtask: cargo install cargo-fuzz {CARGO_FUZZ_VERSION}");
    let status = Command::new("cargo")
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        // Built with the default (stable) toolchain; an outer override must not leak in.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    if cargo_fuzz_version().is_none() {
        bail!("cargo-fuzz was installed but `cargo +nightly fuzz --version` does not run");
    }
    Ok(())
}

fn cargo_fuzz_version() -> Option<String> {
    let out = nightly_cargo().args(["fuzz", "--version"]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `cargo` of the nightly toolchain, without the outer (stable) cargo's overrides.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]);
    for var in [
        "RUSTC",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs the targets; returns an error when one crashed (after recording the results).
pub fn run(root: &Path, opts: &Options) -> Result<FuzzResults> {
    ensure_tools()?;
    let targets: Vec<(&str, usize)> = TARGETS
        .iter()
        .copied()
        .filter(|(name, _)| opts.targets.is_empty() || opts.targets.iter().any(|t| t == name))
        .collect();
    if targets.is_empty() {
        let known: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        bail!("no such fuzz target; known: {}", known.join(", "));
    }
    let fuzz_dir = root.join(FUZZ_DIR);
    let scratch = root.join("target/fuzz");
    let build_dir = scratch.join("build");
    eprintln!("xtask: building the fuzz targets (cargo +nightly fuzz build)");
    let status = nightly_cargo()
        .args(["fuzz", "build"])
        .args(SANITIZER)
        .arg("--fuzz-dir")
        .arg(&fuzz_dir)
        .arg("--target-dir")
        .arg(&build_dir)
        .current_dir(root)
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }

    let mut runs = Vec::new();
    for (name, max_len) in targets {
        runs.push(run_target(
            root,
            &fuzz_dir,
            &scratch,
            name,
            max_len,
            opts.seconds,
        )?);
    }
    let results = FuzzResults {
        date: crate::bench::date_of(unix_now()),
        commit: git_commit(root),
        toolchain: nightly_version().unwrap_or_else(|| "unknown".to_owned()),
        cargo_fuzz: cargo_fuzz_version().unwrap_or_default(),
        rss_limit_mb: RSS_LIMIT_MB,
        timeout_s: TIMEOUT_S,
        targets: runs,
    };
    print!("{}", table(&results));
    if let Some((docs, results_dir)) = &opts.record {
        record(&results, docs, results_dir)?;
    }
    if results.crashes() > 0 {
        bail!(
            "the fuzzers found {} crash(es): fix them, and add each input to {FUZZ_DIR}/corpus/<target>/ as regression-<what>",
            results.crashes()
        );
    }
    Ok(results)
}

fn run_target(
    root: &Path,
    fuzz_dir: &Path,
    scratch: &Path,
    name: &str,
    max_len: usize,
    seconds: u64,
) -> Result<TargetRun> {
    let seeds = fuzz_dir.join("corpus").join(name);
    let corpus = scratch.join("corpus").join(name);
    let artifacts = scratch.join("artifacts").join(name);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let before = files_in(&artifacts);
    let log = scratch.join(format!("{name}.log"));
    eprintln!(
        "xtask: fuzzing {name} for {seconds} s (max_len {max_len}, rss limit {RSS_LIMIT_MB} MiB); log in {}",
        log.display()
    );
    let log_file = std::fs::File::create(&log)?;
    // The scratch corpus first: libFuzzer writes new inputs into the first folder only,
    // so the repository's corpus stays as committed.
    let status = nightly_cargo()
        .args(["fuzz", "run"])
        .args(SANITIZER)
        .arg("--fuzz-dir")
        .arg(fuzz_dir)
        .arg("--target-dir")
        .arg(scratch.join("build"))
        .arg(name)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        // Grow inputs towards max_len within the run: libFuzzer's default pace is
        // meant for runs of hours.
        .arg("-len_control=20")
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={TIMEOUT_S}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .current_dir(root)
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("running cargo fuzz run")?;
    let text = std::fs::read_to_string(&log)?;
    let mut crashes: Vec<String> = files_in(&artifacts)
        .into_iter()
        .filter(|f| !before.contains(f))
        .map(|f| f.display().to_string())
        .collect();
    crashes.sort();
    if !status.success() && crashes.is_empty() {
        bail!(
            "fuzzing {name} failed ({status}) without a crash input; see {}",
            log.display()
        );
    }
    let stats = final_stats(&text);
    let (corpus_units, corpus_bytes) = last_corpus(&text).unwrap_or_default();
    let (coverage, features) = last_coverage(&text).unwrap_or_default();
    Ok(TargetRun {
        name: name.to_owned(),
        seconds,
        max_len,
        execs: stats.get("number_of_executed_units").copied().unwrap_or(0),
        execs_per_s: stats.get("average_exec_per_sec").copied().unwrap_or(0),
        corpus_units,
        corpus_bytes,
        seed_files: files_in(&seeds).len(),
        new_units: stats.get("new_units_added").copied().unwrap_or(0),
        coverage,
        features,
        peak_rss_mb: stats.get("peak_rss_mb").copied().unwrap_or(0),
        crashes,
    })
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// libFuzzer's `stat::name: value` lines (-print_final_stats=1).
fn final_stats(log: &str) -> BTreeMap<String, u64> {
    log.lines()
        .filter_map(|line| line.strip_prefix("stat::"))
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The corpus of the last status line, `#N ... corp: 123/45Kb ...`: units and size.
fn last_corpus(log: &str) -> Option<(u64, String)> {
    log.lines()
        .rev()
        .filter(|line| line.starts_with('#'))
        .find_map(|line| {
            let rest = line.split_once(" corp: ")?.1;
            let field = rest.split_whitespace().next()?;
            let (units, bytes) = field.split_once('/')?;
            Some((units.parse().ok()?, bytes.to_owned()))
        })
}

/// The coverage of the last status line, `#N ... cov: 6061 ft: 17617 ...`.
fn last_coverage(log: &str) -> Option<(u64, u64)> {
    log.lines()
        .rev()
        .filter(|line| line.starts_with('#'))
        .find_map(|line| {
            let number = |name: &str| -> Option<u64> {
                line.split_once(name)?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            Some((number(" cov: ")?, number(" ft: ")?))
        })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn git_commit(root: &Path) -> String {
    let out = Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .current_dir(root)
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// `rustc --version` of the nightly toolchain, when it is installed.
fn nightly_version() -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The per-target table, as printed and as in fuzz.md.
fn table(r: &FuzzResults) -> String {
    let mut out = String::from(
        "| target | time | executions | exec/s | coverage (edges/features) | corpus (units/size) | seeds | new units | crashes | peak RSS |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for t in &r.targets {
        let _ = writeln!(
            out,
            "| `{}` (max_len {}) | {} s | {} | {} | {}/{} | {}/{} | {} | {} | {} | {} MiB |",
            t.name,
            t.max_len,
            t.seconds,
            t.execs,
            t.execs_per_s,
            t.coverage,
            t.features,
            t.corpus_units,
            t.corpus_bytes,
            t.seed_files,
            t.new_units,
            t.crashes.len(),
            t.peak_rss_mb
        );
    }
    out
}

/// docs/bench/fuzz.md for `r`, linking its results file.
pub fn markdown(r: &FuzzResults, results_link: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Fuzzing: the manifest loader and the core\n");
    let _ = writeln!(
        out,
        "Generated by `cargo xtask bench` (its fuzz stage, `cargo xtask fuzz`) on {} at commit `{}` from [{results_link}]({results_link}), with {} and cargo-fuzz ({}).\n",
        r.date, r.commit, r.toolchain, r.cargo_fuzz
    );
    let _ = writeln!(
        out,
        "Each target ran for the time shown, starting from the corpus kept in `lb-userspace/core/fuzz/corpus/<target>/` (the seeds column) and the scratch corpus of earlier runs on the machine. Limits: an input of at most `max_len` bytes, {} MiB of memory per process (libFuzzer's `-rss_limit_mb`; no sanitizer: safe Rust) and {} s per input (`-timeout`); going over any of them counts as a crash, as does a panic. What each target checks: `lb-userspace/core/src/fuzzing/`.\n",
        r.rss_limit_mb, r.timeout_s
    );
    out.push_str(&table(r));
    let crashes = r.crashes();
    if crashes == 0 {
        out.push_str("\nNo crashes.\n");
    } else {
        let _ = writeln!(out, "\n**{crashes} crash(es)**:\n");
        for t in &r.targets {
            for c in &t.crashes {
                let _ = writeln!(out, "- `{}`: `{c}`", t.name);
            }
        }
    }
    out
}

pub fn to_json(r: &FuzzResults) -> Value {
    json!({
        "date": r.date,
        "commit": r.commit,
        "toolchain": r.toolchain,
        "cargo_fuzz": r.cargo_fuzz,
        "rss_limit_mb": r.rss_limit_mb,
        "timeout_s": r.timeout_s,
        "targets": r.targets.iter().map(|t| json!({
            "name": t.name,
            "seconds": t.seconds,
            "max_len": t.max_len,
            "execs": t.execs,
            "execs_per_s": t.execs_per_s,
            "corpus_units": t.corpus_units,
            "corpus_bytes": t.corpus_bytes,
            "seed_files": t.seed_files,
            "new_units": t.new_units,
            "coverage": t.coverage,
            "features": t.features,
            "peak_rss_mb": t.peak_rss_mb,
            "crashes": t.crashes,
        })).collect::<Vec<_>>(),
    })
}

pub fn from_json(v: &Value) -> Result<FuzzResults> {
    let text = |v: &Value, key: &str| -> Result<String> {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("{key}: missing or not a string"))
    };
    let number = |v: &Value, key: &str| -> Result<u64> {
        v.get(key)
            .and_then(Value::as_u64)
            .with_context(|| format!("{key}: missing or not a number"))
    };
    let targets = v
        .get("targets")
        .and_then(Value::as_array)
        .context("targets: missing or not a list")?
        .iter()
        .map(|t| {
            Ok(TargetRun {
                name: text(t, "name")?,
                seconds: number(t, "seconds")?,
                max_len: usize::try_from(number(t, "max_len")?)?,
                execs: number(t, "execs")?,
                execs_per_s: number(t, "execs_per_s")?,
                corpus_units: number(t, "corpus_units")?,
                corpus_bytes: text(t, "corpus_bytes")?,
                seed_files: usize::try_from(number(t, "seed_files")?)?,
                new_units: number(t, "new_units")?,
                coverage: number(t, "coverage")?,
                features: number(t, "features")?,
                peak_rss_mb: number(t, "peak_rss_mb")?,
                crashes: t
                    .get("crashes")
                    .and_then(Value::as_array)
                    .context("crashes: missing or not a list")?
                    .iter()
                    .map(|c| {
                        c.as_str()
                            .map(str::to_owned)
                            .context("crashes: not a string")
                    })
                    .collect::<Result<_>>()?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(FuzzResults {
        date: text(v, "date")?,
        commit: text(v, "commit")?,
        toolchain: text(v, "toolchain")?,
        cargo_fuzz: text(v, "cargo_fuzz")?,
        rss_limit_mb: number(v, "rss_limit_mb")?,
        timeout_s: number(v, "timeout_s")?,
        targets,
    })
}

/// Writes `<results_dir>/fuzz/<stamp>.json` and `<docs>/fuzz.md`.
fn record(r: &FuzzResults, docs: &Path, results_dir: &Path) -> Result<()> {
    let dir = results_dir.join("fuzz");
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(docs)?;
    let file = dir.join(format!("{}.json", crate::bench::utc_stamp()));
    std::fs::write(&file, serde_json::to_vec_pretty(&to_json(r))?)?;
    let link = crate::bench::relative_link(docs, &file);
    std::fs::write(docs.join("fuzz.md"), markdown(r, &link))?;
    eprintln!(
        "xtask: fuzz results in {}, summary in {}",
        file.display(),
        docs.join("fuzz.md").display()
    );
    Ok(())
}

/// `cargo xtask fuzz --render FILE`: `<docs>/fuzz.md` from a results file.
pub fn render(file: &Path, docs: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let value =
        serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?;
    let results = from_json(&value).with_context(|| format!("reading {}", file.display()))?;
    std::fs::create_dir_all(docs)?;
    let link = crate::bench::relative_link(docs, file);
    std::fs::write(docs.join("fuzz.md"), markdown(&results, &link))?;
    eprintln!("xtask: summary in {}", docs.join("fuzz.md").display());
    Ok(())
}

/// The fuzz stage of `cargo xtask bench`: every target for `seconds`, recorded with
/// the benchmark's results.
pub fn bench_stage(root: &Path, seconds: u64, docs: &Path, results_dir: &Path) -> Result<()> {
    run(
        root,
        &Options {
            seconds,
            targets: Vec::new(),
            record: Some((docs.to_owned(), results_dir.to_owned())),
        },
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 11 corp: 5/1200b exec/s: 0 rss: 30Mb\n\
        #81610\tDONE   cov: 6061 ft: 17617 corp: 1089/26Kb lim: 38 exec/s: 674 rss: 98Mb\n\
        Done 81610 runs in 121 second(s)\nstat::number_of_executed_units: 81610\n\
        stat::average_exec_per_sec:     674\nstat::new_units_added:          1143\n\
        stat::slowest_unit_time_sec:    0\nstat::peak_rss_mb:              98\n";

    #[test]
    fn reads_libfuzzer_output() {
        let stats = final_stats(LOG);
        assert_eq!(stats["number_of_executed_units"], 81_610);
        assert_eq!(stats["peak_rss_mb"], 98);
        assert_eq!(last_corpus(LOG), Some((1089, "26Kb".to_owned())));
        assert_eq!(last_corpus("no status lines"), None);
        assert_eq!(last_coverage(LOG), Some((6061, 17_617)));
    }

    /// docs/bench/fuzz.md is what its results file renders to, and that file loads.
    #[test]
    fn committed_fuzz_summary_is_what_its_results_render_to() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let md = std::fs::read_to_string(root.join("docs/bench/fuzz.md")).unwrap();
        let link = md
            .split_once("](")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(link, _)| link)
            .expect("fuzz.md links its results file");
        let text = std::fs::read_to_string(root.join("docs/bench").join(link)).unwrap();
        let results = from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(from_json(&to_json(&results)).unwrap(), results);
        assert_eq!(markdown(&results, link), md);
        assert_eq!(results.crashes(), 0, "the recorded run found crashes");
    }
}
