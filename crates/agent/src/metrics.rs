//! The agent's Prometheus metrics and health, on a local address (`--metrics-addr`):
//! `GET /metrics` (text exposition format), `GET /healthz` (alive), `GET /readyz`
//! (503 while a reconciler is failing, with who and why), and `GET /status` (JSON, what
//! `flatnet status` shows).
//!
//! Drops by NetworkPolicy are read from the kernel's per-policy counters at each scrape,
//! so they count every packet the dataplane dropped, not what the agent saw.

use crate::policy;
use crate::status::Status;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{info, warn};

type Labels = Vec<(String, String)>;

fn counter_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// Each BGP session: up or not, since when, prefixes both ways.
fn bgp_metrics(reg: &mut Registry, bgp: &crate::status::BgpView) {
    let family = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Gauge>::default();
        reg.register(name, help, f.clone());
        f
    };
    let up = family(reg, "bgp_session_established", "1 when the BGP session with the peer is Established, else 0");
    let uptime = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    reg.register(
        "bgp_session_state_seconds",
        "Seconds the BGP session has been in its current state (its uptime when Established)",
        uptime.clone(),
    );
    let received = family(reg, "bgp_prefixes_received", "Prefixes the peer announced that the speaker holds");
    let sent = family(reg, "bgp_prefixes_sent", "Prefixes announced to the peer");
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    for s in &bgp.sessions {
        let l = vec![("peer".to_string(), s.peer.clone()), ("name".to_string(), s.name.clone())];
        up.get_or_create(&l).set(i64::from(s.state == "Established"));
        uptime.get_or_create(&l).set((now - s.since).max(0.0));
        received.get_or_create(&l).set(i64::try_from(s.prefixes_received).unwrap_or(i64::MAX));
        sent.get_or_create(&l).set(i64::try_from(s.prefixes_sent).unwrap_or(i64::MAX));
    }
}

/// The exposition text: the kernel's drop counters read now, and the reconcilers' stats.
pub fn render(status: &Status) -> Result<String, String> {
    Ok(render_with(status, policy::drop_counters().map_err(|e| e.to_string())?))
}

/// The exposition text from the reconcilers' stats and the given drop counters.
pub fn render_with(status: &Status, drops: Vec<policy::Drops>) -> String {
    let snap = status.snapshot();
    let mut reg = Registry::with_prefix("flatnet");
    reg.register(
        "reconcile_duration_seconds",
        "How long each sync of a reconciler (node network, Service proxy, NetworkPolicy) took, from the change to the kernel",
        status.durations.clone(),
    );
    let syncs = counter_family(&mut reg, "reconcile_syncs", "Syncs of each reconciler");
    let errors = counter_family(
        &mut reg,
        "reconcile_errors",
        "Syncs of each reconciler that failed, and its deaths (it retries with back-off)",
    );
    let restarts = counter_family(
        &mut reg,
        "reconciler_restarts",
        "Times a reconciler died (a panic) and its supervisor started it again",
    );
    let ready = Family::<Labels, Gauge>::default();
    reg.register("reconciler_ready", "1 when the reconciler's last sync succeeded, else 0", ready.clone());
    for (r, rec) in &snap.reconcilers {
        let l = vec![("reconciler".to_string(), r.clone())];
        syncs.get_or_create(&l).inc_by(rec.syncs);
        errors.get_or_create(&l).inc_by(rec.errors);
        restarts.get_or_create(&l).inc_by(rec.restarts);
        ready.get_or_create(&l).set(i64::from(rec.ready()));
    }
    gauge(&mut reg, "services", "Services the proxy has programmed", snap.services);
    gauge(&mut reg, "service_endpoints", "Endpoints the proxy has programmed (over every Service)", snap.endpoints);
    let peers = Family::<Labels, Gauge>::default();
    reg.register("node_peers", "Other nodes, routed or not (missing what a route needs)", peers.clone());
    let routed = snap.peers.iter().filter(|p| p.routed).count() as i64;
    peers.get_or_create(&vec![("state".to_string(), "routed".to_string())]).set(routed);
    peers.get_or_create(&vec![("state".to_string(), "pending".to_string())]).set(snap.peers.len() as i64 - routed);
    if let Some(bgp) = &snap.bgp {
        bgp_metrics(&mut reg, bgp);
    }
    let packets = counter_family(
        &mut reg,
        "policy_dropped_packets",
        "Packets dropped because a NetworkPolicy isolates the pod and none allows them (every isolating policy counts the drop)",
    );
    let bytes = counter_family(
        &mut reg,
        "policy_dropped_bytes",
        "Bytes of the packets in flatnet_policy_dropped_packets_total",
    );
    for d in drops {
        let labels = vec![
            ("direction".to_string(), d.direction.word().to_string()),
            ("namespace".to_string(), d.namespace),
            ("policy".to_string(), d.policy),
        ];
        packets.get_or_create(&labels).inc_by(d.packets);
        bytes.get_or_create(&labels).inc_by(d.bytes);
    }
    // NetworkPolicy's own names for what the reconciler records hold.
    let policy = snap.reconcilers.get("policy").cloned().unwrap_or_default();
    counter(
        &mut reg,
        "policy_syncs",
        "NetworkPolicy syncs applied to the kernel",
        policy.syncs.saturating_sub(policy.errors - policy.restarts),
    );
    counter(&mut reg, "policy_sync_errors", "NetworkPolicy syncs that failed (a full sync follows)", policy.errors);
    gauge(&mut reg, "policies", "NetworkPolicies in the cluster", snap.policies);
    let isolated = Family::<Labels, Gauge>::default();
    reg.register("policy_isolated_pods", "This node's pods a NetworkPolicy isolates, by direction", isolated.clone());
    for (dir, v) in [("ingress", snap.isolated_ingress), ("egress", snap.isolated_egress)] {
        isolated.get_or_create(&vec![("direction".to_string(), dir.to_string())]).set(i64::try_from(v).unwrap_or(0));
    }
    let last = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    last.set(policy.last_duration_ms.unwrap_or(0.0) / 1e3);
    reg.register("policy_last_sync_seconds", "The last NetworkPolicy sync, from the watch event to the kernel", last);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// Serves metrics, health and status on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, status: Arc<Status>) {
    let (for_status, for_ready) = (status.clone(), status.clone());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let s = for_ready.clone();
                async move {
                    match s.ready() {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                    }
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let s = for_status.clone();
                async move { axum::Json(s.snapshot()) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let stats = status.clone();
                async move {
                    match tokio::task::spawn_blocking(move || render(&stats)).await {
                        Ok(Ok(text)) => {
                            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
                        }
                        Ok(Err(e)) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, format!("reading the kernel's counters: {e}\n"))
                                .into_response()
                        }
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
                    }
                }
            }),
        );
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!("cannot serve metrics on {addr}: {e}");
            return;
        }
    };
    info!("metrics on http://{addr}/metrics");
    if let Err(e) = axum::serve(listener, app).await {
        warn!("metrics server stopped: {e}");
    }
}
