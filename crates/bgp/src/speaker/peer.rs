//! One peer's task: runs its `Session`, owns its connection, connects out, takes the
//! connections the peer opens to us, and settles collisions (RFC 4271 §6.8): of two
//! connections, the one opened by the speaker with the higher BGP identifier stays.

use super::conn::{self, Conn, Read};
use super::snapshot::{PeerView, Route, SessionStatus};
use super::{PeerConfig, Shared};
use crate::session::{Action, Event, Session, SessionConfig, State};
use crate::wire::{Message, Notification, Open, cease, error_code};
use ipnet::Ipv4Net;
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// What the speaker asks of a peer task.
pub(super) enum Command {
    /// The peer connected to us.
    Inbound(TcpStream),
    /// Announce these prefixes.
    SetPrefixes(BTreeSet<Ipv4Net>),
    /// Say cease with this subcode and end.
    Stop(u8),
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// What woke the task up.
enum Wake {
    Command(Option<Command>),
    Connected(io::Result<TcpStream>),
    Read(Read),
    PendingRead(Read),
    Tick,
}

pub(super) struct PeerTask {
    shared: Arc<Shared>,
    id: u64,
    peer: PeerConfig,
    session: Session,
    commands: mpsc::UnboundedReceiver<Command>,
    /// The connection the session runs on.
    conn: Option<Conn>,
    /// A second connection from the peer, waiting for its OPEN to settle a collision.
    pending: Option<Conn>,
    connecting: Option<Connecting>,
    since: SystemTime,
    last_state: State,
}

impl PeerTask {
    pub(super) fn new(
        shared: Arc<Shared>,
        id: u64,
        peer: PeerConfig,
        prefixes: BTreeSet<Ipv4Net>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> PeerTask {
        let cfg = &shared.cfg;
        let now = Instant::now();
        let mut session = Session::new(
            SessionConfig {
                local_as: cfg.local_as,
                remote_as: peer.remote_as,
                router_id: cfg.router_id,
                peer: SocketAddr::new(peer.addr.into(), peer.port),
                hold_time: cfg.hold_time,
                restart_time: cfg.restart_time,
                restarting: cfg.restarting,
                connect_retry: cfg.connect_retry,
            },
            now,
        );
        session.handle(now, Event::SetPrefixes(prefixes));
        PeerTask {
            shared,
            id,
            peer,
            last_state: session.state(),
            session,
            commands,
            conn: None,
            pending: None,
            connecting: None,
            since: SystemTime::now(),
        }
    }

    /// The status and routes as the snapshot shows them.
    pub(super) fn view(&self) -> PeerView {
        let s = &self.session;
        PeerView {
            status: SessionStatus {
                peer: self.peer.addr,
                name: self.peer.name.clone(),
                remote_as: self.peer.remote_as,
                state: s.state(),
                since: self.since,
                prefixes_received: s.prefixes_received(),
                prefixes_sent: s.prefixes_sent(),
                graceful_restart: s.peer_graceful_restart(),
                last_error: s.last_error().map(str::to_owned),
            },
            routes: s
                .routes()
                .map(|(prefix, r)| Route {
                    prefix: *prefix,
                    next_hop: r.next_hop,
                    peer: self.peer.addr,
                    peer_name: self.peer.name.clone(),
                    as_path: r.as_path.clone(),
                    stale: r.stale,
                })
                .collect(),
            synced: s.synced(),
        }
    }

    pub(super) async fn run(mut self) {
        self.step(Event::Start).await;
        loop {
            let deadline = self.session.next_deadline().map(tokio::time::Instant::from_std);
            let wake = tokio::select! {
                cmd = self.commands.recv() => Wake::Command(cmd),
                res = wait_connect(&mut self.connecting) => Wake::Connected(res),
                read = read(&mut self.conn) => Wake::Read(read),
                read = read(&mut self.pending) => Wake::PendingRead(read),
                () = sleep_until(deadline) => Wake::Tick,
            };
            match wake {
                Wake::Command(None) => return,
                Wake::Command(Some(Command::Stop(subcode))) => {
                    self.step(Event::Stop { subcode }).await;
                    if let Some(pending) = self.pending.take() {
                        pending.close().await;
                    }
                    return;
                }
                Wake::Command(Some(Command::SetPrefixes(p))) => self.step(Event::SetPrefixes(p)).await,
                Wake::Command(Some(Command::Inbound(stream))) => self.inbound(stream).await,
                Wake::Connected(res) => self.connected(res).await,
                Wake::Read(Read::Message(m)) => self.step(Event::Received(m)).await,
                Wake::Read(Read::Malformed(e)) => self.step(Event::Malformed(e)).await,
                Wake::Read(Read::Closed) => {
                    self.conn = None;
                    self.step(Event::TcpClosed).await;
                }
                Wake::PendingRead(read) => self.pending_read(read).await,
                Wake::Tick => self.step(Event::Tick).await,
            }
        }
    }

    /// Feeds the session and carries out what it asks, then publishes the new view.
    async fn step(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            let actions = self.session.handle(Instant::now(), event);
            for action in actions {
                match action {
                    Action::Connect => self.start_connect(),
                    Action::Send(message) => {
                        let Some(conn) = self.conn.as_mut() else { continue };
                        if let Err(err) = conn.send(&message).await {
                            debug!(peer = %self.peer.addr, %err, "BGP send failed");
                            self.conn = None;
                            events.push_back(Event::TcpClosed);
                        }
                    }
                    Action::Close => {
                        if let Some(conn) = self.conn.take() {
                            conn.close().await;
                        }
                    }
                    Action::RoutesChanged => {}
                }
            }
        }
        if self.session.state() != self.last_state {
            self.last_state = self.session.state();
            self.since = SystemTime::now();
        }
        self.shared.update_view(self.peer.addr, self.id, self.view());
    }

    fn start_connect(&mut self) {
        let local = match self.shared.cfg.listen {
            SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(*a.ip()),
            _ => None,
        };
        let peer = SocketAddrV4::new(self.peer.addr, self.peer.port);
        let timeout = self.shared.cfg.connect_retry.max(Duration::from_secs(5));
        self.connecting = Some(Box::pin(conn::connect(local, peer, timeout)));
    }

    async fn connected(&mut self, res: io::Result<TcpStream>) {
        self.connecting = None;
        let conn = res.and_then(|stream| Conn::new(stream, true));
        match conn {
            Ok(conn) if self.conn.is_none() => {
                let local_addr = conn.local;
                self.conn = Some(conn);
                self.step(Event::TcpConnected { local_addr }).await;
            }
            Ok(_) => {}
            Err(err) if self.pending.is_some() => {
                // The peer's own connection is waiting: it will do.
                debug!(peer = %self.peer.addr, %err, "BGP connect failed while the peer connects in");
            }
            Err(err) => self.step(Event::TcpFailed(err.kind())).await,
        }
    }

    async fn inbound(&mut self, stream: TcpStream) {
        let conn = match Conn::new(stream, false) {
            Ok(conn) => conn,
            Err(err) => return warn!(peer = %self.peer.addr, %err, "BGP inbound connection unusable"),
        };
        match self.session.state() {
            State::Idle => conn.close().await,
            State::Active => self.adopt(conn, None).await,
            State::Connect | State::OpenSent | State::OpenConfirm => {
                // Two connections: the peer's OPEN on the new one settles which stays.
                if let Some(old) = self.pending.replace(conn) {
                    old.close().await;
                }
            }
            State::Established if self.session.peer_graceful_restart() => {
                info!(peer = %self.peer.addr, "BGP peer reconnected while established: it restarted");
                if let Some(old) = self.conn.take() {
                    old.close().await;
                }
                self.adopt(conn, None).await;
            }
            State::Established => {
                let n = Message::Notification(Notification::new(error_code::CEASE, cease::COLLISION));
                conn.close_with(&n).await;
            }
        }
    }

    /// Makes `conn` the session's connection; `open` is the peer's OPEN already read on it.
    async fn adopt(&mut self, conn: Conn, open: Option<Open>) {
        self.connecting = None;
        let local_addr = conn.local;
        self.conn = Some(conn);
        self.step(Event::TcpConnected { local_addr }).await;
        if let Some(open) = open {
            self.step(Event::Received(Message::Open(open))).await;
        }
    }

    async fn pending_read(&mut self, read: Read) {
        let Some(pending) = self.pending.take() else { return };
        let collision = Message::Notification(Notification::new(error_code::CEASE, cease::COLLISION));
        let open = match read {
            Read::Message(Message::Open(open)) => open,
            _ => {
                pending.close().await;
                if self.session.state() == State::Connect && self.connecting.is_none() {
                    // Our own attempt already failed and the peer's went away: retry later.
                    self.step(Event::TcpFailed(io::ErrorKind::ConnectionAborted)).await;
                }
                return;
            }
        };
        let keep_existing = match (&self.conn, self.session.state()) {
            (None, _) => false,
            (Some(_), State::Established) => true,
            (Some(existing), _) => existing.outbound && self.shared.cfg.router_id > open.bgp_id,
        };
        if keep_existing {
            debug!(peer = %self.peer.addr, "BGP collision: keeping our connection");
            pending.close_with(&collision).await;
            return;
        }
        debug!(peer = %self.peer.addr, "BGP collision: keeping the peer's connection");
        if let Some(existing) = self.conn.take() {
            existing.close_with(&collision).await;
        }
        self.adopt(pending, Some(open)).await;
    }
}

async fn wait_connect(connecting: &mut Option<Connecting>) -> io::Result<TcpStream> {
    match connecting {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

async fn read(conn: &mut Option<Conn>) -> Read {
    match conn {
        Some(conn) => conn.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
