//! `socklb-bench differential`: the long differential run (`socklb_tests::differential`,
//! whose short run is tests/tests/differential.rs): random Services, EndpointSlices
//! and policies programmed through the agent, every frontend probed through the
//! socket hooks and the TC ingress program and judged against `socklb plan`. Prints
//! the figures and writes them as `socklb_bench_results::DifferentialResults`.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use socklb_tests::check_privileges;
use socklb_tests::differential::{self, DiffOptions};

use super::util;

/// What to run.
#[derive(clap::Args, Debug)]
pub struct DifferentialArgs {
    /// Cases (Service versions written and probed) at least.
    #[arg(long, default_value_t = 10_000)]
    pub cases: usize,
    /// The seed of every random choice (default: SOCKLB_DIFF_SEED, else the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Service slots (Services present at once, at most).
    #[arg(long, default_value_t = 300)]
    pub slots: usize,
    /// The JSON results file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &DifferentialArgs) -> Result<()> {
    check_privileges().map_err(|why| anyhow!("socklb-bench differential needs: {why}"))?;
    util::install_signal_handlers()?;
    let mut opts = DiffOptions::new(a.seed.unwrap_or_else(differential::seed_from_env), a.cases);
    opts.generator.slots = a.slots;
    opts.interrupted = util::interrupted;
    let results = differential::run(&opts)?;
    std::fs::write(&a.out, serde_json::to_vec_pretty(&results)?)?;
    for line in results.lines() {
        eprintln!("socklb-bench differential: {line}");
    }
    Ok(())
}
