//! Who keeps a frontend that several Services claim, and how a lost claim is reported.
use std::fmt;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Frontend, FrontendKind};
use crate::model::{ObjectKey, Protocol, ServiceModel};

/// A Service as a claimant of frontends: its name and age.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Claimant {
    /// `None` sorts after every timestamp (see [`ClaimRank`]).
    created: CreatedOrder,
    pub service: ObjectKey,
}

impl Claimant {
    pub fn of(svc: &ServiceModel) -> Claimant {
        Claimant {
            created: CreatedOrder(svc.created),
            service: svc.key(),
        }
    }

    /// A claimant known by name only (no creation time): ranks after dated ones.
    pub fn named(service: ObjectKey) -> Claimant {
        Claimant {
            created: CreatedOrder(None),
            service,
        }
    }

    /// This claimant's rank for a frontend of `kind`.
    pub fn rank(&self, kind: FrontendKind) -> ClaimRank {
        ClaimRank {
            kind,
            claimant: self.clone(),
        }
    }
}

/// A creation time where "unknown" is the youngest of all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CreatedOrder(Option<Timestamp>);

impl Ord for CreatedOrder {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.0, other.0) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    }
}

impl PartialOrd for CreatedOrder {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Which of several claims on one frontend keeps it: the smallest rank.
///
/// First the kind (a cluster IP before an external address: an externalIP or a load
/// balancer IP never takes over a cluster IP, the CVE-2020-8554 case), then the
/// older Service by metadata.creationTimestamp (one without it after every dated
/// one), then the name. A Service that has a frontend keeps it when a newer one
/// claims it too, so its clients never notice; the order depends only on the
/// objects, so `socklb plan`, the agent and a restarted agent all choose alike.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimRank {
    pub kind: FrontendKind,
    pub claimant: Claimant,
}

impl ClaimRank {
    /// Why `self` ranks before `other`, in words.
    fn reason_before(&self, other: &ClaimRank) -> String {
        if self.kind != other.kind {
            return format!("a {} frontend ranks before a {} one", self.kind, other.kind);
        }
        match (self.claimant.created.0, other.claimant.created.0) {
            (Some(a), Some(b)) if a != b => format!("older: created {a}, the other {b}"),
            (Some(a), None) => format!("created {a}; the other has no creationTimestamp"),
            _ => "same age: the first by name keeps it".to_owned(),
        }
    }
}

/// Two Services claim one frontend: `kept` has it in the data path, `dropped` does not
/// (its other frontends are unaffected).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conflict {
    /// As `socklb plan` shows addresses: "10.96.0.10:80", "*:30080".
    pub address: String,
    pub protocol: Protocol,
    pub kept: ObjectKey,
    pub kept_type: FrontendKind,
    pub dropped: ObjectKey,
    pub dropped_type: FrontendKind,
    /// Why `kept` wins, in words.
    pub reason: String,
}

impl Conflict {
    /// `kept` (ranked `kept_by`) keeps the frontend against a claim ranked `dropped`.
    pub fn new(kept: &Frontend, kept_by: &ClaimRank, dropped: &ClaimRank) -> Conflict {
        Conflict {
            address: kept.address_string(),
            protocol: kept.protocol,
            kept: kept_by.claimant.service.clone(),
            kept_type: kept_by.kind,
            dropped: dropped.claimant.service.clone(),
            dropped_type: dropped.kind,
            reason: kept_by.reason_before(dropped),
        }
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} is claimed by {} ({}) and {} ({}); {} keeps it ({})",
            self.address,
            self.protocol,
            self.kept,
            self.kept_type,
            self.dropped,
            self.dropped_type,
            self.kept,
            self.reason
        )
    }
}
