//! The pure model of flatnet: CIDR and IPAM arithmetic, CNI wire types and their
//! version conversion, and the node subnet file. Nothing here does I/O, so all of it
//! is tested with plain unit tests.

pub mod cni;
pub mod ipam;
pub mod names;
pub mod selector;
pub mod subnet_file;
