//! The NetworkPolicy hops: the packet run through table `ip flatnet-policy` for the
//! source's egress and the destination's ingress, naming the policy that allows or drops it.

use super::hop::{Hop, HopKind};
use super::nft::{self, Packet};
use super::world::NodeFacts;
use crate::policy::Direction;

pub(super) fn policy_hop(node: &NodeFacts, at: &str, p: Packet, dir: Direction) -> Hop {
    let (kind, who, side) = match dir {
        Direction::Ingress => (HopKind::PolicyIngress, p.dst, "the destination's ingress"),
        Direction::Egress => (HopKind::PolicyEgress, p.src, "the source's egress"),
    };
    let base = dir.word();
    let hop = Hop::new(kind, at, format!("NetworkPolicy: {side}"));
    let Some(t) = &node.policy else {
        return hop.line("no table ip flatnet-policy: nothing isolates pods here").fact("verdict", "allow");
    };
    let run = t.run(base, &p);
    let path = run.path.join(" → ");
    let hop = hop.line(format!("table ip flatnet-policy, chain {path}"));
    match run.outcome {
        nft::Outcome::Fallthrough => {
            let mut h = hop.fact("verdict", "allow").line(format!("{who} is not in map {base}: no policy isolates it"));
            h.summary = format!("NetworkPolicy: {side}: {who} is not isolated, allowed");
            h
        }
        nft::Outcome::Accept { chain, comment } if chain == base => {
            let why = comment.unwrap_or_else(|| "accepted by the base chain".into());
            hop.fact("verdict", "allow").line(why)
        }
        nft::Outcome::Accept { chain, .. } => {
            let policy = policy_of_chain(&chain, base).unwrap_or_else(|| chain.clone());
            let mut h = hop.fact("verdict", "allow").fact("policy", &policy).fact("chain", &chain);
            h.summary = format!("NetworkPolicy: {side} allowed by {policy}");
            h
        }
        nft::Outcome::Drop { chain, counters } => {
            let policies: Vec<String> = counters
                .iter()
                .filter_map(|c| crate::policy::parse_counter_name(c).map(|(_, ns, n)| format!("{ns}/{n}")))
                .collect();
            let names = policies.join(", ");
            let mut h = hop.fact("verdict", "drop").fact("policy", &names).fact("chain", &chain);
            h.summary = format!("NetworkPolicy: {side} isolated by {names}; no rule allows this packet");
            h.drop(format!("NetworkPolicy {names} ({side} on {at}: chain {chain}, counter {})", counters.join(", ")))
        }
        nft::Outcome::Unknown(why) => hop.unknown(why),
    }
}

/// `ns/name` out of a policy chain's name `pol-<dir>-<ns>/<name>-<hash>`.
pub fn policy_of_chain(chain: &str, dir: &str) -> Option<String> {
    let rest = chain.strip_prefix(&format!("pol-{dir}-"))?;
    Some(rest.rsplit_once('-').map_or(rest, |(a, _)| a).to_string())
}
