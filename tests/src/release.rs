//! Earlier releases of socklb, built from their git commit for the upgrade tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::child::{Child, SpawnOpts};
use crate::container::workspace_root;
use crate::pins::remove_tree;

/// A release: its tag and the commit the tag points at (recorded here too, so that a
/// clone without tags still finds it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    pub tag: &'static str,
    pub commit: &'static str,
}

/// The release before the current one: 0.1.0, with `lb_stats_v2` and without the
/// session-affinity, agent-status and reject-budget maps (CHANGELOG.md).
pub const PREVIOUS: Release = Release {
    tag: "v0.1.0",
    commit: "33f809d6c696bb2c5419b5bf69fd1c466ec803d2",
};

/// How long building a release may take (a full debug build on 2 shared cores).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

fn git(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Release {
    /// Its `socklb` binary, built once and cached in `target/upgrade/<tag>-<commit>/`.
    ///
    /// The build: `git archive` of the commit (a plain tree; the repository's work
    /// trees are not touched) into that directory, then `cargo build --locked -p
    /// socklb` there with a target directory of its own and no debug info (faster;
    /// the eBPF object is built as always). The sources and the build directory are
    /// removed afterwards, only the binary stays. When the tag exists it must point at
    /// the recorded commit.
    pub fn socklb_bin(&self) -> Result<PathBuf> {
        static BUILD: Mutex<()> = Mutex::new(());
        let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        let root = workspace_root();
        if let Ok(tagged) = git(&root, &["rev-parse", &format!("{}^{{commit}}", self.tag)])
            && tagged != self.commit
        {
            bail!(
                "tag {} is {tagged}, but the tests record {} for it",
                self.tag,
                self.commit
            );
        }
        let dir = root
            .join("target/upgrade")
            .join(format!("{}-{}", self.tag, &self.commit[..7]));
        let bin = dir.join("socklb");
        if bin.is_file() {
            return Ok(bin);
        }
        git(
            &root,
            &["cat-file", "-e", &format!("{}^{{commit}}", self.commit)],
        )
        .with_context(|| format!("commit {} ({}) is not in this clone", self.commit, self.tag))?;
        let src = dir.join("src");
        let build = dir.join("target");
        for d in [&src, &build] {
            remove_tree(d).with_context(|| format!("removing {}", d.display()))?;
        }
        std::fs::create_dir_all(&src)?;
        let archive = Command::new("sh")
            .arg("-c")
            .arg("git -C \"$1\" archive --format=tar \"$2\" | tar -x -C \"$3\"")
            .arg("sh")
            .arg(&root)
            .arg(self.commit)
            .arg(&src)
            .output()
            .context("git archive | tar")?;
        if !archive.status.success() {
            bail!(
                "git archive {}: {}",
                self.commit,
                String::from_utf8_lossy(&archive.stderr)
            );
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--locked",
            "--package",
            "socklb",
            "--bin",
            "socklb",
        ])
        .arg("--target-dir")
        .arg(&build)
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .current_dir(&src);
        eprintln!(
            "socklb-tests: building socklb {} ({}) in {} (once; cached)",
            self.tag,
            &self.commit[..7],
            dir.display()
        );
        let started = std::time::Instant::now();
        let out = Child::output(cmd, &SpawnOpts::new(), BUILD_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "building socklb {} failed ({}):\n{}",
                self.tag,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!(
            "socklb-tests: built socklb {} in {:.0?}",
            self.tag,
            started.elapsed()
        );
        std::fs::copy(build.join("debug/socklb"), &bin)
            .with_context(|| format!("copying the binary to {}", bin.display()))?;
        for d in [&src, &build] {
            let _ = remove_tree(d);
        }
        Ok(bin)
    }
}
