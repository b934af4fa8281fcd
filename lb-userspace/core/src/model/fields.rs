//! The API server's rules for the fields socklb reads, as small pure functions:
//! name formats, how IP addresses are parsed (sloppily, as the API server still
//! does for existing objects) and which addresses can be an endpoint.
//!
//! Sources: k8s.io/apimachinery util/validation (ip.go, validation.go) and
//! pkg/apis/core/validation ValidateEndpointIP, v1.33-v1.35.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A DNS-1123 label: at most 63 characters of `[a-z0-9-]`, starting and ending with an
/// alphanumeric (namespaces, port names).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels
/// (EndpointSlice names, node names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9-_.]` starting and
/// ending with an alphanumeric (zone hints).
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// Parses an IP address as the API server does in every field socklb reads
/// (netutils.ParseIPSloppy; the StrictIPCIDRValidation gate is off by default through
/// 1.35, and objects stored before it keep their values anyway): IPv4 octets may carry
/// leading zeros, read as decimal (Go's reading, not libc's octal), and an IPv4-mapped
/// IPv6 address (`::ffff:10.96.0.10`) is the IPv4 address it maps.
pub fn parse_ip_sloppy(text: &str) -> Option<IpAddr> {
    if let Some(v4) = parse_ipv4_sloppy(text) {
        return Some(IpAddr::V4(v4));
    }
    let v6: Ipv6Addr = text.parse().ok()?;
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

/// Dotted-quad IPv4 with optional leading zeros per octet (at most three digits).
fn parse_ipv4_sloppy(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// Why the API server refuses `ip` as an endpoint address or external IP
/// (ValidateEndpointIP): unspecified, loopback, link-local unicast and link-local
/// multicast addresses. `None`: acceptable.
pub fn endpoint_ip_problem(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() {
                Some("may not be unspecified (0.0.0.0)")
            } else if v4.is_loopback() {
                Some("may not be in the loopback range (127.0.0.0/8)")
            } else if v4.is_link_local() {
                Some("may not be in the link-local range (169.254.0.0/16)")
            } else if v4.octets()[..3] == [224, 0, 0] {
                Some("may not be in the link-local multicast range (224.0.0.0/24)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            if v6.is_unspecified() {
                Some("may not be unspecified (::)")
            } else if v6.is_loopback() {
                Some("may not be in the loopback range (::1/128)")
            } else if segments[0] & 0xffc0 == 0xfe80 {
                Some("may not be in the link-local range (fe80::/10)")
            } else if segments[0] & 0xff0f == 0xff02 {
                Some("may not be in the link-local multicast range (ff02::/10)")
            } else {
                None
            }
        }
    }
}

/// Why an address the API server accepts can still never be a service frontend or a
/// backend that a socket is translated to: any multicast address (the API server's own
/// comment calls accepting global multicast "probably a bug") and the IPv4 limited
/// broadcast. Such an address is skipped with a warning, not the whole object.
pub fn unservable_ip_problem(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_multicast() => Some("is a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("is the broadcast address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("is a multicast address"),
        _ => None,
    }
}

/// Why an address cannot be a frontend of this node's data path although validation
/// lets it through (status.loadBalancer.ingress[].ip gets only a parse): the addresses
/// ValidateEndpointIP refuses, and the unservable ones. Address 0.0.0.0 in particular
/// would alias the NodePort entries of the service map.
pub fn frontend_ip_problem(ip: IpAddr) -> Option<&'static str> {
    endpoint_ip_problem(ip).or_else(|| unservable_ip_problem(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web", "web-1", "0abc", "a1-b2"] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert!(is_dns1123_subdomain("web-1.abc-xyz"));
        assert!(!is_dns1123_subdomain("web..x"));
        assert!(!is_dns1123_subdomain("Web"));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        assert!(is_label_value(""));
        assert!(is_label_value("zone-A_1.b"));
        assert!(!is_label_value("-zone"));
        assert!(!is_label_value("zone/a"));
    }

    #[test]
    fn sloppy_parse_reads_leading_zeros_as_decimal_and_unmaps_v4_in_v6() {
        let v4 = |s: &str| parse_ip_sloppy(s);
        assert_eq!(v4("010.001.002.003"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(v4("10.96.0.10"), Some("10.96.0.10".parse().unwrap()));
        assert_eq!(v4("::ffff:10.96.0.10"), Some("10.96.0.10".parse().unwrap()));
        assert_eq!(v4("fd00::1"), Some("fd00::1".parse().unwrap()));
        for bad in [
            "10.96.0",
            "10.96.0.256",
            "0010.1.1.1",
            "1.2.3.4 ",
            "",
            "1.2.3.-4",
        ] {
            assert_eq!(v4(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn endpoint_ip_rules_as_the_api_server_has_them() {
        let problem = |s: &str| endpoint_ip_problem(s.parse().unwrap());
        for rejected in [
            "0.0.0.0",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "224.0.0.1",
            "224.0.0.251",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "ff12::1",
        ] {
            assert!(problem(rejected).is_some(), "{rejected}");
        }
        // Accepted by the API server (and, except multicast and broadcast, by socklb).
        for accepted in [
            "10.244.0.1",
            "239.1.1.1",
            "255.255.255.255",
            "fd00::1",
            "ff05::1",
        ] {
            assert_eq!(problem(accepted), None, "{accepted}");
        }
        let unservable = |s: &str| unservable_ip_problem(s.parse().unwrap());
        assert!(unservable("239.1.1.1").is_some());
        assert!(unservable("255.255.255.255").is_some());
        assert!(unservable("ff05::1").is_some());
        assert!(unservable("10.244.0.1").is_none());
        assert!(frontend_ip_problem("0.0.0.0".parse().unwrap()).is_some());
    }
}
