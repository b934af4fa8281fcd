//! Chaos: the agent killed with SIGKILL at random points of its syncs, under clients
//! of services whose backends stay ready and while other services and endpoints
//! churn (`socklb_tests::chaos`, whose long run is a stage of `cargo xtask bench`).
//! After each restart the maps hold exactly what `socklb plan` wants, and no pin or
//! link is left over; not one connection or datagram fails.
//!
//! The seed is printed; `SOCKLB_CHAOS_SEED=N` repeats a run's choices.
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use socklb_tests::chaos::{self, ChaosOptions};
use socklb_tests::require_privileges;

#[test]
fn sigkill_at_random_points_of_syncs_fails_no_client_and_leaves_nothing() {
    if !require_privileges() {
        return;
    }
    let seed = chaos::seed_from_env();
    eprintln!("chaos seed {seed} (SOCKLB_CHAOS_SEED={seed} repeats it)");
    let r = chaos::run(&ChaosOptions::new(seed, 6)).unwrap();
    eprintln!("{r:#?}");
    assert_eq!(r.cycles, 6);
    assert!(r.clean(), "seed {seed}: {r:#?}");
}
