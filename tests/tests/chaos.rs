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

use socklb_tests::chaos::{self, ChaosOptions, DataPath};
use socklb_tests::require_privileges;

fn run(datapath: DataPath, cycles: usize, bulk_services: usize) {
    let seed = chaos::seed_from_env();
    eprintln!("chaos seed {seed} (SOCKLB_CHAOS_SEED={seed} repeats it)");
    let mut opts = ChaosOptions::new(seed, cycles);
    opts.datapath = datapath;
    opts.bulk_services_per_file = bulk_services;
    let r = chaos::run(&opts).unwrap();
    for line in r.lines() {
        eprintln!("chaos: {line}");
    }
    assert_eq!(r.cycles, cycles);
    assert!(r.kills.total > cycles, "{:?}", r.kills);
    assert!(r.tcp.attempts > 500, "the TCP client ran: {:?}", r.tcp);
    assert!(r.udp.attempts > 500, "the UDP client ran: {:?}", r.udp);
    assert!(r.clean(), "seed {seed}:\n{}", r.lines().join("\n"));
}

/// The socket hooks (ClusterIP): clients on the node in the cgroup.
#[test]
fn sigkill_at_random_points_of_syncs_fails_no_client_and_leaves_nothing() {
    if !require_privileges() {
        return;
    }
    run(DataPath::SocketHooks, 6, 500);
}

/// The TC path (NodePort): clients outside the node, the agent on the node's LAN
/// device.
#[test]
fn sigkill_under_node_port_traffic_fails_no_client_and_leaves_nothing() {
    if !require_privileges() {
        return;
    }
    run(DataPath::NodePort, 4, 300);
}
