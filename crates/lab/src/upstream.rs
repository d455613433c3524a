//! The upstream Kubernetes components `scripts/kubernetes` builds, where it puts them
//! (outside the repository): a lab node may use kube-proxy as its Service proxy.

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
