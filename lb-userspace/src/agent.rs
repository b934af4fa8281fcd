//! The agent in manifest mode: a directory of Service, EndpointSlice and Node
//! manifests is the source of truth; the data path follows every change to it.
use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tracing::{info, warn};

use crate::{
    datapath::{DatapathError, DesiredState, ServiceMaps, diff::Capacity, kernel},
    manifests,
    plan::{self, Plan},
    reconcile::Reconciler,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("manifest directory {path}: {message}")]
    Manifests { path: PathBuf, message: String },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

#[derive(Clone, Debug)]
pub struct ManifestAgentOptions {
    pub manifests: PathBuf,
    pub node: String,
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    /// How often the directory is checked for changes.
    pub poll_interval: Duration,
}

/// Reads the directory and computes the plan; logs what was skipped.
pub fn plan_from_dir(dir: &Path, node: &str) -> Result<(Plan, Vec<String>), AgentError> {
    let set = manifests::load_dir(dir)
        .map_err(|e| AgentError::Manifests { path: dir.to_path_buf(), message: e.to_string() })?;
    let node_model = set.node(node);
    let plan = plan::compute_plan(&set.services, &set.slices, &node_model);
    let warnings = set.warnings.iter().map(|w| w.to_string()).collect();
    Ok((plan, warnings))
}

/// The desired map state for a plan; conflicts are logged.
pub fn desired_from_plan(plan: &Plan) -> DesiredState {
    let (desired, conflicts) = DesiredState::from_frontends(&plan.frontends);
    for c in conflicts {
        warn!(conflict = %c, "two services claim one frontend");
    }
    desired
}

/// Runs until `shutdown` resolves. The data path stays in place afterwards.
pub async fn run_manifest_agent(
    opts: ManifestAgentOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    // Read the manifests first: an unreadable directory fails before anything
    // in the kernel is touched.
    let (plan, warnings) = plan_from_dir(&opts.manifests, &opts.node)?;
    let maps = kernel::install(&opts.pin_dir, &opts.cgroup)?;
    info!(cgroup = %opts.cgroup.display(), pin_dir = %opts.pin_dir.display(), "socket hooks attached");
    let mut reconciler = Reconciler::adopt(maps, Capacity::default())?;
    let mut last_warnings = Vec::new();
    apply_plan(&mut reconciler, &plan, warnings, &mut last_warnings);
    info!(frontends = plan.frontends.len(), "ready");

    tokio::pin!(shutdown);
    let mut fingerprint = dir_fingerprint(&opts.manifests);
    let mut ticker = tokio::time::interval(opts.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_pending = false;
    loop {
        tokio::select! {
            () = &mut shutdown => {
                info!("shutting down; the data path stays in place");
                return Ok(());
            }
            _ = ticker.tick() => {}
        }
        let now = dir_fingerprint(&opts.manifests);
        if now == fingerprint && !retry_pending {
            continue;
        }
        // Wait for writers to finish: re-read only once the directory is quiet.
        tokio::time::sleep(opts.poll_interval / 2).await;
        let settled = dir_fingerprint(&opts.manifests);
        if settled != now {
            continue;
        }
        fingerprint = settled;
        match plan_from_dir(&opts.manifests, &opts.node) {
            Ok((plan, warnings)) => {
                retry_pending = !apply_plan(&mut reconciler, &plan, warnings, &mut last_warnings);
            }
            // The directory vanished or became unreadable: keep serving what we have.
            Err(e) => warn!(error = %e, "keeping the current data path"),
        }
    }
}

/// Returns false when the maps could not be updated (retried on the next tick).
fn apply_plan<M: ServiceMaps>(
    reconciler: &mut Reconciler<M>,
    plan: &Plan,
    warnings: Vec<String>,
    last_warnings: &mut Vec<String>,
) -> bool {
    if warnings != *last_warnings {
        for w in &warnings {
            warn!("skipped: {w}");
        }
        *last_warnings = warnings;
    }
    let desired = desired_from_plan(plan);
    match reconciler.sync(&desired) {
        Ok(stats) => {
            if stats.ops > 0 {
                info!(
                    frontends = plan.frontends.len(),
                    changed = stats.frontends_changed,
                    map_ops = stats.ops,
                    "data path updated"
                );
            }
            true
        }
        Err(e) => {
            warn!(error = %e, "data path update failed; retrying");
            false
        }
    }
}

/// Names, sizes and modification times of the directory's entries.
fn dir_fingerprint(dir: &Path) -> Option<Vec<(std::ffi::OsString, u64, SystemTime)>> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.file_name(), meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
        })
        .collect();
    entries.sort();
    Some(entries)
}
