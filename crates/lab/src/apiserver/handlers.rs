//! get, list, create, update, patch and delete.

use super::admission::{self, stamp_new};
use super::patch::{self, PatchType};
use super::query::{Filter, wants_table};
use super::resources::{Resource, invalid_name};
use super::status::ApiError;
use super::table::{self, IncludeObject};
use super::{ApiServer, Request, Target, error, json, watch};
use crate::store::{Change, Key};
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;

pub(crate) async fn dispatch(api: &Arc<ApiServer>, t: Target, mut req: Request) -> Response {
    // Bodies are JSON (or a JSON patch type), or protobuf from kubectl's generator
    // subcommands (`kubectl create deployment …`), read into JSON first.
    if matches!(req.method, Method::POST | Method::PUT) && !req.body.is_empty() {
        let ct = req.headers.get(header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("application/json");
        if ct.starts_with(super::protobuf::CONTENT_TYPE) {
            match super::protobuf::to_json(&req.body) {
                Ok(obj) => {
                    req.body = obj.to_string().into();
                    req.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                }
                Err(why) => {
                    return error(&ApiError::unsupported_media_type(format!(
                        "the protobuf body cannot be read ({why}): send application/json (with kubectl, write a manifest and use `kubectl create -f` or `kubectl apply -f`)"
                    )));
                }
            }
        }
        let ct = req.headers.get(header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("application/json");
        if !ct.starts_with("application/json") && !ct.starts_with("application/yaml") {
            return error(&ApiError::unsupported_media_type(format!(
                "the body's content type {ct:?} is not supported: send application/json (with kubectl, write a manifest and use `kubectl create -f` or `kubectl apply -f`)"
            )));
        }
    }
    if t.sub.as_deref().is_some_and(|s| s != "token")
        && !matches!(req.method, Method::GET | Method::PUT | Method::PATCH)
    {
        return error(&ApiError::method_not_allowed(format!(
            "{} is not supported on a status subresource",
            req.method
        )));
    }
    let out = match (&req.method, t.name.is_some()) {
        _ if t.sub.as_deref() == Some("scale") => scale(api, t, &req).await,
        _ if t.sub.as_deref() == Some("token") => token(api, &t, &req),
        (&Method::GET, _) if req.flag("watch") => return watch::serve(api, t, req),
        (&Method::GET, false) => list(api, &t, &req),
        (&Method::GET, true) => get(api, &t, &req),
        (&Method::POST, false) => create(api, &t, &req).await,
        (&Method::PUT, true) => update(api, &t, &req).await,
        (&Method::PATCH, true) => patch(api, &t, &req).await,
        (&Method::DELETE, true) => delete(api, &t, &req).await,
        (m, _) => Err(ApiError::method_not_allowed(format!("{m} is not supported on this path"))),
    };
    match out {
        Ok((code, v)) => json(code, &v),
        Err(e) => error(&e),
    }
}

type Reply = Result<(StatusCode, Value), ApiError>;

fn key(t: &Target, name: &str) -> Key {
    Key::new(&t.resource.store_name(), t.namespace.as_deref().unwrap_or(""), name)
}

fn include_object(req: &Request) -> IncludeObject {
    match req.q("includeObject") {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    }
}

/// A list, paginated as the real API server does it when the client sends `limit`
/// (kube's watcher asks for 500 at a time): `continue` carries the resourceVersion of the
/// first page and the last (namespace, name) sent; every page reports that version, so a
/// watch from it replays whatever changed while the pages were read.
fn list(api: &ApiServer, t: &Target, req: &Request) -> Reply {
    let filter = Filter::from(req)?;
    let store_name = t.resource.store_name();
    let limit = match req.q("limit") {
        Some(l) => Some(l.parse::<usize>().map_err(|_| ApiError::bad_request(format!("limit {l:?} is not a number")))?),
        None => None,
    }
    .filter(|l| *l > 0);
    let after = match req.q("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let bad = || ApiError::bad_request(format!("continue token {c:?} is not one this server gave"));
            let (rv, rest) = c.split_once(':').ok_or_else(bad)?;
            let (ns, name) = rest.split_once('/').ok_or_else(bad)?;
            Some((rv.parse::<u64>().map_err(|_| bad())?, ns.to_string(), name.to_string()))
        }
        None => None,
    };
    api.store.read(|objects| {
        let ns_name = |v: &Value| {
            (
                v["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
                v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        };
        let mut items: Vec<&Value> = objects
            .list(&store_name, t.namespace.as_deref())
            .map(|v| v.as_ref())
            .filter(|v| after.as_ref().is_none_or(|(_, ns, name)| ns_name(v) > (ns.clone(), name.clone())))
            .filter(|v| filter.matches(v))
            .collect();
        if wants_table(req) {
            return Ok((StatusCode::OK, table::render(t.resource, &items, objects.rv, include_object(req))));
        }
        let rv = after.as_ref().map_or(objects.rv, |(rv, _, _)| *rv);
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if let Some(limit) = limit
            && items.len() > limit
        {
            items.truncate(limit);
            let (ns, name) = ns_name(items[limit - 1]);
            meta["continue"] = json!(format!("{rv}:{ns}/{name}"));
        }
        Ok((
            StatusCode::OK,
            json!({"kind": t.resource.list_kind(), "apiVersion": t.resource.api_version(),
                   "metadata": meta, "items": items}),
        ))
    })
}

fn get(api: &ApiServer, t: &Target, req: &Request) -> Reply {
    let name = t.name.as_deref().unwrap_or_default();
    api.store.read(|objects| {
        let obj = objects.get(&key(t, name)).ok_or_else(|| ApiError::not_found(t.resource.plural, name))?;
        if wants_table(req) {
            return Ok((StatusCode::OK, table::render(t.resource, &[obj.as_ref()], objects.rv, include_object(req))));
        }
        Ok((StatusCode::OK, (**obj).clone()))
    })
}

/// Parses a body as an object of this resource.
fn parse_body(r: &Resource, body: &[u8]) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a valid JSON object: {e}")))?;
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != r.kind
    {
        return Err(ApiError::bad_request(format!("the body is a {kind}, but this path takes a {}", r.kind)));
    }
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
        && av != r.api_version()
    {
        return Err(ApiError::bad_request(format!("apiVersion {av:?} is not served here: use {}", r.api_version())));
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    Ok(obj)
}

fn check_schema(r: &Resource, obj: &Value, name: &str) -> Result<(), ApiError> {
    (r.schema)(obj)
        .map_err(|e| ApiError::invalid(r.kind, name, "body", format!("does not match the {} schema: {e}", r.kind)))
}

fn check_namespace(t: &Target, obj: &Value) -> Result<(), ApiError> {
    if let (Some(url_ns), Some(body_ns)) = (&t.namespace, obj["metadata"]["namespace"].as_str())
        && url_ns != body_ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if t.resource.namespaced && t.namespace.is_none() {
        return Err(ApiError::bad_request(format!(
            "{} are namespaced: use a /namespaces/NAME/ path",
            t.resource.plural
        )));
    }
    Ok(())
}

async fn create(api: &ApiServer, t: &Target, req: &Request) -> Reply {
    let r = t.resource;
    let mut obj = parse_body(r, &req.body)?;
    check_namespace(t, &obj)?;
    let name = match (obj["metadata"]["name"].as_str(), obj["metadata"]["generateName"].as_str()) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(prefix)) => format!("{prefix}{}", admission::random_suffix()),
        _ => return Err(ApiError::invalid(r.kind, "", "metadata.name", "name or generateName is required")),
    };
    if let Some(why) = invalid_name(&name, r.label_names) {
        return Err(ApiError::invalid(r.kind, &name, "metadata.name", format!("Invalid value: {name:?}: {why}")));
    }
    obj["metadata"]["name"] = json!(name);
    check_schema(r, &obj, &name)?;
    let namespace = t.namespace.clone().unwrap_or_default();
    stamp_new(&mut obj, r, &namespace);
    admission::defaults(&mut obj, r.kind);
    let key = key(t, &name);
    let cluster = api.cluster.clone();
    let plural = r.plural;
    let stored = api
        .store
        .mutate(key.clone(), move |all, current| {
            if current.is_some() {
                return Err(ApiError::already_exists(plural, &key.name));
            }
            admission::admit(&cluster, all, &key, &mut obj, None)?;
            Ok(Change::Put(obj))
        })
        .await?;
    Ok((StatusCode::CREATED, stored.map(|v| (*v).clone()).unwrap_or_default()))
}

/// Turns what a client sent (a full object or a patched copy) into what is stored: the
/// identity fields stay, the status or the rest stays depending on the subresource,
/// defaults and admission apply again.
fn reconcile_update(
    api_cluster: &admission::ClusterConfig,
    all: &crate::store::Objects,
    key: &Key,
    r: &Resource,
    status_only: bool,
    current: &Value,
    mut new: Value,
) -> Result<Change, ApiError> {
    if let Some(rv) = new["metadata"]["resourceVersion"].as_str()
        && !rv.is_empty()
        && Some(rv) != current["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::conflict(
            r.plural,
            &key.name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if new["metadata"]["name"].as_str().is_some_and(|n| n != key.name) {
        return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
    }
    let mut out = if status_only {
        // As kube-apiserver's status strategies for built-in kinds: the spec stays, the
        // status and the labels and annotations are the client's (Flannel writes its
        // node annotations this way).
        let mut o = current.clone();
        o["status"] = new["status"].take();
        if let Some(meta) = new["metadata"].as_object_mut() {
            for k in ["labels", "annotations"] {
                match meta.remove(k) {
                    Some(v) => o["metadata"][k] = v,
                    None => {
                        o["metadata"].as_object_mut().map(|m| m.remove(k));
                    }
                }
            }
        }
        o
    } else {
        if r.status {
            new["status"] = current["status"].clone();
        }
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for k in ["uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"] {
            match current["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    new["metadata"].as_object_mut().map(|m| m.remove(k));
                }
            }
        }
        new
    };
    out["kind"] = json!(r.kind);
    out["apiVersion"] = json!(r.api_version());
    check_schema(r, &out, &key.name)?;
    admission::defaults(&mut out, r.kind);
    admission::admit(api_cluster, all, key, &mut out, Some(current))?;
    let mut unchanged = out.clone();
    unchanged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    if unchanged == *current {
        return Ok(Change::Keep);
    }
    Ok(Change::Put(out))
}

async fn update(api: &ApiServer, t: &Target, req: &Request) -> Reply {
    let new = parse_body(t.resource, &req.body)?;
    check_namespace(t, &new)?;
    modify(api, t, move |_| Ok(new)).await
}

/// The `scale` subresource: the object's replicas as an `autoscaling/v1` Scale; a PUT or
/// PATCH of it changes `spec.replicas` only.
async fn scale(api: &ApiServer, t: Target, req: &Request) -> Reply {
    use super::workloads::scale_of;
    let whole = Target { sub: None, ..t };
    if req.method == Method::GET {
        return get(api, &whole, req).map(|(code, obj)| (code, scale_of(&obj)));
    }
    let body = req.body.clone();
    let kind = match req.method {
        Method::PATCH => {
            let ct = req.headers.get(header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("");
            Some(PatchType::from_content_type(ct)?)
        }
        _ => None,
    };
    let (code, stored) = modify(api, &whole, move |current| {
        let mut s = scale_of(current);
        match kind {
            Some(k) => patch::apply(&mut s, &body, k)?,
            None => {
                s = serde_json::from_slice(&body)
                    .map_err(|e| ApiError::bad_request(format!("the body is not a valid Scale: {e}")))?
            }
        }
        let replicas = s["spec"]["replicas"].as_i64().filter(|r| *r >= 0).ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                current["metadata"]["name"].as_str().unwrap_or_default(),
                "spec.replicas",
                "must be greater than or equal to 0",
            )
        })?;
        let mut new = current.clone();
        new["spec"]["replicas"] = json!(replicas);
        Ok(new)
    })
    .await?;
    Ok((code, scale_of(&stored)))
}

/// The `token` subresource of a ServiceAccount: a TokenRequest, answered with a token
/// this server accepts (see [`super::service_accounts::token_request`]).
fn token(api: &ApiServer, t: &Target, req: &Request) -> Reply {
    if req.method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "{} is not supported on serviceaccounts/token: POST a TokenRequest",
            req.method
        )));
    }
    let (namespace, name) = (t.namespace.as_deref().unwrap_or_default(), t.name.as_deref().unwrap_or_default());
    let now = jiff::Timestamp::now();
    let issued = api
        .store
        .read(|all| super::service_accounts::token_request(all, &api.sa_tokens, namespace, name, &req.body, now))?;
    Ok((StatusCode::CREATED, issued))
}

async fn patch(api: &ApiServer, t: &Target, req: &Request) -> Reply {
    let ct = req.headers.get(header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("");
    let kind = PatchType::from_content_type(ct)?;
    let body = req.body.clone();
    modify(api, t, move |current| {
        let mut new = current.clone();
        // A patch carries no resourceVersion unless the client wants the check.
        new["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
        patch::apply(&mut new, &body, kind)?;
        Ok(new)
    })
    .await
}

/// Replaces an existing object with what `make` derives from it, through the same
/// checks as any update (resourceVersion, identity, schema, admission).
async fn modify(
    api: &ApiServer,
    t: &Target,
    make: impl FnOnce(&Value) -> Result<Value, ApiError> + Send + 'static,
) -> Reply {
    let r = t.resource;
    let key = key(t, t.name.as_deref().unwrap_or_default());
    let status_only = t.sub.as_deref() == Some("status");
    let cluster = api.cluster.clone();
    let k = key.clone();
    let stored = api
        .store
        .mutate(key, move |all, current| {
            let current = current.ok_or_else(|| ApiError::not_found(r.plural, &k.name))?;
            let new = make(current)?;
            if !new.is_object() || !new["metadata"].is_object() && !new["metadata"].is_null() {
                return Err(ApiError::invalid(
                    r.kind,
                    &k.name,
                    "body",
                    "the result must be an object with object metadata",
                ));
            }
            reconcile_update(&cluster, all, &k, r, status_only, current, new)
        })
        .await?;
    Ok((StatusCode::OK, stored.map(|v| (*v).clone()).unwrap_or_default()))
}

/// The grace period a DELETE asks for: `gracePeriodSeconds` in the query or in the
/// DeleteOptions body, else None (the pod's own).
fn grace_period(req: &Request) -> Result<Option<i64>, ApiError> {
    if let Some(q) = req.q("gracePeriodSeconds") {
        return q
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("gracePeriodSeconds={q:?} is not a number")));
    }
    if req.body.is_empty() {
        return Ok(None);
    }
    let opts: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}")))?;
    Ok(opts["gracePeriodSeconds"].as_i64())
}

async fn delete(api: &ApiServer, t: &Target, req: &Request) -> Reply {
    let r = t.resource;
    let key = key(t, t.name.as_deref().unwrap_or_default());
    let grace = grace_period(req)?;
    let last = api.store.read(|o| o.get(&key).cloned()).ok_or_else(|| ApiError::not_found(r.plural, &key.name))?;
    if r.kind == "Pod" {
        // Graceful deletion, as a real API server does it for a pod its kubelet runs:
        // the pod turns Terminating (deletionTimestamp) and the kubelet, once the
        // containers are gone, deletes it for good; the pod GC removes it at the deadline
        // otherwise. A pod on no ready node, or a grace period of 0, goes at once.
        let stored = api
            .store
            .mutate(key.clone(), move |all, current| match current {
                Some(pod) => admission::pod_deletion(all, pod, grace),
                None => Ok(Change::Delete),
            })
            .await?;
        return Ok((StatusCode::OK, stored.map(|v| (*v).clone()).unwrap_or_else(|| (*last).clone())));
    }
    api.store.mutate(key.clone(), |_, _| Ok(Change::Delete)).await?;
    if r.kind == "Namespace" {
        // What a namespace controller does: its contents go with it.
        let inside: Vec<Key> = api.store.read(|o| o.map.keys().filter(|k| k.namespace == key.name).cloned().collect());
        for k in inside {
            let _ = api.store.mutate(k, |_, cur| Ok(if cur.is_some() { Change::Delete } else { Change::Keep })).await;
        }
    }
    Ok((StatusCode::OK, (*last).clone()))
}
