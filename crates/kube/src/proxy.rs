//! Services and EndpointSlices as the Service proxy plans with them (IPv4 only).

use flatnet_model::proxy::{self, ServiceKey, Slice};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::net::Ipv4Addr;

/// The label that names an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the proxy needs of a Service; None for one it does not carry.
pub fn service_of(s: &Service) -> Option<(ServiceKey, proxy::Service)> {
    let key = (s.metadata.namespace.clone()?, s.metadata.name.clone()?);
    let spec = s.spec.as_ref()?;
    let ips = |v: Option<&Vec<String>>| -> Vec<Ipv4Addr> {
        v.into_iter().flatten().filter_map(|ip| ip.parse().ok()).collect()
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(proxy::ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: proxy::Proto::parse(p.protocol.as_deref().unwrap_or("TCP"))?,
                port: u16::try_from(p.port).ok()?,
                node_port: p.node_port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n != 0),
            })
        })
        .collect();
    let lb: Vec<String> = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect();
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(10800)
    });
    let svc = proxy::Service {
        namespace: key.0.clone(),
        name: key.1.clone(),
        cluster_ip: spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()),
        external_ips: ips(spec.external_ips.as_ref()),
        load_balancer_ips: ips(Some(&lb)),
        ports,
        affinity_timeout: affinity,
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
    };
    Some((key, svc))
}

/// An EndpointSlice as (Service, slice name, slice); None for one of another address type.
pub fn slice_of(s: &EndpointSlice) -> Option<(ServiceKey, String, Slice)> {
    let ns = s.metadata.namespace.clone()?;
    let name = s.metadata.name.clone()?;
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    if s.address_type != "IPv4" {
        return None;
    }
    let ports = s
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                proxy::Proto::parse(p.protocol.as_deref().unwrap_or("TCP"))?,
                u16::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let endpoints = s
        .endpoints
        .iter()
        .flatten()
        .flat_map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            // Unknown readiness counts as ready, as the API documents.
            let ready = c.ready.unwrap_or(true);
            let serving = c.serving.unwrap_or(ready);
            let terminating = c.terminating.unwrap_or(false);
            e.addresses.iter().filter_map(move |a| {
                Some(proxy::Endpoint { ip: a.parse().ok()?, node: e.node_name.clone(), ready, serving, terminating })
            })
        })
        .collect();
    Some(((ns, svc), name, Slice { ports, endpoints }))
}
