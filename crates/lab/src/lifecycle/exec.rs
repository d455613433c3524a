//! `flatnet lab exec`: run a command inside a pod, found by its sandbox record on disk
//! (no API call, so this process is still single-threaded when it enters the pod), and
//! the built-in server containers run.

use crate::kubelet::sandbox::Sandbox;
use crate::layout::Layout;
use crate::netexec;
use anyhow::{Context, bail};
use std::ffi::OsString;

/// The sandbox of pod `namespace/name` on any node of the lab; the newest, while a pod
/// of that name is being replaced.
pub fn find_sandbox(layout: &Layout, namespace: &str, name: &str) -> Option<Sandbox> {
    let made = |s: &Sandbox| std::fs::metadata(s.dir.join("sandbox.json")).and_then(|m| m.modified()).ok();
    layout
        .nodes()
        .iter()
        .flat_map(|node| crate::kubelet::sandbox::adopt(layout, node))
        .filter(|s| s.namespace == namespace && s.name == name)
        .max_by_key(made)
}

pub fn exec(layout: &Layout, namespace: &str, pod: &str, command: &[OsString]) -> anyhow::Result<()> {
    if !layout.settings().is_file() {
        bail!("the lab is not up (nothing in {}): run `flatnet lab up`", layout.state.display());
    }
    let s = find_sandbox(layout, namespace, pod).with_context(|| {
        format!("no running pod {namespace}/{pod} in the lab (is it Running? `kubectl get pod {pod} -n {namespace}`)")
    })?;
    let ctx = flatnet_kernel::enter::PodContext {
        netns: s.netns.clone(),
        resolv_conf: Some(s.resolv_conf()),
        hosts: Some(s.hosts()),
        hostname: Some(s.name.clone()),
        // The first container's volumes (its root, when it has one).
        mounts: crate::kubelet::sandbox::recorded_pids(&s)
            .first()
            .map(|(c, _)| s.container_mounts(c))
            .unwrap_or_default(),
        root: Some(s.rootfs()),
        workdir: None,
    };
    Err(anyhow::Error::from(flatnet_kernel::enter::exec(&ctx, command)))
}

pub fn netexec(pod: String, namespace: String, node: String, ports: &[String]) -> anyhow::Result<()> {
    let ports =
        ports.iter().map(|p| netexec::parse_port(p)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(netexec::serve(netexec::Identity { pod, namespace, node }, ports)).context("serve")
}
