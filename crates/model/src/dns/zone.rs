//! The cluster's records, built from Services, EndpointSlices and Pods as the Kubernetes
//! DNS spec lays them out, and rendered to wire bytes once per build so that answering
//! is a hash lookup and a copy.

use super::name::{self, NameError, ancestors, encode};
use super::{SPEC_VERSION, rtype};
use hashbrown::HashTable;
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

/// The names a zone makes for itself: its origin, its name server `ns.dns.<domain>`
/// and the SOA's mailbox `hostmaster.<domain>`.
struct OwnNames {
    domain: String,
    origin: Vec<u8>,
    ns: Vec<u8>,
    hostmaster: Vec<u8>,
}

impl OwnNames {
    fn of(domain: &str) -> Result<Self, NameError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        Ok(Self {
            origin: encode(&domain)?,
            ns: encode(&format!("ns.dns.{domain}"))?,
            hostmaster: encode(&format!("hostmaster.{domain}"))?,
            domain,
        })
    }

    fn cluster_local() -> Self {
        Self {
            domain: "cluster.local".into(),
            origin: b"\x07cluster\x05local\x00".to_vec(),
            ns: b"\x02ns\x03dns\x07cluster\x05local\x00".to_vec(),
            hostmaster: b"\x0ahostmaster\x07cluster\x05local\x00".to_vec(),
        }
    }
}

impl ZoneConfig {
    /// Whether the domain can carry a zone: it and the names the zone makes under it
    /// (`hostmaster.<domain>`, the longest) are valid DNS names. A zone built from a
    /// config that fails this serves `cluster.local` instead.
    pub fn check(&self) -> Result<(), NameError> {
        OwnNames::of(&self.domain).map(|_| ())
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

/// A pod's addresses, for its `a-b-c-d.<namespace>.pod.<zone>` records.
pub type PodIps = Box<[IpAddr]>;

/// Records of one type at one name: ranges of the zone's byte arena. Answer records
/// are owned by the question's name (a compression pointer to offset 12), so any case
/// the client used is echoed.
#[derive(Debug, Clone, Copy)]
pub(super) struct RecordSet {
    pub rtype: u16,
    pub count: u16,
    /// Address records of the targets (SRV), for the additional section.
    pub extra_count: u16,
    answers: (u32, u32),
    extra: (u32, u32),
}

/// A name of the zone: where its wire bytes and its record sets are (no sets for an
/// empty non-terminal, a name that exists only because names below it do).
#[derive(Debug, Clone, Copy)]
struct NameEntry {
    name: (u32, u32),
    sets: (u32, u32),
}

/// Every record the server answers with authority, ready to copy into a reply. One
/// hash table of indices, and every name and record in a few flat arrays: no
/// allocation per name, so 10,000 pods cost about a megabyte.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    pub(super) origin: Vec<u8>,
    table: HashTable<u32>,
    entries: Vec<NameEntry>,
    names: Vec<u8>,
    sets: Vec<RecordSet>,
    bytes: Vec<u8>,
    /// The SOA record (owner written out), for the authority section of negative answers.
    pub(super) soa: Vec<u8>,
    records: usize,
}

const POINTER_TO_QUESTION: [u8; 2] = [0xC0, 0x0C];
const CLASS_IN: u16 = 1;

fn hash(name: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Fixed seed: the names come from the API, not from clients.
    let mut h = foldhash::fast::FixedState::with_seed(0x0f1a_7e7d).build_hasher();
    h.write(name);
    h.finish()
}

/// Name interning: each distinct name once in `names`, found through `table`.
#[derive(Default)]
struct Names {
    table: HashTable<u32>,
    spans: Vec<(u32, u32)>,
    bytes: Vec<u8>,
}

impl Names {
    fn get(&self, name: &[u8]) -> Option<u32> {
        let (spans, bytes) = (&self.spans, &self.bytes);
        self.table.find(hash(name), |&i| span(bytes, spans[i as usize]) == name).copied()
    }

    fn intern(&mut self, name: &[u8]) -> u32 {
        if let Some(i) = self.get(name) {
            return i;
        }
        let i = self.spans.len() as u32;
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name);
        self.spans.push((start, self.bytes.len() as u32));
        let spans = &self.spans;
        let bytes = &self.bytes;
        self.table.insert_unique(hash(name), i, |&j| hash(span(bytes, spans[j as usize])));
        i
    }
}

fn span(bytes: &[u8], (a, b): (u32, u32)) -> &[u8] {
    &bytes[a as usize..b as usize]
}

/// One record before rendering: its owner, type, data and the additional records that
/// go with it, as ranges of the builder's scratch bytes.
struct Pending {
    name: u32,
    rtype: u16,
    rdata: (u32, u32),
    extra: (u32, u32),
    extra_count: u16,
}

/// Records gathered by name and type before rendering.
#[derive(Default)]
struct Builder {
    names: Names,
    records: Vec<Pending>,
    scratch: Vec<u8>,
}

impl Builder {
    fn push(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.scratch.len() as u32;
        self.scratch.extend_from_slice(bytes);
        (start, self.scratch.len() as u32)
    }

    fn add(&mut self, owner: &[u8], t: u16, rdata: Vec<u8>, extra: Vec<Vec<u8>>) {
        let name = self.names.intern(owner);
        let rdata = self.push(&rdata);
        let extra_count = extra.len() as u16;
        let extra = self.push(&extra.concat());
        self.records.push(Pending { name, rtype: t, rdata, extra, extra_count });
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
        pods: impl IntoIterator<Item = (&'a str, &'a PodIps)>,
    ) -> Self {
        let OwnNames { domain, origin, ns: ns_name, hostmaster } =
            OwnNames::of(&cfg.domain).unwrap_or_else(|_| OwnNames::cluster_local());
        let mut b = Builder::default();
        let txt = {
            let mut v = vec![SPEC_VERSION.len() as u8];
            v.extend_from_slice(SPEC_VERSION.as_bytes());
            v
        };
        if let Some(n) = wire(&format!("dns-version.{domain}")) {
            b.add(&n, rtype::TXT, txt, Vec::new());
        }
        b.add(&origin, rtype::NS, ns_name.clone(), Vec::new());
        if let Some(ip) = cfg.nameserver {
            b.address(&ns_name, ip);
        }
        for (svc, slices) in services {
            add_service(&mut b, cfg.ttl, &domain, svc, &slices);
        }
        for (namespace, ips) in pods {
            for ip in ips {
                if let Some(n) = wire(&format!("{}.{namespace}.pod.{domain}", dashed(*ip))) {
                    b.address(&n, *ip);
                }
            }
        }
        let soa = {
            let mut rdata = ns_name.clone();
            rdata.extend(hostmaster);
            for v in [serial, 7200, 1800, 86400, cfg.ttl] {
                rdata.extend_from_slice(&v.to_be_bytes());
            }
            rdata
        };
        b.add(&origin, rtype::SOA, soa.clone(), Vec::new());
        let soa = record(&origin, rtype::SOA, cfg.ttl, &soa);
        Self::render(b, origin, soa, cfg.ttl)
    }

    fn render(mut b: Builder, origin: Vec<u8>, soa: Vec<u8>, ttl: u32) -> Self {
        // Names between a record and the zone exist too, with no records; and `svc.<zone>`
        // and `pod.<zone>` exist even in an empty cluster.
        for i in 0..b.names.spans.len() {
            let owner = span(&b.names.bytes, b.names.spans[i]).to_vec();
            if name::in_zone(&owner, &origin) {
                for up in ancestors(&owner, &origin) {
                    b.names.intern(up);
                }
            }
        }
        for sub in ["svc", "pod"] {
            let mut n = vec![sub.len() as u8];
            n.extend_from_slice(sub.as_bytes());
            n.extend_from_slice(&origin);
            b.names.intern(&n);
        }
        let scratch = std::mem::take(&mut b.scratch);
        let bytes_of = |r: (u32, u32)| span(&scratch, r);
        b.records.sort_by(|x, y| (x.name, x.rtype, bytes_of(x.rdata)).cmp(&(y.name, y.rtype, bytes_of(y.rdata))));
        b.records.dedup_by(|x, y| (x.name, x.rtype, bytes_of(x.rdata)) == (y.name, y.rtype, bytes_of(y.rdata)));
        let mut z = Zone {
            origin,
            table: HashTable::with_capacity(b.names.spans.len()),
            entries: Vec::with_capacity(b.names.spans.len()),
            names: b.names.bytes,
            sets: Vec::new(),
            bytes: Vec::new(),
            soa,
            records: b.records.len(),
        };
        let mut sets_of: Vec<(u32, u32)> = vec![(0, 0); b.names.spans.len()];
        let mut recs = b.records.iter().peekable();
        while let Some(first) = recs.next() {
            let mut group = vec![first];
            while let Some(r) = recs.next_if(|r| r.name == first.name && r.rtype == first.rtype) {
                group.push(r);
            }
            let start = z.bytes.len() as u32;
            for r in &group {
                z.bytes.extend_from_slice(&POINTER_TO_QUESTION);
                push_fixed(&mut z.bytes, r.rtype, ttl, bytes_of(r.rdata));
            }
            let answers = (start, z.bytes.len() as u32);
            let mut extras: Vec<&[u8]> = Vec::new();
            let mut extra_count = 0;
            for r in &group {
                let e = bytes_of(r.extra);
                if !e.is_empty() && !extras.contains(&e) {
                    extras.push(e);
                    extra_count += r.extra_count;
                }
            }
            let start = z.bytes.len() as u32;
            extras.iter().for_each(|e| z.bytes.extend_from_slice(e));
            let extra = (start, z.bytes.len() as u32);
            let slot = &mut sets_of[first.name as usize];
            if slot.1 == 0 {
                slot.0 = z.sets.len() as u32;
            }
            slot.1 += 1;
            z.sets.push(RecordSet { rtype: first.rtype, count: group.len() as u16, extra_count, answers, extra });
        }
        for (i, (&name, sets)) in b.names.spans.iter().zip(sets_of).enumerate() {
            z.entries.push(NameEntry { name, sets });
            let (entries, names) = (&z.entries, &z.names);
            z.table
                .insert_unique(hash(span(&z.names, name)), i as u32, |&j| hash(span(names, entries[j as usize].name)));
        }
        z
    }

    /// The record sets at `name` (lowercased wire form); None when the name does not exist.
    pub(super) fn find(&self, name: &[u8]) -> Option<&[RecordSet]> {
        let i = *self.table.find(hash(name), |&i| span(&self.names, self.entries[i as usize].name) == name)?;
        let (start, len) = self.entries[i as usize].sets;
        Some(&self.sets[start as usize..(start + len) as usize])
    }

    pub(super) fn answers(&self, s: &RecordSet) -> &[u8] {
        span(&self.bytes, s.answers)
    }

    pub(super) fn extra(&self, s: &RecordSet) -> &[u8] {
        span(&self.bytes, s.extra)
    }

    /// How many names and records the zone holds.
    pub fn size(&self) -> (usize, usize) {
        (self.entries.len(), self.records)
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
