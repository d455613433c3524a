//! A pod's volumes, as a kubelet makes them: what the API holds for it (see
//! [`super::inputs`]), written to files under the pod's directory, and again while it
//! runs; host paths, of which the node's own directories (its CNI directories,
//! `/run/flatnet`) are the node's, under its directory in the lab, and everything else
//! the machine's, read as it is. Each container then gets its volumes mounted in a root
//! of its own (see `flatnet_kernel::rootfs`).

use super::inputs::Inputs;
use crate::layout::{NODE_LOCAL, on_node};
use flatnet_kernel::rootfs::Mount;
use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Volume, VolumeProjection};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The image whose `/usr/local/bin/flatnet` is this binary in the lab (any tag).
pub const FLATNET_IMAGE: &str = "ghcr.io/flatnet-dev/flatnet";

/// Writes `files` into `dir` (made if missing): each file only when its content
/// changed, aside and renamed (a reader never sees half a file); files no longer
/// wanted are removed.
fn write_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    for (name, data) in files {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == *data) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        let tmp = dir.join(format!(".{}.tmp", name.replace('/', "_")));
        std::fs::write(&tmp, data)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && !files.contains_key(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The files of a key → value source with optional `items` (only those keys, at their
/// paths); a key the items name that is missing is an error unless `optional`.
fn select<T: Clone + Into<Vec<u8>>>(
    data: &BTreeMap<String, T>,
    items: Option<&Vec<KeyToPath>>,
    what: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let Some(items) = items else {
        return Ok(data.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect());
    };
    let mut out = BTreeMap::new();
    for i in items {
        match data.get(&i.key) {
            Some(v) => {
                out.insert(i.path.clone(), v.clone().into());
            }
            None if optional => {}
            None => return Err(format!("{what} has no key {:?}", i.key)),
        }
    }
    Ok(out)
}

/// The files of a ConfigMap or Secret (`kind`) named `name`, as fetched (`data`).
fn source_files<T: Clone + Into<Vec<u8>>>(
    kind: &str,
    name: &str,
    data: Option<BTreeMap<String, T>>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    match data {
        Some(data) => select(&data, items, &format!("{kind} {name}"), optional),
        None if optional => Ok(BTreeMap::new()),
        None => Err(format!("{kind} {name:?} not found")),
    }
}

fn projection_files(
    p: &VolumeProjection,
    pod: &Pod,
    inputs: &Inputs,
    volume: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    if let Some(c) = &p.config_map {
        return source_files(
            "configmap",
            &c.name,
            inputs.config_map(&c.name),
            c.items.as_ref(),
            c.optional == Some(true),
        );
    }
    if let Some(s) = &p.secret {
        return source_files("secret", &s.name, inputs.secret(&s.name), s.items.as_ref(), s.optional == Some(true));
    }
    if let Some(t) = &p.service_account_token {
        let token = inputs.tokens.get(volume).map(|t| t.0.clone()).ok_or("no service-account token was issued")?;
        return Ok(BTreeMap::from([(t.path.clone(), token.into_bytes())]));
    }
    if let Some(d) = &p.downward_api {
        let mut out = BTreeMap::new();
        for i in d.items.iter().flatten() {
            let Some(f) = &i.field_ref else { continue };
            let value = super::workload::pod_field(pod, &f.field_path, "", "")
                .ok_or_else(|| format!("downward API field {} is not served by the lab kubelet", f.field_path))?;
            out.insert(i.path.clone(), value.into_bytes());
        }
        return Ok(out);
    }
    Err("a projected source the lab kubelet does not serve (clusterTrustBundle, podCertificate)".into())
}

/// One volume's files or host path: where it is on this machine.
fn materialize_one(v: &Volume, pod: &Pod, inputs: &Inputs, dir: &Path, node_root: &Path) -> Result<PathBuf, String> {
    let here = dir.join("volumes").join(&v.name);
    if let Some(h) = &v.host_path {
        let (path, local) = on_node(node_root, &h.path);
        let kind = h.type_.as_deref().unwrap_or("");
        match kind {
            "DirectoryOrCreate" if local => {
                std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
            }
            "FileOrCreate" if local => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
                }
                std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| e.to_string())?;
            }
            _ if !path.exists() && !kind.is_empty() => {
                return Err(format!(
                    "hostPath {} ({kind}) does not exist; the lab's nodes have their own {} and share the rest of this machine's files, where the lab creates nothing",
                    h.path,
                    NODE_LOCAL.join(", ")
                ));
            }
            _ => {}
        }
        return Ok(path);
    }
    let files = if let Some(c) = &v.config_map {
        source_files("configmap", &c.name, inputs.config_map(&c.name), c.items.as_ref(), c.optional == Some(true))?
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        source_files("secret", &name, inputs.secret(&name), s.items.as_ref(), s.optional == Some(true))?
    } else if let Some(p) = &v.projected {
        let mut all = BTreeMap::new();
        for source in p.sources.iter().flatten() {
            all.extend(projection_files(source, pod, inputs, &v.name)?);
        }
        all
    } else if v.downward_api.is_some() {
        let items = v.downward_api.as_ref().and_then(|d| d.items.clone());
        let d = k8s_openapi::api::core::v1::DownwardAPIProjection { items };
        let p = VolumeProjection { downward_api: Some(d), ..Default::default() };
        projection_files(&p, pod, inputs, &v.name)?
    } else if v.empty_dir.is_some() {
        std::fs::create_dir_all(&here).map_err(|e| format!("create {}: {e}", here.display()))?;
        return Ok(here);
    } else {
        return Err(format!(
            "volume {:?}: its type is not one the lab kubelet serves (hostPath, configMap, secret, projected, downwardAPI, emptyDir)",
            v.name
        ));
    };
    write_dir(&here, &files)?;
    Ok(here)
}

/// Writes (or refreshes) every volume of the pod, under the pod's directory `dir`;
/// returns where each is.
pub fn materialize(
    pod: &Pod,
    inputs: &Inputs,
    dir: &Path,
    node_root: &Path,
) -> Result<HashMap<String, PathBuf>, String> {
    let mut out = HashMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = materialize_one(v, pod, inputs, dir, node_root).map_err(|e| format!("volume {:?}: {e}", v.name))?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// The container's mounts: its volumeMounts, and this binary where the flatnet image
/// has it.
pub fn container_mounts(c: &Container, volumes: &HashMap<String, PathBuf>) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let source =
            volumes.get(&m.name).ok_or_else(|| format!("volumeMount {:?}: the pod has no such volume", m.name))?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => source.join(sub),
            None => source.clone(),
        };
        out.push(Mount { source, target: m.mount_path.clone().into(), read_only: m.read_only == Some(true) });
    }
    if c.image.as_deref().is_some_and(|i| i.starts_with(FLATNET_IMAGE)) {
        let me = std::env::current_exe().map_err(|e| format!("find the flatnet binary: {e}"))?;
        out.push(Mount { source: me, target: "/usr/local/bin/flatnet".into(), read_only: true });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configmap_volumes_are_files_and_refreshes_rewrite_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "kube-system"}, "spec": {
            "containers": [{"name": "c", "image": "ghcr.io/flatnet-dev/flatnet:0.1.0",
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/flatnet-dns", "readOnly": true}]}],
            "volumes": [{"name": "config", "configMap": {"name": "flatnet-dns"}},
                        {"name": "ns", "downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}))
        .unwrap();
        let mut inputs = Inputs::default();
        inputs.config_maps.insert("flatnet-dns".into(), Some(BTreeMap::from([("ttl".into(), "5".into())])));
        let vols = materialize(&pod, &inputs, dir.path(), Path::new("/nowhere")).unwrap();
        assert_eq!(std::fs::read_to_string(vols["config"].join("ttl")).unwrap(), "5");
        assert_eq!(std::fs::read_to_string(vols["ns"].join("namespace")).unwrap(), "kube-system");
        inputs.config_maps.insert("flatnet-dns".into(), Some(BTreeMap::from([("ttl".into(), "30".into())])));
        materialize(&pod, &inputs, dir.path(), Path::new("/nowhere")).unwrap();
        assert_eq!(std::fs::read_to_string(vols["config"].join("ttl")).unwrap(), "30");
        let mounts = container_mounts(&pod.spec.as_ref().unwrap().containers[0], &vols).unwrap();
        assert_eq!(
            mounts[0],
            Mount { source: vols["config"].clone(), target: "/etc/flatnet-dns".into(), read_only: true }
        );
        assert_eq!(mounts[1].target, PathBuf::from("/usr/local/bin/flatnet"), "the flatnet image has this binary");
        inputs.config_maps.insert("flatnet-dns".into(), None);
        let e = materialize(&pod, &inputs, dir.path(), Path::new("/nowhere")).unwrap_err();
        assert!(e.contains("configmap \"flatnet-dns\" not found"), "{e}");
    }
}
