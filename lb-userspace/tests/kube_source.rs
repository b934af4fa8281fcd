//! The Kubernetes source against a fake API server that speaks the real list/watch
//! protocol (tests/kube_fake): which ClusterEvents come out of lists, watch events,
//! relists, dropped connections and an unreachable server. No root, no kernel.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail loudly on unexpected errors"
)]

mod kube_fake;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube_fake::{FakeApiServer, RequestRecord, Resource};
use serde_json::{Value, json};
use socklb::sources::kube::{
    KubeSourceConfig, PROXY_LABEL_SELECTOR, SourceMetrics, run_kube_source,
};
use socklb_core::{
    events::{ClusterEvent, ObjectKey},
    model::{NodeModel, ServiceModel, SliceModel},
};
use tokio::{sync::mpsc, task::JoinHandle};

const NODE: &str = "node-a";
/// Longest wait for one expected event. Generous: the watcher's backoff after an error
/// is 0.8-1.6 s, then 1.6-3.2 s.
const WAIT: Duration = Duration::from_secs(8);

fn service(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": name},
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    })
}

fn endpoint(ip: &str, ready: bool) -> Value {
    json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": ready, "terminating": false},
        "nodeName": NODE,
        "targetRef": {"kind": "Pod", "namespace": "demo", "name": format!("pod-{ip}")},
    })
}

fn slice(name: &str, service: &str, endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "demo",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn node(name: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn with_label(mut object: Value, key: &str, value: &str) -> Value {
    object["metadata"]["labels"][key] = json!(value);
    object
}

/// The model of an object as the test wrote it (no managed fields, no server fields
/// but the creationTimestamp the fake server sets).
fn service_model(object: &Value) -> ServiceModel {
    let mut object = object.clone();
    if object["metadata"].get("creationTimestamp").is_none() {
        object["metadata"]["creationTimestamp"] = json!(kube_fake::TIMESTAMP);
    }
    let svc: Service = serde_json::from_value(object).unwrap();
    ServiceModel::from_k8s(&svc).unwrap().unwrap()
}

fn slice_model(object: &Value) -> SliceModel {
    let slice: EndpointSlice = serde_json::from_value(object.clone()).unwrap();
    SliceModel::from_k8s(&slice).unwrap().unwrap()
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("demo", name)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Service,
    Slice,
    Node,
}

fn kind_of(event: &ClusterEvent) -> Kind {
    match event {
        ClusterEvent::ServiceApplied(_)
        | ClusterEvent::ServiceDeleted(_)
        | ClusterEvent::ServicesListed { .. } => Kind::Service,
        ClusterEvent::SliceApplied(_)
        | ClusterEvent::SliceDeleted(_)
        | ClusterEvent::SlicesListed { .. } => Kind::Slice,
        ClusterEvent::NodeApplied(_) => Kind::Node,
        other => panic!("the Kubernetes source never sends {other:?}"),
    }
}

/// A running source and its output, sorted per kind: the order between kinds depends
/// on three independent watch streams, the order within a kind does not.
struct Source {
    rx: mpsc::Receiver<ClusterEvent>,
    metrics: Arc<SourceMetrics>,
    task: JoinHandle<()>,
    pending: HashMap<Kind, VecDeque<ClusterEvent>>,
}

impl Source {
    fn start(server: &FakeApiServer) -> Source {
        Source::start_with(server, KubeSourceConfig::new(NODE))
    }

    fn start_with(server: &FakeApiServer, config: KubeSourceConfig) -> Source {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "socklb=debug".into()),
            )
            .with_test_writer()
            .try_init();
        let client = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap()))
            .expect("client for the fake API server");
        let (tx, rx) = mpsc::channel(64);
        let metrics = Arc::new(SourceMetrics::default());
        let task = tokio::spawn({
            let metrics = metrics.clone();
            async move {
                run_kube_source(client, config, tx, metrics)
                    .await
                    .expect("source ends cleanly");
            }
        });
        Source {
            rx,
            metrics,
            task,
            pending: HashMap::new(),
        }
    }

    /// The next event of `kind`; panics after `WAIT`.
    async fn next(&mut self, kind: Kind) -> ClusterEvent {
        if let Some(event) = self.pending.get_mut(&kind).and_then(VecDeque::pop_front) {
            return event;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(event)) if kind_of(&event) == kind => return event,
                Ok(Some(event)) => self
                    .pending
                    .entry(kind_of(&event))
                    .or_default()
                    .push_back(event),
                Ok(None) => panic!("source stopped while waiting for a {kind:?} event"),
                Err(_) => panic!(
                    "no {kind:?} event within {WAIT:?}; other events: {:?}",
                    self.pending
                ),
            }
        }
    }

    /// Waits for the initial lists of Services and EndpointSlices and for the three
    /// watches to be open on `server` (so that what the test does next reaches a
    /// watch); returns the lists.
    async fn synced(&mut self, server: &FakeApiServer) -> (ClusterEvent, ClusterEvent) {
        let lists = self.initial_sync().await;
        server.wait_for_open_watches(3, WAIT).await;
        lists
    }

    /// Waits for the initial lists of Services and EndpointSlices; returns them.
    async fn initial_sync(&mut self) -> (ClusterEvent, ClusterEvent) {
        let services = self.next(Kind::Service).await;
        let slices = self.next(Kind::Slice).await;
        assert!(
            matches!(services, ClusterEvent::ServicesListed { .. }),
            "{services:?}"
        );
        assert!(
            matches!(slices, ClusterEvent::SlicesListed { .. }),
            "{slices:?}"
        );
        (services, slices)
    }
}

fn listed_services(event: ClusterEvent) -> (Vec<ServiceModel>, Vec<ObjectKey>) {
    match event {
        ClusterEvent::ServicesListed { services, invalid } => (services, invalid),
        other => panic!("expected ServicesListed, got {other:?}"),
    }
}

fn listed_slices(event: ClusterEvent) -> (Vec<SliceModel>, Vec<ObjectKey>) {
    match event {
        ClusterEvent::SlicesListed { slices, invalid } => (slices, invalid),
        other => panic!("expected SlicesListed, got {other:?}"),
    }
}

fn names<'a>(items: impl IntoIterator<Item = &'a ServiceModel>) -> Vec<&'a str> {
    items.into_iter().map(|s| s.name.as_str()).collect()
}

fn resource_version_of(request: &RequestRecord) -> u64 {
    request
        .param("resourceVersion")
        .unwrap_or("")
        .parse()
        .unwrap_or(0)
}

#[tokio::test]
async fn lists_then_watch_events() {
    let server = FakeApiServer::start_new().await;
    let web = service("web", "10.96.0.10");
    let web_abc = slice(
        "web-abc",
        "web",
        vec![endpoint("10.244.0.11", true), endpoint("10.244.0.12", true)],
    );
    server.apply(web.clone());
    server.apply(web_abc.clone());
    server.apply(node(NODE, "zone-a"));
    server.apply(node("node-b", "zone-b"));

    let mut source = Source::start(&server);
    let (services, slices) = source.initial_sync().await;
    assert_eq!(
        listed_services(services),
        (vec![service_model(&web)], vec![])
    );
    assert_eq!(listed_slices(slices), (vec![slice_model(&web_abc)], vec![]));
    assert_eq!(
        source.next(Kind::Node).await,
        ClusterEvent::NodeApplied(NodeModel {
            name: NODE.into(),
            zone: Some("zone-a".into())
        })
    );
    assert!(source.metrics.services_synced() && source.metrics.slices_synced());

    // Scale-up: one more endpoint.
    let scaled = slice(
        "web-abc",
        "web",
        vec![
            endpoint("10.244.0.11", true),
            endpoint("10.244.0.12", true),
            endpoint("10.244.0.13", true),
        ],
    );
    server.apply(scaled.clone());
    let event = source.next(Kind::Slice).await;
    assert_eq!(event, ClusterEvent::SliceApplied(slice_model(&scaled)));
    let ClusterEvent::SliceApplied(model) = event else {
        unreachable!()
    };
    assert_eq!(model.endpoints.len(), 3);

    // Readiness flip.
    let flipped = slice(
        "web-abc",
        "web",
        vec![
            endpoint("10.244.0.11", true),
            endpoint("10.244.0.12", false),
            endpoint("10.244.0.13", true),
        ],
    );
    server.apply(flipped.clone());
    let ClusterEvent::SliceApplied(model) = source.next(Kind::Slice).await else {
        panic!("expected SliceApplied")
    };
    assert_eq!(model, slice_model(&flipped));
    assert!(!model.endpoints[1].ready && model.endpoints[0].ready);

    // An update that changes nothing the data path uses (a status-only write) is not
    // forwarded; the zone change of our node is, another node's is not.
    let mut status_only = flipped.clone();
    status_only["metadata"]["annotations"] =
        json!({"endpoints.kubernetes.io/last-change-trigger-time": "2025-01-01T00:00:01Z"});
    server.apply(status_only);
    server.apply(node("node-b", "zone-x"));
    server.apply(node(NODE, "zone-c"));
    assert_eq!(
        source.next(Kind::Node).await,
        ClusterEvent::NodeApplied(NodeModel {
            name: NODE.into(),
            zone: Some("zone-c".into())
        })
    );

    // Deletions.
    server.delete(Resource::EndpointSlices, "demo", "web-abc");
    assert_eq!(
        source.next(Kind::Slice).await,
        ClusterEvent::SliceDeleted(key("web-abc"))
    );
    server.delete(Resource::Services, "demo", "web");
    assert_eq!(
        source.next(Kind::Service).await,
        ClusterEvent::ServiceDeleted(key("web"))
    );
    server.delete(Resource::Nodes, "", NODE);
    assert_eq!(
        source.next(Kind::Node).await,
        ClusterEvent::NodeApplied(NodeModel::named(NODE))
    );

    // What was asked: kube-proxy's selector for both kinds, a field selector for the Node.
    let requests = server.requests();
    for path in [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ] {
        assert!(
            requests
                .iter()
                .filter(|r| r.path == path)
                .all(|r| r.param("labelSelector") == Some(PROXY_LABEL_SELECTOR)),
            "{requests:#?}"
        );
    }
    let node_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/api/v1/nodes")
        .collect();
    assert!(!node_requests.is_empty());
    for request in node_requests {
        assert_eq!(request.param("fieldSelector"), Some("metadata.name=node-a"));
    }
    let watch = requests.iter().find(|r| r.is_watch()).unwrap();
    assert_eq!(watch.param("allowWatchBookmarks"), Some("true"));

    let m = &source.metrics;
    assert_eq!(m.services.relists.get(), 0);
    assert_eq!(m.slices.invalid_objects.get(), 0);
    assert!(m.slices.watch_events.get() >= 5);
}

#[tokio::test]
async fn objects_not_proxied_never_appear_or_are_deleted() {
    let server = FakeApiServer::start_new().await;
    let web = service("web", "10.96.0.10");
    server.apply(web.clone());
    // Headless Service (passes the selector; not proxied) and its labelled slice.
    let mut headless = service("db", "None");
    headless["spec"]["clusterIPs"] = json!(["None"]);
    server.apply(headless);
    server.apply(with_label(
        slice("db-1", "db", vec![endpoint("10.244.1.1", true)]),
        "service.kubernetes.io/headless",
        "",
    ));
    // Owned by another proxy: the Service and its slice are selected out by the server.
    server.apply(with_label(
        service("other", "10.96.0.20"),
        "service.kubernetes.io/service-proxy-name",
        "other-proxy",
    ));
    server.apply(with_label(
        slice("other-1", "other", vec![endpoint("10.244.2.1", true)]),
        "service.kubernetes.io/service-proxy-name",
        "other-proxy",
    ));

    let mut source = Source::start(&server);
    let (services, slices) = source.initial_sync().await;
    assert_eq!(
        listed_services(services),
        (vec![service_model(&web)], vec![])
    );
    assert_eq!(listed_slices(slices), (vec![], vec![]));

    // New objects of the same kinds: nothing; a sentinel proves nothing came before it.
    let mut headless2 = service("db2", "None");
    headless2["spec"]["clusterIPs"] = json!(["None"]);
    server.apply(headless2);
    server.apply(with_label(
        slice("db2-1", "db2", vec![endpoint("10.244.1.2", true)]),
        "service.kubernetes.io/headless",
        "",
    ));
    server.apply(with_label(
        service("other2", "10.96.0.21"),
        "service.kubernetes.io/service-proxy-name",
        "other-proxy",
    ));
    let sentinel = service("sentinel", "10.96.0.99");
    server.apply(sentinel.clone());
    assert_eq!(
        source.next(Kind::Service).await,
        ClusterEvent::ServiceApplied(service_model(&sentinel))
    );
    let sentinel_slice = slice("sentinel-1", "sentinel", vec![endpoint("10.244.9.9", true)]);
    server.apply(sentinel_slice.clone());
    assert_eq!(
        source.next(Kind::Slice).await,
        ClusterEvent::SliceApplied(slice_model(&sentinel_slice))
    );

    // Another proxy takes the Service over: it leaves the selection (the server sends
    // DELETED) and the core forgets it.
    server.apply(with_label(
        web.clone(),
        "service.kubernetes.io/service-proxy-name",
        "other-proxy",
    ));
    assert_eq!(
        source.next(Kind::Service).await,
        ClusterEvent::ServiceDeleted(key("web"))
    );
    // Changed to ExternalName: still selected, no longer proxied.
    server.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "sentinel", "namespace": "demo"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com"},
    }));
    assert_eq!(
        source.next(Kind::Service).await,
        ClusterEvent::ServiceDeleted(key("sentinel"))
    );
    // The slice of a Service that became headless gets the label: DELETED for us.
    server.apply(with_label(
        sentinel_slice,
        "service.kubernetes.io/headless",
        "",
    ));
    assert_eq!(
        source.next(Kind::Slice).await,
        ClusterEvent::SliceDeleted(key("sentinel-1"))
    );
}

#[tokio::test]
async fn invalid_objects_are_counted_and_skipped() {
    let server = FakeApiServer::start_new().await;
    let good = service("good", "10.96.0.10");
    // A value this agent does not know (a newer API server, say).
    let mut bad = service("bad", "10.96.0.11");
    bad["spec"]["internalTrafficPolicy"] = json!("PreferNode");
    let bad_slice = slice("bad-1", "bad", vec![endpoint("10.244.0.999", true)]);
    server.apply(good.clone());
    server.apply(bad);
    server.apply(bad_slice);

    let mut source = Source::start(&server);
    let (services, slices) = source.initial_sync().await;
    assert_eq!(
        listed_services(services),
        (vec![service_model(&good)], vec![key("bad")])
    );
    assert_eq!(listed_slices(slices), (vec![], vec![key("bad-1")]));
    assert_eq!(source.metrics.services.invalid_objects.get(), 1);
    assert_eq!(source.metrics.slices.invalid_objects.get(), 1);

    // A good Service turns invalid: counted, nothing sent (the core keeps the last good
    // version); the next valid change comes through.
    let mut broken = good.clone();
    broken["spec"]["sessionAffinity"] = json!("Cookie");
    server.apply(broken);
    let sentinel = service("sentinel", "10.96.0.99");
    server.apply(sentinel.clone());
    assert_eq!(
        source.next(Kind::Service).await,
        ClusterEvent::ServiceApplied(service_model(&sentinel))
    );
    assert_eq!(source.metrics.services.invalid_objects.get(), 2);

    // Fixed again: identical to the last good version the core kept, so nothing to
    // send; a real change is sent.
    server.apply(good.clone());
    let mut changed = good.clone();
    changed["spec"]["ports"][0]["port"] = json!(81);
    server.apply(changed.clone());
    assert_eq!(
        source.next(Kind::Service).await,
        ClusterEvent::ServiceApplied(service_model(&changed))
    );
    // Deleting an object that was only ever invalid tells the core nothing.
    server.delete(Resource::EndpointSlices, "demo", "bad-1");
    let ok_slice = slice("good-1", "good", vec![endpoint("10.244.0.1", true)]);
    server.apply(ok_slice.clone());
    assert_eq!(
        source.next(Kind::Slice).await,
        ClusterEvent::SliceApplied(slice_model(&ok_slice))
    );
}

#[tokio::test]
async fn managed_fields_are_dropped_before_conversion() {
    let server = FakeApiServer::start_new().await;
    // Managed fields as a real cluster has them, several managers, odd content.
    let mut web = service("web", "10.96.0.10");
    web["metadata"]["managedFields"] = json!([
        {"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
         "time": "2025-01-01T00:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
         "time": "2025-01-01T00:00:01Z", "fieldsType": "FieldsV1", "subresource": "status",
         "fieldsV1": {"f:status": {"f:loadBalancer": {"f:ingress": {}}}}},
    ]);
    server.apply(web.clone());
    let web_abc = slice("web-abc", "web", vec![endpoint("10.244.0.11", true)]);
    server.apply(web_abc.clone());
    assert!(
        server
            .get(Resource::EndpointSlices, "demo", "web-abc")
            .unwrap()["metadata"]["managedFields"]
            .is_array(),
        "the server tracks managed fields on every write"
    );

    let mut source = Source::start(&server);
    let (services, slices) = source.initial_sync().await;
    let mut plain = web.clone();
    plain["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    assert_eq!(listed_services(services).0, vec![service_model(&plain)]);
    assert_eq!(listed_slices(slices).0, vec![slice_model(&web_abc)]);
}

#[tokio::test]
async fn expired_watch_relists_with_still_wanted_objects() {
    let server = FakeApiServer::start_new().await;
    let (a, b) = (service("a", "10.96.0.1"), service("b", "10.96.0.2"));
    server.apply(a.clone());
    server.apply(b.clone());
    let a_1 = slice("a-1", "a", vec![endpoint("10.244.0.1", true)]);
    server.apply(a_1.clone());

    let mut source = Source::start(&server);
    source.synced(&server).await;
    let mark = server.requests().len();

    // 410 Gone on every open watch: the watcher relists and delivers the full set
    // again, still containing everything that is still wanted.
    server.expire_watches();
    let (services, invalid) = listed_services(source.next(Kind::Service).await);
    assert_eq!((names(&services), invalid), (vec!["a", "b"], vec![]));
    assert_eq!(
        listed_slices(source.next(Kind::Slice).await).0,
        vec![slice_model(&a_1)]
    );
    assert_eq!(source.metrics.services.relists.get(), 1);
    assert_eq!(source.metrics.slices.relists.get(), 1);
    assert!(source.metrics.services.watch_errors.get() >= 1);
    let relist = server
        .wait_for_request(mark, WAIT, |r| {
            r.path == "/api/v1/services" && !r.is_watch()
        })
        .await;
    assert_eq!(relist.param("labelSelector"), Some(PROXY_LABEL_SELECTOR));

    // After the relist the watch goes on as before.
    let c = service("c", "10.96.0.3");
    server.apply(c.clone());
    assert_eq!(
        source.next(Kind::Service).await,
        ClusterEvent::ServiceApplied(service_model(&c))
    );
}

#[tokio::test]
async fn changes_while_unreachable_arrive_by_relist_after_410() {
    let server = FakeApiServer::start_new().await;
    let (a, b) = (service("a", "10.96.0.1"), service("b", "10.96.0.2"));
    server.apply(a.clone());
    server.apply(b.clone());
    let mut source = Source::start(&server);
    let (services, _) = source.synced(&server).await;
    assert_eq!(names(&listed_services(services).0), vec!["a", "b"]);

    // The API server goes away; meanwhile b is deleted, c created, and the history
    // compacted, so the watch cannot resume from where it was: 410, relist.
    server.stop().await;
    server.delete(Resource::Services, "demo", "b");
    server.apply(service("c", "10.96.0.3"));
    server.compact();
    server.start();
    let (services, _) = listed_services(source.next(Kind::Service).await);
    assert_eq!(names(&services), vec!["a", "c"]);
    assert_eq!(source.metrics.services.relists.get(), 1);
}

#[tokio::test]
async fn dropped_connection_resumes_without_relist() {
    let server = FakeApiServer::start_new().await;
    let web = service("web", "10.96.0.10");
    server.apply(web.clone());
    server.apply(slice("web-abc", "web", vec![endpoint("10.244.0.11", true)]));
    let mut source = Source::start(&server);
    source.synced(&server).await;
    let synced_rv = server.resource_version();
    let mark = server.requests().len();

    // Connections die; changes made meanwhile arrive once the watch is re-established
    // from the last resourceVersion (the server replays its history).
    server.drop_connections().await;
    let scaled = slice(
        "web-abc",
        "web",
        vec![endpoint("10.244.0.11", true), endpoint("10.244.0.12", true)],
    );
    server.apply(scaled.clone());
    assert_eq!(
        source.next(Kind::Slice).await,
        ClusterEvent::SliceApplied(slice_model(&scaled))
    );
    server.delete(Resource::Services, "demo", "web");
    assert_eq!(
        source.next(Kind::Service).await,
        ClusterEvent::ServiceDeleted(key("web"))
    );

    let rewatch = server
        .wait_for_request(mark, WAIT, |r| {
            r.path == "/apis/discovery.k8s.io/v1/endpointslices"
        })
        .await;
    assert!(
        rewatch.is_watch(),
        "resumed with a watch, not a list: {rewatch:?}"
    );
    assert_eq!(resource_version_of(&rewatch), synced_rv);
    assert_eq!(source.metrics.slices.relists.get(), 0);
    assert_eq!(source.metrics.services.relists.get(), 0);
}

#[tokio::test]
async fn unreachable_at_start_then_catches_up() {
    let server = FakeApiServer::unreachable();
    let web = service("web", "10.96.0.10");
    server.apply(web.clone());
    server.apply(node(NODE, "zone-a"));
    let mut source = Source::start(&server);

    // Wait (bounded) until the source has failed at least once: not synced.
    let deadline = tokio::time::Instant::now() + WAIT;
    while source.metrics.services.watch_errors.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection error seen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!source.metrics.services_synced());
    assert!(!source.metrics.slices_synced());

    server.start();
    let (services, _) = source.initial_sync().await;
    assert_eq!(listed_services(services).0, vec![service_model(&web)]);
    assert_eq!(
        source.next(Kind::Node).await,
        ClusterEvent::NodeApplied(NodeModel {
            name: NODE.into(),
            zone: Some("zone-a".into())
        })
    );
    assert!(source.metrics.services_synced() && source.metrics.slices_synced());
    // The first complete list is not a relist.
    assert_eq!(source.metrics.services.relists.get(), 0);
}

#[tokio::test]
async fn bookmark_lets_the_watch_resume_after_compaction() {
    let server = FakeApiServer::start_new().await;
    server.apply(service("web", "10.96.0.10"));
    let mut source = Source::start(&server);
    source.synced(&server).await;

    // Churn this watch does not see (another proxy's Services), then compaction: only a
    // bookmark tells the client how far the history went.
    for i in 0..5 {
        server.apply(with_label(
            service(&format!("other-{i}"), &format!("10.96.1.{i}")),
            "service.kubernetes.io/service-proxy-name",
            "other-proxy",
        ));
    }
    server.compact();
    let bookmark_rv = server.send_bookmark();
    let mark = server.requests().len();
    // The watches end properly (as at their timeoutSeconds): the client re-watches.
    server.end_watches();
    let rewatch = server
        .wait_for_request(mark, WAIT, |r| r.path == "/api/v1/services")
        .await;
    assert!(rewatch.is_watch(), "{rewatch:?}");
    assert_eq!(resource_version_of(&rewatch), bookmark_rv);

    let new = service("new", "10.96.0.11");
    server.apply(new.clone());
    assert_eq!(
        source.next(Kind::Service).await,
        ClusterEvent::ServiceApplied(service_model(&new)),
        "no relist in between"
    );
    assert_eq!(source.metrics.services.relists.get(), 0);
}

#[tokio::test]
async fn paginated_lists_are_one_listed_event() {
    let server = FakeApiServer::start_new().await;
    let mut expected = Vec::new();
    for i in 0..5 {
        let svc = service(&format!("svc-{i}"), &format!("10.96.0.{}", i + 1));
        server.apply(svc.clone());
        expected.push(service_model(&svc));
        server.apply(slice(
            &format!("svc-{i}-x"),
            &format!("svc-{i}"),
            vec![endpoint(&format!("10.244.0.{}", i + 1), true)],
        ));
    }
    let mut config = KubeSourceConfig::new(NODE);
    config.list_page_size = 2;
    let mut source = Source::start_with(&server, config);
    let (services, slices) = source.initial_sync().await;
    assert_eq!(listed_services(services).0, expected);
    assert_eq!(listed_slices(slices).0.len(), 5);
    let pages = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/services" && !r.is_watch())
        .collect::<Vec<_>>();
    assert_eq!(pages.len(), 3, "5 objects in pages of 2: {pages:#?}");
    assert!(pages.iter().all(|r| r.param("limit") == Some("2")));
    assert!(pages[1].param("continue").is_some() && pages[2].param("continue").is_some());
}

#[tokio::test]
async fn stops_when_the_receiver_is_dropped() {
    let server = FakeApiServer::start_new().await;
    server.apply(service("web", "10.96.0.10"));
    let mut source = Source::start(&server);
    source.initial_sync().await;
    let Source { rx, task, .. } = source;
    drop(rx);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("source stops when its receiver is gone")
        .expect("source task did not panic");
}

#[tokio::test]
async fn undecodable_object_in_a_watch_is_skipped_without_panic() {
    let server = FakeApiServer::start_new().await;
    let mut source = Source::start(&server);
    source.synced(&server).await;

    // Not even a Service as k8s-openapi types it (port is a string): the watch line
    // cannot be decoded. It is counted as a watch error; later events still arrive.
    let mut garbled = service("garbled", "10.96.0.5");
    garbled["spec"]["ports"][0]["port"] = json!("eighty");
    server.apply(garbled);
    let web = service("web", "10.96.0.10");
    server.apply(web.clone());
    assert_eq!(
        source.next(Kind::Service).await,
        ClusterEvent::ServiceApplied(service_model(&web))
    );
    assert!(source.metrics.services.watch_errors.get() >= 1);
}
