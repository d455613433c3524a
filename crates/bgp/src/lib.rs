//! flatnet's BGP-4 speaker: a node announces its own prefixes (its Pod CIDR) to its peers
//! and learns their IPv4 unicast routes; it never passes learned routes on. `wire` is the
//! codec, `session` the per-peer state machine, `speaker` the tokio driver the agent uses.

pub mod session;
pub mod speaker;
pub mod wire;

pub use session::State;
pub use speaker::{Error, PeerConfig, Route, SessionStatus, Snapshot, Speaker, SpeakerConfig};
