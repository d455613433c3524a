//! Service-account credentials as kube-apiserver provides them: the ServiceAccount
//! admission plugin's defaults on a new pod (its ServiceAccount, and the projected
//! `kube-api-access-*` volume with a token, the cluster CA and the namespace), and the
//! TokenRequest subresource (`serviceaccounts/NAME/token`) that fills that volume's token.

use super::sa_token::TokenSigner;
use super::status::ApiError;
use crate::store::{Key, Objects};
use serde_json::{Value, json};

pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Where containers find their credentials (client-go's and kube-rs's in-cluster config
/// read `token`, `ca.crt` and `namespace` there).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap of the cluster CA in every namespace (the root CA publisher's).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// The audience of a token requested with none: kube-apiserver's default, its issuer
/// (what the lab's upstream control plane sets).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// The token lifetime of the projected volume: an hour and 7 s, kube-apiserver's marker
/// of a token its kubelet asked for.
const VOLUME_TOKEN_SECONDS: i64 = 3607;
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
const TOKEN_REQUEST_API_VERSION: &str = "authentication.k8s.io/v1";
/// The group-qualified kind errors about a TokenRequest name.
const TOKEN_REQUEST: &str = "TokenRequest.authentication.k8s.io";

/// The ServiceAccount admission plugin on a pod's creation: the `default` ServiceAccount
/// when it names none; its token volume and a mount of it in every container (unless
/// the pod or its ServiceAccount turns automounting off); its ServiceAccount's image
/// pull secrets when it has none. A pod whose ServiceAccount does not exist (yet) is
/// still admitted, unlike kube-apiserver: the lab's controllers make `default` a moment
/// after its namespace. Mirror pods and the lab's synthetic pods (benchmarks make
/// thousands, and no kubelet runs them) are left as they are.
pub fn admit_pod(all: &Objects, namespace: &str, pod: &mut Value) {
    let annotations = &pod["metadata"]["annotations"];
    if [MIRROR_POD_ANNOTATION, crate::kubelet::SYNTHETIC_ANNOTATION].iter().any(|a| annotations.get(a).is_some()) {
        return;
    }
    let spec = &mut pod["spec"];
    if spec["serviceAccountName"].as_str().is_none_or(str::is_empty) {
        spec["serviceAccountName"] = json!(DEFAULT_SERVICE_ACCOUNT);
        spec["serviceAccount"] = json!(DEFAULT_SERVICE_ACCOUNT);
    }
    let sa_name = spec["serviceAccountName"].as_str().unwrap_or(DEFAULT_SERVICE_ACCOUNT).to_string();
    let sa = all.get(&Key::new("serviceaccounts", namespace, &sa_name)).map(|sa| &**sa);
    if automount(spec, sa) {
        mount_token(spec);
    }
    let pull_secrets = sa.and_then(|sa| sa["imagePullSecrets"].as_array()).filter(|s| !s.is_empty());
    if let Some(secrets) = pull_secrets
        && spec["imagePullSecrets"].as_array().is_none_or(Vec::is_empty)
    {
        spec["imagePullSecrets"] = secrets.iter().map(|s| json!({"name": s["name"]})).collect();
    }
}

/// The pod's `automountServiceAccountToken`, else its ServiceAccount's, else true.
fn automount(spec: &Value, sa: Option<&Value>) -> bool {
    spec["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| sa.and_then(|sa| sa["automountServiceAccountToken"].as_bool()))
        .unwrap_or(true)
}

/// Mounts the token volume at [`TOKEN_MOUNT_PATH`] in every init container and container
/// with nothing mounted there; adds the volume when one was mounted and the pod has no
/// `kube-api-access-*` volume already (whose name the mounts then take).
fn mount_token(spec: &mut Value) {
    let existing = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .find(|n| n.starts_with(crate::kubelet::TOKEN_VOLUME_PREFIX))
        .map(str::to_string);
    let volume = existing
        .clone()
        .unwrap_or_else(|| format!("{}{}", crate::kubelet::TOKEN_VOLUME_PREFIX, super::names::random_suffix()));
    let mount = json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        // `get_mut`: indexing would add a null list to a pod that has none.
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            let has_mount =
                c["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPath"] == TOKEN_MOUNT_PATH);
            if !has_mount {
                push(&mut c["volumeMounts"], mount.clone());
                mounted = true;
            }
        }
    }
    if existing.is_none() && mounted {
        push(&mut spec["volumes"], json!({"name": volume, "projected": token_volume_source()}));
    }
}

fn push(list: &mut Value, item: Value) {
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(items) = list.as_array_mut() {
        items.push(item);
    }
}

/// The projected volume kube-apiserver gives a pod: a token, the cluster CA, the namespace.
fn token_volume_source() -> Value {
    json!({"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": VOLUME_TOKEN_SECONDS, "path": "token"}},
        {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]})
}

/// A TokenRequest for ServiceAccount `namespace/name` (its body), answered as
/// kube-apiserver answers it: the request with the ServiceAccount's identity, the
/// default audience and lifetime filled in, and a status with the token and its expiry.
/// A `boundObjectRef` must name an object that exists (with that uid, when given).
pub fn token_request(
    all: &Objects,
    signer: &TokenSigner,
    namespace: &str,
    name: &str,
    body: &[u8],
    now: jiff::Timestamp,
) -> Result<Value, ApiError> {
    let mut req = parse_token_request(body)?;
    let meta = &req["metadata"];
    if let Some(n) = meta["name"].as_str().filter(|n| !n.is_empty() && *n != name) {
        let why = format!("Invalid value: {n:?}: must match the service account name if specified");
        return Err(ApiError::invalid(TOKEN_REQUEST, name, "metadata.name", why));
    }
    if let Some(ns) = meta["namespace"].as_str().filter(|ns| !ns.is_empty() && *ns != namespace) {
        let why = format!("Invalid value: {ns:?}: must match the service account namespace if specified");
        return Err(ApiError::invalid(TOKEN_REQUEST, name, "metadata.namespace", why));
    }
    let sa = all
        .get(&Key::new("serviceaccounts", namespace, name))
        .ok_or_else(|| ApiError::not_found("serviceaccounts", name))?;
    let sa_uid = sa["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    if let Some(uid) = meta["uid"].as_str().filter(|u| !u.is_empty() && *u != sa_uid) {
        let why =
            format!("the UID in the token request ({uid}) does not match the UID of the service account ({sa_uid})");
        return Err(ApiError::conflict(TOKEN_REQUEST, name, &why));
    }
    let now = now.round(jiff::Unit::Second).unwrap_or(now);
    req["metadata"] =
        json!({"name": name, "namespace": namespace, "uid": sa_uid, "creationTimestamp": now.to_string()});
    let spec = &mut req["spec"];
    if spec["audiences"].as_array().is_none_or(Vec::is_empty) {
        spec["audiences"] = json!([API_AUDIENCE]);
    }
    let seconds = expiration_seconds(spec)?;
    spec["expirationSeconds"] = json!(seconds);
    if !spec["boundObjectRef"].is_null() {
        check_bound_object(all, namespace, name, &spec["boundObjectRef"])?;
    }
    let expires = jiff::Timestamp::from_second(now.as_second().saturating_add(seconds))
        .map_err(|e| ApiError::internal(&format!("the token's expiry: {e}")))?;
    let token = signer.issue(namespace, name, expires.as_second());
    req["status"] = json!({"token": token, "expirationTimestamp": expires.to_string()});
    Ok(req)
}

/// The body as a TokenRequest object (kind and apiVersion filled in when left out).
fn parse_token_request(body: &[u8]) -> Result<Value, ApiError> {
    let mut req: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a valid TokenRequest: {e}")))?;
    if !req.is_object() {
        return Err(ApiError::bad_request("the body must be a TokenRequest object"));
    }
    if let Some(kind) = req["kind"].as_str().filter(|k| *k != "TokenRequest") {
        return Err(ApiError::bad_request(format!("the body is a {kind}, but this path takes a TokenRequest")));
    }
    if let Some(av) = req["apiVersion"].as_str().filter(|av| *av != TOKEN_REQUEST_API_VERSION) {
        return Err(ApiError::bad_request(format!(
            "apiVersion {av:?} is not served here: use {TOKEN_REQUEST_API_VERSION}"
        )));
    }
    req["kind"] = json!("TokenRequest");
    req["apiVersion"] = json!(TOKEN_REQUEST_API_VERSION);
    if !req["spec"].is_object() {
        req["spec"] = json!({});
    }
    Ok(req)
}

/// `spec.expirationSeconds`, an hour by default, within kube-apiserver's bounds.
fn expiration_seconds(spec: &Value) -> Result<i64, ApiError> {
    let seconds = match &spec["expirationSeconds"] {
        Value::Null => 3600,
        v => v.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!("spec.expirationSeconds: {v} is not a whole number of seconds"))
        })?,
    };
    let why = match seconds {
        s if s < 600 => "may not specify a duration less than 10 minutes",
        s if s > 1_i64 << 32 => "may not specify a duration larger than 2^32 seconds",
        s => return Ok(s),
    };
    Err(ApiError::invalid(TOKEN_REQUEST, "", "spec.expirationSeconds", format!("Invalid value: {seconds}: {why}")))
}

/// The kinds a token can be bound to: kind, where the objects are stored, namespaced.
const BINDABLE: &[(&str, &str, bool)] = &[("Pod", "pods", true), ("Node", "nodes", false), ("Secret", "secrets", true)];

/// The object a token is to be bound to exists (with the uid given, if one is), and a
/// pod runs as the ServiceAccount the token is for; kube-apiserver's errors otherwise.
fn check_bound_object(all: &Objects, namespace: &str, sa_name: &str, r: &Value) -> Result<(), ApiError> {
    let (kind, ref_name) = (r["kind"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""));
    let api_version = r["apiVersion"].as_str().unwrap_or("");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let Some((_, resource, namespaced)) = BINDABLE.iter().find(|(k, _, _)| group.is_empty() && *k == kind) else {
        return Err(ApiError::bad_request(format!(
            "cannot bind token to object of type {group}/{version}, Kind={kind}"
        )));
    };
    let key = Key::new(resource, if *namespaced { namespace } else { "" }, ref_name);
    let obj = all.get(&key).ok_or_else(|| ApiError::not_found(resource, ref_name))?;
    if kind == "Pod" && obj["spec"]["serviceAccountName"] != sa_name {
        return Err(ApiError::bad_request(format!(
            "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name."
        )));
    }
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
    match r["uid"].as_str().filter(|u| !u.is_empty()) {
        Some(want) if want != uid => Err(ApiError::conflict(
            kind,
            ref_name,
            &format!(
                "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn objects(items: &[(&str, &str, Value)]) -> Objects {
        let mut all = Objects::default();
        for (resource, ns, obj) in items {
            let name = obj["metadata"]["name"].as_str().unwrap();
            all.map.insert(Key::new(resource, ns, name), Arc::new(obj.clone()));
        }
        all
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn a_new_pod_gets_the_default_service_account_and_its_token_volume() {
        let mut p = pod(json!({
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "web", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                           {"name": "own", "volumeMounts": [{"name": "mine", "mountPath": TOKEN_MOUNT_PATH}]}],
        }));
        admit_pod(&Objects::default(), "default", &mut p);
        let spec = &p["spec"];
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["serviceAccount"], "default");
        let volumes = spec["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 1);
        let name = volumes[0]["name"].as_str().unwrap();
        assert!(name.starts_with("kube-api-access-") && name.len() == "kube-api-access-".len() + 5, "{name}");
        assert_eq!(volumes[0]["projected"], token_volume_source());
        let mount = json!({"name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
        assert_eq!(spec["initContainers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(spec["containers"][0]["volumeMounts"][1], mount);
        // A container with its own mount there keeps it.
        assert_eq!(spec["containers"][1]["volumeMounts"], json!([{"name": "mine", "mountPath": TOKEN_MOUNT_PATH}]));
    }

    #[test]
    fn the_volume_projects_the_token_the_ca_and_the_namespace() {
        let v = token_volume_source();
        assert_eq!(v["defaultMode"], 420);
        assert_eq!(v["sources"][0]["serviceAccountToken"], json!({"expirationSeconds": 3607, "path": "token"}));
        assert_eq!(v["sources"][1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(v["sources"][2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"], "metadata.namespace");
    }

    #[test]
    fn automount_false_on_the_pod_or_its_service_account_adds_no_volume() {
        let mut p = pod(json!({"automountServiceAccountToken": false, "containers": [{"name": "web"}]}));
        admit_pod(&Objects::default(), "default", &mut p);
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert!(p["spec"]["volumes"].is_null() && p["spec"]["containers"][0]["volumeMounts"].is_null());

        let sa = json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false});
        let all = objects(&[("serviceaccounts", "default", sa)]);
        let mut p = pod(json!({"serviceAccountName": "quiet", "containers": [{"name": "web"}]}));
        admit_pod(&all, "default", &mut p);
        assert!(p["spec"]["volumes"].is_null());
        // The pod's own setting wins over its ServiceAccount's.
        let mut p = pod(
            json!({"serviceAccountName": "quiet", "automountServiceAccountToken": true, "containers": [{"name": "web"}]}),
        );
        admit_pod(&all, "default", &mut p);
        assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn an_existing_token_volume_is_reused_and_synthetic_pods_are_left_alone() {
        let volume = json!({"name": "kube-api-access-abcde", "projected": token_volume_source()});
        let mut p = pod(json!({"volumes": [volume], "containers": [{"name": "web"}]}));
        admit_pod(&Objects::default(), "default", &mut p);
        assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(1));
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0]["name"], "kube-api-access-abcde");

        let mut p = pod(json!({"containers": [{"name": "web"}]}));
        p["metadata"]["annotations"][crate::kubelet::SYNTHETIC_ANNOTATION] = json!("true");
        let before = p.clone();
        admit_pod(&Objects::default(), "default", &mut p);
        assert_eq!(p, before);
    }

    fn sa(name: &str) -> (&'static str, &'static str, Value) {
        ("serviceaccounts", "default", json!({"metadata": {"name": name, "namespace": "default", "uid": "sa-uid"}}))
    }

    fn request(spec: Value) -> Vec<u8> {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}).to_string().into_bytes()
    }

    #[test]
    fn a_token_request_answers_with_a_token_the_server_accepts() {
        let signer = TokenSigner::new("lab-token");
        let now: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let all = objects(&[sa("default")]);
        let out = token_request(&all, &signer, "default", "default", &request(json!({})), now).unwrap();
        assert_eq!(out["kind"], "TokenRequest");
        assert_eq!(out["metadata"]["uid"], "sa-uid");
        assert_eq!(out["spec"]["audiences"], json!([API_AUDIENCE]));
        assert_eq!(out["spec"]["expirationSeconds"], 3600);
        assert_eq!(out["status"]["expirationTimestamp"], "2030-01-01T01:00:00Z");
        let token = out["status"]["token"].as_str().unwrap();
        let id = signer.verify(token, now.as_second()).unwrap();
        assert_eq!((id.namespace.as_str(), id.name.as_str()), ("default", "default"));
        assert!(signer.verify(token, now.as_second() + 3600).is_none());
    }

    #[test]
    fn a_token_request_for_a_missing_service_account_is_not_found() {
        let signer = TokenSigner::new("lab-token");
        let (all, body) = (Objects::default(), request(json!({})));
        let err = token_request(&all, &signer, "default", "ghost", &body, jiff::Timestamp::now()).unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (404, r#"serviceaccounts "ghost" not found"#));
    }

    #[test]
    fn a_bound_pod_must_exist_run_as_the_service_account_and_have_the_uid() {
        let signer = TokenSigner::new("lab-token");
        let web = json!({"metadata": {"name": "web", "uid": "pod-uid"}, "spec": {"serviceAccountName": "default"}});
        let all = objects(&[sa("default"), sa("other"), ("pods", "default", web)]);
        let ask = |sa_name: &str, pod: &str, uid: &str| {
            let bound = json!({"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid});
            let body = request(json!({"boundObjectRef": bound}));
            token_request(&all, &signer, "default", sa_name, &body, jiff::Timestamp::now())
        };
        assert!(ask("default", "web", "pod-uid").is_ok());
        assert!(ask("default", "web", "").is_ok());
        let code = |r: Result<Value, ApiError>| r.map(|_| 0).unwrap_or_else(|e| e.code);
        assert_eq!(ask("default", "gone", "").unwrap_err().message, r#"pods "gone" not found"#);
        assert_eq!(code(ask("default", "web", "another-uid")), 409);
        assert_eq!(code(ask("other", "web", "pod-uid")), 400);
    }

    #[test]
    fn a_token_lifetime_under_ten_minutes_is_invalid() {
        let signer = TokenSigner::new("lab-token");
        let all = objects(&[sa("default")]);
        let body = request(json!({"expirationSeconds": 599}));
        let err = token_request(&all, &signer, "default", "default", &body, jiff::Timestamp::now()).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("spec.expirationSeconds"), "{}", err.message);
    }
}
