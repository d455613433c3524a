//! Connectivity probes between namespaces: a real TCP connection from one to a listener
//! in the other, reporting the source address the listener saw (so a probe also tells
//! whether anything NATed the client).

use crate::netns;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

fn ns_err(e: crate::KernelError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Listens on `to_ip:port` inside `to`, connects from inside `from`, exchanges a few
/// bytes, and returns the peer address the listener saw. Bounded by `timeout`.
pub fn tcp(from: &Path, to: &Path, to_ip: IpAddr, port: u16, timeout: Duration) -> io::Result<SocketAddr> {
    let listener = netns::run_in(to, || TcpListener::bind((to_ip, port))).map_err(ns_err)??;
    listener.set_nonblocking(true)?;
    let server = std::thread::spawn(move || -> io::Result<SocketAddr> {
        let deadline = Instant::now() + timeout;
        let (mut s, peer) = loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => return Err(e),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf)?;
        s.write_all(&buf)?;
        Ok(peer)
    });
    let client = netns::run_in(from, || -> io::Result<()> {
        let mut c = TcpStream::connect_timeout(&SocketAddr::new(to_ip, port), timeout)?;
        c.set_read_timeout(Some(timeout))?;
        c.write_all(b"probe")?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf)?;
        if &buf != b"probe" {
            return Err(io::Error::other("the echo came back garbled"));
        }
        Ok(())
    })
    .map_err(ns_err)?;
    let seen = server.join().map_err(|_| io::Error::other("probe listener panicked"))?;
    client?;
    seen
}
