//! Temporary directories: logs and the manifests the agent watches.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::names;
use crate::pins::remove_tree;

/// A directory under the system temp dir, removed on Drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/socklb-test-<pid>-<n>-<label>`.
    pub fn new(label: &str) -> Result<TempDir> {
        let base = std::env::temp_dir();
        for _ in 0..32 {
            let path = base.join(format!("{}-{label}", names::dir_name()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
        bail!("no free temp directory name under {}", base.display())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            eprintln!(
                "socklb-tests: could not remove {}: {e}",
                self.path.display()
            );
        }
    }
}

/// A manifests directory for `socklb agent --manifests`, in a temp dir of its own.
///
/// The agent re-reads the directory within a second of a change. Writes are atomic
/// (written to a hidden `.name.tmp` file, then renamed), so the agent never reads half a
/// file.
#[derive(Debug)]
pub struct ManifestDir {
    dir: TempDir,
}

impl ManifestDir {
    /// An empty manifests directory.
    pub fn new() -> Result<ManifestDir> {
        Ok(ManifestDir {
            dir: TempDir::new("manifests")?,
        })
    }

    /// A copy of the regular files of `src` (e.g. `examples/demo`).
    pub fn copy_from(src: &Path) -> Result<ManifestDir> {
        let md = ManifestDir::new()?;
        let rd =
            std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))?;
        for entry in rd {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), md.path().join(entry.file_name()))
                    .with_context(|| format!("cannot copy {}", entry.path().display()))?;
            }
        }
        Ok(md)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("bad manifest file name {name:?}");
        }
        Ok(self.path().join(name))
    }

    /// Writes (creates or replaces) `name` atomically.
    pub fn write(&self, name: &str, contents: &str) -> Result<()> {
        let dest = self.file(name)?;
        let tmp = self.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("cannot rename to {}", dest.display()))
    }

    /// Reads `name`.
    pub fn read(&self, name: &str) -> Result<String> {
        let p = self.file(name)?;
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    }

    /// Removes `name` (no error when it does not exist).
    pub fn remove(&self, name: &str) -> Result<()> {
        match std::fs::remove_file(self.file(name)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The file names in the directory (sorted, hidden files excluded).
    pub fn files(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.path())? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                v.push(name);
            }
        }
        v.sort();
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn manifest_dir_round_trip_and_cleanup() {
        let src = TempDir::new("src").unwrap();
        std::fs::write(src.path().join("a.yaml"), "kind: Service\n").unwrap();
        let md = ManifestDir::copy_from(src.path()).unwrap();
        assert_eq!(md.files().unwrap(), vec!["a.yaml"]);
        md.write("b.yaml", "x: 1\n").unwrap();
        md.write("b.yaml", "x: 2\n").unwrap();
        assert_eq!(md.read("b.yaml").unwrap(), "x: 2\n");
        md.remove("a.yaml").unwrap();
        md.remove("a.yaml").unwrap();
        assert_eq!(md.files().unwrap(), vec!["b.yaml"]);
        assert!(md.write("../x", "").is_err());
        let path = md.path().to_path_buf();
        drop(md);
        assert!(!path.exists());
    }
}
