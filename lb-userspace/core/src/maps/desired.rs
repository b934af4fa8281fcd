//! Desired data path state: the plan's frontends in the maps' terms.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    SVC_FLAG_NODEPORT, SVC_FLAG_SNAT, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_WILDCARD, SvcAction, scope,
};

use crate::{
    model::{IpCidr, ObjectKey, Protocol},
    plan::{Action, ClaimRank, Claimant, Conflict, Frontend, FrontendAddr, FrontendKind},
};

/// Which traffic a service-map entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Connections started on this node (the socket hooks).
    Internal,
    /// Traffic from outside the node (the TC program).
    External,
}

impl Scope {
    /// The map's encoding ([`lb_common::scope`]).
    pub fn as_map(self) -> u8 {
        match self {
            Scope::Internal => scope::INTERNAL,
            Scope::External => scope::EXTERNAL,
        }
    }

    pub fn from_map(raw: u8) -> Option<Scope> {
        match raw {
            scope::INTERNAL => Some(Scope::Internal),
            scope::EXTERNAL => Some(Scope::External),
            _ => None,
        }
    }
}

/// A service-map entry: a frontend in one scope, or the wildcard of a service address
/// (port 0, no protocol) that refuses the ports the service does not have. A NodePort
/// has the unspecified address (every address of the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub ip: IpAddr,
    pub port: u16,
    /// `None` only in the wildcard entry.
    pub protocol: Option<Protocol>,
    pub scope: Scope,
}

impl FrontendKey {
    pub fn new(frontend: FrontendAddr, scope: Scope) -> Self {
        Self {
            ip: frontend.ip,
            port: frontend.port,
            protocol: Some(frontend.protocol),
            scope,
        }
    }

    pub fn internal(frontend: FrontendAddr) -> Self {
        Self::new(frontend, Scope::Internal)
    }

    /// The wildcard of a cluster IP, for the socket hooks.
    pub fn wildcard(ip: IpAddr) -> Self {
        Self::wildcard_in(ip, Scope::Internal)
    }

    /// The wildcard of `ip` in `scope`: internal for cluster IPs (the socket hooks
    /// refuse their other ports), external for LoadBalancer and external IPs (the TC
    /// program answers their other ports with a RST or an ICMP unreachable).
    pub fn wildcard_in(ip: IpAddr, scope: Scope) -> Self {
        Self {
            ip,
            port: 0,
            protocol: None,
            scope,
        }
    }

    pub fn is_wildcard(&self) -> bool {
        self.protocol.is_none()
    }

    /// The plan frontend this entry belongs to (None for a wildcard).
    pub fn frontend(&self) -> Option<FrontendAddr> {
        self.protocol.map(|protocol| FrontendAddr {
            ip: self.ip,
            port: self.port,
            protocol,
        })
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.scope {
            Scope::External => " (external)",
            Scope::Internal => "",
        };
        match self.frontend() {
            None if self.ip.is_ipv6() => write!(f, "[{}]:*{scope}", self.ip),
            None => write!(f, "{}:*{scope}", self.ip),
            Some(frontend) => write!(f, "{frontend}{scope}"),
        }
    }
}

/// A backend in the backend map; its id is allocated by the diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// The backend runs on this node (external flows to it need no SNAT).
    pub local: bool,
}

/// What one frontend should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub action: SvcAction,
    /// Sorted, without duplicates; empty unless the action is Forward.
    pub backends: Vec<BackendKey>,
    pub affinity_timeout_s: u32,
    pub flags: u8,
    /// loadBalancerSourceRanges (external LoadBalancer frontends only), sorted.
    pub source_ranges: Vec<IpCidr>,
}

/// The whole desired content of the service and backend maps. Two states are equal
/// when their frontends are: the owners only order the work in full maps.
#[derive(Clone, Debug, Default)]
pub struct DesiredState {
    pub frontends: HashMap<FrontendKey, DesiredFrontend>,
    /// The Service that owns each (non-wildcard) entry: when the maps cannot hold
    /// everything, older Services get the room first (see `diff`). Missing: ranks
    /// after every owned entry.
    pub owners: HashMap<FrontendKey, Claimant>,
}

impl PartialEq for DesiredState {
    fn eq(&self, other: &Self) -> bool {
        self.frontends == other.frontends
    }
}

impl Eq for DesiredState {}

impl DesiredState {
    /// The order in which entries get room in full maps: wildcards first (one entry
    /// each, and they make the clients of a Service that did not fit fail at once
    /// instead of sending to an address nobody owns), then by the owning Service's
    /// age and name, then by key.
    pub fn room_order(&self, key: &FrontendKey) -> (bool, bool, Option<&Claimant>, FrontendKey) {
        let owner = self.owners.get(key);
        (!key.is_wildcard(), owner.is_none(), owner, *key)
    }
}

impl DesiredState {
    /// Builds the desired state from plan frontends (all services at once, ranked by
    /// name only: a plan's frontends carry no conflicts, `compute_plan` resolved them).
    ///
    /// One entry differs from what [`DesiredIndex`] (the agent) wants: the internal
    /// scope of a NodePort, LoadBalancer or external IP frontend is the Service's own
    /// ClusterIP frontend of that port (cluster policy for clients on the node), and
    /// when that frontend lost its address to another Service's claim the plan no
    /// longer holds it; here the entry then falls back to the external frontend, the
    /// agent keeps the Service's own view (its external frontend is still its own).
    /// Found by the fuzzer; `fuzzing::check::check_consistent` names the exception.
    pub fn from_frontends<'a>(frontends: impl IntoIterator<Item = &'a Frontend>) -> Self {
        let mut by_service: BTreeMap<&ObjectKey, Vec<&Frontend>> = BTreeMap::new();
        for fe in frontends {
            by_service.entry(&fe.service).or_default().push(fe);
        }
        let mut index = DesiredIndex::default();
        for (service, fes) in by_service {
            index.set_service(&Claimant::named(service.clone()), fes);
        }
        index.desired
    }
}

/// One Service's claim on a plan frontend: the map entries it wants.
#[derive(Clone, Debug)]
struct Claim {
    /// The plan frontend as `socklb plan` shows it (for conflict reports).
    frontend: Frontend,
    entries: Vec<(FrontendKey, DesiredFrontend)>,
}

/// The desired state, maintained service by service: replacing one service's
/// frontends reports exactly the map keys whose desired content changed, so an
/// update costs work proportional to that service.
///
/// Two services may claim one frontend (hand-written manifests can): the claim of
/// the best [`ClaimRank`] owns it, as in `plan::compute_plan`, and a claim that ranks
/// after it changes nothing in the maps. A service address has its wildcard entry
/// while any frontend uses that address: a cluster IP in the internal scope, a
/// LoadBalancer or external IP in the external scope (NodePorts have none: a node
/// address is not the services' alone).
#[derive(Clone, Debug, Default)]
pub struct DesiredIndex {
    /// Every service's claim on each plan frontend, best rank first. One claim may own
    /// two map entries (the internal and the external scope); the claim that ranks
    /// first owns both.
    claims: HashMap<FrontendAddr, BTreeMap<ClaimRank, Claim>>,
    /// The plan frontends each service claims, with the rank of the claim.
    by_service: HashMap<ObjectKey, Vec<(FrontendAddr, ClaimRank)>>,
    /// Plan frontends with more than one claim.
    contested: BTreeSet<FrontendAddr>,
    /// The address wildcard each plan frontend holds a reference on: the one of its
    /// best-ranked claim's kind ([`wildcard_scope`]), so that a losing claim writes
    /// nothing, its address's wildcard included.
    wildcard_refs: HashMap<FrontendAddr, Scope>,
    /// Number of plan frontends holding a reference per service address and scope.
    address_refs: HashMap<(IpAddr, Scope), usize>,
    pub desired: DesiredState,
}

impl DesiredIndex {
    /// Replaces the frontends of `claimant`'s service (empty: the service is gone).
    /// Returns the keys whose desired entry changed.
    pub fn set_service<'a>(
        &mut self,
        claimant: &Claimant,
        frontends: impl IntoIterator<Item = &'a Frontend>,
    ) -> Vec<FrontendKey> {
        let service = &claimant.service;
        let mut touched: Vec<FrontendKey> = Vec::new();
        let mut touched_plan: Vec<FrontendAddr> = Vec::new();
        for (key, rank) in self.by_service.remove(service).unwrap_or_default() {
            if let Some(claims) = self.claims.get_mut(&key)
                && let Some(claim) = claims.remove(&rank)
            {
                touched.extend(claim.entries.iter().map(|(k, _)| *k));
                if claims.is_empty() {
                    self.claims.remove(&key);
                }
            }
            touched_plan.push(key);
        }
        let frontends: Vec<&Frontend> = frontends.into_iter().collect();
        let mut claimed: Vec<(FrontendAddr, ClaimRank)> = Vec::new();
        for (fe, entries) in entries(&frontends) {
            let key = fe.key();
            if claimed.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let rank = claimant.rank(fe.kind);
            touched.extend(entries.iter().map(|(k, _)| *k));
            self.claims.entry(key).or_default().insert(
                rank.clone(),
                Claim {
                    frontend: fe.clone(),
                    entries,
                },
            );
            claimed.push((key, rank));
            touched_plan.push(key);
        }
        if !claimed.is_empty() {
            self.by_service.insert(service.clone(), claimed);
        }
        touched_plan.sort();
        touched_plan.dedup();
        for key in touched_plan {
            self.refresh_wildcard_ref(key, &mut touched);
            // The owner of a frontend may have changed: every scope of it is refreshed,
            // also the ones only another claim has entries in.
            for scope in [Scope::Internal, Scope::External] {
                touched.push(FrontendKey::new(key, scope));
            }
            if self.claims.get(&key).is_some_and(|c| c.len() > 1) {
                self.contested.insert(key);
            } else {
                self.contested.remove(&key);
            }
        }
        touched.sort();
        touched.dedup();
        touched.retain(|key| self.refresh(*key));
        touched
    }

    /// Claims that lost a frontend to a better-ranked one, by address.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        for key in &self.contested {
            let Some(claims) = self.claims.get(key) else {
                continue;
            };
            let mut ranked = claims.iter();
            let Some((kept_by, kept)) = ranked.next() else {
                continue;
            };
            out.extend(ranked.map(|(dropped, _)| Conflict::new(&kept.frontend, kept_by, dropped)));
        }
        out
    }

    /// Moves `key`'s wildcard reference to the wildcard its best claim calls for now.
    fn refresh_wildcard_ref(&mut self, key: FrontendAddr, touched: &mut Vec<FrontendKey>) {
        let want = self
            .claims
            .get(&key)
            .and_then(|claims| claims.values().next())
            .and_then(|claim| wildcard_scope(claim.frontend.kind));
        let have = self.wildcard_refs.get(&key).copied();
        if want == have {
            return;
        }
        if let Some(scope) = have {
            self.wildcard_refs.remove(&key);
            self.release_address(key.ip, scope, touched);
        }
        if let Some(scope) = want {
            self.wildcard_refs.insert(key, scope);
            self.acquire_address(key.ip, scope, touched);
        }
    }

    fn acquire_address(&mut self, ip: IpAddr, scope: Scope, touched: &mut Vec<FrontendKey>) {
        let refs = self.address_refs.entry((ip, scope)).or_default();
        *refs += 1;
        if *refs == 1 {
            touched.push(FrontendKey::wildcard_in(ip, scope));
        }
    }

    fn release_address(&mut self, ip: IpAddr, scope: Scope, touched: &mut Vec<FrontendKey>) {
        if let Some(refs) = self.address_refs.get_mut(&(ip, scope)) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                self.address_refs.remove(&(ip, scope));
                touched.push(FrontendKey::wildcard_in(ip, scope));
            }
        }
    }

    /// Recomputes the desired entry of `key`; true when it changed.
    fn refresh(&mut self, key: FrontendKey) -> bool {
        let want = if key.is_wildcard() {
            self.address_refs
                .contains_key(&(key.ip, key.scope))
                .then(wildcard_frontend)
        } else {
            // The best-ranked claim owns every scope of its frontend: a losing claim
            // gets no entry in either.
            key.frontend()
                .and_then(|frontend| self.claims.get(&frontend))
                .and_then(|claims| claims.values().next())
                .and_then(|claim| claim.entries.iter().find(|(k, _)| *k == key))
                .map(|(_, desired)| desired.clone())
        };
        let owner = (!key.is_wildcard())
            .then(|| key.frontend())
            .flatten()
            .and_then(|frontend| self.claims.get(&frontend))
            .and_then(|claims| claims.keys().next())
            .map(|rank| rank.claimant.clone());
        match (&want, owner) {
            (Some(_), Some(owner)) => {
                if self.desired.owners.get(&key) != Some(&owner) {
                    self.desired.owners.insert(key, owner);
                }
            }
            _ => {
                self.desired.owners.remove(&key);
            }
        }
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

/// The map entries of one service's frontends, per frontend.
///
/// - a ClusterIP frontend: one internal entry (socket hooks); it also holds its
///   address's wildcard;
/// - a NodePort, LoadBalancer or external IP frontend: an external entry (the TC
///   program) with the backends of its externalTrafficPolicy, and an internal entry
///   for connections started on this node with its [`Frontend::from_node`] backends
///   (the Cluster-policy endpoints, as kube-proxy short-circuits in-cluster clients).
///   A NodePort is keyed by address 0.0.0.0 with the NODEPORT flag, which the bind
///   hook also reads.
fn entries<'a>(
    frontends: &[&'a Frontend],
) -> Vec<(&'a Frontend, Vec<(FrontendKey, DesiredFrontend)>)> {
    let mut out = Vec::with_capacity(frontends.len());
    for fe in frontends.iter().copied() {
        let proto = fe.protocol;
        match fe.kind {
            FrontendKind::ClusterIP => {
                out.push((
                    fe,
                    vec![(
                        FrontendKey::internal(fe.key()),
                        desired_frontend(fe, proto, 0),
                    )],
                ));
            }
            FrontendKind::NodePort | FrontendKind::LoadBalancer | FrontendKind::ExternalIP => {
                let nodeport = if fe.kind == FrontendKind::NodePort {
                    SVC_FLAG_NODEPORT
                } else {
                    0
                };
                let ranges = if fe.source_ranges.is_empty() {
                    0
                } else {
                    SVC_FLAG_SOURCE_RANGES
                };
                // SNAT applies only to backends on other nodes; under the Local policy
                // every backend is local, so the flag is harmless there.
                let mut external = desired_frontend(fe, proto, SVC_FLAG_SNAT | nodeport | ranges);
                external.source_ranges = fe.source_ranges.clone();
                external.source_ranges.sort();
                external.source_ranges.dedup();
                let key = FrontendKey::new(fe.key(), Scope::External);
                let internal = match &fe.from_node {
                    Some(n) => desired_entry(
                        n.action,
                        &n.backends,
                        &n.local_backends,
                        fe.affinity_timeout_s,
                        proto,
                        nodeport,
                    ),
                    None => desired_frontend(fe, proto, nodeport),
                };
                out.push((
                    fe,
                    vec![(key, external), (FrontendKey::internal(fe.key()), internal)],
                ));
            }
        }
    }
    out
}

/// The scope of the address wildcard a frontend of `kind` holds, if any.
fn wildcard_scope(kind: FrontendKind) -> Option<Scope> {
    match kind {
        FrontendKind::ClusterIP => Some(Scope::Internal),
        FrontendKind::LoadBalancer | FrontendKind::ExternalIP => Some(Scope::External),
        FrontendKind::NodePort => None,
    }
}

fn wildcard_frontend() -> DesiredFrontend {
    DesiredFrontend {
        action: SvcAction::Reject,
        backends: Vec::new(),
        affinity_timeout_s: 0,
        flags: SVC_FLAG_WILDCARD,
        source_ranges: Vec::new(),
    }
}

fn desired_frontend(fe: &Frontend, protocol: Protocol, flags: u8) -> DesiredFrontend {
    desired_entry(
        fe.action,
        &fe.backends,
        &fe.local_backends,
        fe.affinity_timeout_s,
        protocol,
        flags,
    )
}

fn desired_entry(
    action: Action,
    addrs: &[SocketAddr],
    local: &[SocketAddr],
    affinity_timeout_s: u32,
    protocol: Protocol,
    flags: u8,
) -> DesiredFrontend {
    let action = match action {
        Action::Forward if !addrs.is_empty() => SvcAction::Forward,
        // A forward without backends cannot translate: refuse rather than let the
        // connect leave towards an address nobody owns.
        Action::Forward | Action::Reject => SvcAction::Reject,
        Action::Drop => SvcAction::Drop,
    };
    let mut backends: Vec<BackendKey> = if action == SvcAction::Forward {
        addrs
            .iter()
            .map(|addr| BackendKey {
                addr: *addr,
                protocol,
                local: local.contains(addr),
            })
            .collect()
    } else {
        Vec::new()
    };
    backends.sort();
    backends.dedup();
    DesiredFrontend {
        action,
        backends,
        affinity_timeout_s,
        flags,
        source_ranges: Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn frontend(service: &str, kind: FrontendKind, address: &str) -> Frontend {
        let address: SocketAddr = address.parse().unwrap();
        let backends: Vec<SocketAddr> = vec!["10.244.0.11:8080".parse().unwrap()];
        Frontend {
            service: service.parse().unwrap(),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            kind,
            ip: address.ip(),
            port: address.port(),
            action: Action::Forward,
            backends: backends.clone(),
            affinity_timeout_s: 0,
            local_backends: vec![],
            source_ranges: vec![],
            algorithm: crate::maps::maglev::LbAlgorithm::Random,
            from_node: kind.is_external().then(|| crate::plan::FromNode {
                action: Action::Forward,
                backends,
                local_backends: vec![],
            }),
        }
    }

    fn key(address: &str) -> FrontendKey {
        let address: SocketAddr = address.parse().unwrap();
        FrontendKey::internal(FrontendAddr {
            ip: address.ip(),
            port: address.port(),
            protocol: Protocol::Tcp,
        })
    }

    fn ext(address: &str) -> FrontendKey {
        FrontendKey {
            scope: Scope::External,
            ..key(address)
        }
    }

    #[test]
    fn external_frontends_get_an_external_and_an_internal_entry() {
        let mut nodeport = frontend("demo/web", FrontendKind::NodePort, "0.0.0.0:30080");
        let mut lb = frontend("demo/web", FrontendKind::LoadBalancer, "198.51.100.7:80");
        lb.source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
        let extip = frontend("demo/web", FrontendKind::ExternalIP, "192.0.2.10:80");
        // The cluster IP has one more backend than the (Local policy) external ones,
        // and the nodes's own clients of the NodePort get two others (the cluster
        // endpoints, say the ClusterIP under internalTrafficPolicy Local).
        let mut cluster_ip = frontend("demo/web", FrontendKind::ClusterIP, "10.96.0.10:80");
        cluster_ip.backends.push("10.244.9.9:8080".parse().unwrap());
        nodeport.local_backends = nodeport.backends.clone();
        nodeport.from_node = Some(crate::plan::FromNode {
            action: Action::Forward,
            backends: vec![
                "10.244.7.7:8080".parse().unwrap(),
                "10.244.8.8:8080".parse().unwrap(),
            ],
            local_backends: vec![],
        });

        let all = [&nodeport, &lb, &extip, &cluster_ip];
        let desired = DesiredState::from_frontends(all);
        let mut keys: Vec<FrontendKey> = desired.frontends.keys().copied().collect();
        keys.sort();
        let mut want = vec![
            key("0.0.0.0:30080"),
            ext("0.0.0.0:30080"),
            FrontendKey::wildcard("10.96.0.10".parse().unwrap()),
            key("10.96.0.10:80"),
            FrontendKey::wildcard_in("192.0.2.10".parse().unwrap(), Scope::External),
            key("192.0.2.10:80"),
            ext("192.0.2.10:80"),
            FrontendKey::wildcard_in("198.51.100.7".parse().unwrap(), Scope::External),
            key("198.51.100.7:80"),
            ext("198.51.100.7:80"),
        ];
        want.sort();
        assert_eq!(
            keys, want,
            "cluster IPs get an internal wildcard, LoadBalancer and external IPs an external one, NodePorts none"
        );
        for ip in ["192.0.2.10", "198.51.100.7"] {
            let wildcard = FrontendKey::wildcard_in(ip.parse().unwrap(), Scope::External);
            assert_eq!(desired.frontends[&wildcard], wildcard_frontend());
        }

        let np_ext = &desired.frontends[&ext("0.0.0.0:30080")];
        assert_eq!(np_ext.flags, SVC_FLAG_SNAT | SVC_FLAG_NODEPORT);
        assert_eq!(np_ext.backends.len(), 1);
        assert!(np_ext.backends[0].local, "locality comes from the plan");
        // Connections started on the node use the from_node backends, never SNAT.
        let np_int = &desired.frontends[&key("0.0.0.0:30080")];
        assert_eq!(
            np_int.flags, SVC_FLAG_NODEPORT,
            "the bind hook reads the NODEPORT flag"
        );
        let addrs: Vec<String> = np_int.backends.iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(addrs, ["10.244.7.7:8080", "10.244.8.8:8080"]);
        let lb_ext = &desired.frontends[&ext("198.51.100.7:80")];
        assert_eq!(lb_ext.flags, SVC_FLAG_SNAT | SVC_FLAG_SOURCE_RANGES);
        assert_eq!(lb_ext.source_ranges, lb.source_ranges);
        assert!(
            desired.frontends[&key("198.51.100.7:80")]
                .source_ranges
                .is_empty()
        );

        // Incremental: the same through the index, and removal touches every entry.
        let mut index = DesiredIndex::default();
        let mut changed = index.set_service(&Claimant::named(ObjectKey::new("demo", "web")), all);
        changed.sort();
        assert_eq!(changed, want);
        assert_eq!(index.desired, desired);
        let mut removed = index.set_service(&Claimant::named(ObjectKey::new("demo", "web")), []);
        removed.sort();
        assert_eq!(removed, want);
        assert!(index.desired.frontends.is_empty());
    }

    #[test]
    fn an_external_wildcard_lives_while_any_frontend_uses_its_address() {
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let wildcard = FrontendKey::wildcard_in(ip, Scope::External);
        let web_80 = frontend("demo/web", FrontendKind::LoadBalancer, "198.51.100.7:80");
        let web_443 = frontend("demo/web", FrontendKind::LoadBalancer, "198.51.100.7:443");
        // Another service with an external IP on the same address, another port.
        let other = frontend("demo/other", FrontendKind::ExternalIP, "198.51.100.7:8443");
        let web = Claimant::named(ObjectKey::new("demo", "web"));
        let other_svc = Claimant::named(ObjectKey::new("demo", "other"));

        let mut index = DesiredIndex::default();
        let changed = index.set_service(&web, [&web_80, &web_443]);
        assert_eq!(changed.iter().filter(|k| **k == wildcard).count(), 1);
        let changed = index.set_service(&other_svc, [&other]);
        assert!(!changed.contains(&wildcard), "already there: {changed:?}");
        // One port of web goes: both services still use the address.
        let changed = index.set_service(&web, [&web_80]);
        assert!(!changed.contains(&wildcard));
        let changed = index.set_service(&web, []);
        assert!(!changed.contains(&wildcard));
        assert!(index.desired.frontends.contains_key(&wildcard));
        // The last frontend on the address goes: so does the wildcard.
        let changed = index.set_service(&other_svc, []);
        assert!(changed.contains(&wildcard));
        assert!(index.desired.frontends.is_empty());
    }
}
