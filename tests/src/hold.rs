//! Driving `socklb-probe hold` (long-lived sockets blocked in recv(), reporting what
//! happens to them) from a test or the benchmark.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::agent::probe_bin;
use crate::child::{Child, SpawnOpts};

/// The sockets a `hold` probe opens.
#[derive(Clone, Debug, Default)]
pub struct HoldSpec {
    pub udp: Vec<SocketAddr>,
    pub udp_sendto: Vec<SocketAddr>,
    /// (first, then): connected to `first`, then connected again to `then`.
    pub udp_moved: Vec<(SocketAddr, SocketAddr)>,
    pub tcp: Vec<SocketAddr>,
    pub repeat: usize,
    /// Wait for the first answer of each socket (learns its backend).
    pub reply: bool,
    /// After an error, open a new socket to the same target.
    pub reconnect: bool,
}

impl HoldSpec {
    pub fn new() -> Self {
        Self {
            repeat: 1,
            reply: true,
            ..Self::default()
        }
    }
    /// A connected UDP socket.
    pub fn udp(mut self, to: SocketAddr) -> Self {
        self.udp.push(to);
        self
    }
    /// An unconnected UDP socket (sendto/recvfrom).
    pub fn udp_sendto(mut self, to: SocketAddr) -> Self {
        self.udp_sendto.push(to);
        self
    }
    /// A UDP socket connected to `first`, then connected again to `then`.
    pub fn udp_moved(mut self, first: SocketAddr, then: SocketAddr) -> Self {
        self.udp_moved.push((first, then));
        self
    }
    /// A TCP connection.
    pub fn tcp(mut self, to: SocketAddr) -> Self {
        self.tcp.push(to);
        self
    }
    /// The whole list `n` times.
    pub fn repeat(mut self, n: usize) -> Self {
        self.repeat = n;
        self
    }
    /// Send the first query without waiting for an answer.
    pub fn no_reply(mut self) -> Self {
        self.reply = false;
        self
    }
    pub fn reconnect(mut self) -> Self {
        self.reconnect = true;
        self
    }

    /// The command line after `socklb-probe`.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["hold".to_string()];
        for (flag, list) in [("--udp", &self.udp), ("--udp-sendto", &self.udp_sendto)] {
            for to in list {
                a.push(flag.into());
                a.push(to.to_string());
            }
        }
        for (first, then) in &self.udp_moved {
            a.push("--udp-moved".into());
            a.push(format!("{first},{then}"));
        }
        for to in &self.tcp {
            a.push("--tcp".into());
            a.push(to.to_string());
        }
        a.push("--repeat".into());
        a.push(self.repeat.to_string());
        if !self.reply {
            a.push("--no-reply".into());
        }
        if self.reconnect {
            a.push("--reconnect".into());
        }
        a
    }
}

/// A socket as the ready line reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct HeldSocket {
    pub index: usize,
    pub kind: String,
    pub to: String,
    pub local: Option<String>,
    /// The backend id of its first answer (None: no answer waited for, or an error).
    pub backend: Option<String>,
    pub error: Option<String>,
}

/// A running `socklb-probe hold`. Every JSON line it printed after the ready line is
/// kept in order ([`HoldProbe::events`]).
#[derive(Debug)]
pub struct HoldProbe {
    pub sockets: Vec<HeldSocket>,
    events: Vec<Value>,
    rx: mpsc::Receiver<Value>,
    stdin: Option<ChildStdin>,
    // Dropped last: ends the process by pid.
    child: Child,
}

impl HoldProbe {
    /// Starts the probe in network namespace `netns` (a `/run/netns/NAME` file),
    /// optionally in `cgroup`, and waits for its ready line.
    pub fn spawn(
        netns: &Path,
        cgroup: Option<&Path>,
        spec: &HoldSpec,
        timeout: Duration,
    ) -> Result<HoldProbe> {
        let mut cmd = Command::new(probe_bin());
        cmd.args(spec.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = Child::spawn(cmd, &SpawnOpts::new().netns(netns).maybe_cgroup(cgroup))?;
        let stdout = child.take_stdout().context("stdout not piped")?;
        let stdin = child.take_stdin();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // The measuring side runs below the system it measures (nice 10).
            // SAFETY: plain syscalls on this thread's own id.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 10);
            }
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "garbage", "line": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let ready = rx
            .recv_timeout(timeout)
            .map_err(|_| anyhow!("socklb-probe hold printed no ready line within {timeout:?}"))?;
        if ready["event"] != "ready" {
            bail!("socklb-probe hold: expected its ready line, got {ready}");
        }
        let sockets: Vec<HeldSocket> = serde_json::from_value(ready["sockets"].clone())
            .with_context(|| format!("ready line {ready}"))?;
        Ok(HoldProbe {
            sockets,
            events: Vec::new(),
            rx,
            stdin,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Every event so far (after taking what arrived).
    pub fn events(&mut self) -> &[Value] {
        while let Ok(v) = self.rx.try_recv() {
            self.events.push(v);
        }
        &self.events
    }

    /// Waits up to `timeout` until `done` holds for the events so far; whether it did.
    pub fn wait(&mut self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self.events()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(v) => self.events.push(v),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return done(self.events()),
            }
        }
    }

    /// Makes every socket send one query now.
    pub fn query(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(b"query\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes stdin: the probe prints `done` and exits.
    pub fn quit(&mut self) {
        drop(self.stdin.take());
    }
}

/// Events of `kind` ("reply", "error", ...) about socket `index`.
pub fn events_of<'a>(events: &'a [Value], kind: &str, index: usize) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == kind && e["index"].as_u64() == Some(index as u64))
        .collect()
}

/// The errors reported: (socket index, error name, CLOCK_MONOTONIC ns).
pub fn errors(events: &[Value]) -> Vec<(usize, String, u64)> {
    events
        .iter()
        .filter(|e| e["event"] == "error")
        .map(|e| {
            (
                e["index"].as_u64().unwrap_or(u64::MAX) as usize,
                e["error"].as_str().unwrap_or("").to_string(),
                e["mono_ns"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// CLOCK_MONOTONIC in ns, the clock of the probe's `mono_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
