//! The agent's view of the cluster, fed by [`ClusterEvent`]s from any source, and
//! the frontends it implies, recomputed only for the services an event touched.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::{
    events::{ClusterEvent, ObjectKey},
    maps::{FrontendKey, desired::DesiredIndex},
    model::{NodeModel, ServiceModel, SliceModel},
    plan::{self, Claimant, Plan},
};

/// Services, slices and this node, as last reported by the source.
#[derive(Debug)]
pub struct ClusterState {
    node: NodeModel,
    services: HashMap<ObjectKey, ServiceModel>,
    slices: HashMap<ObjectKey, SliceModel>,
    /// Service key -> keys of the slices that name it (slices may come first).
    slices_by_service: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Services whose frontends must be recomputed.
    dirty: HashSet<ObjectKey>,
    /// Slices whose Service does not exist (they serve nothing until it does).
    orphans: BTreeSet<ObjectKey>,
    /// Slices of an address family their Service has no cluster IP of (an IPv6 slice
    /// of an IPv4-only Service): they serve nothing. Slice -> its Service.
    wrong_family: BTreeMap<ObjectKey, ObjectKey>,
    index: DesiredIndex,
    /// Set once a complete list of services and of slices has been seen.
    services_listed: bool,
    slices_listed: bool,
}

impl ClusterState {
    pub fn new(node: NodeModel) -> Self {
        Self {
            node,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            dirty: HashSet::new(),
            orphans: BTreeSet::new(),
            wrong_family: BTreeMap::new(),
            index: DesiredIndex::default(),
            services_listed: false,
            slices_listed: false,
        }
    }

    /// True once the source delivered complete lists: before that, programming the
    /// maps could remove services that merely were not listed yet.
    pub fn synced(&self) -> bool {
        self.services_listed && self.slices_listed
    }

    pub fn has_pending(&self) -> bool {
        !self.dirty.is_empty()
    }

    pub fn index(&self) -> &DesiredIndex {
        &self.index
    }

    pub fn node(&self) -> &NodeModel {
        &self.node
    }

    pub fn apply(&mut self, event: ClusterEvent) {
        match event {
            ClusterEvent::ServiceApplied(svc) => self.put_service(svc),
            ClusterEvent::ServiceDeleted(key) => self.delete_service(&key),
            ClusterEvent::SliceApplied(slice) => self.put_slice(slice),
            ClusterEvent::SliceDeleted(key) => self.delete_slice(&key),
            ClusterEvent::NodeApplied(node) => self.set_node(node),
            ClusterEvent::ServicesListed { services, invalid } => {
                self.replace_services(services, &invalid);
                self.services_listed = true;
            }
            ClusterEvent::SlicesListed { slices, invalid } => {
                self.replace_slices(slices, &invalid);
                self.slices_listed = true;
            }
            ClusterEvent::Snapshot {
                services,
                slices,
                node,
            } => {
                self.set_node(node);
                self.replace_services(services, &[]);
                self.replace_slices(slices, &[]);
                self.services_listed = true;
                self.slices_listed = true;
            }
        }
    }

    /// Recomputes the dirty services; returns the map keys whose desired content
    /// changed (for `Reconciler::sync_keys`).
    pub fn recompute(&mut self) -> Vec<FrontendKey> {
        let mut dirty: Vec<ObjectKey> = self.dirty.drain().collect();
        dirty.sort();
        let mut changed = Vec::new();
        for key in dirty {
            self.wrong_family.retain(|_, service| *service != key);
            let (claimant, frontends) = match self.services.get(&key) {
                Some(svc) => {
                    let slices: Vec<&SliceModel> = self
                        .slices_by_service
                        .get(&key)
                        .into_iter()
                        .flatten()
                        .filter_map(|k| self.slices.get(k))
                        .collect();
                    for slice in &slices {
                        if let Some(endpoint) = slice.endpoints.first()
                            && !svc
                                .cluster_ips
                                .iter()
                                .any(|ip| ip.is_ipv4() == endpoint.address.is_ipv4())
                        {
                            self.wrong_family.insert(slice.key(), key.clone());
                        }
                    }
                    (
                        Claimant::of(svc),
                        plan::frontends_for_service(svc, &slices, &self.node),
                    )
                }
                None => (Claimant::named(key.clone()), Vec::new()),
            };
            changed.extend(self.index.set_service(&claimant, &frontends));
        }
        changed.sort();
        changed.dedup();
        changed
    }

    /// Every frontend, in `socklb plan` order (conflicting claims included once,
    /// for the service that keeps the frontend).
    pub fn plan(&self) -> Plan {
        let services: Vec<ServiceModel> = self.services.values().cloned().collect();
        let slices: Vec<SliceModel> = self.slices.values().cloned().collect();
        plan::compute_plan(&services, &slices, &self.node)
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// Every Service, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &ServiceModel> {
        self.services.values()
    }

    /// Every EndpointSlice, in no particular order.
    pub fn slices(&self) -> impl Iterator<Item = &SliceModel> {
        self.slices.values()
    }

    /// The EndpointSlices labelled for `service` (present or not), in slice name order.
    pub fn slices_for_service<'a>(
        &'a self,
        service: &ObjectKey,
    ) -> impl Iterator<Item = &'a SliceModel> + 'a {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|key| self.slices.get(key))
    }

    /// Slices of an address family their Service has no cluster IP of, in key order
    /// (as of the last [`Self::recompute`]).
    pub fn wrong_family_slices(&self) -> impl Iterator<Item = &SliceModel> {
        self.wrong_family
            .keys()
            .filter_map(|key| self.slices.get(key))
    }

    /// Slices that name a Service that does not exist, in key order.
    pub fn orphan_slices(&self) -> impl Iterator<Item = &SliceModel> {
        self.orphans.iter().filter_map(|key| self.slices.get(key))
    }

    fn put_service(&mut self, svc: ServiceModel) {
        let key = svc.key();
        if self.services.get(&key) != Some(&svc) {
            if let Some(slices) = self.slices_by_service.get(&key) {
                for slice in slices {
                    self.orphans.remove(slice);
                }
            }
            self.services.insert(key.clone(), svc);
            self.dirty.insert(key);
        }
    }

    fn delete_service(&mut self, key: &ObjectKey) {
        if self.services.remove(key).is_some() {
            if let Some(slices) = self.slices_by_service.get(key) {
                self.orphans.extend(slices.iter().cloned());
            }
            self.dirty.insert(key.clone());
        }
    }

    fn put_slice(&mut self, slice: SliceModel) {
        let key = slice.key();
        let service = slice.service_key();
        if let Some(old) = self.slices.get(&key) {
            if *old == slice {
                return;
            }
            // A slice can move to another service (its label changed).
            let old_service = old.service_key();
            if old_service != service {
                self.unlink_slice(&old_service, &key);
            }
        }
        self.slices_by_service
            .entry(service.clone())
            .or_default()
            .insert(key.clone());
        if self.services.contains_key(&service) {
            self.orphans.remove(&key);
        } else {
            self.orphans.insert(key.clone());
        }
        self.slices.insert(key, slice);
        self.dirty.insert(service);
    }

    fn delete_slice(&mut self, key: &ObjectKey) {
        self.orphans.remove(key);
        self.wrong_family.remove(key);
        if let Some(old) = self.slices.remove(key) {
            let service = old.service_key();
            self.unlink_slice(&service, key);
        }
    }

    fn unlink_slice(&mut self, service: &ObjectKey, slice: &ObjectKey) {
        if let Some(set) = self.slices_by_service.get_mut(service) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_by_service.remove(service);
            }
        }
        self.dirty.insert(service.clone());
    }

    fn set_node(&mut self, node: NodeModel) {
        if node != self.node {
            self.node = node;
            // Locality and zone hints may change for every service.
            self.dirty.extend(self.services.keys().cloned());
        }
    }

    /// Replaces all services; objects listed as invalid keep their last good version.
    /// Unchanged services stay clean: a relist of the same objects recomputes nothing.
    fn replace_services(&mut self, services: Vec<ServiceModel>, invalid: &[ObjectKey]) {
        let mut seen: HashSet<ObjectKey> = invalid.iter().cloned().collect();
        for svc in services {
            seen.insert(svc.key());
            self.put_service(svc);
        }
        let gone: Vec<ObjectKey> = self
            .services
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.delete_service(&key);
        }
    }

    fn replace_slices(&mut self, slices: Vec<SliceModel>, invalid: &[ObjectKey]) {
        let mut seen: HashSet<ObjectKey> = invalid.iter().cloned().collect();
        for slice in slices {
            seen.insert(slice.key());
            self.put_slice(slice);
        }
        let gone: Vec<ObjectKey> = self
            .slices
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.delete_slice(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        builders::{self, EndpointExt, TCP, ep},
        maps::DesiredState,
        model::TrafficPolicy,
    };

    /// A ClusterIP Service of namespace ns with TCP ports (name, port).
    fn service(name: &str, ip: [u8; 4], ports: &[(&str, u16)]) -> ServiceModel {
        let ports: Vec<_> = ports.iter().map(|(n, p)| (*n, TCP, *p)).collect();
        builders::service("ns", name, &Ipv4Addr::from(ip).to_string(), &ports)
    }

    /// A slice of namespace ns with one TCP port; endpoints (last octet of
    /// 10.244.0.x, ready, node).
    fn slice(
        name: &str,
        service: &str,
        port: (&str, u16),
        eps: &[(u8, bool, Option<&str>)],
    ) -> SliceModel {
        let endpoints = eps
            .iter()
            .map(|(last, ready, node)| {
                let mut e = ep(&format!("10.244.0.{last}"));
                if !ready {
                    e = e.not_ready();
                }
                if let Some(node) = node {
                    e = e.on(node);
                }
                e
            })
            .collect();
        builders::slice("ns", name, service, &[(port.0, TCP, port.1)], endpoints)
    }

    /// The incremental desired state equals the one computed from scratch.
    fn assert_consistent(state: &ClusterState) {
        let from_scratch = DesiredState::from_frontends(&state.plan().frontends);
        assert_eq!(state.index().desired, from_scratch);
    }

    #[test]
    fn slice_before_service_and_service_deleted_before_slices() {
        let mut st = ClusterState::new(NodeModel::named("n1"));
        st.apply(ClusterEvent::SliceApplied(slice(
            "web-1",
            "web",
            ("http", 8080),
            &[(1, true, None)],
        )));
        assert!(st.recompute().is_empty(), "a slice alone programs nothing");
        st.apply(ClusterEvent::ServiceApplied(service(
            "web",
            [10, 96, 0, 10],
            &[("http", 80)],
        )));
        let changed = st.recompute();
        assert_eq!(changed.len(), 2, "frontend and wildcard: {changed:?}");
        assert_consistent(&st);
        st.apply(ClusterEvent::ServiceDeleted(ObjectKey::new("ns", "web")));
        assert_eq!(st.recompute().len(), 2);
        assert!(st.index().desired.frontends.is_empty());
        st.apply(ClusterEvent::SliceDeleted(ObjectKey::new("ns", "web-1")));
        assert!(st.recompute().is_empty());
        assert_consistent(&st);
    }

    #[test]
    fn a_relist_of_the_same_objects_changes_nothing_and_never_clears_live_entries() {
        let mut st = ClusterState::new(NodeModel::named("n1"));
        assert!(!st.synced());
        let services = vec![
            service("web", [10, 96, 0, 10], &[("http", 80)]),
            service("db", [10, 96, 0, 11], &[("", 5432)]),
        ];
        let slices = vec![
            slice("web-1", "web", ("http", 8080), &[(1, true, None)]),
            slice("db-1", "db", ("", 5432), &[(2, true, None)]),
        ];
        st.apply(ClusterEvent::ServicesListed {
            services: services.clone(),
            invalid: vec![],
        });
        assert!(!st.synced(), "slices not listed yet");
        st.apply(ClusterEvent::SlicesListed {
            slices: slices.clone(),
            invalid: vec![],
        });
        assert!(st.synced());
        assert_eq!(st.recompute().len(), 4);
        // A relist (watch expired): same content, nothing to do.
        st.apply(ClusterEvent::ServicesListed {
            services: services.clone(),
            invalid: vec![],
        });
        st.apply(ClusterEvent::SlicesListed {
            slices: slices.clone(),
            invalid: vec![],
        });
        assert!(!st.has_pending());
        assert!(st.recompute().is_empty());
        // A relist without db: only db's entries change.
        st.apply(ClusterEvent::ServicesListed {
            services: services[..1].to_vec(),
            invalid: vec![],
        });
        let changed = st.recompute();
        assert!(
            changed.iter().all(|k| k.ip == Ipv4Addr::new(10, 96, 0, 11)),
            "{changed:?}"
        );
        assert_consistent(&st);
        // An invalid object in a relist keeps its last good version.
        st.apply(ClusterEvent::ServicesListed {
            services: vec![],
            invalid: vec![ObjectKey::new("ns", "web")],
        });
        assert!(st.recompute().is_empty());
        assert_eq!(st.service_count(), 1);
    }

    #[test]
    fn the_node_changing_recomputes_local_policy() {
        let mut svc = service("web", [10, 96, 0, 10], &[("http", 80)]);
        svc.internal_traffic_policy = TrafficPolicy::Local;
        let mut st = ClusterState::new(NodeModel::named("n1"));
        st.apply(ClusterEvent::ServiceApplied(svc));
        st.apply(ClusterEvent::SliceApplied(slice(
            "web-1",
            "web",
            ("http", 8080),
            &[(1, true, Some("n1")), (2, true, Some("n2"))],
        )));
        st.recompute();
        assert_consistent(&st);
        st.apply(ClusterEvent::NodeApplied(NodeModel::named("n2")));
        assert_eq!(
            st.recompute().len(),
            1,
            "the frontend's backend changes; the wildcard does not"
        );
        assert_consistent(&st);
    }

    #[test]
    fn conflicting_services_keep_the_first_by_name_incrementally() {
        let mut st = ClusterState::new(NodeModel::named("n1"));
        st.apply(ClusterEvent::ServiceApplied(service(
            "b",
            [10, 96, 0, 10],
            &[("", 80)],
        )));
        st.apply(ClusterEvent::SliceApplied(slice(
            "b-1",
            "b",
            ("", 8080),
            &[(2, true, None)],
        )));
        st.recompute();
        st.apply(ClusterEvent::ServiceApplied(service(
            "a",
            [10, 96, 0, 10],
            &[("", 80)],
        )));
        st.apply(ClusterEvent::SliceApplied(slice(
            "a-1",
            "a",
            ("", 8080),
            &[(1, true, None)],
        )));
        st.recompute();
        assert_consistent(&st);
        assert_eq!(st.index().conflicts().len(), 1);
        st.apply(ClusterEvent::ServiceDeleted(ObjectKey::new("ns", "a")));
        st.recompute();
        assert_consistent(&st);
        assert!(st.index().conflicts().is_empty());
    }

    #[test]
    fn an_older_service_keeps_its_frontend_and_its_entries_are_never_rewritten() {
        let at = |s: &str| Some(s.parse::<k8s_openapi::jiff::Timestamp>().unwrap());
        let mut st = ClusterState::new(NodeModel::named("n1"));
        let mut web = service("web", [10, 96, 0, 10], &[("", 80)]);
        web.created = at("2025-01-01T00:00:00Z");
        st.apply(ClusterEvent::ServiceApplied(web));
        st.apply(ClusterEvent::SliceApplied(slice(
            "web-1",
            "web",
            ("", 8080),
            &[(2, true, None)],
        )));
        st.recompute();
        let before = st.index().desired.clone();
        // Newer, undated, and same age but later by name: each claims web's frontend
        // (no endpoints, so it would reject) and changes nothing in the maps.
        for (name, created) in [
            ("newer", at("2025-06-01T00:00:00Z")),
            ("aaa-undated", None),
            ("zzz-same-age", at("2025-01-01T00:00:00Z")),
        ] {
            let mut rival = service(name, [10, 96, 0, 10], &[("", 80)]);
            rival.created = created;
            st.apply(ClusterEvent::ServiceApplied(rival));
            assert_eq!(st.recompute(), vec![], "{name}: no map key changes");
            assert_eq!(st.index().desired, before, "{name}");
            let conflicts = st.index().conflicts();
            assert_eq!(conflicts.len(), 1, "{name}");
            assert_eq!(conflicts[0].kept.to_string(), "ns/web", "{name}");
            assert_eq!(
                conflicts[0].dropped.to_string(),
                format!("ns/{name}"),
                "{name}"
            );
            assert_eq!(
                st.plan().conflicts,
                conflicts,
                "{name}: plan and index agree"
            );
            assert_consistent(&st);
            st.apply(ClusterEvent::ServiceDeleted(ObjectKey::new("ns", name)));
            assert_eq!(
                st.recompute(),
                vec![],
                "{name}: removal changes nothing either"
            );
            assert!(st.index().conflicts().is_empty());
        }
        // An older claimant does win, whatever its name.
        let mut older = service("zzz-older", [10, 96, 0, 10], &[("", 80)]);
        older.created = at("2024-01-01T00:00:00Z");
        st.apply(ClusterEvent::ServiceApplied(older));
        assert!(!st.recompute().is_empty());
        assert_eq!(st.index().conflicts()[0].kept.to_string(), "ns/zzz-older");
        assert_consistent(&st);
    }

    #[test]
    fn an_external_ip_never_takes_a_cluster_ip_in_either_scope() {
        let mut st = ClusterState::new(NodeModel::named("n1"));
        st.apply(ClusterEvent::ServiceApplied(service(
            "web",
            [10, 96, 0, 10],
            &[("", 80)],
        )));
        let mut hijack = service("a-hijack", [10, 96, 0, 99], &[("", 80)]);
        hijack.created = Some("2000-01-01T00:00:00Z".parse().unwrap());
        hijack.external_ips = vec![Ipv4Addr::new(10, 96, 0, 10).into()];
        st.apply(ClusterEvent::ServiceApplied(hijack));
        st.recompute();
        assert_consistent(&st);
        let conflicts = st.index().conflicts();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].kept.to_string(), "ns/web");
        assert!(
            !st.index()
                .desired
                .frontends
                .keys()
                .any(|k| k.ip == Ipv4Addr::new(10, 96, 0, 10)
                    && k.scope == crate::maps::Scope::External),
            "the losing external IP gets no TC entry either"
        );
    }

    #[test]
    fn slices_of_a_family_the_service_lacks_are_reported() {
        let mut st = ClusterState::new(NodeModel::named("n1"));
        let v6_slice = builders::slice(
            "ns",
            "web-v6",
            "web",
            &[("http", TCP, 8080)],
            vec![ep("fd00:244::11")],
        );
        let wrong = |st: &ClusterState| -> Vec<String> {
            st.wrong_family_slices().map(|s| s.name.clone()).collect()
        };
        st.apply(ClusterEvent::ServiceApplied(service(
            "web",
            [10, 96, 0, 10],
            &[("http", 80)],
        )));
        st.apply(ClusterEvent::SliceApplied(v6_slice));
        st.recompute();
        assert_eq!(wrong(&st), ["web-v6"]);
        // The Service gains an IPv6 cluster IP: the slice serves it.
        let dual = builders::service("ns", "web", "10.96.0.10", &[("http", TCP, 80)]);
        let dual = ServiceModel {
            cluster_ips: vec![dual.cluster_ips[0], "fd00:96::10".parse().unwrap()],
            ..dual
        };
        st.apply(ClusterEvent::ServiceApplied(dual));
        st.recompute();
        assert!(wrong(&st).is_empty());
        assert_consistent(&st);
        st.apply(ClusterEvent::ServiceApplied(service(
            "web",
            [10, 96, 0, 10],
            &[("http", 80)],
        )));
        st.recompute();
        assert_eq!(wrong(&st), ["web-v6"]);
        st.apply(ClusterEvent::SliceDeleted(ObjectKey::new("ns", "web-v6")));
        assert!(wrong(&st).is_empty());
    }

    #[test]
    fn orphan_slices_are_tracked_as_services_come_and_go() {
        let mut st = ClusterState::new(NodeModel::named("n1"));
        let orphans = |st: &ClusterState| -> Vec<String> {
            st.orphan_slices().map(|s| s.name.clone()).collect()
        };
        st.apply(ClusterEvent::SliceApplied(slice(
            "web-1",
            "web",
            ("http", 8080),
            &[],
        )));
        assert_eq!(orphans(&st), ["web-1"]);
        st.apply(ClusterEvent::ServiceApplied(service(
            "web",
            [10, 96, 0, 10],
            &[("http", 80)],
        )));
        assert!(orphans(&st).is_empty());
        st.apply(ClusterEvent::ServiceDeleted(ObjectKey::new("ns", "web")));
        assert_eq!(orphans(&st), ["web-1"]);
        // Relabelled to a Service that exists; then deleted.
        st.apply(ClusterEvent::ServiceApplied(service(
            "api",
            [10, 96, 0, 11],
            &[("http", 80)],
        )));
        st.apply(ClusterEvent::SliceApplied(slice(
            "web-1",
            "api",
            ("http", 8080),
            &[],
        )));
        assert!(orphans(&st).is_empty());
        st.apply(ClusterEvent::SliceApplied(slice(
            "web-1",
            "gone",
            ("http", 8080),
            &[],
        )));
        assert_eq!(orphans(&st), ["web-1"]);
        st.apply(ClusterEvent::SliceDeleted(ObjectKey::new("ns", "web-1")));
        assert!(orphans(&st).is_empty());
    }

    #[test]
    fn random_event_sequences_stay_consistent_with_a_full_recompute() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut st = ClusterState::new(NodeModel::named("n1"));
        for _ in 0..2000 {
            let svc = ["a", "b", "c", "d"][next(4) as usize];
            let ip = [10, 96, 0, next(3) as u8]; // shared addresses: conflicts and wildcards
            match next(7) {
                0 | 1 => {
                    let mut model = service(svc, ip, &[("http", 80 + next(2) as u16)]);
                    // Ages and external IPs from the same address pool: claims of every
                    // kind and rank on one frontend.
                    model.created = [
                        None,
                        Some("2025-01-01T00:00:00Z"),
                        Some("2025-02-01T00:00:00Z"),
                    ][next(3) as usize]
                        .map(|t| t.parse().unwrap());
                    if next(3) == 0 {
                        model.external_ips = vec![Ipv4Addr::new(10, 96, 0, next(3) as u8).into()];
                    }
                    st.apply(ClusterEvent::ServiceApplied(model));
                }
                2 => st.apply(ClusterEvent::ServiceDeleted(ObjectKey::new("ns", svc))),
                3 | 4 => {
                    let eps: Vec<(u8, bool, Option<&str>)> = (0..next(4))
                        .map(|_| {
                            (
                                next(8) as u8,
                                next(3) > 0,
                                Some(["n1", "n2"][next(2) as usize]),
                            )
                        })
                        .collect();
                    let name = format!("{svc}-{}", next(2));
                    st.apply(ClusterEvent::SliceApplied(slice(
                        &name,
                        svc,
                        ("http", 8080),
                        &eps,
                    )));
                }
                5 => st.apply(ClusterEvent::SliceDeleted(ObjectKey::new(
                    "ns",
                    format!("{svc}-{}", next(2)),
                ))),
                _ => st.apply(ClusterEvent::NodeApplied(NodeModel::named(
                    ["n1", "n2"][next(2) as usize],
                ))),
            }
            if next(3) == 0 {
                st.recompute();
                assert_consistent(&st);
            }
        }
    }
}
