//! GC (CNI 1.1): release every address, and remove every host veth, that belongs to an
//! attachment not in `cni.dev/valid-attachments`. This reclaims what crashed runtimes
//! or plugins leaked.

use crate::del::{kernel_error, store_error};
use crate::store::Store;
use flatnet_kernel::{Netlink, link};
use flatnet_model::cni::{Attachment, CniError, ErrorCode, NetConf};
use flatnet_model::names::{host_veth_name, parse_attachment_alias};
use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub addresses: usize,
    pub devices: usize,
}

pub fn gc(conf: &NetConf) -> Result<Collected, CniError> {
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
        .map(
            |Attachment {
                 container_id,
                 ifname,
             }| (container_id.as_str(), ifname.as_str()),
        )
        .collect();
    let mut nl = Netlink::open().map_err(kernel_error)?;
    let mut collected = Collected::default();

    let store = Store::new(Path::new(&conf.data_dir), &conf.name);
    if let Some(locked) = store.lock_existing().map_err(store_error)? {
        for r in locked.list().map_err(store_error)? {
            if !valid.contains(&(r.container_id.as_str(), r.ifname.as_str())) {
                link::delete(&mut nl, &host_veth_name(&r.container_id, &r.ifname))
                    .map_err(kernel_error)?;
                locked
                    .release(&r.container_id, &r.ifname)
                    .map_err(store_error)?;
                collected.addresses += 1;
            }
        }
        locked.sweep().map_err(store_error)?;
    }

    // Devices whose address is gone but which survived (an ADD killed part way).
    let Some(bridge) = link::get(&mut nl, &conf.bridge).map_err(kernel_error)? else {
        return Ok(collected);
    };
    for dev in link::list(&mut nl).map_err(kernel_error)? {
        let owner = dev.alias.as_deref().and_then(parse_attachment_alias);
        if let Some(owner) = owner
            && dev.master == Some(bridge.index)
            && !valid.contains(&owner)
            && link::delete(&mut nl, &dev.name).map_err(kernel_error)?
        {
            collected.devices += 1;
        }
    }
    Ok(collected)
}
