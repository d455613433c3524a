//! The API through the kube crate's client and raw HTTP: CRUD, patches, selectors,
//! optimistic concurrency, and the 4xx Status a real API server sends for bad input,
//! with nothing stored.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_selectors_and_patches() {
    let dir = tempfile::tempdir().unwrap();
    let lab = TestLab::start(dir.path(), 0).await;
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "default");

    let created = pods.create(&PostParams::default(), &pod("a", json!({"app": "web"}))).await.unwrap();
    let rv_a: u64 = created.metadata.resource_version.clone().unwrap().parse().unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    pods.create(&PostParams::default(), &pod("b", json!({"app": "db"}))).await.unwrap();

    let got = pods.get("a").await.unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("a"));
    let web = pods.list(&ListParams::default().labels("app=web")).await.unwrap();
    assert_eq!(web.items.len(), 1);
    let list_rv: u64 = web.metadata.resource_version.unwrap().parse().unwrap();
    assert!(list_rv > rv_a);
    let by_name = pods.list(&ListParams::default().fields("metadata.name=b")).await.unwrap();
    assert_eq!(by_name.items[0].metadata.name.as_deref(), Some("b"));

    // Strategic merge patch (what kubectl label sends), merge patch and JSON patch.
    let p = pods
        .patch("a", &PatchParams::default(), &Patch::Strategic(json!({"metadata": {"labels": {"tier": "front"}}})))
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.unwrap().get("tier").map(String::as_str), Some("front"));
    pods.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": null}}})))
        .await
        .unwrap();
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}])).unwrap();
    let p = pods.patch("a", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap();
    assert_eq!(p.metadata.annotations.unwrap()["x"], "y");
    assert!(!p.metadata.labels.unwrap().contains_key("app"));

    // Status goes through /status only.
    let st = pods
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"podIP": "10.244.0.9", "phase": "Running"}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().pod_ip.as_deref(), Some("10.244.0.9"));
    let main =
        pods.patch("a", &PatchParams::default(), &Patch::Merge(json!({"status": {"podIP": "1.2.3.4"}}))).await.unwrap();
    assert_eq!(main.status.unwrap().pod_ip.as_deref(), Some("10.244.0.9"), "status ignored on the main resource");
    // As on kube-apiserver, a status write carries labels and annotations (Flannel puts
    // its node annotations this way) but never the spec.
    let st = pods
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"metadata": {"annotations": {"via": "status"}}, "spec": {"nodeName": "elsewhere"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(st.metadata.annotations.unwrap()["via"], "status");
    assert_eq!(st.spec.unwrap().node_name, main.spec.unwrap().node_name, "the spec stays on a status write");

    // Optimistic concurrency: an update with a stale resourceVersion is a 409.
    let mut stale = created.clone();
    stale.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
    let e = pods.replace("a", &PostParams::default(), &stale).await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"), "{e}");

    pods.delete("b", &DeleteParams::default()).await.unwrap();
    assert!(matches!(pods.get("b").await.unwrap_err(), kube::Error::Api(s) if s.code == 404));
    // Deleting a namespace takes what is in it.
    let nss: Api<Namespace> = Api::all(lab.client.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "tmp"}})).unwrap())
        .await
        .unwrap();
    let tmp_pods: Api<Pod> = Api::namespaced(lab.client.clone(), "tmp");
    tmp_pods.create(&PostParams::default(), &pod("x", json!({}))).await.unwrap();
    nss.delete("tmp", &DeleteParams::default()).await.unwrap();
    let all: Api<Pod> = Api::all(lab.client.clone());
    assert!(
        all.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .all(|p| p.metadata.namespace.as_deref() != Some("tmp"))
    );
    let ns = nss.get("default").await.unwrap();
    assert_eq!(ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"], "default");
}

/// Every bad request gets the Status a real API server would send, and changes nothing.
/// Lists in pages, as kube's watcher asks for them: every object once, in order, all
/// pages at the first page's resourceVersion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paginated_with_limit_and_continue() {
    let dir = tempfile::tempdir().unwrap();
    let lab = TestLab::start(dir.path(), 0).await;
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "default");
    for i in 0..7 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), json!({"app": "web"}))).await.unwrap();
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut versions = Vec::new();
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(3);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = pods.list(&lp).await.unwrap();
        pages += 1;
        if pages == 1 {
            // A change between pages does not move the list's version.
            pods.create(&PostParams::default(), &pod("zz", json!({}))).await.unwrap();
        }
        assert!(page.items.len() <= 3);
        versions.push(page.metadata.resource_version.clone().unwrap());
        names.extend(page.items.into_iter().map(|p| p.metadata.name.unwrap()));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "zz"]);
    assert!(versions.windows(2).all(|w| w[0] == w[1]), "{versions:?}");
    let (status, _) = lab.raw("GET", "/api/v1/namespaces/default/pods?limit=2&continue=nonsense", "", b"").await;
    assert_eq!(status, 400);
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_status_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lab = TestLab::start(dir.path(), 0).await;
    let rv_before = lab.store().current_rv();
    let json_ct = "application/json";
    let pod_body = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "x"}]}})
        .to_string()
    };
    let cases: Vec<(&str, &str, String, u16, &str, &str)> = vec![
        ("POST", "/api/v1/namespaces/default/pods", "{not json".into(), 400, "BadRequest", "not a valid JSON"),
        ("POST", "/api/v1/namespaces/default/pods", pod_body("Bad_Name"), 422, "Invalid", "RFC 1123"),
        (
            "POST",
            "/api/v1/namespaces/nowhere/pods",
            pod_body("ok"),
            404,
            "NotFound",
            "namespaces \"nowhere\" not found",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            json!({"kind": "Service", "metadata": {"name": "x"}}).to_string(),
            400,
            "BadRequest",
            "Service",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            json!({"kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": "no"}}).to_string(),
            422,
            "Invalid",
            "schema",
        ),
        ("POST", "/api/v1/namespaces/default/widgets", "{}".into(), 404, "NotFound", "could not find"),
        (
            "POST",
            "/api/v1/namespaces/default/services",
            json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.0.0.5", "ports": [{"port": 80}]}}).to_string(),
            422,
            "Invalid",
            "not in the valid range",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/services",
            json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}).to_string(),
            422,
            "Invalid",
            "already allocated",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/services",
            json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}})
                .to_string(),
            422,
            "Invalid",
            "valid range",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/services",
            json!({"metadata": {"name": "s.dot"}, "spec": {"ports": [{"port": 80}]}}).to_string(),
            422,
            "Invalid",
            "label",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=app%20in%20oops",
            String::new(),
            400,
            "BadRequest",
            "unable to parse",
        ),
        ("PATCH", "/api/v1/namespaces/default/pods/none", "{}".into(), 415, "UnsupportedMediaType", ""),
        ("PUT", "/api/v1/namespaces/default/pods/none", pod_body("none"), 404, "NotFound", "not found"),
    ];
    for (method, path, body, code, reason, needle) in cases {
        let (status, s) = lab.raw(method, path, json_ct, body.as_bytes()).await;
        assert_eq!(status, code, "{method} {path}: {s}");
        assert_eq!(s["kind"], "Status", "{method} {path}");
        assert_eq!(s["code"], code);
        assert_eq!(s["reason"], reason, "{method} {path}: {s}");
        assert!(s["message"].as_str().unwrap().contains(needle), "{method} {path}: {s}");
    }
    // A duplicate: 409 AlreadyExists (after one good create).
    let (st, _) = lab.raw("POST", "/api/v1/namespaces/default/pods", json_ct, pod_body("dup").as_bytes()).await;
    assert_eq!(st, 201);
    let rv_after_good = lab.store().current_rv();
    let (st, s) = lab.raw("POST", "/api/v1/namespaces/default/pods", json_ct, pod_body("dup").as_bytes()).await;
    assert_eq!((st, s["reason"].as_str()), (409, Some("AlreadyExists")));
    assert_eq!(rv_before + 1, rv_after_good, "the bad requests stored nothing");
    assert_eq!(lab.store().current_rv(), rv_after_good);

    // Requests that once could hurt the server: a JSON patch that turns the object into
    // an array, DELETE on a status path, a query that does not decode, a watch from a
    // version the server has never had. Each is refused and the server carries on.
    let cases: Vec<(&str, &str, &str, &str, u16)> = vec![
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/dup",
            "application/json-patch+json",
            r#"[{"op":"replace","path":"","value":[]}]"#,
            422,
        ),
        ("DELETE", "/api/v1/namespaces/default/pods/dup/status", json_ct, "", 405),
        ("GET", "/api/v1/pods?labelSelector=%zz", json_ct, "", 400),
    ];
    for (method, path, ct, body, code) in cases {
        let (st, s) = lab.raw(method, path, ct, body.as_bytes()).await;
        assert_eq!(st, code, "{method} {path}: {s}");
    }
    let (st, s) = lab.raw("GET", "/api/v1/pods?watch=true&resourceVersion=999999", json_ct, b"").await;
    assert_eq!((st, s["object"]["code"].as_i64()), (200, Some(410)), "{s}");
    let (st, _) = lab.raw("GET", "/api/v1/namespaces/default/pods/dup", json_ct, b"").await;
    assert_eq!(st, 200, "the pod is still there and the server still answers");

    // A grace period too large to be a time: 422, not a crash.
    let node = json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.7.0/24"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    assert_eq!(lab.raw("POST", "/api/v1/nodes", json_ct, node.to_string().as_bytes()).await.0, 201);
    let bound =
        json!({"metadata": {"name": "bound"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]}});
    assert_eq!(lab.raw("POST", "/api/v1/namespaces/default/pods", json_ct, bound.to_string().as_bytes()).await.0, 201);
    let (st, _) =
        lab.raw("DELETE", "/api/v1/namespaces/default/pods/bound?gracePeriodSeconds=999999999999", json_ct, b"").await;
    assert_eq!(st, 422);
    // A node's pod CIDR is fixed once set: an update without it keeps it, a change is refused.
    let (st, n) = lab
        .raw("PUT", "/api/v1/nodes/n1", json_ct, json!({"metadata": {"name": "n1"}, "spec": {}}).to_string().as_bytes())
        .await;
    assert_eq!((st, n["spec"]["podCIDR"].as_str()), (200, Some("10.244.7.0/24")), "{n}");
    let moved = json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.9.0/24"}});
    assert_eq!(lab.raw("PUT", "/api/v1/nodes/n1", json_ct, moved.to_string().as_bytes()).await.0, 422);

    // No token, or the wrong one: 401.
    let no_token = lab.kubeconfig.replace("token: ", "token: wrong");
    let stranger = client_for(&no_token).await;
    let (st, s) = raw_with(&stranger, "GET", "/api/v1/pods", json_ct, b"").await;
    assert_eq!((st, s["reason"].as_str()), (401, Some("Unauthorized")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_ips_and_node_ports() {
    let dir = tempfile::tempdir().unwrap();
    let lab = TestLab::start(dir.path(), 0).await;
    let svcs: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let svc = |name: &str, spec: serde_json::Value| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let kubernetes = svcs.get("kubernetes").await.unwrap();
    assert_eq!(kubernetes.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.1"));

    let a = svcs.create(&PostParams::default(), &svc("a", json!({"ports": [{"port": 80}]}))).await.unwrap();
    let a_ip = a.spec.unwrap().cluster_ip.unwrap();
    assert!(a_ip.starts_with("10.9") && a_ip != "10.96.0.1" && a_ip != "10.96.0.10", "{a_ip}");
    let asked = svcs
        .create(&PostParams::default(), &svc("b", json!({"clusterIP": "10.96.5.5", "ports": [{"port": 80}]})))
        .await
        .unwrap();
    assert_eq!(asked.spec.unwrap().cluster_ip.as_deref(), Some("10.96.5.5"));
    let headless = svcs
        .create(&PostParams::default(), &svc("h", json!({"clusterIP": "None", "ports": [{"port": 80}]})))
        .await
        .unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let np = svcs
        .create(
            &PostParams::default(),
            &svc(
                "np",
                json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "name": "b", "nodePort": 30100}]}),
            ),
        )
        .await
        .unwrap();
    let ports = np.spec.unwrap().ports.unwrap();
    assert!((30000..=32767).contains(&ports[0].node_port.unwrap()));
    assert_eq!(ports[1].node_port, Some(30100));
    let e = svcs
        .create(
            &PostParams::default(),
            &svc("np2", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30100}]})),
        )
        .await
        .unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 422), "{e}");

    let system: Api<Service> = Api::namespaced(lab.client.clone(), "kube-system");
    let dns = system
        .create(&PostParams::default(), &svc("kube-dns", json!({"ports": [{"port": 53, "protocol": "UDP"}]})))
        .await
        .unwrap();
    assert_eq!(dns.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.10"), "10.96.0.10 is kube-dns's");

    // ClusterIP is immutable; deleting a Service frees its IP.
    let e = svcs
        .patch("a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"clusterIP": "10.96.9.9"}})))
        .await
        .unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 422), "{e}");
    svcs.delete("b", &DeleteParams::default()).await.unwrap();
    let again = svcs
        .create(&PostParams::default(), &svc("c", json!({"clusterIP": "10.96.5.5", "ports": [{"port": 80}]})))
        .await
        .unwrap();
    assert_eq!(again.spec.unwrap().cluster_ip.as_deref(), Some("10.96.5.5"));

    let nodes: Api<Node> = Api::all(lab.client.clone());
    assert!(nodes.list(&ListParams::default()).await.unwrap().items.is_empty());
}
