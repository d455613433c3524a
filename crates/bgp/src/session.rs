//! The per-peer BGP state machine (RFC 4271 §8) with graceful restart (RFC 4724), free of
//! I/O and clocks: the driver feeds it `Event`s with the current time and carries out the
//! `Action`s it returns. It owns the routes learned from its peer.

mod routes;
mod words;

#[cfg(test)]
mod tests;

use crate::wire::{
    AFI_IPV4, Capability, DecodeError, GrFamily, GracefulRestart, Message, Notification, Open, SAFI_UNICAST, Update,
    cease, error_code,
};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long to wait for the peer's OPEN once connected (RFC 4271 suggests 4 minutes).
const OPEN_HOLD: Duration = Duration::from_secs(240);

/// What one session is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our AS.
    pub local_as: u32,
    /// The AS the peer must have.
    pub remote_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// The peer's address and port, for messages.
    pub peer: SocketAddr,
    /// Hold time we propose, in seconds (0: no keepalives).
    pub hold_time: u16,
    /// How long we ask the peer to keep our routes when we restart, in seconds.
    pub restart_time: u16,
    /// We have just restarted: set the R bit in our first OPEN.
    pub restarting: bool,
    /// Wait between connection attempts.
    pub connect_retry: Duration,
}

/// The RFC 4271 session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Not started, or stopped.
    Idle,
    /// Connecting out.
    Connect,
    /// Waiting to retry (or for the peer to connect in).
    Active,
    /// Connected, our OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for the peer's KEEPALIVE.
    OpenConfirm,
    /// Exchanging routes.
    Established,
}

/// Something that happened to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Begin: connect out.
    Start,
    /// A TCP connection to the peer is up (ours or the peer's); `local_addr` is our end, the
    /// NEXT_HOP we announce. While another connection is open, the new one replaces it.
    TcpConnected {
        /// Our address on this connection.
        local_addr: Ipv4Addr,
    },
    /// Connecting out failed.
    TcpFailed(io::ErrorKind),
    /// A message arrived.
    Received(Message),
    /// Bytes arrived that do not decode.
    Malformed(DecodeError),
    /// The connection closed or broke without a NOTIFICATION.
    TcpClosed,
    /// Time passed; fire due timers.
    Tick,
    /// The prefixes we announce changed.
    SetPrefixes(BTreeSet<Ipv4Net>),
    /// Stop for good, telling the peer with a cease subcode (`wire::cease`).
    Stop {
        /// Cease subcode.
        subcode: u8,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Send a message on the current connection.
    Send(Message),
    /// Close the current connection.
    Close,
    /// The learned routes changed.
    RoutesChanged,
}

/// A route learned from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedRoute {
    /// Where to send the traffic.
    pub next_hop: Ipv4Addr,
    /// The ASes, flattened from the AS_PATH segments.
    pub as_path: Vec<u32>,
    /// Kept from before the peer restarted, not yet announced again.
    pub stale: bool,
}

/// One peer's session.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    state: State,
    since: Instant,
    created: Instant,
    local_addr: Option<Ipv4Addr>,
    retry_at: Option<Instant>,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    hold_time: u16,
    peer_id: Option<Ipv4Addr>,
    peer_gr: Option<GracefulRestart>,
    routes: BTreeMap<Ipv4Net, LearnedRoute>,
    stale_until: Option<Instant>,
    awaiting_eor: bool,
    synced: bool,
    announce: BTreeSet<Ipv4Net>,
    sent: BTreeSet<Ipv4Net>,
    last_error: Option<String>,
}

impl Session {
    /// A session in `Idle`; `Event::Start` begins it.
    pub fn new(cfg: SessionConfig, now: Instant) -> Self {
        Session {
            cfg,
            state: State::Idle,
            since: now,
            created: now,
            local_addr: None,
            retry_at: None,
            hold_at: None,
            keepalive_at: None,
            hold_time: 0,
            peer_id: None,
            peer_gr: None,
            routes: BTreeMap::new(),
            stale_until: None,
            awaiting_eor: false,
            synced: false,
            announce: BTreeSet::new(),
            sent: BTreeSet::new(),
            last_error: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When the state last changed.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The last error, as a sentence for an operator.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The peer's BGP identifier from its last OPEN on the current connection.
    pub fn peer_id(&self) -> Option<Ipv4Addr> {
        self.peer_id
    }

    /// Whether the peer can restart gracefully for IPv4 unicast (its routes survive a
    /// dropped connection).
    pub fn peer_graceful_restart(&self) -> bool {
        self.peer_gr.as_ref().is_some_and(|gr| ipv4_family(gr).is_some())
    }

    /// Learned routes, without those for prefixes we announce ourselves.
    pub fn routes(&self) -> impl Iterator<Item = (&Ipv4Net, &LearnedRoute)> {
        self.routes.iter().filter(|(p, _)| !self.announce.contains(p))
    }

    /// How many routes `routes` yields.
    pub fn prefixes_received(&self) -> usize {
        self.routes().count()
    }

    /// How many prefixes the peer has from us.
    pub fn prefixes_sent(&self) -> usize {
        self.sent.len()
    }

    /// Whether the peer has sent everything once (End-of-RIB, or established without
    /// graceful restart), or failed to within our restart time. It stays true.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The next time a `Tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let sync_at = (!self.synced).then(|| self.sync_deadline());
        [self.retry_at, self.hold_at, self.keepalive_at, self.stale_until, sync_at].into_iter().flatten().min()
    }

    fn sync_deadline(&self) -> Instant {
        self.created + Duration::from_secs(u64::from(self.cfg.restart_time))
    }

    fn connected(&self) -> bool {
        matches!(self.state, State::OpenSent | State::OpenConfirm | State::Established)
    }

    /// Steps the machine.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start => {
                if self.state == State::Idle {
                    self.set_state(now, State::Connect);
                    out.push(Action::Connect);
                }
            }
            Event::Stop { subcode } => {
                if self.connected() {
                    out.push(Action::Send(Message::Notification(Notification::new(error_code::CEASE, subcode))));
                    out.push(Action::Close);
                }
                self.drop_routes(&mut out);
                self.clear_connection();
                self.retry_at = None;
                self.set_state(now, State::Idle);
            }
            Event::TcpConnected { local_addr } => self.tcp_connected(now, local_addr, &mut out),
            Event::TcpFailed(kind) => {
                if self.state == State::Connect {
                    self.last_error = Some(words::connect_error(kind, self.cfg.peer));
                    self.wait_retry(now);
                } else if self.connected() {
                    self.connection_lost(now, &mut out);
                }
            }
            Event::TcpClosed => {
                if self.connected() {
                    self.connection_lost(now, &mut out);
                }
            }
            Event::Tick => self.tick(now, &mut out),
            Event::SetPrefixes(prefixes) => self.set_prefixes(prefixes, &mut out),
            Event::Malformed(err) => {
                if self.connected() {
                    let text = format!("malformed message from {}: {}", self.cfg.peer.ip(), err.reason);
                    self.fail(now, err.notification, text, &mut out);
                }
            }
            Event::Received(msg) => {
                if self.connected() {
                    self.received(now, msg, &mut out);
                }
            }
        }
        out
    }

    fn set_state(&mut self, now: Instant, state: State) {
        if self.state != state {
            info!(peer = %self.cfg.peer, from = ?self.state, to = ?state, "BGP session state");
            self.state = state;
            self.since = now;
        }
    }

    /// Forgets what belongs to one connection, what we sent on it included: the next
    /// session announces everything again.
    fn clear_connection(&mut self) {
        self.local_addr = None;
        self.hold_at = None;
        self.keepalive_at = None;
        self.peer_id = None;
        self.sent.clear();
        self.awaiting_eor = false;
    }

    fn wait_retry(&mut self, now: Instant) {
        self.clear_connection();
        self.retry_at = Some(now + self.cfg.connect_retry);
        self.set_state(now, State::Active);
    }

    fn tcp_connected(&mut self, now: Instant, local_addr: Ipv4Addr, out: &mut Vec<Action>) {
        if self.state == State::Idle {
            return;
        }
        if self.state == State::Established {
            // RFC 4724 §4.2: a new connection from a restarting peer ends the old session.
            self.connection_lost(now, out);
        }
        self.clear_connection();
        self.retry_at = None;
        self.local_addr = Some(local_addr);
        self.hold_at = Some(now + OPEN_HOLD);
        out.push(Action::Send(Message::Open(self.our_open())));
        self.set_state(now, State::OpenSent);
    }

    fn our_open(&self) -> Open {
        Open::new(
            self.cfg.local_as,
            self.cfg.hold_time,
            self.cfg.router_id,
            vec![
                Capability::Multiprotocol { afi: AFI_IPV4, safi: SAFI_UNICAST },
                Capability::RouteRefresh,
                Capability::FourOctetAs(self.cfg.local_as),
                Capability::GracefulRestart(GracefulRestart {
                    restarting: self.cfg.restarting,
                    notification: false,
                    restart_time: self.cfg.restart_time.min(0x0fff),
                    // Our only routes are the node's own prefixes: forwarding to them
                    // survives a restart of the speaker.
                    families: vec![GrFamily { afi: AFI_IPV4, safi: SAFI_UNICAST, forwarding_preserved: true }],
                }),
            ],
        )
    }

    /// The connection went away without a NOTIFICATION.
    fn connection_lost(&mut self, now: Instant, out: &mut Vec<Action>) {
        let peer = self.cfg.peer;
        let restart = self.peer_gr.as_ref().map_or(0, |gr| gr.restart_time);
        if self.state == State::Established && self.peer_graceful_restart() && restart > 0 {
            for route in self.routes.values_mut() {
                route.stale = true;
            }
            self.stale_until = Some(now + Duration::from_secs(u64::from(restart)));
            self.last_error = Some(format!(
                "{peer} closed the connection without NOTIFICATION; keeping its routes for {restart} s (graceful restart)"
            ));
            warn!(%peer, restart, "BGP connection lost; routes kept as stale");
            if !self.routes.is_empty() {
                out.push(Action::RoutesChanged);
            }
        } else {
            self.last_error = Some(match self.state {
                State::Established => format!("{peer} closed the connection"),
                _ => format!("{peer} closed the connection before the session was up"),
            });
            warn!(%peer, "BGP connection lost");
            self.drop_routes(out);
        }
        self.wait_retry(now);
    }

    /// We found an error: tell the peer, close, forget its routes.
    fn fail(&mut self, now: Instant, notification: Notification, text: String, out: &mut Vec<Action>) {
        warn!(peer = %self.cfg.peer, %notification, "{text}");
        out.push(Action::Send(Message::Notification(notification)));
        out.push(Action::Close);
        self.last_error = Some(text);
        self.end_session(now, out);
    }

    fn end_session(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.drop_routes(out);
        self.wait_retry(now);
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.synced && now >= self.sync_deadline() {
            self.synced = true;
        }
        if self.stale_until.is_some_and(|t| now >= t) {
            self.drop_stale(out);
        }
        if self.state == State::Active && self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            self.set_state(now, State::Connect);
            out.push(Action::Connect);
        }
        if self.connected() && self.hold_at.is_some_and(|t| now >= t) {
            let text = match self.state {
                State::OpenSent => format!("no OPEN from {} within {} s", self.cfg.peer, OPEN_HOLD.as_secs()),
                _ => format!("hold timer expired (no message for {} s)", self.hold_time),
            };
            self.fail(now, Notification::new(error_code::HOLD_TIMER_EXPIRED, 0), text, out);
        }
        if let Some(at) = self.keepalive_at.filter(|t| now >= *t) {
            out.push(Action::Send(Message::Keepalive));
            let interval = keepalive_interval(self.hold_time);
            // After a stall, send the next one an interval from now, not a burst to catch up.
            let next = at + interval;
            self.keepalive_at = Some(if next > now { next } else { now + interval });
        }
    }

    fn reset_hold(&mut self, now: Instant) {
        if self.state != State::OpenSent && self.hold_time > 0 {
            self.hold_at = Some(now + Duration::from_secs(u64::from(self.hold_time)));
        }
    }

    fn received(&mut self, now: Instant, msg: Message, out: &mut Vec<Action>) {
        self.reset_hold(now);
        match (self.state, msg) {
            (_, Message::Notification(n)) => self.notification_received(now, n, out),
            (State::OpenSent, Message::Open(open)) => self.open_received(now, open, out),
            (State::OpenConfirm, Message::Keepalive) => self.established(now, out),
            (State::Established, Message::Keepalive) => {}
            (State::Established, Message::Update(update)) => self.update_received(update, out),
            (State::Established, Message::RouteRefresh { afi, safi }) => {
                if (afi, safi) == (AFI_IPV4, SAFI_UNICAST) {
                    let all: Vec<Ipv4Net> = self.sent.iter().copied().collect();
                    out.extend(self.announcements(&all).into_iter().map(Action::Send));
                }
            }
            (state, msg) => {
                let subcode = match state {
                    State::OpenSent => 1,
                    State::OpenConfirm => 2,
                    _ => 3,
                };
                let text = format!("{} sent an unexpected {} in {state:?}", self.cfg.peer, words::kind(&msg));
                self.fail(now, Notification::new(error_code::FSM, subcode), text, out);
            }
        }
    }

    fn notification_received(&mut self, now: Instant, n: Notification, out: &mut Vec<Action>) {
        out.push(Action::Close);
        if n.code == error_code::CEASE && n.subcode == cease::COLLISION && self.state != State::Established {
            // The peer kept the other connection; this one just goes away.
            info!(peer = %self.cfg.peer, "BGP connection closed by collision resolution");
            self.wait_retry(now);
            return;
        }
        warn!(peer = %self.cfg.peer, notification = %n, "BGP peer sent NOTIFICATION");
        self.last_error = Some(format!("peer sent NOTIFICATION {n}"));
        self.end_session(now, out);
    }

    fn open_received(&mut self, now: Instant, open: Open, out: &mut Vec<Action>) {
        let Some(asn) = open.four_octet_as() else {
            let mut n = Notification::new(error_code::OPEN, 7);
            n.data = [&[65, 4][..], &self.cfg.local_as.to_be_bytes()].concat();
            let text = format!("{} does not support 4-octet AS numbers (RFC 6793); enable them there", self.cfg.peer);
            return self.fail(now, n, text, out);
        };
        if asn != self.cfg.remote_as {
            let text = format!("peer AS mismatch: configured {}, its OPEN says {asn}", self.cfg.remote_as);
            return self.fail(now, Notification::new(error_code::OPEN, 2), text, out);
        }
        if open.bgp_id == self.cfg.router_id {
            let text = format!("{} uses our own BGP identifier {}", self.cfg.peer, open.bgp_id);
            return self.fail(now, Notification::new(error_code::OPEN, 3), text, out);
        }
        self.hold_time = self.cfg.hold_time.min(open.hold_time);
        self.peer_id = Some(open.bgp_id);
        self.peer_gr = open.graceful_restart().cloned();
        // RFC 4724 §4.2: stale routes survive only if the peer kept forwarding for them.
        let preserved = self.peer_gr.as_ref().and_then(ipv4_family).is_some_and(|f| f.forwarding_preserved);
        if self.stale_until.is_some() && !preserved {
            self.drop_stale(out);
        }
        out.push(Action::Send(Message::Keepalive));
        self.set_state(now, State::OpenConfirm);
        self.hold_at = None;
        self.reset_hold(now);
        self.keepalive_at = (self.hold_time > 0).then(|| now + keepalive_interval(self.hold_time));
    }

    fn established(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.set_state(now, State::Established);
        self.last_error = None;
        self.cfg.restarting = false;
        if self.stale_until.is_some() {
            let restart = self.peer_gr.as_ref().map_or(0, |gr| gr.restart_time);
            self.stale_until = Some(now + Duration::from_secs(u64::from(restart)));
        }
        let ours: Vec<Ipv4Net> = self.announce.iter().copied().collect();
        out.extend(self.announcements(&ours).into_iter().map(Action::Send));
        out.push(Action::Send(Message::Update(Update::end_of_rib())));
        self.sent = self.announce.clone();
        self.awaiting_eor = true;
        if self.peer_gr.is_none() {
            // A peer without graceful restart may never send End-of-RIB.
            self.synced = true;
        }
    }
}

fn ipv4_family(gr: &GracefulRestart) -> Option<&GrFamily> {
    gr.families.iter().find(|f| (f.afi, f.safi) == (AFI_IPV4, SAFI_UNICAST))
}

fn keepalive_interval(hold_time: u16) -> Duration {
    Duration::from_secs(u64::from(hold_time / 3).max(1))
}
