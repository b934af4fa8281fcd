//! Desired data path state: the plan's frontends in the maps' terms.
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
};

use lb_common::{SVC_FLAG_WILDCARD, SvcAction};

use crate::plan::{Action, Frontend};

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

/// Two services claim the same frontend; the first one (in plan order) keeps it.
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
    /// Builds the desired state from plan frontends. Every service address also gets
    /// its wildcard entry.
    pub fn from_frontends<'a>(
        frontends: impl IntoIterator<Item = &'a Frontend>,
    ) -> (Self, Vec<FrontendConflict>) {
        let mut owners: BTreeMap<FrontendKey, &'a str> = BTreeMap::new();
        let mut state = DesiredState::default();
        let mut conflicts = Vec::new();
        for fe in frontends {
            let proto = fe.protocol.as_ipproto();
            let key = FrontendKey { ip: fe.ip, port: fe.port, proto };
            if let Some(kept) = owners.get(&key) {
                conflicts.push(FrontendConflict {
                    key,
                    kept: (*kept).to_string(),
                    dropped: fe.service.clone(),
                });
                continue;
            }
            owners.insert(key, &fe.service);
            state.frontends.insert(key, desired_frontend(fe, proto));
            state.frontends.entry(FrontendKey::wildcard(fe.ip)).or_insert(DesiredFrontend {
                action: SvcAction::Reject,
                backends: Vec::new(),
                affinity_timeout_s: 0,
                flags: SVC_FLAG_WILDCARD,
            });
        }
        (state, conflicts)
    }
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
