//! Starting the control plane: open the store, create what every cluster has from the
//! start (the system namespaces, `default/kubernetes`), start the controllers, serve.

use crate::apiserver::admission::{self, ClusterConfig};
use crate::apiserver::resources;
use crate::apiserver::{ApiServer, status::ApiError};
use crate::store::{Change, Key, Store, StoreError};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

pub struct ControlPlane {
    pub store: Arc<Store>,
    pub api: Arc<ApiServer>,
    controllers: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    /// Stops the controllers and closes the store.
    pub async fn shutdown(self) {
        self.controllers.abort();
        self.store.shutdown().await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.controllers.abort();
    }
}

/// Opens the store under `state_dir` and starts the controllers (on the current tokio
/// runtime). `api_port` is where `default/kubernetes` points.
pub async fn start(
    state_dir: &Path,
    token: String,
    cluster: ClusterConfig,
    api_port: u16,
) -> Result<ControlPlane, StoreError> {
    let store = Store::open(&state_dir.join("store.redb"))?;
    bootstrap(&store, &cluster, api_port).await;
    // The lab's CA (`tls::load_or_create` writes it beside the store), which the root CA
    // publisher gives every namespace; a state directory without one publishes none.
    let root_ca = std::fs::read_to_string(state_dir.join("ca.crt")).ok();
    crate::controllers::provision_namespaces(&store, &cluster, root_ca.as_deref()).await;
    let controllers = crate::controllers::spawn(store.clone(), cluster.clone(), root_ca);
    let api = ApiServer::new(store.clone(), cluster, token);
    Ok(ControlPlane { store, api, controllers })
}

/// Serves the API over TLS on `listener` until `stop` resolves; then stops accepting,
/// lets requests in flight finish (watches end when the store closes) and returns.
pub async fn serve(
    api: Arc<ApiServer>,
    listener: tokio::net::TcpListener,
    pki: &crate::tls::Pki,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = crate::tls::acceptor(pki).map_err(std::io::Error::other)?;
    axum::serve(crate::tls::TlsListener::new(listener, acceptor)?, api.router()).with_graceful_shutdown(stop).await
}

async fn ensure(store: &Store, cluster: &ClusterConfig, kind: &str, namespace: &str, mut obj: Value) {
    let r = resources::by_kind(kind).expect("a served kind");
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let key = Key::new(&r.store_name(), namespace, &name);
    if store.read(|o| o.get(&key).is_some()) {
        return;
    }
    admission::stamp_new(&mut obj, r, namespace);
    admission::defaults(&mut obj, kind);
    let cluster = cluster.clone();
    let k = key.clone();
    let out = store
        .mutate(key, move |all, cur| {
            if cur.is_some() {
                return Ok(Change::Keep);
            }
            admission::admit(&cluster, all, &k, &mut obj, None)?;
            Ok::<_, ApiError>(Change::Put(obj))
        })
        .await;
    if let Err(e) = out {
        tracing::error!("could not create {kind} {namespace}/{name}: {e}");
    }
}

async fn bootstrap(store: &Store, cluster: &ClusterConfig, api_port: u16) {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(store, cluster, "Namespace", "", json!({"metadata": {"name": ns}})).await;
    }
    ensure(
        store,
        cluster,
        "Service",
        "default",
        json!({"metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
               "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api_port}]}}),
    )
    .await;
    // The default Service range, as kube-apiserver publishes it.
    ensure(
        store,
        cluster,
        "ServiceCIDR",
        "",
        json!({"metadata": {"name": "kubernetes"}, "spec": {"cidrs": [cluster.service_cidr.to_string()]},
               "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "",
                   "message": "Kubernetes default Service CIDR is ready",
                   "lastTransitionTime": jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default()}]}}),
    )
    .await;
    // Its endpoint is the control plane on the underlay, as a real API server publishes itself.
    ensure(
        store,
        cluster,
        "EndpointSlice",
        "default",
        json!({"metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": [crate::underlay::control_plane_ip().to_string()], "conditions": {"ready": true}}],
               "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}]}),
    )
    .await;
}
