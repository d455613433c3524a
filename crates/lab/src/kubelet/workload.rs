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

/// The command line that runs `w` (after `flatnet lab enter … --`).
pub fn argv(w: &Workload, flatnet: &Path, pod: &Pod, node: &str) -> Vec<OsString> {
    match w {
        Workload::Command(a) => a.iter().map(OsString::from).collect(),
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

/// The container's environment: literal values, and the downward API fields a pod
/// network tutorial uses.
pub fn env(c: &Container, pod: &Pod, pod_ip: &str, host_ip: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, e.value_from.as_ref().and_then(|v| v.field_ref.as_ref())) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(f)) => match f.field_path.as_str() {
                "metadata.name" => pod.metadata.name.clone(),
                "metadata.namespace" => pod.metadata.namespace.clone(),
                "metadata.uid" => pod.metadata.uid.clone(),
                "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()),
                "status.podIP" => Some(pod_ip.to_string()),
                "status.hostIP" => Some(host_ip.to_string()),
                _ => None,
            },
            _ => None,
        };
        if let Some(v) = value {
            out.push((e.name.clone(), v));
        }
    }
    out
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
    fn resolv_conf_is_what_the_kubelet_writes() {
        assert_eq!(
            resolv_conf("shop", "10.96.0.10", "cluster.local"),
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }
}
