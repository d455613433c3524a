//! The CNI specification (1.1.0 and the older versions runtimes still send) as data:
//! versions, error objects, network configuration, results, and the invocation a
//! runtime makes through environment variables.

pub mod config;
pub mod error;
pub mod invocation;
pub mod result;
pub mod version;

pub use config::{Attachment, NetConf, TeardownConf};
pub use error::{CniError, ErrorCode};
pub use invocation::{Command, Invocation};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::CniVersion;
