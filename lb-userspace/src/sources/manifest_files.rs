//! Loads Services, EndpointSlices and Nodes from a directory of manifest files, as
//! `socklb plan` and the demo use them without an API server.
//!
//! This is the file IO: which files a directory holds and reading them within
//! [`limits::FILE_BYTES`]. Turning their bytes into validated objects is
//! `socklb_core::manifest`, a pure function (fuzzed: lb-userspace/core/fuzz).
//!
//! One broken file or object never hides the others: each problem becomes a
//! [`ManifestWarning`] naming the file (and the object) and loading goes on. Only a
//! directory that cannot be read is an error.

use std::{
    ffi::OsStr,
    fs, io,
    path::{Path, PathBuf},
};

use thiserror::Error;
use tracing::debug;

use socklb_core::manifest::{ManifestLoader, too_large};
pub use socklb_core::manifest::{ManifestSet, ManifestWarning, ObjectId, limits};

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("cannot read manifest directory {}: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file directly in `dir` (not in
/// subdirectories), in file name order, skipping hidden files and editor leftovers.
pub fn load_dir(dir: &Path) -> Result<ManifestSet, ManifestError> {
    let mut loader = ManifestLoader::default();
    let (files, skipped) = manifest_files(dir)?;
    for (path, reason) in skipped {
        loader.warn(&path, "", reason);
    }
    for file in &files {
        load_into(&mut loader, file);
    }
    Ok(loader.finish())
}

/// One manifest file on its own, with the warnings about it (duplicates within the
/// file included).
pub fn load_file(file: &Path) -> ManifestSet {
    let mut loader = ManifestLoader::default();
    load_into(&mut loader, file);
    loader.finish()
}

/// Reads `file` and adds its objects, or a warning when it cannot be read.
fn load_into(loader: &mut ManifestLoader, file: &Path) {
    match read_limited(file) {
        Ok(bytes) => loader.load_bytes(file, &bytes),
        Err(reason) => loader.warn(file, "", reason),
    }
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

/// The bytes of a manifest file, unless it is larger than [`limits::FILE_BYTES`] (then
/// it is not read: a file growing while it is read is cut at the limit and refused).
fn read_limited(file: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use socklb_core::{
        builders,
        model::{NodeModel, Protocol},
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
