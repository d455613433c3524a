//! The lab's stand-in for the Internet's DNS, at 192.168.1.1:53 on the underlay: the
//! cluster DNS forwards every name that is not the cluster's here, so the lab never
//! sends a query off the machine. It knows one zone, `example.com`: the name and every
//! name below it is 203.0.113.10 (a documentation address); anything else does not exist.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

pub const ZONE: &str = "example.com.";
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const TTL: u32 = 30;

/// The reply to `query`; None for a packet that is not a query.
pub fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    let Some(question) = q.queries.first().cloned() else {
        r.metadata.response_code = ResponseCode::FormErr;
        return r.to_vec().ok();
    };
    let zone = Name::from_ascii(ZONE).expect("literal");
    let name = question.name().clone();
    if zone.zone_of(&name) {
        if question.query_type() == RecordType::A {
            r.add_answer(Record::from_rdata(name, TTL, RData::A(A(ADDRESS))));
        }
    } else {
        r.metadata.response_code = ResponseCode::NXDomain;
    }
    r.add_query(question);
    r.to_vec().ok()
}

/// A UDP socket on `addr` inside the namespace at `netns`.
pub fn bind_in(netns: &Path, addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = flatnet_kernel::netns::run_in(netns, || std::net::UdpSocket::bind(addr))
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Answers on `sock` until the task is dropped.
pub async fn serve(sock: std::net::UdpSocket) -> std::io::Result<()> {
    let sock = tokio::net::UdpSocket::from_std(sock)?;
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        if let Some(reply) = answer(&buf[..n]) {
            let _ = sock.send_to(&reply, peer).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn ask(name: &str, t: RecordType) -> Message {
        let mut m = Message::new(3, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        Message::from_vec(&answer(&m.to_vec().unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn example_com_resolves_and_nothing_else_does() {
        let m = ask("www.Example.com.", RecordType::A);
        assert_eq!(m.metadata.id, 3);
        assert_eq!(m.answers[0].data.to_string(), "203.0.113.10");
        assert!(ask("example.com.", RecordType::AAAA).answers.is_empty());
        assert_eq!(ask("example.org.", RecordType::A).metadata.response_code, ResponseCode::NXDomain);
    }
}
