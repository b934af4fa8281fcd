//! Desired data path state: the plan's frontends in the maps' terms.
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
};

use lb_common::{SVC_FLAG_WILDCARD, SvcAction};

use crate::plan::{Action, Frontend, FrontendKind};

/// A frontend in the service map: (address, port, protocol); port 0 and protocol 0 is
/// the address wildcard that refuses ports the service does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

impl FrontendKey {
    pub fn wildcard(ip: Ipv4Addr) -> Self {
        Self { ip, port: 0, proto: 0 }
    }

    pub fn is_wildcard(&self) -> bool {
        self.port == 0 && self.proto == 0
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_wildcard() {
            write!(f, "{}:*", self.ip)
        } else {
            write!(f, "{}:{}/{}", self.ip, self.port, proto_name(self.proto))
        }
    }
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        lb_common::IPPROTO_TCP => "TCP",
        lb_common::IPPROTO_UDP => "UDP",
        0 => "any",
        _ => "?",
    }
}

/// A backend in the backend map; its id is allocated by the diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub addr: SocketAddrV4,
    pub proto: u8,
}

/// What one frontend should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub action: SvcAction,
    /// Sorted, without duplicates; empty unless the action is Forward.
    pub backends: Vec<BackendKey>,
    pub affinity_timeout_s: u32,
    pub flags: u8,
}

/// The whole desired content of the service and backend maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: HashMap<FrontendKey, DesiredFrontend>,
}

/// Two services claim the same frontend; the first one (by service name) keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendConflict {
    pub key: FrontendKey,
    pub kept: String,
    pub dropped: String,
}

impl fmt::Display for FrontendConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is claimed by {} and {}; {} keeps it", self.key, self.kept, self.dropped, self.kept)
    }
}

impl DesiredState {
    /// Builds the desired state from plan frontends (all services at once).
    pub fn from_frontends<'a>(
        frontends: impl IntoIterator<Item = &'a Frontend>,
    ) -> (Self, Vec<FrontendConflict>) {
        let mut by_service: BTreeMap<&str, Vec<&Frontend>> = BTreeMap::new();
        for fe in frontends {
            by_service.entry(&fe.service).or_default().push(fe);
        }
        let mut index = DesiredIndex::default();
        for (service, fes) in by_service {
            index.set_service(service, fes);
        }
        let conflicts = index.conflicts();
        (index.desired, conflicts)
    }
}

/// The desired state, maintained service by service: replacing one service's
/// frontends reports exactly the map keys whose desired content changed, so an
/// update costs work proportional to that service.
///
/// Two services may claim one frontend (only hand-written manifests can do that):
/// the first by service name keeps it, as in `plan::compute_plan`. A service address
/// has its wildcard entry while any frontend uses that address.
#[derive(Clone, Debug, Default)]
pub struct DesiredIndex {
    /// Every service's claim on each frontend.
    claims: HashMap<FrontendKey, BTreeMap<String, DesiredFrontend>>,
    /// The frontends each service claims.
    by_service: HashMap<String, Vec<FrontendKey>>,
    /// Number of claimed (non-wildcard) frontends per service address.
    address_refs: HashMap<Ipv4Addr, usize>,
    pub desired: DesiredState,
}

impl DesiredIndex {
    /// Replaces the frontends of `service` (empty: the service is gone). Returns the
    /// keys whose desired entry changed. Only ClusterIP frontends are kept (see
    /// [`programmed_here`]).
    pub fn set_service<'a>(
        &mut self,
        service: &str,
        frontends: impl IntoIterator<Item = &'a Frontend>,
    ) -> Vec<FrontendKey> {
        let mut touched: Vec<FrontendKey> = Vec::new();
        for key in self.by_service.remove(service).unwrap_or_default() {
            if let Some(claims) = self.claims.get_mut(&key) {
                claims.remove(service);
                if claims.is_empty() {
                    self.claims.remove(&key);
                }
            }
            self.release_address(key.ip, &mut touched);
            touched.push(key);
        }
        let mut keys = Vec::new();
        for fe in frontends.into_iter().filter(|fe| programmed_here(fe.kind)) {
            let proto = fe.protocol.as_ipproto();
            let key = FrontendKey { ip: fe.ip, port: fe.port, proto };
            if keys.contains(&key) {
                continue;
            }
            keys.push(key);
            self.claims.entry(key).or_default().insert(service.to_string(), desired_frontend(fe, proto));
            self.acquire_address(fe.ip, &mut touched);
            touched.push(key);
        }
        if !keys.is_empty() {
            self.by_service.insert(service.to_string(), keys);
        }
        touched.sort();
        touched.dedup();
        touched.retain(|key| self.refresh(*key));
        touched
    }

    /// Frontends claimed by more than one service.
    pub fn conflicts(&self) -> Vec<FrontendConflict> {
        let mut out: Vec<FrontendConflict> = self
            .claims
            .iter()
            .filter(|(_, c)| c.len() > 1)
            .flat_map(|(key, claims)| {
                let mut names = claims.keys();
                let kept = names.next().cloned().unwrap_or_default();
                names.map(move |dropped| FrontendConflict { key: *key, kept: kept.clone(), dropped: dropped.clone() })
            })
            .collect();
        out.sort_by(|a, b| (a.key, &a.dropped).cmp(&(b.key, &b.dropped)));
        out
    }

    fn acquire_address(&mut self, ip: Ipv4Addr, touched: &mut Vec<FrontendKey>) {
        let refs = self.address_refs.entry(ip).or_default();
        *refs += 1;
        if *refs == 1 {
            touched.push(FrontendKey::wildcard(ip));
        }
    }

    fn release_address(&mut self, ip: Ipv4Addr, touched: &mut Vec<FrontendKey>) {
        if let Some(refs) = self.address_refs.get_mut(&ip) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                self.address_refs.remove(&ip);
                touched.push(FrontendKey::wildcard(ip));
            }
        }
    }

    /// Recomputes the desired entry of `key`; true when it changed.
    fn refresh(&mut self, key: FrontendKey) -> bool {
        let want = if key.is_wildcard() {
            self.address_refs.contains_key(&key.ip).then(wildcard_frontend)
        } else {
            self.claims.get(&key).and_then(|c| c.values().next()).cloned()
        };
        let have = self.desired.frontends.get(&key);
        if have == want.as_ref() {
            return false;
        }
        match want {
            Some(w) => self.desired.frontends.insert(key, w),
            None => self.desired.frontends.remove(&key),
        };
        true
    }
}

/// Whether the maps of this data path hold frontends of `kind`. Only ClusterIP: the
/// cgroup socket hooks translate connections this node's own sockets make to a service
/// address. NodePort, LoadBalancer and ExternalIP frontends serve traffic that arrives
/// from outside the node, which needs the TC data path (a later issue); programming them
/// here would be wrong, not just early: the socket hooks would send this node's own
/// connections to an external address through the externalTrafficPolicy backends,
/// where kube-proxy short-circuits in-cluster clients to the cluster endpoints, and a
/// NodePort frontend (address `*`) has no address to key the map with.
fn programmed_here(kind: FrontendKind) -> bool {
    match kind {
        FrontendKind::ClusterIP => true,
        FrontendKind::NodePort | FrontendKind::LoadBalancer | FrontendKind::ExternalIP => false,
    }
}

fn wildcard_frontend() -> DesiredFrontend {
    DesiredFrontend { action: SvcAction::Reject, backends: Vec::new(), affinity_timeout_s: 0, flags: SVC_FLAG_WILDCARD }
}

fn desired_frontend(fe: &Frontend, proto: u8) -> DesiredFrontend {
    let action = match fe.action {
        Action::Forward if !fe.backends.is_empty() => SvcAction::Forward,
        // A forward without backends cannot translate: refuse rather than let the
        // connect leave towards an address nobody owns.
        Action::Forward | Action::Reject => SvcAction::Reject,
        Action::Drop => SvcAction::Drop,
    };
    let mut backends: Vec<BackendKey> = if action == SvcAction::Forward {
        fe.backends.iter().map(|addr| BackendKey { addr: *addr, proto }).collect()
    } else {
        Vec::new()
    };
    backends.sort();
    backends.dedup();
    DesiredFrontend { action, backends, affinity_timeout_s: fe.affinity_timeout_s, flags: 0 }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn frontend(service: &str, kind: FrontendKind, address: &str) -> Frontend {
        let address: SocketAddrV4 = address.parse().unwrap();
        Frontend {
            service: service.into(),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            kind,
            ip: *address.ip(),
            port: address.port(),
            action: Action::Forward,
            backends: vec!["10.244.0.11:8080".parse().unwrap()],
            affinity_timeout_s: 0,
        }
    }

    fn key(address: &str) -> FrontendKey {
        let address: SocketAddrV4 = address.parse().unwrap();
        FrontendKey { ip: *address.ip(), port: address.port(), proto: lb_common::IPPROTO_TCP }
    }

    #[test]
    fn only_cluster_ip_frontends_are_programmed() {
        let external = [
            frontend("demo/web", FrontendKind::NodePort, "0.0.0.0:30080"),
            frontend("demo/web", FrontendKind::LoadBalancer, "198.51.100.7:80"),
            frontend("demo/web", FrontendKind::ExternalIP, "192.0.2.10:80"),
        ];
        let cluster_ip = frontend("demo/web", FrontendKind::ClusterIP, "10.96.0.10:80");

        let (desired, conflicts) = DesiredState::from_frontends(external.iter().chain([&cluster_ip]));
        assert!(conflicts.is_empty());
        let mut keys: Vec<FrontendKey> = desired.frontends.keys().copied().collect();
        keys.sort();
        assert_eq!(keys, [FrontendKey::wildcard(Ipv4Addr::new(10, 96, 0, 10)), key("10.96.0.10:80")]);

        // A service with only external frontends programs nothing, and changes nothing.
        let mut index = DesiredIndex::default();
        assert!(index.set_service("demo/web", &external).is_empty());
        assert!(index.desired.frontends.is_empty());
        // Adding its ClusterIP frontend touches that frontend and its address only.
        let mut changed = index.set_service("demo/web", external.iter().chain([&cluster_ip]));
        changed.sort();
        assert_eq!(changed, [FrontendKey::wildcard(Ipv4Addr::new(10, 96, 0, 10)), key("10.96.0.10:80")]);
        assert_eq!(index.desired, desired);
        // An external frontend on another service's cluster IP is no conflict here.
        let other = frontend("demo/other", FrontendKind::ExternalIP, "10.96.0.10:80");
        assert!(index.set_service("demo/other", [&other]).is_empty());
        assert!(index.conflicts().is_empty());
        assert_eq!(index.desired, desired);
    }
}
