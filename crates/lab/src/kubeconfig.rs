//! The kubeconfig `lab up` writes: one cluster, one user with a bearer token, one
//! context, so `KUBECONFIG=$(flatnet lab kubeconfig) kubectl get nodes` works.

pub fn render(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: flatnet-lab
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: flatnet-lab-admin
  user:
    token: {token}
contexts:
- name: flatnet-lab
  context:
    cluster: flatnet-lab
    user: flatnet-lab-admin
    namespace: default
current-context: flatnet-lab
"
    )
}

/// A fresh random bearer token.
pub fn new_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}
