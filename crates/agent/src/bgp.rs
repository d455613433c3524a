//! The bgp backend's control side: the BGP speaker (started once this node's address is
//! known, started again if its AS or address changes), its peers (the other nodes in a
//! mesh, or the ones configured), and what it learned, handed to the planner. The speaker
//! announces this node's Pod CIDR and nothing else.

use crate::dataplane::BgpRoutes;
use crate::status::{BgpRouteView, BgpSessionView, BgpView};
use flatnet_bgp::{PeerConfig, Snapshot, Speaker, SpeakerConfig};
use flatnet_model::bgp::{NodeBgp, PeerSpec};
use flatnet_model::node_network::LearnedRoute;
use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::watch;
use tracing::info;

/// How long a restarted agent waits at most for its peers' full tables before it removes
/// BGP routes a previous run left (the restart time it asks peers to keep its routes).
pub const RESTART_TIME: u16 = 120;

/// What the speaker is started with besides the node's settings.
pub struct Session {
    /// The node's address: its router ID, and the next hop it announces.
    pub router_id: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub hold_time: u16,
    pub port: u16,
    /// BGP routes of an earlier run are in the kernel: ask peers to keep ours (R bit).
    pub restarting: bool,
}

struct Running {
    local_as: u32,
    router_id: Ipv4Addr,
    speaker: Speaker,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    forward: tokio::task::JoinHandle<()>,
}

/// The speaker and what the node reconciler needs of it.
pub struct Bgp {
    running: Option<Running>,
    /// Called when the speaker's routes or sessions change: wakes the node reconciler.
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl Bgp {
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Self {
        Self { running: None, wake: Arc::new(wake) }
    }

    /// Whether the speaker runs, with this AS and router ID.
    pub fn runs_as(&self, local_as: u32, router_id: Ipv4Addr) -> bool {
        self.running.as_ref().is_some_and(|r| r.local_as == local_as && r.router_id == router_id)
    }

    /// Makes the speaker match `settings` and `peers`, announcing the node's Pod CIDR, and
    /// returns what it has learned.
    pub async fn sync(&mut self, settings: &NodeBgp, peers: &[PeerSpec], s: &Session) -> Result<BgpRoutes, String> {
        let (router_id, pod_cidr, hold_time, port, restarting) =
            (s.router_id, s.pod_cidr, s.hold_time, s.port, s.restarting);
        if !self.runs_as(settings.local_as, router_id) {
            if let Some(old) = self.running.take() {
                info!("BGP: AS or router ID changed; restarting the speaker");
                old.forward.abort();
                old.speaker.shutdown().await;
            }
            let cfg = SpeakerConfig {
                local_as: settings.local_as,
                router_id,
                listen: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
                hold_time,
                restart_time: RESTART_TIME,
                restarting,
                connect_retry: Duration::from_secs(1),
            };
            let speaker = Speaker::start(cfg).await.map_err(|e| format!("BGP: {e}"))?;
            info!(
                "BGP speaker up: AS {}, router ID {router_id}, port {port}{}",
                settings.local_as,
                if restarting { ", restarting (routes kept until the peers resend theirs)" } else { "" }
            );
            let mut rx = speaker.subscribe();
            let wake = self.wake.clone();
            let forward = tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    wake();
                }
            });
            self.running = Some(Running {
                local_as: settings.local_as,
                router_id,
                snapshot: speaker.subscribe(),
                speaker,
                forward,
            });
        }
        let r = self.running.as_ref().expect("started above");
        // Prefixes first: a new peer's session starts with them.
        r.speaker.set_prefixes(vec![pod_cidr]);
        r.speaker.set_peers(
            peers
                .iter()
                .map(|p| PeerConfig { addr: p.addr, port, remote_as: p.remote_as, name: p.name.clone() })
                .collect(),
        );
        let snap = r.snapshot.borrow().clone();
        Ok(BgpRoutes {
            learned: snap
                .routes
                .values()
                .map(|r| LearnedRoute { prefix: r.prefix, next_hop: r.next_hop, peer: r.peer_name.clone() })
                .collect(),
            synced: snap.synced,
        })
    }

    /// The speaker as `flatnet status` shows it.
    pub fn view(&self, settings: &NodeBgp) -> Option<BgpView> {
        let r = self.running.as_ref()?;
        let snap = r.snapshot.borrow().clone();
        Some(BgpView {
            local_as: r.local_as,
            router_id: r.router_id.to_string(),
            peering: settings.peering.to_string(),
            sessions: snap
                .sessions
                .iter()
                .map(|s| BgpSessionView {
                    peer: s.peer.to_string(),
                    name: s.name.clone(),
                    remote_as: s.remote_as,
                    state: format!("{:?}", s.state),
                    since: s.since.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
                    prefixes_received: s.prefixes_received as u64,
                    prefixes_sent: s.prefixes_sent as u64,
                    graceful_restart: s.graceful_restart,
                    last_error: s.last_error.clone(),
                })
                .collect(),
            routes: snap
                .routes
                .values()
                .map(|r| BgpRouteView {
                    prefix: r.prefix.to_string(),
                    next_hop: r.next_hop.to_string(),
                    peer: r.peer_name.clone(),
                    as_path: r.as_path.clone(),
                    stale: r.stale,
                })
                .collect(),
        })
    }
}
