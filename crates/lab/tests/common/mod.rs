//! An in-process lab control plane on 127.0.0.1 (TLS, bearer token, its own store in a
//! temporary directory) and clients for it: the kube crate's, and raw HTTP requests
//! through that same client for what kube's typed API will not send.
#![allow(dead_code, reason = "each test file uses a different part of the harness")]

use flatnet_lab::apiserver::admission::ClusterConfig;
use flatnet_lab::control_plane::{self, ControlPlane};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct TestLab {
    pub cp: Option<ControlPlane>,
    pub addr: SocketAddr,
    pub client: kube::Client,
    pub kubeconfig: String,
    server: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestLab {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestLab {
    /// Starts (or restarts, on the same store) a control plane in `dir`, on `port` (0 for any).
    pub async fn start(dir: &Path, port: u16) -> Self {
        let pki = flatnet_lab::tls::load_or_create(dir).unwrap();
        let token_file = dir.join("token");
        let token = match std::fs::read_to_string(&token_file) {
            Ok(t) => t,
            Err(_) => {
                let t = flatnet_lab::kubeconfig::new_token();
                std::fs::write(&token_file, &t).unwrap();
                t
            }
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cp = control_plane::start(dir, token.clone(), ClusterConfig::default(), addr.port()).await.unwrap();
        let api = cp.api.clone();
        let ca_pem = pki.ca_pem.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = control_plane::serve(api, listener, &pki, async move {
                let _ = stopped.await;
            })
            .await;
        });
        let kubeconfig = flatnet_lab::kubeconfig::render(&format!("https://{addr}"), &ca_pem, &token);
        let client = client_for(&kubeconfig).await;
        Self { cp: Some(cp), addr, client, kubeconfig, server, stop: Some(stop) }
    }

    pub fn store(&self) -> &flatnet_lab::store::Store {
        &self.cp.as_ref().expect("running").store
    }

    /// Stops serving and closes the store, as a process exit would.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(cp) = self.cp.take() {
            cp.shutdown().await;
        }
        let _ = (&mut self.server).await;
    }

    /// A raw request; returns (status, body as JSON or Null).
    pub async fn raw(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, serde_json::Value) {
        raw_with(&self.client, method, path, content_type, body).await
    }
}

pub async fn client_for(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

pub async fn raw_with(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body.to_vec())
        .unwrap();
    let resp = client.send(req.map(kube::client::Body::from)).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// Polls `cond` until it holds or `within` passes.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
