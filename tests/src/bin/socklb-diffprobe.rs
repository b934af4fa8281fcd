//! socklb-diffprobe: the two ends of the differential run's socket probes
//! (`socklb_tests::differential::sock`), run inside the run's node namespace.
//!
//! - `reflect --ports P,P,...`: TCP and UDP on each port of 0.0.0.0; every
//!   connection and datagram is answered with the local address it reached
//!   ("ip:port"). Prints "ready" once every port is bound; runs until killed.
//! - `probe --requests FILE [--parallel N]`: FILE holds a JSON list of
//!   {to, protocol, n}; each gets n fresh sockets (TCP connect and read, or UDP
//!   connect, send and receive); prints a JSON list of the outcomes per request
//!   (the backend address that answered, or an errno name).
//!
//! The prober refuses to run in the host's network namespace or one with a default
//! route: a connect the hooks leave alone must have nowhere to go.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use socklb_tests::differential::sock::{self, ProbeRequest};

#[derive(Parser, Debug)]
#[command(
    name = "socklb-diffprobe",
    about = "The differential run's reflector and prober",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Answer every connection and datagram with the local address it reached.
    Reflect {
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
    },
    /// Probe the targets of a requests file.
    Probe {
        #[arg(long)]
        requests: PathBuf,
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
}

fn ensure_isolated() -> Result<()> {
    let own = std::fs::metadata("/proc/self/ns/net").context("stat /proc/self/ns/net")?;
    // init's, or (when a supervisor is pid 1 and undumpable) kthreadd's, whose kernel
    // threads always live in the initial namespace.
    let host = std::fs::metadata("/proc/1/ns/net")
        .ok()
        .or_else(|| {
            let comm = std::fs::read_to_string("/proc/2/comm").ok()?;
            (comm.trim() == "kthreadd")
                .then(|| std::fs::metadata("/proc/2/ns/net").ok())
                .flatten()
        })
        .context("cannot stat the host's network namespace; refusing")?;
    if own.ino() == host.ino() && own.dev() == host.dev() {
        bail!("refusing to probe from the host network namespace");
    }
    let routes = std::fs::read_to_string("/proc/net/route").context("/proc/net/route")?;
    let default = routes.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000"
    });
    if default {
        bail!("refusing to probe: this network namespace has a default route");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Reflect { ports } => sock::reflect(&ports, || println!("ready")),
        Cmd::Probe { requests, parallel } => (|| {
            ensure_isolated()?;
            let text = std::fs::read(&requests)
                .with_context(|| format!("reading {}", requests.display()))?;
            let reqs: Vec<ProbeRequest> = serde_json::from_slice(&text)?;
            let out = sock::probe_all(&reqs, parallel);
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        })(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socklb-diffprobe: {e:#}");
            ExitCode::FAILURE
        }
    }
}
