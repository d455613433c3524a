//! List/watch plumbing shared by the agent's reconcilers and the DNS server: each watch
//! event is reduced at once to the compact value its consumer keeps, so a burst of
//! events queues small values, not API objects.

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;
use tracing::warn;

/// A watch event, reduced: the object's key and what the consumer keeps of it (None
/// when it keeps nothing of this object, which then counts as absent).
pub enum Change<K, V> {
    /// A re-list starts: the `InitApply`s that follow until `InitDone` are everything.
    Init,
    InitApply(K, Option<V>),
    InitDone,
    Apply(K, Option<V>),
    Delete(K),
}

impl<K, V> Change<K, V> {
    pub fn of<T>(e: watcher::Event<T>, key: impl Fn(&T) -> Option<K>, value: impl Fn(&T) -> Option<V>) -> Option<Self> {
        Some(match e {
            watcher::Event::Init => Self::Init,
            watcher::Event::InitApply(o) => Self::InitApply(key(&o)?, value(&o)),
            watcher::Event::InitDone => Self::InitDone,
            watcher::Event::Apply(o) => Self::Apply(key(&o)?, value(&o)),
            watcher::Event::Delete(o) => Self::Delete(key(&o)?),
        })
    }
}

/// (namespace, name) of an object; the namespace is empty for a cluster-scoped one.
pub fn key_of(m: &kube::api::ObjectMeta) -> Option<(String, String)> {
    Some((m.namespace.clone().unwrap_or_default(), m.name.clone()?))
}

/// Objects of one kind, as last listed and watched.
pub struct Store<V> {
    pub items: HashMap<(String, String), V>,
    relist: Option<HashMap<(String, String), V>>,
    pub listed: bool,
}

impl<V> Default for Store<V> {
    fn default() -> Self {
        Self { items: HashMap::new(), relist: None, listed: false }
    }
}

impl<V> Store<V> {
    pub fn apply(&mut self, c: Change<(String, String), V>) {
        match c {
            Change::Init => self.relist = Some(HashMap::new()),
            Change::InitApply(k, v) => {
                if let (Some(m), Some(v)) = (self.relist.as_mut(), v) {
                    m.insert(k, v);
                }
            }
            Change::InitDone => {
                self.items = self.relist.take().unwrap_or_default();
                self.listed = true;
            }
            Change::Apply(k, Some(v)) => {
                self.items.insert(k, v);
            }
            Change::Apply(k, None) | Change::Delete(k) => {
                self.items.remove(&k);
            }
        }
    }
}

/// A background task that ends when this handle is dropped: a reconciler's watches
/// die with it, also when it panics, so a restarted one does not leave them behind.
#[must_use = "the task stops when this is dropped"]
pub struct Task(tokio::task::JoinHandle<()>);

impl Task {
    pub fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(f))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches every `T` (re-listing with back-off after errors) and sends each event,
/// reduced by `value` and wrapped by `wrap`, with the time it arrived, until the
/// returned task is dropped.
pub fn spawn<T, V, E>(
    api: Api<T>,
    value: impl Fn(&T) -> Option<V> + Send + 'static,
    wrap: fn(Change<(String, String), V>) -> E,
    tx: UnboundedSender<(Instant, E)>,
) -> Task
where
    T: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    T::DynamicType: Default,
    V: Send + 'static,
    E: Send + 'static,
{
    let kind = T::kind(&Default::default()).to_string();
    let events = watcher(api, watcher::Config::default()).default_backoff();
    Task::spawn(events.for_each(move |e| {
        match e {
            Ok(e) => {
                if let Some(c) = Change::of(e, |o: &T| key_of(o.meta()), &value) {
                    drop(tx.send((Instant::now(), wrap(c))));
                }
            }
            Err(e) => warn!("watching {kind}s: {e}"),
        }
        futures::future::ready(())
    }))
}

/// A client from `kubeconfig`, else the in-cluster service account (or $KUBECONFIG).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(|e| e.to_string())?
        }
        // In a pod (the API server's address in the environment, as a kubelet sets it),
        // the pod's service account, whatever kubeconfig the host may have lying about.
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && std::env::var_os("KUBECONFIG").is_none() => {
            kube::Config::incluster().map_err(|e| format!("the in-cluster service account: {e}"))?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
}
