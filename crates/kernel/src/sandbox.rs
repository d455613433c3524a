//! A place to do privileged work without touching the host: a thread in fresh network
//! and mount namespaces, with a private tmpfs for namespace pins and state. Tests and
//! benchmarks run inside one; everything in it disappears when it ends.

use crate::error::{KernelError, Result};
use crate::netlink::Netlink;
use crate::netns::{self, NetNs};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use std::path::{Path, PathBuf};

/// Why privileged work cannot run here, or None when it can.
pub fn unavailable_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network and mount namespaces); run the tests as root".into());
    }
    None
}

pub struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    /// A scratch directory on a tmpfs only this sandbox sees.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a named network namespace (a pod's, a node's) pinned inside the sandbox.
    pub fn create_netns(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join("netns").join(name);
        netns::create_named(&path)?;
        Ok(path)
    }

    pub fn remove_netns(&self, path: &Path) -> Result<()> {
        netns::remove_named(path)
    }
}

/// Runs `f` on a new thread inside fresh network and mount namespaces. Refuses (rather
/// than run on the host) if the namespaces could not be made.
pub fn run<T: Send>(f: impl FnOnce(&Sandbox) -> T + Send) -> Result<T> {
    let host_dir = tempdir_path();
    std::fs::create_dir_all(&host_dir).map_err(|e| KernelError::refused("create sandbox dir", e))?;
    let out = std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            let host_net = NetNs::current().and_then(|n| n.id()).map_err(|e| KernelError::refused("read netns", e))?;
            unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
                .map_err(|e| KernelError::refused("unshare network and mount namespaces", e.into()))?;
            let inner = NetNs::current().and_then(|n| n.id()).map_err(|e| KernelError::refused("read netns", e))?;
            assert_ne!(host_net, inner, "sandbox is still in the host's network namespace");
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
                .map_err(|e| KernelError::refused("make mounts private", e.into()))?;
            mount(Some("tmpfs"), &host_dir, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
                .map_err(|e| KernelError::refused("mount sandbox tmpfs", e.into()))?;
            std::fs::create_dir_all(host_dir.join("netns")).map_err(|e| KernelError::refused("mkdir", e))?;
            let mut nl = Netlink::open()?;
            crate::link::set_up(&mut nl, 1)?; // loopback
            Ok(f(&Sandbox { dir: host_dir.clone() }))
        })
        .join()
    });
    let _ = std::fs::remove_dir(&host_dir);
    match out {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn tempdir_path() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!("flatnet-sandbox-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}
