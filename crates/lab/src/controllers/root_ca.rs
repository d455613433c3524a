//! The root CA publisher: every active namespace has a ConfigMap `kube-root-ca.crt` with
//! the CA that signed the API server's certificate, which pods' token volumes project
//! as `ca.crt` so in-cluster clients can verify the API; put back when edited.

use super::made;
use crate::apiserver::admission::ClusterConfig;
use crate::apiserver::service_accounts::ROOT_CA_CONFIG_MAP;
use crate::store::{Change, Key, Objects};
use serde_json::{Value, json};

const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

pub(super) fn plan(objects: &Objects, cluster: &ClusterConfig, ca_pem: &str) -> Vec<(Key, Change)> {
    let data = json!({"ca.crt": ca_pem});
    let mut out = Vec::new();
    for ns in super::active_namespaces(objects) {
        let key = Key::new("configmaps", ns, ROOT_CA_CONFIG_MAP);
        match objects.get(&key) {
            None => {
                let meta = json!({"name": ROOT_CA_CONFIG_MAP, "annotations": {DESCRIPTION_ANNOTATION: DESCRIPTION}});
                out.extend(made(objects, cluster, "ConfigMap", ns, json!({"metadata": meta, "data": data})));
            }
            Some(cm) if published(cm, &data) => {}
            Some(cm) => {
                let mut cm = (**cm).clone();
                cm["data"] = data.clone();
                cm["metadata"]["annotations"][DESCRIPTION_ANNOTATION] = json!(DESCRIPTION);
                out.push((key, Change::Put(cm)));
            }
        }
    }
    out
}

/// The ConfigMap holds the CA, and says what it is for.
fn published(cm: &Value, data: &Value) -> bool {
    cm["data"] == *data && cm["metadata"]["annotations"][DESCRIPTION_ANNOTATION].as_str().is_some_and(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{namespace, objects};
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn every_namespace_gets_the_ca_and_an_edited_copy_is_put_back() {
        let edited = json!({"metadata": {"name": ROOT_CA_CONFIG_MAP, "namespace": "a", "resourceVersion": "7"},
                            "data": {"ca.crt": "not the CA"}});
        let all = objects(vec![
            ("namespaces", "", namespace("a")),
            ("namespaces", "", namespace("b")),
            ("configmaps", "a", edited),
        ]);
        let planned = plan(&all, &ClusterConfig::default(), CA);
        assert_eq!(planned.len(), 2);
        for (key, change) in &planned {
            let Change::Put(cm) = change else { panic!("a write") };
            assert_eq!(key.name, ROOT_CA_CONFIG_MAP);
            assert_eq!(cm["data"], json!({"ca.crt": CA}));
            assert_eq!(cm["metadata"]["annotations"][DESCRIPTION_ANNOTATION], DESCRIPTION);
        }
        // The edited one is an update of the stored object (its resourceVersion checked on write).
        let Change::Put(first) = &planned[0].1 else { unreachable!() };
        assert_eq!((planned[0].0.namespace.as_str(), first["metadata"]["resourceVersion"].as_str()), ("a", Some("7")));

        let published = json!({"metadata": {"name": ROOT_CA_CONFIG_MAP, "namespace": "a",
                                             "annotations": {DESCRIPTION_ANNOTATION: DESCRIPTION}},
                               "data": {"ca.crt": CA}});
        let all = objects(vec![("namespaces", "", namespace("a")), ("configmaps", "a", published)]);
        assert!(plan(&all, &ClusterConfig::default(), CA).is_empty());
    }
}
