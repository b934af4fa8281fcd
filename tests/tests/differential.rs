//! Differential testing of the kernel against the model (`socklb_tests::differential`,
//! whose long run is a stage of `cargo xtask bench`): random Services,
//! EndpointSlices and policies programmed through the agent, every frontend probed
//! through the socket hooks and the TC ingress program, every backend choice and
//! refusal one that `socklb plan` allows.
//!
//! The seed is printed; `SOCKLB_DIFF_SEED=N` repeats a run's choices.
//!
//! It needs root, bpffs, cgroup v2 and iproute2: outside CI it prints SKIPPED and
//! passes when those are missing; under CI=true it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use socklb_tests::differential::{self, DiffOptions};
use socklb_tests::require_privileges;

#[test]
fn random_services_get_only_backends_and_verdicts_the_plan_allows() {
    if !require_privileges() {
        return;
    }
    let seed = differential::seed_from_env();
    eprintln!("differential seed {seed} (SOCKLB_DIFF_SEED={seed} repeats it)");
    let mut opts = DiffOptions::new(seed, 300);
    opts.generator.slots = 100;
    let r = differential::run(&opts).unwrap();
    for line in r.lines() {
        eprintln!("differential: {line}");
    }
    assert!(r.cases >= 300, "{} cases", r.cases);
    assert!(r.socket_probes > 500, "{} socket probes", r.socket_probes);
    assert!(r.tc_probes > 100, "{} TC flows", r.tc_probes);
    assert!(r.clean(), "seed {seed}:\n{}", r.lines().join("\n"));
    // The node's own connections to external frontends get kube-proxy's set.
    assert_eq!(
        r.kube_proxy_differences, 0,
        "seed {seed}: {:#?}",
        r.kube_proxy_examples
    );
}
