//! `socklb-bench chaos`: the long chaos run (`socklb_tests::chaos`, whose short run is
//! tests/tests/chaos.rs): the agent killed with SIGKILL at random points of its syncs,
//! cycle after cycle, under clients and churn. Prints the figures and writes them as
//! `socklb_bench_results::ChaosResults`.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use socklb_tests::chaos::{self, ChaosOptions, DataPath};
use socklb_tests::check_privileges;

use super::util;

/// What to run.
#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// Cycles: changes written, a SIGKILL, a restart, the checks.
    #[arg(long, default_value_t = 100)]
    pub cycles: usize,
    /// The seed of every random choice (default: SOCKLB_CHAOS_SEED, else the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Files of bulk services (added, rewritten, removed).
    #[arg(long = "bulk-files", default_value_t = 4)]
    pub bulk_files: usize,
    /// Services per bulk file.
    #[arg(long = "bulk-services", default_value_t = 2500)]
    pub bulk_services: usize,
    /// Endpoints per bulk service.
    #[arg(long = "bulk-endpoints", default_value_t = 4)]
    pub bulk_endpoints: usize,
    /// The data path: `socket-hooks` (cluster IPs, clients on the node) or
    /// `node-port` (the TC programs, clients outside the node).
    #[arg(long, default_value = "socket-hooks", value_parser = ["socket-hooks", "node-port"])]
    pub datapath: String,
    /// The JSON results file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &ChaosArgs) -> Result<()> {
    check_privileges().map_err(|why| anyhow!("socklb-bench chaos needs: {why}"))?;
    util::install_signal_handlers()?;
    let mut opts = ChaosOptions::new(a.seed.unwrap_or_else(chaos::seed_from_env), a.cycles);
    opts.bulk_files = a.bulk_files;
    opts.bulk_services_per_file = a.bulk_services;
    opts.endpoints_per_bulk_service = a.bulk_endpoints;
    opts.interrupted = util::interrupted;
    opts.datapath = match a.datapath.as_str() {
        "node-port" => DataPath::NodePort,
        _ => DataPath::SocketHooks,
    };
    let results = chaos::run(&opts)?;
    std::fs::write(&a.out, serde_json::to_vec_pretty(&results)?)?;
    for line in results.lines() {
        eprintln!("socklb-bench chaos: {line}");
    }
    Ok(())
}
