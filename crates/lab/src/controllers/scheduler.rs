//! The scheduler: a pod without `spec.nodeName` is bound to the ready node running the
//! fewest pods (ties by name), so pods spread evenly. A `nodeName` in the manifest is
//! left as it is.

use crate::store::{Change, Key, Objects};
use serde_json::json;
use std::collections::BTreeMap;

pub(super) fn plan(objects: &Objects) -> Vec<(Key, Change)> {
    let mut load: BTreeMap<String, usize> = objects
        .list("nodes", None)
        .filter(|n| super::is_ready_node(n))
        .filter_map(|n| n["metadata"]["name"].as_str().map(|s| (s.to_string(), 0)))
        .collect();
    if load.is_empty() {
        return Vec::new();
    }
    for p in objects.list("pods", None) {
        if let Some(n) = p["spec"]["nodeName"].as_str().and_then(|n| load.get_mut(n)) {
            *n += 1;
        }
    }
    let mut out = Vec::new();
    for pod in objects
        .list("pods", None)
        .filter(|p| p["spec"]["nodeName"].is_null() && p["metadata"]["deletionTimestamp"].is_null())
    {
        let (node, count) = load.iter_mut().min_by_key(|(name, n)| (**n, (*name).clone())).expect("non-empty");
        *count += 1;
        let mut p = (**pod).clone();
        p["spec"]["nodeName"] = json!(node);
        let ns = p["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = p["metadata"]["name"].as_str().unwrap_or_default().to_string();
        out.push((Key::new("pods", &ns, &name), Change::Put(p)));
    }
    out
}
