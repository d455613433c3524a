//! The cluster's records, built from Services, EndpointSlices and Pods as the Kubernetes
//! DNS spec lays them out, and rendered to wire bytes once per build so that answering
//! is a hash lookup and a copy.

use super::name::{self, ancestors, encode};
use super::{SPEC_VERSION, rtype};
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain, `cluster.local`.
    pub domain: String,
    /// TTL of every answer (and of negative answers, through the SOA minimum).
    pub ttl: u32,
    /// The DNS Service's address, given to `ns.dns.<domain>` (the zone's name server).
    pub nameserver: Option<IpAddr>,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self { domain: "cluster.local".into(), ttl: 5, nameserver: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Empty for an unnamed port.
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub hostname: Option<String>,
    pub ready: bool,
}

/// An EndpointSlice of a Service: its ports and endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Slice {
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub ips: Vec<IpAddr>,
}

/// Records of one type at one name, as wire bytes. Answer records are owned by the
/// question's name (a compression pointer to offset 12), so any case the client used
/// is echoed.
#[derive(Debug, Clone, Default)]
pub(super) struct RecordSet {
    pub rtype: u16,
    pub count: u16,
    pub answers: Vec<u8>,
    /// Address records of the targets (SRV), for the additional section.
    pub extra_count: u16,
    pub extra: Vec<u8>,
}

/// A name of the zone: its record sets (none for an empty non-terminal, a name that
/// exists only because names below it do).
#[derive(Debug, Clone, Default)]
pub(super) struct Node {
    pub sets: Vec<RecordSet>,
}

impl Node {
    pub fn set(&self, t: u16) -> Option<&RecordSet> {
        self.sets.iter().find(|s| s.rtype == t)
    }
}

/// Every record the server answers with authority, ready to copy into a reply.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    pub(super) origin: Vec<u8>,
    pub(super) names: HashMap<Box<[u8]>, Node>,
    /// The SOA record (owner written out), for the authority section of negative answers.
    pub(super) soa: Vec<u8>,
    /// How many records it holds.
    pub(super) records: usize,
}

const POINTER_TO_QUESTION: [u8; 2] = [0xC0, 0x0C];
const CLASS_IN: u16 = 1;

/// One type's records at a name before rendering: the type, each record's data, and
/// the additional records that go with them.
type PendingSet = (u16, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Records gathered by name and type before rendering.
#[derive(Default)]
struct Builder {
    names: HashMap<Vec<u8>, Vec<PendingSet>>,
}

impl Builder {
    fn add(&mut self, owner: &[u8], t: u16, rdata: Vec<u8>, extra: Vec<Vec<u8>>) {
        let sets = self.names.entry(owner.to_vec()).or_default();
        let i = match sets.iter().position(|s| s.0 == t) {
            Some(i) => i,
            None => {
                sets.push((t, Vec::new(), Vec::new()));
                sets.len() - 1
            }
        };
        let set = &mut sets[i];
        if !set.1.contains(&rdata) {
            set.1.push(rdata);
        }
        for e in extra {
            if !set.2.contains(&e) {
                set.2.push(e);
            }
        }
    }

    fn address(&mut self, owner: &[u8], ip: IpAddr) {
        let (t, rdata) = address_rdata(ip);
        self.add(owner, t, rdata, Vec::new());
    }
}

fn address_rdata(ip: IpAddr) -> (u16, Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => (rtype::A, v4.octets().to_vec()),
        IpAddr::V6(v6) => (rtype::AAAA, v6.octets().to_vec()),
    }
}

/// One resource record with its owner written out.
fn record(owner: &[u8], t: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(owner.len() + 10 + rdata.len());
    v.extend_from_slice(owner);
    push_fixed(&mut v, t, ttl, rdata);
    v
}

fn push_fixed(v: &mut Vec<u8>, t: u16, ttl: u32, rdata: &[u8]) {
    v.extend_from_slice(&t.to_be_bytes());
    v.extend_from_slice(&CLASS_IN.to_be_bytes());
    v.extend_from_slice(&ttl.to_be_bytes());
    v.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    v.extend_from_slice(rdata);
}

fn srv_rdata(port: u16, target: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(6 + target.len());
    v.extend_from_slice(&0u16.to_be_bytes()); // priority
    v.extend_from_slice(&100u16.to_be_bytes()); // weight
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(target);
    v
}

/// `10-244-1-5` for 10.244.1.5, `fd00--1` for fd00::1: an address as one DNS label.
fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The reverse-lookup name of `ip` (`5.1.244.10.in-addr.arpa`).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s + "ip6.arpa"
        }
    }
}

/// A label or name from the API, checked; None (the record is skipped) when it is not
/// a valid DNS name.
fn wire(dotted: &str) -> Option<Vec<u8>> {
    encode(dotted).ok()
}

impl Zone {
    /// Builds the zone. `serial` goes into the SOA (the server uses the build time).
    pub fn build<'a>(
        cfg: &ZoneConfig,
        serial: u32,
        services: impl IntoIterator<Item = (&'a Service, Vec<&'a Slice>)>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let domain = cfg.domain.trim_end_matches('.').to_ascii_lowercase();
        let origin = encode(&domain).unwrap_or_else(|_| encode("cluster.local").expect("literal"));
        let mut b = Builder::default();
        let txt = {
            let mut v = vec![SPEC_VERSION.len() as u8];
            v.extend_from_slice(SPEC_VERSION.as_bytes());
            v
        };
        if let Some(n) = wire(&format!("dns-version.{domain}")) {
            b.add(&n, rtype::TXT, txt, Vec::new());
        }
        let ns_name = wire(&format!("ns.dns.{domain}")).expect("a valid domain");
        b.add(&origin, rtype::NS, ns_name.clone(), Vec::new());
        if let Some(ip) = cfg.nameserver {
            b.address(&ns_name, ip);
        }
        for (svc, slices) in services {
            add_service(&mut b, cfg.ttl, &domain, svc, &slices);
        }
        for pod in pods {
            for ip in &pod.ips {
                if let Some(n) = wire(&format!("{}.{}.pod.{domain}", dashed(*ip), pod.namespace)) {
                    b.address(&n, *ip);
                }
            }
        }
        let soa = {
            let mut rdata = ns_name.clone();
            rdata.extend(encode(&format!("hostmaster.{domain}")).expect("a valid domain"));
            for v in [serial, 7200, 1800, 86400, cfg.ttl] {
                rdata.extend_from_slice(&v.to_be_bytes());
            }
            rdata
        };
        b.add(&origin, rtype::SOA, soa.clone(), Vec::new());
        let soa = record(&origin, rtype::SOA, cfg.ttl, &soa);
        Self::render(b, origin, soa, cfg.ttl)
    }

    fn render(b: Builder, origin: Vec<u8>, soa: Vec<u8>, ttl: u32) -> Self {
        let mut names: HashMap<Box<[u8]>, Node> = HashMap::with_capacity(b.names.len() * 2);
        let mut records = 0;
        for (owner, sets) in b.names {
            let mut node = Node::default();
            for (t, rdatas, extras) in sets {
                let mut set = RecordSet { rtype: t, count: rdatas.len() as u16, ..Default::default() };
                for rd in &rdatas {
                    set.answers.extend_from_slice(&POINTER_TO_QUESTION);
                    push_fixed(&mut set.answers, t, ttl, rd);
                }
                records += rdatas.len();
                set.extra_count = extras.len() as u16;
                for e in extras {
                    set.extra.extend(e);
                }
                node.sets.push(set);
            }
            // Names between a record and the zone exist too, with no records.
            if name::in_zone(&owner, &origin) {
                for up in ancestors(&owner, &origin) {
                    names.entry(up.into()).or_default();
                }
            }
            let entry = names.entry(owner.into_boxed_slice()).or_default();
            entry.sets.extend(node.sets);
        }
        // `svc.<zone>` and `pod.<zone>` exist even in an empty cluster.
        for sub in ["svc", "pod"] {
            let mut n = vec![sub.len() as u8];
            n.extend_from_slice(sub.as_bytes());
            n.extend_from_slice(&origin);
            names.entry(n.into()).or_default();
        }
        Self { origin, names, soa, records }
    }

    /// How many names and records the zone holds.
    pub fn size(&self) -> (usize, usize) {
        (self.names.len(), self.records)
    }

    /// The zone's apex as wire bytes.
    pub fn origin(&self) -> &[u8] {
        &self.origin
    }
}

fn add_service(b: &mut Builder, ttl: u32, domain: &str, svc: &Service, slices: &[&Slice]) {
    let Some(base) = wire(&format!("{}.{}.svc.{domain}", svc.name, svc.namespace)) else { return };
    let named = |p: &Port| -> Option<Vec<u8>> {
        if p.name.is_empty() {
            return None;
        }
        wire(&format!("_{}._{}.{}.{}.svc.{domain}", p.name, p.protocol, svc.name, svc.namespace))
    };
    match &svc.kind {
        ServiceKind::ExternalName(target) => {
            if let Some(t) = wire(target) {
                b.add(&base, rtype::CNAME, t, Vec::new());
            }
        }
        ServiceKind::ClusterIp(ips) => {
            let glue: Vec<Vec<u8>> = ips
                .iter()
                .map(|ip| {
                    let (t, rd) = address_rdata(*ip);
                    record(&base, t, ttl, &rd)
                })
                .collect();
            for ip in ips {
                b.address(&base, *ip);
                if let Some(r) = wire(&reverse_name(*ip)) {
                    b.add(&r, rtype::PTR, base.clone(), Vec::new());
                }
            }
            for p in &svc.ports {
                b.add(&base, rtype::SRV, srv_rdata(p.port, &base), glue.clone());
                if let Some(n) = named(p) {
                    b.add(&n, rtype::SRV, srv_rdata(p.port, &base), glue.clone());
                }
            }
        }
        ServiceKind::Headless => {
            for s in slices {
                for e in s.endpoints.iter().filter(|e| e.ready) {
                    let label = e.hostname.clone().unwrap_or_else(|| dashed(e.ip));
                    let Some(host) = wire(&format!("{label}.{}.{}.svc.{domain}", svc.name, svc.namespace)) else {
                        continue;
                    };
                    b.address(&base, e.ip);
                    b.address(&host, e.ip);
                    if let Some(r) = wire(&reverse_name(e.ip)) {
                        b.add(&r, rtype::PTR, host.clone(), Vec::new());
                    }
                    let (t, rd) = address_rdata(e.ip);
                    let glue = vec![record(&host, t, ttl, &rd)];
                    for p in &s.ports {
                        b.add(&base, rtype::SRV, srv_rdata(p.port, &host), glue.clone());
                        if let Some(n) = named(p) {
                            b.add(&n, rtype::SRV, srv_rdata(p.port, &host), glue.clone());
                        }
                    }
                }
            }
        }
    }
}
