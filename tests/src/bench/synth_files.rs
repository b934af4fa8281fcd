//! The same [`SynthCluster`] as Services and EndpointSlices for `socklb agent
//! --manifests`: multi-document YAML files of [`CHUNK`] services each, and the slice of
//! the service the control-plane benchmark changes in a file of its own
//! ([`CHANGING_FILE`]) so that one change rewrites one small file.

use std::fmt::Write as _;

use anyhow::Result;

use super::model::{Change, NAMESPACE, NODE_NAME, SynthCluster};
use socklb_tests::tempdir::ManifestDir;

/// Services per file.
pub const CHUNK: usize = 1000;
/// The file holding the changing service's EndpointSlice.
pub const CHANGING_FILE: &str = "changing-slice.yaml";

fn service_yaml(s: &mut String, c: &SynthCluster, i: usize) {
    let _ = write!(
        s,
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {NAMESPACE}\nspec:\n  type: {}\n  clusterIP: {vip}\n  clusterIPs: [{vip}]\n  ports:\n",
        c.name(i),
        if c.node_port(i).is_some() {
            "NodePort"
        } else {
            "ClusterIP"
        },
        vip = c.vip(i)
    );
    let node_port = c
        .node_port(i)
        .map(|np| format!(", nodePort: {np}"))
        .unwrap_or_default();
    for p in c.ports(i) {
        let _ = writeln!(
            s,
            "  - {{name: {}, port: {}, targetPort: {}, protocol: {}{node_port}}}",
            p.name,
            p.port,
            p.target,
            p.proto.upper()
        );
    }
}

fn slice_yaml(s: &mut String, c: &SynthCluster, i: usize, change: Option<Change>) {
    let _ = write!(
        s,
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-bench\n  namespace: {NAMESPACE}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n",
        name = c.name(i)
    );
    for p in c.ports(i) {
        let _ = writeln!(
            s,
            "- {{name: {}, port: {}, protocol: {}}}",
            p.name,
            p.target,
            p.proto.upper()
        );
    }
    s.push_str("endpoints:\n");
    // NodePort clusters: the pods are on the agent's node (local backends).
    let node = if c.node_port_base.is_some() {
        format!(", nodeName: {NODE_NAME}")
    } else {
        String::new()
    };
    for ep in c.endpoints_of(i, change) {
        let _ = writeln!(
            s,
            "- {{addresses: [{ep}], conditions: {{ready: true, serving: true, terminating: false}}{node}}}"
        );
    }
}

/// Writes the whole cluster into `dir` (which should be empty).
pub fn write_all(dir: &ManifestDir, c: &SynthCluster) -> Result<()> {
    let changing = c.changing();
    let mut start = 0;
    while start < c.services {
        let end = (start + CHUNK).min(c.services);
        let mut s = String::with_capacity((end - start) * (600 + 90 * c.endpoints));
        for i in start..end {
            service_yaml(&mut s, c, i);
            if i != changing {
                slice_yaml(&mut s, c, i, None);
            }
        }
        dir.write(&format!("services-{start:05}.yaml"), &s)?;
        start = end;
    }
    write_changing(dir, c, None)
}

/// (Re)writes the changing service's slice with `change` applied (atomically).
pub fn write_changing(dir: &ManifestDir, c: &SynthCluster, change: Option<Change>) -> Result<()> {
    let mut s = String::new();
    slice_yaml(&mut s, c, c.changing(), change);
    dir.write(CHANGING_FILE, &s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::Ipv4Addr;

    use super::*;
    use socklb_tests::cluster_spec::read_cluster_spec;

    #[test]
    fn the_sandbox_reader_sees_every_service_and_endpoint() {
        let pods: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect();
        let c = SynthCluster::new(2500, 3, pods.clone());
        let dir = ManifestDir::new().unwrap();
        write_all(&dir, &c).unwrap();
        assert_eq!(dir.files().unwrap().len(), 3 + 1);
        let m = read_cluster_spec(dir.path()).unwrap();
        assert_eq!(m.services.len(), 2500);
        assert_eq!(m.slices.len(), 2500);
        let last = m.service(NAMESPACE, &c.name(2499)).unwrap();
        assert_eq!(last.cluster_ip, Some(c.vip(2499).into()));
        let eps = m.endpoints_for(last, &last.ports[1]);
        assert_eq!(eps, pods.iter().map(|p| (*p, 5353)).collect::<Vec<_>>());
        let total: usize = m.slices.iter().map(|s| s.endpoints.len()).sum();
        assert_eq!(total, c.total_endpoints());
    }

    #[test]
    fn node_port_clusters_parse_as_node_ports_on_the_bench_node() {
        let pods: Vec<Ipv4Addr> = (1..=2).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect();
        let c = SynthCluster::new(3, 2, pods).with_node_ports(20000);
        let dir = ManifestDir::new().unwrap();
        write_all(&dir, &c).unwrap();
        let text: String = dir
            .files()
            .unwrap()
            .iter()
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap())
            .collect();
        assert_eq!(text.matches("type: NodePort").count(), 3, "{text}");
        assert!(text.contains("nodePort: 20002"), "{text}");
        assert!(text.contains("nodeName: bench-node"), "{text}");
        let m = read_cluster_spec(dir.path()).unwrap();
        assert_eq!(m.services.len(), 3);
    }
}
