//! What each container of a pod runs in the lab, where there are no images: its
//! `command`/`args` as a program on the node; else, when it declares ports (or its image
//! is a well-known web server), the built-in netexec server on them; else an idle
//! process that keeps the pod running.

use k8s_openapi::api::core::v1::{Container, Pod};
use std::ffi::OsString;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// A program on the node: argv.
    Command(Vec<String>),
    /// The built-in server on these `port/PROTO` ports.
    Netexec(Vec<String>),
    Idle,
}

/// Images whose default command serves HTTP on port 80.
const WEB_SERVERS: &[&str] = &["nginx", "httpd", "caddy", "traefik/whoami", "kennethreitz/httpbin"];

fn image_name(image: &str) -> &str {
    let no_tag = image.split('@').next().unwrap_or(image);
    let no_tag = match no_tag.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => no_tag,
    };
    no_tag.trim_start_matches("docker.io/").trim_start_matches("library/")
}

pub fn workload(c: &Container) -> Workload {
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    argv.extend(c.args.clone().unwrap_or_default());
    if !argv.is_empty() {
        return Workload::Command(argv);
    }
    let ports: Vec<String> = c
        .ports
        .iter()
        .flatten()
        .filter(|p| matches!(p.protocol.as_deref(), None | Some("TCP") | Some("UDP")))
        .map(|p| format!("{}/{}", p.container_port, p.protocol.as_deref().unwrap_or("TCP")))
        .collect();
    if !ports.is_empty() {
        return Workload::Netexec(ports);
    }
    if c.image.as_deref().map(image_name).is_some_and(|i| WEB_SERVERS.contains(&i)) {
        return Workload::Netexec(vec!["80/TCP".into()]);
    }
    Workload::Idle
}

/// The command line that runs `w` (after `flatnet lab enter … --`); `$(NAME)` in a
/// command is expanded against the container's environment.
pub fn argv(w: &Workload, flatnet: &Path, pod: &Pod, node: &str, env: &[(String, String)]) -> Vec<OsString> {
    match w {
        Workload::Command(a) => a.iter().map(|arg| OsString::from(expand(arg, env))).collect(),
        Workload::Idle => vec!["sleep".into(), "infinity".into()],
        Workload::Netexec(ports) => {
            let mut v: Vec<OsString> = vec![flatnet.into(), "lab".into(), "netexec".into()];
            v.extend(["--pod".into(), pod.metadata.name.clone().unwrap_or_default().into()]);
            v.extend(["--namespace".into(), pod.metadata.namespace.clone().unwrap_or_default().into()]);
            v.extend(["--node".into(), node.into()]);
            for p in ports {
                v.extend(["--port".into(), p.into()]);
            }
            v
        }
    }
}

/// A pod field the downward API serves (None: one the lab does not).
pub fn pod_field(pod: &Pod, path: &str, pod_ip: &str, host_ip: &str) -> Option<String> {
    let spec = pod.spec.as_ref();
    match path {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => Some(pod_ip.to_string()),
        "status.hostIP" => Some(host_ip.to_string()),
        _ => {
            let (map, key) = path.strip_suffix("']")?.split_once("['")?;
            let m = match map {
                "metadata.labels" => pod.metadata.labels.as_ref()?,
                "metadata.annotations" => pod.metadata.annotations.as_ref()?,
                _ => return None,
            };
            m.get(key).cloned()
        }
    }
}

/// Expands `$(NAME)` references to variables defined so far, as the kubelet does: an
/// unknown reference stays as written, and `$$` is a literal `$`.
pub fn expand(text: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[i..i + name.len() + 3]),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn set(vars: &mut Vec<(String, String)>, name: &str, value: String) {
    vars.retain(|(k, _)| k != name);
    vars.push((name.to_string(), value));
}

/// The container's environment, in the kubelet's order: the API server's service
/// variables, then `envFrom`, then `env` (values expanded against what came before),
/// later ones overriding earlier. A missing ConfigMap or key is an error unless optional.
pub fn env(
    c: &Container,
    pod: &Pod,
    ips: (&str, &str),
    inputs: &super::inputs::Inputs,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    if let Some((ip, port)) = &inputs.apiserver {
        for (k, v) in [
            ("KUBERNETES_SERVICE_HOST", ip.clone()),
            ("KUBERNETES_SERVICE_PORT", port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string()),
            ("KUBERNETES_PORT", format!("tcp://{ip}:{port}")),
            (&format!("KUBERNETES_PORT_{port}_TCP"), format!("tcp://{ip}:{port}")),
            (&format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
            (&format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
            (&format!("KUBERNETES_PORT_{port}_TCP_ADDR"), ip.clone()),
        ] {
            set(&mut out, k, v);
        }
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match inputs.config_map(&r.name) {
                Some(data) => data.into_iter().for_each(|(k, v)| set(&mut out, &format!("{prefix}{k}"), v)),
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match inputs.secret(&r.name) {
                Some(data) => data
                    .into_iter()
                    .for_each(|(k, v)| set(&mut out, &format!("{prefix}{k}"), String::from_utf8_lossy(&v).into())),
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => Some(expand(v, &out)),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    pod_field(pod, &f.field_path, ips.0, ips.1)
                } else if let Some(r) = &from.config_map_key_ref {
                    match inputs.config_map(&r.name).and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => Some(v),
                        None if r.optional == Some(true) => None,
                        None => return Err(format!("couldn't find key {} in ConfigMap {}", r.key, r.name)),
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    match inputs.secret(&r.name).and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => Some(String::from_utf8_lossy(&v).into_owned()),
                        None if r.optional == Some(true) => None,
                        None => return Err(format!("couldn't find key {} in Secret {}", r.key, r.name)),
                    }
                } else {
                    None
                }
            }
            _ => Some(String::new()),
        };
        if let Some(v) = value {
            set(&mut out, &e.name, v);
        }
    }
    Ok(out)
}

/// The resolv.conf a kubelet writes for a `ClusterFirst` pod.
pub fn resolv_conf(namespace: &str, dns_ip: &str, domain: &str) -> String {
    format!("search {namespace}.svc.{domain} svc.{domain} {domain}\nnameserver {dns_ip}\noptions ndots:5\n")
}

pub fn hosts_file(pod_ip: &str, hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{hostname}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: serde_json::Value) -> Container {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn tutorial_containers_map_to_workloads() {
        let busybox =
            container(serde_json::json!({"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}));
        assert_eq!(workload(&busybox), Workload::Command(vec!["sleep".into(), "3600".into()]));
        let nginx =
            container(serde_json::json!({"name": "c", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}));
        assert_eq!(workload(&nginx), Workload::Netexec(vec!["80/TCP".into()]));
        let bare = container(serde_json::json!({"name": "c", "image": "docker.io/library/nginx:1.25"}));
        assert_eq!(workload(&bare), Workload::Netexec(vec!["80/TCP".into()]));
        let dns = container(serde_json::json!({"name": "c", "image": "x", "ports": [
            {"containerPort": 53, "protocol": "UDP"}, {"containerPort": 53, "protocol": "TCP"}, {"containerPort": 9, "protocol": "SCTP"}]}));
        assert_eq!(workload(&dns), Workload::Netexec(vec!["53/UDP".into(), "53/TCP".into()]));
        let args_only =
            container(serde_json::json!({"name": "c", "image": "busybox", "args": ["sh", "-c", "sleep 1"]}));
        assert_eq!(workload(&args_only), Workload::Command(vec!["sh".into(), "-c".into(), "sleep 1".into()]));
        assert_eq!(workload(&container(serde_json::json!({"name": "c", "image": "busybox"}))), Workload::Idle);
        assert_eq!(image_name("registry:5000/nginx"), "registry:5000/nginx");
    }

    #[test]
    fn references_expand_as_the_kubelet_expands_them() {
        let vars = vec![("A".to_string(), "1".to_string()), ("B".to_string(), "x$(A)".to_string())];
        assert_eq!(expand("--a=$(A) --b=$(B) $(NOPE) $$(A) $5 $(", &vars), "--a=1 --b=x$(A) $(NOPE) $(A) $5 $(");
    }

    #[test]
    fn the_environment_has_the_api_server_then_env_from_then_env() {
        let c = container(serde_json::json!({"name": "agent", "image": "x",
            "envFrom": [{"configMapRef": {"name": "flatnet-apiserver", "optional": true}}],
            "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "BACKEND", "valueFrom": {"configMapKeyRef": {"name": "flatnet-config", "key": "backend"}}},
                    {"name": "WHERE", "value": "$(NODE_NAME)/$(BACKEND)"}]}));
        let pod: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"nodeName": "node-2", "containers": []}}),
        )
        .unwrap();
        let mut inputs =
            super::super::inputs::Inputs { apiserver: Some(("10.96.0.1".into(), 443)), ..Default::default() };
        inputs.config_maps.insert("flatnet-config".into(), Some([("backend".to_string(), "vxlan".to_string())].into()));
        let vars = env(&c, &pod, ("10.244.1.2", "192.168.1.12"), &inputs).unwrap();
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get("WHERE"), Some("node-2/vxlan"));
        inputs.config_maps.insert(
            "flatnet-apiserver".into(),
            Some([("KUBERNETES_SERVICE_HOST".to_string(), "192.168.1.1".to_string())].into()),
        );
        let vars = env(&c, &pod, ("", ""), &inputs).unwrap();
        assert!(
            vars.contains(&("KUBERNETES_SERVICE_HOST".into(), "192.168.1.1".into())),
            "envFrom overrides the service variables"
        );
        inputs.config_maps.insert("flatnet-config".into(), None);
        assert_eq!(
            env(&c, &pod, ("", ""), &inputs).unwrap_err(),
            "couldn't find key backend in ConfigMap flatnet-config"
        );
    }

    #[test]
    fn resolv_conf_is_what_the_kubelet_writes() {
        assert_eq!(
            resolv_conf("shop", "10.96.0.10", "cluster.local"),
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }
}
