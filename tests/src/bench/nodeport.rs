//! Issue 5, item 3: NodePort through socklb's TC program against the iptables layout's
//! NodePort DNAT. **Not yet**: it waits for the TC data path.
//!
//! The plan, so that it slots into [`super::runner`] as one more item:
//! - an "outside" client namespace on the bridge that is not in the agent's cgroup and
//!   has no rules (a client on another machine), sending to NODE_IP:NODE_PORT, where
//!   NODE_IP is the address of a "node" namespace that carries the socklb TC program on
//!   its interface, or kube-proxy's iptables layout with the NodePort part added
//!   (`-A KUBE-NODEPORTS -m comment --comment "ns/svc:p" -m tcp -p tcp --dport NP -j KUBE-EXT-x`,
//!   `-A KUBE-EXT-x -j KUBE-MARK-MASQ`, `-A KUBE-EXT-x -j KUBE-SVC-x`, reached through the
//!   last KUBE-SERVICES rule, `-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`), and the
//!   node forwarding to the pods (so the masquerade and the forward path are paid);
//! - the same three kinds as the ClusterIP data path (TCP short, TCP long, UDP) with
//!   their ratios to a direct run to the pods from that outside namespace.

use super::results::Results;

/// What the summary says about item 3 until it is measured.
pub const STATUS: &str = "NodePort (issue 5, item 3): not yet measured; it waits for the TC data path (see tests/src/bench/nodeport.rs for the plan).";

/// The NodePort item: records that it is not measured yet.
pub fn nodeport(results: &mut Results) {
    if !results.notes.iter().any(|n| n == STATUS) {
        results.notes.push(STATUS.to_string());
    }
}
