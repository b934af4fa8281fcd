//! `socklb mount-bpffs`: what the DaemonSet's init container runs, so that the pins
//! live in the host's bpffs and survive the pod. It mounts bpffs at a path unless
//! one is mounted there already (as Cilium's init container does).
use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

/// `BPF_FS_MAGIC` (linux/magic.h): statfs's `f_type` of a bpffs.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What [`ensure_mounted`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `path` was a bpffs already: nothing was mounted.
    AlreadyMounted,
    /// A new bpffs was mounted at `path`.
    Mounted,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path has a NUL byte"))
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = c_path(path)?;
    // SAFETY: an all-zero statfs is a valid out parameter; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type is i64 or u32 depending on the libc
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts bpffs at `path` (an existing directory) unless it is one already. Needs
/// CAP_SYS_ADMIN when it mounts.
pub fn ensure_mounted(path: &Path) -> io::Result<Outcome> {
    if is_bpffs(path)? {
        return Ok(Outcome::AlreadyMounted);
    }
    let target = c_path(path)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; bpffs
    // takes no data here.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    if !is_bpffs(path)? {
        return Err(io::Error::other("mount succeeded but the path is no bpffs"));
    }
    Ok(Outcome::Mounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_no_bpffs() {
        assert!(!is_bpffs(&std::env::temp_dir()).unwrap_or(true));
        assert!(is_bpffs(Path::new("/nonexistent-socklb")).is_err());
    }
}
