//! Entering a pod to run a program in it, as a container runtime would: its network
//! namespace, a mount namespace of its own where the pod's resolv.conf (and hosts file)
//! cover the node's, and its own hostname. Done by a fresh single-threaded process that
//! then replaces itself with the program, so nothing else ever runs inside.

use crate::error::{KernelError, Result};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct PodContext {
    pub netns: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub hostname: Option<String>,
    /// The container's volumes. With any, it gets a root of its own, built at `root`
    /// (see [`crate::rootfs`]), where the resolv.conf and hosts files are mounts too.
    pub mounts: Vec<crate::rootfs::Mount>,
    pub root: Option<PathBuf>,
    /// The directory to change into once inside (the container's working directory).
    pub workdir: Option<PathBuf>,
}

/// Enters the pod and executes `argv`. Returns only on failure. Must be called while
/// the process has a single thread (a mount namespace cannot be unshared otherwise).
pub fn exec(ctx: &PodContext, argv: &[OsString]) -> KernelError {
    match enter(ctx) {
        Ok(()) => {}
        Err(e) => return e,
    }
    exec_entered(argv)
}

/// Executes `argv` in the pod [`enter`] moved this process into. Returns only on failure.
pub fn exec_entered(argv: &[OsString]) -> KernelError {
    let Some((program, args)) = argv.split_first() else {
        return KernelError::refused("run a program in the pod", std::io::Error::other("no program given"));
    };
    let e = std::process::Command::new(program).args(args).exec();
    KernelError::refused(format!("run {}", program.to_string_lossy()), e)
}

/// Moves the calling (single-threaded) process into the pod.
pub fn enter(ctx: &PodContext) -> Result<()> {
    let ns = std::fs::File::open(&ctx.netns)
        .map_err(|e| KernelError::refused(format!("open the pod's network namespace {}", ctx.netns.display()), e))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| KernelError::refused("enter the pod", e.into()))?;
    let mut flags = CloneFlags::CLONE_NEWNS;
    if ctx.hostname.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    unshare(flags).map_err(|e| KernelError::refused("unshare mount and UTS namespaces", e.into()))?;
    // Slave, not private: unmounts on the node (a pod's namespace pin going away)
    // still reach this copy, so it never keeps another pod's namespace alive.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| KernelError::refused("make mounts slave", e.into()))?;
    let files = [(&ctx.resolv_conf, "/etc/resolv.conf"), (&ctx.hosts, "/etc/hosts")];
    match (&ctx.root, ctx.mounts.is_empty()) {
        (Some(root), false) => {
            let mut mounts = ctx.mounts.clone();
            for (file, target) in files {
                if let Some(file) = file {
                    mounts.push(crate::rootfs::Mount { source: file.clone(), target: target.into(), read_only: false });
                }
            }
            crate::rootfs::enter(root, &mounts)?;
        }
        _ => {
            for (file, target) in files {
                if let Some(file) = file {
                    mount(Some(file.as_path()), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
                        KernelError::refused(format!("bind {} over {target}", file.display()), e.into())
                    })?;
                }
            }
        }
    }
    if let Some(w) = &ctx.workdir {
        nix::unistd::chdir(w).map_err(|e| KernelError::refused(format!("change to {}", w.display()), e.into()))?;
    }
    if let Some(h) = &ctx.hostname {
        nix::unistd::sethostname(h).map_err(|e| KernelError::refused(format!("set hostname {h}"), e.into()))?;
    }
    Ok(())
}
