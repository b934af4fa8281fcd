//! socklb-bench's modules: the synthetic cluster, the kube-proxy rule generators, the
//! load generator and the runner. Compiled into the `socklb-bench` binary only (the
//! sandbox library stays free of benchmark code). What they measure is written as the
//! types of `socklb_bench_results`, which xtask reads back to render the summary.

pub mod chaos;
pub mod differential;
pub mod iptables;
pub mod load;
pub mod model;
pub mod nft;
pub mod nodeport;
pub mod runner;
pub mod stale;
pub mod stats;
pub mod synth_files;
pub mod util;
