//! Sentences for an operator: what a failed connection means and what to check.

use crate::wire::Message;
use std::io::ErrorKind;
use std::net::SocketAddr;

/// Explains why connecting to `peer` failed.
pub(super) fn connect_error(kind: ErrorKind, peer: SocketAddr) -> String {
    let ip = peer.ip();
    match kind {
        ErrorKind::ConnectionRefused => {
            format!("connection refused: nothing listens on {peer} (is BGP running there?)")
        }
        ErrorKind::HostUnreachable => format!("no route to host {ip}"),
        ErrorKind::NetworkUnreachable => {
            format!("network unreachable: this node has no route to {ip}")
        }
        ErrorKind::TimedOut => format!(
            "no answer from {peer} (connection timed out: is the peer up, or does a firewall drop TCP port {}?)",
            peer.port()
        ),
        ErrorKind::AddrNotAvailable => {
            format!("cannot connect to {peer}: the local address is not available on this node")
        }
        ErrorKind::PermissionDenied => {
            format!("connection to {peer} blocked by a local firewall (permission denied)")
        }
        other => format!("cannot connect to {peer}: {other}"),
    }
}

/// The message's type in words.
pub(super) fn kind(msg: &Message) -> &'static str {
    match msg {
        Message::Open(_) => "OPEN",
        Message::Update(_) => "UPDATE",
        Message::Notification(_) => "NOTIFICATION",
        Message::Keepalive => "KEEPALIVE",
        Message::RouteRefresh { .. } => "ROUTE-REFRESH",
    }
}
