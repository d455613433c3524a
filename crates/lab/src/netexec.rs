//! The lab's stand-in for a container image that serves: on each declared port, TCP and
//! UDP, it answers with who it is and who it saw (like agnhost's netexec), so every
//! check can tell which pod answered and whether the client's address was preserved.
//!
//! HTTP: `GET /` → `pod=… namespace=… node=… pod_ip=… client=IP:PORT`, `GET /hostname`
//! → the pod name, `GET /clientip` → `IP:PORT`. Anything else on TCP, and any UDP
//! datagram, gets the `/` line.

use flatnet_model::l4::Proto;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct Identity {
    pub pod: String,
    pub namespace: String,
    pub node: String,
}

impl Identity {
    fn line(&self, local: SocketAddr, client: SocketAddr) -> String {
        format!(
            "pod={} namespace={} node={} pod_ip={} client={client}\n",
            self.pod,
            self.namespace,
            self.node,
            local.ip()
        )
    }

    /// The answer to one request, raw or HTTP.
    pub fn answer(&self, request: &[u8], local: SocketAddr, client: SocketAddr) -> Vec<u8> {
        let text = String::from_utf8_lossy(request);
        let mut words = text.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if !matches!(method, "GET" | "HEAD" | "POST" | "PUT") || !path.starts_with('/') {
            return self.line(local, client).into_bytes();
        }
        let body = match path.split('?').next().unwrap_or("/") {
            "/hostname" => format!("{}\n", self.pod),
            "/clientip" => format!("{client}\n"),
            _ => self.line(local, client),
        };
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if method != "HEAD" {
            resp.extend_from_slice(body.as_bytes());
        }
        resp
    }
}

/// Parses `80/TCP`, `53/UDP`, `8080` (TCP).
pub fn parse_port(s: &str) -> Result<(u16, Proto), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port = port.parse().map_err(|_| format!("{s:?}: not a port number"))?;
    match Proto::parse(&proto.to_ascii_uppercase()) {
        Some(p @ (Proto::Tcp | Proto::Udp)) => Ok((port, p)),
        _ => Err(format!("{s:?}: protocol {proto} is not served (TCP or UDP)")),
    }
}

/// Serves every port until the process is killed.
pub async fn serve(id: Identity, ports: Vec<(u16, Proto)>) -> std::io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for (port, proto) in ports {
        let id = id.clone();
        match proto {
            Proto::Tcp => {
                let l = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
                tasks.spawn(async move {
                    loop {
                        let Ok((mut s, client)) = l.accept().await else { continue };
                        let id = id.clone();
                        tokio::spawn(async move {
                            let local = s.local_addr()?;
                            let mut buf = vec![0u8; 4096];
                            let mut n = 0;
                            // Read until the end of the request head, EOF, or a short wait:
                            // a raw client (nc) gets its answer without sending anything.
                            while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                match tokio::time::timeout(std::time::Duration::from_millis(500), s.read(&mut buf[n..]))
                                    .await
                                {
                                    Ok(Ok(0)) | Err(_) => break,
                                    Ok(Ok(k)) => n += k,
                                    Ok(Err(e)) => return Err(e),
                                }
                            }
                            s.write_all(&id.answer(&buf[..n], local, client)).await?;
                            s.shutdown().await
                        });
                    }
                });
            }
            Proto::Udp => {
                let sock = tokio::net::UdpSocket::bind(("0.0.0.0", port)).await?;
                tasks.spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    loop {
                        let Ok((n, client)) = sock.recv_from(&mut buf).await else { continue };
                        // The local address of a wildcard socket is 0.0.0.0: name the
                        // pod by its route back to the client instead.
                        let local = local_ip_towards(client).unwrap_or_else(|| sock.local_addr().expect("bound"));
                        let _ = sock.send_to(&id.answer(&buf[..n], local, client), client).await;
                    }
                });
            }
            other @ (Proto::Sctp | Proto::Icmp) => {
                return Err(std::io::Error::other(format!("port {port}: {} is not served", other.word())));
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The source address the kernel picks to reach `peer` (a connected UDP socket, no packet sent).
fn local_ip_towards(peer: SocketAddr) -> Option<SocketAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect(peer).ok()?;
    s.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_http_and_raw_requests() {
        let id = Identity { pod: "web".into(), namespace: "default".into(), node: "node-2".into() };
        let (local, client): (SocketAddr, SocketAddr) =
            ("10.244.2.5:80".parse().unwrap(), "10.244.1.7:41000".parse().unwrap());
        let http = String::from_utf8(id.answer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", local, client)).unwrap();
        assert!(http.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(http.ends_with("pod=web namespace=default node=node-2 pod_ip=10.244.2.5 client=10.244.1.7:41000\n"));
        let ip = String::from_utf8(id.answer(b"GET /clientip HTTP/1.0\r\n\r\n", local, client)).unwrap();
        assert!(ip.ends_with("\r\n\r\n10.244.1.7:41000\n"));
        let raw = String::from_utf8(id.answer(b"hello", local, client)).unwrap();
        assert!(raw.starts_with("pod=web "));
        assert_eq!(parse_port("53/udp"), Ok((53, Proto::Udp)));
        assert_eq!(parse_port("8080"), Ok((8080, Proto::Tcp)));
        assert!(parse_port("80/SCTP").unwrap_err().contains("SCTP"));
        assert!(parse_port("http").is_err());
    }
}
