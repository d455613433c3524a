//! Writing nf_tables: one transaction over netlink (no `nft` process), or through `nft`
//! for a command the netlink encoder does not know (said once in the log, by name).

use flatnet_kernel::nf_tables::{self, SetShape};
use flatnet_kernel::nft::{self, NftError};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::warn;

static SAID: AtomicBool = AtomicBool::new(false);

/// Applies `objects` (nft JSON commands) as one transaction; `known` are the sets
/// already in the table whose elements the transaction may change.
pub fn write<S: AsRef<str>>(objects: &[S], known: Vec<(String, SetShape)>) -> Result<(), NftError> {
    match nf_tables::apply(objects, known) {
        Ok(()) => Ok(()),
        Err(nf_tables::Error::Unsupported(what)) => {
            if !SAID.swap(true, Ordering::Relaxed) {
                warn!("writing this transaction through nft: {what}");
            }
            nft::apply_objects(objects)
        }
        Err(nf_tables::Error::Refused(why)) => Err(NftError::Refused { stderr: why }),
        Err(nf_tables::Error::Io(e)) => Err(NftError::Unavailable(format!("nf_tables netlink: {e}"))),
    }
}

/// The proxy's base sets and maps, as the netlink encoder needs them for their elements.
pub fn proxy_sets() -> Vec<(String, SetShape)> {
    flatnet_model::proxy::BASE_SETS
        .iter()
        .filter_map(|(name, types, verdict)| Some((name.to_string(), SetShape::new(types, *verdict)?)))
        .collect()
}

/// The policy table's sets and maps that `state` has, as the netlink encoder needs them
/// for their elements: the base maps and `local-self`, and every pod, port and address
/// block set.
pub fn policy_sets(state: &flatnet_model::policy::State) -> Vec<(String, SetShape)> {
    let shape = |t: &[&str], map: bool| SetShape::new(t, map).expect("known types");
    let mut out = vec![
        ("ingress".to_string(), shape(&["ipv4_addr"], true)),
        ("egress".to_string(), shape(&["ipv4_addr"], true)),
        ("local-self".to_string(), shape(&["ipv4_addr", "ipv4_addr"], false)),
    ];
    out.extend(state.pod_sets.keys().map(|n| (n.clone(), shape(&["ipv4_addr"], false))));
    out.extend(state.port_sets.keys().map(|n| (n.clone(), shape(&["ipv4_addr", "inet_proto", "inet_service"], false))));
    out.extend(state.block_sets.keys().map(|n| (n.clone(), SetShape::intervals(&["ipv4_addr"]).expect("known types"))));
    out
}
