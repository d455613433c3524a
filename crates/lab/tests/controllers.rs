//! The controllers: node IPAM, the scheduler and EndpointSlices, through the API.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn node(name: &str, ready: bool) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    .unwrap()
}

async fn cidrs(nodes: &Api<Node>) -> BTreeMap<String, String> {
    nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| Some((n.metadata.name?, n.spec?.pod_cidr?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_pod_cidrs_released_on_delete() {
    let dir = tempfile::tempdir().unwrap();
    let lab = TestLab::start(dir.path(), 0).await;
    let nodes: Api<Node> = Api::all(lab.client.clone());
    for n in ["node-1", "node-2", "node-3"] {
        nodes.create(&PostParams::default(), &node(n, true)).await.unwrap();
    }
    eventually("three pod CIDRs", WAIT, || async { cidrs(&nodes).await.len() == 3 }).await;
    let c = cidrs(&nodes).await;
    let distinct: BTreeSet<&String> = c.values().collect();
    assert_eq!(distinct.len(), 3, "{c:?}");
    for cidr in c.values() {
        let net: ipnet::Ipv4Net = cidr.parse().unwrap();
        assert_eq!(net.prefix_len(), 24);
        assert!("10.244.0.0/16".parse::<ipnet::Ipv4Net>().unwrap().contains(&net));
    }
    let n2 = nodes.get("node-2").await.unwrap();
    assert_eq!(n2.spec.unwrap().pod_cidrs.unwrap(), vec![c["node-2"].clone()]);
    // node-2's range goes back to the pool and the next node gets it.
    nodes.delete("node-2", &DeleteParams::default()).await.unwrap();
    nodes.create(&PostParams::default(), &node("node-4", true)).await.unwrap();
    eventually("node-4's pod CIDR", WAIT, || async { cidrs(&nodes).await.contains_key("node-4") }).await;
    assert_eq!(cidrs(&nodes).await["node-4"], c["node-2"]);
}

fn pod(name: &str, labels: serde_json::Value, node: Option<&str>, ports: serde_json::Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "x", "ports": ports}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": spec})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_spreads_pods_over_ready_nodes_and_honours_node_name() {
    let dir = tempfile::tempdir().unwrap();
    let lab = TestLab::start(dir.path(), 0).await;
    let nodes: Api<Node> = Api::all(lab.client.clone());
    for n in ["node-1", "node-2", "node-3"] {
        nodes.create(&PostParams::default(), &node(n, true)).await.unwrap();
    }
    nodes.create(&PostParams::default(), &node("node-down", false)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "default");
    pods.create(&PostParams::default(), &pod("pinned", json!({}), Some("node-3"), json!([]))).await.unwrap();
    for i in 0..5 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), json!({}), None, json!([]))).await.unwrap();
    }
    let placement = || async {
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|p| Some((p.metadata.name?, p.spec?.node_name?)))
            .collect::<BTreeMap<String, String>>()
    };
    eventually("every pod bound", WAIT, || async { placement().await.len() == 6 }).await;
    let placed = placement().await;
    assert_eq!(placed["pinned"], "node-3");
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for n in placed.values() {
        *per_node.entry(n).or_default() += 1;
    }
    assert!(!per_node.contains_key("node-down"), "nothing on a node that is not ready: {per_node:?}");
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{per_node:?}");
}

async fn slices(api: &Api<EndpointSlice>, svc: &str) -> Vec<EndpointSlice> {
    api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"))).await.unwrap().items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpointslices_follow_pods_with_conditions_and_named_ports() {
    let dir = tempfile::tempdir().unwrap();
    let lab = TestLab::start(dir.path(), 0).await;
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "default");
    let svcs: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let eps: Api<EndpointSlice> = Api::namespaced(lab.client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    // Two pods name their port "http" on different numbers; one pod is not selected.
    let http = |n: i32| json!([{"name": "http", "containerPort": n}]);
    pods.create(&PostParams::default(), &pod("a", json!({"app": "web"}), Some("node-1"), http(8080))).await.unwrap();
    pods.create(&PostParams::default(), &pod("b", json!({"app": "web"}), Some("node-2"), http(9090))).await.unwrap();
    pods.create(&PostParams::default(), &pod("other", json!({"app": "db"}), Some("node-1"), http(8080))).await.unwrap();
    let set_status = |name: &'static str, ip: &'static str, ready: bool| {
        let pods = pods.clone();
        async move {
            let st = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
            pods.patch_status(name, &PatchParams::default(), &Patch::Merge(st)).await.unwrap();
        }
    };
    set_status("a", "10.244.1.5", true).await;
    set_status("b", "10.244.2.5", false).await;
    set_status("other", "10.244.1.6", true).await;

    eventually("one slice per port mapping", WAIT, || async { slices(&eps, "web").await.len() == 2 }).await;
    let endpoints_by_port = || async {
        let mut by_port: BTreeMap<i32, (String, bool, bool, String)> = BTreeMap::new();
        for s in slices(&eps, "web").await {
            let port = s.ports.as_ref().and_then(|p| p.first()).and_then(|p| p.port).unwrap_or_default();
            for e in s.endpoints.unwrap_or_default() {
                let c = e.conditions.unwrap_or_default();
                let row = (
                    e.addresses[0].clone(),
                    c.ready.unwrap_or(false),
                    c.serving.unwrap_or(false),
                    e.node_name.unwrap_or_default(),
                );
                by_port.insert(port, row);
            }
        }
        by_port
    };
    eventually("both endpoints", WAIT, || async { endpoints_by_port().await.len() == 2 }).await;
    let by_port = endpoints_by_port().await;
    assert_eq!(by_port[&8080], ("10.244.1.5".into(), true, true, "node-1".into()));
    assert_eq!(by_port[&9090], ("10.244.2.5".into(), false, false, "node-2".into()));
    for s in slices(&eps, "web").await {
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(s.metadata.owner_references.unwrap()[0].name, "web");
        assert!(
            s.endpoints.clone().unwrap_or_default().iter().all(|e| e.addresses[0] != "10.244.1.6"),
            "unselected pod leaked in"
        );
    }
    // b becomes ready: its condition follows.
    set_status("b", "10.244.2.5", true).await;
    eventually("b ready", WAIT, || async {
        slices(&eps, "web")
            .await
            .iter()
            .flat_map(|s| s.endpoints.clone().unwrap_or_default())
            .any(|e| e.addresses[0] == "10.244.2.5" && e.conditions.and_then(|c| c.ready) == Some(true))
    })
    .await;
    // Pods go: their endpoints go; the Service goes: its slices go.
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    eventually("a's endpoint gone", WAIT, || async {
        !slices(&eps, "web")
            .await
            .iter()
            .flat_map(|s| s.endpoints.clone().unwrap_or_default())
            .any(|e| e.addresses[0] == "10.244.1.5")
    })
    .await;
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("slices deleted with the Service", WAIT, || async { slices(&eps, "web").await.is_empty() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_deletion_marks_endpoints_terminating_then_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let lab = TestLab::start(dir.path(), 0).await;
    let nodes: Api<Node> = Api::all(lab.client.clone());
    nodes.create(&PostParams::default(), &node("node-1", true)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "default");
    let svcs: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let eps: Api<EndpointSlice> = Api::namespaced(lab.client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 80}]}}))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    for (name, ip) in [("slow", "10.244.0.10"), ("quick", "10.244.0.11")] {
        pods.create(&PostParams::default(), &pod(name, json!({"app": "api"}), Some("node-1"), json!([])))
            .await
            .unwrap();
        let st =
            json!({"status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(st)).await.unwrap();
    }
    let conditions = |ip: &'static str| {
        let eps = eps.clone();
        async move {
            slices(&eps, "api")
                .await
                .into_iter()
                .flat_map(|s| s.endpoints.unwrap_or_default())
                .find(|e| e.addresses[0] == ip)
                .map(|e| e.conditions.unwrap_or_default())
                .map(|c| (c.ready.unwrap_or(false), c.serving.unwrap_or(false), c.terminating.unwrap_or(false)))
        }
    };
    eventually("both endpoints ready", WAIT, || async {
        conditions("10.244.0.10").await == Some((true, true, false)) && conditions("10.244.0.11").await.is_some()
    })
    .await;

    // A grace period: Terminating, still serving but not ready, then gone at the deadline.
    pods.delete("slow", &DeleteParams { grace_period_seconds: Some(2), ..Default::default() }).await.unwrap();
    let terminating = pods.get("slow").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    eventually("slow's endpoint terminating", WAIT, || async {
        conditions("10.244.0.10").await == Some((false, true, true))
    })
    .await;
    // Grace 0: gone at once.
    pods.delete("quick", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    assert!(pods.get("quick").await.is_err());
    eventually("slow removed at its deadline", WAIT, || async { pods.get("slow").await.is_err() }).await;
    eventually("no endpoints left", WAIT, || async {
        conditions("10.244.0.10").await.is_none() && conditions("10.244.0.11").await.is_none()
    })
    .await;
}
