//! Locating and driving the `socklb` binary (the agent) and `socklb-probe`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::child::{Child, SpawnOpts};
use crate::tempdir::TempDir;
use crate::wait::wait_until;

/// How long [`Agent::stop`] waits after SIGTERM before it kills the agent (and fails).
pub const AGENT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Timeout of one-shot `socklb` commands (`uninstall`, `status`, `plan`).
pub const SOCKLB_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// `target/<profile>`, derived from the running executable: test binaries live in
/// `target/<profile>/deps/`, the package's binaries in `target/<profile>/`.
pub fn target_profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

fn locate(name: &str, env_var: &str, build_hint: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{env_var}={} does not exist", p.display());
    }
    let dir = target_profile_dir().context("cannot find the current executable")?;
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{} not found: build it first: {build_hint} (or set {env_var})",
            p.display()
        )
    }
}

/// The `socklb` binary: `$SOCKLB_BIN`, else `target/<profile>/socklb`.
pub fn try_socklb_bin() -> Result<PathBuf> {
    locate(
        "socklb",
        "SOCKLB_BIN",
        "cargo build -p socklb (cargo xtask test does this)",
    )
}

/// [`try_socklb_bin`], panicking with the build hint when it is missing.
pub fn socklb_bin() -> PathBuf {
    match try_socklb_bin() {
        Ok(p) => p,
        Err(e) => panic!("{e:#}"),
    }
}

/// The `socklb-probe` binary: `$SOCKLB_PROBE_BIN`, else `target/<profile>/socklb-probe`.
pub fn try_probe_bin() -> Result<PathBuf> {
    locate(
        "socklb-probe",
        "SOCKLB_PROBE_BIN",
        "cargo build -p socklb-tests (cargo xtask test does this)",
    )
}

/// [`try_probe_bin`], panicking with the build hint when it is missing.
pub fn probe_bin() -> PathBuf {
    match try_probe_bin() {
        Ok(p) => p,
        Err(e) => panic!("{e:#}"),
    }
}

/// Runs `socklb ARGS...` to completion in the host namespace (not in any test cgroup)
/// and returns its output, whatever its exit status.
pub fn socklb<I, S>(args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(try_socklb_bin()?);
    cmd.args(args).env("NO_COLOR", "1");
    Child::output(cmd, &SpawnOpts::new(), SOCKLB_COMMAND_TIMEOUT)
}

/// `socklb uninstall --cgroup CGROUP --bpffs PINDIR`; fails unless it exits 0.
pub fn uninstall(cgroup: &Path, bpffs: &Path) -> Result<Output> {
    let args = [
        "uninstall".as_ref(),
        "--cgroup".as_ref(),
        cgroup.as_os_str(),
        "--bpffs".as_ref(),
        bpffs.as_os_str(),
    ];
    let out = socklb(args)?;
    if !out.status.success() {
        bail!(
            "socklb uninstall --cgroup {} --bpffs {} failed ({}):\n{}{}",
            cgroup.display(),
            bpffs.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// How to start the agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// `--manifests DIR`
    pub manifests: PathBuf,
    /// `--cgroup CGROUP`: the test's cgroup.
    pub cgroup: PathBuf,
    /// `--bpffs PINDIR`: the test's pin directory.
    pub bpffs: PathBuf,
    /// `--node NODE`
    pub node: String,
    /// Watch the Kubernetes API described by this kubeconfig instead of `manifests`.
    pub kubeconfig: Option<PathBuf>,
    /// More arguments after those.
    pub extra_args: Vec<String>,
    /// Extra environment (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// A network namespace file (`/run/netns/NAME`) the agent runs in (setns(2) before
    /// exec, like a host-network DaemonSet pod on that node); `None`: the host's.
    pub netns: Option<PathBuf>,
    /// A command the agent is started through, which ends by exec'ing the `socklb`
    /// binary and its arguments appended to it (e.g. `setpriv --bounding-set ... --`),
    /// so the agent keeps the wrapper's pid. Empty: the binary itself.
    pub wrapper: Vec<String>,
    /// Another `socklb` binary (e.g. a previous release, tests/tests/upgrade.rs);
    /// `None`: [`try_socklb_bin`].
    pub bin: Option<PathBuf>,
}

impl AgentConfig {
    pub fn new(
        manifests: impl Into<PathBuf>,
        cgroup: impl Into<PathBuf>,
        bpffs: impl Into<PathBuf>,
        node: impl Into<String>,
    ) -> Self {
        Self {
            manifests: manifests.into(),
            cgroup: cgroup.into(),
            bpffs: bpffs.into(),
            node: node.into(),
            kubeconfig: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            netns: None,
            wrapper: Vec::new(),
            bin: None,
        }
    }

    /// Runs the agent inside this network namespace file (e.g. [`crate::NetNs::path`]).
    pub fn in_netns(mut self, netns: impl Into<PathBuf>) -> Self {
        self.netns = Some(netns.into());
        self
    }

    /// An agent that watches the API server of `kubeconfig`.
    pub fn kubernetes(
        kubeconfig: impl Into<PathBuf>,
        cgroup: impl Into<PathBuf>,
        bpffs: impl Into<PathBuf>,
        node: impl Into<String>,
    ) -> Self {
        let mut config = Self::new(PathBuf::new(), cgroup, bpffs, node);
        config.kubeconfig = Some(kubeconfig.into());
        config
    }

    /// The command line after `socklb`.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["agent".into()];
        match &self.kubeconfig {
            Some(kubeconfig) => {
                a.push("--kubeconfig".into());
                a.push(kubeconfig.clone().into());
            }
            None => {
                a.push("--manifests".into());
                a.push(self.manifests.clone().into());
            }
        }
        a.push("--cgroup".into());
        a.push(self.cgroup.clone().into());
        a.push("--bpffs".into());
        a.push(self.bpffs.clone().into());
        a.push("--node".into());
        a.push(self.node.clone().into());
        a.extend(self.extra_args.iter().map(Into::into));
        // The agent's HTTP listeners default to kube-proxy's fixed ports when it
        // watches the API: a test that wants one names its own free port.
        if self.kubeconfig.is_some() {
            for flag in ["--health-addr", "--metrics-bind-address"] {
                if !self.extra_args.iter().any(|x| x == flag) {
                    a.push(flag.into());
                    a.push("off".into());
                }
            }
        }
        // An agent in the host's network namespace never attaches to the host's
        // devices: without an explicit --devices it gets none.
        if self.netns.is_none() && !self.extra_args.iter().any(|x| x == "--devices") {
            a.push("--devices".into());
            a.push("none".into());
        }
        a
    }
}

/// A running `socklb agent`, in the host network namespace (or the one of
/// [`AgentConfig::netns`]) and not in the test cgroup,
/// with stdout and stderr going to a log file in a temp dir of its own.
///
/// Drop ends it (SIGTERM, then SIGKILL) if [`Agent::stop`] was not called, and prints
/// its log to stderr when the thread is panicking (a failing test shows what the agent
/// said).
#[derive(Debug)]
pub struct Agent {
    child: Child,
    log_path: PathBuf,
    config: AgentConfig,
    // Removed after the child ended (fields drop in order).
    _logs: TempDir,
}

impl Agent {
    /// Starts `socklb agent --manifests DIR --cgroup CGROUP --bpffs PINDIR --node NODE`.
    pub fn start(config: &AgentConfig) -> Result<Agent> {
        let bin = match &config.bin {
            Some(bin) => bin.clone(),
            None => try_socklb_bin()?,
        };
        let logs = TempDir::new("agent")?;
        let log_path = logs.path().join("agent.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = match config.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.args(config.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("NO_COLOR", "1"); // plain text in the log file
        for (k, v) in &config.env {
            cmd.env(k, v);
        }
        let opts = match &config.netns {
            Some(netns) => SpawnOpts::new().netns(netns),
            None => SpawnOpts::new(),
        };
        let child = Child::spawn(cmd, &opts)?;
        Ok(Agent {
            child,
            log_path,
            config: config.clone(),
            _logs: logs,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Whether the agent is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Its exit status, if it exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until its log contains `needle` (false on timeout or when it exited).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.log().contains(needle) || !self.child.is_running()
        }) && self.log().contains(needle)
    }

    /// SIGTERM by pid and wait (up to [`AGENT_STOP_GRACE`], then SIGKILL). Fails, with
    /// the log's tail, unless it exited with status 0.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let (status, killed) = self.child.terminate(AGENT_STOP_GRACE)?;
        if killed {
            bail!(
                "socklb agent did not exit within {AGENT_STOP_GRACE:?} of SIGTERM and was killed; log tail:\n{}",
                self.log_tail(40)
            );
        }
        if !status.success() {
            bail!(
                "socklb agent exited with {status}; log tail:\n{}",
                self.log_tail(40)
            );
        }
        Ok(status)
    }

    /// SIGKILL by pid, and waits until it is reaped: the agent gets no chance to
    /// finish what it was doing (the chaos tests' crash).
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.child.signal(libc::SIGKILL)?;
        match self.child.wait_timeout(AGENT_STOP_GRACE)? {
            Some(status) => Ok(status),
            None => bail!(
                "socklb agent (pid {}) still runs {AGENT_STOP_GRACE:?} after SIGKILL",
                self.pid()
            ),
        }
    }

    /// `socklb uninstall` for this agent's cgroup and pin directory.
    pub fn uninstall(&self) -> Result<Output> {
        uninstall(&self.config.cgroup, &self.config.bpffs)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.terminate(crate::child::DEFAULT_GRACE);
        if std::thread::panicking() {
            eprintln!(
                "---- socklb agent log ({}) ----\n{}\n---- end of agent log ----",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_of_a_test_binary_is_above_deps() {
        let dir = target_profile_dir().unwrap_or_default();
        assert_ne!(dir.file_name().and_then(|n| n.to_str()), Some("deps"));
    }

    #[test]
    fn agent_command_line() {
        let c = AgentConfig::new("/m", "/cg", "/sys/fs/bpf/x", "node-a");
        let a: Vec<String> = c
            .args()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a,
            [
                "agent",
                "--manifests",
                "/m",
                "--cgroup",
                "/cg",
                "--bpffs",
                "/sys/fs/bpf/x",
                "--node",
                "node-a",
                "--devices",
                "none"
            ]
        );
        // In a namespace of its own, or with devices given, nothing is added.
        let c = c.in_netns("/run/netns/x");
        assert!(!c.args().iter().any(|a| a == "none"));
    }
}
