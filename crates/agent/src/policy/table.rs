//! The policy table as the kernel holds it: its base, the state a full sync diffs
//! against, and the per-policy drop counters the metrics read.

use flatnet_kernel::nft;
use flatnet_model::policy::{self, State};
use nftables::types::NfFamily;

/// Makes the table's base when the marker on either base chain says it differs (or
/// the chain is gone).
pub(super) fn ensure_base() -> Result<(), nft::NftError> {
    let mut right = true;
    for chain in policy::BASE_CHAIN_NAMES {
        let comments = nft::chain_rule_comments(NfFamily::IP, policy::TABLE, chain)?;
        right &= comments.as_ref().and_then(|c| c.first()) == Some(&policy::base_marker());
    }
    if right {
        return Ok(());
    }
    let base: Vec<String> = policy::base_transaction().iter().map(|o| o.to_string()).collect();
    crate::tables::write(&base, Vec::new())
}

/// The policy table as the kernel has it: chain names, sets and maps with their
/// elements, counters (never the rules, which are the bulk of a listing).
pub fn read_actual() -> Result<State, nft::NftError> {
    let (chains, _) = nft::table_names(NfFamily::IP, policy::TABLE)?;
    let mut objects: Vec<serde_json::Value> =
        chains.into_iter().map(|c| serde_json::json!({"chain": {"table": policy::TABLE, "name": c}})).collect();
    for what in ["sets", "maps", "counters"] {
        objects.extend(nft::list_objects(NfFamily::IP, what, policy::TABLE)?);
    }
    Ok(State::from_listing(&serde_json::json!({ "nftables": objects })))
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

/// The kernel's per-policy drop counters on this node.
pub fn drop_counters() -> Result<Vec<Drops>, nft::NftError> {
    Ok(nft::list_objects(NfFamily::IP, "counters", policy::TABLE)?
        .iter()
        .filter_map(|o| {
            let c = o.get("counter")?;
            let (direction, namespace, policy) = policy::parse_counter_name(c["name"].as_str()?)?;
            Some(Drops { direction, namespace, policy, packets: c["packets"].as_u64()?, bytes: c["bytes"].as_u64()? })
        })
        .collect())
}
