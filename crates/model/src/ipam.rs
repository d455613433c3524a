//! Which address a new attachment gets, given which are taken. The on-disk store lives
//! in the CNI crate; this is the arithmetic it relies on.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// The addresses of one node subnet that may be handed to pods: everything but the
/// network address, the broadcast address and the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPool {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl AddressPool {
    /// A pool whose gateway is the first address of the subnet (the `cni0` address).
    pub fn new(subnet: Ipv4Net) -> Result<Self, PoolError> {
        Self::with_gateway(subnet, first_host(subnet))
    }

    pub fn with_gateway(subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<Self, PoolError> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(PoolError::TooSmall(subnet));
        }
        if !subnet.contains(&gateway) || gateway == subnet.network() || gateway == subnet.broadcast() {
            return Err(PoolError::GatewayOutside { subnet, gateway });
        }
        Ok(Self { subnet, gateway })
    }

    /// The gateway with the subnet's prefix, as it is set on the bridge.
    pub fn gateway_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.gateway, self.subnet.prefix_len()).expect("prefix from a valid net")
    }

    /// Whether `ip` may be handed to a pod.
    pub fn is_assignable(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(&ip) && ip != self.subnet.network() && ip != self.subnet.broadcast() && ip != self.gateway
    }

    /// How many addresses this pool can hand out.
    pub fn capacity(&self) -> u32 {
        let hosts = 1u32 << (32 - self.subnet.prefix_len());
        hosts - 3
    }

    /// The next free address after `last` (the one handed out most recently), wrapping
    /// around the subnet, so an address just released is the last to be reused.
    pub fn next_free(&self, last: Option<Ipv4Addr>, is_taken: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        let base = u32::from(self.subnet.network());
        let size = 1u32 << (32 - self.subnet.prefix_len());
        let start = match last {
            Some(ip) if self.subnet.contains(&ip) => u32::from(ip) - base + 1,
            _ => 0,
        };
        (0..size).map(|i| Ipv4Addr::from(base + (start + i) % size)).find(|&ip| self.is_assignable(ip) && !is_taken(ip))
    }
}

fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("subnet {0} is too small for pods: use a prefix of /30 or shorter (a /24 per node is usual)")]
    TooSmall(Ipv4Net),
    #[error("gateway {gateway} is not a host address of subnet {subnet}")]
    GatewayOutside { subnet: Ipv4Net, gateway: Ipv4Addr },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pool(s: &str) -> AddressPool {
        AddressPool::new(s.parse().unwrap()).unwrap()
    }

    #[test]
    fn excludes_network_gateway_and_broadcast() {
        let p = pool("10.244.1.0/24");
        assert_eq!(p.gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert!(!p.is_assignable("10.244.1.0".parse().unwrap()));
        assert!(!p.is_assignable("10.244.1.1".parse().unwrap()));
        assert!(!p.is_assignable("10.244.1.255".parse().unwrap()));
        assert!(p.is_assignable("10.244.1.2".parse().unwrap()));
        assert!(!p.is_assignable("10.244.2.2".parse().unwrap()));
        assert_eq!(p.capacity(), 253);
    }

    #[test]
    fn hands_out_every_address_once_then_none() {
        let p = pool("10.0.0.0/28");
        let mut taken = HashSet::new();
        let mut last = None;
        while let Some(ip) = p.next_free(last, |ip| taken.contains(&ip)) {
            assert!(taken.insert(ip), "{ip} handed out twice");
            last = Some(ip);
        }
        assert_eq!(taken.len() as u32, p.capacity());
        assert_eq!(taken.len(), 13);
    }

    #[test]
    fn released_address_is_not_reused_immediately() {
        let p = pool("10.0.0.0/29"); // .2 .. .6 assignable
        let taken: HashSet<Ipv4Addr> = ["10.0.0.2", "10.0.0.4"].iter().map(|s| s.parse().unwrap()).collect();
        // .3 was just released (it was the last handed out): the next pick moves on.
        let next = p.next_free(Some("10.0.0.3".parse().unwrap()), |ip| taken.contains(&ip));
        assert_eq!(next, Some("10.0.0.5".parse().unwrap()));
        // Wraps around past the broadcast to the start of the subnet.
        let next = p.next_free(Some("10.0.0.6".parse().unwrap()), |ip| taken.contains(&ip));
        assert_eq!(next, Some("10.0.0.3".parse().unwrap()));
    }

    #[test]
    fn gateway_may_be_chosen() {
        let p = AddressPool::with_gateway("10.0.0.0/24".parse().unwrap(), "10.0.0.254".parse().unwrap()).unwrap();
        assert!(p.is_assignable("10.0.0.1".parse().unwrap()));
        assert!(!p.is_assignable("10.0.0.254".parse().unwrap()));
        assert!(AddressPool::with_gateway("10.0.0.0/24".parse().unwrap(), "10.0.1.1".parse().unwrap()).is_err());
        assert!(AddressPool::new("10.0.0.0/31".parse().unwrap()).is_err());
    }

    #[test]
    fn host_bits_in_subnet_are_ignored() {
        let p = pool("10.244.1.77/24");
        assert_eq!(p.subnet.to_string(), "10.244.1.0/24");
    }
}
