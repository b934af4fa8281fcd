//! The targets socklb is measured against, and each one judged on a run's results: met
//! or missed, and by how much.
//!
//! The thresholds are here once; the summary's table, its headlines, its profile
//! notes and the plots' target lines all take them from here.

use crate::format::{count, fmt, group};
use crate::results::{DatapathRow, Kind, Maps, Mode, Results};

/// socklb's rate (connections, requests or queries per second) as a fraction of
/// direct's in the same repetition: at least this.
pub const RATE_MIN: f64 = 0.95;
/// socklb's p50 and p99 latency as a multiple of direct's: at most this.
pub const LATENCY_MAX: f64 = 1.05;
/// Cold programming of this many services (× 10 endpoints)...
pub const COLD_SERVICES: usize = 10_000;
/// ...within this, worst of the repetitions.
pub const COLD_MAX_MS: f64 = 1000.0;
/// One change applied (API event or manifest file) within this, p99.
pub const CHANGE_P99_MAX_MS: f64 = 5.0;
/// The agent's RSS after its initial sync...
pub const RSS_MAX_MIB: f64 = 100.0;
/// ...at the smallest measured size with at least this many endpoints.
pub const RSS_AT_ENDPOINTS: usize = 100_000;
/// Map operations per changed endpoint count as proportional while the largest is at
/// most `lo * PROPORTIONAL_FACTOR + PROPORTIONAL_SLACK` (lo: the smallest), over every
/// change size and every N.
pub const PROPORTIONAL_FACTOR: f64 = 1.5;
pub const PROPORTIONAL_SLACK: f64 = 0.5;

/// From the slice change to each stale socket's error, p99, at most this (with no
/// decoy destroyed and none missed).
pub const STALE_P99_MAX_MS: f64 = 100.0;

/// Whether a rate ratio to direct meets [`RATE_MIN`] (not when it is not finite).
pub fn rate_ok(ratio: f64) -> bool {
    ratio >= RATE_MIN
}

/// Whether a latency ratio to direct meets [`LATENCY_MAX`] (not when it is not finite).
pub fn latency_ok(ratio: f64) -> bool {
    ratio <= LATENCY_MAX
}

/// How a target came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The run has no figure for it.
    NotMeasured,
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met { Verdict::Met } else { Verdict::Missed }
    }
}

/// One target judged on one run.
#[derive(Clone, Debug)]
pub struct Target {
    /// The target, as the summary states it.
    pub what: String,
    pub verdict: Verdict,
    /// The figures it was judged on; for a miss, by how much first.
    pub detail: String,
}

impl Target {
    fn not_measured(what: impl Into<String>) -> Target {
        Target {
            what: what.into(),
            verdict: Verdict::NotMeasured,
            detail: "not measured".into(),
        }
    }
}

/// Every target, in the summary's order.
pub fn evaluate(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    // socklb within 5 % of direct on every data-path figure, at every N.
    datapath(&mut out, &r.datapath, "");
    datapath(&mut out, &r.nodeport, "NodePort from outside, ");
    // Cold programming of 10 000 services / 100 000 endpoints under 1 s.
    let cp = r.socklb_control_rows();
    let at_cold = |maps: Maps| {
        cp.iter()
            .find(|x| x.maps == maps && x.services == COLD_SERVICES)
    };
    let kernel_cold = at_cold(Maps::Kernel);
    match kernel_cold.or_else(|| at_cold(Maps::Memory)) {
        Some(x) => {
            let c = &x.cold_ms;
            out.push(Target {
                what: "cold programming of 10 000 services / 100 000 endpoints under 1 s".into(),
                verdict: Verdict::of(c.max < COLD_MAX_MS),
                detail: format!(
                    "{} ms median, {} ms worst of {} (objects in memory -> {} maps)",
                    fmt(c.median),
                    fmt(c.max),
                    c.n,
                    if kernel_cold.is_some() {
                        "real BPF"
                    } else {
                        "in-memory twin of the"
                    }
                ),
            });
        }
        None => out.push(Target::not_measured(
            "cold programming of 10 000 services under 1 s",
        )),
    }
    // One change applied under 5 ms p99: an API event (one EndpointSlice), and a file
    // in a manifest directory.
    let kernel_rows: Vec<_> = cp.iter().filter(|x| x.maps == Maps::Kernel).collect();
    if let Some(worst) = kernel_rows
        .iter()
        .max_by(|a, b| a.change.p99_us.total_cmp(&b.change.p99_us))
    {
        let p99 = worst.change.p99_us;
        out.push(Target {
            what: "one changed EndpointSlice (an API event) applied under 5 ms p99".into(),
            verdict: Verdict::of(p99 < CHANGE_P99_MAX_MS * 1000.0),
            detail: format!(
                "worst p99 {} µs (at {} services; p50 {} µs; {} changes; event -> real BPF maps written)",
                fmt(p99),
                count(worst.services),
                fmt(worst.change.p50_us),
                worst.change.count
            ),
        });
    }
    if let Some(worst) = r.control_plane.agent.iter().max_by_key(|x| x.services) {
        let p99_ms = worst.p99_us / 1000.0;
        let met = p99_ms < CHANGE_P99_MAX_MS;
        out.push(Target {
            what: "one changed slice file (manifest directory) applied under 5 ms p99, once the agent has read it".into(),
            verdict: Verdict::of(met),
            detail: format!(
                "{}at {} services: p99 {} ms from the changed objects' arrival to the maps written{}; from the file written to the maps: {} ms median (mostly the 50 ms poll; only the changed file is re-read)",
                if met { "" } else { "missed: " },
                count(worst.services),
                fmt(p99_ms),
                if met {
                    String::new()
                } else {
                    format!(" ({:.0}× the budget)", p99_ms / CHANGE_P99_MAX_MS)
                },
                fmt(worst.wall_ms.median),
            ),
        });
    }
    // Map operations proportional to the change.
    if !kernel_rows.is_empty() {
        let per_endpoint: Vec<f64> = kernel_rows
            .iter()
            .flat_map(|x| &x.proportional)
            .map(|p| p.map_ops_mean / p.endpoints_changed.max(1) as f64)
            .collect();
        let lo = per_endpoint.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = per_endpoint
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        out.push(Target {
            what: "map operations per change proportional to what changed (not to N)".into(),
            verdict: Verdict::of(
                hi.is_finite() && hi <= lo * PROPORTIONAL_FACTOR + PROPORTIONAL_SLACK,
            ),
            detail: format!(
                "{lo:.1}–{hi:.1} map operations per changed endpoint, for 1 to 10 endpoints changed at every N"
            ),
        });
    }
    // Agent RSS under 100 MiB at 100 000 endpoints.
    let rss_what = "agent RSS under 100 MiB at 100 000 endpoints";
    match r
        .memory
        .iter()
        .filter(|m| m.endpoints >= RSS_AT_ENDPOINTS)
        .min_by_key(|m| m.endpoints)
    {
        Some(m) => out.push(Target {
            what: rss_what.into(),
            verdict: Verdict::of(m.rss_mib.max < RSS_MAX_MIB),
            detail: format!(
                "{} MiB median after the initial sync (peak during it: {} MiB), at {} services / {} endpoints",
                fmt(m.rss_mib.median),
                fmt(m.hwm_mib.median),
                count(m.services),
                group(m.endpoints as i64)
            ),
        }),
        None => out.push(Target::not_measured(rss_what)),
    }
    stale_sockets(&mut out, r);
    out
}

/// Stale sockets: p99 from the slice change to the error, no decoy destroyed, none
/// missed; judged on the largest measured configuration.
fn stale_sockets(out: &mut Vec<Target>, r: &Results) {
    let what = "stale socket error p99 <= 100 ms from the slice change, no decoy destroyed";
    let Some(x) = r
        .stale_sockets
        .iter()
        .max_by_key(|x| x.namespaces * x.sockets_per_namespace)
    else {
        out.push(Target::not_measured(what));
        return;
    };
    let p99 = x.error_ms.p99;
    let mut misses = Vec::new();
    if p99.is_nan() || p99 > STALE_P99_MAX_MS {
        misses.push(format!("p99 {} ms", fmt(p99)));
    }
    if x.decoys_destroyed > 0 {
        misses.push(format!("{} decoys destroyed", x.decoys_destroyed));
    }
    if x.missed > 0 || x.other_errors > 0 {
        misses.push(format!(
            "{} sockets without ECONNABORTED",
            x.missed + x.other_errors
        ));
    }
    let figures = format!(
        "{} namespaces × {} sockets, {} rounds: p50 {} ms, p99 {} ms, max {} ms from the slice file written \
         (agent polling every {} ms); the agent's own pass {} ms median; {} of {} destroyed, {} of {} decoys destroyed",
        x.namespaces,
        x.sockets_per_namespace,
        x.rounds,
        fmt(x.error_ms.p50),
        fmt(p99),
        fmt(x.error_ms.max),
        x.poll_interval_ms,
        fmt(x.pass_ms.median),
        x.destroyed,
        x.expected,
        x.decoys_destroyed,
        x.decoys,
    );
    out.push(Target {
        what: what.into(),
        verdict: Verdict::of(misses.is_empty()),
        detail: if misses.is_empty() {
            figures
        } else {
            format!("missed: {}; {figures}", misses.join(", "))
        },
    });
}

/// One target per socklb row of `rows`: within [`RATE_MIN`] and [`LATENCY_MAX`] of
/// direct on rate, p50 and p99, without failed operations.
fn datapath(out: &mut Vec<Target>, rows: &[DatapathRow], label: &str) {
    let rows: Vec<&DatapathRow> = rows.iter().filter(|d| d.mode == Mode::Socklb).collect();
    if rows.is_empty() {
        out.push(Target::not_measured(format!(
            "{label}socklb within 5% of direct on every data-path figure"
        )));
    }
    for d in rows {
        let (ops, p50, p99) = (
            d.ratio_ops_per_s.median,
            d.ratio_p50.median,
            d.ratio_p99.median,
        );
        let mut misses = Vec::new();
        if !rate_ok(ops) {
            misses.push(format!(
                "{} at {ops:.2}× direct ({:.0} % below)",
                if d.kind == Kind::TcpShort {
                    "connections/s"
                } else {
                    "requests/s"
                },
                (1.0 - ops) * 100.0
            ));
        }
        for (name, x) in [("p50", p50), ("p99", p99)] {
            if !latency_ok(x) {
                misses.push(format!(
                    "{name} at {x:.2}× direct (+{:.0} %)",
                    (x - 1.0) * 100.0
                ));
            }
        }
        if d.errors > 0 {
            misses.push(format!("{} failed operations", d.errors));
        }
        let figures = format!(
            "rate {ops:.2}×, p50 {p50:.2}×, p99 {p99:.2}× direct (medians of per-repetition ratios)"
        );
        out.push(Target {
            what: format!(
                "{label}{} at {} services: socklb within 5 % of direct",
                d.kind,
                count(d.services)
            ),
            verdict: Verdict::of(misses.is_empty()),
            detail: if misses.is_empty() {
                figures
            } else {
                format!("missed: {}; {figures}", misses.join(", "))
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::LoadReport;
    use crate::spread::Spread;

    fn row(mode: Mode, rate: f64, p50: f64, p99: f64) -> DatapathRow {
        let one = |x: f64| Spread::of(&[x]);
        DatapathRow {
            services: 1000,
            kind: Kind::Udp,
            mode,
            target: String::new(),
            ops_per_s: one(1.0),
            p50_us: one(1.0),
            p99_us: one(1.0),
            ratio_ops_per_s: one(rate),
            ratio_p50: one(p50),
            ratio_p99: one(p99),
            backends_seen: 1,
            errors: 0,
            runs: Vec::<LoadReport>::new(),
        }
    }

    #[test]
    fn datapath_targets_say_by_how_much() {
        let r = Results {
            datapath: vec![
                row(Mode::Direct, 1.0, 1.0, 1.0),
                row(Mode::Socklb, 0.9, 1.0, 1.2),
            ],
            ..Default::default()
        };
        let t = evaluate(&r);
        assert_eq!(t[0].verdict, Verdict::Missed);
        assert_eq!(
            t[0].what,
            "udp at 1\u{202f}000 services: socklb within 5 % of direct"
        );
        assert!(
            t[0].detail.starts_with(
                "missed: requests/s at 0.90× direct (10 % below), p99 at 1.20× direct (+20 %);"
            ),
            "{}",
            t[0].detail
        );
        // No NodePort rows, no criterion rows, no memory rows: not measured.
        assert_eq!(t[1].verdict, Verdict::NotMeasured);
        assert!(t[1].what.starts_with("NodePort from outside, "));
        assert_eq!(t.last().unwrap().verdict, Verdict::NotMeasured);
        assert!(!rate_ok(f64::NAN) && !latency_ok(f64::NAN));
    }
}
