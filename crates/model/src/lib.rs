//! The pure model of flatnet: CIDR and IPAM arithmetic, CNI wire types and their
//! version conversion, the node subnet file, and the planners that turn cluster state
//! into desired dataplane state (node routes, the Service proxy's and NetworkPolicy's nftables rulesets). Nothing here does I/O, so all of it
//! is tested with plain unit tests.

pub mod bgp;
pub mod cni;
pub mod dns;
pub mod doctor;
pub mod ipam;
pub mod l4;
pub mod names;
pub mod node_network;
pub mod policy;
pub mod proxy;
pub mod selector;
pub mod subnet_file;
pub mod trace;
