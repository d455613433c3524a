//! The CNI result, and its conversion to the version the runtime asked for.

use super::version::CniVersion;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_none() && self.search.is_empty() && self.options.is_empty()
    }
}

impl CniResult {
    /// The result as the given version spells it: 0.3.x and 0.4.0 carry a `version` on
    /// each IP; fields added in 1.1.0 (interface and route MTU, route priority) are
    /// dropped for older versions.
    pub fn to_json(&self, version: CniVersion, version_str: &str) -> Value {
        let mut v = serde_json::to_value(self).expect("results serialize");
        let obj = v.as_object_mut().expect("a result is an object");
        if version < CniVersion::V1_1_0 {
            for iface in obj.get_mut("interfaces").and_then(Value::as_array_mut).into_iter().flatten() {
                iface.as_object_mut().map(|o| o.remove("mtu"));
            }
            for route in obj.get_mut("routes").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(o) = route.as_object_mut() {
                    o.remove("mtu");
                    o.remove("priority");
                }
            }
        }
        if version < CniVersion::V1_0_0 {
            for (ip, cfg) in obj.get_mut("ips").and_then(Value::as_array_mut).into_iter().flatten().zip(&self.ips) {
                let family = if cfg.address.addr().is_ipv4() { "4" } else { "6" };
                ip.as_object_mut().map(|o| o.insert("version".into(), json!(family)));
            }
        }
        obj.insert("cniVersion".into(), json!(version_str));
        v
    }

    /// The interface a runtime would call the container's: the one with a sandbox and
    /// the given name.
    pub fn sandbox_interface(&self, ifname: &str) -> Option<(usize, &Interface)> {
        self.interfaces.iter().enumerate().find(|(_, i)| i.name == ifname && i.sandbox.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface { name: "cni0".into(), mac: "02:00:00:00:00:01".into(), mtu: Some(1500), sandbox: None },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:02".into(),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
                mtu: Some(1400),
                priority: None,
            }],
            dns: Dns { nameservers: vec!["10.96.0.10".into()], ..Default::default() },
        }
    }

    #[test]
    fn latest_keeps_everything() {
        let v = sample().to_json(CniVersion::V1_1_0, "1.1.0");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][1]["mtu"], 1500);
        assert_eq!(v["routes"][0]["mtu"], 1400);
        assert_eq!(v["ips"][0]["address"], "10.244.1.2/24");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn v1_0_drops_1_1_fields() {
        let v = sample().to_json(CniVersion::V1_0_0, "1.0.0");
        assert!(v["interfaces"][1].get("mtu").is_none());
        assert!(v["routes"][0].get("mtu").is_none());
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn v0_3_adds_ip_version() {
        for (ver, s) in [(CniVersion::V0_3_0, "0.3.0"), (CniVersion::V0_3_1, "0.3.1"), (CniVersion::V0_4_0, "0.4.0")] {
            let v = sample().to_json(ver, s);
            assert_eq!(v["cniVersion"], s);
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["dns"]["nameservers"][0], "10.96.0.10");
        }
    }

    #[test]
    fn parses_every_version_back() {
        for ver in CniVersion::ALL {
            let v = sample().to_json(ver, ver.as_str());
            let back: CniResult = serde_json::from_value(v).unwrap();
            assert_eq!(back.ips, sample().ips);
            assert_eq!(back.sandbox_interface("eth0").unwrap().0, 1);
        }
    }
}
