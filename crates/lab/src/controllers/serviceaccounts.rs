//! The ServiceAccounts controller: every active namespace has a ServiceAccount
//! `default` (pods run as it unless they name another), made again when deleted.

use super::made;
use crate::apiserver::admission::ClusterConfig;
use crate::apiserver::service_accounts::DEFAULT_SERVICE_ACCOUNT;
use crate::store::{Change, Key, Objects};
use serde_json::json;

pub(super) fn plan(objects: &Objects, cluster: &ClusterConfig) -> Vec<(Key, Change)> {
    super::active_namespaces(objects)
        .filter(|ns| objects.get(&Key::new("serviceaccounts", ns, DEFAULT_SERVICE_ACCOUNT)).is_none())
        .filter_map(|ns| {
            made(objects, cluster, "ServiceAccount", ns, json!({"metadata": {"name": DEFAULT_SERVICE_ACCOUNT}}))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{namespace, objects};
    use super::*;

    #[test]
    fn every_namespace_gets_a_default_service_account() {
        let existing = json!({"metadata": {"name": "default", "namespace": "a"}});
        let all = objects(vec![
            ("namespaces", "", namespace("a")),
            ("namespaces", "", namespace("b")),
            ("serviceaccounts", "a", existing),
        ]);
        let planned = plan(&all, &ClusterConfig::default());
        let keys: Vec<&Key> = planned.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![&Key::new("serviceaccounts", "b", "default")]);
        let Change::Put(sa) = &planned[0].1 else { panic!("a create") };
        assert_eq!((sa["kind"].as_str(), sa["metadata"]["namespace"].as_str()), (Some("ServiceAccount"), Some("b")));
    }
}
