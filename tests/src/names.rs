//! Unique, short names for everything the sandbox creates.
//!
//! Names carry the creating process's pid and a per-process counter, so parallel tests
//! (threads of one process) and parallel test binaries never clash, and a leftover from a
//! crashed run can be traced back to its pid. Constructors still retry with the next
//! counter when a name exists (a leftover of an earlier process with the same pid).

use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of network namespace names.
pub const NETNS_PREFIX: &str = "slb";
/// Prefix of cgroup, pin directory and temp directory names.
pub const DIR_PREFIX: &str = "socklb-test";
/// Linux interface names hold at most 15 characters (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The next value of the process-wide counter.
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A fresh network namespace name: `slb<pid>-<n>` (at most 3 + 7 + 1 + 10 characters).
pub fn netns_name() -> String {
    netns_name_for(std::process::id(), next_id())
}

/// The namespace name for a given pid and counter value.
pub fn netns_name_for(pid: u32, n: u32) -> String {
    format!("{NETNS_PREFIX}{pid}-{n}")
}

/// A fresh directory name: `socklb-test-<pid>-<n>`.
pub fn dir_name() -> String {
    dir_name_for(std::process::id(), next_id())
}

/// The directory name for a given pid and counter value.
pub fn dir_name_for(pid: u32, n: u32) -> String {
    format!("{DIR_PREFIX}-{pid}-{n}")
}

/// Whether `name` is a valid Linux interface name (1..=15 bytes, no '/', ':' or space).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Host-side veth name of the `index`-th pod: `vh<index>`. It lives in the sandbox's own
/// node namespace, so it cannot clash with anything on the machine.
pub fn pod_veth_name(index: u32) -> String {
    format!("vh{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_are_unique_and_prefixed() {
        let a = netns_name();
        let b = netns_name();
        assert_ne!(a, b);
        assert!(a.starts_with("slb"));
        assert!(a.contains(&std::process::id().to_string()));
    }

    #[test]
    fn worst_case_names_stay_short() {
        // pid_max is at most 4194304 (7 digits).
        let ns = netns_name_for(4_194_304, u32::MAX);
        assert!(ns.len() <= 21, "{ns}");
        assert!(valid_ifname(&pod_veth_name(u32::MAX)));
        assert_eq!(dir_name_for(12, 3), "socklb-test-12-3");
    }

    #[test]
    fn ifname_rules() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("br0"));
        assert!(valid_ifname("abcdefghijklmno"));
        assert!(!valid_ifname("abcdefghijklmnop"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname(".."));
    }
}
