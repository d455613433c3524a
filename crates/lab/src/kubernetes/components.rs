//! The upstream components' command lines: etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler, as the lab runs them inside its underlay namespace (the API
//! server on 192.168.1.1:6443 for the nodes and on that namespace's loopback for the
//! others and for the forwarder from 127.0.0.1:6443 on the host).

use super::pki::Pki;
use crate::layout::Layout;
use std::path::{Path, PathBuf};

/// The API server's port inside the underlay namespace.
pub const PORT: u16 = 6443;
/// etcd's client and peer ports, on the underlay namespace's loopback.
const ETCD_CLIENT: u16 = 2379;
const ETCD_PEER: u16 = 2380;

/// One component: its name (its log is `<name>.log` in the control plane's directory)
/// and command line.
pub struct Component {
    pub name: &'static str,
    pub cmd: Vec<String>,
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Where the upstream control plane keeps its state, logs and kubeconfigs.
pub fn dir(layout: &Layout) -> PathBuf {
    layout.kubernetes_dir()
}

/// The static token file: the lab's admin token (the kubeconfig `lab up` writes, as with
/// the embedded control plane), in group system:masters.
pub fn token_file(layout: &Layout) -> PathBuf {
    dir(layout).join("tokens.csv")
}

/// The four components, in the order they start.
pub fn all(
    layout: &Layout,
    pki: &Pki,
    bin: &dyn Fn(&str) -> Result<PathBuf, String>,
) -> Result<Vec<Component>, String> {
    let d = dir(layout);
    let etcd = Component {
        name: "etcd",
        cmd: vec![
            s(&bin("etcd")?),
            "--name=lab".into(),
            format!("--data-dir={}", s(&d.join("etcd"))),
            format!("--listen-client-urls=http://127.0.0.1:{ETCD_CLIENT}"),
            format!("--advertise-client-urls=http://127.0.0.1:{ETCD_CLIENT}"),
            format!("--listen-peer-urls=http://127.0.0.1:{ETCD_PEER}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER}"),
            format!("--initial-cluster=lab=http://127.0.0.1:{ETCD_PEER}"),
            "--log-level=warn".into(),
            // A throwaway cluster on a shared disk: no fsync per write.
            "--unsafe-no-fsync".into(),
        ],
    };
    let (kubelet_cert, kubelet_key) = pki.kubelet_client();
    let apiserver = Component {
        name: "kube-apiserver",
        cmd: vec![
            s(&bin("kube-apiserver")?),
            format!("--etcd-servers=http://127.0.0.1:{ETCD_CLIENT}"),
            "--bind-address=0.0.0.0".into(),
            format!("--secure-port={PORT}"),
            format!("--advertise-address={}", crate::underlay::control_plane_ip()),
            format!("--tls-cert-file={}", s(&pki.serving_cert())),
            format!("--tls-private-key-file={}", s(&pki.serving_key())),
            format!("--client-ca-file={}", s(&pki.ca_cert())),
            format!("--token-auth-file={}", s(&token_file(layout))),
            format!("--service-account-key-file={}", s(&pki.sa_pub())),
            format!("--service-account-signing-key-file={}", s(&pki.sa_key())),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--kubelet-client-certificate={}", s(&kubelet_cert)),
            format!("--kubelet-client-key={}", s(&kubelet_key)),
            format!("--kubelet-certificate-authority={}", s(&pki.ca_cert())),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ],
    };
    let kcm = Component {
        name: "kube-controller-manager",
        cmd: [
            vec![s(&bin("kube-controller-manager")?)],
            kubeconfig_flags(&d.join("controller-manager.kubeconfig")),
            vec![
                "--bind-address=127.0.0.1".into(),
                "--leader-elect=false".into(),
                "--allocate-node-cidrs=true".into(),
                "--cluster-cidr=10.244.0.0/16".into(),
                "--node-cidr-mask-size=24".into(),
                "--service-cluster-ip-range=10.96.0.0/12".into(),
                format!("--cluster-signing-cert-file={}", s(&pki.ca_cert())),
                format!("--cluster-signing-key-file={}", s(&pki.ca_key())),
                format!("--root-ca-file={}", s(&pki.ca_cert())),
                format!("--service-account-private-key-file={}", s(&pki.sa_key())),
                "--use-service-account-credentials=true".into(),
                "--profiling=false".into(),
            ],
        ]
        .concat(),
    };
    let scheduler = Component {
        name: "kube-scheduler",
        cmd: [
            vec![s(&bin("kube-scheduler")?)],
            kubeconfig_flags(&d.join("scheduler.kubeconfig")),
            ["--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"].map(String::from).to_vec(),
        ]
        .concat(),
    };
    Ok(vec![etcd, apiserver, kcm, scheduler])
}

/// A controller's credentials, for its API calls and for checking its own clients.
fn kubeconfig_flags(path: &Path) -> Vec<String> {
    ["kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig"]
        .map(|f| format!("--{f}={}", s(path)))
        .to_vec()
}

/// The API server's address for the components beside it (the underlay's loopback).
pub fn local_server() -> String {
    format!("https://127.0.0.1:{PORT}")
}
