//! Manifest text -> validated Services, EndpointSlices and Nodes: the pure half of
//! reading a manifest directory (the agent's `sources::manifest_files` does the file
//! IO and calls this with each file's bytes). Multi-document YAML, `kind: List` and
//! JSON are accepted, within [`limits`].
//!
//! One broken file or object never hides the others: each problem becomes a
//! [`ManifestWarning`] naming the file (and the object) and loading goes on.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fmt,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::Value;
use tracing::debug;

use crate::model::{DEFAULT_NAMESPACE, NodeModel, ServiceModel, SliceModel};

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

/// The reason a file larger than [`limits::FILE_BYTES`] is skipped.
pub fn too_large(size: u64) -> String {
    format!(
        "{size} bytes, larger than the {} a manifest file may have: skipped",
        limits::FILE_BYTES
    )
}

/// One manifest file on its own, with the warnings about it (duplicates within the
/// file included).
pub fn load_bytes(file: &Path, bytes: &[u8]) -> ManifestSet {
    let mut loader = ManifestLoader::default();
    loader.load_bytes(file, bytes);
    loader.finish()
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

/// Reads manifest files one after another into one [`ManifestSet`]: an object
/// defined again in a later file (or later in the same file) is a duplicate, and the
/// first definition is used.
#[derive(Debug, Default)]
pub struct ManifestLoader {
    set: ManifestSet,
    /// Objects met in the file being read (for [`limits::OBJECTS_PER_FILE`]).
    objects_in_file: usize,
    /// (kind, namespace, name) -> the file that defined it first.
    first_definitions: HashMap<(Kind, String, String), PathBuf>,
}

impl ManifestLoader {
    /// What the files read so far hold.
    pub fn finish(self) -> ManifestSet {
        self.set
    }

    /// Records a problem with `file` found by the caller (one that cannot be read);
    /// `object` is empty when the problem is the whole file.
    pub fn warn(&mut self, file: &Path, object: impl Into<String>, reason: impl Into<String>) {
        let warning = ManifestWarning {
            file: file.to_owned(),
            object: object.into(),
            reason: reason.into(),
        };
        debug!(%warning, "manifest warning");
        self.set.warnings.push(warning);
    }

    /// Adds the objects of one manifest file, `bytes` being its content: JSON when the
    /// name ends in `.json` (any case), YAML otherwise. `file` only names the file in
    /// warnings and decides the format; nothing is read from it.
    pub fn load_bytes(&mut self, file: &Path, bytes: &[u8]) {
        // The caller's reader stops at the limit already; this keeps the promise for
        // bytes from anywhere else (and such a file counts as not read, as there).
        if bytes.len() as u64 > limits::FILE_BYTES {
            return self.warn(file, "", too_large(bytes.len() as u64));
        }
        self.set.files_read += 1;
        let Ok(text) = std::str::from_utf8(bytes) else {
            return self.warn(file, "", "not UTF-8 text");
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
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
mod tests {
    use super::*;

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
}
