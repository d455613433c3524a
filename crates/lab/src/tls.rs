//! The lab's own certificate authority and the API server's serving certificate:
//! kubectl and client-go send a bearer token only over TLS.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Pem(String),
}

#[derive(Clone)]
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The names and addresses the API server answers to: loopback for people, the lab
/// underlay for nodes, and the `kubernetes` Service for pods.
pub fn default_sans() -> (Vec<IpAddr>, Vec<String>) {
    let ips = ["127.0.0.1", "192.168.1.1", "10.96.0.1"].iter().map(|s| s.parse().expect("literal")).collect();
    let names = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (ips, names)
}

pub fn generate(ips: &[IpAddr], names: &[String]) -> Result<Pki, TlsError> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "flatnet-lab-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut server = CertificateParams::new(names.to_vec())?;
    server.distinguished_name.push(DnType::CommonName, "flatnet-lab-apiserver");
    server.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let key = KeyPair::generate()?;
    let cert = server.signed_by(&key, &ca)?;
    Ok(Pki { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The PKI in `dir` (ca.crt, apiserver.crt, apiserver.key), made on first use.
pub fn load_or_create(dir: &Path) -> Result<Pki, TlsError> {
    let read = |n: &str| std::fs::read_to_string(dir.join(n));
    if let (Ok(ca_pem), Ok(cert_pem), Ok(key_pem)) = (read("ca.crt"), read("apiserver.crt"), read("apiserver.key")) {
        return Ok(Pki { ca_pem, cert_pem, key_pem });
    }
    let (ips, names) = default_sans();
    let pki = generate(&ips, &names)?;
    for (name, text, mode) in [
        ("ca.crt", &pki.ca_pem, 0o644),
        ("apiserver.crt", &pki.cert_pem, 0o644),
        ("apiserver.key", &pki.key_pem, 0o600),
    ] {
        let path = dir.join(name);
        crate::write_file(&path, text, mode)
            .map_err(|source| TlsError::Io { path: path.display().to_string(), source })?;
    }
    Ok(pki)
}

pub fn acceptor(pki: &Pki) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).map_err(|e| TlsError::Pem(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TCP listener whose connections reach axum with their TLS handshake done. Each
/// handshake runs as a task of its own, so a client that stalls one holds up nobody else.
pub struct TlsListener {
    addr: std::net::SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let addr = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = tcp.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(Self { addr, ready, acceptor_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accepting task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The certificates in a PEM file.
pub fn pem_certs(path: &Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
    Ok(rustls::pki_types::CertificateDer::pem_slice_iter(&text).collect::<Result<_, _>>()?)
}

/// The private key in a PEM file.
pub fn pem_key(path: &Path) -> anyhow::Result<rustls::pki_types::PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
    Ok(rustls::pki_types::PrivateKeyDer::from_pem_slice(&text)?)
}

/// A trust store of the CA certificates in a PEM file.
pub fn pem_roots(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(path)? {
        roots.add(c)?;
    }
    Ok(roots)
}
