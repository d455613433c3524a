//! A container's root directory, as a runtime makes one, without touching the host's
//! files: a tmpfs that mirrors the host's tree by bind mounts, where each volume is
//! mounted at its path. A directory on the way to a volume that the host has is
//! "opened up": a tmpfs of its own, its entries bound one by one, so the volume's
//! mount point can be made in it. Done inside a mount namespace of the caller's own
//! (nothing here is seen outside it), then entered with chroot.

use crate::error::{KernelError, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// One bind mount into the container's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// A file or directory on the host.
    pub source: PathBuf,
    /// Where the container sees it (an absolute path).
    pub target: PathBuf,
    pub read_only: bool,
}

impl Mount {
    /// `SOURCE:TARGET[:ro]`, as `flatnet lab enter --mount` takes it.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let mut parts = s.split(':');
        let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
            return Err(format!("--mount {s}: expected SOURCE:TARGET[:ro]"));
        };
        let read_only = match parts.next() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => return Err(format!("--mount {s}: {other} is neither ro nor rw")),
        };
        if !target.starts_with('/') || source.is_empty() {
            return Err(format!("--mount {s}: the source must be given and the target absolute"));
        }
        Ok(Self { source: source.into(), target: target.into(), read_only })
    }

    pub fn render(&self) -> String {
        format!("{}:{}{}", self.source.display(), self.target.display(), if self.read_only { ":ro" } else { "" })
    }
}

fn refused(what: String, e: nix::Error) -> KernelError {
    KernelError::refused(what, e.into())
}

fn io(what: String, e: std::io::Error) -> KernelError {
    KernelError::refused(what, e)
}

/// The target as the host resolves it: symbolic links in the part of it that exists
/// are followed (`/var/run/secrets` is `/run/secrets` where `/var/run` links there).
fn resolve(target: &Path) -> PathBuf {
    let mut done = PathBuf::from("/");
    let mut rest = target.components().filter(|c| matches!(c, Component::Normal(_))).peekable();
    while let Some(c) = rest.next() {
        let next = done.join(c);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => done = std::fs::canonicalize(&next).unwrap_or(next),
            Ok(_) => done = next,
            Err(_) => {
                done = next;
                done.extend(rest);
                break;
            }
        }
    }
    done
}

/// Builds the root at `stage` (an empty directory) and changes into it. The caller is
/// single-threaded, in a mount namespace of its own whose mounts are slaves of the host's.
pub fn enter(stage: &Path, mounts: &[Mount]) -> Result<()> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    std::fs::create_dir_all(stage).map_err(|e| io(format!("create {}", stage.display()), e))?;
    mount(Some("tmpfs"), stage, Some("tmpfs"), MsFlags::empty(), Some("mode=755"))
        .map_err(|e| refused(format!("mount a tmpfs on {}", stage.display()), e))?;
    let mut targets: Vec<(PathBuf, &Mount)> = mounts.iter().map(|m| (resolve(&m.target), m)).collect();
    targets.sort_by_key(|(t, _)| t.components().count());
    let wanted: BTreeSet<PathBuf> = targets.iter().map(|(t, _)| t.clone()).collect();
    let opened: BTreeSet<PathBuf> =
        targets.iter().flat_map(|(t, _)| t.ancestors().skip(1).map(Path::to_path_buf).collect::<Vec<_>>()).collect();
    mirror(Path::new("/"), stage, &opened, &wanted)?;
    for (t, m) in &targets {
        let dest = stage.join(t.strip_prefix("/").unwrap_or(t));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(format!("make the mount point {}", t.display()), e))?;
        }
        let is_dir = std::fs::metadata(&m.source)
            .map_err(|e| io(format!("mount {} at {}", m.source.display(), t.display()), e))?
            .is_dir();
        placeholder(&dest, is_dir)?;
        bind(&m.source, &dest)?;
        if m.read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, &dest, None::<&str>, flags, None::<&str>)
                .map_err(|e| refused(format!("make {} read-only", t.display()), e))?;
        }
    }
    // The root's own copy of the stage (carried in by the bind of a directory above it).
    let inner = stage.join(stage.strip_prefix("/").unwrap_or(stage));
    let _ = umount2(&inner, MntFlags::MNT_DETACH);
    nix::unistd::chroot(stage).map_err(|e| refused(format!("change root to {}", stage.display()), e))?;
    if nix::unistd::chdir(&cwd).is_err() {
        nix::unistd::chdir("/").map_err(|e| refused("change to /".into(), e))?;
    }
    Ok(())
}

/// Mirrors the host's directory `host` into `new`: entries on the way to a volume are
/// opened up (recursively), volumes left for later, everything else bound as it is.
fn mirror(host: &Path, new: &Path, opened: &BTreeSet<PathBuf>, wanted: &BTreeSet<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(host).map_err(|e| io(format!("read {}", host.display()), e))?;
    for entry in entries.flatten() {
        let (from, to) = (entry.path(), new.join(entry.file_name()));
        if wanted.contains(&from) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&from) else { continue };
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(&from).map_err(|e| io(format!("read the link {}", from.display()), e))?;
            std::os::unix::fs::symlink(link, &to).map_err(|e| io(format!("copy the link {}", from.display()), e))?;
        } else if meta.is_dir() && opened.contains(&from) {
            std::fs::create_dir(&to).map_err(|e| io(format!("make {}", to.display()), e))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.permissions().mode()));
            mirror(&from, &to, opened, wanted)?;
        } else {
            placeholder(&to, meta.is_dir())?;
            bind(&from, &to)?;
        }
    }
    Ok(())
}

fn placeholder(path: &Path, dir: bool) -> Result<()> {
    let made = if dir {
        std::fs::create_dir(path)
    } else {
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map(drop)
    };
    match made {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io(format!("make {}", path.display()), e)),
        _ => Ok(()),
    }
}

fn bind(from: &Path, to: &Path) -> Result<()> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| refused(format!("bind {} at {}", from.display(), to.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_and_render() {
        let m = Mount::parse("/a/b:/etc/x:ro").unwrap();
        assert_eq!(m, Mount { source: "/a/b".into(), target: "/etc/x".into(), read_only: true });
        assert_eq!(Mount::parse(&m.render()).unwrap(), m);
        assert!(!Mount::parse("/a:/b").unwrap().read_only);
        assert!(Mount::parse("/a").is_err());
        assert!(Mount::parse("/a:relative").is_err());
        assert!(Mount::parse("/a:/b:rx").is_err());
    }

    #[test]
    fn targets_resolve_through_the_hosts_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let real = std::fs::canonicalize(dir.path().join("real")).unwrap();
        assert_eq!(resolve(&dir.path().join("link/secrets/token")), real.join("secrets/token"));
        assert_eq!(resolve(Path::new("/no-such-dir/x")), PathBuf::from("/no-such-dir/x"));
    }
}
