//! The deployment manifests under `manifests/`: every document parses into its
//! k8s-openapi type with nothing lost on the way (so a misspelled field, which serde
//! would silently drop, fails), the kustomization lists exactly the files there, and
//! the RBAC and the DaemonSet follow the policy their comments explain.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, Namespace, PodSpec, Probe, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

const KUSTOMIZATION: &str = "kustomization.yaml";
/// kube-proxy's healthz port, where the agent serves /healthz, /readyz and /metrics.
const HEALTH_PORT: i32 = 10256;
const BPF_LINKER_VERSION: &str = "0.13.0";

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// File names of every YAML file in manifests/, sorted.
fn yaml_files() -> Vec<String> {
    let dir = manifests_dir();
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

/// The YAML documents of one file (empty documents skipped).
fn documents(file: &str) -> Vec<serde_yaml::Value> {
    let path = manifests_dir().join(file);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    yaml_documents(file, &text)
}

/// The YAML documents of a text (empty documents skipped).
fn yaml_documents(file: &str, text: &str) -> Vec<serde_yaml::Value> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = <serde_yaml::Value as serde::Deserialize>::deserialize(de)
            .unwrap_or_else(|e| panic!("{file}: document {i} is not valid YAML: {e}"));
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    assert!(!docs.is_empty(), "{file}: no documents");
    docs
}

/// Parses `doc` into `T` with serde_yaml, then checks that serializing `T` gives back
/// exactly the document: serde ignores unknown fields, so a typo (`hostNetwrok`) or a
/// field at the wrong level would otherwise vanish without an error.
fn parse_exact<T: DeserializeOwned + Serialize>(doc: &serde_yaml::Value) -> Result<T, String> {
    let typed: T =
        serde_yaml::from_value(doc.clone()).map_err(|e| format!("does not parse: {e}"))?;
    let original =
        serde_json::to_value(doc).map_err(|e| format!("not representable as JSON: {e}"))?;
    let round_trip =
        serde_json::to_value(&typed).map_err(|e| format!("does not serialize: {e}"))?;
    match first_difference(&original, &round_trip, "") {
        None => Ok(typed),
        Some(diff) => Err(format!(
            "{diff}: an unknown (misspelled or misplaced) field, or a value the type does not keep"
        )),
    }
}

/// The first place where `a` (the manifest) and `b` (its typed round trip) differ.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    None => return Some(format!("{p} is dropped by the typed object")),
                    Some(vb) => {
                        if let Some(d) = first_difference(va, vb, &p) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|k| !a.contains_key(*k))
                .map(|k| format!("{path}.{k} appears in the typed object only"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(va, vb, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} in the manifest, {b} after parsing")),
    }
}

fn parse_or_panic<T: DeserializeOwned + Serialize>(doc: &serde_yaml::Value, origin: &str) -> T {
    parse_exact(doc).unwrap_or_else(|e| panic!("{origin}: {e}"))
}

fn field<'a>(doc: &'a serde_yaml::Value, key: &str) -> Option<&'a str> {
    doc.get(key).and_then(serde_yaml::Value::as_str)
}

/// Every object of every manifest, typed.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    daemonsets: Vec<DaemonSet>,
}

impl Manifests {
    /// Parses one resource file; panics on an unknown kind or a document that does not
    /// round-trip.
    fn add_file(&mut self, file: &str) {
        self.add_documents(file, &documents(file));
    }

    /// Parses documents (of a file, or of `kubectl kustomize`'s output).
    fn add_documents(&mut self, file: &str, docs: &[serde_yaml::Value]) {
        for (i, doc) in docs.iter().enumerate() {
            let kind =
                field(doc, "kind").unwrap_or_else(|| panic!("{file}: document {i} has no kind"));
            let origin = format!("{file}: document {i} ({kind})");
            match kind {
                "Namespace" => self.namespaces.push(parse_or_panic(doc, &origin)),
                "ServiceAccount" => self.service_accounts.push(parse_or_panic(doc, &origin)),
                "ClusterRole" => self.cluster_roles.push(parse_or_panic(doc, &origin)),
                "ClusterRoleBinding" => self
                    .cluster_role_bindings
                    .push(parse_or_panic(doc, &origin)),
                "DaemonSet" => self.daemonsets.push(parse_or_panic(doc, &origin)),
                other => panic!(
                    "{file}: document {i} has kind {other}, which this test does not know: add its type"
                ),
            }
        }
    }

    /// Every file the kustomization lists, which is every YAML file of the directory
    /// (checked in `kustomization_lists_every_manifest_and_sets_the_image`).
    fn load() -> Self {
        let mut m = Self::default();
        for file in kustomization_resources() {
            m.add_file(&file);
        }
        m
    }

    fn only<'a, T>(items: &'a [T], what: &str) -> &'a T {
        match items {
            [one] => one,
            _ => panic!("expected exactly one {what}, found {}", items.len()),
        }
    }

    fn daemonset(&self) -> &DaemonSet {
        Self::only(&self.daemonsets, "DaemonSet")
    }

    fn pod_spec(&self) -> &PodSpec {
        let ds = self.daemonset();
        ds.spec
            .template
            .spec
            .as_ref()
            .unwrap_or_else(|| panic!("DaemonSet has no pod template spec"))
    }

    fn agent(&self) -> &Container {
        Self::only(&self.pod_spec().containers, "container in the DaemonSet")
    }
}

/// `resources` of kustomization.yaml, in order.
fn kustomization_resources() -> Vec<String> {
    let docs = documents(KUSTOMIZATION);
    let [k] = docs.as_slice() else {
        panic!("{KUSTOMIZATION}: expected one document")
    };
    let resources = k
        .get("resources")
        .and_then(serde_yaml::Value::as_sequence)
        .unwrap_or_else(|| panic!("{KUSTOMIZATION}: no resources list"));
    resources
        .iter()
        .map(|r| {
            r.as_str()
                .unwrap_or_else(|| panic!("{KUSTOMIZATION}: resource {r:?} is not a file name"))
                .to_string()
        })
        .collect()
}

/// The value given to `flag` in `args`, as `--flag value` or `--flag=value`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(flag).and_then(|rest| rest.strip_prefix('='))
        }
    })
}

#[test]
fn a_misspelled_field_fails_the_round_trip() {
    let doc = |extra: &str| -> serde_yaml::Value {
        let text = format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  namespace: y\n{extra}"
        );
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("fixture: {e}"))
    };
    assert!(parse_exact::<ServiceAccount>(&doc("")).is_ok());
    assert!(parse_exact::<ServiceAccount>(&doc("automountServiceAccountToken: true\n")).is_ok());
    let typo = parse_exact::<ServiceAccount>(&doc("automountServiceAcountToken: true\n"));
    assert!(
        typo.as_ref()
            .is_err_and(|e| e.contains(".automountServiceAcountToken")),
        "{typo:?}"
    );
    let misplaced = parse_exact::<ServiceAccount>(&doc("labels:\n  a: b\n"));
    assert!(misplaced.is_err(), "labels outside metadata must fail");
    // A kind that does not match the type fails too (k8s-openapi checks it).
    let wrong_kind = serde_yaml::from_str::<serde_yaml::Value>(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n",
    )
    .map(|d| parse_exact::<ServiceAccount>(&d));
    assert!(matches!(wrong_kind, Ok(Err(_))), "{wrong_kind:?}");
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let mut m = Manifests::default();
    for file in yaml_files().iter().filter(|f| *f != KUSTOMIZATION) {
        m.add_file(file);
    }
    assert_eq!(m.namespaces.len(), 1, "one Namespace");
    assert_eq!(m.service_accounts.len(), 1, "one ServiceAccount");
    assert_eq!(m.cluster_roles.len(), 1, "one ClusterRole");
    assert_eq!(m.cluster_role_bindings.len(), 1, "one ClusterRoleBinding");
    assert_eq!(m.daemonsets.len(), 1, "one DaemonSet");
}

#[test]
fn kustomization_lists_every_manifest_and_sets_the_image() {
    let docs = documents(KUSTOMIZATION);
    let [k] = docs.as_slice() else {
        panic!("{KUSTOMIZATION}: expected one document")
    };
    assert_eq!(
        field(k, "apiVersion"),
        Some("kustomize.config.k8s.io/v1beta1")
    );
    assert_eq!(field(k, "kind"), Some("Kustomization"));
    // A misspelled top-level key (`resource:`) would be ignored by kustomize.
    let known = [
        "apiVersion",
        "kind",
        "resources",
        "images",
        "namespace",
        "labels",
        "patches",
        "configMapGenerator",
    ];
    let map = k
        .as_mapping()
        .unwrap_or_else(|| panic!("{KUSTOMIZATION}: not a map"));
    for key in map.keys() {
        let key = key
            .as_str()
            .unwrap_or_else(|| panic!("{KUSTOMIZATION}: key {key:?} is not a string"));
        assert!(
            known.contains(&key),
            "{KUSTOMIZATION}: unexpected key {key}"
        );
    }

    let resources = kustomization_resources();
    let listed: BTreeSet<String> = resources.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        resources.len(),
        "{KUSTOMIZATION}: a resource is listed twice"
    );
    let on_disk: BTreeSet<String> = yaml_files()
        .into_iter()
        .filter(|f| f != KUSTOMIZATION)
        .collect();
    assert_eq!(
        listed, on_disk,
        "{KUSTOMIZATION} must list exactly the YAML files of manifests/"
    );
    // Every listed file exists and parses into its types.
    let m = Manifests::load();

    // `images` retargets the DaemonSet's image name (every container of the pod).
    let images = k
        .get("images")
        .and_then(serde_yaml::Value::as_sequence)
        .expect("images list");
    let image_names: BTreeSet<&str> = images.iter().filter_map(|i| field(i, "name")).collect();
    for image in images {
        let keys = image.as_mapping().expect("image entry is a map").keys();
        for key in keys {
            let key = key.as_str().unwrap_or_default();
            assert!(
                ["name", "newName", "newTag", "digest"].contains(&key),
                "images: unexpected key {key}"
            );
        }
        assert!(
            field(image, "newTag").is_some() || field(image, "digest").is_some(),
            "images: no tag or digest"
        );
    }
    let spec = m.pod_spec();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let image = c
            .image
            .as_deref()
            .unwrap_or_else(|| panic!("container {} has no image", c.name));
        assert!(
            image_names.contains(image),
            "container {}: image {image} is not set by {KUSTOMIZATION}",
            c.name
        );
    }
}

/// `kubectl kustomize manifests/` (kubectl's built-in kustomize: what `kubectl apply
/// -k` applies). None, with SKIPPED on stderr, when kubectl is missing outside CI;
/// under CI=true that fails (`cargo xtask setup` installs it).
fn kustomize_build() -> Option<String> {
    let out = match std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(manifests_dir())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            let ci = std::env::var("CI")
                .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
            if ci {
                panic!("kubectl cannot run under CI=true ({e}): `cargo xtask setup` installs it");
            }
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED: kubectl: {e}");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        manifests_dir().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("kustomize printed no UTF-8: {e}")),
    )
}

/// What kustomize renders is what the files say, each object parsed strictly into its
/// k8s-openapi type (the same round trip), with only the image changed: every
/// container runs `newName:newTag` of the kustomization, the workspace's version.
#[test]
fn the_rendered_kustomization_parses_strictly_into_the_files_objects() {
    let Some(text) = kustomize_build() else {
        return;
    };
    let mut rendered = Manifests::default();
    rendered.add_documents(
        "kubectl kustomize",
        &yaml_documents("kubectl kustomize", &text),
    );
    let files = Manifests::load();

    let docs = documents(KUSTOMIZATION);
    let image = &docs[0]["images"][0];
    let name = field(image, "name").expect("images[0].name");
    let tag = field(image, "newTag").expect("images[0].newTag");
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "{KUSTOMIZATION} deploys the version being released"
    );
    let full = format!("{}:{tag}", field(image, "newName").unwrap_or(name));

    let pairs: [(&str, Vec<Value>, Vec<Value>); 4] = [
        (
            "Namespace",
            values(&rendered.namespaces),
            values(&files.namespaces),
        ),
        (
            "ServiceAccount",
            values(&rendered.service_accounts),
            values(&files.service_accounts),
        ),
        (
            "ClusterRole",
            values(&rendered.cluster_roles),
            values(&files.cluster_roles),
        ),
        (
            "ClusterRoleBinding",
            values(&rendered.cluster_role_bindings),
            values(&files.cluster_role_bindings),
        ),
    ];
    for (kind, r, f) in pairs {
        assert_eq!(r, f, "{kind}: kustomize changed it");
    }

    let mut ds = rendered.daemonset().clone();
    let spec = ds.spec.template.spec.as_mut().expect("pod spec");
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        assert_eq!(
            c.image.as_deref(),
            Some(full.as_str()),
            "container {}",
            c.name
        );
        c.image = Some(name.to_string());
    }
    assert_eq!(
        values(&[ds]),
        values(std::slice::from_ref(files.daemonset())),
        "DaemonSet: kustomize changed more than the image"
    );
}

/// The typed objects as JSON, for comparing them.
fn values<T: Serialize>(objects: &[T]) -> Vec<Value> {
    objects
        .iter()
        .map(|o| serde_json::to_value(o).unwrap_or_else(|e| panic!("does not serialize: {e}")))
        .collect()
}

#[test]
fn cluster_role_only_reads_services_endpointslices_and_nodes() {
    let m = Manifests::load();
    let role = Manifests::only(&m.cluster_roles, "ClusterRole");
    let rules = role.rules.as_deref().unwrap_or_default();
    let read: BTreeSet<&str> = ["get", "list", "watch"].into();
    let mut granted: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for rule in rules {
        assert!(rule.non_resource_urls.is_none(), "no non-resource URLs");
        assert!(
            rule.resource_names.is_none(),
            "resourceNames would break list/watch"
        );
        for verb in &rule.verbs {
            assert!(
                read.contains(verb.as_str()),
                "verb {verb} is more than a read"
            );
        }
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                granted
                    .entry((group, resource))
                    .or_default()
                    .extend(rule.verbs.iter().map(String::as_str));
            }
        }
    }
    let expected: BTreeMap<(&str, &str), BTreeSet<&str>> = [
        (("", "services"), read.clone()),
        (("", "nodes"), read.clone()),
        (("discovery.k8s.io", "endpointslices"), read.clone()),
    ]
    .into();
    assert_eq!(
        granted, expected,
        "exactly get/list/watch on services, endpointslices, nodes"
    );
}

#[test]
fn binding_gives_the_role_to_the_agent_service_account() {
    let m = Manifests::load();
    let ns = Manifests::only(&m.namespaces, "Namespace")
        .metadata
        .name
        .as_deref()
        .expect("namespace name");
    assert_eq!(ns, "socklb-system");
    let sa = Manifests::only(&m.service_accounts, "ServiceAccount");
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns));
    let role = Manifests::only(&m.cluster_roles, "ClusterRole");
    let binding = Manifests::only(&m.cluster_role_bindings, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    let [subject] = subjects else {
        panic!("expected one subject, found {}", subjects.len())
    };
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace.as_deref(), Some(ns));

    let ds = m.daemonset();
    assert_eq!(ds.metadata.namespace.as_deref(), Some(ns));
    let pod = m.pod_spec();
    assert_eq!(
        pod.service_account_name.as_ref(),
        sa.metadata.name.as_ref(),
        "DaemonSet runs as the bound account"
    );
    assert_eq!(
        pod.automount_service_account_token,
        Some(true),
        "in-cluster config needs the token"
    );
    // Privileged pods must be admitted in the namespace.
    let labels = m.namespaces[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );
}

#[test]
fn daemonset_runs_on_the_host_network_of_every_node_with_named_capabilities() {
    let m = Manifests::load();
    let ds = m.daemonset();
    let spec = &ds.spec;
    let pod = m.pod_spec();
    let agent = m.agent();

    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    // Stale-socket termination finds the pods' network namespaces through /proc.
    assert_eq!(pod.host_pid, Some(true), "hostPID");
    // Only the init container that mounts bpffs (Bidirectional propagation) is
    // privileged; the agent has the capabilities it needs and nothing else
    // (tests/tests/least_privilege.rs runs it so).
    for c in pod.init_containers.iter().flatten() {
        let privileged = c.security_context.as_ref().and_then(|s| s.privileged);
        assert_eq!(privileged, Some(true), "init container {}", c.name);
    }
    let sc = agent
        .security_context
        .as_ref()
        .expect("agent securityContext");
    assert_eq!(sc.privileged, Some(false));
    // The API server refuses allowPrivilegeEscalation false with SYS_ADMIN.
    let adds_sys_admin = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .is_some_and(|a| a.iter().any(|c| c == "SYS_ADMIN"));
    assert_eq!(sc.allow_privilege_escalation, Some(adds_sys_admin));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(
            &[
                "BPF".to_string(),
                "NET_ADMIN".into(),
                "PERFMON".into(),
                "SYS_ADMIN".into(),
                "SYS_PTRACE".into()
            ][..]
        )
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.termination_grace_period_seconds.is_some(),
        "terminationGracePeriodSeconds is set"
    );

    // Tolerates every taint: a toleration with operator Exists and no key or effect.
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a catch-all toleration (operator: Exists): {tolerations:?}"
    );
    if let Some(selector) = &pod.node_selector {
        assert!(
            selector
                .iter()
                .all(|(k, v)| k == "kubernetes.io/os" && v == "linux"),
            "no node selection beyond Linux: {selector:?}"
        );
    }

    // One node at a time, never two agents on a node.
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));

    // The selector matches the template.
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(!selector.is_empty(), "selector");
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "template label {k}");
    }

    // NODE_NAME from the downward API.
    let env = agent.env.as_deref().unwrap_or_default();
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME env");
    let field_path = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(field_path, Some("spec.nodeName"));
    assert!(node_name.value.is_none());

    // Resources: requests, and a memory limit; no CPU limit.
    let resources = agent.resources.as_ref().expect("resources");
    let requests = resources.requests.clone().unwrap_or_default();
    assert!(
        requests.contains_key("cpu") && requests.contains_key("memory"),
        "cpu and memory requests"
    );
    let limits = resources.limits.clone().unwrap_or_default();
    assert!(limits.contains_key("memory"), "a memory limit");
    assert!(!limits.contains_key("cpu"), "no CPU limit");
}

/// The port a probe targets, resolving a named port against the container.
fn probe_port(probe: &Probe, container: &Container) -> i32 {
    let http = probe
        .http_get
        .as_ref()
        .unwrap_or_else(|| panic!("probe is not httpGet: {probe:?}"));
    match &http.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .unwrap_or_else(|| panic!("probe port {name} is not a container port")),
    }
}

#[test]
fn daemonset_probes_the_agent_health_endpoint() {
    let m = Manifests::load();
    let agent = m.agent();
    let liveness = agent.liveness_probe.as_ref().expect("livenessProbe");
    let readiness = agent.readiness_probe.as_ref().expect("readinessProbe");
    for (probe, path) in [(liveness, "/healthz"), (readiness, "/readyz")] {
        let http = probe.http_get.as_ref().expect("httpGet");
        assert_eq!(http.path.as_deref(), Some(path));
        assert_eq!(
            probe_port(probe, agent),
            HEALTH_PORT,
            "{path} on the health port"
        );
        // Host network: the kubelet probes the pod IP, the node's address.
        assert!(http.host.is_none(), "{path}: no host override");
        assert!(
            matches!(http.scheme.as_deref(), None | Some("HTTP")),
            "{path}: plain HTTP"
        );
    }
    // When the manifest sets --health-addr, it is the port the probes use.
    let args = agent.args.as_deref().unwrap_or_default();
    if let Some(addr) = flag_value(args, "--health-addr") {
        let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
        assert_eq!(port, HEALTH_PORT.to_string(), "--health-addr {addr}");
    }
}

#[test]
fn daemonset_mounts_bpffs_and_the_cgroup_root_where_its_args_point() {
    let m = Manifests::load();
    let pod = m.pod_spec();
    let agent = m.agent();
    let args = agent.args.as_deref().unwrap_or_default();
    assert_eq!(
        args.first().map(String::as_str),
        Some("agent"),
        "runs `socklb agent`"
    );
    assert!(
        flag_value(args, "--manifests").is_none(),
        "the DaemonSet watches the API server"
    );
    assert!(agent.command.is_none(), "the image's entrypoint is socklb");

    // hostPath volumes by host path -> volume name.
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let host_volume = |host: &str| -> &str {
        volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host))
            .map(|v| v.name.as_str())
            .unwrap_or_else(|| panic!("no hostPath volume for {host}"))
    };
    let mount_of = |c: &Container, volume: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|vm| vm.name == volume)
            .cloned()
            .unwrap_or_else(|| panic!("container {} does not mount volume {volume}", c.name))
    };

    // --cgroup is exactly where the host's cgroup2 root is mounted.
    let cgroup = mount_of(agent, host_volume("/sys/fs/cgroup"));
    let cgroup_arg = flag_value(args, "--cgroup")
        .expect("--cgroup is explicit (the container's own view is its pod cgroup)");
    assert_eq!(
        cgroup_arg, cgroup.mount_path,
        "--cgroup points at the host cgroup2 root mount"
    );
    assert_ne!(
        cgroup.mount_path, "/sys/fs/cgroup",
        "not over the container's own cgroup mount"
    );

    // --bpffs is a directory inside the host's bpffs mount.
    let bpffs_volume = host_volume("/sys/fs/bpf");
    let bpffs = mount_of(agent, bpffs_volume);
    let bpffs_arg = flag_value(args, "--bpffs").expect("--bpffs");
    let inside = Path::new(bpffs_arg)
        .strip_prefix(&bpffs.mount_path)
        .unwrap_or_else(|_| {
            panic!(
                "--bpffs {bpffs_arg} is not under the bpffs mount {}",
                bpffs.mount_path
            )
        });
    assert!(
        inside.components().count() >= 1,
        "--bpffs is a directory of its own inside bpffs"
    );
    assert_eq!(bpffs_arg, "/sys/fs/bpf/socklb");
    // Pins are written to bpffs; the cgroup is only opened to attach to it.
    assert!(bpffs.read_only != Some(true), "bpffs must be writable");
    assert_eq!(
        cgroup.read_only,
        Some(true),
        "the cgroup mount is read-only"
    );
    for mount in [&cgroup, &bpffs] {
        assert!(
            matches!(
                mount.mount_propagation.as_deref(),
                Some("HostToContainer" | "Bidirectional")
            ),
            "{}: the agent must see the host's mounts there",
            mount.mount_path
        );
    }

    // Whatever mounts bpffs when the host has none must propagate that mount to the host.
    for init in pod.init_containers.iter().flatten() {
        if let Some(vm) = init
            .volume_mounts
            .iter()
            .flatten()
            .find(|vm| vm.name == bpffs_volume)
        {
            assert_eq!(
                vm.mount_propagation.as_deref(),
                Some("Bidirectional"),
                "init container {}",
                init.name
            );
        }
    }
}

/// Dockerfile lines with continuations joined.
fn dockerfile_instructions() -> Vec<String> {
    let path = manifests_dir().join("Dockerfile");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[test]
fn dockerfile_builds_socklb_with_the_pinned_bpf_linker() {
    let instructions = dockerfile_instructions();
    let words = |i: &String| i.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].contains("bookworm") && froms[0].contains(" AS "),
        "a named Debian 12 builder stage: {}",
        froms[0]
    );
    assert_eq!(
        froms.last().map(|f| f.as_str()),
        Some("FROM scratch"),
        "runtime stage without a base image (the tree `cargo xtask image` makes)"
    );

    let install = instructions
        .iter()
        .find(|i| i.contains("cargo install bpf-linker"))
        .expect("bpf-linker is installed with cargo install");
    let w = words(install);
    let version = w
        .iter()
        .position(|x| x == "--version")
        .and_then(|p| w.get(p + 1));
    assert_eq!(
        version.map(String::as_str),
        Some(BPF_LINKER_VERSION),
        "pinned bpf-linker: {install}"
    );
    assert!(w.iter().any(|x| x == "--no-default-features"), "{install}");
    let features = w
        .iter()
        .position(|x| x == "--features")
        .and_then(|p| w.get(p + 1));
    assert_eq!(features.map(String::as_str), Some("llvm-22"), "{install}");
    assert!(
        install.contains("LLVM_PREFIX=/usr/lib/llvm-22"),
        "{install}"
    );

    let apt = instructions
        .iter()
        .find(|i| i.contains("apt-get install"))
        .expect("apt-get install");
    for pkg in [
        "llvm-22-dev",
        "libpolly-22-dev",
        "libzstd-dev",
        "zlib1g-dev",
        "libxml2-dev",
    ] {
        assert!(
            words(apt).iter().any(|x| x == pkg),
            "builder installs {pkg}"
        );
    }
    assert!(
        instructions
            .iter()
            .any(|i| i.contains("nightly") && i.contains("rust-src")),
        "nightly with rust-src"
    );

    let build = instructions
        .iter()
        .find(|i| i.contains("cargo build"))
        .expect("cargo build");
    let w = words(build);
    assert!(w.iter().any(|x| x == "--release"), "{build}");
    let package = w.iter().position(|x| x == "-p").and_then(|p| w.get(p + 1));
    assert_eq!(package.map(String::as_str), Some("socklb"), "{build}");

    // The builder makes the runtime tree as `cargo xtask image` does, from the binary
    // just built; the runtime stage carries that tree and runs socklb.
    assert!(
        w.windows(2)
            .any(|p| p[0] == "--rootfs-only" && p[1] == "/rootfs")
            && build.contains("cargo xtask image --socklb target/release/socklb"),
        "{build}"
    );
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .unwrap_or_default();
    let runtime = &instructions[last_from..];
    assert!(
        runtime
            .iter()
            .any(|i| i == "COPY --from=builder /rootfs/ /"),
        "runtime stage copies the tree: {runtime:?}"
    );
    assert!(
        runtime
            .iter()
            .any(|i| i.starts_with("ENTRYPOINT") && i.contains("socklb")),
        "entrypoint is socklb: {runtime:?}"
    );
    assert!(
        !runtime.iter().any(|i| i.starts_with("RUN ")),
        "nothing installed into the runtime stage"
    );
}
