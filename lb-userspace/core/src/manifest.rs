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
    /// Objects read from one file, counting every document and List item (also one
    /// that is not an object); the rest is skipped.
    pub const OBJECTS_PER_FILE: usize = 10_000;
    /// Values (scalars, sequences, mappings, keys included) of one file's documents,
    /// YAML aliases expanded: a file with more is skipped whole before it is held in
    /// memory (at most about 500 MB). 16 MiB of dense EndpointSlice YAML have about 2.1
    /// million; without the limit a few hundred bytes of nested aliases expand to
    /// gigabytes (serde_yaml only stops at 100 alias uses per event of the document).
    pub const VALUES_PER_FILE: usize = 4 << 20;
    /// Warnings about one file; the rest are counted in one last warning.
    pub const WARNINGS_PER_FILE: usize = 1000;
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
    /// Documents and List items met in the file being read (for
    /// [`limits::OBJECTS_PER_FILE`]).
    objects_in_file: usize,
    /// Warnings about the file being read, shown and not (for
    /// [`limits::WARNINGS_PER_FILE`]).
    warnings_in_file: usize,
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

    /// A warning about the file being read, within [`limits::WARNINGS_PER_FILE`].
    fn note(&mut self, file: &Path, object: impl Into<String>, reason: impl Into<String>) {
        self.warnings_in_file += 1;
        if self.warnings_in_file <= limits::WARNINGS_PER_FILE {
            self.warn(file, object, reason);
        }
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
        self.objects_in_file = 0;
        self.warnings_in_file = 0;
        self.load_file(file, bytes);
        if let Some(more) = self.warnings_in_file.checked_sub(limits::WARNINGS_PER_FILE)
            && more > 0
        {
            self.warn(
                file,
                "",
                format!(
                    "{more} more warnings (at most {} are shown per file)",
                    limits::WARNINGS_PER_FILE
                ),
            );
        }
    }

    fn load_file(&mut self, file: &Path, bytes: &[u8]) {
        self.set.files_read += 1;
        let Ok(text) = std::str::from_utf8(bytes) else {
            return self.note(file, "", "not UTF-8 text");
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
            Err(reason) => return self.note(file, "", reason),
        };
        debug!(file = %file.display(), documents = documents.len(), "read manifest file");
        for (i, document) in documents.into_iter().enumerate() {
            let label = format!("document {}", i + 1);
            match document {
                Ok(Value::Null) => {} // an empty document (`---` twice, or an empty file)
                Ok(value) => self.load_value(file, &label, value, true),
                Err(reason) => {
                    if self.count_object(file) {
                        self.note(file, label, reason);
                    }
                }
            }
            if self.objects_in_file > limits::OBJECTS_PER_FILE {
                return;
            }
        }
    }

    /// Counts one document or List item of the file being read; false (after one
    /// warning) once there are more than [`limits::OBJECTS_PER_FILE`].
    fn count_object(&mut self, file: &Path) -> bool {
        self.objects_in_file += 1;
        if self.objects_in_file == limits::OBJECTS_PER_FILE + 1 {
            self.note(
                file,
                "",
                format!(
                    "more than {} objects: the rest of the file is skipped",
                    limits::OBJECTS_PER_FILE
                ),
            );
        }
        self.objects_in_file <= limits::OBJECTS_PER_FILE
    }

    /// One object, or a List of objects (`lists_allowed` is false for a List's items:
    /// kubectl does not nest Lists either). Each counts against
    /// [`limits::OBJECTS_PER_FILE`], a List as its items.
    fn load_value(&mut self, file: &Path, fallback_label: &str, value: Value, lists_allowed: bool) {
        let list_kind = match &value {
            Value::Object(fields) => fields
                .get("kind")
                .and_then(Value::as_str)
                .filter(|kind| {
                    kind.ends_with("List") && (*kind == "List" || fields.contains_key("items"))
                })
                .map(str::to_owned),
            _ => None,
        };
        if let (Some(kind), true) = (&list_kind, lists_allowed) {
            let api_version = value
                .get("apiVersion")
                .and_then(Value::as_str)
                .map(str::to_owned);
            return self.load_list(file, fallback_label, kind, api_version, value);
        }
        if !self.count_object(file) {
            return;
        }
        if let Some(kind) = list_kind {
            return self.note(
                file,
                fallback_label,
                format!("a {kind} inside a List is not supported"),
            );
        }
        let Value::Object(fields) = &value else {
            return self.note(
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
            return self.note(file, fallback_label, "no kind");
        };
        let api_version = fields
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
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
            Some(version) => self.note(
                file,
                label,
                format!(
                    "apiVersion {version:?} is not supported for {kind} (expected {})",
                    known.api_version()
                ),
            ),
            None => self.note(file, label, "no apiVersion"),
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
            Some(_) => {
                if self.count_object(file) {
                    self.note(file, label, "items is not a list");
                }
                return;
            }
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
            if self.objects_in_file > limits::OBJECTS_PER_FILE {
                return;
            }
        }
    }

    fn add_object(&mut self, file: &Path, kind: Kind, label: String, value: Value) {
        let id = object_id(kind, &value);
        let size = serde_json::to_vec(&value).map_or(0, |v| v.len());
        if size > limits::OBJECT_BYTES {
            if let Some(id) = id {
                self.set.invalid.push(id);
            }
            return self.note(
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
                return self.note(file, label, reason);
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
            return self.note(file, label, reason);
        }
        self.first_definitions.insert(key, file.to_owned());

        match model {
            Model::Service(Some(service)) => {
                for skipped in &service.skipped {
                    self.note(file, label.clone(), skipped.clone());
                }
                self.set.services.push(service);
            }
            Model::Slice(Some(slice)) => {
                for skipped in &slice.skipped {
                    self.note(file, label.clone(), skipped.clone());
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

/// The documents of a YAML stream. The outer error (the file is not YAML, or it has
/// more than [`limits::VALUES_PER_FILE`] values) skips the file; an inner error (a
/// document that is YAML but cannot be a Kubernetes object, such as a mapping with a
/// list as a key or a number beyond 64 bits) skips the document.
fn yaml_documents(text: &str) -> Result<Vec<Result<Value, String>>, String> {
    // Syntax and size first: after a syntax error the parser yields error documents
    // forever, and a file that is not YAML is better reported once than as a list of
    // documents.
    let mut budget = ValueBudget::default();
    for document in serde_yaml::Deserializer::from_str(text) {
        if let Err(e) = budget.count(document) {
            return Err(budget.exceeded_or(|| format!("does not parse as YAML: {e}")));
        }
    }
    Ok(serde_yaml::Deserializer::from_str(text)
        .map(|document| {
            Value::deserialize(document).map_err(|e| format!("not a Kubernetes object: {e}"))
        })
        .collect())
}

/// The values of a JSON file (one, or several one after another).
fn json_documents(text: &str) -> Result<Vec<Result<Value, String>>, String> {
    let syntax = |e: serde_json::Error| format!("does not parse as JSON: {e}");
    let mut budget = ValueBudget::default();
    let mut documents = serde_json::Deserializer::from_str(text).into_iter::<IgnoredAny>();
    let mut start = 0;
    while let Some(document) = documents.next() {
        document.map_err(syntax)?;
        let end = documents.byte_offset();
        let mut de = serde_json::Deserializer::from_str(&text[start..end]);
        if let Err(e) = budget.count(&mut de) {
            return Err(budget.exceeded_or(|| syntax(e)));
        }
        start = end;
    }
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|value| value.map(Ok).map_err(syntax))
        .collect()
}

/// Counts the values of a file's documents against [`limits::VALUES_PER_FILE`]
/// without holding them (a YAML alias counts as what it repeats), so that a file is
/// turned into `Value`s only when their number is bounded.
#[derive(Debug)]
struct ValueBudget {
    left: usize,
    exceeded: bool,
}

impl Default for ValueBudget {
    fn default() -> Self {
        ValueBudget {
            left: limits::VALUES_PER_FILE,
            exceeded: false,
        }
    }
}

impl ValueBudget {
    fn count<'de, D: serde::Deserializer<'de>>(&mut self, document: D) -> Result<(), D::Error> {
        serde::de::DeserializeSeed::deserialize(Counter(self), document)
    }

    /// The reason to skip a file whose counting failed with `other`.
    fn exceeded_or(&self, other: impl FnOnce() -> String) -> String {
        if self.exceeded {
            format!(
                "more than {} values (YAML aliases expanded): skipped",
                limits::VALUES_PER_FILE
            )
        } else {
            other()
        }
    }
}

/// One value (and what it holds) of a [`ValueBudget`].
struct Counter<'a>(&'a mut ValueBudget);

impl Counter<'_> {
    fn take<E: serde::de::Error>(&mut self) -> Result<(), E> {
        match self.0.left.checked_sub(1) {
            Some(left) => {
                self.0.left = left;
                Ok(())
            }
            None => {
                self.0.exceeded = true;
                Err(E::custom("too many values"))
            }
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Counter<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! count_scalar {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method<E: serde::de::Error>(mut self, _: $ty) -> Result<(), E> {
            self.take()
        })*
    };
}

impl<'de> serde::de::Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    count_scalar!(
        visit_bool: bool, visit_i64: i64, visit_i128: i128, visit_u64: u64,
        visit_u128: u128, visit_f64: f64, visit_str: &str, visit_bytes: &[u8],
    );

    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.take()
    }

    fn visit_none<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.take()
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.take()?;
        while seq.next_element_seed(Counter(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.take()?;
        while map.next_key_seed(Counter(self.0))?.is_some() {
            map.next_value_seed(Counter(self.0))?;
        }
        Ok(())
    }

    /// A tagged YAML value (`!tag value`): the value.
    fn visit_enum<A: serde::de::EnumAccess<'de>>(mut self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess as _;
        self.take()?;
        let (_, variant) = data.variant::<IgnoredAny>()?;
        variant.newtype_variant_seed(Counter(self.0))
    }
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

    /// Nested YAML aliases: ten times more values per level, within serde_yaml's own
    /// limit of 100 alias uses per event (the padding's events raise it). Before the
    /// values limit this file of 400 KB became 12.5 million values, 680 MB; the 2 KB
    /// one of the fuzz corpus (regression-yaml-alias-bomb.yaml) 10 million.
    #[test]
    fn nested_aliases_beyond_the_values_limit_skip_the_file() {
        let mut bomb = String::from("a0: &a0 [1,1,1,1,1,1,1,1,1,1]\n");
        bomb.push_str(&format!("pad: [{}1]\n", "1,".repeat(200_000)));
        for k in 1..7 {
            let previous = format!("*a{}", k - 1);
            let items = [previous.as_str(); 10].join(",");
            bomb.push_str(&format!("a{k}: &a{k} [{items}]\n"));
        }
        let corpus = include_str!("../fuzz/corpus/manifest_bytes/regression-yaml-alias-bomb.yaml");
        for bomb in [bomb.as_str(), corpus] {
            let set = load_bytes(Path::new("bomb.yaml"), bomb.as_bytes());
            assert_eq!(set.warnings.len(), 1, "{:#?}", set.warnings);
            assert!(
                set.warnings[0].reason.contains("more than 4194304 values"),
                "{:#?}",
                set.warnings
            );
        }
        // Aliases within the limit are expanded as before.
        let small = "a: &a {kind: Nope}\nb: *a\n";
        let set = load_bytes(Path::new("small.yaml"), small.as_bytes());
        assert_eq!(set.warnings.len(), 1, "{:#?}", set.warnings);
        assert_eq!(set.warnings[0].reason, "no kind");
    }

    #[test]
    fn json_beyond_the_values_limit_skips_the_file() {
        let flat = format!("[{}1]", "1,".repeat(limits::VALUES_PER_FILE));
        let set = load_bytes(Path::new("flat.json"), flat.as_bytes());
        assert_eq!(set.warnings.len(), 1, "{:#?}", set.warnings);
        assert!(
            set.warnings[0].reason.contains("values"),
            "{:#?}",
            set.warnings
        );
        // Several JSON values one after another, each counted; syntax errors still say so.
        let set = load_bytes(Path::new("two.json"), b"{\"kind\": 1} [1]");
        assert_eq!(set.warnings.len(), 2, "{:#?}", set.warnings);
        let set = load_bytes(Path::new("bad.json"), b"{\"kind\": 1} [1");
        assert!(set.warnings[0].reason.starts_with("does not parse as JSON"));
    }

    /// Documents and List items that are not objects count against the objects limit:
    /// before, a 16 MiB file of `{a: 1}` documents made 1.5 million warnings (1.1 GB), and
    /// a List of any length one warning per item past the limit.
    #[test]
    fn every_document_and_list_item_counts_against_the_objects_limit() {
        let documents = "{a: 1}\n---\n".repeat(limits::OBJECTS_PER_FILE + 100);
        let set = load_bytes(Path::new("docs.yaml"), documents.as_bytes());
        assert_eq!(set.warnings.len(), limits::WARNINGS_PER_FILE + 1);
        assert_eq!(set.warnings[0].reason, "no kind");
        let last = &set.warnings[limits::WARNINGS_PER_FILE].reason;
        assert_eq!(
            *last,
            format!(
                "{} more warnings (at most 1000 are shown per file)",
                limits::OBJECTS_PER_FILE + 1 - limits::WARNINGS_PER_FILE
            )
        );

        let service = |i: usize| {
            crate::builders::service_object(
                "demo",
                &format!("s{i}"),
                &format!("10.96.{}.{}", i / 250, 1 + i % 250),
                &[("http", "TCP", 80)],
            )
        };
        let mut items: Vec<Value> = vec![Value::from(1); 10];
        items.extend((0..limits::OBJECTS_PER_FILE).map(service));
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        let set = load_bytes(Path::new("list.json"), list.to_string().as_bytes());
        assert_eq!(set.services.len(), limits::OBJECTS_PER_FILE - 10);
        let reasons: Vec<&str> = set.warnings.iter().map(|w| w.reason.as_str()).collect();
        assert_eq!(reasons.len(), 11, "{reasons:#?}");
        assert_eq!(
            reasons[10],
            "more than 10000 objects: the rest of the file is skipped"
        );
    }

    /// Warnings about what an object's fields skip are capped per file too.
    #[test]
    fn warnings_about_one_file_are_capped() {
        let ports: Vec<Value> = (0..1500)
            .map(|i| serde_json::json!({"name": format!("p{i}")}))
            .collect();
        let slice = crate::builders::merge(
            crate::builders::slice_object("demo", "web-1", "web", &[], &["10.244.0.1"]),
            serde_json::json!({"ports": ports}),
        );
        let set = load_bytes(Path::new("s.json"), slice.to_string().as_bytes());
        assert_eq!(set.slices.len(), 1);
        assert_eq!(set.warnings.len(), limits::WARNINGS_PER_FILE + 1);
        assert_eq!(
            set.warnings.last().map(|w| w.reason.as_str()),
            Some("500 more warnings (at most 1000 are shown per file)")
        );
        // The cap is per file.
        let mut loader = ManifestLoader::default();
        loader.load_bytes(Path::new("a.json"), slice.to_string().as_bytes());
        loader.load_bytes(Path::new("b.json"), b"[1]");
        let set = loader.finish();
        assert_eq!(set.warnings.len(), limits::WARNINGS_PER_FILE + 2);
    }
}
