//! Installs what building and running socklb needs on a fresh Debian 12 machine.
//! Every step checks first, so running it again does nothing.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

const APT_PACKAGES: &[&str] = &[
    // bpf-linker links libLLVM 22 at run time: keep it installed.
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
    "bpftool",
    "iproute2",
    // `cargo xtask image` and tests/tests/container.rs: podman builds and runs the
    // image; runc is the runtime the test picks (Debian 12's default crun refuses
    // hosts on the hybrid cgroup layout). objcopy (binutils) strips the binary.
    "podman",
    "runc",
    "binutils",
];
/// kubectl renders manifests/ with its built-in kustomize
/// (lb-userspace/tests/manifests_parse.rs). When none is installed, Debian 12's own.
const KUBECTL_PACKAGE: &str = "kubernetes-client";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// One missing piece, with what installs it.
struct Missing(&'static str);

fn missing() -> Vec<Missing> {
    let mut out = Vec::new();
    if !apt_missing().is_empty() {
        out.push(Missing("apt packages"));
    }
    if !rust_src_installed() {
        out.push(Missing("rust-src for the nightly toolchain"));
    }
    if !bpf_linker_ok() {
        out.push(Missing("bpf-linker"));
    }
    if !bpffs_mounted() {
        out.push(Missing("bpffs at /sys/fs/bpf"));
    }
    if !kubectl_ok() {
        out.push(Missing("kubectl"));
    }
    out
}

/// Runs the setup when anything is missing (the README's commands call this).
pub fn ensure() -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|m| m.0).collect();
    eprintln!("xtask: missing: {}; running setup", names.join(", "));
    setup(false)
}

pub fn setup(force: bool) -> Result<()> {
    let mut apt = apt_missing();
    if !kubectl_ok() {
        apt.push(KUBECTL_PACKAGE);
    }
    if !apt.is_empty() {
        require_root("install apt packages")?;
        eprintln!("xtask: apt-get install {}", apt.join(" "));
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&apt)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !rust_src_installed() {
        eprintln!("xtask: rustup component add rust-src --toolchain nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if force || !bpf_linker_ok() {
        eprintln!("xtask: cargo install bpf-linker {BPF_LINKER_VERSION} (llvm-22)");
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("cargo");
        cmd.args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path)
        .env("LLVM_PREFIX", LLVM_PREFIX);
        if force {
            cmd.arg("--force");
        }
        // The stable toolchain builds bpf-linker; a toolchain override must not leak in.
        cmd.env_remove("RUSTUP_TOOLCHAIN").env_remove("RUSTC");
        if run(&mut cmd).is_err() {
            // --locked pins versions from bpf-linker's lockfile; retry resolving anew.
            let mut retry = Command::new("cargo");
            retry
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--force",
                ])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env(
                    "PATH",
                    format!(
                        "{LLVM_PREFIX}/bin:{}",
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("RUSTC");
            run(&mut retry)?;
        }
    }
    if !bpffs_mounted() {
        require_root("mount bpffs")?;
        std::fs::create_dir_all("/sys/fs/bpf").ok();
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    let still: Vec<&str> = missing().iter().map(|m| m.0).collect();
    if !still.is_empty() {
        bail!("setup finished but still missing: {}", still.join(", "));
    }
    eprintln!("xtask: setup complete");
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("need root to {what}");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn apt_missing() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

fn rust_src_installed() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success()
        && Path::new(&sysroot)
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

fn bpf_linker_ok() -> bool {
    let Ok(out) = Command::new("bpf-linker").arg("--version").output() else {
        return false;
    };
    // Running at all proves libLLVM (linked at run time) is present.
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
}

/// Any working kubectl (it need not be Debian's: a machine may have one already).
fn kubectl_ok() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.contains(" /sys/fs/bpf ") && l.contains(" - bpf "))
        })
        .unwrap_or(false)
}
