//! Whether a desired state fits in maps of given sizes (`socklb plan --capacity`):
//! the same diff the agent runs, into empty maps of both families, so the answer is
//! the one the agent would reach (which Services get the room and which do not).
use std::fmt::Write as _;

use lb_common::map_names;

use super::{
    DesiredState, FrontendKey, V4, V6,
    diff::{Capacity, Fill, Incomplete, ProgrammedState},
};
use crate::events::ObjectKey;

/// One map: entries the state needs (as far as they fit) and the map's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFit {
    pub map: &'static str,
    pub used: usize,
    pub capacity: usize,
}

/// A frontend that does not fit (or not whole), with its Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit {
    pub frontend: FrontendKey,
    pub why: Incomplete,
    pub service: Option<ObjectKey>,
}

/// The answer for one desired state and one set of sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FitReport {
    pub maps: Vec<MapFit>,
    pub unfit: Vec<Unfit>,
    /// External frontends that would pick at random: no Maglev table left for them.
    pub maglev_full: Vec<FrontendKey>,
}

impl FitReport {
    /// Everything is programmed as wanted.
    pub fn fits(&self) -> bool {
        self.unfit.is_empty() && self.maglev_full.is_empty()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "capacity: {}",
            if self.fits() {
                "everything fits"
            } else {
                "DOES NOT FIT"
            }
        );
        for m in &self.maps {
            let percent = if m.capacity == 0 {
                0.0
            } else {
                100.0 * m.used as f64 / m.capacity as f64
            };
            let _ = writeln!(
                out,
                "  {:<18} {:>9} / {:<9} ({percent:.1}%)",
                m.map, m.used, m.capacity
            );
        }
        for u in &self.unfit {
            let service = u
                .service
                .as_ref()
                .map_or_else(|| "-".to_string(), ToString::to_string);
            let why = match u.why {
                Incomplete::MapsFull => "not programmed: maps full".to_string(),
                Incomplete::BackendsTruncated { programmed, wanted } => {
                    format!("{programmed} of {wanted} backends")
                }
                Incomplete::AddressFamily => "backends of another family".to_string(),
            };
            let _ = writeln!(out, "  {service} {}: {why}", u.frontend);
        }
        for key in &self.maglev_full {
            let _ = writeln!(
                out,
                "  {key}: no Maglev table left (--maglev-max-tables): picks at random"
            );
        }
        out
    }
}

fn rows(fill: &Fill, names: [&'static str; 4], maglev: &'static str) -> Vec<MapFit> {
    let mut rows: Vec<MapFit> = [
        (names[0], fill.used.svc_entries, fill.capacity.svc_entries),
        (names[1], fill.used.backends, fill.capacity.backends),
        (
            names[2],
            fill.used.affinity_matches,
            fill.capacity.affinity_matches,
        ),
        (names[3], fill.used.src_ranges, fill.capacity.src_ranges),
    ]
    .into_iter()
    .map(|(map, used, capacity)| MapFit {
        map,
        used,
        capacity,
    })
    .collect();
    if fill.capacity.maglev.enabled() {
        rows.push(MapFit {
            map: maglev,
            used: fill.used.maglev.max_tables as usize,
            capacity: fill.capacity.maglev.tables() as usize,
        });
    }
    rows
}

/// What maps of `capacity` (each family's) would hold of `desired`.
pub fn fit(desired: &DesiredState, capacity: Capacity) -> FitReport {
    let mut v4 = ProgrammedState::<V4>::with_capacity(capacity);
    let mut v6 = ProgrammedState::<V6>::with_capacity(capacity);
    let (_, stats4) = v4.sync_all(desired);
    let (_, stats6) = v6.sync_all(desired);
    let mut maps = rows(
        &v4.fill(),
        [
            map_names::SVC4,
            map_names::BACKEND4,
            map_names::AFFINITY_MATCH4,
            map_names::SRC_RANGE4,
        ],
        map_names::MAGLEV4,
    );
    maps.extend(rows(
        &v6.fill(),
        [
            map_names::SVC6,
            map_names::BACKEND6,
            map_names::AFFINITY_MATCH6,
            map_names::SRC_RANGE6,
        ],
        map_names::MAGLEV6,
    ));
    let mut unfit: Vec<Unfit> = v4
        .incomplete()
        .iter()
        .chain(v6.incomplete())
        .map(|(key, why)| Unfit {
            frontend: *key,
            why: *why,
            service: desired.owners.get(key).map(|c| c.service.clone()),
        })
        .collect();
    unfit.sort_by(|a, b| (&a.service, a.frontend).cmp(&(&b.service, b.frontend)));
    let mut maglev_full = stats4.maglev_full;
    maglev_full.extend(stats6.maglev_full);
    maglev_full.sort();
    FitReport {
        maps,
        unfit,
        maglev_full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        builders::{self, TCP, ep},
        maps::DesiredState,
        model::NodeModel,
        plan::compute_plan,
    };

    fn desired(services: usize) -> DesiredState {
        let svcs: Vec<_> = (0..services)
            .map(|i| {
                builders::service(
                    "ns",
                    &format!("s{i}"),
                    &format!("10.96.0.{}", i + 1),
                    &[("http", TCP, 80)],
                )
            })
            .collect();
        let slices: Vec<_> = (0..services)
            .map(|i| {
                builders::slice(
                    "ns",
                    &format!("s{i}-1"),
                    &format!("s{i}"),
                    &[("http", TCP, 8080)],
                    vec![ep(&format!("10.244.0.{}", i + 1))],
                )
            })
            .collect();
        let plan = compute_plan(&svcs, &slices, &NodeModel::named("n1"));
        DesiredState::from_frontends(&plan.frontends)
    }

    #[test]
    fn a_state_fits_or_names_what_does_not() {
        // Each service: its address wildcard, its frontend and one slot.
        let roomy = fit(&desired(3), Capacity::default());
        assert!(roomy.fits(), "{}", roomy.render());
        assert_eq!(roomy.maps[0].map, map_names::SVC4);
        assert_eq!(roomy.maps[0].used, 9);
        let small = fit(
            &desired(3),
            Capacity {
                svc_entries: 7,
                ..Capacity::default()
            },
        );
        assert!(!small.fits());
        assert_eq!(small.unfit.len(), 1, "{}", small.render());
        assert_eq!(small.unfit[0].why, Incomplete::MapsFull);
        assert!(
            small.render().contains("DOES NOT FIT"),
            "{}",
            small.render()
        );
        assert!(small.render().contains("not programmed: maps full"));
    }
}
