//! What the DNS server keeps of the cluster: Services, EndpointSlices and Pods reduced
//! to the few fields the records need, and the zone built from them.

use flatnet_kube::dns::{pod_of, service_of, slice_of};
use flatnet_kube::watch::{Change, Store};
use flatnet_model::dns::{self, Zone, ZoneConfig};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::HashMap;

pub use flatnet_kube::dns::Key;

pub enum Event {
    Service(Change<Key, dns::Service>),
    Slice(Change<Key, (Key, dns::Slice)>),
    Pod(Change<Key, dns::PodIps>),
}

/// The server's view of the cluster.
#[derive(Default)]
pub struct World {
    pub services: Store<dns::Service>,
    pub slices: Store<(Key, dns::Slice)>,
    /// Each pod's addresses (its namespace is in the key).
    pub pods: Store<dns::PodIps>,
}

impl World {
    pub fn apply(&mut self, e: Event) {
        match e {
            Event::Service(c) => self.services.apply(c),
            Event::Slice(c) => self.slices.apply(c),
            Event::Pod(c) => self.pods.apply(c),
        }
    }

    /// Every kind has been listed once.
    pub fn synced(&self) -> bool {
        self.services.listed && self.slices.listed && self.pods.listed
    }

    pub fn zone(&self, cfg: &ZoneConfig, serial: u32) -> Zone {
        let mut by_service: HashMap<&Key, Vec<&dns::Slice>> = HashMap::new();
        for (owner, slice) in self.slices.items.values() {
            by_service.entry(owner).or_default().push(slice);
        }
        let services = self.services.items.iter().map(|(k, s)| (s, by_service.remove(k).unwrap_or_default()));
        Zone::build(cfg, serial, services, self.pods.items.iter().map(|((ns, _), ips)| (ns.as_str(), ips)))
    }

    /// Adds item `i` of a List (a Service, an EndpointSlice or a Pod).
    fn add_item(&mut self, i: usize, item: serde_json::Value) -> Result<(), String> {
        let bad = |e: serde_json::Error| format!("item {i}: {e}");
        let kind = item["kind"].as_str().unwrap_or("").to_string();
        match kind.as_str() {
            "Service" => {
                let s: Service = serde_json::from_value(item).map_err(bad)?;
                if let (Some(k), Some(v)) = (flatnet_kube::watch::key_of(&s.metadata), service_of(&s)) {
                    self.services.items.insert(k, v);
                }
            }
            "EndpointSlice" => {
                let s: EndpointSlice = serde_json::from_value(item).map_err(bad)?;
                if let (Some(k), Some(v)) = (flatnet_kube::watch::key_of(&s.metadata), slice_of(&s)) {
                    self.slices.items.insert(k, v);
                }
            }
            "Pod" => {
                let p: Pod = serde_json::from_value(item).map_err(bad)?;
                if let (Some(k), Some(v)) = (flatnet_kube::watch::key_of(&p.metadata), pod_of(&p)) {
                    self.pods.items.insert(k, v);
                }
            }
            other => return Err(format!("item {i}: kind {other:?} is not a Service, EndpointSlice or Pod")),
        }
        Ok(())
    }

    /// Fills the world from a `kind: List` of Services, EndpointSlices and Pods (what
    /// `kubectl get svc,endpointslices,pods -A -o json` prints), read one item at a time
    /// so that the whole document is never held.
    pub fn from_list(reader: impl std::io::Read) -> Result<Self, String> {
        let mut w = World::default();
        let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
        serde::Deserializer::deserialize_map(&mut de, ListVisitor(&mut w)).map_err(|e| e.to_string())?;
        if !(w.services.listed) {
            return Err("not a List: no \"items\" array".into());
        }
        w.slices.listed = true;
        w.pods.listed = true;
        Ok(w)
    }
}

/// A List's top level: `items` goes item by item into the world, the rest is skipped.
struct ListVisitor<'w>(&'w mut World);

impl<'de> serde::de::Visitor<'de> for ListVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a List object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                map.next_value_seed(Items(&mut *self.0))?;
                self.0.services.listed = true;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct Items<'w>(&'w mut World);

impl<'de> serde::de::DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while let Some(item) = seq.next_element::<serde_json::Value>()? {
            self.0.add_item(i, item).map_err(serde::de::Error::custom)?;
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_of_objects_becomes_a_zone() {
        let list = json!({"kind": "List", "items": [
            {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "web", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [{"name": "http", "port": 80}]}},
            {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "db", "namespace": "default"},
             "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}},
            {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "x", "namespace": "default"},
             "spec": {"type": "ExternalName", "externalName": "example.com"}},
            {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
             "metadata": {"name": "db-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "db"}},
             "addressType": "IPv4", "ports": [{"port": 5432, "protocol": "TCP"}],
             "endpoints": [{"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                           {"addresses": ["10.244.1.6"], "conditions": {"ready": false}}]},
            {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "namespace": "default"},
             "status": {"podIP": "10.244.1.9", "podIPs": [{"ip": "10.244.1.9"}]}},
            {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "pending", "namespace": "default"}},
        ]});
        let w = World::from_list(list.to_string().as_bytes()).unwrap();
        assert!(w.synced());
        assert_eq!(w.services.items.len(), 3);
        assert_eq!(w.pods.items.len(), 1, "a pod without an IP has no record");
        let (_, slice) = &w.slices.items[&("default".to_string(), "db-1".to_string())];
        assert_eq!(slice.endpoints.iter().filter(|e| e.ready).count(), 1);
        assert_eq!(slice.ports[0].protocol, "tcp");
        let (_, records) = w.zone(&ZoneConfig::default(), 1).size();
        // web: A + SRV×2 (plain and _http._tcp) + PTR; db: A, A (db-0), PTR, SRV; x: CNAME;
        // pod A; NS, SOA, TXT.
        assert_eq!(records, 4 + 4 + 1 + 1 + 3);
        let err = World::from_list(json!({"items": [{"kind": "Node"}]}).to_string().as_bytes()).err().unwrap();
        assert!(err.contains("Node"), "{err}");
        let err = World::from_list(&b"{\"kind\": \"List\"}"[..]).err().unwrap();
        assert!(err.contains("no \"items\""), "{err}");
        assert!(World::from_list(&b"[1, 2"[..]).is_err());
    }

    #[test]
    fn a_relist_replaces_everything_and_deletes_remove() {
        let mut s: Store<u32> = Store::default();
        let k = |n: &str| ("ns".to_string(), n.to_string());
        s.apply(Change::Apply(k("a"), Some(1)));
        s.apply(Change::Init);
        s.apply(Change::InitApply(k("b"), Some(2)));
        assert!(s.items.contains_key(&k("a")), "served until the re-list is done");
        s.apply(Change::InitDone);
        assert!(s.listed && !s.items.contains_key(&k("a")) && s.items[&k("b")] == 2);
        s.apply(Change::Apply(k("b"), None));
        assert!(s.items.is_empty());
    }
}
