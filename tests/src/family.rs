//! The address family an end-to-end test runs in. Tests are written once, with IPv4
//! addresses, and run in each [`Family`]: in [`Family::V6`] every IPv4 test address
//! a.b.c.d stands for the ULA `fd00:a:b:c::d`, each octet's decimal digits read as a
//! hex group (10.244.1.10 is fd00:10:244:1::10, 10.96.0.10 is fd00:10:96::10), so
//! the addresses stay readable and a plan has the same shape in both families. A
//! prefix /N of IPv4 becomes /(16 + 2N) (10.244.0.0/16 is fd00:10:244::/48).
//!
//! Every sandbox is dual-stack: each pod and the node's bridge get the IPv6 twin of
//! their IPv4 address (see [`crate::sandbox`]); no namespace has a default route in
//! either family. [`Family::manifests`] rewrites a manifest for the family.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

/// IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Both families, for tests that run in each.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// "IPv4" or "IPv6", as Kubernetes names them.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The address a test's IPv4 address stands for in this family.
    pub fn ip(self, v4: Ipv4Addr) -> IpAddr {
        match self {
            Family::V4 => v4.into(),
            Family::V6 => v6_of(v4).into(),
        }
    }

    /// [`Family::ip`] of an address written as text ("10.96.0.10").
    pub fn ip_str(self, v4: &str) -> IpAddr {
        match v4.parse::<Ipv4Addr>() {
            Ok(v4) => self.ip(v4),
            Err(_) => panic!("{v4:?} is not an IPv4 test address"),
        }
    }

    /// The socket address a test's IPv4 socket address stands for.
    pub fn sock(self, v4: SocketAddrV4) -> SocketAddr {
        SocketAddr::new(self.ip(*v4.ip()), v4.port())
    }

    /// [`Family::sock`] of "10.96.0.10:80".
    pub fn sock_str(self, v4: &str) -> SocketAddr {
        match v4.parse::<SocketAddrV4>() {
            Ok(v4) => self.sock(v4),
            Err(_) => panic!("{v4:?} is not an IPv4 test socket address"),
        }
    }

    /// A prefix length of IPv4 in this family.
    pub fn prefix(self, v4_prefix: u8) -> u8 {
        match self {
            Family::V4 => v4_prefix,
            Family::V6 => 16 + 2 * v4_prefix,
        }
    }

    /// The address `ip` route and addr commands take for this family ("-4" / "-6").
    pub fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// A manifest (YAML or JSON text) rewritten for this family: every IPv4 address
    /// and CIDR becomes its IPv6 twin (quoted where YAML needs it: `fd00:...:` would
    /// otherwise read as a mapping), `addressType: IPv4` and `ipFamilies` entries
    /// name IPv6. Unchanged for IPv4.
    pub fn manifests(self, text: &str) -> String {
        match self {
            Family::V4 => text.to_string(),
            Family::V6 => rewrite_v6(text),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs each named test body (a `fn name(family: Family)` in scope) once per family,
/// as the tests `name::ipv4` and `name::ipv6`: the body is written once.
///
/// ```ignore
/// socklb_tests::each_family!(tcp_reaches_every_backend);
/// fn tcp_reaches_every_backend(f: Family) { /* ... */ }
/// ```
#[macro_export]
macro_rules! each_family {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn ipv4() {
                    super::$name($crate::family::Family::V4)
                }
                #[test]
                fn ipv6() {
                    super::$name($crate::family::Family::V6)
                }
            }
        )*
    };
}

/// A copy of the manifests directory `src` rewritten for `family`
/// ([`Family::manifests`]), for [`crate::Cluster::start`].
pub fn manifests_dir(family: Family, src: &std::path::Path) -> anyhow::Result<crate::ManifestDir> {
    use anyhow::Context as _;
    let dir = crate::ManifestDir::new()?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("a manifest's file name")?;
        dir.write(name, &family.manifests(&text))?;
    }
    Ok(dir)
}

/// The IPv6 twin of a test's IPv4 address: fd00:a:b:c::d with each octet's decimal
/// digits as the hex group.
pub fn v6_of(v4: Ipv4Addr) -> Ipv6Addr {
    let g = |octet: u8| -> u16 {
        // Decimal digits read as hex: 244 -> 0x244 (at most 0x255).
        u16::from_str_radix(&octet.to_string(), 16).unwrap_or(0)
    };
    let [a, b, c, d] = v4.octets();
    Ipv6Addr::new(0xfd00, g(a), g(b), g(c), 0, 0, 0, g(d))
}

/// The test IPv4 address an IPv6 twin stands for (None: not of that shape).
pub fn v4_of(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    if s[0] != 0xfd00 || s[4..7] != [0, 0, 0] {
        return None;
    }
    let octet = |group: u16| -> Option<u8> { format!("{group:x}").parse().ok() };
    Some(Ipv4Addr::new(
        octet(s[1])?,
        octet(s[2])?,
        octet(s[3])?,
        octet(s[7])?,
    ))
}

/// The pod an address belongs to: the IPv4 address itself, or the IPv4 address an
/// IPv6 twin stands for.
pub fn pod_key(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().or_else(|| v4_of(v6)),
    }
}

/// Replaces every dotted quad (optionally /prefix) by its IPv6 twin, quoting it where
/// it is not quoted yet, and the family names.
fn rewrite_v6(text: &str) -> String {
    let text = text
        .replace("addressType: IPv4", "addressType: IPv6")
        .replace("\"addressType\": \"IPv4\"", "\"addressType\": \"IPv6\"")
        // Compact JSON (socklb_core::builders::manifest_text).
        .replace("\"addressType\":\"IPv4\"", "\"addressType\":\"IPv6\"")
        .replace("[IPv4]", "[IPv6]")
        .replace("- IPv4\n", "- IPv6\n");
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.');
        if boundary
            && bytes[i].is_ascii_digit()
            && let Some((v4, prefix, len)) = dotted_quad(&text[i..])
        {
            let quoted = i > 0 && matches!(bytes[i - 1], b'"' | b'\'');
            let v6 = v6_of(v4);
            let shown = match prefix {
                Some(p) => {
                    // The network of the IPv6 prefix: host bits of the twin cleared.
                    let len6 = 16 + 2 * u32::from(p);
                    let mask = if len6 >= 128 {
                        u128::MAX
                    } else {
                        !(u128::MAX >> len6)
                    };
                    format!("{}/{len6}", Ipv6Addr::from(u128::from(v6) & mask))
                }
                None => v6.to_string(),
            };
            if quoted {
                out.push_str(&shown);
            } else {
                out.push('"');
                out.push_str(&shown);
                out.push('"');
            }
            i += len;
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A dotted quad at the start of `s` (and a /prefix), with its length in bytes; not
/// one followed by more address-like text (a version "1.2.3.4.5", an "a.b.c.d:port"
/// is fine: the port stays).
fn dotted_quad(s: &str) -> Option<(Ipv4Addr, Option<u8>, usize)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let candidate = &s[..end];
    if candidate.ends_with('.') || candidate.matches('.').count() != 3 {
        return None;
    }
    let v4: Ipv4Addr = candidate.parse().ok()?;
    let rest = &s[end..];
    if let Some(after) = rest.strip_prefix('/') {
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        if digits > 0
            && let Ok(p) = after[..digits].parse::<u8>()
            && p <= 32
        {
            return Some((v4, Some(p), end + 1 + digits));
        }
    }
    Some((v4, None, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_round_trip_and_read_like_the_ipv4_address() {
        for text in ["10.244.1.10", "10.96.0.10", "192.0.2.255", "0.0.0.1"] {
            let v4: Ipv4Addr = text.parse().unwrap();
            assert_eq!(v4_of(v6_of(v4)), Some(v4), "{text}");
        }
        assert_eq!(
            v6_of(Ipv4Addr::new(10, 244, 1, 10)),
            "fd00:10:244:1::10".parse::<Ipv6Addr>().unwrap()
        );
        assert!(v4_of("fd00:a::1".parse().unwrap()).is_none());
        assert_eq!(
            pod_key("::ffff:10.244.1.10".parse().unwrap()),
            Some(Ipv4Addr::new(10, 244, 1, 10))
        );
    }

    #[test]
    fn manifests_are_rewritten_for_ipv6() {
        let yaml = "spec:\n  clusterIP: 10.96.0.10\n  ipFamilies: [IPv4]\n  loadBalancerSourceRanges: [\"192.0.2.0/24\"]\naddressType: IPv4\nendpoints:\n- addresses: [10.244.1.10]\n  version: 1.2.3.4.5\n";
        let out = Family::V6.manifests(yaml);
        assert!(out.contains("clusterIP: \"fd00:10:96::10\""), "{out}");
        assert!(out.contains("ipFamilies: [IPv6]"), "{out}");
        assert!(out.contains("[\"fd00:192:0:2::/64\"]"), "{out}");
        assert!(out.contains("addressType: IPv6"), "{out}");
        assert!(out.contains("[\"fd00:10:244:1::10\"]"), "{out}");
        assert!(out.contains("version: 1.2.3.4.5"), "{out}");
        assert_eq!(Family::V4.manifests(yaml), yaml);
        let json = r#"{"addressType":"IPv4","endpoints":[{"addresses":["10.244.0.31"]}]}"#;
        assert_eq!(
            Family::V6.manifests(json),
            r#"{"addressType":"IPv6","endpoints":[{"addresses":["fd00:10:244::31"]}]}"#
        );
        assert_eq!(
            Family::V6.sock_str("10.96.0.10:80").to_string(),
            "[fd00:10:96::10]:80"
        );
    }
}
