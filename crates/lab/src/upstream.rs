//! The upstream programs flatnet is measured and run against, where the scripts that
//! build them put them (outside the repository): the Kubernetes components of
//! `scripts/kubernetes` (a lab node may use kube-proxy as its Service proxy), and the
//! peers of `scripts/peers` (CoreDNS, the reference CNI plugins, Flannel).

use std::path::PathBuf;

/// The Kubernetes release `scripts/kubernetes` pins.
pub const KUBERNETES_VERSION: &str = "v1.37.2";

/// `component` as built (e.g. `kube-proxy`), or how to build it.
pub fn binary(component: &str) -> Result<PathBuf, String> {
    let cache = std::env::var_os("FLATNET_KUBERNETES_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/flatnet/kubernetes"), PathBuf::from);
    let path = cache.join("bin").join(format!("kubernetes-{KUBERNETES_VERSION}")).join(component);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{component} {KUBERNETES_VERSION} is not built (no {}): run scripts/kubernetes (Go, from the module proxy; minutes)",
            path.display()
        ))
    }
}

/// The releases `scripts/peers` pins.
pub const COREDNS_VERSION: &str = "v1.15.0";
pub const PLUGINS_VERSION: &str = "v1.10.0";
pub const FLANNEL_VERSION: &str = "v0.28.10";

/// Where `scripts/peers` puts peer `name` at `version` (FLATNET_PEERS_CACHE, or
/// /var/cache/flatnet/peers, then `<name>-<version>`).
pub fn peer_dir(name: &str, version: &str) -> PathBuf {
    std::env::var_os("FLATNET_PEERS_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/flatnet/peers"), PathBuf::from)
        .join(format!("{name}-{version}"))
}
