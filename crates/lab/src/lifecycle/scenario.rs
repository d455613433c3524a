//! The pods the lab's own scenarios (the demo, the benchmarks) deploy, and waiting for
//! them to be Ready.

use anyhow::bail;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A Pod: the built-in server on port 80 (`serves`), else a shell that sleeps; on
/// `node`, or wherever the scheduler puts it.
pub fn pod(name: &str, namespace: &str, node: Option<&str>, serves: bool) -> Value {
    let container = if serves {
        json!({"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80}]})
    } else {
        json!({"name": "shell", "image": "busybox:1.36", "command": ["sleep", "3600"]})
    };
    let mut spec = json!({"containers": [container]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
           "spec": spec})
}

/// A Ready pod: name, node, IP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadyPod {
    pub name: String,
    pub node: String,
    pub ip: String,
}

/// Waits until `count` pods of `namespace` are Ready; returns them sorted by name.
pub async fn wait_ready(
    client: &kube::Client,
    namespace: &str,
    count: usize,
    within: Duration,
) -> anyhow::Result<Vec<ReadyPod>> {
    wait_ready_selected(client, namespace, None, count, within).await
}

/// [`wait_ready`], counting only the pods `selector` (a label selector) picks.
pub async fn wait_ready_selected(
    client: &kube::Client,
    namespace: &str,
    selector: Option<&str>,
    count: usize,
    within: Duration,
) -> anyhow::Result<Vec<ReadyPod>> {
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + within;
    let params = match selector {
        Some(s) => kube::api::ListParams::default().labels(s),
        None => kube::api::ListParams::default(),
    };
    loop {
        let mut ready: Vec<ReadyPod> = api
            .list(&params)
            .await?
            .items
            .iter()
            .filter(|p| pod_ready(p))
            .filter_map(|p| {
                Some(ReadyPod {
                    name: p.metadata.name.clone()?,
                    node: p.spec.as_ref()?.node_name.clone().unwrap_or_default(),
                    ip: p.status.as_ref()?.pod_ip.clone()?,
                })
            })
            .collect();
        if ready.len() >= count {
            ready.sort();
            return Ok(ready);
        }
        if Instant::now() > deadline {
            bail!("only {} of {count} pods in {namespace} became Ready within {within:?}", ready.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `GET /` on port 80 of `ip`, from the calling thread's network namespace, within
/// `connect` to connect and a second or three to answer; the whole response.
pub fn http_get(ip: &str, connect: Duration) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr =
        format!("{ip}:80").parse().map_err(|_| std::io::Error::other(format!("bad pod IP {ip:?}")))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, connect)?;
    s.set_read_timeout(Some(connect.max(Duration::from_secs(1))))?;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
