//! Telling the node agent a pod's address at ADD, and waiting until it confirms that the
//! pod's NetworkPolicy is in force: the runtime starts the pod's first process only after
//! ADD returns, so a pod a policy isolates is isolated from its first packet.
//!
//! The protocol is one JSON line each way over the agent's Unix socket:
//! `{"namespace":…,"name":…,"ip":…}` then `{"ok":true}` or `{"error":"…"}`.

use flatnet_model::cni::{CniError, ErrorCode, Invocation, NetConf};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long ADD waits for the agent (it answers in milliseconds when it is running).
const WAIT: Duration = Duration::from_secs(10);

/// Registers the pod with the agent. A call without Kubernetes pod arguments, or on a
/// node where no agent socket exists, has nothing to wait for.
pub fn register(conf: &NetConf, inv: &Invocation, ip: Ipv4Addr) -> Result<(), CniError> {
    let (Some(namespace), Some(name)) = (inv.arg("K8S_POD_NAMESPACE"), inv.arg("K8S_POD_NAME")) else {
        return Ok(());
    };
    let path = Path::new(&conf.agent_socket);
    if !path.exists() {
        return Ok(());
    }
    let fail = |what: String| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!("the flatnet agent did not confirm pod {namespace}/{name}'s NetworkPolicy: {what}"),
            format!(
                "the pod starts once the agent behind {} has put its policy in force; check that the agent runs on this node",
                path.display()
            ),
        )
    };
    let mut s = UnixStream::connect(path).map_err(|e| fail(format!("connect to {}: {e}", path.display())))?;
    s.set_read_timeout(Some(WAIT)).and_then(|()| s.set_write_timeout(Some(WAIT))).map_err(|e| fail(e.to_string()))?;
    let line = serde_json::json!({"namespace": namespace, "name": name, "ip": ip.to_string()}).to_string() + "\n";
    s.write_all(line.as_bytes()).map_err(|e| fail(format!("send: {e}")))?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).map_err(|e| fail(format!("no answer within {WAIT:?}: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&answer).map_err(|_| fail(format!("answer {answer:?}")))?;
    if v["ok"] == true {
        return Ok(());
    }
    Err(fail(v["error"].as_str().unwrap_or("no reason given").to_string()))
}
