//! A cgroup v2 guard: the only place socket hooks get attached in tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::names;
use crate::privileges::cgroup2_root;
use crate::wait::wait_until;

/// How long Drop waits for the cgroup's processes to have left before rmdir.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A cgroup `<cgroup2 root>/socklb-test-<pid>-<n>`, removed on Drop.
///
/// Drop kills nothing: the processes in it are the sandbox's own children, which their
/// own [`crate::Child`] guards end first. It waits for them to have left, then removes the
/// directory (BPF programs attached to it are released with it).
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates a new cgroup under the cgroup v2 root.
    pub fn new() -> Result<TestCgroup> {
        let root = cgroup2_root()?;
        Self::new_in(&root)
    }

    /// Creates a new cgroup under `parent` (a cgroup v2 directory).
    pub fn new_in(parent: &Path) -> Result<TestCgroup> {
        let mut last = None;
        for _ in 0..32 {
            let path = parent.join(names::dir_name());
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TestCgroup { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot create cgroup {}", path.display()));
                }
            }
        }
        Err(anyhow::anyhow!(
            "no free cgroup name under {}: {last:?}",
            parent.display()
        ))
    }

    /// The cgroup directory (what `socklb agent --cgroup` takes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pids currently in the cgroup.
    pub fn procs(&self) -> Vec<u32> {
        read_procs(&self.path)
    }

    /// Whether the directory still exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }
}

fn read_procs(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        if !wait_until(DRAIN_TIMEOUT, || read_procs(&self.path).is_empty()) {
            eprintln!(
                "socklb-tests: cgroup {} still has processes {:?} after {DRAIN_TIMEOUT:?}; \
                 not killing what the sandbox did not start",
                self.path.display(),
                read_procs(&self.path)
            );
        }
        // rmdir can briefly fail with EBUSY while exited tasks are being released.
        let mut last = None;
        let removed = wait_until(Duration::from_secs(2), || {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => {
                    last = Some(e);
                    false
                }
            }
        });
        if !removed {
            eprintln!(
                "socklb-tests: could not remove cgroup {}: {last:?}",
                self.path.display()
            );
        }
    }
}
