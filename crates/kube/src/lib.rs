//! flatnet's side of the Kubernetes API, below the agent, the DNS server and the lab:
//! list/watch plumbing (`watch`), reading Nodes (`node`), and the converters from API
//! objects to what the model plans with (`proxy`, `policy`, `dns`). One converter per
//! object and consumer, so the agent enforces and the lab API validates with one code.

pub mod dns;
pub mod node;
pub mod policy;
pub mod proxy;
pub mod watch;
