//! Work the caller should not wait for. Deleting a veth costs the kernel 20–40 ms of RCU
//! grace periods under the rtnl lock, which stalls every other link change on the node.
//! Once a pod's address is withdrawn nothing depends on that moment, so the CNI DEL
//! marks the device for teardown (a device group) and leaves the deletion to a detached
//! reaper. A reaper waits a moment, then deletes the whole group in one transaction:
//! a burst of DELs (a rollout, a drain) pays for one teardown instead of one each.

use crate::netlink::Netlink;
use std::fs::File;
use std::path::Path;
use std::time::Duration;

/// Device group of veths waiting for teardown ("flnd").
pub const TEARDOWN_GROUP: u32 = 0x666c_6e64;

/// How long a reaper gathers marked devices before deleting them.
pub const TEARDOWN_DELAY: Duration = Duration::from_millis(100);

/// Makes sure every device in [`TEARDOWN_GROUP`] of the caller's network namespace gets
/// deleted: by a detached reaper when one can be used (one already waiting, whose lock
/// file in `lock_dir` is held, takes this device too), else inline, before returning.
pub fn schedule_teardown(lock_dir: &Path) -> crate::error::Result<()> {
    if reaper_scheduled(lock_dir) {
        return Ok(());
    }
    let mut nl = Netlink::open()?;
    crate::link::delete_group(&mut nl, TEARDOWN_GROUP)
}

fn reaper_scheduled(lock_dir: &Path) -> bool {
    // fork() is only safe while this process has a single thread (the CNI plugin);
    // a multi-threaded caller (an agent, the lab) deletes inline.
    if !single_threaded() {
        return false;
    }
    // The group is per network namespace, so the lock is too.
    let Ok(ns) = crate::netns::NetNs::current().and_then(|n| n.id()) else { return false };
    let path = lock_dir.join(format!("teardown-{ns}.lock"));
    let Ok(lock) = File::options().create(true).truncate(false).write(true).open(path) else { return false };
    match lock.try_lock() {
        Ok(()) => spawn_reaper(lock),
        // A reaper is waiting and has not started deleting: our device is marked, so
        // it goes with that reaper's batch.
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => false,
    }
}

fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.split_whitespace().eq(["Threads:", "1"])))
}

#[allow(unsafe_code, reason = "fork(2) has no safe wrapper; the CNI process is single-threaded here")]
fn spawn_reaper(lock: File) -> bool {
    use nix::unistd::{ForkResult, fork};
    // SAFETY: the plugin process has one thread, so the child's copy of every lock is
    // consistent; the child sleeps, sends one request and _exits.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => true, // our copy of the lock fd closes on drop
        Ok(ForkResult::Child) => {
            quiet_child();
            std::thread::sleep(TEARDOWN_DELAY);
            // Unlock before deleting: a device marked from now on gets a reaper of its
            // own; one marked before is in the group this reaper is about to delete.
            drop(lock);
            let ok = Netlink::open().and_then(|mut nl| crate::link::delete_group(&mut nl, TEARDOWN_GROUP)).is_ok();
            // SAFETY: _exit skips the parent's atexit handlers and buffered stdout.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Err(_) => false,
    }
}

/// A detached child: own session, stdio on /dev/null (so a runtime reading the
/// plugin's stdout sees EOF as soon as the plugin exits).
#[allow(unsafe_code, reason = "dup2 onto the standard descriptors; nix wants owned fds for them")]
fn quiet_child() {
    let _ = nix::unistd::setsid();
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors of this (child) process only.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
