//! The sockets. UDP is served by plain threads blocked in `recv_from`, each answering
//! from the current zone snapshot (an atomic pointer load: no lock); TCP and the
//! forwarded queries run on tokio.

use crate::forward::Forwarder;
use crate::metrics::Shed;
use arc_swap::ArcSwap;
use flatnet_model::dns::{self, Outcome, Rcode, Transport, Zone};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{Receiver, Sender, error::TrySendError};
use tracing::{debug, warn};

/// A TCP client silent this long is hung up on.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once; one more is closed as soon as it is accepted.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// UDP queries waiting for a forwarding task, at most; past it, SERVFAIL at once.
pub const FORWARD_QUEUE: usize = 1024;

/// The queue of UDP queries to forward: bounded, so a silent upstream makes the server
/// answer SERVFAIL instead of holding every query it is sent.
pub fn forward_queue() -> (Sender<ForwardJob>, Receiver<ForwardJob>) {
    tokio::sync::mpsc::channel(FORWARD_QUEUE)
}

pub struct Shared {
    pub zone: ArcSwap<Zone>,
    /// Replaced whole when the upstreams change.
    pub forwarder: ArcSwap<Forwarder>,
    /// Clients whose other names we look up upstream; everyone else gets REFUSED for
    /// them, so the server is no open resolver.
    pub allow_forwarding: ArcSwap<Vec<IpNet>>,
    /// Counters, a shard per UDP worker and one (the last) for TCP and forwarding.
    pub metrics: Arc<crate::metrics::Metrics>,
    pub udp_threads: usize,
}

impl Shared {
    fn may_forward(&self, client: IpAddr) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        self.allow_forwarding.load().iter().any(|n| n.contains(&client))
    }
}

/// A UDP query to forward, and where its answer goes.
pub struct ForwardJob {
    pub query: Vec<u8>,
    pub client: SocketAddr,
    /// Our reply, a CNAME to the name and type to look up upstream and append.
    pub chase: Option<(Vec<u8>, Vec<u8>, u16)>,
    pub arrived: std::time::Instant,
}

/// The UDP receive buffer asked for: bursts of queries wait in it rather than being
/// dropped while a worker is busy (as NSD and CoreDNS do, a few MiB).
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Grows `sock`'s receive buffer, past `net.core.rmem_max` when we may (root); a
/// smaller buffer only costs drops under bursts, so failure is logged, not fatal.
pub fn grow_receive_buffer(sock: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(sock, sockopt::RcvBufForce, &UDP_RECEIVE_BUFFER).is_err()
        && let Err(e) = setsockopt(sock, sockopt::RcvBuf, &UDP_RECEIVE_BUFFER)
    {
        warn!("dns: cannot grow the UDP receive buffer: {e}");
    }
}

/// Starts `threads` UDP workers on `sock` (blocking mode; they share it).
pub fn spawn_udp(
    sock: &UdpSocket,
    threads: usize,
    shared: Arc<Shared>,
    forward: Sender<ForwardJob>,
) -> std::io::Result<()> {
    for i in 0..threads.max(1) {
        let (sock, shared, forward) = (sock.try_clone()?, shared.clone(), forward.clone());
        std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || udp_worker(i, &sock, &shared, &forward))?;
    }
    Ok(())
}

fn udp_worker(shard: usize, sock: &UdpSocket, shared: &Shared, forward: &Sender<ForwardJob>) {
    let mut buf = [0u8; 4096];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (n, client) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                warn!("dns: receive: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let arrived = std::time::Instant::now();
        let query = &buf[..n];
        let zone = shared.zone.load();
        let outcome = dns::respond(&zone, query, Transport::Udp, &mut out);
        // A query for upstream goes to the forwarding tasks; when they are full, SERVFAIL.
        let queue = |chase| match forward.try_send(ForwardJob { query: query.to_vec(), client, chase, arrived }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                shared.metrics.shed(Shed::ForwardQueue);
                false
            }
        };
        match outcome {
            Outcome::Reply => {
                if let Some((target, qtype)) = dns::cname_to_chase(&zone, &out)
                    && shared.may_forward(client.ip())
                    && queue(Some((out.clone(), target, qtype)))
                {
                    continue;
                }
            }
            Outcome::Drop => continue,
            Outcome::Forward if shared.may_forward(client.ip()) => {
                if queue(None) {
                    continue;
                }
                if !dns::error_reply(query, Rcode::ServFail, &mut out) {
                    continue;
                }
            }
            Outcome::Forward => {
                if !dns::error_reply(query, Rcode::Refused, &mut out) {
                    continue;
                }
            }
        }
        if let Err(e) = sock.send_to(&out, client) {
            debug!("dns: reply to {client}: {e}");
        }
        shared.metrics.answered(shard, query, &out, arrived.elapsed(), false);
    }
}

/// Answers forwarded UDP queries as the upstreams reply, each on its own task. Replies
/// go out through `sock` (blocking, but a UDP send does not wait for the peer).
pub async fn run_forwarding(sock: UdpSocket, shared: Arc<Shared>, mut jobs: Receiver<ForwardJob>) {
    let sock = Arc::new(sock);
    while let Some(job) = jobs.recv().await {
        let (sock, shared) = (sock.clone(), shared.clone());
        tokio::spawn(async move {
            let reply = match &job.chase {
                Some((ours, target, qtype)) => shared.forwarder.load_full().chase(ours, target, *qtype).await,
                None => forwarded(&shared, &job.query).await,
            };
            let mut out = Vec::new();
            dns::truncate_to(&reply, dns::udp_limit(&job.query), &mut out);
            if let Err(e) = sock.send_to(&out, job.client) {
                debug!("dns: reply to {}: {e}", job.client);
            }
            shared.metrics.answered(shared.udp_threads, &job.query, &out, job.arrived.elapsed(), true);
        });
    }
}

/// The upstream's reply, or SERVFAIL when none answered (or too many are upstream).
async fn forwarded(shared: &Shared, query: &[u8]) -> Vec<u8> {
    let why = match shared.forwarder.load_full().resolve(query).await {
        Ok(r) => return r,
        Err(why) => why,
    };
    if why == crate::forward::Unanswered::Busy {
        shared.metrics.shed(Shed::ForwardInFlight);
    }
    let mut out = Vec::new();
    dns::error_reply(query, Rcode::ServFail, &mut out);
    out
}

/// Serves DNS over TCP (length-prefixed messages, several per connection), at most
/// [`MAX_TCP_CONNECTIONS`] at once.
pub async fn run_tcp(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (conn, client) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("dns: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.metrics.shed(Shed::TcpConnections);
            drop(conn);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_connection(conn, client, &shared).await {
                debug!("dns: TCP client {client}: {e}");
            }
            drop(slot);
        });
    }
}

async fn tcp_connection(mut conn: tokio::net::TcpStream, client: SocketAddr, shared: &Shared) -> std::io::Result<()> {
    let mut out = Vec::new();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, conn.read_u16()).await {
            Ok(Ok(l)) => l as usize,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let mut query = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "message cut short"))??;
        let arrived = std::time::Instant::now();
        let zone = shared.zone.load_full();
        let outcome = dns::respond(&zone, &query, Transport::Tcp, &mut out);
        let mut forwarded_here = false;
        let reply = match outcome {
            Outcome::Reply => match dns::cname_to_chase(&zone, &out) {
                Some((target, qtype)) if shared.may_forward(client.ip()) => {
                    forwarded_here = true;
                    shared.forwarder.load_full().chase(&out, &target, qtype).await
                }
                _ => std::mem::take(&mut out),
            },
            Outcome::Drop => continue,
            Outcome::Forward if shared.may_forward(client.ip()) => {
                forwarded_here = true;
                forwarded(shared, &query).await
            }
            Outcome::Forward => {
                if !dns::error_reply(&query, Rcode::Refused, &mut out) {
                    continue;
                }
                std::mem::take(&mut out)
            }
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        framed.extend_from_slice(&reply);
        conn.write_all(&framed).await?;
        shared.metrics.answered(shared.udp_threads, &query, &reply, arrived.elapsed(), forwarded_here);
    }
}
