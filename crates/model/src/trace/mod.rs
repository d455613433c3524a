//! `flatnet trace`: the path one packet takes from a pod, hop by hop, built from the
//! kernel state each node really has (devices, routes, neighbour and FDB entries, the
//! Service proxy's and NetworkPolicy's tables). The shell reads that state into
//! [`World`]; [`build`] walks it as the kernel would; [`probe`] confirms each hop with
//! what a real packet did; [`render`] draws it.

pub mod nft;
pub mod probe;
pub mod render;

mod backend;
mod evidence;
mod hop;
mod pod;
mod policy;
mod route;
mod service;
mod walk;
mod world;

pub use hop::{Hop, HopKind, Seen, Step, Trace, Verdict};
pub use nft::{L4, Packet};
pub use policy::policy_of_chain;
pub use walk::build;
pub use world::{
    BgpRouteFacts, Fdb, LinkFacts, Lookup, LookupKey, Neighbour, NodeFacts, PodFacts, RouteFacts, RouterFacts,
    RouterRoute, Target, VxlanFacts, World, parse_bird_routes,
};

#[cfg(test)]
pub(crate) mod tests;
