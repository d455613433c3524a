//! The node subnet file: how the agent tells the CNI plugin which Pod CIDR this node
//! owns. Default path `/run/flatnet/subnet.env`; `KEY=VALUE` lines:
//!
//! ```text
//! FLATNET_NETWORK=10.244.0.0/16   # the cluster's pod CIDR (optional)
//! FLATNET_SUBNET=10.244.1.0/24    # this node's pod CIDR (required)
//! FLATNET_MTU=1450                # pod MTU (optional)
//! ```

use ipnet::Ipv4Net;

pub const DEFAULT_PATH: &str = "/run/flatnet/subnet.env";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubnet {
    pub network: Option<Ipv4Net>,
    pub subnet: Ipv4Net,
    pub mtu: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubnetFileError {
    #[error("line {line}: {msg}")]
    Line { line: usize, msg: String },
    #[error("FLATNET_SUBNET is missing")]
    MissingSubnet,
}

impl NodeSubnet {
    pub fn parse(text: &str) -> Result<Self, SubnetFileError> {
        let mut network = None;
        let mut subnet = None;
        let mut mtu = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |msg: String| SubnetFileError::Line { line: i + 1, msg };
            let (key, value) = line.split_once('=').ok_or_else(|| err(format!("expected KEY=VALUE, got {line:?}")))?;
            let value = value.trim().trim_matches('"');
            let cidr = |v: &str| {
                v.parse::<Ipv4Net>().map_err(|_| err(format!("{key}={v:?} is not an IPv4 CIDR such as 10.244.1.0/24")))
            };
            match key.trim() {
                "FLATNET_NETWORK" => network = Some(cidr(value)?),
                "FLATNET_SUBNET" => subnet = Some(cidr(value)?),
                "FLATNET_MTU" => {
                    mtu =
                        Some(
                            value.parse::<u32>().ok().filter(|m| (576..=65535).contains(m)).ok_or_else(|| {
                                err(format!("FLATNET_MTU={value:?} is not an MTU between 576 and 65535"))
                            })?,
                        )
                }
                _ => {} // Unknown keys are for newer plugins; ignoring them keeps upgrades safe.
            }
        }
        Ok(Self { network, subnet: subnet.ok_or(SubnetFileError::MissingSubnet)?, mtu })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(n) = self.network {
            out.push_str(&format!("FLATNET_NETWORK={n}\n"));
        }
        out.push_str(&format!("FLATNET_SUBNET={}\n", self.subnet));
        if let Some(m) = self.mtu {
            out.push_str(&format!("FLATNET_MTU={m}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = NodeSubnet {
            network: Some("10.244.0.0/16".parse().unwrap()),
            subnet: "10.244.3.0/24".parse().unwrap(),
            mtu: Some(1450),
        };
        assert_eq!(NodeSubnet::parse(&s.render()).unwrap(), s);
    }

    #[test]
    fn comments_quotes_and_unknown_keys() {
        let s = NodeSubnet::parse("# written by the agent\nFLATNET_SUBNET=\"10.244.9.0/24\"\nFUTURE=1\n").unwrap();
        assert_eq!(s.subnet.to_string(), "10.244.9.0/24");
        assert_eq!(s.mtu, None);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(NodeSubnet::parse("FLATNET_MTU=1400\n").unwrap_err(), SubnetFileError::MissingSubnet);
        let e = NodeSubnet::parse("FLATNET_SUBNET=10.244.1.0/24\nFLATNET_MTU=12\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2:"), "{e}");
        let e = NodeSubnet::parse("garbage\n").unwrap_err();
        assert!(e.to_string().contains("KEY=VALUE"), "{e}");
        assert!(NodeSubnet::parse("FLATNET_SUBNET=10.244.1/24").is_err());
    }
}
