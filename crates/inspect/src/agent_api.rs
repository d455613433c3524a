//! The agent's HTTP side as `status`, `doctor` and `trace` read it: `/healthz`,
//! `/readyz`, and `/status` with its BGP sessions and routes.

use flatnet_agent::status::Snapshot;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path` on a local HTTP server: the body of a 200 answer, or what went wrong.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("{addr}: {e}"))?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string();
    match out.split(' ').nth(1) {
        Some("200") => Ok(body),
        _ => Err(format!("{addr}{path} answered {:?}: {body}", out.lines().next().unwrap_or(""))),
    }
}

/// The agent's /status document.
pub fn get_status(addr: SocketAddr) -> Result<Snapshot, String> {
    serde_json::from_str(&http_get(addr, "/status")?).map_err(|e| format!("{addr}/status: {e}"))
}

/// The agent's BGP sessions, as its /status gives them (none when it does not answer).
pub fn bgp_sessions(metrics: SocketAddr) -> Vec<flatnet_model::doctor::BgpSessionFacts> {
    let Ok(snap) = get_status(metrics) else { return Vec::new() };
    snap.bgp
        .map(|b| {
            b.sessions
                .into_iter()
                .map(|s| flatnet_model::doctor::BgpSessionFacts {
                    name: s.name,
                    peer: s.peer,
                    state: s.state,
                    last_error: s.last_error,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the node's agent learned by BGP, from its /status (none when it runs another
/// backend or does not answer).
pub fn bgp_routes(metrics: std::net::SocketAddr) -> Vec<flatnet_model::trace::BgpRouteFacts> {
    let Ok(snap) = get_status(metrics) else { return Vec::new() };
    snap.bgp
        .map(|b| {
            b.routes
                .into_iter()
                .filter_map(|r| {
                    Some(flatnet_model::trace::BgpRouteFacts {
                        prefix: r.prefix.parse().ok()?,
                        next_hop: r.next_hop.parse().ok()?,
                        peer: r.peer,
                        as_path: r.as_path,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}
