//! What the API checks and sets on workloads and their configuration, as kube-apiserver
//! does: Deployments, ReplicaSets and DaemonSets (defaults, a selector that matches the
//! template's labels and never changes, a pod template that could run, `generation`
//! bumped when the spec changes), ConfigMaps (key names, 1 MiB in all), and the `scale`
//! subresource `kubectl scale` uses.

use super::status::ApiError;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The most a ConfigMap may hold, keys and values together.
pub const CONFIGMAP_MAX_BYTES: usize = 1024 * 1024;

pub fn is_workload(kind: &str) -> bool {
    matches!(kind, "Deployment" | "ReplicaSet" | "DaemonSet")
}

/// Defaults of a workload's spec, as the apps/v1 defaulting sets them.
pub fn defaults(obj: &mut Value, kind: &str) {
    let spec = &mut obj["spec"];
    match kind {
        "Deployment" => {
            if spec["replicas"].is_null() {
                spec["replicas"] = json!(1);
            }
            if spec["strategy"]["type"].is_null() {
                spec["strategy"]["type"] = json!("RollingUpdate");
            }
            if spec["strategy"]["type"] == "RollingUpdate" {
                for k in ["maxSurge", "maxUnavailable"] {
                    if spec["strategy"]["rollingUpdate"][k].is_null() {
                        spec["strategy"]["rollingUpdate"][k] = json!("25%");
                    }
                }
            }
            for (k, v) in [("revisionHistoryLimit", 10), ("progressDeadlineSeconds", 600)] {
                if spec[k].is_null() {
                    spec[k] = json!(v);
                }
            }
        }
        "ReplicaSet" if spec["replicas"].is_null() => spec["replicas"] = json!(1),
        "DaemonSet" => {
            if spec["updateStrategy"]["type"].is_null() {
                spec["updateStrategy"]["type"] = json!("RollingUpdate");
            }
            if spec["updateStrategy"]["type"] == "RollingUpdate" {
                for (k, v) in [("maxUnavailable", json!(1)), ("maxSurge", json!(0))] {
                    if spec["updateStrategy"]["rollingUpdate"][k].is_null() {
                        spec["updateStrategy"]["rollingUpdate"][k] = v;
                    }
                }
            }
            if spec["revisionHistoryLimit"].is_null() {
                spec["revisionHistoryLimit"] = json!(10);
            }
        }
        _ => return,
    }
    let template_spec = &mut obj["spec"]["template"]["spec"];
    if template_spec.is_object() {
        for (k, v) in
            [("restartPolicy", "Always"), ("dnsPolicy", "ClusterFirst"), ("schedulerName", "default-scheduler")]
        {
            if template_spec[k].is_null() {
                template_spec[k] = json!(v);
            }
        }
    }
    if obj["status"].is_null() {
        obj["status"] = json!({});
    }
}

/// A `metav1.LabelSelector` in JSON as flatnet's selector.
pub fn selector(v: &Value) -> Result<flatnet_model::selector::LabelSelector, String> {
    let s: meta::LabelSelector = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    flatnet_kube::policy::selector_of(&s)
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// A percentage or a count (`intstr`), as the absolute number of `of`: percentages round
/// up for surge, down for unavailability, as the Deployment controller rounds them.
pub fn int_or_percent(v: &Value, of: i64, round_up: bool) -> Result<i64, String> {
    match v {
        Value::Number(n) => {
            n.as_i64().filter(|n| *n >= 0).ok_or_else(|| format!("{n}: must be a count or a percentage"))
        }
        Value::String(s) => {
            let p: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .filter(|p| *p >= 0)
                .ok_or_else(|| format!("{s:?}: must be a count or a percentage such as 25%"))?;
            let n = p * of;
            Ok(if round_up { (n + 99) / 100 } else { n / 100 })
        }
        Value::Null => Ok(0),
        other => Err(format!("{other}: must be a count or a percentage")),
    }
}

/// The checks kube-apiserver makes of a workload; `old`: the stored object on update.
pub fn validate(kind: &str, name: &str, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let invalid = |field: &str, why: String| ApiError::invalid(kind, name, field, why);
    let spec = &obj["spec"];
    if spec["selector"].is_null() {
        return Err(invalid("spec.selector", "Required value".into()));
    }
    let sel = selector(&spec["selector"]).map_err(|e| invalid("spec.selector", format!("Invalid value: {e}")))?;
    if sel.0.is_empty() {
        return Err(invalid(
            "spec.selector",
            format!("Invalid value: {}: empty selector is invalid for {}", spec["selector"], kind.to_lowercase()),
        ));
    }
    let labels = labels_of(&spec["template"]["metadata"]["labels"]);
    if !sel.matches(&labels) {
        return Err(invalid(
            "spec.template.metadata.labels",
            format!("Invalid value: {:?}: `selector` does not match template `labels`", labels),
        ));
    }
    if let Some(old) = old
        && old["spec"]["selector"] != spec["selector"]
    {
        return Err(invalid("spec.selector", format!("Invalid value: {}: field is immutable", spec["selector"])));
    }
    if let Some(r) = spec.get("replicas").filter(|r| !r.is_null())
        && r.as_i64().is_none_or(|r| r < 0)
    {
        return Err(invalid("spec.replicas", format!("Invalid value: {r}: must be greater than or equal to 0")));
    }
    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_array().map(Vec::as_slice).unwrap_or_default();
    if containers.is_empty() {
        return Err(invalid("spec.template.spec.containers", "Required value".into()));
    }
    for (i, c) in containers.iter().enumerate() {
        for k in ["name", "image"] {
            if c[k].as_str().is_none_or(str::is_empty) {
                return Err(invalid(&format!("spec.template.spec.containers[{i}].{k}"), "Required value".into()));
            }
        }
    }
    if let Some(p) = pod["restartPolicy"].as_str().filter(|p| *p != "Always") {
        return Err(invalid(
            "spec.template.spec.restartPolicy",
            format!("Unsupported value: {p:?}: supported values: \"Always\""),
        ));
    }
    if kind == "Deployment" && spec["strategy"]["type"] == "RollingUpdate" {
        let ru = &spec["strategy"]["rollingUpdate"];
        let replicas = spec["replicas"].as_i64().unwrap_or(1);
        let surge = int_or_percent(&ru["maxSurge"], replicas, true)
            .map_err(|e| invalid("spec.strategy.rollingUpdate.maxSurge", format!("Invalid value: {e}")))?;
        let unavailable = int_or_percent(&ru["maxUnavailable"], replicas, false)
            .map_err(|e| invalid("spec.strategy.rollingUpdate.maxUnavailable", format!("Invalid value: {e}")))?;
        let zero = |v: &Value| v == &json!(0) || v == &json!("0%");
        if zero(&ru["maxSurge"]) && zero(&ru["maxUnavailable"]) || surge < 0 || unavailable < 0 {
            return Err(invalid(
                "spec.strategy.rollingUpdate.maxUnavailable",
                "Invalid value: 0: may not be 0 when `maxSurge` is 0".into(),
            ));
        }
    }
    Ok(())
}

/// A ConfigMap's keys and size, as kube-apiserver checks them.
pub fn validate_config_map(name: &str, obj: &Value) -> Result<(), ApiError> {
    let mut total = 0;
    for section in ["data", "binaryData"] {
        for (k, v) in obj[section].as_object().into_iter().flatten() {
            let ok =
                !k.is_empty() && k.len() <= 253 && k.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
            if !ok {
                return Err(ApiError::invalid(
                    "ConfigMap",
                    name,
                    &format!("{section}[{k}]"),
                    format!(
                        "Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
                    ),
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
    }
    if total > CONFIGMAP_MAX_BYTES {
        return Err(ApiError::invalid(
            "ConfigMap",
            name,
            "[]",
            format!("Too long: may not be more than {CONFIGMAP_MAX_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// `metadata.generation`: 1 when made, one more each time the spec changes.
pub fn generation(obj: &mut Value, old: Option<&Value>) {
    let g = match old {
        None => 1,
        Some(o) => {
            let was = o["metadata"]["generation"].as_i64().unwrap_or(1);
            if o["spec"] == obj["spec"] { was } else { was + 1 }
        }
    };
    obj["metadata"]["generation"] = json!(g);
}

/// The `autoscaling/v1` Scale of a Deployment or ReplicaSet.
pub fn scale_of(obj: &Value) -> Value {
    let sel = selector(&obj["spec"]["selector"]).map(|s| s.to_string()).unwrap_or_default();
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                     "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": sel},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(selector: Value, labels: Value) -> Value {
        let mut d = json!({"metadata": {"name": "web"}, "spec": {"selector": selector,
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
        defaults(&mut d, "Deployment");
        d
    }

    #[test]
    fn a_deployment_gets_the_apps_v1_defaults() {
        let d = deployment(json!({"matchLabels": {"app": "web"}}), json!({"app": "web"}));
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        validate("Deployment", "web", &d, None).unwrap();
    }

    #[test]
    fn a_bad_selector_or_template_is_refused_as_kube_apiserver_refuses_it() {
        let e = validate(
            "Deployment",
            "web",
            &deployment(json!({"matchLabels": {"app": "web"}}), json!({"app": "api"})),
            None,
        )
        .unwrap_err();
        assert!(
            e.message.contains("spec.template.metadata.labels")
                && e.message.contains("`selector` does not match template `labels`"),
            "{}",
            e.message
        );
        let e = validate("Deployment", "web", &deployment(json!({}), json!({"app": "web"})), None).unwrap_err();
        assert!(e.message.contains("empty selector is invalid for deployment"), "{}", e.message);
        let mut d = deployment(json!({"matchLabels": {"app": "web"}}), json!({"app": "web"}));
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
        let e = validate("Deployment", "web", &d, None).unwrap_err();
        assert!(e.message.contains("spec.template.spec.containers[0].image: Required value"), "{}", e.message);
        let old = deployment(json!({"matchLabels": {"app": "web"}}), json!({"app": "web", "v": "1"}));
        let new = deployment(json!({"matchLabels": {"app": "web", "v": "1"}}), json!({"app": "web", "v": "1"}));
        assert!(validate("Deployment", "web", &new, Some(&old)).unwrap_err().message.contains("field is immutable"));
        let mut zero = deployment(json!({"matchLabels": {"app": "web"}}), json!({"app": "web"}));
        zero["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 0, "maxUnavailable": 0});
        assert!(validate("Deployment", "web", &zero, None).unwrap_err().message.contains("may not be 0"));
    }

    #[test]
    fn a_config_map_over_a_mebibyte_or_with_a_bad_key_is_refused() {
        validate_config_map("c", &json!({"data": {"a.b_c-D": "x"}})).unwrap();
        let big = json!({"data": {"k": "x".repeat(CONFIGMAP_MAX_BYTES)}});
        assert!(
            validate_config_map("c", &big)
                .unwrap_err()
                .message
                .contains("Too long: may not be more than 1048576 bytes")
        );
        assert!(
            validate_config_map("c", &json!({"data": {"a b": "x"}}))
                .unwrap_err()
                .message
                .contains("a valid config key")
        );
    }

    #[test]
    fn surge_rounds_up_and_unavailability_down() {
        assert_eq!(int_or_percent(&json!("25%"), 3, true).unwrap(), 1);
        assert_eq!(int_or_percent(&json!("25%"), 3, false).unwrap(), 0);
        assert_eq!(int_or_percent(&json!(2), 3, false).unwrap(), 2);
        assert!(int_or_percent(&json!("lots"), 3, false).is_err());
    }

    #[test]
    fn generation_follows_the_spec_and_scale_shows_replicas_and_selector() {
        let mut d = deployment(json!({"matchLabels": {"app": "web"}}), json!({"app": "web"}));
        generation(&mut d, None);
        let old = d.clone();
        generation(&mut d, Some(&old));
        assert_eq!(d["metadata"]["generation"], 1, "no spec change");
        d["spec"]["replicas"] = json!(3);
        generation(&mut d, Some(&old));
        assert_eq!(d["metadata"]["generation"], 2);
        let s = scale_of(&d);
        assert_eq!((s["spec"]["replicas"].clone(), s["status"]["selector"].clone()), (json!(3), json!("app=web")));
    }
}
