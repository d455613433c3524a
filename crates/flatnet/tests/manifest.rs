//! The install manifest, deploy/flatnet.yaml, read as an operator's cluster reads it:
//! every setting the containers take exists where they take it from, the agent and the
//! DNS server accept the arguments it gives them, and the DaemonSet, Deployment and
//! Service are shaped as a CNI's must be. (Server-side validation against kube-apiserver
//! is in lab_kubernetes.rs.)

use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;

fn objects() -> Vec<Value> {
    flatnet_lab::lifecycle::apply::parse(flatnet_lab::kubernetes::MANIFEST).unwrap()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/flatnet.yaml"))
}

fn config_map(objs: &[Value], name: &str) -> BTreeMap<String, String> {
    serde_json::from_value(find(objs, "ConfigMap", name)["data"].clone()).unwrap()
}

/// A container's arguments with `$(VAR)` expanded from its env, as the kubelet does,
/// values from ConfigMaps looked up; a reference to a variable it does not define fails.
fn expanded_args(objs: &[Value], c: &Value) -> Vec<String> {
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
            let data = config_map(objs, r["name"].as_str().unwrap());
            let key = r["key"].as_str().unwrap();
            data.get(key).unwrap_or_else(|| panic!("{name}: no key {key} in ConfigMap {}", r["name"])).clone()
        } else if e["valueFrom"].get("fieldRef").is_some() {
            "node-1".to_string()
        } else {
            e["value"].as_str().unwrap_or_default().to_string()
        };
        env.insert(name, value);
    }
    let all: Vec<&Value> =
        c["command"].as_array().unwrap().iter().chain(c["args"].as_array().into_iter().flatten()).collect();
    all.iter()
        .map(|a| {
            let mut s = a.as_str().unwrap().to_string();
            while let Some(start) = s.find("$(") {
                let end = s[start..].find(')').unwrap() + start;
                let var = &s[start + 2..end];
                let v = env.get(var).unwrap_or_else(|| panic!("$({var}) is not defined in the container's env"));
                s.replace_range(start..=end, v);
            }
            s
        })
        .collect()
}

#[test]
fn the_daemonset_runs_on_every_node_installs_the_plugin_and_probes_the_agent() {
    let objs = objects();
    let ds = find(&objs, "DaemonSet", "flatnet-node");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(ds["metadata"]["namespace"], "kube-system");
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["serviceAccountName"], "flatnet-node");
    assert!(
        spec["tolerations"].as_array().unwrap().iter().any(|t| t["operator"] == "Exists" && t.get("key").is_none())
    );
    assert_eq!(ds["spec"]["template"]["metadata"]["labels"]["k8s-app"], "flatnet-node");
    let init = &spec["initContainers"][0];
    assert_eq!(init["command"][1], "install-cni");
    let agent = &spec["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(agent[probe]["httpGet"]["port"], 9402, "{probe}");
    }
    let caps = &agent["securityContext"]["capabilities"];
    assert_eq!(caps["drop"][0], "ALL");
    assert!(agent["securityContext"].get("privileged").is_none(), "not privileged: capabilities only");
    assert_eq!(caps["add"], serde_json::json!(["NET_ADMIN", "NET_BIND_SERVICE"]));
}

#[test]
fn the_agent_and_the_dns_server_accept_the_arguments_the_manifest_gives_them() {
    let objs = objects();
    let ds = find(&objs, "DaemonSet", "flatnet-node");
    let dns = find(&objs, "Deployment", "flatnet-dns");
    for (what, c) in [
        ("the agent", &ds["spec"]["template"]["spec"]["containers"][0]),
        ("the DNS server", &dns["spec"]["template"]["spec"]["containers"][0]),
    ] {
        let mut args = expanded_args(&objs, c);
        assert_eq!(args[0], "/usr/local/bin/flatnet", "{what}: the image's path");
        args.remove(0);
        // The arguments parse; it then stops at what is not there here (a cluster, the
        // config volume), never at an argument.
        let out = Command::new(env!("CARGO_BIN_EXE_flatnet"))
            .args(&args)
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("unexpected argument") && !err.contains("invalid value"), "{what}: {args:?}: {err}");
    }
}

#[test]
fn the_dns_config_map_names_only_settings_the_server_reads_and_kube_dns_is_where_pods_look() {
    let objs = objects();
    let data = config_map(&objs, "flatnet-dns");
    for k in data.keys() {
        assert!(flatnet_dns::settings::KEYS.contains(&k.as_str()), "flatnet dns does not read {k:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in &data {
        std::fs::write(dir.path().join(k), v).unwrap();
    }
    let o = flatnet_dns::settings::read_dir(dir.path()).unwrap();
    let base = flatnet_dns::settings::Base {
        zone: flatnet_model::dns::ZoneConfig::default(),
        resolv_conf: "/etc/resolv.conf".into(),
        allow_forwarding: Vec::new(),
        listen: "0.0.0.0:5353".parse().unwrap(),
    };
    flatnet_dns::settings::resolve(&base, &o, |_| Ok("nameserver 192.0.2.53\n".into())).unwrap();
    let svc = find(&objs, "Service", "kube-dns");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
    assert_eq!(svc["metadata"]["labels"]["k8s-app"], "kube-dns");
    let dep = find(&objs, "Deployment", "flatnet-dns");
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(dep["spec"]["template"]["metadata"]["labels"]["k8s-app"], "kube-dns", "the Service selects it");
    let ports: Vec<(i64, i64)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_i64().unwrap(), p["targetPort"].as_i64().unwrap()))
        .collect();
    assert!(ports.contains(&(53, 5353)), "{ports:?}");
}

#[test]
fn the_settings_config_map_documents_each_setting() {
    let text = flatnet_lab::kubernetes::MANIFEST;
    let data = config_map(&objects(), "flatnet-config");
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["backend", "bgp-hold-time", "cluster-cidr", "cross-subnet", "mtu", "service-cidr", "vxlan-port"]
    );
    for k in data.keys() {
        let line = text.lines().position(|l| l.trim_start().starts_with(&format!("{k}:"))).unwrap();
        let above = text.lines().nth(line - 1).unwrap();
        assert!(above.trim_start().starts_with('#'), "{k} has no comment above it");
    }
}
