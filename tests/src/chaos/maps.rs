//! What the maps hold against what `socklb plan` wants, and what the pin directory and
//! the cgroup hold against a clean start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::multinode::{Plan, PlanFrontend, Status};

/// Link pins of the socket hooks (`LINK_*` of lb-userspace's `datapath/kernel.rs`).
pub const LINK_PINS: [&str; 10] = [
    "link_connect4",
    "link_connect6",
    "link_getpeername4",
    "link_getpeername6",
    "link_post_bind4",
    "link_post_bind6",
    "link_recvmsg4",
    "link_recvmsg6",
    "link_sendmsg4",
    "link_sendmsg6",
];

/// A frontend's map entry: (scope, address, protocol).
pub type EntryKey = (String, String, String);
/// Its content: (action, backends sorted, affinity timeout).
pub type EntryValue = (String, Vec<String>, u64);

/// What the maps hold (read back) or should hold (from the plan), in comparable terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    pub frontends: BTreeMap<EntryKey, EntryValue>,
    /// (scope, IP) of the address wildcards (the other ports of a service address).
    pub service_addresses: BTreeSet<(String, String)>,
    /// Entries of the service map, the backend map and the affinity match map.
    pub svc_entries: u64,
    pub backends: u64,
    pub affinity_matches: u64,
}

fn value(f: &PlanFrontend) -> EntryValue {
    let mut b = f.backends.clone();
    b.sort();
    (f.action.clone(), b, f.affinity_timeout_s)
}

impl Programmed {
    /// What the maps must hold for `plan` (`core::maps::desired`): a ClusterIP
    /// frontend is one internal entry; a NodePort, LoadBalancer or external IP
    /// frontend an external entry with its own backends and an internal one with
    /// its `from_node` ones (the cluster endpoints; the plan leaves them out where
    /// they are the frontend's own). In the service map one entry
    /// per frontend entry, per backend slot and per address wildcard (a cluster IP's
    /// internal one, a LoadBalancer or external IP's external one); one backend entry
    /// per distinct backend; one affinity match per slot of an entry with session
    /// affinity.
    pub fn wanted(plan: &Plan) -> Programmed {
        let mut p = Programmed::default();
        let mut add = |scope: &str, f: &PlanFrontend, v: EntryValue| {
            p.frontends
                .insert((scope.into(), f.address.clone(), f.protocol.clone()), v);
        };
        for f in &plan.frontends {
            if f.kind == "ClusterIP" {
                add("internal", f, value(f));
                continue;
            }
            add("external", f, value(f));
            let from_node = match &f.from_node {
                Some(n) => {
                    let mut b = n.backends.clone();
                    b.sort();
                    (n.action.clone(), b, f.affinity_timeout_s)
                }
                None => value(f),
            };
            add("internal", f, from_node);
        }
        for f in &plan.frontends {
            let scope = match f.kind.as_str() {
                "ClusterIP" => "internal",
                "LoadBalancer" | "ExternalIP" => "external",
                _ => continue,
            };
            if let Some((ip, _)) = f.address.rsplit_once(':') {
                p.service_addresses.insert((scope.into(), ip.into()));
            }
        }
        let mut backends = BTreeSet::new();
        for ((_, _, protocol), (_, b, affinity)) in &p.frontends {
            p.svc_entries += 1 + b.len() as u64;
            if *affinity > 0 {
                p.affinity_matches += b.len() as u64;
            }
            backends.extend(b.iter().map(|be| (be.clone(), protocol.clone())));
        }
        p.svc_entries += p.service_addresses.len() as u64;
        p.backends = backends.len() as u64;
        p
    }

    /// What the pinned maps hold: `socklb status` (what a reader reaches) and the raw
    /// entry counts of the maps (bpftool: every entry, reachable or not).
    pub fn read(status: &Status, pins: &Path) -> Result<Programmed> {
        let mut p = Programmed::default();
        for f in &status.frontends {
            let mut b = f.backends.clone();
            b.sort();
            p.frontends.insert(
                (f.scope.clone(), f.address.clone(), f.protocol.clone()),
                (f.action.clone(), b, f.affinity_timeout_s),
            );
        }
        for (scope, ips) in [
            ("internal", &status.service_addresses),
            ("external", &status.external_service_addresses),
        ] {
            p.service_addresses
                .extend(ips.iter().map(|ip| (scope.to_string(), ip.clone())));
        }
        p.svc_entries = map_entries(&pins.join("lb4_svc_v1"))?;
        p.backends = map_entries(&pins.join("lb4_be_v1"))?;
        p.affinity_matches = map_entries(&pins.join("lb4_affmatch_v1"))?;
        Ok(p)
    }

    /// How `self` (the maps) differs from `want`, one line each (at most `limit`
    /// frontends named); empty when equal.
    pub fn diff(&self, want: &Programmed, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut differ = 0;
        let mut note = |out: &mut Vec<String>, line: String| {
            differ += 1;
            if differ <= limit {
                out.push(line);
            }
        };
        for (k, v) in &self.frontends {
            match want.frontends.get(k) {
                None => note(&mut out, format!("extra entry {k:?}: {v:?}")),
                Some(w) if w != v => note(&mut out, format!("entry {k:?}: maps {v:?}, plan {w:?}")),
                Some(_) => {}
            }
        }
        for (k, w) in &want.frontends {
            if !self.frontends.contains_key(k) {
                note(&mut out, format!("missing entry {k:?}: plan {w:?}"));
            }
        }
        if differ > limit {
            out.push(format!("... {differ} frontend entries differ in all"));
        }
        if self.service_addresses != want.service_addresses {
            let extra: Vec<_> = self
                .service_addresses
                .difference(&want.service_addresses)
                .take(limit)
                .collect();
            let missing: Vec<_> = want
                .service_addresses
                .difference(&self.service_addresses)
                .take(limit)
                .collect();
            out.push(format!(
                "address wildcards: extra {extra:?}, missing {missing:?}"
            ));
        }
        for (what, have, wanted) in [
            ("service map entries", self.svc_entries, want.svc_entries),
            ("backend map entries", self.backends, want.backends),
            (
                "affinity match entries",
                self.affinity_matches,
                want.affinity_matches,
            ),
        ] {
            if have != wanted {
                out.push(format!("{what}: {have} in the map, {wanted} wanted"));
            }
        }
        out
    }
}

/// Entries in a pinned map, as bpftool dumps it.
pub fn map_entries(pin: &Path) -> Result<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool map dump pinned {}: {}",
            pin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool map dump pinned {}", pin.display()))?;
    Ok(v.as_array().map_or(0, |a| a.len() as u64))
}

/// Programs attached to `cgroup`, as bpftool sees them (independent of socklb):
/// (attach type, program name), sorted.
pub fn cgroup_programs(cgroup: &Path) -> Result<Vec<(String, String)>> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool cgroup show {}: {}",
            cgroup.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Vec<Value> = serde_json::from_str(&text).context("bpftool cgroup show")?;
    let mut progs: Vec<(String, String)> = v
        .iter()
        .map(|p| {
            (
                p["attach_type"].as_str().unwrap_or_default().to_string(),
                p["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    progs.sort();
    Ok(progs)
}

/// The id of the link pinned at `pin` (bpftool).
pub fn link_id(pin: &Path) -> Result<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool link show pinned {}: {}",
            pin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["id"]
        .as_u64()
        .with_context(|| format!("bpftool link show pinned {}: {v}", pin.display()))
}

/// Whether the kernel still has a link with this id.
pub fn link_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What is wrong with the cgroup's programs: socklb's five hooks, each exactly once.
pub fn link_problems(progs: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let types: BTreeSet<&str> = progs.iter().map(|(t, _)| t.as_str()).collect();
    if progs.len() != LINK_PINS.len() || types.len() != LINK_PINS.len() {
        out.push(format!(
            "{} programs on {} hooks attached to the cgroup, {} on {} wanted: {progs:?}",
            progs.len(),
            types.len(),
            LINK_PINS.len(),
            LINK_PINS.len()
        ));
    }
    for (t, name) in progs {
        if !name.starts_with("sock4_") && !name.starts_with("sock6_") {
            out.push(format!("not socklb's program on {t}: {name}"));
        }
    }
    out
}

/// What is wrong with the pin directory's entries against those of a clean start.
pub fn pin_problems(have: &[String], clean: &[String]) -> Vec<String> {
    let have: BTreeSet<&String> = have.iter().collect();
    let clean: BTreeSet<&String> = clean.iter().collect();
    let mut out = Vec::new();
    let extra: Vec<_> = have.difference(&clean).collect();
    let missing: Vec<_> = clean.difference(&have).collect();
    if !extra.is_empty() {
        out.push(format!("pins a clean start does not have: {extra:?}"));
    }
    if !missing.is_empty() {
        out.push(format!("pins missing: {missing:?}"));
    }
    out
}

/// The pins of a clean start: every map, the socket hooks' links and `tc_links`.
pub fn clean_pins(tc_links: &[String]) -> Vec<String> {
    let mut v: Vec<String> = lb_common::map_names::ALL
        .iter()
        .chain(LINK_PINS.iter())
        .map(|s| s.to_string())
        .chain(tc_links.iter().cloned())
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multinode::StatusFrontend;

    fn fe(service: &str, kind: &str, address: &str, backends: &[&str]) -> PlanFrontend {
        PlanFrontend {
            service: service.into(),
            port: "http".into(),
            protocol: "TCP".into(),
            kind: kind.into(),
            address: address.into(),
            action: if backends.is_empty() {
                "reject"
            } else {
                "forward"
            }
            .into(),
            backends: backends.iter().map(|b| b.to_string()).collect(),
            affinity_timeout_s: 0,
            from_node: None,
        }
    }

    #[test]
    fn wanted_entries_of_cluster_ips_and_node_ports() {
        let plan = Plan {
            node: "n".into(),
            frontends: vec![
                fe(
                    "a/web",
                    "ClusterIP",
                    "10.96.0.10:80",
                    &["10.244.1.11:8080", "10.244.1.12:8080"],
                ),
                PlanFrontend {
                    from_node: Some(crate::multinode::PlanFromNode {
                        action: "forward".into(),
                        backends: vec!["10.244.1.12:8080".into(), "10.244.1.11:8080".into()],
                    }),
                    ..fe("a/web", "NodePort", "*:30080", &["10.244.1.11:8080"])
                },
                fe("a/empty", "ClusterIP", "10.96.0.99:80", &[]),
            ],
        };
        let p = Programmed::wanted(&plan);
        // Internal web (2 slots), external NodePort (1), internal NodePort with the
        // cluster backends (2), empty (0), two wildcards.
        assert_eq!(p.frontends.len(), 4);
        assert_eq!(p.svc_entries, 3 + 2 + 3 + 1 + 2);
        assert_eq!(p.backends, 2);
        assert_eq!(
            p.frontends[&("internal".into(), "*:30080".into(), "TCP".into())].1,
            ["10.244.1.11:8080", "10.244.1.12:8080"]
        );
        assert!(p.diff(&p, 5).is_empty());

        let status = Status {
            frontends: vec![StatusFrontend {
                address: "10.96.0.10:80".into(),
                scope: "internal".into(),
                protocol: "TCP".into(),
                action: "forward".into(),
                backends: vec!["10.244.1.12:8080".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut have = Programmed::default();
        for f in &status.frontends {
            have.frontends.insert(
                (f.scope.clone(), f.address.clone(), f.protocol.clone()),
                (f.action.clone(), f.backends.clone(), 0),
            );
        }
        let d = have.diff(&p, 2);
        assert!(d[0].starts_with("entry "), "{d:?}");
        assert!(d.iter().any(|l| l.contains("differ in all")), "{d:?}");
        assert!(
            d.iter().any(|l| l.starts_with("service map entries")),
            "{d:?}"
        );
    }

    #[test]
    fn pins_and_programs_against_a_clean_start() {
        let clean = clean_pins(&["link_tc_ingress_2".into()]);
        assert!(clean.contains(&"link_connect4".to_string()));
        assert!(clean.contains(&"lb4_svc_v1".to_string()));
        assert!(pin_problems(&clean, &clean).is_empty());
        let mut left = clean.clone();
        left.push("link_connect4_new".into());
        left.retain(|p| p != "link_tc_ingress_2");
        let p = pin_problems(&left, &clean);
        assert_eq!(p.len(), 2, "{p:?}");
        let all: Vec<(String, String)> = ["4", "6"]
            .iter()
            .flat_map(|f| {
                ["connect", "sendmsg", "recvmsg", "getpeername", "post_bind"]
                    .iter()
                    .map(move |h| (format!("cgroup_inet{f}_{h}"), format!("sock{f}_{h}")))
            })
            .collect();
        assert!(link_problems(&all).is_empty());
        let mut one_more = all.clone();
        one_more.push(all[0].clone());
        assert_eq!(link_problems(&one_more).len(), 1);
    }
}
