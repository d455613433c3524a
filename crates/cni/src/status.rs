//! STATUS (CNI 1.1): ready to add pods when the node subnet is known, the IPAM store
//! takes writes and the subnet has a free address; error 50 otherwise.

use crate::store::Store;
use crate::subnet;
use flatnet_model::cni::{CniError, ErrorCode, NetConf};
use std::path::Path;

pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let not_ready = |msg: String, details: &str| CniError::new(ErrorCode::NotAvailable, msg, details);
    let node = subnet::resolve(conf).map_err(|e| not_ready(e.msg, &e.details))?;
    let store = Store::new(Path::new(&conf.data_dir), &conf.name);
    let locked = store.lock().map_err(|e| not_ready(format!("the IPAM store is not usable: {e}"), "check dataDir"))?;
    locked.probe_writable().map_err(|e| not_ready(format!("the IPAM store is not writable: {e}"), "check dataDir"))?;
    let used = locked.list().map_err(|e| not_ready(e.to_string(), "check dataDir"))?.len();
    if used as u32 >= node.pool.capacity() {
        return Err(not_ready(
            format!("subnet {} is full: all {} pod addresses are in use", node.pool.subnet, node.pool.capacity()),
            "delete pods on this node, or give the node a larger Pod CIDR",
        ));
    }
    Ok(())
}
