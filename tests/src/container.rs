//! The socklb image run by podman the way a pod spec (manifests/daemonset.yaml)
//! declares it, inside the test's own namespaces and cgroups.
//!
//! [`PodSpec::translate`] turns every field of the pod spec and of its containers into
//! podman flags, or names why the field has no effect here; a field it does not know
//! is an error, so a new setting in the manifest cannot go untested by accident. The
//! hostPath volumes are the only thing redirected: each host path the manifest names
//! maps to a directory of the test's own ([`HostPaths`]): the host's bpffs to a pin
//! directory, the host's cgroup2 root to a test cgroup.
//!
//! How podman is run here, and why:
//! - `--runtime runc`: Debian 12's default runtime, crun 1.8, refuses hosts on the
//!   hybrid cgroup layout ("cgroups in hybrid mode not supported"); runc runs on both.
//! - `--cgroup-manager cgroupfs --cgroup-parent /<test name>`: podman creates the
//!   containers' cgroups (and conmon's) under a parent of the test's own in every
//!   hierarchy; [`CgroupParent`] removes it. Nothing is attached to, or created in,
//!   the host's root cgroup itself; the agent attaches only to the `--cgroup` it is
//!   given, which is the test cgroup behind the manifest's cgroup volume.
//! - `--ulimit nofile=1024:1024 --ulimit nproc=4096:4096`: Kubernetes sets no rlimits
//!   (containerd 1.x gives nofile 1024); podman's own defaults for root are higher
//!   than a process of this sandbox may raise them to.
//! - `--cgroupns private`, `--uts host`: what the kubelet and containerd give a
//!   host-network pod on a cgroup v2 node.
//! - `--pull never`: the image is local (built by `cargo xtask image`).
//!
//! Every container carries the label [`TEST_LABEL`] and is removed by its
//! [`Container`] guard, also when a test fails.

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::agent::try_socklb_bin;
use crate::child::{Child, SpawnOpts};
use crate::names;
use crate::privileges::parse_mountinfo;

/// The OCI runtime the tests use (see the module documentation).
pub const RUNTIME: &str = "runc";
/// Label on every container the tests create: `podman ps -a --filter label=...`.
pub const TEST_LABEL: &str = "io.socklb.test";
/// The repository of the images the tests build (one is kept as a cache).
pub const TEST_IMAGE_REPO: &str = "localhost/socklb-test";
/// How long one podman command may take.
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// The workspace root (tests/ is one level down).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `podman --runtime runc --cgroup-manager cgroupfs ARGS` to completion (its output
/// whatever the exit status).
pub fn podman_output<I, S>(args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", RUNTIME, "--cgroup-manager", "cgroupfs"])
        .args(args);
    Child::output(cmd, &SpawnOpts::new(), PODMAN_TIMEOUT)
}

/// [`podman_output`], failing (with its stderr) unless it exits 0; returns stdout.
pub fn podman<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let out = podman_output(&args)?;
    if !out.status.success() {
        bail!(
            "podman {} failed ({}): {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether podman runs at all.
pub fn podman_available() -> bool {
    Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The image of the `socklb` binary the other end-to-end tests run
/// ([`try_socklb_bin`]), built with `cargo xtask image --socklb BIN` (which also
/// installs podman when it is missing) unless it exists already. It is tagged by the
/// binary and by what makes the image (manifests/Dockerfile, xtask/src/image.rs), so
/// a rebuilt binary gets a new image; older test images are removed, one stays as a
/// cache.
pub fn test_image() -> Result<String> {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let bin = try_socklb_bin()?;
    let root = workspace_root();
    let meta = std::fs::metadata(&bin).with_context(|| format!("{}", bin.display()))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.len().hash(&mut h);
    meta.modified().ok().hash(&mut h);
    for f in ["manifests/Dockerfile", "xtask/src/image.rs"] {
        std::fs::read(root.join(f)).unwrap_or_default().hash(&mut h);
    }
    let tag = format!("{TEST_IMAGE_REPO}:{:016x}", h.finish());
    if podman_available() && podman(["image", "exists", &tag]).is_ok() {
        return Ok(tag);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "run",
        "--quiet",
        "--package",
        "xtask",
        "--",
        "image",
        "--no-archive",
    ])
    .arg("--socklb")
    .arg(&bin)
    .arg("--tag")
    .arg(&tag)
    .current_dir(&root);
    let out = Child::output(cmd, &SpawnOpts::new(), Duration::from_secs(1800))?;
    if !out.status.success() {
        bail!(
            "cargo xtask image --socklb {} --tag {tag} failed ({}):\n{}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = podman([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        &format!("reference={TEST_IMAGE_REPO}"),
    ])?;
    for old in listed
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty() && *t != tag)
    {
        let _ = podman(["rmi", old]);
    }
    Ok(tag)
}

// ---------------------------------------------------------------------- host paths

/// Where the manifest's hostPath volumes point during a test: host path -> the test's
/// own directory.
#[derive(Clone, Debug, Default)]
pub struct HostPaths {
    map: BTreeMap<String, PathBuf>,
}

impl HostPaths {
    pub fn new() -> Self {
        Self::default()
    }

    /// The manifest's `host` path is `dir` in this test.
    pub fn map(mut self, host: &str, dir: impl Into<PathBuf>) -> Self {
        self.map.insert(host.to_string(), dir.into());
        self
    }

    fn get(&self, host: &str) -> Result<&Path> {
        self.map.get(host).map(PathBuf::as_path).ok_or_else(|| {
            anyhow!("hostPath {host}: the test has no directory of its own for it (HostPaths)")
        })
    }
}

// ---------------------------------------------------------------------- translation

/// An HTTP probe of a container (the kubelet's httpGet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
}

/// One container of the pod, as podman runs it.
#[derive(Clone, Debug)]
pub struct ContainerRun {
    /// The container's name in the manifest.
    pub name: String,
    /// `podman run` options (without `--name`, `--detach`, the image and the args).
    pub options: Vec<String>,
    /// The manifest's args (after the image).
    pub args: Vec<String>,
    pub readiness: Option<HttpProbe>,
    pub liveness: Option<HttpProbe>,
    /// terminationGracePeriodSeconds: `podman stop --time`.
    pub grace_seconds: u64,
}

/// What the test adds to what the manifest declares.
#[derive(Clone, Debug)]
pub struct Additions {
    /// The node's network namespace file (the host network of a host-network pod).
    pub netns: PathBuf,
    /// spec.nodeName, for fieldRef env.
    pub node_name: String,
    /// The image every container runs (the manifest names `socklb`; kustomize and a
    /// registry would make it a full reference).
    pub image: String,
    /// Host paths of the volumes.
    pub host_paths: HostPaths,
    /// More bind mounts: (host directory, container path), read-only.
    pub mounts_ro: Vec<(PathBuf, String)>,
    /// The cgroup parent of the containers ([`CgroupParent::name`]).
    pub cgroup_parent: String,
    /// Value of [`TEST_LABEL`].
    pub label: String,
}

/// The pod template's spec of a DaemonSet manifest.
#[derive(Clone, Debug)]
pub struct PodSpec {
    spec: Value,
}

/// Fields of a pod spec that change nothing in how podman runs it here, and why.
const POD_FIELDS_WITHOUT_EFFECT: &[(&str, &str)] = &[
    (
        "serviceAccountName",
        "the agent reads a manifest directory, not the API",
    ),
    (
        "automountServiceAccountToken",
        "the agent reads a manifest directory, not the API",
    ),
    ("priorityClassName", "scheduling and eviction"),
    ("nodeSelector", "scheduling"),
    ("tolerations", "scheduling"),
    (
        "dnsPolicy",
        "Default = the node's resolver, which podman copies in",
    ),
];

impl PodSpec {
    /// `spec.template.spec` of the DaemonSet in `yaml`.
    pub fn from_daemonset_yaml(yaml: &str) -> Result<PodSpec> {
        let ds: Value = serde_yaml::from_str(yaml).context("the DaemonSet is not YAML")?;
        if ds["kind"] != "DaemonSet" {
            bail!("not a DaemonSet: kind {}", ds["kind"]);
        }
        let spec = ds["spec"]["template"]["spec"].clone();
        if !spec.is_object() {
            bail!("the DaemonSet has no spec.template.spec");
        }
        Ok(PodSpec { spec })
    }

    /// manifests/daemonset.yaml of this repository.
    pub fn daemonset() -> Result<PodSpec> {
        let path = workspace_root().join("manifests/daemonset.yaml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        Self::from_daemonset_yaml(&text)
    }

    pub fn raw(&self) -> &Value {
        &self.spec
    }

    /// The init containers, in order, then the containers, as podman runs them.
    pub fn translate(&self, add: &Additions) -> Result<(Vec<ContainerRun>, Vec<ContainerRun>)> {
        let spec = self.spec.as_object().context("pod spec is not a map")?;
        let mut pod = Vec::new();
        for (key, value) in spec {
            match key.as_str() {
                "hostNetwork" => {
                    if value != &Value::Bool(true) {
                        bail!("hostNetwork {value}: the test runs host-network pods only");
                    }
                    pod.push(format!("--network=ns:{}", add.netns.display()));
                    // A host-network pod shares the node's UTS namespace too.
                    pod.push("--uts=host".into());
                }
                "hostPID" => pod.push(match value.as_bool() {
                    Some(true) => "--pid=host".into(),
                    Some(false) => "--pid=private".into(),
                    None => bail!("hostPID {value} is not a boolean"),
                }),
                "hostIPC" => pod.push(match value.as_bool() {
                    Some(true) => "--ipc=host".into(),
                    Some(false) => "--ipc=private".into(),
                    None => bail!("hostIPC {value} is not a boolean"),
                }),
                "terminationGracePeriodSeconds" | "initContainers" | "containers" | "volumes" => {}
                other if POD_FIELDS_WITHOUT_EFFECT.iter().any(|(f, _)| *f == other) => {}
                other => bail!(
                    "pod spec field {other}: the podman translation does not know it (tests/src/container.rs)"
                ),
            }
        }
        if !spec.contains_key("hostNetwork") {
            bail!("the pod is not host-network: the test runs host-network pods only");
        }
        let grace = spec
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30);
        let volumes = self.volumes(add)?;
        let list = |key: &str| -> Result<Vec<ContainerRun>> {
            spec.get(key)
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .map(|c| container(c, &pod, &volumes, add, grace))
                        .collect::<Result<Vec<_>>>()
                })
                .unwrap_or(Ok(Vec::new()))
        };
        Ok((list("initContainers")?, list("containers")?))
    }

    /// Volume name -> the test's host directory.
    fn volumes(&self, add: &Additions) -> Result<BTreeMap<String, PathBuf>> {
        let mut out = BTreeMap::new();
        for v in self.spec["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().context("a volume without name")?;
            for key in v.as_object().into_iter().flat_map(|o| o.keys()) {
                if key != "name" && key != "hostPath" {
                    bail!("volume {name}: {key} volumes are not translated (hostPath only)");
                }
            }
            let host = v["hostPath"]["path"]
                .as_str()
                .with_context(|| format!("volume {name}: no hostPath.path"))?;
            let dir = add.host_paths.get(host)?;
            match v["hostPath"]["type"].as_str().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?,
                "Directory" | "" => {
                    if !dir.is_dir() {
                        bail!("volume {name}: {} is not a directory", dir.display());
                    }
                }
                other => bail!("volume {name}: hostPath type {other} is not translated"),
            }
            out.insert(name.to_string(), dir.to_path_buf());
        }
        Ok(out)
    }
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>> {
    v.as_array()
        .with_context(|| format!("{what} is not a list"))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_string)
                .with_context(|| format!("{what}: {s} is not a string"))
        })
        .collect()
}

/// Bytes of a Kubernetes memory quantity ("128Mi", "1Gi", "500M", "1000").
pub fn memory_bytes(q: &str) -> Result<u64> {
    let units: [(&str, u64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return Ok(n.parse::<u64>().with_context(|| format!("quantity {q}"))? * mult);
        }
    }
    q.parse().with_context(|| format!("quantity {q}"))
}

/// Millicores of a Kubernetes CPU quantity ("100m", "1", "0.5").
pub fn millicores(q: &str) -> Result<u64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().with_context(|| format!("quantity {q}"));
    }
    let cores: f64 = q.parse().with_context(|| format!("quantity {q}"))?;
    Ok((cores * 1000.0).round() as u64)
}

fn http_probe(v: &Value, ports: &BTreeMap<String, u16>) -> Result<HttpProbe> {
    let get = v
        .get("httpGet")
        .context("only httpGet probes are translated")?;
    let path = get["path"].as_str().unwrap_or("/").to_string();
    let port = match &get["port"] {
        Value::Number(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .context("probe port")?,
        Value::String(name) => *ports
            .get(name)
            .with_context(|| format!("probe port {name} is no container port"))?,
        other => bail!("probe port {other}"),
    };
    for key in get.as_object().into_iter().flat_map(|o| o.keys()) {
        if !["path", "port", "scheme"].contains(&key.as_str()) {
            bail!("probe httpGet.{key} is not translated");
        }
    }
    Ok(HttpProbe { path, port })
}

fn container(
    c: &Value,
    pod: &[String],
    volumes: &BTreeMap<String, PathBuf>,
    add: &Additions,
    grace: u64,
) -> Result<ContainerRun> {
    let name = c["name"].as_str().context("a container without name")?;
    let fail = |what: String| anyhow!("container {name}: {what}");
    let mut o: Vec<String> = pod.to_vec();
    o.extend([
        "--cgroupns=private".into(),
        format!("--cgroup-parent=/{}", add.cgroup_parent),
        "--ulimit=nofile=1024:1024".into(),
        "--ulimit=nproc=4096:4096".into(),
        "--pull=never".into(),
        format!("--label={TEST_LABEL}={}", add.label),
        format!("--stop-timeout={grace}"),
    ]);
    let mut args = Vec::new();
    let mut ports = BTreeMap::new();
    let mut readiness = None;
    let mut liveness = None;
    let mut seccomp_given = false;
    let obj = c.as_object().ok_or_else(|| fail("not a map".into()))?;
    // Ports first: probes may name them.
    for p in obj
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let port = p["containerPort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| fail(format!("port {p}")))?;
        if let Some(n) = p["name"].as_str() {
            ports.insert(n.to_string(), port);
        }
    }
    for (key, value) in obj {
        match key.as_str() {
            "name" | "ports" => {}
            // The image is the one under test; IfNotPresent: it is local.
            "image" | "imagePullPolicy" => {}
            "command" => {
                let cmd = strings(value, "command")?;
                o.push(format!("--entrypoint={}", serde_json::to_string(&cmd)?));
            }
            "args" => args = strings(value, "args")?,
            "env" => {
                for e in value.as_array().ok_or_else(|| fail("env".into()))? {
                    let var = e["name"].as_str().ok_or_else(|| fail(format!("env {e}")))?;
                    if let Some(v) = e["value"].as_str() {
                        o.push(format!("--env={var}={v}"));
                    } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                        match f {
                            "spec.nodeName" => o.push(format!("--env={var}={}", add.node_name)),
                            other => return Err(fail(format!("env {var}: fieldPath {other}"))),
                        }
                    } else if e["valueFrom"]["configMapKeyRef"]["optional"] == Value::Bool(true) {
                        // The test cluster has no such ConfigMap: an optional key is unset.
                    } else {
                        return Err(fail(format!("env {var}: {e} is not translated")));
                    }
                }
            }
            "securityContext" => {
                for (k, v) in value
                    .as_object()
                    .ok_or_else(|| fail("securityContext".into()))?
                {
                    match k.as_str() {
                        "privileged" => {
                            if v == &Value::Bool(true) {
                                o.push("--privileged".into());
                            }
                        }
                        "allowPrivilegeEscalation" => {
                            if v == &Value::Bool(false) {
                                o.push("--security-opt=no-new-privileges".into());
                            }
                        }
                        "readOnlyRootFilesystem" => {
                            if v == &Value::Bool(true) {
                                // Kubernetes adds no tmpfs; podman would on /run, /tmp.
                                o.push("--read-only".into());
                                o.push("--read-only-tmpfs=false".into());
                            }
                        }
                        "runAsUser" | "runAsGroup" => {}
                        "capabilities" => {
                            for (k2, list) in v.as_object().ok_or_else(|| fail("caps".into()))? {
                                let flag = match k2.as_str() {
                                    "drop" => "--cap-drop",
                                    "add" => "--cap-add",
                                    other => return Err(fail(format!("capabilities.{other}"))),
                                };
                                for cap in strings(list, "capabilities")? {
                                    o.push(format!("{flag}={cap}"));
                                }
                            }
                        }
                        "seccompProfile" => {
                            seccomp_given = true;
                            match v["type"].as_str() {
                                Some("RuntimeDefault") => {}
                                Some("Unconfined") => {
                                    o.push("--security-opt=seccomp=unconfined".into())
                                }
                                other => return Err(fail(format!("seccompProfile {other:?}"))),
                            }
                        }
                        other => return Err(fail(format!("securityContext.{other}"))),
                    }
                }
                let user = value["runAsUser"].as_u64();
                let group = value["runAsGroup"].as_u64();
                if user.is_some() || group.is_some() {
                    o.push(format!(
                        "--user={}:{}",
                        user.unwrap_or(0),
                        group.unwrap_or(user.unwrap_or(0))
                    ));
                }
            }
            "resources" => {
                for (k, v) in value.as_object().ok_or_else(|| fail("resources".into()))? {
                    for (res, q) in v.as_object().ok_or_else(|| fail("resources".into()))? {
                        let q = q.as_str().ok_or_else(|| fail(format!("{k}.{res}")))?;
                        match (k.as_str(), res.as_str()) {
                            ("limits", "memory") => {
                                o.push(format!("--memory={}", memory_bytes(q)?))
                            }
                            ("requests", "memory") => {
                                o.push(format!("--memory-reservation={}", memory_bytes(q)?))
                            }
                            // The kubelet's cpu.shares: millicores * 1024 / 1000, at least 2.
                            ("requests", "cpu") => o.push(format!(
                                "--cpu-shares={}",
                                (millicores(q)? * 1024 / 1000).max(2)
                            )),
                            ("limits", "cpu") => {
                                o.push(format!("--cpus={}", millicores(q)? as f64 / 1000.0))
                            }
                            other => return Err(fail(format!("resources {other:?}"))),
                        }
                    }
                }
            }
            "volumeMounts" => {
                for vm in value
                    .as_array()
                    .ok_or_else(|| fail("volumeMounts".into()))?
                {
                    let vol = vm["name"].as_str().ok_or_else(|| fail(format!("{vm}")))?;
                    let src = volumes
                        .get(vol)
                        .ok_or_else(|| fail(format!("volume {vol} is not declared")))?;
                    let dst = vm["mountPath"]
                        .as_str()
                        .ok_or_else(|| fail(format!("{vm}: mountPath")))?;
                    let propagation = match vm["mountPropagation"].as_str() {
                        None | Some("None") => "rprivate",
                        Some("HostToContainer") => "rslave",
                        Some("Bidirectional") => "rshared",
                        Some(other) => return Err(fail(format!("mountPropagation {other}"))),
                    };
                    for key in vm.as_object().into_iter().flat_map(|m| m.keys()) {
                        if !["name", "mountPath", "mountPropagation", "readOnly"]
                            .contains(&key.as_str())
                        {
                            return Err(fail(format!("volumeMount {vol}: {key}")));
                        }
                    }
                    let ro = vm["readOnly"] == Value::Bool(true);
                    o.push(format!(
                        "--mount=type=bind,src={},dst={dst},ro={ro},bind-propagation={propagation}",
                        src.display()
                    ));
                }
            }
            "readinessProbe" => readiness = Some(http_probe(value, &ports)?),
            "livenessProbe" => liveness = Some(http_probe(value, &ports)?),
            other => return Err(fail(format!("field {other} is not translated"))),
        }
    }
    // Without a seccompProfile the kubelet runs the container Unconfined (unless it
    // runs with --seccomp-default); podman would apply its default profile.
    if !seccomp_given {
        o.push("--security-opt=seccomp=unconfined".into());
    }
    for (host, dst) in &add.mounts_ro {
        o.push(format!(
            "--mount=type=bind,src={},dst={dst},ro=true",
            host.display()
        ));
    }
    Ok(ContainerRun {
        name: name.to_string(),
        options: o,
        args,
        readiness,
        liveness,
        grace_seconds: grace,
    })
}

// ---------------------------------------------------------------------- guards

/// A container of the test's, removed (`podman rm --force`) on Drop.
#[derive(Debug)]
pub struct Container {
    name: String,
}

impl Container {
    /// `podman run --detach --name NAME OPTIONS IMAGE ARGS`.
    pub fn start(name: &str, run: &ContainerRun, image: &str, args: &[String]) -> Result<Self> {
        let mut a: Vec<String> = vec!["run".into(), "--detach".into(), format!("--name={name}")];
        a.extend(run.options.iter().cloned());
        a.push(image.into());
        a.extend(args.iter().cloned());
        // The guard exists before the container does: a failed start is cleaned too.
        let guard = Container { name: name.into() };
        podman(&a)?;
        Ok(guard)
    }

    /// `podman run --rm OPTIONS IMAGE ARGS` to completion: its exit status and output.
    pub fn run_to_end(
        name: &str,
        run: &ContainerRun,
        image: &str,
        args: &[String],
    ) -> Result<Output> {
        let mut a: Vec<String> = vec!["run".into(), "--rm".into(), format!("--name={name}")];
        a.extend(run.options.iter().cloned());
        a.push(image.into());
        a.extend(args.iter().cloned());
        let _guard = Container { name: name.into() };
        podman_output(&a)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `podman inspect --format FORMAT`.
    pub fn inspect(&self, format: &str) -> Result<String> {
        podman(["inspect", "--format", format, &self.name])
    }

    /// The container's main process on the host (0 when it is not running).
    pub fn pid(&self) -> Result<u32> {
        self.inspect("{{.State.Pid}}")?
            .parse()
            .context("podman inspect .State.Pid")
    }

    /// Everything it logged (stdout and stderr).
    pub fn logs(&self) -> String {
        podman_output(["logs", &self.name])
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    /// `podman exec NAME ARGS`.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let mut a = vec!["exec", self.name.as_str()];
        a.extend(args);
        podman_output(a)
    }

    /// `podman stop --time SECONDS`: SIGTERM, then SIGKILL after the grace period.
    pub fn stop(&self, seconds: u64) -> Result<()> {
        podman(["stop", "--time", &seconds.to_string(), &self.name]).map(|_| ())
    }

    /// `podman rm` (the guard then has nothing left to do).
    pub fn remove(self) -> Result<()> {
        podman(["rm", &self.name]).map(|_| ())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- container {} log ----\n{}\n---- end of container log ----",
                self.name,
                self.logs()
            );
        }
        let _ = podman_output(["rm", "--force", "--ignore", "--time", "2", &self.name]);
    }
}

/// A cgroup parent for the test's containers: `/<name>` in every cgroup hierarchy of
/// the machine (podman's cgroupfs manager creates it there). Drop removes what is left
/// of it, directory by directory with rmdir (after the containers are gone it holds
/// only empty cgroups).
#[derive(Debug)]
pub struct CgroupParent {
    name: String,
}

impl CgroupParent {
    pub fn new() -> Self {
        CgroupParent {
            name: format!("{}-pods", names::dir_name()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<mount>/<name>` in every cgroup (v1) and cgroup2 mount.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        parse_mountinfo(&mounts)
            .into_iter()
            .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
            .map(|m| m.mount_point.join(&self.name))
            .filter(|p| p.exists())
            .collect()
    }
}

impl Default for CgroupParent {
    fn default() -> Self {
        Self::new()
    }
}

fn rmdir_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            rmdir_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for dir in self.dirs() {
            let removed = crate::wait::wait_until(Duration::from_secs(5), || {
                rmdir_tree(&dir).is_ok() || !dir.exists()
            });
            if !removed {
                eprintln!("socklb-tests: could not remove cgroup {}", dir.display());
            }
        }
    }
}

/// Runs `f` on a thread that entered the network namespace `netns` (setns(2) affects
/// only the calling thread), e.g. an HTTP request to the agent's health port.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let file =
        std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::spawn(move || -> Result<T> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: a valid namespace fd; CLONE_NEWNET changes only this thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("the thread in the network namespace panicked"))?
}

/// Capability names as a securityContext writes them, by bit (linux/capability.h).
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The bit mask of these capabilities (names as in a securityContext).
pub fn capability_mask(caps: &[String]) -> Result<u64> {
    caps.iter().try_fold(0u64, |m, c| {
        let bit = CAPABILITIES
            .iter()
            .position(|n| n == c)
            .with_context(|| format!("{c} is no capability name"))?;
        Ok(m | 1u64 << bit)
    })
}

/// A field of /proc/PID/status, trimmed.
pub fn proc_status(pid: u32, field: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Mount options of `mount_point` as process `pid` sees it (the topmost mount).
pub fn mount_options(pid: u32, mount_point: &str) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&mount_point)).then(|| f[5].to_string())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(memory_bytes("512Mi").unwrap(), 512 << 20);
        assert_eq!(memory_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(millicores("100m").unwrap(), 100);
        assert_eq!(millicores("1.5").unwrap(), 1500);
        assert!(memory_bytes("lots").is_err());
    }

    fn additions() -> Additions {
        Additions {
            netns: "/run/netns/x".into(),
            node_name: "node-1".into(),
            image: "img".into(),
            host_paths: HostPaths::new()
                .map("/sys/fs/bpf", std::env::temp_dir())
                .map("/sys/fs/cgroup", std::env::temp_dir()),
            mounts_ro: vec![],
            cgroup_parent: "p".into(),
            label: "l".into(),
        }
    }

    #[test]
    fn the_daemonset_translates_and_unknown_fields_fail() {
        let pod = PodSpec::daemonset().unwrap();
        let (init, main) = pod.translate(&additions()).unwrap();
        assert_eq!(init.len(), 1);
        assert!(init[0].options.contains(&"--privileged".to_string()));
        let agent = &main[0];
        assert!(agent.options.contains(&"--cap-drop=ALL".to_string()));
        assert!(agent.options.contains(&"--read-only".to_string()));
        assert!(agent.options.iter().any(|o| o.starts_with("--network=ns:")));
        assert_eq!(agent.args.first().map(String::as_str), Some("agent"));
        assert_eq!(agent.readiness.as_ref().map(|p| p.port), Some(10256));

        let mut raw = pod.raw().clone();
        raw["hostAliases"] = serde_json::json!([]);
        let err = PodSpec { spec: raw }.translate(&additions()).unwrap_err();
        assert!(err.to_string().contains("hostAliases"), "{err}");
        let mut raw = pod.raw().clone();
        raw["containers"][0]["workingDir"] = "/x".into();
        assert!(PodSpec { spec: raw }.translate(&additions()).is_err());
        let mut raw = pod.raw().clone();
        raw["volumes"][0]["hostPath"]["path"] = "/etc".into();
        assert!(PodSpec { spec: raw }.translate(&additions()).is_err());
    }
}
