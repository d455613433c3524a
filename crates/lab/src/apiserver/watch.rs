//! Watch: a stream of `{"type": …, "object": …}` lines, as the kube crate's watcher and
//! kubectl expect it. From resourceVersion "0" (or none) it starts with the current
//! objects as ADDED; from a version it replays what came after, or answers 410 Gone
//! when that is older than the history kept. Label and field selectors apply to both
//! the old and the new state, so an object that stops matching arrives as DELETED.

use super::query::{Filter, wants_table};
use super::status::ApiError;
use super::table::{self, IncludeObject};
use super::{ApiServer, Request, Target, body_of, error};
use crate::store::{Event, EventType};
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

struct Watcher {
    resource: &'static super::resources::Resource,
    store_name: String,
    namespace: Option<String>,
    name: Option<String>,
    filter: Filter,
    table: bool,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Watcher {
    fn selects(&self, v: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| v["metadata"]["namespace"] == ns)
            && self.name.as_deref().is_none_or(|n| v["metadata"]["name"] == n)
            && self.filter.matches(v)
    }

    async fn send(&self, kind: &str, object: &Value, rv: u64) -> bool {
        let object = if self.table && kind != "BOOKMARK" && kind != "ERROR" {
            table::render(self.resource, &[object], rv, IncludeObject::Metadata)
        } else {
            object.clone()
        };
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        self.tx.send(Ok(Bytes::from(line))).await.is_ok()
    }

    async fn event(&self, ev: &Event) -> bool {
        if ev.key.resource != self.store_name {
            return true;
        }
        let now = self.selects(&ev.object);
        let before = ev.old.as_deref().is_some_and(|o| self.selects(o));
        let kind = match (ev.kind, before, now) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            (EventType::Deleted, _, true) => "DELETED",
            _ => return true,
        };
        self.send(kind, &ev.object, ev.rv).await
    }

    async fn bookmark(&self, rv: u64, initial_end: bool) -> bool {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.resource.kind, "apiVersion": self.resource.api_version(), "metadata": meta});
        self.send("BOOKMARK", &obj, rv).await
    }
}

pub(crate) fn serve(api: &Arc<ApiServer>, t: Target, req: Request) -> Response {
    let filter = match Filter::from(&req) {
        Ok(f) => f,
        Err(e) => return error(&e),
    };
    let rv_param = req.q("resourceVersion").unwrap_or("").to_string();
    let bookmarks = req.flag("allowWatchBookmarks");
    let timeout =
        req.q("timeoutSeconds").and_then(|s| s.parse().ok()).map_or(Duration::from_secs(1800), Duration::from_secs);
    let initial = rv_param.is_empty() || rv_param == "0" || req.flag("sendInitialEvents");
    let store_name = t.resource.store_name();

    let (tx, rx) = mpsc::channel(256);
    let watcher = Watcher {
        resource: t.resource,
        store_name: store_name.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        filter,
        table: wants_table(&req),
        tx,
    };
    let (snapshot, start_rv, backlog, live) = if initial {
        let (items, rv, live) = api.store.list_and_subscribe(&store_name, t.namespace.as_deref());
        (items, rv, Vec::new(), live)
    } else {
        let Ok(from) = rv_param.parse::<u64>() else {
            return error(&ApiError::bad_request(format!("resourceVersion {rv_param:?} is not a number")));
        };
        match api.store.subscribe(from) {
            Some(sub) => (Vec::new(), from, sub.backlog, sub.live),
            None => {
                let gone = ApiError::gone(format!("too old resource version: {from} ({})", api.store.current_rv()));
                let line = format!("{}\n", json!({"type": "ERROR", "object": gone.to_status()}));
                return body_of(StatusCode::OK, Body::from(line));
            }
        }
    };
    let closed = api.store.closed();
    tokio::spawn(run(watcher, snapshot, start_rv, backlog, live, bookmarks && initial, bookmarks, timeout, closed));
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    body_of(StatusCode::OK, Body::from_stream(stream))
}

#[allow(clippy::too_many_arguments, reason = "one call site, all of a watch's starting state")]
async fn run(
    w: Watcher,
    snapshot: Vec<Arc<Value>>,
    start_rv: u64,
    backlog: Vec<Arc<Event>>,
    mut live: broadcast::Receiver<Arc<Event>>,
    initial_end_bookmark: bool,
    bookmarks: bool,
    timeout: Duration,
    mut closed: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_rv = start_rv;
    for obj in snapshot.iter().filter(|o| w.selects(o)) {
        if !w.send("ADDED", obj, start_rv).await {
            return;
        }
    }
    if initial_end_bookmark && !w.bookmark(start_rv, true).await {
        return;
    }
    for ev in backlog {
        last_rv = ev.rv;
        if !w.event(&ev).await {
            return;
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            ev = live.recv() => match ev {
                Ok(ev) if ev.rv <= last_rv => {}
                Ok(ev) => {
                    last_rv = ev.rv;
                    if !w.event(&ev).await { return; }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow to keep up: the client re-watches from its last version.
                    let gone = ApiError::gone(format!("the watch fell behind at resource version {last_rv}"));
                    let _ = w.send("ERROR", &gone.to_status(), last_rv).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticker.tick(), if bookmarks => {
                if !w.bookmark(last_rv, false).await { return; }
            }
            _ = w.tx.closed() => return,
            _ = closed.changed() => return,
            _ = &mut deadline => return,
        }
    }
}
