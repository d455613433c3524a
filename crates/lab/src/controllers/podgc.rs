//! Pod GC: a Terminating pod whose grace period has run out is deleted, as the kubelet
//! would have done had it finished first.

use crate::store::{Change, Key, Objects};

pub(super) fn plan(objects: &Objects) -> Vec<(Key, Change)> {
    let now = jiff::Timestamp::now();
    objects
        .list("pods", None)
        .filter(|p| {
            p["metadata"]["deletionTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t <= now)
        })
        .map(|p| {
            let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
            Key::new("pods", ns, p["metadata"]["name"].as_str().unwrap_or_default())
        })
        .map(|k| (k, Change::Delete))
        .collect()
}
