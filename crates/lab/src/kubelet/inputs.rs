//! What a pod takes from the API before its containers start, as a kubelet fetches it:
//! the ConfigMaps and Secrets its volumes and environment name, its service account's
//! tokens (TokenRequests bound to the pod, renewed at 80% of their life), and the API
//! server's Service address.

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// What a pod's volumes and environment need from the API.
#[derive(Default, Clone)]
pub struct Inputs {
    /// ConfigMaps by name (None: not found).
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    /// Service-account tokens by volume name, and when each is to be renewed.
    pub tokens: HashMap<String, (String, Instant)>,
    /// The `kubernetes` Service's address (for the KUBERNETES_SERVICE_* variables).
    pub apiserver: Option<(String, i32)>,
}

impl Inputs {
    pub fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.config_maps.get(name).cloned().flatten()
    }
    pub fn secret(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secrets.get(name).cloned().flatten()
    }
}

fn names(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for v in spec.volumes.iter().flatten() {
        cms.extend(v.config_map.as_ref().map(|c| c.name.clone()));
        secrets.extend(v.secret.as_ref().and_then(|s| s.secret_name.clone()));
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            cms.extend(p.config_map.as_ref().map(|c| c.name.clone()));
            secrets.extend(p.secret.as_ref().map(|s| s.name.clone()));
        }
    }
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        for f in c.env_from.iter().flatten() {
            cms.extend(f.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(f.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        for e in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            cms.extend(e.config_map_key_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(e.secret_key_ref.as_ref().map(|r| r.name.clone()));
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// Fetches what `pod` needs; tokens in `keep` not yet due for renewal are kept.
pub async fn fetch(client: &kube::Client, pod: &Pod, keep: &Inputs) -> Result<Inputs, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let (cms, secrets) = names(pod);
    let mut out = Inputs::default();
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for name in cms {
        let got = cm_api.get_opt(&name).await.map_err(|e| format!("get configmap {ns}/{name}: {e}"))?;
        out.config_maps.insert(name, got.map(|c| c.data.unwrap_or_default()));
    }
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in secrets {
        let got = secret_api.get_opt(&name).await.map_err(|e| format!("get secret {ns}/{name}: {e}"))?;
        let data = got.map(|s| {
            let mut d: BTreeMap<String, Vec<u8>> =
                s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            d.extend(s.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
            d
        });
        out.secrets.insert(name, data);
    }
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(t) =
            v.projected.iter().flat_map(|p| p.sources.iter().flatten()).find_map(|s| s.service_account_token.as_ref())
        else {
            continue;
        };
        if let Some(kept) = keep.tokens.get(&v.name).filter(|(_, renew)| Instant::now() < *renew) {
            out.tokens.insert(v.name.clone(), kept.clone());
            continue;
        }
        let seconds = t.expiration_seconds.unwrap_or(3600);
        let token = request_token(client, pod, &ns, t.audience.clone(), seconds).await?;
        // Renewed at 80% of its life, as a kubelet does.
        let renew = Instant::now() + Duration::from_secs(u64::try_from(seconds).unwrap_or(3600) * 4 / 5);
        out.tokens.insert(v.name.clone(), (token, renew));
    }
    // The environment is made once, at a container's start: a refresh keeps what it had.
    if keep.apiserver.is_some() {
        out.apiserver = keep.apiserver.clone();
        return Ok(out);
    }
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    if let Ok(Some(s)) = services.get_opt("kubernetes").await {
        let spec = s.spec.unwrap_or_default();
        let port = spec.ports.iter().flatten().next().map_or(443, |p| p.port);
        out.apiserver = spec.cluster_ip.map(|ip| (ip, port));
    }
    Ok(out)
}

/// A TokenRequest for the pod's service account, bound to the pod.
async fn request_token(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    audience: Option<String>,
    seconds: i64,
) -> Result<String, String> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": audience.into_iter().collect::<Vec<_>>(), "expirationSeconds": seconds,
                 "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.metadata.name, "uid": pod.metadata.uid}},
    });
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let answer: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &body)
        .await
        .map_err(|e| format!("request a token for service account {ns}/{sa}: {e}"))?;
    answer.status.and_then(|s| s.token).ok_or_else(|| format!("the token request for {ns}/{sa} returned no token"))
}
