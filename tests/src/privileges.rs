//! What the end-to-end tests need from the machine, and the skip-or-fail rule.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Result, anyhow};

/// Where bpffs is expected (and mounted when it is not).
pub const BPFFS: &str = "/sys/fs/bpf";

/// What [`check_privileges`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environment {
    /// Mount point of the cgroup v2 hierarchy (e.g. `/sys/fs/cgroup` or
    /// `/sys/fs/cgroup/unified` on a hybrid layout).
    pub cgroup2_root: PathBuf,
    /// The bpffs mount point ([`BPFFS`]).
    pub bpffs: PathBuf,
}

/// Whether `CI` says we run under CI (`true`, `1` or `yes`).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
        .unwrap_or(false)
}

/// For end-to-end tests: returns true when the machine has what they need (root, bpffs,
/// cgroup v2, `ip`); mounts bpffs at /sys/fs/bpf when it is not mounted yet.
///
/// When something is missing: under `CI=true` it panics (a CI run must fail, never
/// skip); otherwise it prints `SKIPPED: <why>` to stderr and returns false, and the test
/// returns early.
pub fn require_privileges() -> bool {
    match check_privileges() {
        Ok(_) => true,
        Err(why) if in_ci() => {
            panic!("end-to-end test cannot run under CI=true: {why}")
        }
        Err(why) => {
            // Straight to fd 2, not eprintln!: the test harness captures the macros'
            // output of passing tests, and a skip must be visible.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
            false
        }
    }
}

/// Checks (once per process) root, bpffs (mounting it if needed), the cgroup v2 mount and
/// iproute2. The error says what is missing.
pub fn check_privileges() -> std::result::Result<Environment, String> {
    static RESULT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    RESULT.get_or_init(check_uncached).clone()
}

fn check_uncached() -> std::result::Result<Environment, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces, cgroups, BPF): run as root".into());
    }
    let ip_ok = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ip_ok {
        return Err("`ip` (iproute2) not found in PATH".into());
    }
    let cgroup2_root = cgroup2_root().map_err(|e| e.to_string())?;
    let bpffs = PathBuf::from(BPFFS);
    if !is_mount_of_type(&bpffs, "bpf") {
        if !bpffs.is_dir() {
            return Err(format!("{BPFFS} does not exist (no sysfs?)"));
        }
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf", BPFFS])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !mounted.status.success() || !is_mount_of_type(&bpffs, "bpf") {
            return Err(format!(
                "bpffs is not mounted at {BPFFS} and `mount -t bpf bpf {BPFFS}` failed: {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            ));
        }
    }
    Ok(Environment {
        cgroup2_root,
        bpffs,
    })
}

/// One line of /proc/self/mountinfo, the parts we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Parses /proc/self/mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fs_type = right.split(' ').next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_mount(mount_point)),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push((v & 0xff) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// Whether `path` is a mount point whose (topmost) file system type is `fs_type`.
pub fn is_mount_of_type(path: &Path, fs_type: &str) -> bool {
    mounts()
        .iter()
        .rev()
        .find(|m| m.mount_point == path)
        .is_some_and(|m| m.fs_type == fs_type)
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (the first `cgroup2` mount).
pub fn cgroup2_root() -> Result<PathBuf> {
    find_cgroup2(&mounts()).ok_or_else(|| anyhow!("no cgroup2 file system is mounted"))
}

/// The first cgroup2 mount of a parsed mountinfo.
pub fn find_cgroup2(mounts: &[MountEntry]) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 22 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
50 22 0:45 / /sys/fs/bpf rw,relatime - bpf bpf rw
51 28 0:46 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn finds_the_unified_hierarchy_in_a_hybrid_layout() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(
            find_cgroup2(&m),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn parses_types_and_escapes() {
        let m = parse_mountinfo(HYBRID);
        assert!(
            m.iter()
                .any(|e| e.mount_point == Path::new("/sys/fs/bpf") && e.fs_type == "bpf")
        );
        assert!(
            m.iter()
                .any(|e| e.mount_point == Path::new("/mnt/with space"))
        );
        assert_eq!(find_cgroup2(&parse_mountinfo("")), None);
    }
}
