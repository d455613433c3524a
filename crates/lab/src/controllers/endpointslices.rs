//! EndpointSlices: for every Service with a selector, slices of the pods it selects, with
//! `ready` / `serving` / `terminating` from the pods' state, `nodeName`, and ports whose
//! named `targetPort`s are resolved per pod. Pods that resolve the ports differently go
//! to different slices; a slice holds at most 100 endpoints; a Service with no ready pod
//! keeps one empty slice.

use crate::store::labels;
use crate::store::{Change, Key, Objects};
use flatnet_model::selector::LabelSelector;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

const RESOURCE: &str = "endpointslices.discovery.k8s.io";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MAX_ENDPOINTS: usize = 100;

/// The slices of `services` (from [`to_reconcile`]).
pub(super) fn plan(objects: &Objects, services: &BTreeSet<(String, String)>) -> Vec<(Key, Change)> {
    let mut out = Vec::new();
    let mut index: Option<(String, NsIndex)> = None;
    for (ns, name) in services {
        if index.as_ref().is_none_or(|(n, _)| n != ns) {
            index = Some((ns.clone(), NsIndex::build(objects, ns)));
        }
        let idx = &index.as_ref().expect("just built").1;
        let svc = objects.get(&Key::new("services", ns, name));
        out.extend(reconcile_service(idx, ns, name, svc));
    }
    out
}

/// (namespace, name) of every Service to reconcile, from what changed (an empty name:
/// every Service of that namespace), Services that are gone included.
pub(super) fn to_reconcile(
    objects: &Objects,
    dirty: &BTreeSet<(String, String)>,
    all: bool,
) -> BTreeSet<(String, String)> {
    let mut services: BTreeSet<(String, String)> = BTreeSet::new();
    let every: Vec<(String, String)> = objects
        .list("services", None)
        .map(|s| (str_of(&s["metadata"]["namespace"]), str_of(&s["metadata"]["name"])))
        .collect();
    for (ns, name) in &every {
        if all || dirty.contains(&(ns.clone(), String::new())) || dirty.contains(&(ns.clone(), name.clone())) {
            services.insert((ns.clone(), name.clone()));
        }
    }
    // Services that are gone but whose slices remain.
    for (ns, name) in dirty.iter().filter(|(_, n)| !n.is_empty()) {
        services.insert((ns.clone(), name.clone()));
    }
    if all {
        for s in objects.list(RESOURCE, None) {
            if let Some(svc) = s["metadata"]["labels"]["kubernetes.io/service-name"].as_str() {
                services.insert((str_of(&s["metadata"]["namespace"]), svc.to_string()));
            }
        }
    }
    services
}

/// One namespace's pods by label and slices by Service, built once per pass, so a pass
/// costs the pods a Service selects rather than every pod for every Service.
struct NsIndex<'a> {
    pods_by_label: HashMap<(&'a str, &'a str), Vec<&'a Arc<Value>>>,
    slices_by_service: HashMap<&'a str, Vec<&'a Arc<Value>>>,
}

impl<'a> NsIndex<'a> {
    fn build(objects: &'a Objects, ns: &str) -> Self {
        let mut pods_by_label: HashMap<(&str, &str), Vec<&Arc<Value>>> = HashMap::new();
        for p in objects.list("pods", Some(ns)) {
            let has_ip = p["status"]["podIP"].as_str().is_some_and(|ip| !ip.is_empty());
            let finished = matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
            if !has_ip || finished {
                continue;
            }
            for (k, v) in p["metadata"]["labels"].as_object().into_iter().flatten() {
                pods_by_label.entry((k.as_str(), v.as_str().unwrap_or_default())).or_default().push(p);
            }
        }
        let mut slices_by_service: HashMap<&str, Vec<&Arc<Value>>> = HashMap::new();
        for s in objects.list(RESOURCE, Some(ns)) {
            if s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY
                && let Some(svc) = s["metadata"]["labels"]["kubernetes.io/service-name"].as_str()
            {
                slices_by_service.entry(svc).or_default().push(s);
            }
        }
        Self { pods_by_label, slices_by_service }
    }

    /// The running pods with an IP that match every pair of `selector`.
    fn selected(&self, selector: &BTreeMap<String, String>) -> Vec<&'a Arc<Value>> {
        let lists: Option<Vec<&Vec<&Arc<Value>>>> =
            selector.iter().map(|(k, v)| self.pods_by_label.get(&(k.as_str(), v.as_str()))).collect();
        let Some(mut lists) = lists else { return Vec::new() };
        lists.sort_by_key(|l| l.len());
        let Some((smallest, _)) = lists.split_first() else { return Vec::new() };
        let sel = LabelSelector::from_map(selector);
        smallest.iter().copied().filter(|p| sel.matches(&labels(p))).collect()
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn reconcile_service(idx: &NsIndex, ns: &str, name: &str, svc: Option<&Arc<Value>>) -> Vec<(Key, Change)> {
    let existing: BTreeMap<String, &Arc<Value>> =
        idx.slices_by_service.get(name).into_iter().flatten().map(|s| (str_of(&s["metadata"]["name"]), *s)).collect();
    let desired: BTreeMap<String, Value> = match svc {
        Some(svc) if has_selector(svc) => {
            desired_slices(idx, svc).into_iter().map(|s| (str_of(&s["metadata"]["name"]), s)).collect()
        }
        _ => BTreeMap::new(),
    };
    let mut out = Vec::new();
    for slice_name in existing.keys().filter(|n| !desired.contains_key(*n)) {
        out.push((Key::new(RESOURCE, ns, slice_name), Change::Delete));
    }
    for (slice_name, mut want) in desired {
        match existing.get(&slice_name) {
            Some(have) if same_content(have, &want) => {}
            Some(have) => {
                // Keep identity; the store checks the resourceVersion we planned against.
                for k in ["uid", "creationTimestamp", "resourceVersion"] {
                    want["metadata"][k] = have["metadata"][k].clone();
                }
                want["metadata"]["namespace"] = json!(ns);
                out.push((Key::new(RESOURCE, ns, &slice_name), Change::Put(want)));
            }
            None => {
                want["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
                want["metadata"]["creationTimestamp"] = json!(crate::apiserver::admission::now());
                want["metadata"]["namespace"] = json!(ns);
                out.push((Key::new(RESOURCE, ns, &slice_name), Change::Put(want)));
            }
        }
    }
    out
}

fn has_selector(svc: &Value) -> bool {
    svc["spec"]["selector"].as_object().is_some_and(|m| !m.is_empty())
}

fn same_content(have: &Value, want: &Value) -> bool {
    ["endpoints", "ports", "addressType"].iter().all(|k| have[*k] == want[*k])
        && have["metadata"]["labels"] == want["metadata"]["labels"]
        && have["metadata"]["ownerReferences"] == want["metadata"]["ownerReferences"]
}

/// The ports of a Service as one pod resolves them; None when a named targetPort is not
/// among the pod's container ports.
fn resolve_ports(svc: &Value, pod: &Value) -> Option<Vec<Value>> {
    let mut ports = Vec::new();
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        let number = match &p["targetPort"] {
            Value::Number(n) => n.as_i64()?,
            Value::String(s) => match s.parse::<i64>() {
                Ok(n) => n,
                Err(_) => pod["spec"]["containers"]
                    .as_array()?
                    .iter()
                    .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                    .find(|cp| cp["name"] == s.as_str())?["containerPort"]
                    .as_i64()?,
            },
            _ => p["port"].as_i64()?,
        };
        // Like the real controller, always a name, "" for an unnamed port.
        let mut port = json!({"name": p["name"].as_str().unwrap_or(""), "port": number, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
        if let Some(a) = p["appProtocol"].as_str() {
            port["appProtocol"] = json!(a);
        }
        ports.push(port);
    }
    Some(ports)
}

fn condition(pod: &Value, kind: &str) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

fn endpoint(pod: &Value, svc: &Value) -> Value {
    let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
    let ready_cond = condition(pod, "Ready");
    let mut ep = json!({
        "addresses": [pod["status"]["podIP"]],
        "conditions": {"ready": ready_cond && !terminating, "serving": ready_cond, "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": pod["metadata"]["namespace"], "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
    });
    if let Some(node) = pod["spec"]["nodeName"].as_str() {
        ep["nodeName"] = json!(node);
    }
    // A pod with hostname + subdomain (= the Service's name) gets a DNS name of its own.
    if let (Some(h), Some(sub)) = (pod["spec"]["hostname"].as_str(), pod["spec"]["subdomain"].as_str())
        && svc["metadata"]["name"] == sub
    {
        ep["hostname"] = json!(h);
    }
    ep
}

fn desired_slices(idx: &NsIndex, svc: &Value) -> Vec<Value> {
    let name = str_of(&svc["metadata"]["name"]);
    let selector_map: BTreeMap<String, String> = svc["spec"]["selector"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), str_of(v))).collect())
        .unwrap_or_default();
    // Endpoints grouped by how they resolve the ports.
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut pods = idx.selected(&selector_map);
    pods.sort_by_key(|p| str_of(&p["metadata"]["name"]));
    for pod in pods {
        let Some(ports) = resolve_ports(svc, pod) else { continue };
        let id = serde_json::to_string(&ports).unwrap_or_default();
        groups.entry(id).or_insert_with(|| (ports, Vec::new())).1.push(endpoint(pod, svc));
    }
    if groups.is_empty() {
        // No endpoint: one slice with the Service's ports as written, and none inside.
        let ports = resolve_ports(svc, &Value::Null).unwrap_or_default();
        groups.insert(String::new(), (ports, Vec::new()));
    }
    let mut out = Vec::new();
    for (id, (ports, endpoints)) in groups {
        let chunks: Vec<Vec<Value>> = if endpoints.is_empty() {
            vec![Vec::new()]
        } else {
            endpoints.chunks(MAX_ENDPOINTS).map(<[Value]>::to_vec).collect()
        };
        for (i, chunk) in chunks.into_iter().enumerate() {
            let slice_name = format!("{name}-{}", short_hash(&format!("{id}/{i}")));
            out.push(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": MANAGED_BY},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc["metadata"]["uid"],
                                         "controller": true, "blockOwnerDeletion": true}],
                },
                "addressType": "IPv4",
                "endpoints": chunk,
                "ports": ports,
            }));
        }
    }
    out
}

fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:05x}", h & 0xf_ffff)
}
