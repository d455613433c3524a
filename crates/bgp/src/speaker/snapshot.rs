//! What the agent sees: the best route per prefix over all peers, and each session's status.

use crate::session::State;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::SystemTime;

/// Everything learned, as of one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Best route per prefix: not stale first, then shortest AS path, then lowest peer address.
    pub routes: BTreeMap<Ipv4Net, Route>,
    /// One entry per configured peer, by peer address.
    pub sessions: Vec<SessionStatus>,
    /// Every peer has sent End-of-RIB, or failed to come up within our restart time: routes
    /// a restart left in the kernel and not in `routes` can now be deleted.
    pub synced: bool,
}

/// A route learned from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination.
    pub prefix: Ipv4Net,
    /// Where to send traffic for it.
    pub next_hop: Ipv4Addr,
    /// The peer it came from.
    pub peer: Ipv4Addr,
    /// That peer's name.
    pub peer_name: String,
    /// The ASes it went through, nearest first.
    pub as_path: Vec<u32>,
    /// Kept from before the peer restarted; not yet confirmed.
    pub stale: bool,
}

/// The state of one peer's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// The peer's address.
    pub peer: Ipv4Addr,
    /// The peer's name (node or router).
    pub name: String,
    /// The peer's configured AS.
    pub remote_as: u32,
    /// The session state.
    pub state: State,
    /// When the state last changed.
    pub since: SystemTime,
    /// Routes learned from the peer.
    pub prefixes_received: usize,
    /// Prefixes the peer has from us.
    pub prefixes_sent: usize,
    /// The peer restarts gracefully (its routes survive a dropped connection).
    pub graceful_restart: bool,
    /// The last problem, as a sentence an operator can act on.
    pub last_error: Option<String>,
}

/// One peer's contribution, as its task last published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PeerView {
    pub(super) status: SessionStatus,
    pub(super) routes: Vec<Route>,
    pub(super) synced: bool,
}

/// Sorts routes worst-last: fresh before stale, shorter AS path, lower peer address.
fn rank(r: &Route) -> (bool, usize, Ipv4Addr) {
    (r.stale, r.as_path.len(), r.peer)
}

/// Builds the snapshot from every peer's view.
pub(super) fn build<'a>(views: impl Iterator<Item = &'a PeerView>) -> Snapshot {
    let mut snapshot = Snapshot { synced: true, ..Snapshot::default() };
    for view in views {
        snapshot.sessions.push(view.status.clone());
        snapshot.synced &= view.synced;
        for route in &view.routes {
            match snapshot.routes.get(&route.prefix) {
                Some(best) if rank(best) <= rank(route) => {}
                _ => {
                    snapshot.routes.insert(route.prefix, route.clone());
                }
            }
        }
    }
    snapshot.sessions.sort_by_key(|s| s.peer);
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(peer: [u8; 4], path: Vec<u32>, stale: bool) -> Route {
        Route {
            prefix: "10.244.1.0/24".parse().unwrap(),
            next_hop: Ipv4Addr::from(peer),
            peer: Ipv4Addr::from(peer),
            peer_name: String::new(),
            as_path: path,
            stale,
        }
    }

    fn view(routes: Vec<Route>) -> PeerView {
        PeerView {
            status: SessionStatus {
                peer: routes[0].peer,
                name: String::new(),
                remote_as: 1,
                state: State::Established,
                since: SystemTime::UNIX_EPOCH,
                prefixes_received: routes.len(),
                prefixes_sent: 0,
                graceful_restart: false,
                last_error: None,
            },
            routes,
            synced: true,
        }
    }

    #[test]
    fn best_route_prefers_fresh_then_short_then_low_peer() {
        let views = [
            view(vec![route([10, 0, 0, 1], vec![1], true)]),
            view(vec![route([10, 0, 0, 3], vec![1, 2], false)]),
            view(vec![route([10, 0, 0, 4], vec![3], false)]),
            view(vec![route([10, 0, 0, 2], vec![4], false)]),
        ];
        let snap = build(views.iter());
        let best = &snap.routes[&"10.244.1.0/24".parse().unwrap()];
        assert_eq!(best.peer, Ipv4Addr::new(10, 0, 0, 2));
        assert!(snap.synced);
        assert_eq!(snap.sessions.len(), 4);
    }
}
