//! The pod subresources the API server hands to the pod's kubelet, as kube-apiserver
//! does: `log` (streamed, for `kubectl logs -f`) and `exec` (an upgraded connection,
//! WebSocket for kubectl 1.30 and later, passed through as it is). The API server
//! checks the pod and the container the way kube-apiserver does, then reaches the
//! node's kubelet API on its address in the underlay, over TLS with the client
//! certificate kubelets let in. `attach` and `portforward` say they are not served.

use super::{ApiServer, error};
use crate::apiserver::status::ApiError;
use crate::store::Key;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// How the API server reaches kubelets: from inside the lab's underlay, with its own
/// client certificate, trusting the CA that signed the kubelets' certificates.
#[derive(Clone)]
pub struct KubeletDialer {
    pub underlay: PathBuf,
    pub tls: Arc<rustls::ClientConfig>,
}

impl KubeletDialer {
    /// From the lab's kubelet PKI: its CA and the API server's kubelet client certificate.
    pub fn new(
        underlay: PathBuf,
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> anyhow::Result<Self> {
        use crate::tls::{pem_certs, pem_key, pem_roots};
        let (roots, chain, key) = (pem_roots(ca)?, pem_certs(cert)?, pem_key(key)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { underlay, tls: Arc::new(c) })
    }

    /// An HTTP/1.1 connection (upgrades allowed) to the kubelet API at `addr`.
    async fn connect(&self, addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Body>, String> {
        let path = self.underlay.clone();
        let tcp = tokio::task::spawn_blocking(move || {
            flatnet_kernel::netns::run_in(&path, || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("dial the kubelet at {addr}: {e}"))?;
        tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::from_std(tcp).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with the kubelet at {addr}: {e}"))?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP with the kubelet at {addr}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                warn!("connection to the kubelet at {addr}: {e}");
            }
        });
        Ok(send)
    }
}

/// What a stream request names, checked against the pod as kube-apiserver checks it.
#[derive(Debug, PartialEq, Eq)]
pub struct Located {
    pub kubelet: SocketAddr,
    pub container: String,
}

/// The pod's kubelet and the container a `sub` request is for (`container`: the query's,
/// else the pod's default container, else its only one).
pub fn locate(pod: &Value, node: Option<&Value>, container: Option<&str>, sub: &str) -> Result<Located, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names: Vec<&str> =
        pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    let inits: Vec<&str> =
        pod["spec"]["initContainers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    let default = pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str();
    let container = match container.or(default) {
        Some(c) if names.contains(&c) || inits.contains(&c) => c.to_string(),
        Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if names.len() == 1 => names[0].to_string(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )));
        }
    };
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if sub != "log" && matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!(
            "cannot {sub} into a container in a completed pod; current phase is {phase}"
        )));
    }
    let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    };
    let node = node.ok_or_else(|| ApiError::not_found("nodes", node_name))?;
    let ip = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str()?.parse::<IpAddr>().ok())
        .ok_or_else(|| ApiError::bad_request(format!("node {node_name} has no InternalIP")))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(crate::kubelet::api::PORT);
    Ok(Located { kubelet: SocketAddr::new(ip, port), container })
}

/// The kubelet's query for `sub` from the client's: exec's options under the names the
/// kubelet reads (`stdin=true` → `input=1`, …), log's as they are.
pub fn kubelet_query(sub: &str, query: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let yes = matches!(v.as_ref(), "true" | "1");
        match (sub, k.as_ref()) {
            (_, "container") => {}
            ("log", _) => {
                out.append_pair(&k, &v);
            }
            (_, "command") => {
                out.append_pair("command", &v);
            }
            (_, "stdin") if yes => {
                out.append_pair("input", "1");
            }
            (_, "stdout") if yes => {
                out.append_pair("output", "1");
            }
            (_, "stderr") if yes => {
                out.append_pair("error", "1");
            }
            (_, "tty") if yes => {
                out.append_pair("tty", "1");
            }
            _ => {}
        }
    }
    out.finish()
}

pub async fn pod_stream(
    State(api): State<Arc<ApiServer>>,
    Path((namespace, name, sub)): Path<(String, String, String)>,
    mut req: Request,
) -> Response {
    // Every other pod subresource (status, binding, …) is the API's own.
    if !matches!(sub.as_str(), "exec" | "attach" | "portforward" | "log") {
        return super::serve_request(api, req).await;
    }
    if !api.authorized(req.headers()) {
        return error(&ApiError::unauthorized());
    }
    if sub == "attach" || sub == "portforward" {
        return error(&ApiError::not_implemented(format!(
            "the flatnet lab does not serve pods/{sub}: run a command with `kubectl exec`, or reach the pod's address from the lab (`flatnet lab exec POD -- CMD`)"
        )));
    }
    let Some(dialer) = api.kubelets.get().cloned() else {
        return error(&ApiError::bad_request("this API server does not reach the kubelets (no lab underlay)"));
    };
    let query = req.uri().query().unwrap_or("").to_string();
    let container =
        form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "container").map(|(_, v)| v.into_owned());
    let (pod, node) = api.store.read(|o| {
        let pod = o.get(&Key::new("pods", &namespace, &name)).cloned();
        let node = pod
            .as_ref()
            .and_then(|p| p["spec"]["nodeName"].as_str())
            .and_then(|n| o.get(&Key::new("nodes", "", n)).cloned());
        (pod, node)
    });
    let Some(pod) = pod else { return error(&ApiError::not_found("pods", &name)) };
    let at = match locate(&pod, node.as_deref(), container.as_deref(), &sub) {
        Ok(at) => at,
        Err(e) => return error(&e),
    };
    let path = match sub.as_str() {
        "log" => "containerLogs",
        _ => "exec",
    };
    let uri = format!("/{path}/{namespace}/{name}/{}?{}", at.container, kubelet_query(&sub, &query));
    let mut send = match dialer.connect(at.kubelet).await {
        Ok(s) => s,
        Err(e) => return error(&ApiError::bad_gateway(e)),
    };
    let mut out =
        hyper::Request::builder().method(if sub == "log" { Method::GET } else { req.method().clone() }).uri(&uri);
    for h in [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ] {
        for v in req.headers().get_all(&h) {
            out = out.header(&h, v);
        }
    }
    let out = out
        .header(
            header::HOST,
            HeaderValue::from_str(&at.kubelet.to_string()).unwrap_or(HeaderValue::from_static("kubelet")),
        )
        .body(Body::empty());
    let Ok(out) = out else { return error(&ApiError::bad_request("the request cannot be passed on")) };
    let resp = match send.send_request(out).await {
        Ok(r) => r,
        Err(e) => {
            return error(&ApiError::bad_gateway(format!("the kubelet at {}: {e}", at.kubelet)));
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // A log stream, or the kubelet's refusal, as it is.
        let (parts, body) = resp.into_parts();
        return Response::from_parts(parts, Body::new(body));
    }
    // Both sides upgrade; then bytes flow both ways until either ends.
    let mut back = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in resp.headers() {
        back = back.header(k, v);
    }
    let client = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let (Ok(client), Ok(kubelet)) = (client.await, hyper::upgrade::on(resp).await) else {
            warn!("an exec upgrade did not complete");
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(kubelet)).await;
    });
    back.body(Body::empty()).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], phase: &str) -> Value {
        json!({"metadata": {"name": "talker"}, "spec": {"nodeName": "node-2",
               "containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>()},
               "status": {"phase": phase}})
    }

    fn node() -> Value {
        json!({"status": {"addresses": [{"type": "Hostname", "address": "node-2"}, {"type": "InternalIP", "address": "192.168.1.12"}],
               "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}})
    }

    #[test]
    fn the_container_and_the_kubelet_are_found_as_kube_apiserver_finds_them() {
        let at = locate(&pod(&["talker"], "Running"), Some(&node()), None, "exec").unwrap();
        assert_eq!(at, Located { kubelet: "192.168.1.12:10250".parse().unwrap(), container: "talker".into() });
        let two = pod(&["a", "b"], "Running");
        assert_eq!(locate(&two, Some(&node()), Some("b"), "exec").unwrap().container, "b");
        let e = locate(&two, Some(&node()), None, "exec").unwrap_err();
        assert_eq!(e.message, "a container name must be specified for pod talker, choose one of: [a b]");
        let e = locate(&two, Some(&node()), Some("nope"), "exec").unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (400, "container nope is not valid for pod talker"));
    }

    #[test]
    fn a_completed_pod_takes_no_exec_but_keeps_its_logs() {
        let done = pod(&["talker"], "Succeeded");
        let e = locate(&done, Some(&node()), None, "exec").unwrap_err();
        assert_eq!(e.message, "cannot exec into a container in a completed pod; current phase is Succeeded");
        assert!(locate(&done, Some(&node()), None, "log").is_ok());
    }

    #[test]
    fn exec_options_take_the_names_the_kubelet_reads() {
        let q = kubelet_query(
            "exec",
            "command=sh&command=-c&command=echo+hi&container=talker&stdin=true&stdout=true&tty=false",
        );
        assert_eq!(q, "command=sh&command=-c&command=echo+hi&input=1&output=1");
        assert_eq!(kubelet_query("log", "container=talker&follow=true&tailLines=2"), "follow=true&tailLines=2");
    }
}
