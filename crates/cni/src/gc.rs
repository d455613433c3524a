//! GC (CNI 1.1): release every address, and remove every host veth, that belongs to an
//! attachment of this network not in `cni.dev/valid-attachments`. This reclaims what
//! crashed runtimes or plugins leaked. Like the spec asks, it removes as much as it can
//! and reports what it could not.

use crate::del::{kernel_error, store_error};
use crate::store::Store;
use flatnet_kernel::{Netlink, link};
use flatnet_model::cni::{Attachment, CniError, ErrorCode, TeardownConf};
use flatnet_model::names::{host_veth_name, parse_attachment_alias};
use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub addresses: usize,
    pub devices: usize,
}

pub fn gc(conf: &TeardownConf) -> Result<Collected, CniError> {
    let valid: HashSet<(&str, &str)> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "GC needs cni.dev/valid-attachments",
                "the runtime lists the attachments that are still in use",
            )
        })?
        .iter()
        .map(|Attachment { container_id, ifname }| (container_id.as_str(), ifname.as_str()))
        .collect();
    let is_valid = |cid: &str, ifname: &str| valid.contains(&(cid, ifname));
    let mut nl = Netlink::open().map_err(kernel_error)?;
    let mut collected = Collected::default();
    let mut errors: Vec<String> = Vec::new();

    // Reservations: by address, so one whose owner cannot be read is reclaimed too.
    let store = Store::new(Path::new(&conf.data_dir), &conf.name);
    if let Some(locked) = store.lock_existing().map_err(store_error)? {
        for r in locked.list().map_err(store_error)? {
            if let Some((cid, ifname)) = &r.owner {
                if is_valid(cid, ifname) {
                    continue;
                }
                if let Err(e) = link::delete(&mut nl, &host_veth_name(cid, ifname)) {
                    errors.push(e.to_string());
                }
            }
            match locked.release_ip(r.ip) {
                Ok(()) => collected.addresses += 1,
                Err(e) => errors.push(e.to_string()),
            }
        }
        if let Err(e) = locked.sweep() {
            errors.push(e.to_string());
        }
    }

    // Devices of this network whose attachment is not valid, with or without an address
    // (an ADD killed part way, a reaper that died). Other networks' ports are theirs.
    if let Some(bridge) = link::get(&mut nl, &conf.bridge).map_err(kernel_error)? {
        for dev in link::list(&mut nl).map_err(kernel_error)? {
            let Some((network, cid, ifname)) = dev.alias.as_deref().and_then(parse_attachment_alias) else {
                continue;
            };
            if network != conf.name || dev.master != Some(bridge.index) || is_valid(cid, ifname) {
                continue;
            }
            match link::delete(&mut nl, &dev.name) {
                Ok(true) => collected.devices += 1,
                Ok(false) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    if errors.is_empty() {
        Ok(collected)
    } else {
        Err(CniError::plugin(format!("GC could not remove everything: {}", errors.join("; ")), ""))
    }
}
