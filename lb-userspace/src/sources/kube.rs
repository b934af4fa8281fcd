//! The Kubernetes API as a source of [`ClusterEvent`]s.
//!
//! Three kube-runtime watchers, each with kube-runtime's default backoff (800 ms doubling
//! to 30 s with jitter, as client-go's reflector):
//! - Services and discovery.k8s.io/v1 EndpointSlices cluster-wide, both with kube-proxy's
//!   label selector [`PROXY_LABEL_SELECTOR`]. kube-proxy builds one informer factory with
//!   one selector for both kinds (cmd/kube-proxy/app/server.go: `noProxyName` and
//!   `noHeadlessEndpoints` added to one `labels.Selector`), so each kind gets both
//!   requirements: a Service owned by another proxy is skipped, and so are its slices
//!   (the EndpointSlice controller copies the Service's labels onto them); the slices of
//!   a headless Service carry `service.kubernetes.io/headless`.
//! - This node's Node, by field selector `metadata.name=<node>` (its zone label).
//!
//! Managed fields are dropped from every object as it comes off the wire
//! (`.modify(..)`), before conversion.
//!
//! Mapping: a watch `Apply` is validated with the model's `from_k8s`: a proxied object
//! becomes `*Applied`, a valid but not-proxied one `*Deleted`, an invalid one is logged,
//! counted and dropped (the core keeps the last good version). `Delete` becomes
//! `*Deleted`. A (re)list (`Init`, `InitApply`.., `InitDone`) is buffered and delivered
//! at `InitDone` as one `ServicesListed` / `SlicesListed` naming the invalid objects, so
//! the core swaps its set atomically and a relist never removes what is still wanted.
//! A 410 Gone makes the watcher relist; a dropped connection resumes from the last
//! resourceVersion seen (bookmarks included); errors are logged at warn and retried.
//!
//! No raw-object reflector store is kept: the events carry whole objects (a `Delete`
//! carries the last state), so a store would only duplicate the cluster's Services and
//! EndpointSlices in memory. What the core was last told about each object is kept
//! instead, as models, which is what answers "did this change matter": an update that
//! leaves the model unchanged (status, annotations, a Node heartbeat) is not forwarded.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    path::PathBuf,
    sync::Arc,
};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use socklb_core::{
    events::{ClusterEvent, ObjectKey},
    model::{DEFAULT_NAMESPACE, InvalidObject, NodeModel, ServiceModel, SliceModel},
};

use crate::metrics::{KindMetrics, KubeMetrics};

/// kube-proxy's label selector for Services and EndpointSlices, spelled as its
/// `labels.Selector.String()` prints it (requirements sorted by key).
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";

/// Objects per list page: client-go's and kube-runtime's default.
pub const DEFAULT_LIST_PAGE_SIZE: u32 = 500;

/// What to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSourceConfig {
    /// This node's name (`--node` / `NODE_NAME`): selects the Node watched for topology.
    pub node_name: String,
    /// Objects per list page.
    pub list_page_size: u32,
    /// Server-side timeout of each watch request, seconds; `None`: kube-runtime's
    /// default (290 s). The watcher re-watches from the last resourceVersion after it.
    pub watch_timeout_s: Option<u32>,
}

impl KubeSourceConfig {
    pub fn new(node_name: impl Into<String>) -> KubeSourceConfig {
        KubeSourceConfig {
            node_name: node_name.into(),
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
            watch_timeout_s: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum KubeSourceError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: Box<kube::config::KubeconfigError>,
    },
    #[error(
        "no Kubernetes client configuration: no usable kubeconfig (KUBECONFIG, ~/.kube/config) and not in a cluster: {0}"
    )]
    Infer(#[source] Box<kube::config::InferConfigError>),
    #[error("creating the Kubernetes client: {0}")]
    Client(#[source] Box<kube::Error>),
    #[error("invalid source configuration: {0}")]
    Config(String),
}

/// A Kubernetes client from an explicit kubeconfig path (`--kubeconfig`), else kube's
/// `Config::infer`: `KUBECONFIG` (or `~/.kube/config`), else the in-cluster service
/// account.
pub async fn client_from_env(kubeconfig: Option<PathBuf>) -> Result<Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let read = |source| KubeSourceError::Kubeconfig {
                path: path.clone(),
                source: Box::new(source),
            };
            let file = Kubeconfig::read_from(&path).map_err(read)?;
            let mut config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(read)?;
            config.apply_debug_overrides();
            config
        }
        None => Config::infer()
            .await
            .map_err(|e| KubeSourceError::Infer(Box::new(e)))?,
    };
    info!(server = %config.cluster_url, "Kubernetes API server");
    Client::try_from(config).map_err(|e| KubeSourceError::Client(Box::new(e)))
}

/// Counters and readiness of the Kubernetes source, per watched kind: handles into the
/// agent's [`KubeMetrics`] families.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    pub services: KindMetrics,
    pub slices: KindMetrics,
    pub nodes: KindMetrics,
}

impl SourceMetrics {
    pub fn new(families: &KubeMetrics) -> SourceMetrics {
        SourceMetrics {
            services: KindMetrics::of(families, "service"),
            slices: KindMetrics::of(families, "endpointslice"),
            nodes: KindMetrics::of(families, "node"),
        }
    }

    /// The first complete list of Services has been delivered.
    pub fn services_synced(&self) -> bool {
        self.services.is_synced()
    }

    /// The first complete list of EndpointSlices has been delivered.
    pub fn slices_synced(&self) -> bool {
        self.slices.is_synced()
    }

    /// The first list of this node's Node is done (the Node may not exist).
    pub fn node_synced(&self) -> bool {
        self.nodes.is_synced()
    }
}

/// A kind whose objects become models the core keys by (namespace, name).
trait ProxiedKind: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static {
    type Model: Clone + Debug + PartialEq + Send;
    const KIND: &'static str;
    fn convert(&self) -> Result<Option<Self::Model>, InvalidObject>;
    fn skipped(model: &Self::Model) -> &[String];
    fn applied(model: Self::Model) -> ClusterEvent;
    fn deleted(key: ObjectKey) -> ClusterEvent;
    fn listed(models: Vec<Self::Model>, invalid: Vec<ObjectKey>) -> ClusterEvent;
}

impl ProxiedKind for Service {
    type Model = ServiceModel;
    const KIND: &'static str = "Service";
    fn convert(&self) -> Result<Option<ServiceModel>, InvalidObject> {
        ServiceModel::from_k8s(self)
    }
    fn skipped(model: &ServiceModel) -> &[String] {
        &model.skipped
    }
    fn applied(model: ServiceModel) -> ClusterEvent {
        ClusterEvent::ServiceApplied(model)
    }
    fn deleted(key: ObjectKey) -> ClusterEvent {
        ClusterEvent::ServiceDeleted(key)
    }
    fn listed(services: Vec<ServiceModel>, invalid: Vec<ObjectKey>) -> ClusterEvent {
        ClusterEvent::ServicesListed { services, invalid }
    }
}

impl ProxiedKind for EndpointSlice {
    type Model = SliceModel;
    const KIND: &'static str = "EndpointSlice";
    fn convert(&self) -> Result<Option<SliceModel>, InvalidObject> {
        SliceModel::from_k8s(self)
    }
    fn skipped(model: &SliceModel) -> &[String] {
        &model.skipped
    }
    fn applied(model: SliceModel) -> ClusterEvent {
        ClusterEvent::SliceApplied(model)
    }
    fn deleted(key: ObjectKey) -> ClusterEvent {
        ClusterEvent::SliceDeleted(key)
    }
    fn listed(slices: Vec<SliceModel>, invalid: Vec<ObjectKey>) -> ClusterEvent {
        ClusterEvent::SlicesListed { slices, invalid }
    }
}

/// (namespace, name) as the models key objects (an empty namespace is "default").
fn object_key(meta: &ObjectMeta) -> ObjectKey {
    let namespace = meta
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    ObjectKey::new(namespace, meta.name.clone().unwrap_or_default())
}

/// Turns the watcher events of one kind into ClusterEvents. Pure: no IO, so it is
/// driven directly in unit tests.
struct KindSync<K: ProxiedKind> {
    /// What the core was last told about each object: the last good model of every
    /// proxied object (ServicesListed keeps the last good version of invalid objects,
    /// so this does too).
    known: HashMap<ObjectKey, K::Model>,
    /// A (re)list in progress.
    listing: Option<Listing<K::Model>>,
}

/// What a (re)list found so far.
struct Listing<M> {
    /// Proxied objects, in key order.
    valid: BTreeMap<ObjectKey, M>,
    /// Keys of invalid objects.
    invalid: Vec<ObjectKey>,
}

impl<M> Listing<M> {
    fn new() -> Self {
        Listing {
            valid: BTreeMap::new(),
            invalid: Vec::new(),
        }
    }
}

impl<K: ProxiedKind> KindSync<K> {
    fn new() -> Self {
        KindSync {
            known: HashMap::new(),
            listing: None,
        }
    }

    /// Validates one object; logs and counts it when invalid.
    fn convert(object: &K, metrics: &KindMetrics) -> Result<Option<K::Model>, ()> {
        object.convert().map_err(|reason| {
            metrics.invalid_objects.inc();
            warn!(
                kind = K::KIND,
                namespace = object.namespace().as_deref().unwrap_or(""),
                name = object.meta().name.as_deref().unwrap_or(""),
                %reason,
                "invalid object skipped; the last good version stays in effect"
            );
        })
    }

    fn warn_skipped(&self, key: &ObjectKey, model: &K::Model) {
        let previous = self.known.get(key).map(K::skipped).unwrap_or_default();
        let skipped = K::skipped(model);
        if skipped != previous {
            for reason in skipped {
                warn!(kind = K::KIND, object = %key, %reason, "port not served");
            }
        }
    }

    fn on_event(&mut self, event: Event<K>, metrics: &KindMetrics) -> Vec<ClusterEvent> {
        match event {
            Event::Init => {
                // A list that failed half-way starts again with Init: one relist.
                if metrics.is_synced() && self.listing.is_none() {
                    metrics.relists.inc();
                    info!(kind = K::KIND, "relisting");
                }
                self.listing = Some(Listing::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                metrics.watch_events.inc();
                let key = object_key(object.meta());
                let converted = Self::convert(&object, metrics);
                // Never without a preceding Init; if it were, this starts the list.
                let listing = self.listing.get_or_insert_with(Listing::new);
                match converted {
                    Ok(Some(model)) => {
                        listing.valid.insert(key, model);
                    }
                    Ok(None) => {}
                    Err(()) => {
                        if !key.name.is_empty() {
                            listing.invalid.push(key);
                        }
                    }
                }
                Vec::new()
            }
            Event::InitDone => {
                let Listing { valid, invalid } = self.listing.take().unwrap_or_else(Listing::new);
                for (key, model) in &valid {
                    self.warn_skipped(key, model);
                }
                let mut known: HashMap<ObjectKey, K::Model> = valid.clone().into_iter().collect();
                for key in &invalid {
                    if let Some(previous) = self.known.remove(key) {
                        known.insert(key.clone(), previous);
                    }
                }
                self.known = known;
                if metrics.mark_synced() {
                    info!(
                        kind = K::KIND,
                        objects = valid.len(),
                        invalid = invalid.len(),
                        "initial list complete"
                    );
                } else {
                    debug!(
                        kind = K::KIND,
                        objects = valid.len(),
                        invalid = invalid.len(),
                        "relist complete"
                    );
                }
                vec![K::listed(valid.into_values().collect(), invalid)]
            }
            Event::Apply(object) => {
                metrics.watch_events.inc();
                let key = object_key(object.meta());
                match Self::convert(&object, metrics) {
                    Ok(Some(model)) => {
                        if self.known.get(&key) == Some(&model) {
                            debug!(kind = K::KIND, object = %key, "update does not change the model");
                            return Vec::new();
                        }
                        self.warn_skipped(&key, &model);
                        self.known.insert(key, model.clone());
                        vec![K::applied(model)]
                    }
                    // Valid but not proxied (headless, ExternalName, IPv6...): gone for
                    // the core if it had it.
                    Ok(None) => self.forget(key),
                    Err(()) => Vec::new(),
                }
            }
            Event::Delete(object) => {
                metrics.watch_events.inc();
                self.forget(object_key(object.meta()))
            }
        }
    }

    fn forget(&mut self, key: ObjectKey) -> Vec<ClusterEvent> {
        if self.known.remove(&key).is_some() {
            vec![K::deleted(key)]
        } else {
            Vec::new()
        }
    }
}

/// Turns the watcher events of this node's Node into NodeApplied.
struct NodeSync {
    node_name: String,
    /// What the core was last told (`None`: nothing, it uses `NodeModel::named`).
    known: Option<NodeModel>,
    /// A (re)list in progress.
    listing: Option<NodeListing>,
}

/// What a (re)list of the own Node found.
enum NodeListing {
    NotSeen,
    Valid(NodeModel),
    Invalid,
}

impl NodeSync {
    fn new(node_name: String) -> NodeSync {
        NodeSync {
            node_name,
            known: None,
            listing: None,
        }
    }

    fn convert(&self, node: &Node, metrics: &KindMetrics) -> Option<NodeModel> {
        match NodeModel::from_k8s(node) {
            Ok(model) if model.name == self.node_name => Some(model),
            Ok(model) => {
                // The field selector makes this impossible; never trust it blindly.
                debug!(node = %model.name, "ignoring another node");
                None
            }
            Err(reason) => {
                metrics.invalid_objects.inc();
                warn!(kind = "Node", name = %self.node_name, %reason, "invalid object skipped");
                None
            }
        }
    }

    fn apply(&mut self, model: NodeModel) -> Vec<ClusterEvent> {
        if self.known.as_ref() == Some(&model) {
            return Vec::new();
        }
        info!(node = %model.name, zone = ?model.zone, "node topology");
        self.known = Some(model.clone());
        vec![ClusterEvent::NodeApplied(model)]
    }

    /// The Node is gone: its labels no longer apply (kube-proxy's OnNodeDelete).
    fn forget(&mut self) -> Vec<ClusterEvent> {
        match &self.known {
            Some(known) if *known != NodeModel::named(&self.node_name) => {
                self.apply(NodeModel::named(&self.node_name))
            }
            _ => Vec::new(),
        }
    }

    fn on_event(&mut self, event: Event<Node>, metrics: &KindMetrics) -> Vec<ClusterEvent> {
        match event {
            Event::Init => {
                if metrics.is_synced() && self.listing.is_none() {
                    metrics.relists.inc();
                }
                self.listing = Some(NodeListing::NotSeen);
                Vec::new()
            }
            Event::InitApply(node) => {
                metrics.watch_events.inc();
                if node.meta().name.as_deref() == Some(self.node_name.as_str()) {
                    self.listing = Some(match self.convert(&node, metrics) {
                        Some(model) => NodeListing::Valid(model),
                        None => NodeListing::Invalid,
                    });
                }
                Vec::new()
            }
            Event::InitDone => {
                metrics.mark_synced();
                match self.listing.take().unwrap_or(NodeListing::NotSeen) {
                    NodeListing::Valid(model) => self.apply(model),
                    // Listed but invalid: keep what the core has.
                    NodeListing::Invalid => Vec::new(),
                    NodeListing::NotSeen => {
                        debug!(node = %self.node_name, "own Node not found");
                        self.forget()
                    }
                }
            }
            Event::Apply(node) => {
                metrics.watch_events.inc();
                match self.convert(&node, metrics) {
                    Some(model) => self.apply(model),
                    None => Vec::new(),
                }
            }
            Event::Delete(node) => {
                metrics.watch_events.inc();
                if node.meta().name.as_deref() == Some(self.node_name.as_str()) {
                    self.forget()
                } else {
                    Vec::new()
                }
            }
        }
    }
}

/// The receiving side is gone.
struct Closed;

/// Logs a watch error without flooding: the first of a streak and every tenth at warn
/// (a 410 Gone at info: it is routine), the others at debug.
fn log_watch_error(kind: &'static str, error: &watcher::Error, streak: u64) {
    if let watcher::Error::WatchError(status) = error
        && status.code == 410
    {
        info!(kind, "resourceVersion expired (410 Gone): relisting");
        return;
    }
    if streak == 1 || streak.is_multiple_of(10) {
        warn!(kind, %error, consecutive_errors = streak, "watch failed; retrying with backoff");
    } else {
        debug!(kind, %error, consecutive_errors = streak, "watch failed; retrying with backoff");
    }
}

/// Drives one watch stream: hands every event to `on_event` and forwards the result.
/// Returns when the receiver is gone (or, never in practice, the stream ends).
async fn drive<K, S>(
    kind: &'static str,
    stream: S,
    mut on_event: impl FnMut(Event<K>, &KindMetrics) -> Vec<ClusterEvent>,
    events: mpsc::Sender<ClusterEvent>,
    metrics: &KindMetrics,
) -> Result<(), Closed>
where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut streak = 0u64;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if streak > 0 {
                    info!(kind, errors = streak, "watch recovered");
                    streak = 0;
                }
                for cluster_event in on_event(event, metrics) {
                    metrics.cluster_events.inc();
                    events.send(cluster_event).await.map_err(|_| Closed)?;
                }
            }
            Err(error) => {
                streak += 1;
                metrics.watch_errors.inc();
                log_watch_error(kind, &error, streak);
            }
        }
    }
    Ok(())
}

/// The watch stream of one kind: list+watch with backoff, managed fields dropped.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    watcher::watcher(api, config)
        .modify(|object: &mut K| object.managed_fields_mut().clear())
        .default_backoff()
}

/// Watches Services, EndpointSlices and this node's Node and sends what changes to
/// `events`, until the receiver is dropped. API errors never end it: they are retried
/// with backoff and counted in `metrics`.
pub async fn run_kube_source(
    client: Client,
    config: KubeSourceConfig,
    events: mpsc::Sender<ClusterEvent>,
    metrics: Arc<SourceMetrics>,
) -> Result<(), KubeSourceError> {
    if config.node_name.is_empty() {
        return Err(KubeSourceError::Config("the node name is empty".to_owned()));
    }
    if config.node_name.contains([',', '=', '!', '\\']) {
        return Err(KubeSourceError::Config(format!(
            "node name {:?} is not a valid Kubernetes name",
            config.node_name
        )));
    }
    let mut proxied = watcher::Config::default()
        .labels(PROXY_LABEL_SELECTOR)
        .page_size(config.list_page_size.max(1));
    if let Some(timeout) = config.watch_timeout_s {
        proxied = proxied.timeout(timeout);
    }
    let mut own_node =
        watcher::Config::default().fields(&format!("metadata.name={}", config.node_name));
    if let Some(timeout) = config.watch_timeout_s {
        own_node = own_node.timeout(timeout);
    }
    info!(
        node = %config.node_name,
        label_selector = PROXY_LABEL_SELECTOR,
        "watching Services, EndpointSlices and this node's Node"
    );

    let mut services = KindSync::<Service>::new();
    let mut slices = KindSync::<EndpointSlice>::new();
    let mut node = NodeSync::new(config.node_name.clone());
    let watch_services = drive(
        "Service",
        watch(Api::<Service>::all(client.clone()), proxied.clone()),
        |event, metrics| services.on_event(event, metrics),
        events.clone(),
        &metrics.services,
    );
    let watch_slices = drive(
        "EndpointSlice",
        watch(Api::<EndpointSlice>::all(client.clone()), proxied),
        |event, metrics| slices.on_event(event, metrics),
        events.clone(),
        &metrics.slices,
    );
    let watch_node = drive(
        "Node",
        watch(Api::<Node>::all(client), own_node),
        |event, metrics| node.on_event(event, metrics),
        events.clone(),
        &metrics.nodes,
    );
    tokio::select! {
        _ = events.closed() => {}
        _ = futures::future::try_join3(watch_services, watch_slices, watch_node) => {}
    }
    info!("event receiver gone: Kubernetes source stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn service(name: &str, spec: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo", "resourceVersion": "1"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn web(port: u16) -> Service {
        service(
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": port}]}),
        )
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("demo", name)
    }

    fn model(svc: &Service) -> ServiceModel {
        ServiceModel::from_k8s(svc).unwrap().unwrap()
    }

    #[test]
    fn list_is_buffered_until_init_done() {
        let metrics = KindMetrics::default();
        let mut sync = KindSync::<Service>::new();
        let bad = service(
            "bad",
            json!({"clusterIP": "10.96.0.11", "sessionAffinity": "Cookie"}),
        );
        let headless = service("headless", json!({"clusterIP": "None"}));
        assert!(sync.on_event(Event::Init, &metrics).is_empty());
        for object in [web(80), bad, headless] {
            assert!(sync.on_event(Event::InitApply(object), &metrics).is_empty());
        }
        assert!(!metrics.is_synced());
        assert_eq!(
            sync.on_event(Event::InitDone, &metrics),
            vec![ClusterEvent::ServicesListed {
                services: vec![model(&web(80))],
                invalid: vec![key("bad")],
            }]
        );
        assert!(metrics.is_synced());
        assert_eq!(metrics.invalid_objects.get(), 1);
        assert_eq!(metrics.relists.get(), 0);
    }

    #[test]
    fn apply_delete_and_dedup() {
        let metrics = KindMetrics::default();
        let mut sync = KindSync::<Service>::new();
        sync.on_event(Event::Init, &metrics);
        sync.on_event(Event::InitDone, &metrics);

        assert_eq!(
            sync.on_event(Event::Apply(web(80)), &metrics),
            vec![ClusterEvent::ServiceApplied(model(&web(80)))]
        );
        // Same model (only metadata changed): nothing new for the core.
        let mut annotated = web(80);
        annotated.metadata.annotations = Some([("a".to_owned(), "b".to_owned())].into());
        assert!(sync.on_event(Event::Apply(annotated), &metrics).is_empty());
        // Invalid update: counted, nothing sent, last good version stays.
        let bad = service(
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 0}]}),
        );
        assert!(sync.on_event(Event::Apply(bad), &metrics).is_empty());
        assert_eq!(metrics.invalid_objects.get(), 1);
        assert_eq!(
            sync.on_event(Event::Apply(web(81)), &metrics),
            vec![ClusterEvent::ServiceApplied(model(&web(81)))]
        );
        // Becomes ExternalName: deleted for the core, once.
        let external = service(
            "web",
            json!({"type": "ExternalName", "externalName": "x.example"}),
        );
        assert_eq!(
            sync.on_event(Event::Apply(external.clone()), &metrics),
            vec![ClusterEvent::ServiceDeleted(key("web"))]
        );
        assert!(
            sync.on_event(Event::Apply(external.clone()), &metrics)
                .is_empty()
        );
        assert!(sync.on_event(Event::Delete(external), &metrics).is_empty());
        sync.on_event(Event::Apply(web(80)), &metrics);
        assert_eq!(
            sync.on_event(Event::Delete(web(80)), &metrics),
            vec![ClusterEvent::ServiceDeleted(key("web"))]
        );
    }

    #[test]
    fn relist_keeps_last_good_version_of_invalid_objects() {
        let metrics = KindMetrics::default();
        let mut sync = KindSync::<Service>::new();
        sync.on_event(Event::Init, &metrics);
        sync.on_event(Event::InitApply(web(80)), &metrics);
        sync.on_event(Event::InitDone, &metrics);

        let bad = service(
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 0}]}),
        );
        sync.on_event(Event::Init, &metrics);
        sync.on_event(Event::InitApply(bad), &metrics);
        assert_eq!(
            sync.on_event(Event::InitDone, &metrics),
            vec![ClusterEvent::ServicesListed {
                services: vec![],
                invalid: vec![key("web")]
            }]
        );
        assert_eq!(metrics.relists.get(), 1);
        // The core still has web:80, so an identical update is not resent but a
        // deletion is.
        assert!(sync.on_event(Event::Apply(web(80)), &metrics).is_empty());
        assert_eq!(
            sync.on_event(Event::Delete(web(80)), &metrics),
            vec![ClusterEvent::ServiceDeleted(key("web"))]
        );
    }

    fn node(name: &str, zone: Option<&str>) -> Node {
        let labels = zone
            .map(|z| json!({"topology.kubernetes.io/zone": z}))
            .unwrap_or(json!({}));
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    #[test]
    fn node_events() {
        let metrics = KindMetrics::default();
        let mut sync = NodeSync::new("n1".to_owned());
        sync.on_event(Event::Init, &metrics);
        // Never seen: nothing to say, the core already uses NodeModel::named.
        assert!(sync.on_event(Event::InitDone, &metrics).is_empty());
        assert!(metrics.is_synced());
        let zone_a = NodeModel {
            name: "n1".into(),
            zone: Some("a".into()),
        };
        assert_eq!(
            sync.on_event(Event::Apply(node("n1", Some("a"))), &metrics),
            vec![ClusterEvent::NodeApplied(zone_a.clone())]
        );
        // Heartbeat-like update: same model, nothing sent.
        assert!(
            sync.on_event(Event::Apply(node("n1", Some("a"))), &metrics)
                .is_empty()
        );
        assert!(
            sync.on_event(Event::Apply(node("n2", Some("b"))), &metrics)
                .is_empty()
        );
        // Gone from a relist: labels no longer apply.
        sync.on_event(Event::Init, &metrics);
        assert_eq!(
            sync.on_event(Event::InitDone, &metrics),
            vec![ClusterEvent::NodeApplied(NodeModel::named("n1"))]
        );
        sync.on_event(Event::Apply(node("n1", Some("a"))), &metrics);
        assert_eq!(
            sync.on_event(Event::Delete(node("n1", Some("a"))), &metrics),
            vec![ClusterEvent::NodeApplied(NodeModel::named("n1"))]
        );
    }

    #[tokio::test]
    async fn client_from_an_explicit_kubeconfig() {
        let dir = std::env::temp_dir().join(format!("socklb-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        // An https server: building the client builds the rustls connector (ring
        // provider). Nothing is contacted.
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             users:\n- name: test\n  user:\n    token: abc\n",
        )
        .unwrap();
        let client = client_from_env(Some(path.clone())).await;
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(client.is_ok(), "{:?}", client.err());

        let missing = client_from_env(Some(dir.join("missing"))).await;
        assert!(
            matches!(missing, Err(KubeSourceError::Kubeconfig { .. })),
            "{:?}",
            missing.err()
        );
    }

    #[tokio::test]
    async fn rejects_an_unusable_node_name() {
        let client = Client::try_from(Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let (tx, _rx) = mpsc::channel(1);
        for name in ["", "a,b"] {
            let result = run_kube_source(
                client.clone(),
                KubeSourceConfig::new(name),
                tx.clone(),
                Arc::default(),
            )
            .await;
            assert!(
                matches!(result, Err(KubeSourceError::Config(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn metrics_render_per_kind() {
        let all = crate::metrics::Metrics::new();
        let metrics = SourceMetrics::new(&all.kube);
        metrics.services.invalid_objects.inc_by(2);
        metrics.slices.mark_synced();
        let out = all.encode();
        assert!(
            out.contains("socklb_kube_invalid_objects_total{kind=\"service\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("socklb_kube_synced{kind=\"endpointslice\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("socklb_kube_synced{kind=\"service\"} 0\n"),
            "{out}"
        );
        assert_eq!(out.matches("# TYPE socklb_kube_relists counter").count(), 1);
    }
}
