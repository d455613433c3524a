//! The benchmark's synthetic cluster: Services (a tenth headless), pods and their
//! EndpointSlices as API objects, the same records as zone files for NSD, the query mix,
//! and loading it all through the API.

use super::servers::ApiServer;
use serde_json::{Value, json};
use std::fmt::Write as _;

pub(super) const NAMESPACES: usize = 20;
const ENDPOINTS: usize = 10;

/// The synthetic cluster.
pub(super) struct Cluster {
    pub objects: Vec<Value>,
    pub zone: String,
    pub reverse: String,
    pub queries: Vec<String>,
}

fn pod_ip(i: usize) -> String {
    format!("10.244.{}.{}", i / 250, i % 250 + 2)
}

pub(super) fn cluster(services: usize, pods: usize) -> Cluster {
    let mut objects = Vec::new();
    let mut zone = String::from(
        "$ORIGIN cluster.local.\n$TTL 5\n@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n\
         @ IN NS ns.dns.cluster.local.\nns.dns IN A 10.96.0.10\ndns-version IN TXT \"1.1.0\"\n",
    );
    let mut reverse = String::from(
        "$ORIGIN 10.in-addr.arpa.\n$TTL 5\n@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n\
         @ IN NS ns.dns.cluster.local.\n",
    );
    let mut queries = Vec::new();
    for i in 0..pods {
        let ns = format!("ns-{}", i % NAMESPACES);
        let ip = pod_ip(i);
        objects.push(
            json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": format!("pod-{i}"), "namespace": ns},
                            "spec": {"containers": [{"name": "app", "image": "busybox"}]},
                            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
        );
        let _ = writeln!(zone, "{}.{ns}.pod IN A {ip}", ip.replace('.', "-"));
    }
    for j in 0..services {
        let ns = format!("ns-{}", j % NAMESPACES);
        let name = format!("svc-{j}");
        let headless = j % 10 == 0;
        let cluster_ip = format!("10.100.{}.{}", j / 250, j % 250 + 1);
        let fqdn = format!("{name}.{ns}.svc");
        let mut spec = json!({"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
        spec["clusterIP"] = json!(if headless { "None".to_string() } else { cluster_ip.clone() });
        objects.push(
            json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": name, "namespace": ns}, "spec": spec}),
        );
        let eps: Vec<usize> = (0..ENDPOINTS).map(|k| (j * ENDPOINTS + k) % pods.max(1)).collect();
        objects.push(json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": format!("{name}-abcde"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": eps.iter().map(|&k| json!({"addresses": [pod_ip(k)], "conditions": {"ready": true}})).collect::<Vec<_>>()}));
        if headless {
            for &k in &eps {
                let ip = pod_ip(k);
                let host = format!("{}.{fqdn}", ip.replace('.', "-"));
                let _ = writeln!(zone, "{fqdn} IN A {ip}\n{host} IN A {ip}");
                let _ = writeln!(zone, "{fqdn} IN SRV 0 100 80 {host}.cluster.local.");
                let _ = writeln!(zone, "_http._tcp.{fqdn} IN SRV 0 100 80 {host}.cluster.local.");
                let o: Vec<&str> = ip.split('.').collect();
                let _ = writeln!(reverse, "{}.{}.{} IN PTR {host}.cluster.local.", o[3], o[2], o[1]);
            }
        } else {
            let _ = writeln!(zone, "{fqdn} IN A {cluster_ip}");
            let _ = writeln!(zone, "{fqdn} IN SRV 0 100 80 {fqdn}.cluster.local.");
            let _ = writeln!(zone, "_http._tcp.{fqdn} IN SRV 0 100 80 {fqdn}.cluster.local.");
            let o: Vec<&str> = cluster_ip.split('.').collect();
            let _ = writeln!(reverse, "{}.{}.{} IN PTR {fqdn}.cluster.local.", o[3], o[2], o[1]);
        }
        // The mix, per Service: what pods ask, search-path misses included.
        let full = format!("{fqdn}.cluster.local");
        queries.push(format!("{full} A"));
        queries.push(format!("{full} A"));
        queries.push(format!("{full}.{ns}.svc.cluster.local A"));
        queries.push(format!("{name}.{ns}.{ns}.svc.cluster.local A"));
        queries.push(format!("_http._tcp.{full} SRV"));
        queries.push(format!("{full} AAAA"));
        queries.push(format!("{}.{ns}.pod.cluster.local A", pod_ip(j * 7 % pods.max(1)).replace('.', "-")));
        queries.push(format!(
            "{}.{}.pod.cluster.local A",
            pod_ip(j * 7 % pods.max(1)).replace('.', "-"),
            format_args!("ns-{}", (j * 7) % NAMESPACES)
        ));
        if !headless {
            let o: Vec<&str> = cluster_ip.split('.').collect();
            queries.push(format!("{}.{}.{}.{}.in-addr.arpa PTR", o[3], o[2], o[1], o[0]));
        }
    }
    Cluster { objects, zone, reverse, queries }
}

/// Creates every object of `c` through the API, `in_flight` requests at a time; pods'
/// addresses go through the status subresource, as a kubelet reports them.
pub(super) async fn load(api: &ApiServer, c: &Cluster, in_flight: usize) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
    use kube::discovery::ApiResource;
    let client = api.client().await?;
    let resource = |kind: &str| -> ApiResource {
        let (group, version, plural) = match kind {
            "Service" => ("", "v1", "services"),
            "EndpointSlice" => ("discovery.k8s.io", "v1", "endpointslices"),
            _ => ("", "v1", "pods"),
        };
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() { version.into() } else { format!("{group}/{version}") },
            kind: kind.into(),
            plural: plural.into(),
        }
    };
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for i in 0..NAMESPACES {
        let ns = serde_json::from_value(json!({"metadata": {"name": format!("ns-{i}")}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    futures::stream::iter(c.objects.iter())
        .map(|o| {
            let client = client.clone();
            let ar = resource(o["kind"].as_str().unwrap_or(""));
            async move {
                let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
                let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &ar);
                let obj: DynamicObject = serde_json::from_value(o.clone())?;
                api.create(&PostParams::default(), &obj).await?;
                if ar.kind == "Pod" {
                    let name = o["metadata"]["name"].as_str().unwrap_or("");
                    let status = json!({"status": o["status"]});
                    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
