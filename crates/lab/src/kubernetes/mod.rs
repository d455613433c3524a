//! The lab on the upstream control plane (`lab up --control-plane kubernetes`): etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler from `scripts/kubernetes`,
//! run inside the lab's underlay namespace, with TLS and client certificates from a CA of
//! the lab's, RBAC, and the lab's admin token. A forwarder keeps 127.0.0.1:6443 on the
//! host, where the embedded API server listens, so everything above the API is the same.

pub mod components;
pub mod pki;

use crate::layout::Layout;
use anyhow::Context;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// flatnet's install manifest: its ServiceAccounts, least-privilege ClusterRoles and
/// bindings are what `lab up` applies on the upstream control plane.
pub const MANIFEST: &str = include_str!("../../../../deploy/flatnet.yaml");
/// The lab's bindings of those roles to its agents' and DNS's certificate groups.
pub const LAB_RBAC: &str = include_str!("../../../../deploy/rbac.yaml");

/// The kinds of the manifest that `lab up` applies: the identities and their rights.
pub const RBAC_KINDS: [&str; 3] = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"];

/// Which API server the lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlPlane {
    /// The lab's own API server: no Go, sub-second start.
    #[default]
    Embedded,
    /// kube-apiserver, kube-controller-manager, kube-scheduler and etcd.
    Kubernetes,
}

impl std::fmt::Display for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Embedded => "embedded",
            Self::Kubernetes => "kubernetes",
        })
    }
}

impl std::str::FromStr for ControlPlane {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "embedded" => Ok(Self::Embedded),
            "kubernetes" => Ok(Self::Kubernetes),
            o => Err(format!("unknown control plane {o:?}: use embedded or kubernetes")),
        }
    }
}

/// The built components, or how to build them.
pub fn binaries() -> Result<Vec<PathBuf>, String> {
    ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        .iter()
        .map(|c| crate::upstream::binary(c))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--control-plane kubernetes needs the upstream components: {e}"))
}

/// Who each lab process is to the API: a user and its groups.
pub struct Identity {
    pub user: String,
    pub groups: Vec<&'static str>,
}

/// A kubelet: `system:node:<name>` in `system:nodes`, as the Node authorizer expects.
pub fn kubelet(node: &str) -> Identity {
    Identity { user: format!("system:node:{node}"), groups: vec!["system:nodes"] }
}

/// A node's agent, bound to the flatnet-agent ClusterRole (deploy/flatnet.yaml) by deploy/rbac.yaml.
pub fn agent(node: &str) -> Identity {
    Identity { user: format!("flatnet:agent:{node}"), groups: vec!["flatnet:agents"] }
}

/// The cluster DNS, bound to the flatnet-dns ClusterRole.
pub fn dns() -> Identity {
    Identity { user: "flatnet:dns".into(), groups: vec!["flatnet:dns"] }
}

/// The PKI, the admin token file and the components' kubeconfigs; made once.
pub fn prepare(layout: &Layout, token: &str) -> anyhow::Result<pki::Pki> {
    let dir = components::dir(layout);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let pki = pki::Pki::load_or_create(&pki::Pki::of(layout).dir)?;
    crate::write_file(
        &components::token_file(layout),
        &format!("{token},flatnet-lab-admin,flatnet-lab-admin,system:masters\n"),
        0o600,
    )?;
    for (file, user) in [
        ("controller-manager.kubeconfig", "system:kube-controller-manager"),
        ("scheduler.kubeconfig", "system:kube-scheduler"),
    ] {
        let path = dir.join(file);
        if !path.is_file() {
            crate::write_file(&path, &pki.client_kubeconfig(&components::local_server(), user, &[])?, 0o600)?;
        }
    }
    Ok(pki)
}

/// A kubeconfig for `who`, for the API server at `server`, with its own client
/// certificate.
pub fn kubeconfig(layout: &Layout, server: &str, who: &Identity) -> anyhow::Result<String> {
    let pki = pki::Pki::of(layout);
    Ok(pki.client_kubeconfig(server, &who.user, &who.groups)?)
}

/// The lab's CA as the kubeconfigs name it.
pub fn ca_pem(layout: &Layout) -> anyhow::Result<String> {
    let path = pki::Pki::of(layout).ca_cert();
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// Waits until the API server answers `/readyz` with 200 through `client`.
pub async fn wait_ready(client: &kube::Client, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let req = http::Request::get("/readyz").body(Vec::new())?;
        match client.request_text(req).await {
            Ok(t) if t.trim() == "ok" => return Ok(()),
            Ok(t) if Instant::now() > deadline => anyhow::bail!("kube-apiserver is not ready: {t}"),
            Err(e) if Instant::now() > deadline => anyhow::bail!("kube-apiserver is not ready: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Where a node's kubelet API certificate and key are.
fn kubelet_serving_files(layout: &Layout, node: &str) -> (PathBuf, PathBuf) {
    (layout.node_dir(node).join("kubelet.crt"), layout.node_dir(node).join("kubelet.key"))
}

/// Writes `node`'s kubelet API certificate for its address.
pub fn write_kubelet_serving(layout: &Layout, node: &str, ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
    let pki = pki::Pki::of(layout);
    let (cert, key) = pki.kubelet_serving(node, ip.into())?;
    let (c, k) = kubelet_serving_files(layout, node);
    crate::write_file(&c, &cert, 0o644)?;
    crate::write_file(&k, &key, 0o600)?;
    Ok(())
}

/// The kubelet API's TLS for `node`, when the lab runs the upstream control plane.
pub fn kubelet_api_tls(layout: &Layout, node: &str) -> Option<crate::kubelet::api::ApiTls> {
    let (cert, key) = kubelet_serving_files(layout, node);
    let pki = pki::Pki::of(layout);
    cert.is_file().then(|| crate::kubelet::api::ApiTls {
        cert,
        key,
        ca: pki.ca_cert(),
        apiserver_client: pki.kubelet_client().0,
    })
}
