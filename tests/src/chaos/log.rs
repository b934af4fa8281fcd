//! Following an agent's log as it is written: the lines a chaos run times its kills by.

use std::io::{Read as _, Seek as _};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::agent::Agent;

/// The agent's log filter: its default, and the manifest source's debug line
/// [`CHANGED`], logged right before the events of a change go to the sync.
pub const AGENT_LOG: &str =
    "info,kube_client::client::builder=off,socklb::sources::manifest_dir=debug";
/// Logged when the manifest source hands a change to the agent's loop.
pub const CHANGED: &str = "manifests changed";
/// Logged when a sync wrote the maps.
pub const UPDATED: &str = "data path updated";
/// Logged when a starting agent has attached its programs (adoption and its first
/// sync follow).
pub const ATTACHED: &str = "socket hooks and TC programs attached";
/// Logged when the first sync is done.
pub const READY: &str = ": ready ";

/// Reads what a log file gains, line by line.
pub struct LogTail {
    file: std::fs::File,
    pending: String,
}

impl LogTail {
    /// From the current end of the file.
    pub fn at_end(path: &Path) -> Result<LogTail> {
        let mut tail = Self::from_start(path)?;
        tail.file.seek(std::io::SeekFrom::End(0))?;
        Ok(tail)
    }

    /// From the start of the file.
    pub fn from_start(path: &Path) -> Result<LogTail> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(LogTail {
            file,
            pending: String::new(),
        })
    }

    /// Waits (polling every 200 us) for a line with `needle`; returns it when it came
    /// within `timeout`. The lines before it are consumed.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 8192];
        loop {
            while let Some(nl) = self.pending.find('\n') {
                let line: String = self.pending.drain(..=nl).collect();
                if line.contains(needle) {
                    return Some(line);
                }
            }
            if let Ok(n) = self.file.read(&mut buf)
                && n > 0
            {
                self.pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                continue;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl LogTail {
    /// Waits for lines with `needle` until none came for `quiet` (or `timeout`
    /// passed); returns when the last one came, if any did.
    pub fn last_of(&mut self, needle: &str, quiet: Duration, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_for(needle, quiet.min(left)) {
                Some(_) => last = Some(Instant::now()),
                None => return last,
            }
        }
    }
}

/// Waits (polling every 5 ms) until the agent logged [`READY`]; false on timeout or
/// when it exited first.
pub fn wait_ready(agent: &mut Agent, timeout: Duration) -> bool {
    crate::wait::wait_until_every(timeout, Duration::from_millis(5), || {
        agent.log().contains(READY) || !agent.is_running()
    }) && agent.log().contains(READY)
}
