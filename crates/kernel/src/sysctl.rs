//! sysctls, written only when they differ (a write to /proc/sys costs more than a read).
//! Network sysctls belong to the namespace of the process that opens them.

use crate::error::{KernelError, Result};

pub fn ensure(key: &str, value: &str) -> Result<()> {
    ensure_in(std::path::Path::new("/proc/sys"), key, value)
}

/// Like [`ensure`], under `root` instead of /proc/sys: the host's, mounted writable into
/// a container whose own /proc/sys is read-only.
pub fn ensure_in(root: &std::path::Path, key: &str, value: &str) -> Result<()> {
    let path = root.join(key.replace('.', "/"));
    match std::fs::read_to_string(&path) {
        Ok(cur) if cur.trim() == value => Ok(()),
        _ => std::fs::write(&path, value).map_err(|e| KernelError::refused(format!("set {key}={value}"), e)),
    }
}

pub fn read(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| KernelError::refused(format!("read {key}"), e))
}
