//! The bgp backend's settings as the Node carries them: the node's AS and its peering (a
//! full mesh with the other nodes, or named peers such as the rack's router), parsed and
//! checked here so a bad value is refused with its reason before anything changes.

use crate::node_network::{Backend, Peer, annotations};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

/// AS_TRANS (RFC 6793): stands in for a 4-octet AS in 2-octet fields, never a real AS.
const AS_TRANS: u32 = 23456;

/// A BGP peer: its name (for status), address and AS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerSpec {
    pub name: String,
    pub addr: Ipv4Addr,
    pub remote_as: u32,
}

/// Whom a node peers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peering {
    /// Every other node of the cluster that is in the mesh too (iBGP when they share
    /// an AS, which is the default).
    Mesh,
    /// These peers only: the rack's router (ToR), a route reflector.
    Peers(Vec<PeerSpec>),
}

impl fmt::Display for Peering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mesh => f.write_str("mesh"),
            Self::Peers(p) => {
                let list: Vec<String> = p.iter().map(|p| format!("{}={}:{}", p.name, p.addr, p.remote_as)).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

/// An AS number: 1 … 4294967294, not AS_TRANS.
pub fn parse_as(s: &str) -> Result<u32, String> {
    let n: u64 = s.trim().parse().map_err(|_| format!("AS {s:?} is not a number (use 1 … 4294967294)"))?;
    match n {
        0 => Err("AS 0 is reserved and cannot be used (use 1 … 4294967294; private: 64512 … 65534)".into()),
        n if n == u64::from(AS_TRANS) => Err(format!("AS {AS_TRANS} is AS_TRANS (RFC 6793), not a real AS")),
        n if n >= u64::from(u32::MAX) => Err(format!("AS {n} is out of range (use 1 … 4294967294)")),
        n => Ok(u32::try_from(n).expect("checked")),
    }
}

/// `mesh`, or peers `[name=]address:AS` separated by commas.
pub fn parse_peering(s: &str) -> Result<Peering, String> {
    let s = s.trim();
    if s == "mesh" {
        return Ok(Peering::Mesh);
    }
    if s.is_empty() {
        return Err("no BGP peers given: use mesh, or name=address:AS[,…]".into());
    }
    let mut peers = Vec::new();
    for item in s.split(',').map(str::trim) {
        let (name, rest) = match item.split_once('=') {
            Some((n, r)) => (Some(n.trim()), r),
            None => (None, item),
        };
        let (addr, asn) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("BGP peer {item:?} is not [name=]address:AS (e.g. tor=192.168.1.254:65001)"))?;
        let addr: Ipv4Addr =
            addr.trim().parse().map_err(|_| format!("BGP peer {item:?}: {addr:?} is not an IPv4 address"))?;
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback() {
            return Err(format!("BGP peer {item:?}: {addr} cannot be a peer's address"));
        }
        let remote_as = parse_as(asn).map_err(|e| format!("BGP peer {item:?}: {e}"))?;
        if peers.iter().any(|p: &PeerSpec| p.addr == addr) {
            return Err(format!("BGP peer {addr} is given twice"));
        }
        let name = name.filter(|n| !n.is_empty()).map_or_else(|| addr.to_string(), str::to_string);
        peers.push(PeerSpec { name, addr, remote_as });
    }
    Ok(Peering::Peers(peers))
}

/// A node's BGP settings as its Node's annotations give them (absent: `default`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBgp {
    pub local_as: u32,
    pub peering: Peering,
}

impl NodeBgp {
    /// Reads the settings from a Node's annotations, each falling back to `default`'s
    /// when absent; a bad value is an error naming the annotation.
    pub fn from_annotations(a: &BTreeMap<String, String>, default: &NodeBgp) -> Result<NodeBgp, String> {
        let local_as = match a.get(annotations::BGP_AS) {
            Some(v) => parse_as(v).map_err(|e| format!("annotation {}: {e}", annotations::BGP_AS))?,
            None => default.local_as,
        };
        let peering = match a.get(annotations::BGP_PEERS) {
            Some(v) => parse_peering(v).map_err(|e| format!("annotation {}: {e}", annotations::BGP_PEERS))?,
            None => default.peering.clone(),
        };
        Ok(NodeBgp { local_as, peering })
    }
}

/// A node as a mesh peer sees it: its name, annotations and underlay address.
pub struct MeshCandidate<'a> {
    pub peer: &'a Peer,
    pub annotations: &'a BTreeMap<String, String>,
}

/// The mesh: every other node running the bgp backend in the mesh, with an underlay
/// address and a valid AS. Nodes with their own peers are left out (they peer with the
/// network, not with the nodes).
pub fn mesh_peers(local: &str, nodes: &[MeshCandidate<'_>]) -> Vec<PeerSpec> {
    let mut out: Vec<PeerSpec> = nodes
        .iter()
        .filter(|n| n.peer.name != local && n.peer.backend == Some(Backend::Bgp))
        .filter(|n| n.annotations.get(annotations::BGP_PEERS).is_none_or(|p| p.trim() == "mesh"))
        .filter_map(|n| {
            let remote_as = parse_as(n.annotations.get(annotations::BGP_AS)?).ok()?;
            Some(PeerSpec { name: n.peer.name.clone(), addr: n.peer.underlay_ip?, remote_as })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_numbers_are_checked() {
        assert_eq!(parse_as("64512"), Ok(64512));
        assert_eq!(parse_as("4200000000"), Ok(4_200_000_000));
        assert!(parse_as("0").unwrap_err().contains("reserved"));
        assert!(parse_as("4294967295").unwrap_err().contains("out of range"));
        assert!(parse_as("99999999999").unwrap_err().contains("out of range"));
        assert!(parse_as("23456").unwrap_err().contains("AS_TRANS"));
        assert!(parse_as("sixty").unwrap_err().contains("not a number"));
    }

    #[test]
    fn peers_parse_with_and_without_names() {
        let p = parse_peering("tor=192.168.2.254:65002, 192.168.9.1:65009").unwrap();
        let Peering::Peers(p) = p else { panic!("peers") };
        assert_eq!(p[0], PeerSpec { name: "tor".into(), addr: "192.168.2.254".parse().unwrap(), remote_as: 65002 });
        assert_eq!(p[1].name, "192.168.9.1");
        assert_eq!(parse_peering("mesh"), Ok(Peering::Mesh));
        assert_eq!(Peering::Peers(p).to_string(), "tor=192.168.2.254:65002,192.168.9.1=192.168.9.1:65009");
    }

    #[test]
    fn bad_peers_are_refused_with_their_reason() {
        assert!(parse_peering("300.1.1.1:65001").unwrap_err().contains("not an IPv4 address"));
        assert!(parse_peering("192.168.1.254").unwrap_err().contains("[name=]address:AS"));
        assert!(parse_peering("192.168.1.254:0").unwrap_err().contains("AS 0 is reserved"));
        assert!(parse_peering("0.0.0.0:65001").unwrap_err().contains("cannot be a peer"));
        assert!(parse_peering("").unwrap_err().contains("no BGP peers"));
        assert!(parse_peering("a=10.0.0.1:1,b=10.0.0.1:2").unwrap_err().contains("twice"));
    }

    #[test]
    fn annotations_override_defaults_and_bad_ones_name_themselves() {
        let default = NodeBgp { local_as: 64512, peering: Peering::Mesh };
        let a = BTreeMap::from([(annotations::BGP_AS.to_string(), "65010".to_string())]);
        assert_eq!(NodeBgp::from_annotations(&a, &default).unwrap().local_as, 65010);
        assert_eq!(NodeBgp::from_annotations(&BTreeMap::new(), &default), Ok(default.clone()));
        let bad = BTreeMap::from([(annotations::BGP_AS.to_string(), "0".to_string())]);
        let e = NodeBgp::from_annotations(&bad, &default).unwrap_err();
        assert!(e.starts_with("annotation flatnet.dev/bgp-as: AS 0"), "{e}");
    }

    #[test]
    fn the_mesh_is_every_other_bgp_node_in_the_mesh() {
        let peer = |name: &str, ip: &str, backend| Peer {
            name: name.into(),
            underlay_ip: Some(ip.parse().unwrap()),
            pod_cidr: None,
            backend: Some(backend),
            vtep_mac: None,
        };
        let ann = |asn: &str, peers: Option<&str>| {
            let mut a = BTreeMap::from([(annotations::BGP_AS.to_string(), asn.to_string())]);
            if let Some(p) = peers {
                a.insert(annotations::BGP_PEERS.into(), p.into());
            }
            a
        };
        let (p1, p2, p3, p4) = (
            peer("node-1", "192.168.1.11", Backend::Bgp),
            peer("node-2", "192.168.1.12", Backend::Bgp),
            peer("node-3", "192.168.1.13", Backend::Vxlan),
            peer("node-4", "192.168.1.14", Backend::Bgp),
        );
        let (a1, a2, a3, a4) = (
            ann("64512", None),
            ann("64512", Some("mesh")),
            ann("64512", None),
            ann("64512", Some("tor=192.168.1.254:65001")),
        );
        let nodes = [
            MeshCandidate { peer: &p1, annotations: &a1 },
            MeshCandidate { peer: &p2, annotations: &a2 },
            MeshCandidate { peer: &p3, annotations: &a3 },
            MeshCandidate { peer: &p4, annotations: &a4 },
        ];
        let mesh = mesh_peers("node-1", &nodes);
        assert_eq!(
            mesh,
            vec![PeerSpec { name: "node-2".into(), addr: "192.168.1.12".parse().unwrap(), remote_as: 64512 }]
        );
    }
}
