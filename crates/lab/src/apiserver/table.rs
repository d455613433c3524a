//! Server-side printing: `kubectl get` asks for a `Table`, and prints the columns the
//! server chose (those with priority 1 only with `-o wide`).

use super::resources::Resource;
use serde_json::{Value, json};

struct Column {
    name: &'static str,
    priority: u8,
    cell: fn(&Value) -> Value,
}

const fn col(name: &'static str, priority: u8, cell: fn(&Value) -> Value) -> Column {
    Column { name, priority, cell }
}

fn s(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        cur = match cur.get(p) {
            Some(c) => c,
            None => return String::new(),
        };
    }
    match cur {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_none(x: String) -> Value {
    json!(if x.is_empty() { "<none>".to_string() } else { x })
}

fn name(v: &Value) -> Value {
    json!(s(v, &["metadata", "name"]))
}

/// Age as kubectl prints it: 45s, 12m, 3h, 2d.
fn age(v: &Value) -> Value {
    since(&s(v, &["metadata", "creationTimestamp"]))
}

/// How long ago `at` (RFC 3339) was, as kubectl prints it.
fn since(at: &str) -> Value {
    let Ok(t) = at.parse::<jiff::Timestamp>() else { return json!("<unknown>") };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    json!(match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    })
}

fn pod_ready(v: &Value) -> Value {
    let total = v["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = v["status"]["containerStatuses"]
        .as_array()
        .map_or(0, |cs| cs.iter().filter(|c| c["ready"].as_bool() == Some(true)).count());
    json!(format!("{ready}/{total}"))
}

fn pod_status(v: &Value) -> Value {
    if v["metadata"].get("deletionTimestamp").is_some() {
        return json!("Terminating");
    }
    let phase = s(v, &["status", "phase"]);
    json!(if phase.is_empty() { "Pending".to_string() } else { phase })
}

fn pod_restarts(v: &Value) -> Value {
    let n: i64 = v["status"]["containerStatuses"]
        .as_array()
        .map_or(0, |cs| cs.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum());
    json!(n)
}

fn node_status(v: &Value) -> Value {
    let ready = v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"] == "True");
    let mut st = match ready {
        Some(true) => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if v["spec"]["unschedulable"].as_bool() == Some(true) {
        st.push_str(",SchedulingDisabled");
    }
    json!(st)
}

fn node_address(v: &Value, kind: &str) -> String {
    v["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == kind))
        .map(|x| s(x, &["address"]))
        .unwrap_or_default()
}

fn svc_external(v: &Value) -> String {
    let mut ips: Vec<String> = v["spec"]["externalIPs"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if let Some(ing) = v["status"]["loadBalancer"]["ingress"].as_array() {
        ips.extend(ing.iter().map(|i| s(i, &["ip"])).filter(|x| !x.is_empty()));
    }
    if ips.is_empty() && s(v, &["spec", "type"]) == "LoadBalancer" {
        return "<pending>".into();
    }
    ips.join(",")
}

fn svc_ports(v: &Value) -> Value {
    let ports: Vec<String> = v["spec"]["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) => format!("{}:{np}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    or_none(ports.join(","))
}

fn map_string(v: &Value) -> String {
    v.as_object()
        .map(|m| m.iter().map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

fn slice_ports(v: &Value) -> Value {
    let ports: Vec<String> = v["ports"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["port"].as_i64().map(|n| n.to_string())).collect())
        .unwrap_or_default();
    or_none(ports.join(","))
}

fn slice_endpoints(v: &Value) -> Value {
    let addrs: Vec<String> = v["endpoints"]
        .as_array()
        .map(|es| {
            es.iter()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let shown = if addrs.len() > 3 {
        format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
    } else {
        addrs.join(",")
    };
    or_none(shown)
}

fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Pod" => vec![
            col("Name", 0, name),
            col("Ready", 0, pod_ready),
            col("Status", 0, pod_status),
            col("Restarts", 0, pod_restarts),
            col("Age", 0, age),
            col("IP", 1, |v| or_none(s(v, &["status", "podIP"]))),
            col("Node", 1, |v| or_none(s(v, &["spec", "nodeName"]))),
            col("Nominated Node", 1, |_| json!("<none>")),
            col("Readiness Gates", 1, |_| json!("<none>")),
        ],
        "Node" => vec![
            col("Name", 0, name),
            col("Status", 0, node_status),
            col("Roles", 0, |_| json!("<none>")),
            col("Age", 0, age),
            col("Version", 0, |v| json!(s(v, &["status", "nodeInfo", "kubeletVersion"]))),
            col("Internal-IP", 1, |v| or_none(node_address(v, "InternalIP"))),
            col("External-IP", 1, |v| or_none(node_address(v, "ExternalIP"))),
            col("Pod-CIDR", 1, |v| or_none(s(v, &["spec", "podCIDR"]))),
            col("Kernel-Version", 1, |v| or_none(s(v, &["status", "nodeInfo", "kernelVersion"]))),
        ],
        "Service" => vec![
            col("Name", 0, name),
            col("Type", 0, |v| json!(s(v, &["spec", "type"]))),
            col("Cluster-IP", 0, |v| or_none(s(v, &["spec", "clusterIP"]))),
            col("External-IP", 0, |v| or_none(svc_external(v))),
            col("Port(s)", 0, svc_ports),
            col("Age", 0, age),
            col("Selector", 1, |v| or_none(map_string(&v["spec"]["selector"]))),
        ],
        "EndpointSlice" => vec![
            col("Name", 0, name),
            col("AddressType", 0, |v| json!(s(v, &["addressType"]))),
            col("Ports", 0, slice_ports),
            col("Endpoints", 0, slice_endpoints),
            col("Age", 0, age),
        ],
        "NetworkPolicy" => vec![
            col("Name", 0, name),
            col("Pod-Selector", 0, |v| or_none(map_string(&v["spec"]["podSelector"]["matchLabels"]))),
            col("Age", 0, age),
        ],
        "Namespace" => vec![
            col("Name", 0, name),
            col("Status", 0, |v| {
                json!(if s(v, &["status", "phase"]).is_empty() { "Active".into() } else { s(v, &["status", "phase"]) })
            }),
            col("Age", 0, age),
        ],
        "Event" => vec![
            col("Last Seen", 0, |v| since(&s(v, &["lastTimestamp"]))),
            col("Type", 0, |v| json!(s(v, &["type"]))),
            col("Reason", 0, |v| json!(s(v, &["reason"]))),
            col("Object", 0, |v| {
                json!(format!(
                    "{}/{}",
                    s(v, &["involvedObject", "kind"]).to_lowercase(),
                    s(v, &["involvedObject", "name"])
                ))
            }),
            col("Message", 0, |v| json!(s(v, &["message"]))),
        ],
        "Deployment" => vec![
            col("Name", 0, name),
            col("Ready", 0, |v| {
                json!(format!("{}/{}", num(v, &["status", "readyReplicas"]), num(v, &["spec", "replicas"])))
            }),
            col("Up-to-date", 0, |v| json!(num(v, &["status", "updatedReplicas"]))),
            col("Available", 0, |v| json!(num(v, &["status", "availableReplicas"]))),
            col("Age", 0, age),
            col("Containers", 1, containers),
            col("Images", 1, images),
            col("Selector", 1, |v| or_none(map_string(&v["spec"]["selector"]["matchLabels"]))),
        ],
        "ReplicaSet" => vec![
            col("Name", 0, name),
            col("Desired", 0, |v| json!(num(v, &["spec", "replicas"]))),
            col("Current", 0, |v| json!(num(v, &["status", "replicas"]))),
            col("Ready", 0, |v| json!(num(v, &["status", "readyReplicas"]))),
            col("Age", 0, age),
            col("Containers", 1, containers),
            col("Images", 1, images),
            col("Selector", 1, |v| or_none(map_string(&v["spec"]["selector"]["matchLabels"]))),
        ],
        "DaemonSet" => vec![
            col("Name", 0, name),
            col("Desired", 0, |v| json!(num(v, &["status", "desiredNumberScheduled"]))),
            col("Current", 0, |v| json!(num(v, &["status", "currentNumberScheduled"]))),
            col("Ready", 0, |v| json!(num(v, &["status", "numberReady"]))),
            col("Up-to-date", 0, |v| json!(num(v, &["status", "updatedNumberScheduled"]))),
            col("Available", 0, |v| json!(num(v, &["status", "numberAvailable"]))),
            col("Node Selector", 0, |v| or_none(map_string(&v["spec"]["template"]["spec"]["nodeSelector"]))),
            col("Age", 0, age),
            col("Containers", 1, containers),
            col("Images", 1, images),
        ],
        "Endpoints" => vec![col("Name", 0, name), col("Endpoints", 0, endpoints_addresses), col("Age", 0, age)],
        "ConfigMap" => vec![
            col("Name", 0, name),
            col("Data", 0, |v| {
                json!(v["data"].as_object().map_or(0, |m| m.len()) + v["binaryData"].as_object().map_or(0, |m| m.len()))
            }),
            col("Age", 0, age),
        ],
        "ServiceAccount" => vec![
            col("Name", 0, name),
            col("Secrets", 0, |v| json!(v["secrets"].as_array().map_or(0, Vec::len))),
            col("Age", 0, age),
        ],
        "Lease" => vec![
            col("Name", 0, name),
            col("Holder", 0, |v| json!(s(v, &["spec", "holderIdentity"]))),
            col("Age", 0, age),
        ],
        _ => vec![col("Name", 0, name), col("Age", 0, age)],
    }
}

/// A count in the object, 0 when absent (as kubectl shows a fresh workload).
fn num(v: &Value, path: &[&str]) -> i64 {
    s(v, path).parse().unwrap_or(0)
}

/// One field of each of a workload's template's containers, comma-separated.
fn template_containers(v: &Value, field: &str) -> Value {
    let all: Vec<String> =
        v["spec"]["template"]["spec"]["containers"].as_array().into_iter().flatten().map(|c| s(c, &[field])).collect();
    or_none(all.join(","))
}

fn containers(v: &Value) -> Value {
    template_containers(v, "name")
}

fn images(v: &Value) -> Value {
    template_containers(v, "image")
}

/// `IP:PORT` of every ready address, as `kubectl get endpoints` shows them.
fn endpoints_addresses(v: &Value) -> Value {
    let mut all = Vec::new();
    for sub in v["subsets"].as_array().into_iter().flatten() {
        for a in sub["addresses"].as_array().into_iter().flatten() {
            for p in sub["ports"].as_array().into_iter().flatten() {
                all.push(format!("{}:{}", s(a, &["ip"]), s(p, &["port"])));
            }
        }
    }
    let shown =
        if all.len() > 3 { format!("{} + {} more...", all[..3].join(","), all.len() - 3) } else { all.join(",") };
    or_none(shown)
}

/// How much of each object a Table row carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

pub fn render(resource: &Resource, objects: &[&Value], rv: u64, include: IncludeObject) -> Value {
    let cols = columns(resource.kind);
    let defs: Vec<Value> = cols
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": if c.name == "Restarts" { "integer" } else { "string" },
                   "format": if c.name == "Name" { "name" } else { "" }, "description": c.name, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cols.iter().map(|c| (c.cell)(o)).collect::<Vec<_>>()});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
                }
                IncludeObject::Object => row["object"] = (*o).clone(),
            }
            row
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()},
           "columnDefinitions": defs, "rows": rows})
}
