//! flatnet's BGP-4 speaker: a node announces its own prefixes (its Pod CIDR) to its peers
//! and learns their IPv4 unicast routes; it never passes learned routes on. `wire` is the
//! codec, `session` the per-peer state machine, `speaker` the tokio driver the agent uses.
//!
//! A BIRD 2 peer (tested with 2.0.12) that works with it, eBGP, BIRD in AS 65000 at
//! 10.0.0.1 and the node in AS 65001 at 10.0.0.2:
//!
//! ```text
//! protocol bgp node_a {
//!   local 10.0.0.1 as 65000;
//!   neighbor 10.0.0.2 as 65001;
//!   hold time 9;                # the session uses the smaller of both hold times
//!   connect retry time 1;
//!   error wait time 1, 2;       # reconnect soon after an error (default 60 s)
//!   graceful restart on;        # keep the node's routes while its agent restarts
//!   ipv4 { import all; export all; };
//! }
//! ```
//!
//! For iBGP (same AS on both sides) add `direct;` so BIRD takes the node's address as a
//! direct next hop; `passive on;` leaves the connecting to the node.

pub mod session;
pub mod speaker;
pub mod wire;

pub use session::State;
pub use speaker::{Error, PeerConfig, Route, SessionStatus, Snapshot, Speaker, SpeakerConfig};
