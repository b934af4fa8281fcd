//! The address family a fixture runs in. Fixtures are written once, with IPv4 test
//! addresses; in [`Family::V6`] every test address a.b.c.d stands for the ULA
//! `fd00:a:b:c::d`, each octet's decimal digits read as a hex group (10.244.1.10 is
//! fd00:10:244:1::10, 192.0.2.11 is fd00:192:0:2::11), the rule the end-to-end suites
//! use (tests/src/family.rs), so the cluster has the same shape in both families and
//! a conntrack entry's addresses read back as the test addresses they stand for. A
//! prefix /N of IPv4 becomes /(16 + 2N).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

/// IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The address the test address `v4` stands for in this family.
    pub fn ip(self, v4: Ipv4Addr) -> IpAddr {
        match self {
            Family::V4 => v4.into(),
            Family::V6 => v6_of(v4).into(),
        }
    }

    /// A test CIDR ("10.244.2.0/24") in this family.
    pub fn cidr(self, v4: &str) -> String {
        let (addr, len) = v4.split_once('/').expect("a CIDR");
        let addr: Ipv4Addr = addr.parse().expect("an IPv4 CIDR");
        let len: u8 = len.parse().expect("a prefix length");
        format!("{}/{}", self.ip(addr), self.prefix(len))
    }

    /// A prefix length of IPv4 in this family.
    pub fn prefix(self, v4_prefix: u8) -> u8 {
        match self {
            Family::V4 => v4_prefix,
            Family::V6 => 16 + 2 * v4_prefix,
        }
    }

    /// The other family.
    pub fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    /// "IPv4" or "IPv6", as Kubernetes names them.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The programs' name prefix ("lb4", "lb6").
    pub fn programs(self) -> &'static str {
        match self {
            Family::V4 => "lb4",
            Family::V6 => "lb6",
        }
    }
}

/// The IPv6 twin of a test address: fd00:a:b:c::d with each octet's decimal digits as
/// the hex group.
pub fn v6_of(v4: Ipv4Addr) -> Ipv6Addr {
    // Decimal digits read as hex: 244 -> 0x244 (at most 0x255, always valid).
    let group = |octet: u8| u16::from_str_radix(&octet.to_string(), 16).expect("decimal digits");
    let [a, b, c, d] = v4.octets();
    Ipv6Addr::new(0xfd00, group(a), group(b), group(c), 0, 0, 0, group(d))
}

/// The test address an address of either family stands for (None: no twin's shape).
pub fn test_addr(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => {
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
    }
}

/// [`test_addr`] of a socket address; panics on an address of no twin's shape (every
/// address a fixture sees comes from a test address).
pub fn test_sock(sa: SocketAddr) -> SocketAddrV4 {
    let ip = test_addr(sa.ip()).unwrap_or_else(|| panic!("{sa} stands for no test address"));
    SocketAddrV4::new(ip, sa.port())
}

/// Runs each named fixture body (a `fn name(f: Family)` in scope) once per family, as
/// the tests `name::ipv4` and `name::ipv6`.
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
pub(crate) use each_family;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_read_back() {
        let a = Ipv4Addr::new(10, 244, 1, 10);
        assert_eq!(v6_of(a), "fd00:10:244:1::10".parse::<Ipv6Addr>().unwrap());
        assert_eq!(test_addr(v6_of(a).into()), Some(a));
        assert_eq!(Family::V6.cidr("192.0.2.0/24"), "fd00:192:0:2::/64");
    }
}
