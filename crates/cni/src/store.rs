//! IPAM state on disk: which address belongs to which attachment.
//!
//! Layout under `<dataDir>/<network>/`:
//! - `lock`: every change holds an exclusive `flock` on it (released by the kernel if
//!   the process dies, even by SIGKILL);
//! - `ips/<address>`: the reservation, containing `<containerID>\n<ifname>\n`. Its
//!   existence is what makes an address taken; it is the commit point of an allocation;
//! - `attachments/<containerID>:<ifname>`: an index from attachment to address, written
//!   before the reservation and trusted only when the reservation points back;
//! - `last_reserved_ip`: where the next search starts, so a released address is the last
//!   to be reused;
//! - `boot_id`: the kernel boot the reservations belong to. No pod network survives a
//!   reboot, and a runtime that lost its sandboxes never sends DEL for them, so the first
//!   lock after a reboot forgets every reservation. This is also why no write is fsynced:
//!   a power loss is a reboot, and the state it could tear is discarded with it.
//!
//! Every file is written to a temporary name and renamed into place, so a crash leaves
//! either the old or the new content, never a torn file.

use flatnet_model::ipam::AddressPool;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("IPAM store at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("subnet {subnet} is full: all {capacity} pod addresses are in use")]
    Full { subnet: String, capacity: u32 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

type Result<T> = std::result::Result<T, StoreError>;

/// One reservation as stored; `owner` is (containerID, ifname), None when unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: Ipv4Addr,
    pub owner: Option<(String, String)>,
}

pub struct Store {
    dir: PathBuf,
    boot_id: String,
}

/// The store with its lock held; dropping it releases the lock.
pub struct Locked<'a> {
    store: &'a Store,
    _lock: File,
}

impl Store {
    pub fn new(data_dir: &Path, network: &str) -> Self {
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        Self::for_boot(data_dir, network, boot_id.trim())
    }

    /// A store that believes the machine's boot is `boot_id` (tests simulate reboots).
    pub fn for_boot(data_dir: &Path, network: &str, boot_id: &str) -> Self {
        Self { dir: data_dir.join(network), boot_id: boot_id.to_string() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the lock, creating the store on first use.
    pub fn lock(&self) -> Result<Locked<'_>> {
        for sub in ["ips", "attachments"] {
            let d = self.dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let path = self.dir.join("lock");
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        let locked = Locked { store: self, _lock: file };
        locked.forget_previous_boot()?;
        Ok(locked)
    }

    /// Takes the lock only if the store exists: DEL of something never added must not
    /// create state.
    pub fn lock_existing(&self) -> Result<Option<Locked<'_>>> {
        if !self.dir.join("ips").is_dir() {
            return Ok(None);
        }
        self.lock().map(Some)
    }
}

fn key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}:{ifname}")
}

fn owner_text(container_id: &str, ifname: &str) -> String {
    format!("{container_id}\n{ifname}\n")
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory,
/// then a rename over the target.
fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn remove_optional(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

impl Locked<'_> {
    fn forget_previous_boot(&self) -> Result<()> {
        let path = self.store.dir.join("boot_id");
        let recorded = read_optional(&path)?;
        if recorded.as_deref().map(str::trim) == Some(self.store.boot_id.as_str()) {
            return Ok(());
        }
        if recorded.is_some() {
            for sub in ["ips", "attachments"] {
                let dir = self.store.dir.join(sub);
                for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                    remove_optional(&entry.map_err(io_err(&dir))?.path())?;
                }
            }
        }
        write_atomic(&path, &format!("{}\n", self.store.boot_id))
    }

    fn ip_path(&self, ip: Ipv4Addr) -> PathBuf {
        self.store.dir.join("ips").join(ip.to_string())
    }

    fn attachment_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.store.dir.join("attachments").join(key(container_id, ifname))
    }

    /// The address reserved for this attachment, if any.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        let Some(text) = read_optional(&self.attachment_path(container_id, ifname))? else {
            return Ok(None);
        };
        let Ok(ip) = text.trim().parse::<Ipv4Addr>() else {
            return Ok(None);
        };
        let owner = read_optional(&self.ip_path(ip))?;
        Ok((owner.as_deref() == Some(owner_text(container_id, ifname).as_str())).then_some(ip))
    }

    /// Reserves an address for the attachment. A repeated call for the same attachment
    /// returns the same address; `.1` says whether this call made the reservation.
    pub fn allocate(&self, pool: &AddressPool, container_id: &str, ifname: &str) -> Result<(Ipv4Addr, bool)> {
        if let Some(ip) = self.lookup(container_id, ifname)?
            && pool.is_assignable(ip)
        {
            return Ok((ip, false));
        }
        let last_path = self.store.dir.join("last_reserved_ip");
        let last = read_optional(&last_path)?.and_then(|s| s.trim().parse().ok());
        let ip = pool
            .next_free(last, |ip| self.ip_path(ip).exists())
            .ok_or_else(|| StoreError::Full { subnet: pool.subnet.to_string(), capacity: pool.capacity() })?;
        write_atomic(&self.attachment_path(container_id, ifname), &format!("{ip}\n"))?;
        write_atomic(&self.ip_path(ip), &owner_text(container_id, ifname))?; // the commit point
        write_atomic(&last_path, &format!("{ip}\n"))?;
        Ok((ip, true))
    }

    /// Releases the attachment's address; returns it, or None when it had none.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        let ip = self.lookup(container_id, ifname)?;
        if let Some(ip) = ip {
            remove_optional(&self.ip_path(ip))?; // the commit point
        }
        remove_optional(&self.attachment_path(container_id, ifname))?;
        Ok(ip)
    }

    /// Releases an address whatever owns it (GC, for reservations whose owner is not
    /// valid or cannot be read).
    pub fn release_ip(&self, ip: Ipv4Addr) -> Result<()> {
        remove_optional(&self.ip_path(ip))
    }

    /// Every reservation, in address order.
    pub fn list(&self) -> Result<Vec<Reservation>> {
        let dir = self.store.dir.join("ips");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let text = read_optional(&entry.path())?.unwrap_or_default();
            let mut lines = text.lines();
            let owner = match (lines.next(), lines.next()) {
                (Some(cid), Some(ifname)) => Some((cid.to_string(), ifname.to_string())),
                _ => None,
            };
            out.push(Reservation { ip, owner });
        }
        out.sort_by_key(|r| r.ip);
        Ok(out)
    }

    /// Removes what crashed runs left: temporary files, and index entries whose
    /// reservation is gone. Returns how many files it removed.
    pub fn sweep(&self) -> Result<usize> {
        let mut removed = 0;
        for sub in ["ips", "attachments"] {
            let dir = self.store.dir.join(sub);
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let stale = if name.starts_with(".tmp-") {
                    true
                } else if sub == "attachments" {
                    match name.split_once(':') {
                        Some((cid, ifname)) => self.lookup(cid, ifname)?.is_none(),
                        None => true,
                    }
                } else {
                    false
                };
                if stale {
                    remove_optional(&entry.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Whether the store accepts writes (STATUS).
    pub fn probe_writable(&self) -> Result<()> {
        let path = self.store.dir.join(".status-probe");
        write_atomic(&path, "ok\n")?;
        remove_optional(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pool(s: &str) -> AddressPool {
        AddressPool::new(s.parse().unwrap()).unwrap()
    }

    #[test]
    fn allocate_is_stable_per_attachment_and_unique_across() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "net");
        let l = store.lock().unwrap();
        let p = pool("10.244.1.0/24");
        let (a, fresh) = l.allocate(&p, "c1", "eth0").unwrap();
        assert!(fresh);
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(l.allocate(&p, "c1", "eth0").unwrap(), (a, false));
        let (b, _) = l.allocate(&p, "c1", "eth1").unwrap();
        assert_ne!(a, b);
        assert_eq!(l.lookup("c1", "eth1").unwrap(), Some(b));
        assert_eq!(l.list().unwrap().len(), 2);
    }

    #[test]
    fn release_then_no_immediate_reuse_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "net");
        let l = store.lock().unwrap();
        let p = pool("10.244.1.0/24");
        let (a, _) = l.allocate(&p, "c1", "eth0").unwrap();
        assert_eq!(l.release("c1", "eth0").unwrap(), Some(a));
        assert_eq!(l.release("c1", "eth0").unwrap(), None);
        assert_eq!(l.release("never", "eth0").unwrap(), None);
        let (b, _) = l.allocate(&p, "c2", "eth0").unwrap();
        assert_ne!(a, b, "a just-released address came straight back");
    }

    #[test]
    fn full_subnet_is_a_clear_error_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "net");
        let l = store.lock().unwrap();
        let p = pool("10.0.0.0/29");
        let mut seen = HashSet::new();
        for i in 0..5 {
            assert!(seen.insert(l.allocate(&p, &format!("c{i}"), "eth0").unwrap().0));
        }
        let before = l.list().unwrap();
        let e = l.allocate(&p, "c9", "eth0").unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/29 is full"), "{e}");
        assert_eq!(l.list().unwrap(), before);
        assert_eq!(l.lookup("c9", "eth0").unwrap(), None);
    }

    #[test]
    fn crash_between_index_and_reservation_leaves_no_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "net");
        let l = store.lock().unwrap();
        // An index written, the reservation never made: as if killed in between.
        write_atomic(&l.attachment_path("c1", "eth0"), "10.244.1.2\n").unwrap();
        assert_eq!(l.lookup("c1", "eth0").unwrap(), None);
        let p = pool("10.244.1.0/24");
        assert_eq!(l.allocate(&p, "c2", "eth0").unwrap().0, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(l.lookup("c1", "eth0").unwrap(), None, "stale index must not claim c2's address");
        assert_eq!(l.sweep().unwrap(), 1);
    }

    #[test]
    fn a_reboot_forgets_every_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool("10.244.1.0/24");
        let before = Store::for_boot(dir.path(), "net", "boot-1");
        before.lock().unwrap().allocate(&p, "c1", "eth0").unwrap();
        assert_eq!(before.lock().unwrap().list().unwrap().len(), 1, "same boot: kept");
        let after = Store::for_boot(dir.path(), "net", "boot-2");
        let l = after.lock().unwrap();
        assert!(l.list().unwrap().is_empty());
        assert_eq!(l.lookup("c1", "eth0").unwrap(), None);
    }

    #[test]
    fn unreadable_reservations_are_listed_without_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "net");
        let l = store.lock().unwrap();
        std::fs::write(l.ip_path(Ipv4Addr::new(10, 244, 1, 9)), "").unwrap();
        assert_eq!(l.list().unwrap(), vec![Reservation { ip: Ipv4Addr::new(10, 244, 1, 9), owner: None }]);
        l.release_ip(Ipv4Addr::new(10, 244, 1, 9)).unwrap();
        assert!(l.list().unwrap().is_empty());
    }

    #[test]
    fn del_of_unknown_store_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "net");
        assert!(store.lock_existing().unwrap().is_none());
        assert!(!store.dir().exists());
    }
}
