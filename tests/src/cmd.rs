//! Running helper commands (`ip`, `mount`) and turning failures into readable errors.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// Runs `program args...` to completion; fails with its stderr when it exits non-zero.
pub fn run<I, S>(program: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    run_command(&mut cmd)
}

/// Runs a prepared command to completion; fails with its stderr when it exits non-zero.
pub fn run_command(cmd: &mut Command) -> Result<Output> {
    let shown = describe(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip args...`
pub fn ip<I, S>(args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run("ip", args)
}

/// `ip -n NETNS args...`: runs `ip` against a named namespace. (`ip -n` switches only
/// the `ip` process itself; our own processes enter namespaces with setns(2).)
pub fn ip_in<I, S>(netns: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("ip");
    cmd.arg("-n").arg(netns).args(args).stdin(Stdio::null());
    run_command(&mut cmd)
}

/// A shell-like rendering of a command, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_joins_program_and_args() {
        let mut c = Command::new("ip");
        c.args(["-n", "slb1-2", "link"]);
        assert_eq!(describe(&c), "ip -n slb1-2 link");
    }

    #[test]
    fn failures_carry_stderr() {
        let err = run("sh", ["-c", "echo boom >&2; exit 3"])
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("boom"), "{err}");
    }
}
