//! The chaos stage of `cargo xtask bench`, and `cargo xtask chaos` on its own: runs
//! `socklb-bench chaos` (the agent SIGKILLed at random points of its syncs, cycle
//! after cycle, under clients and churn: `socklb_tests::chaos`) on each data path,
//! reads its `ChaosResults` back and renders them in the summary.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use socklb_bench_results::{ChaosResults, Results};

/// Cycles per data path of the chaos stage of a full `cargo xtask bench`, and of a
/// quick one.
pub const CYCLES: usize = 100;
pub const QUICK_CYCLES: usize = 20;
/// The data paths, as socklb-bench names them.
pub const DATAPATHS: [&str; 2] = ["socket-hooks", "node-port"];

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub cycles: usize,
    pub seed: Option<u64>,
    /// Services per bulk file (socklb-bench's default when None).
    pub bulk_services: Option<usize>,
    /// Data paths (every one of [`DATAPATHS`] when empty).
    pub datapaths: Vec<String>,
}

/// `cargo xtask chaos`: builds the release binaries, runs the stage, keeps the results
/// in target/bench/ and fails unless every run was clean.
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
    let scratch = root.join("target/bench");
    let runs = stage(root, opts, &scratch, &super::utc_stamp())?;
    let dirty: Vec<String> = runs
        .iter()
        .filter(|r| !r.clean())
        .map(|r| format!("{} (seed {})", r.datapath, r.seed))
        .collect();
    if !dirty.is_empty() {
        bail!("the chaos run found problems (above): {}", dirty.join(", "));
    }
    Ok(())
}

/// Runs `socklb-bench chaos` (release) on each data path into
/// `scratch/chaos-<datapath>-<stamp>.json` and reads the results back.
pub fn stage(
    root: &Path,
    opts: &Options,
    scratch: &Path,
    stamp: &str,
) -> Result<Vec<ChaosResults>> {
    std::fs::create_dir_all(scratch)?;
    let datapaths: Vec<String> = if opts.datapaths.is_empty() {
        DATAPATHS.iter().map(|d| d.to_string()).collect()
    } else {
        opts.datapaths.clone()
    };
    let bench_bin = root.join("target/release/socklb-bench");
    let mut runs = Vec::new();
    for datapath in datapaths {
        let out = scratch.join(format!("chaos-{datapath}-{stamp}.json"));
        let mut cmd = Command::new(&bench_bin);
        cmd.arg("chaos")
            .arg("--datapath")
            .arg(&datapath)
            .arg("--cycles")
            .arg(opts.cycles.to_string())
            .arg("--out")
            .arg(&out);
        if let Some(seed) = opts.seed {
            cmd.arg("--seed").arg(seed.to_string());
        }
        if let Some(n) = opts.bulk_services {
            cmd.arg("--bulk-services").arg(n.to_string());
        }
        cmd.env("SOCKLB_BIN", root.join("target/release/socklb"))
            .current_dir(root);
        eprintln!(
            "xtask: {} chaos --datapath {datapath} --cycles {} (progress below)",
            bench_bin.display(),
            opts.cycles
        );
        let status = super::with_sigint_ignored(|| cmd.status()).context("running socklb-bench")?;
        if !status.success() {
            bail!("socklb-bench chaos --datapath {datapath} failed ({status})");
        }
        let text =
            std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        let r: ChaosResults =
            serde_json::from_str(&text).with_context(|| format!("reading {}", out.display()))?;
        eprintln!("xtask: chaos results in {}", out.display());
        runs.push(r);
    }
    Ok(runs)
}

/// The summary's section (empty when the run had no chaos stage).
pub fn section(r: &Results) -> String {
    if r.chaos.is_empty() {
        return String::new();
    }
    let mut m = String::new();
    let _ = writeln!(
        m,
        "## Chaos: the agent killed with SIGKILL at random points of its syncs\n\n\
         `socklb-bench chaos` (`tests/src/chaos/`; its short run is the test `tests/tests/chaos.rs`): \
         a TCP and a UDP client use two services whose backends stay ready (one endpoint of each comes and \
         goes, its pod serving throughout) while files of bulk services are added, rewritten with new \
         endpoints and removed, a session-affinity service changes its endpoints and a service without \
         endpoints comes and goes. The very first start is killed; then every cycle writes one to three \
         changes, kills the agent with SIGKILL (three times in four at a random point of the sync the \
         change starts, else anywhere after the write; in some cycles the next agent too, during its \
         start), reads back what the killed agent left to judge where the kill landed, restarts the agent \
         and, once it is ready, compares `socklb status -o json` with `socklb plan -o json` entry by entry \
         and the raw entry counts of the service, backend and affinity match maps with what the plan needs, \
         and checks the pin directory and the cgroup's attached programs. `socket-hooks`: cluster IPs, \
         clients on the node in its cgroup; `node-port`: NodePorts through the TC programs, clients outside \
         the node.\n"
    );
    for c in &r.chaos {
        let _ = writeln!(
            m,
            "### {}: {}\n",
            c.datapath,
            if c.clean() {
                "clean (no failed connection or datagram, no divergence from the plan, no leaked pin or \
                 link, nothing left after uninstall)"
            } else {
                "findings (listed below)"
            }
        );
        for line in c.lines() {
            let _ = writeln!(m, "- {line}");
        }
        let _ = writeln!(
            m,
            "\nRepeat: `cargo xtask chaos --datapath {} --cycles {} --seed {}` (the same changes and \
             delays; where a kill lands also depends on timing).\n",
            c.datapath, c.cycles, c.seed
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_with_chaos_renders_its_section_and_one_without_renders_none() {
        let mut r = Results::default();
        assert_eq!(section(&r), "");
        r.chaos.push(ChaosResults {
            datapath: "socket-hooks".into(),
            seed: 7,
            cycles: 3,
            ..Default::default()
        });
        let s = section(&r);
        assert!(s.contains("### socket-hooks: clean"), "{s}");
        assert!(s.contains("--seed 7"), "{s}");
        r.chaos[0].divergences.push("cycle 1: extra entry".into());
        assert!(section(&r).contains("findings"));
        let back: Results = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.chaos, r.chaos);
    }
}
