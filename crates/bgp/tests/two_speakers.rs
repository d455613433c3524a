//! Two flatnet speakers on loopback addresses, each configured to connect to the other:
//! one session forms, routes flow both ways, withdrawals and peer removal are seen, and a
//! speaker that dies and comes back with `restarting` is bridged by graceful restart.

use flatnet_bgp::{PeerConfig, Snapshot, Speaker, SpeakerConfig, State};
use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

fn config(ip: Ipv4Addr, port: u16, asn: u32, restarting: bool) -> SpeakerConfig {
    SpeakerConfig {
        local_as: asn,
        router_id: ip,
        listen: SocketAddr::new(ip.into(), port),
        hold_time: 9,
        restart_time: 30,
        restarting,
        connect_retry: Duration::from_millis(300),
    }
}

fn peer(addr: SocketAddr, asn: u32, name: &str) -> PeerConfig {
    let SocketAddr::V4(addr) = addr else { panic!("v4 only") };
    PeerConfig { addr: *addr.ip(), port: addr.port(), remote_as: asn, name: name.to_owned() }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// Polls the snapshot every 20 ms until `cond` holds, failing after `secs` seconds.
async fn eventually(rx: &watch::Receiver<Arc<Snapshot>>, secs: u64, what: &str, cond: impl Fn(&Snapshot) -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond(&rx.borrow()) {
            return;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}; last snapshot: {:#?}", rx.borrow());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// TCP connections established between the two speakers, as `ss` lists them.
fn connections_between(a: SocketAddr, b: SocketAddr) -> usize {
    let out = std::process::Command::new("ss").args(["-Htn", "state", "established"]).output().expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let (a, b) = (a.to_string(), b.to_string());
    // Each connection is listed once per end; count A's ends: A connected to B's listener,
    // or B connected to A's.
    text.lines()
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, peer) = (cols[2], cols[3]);
            peer == b || local == a
        })
        .count()
}

fn established(s: &Snapshot) -> bool {
    !s.sessions.is_empty() && s.sessions.iter().all(|s| s.state == State::Established)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_speakers_exchange_routes_and_survive_a_restart() {
    let ip_a = Ipv4Addr::new(127, 0, 0, 1);
    let ip_b = Ipv4Addr::new(127, 0, 0, 2);
    let a = Speaker::start(config(ip_a, 0, 65001, false)).await.unwrap();
    let b = Speaker::start(config(ip_b, 0, 65002, false)).await.unwrap();
    let (addr_a, addr_b) = (a.listen_addr(), b.listen_addr());
    a.set_prefixes(vec![net("10.244.1.0/24")]);
    b.set_prefixes(vec![net("10.244.2.0/24")]);
    // Both connect to each other at once: collision resolution must leave one session.
    a.set_peers(vec![peer(addr_b, 65002, "node-b")]);
    b.set_peers(vec![peer(addr_a, 65001, "node-a")]);
    let rx_a = a.subscribe();
    let rx_b = b.subscribe();

    eventually(&rx_a, 10, "A learns B's prefix", |s| {
        s.routes
            .get(&net("10.244.2.0/24"))
            .is_some_and(|r| r.next_hop == ip_b && r.as_path == [65002] && r.peer_name == "node-b" && !r.stale)
            && established(s)
    })
    .await;
    eventually(&rx_b, 10, "B learns A's prefix", |s| {
        s.routes.get(&net("10.244.1.0/24")).is_some_and(|r| r.next_hop == ip_a && r.as_path == [65001])
            && established(s)
            && s.synced
    })
    .await;
    // One session, and it stays: no connection keeps getting torn down.
    let since = rx_a.borrow().sessions[0].since;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s = rx_a.borrow().sessions[0].clone();
    assert_eq!((s.state, s.since, s.prefixes_received, s.prefixes_sent), (State::Established, since, 1, 1));
    assert_eq!(connections_between(addr_a, addr_b), 1, "collision resolution must leave one connection");

    // Withdrawal, then announce again.
    b.set_prefixes(vec![]);
    eventually(&rx_a, 5, "A sees the withdrawal", |s| s.routes.is_empty()).await;
    b.set_prefixes(vec![net("10.244.2.0/24")]);
    eventually(&rx_a, 5, "A sees the prefix again", |s| s.routes.len() == 1).await;

    // Removing the peer drops its routes here at once and there after the cease.
    a.set_peers(vec![]);
    eventually(&rx_a, 1, "A forgets B", |s| s.routes.is_empty() && s.sessions.is_empty()).await;
    eventually(&rx_b, 5, "B drops A's routes on cease", |s| {
        s.routes.is_empty()
            && s.sessions[0].last_error.as_deref() == Some("peer sent NOTIFICATION cease / peer de-configured")
    })
    .await;
    a.set_peers(vec![peer(addr_b, 65002, "node-b")]);
    eventually(&rx_a, 10, "A and B peer again", |s| established(s) && s.routes.len() == 1).await;
    eventually(&rx_b, 10, "B has A's route again", |s| established(s) && s.routes.len() == 1).await;

    // B dies without a NOTIFICATION: A keeps B's route, marked stale.
    drop(b);
    eventually(&rx_a, 5, "A keeps B's route as stale", |s| {
        s.routes.get(&net("10.244.2.0/24")).is_some_and(|r| r.stale) && s.sessions[0].state != State::Established
    })
    .await;
    // B comes back on the same address, saying it restarted.
    let b2 = Speaker::start(config(ip_b, addr_b.port(), 65002, true)).await.unwrap();
    b2.set_prefixes(vec![net("10.244.2.0/24")]);
    b2.set_peers(vec![peer(addr_a, 65001, "node-a")]);
    let rx_b2 = b2.subscribe();
    eventually(&rx_a, 10, "B's route fresh again", |s| {
        established(s) && s.routes.get(&net("10.244.2.0/24")).is_some_and(|r| !r.stale)
    })
    .await;
    eventually(&rx_b2, 10, "the restarted B is synced with A's route", |s| {
        s.synced && s.routes.contains_key(&net("10.244.1.0/24"))
    })
    .await;

    a.shutdown().await;
    eventually(&rx_b2, 5, "shutdown tells B", |s| {
        s.routes.is_empty()
            && s.sessions[0].last_error.as_deref() == Some("peer sent NOTIFICATION cease / administratively shut down")
    })
    .await;
    b2.shutdown().await;
}

#[tokio::test]
async fn a_taken_port_is_explained() {
    let first = Speaker::start(config(Ipv4Addr::new(127, 0, 0, 3), 0, 65001, false)).await.unwrap();
    let taken = first.listen_addr();
    let err = Speaker::start(config(Ipv4Addr::new(127, 0, 0, 3), taken.port(), 65001, false))
        .await
        .err()
        .expect("second bind must fail");
    let text = err.to_string();
    assert!(text.contains(&taken.to_string()) && text.contains("already in use"), "{text}");
}
