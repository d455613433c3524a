//! The Kubernetes-compatible REST API: discovery, CRUD and watch for the resources in
//! [`resources`], JSON with the real schemas, Table output for kubectl, bearer-token auth
//! (the lab's token, and the service-account tokens it issues to pods).

pub mod admission;
pub mod discovery;
mod handlers;
pub mod kubelet_proxy;
pub mod names;
pub mod patch;
pub mod protobuf;
mod query;
pub mod resources;
pub mod sa_token;
pub mod service_accounts;
pub mod status;
pub mod table;
mod watch;
pub mod workloads;

use crate::store::{Key, Store};
use admission::ClusterConfig;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use resources::Resource;
use serde_json::Value;
use status::ApiError;
use std::collections::HashMap;
use std::sync::Arc;

pub struct ApiServer {
    pub store: Arc<Store>,
    pub cluster: ClusterConfig,
    token: String,
    /// Signs the service-account tokens of TokenRequests, keyed by the lab's token.
    pub(crate) sa_tokens: sa_token::TokenSigner,
    /// How pods' `log` and `exec` reach their kubelets, once the lab's underlay is known.
    pub kubelets: std::sync::OnceLock<kubelet_proxy::KubeletDialer>,
}

impl ApiServer {
    pub fn new(store: Arc<Store>, cluster: ClusterConfig, token: String) -> Arc<Self> {
        let sa_tokens = sa_token::TokenSigner::new(&token);
        Arc::new(Self { store, cluster, token, sa_tokens, kubelets: std::sync::OnceLock::new() })
    }

    /// The request carries a bearer token this server accepts: the lab's, or a
    /// service-account token it issued (TokenRequest), unexpired, for a ServiceAccount
    /// that still exists. Every identity it accepts may do everything: the embedded API
    /// has no RBAC, as a kube-apiserver with `--authorization-mode=AlwaysAllow`.
    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == self.token || self.service_account(t).is_some())
    }

    /// The ServiceAccount a token this server issued speaks for, while it is valid.
    fn service_account(&self, token: &str) -> Option<sa_token::ServiceAccountId> {
        let id = self.sa_tokens.verify(token, jiff::Timestamp::now().as_second())?;
        let key = Key::new("serviceaccounts", &id.namespace, &id.name);
        self.store.read(|o| o.get(&key).is_some()).then_some(id)
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        let stream = axum::routing::any(kubelet_proxy::pod_stream);
        axum::Router::new()
            .route("/api/v1/namespaces/{namespace}/pods/{name}/{sub}", stream)
            .fallback(serve)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.clone())
    }
}

/// A request for a resource: `/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]]`, or the same
/// under `/apis/GROUP/VERSION`.
pub(crate) struct Target {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

pub(crate) struct Request {
    pub method: Method,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true" | "1"))
    }
}

pub(crate) fn json(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

pub(crate) fn error(e: &ApiError) -> Response {
    json(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.to_status())
}

/// The largest request body taken, kube-apiserver's limit (3 MiB).
const MAX_BODY: usize = 3 << 20;

/// [`serve`] for a request a route took first and passes on.
pub(crate) async fn serve_request(api: Arc<ApiServer>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => serve(State(api), parts.method, parts.uri, parts.headers, bytes).await,
        Err(e) => error(&ApiError::bad_request(format!("read the request body: {e}"))),
    }
}

async fn serve(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        return (StatusCode::OK, "ok").into_response();
    }
    if !api.authorized(&headers) {
        return error(&ApiError::unauthorized());
    }
    let mut query: HashMap<String, String> = HashMap::new();
    for kv in uri.query().unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match (decode(k), decode(v)) {
            (Some(k), Some(v)) => query.insert(k, v),
            // Dropping a parameter that does not decode could drop a selector: refuse.
            _ => return error(&ApiError::bad_request(format!("the query parameter {kv:?} is not valid URL encoding"))),
        };
    }
    if path == "/openapi/v2" && method == Method::GET {
        // The OpenAPI v2 document kubectl reads to validate what it has no v3 path for
        // (a `kind: List`), in the protobuf it asks for: one with no models, so kubectl
        // leaves every item's validation to this server (`fieldValidation=Strict`).
        return (
            [(header::CONTENT_TYPE, "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")],
            Vec::<u8>::new(),
        )
            .into_response();
    }
    let req = Request { method, query, headers, body };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let discovery = match segs.as_slice() {
        ["version"] => Some(discovery::version()),
        ["api"] => Some(discovery::api_versions()),
        ["apis"] => Some(discovery::api_groups()),
        ["api", v] => discovery::resource_list("", v),
        ["apis", g] if resources::groups().contains(g) => Some(discovery::group(g)),
        ["apis", g, v] => discovery::resource_list(g, v),
        ["openapi", "v3"] => Some(discovery::openapi_index()),
        ["openapi", "v3", rest @ ..] => discovery::openapi_group(&rest.join("/")),
        _ => None,
    };
    if let Some(doc) = discovery {
        return if req.method == Method::GET {
            json(StatusCode::OK, &doc)
        } else {
            error(&ApiError::method_not_allowed("read-only"))
        };
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return error(&ApiError::no_route(&path)),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if resources::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            (Some(ns.to_string()), [&[*plural][..], tail].concat())
        }
        other => (None, other.to_vec()),
    };
    let Some(resource) = rest.first().and_then(|p| resources::find(group, version, p)) else {
        return error(&ApiError::no_route(&path));
    };
    let sub_ok = |s: &str| {
        (s == "status" && resource.status)
            || (s == "scale" && resource.scale)
            || (s == "token" && resource.plural == "serviceaccounts")
    };
    if rest.len() > 3 || (rest.len() == 3 && !sub_ok(rest[2])) {
        return error(&ApiError::no_route(&path));
    }
    let target = Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    };
    handlers::dispatch(&api, target, req).await
}

fn decode(s: &str) -> Option<String> {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(crate) fn body_of(code: StatusCode, body: Body) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
