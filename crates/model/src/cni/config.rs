//! The network configuration a runtime passes on stdin, validated once so the rest of
//! the plugin works with values that are known good.

use super::error::{CniError, ErrorCode};
use super::result::{CniResult, Dns, Route};
use super::version::CniVersion;
use crate::names::{invalid_ifname_reason, is_valid_identifier};
use crate::subnet_file;
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::net::Ipv4Addr;

pub const DEFAULT_BRIDGE: &str = "cni0";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flatnet";
/// Where the node agent takes pod registrations (NetworkPolicy before the pod starts).
pub const DEFAULT_AGENT_SOCKET: &str = "/run/flatnet/agent.sock";

/// One attachment named in `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Where the node's subnet comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetSource {
    Config(Ipv4Net),
    File(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    /// The version string exactly as given, echoed back in results and errors.
    pub cni_version_str: String,
    pub name: String,
    pub bridge: String,
    pub subnet: SubnetSource,
    pub gateway: Option<Ipv4Addr>,
    pub data_dir: String,
    /// The agent's registration socket: ADD tells the agent a pod's address and waits
    /// until the pod's NetworkPolicy is in force. No socket there: no agent, no wait.
    pub agent_socket: String,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub routes: Vec<Route>,
    pub dns: Dns,
    pub prev_result: Option<CniResult>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    bridge: Option<String>,
    subnet: Option<String>,
    gateway: Option<String>,
    subnet_file: Option<String>,
    data_dir: Option<String>,
    agent_socket: Option<String>,
    mtu: Option<u32>,
    hairpin_mode: Option<bool>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
    ipam: Option<serde_json::Value>,
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments", default, deserialize_with = "null_is_empty")]
    valid_attachments: Option<Vec<Attachment>>,
}

/// A runtime with no attachments left may send `null` (a Go nil slice): that is an
/// empty list, not a missing one.
fn null_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<Attachment>>, D::Error> {
    Ok(Some(Option::<Vec<Attachment>>::deserialize(d)?.unwrap_or_default()))
}

fn invalid(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, msg, details)
}

/// What DEL and GC need, read leniently: a config edited since ADD, a prevResult that
/// no longer decodes, or an out-of-range value must not keep a pod from being torn down.
#[derive(Debug, Clone, PartialEq)]
pub struct TeardownConf {
    pub cni_version: Option<CniVersion>,
    pub name: String,
    pub bridge: String,
    pub data_dir: String,
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl TeardownConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let v: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(ErrorCode::Decode, "the network configuration is not valid JSON", e.to_string())
        })?;
        let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str).map(str::to_string);
        let name = text("name").ok_or_else(|| invalid("name is missing", "every network needs a \"name\""))?;
        let valid_attachments = match v.get("cni.dev/valid-attachments") {
            None => None,
            Some(serde_json::Value::Null) => Some(Vec::new()),
            Some(list) => Some(serde_json::from_value(list.clone()).map_err(|e| {
                invalid("cni.dev/valid-attachments is not a list of {containerID, ifname}", e.to_string())
            })?),
        };
        Ok(Self {
            cni_version: text("cniVersion").and_then(|v| CniVersion::parse(&v).ok()),
            name,
            bridge: text("bridge")
                .filter(|b| invalid_ifname_reason(b).is_none())
                .unwrap_or_else(|| DEFAULT_BRIDGE.into()),
            data_dir: text("dataDir").unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            valid_attachments,
        })
    }
}

impl NetConf {
    /// Only the version, for echoing it in an error when the rest fails to parse.
    pub fn sniff_version(stdin: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct V {
            #[serde(rename = "cniVersion")]
            v: Option<String>,
        }
        serde_json::from_slice::<V>(stdin).ok()?.v
    }

    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(ErrorCode::Decode, "the network configuration is not valid JSON", e.to_string())
        })?;
        let raw: Raw = serde_json::from_value(value)
            .map_err(|e| invalid("the network configuration has a field of the wrong type", e.to_string()))?;
        let cni_version_str =
            raw.cni_version.ok_or_else(|| invalid("cniVersion is missing", "set \"cniVersion\": \"1.1.0\""))?;
        let cni_version = CniVersion::parse(&cni_version_str)?;
        let name = raw.name.ok_or_else(|| invalid("name is missing", "every network needs a \"name\""))?;
        if !is_valid_identifier(&name) {
            return Err(invalid(format!("network name {name:?} is invalid"), "use letters, digits, '_', '-' and '.'"));
        }
        if let Some(t) = &raw.plugin_type
            && t != "flatnet"
        {
            return Err(invalid(format!("type {t:?} is not this plugin"), "flatnet is \"type\": \"flatnet\""));
        }
        if let Some(ipam) = raw.ipam
            && ipam.as_object().is_some_and(|o| !o.is_empty())
        {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                format!("unsupported field \"ipam\": {ipam}: flatnet does its own IPAM, remove the section"),
                "set \"subnet\" (or let the agent write the node subnet file) instead",
            ));
        }
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        if let Some(why) = invalid_ifname_reason(&bridge) {
            return Err(invalid(format!("bridge name {bridge:?} {why}"), "the default is cni0"));
        }
        let subnet = match (raw.subnet, raw.subnet_file) {
            (Some(s), _) => SubnetSource::Config(
                s.parse()
                    .map_err(|_| invalid(format!("subnet {s:?} is not an IPv4 CIDR"), "write it like 10.244.1.0/24"))?,
            ),
            (None, file) => SubnetSource::File(file.unwrap_or_else(|| subnet_file::DEFAULT_PATH.to_string())),
        };
        let gateway = raw
            .gateway
            .map(|g| g.parse().map_err(|_| invalid(format!("gateway {g:?} is not an IPv4 address"), "")))
            .transpose()?;
        if let Some(m) = raw.mtu
            && !(576..=65535).contains(&m)
        {
            return Err(invalid(format!("mtu {m} is out of range"), "use 576 to 65535, or leave it out"));
        }
        let prev_result = raw
            .prev_result
            .map(|v| {
                serde_json::from_value::<CniResult>(v)
                    .map_err(|e| CniError::new(ErrorCode::Decode, "prevResult is not a CNI result", e.to_string()))
            })
            .transpose()?;
        Ok(Self {
            cni_version,
            cni_version_str,
            name,
            bridge,
            subnet,
            gateway,
            data_dir: raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.to_string()),
            agent_socket: raw.agent_socket.unwrap_or_else(|| DEFAULT_AGENT_SOCKET.to_string()),
            mtu: raw.mtu,
            hairpin: raw.hairpin_mode.unwrap_or(true),
            routes: raw.routes,
            dns: raw.dns,
            prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(r#"{"cniVersion":"1.1.0","name":"k8s","type":"flatnet"}"#).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert_eq!(c.subnet, SubnetSource::File("/run/flatnet/subnet.env".into()));
        assert_eq!(c.data_dir, DEFAULT_DATA_DIR);
        assert!(c.hairpin);
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"{"cniVersion":"0.3.1","name":"k8s","type":"flatnet","subnet":"10.244.1.0/24","mtu":1450,
               "routes":[{"dst":"10.96.0.0/12"}],"dns":{"nameservers":["10.96.0.10"]},
               "runtimeConfig":{"portMappings":[]},"someFutureField":true}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, CniVersion::V0_3_1);
        assert_eq!(c.subnet, SubnetSource::Config("10.244.1.0/24".parse().unwrap()));
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.dns.nameservers, vec!["10.96.0.10".to_string()]);
    }

    #[test]
    fn each_bad_input_has_its_code() {
        let cases: &[(&str, u32)] = &[
            ("{not json", 6),
            (r#"{"name":"k8s","type":"flatnet"}"#, 7),
            (r#"{"cniVersion":"9.9.9","name":"k8s","type":"flatnet"}"#, 1),
            (r#"{"cniVersion":"1.0.0","type":"flatnet"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"k 8s","type":"flatnet"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"k8s","type":"flatnet","subnet":"10.244.1.0"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"k8s","type":"flatnet","subnet":"banana"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"k8s","type":"flatnet","mtu":10}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"k8s","type":"flatnet","mtu":"big"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"k8s","type":"flatnet","bridge":"a-bridge-name-too-long"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"k8s","type":"flatnet","ipam":{"type":"host-local"}}"#, 2),
            (r#"{"cniVersion":"1.0.0","name":"k8s","type":"flatnet","prevResult":{"ips":"x"}}"#, 6),
        ];
        for (input, code) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code, *code, "{input}: {e}");
            assert!(!e.msg.is_empty());
        }
    }

    #[test]
    fn teardown_reads_what_it_needs_and_forgives_the_rest() {
        let t = TeardownConf::parse(
            br#"{"cniVersion":"9.9","name":"k8s","mtu":5,"ipam":{"type":"x"},"prevResult":{"ips":"garbage"},
                 "cni.dev/valid-attachments":null}"#,
        )
        .unwrap();
        assert_eq!((t.name.as_str(), t.bridge.as_str(), t.cni_version), ("k8s", "cni0", None));
        assert_eq!(t.valid_attachments, Some(vec![]), "null is an empty list");
        assert_eq!(TeardownConf::parse(br#"{"name":"k8s"}"#).unwrap().valid_attachments, None);
        assert_eq!(TeardownConf::parse(b"{").unwrap_err().code, 6);
        assert_eq!(TeardownConf::parse(br#"{"cniVersion":"1.1.0"}"#).unwrap_err().code, 7);
    }

    #[test]
    fn gc_attachments() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"k8s","type":"flatnet",
               "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
        let c =
            parse(r#"{"cniVersion":"1.1.0","name":"k8s","type":"flatnet","cni.dev/valid-attachments":null}"#).unwrap();
        assert_eq!(c.valid_attachments, Some(vec![]));
    }
}
