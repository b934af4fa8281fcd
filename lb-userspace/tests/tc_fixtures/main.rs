//! Packet fixtures for the TC data path (lb4_tc_ingress / lb4_tc_egress and
//! lb6_tc_ingress / lb6_tc_egress with their tail calls) through BPF_PROG_TEST_RUN, in
//! the manner of Katran's and Cilium's BPF tests: an input packet, the expected output
//! packet, the expected verdict.
//!
//! Both families, written once: a scenario is a `fn name(f: Family)` listed in
//! `each_family!`, run as `name::ipv4` and `name::ipv6`, with IPv4 test addresses that
//! stand for their fd00:: twins in IPv6 (`family.rs`). What only one family has stays
//! its own: IPv4 options (`ip_options.rs`), IPv6 extension headers
//! (`ext_headers.rs`), UDP without a checksum (IPv4).
//!
//! The maps are programmed by the agent's own code (Kubernetes objects -> models ->
//! plan -> desired state -> diff -> `KernelMaps`), so the fixtures test the pairing of
//! agent and kernel, not a hand-written map layout; only conntrack setups the programs
//! cannot produce themselves (an expired entry) are written raw.
//!
//! Every output is compared field by field with the expected packet (built by the
//! test's own packet builder, with checksums computed here) and every checksum of the
//! output is recomputed from scratch, so a checksum bug fails. One blind spot: a test
//! run's skb is CHECKSUM_NONE, for which the kernel's l4_csum_replace ignores
//! BPF_F_PSEUDO_HDR; that flag matters with checksum offload (CHECKSUM_PARTIAL) and
//! only the real-traffic suite (tests/tests/nodeport.rs) can see it.
//!
//! Packets whose source becomes a node address are routed by the ingress program
//! itself (FIB lookup, redirect, TTL one less), so each fixture runs on a thread moved
//! into a network namespace of its own with the node's device, addresses and a route
//! to the remote pods (see harness.rs): the lookups are deterministic and the host's
//! routing never matters.
//!
//! Needs root, bpffs and iproute2: without them a fixture prints `SKIPPED: ...`, or
//! fails under `CI=true`. Nothing is attached anywhere and no packet leaves the test:
//! BPF_PROG_TEST_RUN runs the program on a buffer (a redirect is only a verdict).
//!
//! One module per scenario (each test's path names it), sharing the cluster and the
//! checks of `common.rs`:
//! - `dnat.rs`: NodePort DNAT to a local backend, the client address kept;
//! - `snat.rs`: NodePort SNAT to a remote backend, replies back through ingress;
//! - `reverse_nat.rs`: a local backend's replies translated back on egress;
//! - `udp.rs`: UDP DNAT and SNAT, with a checksum, without one, 0xffff for 0;
//! - `loadbalancer.rs`: LoadBalancer and external IPs, loadBalancerSourceRanges;
//! - `affinity.rs`: ClientIP session affinity: a client's new flows keep its backend;
//! - `maglev.rs`: `--lb-algorithm maglev`: the kernel's picks are the core's
//!   predictions, a removed backend moves only what the table moves;
//! - `no_endpoints.rs`: frontends without usable endpoints (RST and ICMP answers from
//!   LoadBalancer and external IPs, NodePorts left to the stack, Local policy drops),
//!   addresses not ours;
//! - `refused_ports.rs`: a known VIP's unknown ports and protocols are refused;
//! - `reject_limits.rs`: what is never answered, and the answers' budget;
//! - `fragments.rs`: later fragments follow their first fragment;
//! - `ip_options.rs`: IPv4 options (IHL > 5) through DNAT and SNAT;
//! - `icmp.rs`: ICMP errors about tracked flows, translated back;
//! - `conntrack.rs`: entry lifetimes: FIN, RST, expiry, reuse, one-way streams;
//! - `unknown_traffic.rs`: traffic that is not ours, passed untouched;
//! - `ext_headers.rs`: IPv6 extension headers (hop-by-hop, routing, destination
//!   options, fragment) through DNAT, SNAT, reverse NAT and ICMPv6 errors;
//! - `machinery.rs`: the fixture machinery itself (maps programmed, packet builder);
//! - `common.rs`: the cluster (addresses, Services, EndpointSlices), the fixture on it,
//!   and the checks (verdict, packet field by field, checksums, conntrack entries);
//! - `family.rs`: the family of a fixture, test addresses and their IPv6 twins;
//! - `harness.rs`: loads the programs, programs the maps, runs BPF_PROG_TEST_RUN;
//! - `packet.rs`: builds, decodes and diffs packets, and checks their checksums.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

mod common;
mod family;
mod harness;
#[allow(dead_code, reason = "a toolbox: not every fixture uses every helper")]
mod packet;

mod affinity;
mod conntrack;
mod dnat;
mod ext_headers;
mod fragments;
mod icmp;
mod ip_options;
mod loadbalancer;
mod machinery;
mod maglev;
mod no_endpoints;
mod refused_ports;
mod reject_limits;
mod reverse_nat;
mod snat;
mod udp;
mod unknown_traffic;
