//! A directory of manifests as a source of [`ClusterEvent`]s.
//!
//! The first read sends one `Snapshot` of everything. After that only the files whose
//! name, size or modification time changed are read again, and only the objects whose
//! effective definition changed are sent, as per-object events: a change costs work
//! proportional to the changed files, not to the directory.
//!
//! An object defined in several files keeps the definition of the first file in name
//! order (a warning names the others), as `manifests::load_dir` decides.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use socklb_core::{
    events::{ClusterEvent, ObjectKey},
    model::{NodeModel, ServiceModel, SliceModel},
};

use crate::sources::manifest_files::{self as manifests, ManifestError, ManifestSet, ObjectId};

/// Size and modification time: a file whose stamp changed is read again.
type Stamp = (u64, SystemTime);

/// A file that changed, with its new stamp (None: removed).
type ChangedFile = (PathBuf, Option<Stamp>);

/// What one file held when it was last read: only the ids (the models live in the
/// agent's state; a copy here would double the memory of a large directory).
struct FileEntry {
    stamp: Stamp,
    /// Every object the file names, valid or not.
    ids: Vec<ObjectId>,
    warnings: usize,
}

/// Watches one directory.
pub struct ManifestDirSource {
    dir: PathBuf,
    node: String,
    poll_interval: Duration,
    files: BTreeMap<Arc<Path>, FileEntry>,
    /// Which files define each object, sorted by name (the first wins). Almost always
    /// one; the path is shared with `files`, not copied per object.
    definers: HashMap<ObjectId, Vec<Arc<Path>>>,
    /// Objects and files skipped because they are invalid (current count).
    pub invalid_objects: Gauge,
    /// Entries with a manifest name that are not read (a FIFO, a symlink loop...), with
    /// the reason: each is warned about once, when it appears or its reason changes.
    skipped: BTreeMap<PathBuf, String>,
}

impl ManifestDirSource {
    pub fn new(dir: impl Into<PathBuf>, node: impl Into<String>, poll_interval: Duration) -> Self {
        Self::with_metrics(dir, node, poll_interval, Gauge::default())
    }

    /// A source whose count of invalid objects is `invalid_objects` (the agent's
    /// `socklb_manifest_invalid_objects`).
    pub fn with_metrics(
        dir: impl Into<PathBuf>,
        node: impl Into<String>,
        poll_interval: Duration,
        invalid_objects: Gauge,
    ) -> Self {
        Self {
            dir: dir.into(),
            node: node.into(),
            poll_interval,
            files: BTreeMap::new(),
            definers: HashMap::new(),
            invalid_objects,
            skipped: BTreeMap::new(),
        }
    }

    /// Reads the whole directory: the first event, a complete snapshot. Fails only when
    /// the directory itself is unreadable.
    pub fn load(&mut self) -> Result<ClusterEvent, ManifestError> {
        let changed = self.changed_files()?;
        let (_, mut fresh) = self.reread(changed);
        let node = self.node_model(&mut fresh);
        // Models are moved, not copied, into the snapshot: a large directory is held
        // once (a copy would stay as the process's high-water mark).
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let first_definer = |id: &ObjectId, path: &Path| {
            self.definers
                .get(id)
                .and_then(|files| files.first())
                .is_some_and(|f| **f == *path)
        };
        for (path, set) in fresh {
            for s in set.services {
                if first_definer(
                    &ObjectId::Service(s.namespace.clone(), s.name.clone()),
                    &path,
                ) {
                    services.push(s);
                }
            }
            for s in set.slices {
                if first_definer(&ObjectId::Slice(s.namespace.clone(), s.name.clone()), &path) {
                    slices.push(s);
                }
            }
        }
        Ok(ClusterEvent::Snapshot {
            services,
            slices,
            node,
        })
    }

    /// Reads the files that changed since the last read and returns the events that
    /// bring a consumer of the earlier events up to date.
    pub fn update(&mut self) -> Result<Vec<ClusterEvent>, ManifestError> {
        let changed = self.changed_files()?;
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let (touched, mut fresh) = self.reread(changed);
        let mut events = Vec::new();
        for id in touched {
            match &id {
                ObjectId::Service(ns, name) => match self.effective(&id, &mut fresh) {
                    Some(Effective::Service(s)) => events.push(ClusterEvent::ServiceApplied(s)),
                    Some(Effective::Invalid) => keep_last_valid(&id),
                    _ => events.push(ClusterEvent::ServiceDeleted(ObjectKey::new(ns, name))),
                },
                ObjectId::Slice(ns, name) => match self.effective(&id, &mut fresh) {
                    Some(Effective::Slice(s)) => events.push(ClusterEvent::SliceApplied(s)),
                    Some(Effective::Invalid) => keep_last_valid(&id),
                    _ => events.push(ClusterEvent::SliceDeleted(ObjectKey::new(ns, name))),
                },
                ObjectId::Node(name) if *name == self.node => {
                    events.push(ClusterEvent::NodeApplied(self.node_model(&mut fresh)));
                }
                ObjectId::Node(_) => {}
            }
        }
        Ok(events)
    }

    /// Polls the directory and sends the events of each change until the receiver is
    /// gone. A directory that vanishes or becomes unreadable keeps the last state
    /// served (nothing is sent).
    pub async fn run(mut self, events: mpsc::Sender<ClusterEvent>) {
        let mut ticker = tokio::time::interval(self.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Ok(first) = self.changed_files() else {
                continue;
            };
            if first.is_empty() {
                continue;
            }
            // Let writers finish: read only once the directory is quiet.
            tokio::time::sleep(self.poll_interval / 2).await;
            match self.changed_files() {
                Ok(again) if again == first => {}
                _ => continue,
            }
            match self.update() {
                Ok(batch) => {
                    debug!(dir = %self.dir.display(), events = batch.len(), "manifests changed");
                    for event in batch {
                        if events.send(event).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => warn!(error = %e, "keeping the current data path"),
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the entries skipped now, warning about the new ones (not at every poll).
    fn note_skipped(&mut self, now: Vec<(PathBuf, String)>) {
        let now: BTreeMap<PathBuf, String> = now.into_iter().collect();
        if now == self.skipped {
            return;
        }
        for (path, reason) in &now {
            if self.skipped.get(path) != Some(reason) {
                warn!("skipped: {}: {reason}", path.display());
            }
        }
        self.skipped = now;
        let invalid: usize =
            self.files.values().map(|f| f.warnings).sum::<usize>() + self.skipped.len();
        self.invalid_objects
            .set(i64::try_from(invalid).unwrap_or(i64::MAX));
    }

    /// Files added, changed (size or modification time) or removed since the last read,
    /// with their new stamp (None: removed).
    fn changed_files(&mut self) -> Result<Vec<ChangedFile>, ManifestError> {
        let (files, skipped) = manifests::manifest_files(&self.dir)?;
        self.note_skipped(skipped);
        let mut changed = Vec::new();
        let mut present = BTreeSet::new();
        for path in files {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let stamp = (
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            );
            if self.files.get(path.as_path()).map(|f| f.stamp) != Some(stamp) {
                changed.push((path.clone(), Some(stamp)));
            }
            present.insert(path);
        }
        changed.extend(
            self.files
                .keys()
                .filter(|p| !present.contains(&p.to_path_buf()))
                .map(|p| (p.to_path_buf(), None)),
        );
        Ok(changed)
    }

    /// Re-reads the given files; returns the objects any of them defined before or
    /// defines now, and what the files hold now.
    fn reread(
        &mut self,
        changed: Vec<ChangedFile>,
    ) -> (BTreeSet<ObjectId>, HashMap<PathBuf, ManifestSet>) {
        let mut touched = BTreeSet::new();
        let mut fresh = HashMap::new();
        for (path, stamp) in changed {
            if let Some(old) = self.files.remove(path.as_path()) {
                for id in old.ids {
                    if let Some(files) = self.definers.get_mut(&id) {
                        files.retain(|f| **f != *path);
                        if files.is_empty() {
                            self.definers.remove(&id);
                        }
                    }
                    touched.insert(id);
                }
            }
            let Some(stamp) = stamp else { continue };
            let set = manifests::load_file(&path);
            for w in &set.warnings {
                warn!("skipped: {w}");
            }
            let file_ids = ids(&set);
            let shared: Arc<Path> = Arc::from(path.as_path());
            for id in &file_ids {
                let files = self.definers.entry(id.clone()).or_default();
                let at = files.partition_point(|f| f.file_name() < shared.file_name());
                files.insert(at, shared.clone());
                touched.insert(id.clone());
            }
            self.files.insert(
                shared,
                FileEntry {
                    stamp,
                    ids: file_ids,
                    warnings: set.warnings.len(),
                },
            );
            fresh.insert(path, set);
        }
        for id in &touched {
            if let Some(files) = self.definers.get(id).filter(|f| f.len() > 1) {
                let mut names = files.iter().map(|p| p.display().to_string());
                let kept = names.next().unwrap_or_default();
                warn!(object = ?id, kept = %kept, ignored = ?names.collect::<Vec<_>>(), "defined in several files: the first file's definition is used");
            }
        }
        let invalid: usize =
            self.files.values().map(|f| f.warnings).sum::<usize>() + self.skipped.len();
        self.invalid_objects
            .set(i64::try_from(invalid).unwrap_or(i64::MAX));
        (touched, fresh)
    }

    /// The definition that counts: the first defining file's. Files not read in this
    /// round (only when that file defines an object twice over with another) are read
    /// again on demand.
    fn effective(
        &self,
        id: &ObjectId,
        fresh: &mut HashMap<PathBuf, ManifestSet>,
    ) -> Option<Effective> {
        let file = self.definers.get(id)?.first()?;
        let set = fresh
            .entry(file.to_path_buf())
            .or_insert_with(|| manifests::load_file(file));
        if set.invalid.contains(id) {
            return Some(Effective::Invalid);
        }
        match id {
            ObjectId::Service(ns, name) => set
                .services
                .iter()
                .find(|s| &s.namespace == ns && &s.name == name)
                .cloned()
                .map(Effective::Service),
            ObjectId::Slice(ns, name) => set
                .slices
                .iter()
                .find(|s| &s.namespace == ns && &s.name == name)
                .cloned()
                .map(Effective::Slice),
            ObjectId::Node(name) => set
                .nodes
                .iter()
                .find(|n| &n.name == name)
                .cloned()
                .map(Effective::Node),
        }
    }

    fn node_model(&self, fresh: &mut HashMap<PathBuf, ManifestSet>) -> NodeModel {
        match self.effective(&ObjectId::Node(self.node.clone()), fresh) {
            Some(Effective::Node(n)) => n,
            _ => NodeModel::named(self.node.clone()),
        }
    }
}

enum Effective {
    Service(ServiceModel),
    Slice(SliceModel),
    Node(NodeModel),
    /// Defined, but the definition is invalid (its warning is logged already).
    Invalid,
}

/// An object whose file now holds an invalid version of it: the consumer keeps the
/// version it has (the API server, too, keeps an object when it rejects an update).
fn keep_last_valid(id: &ObjectId) {
    warn!(object = ?id, "invalid version of an object: its last valid version stays in effect");
}

fn ids(set: &ManifestSet) -> Vec<ObjectId> {
    set.services
        .iter()
        .map(|s| ObjectId::Service(s.namespace.clone(), s.name.clone()))
        .chain(
            set.slices
                .iter()
                .map(|s| ObjectId::Slice(s.namespace.clone(), s.name.clone())),
        )
        .chain(set.nodes.iter().map(|n| ObjectId::Node(n.name.clone())))
        .chain(set.invalid.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use socklb_core::{builders, state::ClusterState};

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("socklb-msrc-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        fn write(&self, name: &str, text: &str) {
            // A different size or a later mtime marks the file changed; sizes differ
            // in these tests, mtimes may not on fast filesystems.
            std::fs::write(self.0.join(name), text).unwrap();
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A Service of namespace t with port http 80, as manifest text.
    fn service(name: &str, ip: &str) -> String {
        builders::manifest_text(&[builders::service_object(
            "t",
            name,
            ip,
            &[("http", "TCP", 80)],
        )])
    }

    /// A slice of namespace t with port http 8080 and these endpoints, as manifest text.
    fn slice(name: &str, svc: &str, ips: &[&str]) -> String {
        builders::manifest_text(&[builders::slice_object(
            "t",
            name,
            svc,
            &[("http", "TCP", 8080)],
            ips,
        )])
    }

    /// The state the events build equals the state of a fresh full read.
    fn assert_matches_full_read(dir: &Path, state: &ClusterState) {
        let mut fresh = ManifestDirSource::new(dir, "n1", Duration::from_millis(10));
        let mut expected = ClusterState::new(NodeModel::named("n1"));
        expected.apply(fresh.load().unwrap());
        expected.recompute();
        assert_eq!(state.plan(), expected.plan());
        assert_eq!(state.index().desired, expected.index().desired);
    }

    #[test]
    fn only_changed_files_produce_events_and_the_result_equals_a_full_read() {
        let dir = Dir::new("incremental");
        dir.write(
            "a.yaml",
            &(service("a", "10.96.0.1") + &slice("a-1", "a", &["10.244.0.1"])),
        );
        dir.write(
            "b.yaml",
            &(service("b", "10.96.0.2") + &slice("b-1", "b", &["10.244.0.2"])),
        );
        let mut src = ManifestDirSource::new(&dir.0, "n1", Duration::from_millis(10));
        let mut state = ClusterState::new(NodeModel::named("n1"));
        state.apply(src.load().unwrap());
        state.recompute();
        assert!(src.update().unwrap().is_empty(), "nothing changed");

        // One endpoint added in b.yaml: only b's objects are sent, a's are not touched.
        dir.write(
            "b.yaml",
            &(service("b", "10.96.0.2") + &slice("b-1", "b", &["10.244.0.2", "10.244.0.3"])),
        );
        let events = src.update().unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events.iter().all(|e| match e {
            ClusterEvent::ServiceApplied(s) => s.name == "b",
            ClusterEvent::SliceApplied(s) => s.name == "b-1",
            _ => false,
        }));
        for e in events {
            state.apply(e);
        }
        state.recompute();
        assert_matches_full_read(&dir.0, &state);

        // A file removed: its objects are deleted.
        std::fs::remove_file(dir.0.join("a.yaml")).unwrap();
        let events = src.update().unwrap();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ClusterEvent::ServiceDeleted(k) if k.name == "a"))
        );
        for e in events {
            state.apply(e);
        }
        state.recompute();
        assert_matches_full_read(&dir.0, &state);
    }

    #[test]
    fn duplicates_keep_the_first_file_and_fall_back_when_it_goes() {
        let dir = Dir::new("duplicates");
        dir.write("1.yaml", &service("web", "10.96.0.10"));
        dir.write("2.yaml", &service("web", "10.96.0.20"));
        let mut src = ManifestDirSource::new(&dir.0, "n1", Duration::from_millis(10));
        let mut state = ClusterState::new(NodeModel::named("n1"));
        state.apply(src.load().unwrap());
        state.recompute();
        assert_matches_full_read(&dir.0, &state);
        // The later file changing does not change the effective definition.
        dir.write("2.yaml", &service("web", "10.96.0.200"));
        for e in src.update().unwrap() {
            state.apply(e);
        }
        state.recompute();
        assert_matches_full_read(&dir.0, &state);
        // The first file going away hands the object to the next definition.
        std::fs::remove_file(dir.0.join("1.yaml")).unwrap();
        let events = src.update().unwrap();
        assert!(
            matches!(&events[..], [ClusterEvent::ServiceApplied(s)] if s.cluster_ips[0].to_string() == "10.96.0.200"),
            "{events:?}"
        );
        for e in events {
            state.apply(e);
        }
        state.recompute();
        assert_matches_full_read(&dir.0, &state);
    }

    #[test]
    fn an_object_turning_invalid_keeps_its_last_valid_version() {
        let dir = Dir::new("last-valid");
        dir.write("svc.yaml", &service("web", "10.96.0.10"));
        dir.write(
            "eps.yaml",
            &slice("web-1", "web", &["10.244.0.1", "10.244.0.2"]),
        );
        let mut src = ManifestDirSource::new(&dir.0, "n1", Duration::from_millis(10));
        let mut state = ClusterState::new(NodeModel::named("n1"));
        state.apply(src.load().unwrap());
        state.recompute();
        let before = state.index().desired.clone();
        // The API server would reject this update and keep the object as it was.
        dir.write(
            "eps.yaml",
            &slice("web-1", "web", &["10.244.0.1", "10.244.0.2", "0.0.0.0"]),
        );
        let events = src.update().unwrap();
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(src.invalid_objects.get(), 1);
        assert_eq!(state.index().desired, before);
        // Fixed again: applied.
        dir.write("eps.yaml", &slice("web-1", "web", &["10.244.0.3"]));
        let events = src.update().unwrap();
        assert!(
            matches!(&events[..], [ClusterEvent::SliceApplied(s)] if s.endpoints.len() == 1),
            "{events:?}"
        );
        // An invalid object that never was valid: nothing is sent for it, and removing
        // its file deletes nothing.
        dir.write("bad.yaml", &service("bad", "0.0.0.0"));
        assert!(src.update().unwrap().is_empty());
        std::fs::remove_file(dir.0.join("bad.yaml")).unwrap();
        let events = src.update().unwrap();
        assert!(
            matches!(&events[..], [ClusterEvent::ServiceDeleted(k)] if k.name == "bad"),
            "{events:?}"
        );
    }

    #[test]
    fn a_file_that_stops_parsing_drops_its_objects_and_the_node_follows_its_file() {
        let dir = Dir::new("broken");
        dir.write("svc.yaml", &service("web", "10.96.0.10"));
        dir.write(
            "node.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {topology.kubernetes.io/zone: z1}}\n",
        );
        let mut src = ManifestDirSource::new(&dir.0, "n1", Duration::from_millis(10));
        let ClusterEvent::Snapshot { node, .. } = src.load().unwrap() else {
            panic!("first event is a snapshot")
        };
        assert_eq!(node.zone.as_deref(), Some("z1"));
        dir.write("svc.yaml", "kind: Service\nspec: [this is not\n");
        let events = src.update().unwrap();
        assert!(
            matches!(&events[..], [ClusterEvent::ServiceDeleted(_)]),
            "{events:?}"
        );
        assert_eq!(src.invalid_objects.get(), 1);
        std::fs::remove_file(dir.0.join("node.yaml")).unwrap();
        let events = src.update().unwrap();
        assert!(
            matches!(&events[..], [ClusterEvent::NodeApplied(n)] if n.zone.is_none()),
            "{events:?}"
        );
    }

    #[test]
    fn skipped_entries_are_counted_while_they_exist() {
        let dir = Dir::new("odd-entries");
        dir.write("svc.yaml", &service("web", "10.96.0.10"));
        let fifo = dir.0.join("fifo.yaml");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut src = ManifestDirSource::new(&dir.0, "n1", Duration::from_millis(10));
        src.load().unwrap();
        assert_eq!(src.invalid_objects.get(), 1);
        // Polling again changes nothing (and warns nothing again).
        assert!(src.update().unwrap().is_empty());
        assert_eq!(src.invalid_objects.get(), 1);
        assert_eq!(src.skipped.len(), 1);
        std::fs::remove_file(&fifo).unwrap();
        assert!(src.update().unwrap().is_empty());
        assert_eq!(src.invalid_objects.get(), 0);
    }
}
