//! The flatnet CNI plugin: the verbs a container runtime executes (ADD, DEL, CHECK, GC,
//! STATUS, VERSION), the IPAM store they share, and the runtime side of the protocol
//! (executing plugins and conflists) that the lab kubelet, tests and benchmarks use.

pub mod add;
pub mod check;
pub mod del;
pub mod exec;
pub mod gc;
pub mod install;
pub mod plugin;
pub mod register;
pub mod status;
pub mod store;
pub mod subnet;

pub use plugin::{main_from_env, run};
