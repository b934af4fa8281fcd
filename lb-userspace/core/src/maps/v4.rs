//! The IPv4 maps' encoding of the family-agnostic keys: the one place where a
//! frontend, a backend or an allowed source becomes an `lb4_*` map entry, and back
//! (adopting pinned maps). Everything above works with IpAddr.
use std::net::{IpAddr, SocketAddr};

use lb_common::{
    AffinityMatch4Key, BACKEND_FLAG_LOCAL, Backend4, SRC_RANGE_FRONTEND_BITS, SockKill4Key,
    SrcRange4Key, Svc4Key,
};

use super::{
    desired::{BackendKey, FrontendKey, Scope},
    ip_from_map, ip_to_map, port_from_map, port_to_map,
};
use crate::model::{IpCidr, Protocol};

/// Slot 0 of the frontend `key` in the IPv4 service map; None when `key` is not IPv4.
pub fn svc_key(key: &FrontendKey) -> Option<Svc4Key> {
    let IpAddr::V4(ip) = key.ip else {
        return None;
    };
    let proto = key.protocol.map_or(0, Protocol::as_ipproto);
    Some(
        Svc4Key::new(ip_to_map(ip), port_to_map(key.port), proto, 0).with_scope(key.scope.as_map()),
    )
}

/// The frontend of a service-map key (any slot); None for a protocol or scope this
/// agent does not write (a stray entry).
pub fn frontend_key(key: &Svc4Key) -> Option<FrontendKey> {
    let protocol = match key.proto {
        0 if key.dport == 0 => None,
        proto => Some(Protocol::from_ipproto(proto)?),
    };
    Some(FrontendKey {
        ip: IpAddr::V4(ip_from_map(key.address)),
        port: port_from_map(key.dport),
        protocol,
        scope: Scope::from_map(key.scope)?,
    })
}

/// A backend's IPv4 map value; None when it is not IPv4.
pub fn backend(key: &BackendKey) -> Option<Backend4> {
    let SocketAddr::V4(addr) = key.addr else {
        return None;
    };
    Some(Backend4 {
        address: ip_to_map(*addr.ip()),
        port: port_to_map(addr.port()),
        proto: key.protocol.as_ipproto(),
        flags: if key.local { BACKEND_FLAG_LOCAL } else { 0 },
    })
}

/// The backend of a map value; None for a protocol this agent does not write.
pub fn backend_key(value: &Backend4) -> Option<BackendKey> {
    Some(BackendKey {
        addr: SocketAddr::new(
            IpAddr::V4(ip_from_map(value.address)),
            port_from_map(value.port),
        ),
        protocol: Protocol::from_ipproto(value.proto)?,
        local: value.flags & BACKEND_FLAG_LOCAL != 0,
    })
}

/// The affinity match entry of backend `backend_id` of the frontend `svc` (slot 0).
pub fn affinity_match(svc: &Svc4Key, backend_id: u32) -> AffinityMatch4Key {
    AffinityMatch4Key {
        address: svc.address,
        dport: svc.dport,
        proto: svc.proto,
        scope: svc.scope,
        backend_id,
    }
}

/// The frontend (slot 0 key) of an affinity match entry.
pub fn affinity_match_frontend(key: &AffinityMatch4Key) -> Svc4Key {
    Svc4Key::new(key.address, key.dport, key.proto, 0).with_scope(key.scope)
}

/// The LPM entry allowing sources in `cidr` to reach the frontend `svc` (key data and
/// prefix length); None when `cidr` is not IPv4.
pub fn src_range(svc: &Svc4Key, cidr: &IpCidr) -> Option<(SrcRange4Key, u32)> {
    let IpAddr::V4(source) = cidr.addr else {
        return None;
    };
    let key = SrcRange4Key {
        address: svc.address,
        dport: svc.dport,
        proto: svc.proto,
        pad: 0,
        source: ip_to_map(source),
    };
    Some((key, SRC_RANGE_FRONTEND_BITS + u32::from(cidr.prefix_len)))
}

/// The frontend (external scope) and source prefix of an LPM entry; None when the
/// entry is malformed.
pub fn src_range_entry(key: &SrcRange4Key, prefix_len: u32) -> Option<(FrontendKey, IpCidr)> {
    let frontend = FrontendKey {
        ip: IpAddr::V4(ip_from_map(key.address)),
        port: port_from_map(key.dport),
        protocol: Some(Protocol::from_ipproto(key.proto)?),
        scope: Scope::External,
    };
    let len = prefix_len.checked_sub(SRC_RANGE_FRONTEND_BITS)?;
    let cidr = IpCidr::new(IpAddr::V4(ip_from_map(key.source)), u8::try_from(len).ok()?)?;
    Some((frontend, cidr))
}

/// The kill-map key of `backend` having left the internal frontend `frontend` (the
/// sockets translated to it for that frontend are stale); None unless both are IPv4
/// and the frontend has a protocol.
pub fn sock_kill_key(frontend: &FrontendKey, backend: &BackendKey) -> Option<SockKill4Key> {
    let svc = svc_key(frontend).filter(|k| k.proto != 0)?;
    let be = self::backend(backend).filter(|b| b.proto == svc.proto)?;
    Some(SockKill4Key {
        svc_address: svc.address,
        svc_port: svc.dport,
        backend_port: be.port,
        backend_address: be.address,
        proto: svc.proto,
        pad: [0; 3],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::FrontendAddr;

    #[test]
    fn keys_round_trip_and_other_families_have_no_v4_encoding() {
        let key = FrontendKey::new(
            FrontendAddr {
                ip: "10.96.0.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Udp,
            },
            Scope::External,
        );
        let svc = svc_key(&key).unwrap();
        assert_eq!(frontend_key(&svc), Some(key));
        assert_eq!(frontend_key(&svc.with_slot(3)), Some(key));
        let wildcard = FrontendKey::wildcard("10.96.0.10".parse().unwrap());
        assert_eq!(frontend_key(&svc_key(&wildcard).unwrap()), Some(wildcard));
        let v6 = FrontendKey::wildcard("fd00::1".parse().unwrap());
        assert_eq!(svc_key(&v6), None);

        let be = BackendKey {
            addr: "10.244.0.1:8080".parse().unwrap(),
            protocol: Protocol::Tcp,
            local: true,
        };
        assert_eq!(backend_key(&backend(&be).unwrap()), Some(be));
        let udp_be = BackendKey {
            protocol: Protocol::Udp,
            ..be
        };
        let kill = sock_kill_key(&key, &udp_be).unwrap();
        assert_eq!(
            (kill.svc_address, kill.svc_port, kill.backend_port),
            (svc.address, svc.dport, port_to_map(8080))
        );
        assert_eq!(
            kill.backend_address,
            ip_to_map("10.244.0.1".parse().unwrap())
        );
        assert_eq!((kill.proto, kill.pad), (lb_common::IPPROTO_UDP, [0; 3]));
        // A NodePort (address 0) keeps address 0; no key across protocols or families.
        let nodeport = FrontendKey {
            ip: "0.0.0.0".parse().unwrap(),
            ..key
        };
        assert_eq!(sock_kill_key(&nodeport, &udp_be).unwrap().svc_address, 0);
        assert_eq!(sock_kill_key(&key, &be), None);
        assert_eq!(sock_kill_key(&wildcard, &udp_be), None);
        let cidr: IpCidr = "192.0.2.0/24".parse().unwrap();
        let (k, len) = src_range(&svc, &cidr).unwrap();
        assert_eq!(src_range_entry(&k, len), Some((key, cidr)));
    }
}
