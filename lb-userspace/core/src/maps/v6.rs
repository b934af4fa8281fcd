//! The IPv6 maps' encoding of the family-agnostic keys (the `lb6_*` maps), as `v4.rs`
//! is for IPv4. Addresses are the 16 bytes in network order ([`lb_common::Addr6`]).
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use lb_common::{
    Addr6, AffinityMatch6Key, BACKEND_FLAG_LOCAL, Backend6, SRC_RANGE6_FRONTEND_BITS, SockKill6Key,
    SrcRange6Key, Svc6Key,
};

use super::{
    desired::{BackendKey, FrontendKey, Scope},
    port_from_map, port_to_map,
};
use crate::model::{IpCidr, Protocol};

/// An IPv6 address as the maps store it.
pub fn ip6_to_map(ip: Ipv6Addr) -> Addr6 {
    let o = ip.octets();
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

pub fn ip6_from_map(raw: &Addr6) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in raw.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// An IPv6 address that the IPv6 maps hold: not IPv4-mapped (an AF_INET6 socket to a
/// mapped address is served from the IPv4 maps).
fn v6(ip: IpAddr) -> Option<Ipv6Addr> {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => Some(v6),
        _ => None,
    }
}

/// Slot 0 of the frontend `key` in the IPv6 service map; None when it is not IPv6.
pub fn svc_key(key: &FrontendKey) -> Option<Svc6Key> {
    let ip = v6(key.ip)?;
    let proto = key.protocol.map_or(0, Protocol::as_ipproto);
    Some(
        Svc6Key::new(ip6_to_map(ip), port_to_map(key.port), proto, 0)
            .with_scope(key.scope.as_map()),
    )
}

/// The frontend of a service-map key (any slot); None for a protocol or scope this
/// agent does not write.
pub fn frontend_key(key: &Svc6Key) -> Option<FrontendKey> {
    let protocol = match key.proto {
        0 if key.dport == 0 => None,
        proto => Some(Protocol::from_ipproto(proto)?),
    };
    Some(FrontendKey {
        ip: IpAddr::V6(ip6_from_map(&key.address)),
        port: port_from_map(key.dport),
        protocol,
        scope: Scope::from_map(key.scope)?,
    })
}

/// A backend's IPv6 map value; None when it is not IPv6.
pub fn backend(key: &BackendKey) -> Option<Backend6> {
    let SocketAddr::V6(addr) = key.addr else {
        return None;
    };
    let ip = v6(IpAddr::V6(*addr.ip()))?;
    Some(Backend6 {
        address: ip6_to_map(ip),
        port: port_to_map(addr.port()),
        proto: key.protocol.as_ipproto(),
        flags: if key.local { BACKEND_FLAG_LOCAL } else { 0 },
    })
}

/// The backend of a map value; None for a protocol this agent does not write.
pub fn backend_key(value: &Backend6) -> Option<BackendKey> {
    Some(BackendKey {
        addr: SocketAddr::new(
            IpAddr::V6(ip6_from_map(&value.address)),
            port_from_map(value.port),
        ),
        protocol: Protocol::from_ipproto(value.proto)?,
        local: value.flags & BACKEND_FLAG_LOCAL != 0,
    })
}

/// The affinity match entry of backend `backend_id` of the frontend `svc` (slot 0).
pub fn affinity_match(svc: &Svc6Key, backend_id: u32) -> AffinityMatch6Key {
    AffinityMatch6Key {
        address: svc.address,
        dport: svc.dport,
        proto: svc.proto,
        scope: svc.scope,
        backend_id,
    }
}

/// The frontend (slot 0 key) of an affinity match entry.
pub fn affinity_match_frontend(key: &AffinityMatch6Key) -> Svc6Key {
    Svc6Key::new(key.address, key.dport, key.proto, 0).with_scope(key.scope)
}

/// The LPM entry allowing sources in `cidr` to reach the frontend `svc`; None when
/// `cidr` is not IPv6.
pub fn src_range(svc: &Svc6Key, cidr: &IpCidr) -> Option<(SrcRange6Key, u32)> {
    let IpAddr::V6(source) = cidr.addr else {
        return None;
    };
    let key = SrcRange6Key {
        address: svc.address,
        dport: svc.dport,
        proto: svc.proto,
        pad: 0,
        source: ip6_to_map(source),
    };
    Some((key, SRC_RANGE6_FRONTEND_BITS + u32::from(cidr.prefix_len)))
}

/// The frontend (external scope) and source prefix of an LPM entry; None when
/// malformed.
pub fn src_range_entry(key: &SrcRange6Key, prefix_len: u32) -> Option<(FrontendKey, IpCidr)> {
    let frontend = FrontendKey {
        ip: IpAddr::V6(ip6_from_map(&key.address)),
        port: port_from_map(key.dport),
        protocol: Some(Protocol::from_ipproto(key.proto)?),
        scope: Scope::External,
    };
    let len = prefix_len.checked_sub(SRC_RANGE6_FRONTEND_BITS)?;
    let cidr = IpCidr::new(
        IpAddr::V6(ip6_from_map(&key.source)),
        u8::try_from(len).ok()?,
    )?;
    Some((frontend, cidr))
}

/// The kill-map key of `backend` having left the internal frontend `frontend`; None
/// unless both are IPv6 and the frontend has a protocol.
pub fn sock_kill_key(frontend: &FrontendKey, backend: &BackendKey) -> Option<SockKill6Key> {
    let svc = svc_key(frontend).filter(|k| k.proto != 0)?;
    let be = self::backend(backend).filter(|b| b.proto == svc.proto)?;
    Some(SockKill6Key {
        svc_address: svc.address,
        backend_address: be.address,
        svc_port: svc.dport,
        backend_port: be.port,
        proto: svc.proto,
        pad: [0; 3],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::plan::FrontendAddr;

    #[test]
    fn keys_round_trip_and_mapped_or_v4_addresses_have_no_v6_encoding() {
        let key = FrontendKey::new(
            FrontendAddr {
                ip: "fd00:10:96::a".parse().unwrap(),
                port: 53,
                protocol: Protocol::Udp,
            },
            Scope::External,
        );
        let svc = svc_key(&key).unwrap();
        assert_eq!(frontend_key(&svc), Some(key));
        assert_eq!(frontend_key(&svc.with_slot(2)), Some(key));
        assert_eq!(
            ip6_from_map(&ip6_to_map("fd00::1".parse().unwrap())).to_string(),
            "fd00::1"
        );
        for other in ["10.96.0.10", "::ffff:10.96.0.10"] {
            let k = FrontendKey::wildcard(other.parse().unwrap());
            assert_eq!(svc_key(&k), None, "{other}");
        }
        let be = BackendKey {
            addr: "[fd00:10:244::5]:5353".parse().unwrap(),
            protocol: Protocol::Udp,
            local: false,
        };
        assert_eq!(backend_key(&backend(&be).unwrap()), Some(be));
        let kill = sock_kill_key(&key, &be).unwrap();
        assert_eq!(kill.svc_address, svc.address);
        assert_eq!(kill.backend_port, port_to_map(5353));
        let cidr: IpCidr = "fd00:192::/64".parse().unwrap();
        let (k, len) = src_range(&svc, &cidr).unwrap();
        assert_eq!(len, SRC_RANGE6_FRONTEND_BITS + 64);
        assert_eq!(src_range_entry(&k, len), Some((key, cidr)));
    }
}
