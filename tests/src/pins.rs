//! A bpffs directory of the test's own, for the agent's pins.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::names;
use crate::privileges::{BPFFS, is_mount_of_type};

/// A directory `/sys/fs/bpf/socklb-test-<pid>-<n>`; Drop removes what is pinned in it
/// (the agent's `uninstall` should already have; unpinning only drops a reference) and
/// the directory.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// Creates a new directory under /sys/fs/bpf (which must be a bpffs mount: see
    /// [`crate::require_privileges`]).
    pub fn new() -> Result<PinDir> {
        let base = Path::new(BPFFS);
        if !is_mount_of_type(base, "bpf") {
            bail!("{BPFFS} is not a bpffs mount (call require_privileges() first)");
        }
        Self::new_in(base)
    }

    /// Creates a new directory under `base` (any directory; bpffs for real pins).
    pub fn new_in(base: &Path) -> Result<PinDir> {
        for _ in 0..32 {
            let path = base.join(names::dir_name());
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(PinDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
        bail!("no free pin directory name under {}", base.display())
    }

    /// The directory (what `socklb agent --bpffs` takes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A pin inside the directory, e.g. `pin("lb4_svc_v1")`.
    pub fn pin(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Names of the entries in the directory (sorted).
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.path)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Whether the directory still exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }
}

/// Removes a directory tree entry by entry (pins are unlinked, directories rmdir'ed).
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            remove_tree(&entry?.path())?;
        }
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            eprintln!(
                "socklb-tests: could not remove pin directory {}: {e}",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn removes_nested_entries() {
        let base = std::env::temp_dir();
        let dir = PinDir::new_in(&base).unwrap();
        let path = dir.path().to_path_buf();
        std::fs::create_dir(path.join("links")).unwrap();
        std::fs::write(path.join("links/a"), b"x").unwrap();
        std::fs::write(dir.pin("lb4_svc_v1"), b"x").unwrap();
        assert_eq!(
            dir.entries(),
            vec!["lb4_svc_v1".to_string(), "links".to_string()]
        );
        drop(dir);
        assert!(!path.exists());
    }
}
