//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and Kubernetes'
//! strategic merge patch, which `kubectl apply` and `kubectl label` send: like a merge
//! patch, but lists with a merge key (containers by name, ports by port, …) are merged
//! item by item, and `$patch` / `$setElementOrder` / `$deleteFromPrimitiveList`
//! directives are understood.

use super::status::ApiError;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" => Err(ApiError::unsupported_media_type(
                "server-side apply is not supported by the flatnet lab: use client-side `kubectl apply` (the default)",
            )),
            other => Err(ApiError::unsupported_media_type(format!("the body of a PATCH cannot be {other:?}"))),
        }
    }
}

pub fn apply(target: &mut Value, patch: &[u8], kind: PatchType) -> Result<(), ApiError> {
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| ApiError::bad_request(format!("the JSON patch does not decode: {e}")))?;
            json_patch::patch(target, &ops).map_err(|e| ApiError::invalid("Patch", "", "patch", e.to_string()))
        }
        PatchType::Merge | PatchType::Strategic => {
            let p: Value = serde_json::from_slice(patch)
                .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
            if !p.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            if kind == PatchType::Merge {
                json_patch::merge(target, &p);
            } else {
                strategic(target, &p, &mut Vec::new());
            }
            Ok(())
        }
    }
}

/// The merge key of a list field, by its name and where it sits.
fn merge_key(field: &str, path: &[String]) -> Option<&'static str> {
    let in_container = path.iter().any(|p| p.ends_with("ontainers"));
    let at = |want: &[&str]| path.len() == want.len() && path.iter().zip(want).all(|(a, b)| a == b);
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets" => "name",
        "ports" if in_container => "containerPort",
        // A Service's ports; other `ports` lists (an EndpointSlice's) are replaced whole.
        "ports" if at(&["spec", "ports"]) => "port",
        "volumeMounts" => "mountPath",
        "conditions" => "type",
        "addresses" if at(&["status", "addresses"]) => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        _ => return None,
    })
}

/// Primitive lists whose patch strategy is merge (union) rather than replace.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

fn strategic(target: &mut Value, patch: &Value, path: &mut Vec<String>) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = Value::Object(without_directives(p));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("just made an object");
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(gone)) = (t.get_mut(field), v.as_array()) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if v.is_null() || v.get("$patch").and_then(Value::as_str) == Some("delete") {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        match (t.get_mut(k), v) {
            (Some(Value::Array(cur)), Value::Array(items)) => merge_list(cur, items, k, path),
            (Some(cur @ Value::Object(_)), Value::Object(_)) => strategic(cur, v, path),
            _ => {
                let mut fresh = Value::Null;
                strategic_fresh(&mut fresh, v, path);
                t.insert(k.clone(), fresh);
            }
        }
        path.pop();
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        t.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
}

/// A value new to the target: copied, with directives removed.
fn strategic_fresh(target: &mut Value, patch: &Value, path: &mut Vec<String>) {
    match patch {
        Value::Object(_) => strategic(target, patch, path),
        Value::Array(items) => {
            *target = Value::Array(
                items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .map(|i| {
                        let mut x = Value::Null;
                        strategic_fresh(&mut x, i, path);
                        x
                    })
                    .collect(),
            )
        }
        other => *target = other.clone(),
    }
}

fn without_directives(p: &Map<String, Value>) -> Map<String, Value> {
    p.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn merge_list(cur: &mut Vec<Value>, items: &[Value], field: &str, path: &mut Vec<String>) {
    if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        *cur = items.iter().filter(|i| i.get("$patch").is_none()).cloned().collect();
        return;
    }
    if let Some(key) = merge_key(field, path) {
        for item in items {
            let id = &item[key];
            let pos = cur.iter().position(|c| &c[key] == id);
            match (pos, item.get("$patch").and_then(Value::as_str)) {
                (Some(i), Some("delete")) => {
                    cur.remove(i);
                }
                (None, Some("delete")) => {}
                (Some(i), _) => strategic(&mut cur[i], item, path),
                (None, _) => {
                    let mut fresh = Value::Null;
                    strategic_fresh(&mut fresh, item, path);
                    cur.push(fresh);
                }
            }
        }
    } else if merges_primitives(field) {
        for item in items {
            if !cur.contains(item) {
                cur.push(item.clone());
            }
        }
    } else {
        *cur = items.to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(mut target: Value, patch: Value) -> Value {
        apply(&mut target, patch.to_string().as_bytes(), PatchType::Strategic).unwrap();
        target
    }

    #[test]
    fn labels_as_kubectl_label_sends_them() {
        let t = json!({"metadata": {"name": "a", "labels": {"app": "web"}}});
        let out = smp(t, json!({"metadata": {"labels": {"tier": "front", "app": null}}}));
        assert_eq!(out["metadata"]["labels"], json!({"tier": "front"}));
    }

    #[test]
    fn containers_merge_by_name_and_ports_by_container_port() {
        let t = json!({"spec": {"containers": [
            {"name": "a", "image": "x:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "y:1"}]}});
        let out = smp(
            t,
            json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "a", "image": "x:2", "ports": [{"containerPort": 81}]}, {"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 1);
        assert_eq!(out["spec"]["containers"][0]["image"], "x:2");
        assert_eq!(out["spec"]["containers"][0]["ports"], json!([{"containerPort": 80}, {"containerPort": 81}]));
    }

    #[test]
    fn service_ports_merge_by_port_and_plain_lists_replace() {
        let t = json!({"spec": {"ports": [{"port": 80, "name": "http"}], "externalIPs": ["192.0.2.1"]}});
        let out = smp(t, json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}], "externalIPs": ["192.0.2.2"]}}));
        assert_eq!(out["spec"]["ports"], json!([{"port": 80, "name": "http", "targetPort": 8080}]));
        assert_eq!(out["spec"]["externalIPs"], json!(["192.0.2.2"]));
    }

    #[test]
    fn lists_without_a_merge_key_at_their_path_are_replaced() {
        // An EndpointSlice's ports (no merge key) versus a Service's spec.ports (by port).
        let t = json!({"ports": [{"port": 80}, {"port": 81}], "status": {"addresses": [{"type": "InternalIP", "address": "a"}]}});
        let out =
            smp(t, json!({"ports": [{"port": 82}], "status": {"addresses": [{"type": "Hostname", "address": "h"}]}}));
        assert_eq!(out["ports"], json!([{"port": 82}]));
        assert_eq!(out["status"]["addresses"].as_array().unwrap().len(), 2, "node addresses merge by type");
    }

    #[test]
    fn merge_and_json_patch_and_bad_bodies() {
        let mut t = json!({"a": {"b": 1, "c": 2}});
        apply(&mut t, br#"{"a": {"b": null}}"#, PatchType::Merge).unwrap();
        assert_eq!(t, json!({"a": {"c": 2}}));
        apply(&mut t, br#"[{"op": "replace", "path": "/a/c", "value": 3}]"#, PatchType::Json).unwrap();
        assert_eq!(t, json!({"a": {"c": 3}}));
        assert_eq!(apply(&mut t, b"{oops", PatchType::Merge).unwrap_err().code, 400);
        assert_eq!(apply(&mut t, br#"[{"op": "remove", "path": "/nope"}]"#, PatchType::Json).unwrap_err().code, 422);
        assert_eq!(PatchType::from_content_type("application/apply-patch+yaml").unwrap_err().code, 415);
    }
}
