//! Loads Services, EndpointSlices and Nodes from a directory of manifest files, as
//! `socklb plan` and the demo use them without an API server.
//!
//! One broken file or object never hides the others: each problem becomes a
//! [`ManifestWarning`] naming the file (and the object) and loading goes on. Only a
//! directory that cannot be read is an error.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fmt, fs, io,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::Value;
use thiserror::Error;
use tracing::debug;

use socklb_core::model::{DEFAULT_NAMESPACE, NodeModel, ServiceModel, SliceModel};

/// A problem with one file or one object in it; the rest was still loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestWarning {
    pub file: PathBuf,
    /// The object, e.g. "Service demo/web" or "document 2"; empty when the problem is
    /// the whole file.
    pub object: String,
    pub reason: String,
}

impl fmt::Display for ManifestWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.object.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.object,
                self.reason
            )
        }
    }
}

/// An object of a manifest directory: (kind, namespace, name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectId {
    Service(String, String),
    Slice(String, String),
    Node(String),
}

/// What a directory of manifests holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestSet {
    /// Proxied Services, in file order.
    pub services: Vec<ServiceModel>,
    /// IPv4 EndpointSlices, in file order.
    pub slices: Vec<SliceModel>,
    pub nodes: Vec<NodeModel>,
    /// Objects whose kind and name could be read but that failed validation: a
    /// consumer that had a valid version of one keeps it (as the API server keeps an
    /// object when it rejects an update).
    pub invalid: Vec<ObjectId>,
    pub warnings: Vec<ManifestWarning>,
    /// Manifest files read (including ones that did not parse).
    pub files_read: usize,
}

impl ManifestSet {
    /// The Node of that name from the manifests, or a node known only by name.
    pub fn node(&self, name: &str) -> NodeModel {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .cloned()
            .unwrap_or_else(|| NodeModel::named(name))
    }
}

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("cannot read manifest directory {}: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// socklb's own limits on manifest input (the API server has its own on requests;
/// a directory has none), so one file cannot take the agent's memory.
pub mod limits {
    /// A larger file is skipped whole without being read.
    pub const FILE_BYTES: u64 = 16 * 1024 * 1024;
    /// Objects read from one file; the rest is skipped.
    pub const OBJECTS_PER_FILE: usize = 10_000;
    /// One object, as JSON: etcd's default request limit (1.5 MiB), beyond which the
    /// API server could not store it either.
    pub const OBJECT_BYTES: usize = 1536 * 1024;
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file directly in `dir` (not in
/// subdirectories), in file name order, skipping hidden files and editor leftovers.
pub fn load_dir(dir: &Path) -> Result<ManifestSet, ManifestError> {
    let mut loader = Loader::default();
    let (files, skipped) = manifest_files(dir)?;
    for (path, reason) in skipped {
        loader.warn(&path, "", reason);
    }
    for file in &files {
        loader.load_file(file);
    }
    Ok(loader.set)
}

/// One manifest file on its own, with the warnings about it (duplicates within the
/// file included).
pub fn load_file(file: &Path) -> ManifestSet {
    let mut loader = Loader::default();
    loader.load_file(file);
    loader.set
}

/// Entries with a manifest file name that are not read, with the reason: metadata
/// that cannot be read (a dangling link, a symlink loop), or not a regular file (a
/// FIFO, a device, a directory).
pub type SkippedEntries = Vec<(PathBuf, String)>;

/// The manifest files directly in `dir`, sorted by file name, and the entries with a
/// manifest name that are skipped.
pub fn manifest_files(dir: &Path) -> Result<(Vec<PathBuf>, SkippedEntries), ManifestError> {
    let read_dir_error = |source| ManifestError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir_error)? {
        let path = entry.map_err(read_dir_error)?.path();
        let name = path
            .file_name()
            .map(OsStr::to_string_lossy)
            .unwrap_or_default();
        if !is_manifest_file_name(&name) {
            debug!(file = %path.display(), "not a manifest file name: skipped");
            continue;
        }
        // Follows symlinks: a link to a manifest is a manifest.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push(path),
            Ok(meta) => {
                let what = file_kind(&meta);
                skipped.push((path, format!("not a regular file ({what}): skipped")));
            }
            Err(e) => skipped.push((path, format!("cannot read: {e}"))),
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    skipped.sort();
    Ok((files, skipped))
}

/// What a non-regular directory entry is, in words.
fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

fn is_manifest_file_name(name: &str) -> bool {
    // Hidden files (.foo.swp), backups (foo~) and emacs autosaves (#foo#) are not ours.
    if name.starts_with('.') || name.starts_with('#') || name.ends_with('~') {
        return false;
    }
    Path::new(name)
        .extension()
        .and_then(OsStr::to_str)
        .is_some_and(|ext| {
            ["yaml", "yml", "json"]
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
}

/// The kinds socklb uses; every other kind is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn from_name(kind: &str) -> Option<Kind> {
        match kind {
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            "Node" => Some(Kind::Node),
            _ => None,
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    fn is_namespaced(self) -> bool {
        self != Kind::Node
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A validated object; `None` inside means valid but not proxied.
enum Model {
    Service(Option<ServiceModel>),
    Slice(Option<SliceModel>),
    Node(NodeModel),
}

#[derive(Default)]
struct Loader {
    set: ManifestSet,
    /// Objects met in the file being read (for [`limits::OBJECTS_PER_FILE`]).
    objects_in_file: usize,
    /// (kind, namespace, name) -> the file that defined it first.
    first_definitions: HashMap<(Kind, String, String), PathBuf>,
}

impl Loader {
    fn warn(&mut self, file: &Path, object: impl Into<String>, reason: impl Into<String>) {
        let warning = ManifestWarning {
            file: file.to_owned(),
            object: object.into(),
            reason: reason.into(),
        };
        debug!(%warning, "manifest warning");
        self.set.warnings.push(warning);
    }

    fn load_file(&mut self, file: &Path) {
        let bytes = match read_limited(file) {
            Ok(bytes) => bytes,
            Err(reason) => return self.warn(file, "", reason),
        };
        self.set.files_read += 1;
        let Ok(text) = String::from_utf8(bytes) else {
            return self.warn(file, "", "not UTF-8 text");
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let is_json = file
            .extension()
            .and_then(OsStr::to_str)
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
        let documents = if is_json {
            json_documents(text)
        } else {
            yaml_documents(text)
        };
        // A file that does not parse is skipped whole: half of a file is a surprise.
        let documents = match documents {
            Ok(documents) => documents,
            Err(reason) => return self.warn(file, "", reason),
        };
        debug!(file = %file.display(), documents = documents.len(), "read manifest file");
        self.objects_in_file = 0;
        for (i, document) in documents.into_iter().enumerate() {
            let label = format!("document {}", i + 1);
            match document {
                Ok(Value::Null) => {} // an empty document (`---` twice, or an empty file)
                Ok(value) => self.load_value(file, &label, value, true),
                Err(reason) => self.warn(file, label, reason),
            }
            if self.objects_in_file > limits::OBJECTS_PER_FILE {
                return;
            }
        }
    }

    /// One object, or a List of objects (`lists_allowed` is false for a List's items:
    /// kubectl does not nest Lists either).
    fn load_value(&mut self, file: &Path, fallback_label: &str, value: Value, lists_allowed: bool) {
        let Value::Object(fields) = &value else {
            return self.warn(
                file,
                fallback_label,
                "not a Kubernetes object (expected a mapping with apiVersion and kind)",
            );
        };
        let Some(kind) = fields
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return self.warn(file, fallback_label, "no kind");
        };
        let api_version = fields
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);

        if kind.ends_with("List") && (kind == "List" || fields.contains_key("items")) {
            if !lists_allowed {
                return self.warn(
                    file,
                    fallback_label,
                    format!("a {kind} inside a List is not supported"),
                );
            }
            return self.load_list(file, fallback_label, &kind, api_version, value);
        }
        let Some(known) = Kind::from_name(&kind) else {
            debug!(file = %file.display(), object = fallback_label, kind, "kind not used by socklb: ignored");
            return;
        };
        let label =
            object_label(known, &value).unwrap_or_else(|| format!("{fallback_label} ({kind})"));
        match api_version {
            Some(version) if version == known.api_version() => {
                self.add_object(file, known, label, value)
            }
            Some(version) => self.warn(
                file,
                label,
                format!(
                    "apiVersion {version:?} is not supported for {kind} (expected {})",
                    known.api_version()
                ),
            ),
            None => self.warn(file, label, "no apiVersion"),
        }
    }

    fn load_list(
        &mut self,
        file: &Path,
        label: &str,
        list_kind: &str,
        api_version: Option<String>,
        value: Value,
    ) {
        let items = match value {
            Value::Object(mut fields) => fields.remove("items"),
            _ => None,
        };
        let items = match items {
            None | Some(Value::Null) => return,
            Some(Value::Array(items)) => items,
            Some(_) => return self.warn(file, label, "items is not a list"),
        };
        // Items of a typed list (a ServiceList as the API returns it) may leave out their
        // kind and apiVersion; they are the list's.
        let item_kind = list_kind
            .strip_suffix("List")
            .filter(|kind| !kind.is_empty());
        for (i, mut item) in items.into_iter().enumerate() {
            if let (Some(kind), Value::Object(fields)) = (item_kind, &mut item) {
                fields.entry("kind").or_insert_with(|| kind.into());
                if let Some(version) = &api_version {
                    fields
                        .entry("apiVersion")
                        .or_insert_with(|| version.as_str().into());
                }
            }
            self.load_value(file, &format!("{label} item {}", i + 1), item, false);
        }
    }

    fn add_object(&mut self, file: &Path, kind: Kind, label: String, value: Value) {
        self.objects_in_file += 1;
        if self.objects_in_file > limits::OBJECTS_PER_FILE {
            return self.warn(
                file,
                "",
                format!(
                    "more than {} objects: the rest of the file is skipped",
                    limits::OBJECTS_PER_FILE
                ),
            );
        }
        let id = object_id(kind, &value);
        let size = serde_json::to_vec(&value).map_or(0, |v| v.len());
        if size > limits::OBJECT_BYTES {
            if let Some(id) = id {
                self.set.invalid.push(id);
            }
            return self.warn(
                file,
                label,
                format!(
                    "{size} bytes as JSON, more than the {} an object may have",
                    limits::OBJECT_BYTES
                ),
            );
        }
        let (meta, model) = match validate(kind, value) {
            Ok(validated) => validated,
            Err(reason) => {
                if let Some(id) = id {
                    self.set.invalid.push(id);
                }
                return self.warn(file, label, reason);
            }
        };
        // validate() has checked the name is there.
        let name = meta.name.clone().unwrap_or_default();
        let namespace = if kind.is_namespaced() {
            meta.namespace
                .clone()
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
        } else {
            String::new()
        };
        let key = (kind, namespace, name);
        if let Some(first) = self.first_definitions.get(&key) {
            let reason = format!(
                "duplicate of the {kind} in {}; the first definition is used",
                first.display()
            );
            return self.warn(file, label, reason);
        }
        self.first_definitions.insert(key, file.to_owned());

        match model {
            Model::Service(Some(service)) => {
                for skipped in &service.skipped {
                    self.warn(file, label.clone(), skipped.clone());
                }
                self.set.services.push(service);
            }
            Model::Slice(Some(slice)) => {
                for skipped in &slice.skipped {
                    self.warn(file, label.clone(), skipped.clone());
                }
                self.set.slices.push(slice);
            }
            Model::Node(node) => self.set.nodes.push(node),
            Model::Service(None) | Model::Slice(None) => {
                debug!(file = %file.display(), object = label, "valid but not proxied: skipped");
            }
        }
    }
}

/// The bytes of a manifest file, unless it is larger than [`limits::FILE_BYTES`] (then
/// it is not read: a file growing while it is read is cut at the limit and refused).
fn read_limited(file: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let too_large = |size: u64| {
        format!(
            "{size} bytes, larger than the {} a manifest file may have: skipped",
            limits::FILE_BYTES
        )
    };
    let f = fs::File::open(file).map_err(|e| format!("cannot read: {e}"))?;
    let size = f.metadata().map_err(|e| format!("cannot read: {e}"))?.len();
    if size > limits::FILE_BYTES {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    f.take(limits::FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limits::FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Parses into the k8s-openapi type and validates it; the error is a warning's reason.
fn validate(kind: Kind, value: Value) -> Result<(ObjectMeta, Model), String> {
    let parse_error = |e: serde_json::Error| format!("does not parse as a {kind}: {e}");
    match kind {
        Kind::Service => {
            let service: Service = serde_json::from_value(value).map_err(parse_error)?;
            let model = ServiceModel::from_k8s(&service).map_err(|e| e.to_string())?;
            Ok((service.metadata, Model::Service(model)))
        }
        Kind::EndpointSlice => {
            let slice: EndpointSlice = serde_json::from_value(value).map_err(parse_error)?;
            let model = SliceModel::from_k8s(&slice).map_err(|e| e.to_string())?;
            Ok((slice.metadata, Model::Slice(model)))
        }
        Kind::Node => {
            let node: Node = serde_json::from_value(value).map_err(parse_error)?;
            let model = NodeModel::from_k8s(&node).map_err(|e| e.to_string())?;
            Ok((node.metadata, Model::Node(model)))
        }
    }
}

/// The identity of an object from its raw form, when it has a name.
fn object_id(kind: Kind, value: &Value) -> Option<ObjectId> {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())?
        .to_owned();
    let namespace = || {
        value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_owned()
    };
    Some(match kind {
        Kind::Service => ObjectId::Service(namespace(), name),
        Kind::EndpointSlice => ObjectId::Slice(namespace(), name),
        Kind::Node => ObjectId::Node(name),
    })
}

/// "Service demo/web" / "Node n1", when the object has a name.
fn object_label(kind: Kind, value: &Value) -> Option<String> {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())?;
    if !kind.is_namespaced() {
        return Some(format!("{kind} {name}"));
    }
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    Some(format!("{kind} {namespace}/{name}"))
}

/// The documents of a YAML stream. The outer error (the file is not YAML) skips the
/// file; an inner error (a document that is YAML but cannot be a Kubernetes object, such
/// as a mapping with a list as a key or a number beyond 64 bits) skips the document.
fn yaml_documents(text: &str) -> Result<Vec<Result<Value, String>>, String> {
    // Syntax first: after a syntax error the parser yields error documents forever, and a
    // file that is not YAML is better reported once than as a list of documents.
    for document in serde_yaml::Deserializer::from_str(text) {
        IgnoredAny::deserialize(document).map_err(|e| format!("does not parse as YAML: {e}"))?;
    }
    Ok(serde_yaml::Deserializer::from_str(text)
        .map(|document| {
            Value::deserialize(document).map_err(|e| format!("not a Kubernetes object: {e}"))
        })
        .collect())
}

/// The values of a JSON file (one, or several one after another).
fn json_documents(text: &str) -> Result<Vec<Result<Value, String>>, String> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|value| {
            value
                .map(Ok)
                .map_err(|e| format!("does not parse as JSON: {e}"))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use socklb_core::{
        builders,
        model::Protocol,
        plan::{Action, compute_plan},
    };

    /// A directory under the system temp dir, removed on drop (also when a test fails).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "socklb-manifests-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(unique);
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> &TempDir {
            fs::write(self.0.join(name), contents).unwrap();
            self
        }

        fn load(&self) -> ManifestSet {
            load_dir(&self.0).unwrap()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A Service of namespace t with port http 80, as manifest text (JSON, which is
    /// YAML too).
    fn service_yaml(name: &str, ip: &str) -> String {
        builders::manifest_text(&[service_object(name, ip)])
    }

    fn service_object(name: &str, ip: &str) -> serde_json::Value {
        builders::service_object("t", name, ip, &[("http", "TCP", 80)])
    }

    /// A slice of namespace t with port http 8080 and one endpoint, as manifest text.
    fn slice_yaml(name: &str, service: &str, address: &str) -> String {
        builders::manifest_text(&[slice_object(name, service, address)])
    }

    fn slice_object(name: &str, service: &str, address: &str) -> serde_json::Value {
        builders::slice_object("t", name, service, &[("http", "TCP", 8080)], &[address])
    }

    fn names(set: &ManifestSet) -> (Vec<String>, Vec<String>) {
        (
            set.services.iter().map(|s| s.key().to_string()).collect(),
            set.slices
                .iter()
                .map(|s| format!("{}/{}", s.namespace, s.name))
                .collect(),
        )
    }

    fn warning_files(set: &ManifestSet) -> Vec<String> {
        set.warnings
            .iter()
            .map(|w| w.file.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn examples_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name)
    }

    #[test]
    fn demo_examples_load_and_plan() {
        let set = load_dir(&examples_dir("demo")).unwrap();
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        let (services, slices) = names(&set);
        assert_eq!(services, ["demo/web", "demo/dns", "demo/empty"]);
        assert_eq!(slices.len(), 4, "{slices:?}");
        let node = set.node("demo-node");
        assert!(node.zone.is_some(), "{node:?}");
        assert!(set.nodes.contains(&node));

        let plan = compute_plan(&set.services, &set.slices, &node);
        let rows: Vec<(String, Protocol, Action, Vec<String>)> = plan
            .frontends
            .iter()
            .map(|f| {
                (
                    f.address().to_string(),
                    f.protocol,
                    f.action,
                    f.backends.iter().map(|b| b.to_string()).collect(),
                )
            })
            .collect();
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rows,
            vec![
                (
                    "10.96.0.10:80".into(),
                    Protocol::Tcp,
                    Action::Forward,
                    strings(&["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"])
                ),
                (
                    "10.96.0.53:53".into(),
                    Protocol::Tcp,
                    Action::Forward,
                    strings(&["10.244.0.21:5353", "10.244.0.22:5353"])
                ),
                (
                    "10.96.0.53:53".into(),
                    Protocol::Udp,
                    Action::Forward,
                    strings(&["10.244.0.21:5353", "10.244.0.22:5353"])
                ),
                (
                    "10.96.0.99:80".into(),
                    Protocol::Tcp,
                    Action::Reject,
                    vec![]
                ),
            ]
        );
        // Every endpoint address is in the pod range and every service IP in the service range.
        for slice in &set.slices {
            for endpoint in &slice.endpoints {
                assert!(
                    endpoint.address.to_string().starts_with("10.244."),
                    "{endpoint:?}"
                );
            }
        }
        for service in &set.services {
            assert!(
                service
                    .cluster_ips
                    .iter()
                    .all(|ip| ip.to_string().starts_with("10.96."))
            );
        }
    }

    #[test]
    fn invalid_examples_warn_per_broken_file() {
        let dir = examples_dir("invalid");
        let set = load_dir(&dir).unwrap();
        let (services, slices) = names(&set);
        assert_eq!(services, ["invalid/good-list", "invalid/good"]);
        assert_eq!(slices, ["invalid/good-list-1", "invalid/good-1"]);

        let warned = warning_files(&set);
        for broken in [
            "bad-cluster-ip.yaml",
            "bad-port.yaml",
            "bad-protocol.yaml",
            "bad-slice-address.yaml",
            "mixed-list.yaml",
            "not-yaml.yaml",
        ] {
            assert_eq!(
                warned.iter().filter(|w| *w == broken).count(),
                1,
                "{broken}: {:#?}",
                set.warnings
            );
        }
        assert_eq!(set.warnings.len(), 6, "{:#?}", set.warnings);
        for warning in &set.warnings {
            assert!(
                warning
                    .to_string()
                    .contains(&*warning.file.to_string_lossy()),
                "{warning}"
            );
        }
        let reason_of = |file: &str| {
            set.warnings
                .iter()
                .find(|w| w.file.ends_with(file))
                .map(|w| w.to_string())
                .unwrap_or_default()
        };
        assert!(
            reason_of("bad-port.yaml").contains("70000"),
            "{}",
            reason_of("bad-port.yaml")
        );
        assert!(reason_of("bad-protocol.yaml").contains("FOO"));
        assert!(reason_of("bad-cluster-ip.yaml").contains("Service invalid/bad-cluster-ip"));
        assert!(reason_of("bad-slice-address.yaml").contains("EndpointSlice invalid/"));
        assert!(
            reason_of("mixed-list.yaml").contains("Service invalid/broken-in-list"),
            "{}",
            reason_of("mixed-list.yaml")
        );
        // README.md is not a manifest.
        assert_eq!(set.files_read, 7);
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = TempDir::new("missing");
        let missing = dir.0.join("nope");
        let err = load_dir(&missing).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn multi_document_yaml_empty_documents_and_other_kinds() {
        let dir = TempDir::new("multi");
        let text = format!(
            "---\n{}---\n---\n# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n---\n{}",
            service_yaml("a", "10.96.0.1"),
            slice_yaml("a-1", "a", "10.244.0.1")
        );
        dir.write("all.yaml", text)
            .write("empty.yaml", "")
            .write("blank.yml", "\n\n");
        let set = dir.load();
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        assert_eq!(
            names(&set),
            (vec!["t/a".to_owned()], vec!["t/a-1".to_owned()])
        );
        assert_eq!(set.files_read, 3);
    }

    #[test]
    fn file_selection() {
        let dir = TempDir::new("select");
        dir.write("a.yaml", service_yaml("a", "10.96.0.1"))
            .write("b.YML", service_yaml("b", "10.96.0.2"))
            .write(".hidden.yaml", service_yaml("hidden", "10.96.0.3"))
            .write(".a.yaml.swp", "binary junk \u{0}")
            .write("a.yaml~", service_yaml("backup", "10.96.0.4"))
            .write("#a.yaml#", service_yaml("autosave", "10.96.0.5"))
            .write("notes.txt", "not a manifest")
            .write("README.md", "# hi");
        fs::create_dir(dir.0.join("sub")).unwrap();
        dir.write("sub/nested.yaml", service_yaml("nested", "10.96.0.6"));
        fs::create_dir(dir.0.join("dir.yaml")).unwrap();
        let set = dir.load();
        assert_eq!(names(&set).0, ["t/a", "t/b"]);
        // Only the directory with a manifest's name is worth a word.
        let warned: Vec<String> = set.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("dir.yaml") && warned[0].contains("a directory"));
        assert_eq!(set.files_read, 2);
    }

    #[test]
    fn json_files() {
        let dir = TempDir::new("json");
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "j", "namespace": "t"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 80}]},
        });
        dir.write("one.json", service.to_string());
        dir.write("broken.json", "{\"apiVersion\": ");
        let set = dir.load();
        assert_eq!(names(&set).0, ["t/j"]);
        assert_eq!(warning_files(&set), ["broken.json"]);
        assert!(set.warnings[0].object.is_empty());
    }

    #[test]
    fn lists() {
        let dir = TempDir::new("lists");
        let list = serde_json::json!({
            "apiVersion": "v1", "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "t"},
                 "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}},
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": "t"},
                 "spec": {"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}},
                {"apiVersion": "v1", "kind": "List", "items": []},
                "a string",
            ],
        });
        // A typed list as the API returns it: items without kind and apiVersion.
        let typed = serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "1"},
            "items": [{"metadata": {"name": "b", "namespace": "t"},
                       "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}}],
        });
        dir.write("1-list.json", list.to_string())
            .write("2-typed.json", typed.to_string())
            .write(
                "3-null-items.yaml",
                "apiVersion: v1\nkind: List\nitems: null\n",
            )
            .write("4-bad-items.yaml", "apiVersion: v1\nkind: List\nitems: 3\n")
            .write(
                "5-config-maps.yaml",
                "apiVersion: v1\nkind: ConfigMapList\nitems:\n- metadata: {name: x}\n",
            );
        let set = dir.load();
        assert_eq!(names(&set).0, ["t/a", "t/b"]);
        let warnings: Vec<(String, String)> = set
            .warnings
            .iter()
            .map(|w| {
                (
                    w.file.file_name().unwrap().to_string_lossy().into(),
                    w.object.clone(),
                )
            })
            .collect();
        assert_eq!(
            warnings,
            [
                ("1-list.json".into(), "Service t/bad".into()),
                ("1-list.json".into(), "document 1 item 3".into()),
                ("1-list.json".into(), "document 1 item 4".into()),
                ("4-bad-items.yaml".into(), "document 1".into()),
            ]
        );
    }

    #[test]
    fn broken_files_and_documents_do_not_hide_others() {
        let dir = TempDir::new("broken");
        dir.write("a-good.yaml", service_yaml("good", "10.96.0.1"))
            .write("b-syntax.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x\n")
            .write("c-not-utf8.yaml", [0x61, 0x3a, 0x20, 0xff, 0xfe, 0x0a])
            .write("d-scalar.yaml", "just some words\n")
            .write("e-huge.yaml", service_yaml("huge", "10.96.0.5").replace("\"port\":80", "\"port\":99999999999999999999999"))
            .write("f-nulls.yaml", "apiVersion: v1\nkind: Service\nmetadata: null\nspec: null\n")
            .write("g-no-kind.yaml", "apiVersion: v1\nmetadata: {name: x}\n")
            .write("h-old-api.yaml", slice_yaml("old", "good", "10.244.0.1").replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"))
            .write("i-wrong-type.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: w}\nspec: {ports: 80}\n")
            .write("j-non-string-key.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: k}\nspec:\n  ? [1, 2]\n  : 3\n---\n")
            .write("k-bad-then-good.yaml", format!("{}---\n{}", service_yaml("bad", "300.1.1.1"), service_yaml("second", "10.96.0.9")))
            .write("l-deep.yaml", "[".repeat(10_000));
        let set = dir.load();
        assert_eq!(names(&set).0, ["t/good", "t/second"]);
        let mut warned = warning_files(&set);
        warned.dedup();
        assert_eq!(
            warned,
            [
                "b-syntax.yaml",
                "c-not-utf8.yaml",
                "d-scalar.yaml",
                "e-huge.yaml",
                "f-nulls.yaml",
                "g-no-kind.yaml",
                "h-old-api.yaml",
                "i-wrong-type.yaml",
                "j-non-string-key.yaml",
                "k-bad-then-good.yaml",
                "l-deep.yaml",
            ],
            "{:#?}",
            set.warnings
        );
        assert_eq!(set.warnings.len(), 11, "{:#?}", set.warnings);
        let by_file = |name: &str| {
            set.warnings
                .iter()
                .find(|w| w.file.ends_with(name))
                .unwrap()
        };
        assert_eq!(by_file("b-syntax.yaml").object, "");
        assert_eq!(by_file("e-huge.yaml").object, "document 1");
        assert_eq!(by_file("f-nulls.yaml").object, "document 1 (Service)");
        assert!(by_file("h-old-api.yaml").reason.contains("v1beta1"));
        assert_eq!(by_file("j-non-string-key.yaml").object, "document 1");
        assert_eq!(by_file("k-bad-then-good.yaml").object, "Service t/bad");
    }

    #[test]
    fn duplicates_keep_the_first_in_file_order() {
        let dir = TempDir::new("dups");
        // Written in reverse order: file name order decides, not creation order.
        dir.write(
            "b.yaml",
            format!(
                "{}---\n{}",
                service_yaml("web", "10.96.0.2"),
                slice_yaml("web-1", "web", "10.244.0.2")
            ),
        )
        .write(
            "a.yaml",
            format!(
                "{}---\n{}",
                service_yaml("web", "10.96.0.1"),
                slice_yaml("web-1", "web", "10.244.0.1")
            ),
        )
        .write(
            "c.yaml",
            service_yaml("web", "10.96.0.3")
                .replace("\"namespace\":\"t\"", "\"namespace\":\"other\""),
        );
        let set = dir.load();
        assert_eq!(
            names(&set),
            (
                vec!["t/web".to_owned(), "other/web".to_owned()],
                vec!["t/web-1".to_owned()]
            )
        );
        assert_eq!(
            set.services[0].cluster_ips,
            ["10.96.0.1".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(set.slices[0].endpoints[0].address.to_string(), "10.244.0.1");
        let warnings: Vec<String> = set.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(
            warnings
                .iter()
                .all(|w| w.contains("b.yaml") && w.contains("a.yaml") && w.contains("duplicate"))
        );
    }

    #[test]
    fn skipped_become_warnings_and_not_proxied_objects_are_silent() {
        let dir = TempDir::new("skipped");
        let sctp = builders::merge(
            service_object("s", "10.96.0.1"),
            serde_json::json!({"spec": {"ports": [
                {"name": "http", "port": 80},
                {"name": "assoc", "port": 9000, "protocol": "SCTP"},
            ]}}),
        );
        let headless = service_object("h", "None");
        let numberless_port = builders::merge(
            slice_object("s-1", "s", "10.244.0.1"),
            serde_json::json!({"ports": [{"name": "http"}]}),
        );
        dir.write(
            "a.yaml",
            builders::manifest_text(&[sctp, headless, numberless_port]),
        );
        let set = dir.load();
        assert_eq!(
            names(&set),
            (vec!["t/s".to_owned()], vec!["t/s-1".to_owned()])
        );
        let objects: Vec<&str> = set.warnings.iter().map(|w| w.object.as_str()).collect();
        assert_eq!(
            objects,
            ["Service t/s", "EndpointSlice t/s-1"],
            "{:#?}",
            set.warnings
        );
        assert!(set.warnings[0].reason.contains("SCTP"));
    }

    #[test]
    fn nodes_and_default_namespace() {
        let dir = TempDir::new("nodes");
        dir.write(
            "n.yaml",
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels:\n    topology.kubernetes.io/zone: z1\n---\n\
             apiVersion: v1\nkind: Service\nmetadata:\n  name: nons\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n",
        );
        let set = dir.load();
        assert_eq!(
            set.node("n1"),
            NodeModel {
                name: "n1".into(),
                zone: Some("z1".into())
            }
        );
        assert_eq!(set.node("n2"), NodeModel::named("n2"));
        assert_eq!(names(&set).0, ["default/nons"]);
    }

    #[test]
    fn warning_display() {
        let whole_file = ManifestWarning {
            file: "d/x.yaml".into(),
            object: String::new(),
            reason: "bad".into(),
        };
        let object = ManifestWarning {
            file: "d/x.yaml".into(),
            object: "Service a/b".into(),
            reason: "bad".into(),
        };
        assert_eq!(whole_file.to_string(), "d/x.yaml: bad");
        assert_eq!(object.to_string(), "d/x.yaml: Service a/b: bad");
    }

    #[test]
    fn limits_on_files_objects_and_object_size_and_odd_entries() {
        let dir = TempDir::new("limits");
        // A file beyond the size limit is not read at all.
        let big = vec![b' '; limits::FILE_BYTES as usize + 1];
        dir.write("a-big.yaml", &big);
        // More objects than a file may hold: the first ones are read.
        let many: Vec<serde_json::Value> = (0..limits::OBJECTS_PER_FILE + 5)
            .map(|i| {
                service_object(
                    &format!("s{i}"),
                    &format!("10.96.{}.{}", i / 250, 1 + i % 250),
                )
            })
            .collect();
        dir.write("b-many.yaml", builders::manifest_text(&many));
        // One object beyond the object size limit.
        let mut fat = service_object("fat", "10.96.200.1");
        fat["metadata"]["annotations"] = serde_json::json!({"x": "y".repeat(limits::OBJECT_BYTES)});
        dir.write(
            "c-fat.yaml",
            builders::manifest_text(&[fat, service_object("slim", "10.96.200.2")]),
        );
        // A FIFO and a symlink loop with manifest names.
        let fifo = dir.0.join("d-fifo.yaml");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink(dir.0.join("e-loop.yaml"), dir.0.join("e-loop.yaml")).unwrap();

        let set = dir.load();
        let reasons: Vec<String> = set.warnings.iter().map(ToString::to_string).collect();
        let has = |part: &str| reasons.iter().any(|r| r.contains(part));
        assert!(has("a-big.yaml") && has("larger than"), "{reasons:#?}");
        assert!(
            has("b-many.yaml") && has("the rest of the file is skipped"),
            "{reasons:#?}"
        );
        assert!(
            has("Service t/fat") && has("an object may have"),
            "{reasons:#?}"
        );
        assert!(has("d-fifo.yaml") && has("a FIFO"), "{reasons:#?}");
        assert!(has("e-loop.yaml") && has("cannot read"), "{reasons:#?}");
        assert_eq!(
            set.services.len(),
            limits::OBJECTS_PER_FILE + 1,
            "the first 10 000 and slim"
        );
        assert!(set.services.iter().any(|s| s.name == "slim"));
        assert!(
            set.invalid
                .contains(&ObjectId::Service("t".into(), "fat".into()))
        );
    }
}
