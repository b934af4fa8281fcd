//! A named network namespace guard.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::child::{Child, SpawnOpts};
use crate::cmd::{ip, ip_in};
use crate::names;

/// Where `ip netns add` puts the namespace files.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A network namespace created with `ip netns add <name>` (with `lo` up) and deleted
/// with `ip netns del <name>` on Drop. Names are `slb<pid>-<n>`.
///
/// A new namespace has no routes at all besides loopback's, in particular no default
/// route; nothing here ever adds one.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with a fresh unique name and brings `lo` up.
    pub fn new() -> Result<NetNs> {
        let mut last_err = None;
        for _ in 0..32 {
            let name = names::netns_name();
            if PathBuf::from(NETNS_RUN_DIR).join(&name).exists() {
                continue; // a leftover of an earlier process with the same pid
            }
            match ip(["netns", "add", &name]) {
                Ok(_) => {
                    let ns = NetNs { name };
                    ns.ip(["link", "set", "lo", "up"])?;
                    return Ok(ns);
                }
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e.context("ip netns add")),
            None => bail!("no free network namespace name"),
        }
    }

    /// The namespace name (`ip -n NAME`, `nsenter --net=/run/netns/NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, for setns(2) ([`SpawnOpts::netns`]).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    /// Runs `ip -n NAME args...`; fails with ip's stderr.
    pub fn ip<I, S>(&self, args: I) -> Result<std::process::Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        ip_in(&self.name, args)
    }

    /// Spawns a command inside this namespace (optionally also in a cgroup).
    pub fn spawn(&self, cmd: Command, cgroup: Option<&std::path::Path>) -> Result<Child> {
        Child::spawn(
            cmd,
            &SpawnOpts::new().netns(self.path()).maybe_cgroup(cgroup),
        )
    }

    /// Runs a command to completion inside this namespace (optionally in a cgroup).
    pub fn output(
        &self,
        cmd: Command,
        cgroup: Option<&std::path::Path>,
        timeout: Duration,
    ) -> Result<std::process::Output> {
        Child::output(
            cmd,
            &SpawnOpts::new().netns(self.path()).maybe_cgroup(cgroup),
            timeout,
        )
    }

    /// Whether the namespace still has its name (its file under /run/netns).
    pub fn exists(&self) -> bool {
        netns_exists(&self.name)
    }
}

/// Whether `/run/netns/<name>` exists.
pub fn netns_exists(name: &str) -> bool {
    PathBuf::from(NETNS_RUN_DIR).join(name).exists()
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(["netns", "del", &self.name]) {
            eprintln!(
                "socklb-tests: could not delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}
