//! `cargo xtask image`: the socklb OCI image, built on this machine without pulling
//! anything from a registry.
//!
//! The image is `FROM scratch`: the `socklb` binary (its eBPF programs are embedded)
//! and the shared libraries it links (glibc's loader, libc, libm, libgcc_s, found with
//! `ldd`), copied from this Debian 12 system with their packages' copyright files.
//! There is no shell: the DaemonSet's init container runs `socklb mount-bpffs`.
//!
//! The same tree comes out of manifests/Dockerfile, for users with a registry: its
//! builder stage (Debian 12 too) runs `cargo xtask image --rootfs-only /rootfs`, i.e.
//! [`assemble_rootfs`], and its runtime stage is `FROM scratch` plus that tree.
//! Everything else the runtime stage says (ENTRYPOINT, CMD, LABEL, ...) is read from
//! the Dockerfile here and applied with `podman import --change`, and an instruction
//! this does not know fails the build, so the two cannot drift apart unnoticed.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cargo;

/// The image's name when no `--tag` is given: `localhost/socklb:<version>`.
pub fn default_tag() -> String {
    format!("localhost/socklb:{}", env!("CARGO_PKG_VERSION"))
}

/// Where the binary goes in the image (the Dockerfile's ENTRYPOINT names it).
pub const BINARY_IN_IMAGE: &str = "usr/local/bin/socklb";

/// What the builder stage of manifests/Dockerfile must run, and its runtime stage copy.
const DOCKERFILE_ROOTFS: &str = "/rootfs";

#[derive(Debug)]
pub struct Options {
    /// Package this binary instead of building `cargo build --release -p socklb`.
    pub socklb: Option<PathBuf>,
    /// The image name.
    pub tag: Option<String>,
    /// Only assemble the runtime tree in this directory (the Dockerfile's builder).
    pub rootfs_only: Option<PathBuf>,
    /// Do not write the docker-archive under target/image/.
    pub no_archive: bool,
}

pub fn run(root: &Path, opts: Options) -> Result<()> {
    let dockerfile = root.join("manifests/Dockerfile");
    let text = fs::read_to_string(&dockerfile)
        .with_context(|| format!("reading {}", dockerfile.display()))?;
    let stage = runtime_stage(&text).with_context(|| format!("in {}", dockerfile.display()))?;

    if let Some(dir) = &opts.rootfs_only {
        let socklb = match &opts.socklb {
            Some(p) => p.clone(),
            None => bail!("--rootfs-only needs --socklb (the binary to package)"),
        };
        let files = assemble_rootfs(&socklb, dir)?;
        print_tree(dir, &files);
        return Ok(());
    }

    crate::setup::ensure()?;
    let socklb = match opts.socklb {
        Some(p) => p,
        None => {
            cargo(
                root,
                &[
                    "build",
                    "--release",
                    "--locked",
                    "--package",
                    "socklb",
                    "--bin",
                    "socklb",
                ],
            )?;
            root.join("target/release/socklb")
        }
    };
    let tag = opts.tag.unwrap_or_else(default_tag);
    let work = root.join("target/image");
    // One tree per image name: two builds of different images do not share it.
    let safe: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let rootfs = work.join(format!("rootfs-{safe}"));
    if rootfs.exists() {
        fs::remove_dir_all(&rootfs).with_context(|| format!("removing {}", rootfs.display()))?;
    }
    let files = assemble_rootfs(&socklb, &rootfs)?;
    print_tree(&rootfs, &files);

    let tar = work.join(format!("rootfs-{safe}.tar"));
    layer_tar(root, &rootfs, &tar)?;
    let id = import(&tar, &tag, &stage);
    // The image holds both now; `--rootfs-only DIR` keeps a tree to look at.
    let _ = fs::remove_file(&tar);
    let _ = fs::remove_dir_all(&rootfs);
    let id = id?;
    eprintln!("xtask: image {tag} ({id})");
    if !opts.no_archive {
        let archive = work.join(format!("socklb_{}.tar", env!("CARGO_PKG_VERSION")));
        save_archive(&tag, &archive)?;
        eprintln!(
            "xtask: docker-archive {} (docker load -i, ctr -n k8s.io images import, kind load image-archive)",
            archive.display()
        );
    }
    println!("{tag}");
    Ok(())
}

// ---------------------------------------------------------------------- the Dockerfile

/// The runtime stage of manifests/Dockerfile, as this build applies it.
#[derive(Debug, PartialEq, Eq)]
pub struct RuntimeStage {
    /// Instructions for `podman import --change`, verbatim (ENTRYPOINT, CMD, ...).
    pub changes: Vec<String>,
}

/// Instructions of a Dockerfile: comments dropped, continuation lines joined.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Reads the runtime stage (the last FROM) and checks that the image this task builds
/// is the one the Dockerfile describes: `FROM scratch`, one `COPY --from=<builder>
/// /rootfs/ /` of the tree the builder made with `xtask image --rootfs-only /rootfs`,
/// then only image configuration.
pub fn runtime_stage(text: &str) -> Result<RuntimeStage> {
    let all = instructions(text);
    let keyword = |i: &str| {
        i.split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase()
    };
    let Some(last_from) = all.iter().rposition(|i| keyword(i) == "FROM") else {
        bail!("no FROM");
    };
    let builder: Vec<&String> = all[..last_from].iter().collect();
    let builds_rootfs = builder.iter().any(|i| {
        keyword(i) == "RUN"
            && i.contains("xtask image")
            && i.contains(&format!("--rootfs-only {DOCKERFILE_ROOTFS}"))
    });
    if !builds_rootfs {
        bail!(
            "the builder stage does not run `cargo xtask image ... --rootfs-only {DOCKERFILE_ROOTFS}`: \
             the runtime tree would not be the one `cargo xtask image` makes"
        );
    }
    let from: Vec<&str> = all[last_from].split_whitespace().collect();
    if !matches!(
        from.as_slice(),
        ["FROM", "scratch"] | ["FROM", "scratch", "AS", _]
    ) {
        bail!(
            "the runtime stage is `{}`, not `FROM scratch`: this build adds no base image",
            all[last_from]
        );
    }
    let mut copies = 0;
    let mut changes = Vec::new();
    for i in &all[last_from + 1..] {
        match keyword(i).as_str() {
            "COPY" => {
                let w: Vec<&str> = i.split_whitespace().collect();
                let ok = matches!(w.as_slice(), ["COPY", from, src, "/"]
                    if from.starts_with("--from=")
                        && src.trim_end_matches('/') == DOCKERFILE_ROOTFS);
                if !ok {
                    bail!(
                        "runtime stage: `{i}` is not `COPY --from=<builder> {DOCKERFILE_ROOTFS}/ /`"
                    );
                }
                copies += 1;
            }
            "ENTRYPOINT" | "CMD" | "LABEL" | "ENV" | "USER" | "WORKDIR" | "EXPOSE"
            | "STOPSIGNAL" => changes.push(i.clone()),
            _ => bail!(
                "runtime stage: `cargo xtask image` does not apply `{i}`: the images would differ"
            ),
        }
    }
    if copies != 1 {
        bail!("runtime stage: expected one COPY of {DOCKERFILE_ROOTFS}, found {copies}");
    }
    Ok(RuntimeStage { changes })
}

// ---------------------------------------------------------------------- the tree

/// The shared objects `ldd` reports for `binary` (the loader included), as absolute
/// paths; the vDSO has none and is skipped.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("linux-vdso.so") || line.starts_with("linux-gate.so") {
            continue;
        }
        if line.contains("not found") {
            bail!("ldd: a library is missing: {line}");
        }
        if line.starts_with("statically linked") || line.contains("not a dynamic executable") {
            continue;
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)".
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            _ => bail!("ldd: cannot read `{line}`"),
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// The Debian package that installed `path` (`dpkg-query -S`).
fn debian_package(path: &Path) -> Result<String> {
    let out = Command::new("dpkg-query")
        .arg("-S")
        .arg(path)
        .output()
        .context("running dpkg-query (the image is made from Debian packages)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_default();
    match line.split_once(':') {
        Some((pkg, _)) if out.status.success() && !pkg.is_empty() => Ok(pkg.trim().to_string()),
        _ => bail!("{} belongs to no Debian package", path.display()),
    }
}

/// Copies `from` to `dir`/`rel` (following symlinks) with mode `mode`.
fn install(from: &Path, dir: &Path, rel: &Path, mode: u32) -> Result<PathBuf> {
    let to = dir.join(rel);
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::copy(from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))?;
    Ok(rel.to_path_buf())
}

/// Makes the image's file tree in `dir` (which must not exist or be empty): the
/// binary without its DWARF debug information (symbols stay, for backtraces), every
/// library `ldd` names at its own path, and the copyright file of each library's
/// Debian package. Returns the files, relative to `dir`, sorted.
pub fn assemble_rootfs(socklb: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    if !socklb.is_file() {
        bail!("{} does not exist", socklb.display());
    }
    if dir.exists()
        && fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} is not empty", dir.display());
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();

    let bin = dir.join(BINARY_IN_IMAGE);
    if let Some(parent) = bin.parent() {
        fs::create_dir_all(parent)?;
    }
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(socklb)
        .arg(&bin)
        .status()
        .context("running objcopy (binutils)")?;
    if !status.success() {
        bail!(
            "objcopy --strip-debug {} failed ({status})",
            socklb.display()
        );
    }
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    files.push(PathBuf::from(BINARY_IN_IMAGE));

    let ldd = Command::new("ldd")
        .arg(socklb)
        .output()
        .context("running ldd")?;
    if !ldd.status.success() {
        bail!(
            "ldd {} failed: {}",
            socklb.display(),
            String::from_utf8_lossy(&ldd.stderr)
        );
    }
    let mut packages = Vec::new();
    for lib in parse_ldd(&String::from_utf8_lossy(&ldd.stdout))? {
        let rel = lib.strip_prefix("/").unwrap_or(&lib).to_path_buf();
        files.push(install(&lib, dir, &rel, 0o755)?);
        packages.push(debian_package(&lib)?);
    }
    packages.sort();
    packages.dedup();
    for pkg in packages {
        // Multi-arch packages are named pkg:arch; their doc directory is pkg.
        let name = pkg.split(':').next().unwrap_or(&pkg);
        let copyright = Path::new("/usr/share/doc").join(name).join("copyright");
        if !copyright.is_file() {
            bail!(
                "{} is missing: the image must carry it",
                copyright.display()
            );
        }
        let rel = Path::new("usr/share/doc").join(name).join("copyright");
        files.push(install(&copyright, dir, &rel, 0o644)?);
    }
    files.sort();
    Ok(files)
}

fn print_tree(dir: &Path, files: &[PathBuf]) {
    eprintln!("xtask: image tree {}:", dir.display());
    for f in files {
        let size = fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
        eprintln!("  /{:<50} {:>10} bytes", f.display(), size);
    }
}

// ---------------------------------------------------------------------- podman

/// A reproducible tar of the tree: sorted, owned by root, every mtime the commit's.
fn layer_tar(root: &Path, rootfs: &Path, tar: &Path) -> Result<()> {
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().or_else(|| {
        let out = Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(root)
            .output()
            .ok()?;
        let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !t.is_empty()).then_some(t)
    });
    let epoch = epoch.unwrap_or_else(|| "0".into());
    let status = Command::new("tar")
        .arg("--create")
        .arg("--file")
        .arg(tar)
        .arg("--directory")
        .arg(rootfs)
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--format=gnu",
            &format!("--mtime=@{epoch}"),
            ".",
        ])
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("tar failed ({status})");
    }
    Ok(())
}

fn podman(args: &[&str]) -> Result<String> {
    let out = Command::new("podman")
        .args(args)
        .output()
        .context("running podman (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "podman {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The id of a local image, if there is one of that name.
fn image_id(tag: &str) -> Option<String> {
    podman(&["image", "inspect", "--format", "{{.Id}}", tag]).ok()
}

/// `podman import` of the layer with the runtime stage's configuration; the image the
/// tag named before (if any) is removed unless something still uses it.
fn import(tar: &Path, tag: &str, stage: &RuntimeStage) -> Result<String> {
    let before = image_id(tag);
    let tar = tar.to_string_lossy().into_owned();
    let message = format!("socklb {}", env!("CARGO_PKG_VERSION"));
    let mut args: Vec<&str> = vec!["import", "--quiet", "--message", &message];
    for change in &stage.changes {
        args.push("--change");
        args.push(change);
    }
    args.push(&tar);
    args.push(tag);
    podman(&args)?;
    let id = image_id(tag).with_context(|| format!("{tag} is missing after podman import"))?;
    if let Some(old) = before.filter(|old| *old != id) {
        // Untagged by the import: remove it unless a container still uses it.
        let _ = podman(&["rmi", &old]);
    }
    Ok(id)
}

/// A docker-archive of the image, named as the DaemonSet names it (`socklb:<version>`
/// is docker.io/library/socklb to containerd and CRI-O).
fn save_archive(tag: &str, archive: &Path) -> Result<()> {
    let name = format!("docker.io/library/socklb:{}", env!("CARGO_PKG_VERSION"));
    podman(&["tag", tag, &name])?;
    if archive.exists() {
        fs::remove_file(archive)?;
    }
    let path = archive.to_string_lossy().into_owned();
    let saved = podman(&[
        "save",
        "--quiet",
        "--format",
        "docker-archive",
        "-o",
        &path,
        &name,
    ]);
    let untagged = podman(&["untag", tag, &name]);
    saved?;
    untagged?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD: &str = "\tlinux-vdso.so.1 (0x00007ffd)\n\
        \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
        \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f)\n\
        \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
        \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";

    #[test]
    fn ldd_output_gives_every_library_and_the_loader() {
        let libs = parse_ldd(LDD).unwrap();
        let names: Vec<String> = libs.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn the_dockerfile_runtime_stage_is_what_xtask_image_builds() {
        let text = include_str!("../../manifests/Dockerfile");
        let stage = runtime_stage(text).unwrap();
        assert!(
            stage
                .changes
                .iter()
                .any(|c| c.starts_with("ENTRYPOINT") && c.contains(BINARY_IN_IMAGE)),
            "{stage:?}"
        );
    }

    #[test]
    fn a_runtime_stage_with_a_base_image_or_a_run_is_refused() {
        let builder =
            "FROM rust AS builder\nRUN cargo xtask image --socklb x --rootfs-only /rootfs\n";
        let ok = format!("{builder}FROM scratch\nCOPY --from=builder /rootfs/ /\nCMD [\"x\"]\n");
        assert_eq!(
            runtime_stage(&ok).unwrap().changes,
            vec!["CMD [\"x\"]".to_string()]
        );
        let base = format!("{builder}FROM debian\nCOPY --from=builder /rootfs/ /\n");
        assert!(runtime_stage(&base).is_err());
        let run = format!("{builder}FROM scratch\nCOPY --from=builder /rootfs/ /\nRUN true\n");
        assert!(runtime_stage(&run).is_err());
        let other = format!("{builder}FROM scratch\nCOPY --from=builder /out/socklb /\n");
        assert!(runtime_stage(&other).is_err());
        let no_rootfs = "FROM rust AS builder\nFROM scratch\nCOPY --from=builder /rootfs/ /\n";
        assert!(runtime_stage(no_rootfs).is_err());
    }
}
