//! Reaching a running lab's API from a command: a kube client from the lab's
//! kubeconfig, and a small runtime for the command's own calls.

use crate::layout::Layout;
use anyhow::Context;

/// A kube client for the lab, from its kubeconfig.
pub async fn client(layout: &Layout) -> anyhow::Result<kube::Client> {
    let path = layout.kubeconfig();
    let kc = kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("read {} (is the lab up? run `flatnet lab up`)", path.display()))?;
    Ok(kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)?)
}

/// A small runtime for a command's own API calls.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
