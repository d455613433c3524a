//! The controllers a cluster's controller manager and scheduler run: node IPAM, the
//! scheduler, and EndpointSlices. They watch the store, work out what should be, and
//! write only the differences; on start they reconcile everything once.

mod endpointslices;
mod nodeipam;
mod podgc;
mod scheduler;
mod workloads;

use crate::apiserver::admission::ClusterConfig;
use crate::store::{Change, Event, Key, Store};
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
}

/// Starts the controllers on the current runtime.
pub fn spawn(store: Arc<Store>, cluster: ClusterConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(store, cluster))
}

async fn run(store: Arc<Store>, cluster: ClusterConfig) {
    let (_, _, mut live) = store.list_and_subscribe("", None);
    let mut dirty =
        Dirty { nodes: true, pending_pods: true, all_services: true, workloads: true, ..Default::default() };
    loop {
        reconcile(&store, &cluster, std::mem::take(&mut dirty)).await;
        // Wait for something to happen (or a second to pass: terminating pods reach
        // their deadline without an event), then take everything else that already has.
        tokio::select! {
            ev = live.recv() => match ev {
                Ok(ev) => note(&mut dirty, &ev),
                Err(RecvError::Lagged(_)) => {
                    dirty = Dirty { nodes: true, pending_pods: true, all_services: true, workloads: true, ..Default::default() }
                }
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        loop {
            match live.try_recv() {
                Ok(ev) => note(&mut dirty, &ev),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                    dirty = Dirty {
                        nodes: true,
                        pending_pods: true,
                        all_services: true,
                        workloads: true,
                        ..Default::default()
                    }
                }
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

async fn reconcile(store: &Store, cluster: &ClusterConfig, dirty: Dirty) {
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
    });
    for (key, change) in writes {
        apply(store, key, change).await;
    }
}

/// Writes a planned change unless the object moved on since it was planned (the next
/// pass plans again from the new state).
async fn apply(store: &Store, key: Key, change: Change) {
    let expected_rv = match &change {
        Change::Put(v) => v["metadata"]["resourceVersion"].as_str().map(str::to_string),
        _ => None,
    };
    let outcome = store
        .mutate(key, move |_, current| {
            let current_rv = current.and_then(|c| c["metadata"]["resourceVersion"].as_str());
            match change {
                Change::Put(_) if expected_rv.as_deref() != current_rv => Ok(Change::Keep),
                Change::Delete if current.is_none() => Ok(Change::Keep),
                other => Ok(other),
            }
        })
        .await;
    if let Err(e) = outcome {
        tracing::warn!("controller write failed: {e}");
    }
}

pub use crate::apiserver::admission::is_ready_node;
