//! One TCP connection to a peer, framed into BGP messages.

use crate::wire::{DecodeError, Message};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long a write may take before the connection counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection and the bytes read from it that do not make a whole message yet.
pub(super) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// We connected out (rather than the peer connecting in): decides collisions.
    pub(super) outbound: bool,
    /// Our address on this connection: the NEXT_HOP we announce.
    pub(super) local: Ipv4Addr,
}

/// What reading a connection gave.
pub(super) enum Read {
    Message(Message),
    Malformed(DecodeError),
    Closed,
}

impl Conn {
    pub(super) fn new(stream: TcpStream, outbound: bool) -> io::Result<Conn> {
        let local = match stream.local_addr()? {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(a) => a
                .ip()
                .to_ipv4_mapped()
                .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "IPv6 transport is not supported"))?,
        };
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::with_capacity(4096), outbound, local })
    }

    /// The next message. Cancel-safe: bytes read so far stay in the buffer.
    pub(super) async fn next(&mut self) -> Read {
        loop {
            match Message::decode(&self.buf) {
                Ok(Some((message, used))) => {
                    self.buf.drain(..used);
                    return Read::Message(message);
                }
                Err(err) => return Read::Malformed(err),
                Ok(None) => {}
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Read::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Sends one message.
    pub(super) async fn send(&mut self, message: &Message) -> io::Result<()> {
        let bytes = message.encode().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        tokio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(&bytes))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer does not read"))?
    }

    /// Sends `message` (best effort) and closes.
    pub(super) async fn close_with(mut self, message: &Message) {
        let _ = self.send(message).await;
        self.close().await;
    }

    /// Closes after what was written is sent.
    pub(super) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

/// Connects to `peer`, from `local` when given (so the peer sees the address it expects).
pub(super) async fn connect(local: Option<Ipv4Addr>, peer: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip.into(), 0))?;
    }
    tokio::time::timeout(timeout, socket.connect(peer.into()))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}
