//! Installing the plugin on a node, as the DaemonSet's init container does: the binary
//! into the CNI binary directory and the network config list into the config directory.
//! Each file is written beside its target under a temporary name, flushed, and renamed
//! over it, so a container runtime watching the directories sees the old file or the
//! new one, never half of one. The binary goes in before the config that names it.

use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The config list's file name: `10-` sorts it before most others, as a runtime takes
/// the first config in the directory.
pub const CONFLIST: &str = "10-flatnet.conflist";
/// The plugin's name, as the config list's `type` names it.
pub const PLUGIN: &str = "flatnet";

/// The network config list for a node. `subnet`: fixed, else the plugin reads the
/// agent's subnet file; `portmap`: chain the reference portmap plugin for `hostPort`s
/// (only where it is installed: a runtime fails every pod whose chain names a plugin
/// it cannot find).
pub fn conflist(name: &str, subnet: Option<&str>, portmap: bool) -> Value {
    let mut plugin = json!({"type": PLUGIN, "bridge": "cni0"});
    if let Some(s) = subnet {
        plugin["subnet"] = json!(s);
    }
    let mut plugins = vec![plugin];
    if portmap {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }
    json!({"cniVersion": "1.1.0", "name": name, "plugins": plugins})
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub binary: PathBuf,
    pub conflist: PathBuf,
    /// Whether the chain includes portmap (found in the binary directory).
    pub portmap: bool,
    /// Files that were already as wanted and were left alone.
    pub unchanged: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} {path}: {source} (is the host directory mounted, and writable?)")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { what, path, source }
}

/// Writes `bytes` to `target` through a temporary file in the same directory (same
/// filesystem, so the rename is atomic), with `mode`. Returns false when `target`
/// already had exactly these bytes (nothing written).
pub fn write_atomically(target: &Path, bytes: &[u8], mode: u32) -> Result<bool, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(target).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A dot name a runtime skips (it loads *.conf, *.conflist and *.json only).
    let tmp = dir.join(format!(".{name}.flatnet-tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io("chmod", &tmp))?;
        f.sync_all().map_err(io("flush", &tmp))?;
        std::fs::rename(&tmp, target).map_err(io("rename into place", target))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// Installs `binary` as `<bin_dir>/flatnet` and the config list for network `name` as
/// `<conf_dir>/10-flatnet.conflist`.
pub fn install(binary: &Path, bin_dir: &Path, conf_dir: &Path, name: &str) -> Result<Installed, InstallError> {
    let bytes = std::fs::read(binary).map_err(io("read", binary))?;
    for d in [bin_dir, conf_dir] {
        std::fs::create_dir_all(d).map_err(io("create", d))?;
    }
    let mut unchanged = Vec::new();
    let bin = bin_dir.join(PLUGIN);
    if !write_atomically(&bin, &bytes, 0o755)? {
        unchanged.push(bin.clone());
    }
    let portmap = bin_dir.join("portmap").is_file();
    let text = serde_json::to_string_pretty(&conflist(name, None, portmap)).unwrap_or_default() + "\n";
    let conf = conf_dir.join(CONFLIST);
    if !write_atomically(&conf, text.as_bytes(), 0o644)? {
        unchanged.push(conf.clone());
    }
    Ok(Installed { binary: bin, conflist: conf, portmap, unchanged })
}

/// Removes what [`install`] wrote: the config list first (no new pod is wired), then
/// the binary. Missing files are fine. Returns what was removed.
pub fn uninstall(bin_dir: &Path, conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut removed = Vec::new();
    for p in [conf_dir.join(CONFLIST), bin_dir.join(PLUGIN)] {
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &p)(e)),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_chains_portmap_only_when_it_is_there() {
        let with = conflist("flatnet", Some("10.244.1.0/24"), true);
        assert_eq!(with["plugins"][0], json!({"type": "flatnet", "bridge": "cni0", "subnet": "10.244.1.0/24"}));
        assert_eq!(with["plugins"][1]["type"], "portmap");
        let without = conflist("flatnet", None, false);
        assert_eq!(without["plugins"].as_array().unwrap().len(), 1);
        assert_eq!(without["cniVersion"], "1.1.0");
    }

    #[test]
    fn install_writes_both_files_leaves_no_temporary_and_is_idempotent() {
        let root = tempfile::tempdir().unwrap();
        let (bin, conf) = (root.path().join("opt/cni/bin"), root.path().join("etc/cni/net.d"));
        let src = root.path().join("flatnet-src");
        std::fs::write(&src, b"\x7fELF plugin").unwrap();
        let first = install(&src, &bin, &conf, "flatnet").unwrap();
        assert!(first.unchanged.is_empty() && !first.portmap);
        assert_eq!(std::fs::read(bin.join("flatnet")).unwrap(), b"\x7fELF plugin");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(bin.join("flatnet")).unwrap().permissions().mode() & 0o777, 0o755);
        let list: Value = serde_json::from_slice(&std::fs::read(conf.join(CONFLIST)).unwrap()).unwrap();
        assert_eq!(list["plugins"][0]["type"], "flatnet");
        // Again, with portmap now installed: the binary is left alone, the config gains it.
        std::fs::write(bin.join("portmap"), b"").unwrap();
        let second = install(&src, &bin, &conf, "flatnet").unwrap();
        assert_eq!(second.unchanged, [bin.join("flatnet")]);
        assert!(second.portmap);
        let names: Vec<String> =
            std::fs::read_dir(&conf).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, [CONFLIST], "no temporary file is left");
        assert_eq!(uninstall(&bin, &conf).unwrap(), [conf.join(CONFLIST), bin.join("flatnet")]);
        assert!(uninstall(&bin, &conf).unwrap().is_empty());
        assert!(bin.join("portmap").exists(), "what is not flatnet's stays");
    }

    #[test]
    fn an_unwritable_directory_is_named_and_the_old_file_stays() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("missing-dir/file");
        let err = write_atomically(&target, b"x", 0o644).unwrap_err().to_string();
        assert!(err.contains("missing-dir") && err.contains("mounted"), "{err}");
    }
}
