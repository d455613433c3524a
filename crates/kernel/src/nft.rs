//! nftables through the `nft` binary's JSON interface: each apply is one atomic
//! transaction (all of it or none), and reads list one table of flatnet's own.

use nftables::helper::{self, NftablesError};
use nftables::schema::Nftables;
use nftables::types::NfFamily;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft refused the transaction: {stderr}")]
    Refused { stderr: String },
    #[error("could not run nft (install the nftables package): {0}")]
    Unavailable(String),
}

fn classify(e: NftablesError) -> NftError {
    match e {
        NftablesError::NftFailed { stderr, .. } => NftError::Refused { stderr: stderr.trim().to_string() },
        other => NftError::Unavailable(other.to_string()),
    }
}

/// Applies the transaction atomically.
pub fn apply(ruleset: &Nftables<'_>) -> Result<(), NftError> {
    helper::apply_ruleset(ruleset).map_err(classify)
}

fn family_word(family: NfFamily) -> &'static str {
    match family {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

/// The comments of the rules in `chain` of table `family table`, in order; None when
/// the table or the chain does not exist.
pub fn chain_rule_comments(family: NfFamily, table: &str, chain: &str) -> Result<Option<Vec<String>>, NftError> {
    // Read as plain JSON: the typed schema cannot decode every statement `nft` lists
    // (masquerade flags, for one), and only the comments matter here.
    let raw = match helper::get_current_ruleset_raw(
        helper::DEFAULT_NFT,
        ["list", "chain", family_word(family), table, chain],
    ) {
        Ok(r) => r,
        // nft says "No such file or directory" for a missing table or chain.
        Err(NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file") => return Ok(None),
        Err(e) => return Err(classify(e)),
    };
    let listed: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| NftError::Unavailable(format!("nft printed invalid JSON: {e}")))?;
    Ok(Some(
        listed["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("rule"))
            .map(|r| r.get("comment").and_then(serde_json::Value::as_str).unwrap_or("").to_string())
            .collect(),
    ))
}

/// Deletes table `family table` if it exists.
pub fn delete_table(family: NfFamily, table: &str) -> Result<(), NftError> {
    let out = std::process::Command::new("nft")
        .args(["delete", "table", family_word(family), table])
        .output()
        .map_err(|e| NftError::Unavailable(e.to_string()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("No such file") {
        Ok(())
    } else {
        Err(NftError::Refused { stderr: stderr.trim().to_string() })
    }
}
