//! How the long-running commands (the agent, the lab's control plane and kubelets) are
//! told to stop: SIGTERM or Ctrl-C.

/// A future that resolves on SIGTERM or Ctrl-C. Call it inside a runtime.
pub fn requested() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    })
}
