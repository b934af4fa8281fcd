//! The network namespaces of a cgroup subtree: where the socket iterators must run,
//! since an iterator sees only the sockets of the namespace it was created in.
//!
//! The socket hooks apply to every process in the attached cgroup and below, in
//! whatever network namespace it is (the node's, or a pod's). So the namespaces are
//! those of the processes listed in `cgroup.procs` of the cgroup and of every cgroup
//! under it (`/proc/PID/ns/net`), each once (by its nsfs device and inode), plus the
//! agent's own, the node's, which is always visited: a node process of the cgroup is
//! then covered even if the listing missed it.
//!
//! A process that exits between the listing and the open is skipped; an open
//! namespace file keeps its namespace alive while the pass runs in it. Threads that
//! switched to another namespace than their process's are not looked at (cgroup.procs
//! lists processes). The pids are read in the agent's PID namespace: an agent in a
//! PID namespace of its own (a pod without hostPID) cannot see the pods' processes.
use std::{
    collections::HashSet,
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// A network namespace held open.
#[derive(Debug)]
pub struct Netns {
    /// The namespace file (`/proc/PID/ns/net`), open.
    pub file: File,
    /// nsfs device and inode: the namespace's identity.
    pub id: (u64, u64),
    /// A process found in it (None: the agent's own namespace).
    pub pid: Option<u32>,
}

/// What [`cgroup_namespaces`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// The agent's own namespace first, then each other namespace once.
    pub namespaces: Vec<Netns>,
    /// Processes listed in the subtree.
    pub processes: usize,
    /// Processes whose namespace could not be opened (exited meanwhile).
    pub unreadable: usize,
    /// Processes whose namespace the agent may not open (EACCES: without
    /// CAP_SYS_PTRACE, /proc/PID/ns of a process with capabilities the agent lacks).
    pub denied: usize,
    /// Processes of the subtree outside the agent's PID namespace (listed as 0: an
    /// agent without the host's PID namespace cannot find their network namespaces).
    pub invisible: usize,
    /// Cgroups read.
    pub cgroups: usize,
}

/// The agent's network namespace (`home`, opened with [`own`]) and every distinct
/// network namespace of the processes in `cgroup` and the cgroups below it.
pub fn cgroup_namespaces(home: &File, cgroup: &Path) -> Found {
    let mut found = Found::default();
    let mut seen = HashSet::new();
    if let Ok(id) = id_of(home) {
        seen.insert(id);
        if let Ok(file) = home.try_clone() {
            found.namespaces.push(Netns {
                file,
                id,
                pid: None,
            });
        }
    }
    let mut dirs: Vec<PathBuf> = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        found.cgroups += 1;
        let (pids, invisible) = read_procs(&dir);
        found.invisible += invisible;
        for pid in pids {
            found.processes += 1;
            let opened = File::open(format!("/proc/{pid}/ns/net"))
                .and_then(|file| Ok((id_of(&file)?, file)));
            match opened {
                Ok((id, file)) => {
                    if seen.insert(id) {
                        found.namespaces.push(Netns {
                            file,
                            id,
                            pid: Some(pid),
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => found.denied += 1,
                Err(_) => found.unreadable += 1,
            }
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            // Child cgroups are directories; never follow a symlink out of the tree.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    found
}

/// Pids in `cgroup.procs` of one cgroup, and how many were listed as 0 (what a
/// process outside the reader's PID namespace shows as).
fn read_procs(dir: &Path) -> (Vec<u32>, usize) {
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let invisible = pids.iter().filter(|p| **p == 0).count();
    (pids.into_iter().filter(|p| *p != 0).collect(), invisible)
}

fn id_of(file: &File) -> io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// The calling thread's network namespace, to come back to.
pub fn own() -> io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}

/// Moves the calling thread into the namespace of `file` (needs CAP_SYS_ADMIN).
pub fn enter(file: &File) -> io::Result<()> {
    // SAFETY: setns on an open namespace file; it changes only this thread's
    // namespace and touches no memory.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    /// A fake cgroup tree: this process in two cgroups, a pid that does not exist,
    /// a 0 (a process of another PID namespace): one namespace, the agent's own.
    #[test]
    fn namespaces_are_found_recursively_and_counted_once() {
        let root = std::env::temp_dir().join(format!("socklb-netns-test-{}", std::process::id()));
        let child = root.join("pods").join("pod-a");
        std::fs::create_dir_all(&child).unwrap();
        let me = std::process::id();
        std::fs::write(root.join("cgroup.procs"), format!("{me}\n0\n")).unwrap();
        std::fs::write(child.join("cgroup.procs"), format!("{me}\n4194305\n")).unwrap();
        let home = own().unwrap();
        let found = cgroup_namespaces(&home, &root);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(found.cgroups, 3);
        assert_eq!(found.processes, 3, "{found:?}");
        assert_eq!(found.unreadable, 1, "{found:?}");
        assert_eq!(found.invisible, 1, "{found:?}");
        assert_eq!(found.namespaces.len(), 1, "{found:?}");
        assert_eq!(found.namespaces[0].pid, None);
        assert_eq!(found.namespaces[0].id, id_of(&own().unwrap()).unwrap());
        // setns needs CAP_SYS_ADMIN, which a unit test may lack: an error, not a panic.
        let _ = enter(&home);
    }
}
