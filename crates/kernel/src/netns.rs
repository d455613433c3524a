//! Network namespaces. A namespace belongs to a thread, not a process: enter one with a
//! [`NetNsGuard`] (which cannot leave its thread and restores the old namespace on drop),
//! or open a socket inside and keep using it after leaving.

use crate::error::{KernelError, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The process's own namespace (its main thread's), as a path for [`run_in`]: code
/// that works on a namespace by path works on the caller's own this way.
pub const OWN: &str = "/proc/self/ns/net";

/// An open handle on a network namespace (a file under /run/netns, /proc/PID/ns/net, …).
#[derive(Debug)]
pub struct NetNs(File);

impl NetNs {
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        File::open(path).map(Self)
    }

    /// The calling thread's own namespace.
    pub fn current() -> std::io::Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    pub fn file(&self) -> &File {
        &self.0
    }

    /// The namespace's identity (its nsfs inode).
    pub fn id(&self) -> std::io::Result<u64> {
        Ok(self.0.metadata()?.ino())
    }

    /// Whether this is really a network namespace (not a mount namespace, not a file).
    pub fn is_netns(&self) -> bool {
        ns_type(&self.0) == Some(libc::CLONE_NEWNET)
    }
}

/// The namespace type of an nsfs file (`NS_GET_NSTYPE`), or None for any other file.
#[allow(unsafe_code, reason = "NS_GET_NSTYPE is an ioctl with no safe wrapper")]
fn ns_type(file: &File) -> Option<i32> {
    use std::os::fd::AsRawFd;
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703; // _IO(0xb7, 0x3)
    // SAFETY: the ioctl takes no argument and only reads the descriptor's namespace.
    let t = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    (t > 0).then_some(t)
}

/// The calling thread is inside another namespace while this lives.
pub struct NetNsGuard {
    previous: NetNs,
    _not_send: PhantomData<*const ()>,
}

impl NetNsGuard {
    pub fn enter(target: &NetNs) -> Result<Self> {
        let previous = NetNs::current().map_err(|e| KernelError::refused("open the current network namespace", e))?;
        setns(target.0.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| KernelError::refused("enter network namespace", e.into()))?;
        Ok(Self { previous, _not_send: PhantomData })
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        // Failing to go back would leave this thread doing host work in a pod's
        // namespace: there is no safe way on, so stop.
        if let Err(e) = setns(self.previous.0.as_fd(), CloneFlags::CLONE_NEWNET) {
            panic!("could not return to the previous network namespace: {e}");
        }
    }
}

/// Runs `f` with the calling thread inside `ns`.
pub fn within<T>(ns: &NetNs, f: impl FnOnce() -> T) -> Result<T> {
    let _guard = NetNsGuard::enter(ns)?;
    Ok(f())
}

/// Creates a new network namespace and pins it with a bind mount at `path` (as
/// `ip netns add` does), visible in the caller's mount namespace.
pub fn create_named(path: &Path) -> Result<()> {
    File::create(path).map_err(|e| KernelError::refused(format!("create {}", path.display()), e))?;
    let path_owned = path.to_path_buf();
    // A fresh thread, so the creator's own namespace is never touched.
    let made = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| KernelError::refused("unshare a network namespace", e.into()))?;
        mount(Some("/proc/thread-self/ns/net"), &path_owned, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| KernelError::refused(format!("bind the namespace at {}", path_owned.display()), e.into()))
    })
    .join()
    .unwrap_or_else(|_| Err(KernelError::Decode { op: "create namespace".into(), msg: "thread panicked".into() }));
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Unpins and removes a namespace made by [`create_named`]; absent is fine.
pub fn remove_named(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(KernelError::refused(format!("unmount {}", path.display()), e.into()));
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(KernelError::refused(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// Runs `f` on a scoped thread inside the namespace at `path`; the caller's thread
/// never changes namespace.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = NetNs::open(path).map_err(|e| KernelError::refused(format!("open {}", path.display()), e))?;
    std::thread::scope(|s| s.spawn(|| within(&ns, f)).join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
}

/// Makes directory `dir` a mount point of its own with shared propagation (as
/// `ip netns add` does for /run/netns), so that when a pin under it is unmounted, the
/// unmount reaches every mount namespace copied from this one (a container's, say)
/// and the namespace is really freed. Idempotent.
pub fn make_shared_dir(dir: &Path) -> Result<()> {
    let err = |what: &str, e: nix::errno::Errno| KernelError::refused(format!("{what} {}", dir.display()), e.into());
    if !is_mount_point(dir) {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| err("bind-mount", e))?;
    }
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| err("make shared", e))
}

/// Unmounts a directory made by [`make_shared_dir`] (and anything still under it).
pub fn unmount_dir(dir: &Path) -> Result<()> {
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(KernelError::refused(format!("unmount {}", dir.display()), e.into())),
    }
}

/// Whether `path` is a mount point in the caller's mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    // Field 5 is the mount point, with spaces and such escaped as octal.
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// The network namespace (its nsfs inode, as [`NetNs::id`]) of process `pid`, while it lives.
pub fn of_process(pid: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    link.to_str()?.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Every process but the caller whose network namespace is one of `ids`.
pub fn processes_in(ids: &std::collections::HashSet<u64>) -> Vec<i32> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && of_process(*pid).is_some_and(|ns| ids.contains(&ns)))
        .collect()
}
