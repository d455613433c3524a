//! The controllers a cluster's controller manager and scheduler run: node IPAM, the
//! scheduler, EndpointSlices, the workloads, and each namespace's `default`
//! ServiceAccount and `kube-root-ca.crt`. They watch the store, work out what should be,
//! and write only the differences; on start they reconcile everything once.

mod endpointslices;
mod nodeipam;
mod podgc;
mod root_ca;
mod scheduler;
mod serviceaccounts;
mod workloads;

use crate::apiserver::admission::{self, ClusterConfig};
use crate::apiserver::resources;
use crate::apiserver::service_accounts::{DEFAULT_SERVICE_ACCOUNT, ROOT_CA_CONFIG_MAP};
use crate::store::{Change, Event, Key, Objects, Store};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// What changed since the last pass, by the object each controller keys on.
#[derive(Default)]
struct Dirty {
    nodes: bool,
    pending_pods: bool,
    /// (namespace, service name)
    services: BTreeSet<(String, String)>,
    all_services: bool,
    /// Deployments, ReplicaSets, DaemonSets, or what they own (or fit on) changed.
    workloads: bool,
    /// Namespaces, or their `default` ServiceAccount or `kube-root-ca.crt`, changed.
    namespaces: bool,
}

impl Dirty {
    /// Everything: on start, and after events were missed.
    fn everything() -> Self {
        Self {
            nodes: true,
            pending_pods: true,
            all_services: true,
            workloads: true,
            namespaces: true,
            ..Default::default()
        }
    }
}

/// Starts the controllers on the current runtime. `root_ca` is the PEM of the CA that
/// signed the API server's certificate, published to every namespace; without it (a
/// control plane with no PKI) nothing is published.
pub fn spawn(store: Arc<Store>, cluster: ClusterConfig, root_ca: Option<String>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(store, cluster, root_ca))
}

async fn run(store: Arc<Store>, cluster: ClusterConfig, root_ca: Option<String>) {
    let (_, _, mut live) = store.list_and_subscribe("", None);
    let mut dirty = Dirty::everything();
    loop {
        reconcile(&store, &cluster, root_ca.as_deref(), std::mem::take(&mut dirty)).await;
        // Wait for something to happen (or a second to pass: terminating pods reach
        // their deadline without an event), then take everything else that already has.
        tokio::select! {
            ev = live.recv() => match ev {
                Ok(ev) => note(&mut dirty, &ev),
                Err(RecvError::Lagged(_)) => dirty = Dirty::everything(),
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        loop {
            match live.try_recv() {
                Ok(ev) => note(&mut dirty, &ev),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => dirty = Dirty::everything(),
                Err(_) => break,
            }
        }
    }
}

fn note(d: &mut Dirty, ev: &Event) {
    let ns = ev.key.namespace.clone();
    match ev.key.resource.as_str() {
        "nodes" => {
            d.nodes = true;
            d.pending_pods = true;
            d.workloads = true;
        }
        "replicasets.apps" | "deployments.apps" | "daemonsets.apps" => d.workloads = true,
        "namespaces" => d.namespaces = true,
        "serviceaccounts" if ev.key.name == DEFAULT_SERVICE_ACCOUNT => d.namespaces = true,
        "configmaps" if ev.key.name == ROOT_CA_CONFIG_MAP => d.namespaces = true,
        "pods" => {
            d.pending_pods |= ev.object["spec"]["nodeName"].is_null();
            d.workloads |= ev.object["metadata"]["ownerReferences"].is_array();
            // Services whose selector matched the pod before or matches it now.
            d.services.insert((ns, String::new()));
        }
        "services" => {
            d.services.insert((ns, ev.key.name.clone()));
        }
        "endpointslices.discovery.k8s.io" => {
            if let Some(svc) = ev.object["metadata"]["labels"]["kubernetes.io/service-name"].as_str() {
                d.services.insert((ns, svc.to_string()));
            }
        }
        _ => {}
    }
}

async fn reconcile(store: &Store, cluster: &ClusterConfig, ca_pem: Option<&str>, dirty: Dirty) {
    let mut writes: Vec<(Key, Change)> = Vec::new();
    store.read(|objects| {
        if dirty.nodes {
            writes.extend(nodeipam::plan(objects, cluster));
        }
        if dirty.pending_pods {
            writes.extend(scheduler::plan(objects));
        }
        let services = endpointslices::to_reconcile(objects, &dirty.services, dirty.all_services);
        writes.extend(endpointslices::plan(objects, &services));
        writes.extend(workloads::endpoints(objects, &services));
        if dirty.workloads {
            writes.extend(workloads::plan(objects, cluster));
        }
        writes.extend(podgc::plan(objects));
        if dirty.namespaces {
            writes.extend(namespace_contents(objects, cluster, ca_pem));
        }
    });
    for (key, change) in writes {
        apply(store, key, change).await;
    }
}

/// What every namespace holds from the start: its `default` ServiceAccount, and the
/// cluster CA as `kube-root-ca.crt` when there is one.
fn namespace_contents(objects: &Objects, cluster: &ClusterConfig, ca_pem: Option<&str>) -> Vec<(Key, Change)> {
    let mut writes = serviceaccounts::plan(objects, cluster);
    if let Some(ca) = ca_pem {
        writes.extend(root_ca::plan(objects, cluster, ca));
    }
    writes
}

/// Writes what the namespaces there are should hold, once, before the API serves: a
/// client's first look (and a test counting writes) finds it in place rather than
/// arriving from the controllers a moment later.
pub async fn provision_namespaces(store: &Store, cluster: &ClusterConfig, ca_pem: Option<&str>) {
    for (key, change) in store.read(|objects| namespace_contents(objects, cluster, ca_pem)) {
        apply(store, key, change).await;
    }
}

/// Writes a planned change unless the object moved on since it was planned, or its
/// namespace went (the next pass plans again from the new state).
async fn apply(store: &Store, key: Key, change: Change) {
    let expected_rv = match &change {
        Change::Put(v) => v["metadata"]["resourceVersion"].as_str().map(str::to_string),
        _ => None,
    };
    let namespace = Key::new("namespaces", "", &key.namespace);
    let outcome = store
        .mutate(key, move |all, current| {
            let current_rv = current.and_then(|c| c["metadata"]["resourceVersion"].as_str());
            let namespace_gone = !namespace.name.is_empty() && all.get(&namespace).is_none();
            match change {
                Change::Put(_) if expected_rv.as_deref() != current_rv => Ok(Change::Keep),
                Change::Put(_) if current.is_none() && namespace_gone => Ok(Change::Keep),
                Change::Delete if current.is_none() => Ok(Change::Keep),
                other => Ok(other),
            }
        })
        .await;
    if let Err(e) = outcome {
        tracing::warn!("controller write failed: {e}");
    }
}

/// A new object of `kind` as the API would store it after a create.
fn made(
    objects: &Objects,
    cluster: &ClusterConfig,
    kind: &str,
    namespace: &str,
    mut obj: Value,
) -> Option<(Key, Change)> {
    let r = resources::by_kind(kind)?;
    admission::stamp_new(&mut obj, r, namespace);
    admission::defaults(&mut obj, kind);
    let key = Key::new(&r.store_name(), namespace, obj["metadata"]["name"].as_str().unwrap_or_default());
    if let Err(e) = admission::admit(cluster, objects, &key, &mut obj, None) {
        tracing::warn!("cannot create {kind} {namespace}/{}: {e}", key.name);
        return None;
    }
    Some((key, Change::Put(obj)))
}

/// The names of the namespaces objects can be created in (phase Active).
fn active_namespaces(objects: &Objects) -> impl Iterator<Item = &str> {
    objects
        .list("namespaces", None)
        .filter(|ns| ns["status"]["phase"] == "Active")
        .filter_map(|ns| ns["metadata"]["name"].as_str())
}

pub use crate::apiserver::admission::is_ready_node;

#[cfg(test)]
mod tests {
    use crate::store::{Key, Objects};
    use serde_json::{Value, json};
    use std::sync::Arc;

    /// Objects as the store holds them: (resource, namespace, object).
    pub(super) fn objects(items: Vec<(&str, &str, Value)>) -> Objects {
        let mut all = Objects::default();
        for (resource, ns, obj) in items {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
            all.map.insert(Key::new(resource, ns, &name), Arc::new(obj));
        }
        all
    }

    pub(super) fn namespace(name: &str) -> Value {
        json!({"metadata": {"name": name}, "status": {"phase": "Active"}})
    }
}
