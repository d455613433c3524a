//! The state machine driven by events alone: no sockets, no clock.

use super::*;
use crate::wire::{AsSegment, GrFamily, Origin, PathAttributes, Update};
use std::time::Duration;

const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 10);

fn cfg(remote_as: u32) -> SessionConfig {
    SessionConfig {
        local_as: 65001,
        remote_as,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        peer: "192.168.2.254:179".parse().unwrap(),
        hold_time: 9,
        restart_time: 60,
        restarting: false,
        connect_retry: Duration::from_secs(1),
    }
}

fn peer_open(asn: u32, hold: u16, gr: Option<GracefulRestart>) -> Message {
    let mut caps = vec![Capability::FourOctetAs(asn)];
    caps.extend(gr.map(Capability::GracefulRestart));
    Message::Open(Open::new(asn, hold, Ipv4Addr::new(10, 0, 0, 2), caps))
}

fn gr(restart_time: u16, forwarding_preserved: bool) -> Option<GracefulRestart> {
    Some(GracefulRestart {
        restarting: false,
        notification: false,
        restart_time,
        families: vec![GrFamily { afi: 1, safi: 1, forwarding_preserved }],
    })
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn announce(prefix: &str, path: Vec<u32>) -> Message {
    Message::Update(Update {
        withdrawn: vec![],
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(vec![AsSegment::Sequence(path)]),
            next_hop: Some(Ipv4Addr::new(192, 168, 2, 254)),
            ..PathAttributes::default()
        },
        nlri: vec![net(prefix)],
    })
}

fn sent(actions: &[Action]) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn notification(actions: &[Action]) -> Option<(u8, u8)> {
    sent(actions).into_iter().find_map(|m| match m {
        Message::Notification(n) => Some((n.code, n.subcode)),
        _ => None,
    })
}

/// Brings a session to Established with a peer in AS 65002, announcing 10.244.1.0/24.
fn established(t0: Instant, peer_gr: Option<GracefulRestart>) -> Session {
    let mut s = Session::new(cfg(65002), t0);
    s.handle(t0, Event::SetPrefixes([net("10.244.1.0/24")].into()));
    assert_eq!(s.handle(t0, Event::Start), vec![Action::Connect]);
    let a = s.handle(t0, Event::TcpConnected { local_addr: LOCAL });
    let Message::Open(open) = sent(&a)[0] else { panic!("no OPEN: {a:?}") };
    assert_eq!(open.four_octet_as(), Some(65001));
    assert!(open.graceful_restart().is_some());
    assert_eq!(s.state(), State::OpenSent);
    let a = s.handle(t0, Event::Received(peer_open(65002, 30, peer_gr)));
    assert_eq!(sent(&a), vec![&Message::Keepalive]);
    assert_eq!(s.state(), State::OpenConfirm);
    let a = s.handle(t0, Event::Received(Message::Keepalive));
    assert_eq!(s.state(), State::Established);
    let msgs = sent(&a);
    let Message::Update(u) = msgs[0] else { panic!("no UPDATE: {a:?}") };
    assert_eq!(u.nlri, vec![net("10.244.1.0/24")]);
    assert_eq!(u.attributes.next_hop, Some(LOCAL));
    assert_eq!(u.attributes.as_path, Some(vec![AsSegment::Sequence(vec![65001])]));
    assert_eq!(u.attributes.local_pref, None);
    assert_eq!(msgs[1], &Message::Update(Update::end_of_rib()));
    s
}

#[test]
fn open_exchange_we_connect() {
    let t0 = Instant::now();
    let s = established(t0, None);
    assert_eq!(s.prefixes_sent(), 1);
    assert!(s.synced(), "a peer without graceful restart is synced once up");
    assert_eq!(s.last_error(), None);
}

#[test]
fn open_exchange_peer_connects_in_while_we_wait_to_retry() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(65001), t0);
    s.handle(t0, Event::Start);
    s.handle(t0, Event::TcpFailed(io::ErrorKind::ConnectionRefused));
    assert_eq!(s.state(), State::Active);
    assert_eq!(
        s.last_error(),
        Some("connection refused: nothing listens on 192.168.2.254:179 (is BGP running there?)")
    );
    // The peer connects to us before our retry.
    let a = s.handle(t0, Event::TcpConnected { local_addr: LOCAL });
    assert!(matches!(sent(&a)[..], [Message::Open(_)]));
    s.handle(t0, Event::SetPrefixes([net("10.244.1.0/24")].into()));
    s.handle(t0, Event::Received(peer_open(65001, 0, gr(120, false))));
    let a = s.handle(t0, Event::Received(Message::Keepalive));
    let Message::Update(u) = sent(&a)[0] else { panic!() };
    // iBGP: empty AS_PATH and LOCAL_PREF 100.
    assert_eq!(u.attributes.as_path, Some(vec![]));
    assert_eq!(u.attributes.local_pref, Some(100));
    // Hold time 0: no keepalives, no hold timer.
    assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(60)));
    assert!(!s.synced(), "waits for End-of-RIB");
    s.handle(t0, Event::Received(Message::Update(Update::end_of_rib())));
    assert!(s.synced());
}

#[test]
fn retry_connects_again_after_connect_retry() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(65002), t0);
    s.handle(t0, Event::Start);
    s.handle(t0, Event::TcpFailed(io::ErrorKind::HostUnreachable));
    assert_eq!(s.last_error(), Some("no route to host 192.168.2.254"));
    assert!(s.handle(t0 + Duration::from_millis(500), Event::Tick).is_empty());
    assert_eq!(s.handle(t0 + Duration::from_secs(1), Event::Tick), vec![Action::Connect]);
    assert_eq!(s.state(), State::Connect);
}

#[test]
fn as_mismatch_sends_bad_peer_as() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(65001), t0);
    s.handle(t0, Event::Start);
    s.handle(t0, Event::TcpConnected { local_addr: LOCAL });
    let a = s.handle(t0, Event::Received(peer_open(65002, 90, None)));
    assert_eq!(notification(&a), Some((2, 2)));
    assert!(a.contains(&Action::Close));
    assert_eq!(s.state(), State::Active);
    assert_eq!(s.last_error(), Some("peer AS mismatch: configured 65001, its OPEN says 65002"));
}

#[test]
fn open_without_four_octet_as_is_refused() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(65002), t0);
    s.handle(t0, Event::Start);
    s.handle(t0, Event::TcpConnected { local_addr: LOCAL });
    let open = Open::new(65002, 90, Ipv4Addr::new(10, 0, 0, 2), vec![]);
    let a = s.handle(t0, Event::Received(Message::Open(open)));
    assert_eq!(notification(&a), Some((2, 7)));
    assert!(s.last_error().unwrap().contains("4-octet AS"));
}

#[test]
fn keepalives_every_third_of_hold_and_hold_expiry_drops_routes() {
    let t0 = Instant::now();
    let mut s = established(t0, gr(120, true));
    s.handle(t0, Event::Received(announce("10.244.2.0/24", vec![65002])));
    assert_eq!(s.prefixes_received(), 1);
    // Negotiated hold = min(9, 30) = 9 s, keepalive every 3 s.
    assert_eq!(s.handle(t0 + Duration::from_secs(3), Event::Tick), vec![Action::Send(Message::Keepalive)]);
    assert_eq!(s.handle(t0 + Duration::from_secs(6), Event::Tick), vec![Action::Send(Message::Keepalive)]);
    let a = s.handle(t0 + Duration::from_secs(9), Event::Tick);
    assert_eq!(notification(&a), Some((4, 0)));
    assert!(a.contains(&Action::RoutesChanged));
    assert_eq!(s.prefixes_received(), 0, "hold expiry ends the session with a NOTIFICATION: no stale routes");
    assert_eq!(s.last_error(), Some("hold timer expired (no message for 9 s)"));
    assert_eq!(s.state(), State::Active);
}

#[test]
fn a_message_resets_the_hold_timer() {
    let t0 = Instant::now();
    let mut s = established(t0, None);
    s.handle(t0 + Duration::from_secs(8), Event::Received(Message::Keepalive));
    let a = s.handle(t0 + Duration::from_secs(12), Event::Tick);
    assert_eq!(notification(&a), None);
    assert_eq!(s.state(), State::Established);
}

#[test]
fn routes_learned_withdrawn_and_filtered() {
    let t0 = Instant::now();
    let mut s = established(t0, None);
    assert_eq!(s.handle(t0, Event::Received(announce("10.244.2.0/24", vec![65002]))), vec![Action::RoutesChanged]);
    // Our own AS in the path: a loop, dropped.
    s.handle(t0, Event::Received(announce("10.244.3.0/24", vec![65002, 65001])));
    // Our own prefix coming back: not shown.
    s.handle(t0, Event::Received(announce("10.244.1.0/24", vec![65002])));
    let routes: Vec<_> = s.routes().map(|(p, r)| (*p, r.as_path.clone())).collect();
    assert_eq!(routes, vec![(net("10.244.2.0/24"), vec![65002])]);
    let withdraw = Message::Update(Update { withdrawn: vec![net("10.244.2.0/24")], ..Update::default() });
    assert_eq!(s.handle(t0, Event::Received(withdraw)), vec![Action::RoutesChanged]);
    assert_eq!(s.prefixes_received(), 0);
}

#[test]
fn prefix_changes_send_updates_and_withdrawals() {
    let t0 = Instant::now();
    let mut s = established(t0, None);
    let a = s.handle(t0, Event::SetPrefixes([net("10.244.7.0/24")].into()));
    let msgs = sent(&a);
    let Message::Update(w) = msgs[0] else { panic!() };
    assert_eq!(w.withdrawn, vec![net("10.244.1.0/24")]);
    let Message::Update(u) = msgs[1] else { panic!() };
    assert_eq!(u.nlri, vec![net("10.244.7.0/24")]);
    assert_eq!(s.prefixes_sent(), 1);
}

#[test]
fn notification_received_drops_routes_at_once() {
    let t0 = Instant::now();
    let mut s = established(t0, gr(120, true));
    s.handle(t0, Event::Received(announce("10.244.2.0/24", vec![65002])));
    let a = s.handle(t0, Event::Received(Message::Notification(Notification::new(6, 2))));
    assert!(a.contains(&Action::RoutesChanged));
    assert_eq!(s.prefixes_received(), 0);
    assert_eq!(s.last_error(), Some("peer sent NOTIFICATION cease / administratively shut down"));
}

#[test]
fn stop_sends_cease_and_goes_idle() {
    let t0 = Instant::now();
    let mut s = established(t0, gr(120, true));
    s.handle(t0, Event::Received(announce("10.244.2.0/24", vec![65002])));
    let a = s.handle(t0, Event::Stop { subcode: cease::PEER_DECONFIGURED });
    assert_eq!(notification(&a), Some((6, 3)));
    assert_eq!(s.prefixes_received(), 0);
    assert_eq!(s.state(), State::Idle);
    assert_eq!(s.prefixes_sent(), 0, "what the closed session sent is forgotten");
    // Only the wait for the initial sync is left: no retry, no hold timer.
    assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(60)));
    // Started again, the next session announces our prefix again.
    s.handle(t0, Event::Start);
    s.handle(t0, Event::TcpConnected { local_addr: LOCAL });
    s.handle(t0, Event::Received(peer_open(65002, 30, gr(120, true))));
    let a = s.handle(t0, Event::Received(Message::Keepalive));
    assert!(sent(&a).iter().any(|m| matches!(m, Message::Update(u) if u.nlri == vec![net("10.244.1.0/24")])), "{a:?}");
}

#[test]
fn graceful_restart_keeps_stale_routes_and_refreshes_them() {
    let t0 = Instant::now();
    let mut s = established(t0, gr(120, true));
    s.handle(t0, Event::Received(announce("10.244.2.0/24", vec![65002])));
    s.handle(t0, Event::Received(announce("10.244.3.0/24", vec![65002])));
    let a = s.handle(t0, Event::TcpClosed);
    assert_eq!(a, vec![Action::RoutesChanged]);
    assert_eq!(s.state(), State::Active);
    assert!(s.routes().all(|(_, r)| r.stale));
    assert_eq!(s.prefixes_received(), 2);
    // The peer comes back within its restart time and re-announces one prefix.
    let t1 = t0 + Duration::from_secs(30);
    s.handle(t1, Event::TcpConnected { local_addr: LOCAL });
    s.handle(t1, Event::Received(peer_open(65002, 30, gr(120, true))));
    s.handle(t1, Event::Received(Message::Keepalive));
    assert_eq!(s.prefixes_received(), 2, "stale routes stay until End-of-RIB");
    s.handle(t1, Event::Received(announce("10.244.2.0/24", vec![65002])));
    let a = s.handle(t1, Event::Received(Message::Update(Update::end_of_rib())));
    assert_eq!(a, vec![Action::RoutesChanged]);
    let routes: Vec<_> = s.routes().map(|(p, r)| (*p, r.stale)).collect();
    assert_eq!(routes, vec![(net("10.244.2.0/24"), false)]);
}

#[test]
fn graceful_restart_stale_routes_expire_with_the_restart_time() {
    let t0 = Instant::now();
    let mut s = established(t0, gr(20, true));
    s.handle(t0, Event::Received(announce("10.244.2.0/24", vec![65002])));
    s.handle(t0, Event::TcpClosed);
    assert!(s.handle(t0 + Duration::from_secs(19), Event::Tick).iter().all(|a| *a != Action::RoutesChanged));
    assert_eq!(s.prefixes_received(), 1);
    let a = s.handle(t0 + Duration::from_secs(20), Event::Tick);
    assert!(a.contains(&Action::RoutesChanged));
    assert_eq!(s.prefixes_received(), 0);
}

#[test]
fn graceful_restart_without_forwarding_preserved_drops_stale_on_open() {
    let t0 = Instant::now();
    let mut s = established(t0, gr(120, true));
    s.handle(t0, Event::Received(announce("10.244.2.0/24", vec![65002])));
    s.handle(t0, Event::TcpClosed);
    s.handle(t0, Event::TcpConnected { local_addr: LOCAL });
    let a = s.handle(t0, Event::Received(peer_open(65002, 30, gr(120, false))));
    assert!(a.contains(&Action::RoutesChanged));
    assert_eq!(s.prefixes_received(), 0);
}

#[test]
fn without_peer_graceful_restart_a_closed_connection_drops_routes() {
    let t0 = Instant::now();
    let mut s = established(t0, None);
    s.handle(t0, Event::Received(announce("10.244.2.0/24", vec![65002])));
    assert_eq!(s.handle(t0, Event::TcpClosed), vec![Action::RoutesChanged]);
    assert_eq!(s.prefixes_received(), 0);
}

#[test]
fn we_advertise_the_restart_bit_until_the_first_session() {
    let t0 = Instant::now();
    let mut c = cfg(65002);
    c.restarting = true;
    let mut s = Session::new(c, t0);
    s.handle(t0, Event::Start);
    let a = s.handle(t0, Event::TcpConnected { local_addr: LOCAL });
    let Message::Open(open) = sent(&a)[0] else { panic!() };
    let gr = open.graceful_restart().unwrap();
    assert!(gr.restarting);
    assert_eq!(gr.restart_time, 60);
    assert!(gr.families[0].forwarding_preserved);
}

#[test]
fn unexpected_message_is_an_fsm_error() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(65002), t0);
    s.handle(t0, Event::Start);
    s.handle(t0, Event::TcpConnected { local_addr: LOCAL });
    let a = s.handle(t0, Event::Received(Message::Keepalive));
    assert_eq!(notification(&a), Some((5, 1)));
}

#[test]
fn collision_cease_closes_without_error() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(65002), t0);
    s.handle(t0, Event::Start);
    s.handle(t0, Event::TcpConnected { local_addr: LOCAL });
    let a = s.handle(t0, Event::Received(Message::Notification(Notification::new(6, 7))));
    assert_eq!(a, vec![Action::Close]);
    assert_eq!(s.last_error(), None);
}

#[test]
fn synced_after_restart_time_when_the_peer_never_comes_up() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(65002), t0);
    s.handle(t0, Event::Start);
    s.handle(t0, Event::TcpFailed(io::ErrorKind::ConnectionRefused));
    s.handle(t0 + Duration::from_secs(59), Event::Tick);
    assert!(!s.synced());
    s.handle(t0 + Duration::from_secs(60), Event::Tick);
    assert!(s.synced());
}

mod arbitrary_events {
    use super::*;
    use proptest::prelude::*;

    fn arb_event() -> impl Strategy<Value = (u64, Event)> {
        let event = prop_oneof![
            Just(Event::Start),
            Just(Event::TcpConnected { local_addr: LOCAL }),
            Just(Event::TcpFailed(io::ErrorKind::ConnectionRefused)),
            Just(Event::TcpClosed),
            Just(Event::Tick),
            Just(Event::Stop { subcode: 2 }),
            Just(Event::SetPrefixes([net("10.244.1.0/24")].into())),
            Just(Event::SetPrefixes(BTreeSet::new())),
            Just(Event::Received(Message::Keepalive)),
            Just(Event::Received(peer_open(65002, 9, gr(30, true)))),
            Just(Event::Received(peer_open(65002, 0, None))),
            Just(Event::Received(peer_open(65009, 9, None))),
            Just(Event::Received(announce("10.244.2.0/24", vec![65002]))),
            Just(Event::Received(announce("10.244.1.0/24", vec![65002]))),
            Just(Event::Received(Message::Update(Update::end_of_rib()))),
            Just(Event::Received(Message::Notification(Notification::new(6, 7)))),
            Just(Event::Received(Message::RouteRefresh { afi: 1, safi: 1 })),
        ];
        (0u64..20_000, event)
    }

    proptest! {
        /// Whatever the order of events, the machine does not panic, sends only on a
        /// connection, never shows a route for a prefix we announce ourselves, and a tick
        /// leaves nothing due.
        #[test]
        fn any_event_sequence_keeps_the_invariants(events in proptest::collection::vec(arb_event(), 0..60)) {
            let mut now = Instant::now();
            let mut s = Session::new(cfg(65002), now);
            for (ms, event) in events {
                now += Duration::from_millis(ms);
                let was_connected = s.connected();
                let tick = event == Event::Tick;
                let actions = s.handle(now, event);
                if !was_connected && !s.connected() {
                    prop_assert!(sent(&actions).is_empty(), "sent without a connection: {actions:?}");
                }
                prop_assert!(s.routes().all(|(p, _)| !s.announce.contains(p)));
                if s.state() == State::Idle {
                    prop_assert_eq!(s.prefixes_received(), 0);
                }
                if s.state() != State::Established {
                    prop_assert_eq!(s.prefixes_sent(), 0);
                }
                if tick {
                    // A tick handles everything due: the driver never spins.
                    prop_assert!(s.next_deadline().is_none_or(|d| d > now), "still due after a tick: {s:?}");
                }
            }
        }
    }
}
