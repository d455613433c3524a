//! The only flatnet code that touches the kernel: rtnetlink requests over a small
//! synchronous socket (links, addresses, routes, neighbours, FDB), nf_tables over
//! netlink (and `nft` where a person reads its output), network namespaces, sysctls,
//! and the process's own heap.
//! Everything above this crate plans; this crate applies and reads back.

pub mod addr;
pub mod conntrack;
pub mod detach;
pub mod enter;
pub mod error;
pub mod link;
pub mod memory;
pub mod neigh;
pub mod netlink;
pub mod netns;
pub mod nf_tables;
pub mod nft;
pub mod probe;
pub mod pty;
pub mod rootfs;
pub mod route;
pub mod sandbox;
pub mod sysctl;

pub use error::KernelError;
pub use netlink::Netlink;
