//! The kubelet API on the node's address, port 10250, over TLS, as kube-apiserver reaches
//! it for `kubectl logs`: `GET /containerLogs/{namespace}/{pod}/{container}` with
//! `tailLines`, `follow` and `timestamps` ignored as the lab keeps no timestamps, read
//! from the containers' log files; `exec` over WebSocket (see [`super::exec`]). Only the
//! API server's own client certificate (`--kubelet-client-certificate`) is let in.
//! `attach` and `portForward` are not served.

use super::sandbox;
use crate::layout::Layout;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The kubelet API's port, as a kubelet's.
pub const PORT: u16 = 10250;

/// What the kubelet API serves with: its certificate, the CA clients must chain to, and
/// the one client certificate it lets in.
#[derive(Debug, Clone)]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub apiserver_client: PathBuf,
}

#[derive(Clone)]
struct Ctx {
    layout: Layout,
    node: String,
}

fn config(t: &ApiTls) -> anyhow::Result<rustls::ServerConfig> {
    use crate::tls::{pem_certs, pem_key, pem_roots};
    let (certs, key, roots) = (pem_certs(&t.cert)?, pem_key(&t.key)?, pem_roots(&t.ca)?);
    let allowed = pem_certs(&t.apiserver_client)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let verifier = Arc::new(OnlyTheApiServer { inner: verifier, allowed });
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// Chains to the CA, and is the API server's own certificate: a kubelet's or an
/// agent's, from the same CA, is refused.
#[derive(Debug)]
struct OnlyTheApiServer {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    allowed: Vec<CertificateDer<'static>>,
}

impl rustls::server::danger::ClientCertVerifier for OnlyTheApiServer {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed.iter().any(|a| a.as_ref() == end_entity.as_ref()) {
            Ok(ok)
        } else {
            Err(rustls::Error::General("only the API server may use the kubelet API".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Serves the kubelet API on `addr` until the task is dropped.
pub async fn serve(layout: Layout, node: String, addr: SocketAddr, t: ApiTls) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config(&t)?));
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    info!("kubelet API on https://{addr} (containerLogs, exec)");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{namespace}/{pod}/{container}", get(container_logs))
        .route("/exec/{namespace}/{pod}/{container}", axum::routing::any(exec))
        .route("/attach/{namespace}/{pod}/{container}", axum::routing::any(not_yet))
        .route("/portForward/{namespace}/{pod}", axum::routing::any(not_yet))
        .with_state(Ctx { layout, node });
    axum::serve(crate::tls::TlsListener::new(tcp, acceptor)?, app).await?;
    Ok(())
}

/// What the lab kubelet does not serve, said as a `Status` (which the API server passes
/// on, so that kubectl shows it).
async fn not_yet() -> Response {
    let message = "the flatnet lab does not serve pods/attach or pods/portforward: run a command with `kubectl exec`, or reach the pod's address from the lab (`flatnet lab exec POD -- CMD`)";
    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                    "message": message, "reason": "NotImplemented", "code": 501});
    (StatusCode::NOT_IMPLEMENTED, [(axum::http::header::CONTENT_TYPE, "application/json")], status.to_string())
        .into_response()
}

async fn exec(
    State(ctx): State<Ctx>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    ws: Result<axum::extract::ws::WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let sb = sandbox::adopt(&ctx.layout, &ctx.node).into_iter().find(|s| s.namespace == namespace && s.name == pod);
    super::exec::handle(sb, &container, query.as_deref().unwrap_or(""), ws)
}

/// The log file of a container of a pod on this node.
fn log_file(ctx: &Ctx, namespace: &str, pod: &str, container: &str) -> Option<PathBuf> {
    let sb = sandbox::adopt(&ctx.layout, &ctx.node).into_iter().find(|s| s.namespace == namespace && s.name == pod)?;
    Some(sb.dir.join(format!("{container}.log"))).filter(|p| p.is_file())
}

/// The last `n` lines of `text`.
fn tail(text: &[u8], n: usize) -> &[u8] {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    match body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n').nth(n.saturating_sub(1)) {
        Some((i, _)) if n > 0 => &text[i + 1..],
        _ if n == 0 => &[],
        _ => text,
    }
}

async fn container_logs(
    State(ctx): State<Ctx>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(path) = log_file(&ctx, &namespace, &pod, &container) else {
        return (
            StatusCode::NOT_FOUND,
            format!("container {container:?} of pod {namespace}/{pod} is not on node {}", ctx.node),
        )
            .into_response();
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("read {}: {e}", path.display())).into_response(),
    };
    let lines = q.get("tailLines").and_then(|n| n.parse::<usize>().ok());
    let first = lines.map_or(&text[..], |n| tail(&text, n)).to_vec();
    if q.get("follow").map(String::as_str) != Some("true") {
        return (StatusCode::OK, first).into_response();
    }
    // Follow: what is there, then what is appended, until the client goes or the pod does.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    let start = text.len() as u64;
    // A thread of its own, not the runtime's blocking pool (pods start there).
    std::thread::spawn(move || {
        use std::io::{Read, Seek};
        if tx.blocking_send(Ok(first)).is_err() {
            return;
        }
        let Ok(mut f) = std::fs::File::open(&path) else { return };
        if f.seek(std::io::SeekFrom::Start(start)).is_err() {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) if !path.exists() => return,
                Ok(0) if tx.is_closed() => return,
                Ok(0) => std::thread::sleep(Duration::from_millis(200)),
                Ok(n) => {
                    if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!("follow {}: {e}", path.display());
                    return;
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder().status(StatusCode::OK).body(Body::from_stream(stream)).expect("a plain response")
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 1), b"c");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }
}
