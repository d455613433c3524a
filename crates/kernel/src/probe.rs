//! Connectivity probes between namespaces: a real TCP connection from one to a listener
//! in the other, reporting the source address the listener saw (so a probe also tells
//! whether anything NATed the client).

use crate::netns;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
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

/// What a one-packet probe sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Udp,
    Icmp,
}

/// How a probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Answered(String),
    Refused(String),
    TimedOut,
    Failed(String),
}

/// A probe socket opened inside a namespace and bound to `src` before anything is sent,
/// so the caller knows the source port (or ICMP identifier) the packet will carry and
/// can match exactly that packet.
pub struct Prober {
    kind: Kind,
    fd: std::os::fd::OwnedFd,
    /// The TCP or UDP source port, or the ICMP echo identifier.
    pub ident: u16,
}

fn nix_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Prober {
    pub fn open(netns: &Path, src: std::net::Ipv4Addr, kind: Kind) -> io::Result<Self> {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, bind, getsockname, socket,
        };
        let (ty, proto) = match kind {
            Kind::Tcp => (SockType::Stream, SockProtocol::Tcp),
            Kind::Udp => (SockType::Datagram, SockProtocol::Udp),
            Kind::Icmp => (SockType::Raw, SockProtocol::Icmp),
        };
        let fd = netns::run_in(netns, || socket(AddressFamily::Inet, ty, SockFlag::SOCK_CLOEXEC, proto))
            .map_err(ns_err)?
            .map_err(nix_io)?;
        bind(fd.as_raw_fd(), &SockaddrIn::from(std::net::SocketAddrV4::new(src, 0))).map_err(nix_io)?;
        let ident = match kind {
            Kind::Icmp => (std::process::id() as u16) ^ 0x5a5a,
            _ => getsockname::<SockaddrIn>(fd.as_raw_fd()).map_err(nix_io)?.port(),
        };
        Ok(Self { kind, fd, ident })
    }

    /// Sends the probe to `dst:port` (no port for ICMP) and waits at most `timeout`.
    pub fn send(self, dst: std::net::Ipv4Addr, port: u16, timeout: Duration) -> Answer {
        match self.kind {
            Kind::Tcp => tcp_once(self.fd, dst, port, timeout),
            Kind::Udp => udp_once(self.fd, dst, port, timeout),
            Kind::Icmp => icmp_once(self.fd, self.ident, dst, timeout),
        }
    }
}

fn refused(e: &io::Error, how: &str) -> Answer {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Answer::Refused(format!("{how} (nothing listens there, or a reject)")),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Answer::TimedOut,
        _ if matches!(e.raw_os_error(), Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES | libc::EPERM)) => {
            Answer::Refused(format!("{e} (an ICMP error or a reject came back)"))
        }
        _ => Answer::Failed(e.to_string()),
    }
}

fn tcp_once(fd: std::os::fd::OwnedFd, dst: std::net::Ipv4Addr, port: u16, timeout: Duration) -> Answer {
    use nix::sys::socket::{SockaddrIn, connect};
    let stream = TcpStream::from(fd);
    if let Err(e) = stream.set_nonblocking(true) {
        return Answer::Failed(e.to_string());
    }
    match connect(stream.as_raw_fd(), &SockaddrIn::from(std::net::SocketAddrV4::new(dst, port))) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return refused(&nix_io(e), "a TCP reset"),
    }
    let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&stream), nix::poll::PollFlags::POLLOUT)];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
        Ok(0) => return Answer::TimedOut,
        Ok(_) => {}
        Err(e) => return Answer::Failed(e.to_string()),
    }
    match stream.take_error() {
        Ok(None) => {}
        Ok(Some(e)) => return refused(&e, "a TCP reset"),
        Err(e) => return Answer::Failed(e.to_string()),
    }
    // Connected. Ask the server who it is (the lab's servers answer HTTP); a server that
    // says nothing is still an answer.
    let mut s = stream;
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    let said = String::from_utf8_lossy(&buf[..n]).lines().last().unwrap_or("").trim().to_string();
    Answer::Answered(if said.is_empty() {
        "TCP handshake completed".into()
    } else {
        format!("TCP handshake completed; the server said: {said}")
    })
}

fn udp_once(fd: std::os::fd::OwnedFd, dst: std::net::Ipv4Addr, port: u16, timeout: Duration) -> Answer {
    let s = std::net::UdpSocket::from(fd);
    let run = || -> io::Result<String> {
        s.connect((dst, port))?;
        s.set_read_timeout(Some(timeout))?;
        s.send(b"flatnet trace probe")?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        let text =
            std::str::from_utf8(&buf[..n]).ok().filter(|t| t.chars().all(|c| !c.is_control() || c.is_whitespace()));
        Ok(match text {
            Some(t) => format!("a UDP reply: {}", t.trim()),
            None => format!("a UDP reply of {n} bytes"),
        })
    };
    match run() {
        Ok(said) => Answer::Answered(said),
        Err(e) => refused(&e, "ICMP port unreachable"),
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmp_once(fd: std::os::fd::OwnedFd, id: u16, dst: std::net::Ipv4Addr, timeout: Duration) -> Answer {
    use nix::sys::socket::{MsgFlags, SockaddrIn, recv, sendto, setsockopt, sockopt};
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend_from_slice(b"flatnet trace probe");
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    let raw = fd.as_raw_fd();
    if let Err(e) = sendto(raw, &pkt, &SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0)), MsgFlags::empty()) {
        return refused(&nix_io(e), "ICMP error");
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        let tv = nix::sys::time::TimeVal::new(left.as_secs() as i64, left.subsec_micros() as i64);
        let _ = setsockopt(&fd, sockopt::ReceiveTimeout, &tv);
        let n = match recv(raw, &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => return Answer::Failed(e.to_string()),
        };
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if n < ihl + 8 {
            continue;
        }
        let from = std::net::Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        let icmp = &buf[ihl..n];
        match icmp[0] {
            0 if icmp[4..6] == id.to_be_bytes() => return Answer::Answered(format!("an ICMP echo reply from {from}")),
            3 | 11 if n >= ihl + 8 + 28 && icmp[8 + 20 + 4..8 + 20 + 6] == id.to_be_bytes() => {
                return Answer::Refused(format!("ICMP type {} code {} from {from}", icmp[0], icmp[1]));
            }
            _ => {}
        }
    }
    Answer::TimedOut
}
