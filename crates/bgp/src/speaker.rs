//! The tokio driver: one listener for the peers that connect in, one task per peer that
//! connects out and runs its `Session`, and a watch channel with the merged `Snapshot`.
//! `set_peers` and `set_prefixes` reconcile; `shutdown` says cease to everyone.

mod conn;
mod peer;
mod snapshot;

pub use snapshot::{Route, SessionStatus, Snapshot};

use crate::wire::cease;
use ipnet::Ipv4Net;
use peer::{Command, PeerTask};
use snapshot::PeerView;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How the speaker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier (normally the node's IPv4 address).
    pub router_id: Ipv4Addr,
    /// Where to listen for peers, normally 0.0.0.0:179. With a specific address, outgoing
    /// connections leave from it too.
    pub listen: SocketAddr,
    /// Hold time we propose, in seconds (0: no keepalives).
    pub hold_time: u16,
    /// How long peers should keep our routes when we restart, in seconds (at most 4095).
    pub restart_time: u16,
    /// We have just restarted and the kernel still has our forwarding state: say so (R bit).
    pub restarting: bool,
    /// Wait between connection attempts (in the lab about 1 s).
    pub connect_retry: Duration,
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its address; connections in are accepted only from configured addresses.
    pub addr: Ipv4Addr,
    /// Its BGP port, normally 179.
    pub port: u16,
    /// The AS it must have.
    pub remote_as: u32,
    /// Node or router name, for status.
    pub name: String,
}

/// Why the speaker could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something else listens on the address.
    #[error(
        "cannot listen for BGP on {addr}: the address is already in use (is BIRD, another BGP daemon or a second flatnet agent running on this node? stop it, or give flatnet another listen address)"
    )]
    AddrInUse {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Not allowed to bind a privileged port.
    #[error("cannot listen for BGP on {addr}: permission denied (port 179 needs root or CAP_NET_BIND_SERVICE)")]
    PermissionDenied {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Any other failure to listen.
    #[error("cannot listen for BGP on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
}

/// A running BGP speaker. Dropping it without `shutdown` closes every connection without a
/// NOTIFICATION, as a crash would: graceful-restart peers keep our routes.
pub struct Speaker {
    shared: Arc<Shared>,
    listener: JoinHandle<()>,
    listen_addr: SocketAddr,
}

/// State shared by the handle, the listener and the peer tasks.
struct Shared {
    cfg: SpeakerConfig,
    runtime: tokio::runtime::Handle,
    inner: Mutex<Inner>,
    snapshot: watch::Sender<Arc<Snapshot>>,
}

#[derive(Default)]
struct Inner {
    peers: BTreeMap<Ipv4Addr, PeerHandle>,
    views: BTreeMap<Ipv4Addr, PeerView>,
    prefixes: BTreeSet<Ipv4Net>,
    next_id: u64,
}

struct PeerHandle {
    cfg: PeerConfig,
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

impl Speaker {
    /// Binds the listener and starts accepting; add peers with `set_peers`.
    pub async fn start(cfg: SpeakerConfig) -> Result<Speaker, Error> {
        let addr = cfg.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => Error::AddrInUse { addr },
            io::ErrorKind::PermissionDenied => Error::PermissionDenied { addr },
            _ => Error::Listen { addr, source },
        })?;
        let listen_addr = listener.local_addr().map_err(|source| Error::Listen { addr, source })?;
        info!(%listen_addr, local_as = cfg.local_as, router_id = %cfg.router_id, "BGP speaker listening");
        let (snapshot, _) = watch::channel(Arc::new(Snapshot { synced: true, ..Snapshot::default() }));
        let shared = Arc::new(Shared {
            cfg,
            runtime: tokio::runtime::Handle::current(),
            inner: Mutex::new(Inner::default()),
            snapshot,
        });
        let listener = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Speaker { shared, listener, listen_addr })
    }

    /// The address the listener is bound to (useful when `listen` had port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Reconciles the peers: new ones get a session, removed (or changed) ones are told
    /// "cease / peer de-configured" and their routes dropped, unchanged ones are left alone.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) {
        let wanted: BTreeMap<Ipv4Addr, PeerConfig> = peers.into_iter().map(|p| (p.addr, p)).collect();
        let mut inner = self.shared.lock();
        let gone: Vec<Ipv4Addr> =
            inner.peers.iter().filter(|(addr, h)| wanted.get(addr) != Some(&h.cfg)).map(|(addr, _)| *addr).collect();
        for addr in gone {
            if let Some(handle) = inner.peers.remove(&addr) {
                info!(peer = %addr, name = %handle.cfg.name, "BGP peer removed");
                let _ = handle.commands.send(Command::Stop(cease::PEER_DECONFIGURED));
            }
            inner.views.remove(&addr);
        }
        for (addr, cfg) in wanted {
            if inner.peers.contains_key(&addr) {
                continue;
            }
            info!(peer = %addr, name = %cfg.name, remote_as = cfg.remote_as, "BGP peer added");
            inner.next_id += 1;
            let id = inner.next_id;
            let (commands, rx) = mpsc::unbounded_channel();
            let task = PeerTask::new(Arc::clone(&self.shared), id, cfg.clone(), inner.prefixes.clone(), rx);
            inner.views.insert(addr, task.view());
            let task = self.shared.runtime.spawn(task.run());
            inner.peers.insert(addr, PeerHandle { cfg, id, commands, task });
        }
        self.shared.publish(&inner);
    }

    /// Sets the prefixes we announce to every peer, with ourselves as next hop.
    pub fn set_prefixes(&self, prefixes: Vec<Ipv4Net>) {
        let prefixes: BTreeSet<Ipv4Net> = prefixes.into_iter().map(|p| p.trunc()).collect();
        let mut inner = self.shared.lock();
        if inner.prefixes == prefixes {
            return;
        }
        info!(?prefixes, "BGP prefixes to announce");
        for handle in inner.peers.values() {
            let _ = handle.commands.send(Command::SetPrefixes(prefixes.clone()));
        }
        inner.prefixes = prefixes;
    }

    /// Follows the learned routes and session states.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.shared.snapshot.subscribe()
    }

    /// Tells every peer "cease / administratively shut down" and stops.
    pub async fn shutdown(self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut inner = self.shared.lock();
            let peers = std::mem::take(&mut inner.peers);
            peers
                .into_values()
                .map(|h| {
                    let _ = h.commands.send(Command::Stop(cease::ADMIN_SHUTDOWN));
                    h.task
                })
                .collect()
        };
        self.listener.abort();
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                abort.abort();
            }
        }
        info!("BGP speaker shut down");
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.listener.abort();
        for handle in self.shared.lock().peers.values() {
            handle.task.abort();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take BGP down with it: the data is still consistent.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a peer task's latest view, unless that peer was removed since.
    fn update_view(&self, addr: Ipv4Addr, id: u64, view: PeerView) {
        let mut inner = self.lock();
        if inner.peers.get(&addr).is_none_or(|h| h.id != id) || inner.views.get(&addr) == Some(&view) {
            return;
        }
        inner.views.insert(addr, view);
        self.publish(&inner);
    }

    fn publish(&self, inner: &Inner) {
        let snapshot = snapshot::build(inner.views.values());
        self.snapshot.send_if_modified(|current| {
            if **current == snapshot {
                return false;
            }
            *current = Arc::new(snapshot);
            true
        });
    }

    /// The peer task for `addr`, if it is configured.
    fn commands_for(&self, addr: Ipv4Addr) -> Option<mpsc::UnboundedSender<Command>> {
        self.lock().peers.get(&addr).map(|h| h.commands.clone())
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(%err, "BGP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let commands = match from {
            SocketAddr::V4(v4) => shared.commands_for(*v4.ip()),
            SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().and_then(|ip| shared.commands_for(ip)),
        };
        match commands {
            Some(commands) => {
                let _ = commands.send(Command::Inbound(stream));
            }
            None => info!(%from, "refusing BGP connection from an address that is not a configured peer"),
        }
    }
}
