//! Whether the data path is really attached, asked of the kernel, not of the agent's
//! memory: each pinned link's `bpf_link_info` says what it is attached to, and a link
//! that lost its target (its cgroup removed, its device deleted, `bpftool link
//! detach`) reports no target any more. `/healthz`, `socklb status` and the agent's
//! housekeeping read it through [`check`].
use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use super::kernel::{BIND_HOOKS, Device, SOCKET_HOOKS, TC_HOOKS};

/// What one pinned link is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkTarget {
    /// A cgroup, by id (the inode number of its directory).
    Cgroup(u64),
    /// A network device, by ifindex (TCX).
    Device(u32),
    /// Nothing: the link outlived its cgroup or device, or was detached.
    Detached,
}

/// BPF_OBJ_GET (enum bpf_cmd).
const BPF_OBJ_GET: libc::c_long = 7;
/// BPF_OBJ_GET_INFO_BY_FD (enum bpf_cmd).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// enum bpf_link_type.
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_TCX: u32 = 11;

/// The start of struct bpf_link_info: type, id, prog_id and the first bytes of the
/// per-type union (8-aligned), which is all this reads.
#[repr(C)]
#[derive(Default)]
struct LinkInfoHead {
    link_type: u32,
    id: u32,
    prog_id: u32,
    pad: u32,
    /// cgroup: cgroup_id (u64); tcx: ifindex (u32) then attach_type (u32).
    target: u64,
    rest: [u64; 6],
}

/// The object part of union bpf_attr (BPF_OBJ_GET).
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The object pinned at `pin`.
fn open_pin(pin: &Path) -> std::io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: BPF_OBJ_GET reads the NUL-terminated path, which outlives the call, and
    // returns a new fd (or -1).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            (&raw mut attr).cast::<libc::c_void>(),
            std::mem::size_of::<ObjAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `info` part of union bpf_attr.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What the link pinned at `pin` is attached to; Err when there is no such link.
pub fn link_target(pin: &Path) -> Result<LinkTarget, String> {
    let link = open_pin(pin).map_err(|e| format!("{}: {e}", pin.display()))?;
    let fd = link.as_raw_fd();
    let mut info = LinkInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd).map_err(|_| "bad fd".to_string())?,
        info_len: std::mem::size_of::<LinkInfoHead>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes into `info`, which
    // outlives the call; `attr` is the info part of union bpf_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            (&raw mut attr).cast::<libc::c_void>(),
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if r != 0 {
        return Err(format!(
            "{}: link info: {}",
            pin.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(match info.link_type {
        BPF_LINK_TYPE_CGROUP if info.target != 0 => LinkTarget::Cgroup(info.target),
        // The ifindex is the union's first u32.
        BPF_LINK_TYPE_TCX if (info.target as u32) != 0 => LinkTarget::Device(info.target as u32),
        BPF_LINK_TYPE_CGROUP | BPF_LINK_TYPE_TCX => LinkTarget::Detached,
        other => return Err(format!("{}: a link of type {other}", pin.display())),
    })
}

/// The id of a cgroup (v2): the inode number of its directory.
pub fn cgroup_id(cgroup: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(cgroup).ok().map(|m| m.ino())
}

/// What the agent attached: the socket hooks to one cgroup, the TC programs to each
/// device.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    /// The cgroup's id; None: do not check which cgroup (any live one is fine).
    pub cgroup: Option<u64>,
    pub devices: &'a [Device],
}

/// Every way the pinned links in `pin_dir` fall short of `expected`, in plain words;
/// empty when all are attached where they should be.
pub fn check(pin_dir: &Path, expected: &Expected<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    for (_, pin) in SOCKET_HOOKS.iter().chain(&BIND_HOOKS) {
        match link_target(&pin_dir.join(pin)) {
            Ok(LinkTarget::Cgroup(id)) if expected.cgroup.is_none_or(|want| want == id) => {}
            Ok(LinkTarget::Cgroup(id)) => {
                problems.push(format!("{pin} is attached to another cgroup (id {id})"));
            }
            Ok(LinkTarget::Detached) => {
                problems.push(format!(
                    "{pin} is detached (its cgroup is gone or it was detached)"
                ));
            }
            Ok(LinkTarget::Device(_)) => problems.push(format!("{pin} is not a cgroup link")),
            Err(_) => problems.push(format!("{pin} is not pinned: the hook is not attached")),
        }
    }
    for device in expected.devices {
        for (_, _, prefix) in TC_HOOKS {
            let pin = format!("{prefix}{}", device.ifindex);
            match link_target(&pin_dir.join(&pin)) {
                Ok(LinkTarget::Device(ifindex)) if ifindex == device.ifindex => {}
                Ok(LinkTarget::Device(ifindex)) => {
                    problems.push(format!(
                        "{pin} is attached to ifindex {ifindex}, not {}",
                        device.name
                    ));
                }
                Ok(LinkTarget::Detached) => problems.push(format!(
                    "{pin} is detached ({} is gone or the link was detached)",
                    device.name
                )),
                Ok(LinkTarget::Cgroup(_)) => problems.push(format!("{pin} is not a TC link")),
                Err(_) => problems.push(format!(
                    "{pin} is not pinned: the TC program is not attached to {}",
                    device.name
                )),
            }
        }
    }
    problems
}

/// The state of every link pinned in `pin_dir` (for `socklb status`, which does not
/// know the agent's flags): (pin, what it is attached to or why not).
pub fn pinned_links(pin_dir: &Path) -> Vec<(String, Result<LinkTarget, String>)> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Result<LinkTarget, String>)> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("link_"))
        .map(|name| {
            let target = link_target(&pin_dir.join(&name));
            (name, target)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
