//! The DNS server's metrics: queries by type, responses by rcode, and the time from a
//! query's arrival to its answer (forwarded ones included), on `--metrics-addr` with
//! `/healthz`. Each worker counts in a shard of its own (plain relaxed atomics, a cache
//! line apart), so the hot path takes no lock and shares no line; a scrape sums them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Query types counted by name; everything else is `other`.
pub const TYPES: [(u16, &str); 11] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (255, "ANY"),
    (0, "other"),
];
const RCODES: [&str; 11] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH",
    "NOTZONE",
];
/// Upper bounds, in seconds, of the latency buckets (then +Inf).
const BUCKETS: [f64; 14] =
    [0.000_05, 0.0001, 0.000_25, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[repr(align(128))]
#[derive(Default)]
struct Shard {
    types: [AtomicU64; TYPES.len()],
    /// The RCODES, then one for any other rcode.
    rcodes: [AtomicU64; RCODES.len() + 1],
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    forwarded: AtomicU64,
}

/// Why a query was turned away to keep the server's memory bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The queue of UDP queries waiting to be forwarded was full.
    ForwardQueue,
    /// Too many queries were upstream at once.
    ForwardInFlight,
    /// A TCP connection over the limit (closed at once).
    TcpConnections,
}

const SHED: [(Shed, &str); 3] = [
    (Shed::ForwardQueue, "forward_queue"),
    (Shed::ForwardInFlight, "forward_in_flight"),
    (Shed::TcpConnections, "tcp_connections"),
];

#[derive(Default)]
pub struct Metrics {
    shards: Box<[Shard]>,
    /// Rare, so not sharded.
    shed: [AtomicU64; SHED.len()],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Metrics({} shards)", self.shards.len())
    }
}

/// The query type of a DNS message, after its question's name.
pub fn qtype(msg: &[u8]) -> Option<u16> {
    let i = flatnet_model::dns::skip_name(msg, 12).ok()?;
    Some(u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]))
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    /// One shard per UDP worker, plus one for TCP and forwarding.
    pub fn new(shards: usize) -> Self {
        Self { shards: (0..shards.max(1)).map(|_| Shard::default()).collect(), shed: Default::default() }
    }

    /// Counts one query or connection turned away.
    pub fn shed(&self, why: Shed) {
        if let Some(i) = SHED.iter().position(|(w, _)| *w == why) {
            self.shed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one answered query: `query` and `reply` as sent, `took` since it arrived.
    pub fn answered(&self, shard: usize, query: &[u8], reply: &[u8], took: Duration, forwarded: bool) {
        let s = &self.shards[shard % self.shards.len()];
        let t = qtype(query).and_then(|q| TYPES.iter().position(|(n, _)| *n == q)).unwrap_or(TYPES.len() - 1);
        s.types[t].fetch_add(1, Ordering::Relaxed);
        let rcode = reply.get(3).map_or(RCODES.len(), |b| usize::from(b & 0x0f).min(RCODES.len()));
        s.rcodes[rcode].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let b = BUCKETS.iter().position(|le| secs <= *le).unwrap_or(BUCKETS.len());
        s.buckets[b].fetch_add(1, Ordering::Relaxed);
        s.sum_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        if forwarded {
            s.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sum(&self, f: impl Fn(&Shard) -> u64) -> u64 {
        self.shards.iter().map(f).sum()
    }
}

/// The registry's view of [`Metrics`], summed over the shards at each scrape.
#[derive(Debug)]
pub struct Export(pub Arc<Metrics>);

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl Iterator<Item = (&'static str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (v, n) in values {
        let labels = [(label, v)];
        ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Export {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        counter_family(
            &mut enc,
            "dns_requests",
            "DNS queries answered, by query type",
            "type",
            TYPES.iter().enumerate().map(|(i, (_, name))| (*name, m.sum(|s| load(&s.types[i])))),
        )?;
        counter_family(
            &mut enc,
            "dns_responses",
            "DNS responses sent, by rcode",
            "rcode",
            RCODES.iter().copied().chain(["other"]).enumerate().map(|(i, name)| (name, m.sum(|s| load(&s.rcodes[i])))),
        )?;
        let fwd = ConstCounter::new(m.sum(|s| load(&s.forwarded)));
        fwd.encode(enc.encode_descriptor(
            "dns_forwarded",
            "Queries for names outside the cluster answered from upstream",
            None,
            MetricType::Counter,
        )?)?;
        counter_family(
            &mut enc,
            "dns_shed",
            "Queries answered SERVFAIL, and TCP connections closed, to keep memory bounded",
            "reason",
            SHED.iter().enumerate().map(|(i, (_, name))| (*name, load(&m.shed[i]))),
        )?;
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .enumerate()
            .map(|(i, le)| (le, m.sum(|s| load(&s.buckets[i]))))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = m.sum(|s| load(&s.sum_ns)) as f64 / 1e9;
        let mut h = enc.encode_descriptor(
            "dns_request_duration_seconds",
            "From a query's arrival to its answer being sent (forwarded ones included)",
            None,
            MetricType::Histogram,
        )?;
        h.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// The exposition text.
pub fn render(m: &Arc<Metrics>) -> String {
    let mut reg = prometheus_client::registry::Registry::with_prefix("flatnet");
    reg.register_collector(Box::new(Export(m.clone())));
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

/// Serves `/metrics` and `/healthz` on `addr` until the task is dropped.
pub async fn serve(addr: std::net::SocketAddr, m: Arc<Metrics>) {
    use axum::routing::get;
    let app = axum::Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let m = m.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&m)) }
        }),
    );
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!("dns metrics on http://{addr}/metrics");
            if let Err(e) = axum::serve(l, app).await {
                tracing::warn!("dns metrics server stopped: {e}");
            }
        }
        Err(e) => tracing::warn!("cannot serve dns metrics on {addr}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_type_rcode_and_latency() {
        let m = Arc::new(Metrics::new(2));
        // A query for `a.b` type AAAA, answered NXDOMAIN in 300 µs.
        let q = [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 1, b'b', 0, 0, 28, 0, 1];
        let mut r = q.to_vec();
        r[2] = 0x81;
        r[3] = 0x83;
        m.answered(0, &q, &r, Duration::from_micros(300), false);
        m.answered(1, &q, &r, Duration::from_millis(30), true);
        let text = render(&m);
        for want in [
            "flatnet_dns_requests_total{type=\"AAAA\"} 2",
            "flatnet_dns_requests_total{type=\"A\"} 0",
            "flatnet_dns_responses_total{rcode=\"NXDOMAIN\"} 2",
            "flatnet_dns_forwarded_total 1",
            "flatnet_dns_request_duration_seconds_count 2",
            "flatnet_dns_request_duration_seconds_bucket{le=\"0.0005\"} 1",
            "flatnet_dns_request_duration_seconds_bucket{le=\"0.05\"} 2",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert_eq!(qtype(&q), Some(28));
        assert_eq!(qtype(&q[..14]), None);
    }
}
