//! flatnet lab's control plane: a Kubernetes-compatible API server for the resources pod
//! networking uses, over an embedded crash-safe store, with the controllers a cluster
//! runs (node IPAM, Service IPs, EndpointSlices, a scheduler).
//!
//! `lifecycle` brings a lab up and down around it: the underlay, the nodes with their
//! kubelets, the cluster DNS.

pub mod apiserver;
pub mod control_plane;
pub mod controllers;
pub mod kubeconfig;
pub mod kubelet;
pub mod kubernetes;
pub mod layout;
pub mod lifecycle;
pub mod netexec;
pub mod nodes;
pub mod pod_network;
pub mod racks;
pub mod routers;
pub mod store;
pub mod tls;
pub mod underlay;
pub mod upstream;
pub mod upstream_dns;

/// Writes `text` to `path` with permission `mode` (0o600 for secrets: keys, tokens,
/// kubeconfigs).
pub fn write_file(path: &std::path::Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(mode).open(path)?;
    f.write_all(text.as_bytes())
}
