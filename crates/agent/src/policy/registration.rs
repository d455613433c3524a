//! The socket the CNI plugin registers new pods on (root only): one JSON line in, one
//! answer out once the pod's policy is in the kernel, or why not.

use super::world::{Event, REGISTRATION_WAIT, Registration};
use flatnet_model::policy::Key;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Serves registrations on `path` (replacing a stale socket file) until the task ends.
pub(super) async fn serve_registrations(path: PathBuf, tx: mpsc::UnboundedSender<(Instant, Event)>) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(
                "cannot listen for pod registrations on {}: {e}; new pods start without waiting for policy",
                path.display()
            );
            return;
        }
    };
    // Only root may register a pod: a registration decides a pod's isolation.
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        warn!("cannot make {} private: {e}", path.display());
    }
    info!("pod registrations on {}", path.display());
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                warn!("accepting a pod registration: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut line = String::new();
            // One short line, sent at once.
            let mut reader = BufReader::new(r.take(4096));
            let read = reader.read_line(&mut line);
            if !matches!(tokio::time::timeout(Duration::from_secs(5), read).await, Ok(Ok(_))) {
                return;
            }
            let answer = match parse_registration(&line) {
                Ok((key, ip)) => {
                    let (done, wait) = oneshot::channel();
                    let _ =
                        tx.send((Instant::now(), Event::Register(Registration { key, ip, done, at: Instant::now() })));
                    match tokio::time::timeout(REGISTRATION_WAIT + Duration::from_millis(500), wait).await {
                        Ok(Ok(r)) => r,
                        _ => Err("the agent did not program the pod's policy in time".into()),
                    }
                }
                Err(e) => Err(e),
            };
            let reply = match answer {
                Ok(()) => serde_json::json!({"ok": true}),
                Err(e) => serde_json::json!({"error": e}),
            };
            let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
        });
    }
}

fn parse_registration(line: &str) -> Result<(Key, Ipv4Addr), String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("registration is not JSON: {e}"))?;
    let text = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| format!("registration has no {k:?}"));
    let ip = text("ip")?.parse().map_err(|_| "registration ip is not an IPv4 address".to_string())?;
    Ok(((text("namespace")?, text("name")?), ip))
}
