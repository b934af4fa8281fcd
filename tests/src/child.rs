//! A process guard: spawned into a cgroup and/or a network namespace, ended by its own
//! pid on Drop.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::cmd::describe;

/// How long [`Child`]'s Drop waits after SIGTERM before it sends SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Where and how a [`Child`] starts.
#[derive(Clone, Debug)]
pub struct SpawnOpts {
    /// A network namespace file (`/run/netns/NAME`) the child enters with setns(2)
    /// before exec. (Not `ip netns exec`: that remounts /sys and hides bpffs/cgroup2.)
    pub netns: Option<PathBuf>,
    /// A cgroup v2 directory the child moves itself into (writes "0" to its
    /// `cgroup.procs`) before exec, so its sockets are subject to the cgroup's hooks.
    pub cgroup: Option<PathBuf>,
    /// Put the child in its own process group, so a terminal's Ctrl-C reaches only the
    /// test or demo process, which then ends its children in order. Default: true.
    pub new_process_group: bool,
    /// PR_SET_PDEATHSIG(SIGKILL): the child dies if the thread that spawned it dies
    /// without ending it (e.g. the test process is SIGKILLed). Default: true.
    pub die_with_parent: bool,
}

impl Default for SpawnOpts {
    fn default() -> Self {
        Self {
            netns: None,
            cgroup: None,
            new_process_group: true,
            die_with_parent: true,
        }
    }
}

impl SpawnOpts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Enter this network namespace file (e.g. [`crate::NetNs::path`]).
    pub fn netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }

    /// Join this cgroup directory (e.g. [`crate::TestCgroup::path`]).
    pub fn cgroup(mut self, path: impl Into<PathBuf>) -> Self {
        self.cgroup = Some(path.into());
        self
    }

    /// Optionally join a cgroup.
    pub fn maybe_cgroup(mut self, path: Option<&Path>) -> Self {
        self.cgroup = path.map(Path::to_path_buf);
        self
    }
}

/// A running process that is ended on Drop: SIGTERM by pid, up to [`DEFAULT_GRACE`] to
/// exit, then SIGKILL by pid, then reaped. It only ever signals its own pid, and only
/// while it has not reaped it, so the pid cannot have been reused.
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
    shown: String,
    exited: Option<ExitStatus>,
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| anyhow!("path contains NUL: {p:?}"))
}

impl Child {
    /// Spawns `cmd` as described by `opts`. stdin defaults to /dev/null unless the
    /// command set it.
    pub fn spawn(mut cmd: Command, opts: &SpawnOpts) -> Result<Child> {
        let shown = describe(&cmd);
        // Everything the pre_exec hook needs is prepared here: after fork only
        // async-signal-safe calls happen (open, write, setns, close, setpgid, prctl).
        let cgroup_procs = opts
            .cgroup
            .as_ref()
            .map(|c| cstring(&c.join("cgroup.procs")))
            .transpose()?;
        let netns = opts.netns.as_ref().map(|n| cstring(n)).transpose()?;
        if let Some(ns) = opts.netns.as_ref().filter(|ns| !ns.exists()) {
            bail!("network namespace file {} does not exist", ns.display());
        }
        let new_pgrp = opts.new_process_group;
        let pdeathsig = opts.die_with_parent;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls on data prepared before the fork; it allocates
        // nothing (io::Error::last_os_error is a plain errno value).
        unsafe {
            cmd.pre_exec(move || {
                if pdeathsig && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if new_pgrp && libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(procs) = &cgroup_procs {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0" moves the writing process itself.
                    let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if n < 0 {
                        return Err(err);
                    }
                }
                if let Some(ns) = &netns {
                    let fd = libc::open(ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let r = libc::setns(fd, libc::CLONE_NEWNET);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if r != 0 {
                        // Never run on in the wrong (host) namespace.
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
        let inner = cmd.spawn().with_context(|| {
            format!(
                "cannot spawn `{shown}` (netns {:?}, cgroup {:?})",
                opts.netns, opts.cgroup
            )
        })?;
        Ok(Child {
            inner,
            shown,
            exited: None,
        })
    }

    /// Runs `cmd` to completion (stdout and stderr captured) and returns its output. If it
    /// does not finish within `timeout` it is ended (SIGTERM, then SIGKILL) and an error
    /// is returned.
    pub fn output(mut cmd: Command, opts: &SpawnOpts, timeout: Duration) -> Result<Output> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = Child::spawn(cmd, opts)?;
        let stdout = child.inner.stdout.take().map(spawn_reader);
        let stderr = child.inner.stderr.take().map(spawn_reader);
        let status = child.wait_timeout(timeout)?;
        let status = match status {
            Some(s) => s,
            None => {
                child.terminate(DEFAULT_GRACE)?;
                bail!(
                    "`{}` did not finish within {timeout:?}; ended it",
                    child.shown
                );
            }
        };
        let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        Ok(Output {
            status,
            stdout: join(stdout),
            stderr: join(stderr),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// The command line, for messages.
    pub fn command_line(&self) -> &str {
        &self.shown
    }

    /// Takes the child's stdout pipe (when it was spawned with `Stdio::piped()`).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.inner.stdout.take()
    }

    /// Takes the child's stdin pipe (when it was spawned with `Stdio::piped()`).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.inner.stdin.take()
    }

    /// Reads one line from the child's piped stdout within `timeout` (for readiness
    /// lines). The pipe is consumed: the rest of stdout is discarded.
    pub fn read_line(&mut self, timeout: Duration) -> Result<String> {
        let stdout =
            self.inner.stdout.take().ok_or_else(|| {
                anyhow!("stdout of `{}` is not piped (or already taken)", self.shown)
            })?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(line)) if !line.is_empty() => Ok(line),
            Ok(Ok(_)) => {
                let status = self.wait_timeout(Duration::from_millis(500))?;
                bail!(
                    "`{}` closed stdout without a line (status {status:?})",
                    self.shown
                )
            }
            Ok(Err(e)) => Err(e).context(format!("reading stdout of `{}`", self.shown)),
            Err(_) => bail!("`{}` printed no line within {timeout:?}", self.shown),
        }
    }

    /// Whether it has exited (without blocking); reaps it if so.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.exited {
            return Ok(Some(s));
        }
        let s = self.inner.try_wait().context("waitpid")?;
        self.exited = s;
        Ok(s)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig` to its pid, unless it was already reaped.
    pub fn signal(&mut self, sig: libc::c_int) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill(2) on the pid of our own unreaped child.
        if unsafe { libc::kill(pid, sig) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e).context(format!("kill({pid}, {sig})"));
            }
        }
        Ok(())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL and wait. Returns the exit status and
    /// whether SIGKILL was needed.
    pub fn terminate(&mut self, grace: Duration) -> Result<(ExitStatus, bool)> {
        if let Some(s) = self.try_wait()? {
            return Ok((s, false));
        }
        self.signal(libc::SIGTERM)?;
        if let Some(s) = self.wait_timeout(grace)? {
            return Ok((s, false));
        }
        self.signal(libc::SIGKILL)?;
        let s = self.inner.wait().context("waitpid")?;
        self.exited = Some(s);
        Ok((s, true))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Err(e) = self.terminate(DEFAULT_GRACE) {
            eprintln!(
                "socklb-tests: could not end `{}` (pid {}): {e:#}",
                self.shown,
                self.pid()
            );
        }
    }
}

fn spawn_reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Whether a process with this pid exists (signal 0).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks existence and permission.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn drop_ends_a_process_that_ignores_nothing() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let child = Child::spawn(cmd, &SpawnOpts::new()).unwrap();
        let pid = child.pid();
        assert!(pid_alive(pid));
        let start = Instant::now();
        drop(child);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(!pid_alive(pid));
    }

    #[test]
    fn sigkill_after_the_grace_period() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        ]);
        cmd.stdout(Stdio::piped());
        let mut child = Child::spawn(cmd, &SpawnOpts::new()).unwrap();
        assert_eq!(child.read_line(Duration::from_secs(5)).unwrap(), "ready\n");
        let (status, killed) = child.terminate(Duration::from_millis(200)).unwrap();
        assert!(killed);
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn output_captures_and_times_out() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2"]);
        let out = Child::output(cmd, &SpawnOpts::new(), Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        assert!(Child::output(cmd, &SpawnOpts::new(), Duration::from_millis(100)).is_err());
    }

    #[test]
    fn missing_netns_is_an_error_not_the_host_namespace() {
        let opts = SpawnOpts::new().netns("/run/netns/slb-does-not-exist");
        assert!(Child::spawn(Command::new("true"), &opts).is_err());
    }
}
