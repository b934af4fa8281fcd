//! The Linux capabilities the agent needs, checked before it touches the kernel, so a
//! container started with too few says which one is missing and why instead of
//! failing deep inside a program load with EPERM.
//!
//! Required ([`AGENT_NEEDS`]):
//! - CAP_BPF: creating maps, loading programs and BTF, pinning in bpffs;
//! - CAP_NET_ADMIN: loading the cgroup socket-address and TC programs (networking
//!   program types), attaching them to a cgroup, and the clsact qdisc and filters on
//!   the node's devices (netlink);
//! - CAP_PERFMON: the verifier accepts the TC program's packet pointer plus a
//!   variable offset (the header parser's IP options) only from a loader that may
//!   leak pointers (`bpf_allow_ptr_leaks`), and tracing programs (socket iterators)
//!   need it to load at all.
//!
//! CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON (kernels before 5.8 knew only it), so
//! a privileged agent passes too.
//!
//! For stale-socket termination in the pods' network namespaces
//! ([`STALE_SOCKETS_IN_PODS_NEED`]; without them it stays in the agent's own):
//! CAP_SYS_PTRACE (opening /proc/PID/ns/net of a process whose capabilities the agent
//! does not all have) and CAP_SYS_ADMIN (setns into it).
//!
//! Nothing else: no CAP_SYS_RESOURCE (memory of maps is charged to the cgroup, not
//! RLIMIT_MEMLOCK, since 5.11), no CAP_DAC_OVERRIDE (the pin directory belongs to the
//! agent's user), no mounts.

use std::fmt;

/// A capability number (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Bit number in the capability sets.
    pub bit: u32,
    /// Its name as in capabilities(7).
    pub name: &'static str,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

pub const CAP_NET_ADMIN: Capability = Capability {
    bit: 12,
    name: "CAP_NET_ADMIN",
};
pub const CAP_SYS_PTRACE: Capability = Capability {
    bit: 19,
    name: "CAP_SYS_PTRACE",
};
pub const CAP_SYS_ADMIN: Capability = Capability {
    bit: 21,
    name: "CAP_SYS_ADMIN",
};
pub const CAP_PERFMON: Capability = Capability {
    bit: 38,
    name: "CAP_PERFMON",
};
pub const CAP_BPF: Capability = Capability {
    bit: 39,
    name: "CAP_BPF",
};

/// One capability the agent needs: what it is for, and which other capability also
/// grants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub capability: Capability,
    /// Also granted by this one (CAP_SYS_ADMIN for CAP_BPF and CAP_PERFMON).
    pub or: Option<Capability>,
    /// Why the agent needs it, for the error message.
    pub why: &'static str,
}

/// What `socklb agent` needs, in the order an error lists them.
pub const AGENT_NEEDS: [Requirement; 3] = [
    Requirement {
        capability: CAP_BPF,
        or: Some(CAP_SYS_ADMIN),
        why: "creating the maps, loading the programs, pinning them",
    },
    Requirement {
        capability: CAP_NET_ADMIN,
        or: None,
        why: "loading and attaching the socket hooks and TC programs, the devices' qdiscs",
    },
    Requirement {
        capability: CAP_PERFMON,
        or: Some(CAP_SYS_ADMIN),
        why: "the verifier accepts the TC program's variable-offset packet pointers only with it",
    },
];

/// What stale-socket termination needs beyond [`AGENT_NEEDS`] to reach the sockets of
/// the pods: without these it works in the agent's own network namespace only.
pub const STALE_SOCKETS_IN_PODS_NEED: [Requirement; 2] = [
    Requirement {
        capability: CAP_SYS_PTRACE,
        or: None,
        why: "opening /proc/PID/ns/net of a pod's process, whose capabilities the agent does not all have",
    },
    Requirement {
        capability: CAP_SYS_ADMIN,
        or: None,
        why: "entering a pod's network namespace (setns), where its sockets are iterated",
    },
];

/// The requirements an effective capability set (a bit mask) does not meet.
pub fn missing(effective: u64, needs: &[Requirement]) -> Vec<Requirement> {
    let has = |c: Capability| effective & (1u64 << c.bit) != 0;
    needs
        .iter()
        .filter(|r| !has(r.capability) && !r.or.is_some_and(has))
        .copied()
        .collect()
}

/// The `CapEff:` line of a /proc/PID/status text.
pub fn effective_from_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The error message for `missing` (empty: none).
pub fn describe_missing(missing: &[Requirement]) -> String {
    let list: Vec<String> = missing
        .iter()
        .map(|r| match r.or {
            Some(or) => format!("{} (or {or}): {}", r.capability, r.why),
            None => format!("{}: {}", r.capability, r.why),
        })
        .collect();
    format!(
        "missing capabilities: {}; run the agent with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
         (as manifests/daemonset.yaml does), or as a privileged root process",
        list.join("; ")
    )
}

/// This process's effective capabilities; None on a kernel that does not say (none
/// that socklb runs on).
pub fn effective() -> Result<Option<u64>, super::DatapathError> {
    let path = std::path::Path::new("/proc/self/status");
    let status = std::fs::read_to_string(path).map_err(|source| super::DatapathError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(effective_from_status(&status))
}

/// What of [`STALE_SOCKETS_IN_PODS_NEED`] this process lacks, described for a log line;
/// None when it has all.
pub fn stale_sockets_in_pods_missing() -> Option<String> {
    let effective = effective().ok().flatten()?;
    let missing = missing(effective, &STALE_SOCKETS_IN_PODS_NEED);
    (!missing.is_empty()).then(|| {
        missing
            .iter()
            .map(|r| format!("{} ({})", r.capability, r.why))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Checks this process's effective capabilities against [`AGENT_NEEDS`].
pub fn check_agent() -> Result<(), super::DatapathError> {
    // A kernel without the line: let the loads decide.
    let Some(effective) = effective()? else {
        return Ok(());
    };
    let missing = missing(effective, &AGENT_NEEDS);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(super::DatapathError::Capabilities(describe_missing(
            &missing,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |m, c| m | 1 << c.bit)
    }

    #[test]
    fn the_three_are_enough_and_each_is_needed() {
        let all = [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON];
        assert!(missing(mask(&all), &AGENT_NEEDS).is_empty());
        for drop in all {
            let rest: Vec<Capability> = all.iter().copied().filter(|c| *c != drop).collect();
            let m = missing(mask(&rest), &AGENT_NEEDS);
            assert_eq!(m.len(), 1);
            assert_eq!(m[0].capability, drop);
        }
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon_not_net_admin() {
        assert!(missing(mask(&[CAP_SYS_ADMIN, CAP_NET_ADMIN]), &AGENT_NEEDS).is_empty());
        let m = missing(mask(&[CAP_SYS_ADMIN]), &AGENT_NEEDS);
        assert_eq!(
            m.iter().map(|r| r.capability).collect::<Vec<_>>(),
            [CAP_NET_ADMIN]
        );
    }

    #[test]
    fn reads_the_effective_set_and_names_what_is_missing() {
        let status = "Name:\tsocklb\nCapInh:\t0000000000000000\nCapPrm:\t000000c000001000\n\
                      CapEff:\t000000c000001000\nCapBnd:\t000000c000001000\n";
        let eff = effective_from_status(status).unwrap();
        assert_eq!(eff, mask(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]));
        let text = describe_missing(&missing(mask(&[CAP_NET_ADMIN]), &AGENT_NEEDS));
        assert!(text.contains("CAP_BPF (or CAP_SYS_ADMIN)"), "{text}");
        assert!(text.contains("CAP_PERFMON (or CAP_SYS_ADMIN)"), "{text}");
        assert!(!text.contains("CAP_NET_ADMIN:"), "{text}");
    }
}
