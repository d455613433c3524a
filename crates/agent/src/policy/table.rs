//! The policy table as the kernel holds it: its base, the state a full sync diffs
//! against, and the per-policy drop counters the metrics read; all by netlink.

use flatnet_kernel::{nf_tables, nft};
use flatnet_model::policy::{self, State};
use serde_json::json;

/// Makes the table's base when the marker on either base chain says it differs (or
/// the chain is gone).
pub(super) fn ensure_base() -> Result<(), nft::NftError> {
    let mut right = true;
    for chain in policy::BASE_CHAIN_NAMES {
        let comments = nf_tables::rule_comments(policy::TABLE, chain)?;
        right &= comments.as_ref().and_then(|c| c.first()) == Some(&policy::base_marker());
    }
    if right {
        return Ok(());
    }
    let base: Vec<String> = policy::base_transaction().iter().map(|o| o.to_string()).collect();
    crate::tables::write(&base, Vec::new()).map(drop)
}

/// The policy table as the kernel has it: chain names, sets and maps with their
/// elements (address blocks are named by their content and need none), counters; never
/// the rules, which are the bulk of a table. Read by netlink dumps into the shape `nft
/// -j` lists, which the planner reads.
pub fn read_actual() -> Result<State, nft::NftError> {
    let Some((chains, sets)) = nf_tables::table_names(policy::TABLE)? else { return Ok(State::default()) };
    let mut objects: Vec<serde_json::Value> =
        chains.into_iter().map(|c| json!({"chain": {"table": policy::TABLE, "name": c}})).collect();
    for name in sets {
        // Address blocks (interval sets) are named by their content: their elements are not needed.
        let elem = match crate::tables::policy_shape(&name).filter(|s| !s.is_interval()) {
            Some(shape) => nf_tables::set_elements(policy::TABLE, &name, &shape)?.unwrap_or_default(),
            None => Vec::new(),
        };
        objects.push(json!({"set": {"table": policy::TABLE, "name": name, "elem": elem}}));
    }
    for (name, _, _) in nf_tables::counters(policy::TABLE)? {
        objects.push(json!({"counter": {"table": policy::TABLE, "name": name}}));
    }
    Ok(State::from_listing(&json!({ "nftables": objects })))
}

/// What one policy dropped on this node, in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drops {
    pub direction: policy::Direction,
    pub namespace: String,
    pub policy: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The kernel's per-policy drop counters on this node (one netlink dump).
pub fn drop_counters() -> Result<Vec<Drops>, nft::NftError> {
    Ok(nf_tables::counters(policy::TABLE)?
        .into_iter()
        .filter_map(|(name, packets, bytes)| {
            let (direction, namespace, policy) = policy::parse_counter_name(&name)?;
            Some(Drops { direction, namespace, policy, packets, bytes })
        })
        .collect())
}
