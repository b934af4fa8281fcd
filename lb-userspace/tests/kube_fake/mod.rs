//! A fake Kubernetes API server for tests: an in-process HTTP/1.1 server on 127.0.0.1
//! that speaks the real list/watch protocol with real Kubernetes JSON, for Services
//! (`/api/v1/services`), discovery.k8s.io/v1 EndpointSlices
//! (`/apis/discovery.k8s.io/v1/endpointslices`) and Nodes (`/api/v1/nodes`), cluster-wide
//! or per namespace (`/api/v1/namespaces/{ns}/services`), and single objects by name.
//!
//! It behaves as the API server does and knows nothing of its client:
//! - one global resourceVersion counter; every write sets `metadata.resourceVersion`,
//!   `uid`, `creationTimestamp`, `generation` and (like server-side field tracking)
//!   `managedFields`;
//! - lists (`kind: ServiceList` ...) in key order, with `limit`/`continue` pagination
//!   from a consistent snapshot, items without kind/apiVersion as the real server sends
//!   them; a continue token older than the compaction point gets 410 Expired;
//! - `?watch=true&resourceVersion=N` replays the changes after N from its history and
//!   then streams live ones, newline-delimited JSON in a chunked response, ending after
//!   `timeoutSeconds`; N older than the compaction point gets an ERROR event with a 410
//!   Expired Status; `resourceVersion` absent or "0" starts with synthetic ADDED events;
//! - `labelSelector` (`key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (..)`,
//!   `key notin (..)`) and `fieldSelector` (`metadata.name`, `metadata.namespace` with
//!   `=`, `==`, `!=`) filter lists and watches; an object whose change moves it into or
//!   out of a watch's selection is ADDED or DELETED for that watch, as the watch cache
//!   does; unsupported selectors get 400 BadRequest;
//! - BOOKMARK events only to watches that asked with `allowWatchBookmarks=true`.
//!
//! The test drives it: [`FakeApiServer::apply`] / [`FakeApiServer::delete`] objects,
//! [`FakeApiServer::send_bookmark`], [`FakeApiServer::expire_watches`] (410 on every open
//! watch, as after an etcd compaction), [`FakeApiServer::compact`],
//! [`FakeApiServer::end_watches`] (as at timeoutSeconds), [`FakeApiServer::drop_connections`],
//! and [`FakeApiServer::stop`] / [`FakeApiServer::start`] (connection refused while
//! stopped; [`FakeApiServer::unreachable`] starts that way). Every request is logged
//! ([`FakeApiServer::wait_for_request`]).
//!
//! Only tokio and serde_json: other test crates can include this file with `#[path]`.
#![allow(
    dead_code,
    clippy::expect_used,
    reason = "a test helper shared by test crates; it fails loudly on misuse"
)]

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde_json::{Map, Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};

/// The object timestamps the fake server writes (creationTimestamp, managedFields time).
pub const TIMESTAMP: &str = "2025-01-01T00:00:00Z";
/// Longest request head the server reads.
const MAX_HEAD: usize = 64 * 1024;

/// A resource type the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    const ALL: [Resource; 3] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
    ];

    fn group_path(self) -> &'static str {
        match self {
            Resource::Services | Resource::Nodes => "/api/v1",
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Services | Resource::Nodes => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Resource::Nodes)
    }

    fn from_kind(kind: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }
}

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
}

impl RequestRecord {
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch"), Some("true" | "1"))
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

/// A label selector requirement.
#[derive(Clone, Debug)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelReq {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        match self {
            LabelReq::Exists(key) => get(key).is_some(),
            LabelReq::NotExists(key) => get(key).is_none(),
            LabelReq::Equals(key, value) => get(key) == Some(value.as_str()),
            LabelReq::NotEquals(key, value) => get(key) != Some(value.as_str()),
            LabelReq::In(key, values) => get(key).is_some_and(|v| values.iter().any(|x| x == v)),
            LabelReq::NotIn(key, values) => {
                !get(key).is_some_and(|v| values.iter().any(|x| x == v))
            }
        }
    }
}

fn valid_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
}

fn valid_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Splits on commas outside parentheses.
fn split_terms(selector: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
}

fn parse_set(rest: &str) -> Option<Vec<String>> {
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    values
        .iter()
        .all(|v| valid_label_value(v))
        .then_some(values)
}

fn parse_label_selector(selector: &str) -> Result<Vec<LabelReq>, String> {
    if selector.trim().is_empty() {
        return Ok(Vec::new());
    }
    let bad = || format!("unable to parse requirement: invalid label selector {selector:?}");
    let mut reqs = Vec::new();
    for term in split_terms(selector) {
        let term = term.trim();
        let req = if let Some(key) = term.strip_prefix('!') {
            LabelReq::NotExists(key.trim().to_owned())
        } else if let Some((key, value)) = term.split_once("!=") {
            LabelReq::NotEquals(key.trim().to_owned(), value.trim().to_owned())
        } else if let Some((key, value)) = term.split_once("==") {
            LabelReq::Equals(key.trim().to_owned(), value.trim().to_owned())
        } else if let Some((key, value)) = term.split_once('=') {
            LabelReq::Equals(key.trim().to_owned(), value.trim().to_owned())
        } else if let Some((key, rest)) = term.split_once(" notin ") {
            LabelReq::NotIn(key.trim().to_owned(), parse_set(rest).ok_or_else(bad)?)
        } else if let Some((key, rest)) = term.split_once(" in ") {
            LabelReq::In(key.trim().to_owned(), parse_set(rest).ok_or_else(bad)?)
        } else {
            LabelReq::Exists(term.to_owned())
        };
        let (key, value) = match &req {
            LabelReq::Exists(k) | LabelReq::NotExists(k) => (k, None),
            LabelReq::Equals(k, v) | LabelReq::NotEquals(k, v) => (k, Some(v)),
            LabelReq::In(k, _) | LabelReq::NotIn(k, _) => (k, None),
        };
        if !valid_label_key(key) || value.is_some_and(|v| !valid_label_value(v)) {
            return Err(bad());
        }
        reqs.push(req);
    }
    Ok(reqs)
}

/// A field selector requirement: (field, value, equal?).
#[derive(Clone, Debug)]
struct FieldReq {
    field: String,
    value: String,
    equal: bool,
}

fn parse_field_selector(selector: &str) -> Result<Vec<FieldReq>, String> {
    if selector.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut reqs = Vec::new();
    for term in selector.split(',') {
        let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("invalid selector: {term:?}; can't understand it"));
        };
        let field = field.trim();
        if !matches!(field, "metadata.name" | "metadata.namespace") {
            return Err(format!("field label not supported: {field}"));
        }
        reqs.push(FieldReq {
            field: field.to_owned(),
            value: value.trim().to_owned(),
            equal,
        });
    }
    Ok(reqs)
}

/// What a list or watch selects.
#[derive(Clone, Debug)]
struct Filter {
    resource: Resource,
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or("");
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        let labels = meta["labels"].as_object();
        if !self.labels.iter().all(|req| req.matches(labels)) {
            return false;
        }
        self.fields.iter().all(|req| {
            let actual = match req.field.as_str() {
                "metadata.name" => meta["name"].as_str().unwrap_or(""),
                _ => namespace,
            };
            (actual == req.value) == req.equal
        })
    }
}

/// One change in the server's history.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: Resource,
    prev: Option<Value>,
    /// `None`: deleted.
    cur: Option<Value>,
}

/// The watch event a change is for one watch, as the watch cache filters it.
fn event_for(filter: &Filter, change: &Change) -> Option<Value> {
    if change.resource != filter.resource {
        return None;
    }
    let prev_ok = change.prev.as_ref().is_some_and(|o| filter.matches(o));
    let cur_ok = change.cur.as_ref().is_some_and(|o| filter.matches(o));
    match (&change.cur, prev_ok, cur_ok) {
        (Some(cur), _, true) => Some(json!({
            "type": if prev_ok { "MODIFIED" } else { "ADDED" },
            "object": cur,
        })),
        (_, true, false) => {
            // Deleted, or changed out of the selection: the previous state with the
            // change's resourceVersion.
            let mut object = change.prev.clone()?;
            object["metadata"]["resourceVersion"] = json!(change.rv.to_string());
            Some(json!({"type": "DELETED", "object": object}))
        }
        _ => None,
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {},
        "code": code,
    })
}

enum WatchMsg {
    Line(String),
    /// End the stream gracefully (terminating chunk).
    End,
}

struct Subscription {
    filter: Filter,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

/// A list result being paged through.
struct Snapshot {
    rv: u64,
    items: Vec<Value>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Changes at or below this resourceVersion are forgotten.
    compacted_rv: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    history: Vec<Change>,
    subscriptions: Vec<Subscription>,
    snapshots: HashMap<u64, Snapshot>,
    next_id: u64,
    requests: Vec<RequestRecord>,
    connections: Vec<JoinHandle<()>>,
    accept_task: Option<JoinHandle<()>>,
    /// Bound but not listening while stopped: connections are refused, the port kept.
    reserved: Option<TcpSocket>,
}

struct Shared {
    state: Mutex<State>,
    requests_seen: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// See the module documentation.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

enum Reply {
    Full(u16, Value),
    Watch {
        initial: Vec<String>,
        /// `None`: end after the initial lines.
        rx: Option<mpsc::UnboundedReceiver<WatchMsg>>,
        timeout: Option<Duration>,
    },
}

impl FakeApiServer {
    /// A server listening on 127.0.0.1 on a free port.
    pub async fn start_new() -> FakeApiServer {
        let server = FakeApiServer::unreachable();
        server.start();
        server
    }

    /// A server whose port is reserved but refuses connections until [`Self::start`].
    pub fn unreachable() -> FakeApiServer {
        let socket = reserve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let addr = socket.local_addr().expect("local address");
        let (requests_seen, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                reserved: Some(socket),
                ..State::default()
            }),
            requests_seen,
        });
        FakeApiServer { addr, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening (a no-op if it already is).
    pub fn start(&self) {
        let mut state = self.shared.lock();
        let Some(socket) = state.reserved.take() else {
            return;
        };
        let listener = socket.listen(1024).expect("listen");
        let shared = Arc::clone(&self.shared);
        state.accept_task = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::task::yield_now().await;
                    continue;
                };
                let task = tokio::spawn(serve_connection(Arc::clone(&shared), stream));
                let mut state = shared.lock();
                state.connections.retain(|c| !c.is_finished());
                state.connections.push(task);
            }
        }));
    }

    /// Stops listening and closes every connection: clients get "connection refused"
    /// until [`Self::start`]. Returns once the sockets are closed.
    pub async fn stop(&self) {
        let accept = self.shared.lock().accept_task.take();
        if let Some(task) = accept {
            task.abort();
            let _ = task.await;
        }
        self.drop_connections().await;
        let mut state = self.shared.lock();
        if state.reserved.is_none() {
            state.reserved = Some(reserve(self.addr));
        }
    }

    /// Closes every open connection (watches and idle keep-alive ones) without a
    /// proper end of the response, as a network failure or an API server restart does.
    /// Returns once they are closed.
    pub async fn drop_connections(&self) {
        let connections = {
            let mut state = self.shared.lock();
            state.subscriptions.clear();
            std::mem::take(&mut state.connections)
        };
        for task in &connections {
            task.abort();
        }
        for task in connections {
            let _ = task.await;
        }
    }

    /// Creates or replaces an object (kind and apiVersion say which resource; the
    /// namespace defaults to "default"); returns its new resourceVersion.
    pub fn apply(&self, mut object: Value) -> u64 {
        let kind = object["kind"]
            .as_str()
            .expect("object has a kind")
            .to_owned();
        let resource = Resource::from_kind(&kind).unwrap_or_else(|| panic!("unserved kind {kind}"));
        object["apiVersion"] = json!(resource.api_version());
        let name = object["metadata"]["name"]
            .as_str()
            .expect("object has metadata.name")
            .to_owned();
        let namespace = if resource.namespaced() {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            object["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("namespace");
            }
            String::new()
        };
        let mut state = self.shared.lock();
        state.rv += 1;
        let rv = state.rv;
        let key = (resource, namespace, name);
        let prev = state.objects.get(&key).cloned();
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        let (uid, generation) = match &prev {
            Some(prev) => (
                prev["metadata"]["uid"].clone(),
                prev["metadata"]["generation"].as_u64().unwrap_or(1) + 1,
            ),
            None => (json!(format!("00000000-0000-4000-8000-{rv:012}")), 1),
        };
        meta["uid"] = uid;
        meta["generation"] = json!(generation);
        // Set once at creation, as the API server does; a test may choose it (to order
        // objects by age), a real client cannot.
        meta["creationTimestamp"] = match &prev {
            Some(p) => p["metadata"]["creationTimestamp"].clone(),
            None => meta
                .get("creationTimestamp")
                .filter(|t| t.is_string())
                .cloned()
                .unwrap_or_else(|| json!(TIMESTAMP)),
        };
        if object["metadata"].get("managedFields").is_none() {
            let fields = managed_fields(&object);
            object["metadata"]["managedFields"] = json!([{
                "manager": "kube-fake-test",
                "operation": "Update",
                "apiVersion": resource.api_version(),
                "time": TIMESTAMP,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields,
            }]);
        }
        state.objects.insert(key, object.clone());
        state.record(Change {
            rv,
            resource,
            prev,
            cur: Some(object),
        });
        rv
    }

    /// Deletes an object (namespace "" for Nodes); returns the deletion's
    /// resourceVersion, `None` if there was no such object.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> Option<u64> {
        let mut state = self.shared.lock();
        let namespace = if resource.namespaced() { namespace } else { "" };
        let prev = state
            .objects
            .remove(&(resource, namespace.to_owned(), name.to_owned()))?;
        state.rv += 1;
        let rv = state.rv;
        state.record(Change {
            rv,
            resource,
            prev: Some(prev),
            cur: None,
        });
        Some(rv)
    }

    /// The stored object, as a GET would return it.
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let namespace = if resource.namespaced() { namespace } else { "" };
        self.shared
            .lock()
            .objects
            .get(&(resource, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Sends a BOOKMARK at the current resourceVersion to every open watch that allows
    /// bookmarks; returns that resourceVersion.
    pub fn send_bookmark(&self) -> u64 {
        let mut state = self.shared.lock();
        let rv = state.rv;
        state.subscriptions.retain(|sub| {
            if !sub.bookmarks {
                return true;
            }
            let line = json!({
                "type": "BOOKMARK",
                "object": {
                    "kind": sub.filter.resource.kind(),
                    "apiVersion": sub.filter.resource.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()},
                },
            });
            sub.tx.send(WatchMsg::Line(line.to_string())).is_ok()
        });
        rv
    }

    /// Forgets the history up to now, as etcd compaction does: a watch or a continued
    /// list from an older resourceVersion gets 410 Expired. Open watches go on.
    pub fn compact(&self) {
        let mut state = self.shared.lock();
        state.compact();
    }

    /// Compacts and answers every open watch with an ERROR event carrying a 410
    /// Expired Status, then ends it (what a watch served from etcd gets after a
    /// compaction); clients must relist.
    pub fn expire_watches(&self) {
        let mut state = self.shared.lock();
        state.compact();
        let message = "The resourceVersion for the provided watch is too old.";
        let line = json!({"type": "ERROR", "object": status(410, "Expired", message)}).to_string();
        for sub in state.subscriptions.drain(..) {
            let _ = sub.tx.send(WatchMsg::Line(line.clone()));
            let _ = sub.tx.send(WatchMsg::End);
        }
    }

    /// Ends every open watch properly, as when its timeoutSeconds runs out.
    pub fn end_watches(&self) {
        let mut state = self.shared.lock();
        for sub in state.subscriptions.drain(..) {
            let _ = sub.tx.send(WatchMsg::End);
        }
    }

    /// Number of open watches (of one resource, or all).
    pub fn open_watches(&self, resource: Option<Resource>) -> usize {
        let mut state = self.shared.lock();
        state.subscriptions.retain(|s| !s.tx.is_closed());
        state
            .subscriptions
            .iter()
            .filter(|s| resource.is_none_or(|r| s.filter.resource == r))
            .count()
    }

    /// Waits until at least `count` watches are open (all resources together).
    pub async fn wait_for_open_watches(&self, count: usize, timeout: Duration) {
        let mut seen = self.shared.requests_seen.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.open_watches(None) < count {
            if tokio::time::timeout_at(deadline, seen.changed())
                .await
                .is_err()
            {
                panic!(
                    "{} watches open after {timeout:?}, wanted {count}",
                    self.open_watches(None)
                );
            }
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Waits for a request, from index `from` of the log on, that satisfies `pred`.
    pub async fn wait_for_request(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&RequestRecord) -> bool,
    ) -> RequestRecord {
        let mut seen = self.shared.requests_seen.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found = self
                .shared
                .lock()
                .requests
                .iter()
                .skip(from)
                .find(|r| pred(r))
                .cloned();
            if let Some(request) = found {
                return request;
            }
            if tokio::time::timeout_at(deadline, seen.changed())
                .await
                .is_err()
            {
                panic!(
                    "no matching request within {timeout:?}; requests: {:#?}",
                    self.requests().iter().skip(from).collect::<Vec<_>>()
                );
            }
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(task) = state.accept_task.take() {
            task.abort();
        }
        for task in state.connections.drain(..) {
            task.abort();
        }
    }
}

/// A socket bound to `addr` (SO_REUSEADDR) but not listening: connections are refused.
fn reserve(addr: SocketAddr) -> TcpSocket {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind the fake API server's port");
    socket
}

/// A plausible `fieldsV1` for an object: every map key as `f:<key>`.
fn managed_fields(object: &Value) -> Value {
    fn walk(value: &Value, depth: usize) -> Value {
        match value {
            Value::Object(map) if depth < 6 => Value::Object(
                map.iter()
                    .map(|(key, child)| (format!("f:{key}"), walk(child, depth + 1)))
                    .collect(),
            ),
            _ => json!({}),
        }
    }
    let mut fields = Map::new();
    for section in ["spec", "endpoints", "ports", "addressType"] {
        if let Some(value) = object.get(section) {
            fields.insert(format!("f:{section}"), walk(value, 0));
        }
    }
    if let Some(labels) = object["metadata"].get("labels") {
        fields.insert(
            "f:metadata".to_owned(),
            json!({"f:labels": walk(labels, 0)}),
        );
    }
    Value::Object(fields)
}

impl State {
    fn record(&mut self, change: Change) {
        self.subscriptions
            .retain(|sub| match event_for(&sub.filter, &change) {
                Some(event) => sub.tx.send(WatchMsg::Line(event.to_string())).is_ok(),
                None => !sub.tx.is_closed(),
            });
        self.history.push(change);
    }

    fn compact(&mut self) {
        self.compacted_rv = self.rv;
        self.history.clear();
        let compacted = self.compacted_rv;
        self.snapshots.retain(|_, s| s.rv >= compacted);
    }
}

/// Where a request path points.
struct Route {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    for resource in Resource::ALL {
        let Some(rest) = path.strip_prefix(resource.group_path()) else {
            continue;
        };
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let (namespace, tail) = match segments.as_slice() {
            ["namespaces", ns, tail @ ..] if resource.namespaced() && !tail.is_empty() => {
                (Some((*ns).to_owned()), tail)
            }
            tail => (None, tail),
        };
        match tail {
            [plural] if *plural == resource.plural() => {
                return Some(Route {
                    resource,
                    namespace,
                    name: None,
                });
            }
            [plural, name]
                if *plural == resource.plural()
                    && (namespace.is_some() || !resource.namespaced()) =>
            {
                return Some(Route {
                    resource,
                    namespace,
                    name: Some((*name).to_owned()),
                });
            }
            _ => {}
        }
    }
    None
}

fn handle(shared: &Shared, request: &RequestRecord) -> Reply {
    if request.method != "GET" {
        return Reply::Full(
            405,
            status(
                405,
                "MethodNotAllowed",
                "the fake API server only serves GET",
            ),
        );
    }
    let Some(route) = route(&request.path) else {
        return Reply::Full(
            404,
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    let mut state = shared.lock();
    if let Some(name) = &route.name {
        let key = (
            route.resource,
            route.namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        return match state.objects.get(&key) {
            Some(object) => Reply::Full(200, object.clone()),
            None => Reply::Full(
                404,
                status(
                    404,
                    "NotFound",
                    &format!("{} \"{name}\" not found", route.resource.plural()),
                ),
            ),
        };
    }
    let labels = match parse_label_selector(request.param("labelSelector").unwrap_or("")) {
        Ok(labels) => labels,
        Err(message) => return Reply::Full(400, status(400, "BadRequest", &message)),
    };
    let fields = match parse_field_selector(request.param("fieldSelector").unwrap_or("")) {
        Ok(fields) => fields,
        Err(message) => return Reply::Full(400, status(400, "BadRequest", &message)),
    };
    let filter = Filter {
        resource: route.resource,
        namespace: route.namespace,
        labels,
        fields,
    };
    if request.is_watch() {
        watch_reply(&mut state, filter, request)
    } else {
        list_reply(&mut state, &filter, request)
    }
}

fn watch_reply(state: &mut State, filter: Filter, request: &RequestRecord) -> Reply {
    let timeout = request
        .param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut initial = Vec::new();
    match request.param("resourceVersion").unwrap_or("") {
        "" | "0" => {
            // Start from the current state: synthetic ADDED events.
            for ((resource, _, _), object) in &state.objects {
                if *resource == filter.resource && filter.matches(object) {
                    initial.push(json!({"type": "ADDED", "object": object}).to_string());
                }
            }
        }
        rv => {
            let Ok(from) = rv.parse::<u64>() else {
                let message = format!("invalid resource version: {rv:?}");
                return Reply::Full(400, status(400, "BadRequest", &message));
            };
            if from < state.compacted_rv {
                let message = format!("too old resource version: {from} ({})", state.compacted_rv);
                let error = json!({"type": "ERROR", "object": status(410, "Expired", &message)});
                return Reply::Watch {
                    initial: vec![error.to_string()],
                    rx: None,
                    timeout,
                };
            }
            for change in state.history.iter().filter(|c| c.rv > from) {
                if let Some(event) = event_for(&filter, change) {
                    initial.push(event.to_string());
                }
            }
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    state.subscriptions.push(Subscription {
        filter,
        bookmarks: matches!(request.param("allowWatchBookmarks"), Some("true" | "1")),
        tx,
    });
    Reply::Watch {
        initial,
        rx: Some(rx),
        timeout,
    }
}

fn list_reply(state: &mut State, filter: &Filter, request: &RequestRecord) -> Reply {
    let limit = request
        .param("limit")
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (id, offset) = match request.param("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let parsed = token.split_once(':').and_then(|(id, offset)| {
                Some((id.parse::<u64>().ok()?, offset.parse::<usize>().ok()?))
            });
            let expired = || {
                let message = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.";
                Reply::Full(410, status(410, "Expired", message))
            };
            match parsed {
                Some((id, offset)) if state.snapshots.contains_key(&id) => (id, offset),
                _ => return expired(),
            }
        }
        None => {
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((resource, _, _), object)| {
                    *resource == filter.resource && filter.matches(object)
                })
                .map(|(_, object)| {
                    // List items carry no kind/apiVersion: the list's kind says it.
                    let mut item = object.clone();
                    if let Some(map) = item.as_object_mut() {
                        map.remove("kind");
                        map.remove("apiVersion");
                    }
                    item
                })
                .collect();
            state.next_id += 1;
            let id = state.next_id;
            state.snapshots.insert(
                id,
                Snapshot {
                    rv: state.rv,
                    items,
                },
            );
            (id, 0)
        }
    };
    let Some(snapshot) = state.snapshots.get(&id) else {
        return Reply::Full(500, status(500, "InternalError", "snapshot vanished"));
    };
    let end = limit.map_or(snapshot.items.len(), |l| {
        (offset + l).min(snapshot.items.len())
    });
    let page: Vec<Value> = snapshot.items.get(offset..end).unwrap_or_default().to_vec();
    let mut metadata = json!({"resourceVersion": snapshot.rv.to_string()});
    let remaining = snapshot.items.len().saturating_sub(end);
    if remaining > 0 {
        metadata["continue"] = json!(format!("{id}:{end}"));
        metadata["remainingItemCount"] = json!(remaining);
    } else {
        state.snapshots.remove(&id);
    }
    Reply::Full(
        200,
        json!({
            "kind": format!("{}List", filter.resource.kind()),
            "apiVersion": filter.resource.api_version(),
            "metadata": metadata,
            "items": page,
        }),
    )
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        _ => "Internal Server Error",
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one request head; `Ok(None)` at a clean end of the connection.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(RequestRecord, bool)>> {
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too long"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_owned();
    let target = request_line.next().unwrap_or("/");
    let mut close = false;
    let mut content_length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "connection" && value.eq_ignore_ascii_case("close") {
                close = true;
            }
            if name == "content-length" {
                content_length = value.parse().unwrap_or(0);
            }
        }
    }
    // Discard a body (the server only serves GET).
    while buf.len() < content_length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..content_length);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Some((
        RequestRecord {
            method,
            path: percent_decode(path),
            query,
        },
        close,
    )))
}

async fn write_chunk(stream: &mut TcpStream, line: &str) -> std::io::Result<()> {
    let mut chunk = String::with_capacity(line.len() + 16);
    let _ = write!(chunk, "{:x}\r\n{line}\n\r\n", line.len() + 1);
    stream.write_all(chunk.as_bytes()).await
}

async fn serve_connection(shared: Arc<Shared>, mut stream: TcpStream) {
    let mut buf = Vec::new();
    let _ = stream.set_nodelay(true);
    loop {
        let Ok(Some((request, close))) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        shared.lock().requests.push(request.clone());
        let reply = handle(&shared, &request);
        // Announced once handled, so a waiter also sees the watch it opened.
        let count = shared.lock().requests.len();
        shared.requests_seen.send_replace(count);
        let result = match reply {
            Reply::Full(code, body) => {
                let body = body.to_string();
                let head = format!(
                    "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nContent-Length: {}\r\n\r\n",
                    reason_phrase(code),
                    body.len()
                );
                async {
                    stream.write_all(head.as_bytes()).await?;
                    stream.write_all(body.as_bytes()).await
                }
                .await
            }
            Reply::Watch {
                initial,
                rx,
                timeout,
            } => serve_watch(&mut stream, initial, rx, timeout).await,
        };
        if result.is_err() || close {
            return;
        }
    }
}

async fn serve_watch(
    stream: &mut TcpStream,
    initial: Vec<String>,
    rx: Option<mpsc::UnboundedReceiver<WatchMsg>>,
    timeout: Option<Duration>,
) -> std::io::Result<()> {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await?;
    for line in &initial {
        write_chunk(stream, line).await?;
    }
    if let Some(mut rx) = rx {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let next = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten(),
                    None => rx.recv().await,
                }
            };
            match next.await {
                Some(WatchMsg::Line(line)) => write_chunk(stream, &line).await?,
                Some(WatchMsg::End) | None => break,
            }
        }
    }
    stream.write_all(b"0\r\n\r\n").await
}
