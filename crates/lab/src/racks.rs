//! Racks: with `--racks N` (N ≥ 2) the lab's nodes spread over N L2 segments, rack R on
//! 192.168.R.0/24 behind a top-of-rack router, the routers joined by a core segment
//! 192.168.0.0/24. A router is a namespace of its own running BIRD 2, which routes between
//! racks by what it learns over BGP. With one rack the lab is one flat segment, as before.

use crate::underlay;
use ipnet::Ipv4Net;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The most racks (one /24 each under 192.168.0.0/16, and the core).
pub const MAX_RACKS: usize = 16;

/// The AS of every node when the nodes peer with each other (full mesh, iBGP): the first
/// private AS number, as Calico's default is.
pub const MESH_AS: u32 = 64512;

/// The core segment between the routers.
pub const CORE_BRIDGE: &str = "core0";

/// How the lab's nodes are spread over racks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Racks {
    pub count: usize,
}

impl Racks {
    pub fn new(count: usize) -> Result<Self, String> {
        if count == 0 || count > MAX_RACKS {
            return Err(format!("--racks must be between 1 and {MAX_RACKS}"));
        }
        Ok(Self { count })
    }

    /// Whether the lab has routers (more than one segment).
    pub fn routed(&self) -> bool {
        self.count > 1
    }

    /// node-1 in rack 1, node-2 in rack 2, …, round the racks again.
    pub fn rack_of(&self, node: usize) -> usize {
        (node - 1) % self.count + 1
    }

    /// node-i is 192.168.R.(10+i) in its rack R (192.168.1.(10+i) on one segment).
    pub fn node_ip(&self, node: usize) -> Ipv4Addr {
        let last = u8::try_from(10 + node).expect("at most 200 lab nodes");
        Ipv4Addr::new(192, 168, rack_octet(self.rack_of(node)), last)
    }

    /// The node's address with its segment's prefix.
    pub fn node_net(&self, node: usize) -> Ipv4Net {
        Ipv4Net::new(self.node_ip(node), 24).expect("valid")
    }

    /// Where a node sends what it has no route for: the control plane on one segment,
    /// its rack's router otherwise.
    pub fn node_gateway(&self, node: usize) -> Ipv4Addr {
        if self.routed() { router_ip(self.rack_of(node)) } else { underlay::control_plane_ip() }
    }

    /// The underlay bridge of a rack: `lab0` for rack 1 (where the control plane is),
    /// `lab1`, `lab2`, … for the others.
    pub fn bridge(&self, rack: usize) -> String {
        format!("lab{}", rack - 1)
    }

    /// The node's BGP settings as agent flags: in one segment a full mesh of iBGP in
    /// [`MESH_AS`]; across racks each node its own private AS, peering with its rack's
    /// router (Calico's "AS per compute server" design).
    pub fn agent_bgp_args(&self, node: usize) -> Vec<String> {
        if !self.routed() {
            return vec!["--bgp-as".into(), MESH_AS.to_string()];
        }
        let rack = self.rack_of(node);
        vec![
            "--bgp-as".into(),
            node_as(node).to_string(),
            "--bgp-peers".into(),
            format!("rack-{rack}={}:{}", router_ip(rack), router_as(rack)),
        ]
    }
}

fn rack_octet(rack: usize) -> u8 {
    u8::try_from(rack).expect("at most MAX_RACKS racks")
}

/// A rack's subnet, 192.168.R.0/24.
pub fn subnet(rack: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(192, 168, rack_octet(rack), 0), 24).expect("valid")
}

/// A rack router's address on its rack, 192.168.R.254.
pub fn router_ip(rack: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, rack_octet(rack), 254)
}

/// A rack router's address on the core, 192.168.0.R.
pub fn core_ip(rack: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, rack_octet(rack))
}

/// A rack router's AS: 65001 for rack 1, …
pub fn router_as(rack: usize) -> u32 {
    65000 + u32::try_from(rack).expect("small")
}

/// A node's own AS across racks: 64513 for node-1, …
pub fn node_as(node: usize) -> u32 {
    MESH_AS + u32::try_from(node).expect("small")
}

/// The router's namespace and process name.
pub fn router_name(rack: usize) -> String {
    format!("router-{rack}")
}

/// BIRD's configuration for the router of `rack`: BGP with any node of its rack
/// (passive, so a node added later peers without a reload), with every other router over
/// the core; Pod CIDRs and rack subnets exchanged, and the routes learned installed in
/// the router's kernel. Graceful restart is on everywhere, so an agent restart keeps
/// its routes in the network.
pub fn bird_config(rack: usize, racks: Racks, hold_time: u16, cluster_cidr: Ipv4Net) -> String {
    let (me, asn) = (core_ip(rack), router_as(rack));
    let keepalive = (hold_time / 3).max(1);
    let mut c = String::new();
    let _ = write!(
        c,
        r#"# flatnet lab: the top-of-rack router of rack {rack} ({subnet}). Written by `flatnet lab up`.
router id {me};
log stderr all;

protocol device {{ scan time 2; }}
# This rack's subnet, announced to the other routers.
protocol direct {{ ipv4; interface "eth0"; }}
# What BGP learned goes into this router's kernel: that is how it forwards.
protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; scan time 2; }}

filter pods {{ if net ~ [ {cluster}+ ] then accept; reject; }}
filter pods_and_racks {{ if net ~ [ {cluster}+, 192.168.0.0/16{{24,24}} ] then accept; reject; }}

template bgp flatnet_nodes {{
  local as {asn};
  hold time {hold_time}; keepalive time {keepalive}; connect retry time 1;
  # BIRD waits a minute after a session error by default before it tries again.
  error wait time 1, 2;
  graceful restart on;
  ipv4 {{ import filter pods; export filter pods; }};
}}
# Every node of the rack, each in its own AS.
protocol bgp node from flatnet_nodes {{
  neighbor range {subnet} external;
  dynamic name "node"; dynamic name digits 1;
}}

template bgp core {{
  local {me} as {asn};
  hold time {hold_time}; keepalive time {keepalive}; connect delay time 1; connect retry time 1;
  error wait time 1, 2;
  graceful restart on;
  ipv4 {{ import filter pods_and_racks; export filter pods_and_racks; }};
}}
"#,
        subnet = subnet(rack),
        cluster = cluster_cidr,
    );
    for other in (1..=racks.count).filter(|r| *r != rack) {
        let _ = writeln!(
            c,
            "protocol bgp rack{other} from core {{ neighbor {} as {}; description \"rack {other}\"; }}",
            core_ip(other),
            router_as(other)
        );
    }
    c
}

/// BIRD 2's daemon, from Debian's `bird2`.
pub fn bird_binary() -> Result<std::path::PathBuf, String> {
    ["/usr/sbin/bird", "/usr/local/sbin/bird", "/usr/bin/bird"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "BIRD 2 is not installed: the lab's rack routers run it (apt-get install bird2; scripts/setup installs it)"
                .into()
        })
}

/// BIRD's client, to read a router's tables.
pub fn birdc_binary() -> Result<std::path::PathBuf, String> {
    bird_binary().map(|b| b.with_file_name("birdc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_spread_round_the_racks() {
        let r = Racks::new(2).unwrap();
        assert_eq!((r.rack_of(1), r.rack_of(2), r.rack_of(3)), (1, 2, 1));
        assert_eq!(r.node_ip(2), Ipv4Addr::new(192, 168, 2, 12));
        assert_eq!(r.node_ip(3), Ipv4Addr::new(192, 168, 1, 13));
        assert_eq!(r.node_gateway(2), Ipv4Addr::new(192, 168, 2, 254));
        assert_eq!(r.bridge(2), "lab1");
        let flat = Racks::new(1).unwrap();
        assert_eq!(flat.node_ip(3), Ipv4Addr::new(192, 168, 1, 13), "one segment: the addresses of old");
        assert_eq!(flat.node_gateway(3), underlay::control_plane_ip());
        assert!(Racks::new(0).unwrap_err().contains("between 1 and 16"));
        assert!(Racks::new(17).is_err());
    }

    #[test]
    fn agents_mesh_on_one_segment_and_peer_with_their_rack_router_across_racks() {
        assert_eq!(Racks::new(1).unwrap().agent_bgp_args(2), ["--bgp-as", "64512"]);
        assert_eq!(
            Racks::new(2).unwrap().agent_bgp_args(2),
            ["--bgp-as", "64514", "--bgp-peers", "rack-2=192.168.2.254:65002"]
        );
    }

    #[test]
    fn bird_config_peers_with_the_rack_and_every_other_router() {
        let c = bird_config(2, Racks::new(3).unwrap(), 9, "10.244.0.0/16".parse().unwrap());
        assert!(c.contains("router id 192.168.0.2;"));
        assert!(c.contains("neighbor range 192.168.2.0/24 external;"));
        assert!(c.contains("protocol bgp rack1 from core { neighbor 192.168.0.1 as 65001;"));
        assert!(c.contains("protocol bgp rack3 from core { neighbor 192.168.0.3 as 65003;"));
        assert!(!c.contains("protocol bgp rack2 "), "not with itself");
        assert!(c.contains("hold time 9; keepalive time 3;"));
        assert!(c.contains("[ 10.244.0.0/16+ ]"));
    }
}
