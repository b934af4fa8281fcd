//! A directory of manifests as a source of [`ClusterEvent`]s: every change to the
//! directory yields one `Snapshot` of everything it holds.
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    manifests::{self, ManifestError},
    source::ClusterEvent,
};

/// Watches one directory.
pub struct ManifestSource {
    dir: PathBuf,
    node: String,
    poll_interval: Duration,
    fingerprint: Option<Fingerprint>,
    last_warnings: Vec<String>,
    /// Objects and files skipped because they are invalid (the latest load's count).
    pub invalid_objects: Arc<AtomicU64>,
}

type Fingerprint = Vec<(std::ffi::OsString, u64, SystemTime)>;

impl ManifestSource {
    pub fn new(dir: impl Into<PathBuf>, node: impl Into<String>, poll_interval: Duration) -> Self {
        Self {
            dir: dir.into(),
            node: node.into(),
            poll_interval,
            fingerprint: None,
            last_warnings: Vec::new(),
            invalid_objects: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Reads the directory once. Fails only when the directory itself is unreadable.
    pub fn load(&mut self) -> Result<ClusterEvent, ManifestError> {
        self.fingerprint = fingerprint(&self.dir);
        let set = manifests::load_dir(&self.dir)?;
        let warnings: Vec<String> = set.warnings.iter().map(ToString::to_string).collect();
        if warnings != self.last_warnings {
            for w in &warnings {
                warn!("skipped: {w}");
            }
            self.last_warnings = warnings;
        }
        self.invalid_objects.store(set.warnings.len() as u64, Ordering::Relaxed);
        let node = set.node(&self.node);
        Ok(ClusterEvent::Snapshot { services: set.services, slices: set.slices, node })
    }

    /// Polls the directory and sends a snapshot after each change, until the
    /// receiver is gone. A directory that vanishes or becomes unreadable keeps the
    /// last state served (nothing is sent).
    pub async fn run(mut self, events: mpsc::Sender<ClusterEvent>) {
        let mut ticker = tokio::time::interval(self.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = fingerprint(&self.dir);
            if now == self.fingerprint {
                continue;
            }
            // Let writers finish: re-read only once the directory is quiet.
            tokio::time::sleep(self.poll_interval / 2).await;
            if fingerprint(&self.dir) != now {
                continue;
            }
            match self.load() {
                Ok(event) => {
                    debug!(dir = %self.dir.display(), "manifests changed");
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                Err(e) => warn!(error = %e, "keeping the current data path"),
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Names, sizes and modification times of the directory's entries.
fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    let mut entries: Fingerprint = std::fs::read_dir(dir)
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
