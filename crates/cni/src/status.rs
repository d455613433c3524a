//! STATUS (CNI 1.1): ready to add pods when the node subnet is known and the IPAM
//! store takes writes; error 50 otherwise.

use crate::store::Store;
use crate::subnet;
use flatnet_model::cni::{CniError, ErrorCode, NetConf};
use std::path::Path;

pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let not_ready =
        |msg: String, details: String| CniError::new(ErrorCode::NotAvailable, msg, details);
    subnet::resolve(conf).map_err(|e| not_ready(e.msg, e.details))?;
    let store = Store::new(Path::new(&conf.data_dir), &conf.name);
    store.lock().and_then(|l| l.probe_writable()).map_err(|e| {
        not_ready(
            format!("the IPAM store is not writable: {e}"),
            "check dataDir".into(),
        )
    })
}
