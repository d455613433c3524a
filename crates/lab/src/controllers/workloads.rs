//! The workload controllers of kube-controller-manager, as the lab needs them:
//! ReplicaSets keep their number of pods; Deployments roll a changed pod template out
//! through a new ReplicaSet (its pods labelled `pod-template-hash`) within `maxSurge`
//! and `maxUnavailable`; DaemonSets keep one pod on every node they fit, replaced node by
//! node within `maxUnavailable`; the garbage collector removes what a deleted owner
//! controlled; and the endpoints controller writes core/v1 Endpoints from the Services'
//! EndpointSlices. Each pass plans from the store and writes only what differs.

use super::made;
use crate::apiserver::admission::{self, ClusterConfig};
use crate::apiserver::resources;
use crate::apiserver::workloads::int_or_percent;
use crate::store::{Change, Key, Objects};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const RS: &str = "replicasets.apps";
const DEPLOY: &str = "deployments.apps";
const DS: &str = "daemonsets.apps";
const HASH_LABEL: &str = "pod-template-hash";
const DS_HASH_LABEL: &str = "controller-revision-hash";
/// Marks the Endpoints this controller writes (as the real one does, so that the
/// EndpointSlice mirroring controller leaves them alone).
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The template's hash, as a label value (FNV-1a of its JSON, in the alphabet
/// Kubernetes uses for generated names).
pub fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = admission::NAME_ALPHABET;
    let mut h: u32 = 0x811c_9dc5;
    for b in template.to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let mut out = String::new();
    let mut n = h;
    loop {
        out.push(ALPHABET[(n % ALPHABET.len() as u32) as usize] as char);
        n /= ALPHABET.len() as u32;
        if n == 0 {
            break;
        }
    }
    out
}

fn controller_uid(obj: &Value) -> Option<&str> {
    obj["metadata"]["ownerReferences"].as_array()?.iter().find(|r| r["controller"] == true)?["uid"].as_str()
}

fn terminating(obj: &Value) -> bool {
    !obj["metadata"]["deletionTimestamp"].is_null()
}

fn active_pod(p: &Value) -> bool {
    !terminating(p) && !matches!(s(&p["status"]["phase"]), "Succeeded" | "Failed")
}

fn ready_pod(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn owner_ref(kind: &str, owner: &Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
           "controller": true, "blockOwnerDeletion": true})
}

/// Deletes a pod as the API does (graceful on a ready node).
fn delete_pod(objects: &Objects, pod: &Value) -> (Key, Change) {
    let key = Key::new("pods", s(&pod["metadata"]["namespace"]), s(&pod["metadata"]["name"]));
    // Only a grace period too large to add to now fails: the pod's own is none.
    (key, admission::pod_deletion(objects, pod, None).unwrap_or(Change::Delete))
}

/// A pod from `owner`'s template, with extra labels and (for a DaemonSet) its node.
fn new_pod(owner_kind: &str, owner: &Value, extra: &[(&str, String)], node: Option<&str>) -> Value {
    let t = &owner["spec"]["template"];
    let mut labels = t["metadata"]["labels"].clone();
    for (k, v) in extra {
        labels[*k] = json!(v);
    }
    let mut spec = t["spec"].clone();
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
        // What the DaemonSet controller adds: its pods stay through a node's trouble.
        let mut tol = spec["tolerations"].as_array().cloned().unwrap_or_default();
        for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
            tol.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute"}));
        }
        spec["tolerations"] = json!(tol);
    }
    let mut meta = json!({"name": format!("{}-{}", s(&owner["metadata"]["name"]), admission::random_suffix()),
                          "labels": labels, "ownerReferences": [owner_ref(owner_kind, owner)]});
    if t["metadata"]["annotations"].is_object() {
        meta["annotations"] = t["metadata"]["annotations"].clone();
    }
    json!({"metadata": meta, "spec": spec})
}

/// Pods and ReplicaSets by their controller's uid.
struct Owned<'a> {
    pods: BTreeMap<&'a str, Vec<&'a Arc<Value>>>,
    sets: BTreeMap<&'a str, Vec<&'a Arc<Value>>>,
}

impl<'a> Owned<'a> {
    fn build(objects: &'a Objects) -> Self {
        let mut o = Owned { pods: BTreeMap::new(), sets: BTreeMap::new() };
        for p in objects.list("pods", None) {
            if let Some(uid) = controller_uid(p) {
                o.pods.entry(uid).or_default().push(p);
            }
        }
        for r in objects.list(RS, None) {
            if let Some(uid) = controller_uid(r) {
                o.sets.entry(uid).or_default().push(r);
            }
        }
        o
    }
    fn pods_of(&self, owner: &Value) -> Vec<&'a Arc<Value>> {
        self.pods.get(s(&owner["metadata"]["uid"])).cloned().unwrap_or_default()
    }
}

/// A status write when it differs from the stored one.
fn status_change(resource: &str, obj: &Value, status: Value) -> Option<(Key, Change)> {
    if obj["status"] == status {
        return None;
    }
    let mut new = obj.clone();
    new["status"] = status;
    Some((Key::new(resource, s(&obj["metadata"]["namespace"]), s(&obj["metadata"]["name"])), Change::Put(new)))
}

fn spec_replicas(obj: &Value) -> i64 {
    obj["spec"]["replicas"].as_i64().unwrap_or(1)
}

/// What the workload controllers plan, for one pass.
pub(super) fn plan(objects: &Objects, cluster: &ClusterConfig) -> Vec<(Key, Change)> {
    let owned = Owned::build(objects);
    let mut out = Vec::new();
    out.extend(garbage(objects));
    for d in objects.list(DEPLOY, None).filter(|d| !terminating(d)) {
        out.extend(deployment(objects, cluster, &owned, d));
    }
    // Sets a Deployment is about to change are planned again next pass.
    let touched: BTreeSet<Key> = out.iter().map(|(k, _)| k.clone()).collect();
    for r in objects.list(RS, None).filter(|r| !terminating(r)) {
        let key = Key::new(RS, s(&r["metadata"]["namespace"]), s(&r["metadata"]["name"]));
        if !touched.contains(&key) {
            out.extend(replica_set(objects, cluster, &owned, r));
        }
    }
    for d in objects.list(DS, None).filter(|d| !terminating(d)) {
        out.extend(daemon_set(objects, cluster, &owned, d));
    }
    out
}

fn replica_set(objects: &Objects, cluster: &ClusterConfig, owned: &Owned, rs: &Value) -> Vec<(Key, Change)> {
    let mut out = Vec::new();
    let ns = s(&rs["metadata"]["namespace"]);
    let mut pods: Vec<&Arc<Value>> = owned.pods_of(rs).into_iter().filter(|p| active_pod(p)).collect();
    let want = spec_replicas(rs);
    let have = pods.len() as i64;
    if have < want {
        let hash: Vec<(&str, String)> = Vec::new();
        for _ in have..want {
            out.extend(made(objects, cluster, "Pod", ns, new_pod("ReplicaSet", rs, &hash, None)));
        }
    } else if have > want {
        // The least far along go first: unscheduled, then not ready, then the newest.
        pods.sort_by_key(|p| {
            (
                p["spec"]["nodeName"].is_string(),
                ready_pod(p),
                std::cmp::Reverse(s(&p["metadata"]["creationTimestamp"]).to_string()),
            )
        });
        for p in pods.iter().take((have - want) as usize) {
            out.push(delete_pod(objects, p));
        }
    }
    let ready = pods.iter().filter(|p| ready_pod(p)).count();
    let status = json!({"replicas": have, "fullyLabeledReplicas": have, "readyReplicas": ready,
                        "availableReplicas": ready, "observedGeneration": rs["metadata"]["generation"]});
    out.extend(status_change(RS, rs, status));
    out
}

fn deployment(objects: &Objects, cluster: &ClusterConfig, owned: &Owned, d: &Value) -> Vec<(Key, Change)> {
    let mut out = Vec::new();
    let ns = s(&d["metadata"]["namespace"]);
    let name = s(&d["metadata"]["name"]);
    let replicas = spec_replicas(d);
    let hash = template_hash(&d["spec"]["template"]);
    let sets: Vec<&Arc<Value>> = owned
        .sets
        .get(s(&d["metadata"]["uid"]))
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !terminating(r))
        .collect();
    let new_rs = sets.iter().find(|r| r["metadata"]["labels"][HASH_LABEL] == hash.as_str()).map(|r| Value::clone(r));
    let mut old: Vec<&Arc<Value>> =
        sets.iter().filter(|r| r["metadata"]["labels"][HASH_LABEL] != hash.as_str()).copied().collect();
    old.sort_by_key(|r| s(&r["metadata"]["creationTimestamp"]).to_string());
    let available = |r: &Value| r["status"]["availableReplicas"].as_i64().unwrap_or(0);
    let recreate = d["spec"]["strategy"]["type"] == "Recreate";
    let surge = int_or_percent(&d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], replicas, true).unwrap_or(1);
    let mut unavailable =
        int_or_percent(&d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], replicas, false).unwrap_or(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let old_spec: i64 = old.iter().map(|r| spec_replicas(r)).sum();
    let old_running: i64 = old.iter().map(|r| r["status"]["replicas"].as_i64().unwrap_or(0)).sum();
    let new_spec = new_rs.as_ref().map_or(0, spec_replicas);
    // The new set's size: all at once with Recreate once the old pods are gone; else
    // within the surge over the Deployment's replicas.
    let new_target = if recreate {
        if old_spec == 0 && old_running == 0 { replicas } else { 0 }
    } else if new_spec >= replicas {
        replicas
    } else {
        let room = (replicas + surge - (old_spec + new_spec)).max(0);
        (new_spec + room).min(replicas)
    };
    match &new_rs {
        None => {
            let revision = sets
                .iter()
                .filter_map(|r| {
                    s(&r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]).parse::<i64>().ok()
                })
                .max()
                .unwrap_or(0)
                + 1;
            let mut template = d["spec"]["template"].clone();
            template["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let mut sel = d["spec"]["selector"].clone();
            sel["matchLabels"][HASH_LABEL] = json!(hash);
            let mut labels = template["metadata"]["labels"].clone();
            labels[HASH_LABEL] = json!(hash);
            let rs = json!({
                "metadata": {"name": format!("{name}-{hash}"), "labels": labels,
                             "annotations": {"deployment.kubernetes.io/revision": revision.to_string(),
                                             "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                                             "deployment.kubernetes.io/max-replicas": (replicas + surge).to_string()},
                             "ownerReferences": [owner_ref("Deployment", d)]},
                "spec": {"replicas": new_target, "selector": sel, "template": template},
            });
            out.extend(made(objects, cluster, "ReplicaSet", ns, rs));
        }
        Some(rs) if spec_replicas(rs) != new_target => {
            let mut rs = rs.clone();
            rs["spec"]["replicas"] = json!(new_target);
            out.push((Key::new(RS, ns, s(&rs["metadata"]["name"])), Change::Put(rs)));
        }
        Some(_) => {}
    }
    // The old sets shrink: at once with Recreate; else their unavailable pods first, then
    // as far as the available pods stay at `replicas - maxUnavailable`.
    let total_available: i64 = sets.iter().map(|r| available(r)).sum();
    let mut may_remove = (total_available - (replicas - unavailable)).max(0);
    for r in &old {
        let spec = spec_replicas(r);
        let target = if recreate {
            0
        } else {
            let unhealthy = (spec - available(r)).max(0);
            let healthy_down = may_remove.min(spec - unhealthy);
            may_remove -= healthy_down;
            spec - unhealthy - healthy_down
        };
        if target != spec {
            let mut rs = Value::clone(r);
            rs["spec"]["replicas"] = json!(target.max(0));
            out.push((Key::new(RS, ns, s(&rs["metadata"]["name"])), Change::Put(rs)));
        }
    }
    let count = |f: &dyn Fn(&Value) -> i64| sets.iter().map(|r| f(r)).sum::<i64>();
    let running = count(&|r| r["status"]["replicas"].as_i64().unwrap_or(0));
    let ready = count(&|r| r["status"]["readyReplicas"].as_i64().unwrap_or(0));
    let updated = new_rs.as_ref().map_or(0, |r| r["status"]["replicas"].as_i64().unwrap_or(0));
    let complete = updated == replicas && old_running == 0 && total_available >= replicas;
    let avail_ok = total_available >= replicas - unavailable;
    let prev =
        |t: &str| d["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == t)).cloned();
    let condition = |t: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        match prev(t) {
            Some(c) if c["status"] == status && c["reason"] == reason => c,
            _ => json!({"type": t, "status": status, "reason": reason, "message": message,
                        "lastUpdateTime": admission::now(), "lastTransitionTime": admission::now()}),
        }
    };
    let rs_name = format!("{name}-{hash}");
    let status = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": running, "updatedReplicas": updated, "readyReplicas": ready,
        "availableReplicas": total_available, "unavailableReplicas": (replicas - total_available).max(0),
        "conditions": [
            condition("Available", avail_ok, if avail_ok { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                      format!("Deployment {} minimum availability.", if avail_ok { "has" } else { "does not have" })),
            condition("Progressing", true, if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                      format!("ReplicaSet \"{rs_name}\" {}.", if complete { "has successfully progressed" } else { "is progressing" })),
        ],
    });
    out.extend(status_change(DEPLOY, d, status));
    out
}

/// Whether a pod of `ds` fits `node`: its nodeSelector, and the node's taints tolerated.
fn fits(ds: &Value, node: &Value) -> bool {
    let labels: BTreeMap<String, String> =
        serde_json::from_value(node["metadata"]["labels"].clone()).unwrap_or_default();
    let selected = ds["spec"]["template"]["spec"]["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let tolerations = ds["spec"]["template"]["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    let tolerated = |taint: &Value| {
        s(&taint["effect"]) == "PreferNoSchedule"
            || tolerations.iter().any(|t| {
                let key_ok = t["key"].is_null() && t["operator"] == "Exists" || t["key"] == taint["key"];
                let value_ok = t["operator"] == "Exists" || t["value"] == taint["value"];
                let effect_ok = t["effect"].is_null() || t["effect"] == taint["effect"];
                key_ok && value_ok && effect_ok
            })
    };
    selected && node["spec"]["taints"].as_array().into_iter().flatten().all(tolerated)
}

fn daemon_set(objects: &Objects, cluster: &ClusterConfig, owned: &Owned, ds: &Value) -> Vec<(Key, Change)> {
    let mut out = Vec::new();
    let ns = s(&ds["metadata"]["namespace"]);
    let hash = template_hash(&ds["spec"]["template"]);
    let generation = ds["metadata"]["generation"].as_i64().unwrap_or(1).to_string();
    let pods = owned.pods_of(ds);
    let nodes: Vec<&Arc<Value>> = objects.list("nodes", None).collect();
    let eligible: BTreeSet<&str> = nodes.iter().filter(|n| fits(ds, n)).map(|n| s(&n["metadata"]["name"])).collect();
    let on = |node: &str| -> Vec<&Arc<Value>> {
        pods.iter().filter(|p| s(&p["spec"]["nodeName"]) == node).copied().collect()
    };
    let current = |p: &Value| p["metadata"]["labels"][DS_HASH_LABEL] == hash.as_str();
    let on_delete = ds["spec"]["updateStrategy"]["type"] == "OnDelete";
    let desired = eligible.len() as i64;
    let max_unavailable =
        int_or_percent(&ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], desired, true)
            .unwrap_or(1)
            .max(1);
    // Nodes without a ready pod of ours count against maxUnavailable.
    let mut unavailable =
        eligible.iter().filter(|n| !on(n).iter().any(|p| active_pod(p) && ready_pod(p))).count() as i64;
    let (mut scheduled, mut ready, mut updated, mut misscheduled) = (0, 0, 0, 0);
    let extra = [(DS_HASH_LABEL, hash.clone()), ("pod-template-generation", generation)];
    for n in &nodes {
        let node = s(&n["metadata"]["name"]);
        let here = on(node);
        let live: Vec<&&Arc<Value>> = here.iter().filter(|p| active_pod(p)).collect();
        if !eligible.contains(node) {
            misscheduled += live.len();
            for p in &live {
                out.push(delete_pod(objects, p));
            }
            continue;
        }
        // A pod still terminating holds the node (its host ports, say) until it is gone.
        let leaving = here.iter().any(|p| terminating(p));
        match live.as_slice() {
            [] if !leaving => {
                out.extend(made(objects, cluster, "Pod", ns, new_pod("DaemonSet", ds, &extra, Some(node))))
            }
            [] => {}
            [p, rest @ ..] => {
                scheduled += 1;
                for extra_pod in rest {
                    out.push(delete_pod(objects, extra_pod));
                }
                ready += i64::from(ready_pod(p));
                if current(p) {
                    updated += 1;
                } else if !on_delete {
                    // Replaced when the budget allows: an unready old pod first costs nothing.
                    if !ready_pod(p) {
                        out.push(delete_pod(objects, p));
                    } else if unavailable < max_unavailable {
                        unavailable += 1;
                        out.push(delete_pod(objects, p));
                    }
                }
            }
        }
    }
    let status = json!({
        "desiredNumberScheduled": desired, "currentNumberScheduled": scheduled, "numberMisscheduled": misscheduled,
        "numberReady": ready, "numberAvailable": ready, "numberUnavailable": (desired - ready).max(0),
        "updatedNumberScheduled": updated, "observedGeneration": ds["metadata"]["generation"],
    });
    out.extend(status_change(DS, ds, status));
    out
}

/// Pods and ReplicaSets whose controlling Deployment, ReplicaSet or DaemonSet is gone.
fn garbage(objects: &Objects) -> Vec<(Key, Change)> {
    let owners: BTreeSet<&str> = [DEPLOY, RS, DS]
        .iter()
        .flat_map(|r| objects.list(r, None))
        .filter_map(|o| o["metadata"]["uid"].as_str())
        .collect();
    let orphaned = |o: &Value| {
        o["metadata"]["ownerReferences"].as_array().into_iter().flatten().any(|r| {
            r["controller"] == true
                && matches!(s(&r["kind"]), "Deployment" | "ReplicaSet" | "DaemonSet")
                && !owners.contains(s(&r["uid"]))
        })
    };
    let mut out = Vec::new();
    for rs in objects.list(RS, None).filter(|r| orphaned(r)) {
        out.push((Key::new(RS, s(&rs["metadata"]["namespace"]), s(&rs["metadata"]["name"])), Change::Delete));
    }
    for p in objects.list("pods", None).filter(|p| !terminating(p) && orphaned(p)) {
        out.push(delete_pod(objects, p));
    }
    out
}

/// core/v1 Endpoints for the Services in `services` (namespace, name): for one with a
/// selector, from its EndpointSlices, ready addresses and not-ready ones, one subset per
/// set of ports; for one gone or without a selector, none (of those this controller wrote).
pub(super) fn endpoints(objects: &Objects, services: &BTreeSet<(String, String)>) -> Vec<(Key, Change)> {
    let mut out = Vec::new();
    let mut slices_of: BTreeMap<(&str, &str), Vec<&Arc<Value>>> = BTreeMap::new();
    let namespaces: BTreeSet<&str> = services.iter().map(|(ns, _)| ns.as_str()).collect();
    for ns in namespaces {
        for slice in objects.list("endpointslices.discovery.k8s.io", Some(ns)) {
            if let Some(svc) = slice["metadata"]["labels"]["kubernetes.io/service-name"].as_str() {
                slices_of.entry((ns, svc)).or_default().push(slice);
            }
        }
    }
    for (ns, name) in services {
        let (ns, name) = (ns.as_str(), name.as_str());
        let key = Key::new("endpoints", ns, name);
        let svc = objects.get(&Key::new("services", ns, name));
        let Some(svc) = svc.filter(|svc| svc["spec"]["selector"].as_object().is_some_and(|m| !m.is_empty())) else {
            if objects.get(&key).is_some_and(|e| e["metadata"]["labels"][SKIP_MIRROR] == "true") {
                out.push((key, Change::Delete));
            }
            continue;
        };
        // Subsets keyed by their ports.
        let mut subsets: BTreeMap<String, (Value, Vec<Value>, Vec<Value>)> = BTreeMap::new();
        for slice in slices_of.get(&(ns, name)).into_iter().flatten() {
            let ports: Vec<Value> = slice["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let mut port = json!({"port": p["port"], "protocol": p["protocol"]});
                    if p["name"].as_str().is_some_and(|n| !n.is_empty()) {
                        port["name"] = p["name"].clone();
                    }
                    port
                })
                .collect();
            let entry =
                subsets.entry(Value::from(ports.clone()).to_string()).or_insert((Value::from(ports), vec![], vec![]));
            for e in slice["endpoints"].as_array().into_iter().flatten() {
                let Some(ip) = e["addresses"][0].as_str() else { continue };
                let mut a = json!({"ip": ip});
                for k in ["nodeName", "targetRef"] {
                    if !e[k].is_null() {
                        a[k] = e[k].clone();
                    }
                }
                if e["conditions"]["ready"] == true {
                    entry.1.push(a);
                } else if e["conditions"]["terminating"] != true {
                    entry.2.push(a);
                }
            }
        }
        let subsets: Vec<Value> = subsets
            .into_values()
            .filter(|(_, r, n)| !r.is_empty() || !n.is_empty())
            .map(|(ports, mut ready, mut not_ready)| {
                ready.sort_by(|a, b| s(&a["ip"]).cmp(s(&b["ip"])));
                not_ready.sort_by(|a, b| s(&a["ip"]).cmp(s(&b["ip"])));
                let mut sub = json!({"ports": ports});
                if !ready.is_empty() {
                    sub["addresses"] = json!(ready);
                }
                if !not_ready.is_empty() {
                    sub["notReadyAddresses"] = json!(not_ready);
                }
                sub
            })
            .collect();
        let mut labels = svc["metadata"]["labels"].as_object().cloned().unwrap_or_default();
        labels.insert(SKIP_MIRROR.into(), json!("true"));
        match objects.get(&key) {
            Some(cur)
                if cur["subsets"] == json!(subsets) && cur["metadata"]["labels"] == Value::Object(labels.clone()) => {}
            Some(cur) => {
                let mut e = (**cur).clone();
                e["subsets"] = json!(subsets);
                e["metadata"]["labels"] = Value::Object(labels);
                out.push((key, Change::Put(e)));
            }
            None => {
                let mut e = json!({"metadata": {"name": name, "labels": labels}, "subsets": subsets});
                if let Some(r) = resources::by_kind("Endpoints") {
                    admission::stamp_new(&mut e, r, ns);
                    out.push((key, Change::Put(e)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_hash_is_stable_and_follows_the_template() {
        let a = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1"}]}});
        let mut b = a.clone();
        assert_eq!(template_hash(&a), template_hash(&b));
        b["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert_ne!(template_hash(&a), template_hash(&b));
        assert!(template_hash(&a).bytes().all(|c| admission::NAME_ALPHABET.contains(&c)));
    }

    #[test]
    fn a_daemonset_fits_nodes_by_selector_and_tolerated_taints() {
        let ds = json!({"spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                                                        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "net", "effect": "NoSchedule"}]}}}});
        let node = |labels: Value, taints: Value| json!({"metadata": {"labels": labels}, "spec": {"taints": taints}});
        assert!(fits(&ds, &node(json!({"kubernetes.io/os": "linux"}), json!([]))));
        assert!(!fits(&ds, &node(json!({"kubernetes.io/os": "windows"}), json!([]))));
        let tainted = |v: &str| json!([{"key": "dedicated", "value": v, "effect": "NoSchedule"}]);
        assert!(fits(&ds, &node(json!({"kubernetes.io/os": "linux"}), tainted("net"))));
        assert!(!fits(&ds, &node(json!({"kubernetes.io/os": "linux"}), tainted("db"))));
        let everywhere = json!({"spec": {"template": {"spec": {"tolerations": [{"operator": "Exists"}]}}}});
        assert!(fits(&everywhere, &node(json!({}), tainted("db"))));
    }
}
