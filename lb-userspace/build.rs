//! Builds the kernel programs (lb-ebpf) for the bpf target with the nightly toolchain
//! and bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`; and
//! records the git commit the binary is built from (`socklb version`).
use std::{path::Path, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    git_commit(Path::new(&manifest_dir));
    let ebpf_dir = Path::new(&manifest_dir).join("../lb-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {ebpf_dir:?}"))?;
    aya_build::build_ebpf(
        [Package {
            name: "lb-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
    .context(
        "building the eBPF programs failed: run `cargo xtask setup` (needs the nightly \
              toolchain with rust-src and bpf-linker)",
    )
}

/// Sets `SOCKLB_GIT_COMMIT` for the build: `$SOCKLB_GIT_COMMIT` when given (a build
/// without `.git`, e.g. `docker build`, whose context leaves `.git` out, passes it as a
/// build argument), else `git rev-parse HEAD` of the workspace's own repository, else
/// "unknown" (a tarball, or no git). Reruns only when HEAD or the branch it names
/// moves, not on every edit, so a modified work tree reports the commit it started
/// from.
fn git_commit(manifest_dir: &Path) {
    println!("cargo:rerun-if-env-changed=SOCKLB_GIT_COMMIT");
    let given = std::env::var("SOCKLB_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = given.or_else(|| {
        // Only this workspace's own repository: a tarball unpacked inside some other
        // git work tree must not report that tree's commit.
        let top = git(manifest_dir, &["rev-parse", "--show-toplevel"])?;
        let workspace = manifest_dir.parent()?.canonicalize().ok()?;
        if Path::new(&top).canonicalize().ok()? != workspace {
            return None;
        }
        let head = git(manifest_dir, &["rev-parse", "--verify", "HEAD"])?;
        // HEAD, the branch it is on (none when detached), and packed refs.
        let branch = git(manifest_dir, &["rev-parse", "--symbolic-full-name", "HEAD"])
            .filter(|b| b.starts_with("refs/"));
        for what in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
            // A watched path that does not exist would rerun this on every build.
            if let Some(path) = git(manifest_dir, &["rev-parse", "--git-path", what])
                .map(|p| manifest_dir.join(p))
                .filter(|p| p.exists())
            {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        Some(head)
    });
    let commit = commit.unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SOCKLB_GIT_COMMIT={}", commit.trim());
}

/// The trimmed stdout of `git ARGS` run in `dir`, or None when git fails or is missing.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
