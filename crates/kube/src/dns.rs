//! Services, EndpointSlices and Pods reduced to the few fields DNS records need.

use flatnet_model::dns;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::net::IpAddr;

/// (namespace, name).
pub type Key = (String, String);

fn ports<'a>(it: impl Iterator<Item = (Option<&'a String>, Option<&'a String>, Option<i32>)>) -> Vec<dns::Port> {
    it.filter_map(|(name, proto, port)| {
        Some(dns::Port {
            name: name.cloned().unwrap_or_default(),
            protocol: proto.map_or("tcp".into(), |p| p.to_ascii_lowercase()),
            port: u16::try_from(port?).ok()?,
        })
    })
    .collect()
}

/// A Service's records: its ClusterIPs, or headless, or an external name.
pub fn service_of(s: &Service) -> Option<dns::Service> {
    let spec = s.spec.as_ref()?;
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        dns::ServiceKind::ExternalName(spec.external_name.clone()?)
    } else if spec.cluster_ip.as_deref() == Some("None") {
        dns::ServiceKind::Headless
    } else {
        let ips: Vec<IpAddr> = match &spec.cluster_ips {
            Some(v) if !v.is_empty() => v.iter().filter_map(|i| i.parse().ok()).collect(),
            _ => spec.cluster_ip.iter().filter_map(|i| i.parse().ok()).collect(),
        };
        if ips.is_empty() {
            return None;
        }
        dns::ServiceKind::ClusterIp(ips)
    };
    Some(dns::Service {
        namespace: s.metadata.namespace.clone()?,
        name: s.metadata.name.clone()?,
        kind,
        ports: ports(spec.ports.iter().flatten().map(|p| (p.name.as_ref(), p.protocol.as_ref(), Some(p.port)))),
    })
}

/// A slice's Service and what it holds.
pub fn slice_of(s: &EndpointSlice) -> Option<(Key, dns::Slice)> {
    let ns = s.metadata.namespace.clone()?;
    let svc = s.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?.clone();
    let endpoints = s
        .endpoints
        .iter()
        .flatten()
        .flat_map(|e| {
            // Unknown readiness counts as ready, as the API documents.
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            e.addresses
                .iter()
                .filter_map(move |a| Some(dns::Endpoint { ip: a.parse().ok()?, hostname: e.hostname.clone(), ready }))
        })
        .collect();
    let ports = ports(s.ports.iter().flatten().map(|p| (p.name.as_ref(), p.protocol.as_ref(), p.port)));
    Some(((ns, svc), dns::Slice { ports, endpoints }))
}

/// A pod's addresses (none yet: nothing to serve).
pub fn pod_of(p: &Pod) -> Option<dns::PodIps> {
    let status = p.status.as_ref()?;
    let mut ips: Vec<IpAddr> = status.pod_ips.iter().flatten().filter_map(|i| i.ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.as_ref().and_then(|i| i.parse::<IpAddr>().ok()));
    }
    if ips.is_empty() || p.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    Some(ips.into_boxed_slice())
}
