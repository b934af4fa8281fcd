//! The differential stage of `cargo xtask bench`, and `cargo xtask differential` on
//! its own: runs `socklb-bench differential` (random Services, EndpointSlices and
//! policies programmed through the agent, every frontend probed through the socket
//! hooks and the TC ingress program and judged against `socklb plan`:
//! `socklb_tests::differential`), reads its `DifferentialResults` back and renders
//! them in the summary.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use socklb_bench_results::{DifferentialResults, Results};

/// Cases of the differential stage of a full `cargo xtask bench`, and of a quick one.
pub const CASES: usize = 10_000;
pub const QUICK_CASES: usize = 2_000;
/// Service slots (Services present at once).
pub const SLOTS: usize = 300;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub cases: usize,
    pub seed: Option<u64>,
    pub slots: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cases: CASES,
            seed: None,
            slots: SLOTS,
        }
    }
}

/// `cargo xtask differential`: builds the release binaries, runs the stage, keeps the
/// results in target/bench/ and fails unless the run was clean.
pub fn run(root: &Path, opts: &Options) -> Result<()> {
    crate::setup::ensure()?;
    crate::cargo(
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
    let r = stage(root, opts, &root.join("target/bench"), &super::utc_stamp())?;
    if !r.clean() {
        bail!(
            "the differential run found {} divergences (seed {}, above)",
            r.divergences_total,
            r.seed
        );
    }
    Ok(())
}

/// Runs `socklb-bench differential` (release) into
/// `scratch/differential-<stamp>.json` and reads the results back.
pub fn stage(
    root: &Path,
    opts: &Options,
    scratch: &Path,
    stamp: &str,
) -> Result<DifferentialResults> {
    std::fs::create_dir_all(scratch)?;
    let bench_bin = root.join("target/release/socklb-bench");
    let out = scratch.join(format!("differential-{stamp}.json"));
    let mut cmd = Command::new(&bench_bin);
    cmd.arg("differential")
        .arg("--cases")
        .arg(opts.cases.to_string())
        .arg("--slots")
        .arg(opts.slots.to_string())
        .arg("--out")
        .arg(&out);
    if let Some(seed) = opts.seed {
        cmd.arg("--seed").arg(seed.to_string());
    }
    cmd.env("SOCKLB_BIN", root.join("target/release/socklb"))
        .env(
            "SOCKLB_DIFFPROBE_BIN",
            root.join("target/release/socklb-diffprobe"),
        )
        .current_dir(root);
    eprintln!(
        "xtask: {} differential --cases {} --slots {} (progress below)",
        bench_bin.display(),
        opts.cases,
        opts.slots
    );
    let status = super::with_sigint_ignored(|| cmd.status()).context("running socklb-bench")?;
    if !status.success() {
        bail!("socklb-bench differential failed ({status})");
    }
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let r: DifferentialResults =
        serde_json::from_str(&text).with_context(|| format!("reading {}", out.display()))?;
    eprintln!("xtask: differential results in {}", out.display());
    Ok(r)
}

/// The summary's section (empty when the run had no differential stage).
pub fn section(r: &Results) -> String {
    let Some(d) = &r.differential else {
        return String::new();
    };
    let mut m = String::new();
    let _ = writeln!(
        m,
        "## Differential: the kernel against the plan\n\n\
         `socklb-bench differential` (`tests/src/differential/`; its short run is the test \
         `tests/tests/differential.rs`): random Services (ClusterIP, NodePort, LoadBalancer, external IPs, \
         TCP and UDP ports, traffic policies, source ranges, session affinity) and EndpointSlices (ready, \
         serving, terminating, on this node or others, zones and hints), rewritten round after round, \
         programmed through the agent; once the maps hold what `socklb plan` wants, every frontend is probed \
         from the node through the socket hooks (fresh sockets; a reflector names the backend reached) and \
         from outside through the agent's TC ingress program (BPF_PROG_TEST_RUN, allowed and disallowed \
         sources), and every backend choice, refusal, drop and answer is judged against the plan: {}.\n",
        if d.clean() {
            "no divergence"
        } else {
            "divergences (listed below)"
        }
    );
    for line in d.lines() {
        let _ = writeln!(m, "- {line}");
    }
    let _ = writeln!(
        m,
        "\nRepeat: `cargo xtask differential --cases {} --slots {} --seed {}`.\n",
        d.cases, d.slots, d.seed
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_with_the_stage_renders_its_section_and_one_without_renders_none() {
        let mut r = Results::default();
        assert_eq!(section(&r), "");
        r.differential = Some(DifferentialResults {
            seed: 9,
            cases: 10,
            slots: 5,
            ..Default::default()
        });
        let s = section(&r);
        assert!(s.contains("no divergence"), "{s}");
        assert!(s.contains("--seed 9"), "{s}");
        if let Some(d) = &mut r.differential {
            d.divergences_total = 1;
        }
        assert!(section(&r).contains("divergences (listed below)"));
    }
}
