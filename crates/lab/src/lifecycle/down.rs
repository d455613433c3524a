//! `lab down`: stops every lab process and removes every namespace, mount and file.

use super::settings::DEFAULT_STATE_DIR;
use crate::layout::Layout;
use anyhow::{Context, bail};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// What `down` removed.
pub struct Removed {
    /// Processes stopped.
    pub processes: usize,
    /// Namespaces removed.
    pub namespaces: usize,
}

/// Stops every lab process and removes every namespace, mount and file.
pub fn down(layout: &Layout) -> anyhow::Result<Removed> {
    let pins = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(layout.netns_dir())
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    // Everything running inside a lab namespace: kubelets, agents, containers, the
    // plugin's teardown helpers. SIGKILL, so no supervisor restarts anything; again
    // until none is left, since one may have been forking as the first scan ran.
    let mut stopped = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let inodes: HashSet<u64> =
            pins().iter().filter_map(|p| flatnet_kernel::netns::NetNs::open(p).ok()?.id().ok()).collect();
        let victims = flatnet_kernel::netns::processes_in(&inodes);
        if victims.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("processes {victims:?} in the lab's namespaces survive SIGKILL; run `flatnet lab down` again");
        }
        for pid in victims {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            stopped.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(pid) = layout.apiserver() {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        stopped.insert(pid.as_raw());
    }
    let pins = pins();
    for p in &pins {
        flatnet_kernel::netns::remove_named(p).with_context(|| format!("remove {}", p.display()))?;
    }
    flatnet_kernel::netns::unmount_dir(&layout.netns_dir())?;
    match std::fs::remove_dir_all(&layout.state) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).context(format!("remove {}", layout.state.display()))
        }
        _ => {
            // The default state directory's parent (/var/lib/flatnet) goes too when
            // the lab was all it held.
            if layout.state == Path::new(DEFAULT_STATE_DIR)
                && let Some(parent) = layout.state.parent()
            {
                let _ = std::fs::remove_dir(parent);
            }
            Ok(Removed { processes: stopped.len(), namespaces: pins.len() })
        }
    }
}
