//! The object store: every object as JSON, one global resourceVersion, kept in redb.
//!
//! All changes go through one writer thread. It takes every pending mutation, runs each
//! against the state so far (so uniqueness checks are atomic), writes them all in one redb
//! transaction, commits durably (an acknowledged write survives kill -9), and only then
//! publishes them to readers and watchers, in resourceVersion order. Batching the commit
//! keeps bulk creation fast without giving up durability.

use redb::{ReadableDatabase, ReadableTable};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, RwLock};
use tokio::sync::{broadcast, oneshot};

const OBJECTS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("objects");
const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");

/// Events kept for watches that start from an older resourceVersion.
pub const HISTORY: usize = 100_000;

/// (resource, namespace, name); resource is the plural with its group (`pods`,
/// `endpointslices.discovery.k8s.io`); namespace is empty for cluster-scoped objects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(resource: &str, namespace: &str, name: &str) -> Self {
        Self { resource: resource.into(), namespace: namespace.into(), name: name.into() }
    }

    fn db_key(&self) -> String {
        format!("{}/{}/{}", self.resource, self.namespace, self.name)
    }

    fn from_db_key(s: &str) -> Option<Self> {
        let mut it = s.splitn(3, '/');
        Some(Self::new(it.next()?, it.next()?, it.next()?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub key: Key,
    pub object: Arc<Value>,
    /// The object before this change (for MODIFIED and DELETED), so a filtered watch can
    /// tell an object that stopped matching from one that never did.
    pub old: Option<Arc<Value>>,
}

/// What a mutation decides, given the current object.
pub enum Change {
    Put(Value),
    Delete,
    /// Nothing to do (the object is already as wanted).
    Keep,
}

/// Why a mutation was refused; carried back to the caller unchanged.
pub type Refusal = crate::apiserver::status::ApiError;

/// The committed objects, as readers see them.
#[derive(Default)]
pub struct Objects {
    pub map: BTreeMap<Key, Arc<Value>>,
    pub rv: u64,
    history: VecDeque<Arc<Event>>,
    /// The resourceVersion below which history is incomplete.
    history_floor: u64,
}

impl Objects {
    pub fn get(&self, key: &Key) -> Option<&Arc<Value>> {
        self.map.get(key)
    }

    /// Every object of a resource, optionally in one namespace.
    pub fn list<'s>(
        &'s self,
        resource: &str,
        namespace: Option<&str>,
    ) -> impl Iterator<Item = &'s Arc<Value>> + use<'s> {
        let start = Key::new(resource, namespace.unwrap_or(""), "");
        let (resource, namespace) = (resource.to_string(), namespace.map(str::to_string));
        self.map
            .range(start..)
            .take_while(move |(k, _)| k.resource == resource && namespace.as_ref().is_none_or(|ns| k.namespace == *ns))
            .map(|(_, v)| v)
    }
}

type Mutate = Box<dyn FnOnce(&Objects, Option<&Value>) -> Result<Change, Refusal> + Send>;

/// What a mutation comes to: the stored object (None after a delete) or why not.
type Outcome = Result<Option<Arc<Value>>, Refusal>;
type Reply = oneshot::Sender<Outcome>;

struct Request {
    key: Key,
    mutate: Mutate,
    reply: Reply,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}: {msg}")]
    Open { path: String, msg: String },
}

enum Msg {
    Mutate(Request),
    /// Close the database and stop; answered once it is closed.
    Shutdown(oneshot::Sender<()>),
}

pub struct Store {
    objects: Arc<RwLock<Objects>>,
    events: broadcast::Sender<Arc<Event>>,
    requests: std::sync::mpsc::Sender<Msg>,
    closed: tokio::sync::watch::Sender<bool>,
}

/// A watch's starting point: the events after `from`, then the live stream.
pub struct Subscription {
    pub backlog: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
}

impl Store {
    /// Opens (or creates) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Open { path: path.display().to_string(), msg: e.to_string() };
        let db = redb::Database::create(path).map_err(|e| err(&e))?;
        let mut objects = Objects::default();
        {
            let tx = db.begin_write().map_err(|e| err(&e))?;
            tx.open_table(OBJECTS).map_err(|e| err(&e))?;
            tx.open_table(META).map_err(|e| err(&e))?;
            tx.commit().map_err(|e| err(&e))?;
            let rx = db.begin_read().map_err(|e| err(&e))?;
            let table = rx.open_table(OBJECTS).map_err(|e| err(&e))?;
            for row in table.iter().map_err(|e| err(&e))? {
                let (k, v) = row.map_err(|e| err(&e))?;
                if let (Some(key), Ok(obj)) = (Key::from_db_key(k.value()), serde_json::from_slice(v.value())) {
                    objects.map.insert(key, Arc::new(obj));
                }
            }
            let meta = rx.open_table(META).map_err(|e| err(&e))?;
            objects.rv = meta.get("rv").map_err(|e| err(&e))?.map(|g| g.value()).unwrap_or(0);
            objects.history_floor = objects.rv;
        }
        let objects = Arc::new(RwLock::new(objects));
        let (events, _) = broadcast::channel(16 * 1024);
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let (objs, ev) = (objects.clone(), events.clone());
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(db, rx, objs, ev))
            .map_err(|e| err(&e))?;
        Ok(Arc::new(Self { objects, events, requests: tx, closed: tokio::sync::watch::Sender::new(false) }))
    }

    /// Reads the committed state.
    pub fn read<T>(&self, f: impl FnOnce(&Objects) -> T) -> T {
        f(&self.objects.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Runs `mutate` against the current object (and all others, for uniqueness checks)
    /// and commits what it decides. Returns the stored object (None after a delete).
    pub async fn mutate(
        &self,
        key: Key,
        mutate: impl FnOnce(&Objects, Option<&Value>) -> Result<Change, Refusal> + Send + 'static,
    ) -> Result<Option<Arc<Value>>, Refusal> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Msg::Mutate(Request { key, mutate: Box::new(mutate), reply }))
            .map_err(|_| Refusal::internal("the store's writer has stopped"))?;
        answer.await.map_err(|_| Refusal::internal("the store's writer has stopped"))?
    }

    /// The events after resourceVersion `from` and the live stream after them; None when
    /// `from` is older than the history kept (the caller answers 410 Gone).
    pub fn subscribe(&self, from: u64) -> Option<Subscription> {
        let objects = self.objects.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Too old (history gone) or newer than anything here (a store that was reset):
        // either way the client must list again.
        if from < objects.history_floor || from > objects.rv {
            return None;
        }
        let backlog = objects.history.iter().filter(|e| e.rv > from).cloned().collect();
        Some(Subscription { backlog, live: self.events.subscribe() })
    }

    /// The objects of a resource now, the resourceVersion they are at, and the live
    /// stream from there on, taken together so nothing falls between them.
    pub fn list_and_subscribe(
        &self,
        resource: &str,
        namespace: Option<&str>,
    ) -> (Vec<Arc<Value>>, u64, broadcast::Receiver<Arc<Event>>) {
        let objects = self.objects.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let items = objects.list(resource, namespace).cloned().collect();
        (items, objects.rv, self.events.subscribe())
    }

    /// Closes the database: every later write is refused. Returns once it is closed, so
    /// the same store can be opened again (a restart in the same process).
    pub async fn shutdown(&self) {
        self.closed.send_replace(true);
        let (done, closed) = oneshot::channel();
        if self.requests.send(Msg::Shutdown(done)).is_ok() {
            let _ = closed.await;
        }
    }

    /// Becomes true when the store shuts down; watches end then.
    pub fn closed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub fn current_rv(&self) -> u64 {
        self.read(|o| o.rv)
    }
}

/// An object's labels as a map (empty when it has none).
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, x)| (k.clone(), x.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

fn writer(
    db: redb::Database,
    rx: std::sync::mpsc::Receiver<Msg>,
    objects: Arc<RwLock<Objects>>,
    events: broadcast::Sender<Arc<Event>>,
) {
    let mut stop: Option<oneshot::Sender<()>> = None;
    while stop.is_none() {
        let mut batch = match rx.recv() {
            Ok(Msg::Mutate(first)) => vec![first],
            Ok(Msg::Shutdown(done)) => {
                stop = Some(done);
                break;
            }
            Err(_) => break,
        };
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(Msg::Mutate(more)) => batch.push(more),
                Ok(Msg::Shutdown(done)) => {
                    stop = Some(done);
                    break;
                }
                Err(_) => break,
            }
        }
        // Decide every mutation against a working copy of the changed objects.
        let mut staged: Vec<Staged> = Vec::new();
        let mut replies: Vec<(Reply, Outcome)> = Vec::new();
        {
            let mut view = objects.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            let base_rv = view.rv;
            let mut rv = base_rv;
            let mut undo: Vec<(Key, Option<Arc<Value>>)> = Vec::new();
            for req in batch {
                let current = view.map.get(&req.key).cloned();
                // A bug in one mutation must not take the writer (and the API) down.
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (req.mutate)(&view, current.as_deref())))
                        .unwrap_or_else(|_| {
                            Err(Refusal::internal("the request could not be applied (internal error)"))
                        });
                let result = match outcome {
                    Err(e) => Err(e),
                    Ok(Change::Keep) => Ok(current.clone()),
                    Ok(Change::Put(mut obj)) => {
                        rv += 1;
                        set_rv(&mut obj, rv);
                        let obj = Arc::new(obj);
                        let kind = if current.is_some() { EventType::Modified } else { EventType::Added };
                        undo.push((req.key.clone(), view.map.insert(req.key.clone(), obj.clone())));
                        staged.push(Staged { key: req.key, kind, object: obj.clone(), old: current, rv });
                        Ok(Some(obj))
                    }
                    Ok(Change::Delete) => match current {
                        None => Err(Refusal::not_found(&req.key.resource, &req.key.name)),
                        Some(old) => {
                            rv += 1;
                            let mut gone = (*old).clone();
                            set_rv(&mut gone, rv);
                            undo.push((req.key.clone(), view.map.remove(&req.key)));
                            staged.push(Staged {
                                key: req.key,
                                kind: EventType::Deleted,
                                object: Arc::new(gone),
                                old: Some(old),
                                rv,
                            });
                            Ok(None)
                        }
                    },
                };
                replies.push((req.reply, result));
            }
            if staged.is_empty() {
                drop(view);
                for (reply, result) in replies {
                    let _ = reply.send(result);
                }
                continue;
            }
            // Durable first; readers see the batch only once it is on disk.
            if let Err(e) = commit(&db, &staged, rv) {
                for (key, old) in undo.into_iter().rev() {
                    match old {
                        Some(o) => view.map.insert(key, o),
                        None => view.map.remove(&key),
                    };
                }
                drop(view);
                let msg = format!("could not commit to the store: {e}");
                for (reply, result) in replies {
                    let _ = reply.send(result.and(Err(Refusal::internal(&msg))));
                }
                continue;
            }
            view.rv = rv;
            for st in staged {
                let event = Arc::new(Event { rv: st.rv, kind: st.kind, key: st.key, object: st.object, old: st.old });
                view.history.push_back(event.clone());
                let _ = events.send(event);
            }
            while view.history.len() > HISTORY {
                if let Some(old) = view.history.pop_front() {
                    view.history_floor = old.rv;
                }
            }
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }
    drop(db);
    if let Some(done) = stop {
        let _ = done.send(());
    }
}

struct Staged {
    key: Key,
    kind: EventType,
    object: Arc<Value>,
    old: Option<Arc<Value>>,
    rv: u64,
}

fn commit(db: &redb::Database, staged: &[Staged], rv: u64) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = tx.open_table(OBJECTS).map_err(|e| e.to_string())?;
        for st in staged {
            let k = st.key.db_key();
            match st.kind {
                EventType::Deleted => {
                    table.remove(k.as_str()).map_err(|e| e.to_string())?;
                }
                _ => {
                    let bytes = serde_json::to_vec(st.object.as_ref()).map_err(|e| e.to_string())?;
                    table.insert(k.as_str(), bytes.as_slice()).map_err(|e| e.to_string())?;
                }
            }
        }
        let mut meta = tx.open_table(META).map_err(|e| e.to_string())?;
        meta.insert("rv", rv).map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}
