//! The resources this API server serves, with what discovery, validation and printing
//! need to know about each.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Has a `/status` subresource.
    pub status: bool,
    /// Has a `/scale` subresource (`kubectl scale`).
    pub scale: bool,
    /// The categories it is in (`kubectl get all` lists category `all`).
    pub categories: &'static [&'static str],
    /// Checks the object against the real schema (k8s-openapi types).
    pub schema: fn(&Value) -> Result<(), String>,
    /// Names must be DNS-1123 labels (not just subdomains).
    pub label_names: bool,
}

fn schema<T: DeserializeOwned>(v: &Value) -> Result<(), String> {
    serde_json::from_value::<T>(v.clone()).map(|_| ()).map_err(|e| e.to_string())
}

pub static RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        status: true,
        scale: false,
        categories: &[],
        schema: schema::<Namespace>,
        label_names: true,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        status: true,
        scale: false,
        categories: &[],
        schema: schema::<Node>,
        label_names: false,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        status: true,
        scale: false,
        categories: &["all"],
        schema: schema::<Pod>,
        label_names: false,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        status: true,
        scale: false,
        categories: &["all"],
        schema: schema::<Service>,
        label_names: true,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<Event>,
        label_names: false,
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<EndpointSlice>,
        label_names: false,
    },
    Resource {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        singular: "networkpolicy",
        namespaced: true,
        short_names: &["netpol"],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<NetworkPolicy>,
        label_names: false,
    },
    // Events as components post them today (kube-proxy, controllers); `kubectl get
    // events` reads the core ones.
    Resource {
        group: "events.k8s.io",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &[],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<k8s_openapi::api::events::v1::Event>,
        label_names: false,
    },
    // The cluster's Service ranges, as kube-apiserver serves them (kube-proxy watches them).
    Resource {
        group: "networking.k8s.io",
        version: "v1",
        kind: "ServiceCIDR",
        plural: "servicecidrs",
        singular: "servicecidr",
        namespaced: false,
        short_names: &[],
        status: true,
        scale: false,
        categories: &[],
        schema: schema::<ServiceCIDR>,
        label_names: false,
    },
    // What workloads and their configuration need, and what `kubectl get all` shows.
    Resource {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<ConfigMap>,
        label_names: false,
    },
    // Pods' identities; their `token` subresource issues the tokens pods mount.
    Resource {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        namespaced: true,
        short_names: &["sa"],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<ServiceAccount>,
        label_names: false,
    },
    // Written by the endpoints controller from the EndpointSlices, for what still reads them.
    Resource {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<Endpoints>,
        label_names: false,
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        status: true,
        scale: true,
        categories: &["all"],
        schema: schema::<Deployment>,
        label_names: false,
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        namespaced: true,
        short_names: &["rs"],
        status: true,
        scale: true,
        categories: &["all"],
        schema: schema::<ReplicaSet>,
        label_names: false,
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        plural: "daemonsets",
        singular: "daemonset",
        namespaced: true,
        short_names: &["ds"],
        status: true,
        scale: false,
        categories: &["all"],
        schema: schema::<DaemonSet>,
        label_names: false,
    },
    // Node heartbeats (kube-node-lease) and leader election.
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<Lease>,
        label_names: false,
    },
    // RBAC objects are stored and served (install manifests carry them), though the
    // embedded API authorizes every authenticated client alike.
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRole",
        plural: "clusterroles",
        singular: "clusterrole",
        namespaced: false,
        short_names: &[],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<ClusterRole>,
        label_names: false,
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        namespaced: false,
        short_names: &[],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<ClusterRoleBinding>,
        label_names: false,
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "Role",
        plural: "roles",
        singular: "role",
        namespaced: true,
        short_names: &[],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<Role>,
        label_names: false,
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "RoleBinding",
        plural: "rolebindings",
        singular: "rolebinding",
        namespaced: true,
        short_names: &[],
        status: false,
        scale: false,
        categories: &[],
        schema: schema::<RoleBinding>,
        label_names: false,
    },
];

impl Resource {
    /// The name objects are stored under: the plural, qualified by its group.
    pub fn store_name(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_kind(kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

/// The API groups served under /apis, in order.
pub fn groups() -> Vec<&'static str> {
    let mut g: Vec<&str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        // Each once, in the order served, wherever its resources stand in the table.
        if !g.contains(&r.group) {
            g.push(r.group);
        }
    }
    g
}

/// Why `name` is not a valid object name, or None.
pub fn invalid_name(name: &str, label: bool) -> Option<String> {
    let max = if label { 63 } else { 253 };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !p.starts_with('-')
            && !p.ends_with('-')
    };
    if name.is_empty() {
        return Some("a name is required".into());
    }
    if name.len() > max {
        return Some(format!("must be no more than {max} characters"));
    }
    let ok = if label { part_ok(name) } else { name.split('.').all(part_ok) };
    (!ok).then(|| {
        format!(
            "a lowercase RFC 1123 {} must consist of lower case alphanumeric characters{}, and must start and end with an alphanumeric character",
            if label { "label" } else { "subdomain" },
            if label { " or '-'" } else { ", '-' or '.'" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(invalid_name("web-0", true).is_none());
        assert!(invalid_name("a.b", false).is_none());
        assert!(invalid_name("a.b", true).is_some());
        assert!(invalid_name("Web", false).is_some());
        assert!(invalid_name("-x", false).is_some());
        assert!(invalid_name(&"a".repeat(64), true).is_some());
        assert!(invalid_name("", false).is_some());
    }

    #[test]
    fn lookup() {
        assert_eq!(find("", "v1", "pods").unwrap().kind, "Pod");
        assert_eq!(
            find("discovery.k8s.io", "v1", "endpointslices").unwrap().store_name(),
            "endpointslices.discovery.k8s.io"
        );
        // networking.k8s.io's resources are not next to each other in the table: still once.
        assert_eq!(
            groups(),
            vec![
                "discovery.k8s.io",
                "networking.k8s.io",
                "events.k8s.io",
                "apps",
                "coordination.k8s.io",
                "rbac.authorization.k8s.io"
            ]
        );
    }
}
