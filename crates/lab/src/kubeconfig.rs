//! The kubeconfig `lab up` writes: one cluster, one user with a bearer token, one
//! context, so `KUBECONFIG=$(flatnet lab kubeconfig) kubectl get nodes` works.

pub fn render(server: &str, ca_pem: &str, token: &str) -> String {
    render_for(server, ca_pem, "flatnet-lab-admin", &format!("token: {token}"))
}

/// A kubeconfig for `user`, whose credentials are the YAML `credentials` (a `token:`, or
/// `client-certificate-data:` and `client-key-data:` lines).
pub fn render_for(server: &str, ca_pem: &str, user: &str, credentials: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let credentials = credentials.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: flatnet-lab
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
{credentials}contexts:
- name: flatnet-lab
  context:
    cluster: flatnet-lab
    user: {user}
    namespace: default
current-context: flatnet-lab
"
    )
}

/// A fresh random bearer token.
pub fn new_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}
