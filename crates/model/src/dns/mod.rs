//! Cluster DNS, pure: the records the Kubernetes DNS-based service discovery spec
//! (1.1.0) asks for, built from Services, EndpointSlices and Pods into a [`Zone`], and the
//! request path that answers a query packet from it. No I/O: the server feeds packets in
//! and sends what comes out (or forwards the query when the name is not the cluster's).

pub mod fixture;
mod name;
mod respond;
mod zone;

pub use name::{NameError, decode, encode, skip_name};
pub use respond::{EDNS_SIZE, Outcome, Rcode, Transport, cname_to_chase, error_reply, respond, truncate_to, udp_limit};
pub use zone::{Endpoint, PodIps, Port, Service, ServiceKind, Slice, Zone, ZoneConfig, reverse_name};

/// Record types the zone serves.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const MAILB: u16 = 253;
    pub const MAILA: u16 = 254;
    pub const ANY: u16 = 255;
}

/// The spec version `dns-version.<zone>` answers.
pub const SPEC_VERSION: &str = "1.1.0";

#[cfg(test)]
mod tests;
