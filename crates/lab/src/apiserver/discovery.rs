//! Discovery (`/api`, `/apis`, the group versions), `/version`, and a minimal OpenAPI v3
//! index that tells kubectl which operations accept `fieldValidation`, so it leaves
//! validation to this server instead of downloading a full schema.

use super::resources::{RESOURCES, Resource, groups};
use serde_json::{Value, json};

fn verbs(r: &Resource) -> Vec<&'static str> {
    vec!["create", "delete", "get", "list", "patch", "update", "watch"]
        .into_iter()
        .filter(|v| r.kind != "Event" || *v != "update")
        .collect()
}

pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

pub fn api_groups() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(group).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(name: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in &served {
        resources.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "verbs": verbs(r), "shortNames": r.short_names, "categories": r.categories,
        }));
        if r.status {
            resources
                .push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                                   "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
        if r.scale {
            resources.push(
                json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced,
                                  "group": "autoscaling", "version": "v1", "kind": "Scale",
                                  "verbs": ["get", "patch", "update"]}),
            );
        }
        if r.plural == "serviceaccounts" {
            resources.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                                  "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest",
                                  "verbs": ["create"]}));
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

pub fn version() -> Value {
    json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-flatnet-lab", "gitCommit": "", "gitTreeState": "clean",
           "buildDate": "", "goVersion": "", "compiler": "rustc", "platform": "linux/amd64"})
}

fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// `/openapi/v3`: one entry per served group version.
pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES {
        let p = openapi_path(r.group, r.version);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=flatnet")}));
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<group version>`: the write operations of each resource, each declaring
/// the `fieldValidation` parameter (which is all kubectl looks for).
pub fn openapi_group(path: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let field_validation = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]);
    for r in RESOURCES.iter().filter(|r| openapi_path(r.group, r.version) == path) {
        let base = if r.namespaced {
            format!("/{path}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("/{path}/{}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let op = json!({"parameters": field_validation, "x-kubernetes-group-version-kind": gvk});
        paths.insert(base.clone(), json!({"post": op}));
        paths.insert(format!("{base}/{{name}}"), json!({"put": op, "patch": op}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({"openapi": "3.0.0", "info": {"title": "flatnet lab", "version": "v1.32.0"}, "paths": paths}))
}
