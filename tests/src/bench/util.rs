//! Running things for the benchmark: Ctrl-C handling, processes whose output goes to
//! files (checked for interruption while they run), a timing wrapper, and what the
//! memory figures read (/proc, bpftool).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use socklb_bench_results::MapMemory;
use socklb_tests::{Child, SpawnOpts, TempDir};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM/SIGHUP set a flag; the runner checks it between steps and while it
/// waits, then unwinds through its Drop guards.
pub fn install_signal_handlers() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction whose handler only stores to an atomic
        // (async-signal-safe); SA_RESTART keeps blocking calls from failing with EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error()).context("sigaction");
            }
        }
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails when Ctrl-C (or SIGTERM) arrived.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in small steps, failing early on interruption.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    Ok(())
}

/// What a process left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (stdout and stderr to files in `work`) as `opts` says, and waits up to
/// `timeout`, checking for interruption. The process is ended on timeout or interruption.
pub fn run_to_files(
    mut cmd: Command,
    opts: &SpawnOpts,
    timeout: Duration,
    work: &Path,
) -> Result<Finished> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let out_path = work.join(format!("out-{n}"));
    let err_path = work.join(format!("err-{n}"));
    cmd.stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    let shown = socklb_tests::cmd::describe(&cmd);
    let mut child = Child::spawn(cmd, opts)?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if interrupted() {
            drop(child);
            bail!("interrupted while running `{shown}`");
        }
        if Instant::now() >= deadline {
            drop(child);
            bail!("`{shown}` did not finish within {timeout:?}; ended it");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |p: &Path| {
        std::fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let f = Finished {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    Ok(f)
}

/// What `socklb-bench timed` prints.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timed {
    pub elapsed_ms: f64,
    pub success: bool,
    pub status: String,
    pub stderr_tail: String,
}

/// `socklb-bench timed`: runs PROGRAM with stdin from `stdin` and prints how long it
/// took, from spawn to exit (what a sync costs kube-proxy, which also execs the tool).
pub fn timed_main(stdin: Option<&Path>, program: &str, args: &[String]) -> Result<Timed> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.stdin(match stdin {
        Some(p) => Stdio::from(File::open(p).with_context(|| format!("open {}", p.display()))?),
        None => Stdio::null(),
    });
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {program}"))?;
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Timed {
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        success: out.status.success(),
        status: out.status.to_string(),
        stderr_tail: tail,
    })
}

/// Runs `program args < stdin` inside the network namespace file `netns` through the
/// `timed` wrapper and returns its time; fails when the tool failed.
pub fn timed_in(
    netns: &Path,
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
    timeout: Duration,
    work: &Path,
) -> Result<f64> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut cmd = Command::new(exe);
    cmd.arg("timed");
    if let Some(p) = stdin {
        cmd.arg("--stdin").arg(p);
    }
    cmd.arg("--").arg(program).args(args);
    let f = run_to_files(cmd, &SpawnOpts::new().netns(netns), timeout, work)?;
    let t: Timed = serde_json::from_str(f.stdout.trim()).with_context(|| {
        format!(
            "timed {program}: no report ({}): {}",
            f.status,
            f.stderr.trim()
        )
    })?;
    if !t.success {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            t.status,
            t.stderr_tail
        );
    }
    Ok(t.elapsed_ms)
}

/// Runs a command to completion inside `netns`; fails unless it exits 0.
pub fn run_in(
    netns: &Path,
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
    timeout: Duration,
    work: &Path,
) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(p) = stdin {
        cmd.stdin(File::open(p)?);
    }
    let f = run_to_files(cmd, &SpawnOpts::new().netns(netns), timeout, work)?;
    if !f.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            f.status,
            f.stderr.trim()
        );
    }
    Ok(f.stdout)
}

/// A work directory for rule files and process output.
pub fn work_dir(label: &str) -> Result<TempDir> {
    TempDir::new(label)
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => bail!("no VmRSS/VmHWM in /proc/{pid}/status"),
    }
}

/// `bpftool -j map show pinned PIN` for every map pinned directly in `dir`.
pub fn pinned_map_memory(dir: &Path) -> Result<Vec<MapMemory>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if !p.is_file() {
            continue;
        }
        let o = Command::new("bpftool")
            .arg("-j")
            .arg("map")
            .arg("show")
            .arg("pinned")
            .arg(&p)
            .output()
            .context("running bpftool")?;
        if !o.status.success() {
            continue; // a link or a program pin
        }
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).context("bpftool -j output")?;
        let get = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        out.push(MapMemory {
            name: v
                .get("name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string(),
            map_type: v
                .get("type")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string(),
            max_entries: get("max_entries"),
            bytes_memlock: get("bytes_memlock"),
        });
    }
    Ok(out)
}

/// Sum of `memlock` over the distinct BPF maps a process holds open (its fdinfo).
pub fn process_map_memory(pid: u32) -> Result<u64> {
    let mut by_id: BTreeMap<u64, u64> = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse::<u64>().ok()))
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            by_id.insert(id, memlock);
        }
    }
    Ok(by_id.values().sum())
}

/// `key=value` fields of a tracing log line.
pub fn log_fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// The first line of a tool's `--version` / `-V` output.
pub fn tool_version(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "not found".into())
}

/// The load generator's safety check (the same rule as `socklb-probe`): unless every
/// target is loopback, refuse to run in the host's network namespace or in one with a
/// default route.
pub fn ensure_isolated(targets: &[std::net::SocketAddrV4]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if targets.iter().all(|t| t.ip().is_loopback()) {
        return Ok(());
    }
    let own = std::fs::metadata("/proc/self/ns/net").context("stat /proc/self/ns/net")?;
    let host = std::fs::metadata("/proc/1/ns/net")
        .ok()
        .or_else(|| {
            let comm = std::fs::read_to_string("/proc/2/comm").ok()?;
            (comm.trim() == "kthreadd")
                .then(|| std::fs::metadata("/proc/2/ns/net").ok())
                .flatten()
        })
        .context("cannot compare with the host network namespace; refusing")?;
    if own.ino() == host.ino() && own.dev() == host.dev() {
        bail!(
            "refusing to send traffic from the host network namespace: run inside a benchmark namespace"
        );
    }
    let routes = std::fs::read_to_string("/proc/net/route").context("read /proc/net/route")?;
    let default = routes.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000"
    });
    if default {
        bail!("refusing to send traffic: this network namespace has a default route");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_of_a_tracing_line() {
        let l = "2025-01-01T00:00:00Z  INFO socklb::agent: data path updated services=10 changed=1 map_ops=3 latency_us=812";
        let f = log_fields(l);
        assert_eq!(f["map_ops"], "3");
        assert_eq!(f["latency_us"], "812");
        assert_eq!(f["services"], "10");
    }

    #[test]
    fn rss_of_this_process() {
        let (rss, hwm) = rss_bytes(std::process::id()).unwrap_or((0, 0));
        assert!(rss > 0 && hwm >= rss);
    }
}
