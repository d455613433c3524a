//! The upstream control plane's PKI, from the lab's own CA: the API server's serving
//! certificate, the service-account signing key, and a client certificate per identity
//! (controller manager, scheduler, each kubelet in group `system:nodes`, the agents, the
//! cluster DNS), each in a kubeconfig of its own. Everything lives under `pki/`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.display().to_string(), source }
}

/// The CA's identity; re-created from its saved key to sign more certificates.
fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "flatnet-lab-kubernetes-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(ca)
}

/// The PKI directory of a lab's upstream control plane.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// The PKI of the lab at `layout` (made by `load_or_create`).
    pub fn of(layout: &crate::layout::Layout) -> Pki {
        Pki { dir: layout.kubernetes_dir().join("pki") }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn serving_cert(&self) -> PathBuf {
        self.dir.join("apiserver.crt")
    }
    pub fn serving_key(&self) -> PathBuf {
        self.dir.join("apiserver.key")
    }
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
    /// The API server's client certificate towards kubelets.
    pub fn kubelet_client(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("apiserver-kubelet-client.crt"), self.dir.join("apiserver-kubelet-client.key"))
    }

    /// The CA, the serving certificate and the service-account key, made once.
    pub fn load_or_create(dir: &Path) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let pki = Pki { dir: dir.to_path_buf() };
        if pki.ca_key().is_file() && pki.serving_cert().is_file() && pki.sa_pub().is_file() {
            return Ok(pki);
        }
        let ca_key = KeyPair::generate()?;
        let ca = ca_params()?.self_signed(&ca_key)?;
        pki.write(&pki.ca_cert(), &ca.pem(), 0o644)?;
        pki.write(&pki.ca_key(), &ca_key.serialize_pem(), 0o600)?;
        let issuer = Issuer::new(ca_params()?, ca_key);

        let (ips, names) = crate::tls::default_sans();
        let mut serving = CertificateParams::new(names)?;
        serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        serving.subject_alt_names.extend(ips.into_iter().map(SanType::IpAddress));
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        pki.write(&pki.serving_cert(), &serving.signed_by(&key, &issuer)?.pem(), 0o644)?;
        pki.write(&pki.serving_key(), &key.serialize_pem(), 0o600)?;

        let sa = KeyPair::generate()?;
        pki.write(&pki.sa_key(), &sa.serialize_pem(), 0o600)?;
        pki.write(&pki.sa_pub(), &sa.public_key_pem(), 0o644)?;

        let (cert, key) = pki.client_pems(&issuer, "kube-apiserver-kubelet-client", &["system:masters"])?;
        let (c, k) = pki.kubelet_client();
        pki.write(&c, &cert, 0o644)?;
        pki.write(&k, &key, 0o600)?;
        Ok(pki)
    }

    fn write(&self, path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
        crate::write_file(path, text, mode).map_err(io(path))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = std::fs::read_to_string(self.ca_key()).map_err(io(&self.ca_key()))?;
        Ok(Issuer::new(ca_params()?, KeyPair::from_pem(&key)?))
    }

    fn client_pems(
        &self,
        issuer: &Issuer<'_, KeyPair>,
        user: &str,
        groups: &[&str],
    ) -> Result<(String, String), PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            p.distinguished_name.push(DnType::OrganizationName, *g);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        Ok((p.signed_by(&key, issuer)?.pem(), key.serialize_pem()))
    }

    /// A serving certificate and key for a kubelet at `ip` (its API on port 10250), as
    /// kube-apiserver checks it (`--kubelet-certificate-authority`).
    pub fn kubelet_serving(&self, node: &str, ip: std::net::IpAddr) -> Result<(String, String), PkiError> {
        let mut p = CertificateParams::new(vec![node.to_string()])?;
        p.distinguished_name.push(DnType::CommonName, format!("system:node:{node}"));
        p.subject_alt_names.push(SanType::IpAddress(ip));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        Ok((p.signed_by(&key, &self.issuer()?)?.pem(), key.serialize_pem()))
    }

    /// A kubeconfig for `user` in `groups`, with a client certificate of its own, for the
    /// API server at `server`.
    pub fn client_kubeconfig(&self, server: &str, user: &str, groups: &[&str]) -> Result<String, PkiError> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (cert, key) = self.client_pems(&self.issuer()?, user, groups)?;
        let ca = std::fs::read_to_string(self.ca_cert()).map_err(io(&self.ca_cert()))?;
        let credentials = format!("client-certificate-data: {}\nclient-key-data: {}", b64(&cert), b64(&key));
        Ok(crate::kubeconfig::render_for(server, &ca, user, &credentials))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_chain_to_the_saved_ca_and_name_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let again = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(again.ca_cert()).unwrap(),
            std::fs::read(pki.ca_cert()).unwrap(),
            "made once, then reused"
        );
        let kc = pki.client_kubeconfig("https://127.0.0.1:6443", "system:node:node-1", &["system:nodes"]).unwrap();
        assert!(kc.contains("client-certificate-data: ") && kc.contains("client-key-data: "));
        assert!(std::fs::read_to_string(pki.sa_pub()).unwrap().contains("BEGIN PUBLIC KEY"));
        assert_eq!(
            std::fs::metadata(pki.ca_key())
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
                .unwrap(),
            0o600
        );
    }
}
