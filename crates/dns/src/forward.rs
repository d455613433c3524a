//! Names that are not the cluster's go to the upstream resolvers (from a resolv.conf),
//! through a cache that honours the answers' TTLs. Only this path parses packets with
//! hickory-proto: it is the slow one.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

/// How long one upstream gets before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries being asked upstream at once, at most (each holds a 64 KiB buffer); past
/// it a query is answered SERVFAIL at once, so a silent upstream cannot make the
/// server's memory grow.
pub const MAX_IN_FLIGHT: usize = 256;
/// Entries kept at most; past it, expired ones go, then everything.
const CACHE_ENTRIES: usize = 10_000;
/// The longest any answer is kept, whatever its TTL.
const MAX_CACHE_TTL: u32 = 3600;

/// The `nameserver` lines of a resolv.conf, as port-53 addresses.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = w.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// (lowercased name, type, class, whether the client spoke EDNS)
type CacheKey = (String, u16, u16, bool);

struct Cached {
    stored: Instant,
    ttl: u32,
    reply: Message,
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
    in_flight: tokio::sync::Semaphore,
}

/// Why a query got no upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// Not a query the forwarder can ask (no question, unparsable).
    Malformed,
    /// [`MAX_IN_FLIGHT`] queries are already upstream.
    Busy,
    /// Every upstream failed or stayed silent.
    NoAnswer,
}

/// Why an upstream's reply was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadReply {
    #[error("reply of {0} bytes is shorter than a DNS header")]
    Short(usize),
    #[error("reply id {got:#06x} is not the query's {want:#06x}")]
    Id { got: u16, want: u16 },
    #[error("not a response")]
    NotResponse,
    #[error("reply does not parse: {0}")]
    Unparsable(String),
    #[error("reply answers another question")]
    OtherQuestion,
}

/// A reply for the client, and how long it may be cached with its parsed form.
pub type Taken = (Vec<u8>, Option<(u32, Message)>);

/// Checks an upstream's `reply` to `asked` (sent with id `id`): a response, to that id
/// and that question. Returns it with the client's id put back, and how long it may be
/// cached with its parsed form (None: not cacheable).
pub fn take_reply(asked: &Message, id: u16, reply: &[u8]) -> Result<Taken, BadReply> {
    if reply.len() < 12 {
        return Err(BadReply::Short(reply.len()));
    }
    let got = u16::from_be_bytes([reply[0], reply[1]]);
    if got != id {
        return Err(BadReply::Id { got, want: id });
    }
    if reply[2] & 0x80 == 0 {
        return Err(BadReply::NotResponse);
    }
    let m = Message::from_vec(reply).map_err(|e| BadReply::Unparsable(e.to_string()))?;
    // Names compare without case (hickory's `Name` equality), as resolvers do.
    let same = |a: &Query, b: &Query| {
        a.query_type() == b.query_type() && a.query_class() == b.query_class() && a.name() == b.name()
    };
    // A reply without the question (some servers' errors) is taken; one to another isn't.
    if !m.queries.is_empty()
        && (m.queries.len() != asked.queries.len() || !m.queries.iter().zip(&asked.queries).all(|(a, b)| same(a, b)))
    {
        return Err(BadReply::OtherQuestion);
    }
    let mut out = reply.to_vec();
    out[..2].copy_from_slice(&asked.metadata.id.to_be_bytes());
    let cache = ttl_of(&m).filter(|t| *t > 0).map(|t| (t, m));
    Ok((out, cache))
}

fn key_of(m: &Message) -> Option<CacheKey> {
    let q = m.queries.first()?;
    Some((q.name().to_lowercase().to_ascii(), q.query_type().into(), q.query_class().into(), m.edns.is_some()))
}

/// How long `m` may be cached: its smallest TTL; for a negative answer, its SOA's.
fn ttl_of(m: &Message) -> Option<u32> {
    use hickory_proto::op::ResponseCode::{NXDomain, NoError};
    if !matches!(m.metadata.response_code, NoError | NXDomain) || m.metadata.truncation {
        return None;
    }
    let records = m.answers.iter().chain(m.authorities.iter());
    let ttl = if m.answers.is_empty() {
        records.filter(|r| r.record_type() == RecordType::SOA).map(|r| r.ttl).min()?
    } else {
        records.map(|r| r.ttl).min()?
    };
    Some(ttl.min(MAX_CACHE_TTL))
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self { upstreams, cache: Mutex::new(HashMap::new()), in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT) }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The reply to `query` (whole, not cut to a UDP size): from the cache, else from
    /// the first upstream that answers it.
    pub async fn resolve(&self, query: &[u8]) -> Result<Vec<u8>, Unanswered> {
        let asked = Message::from_vec(query).map_err(|_| Unanswered::Malformed)?;
        let key = key_of(&asked).ok_or(Unanswered::Malformed)?;
        if let Some(hit) = self.cached(&key, &asked) {
            return Ok(hit);
        }
        let _permit = self.in_flight.try_acquire().map_err(|_| Unanswered::Busy)?;
        let id = next_id();
        let mut ours = query.to_vec();
        ours[..2].copy_from_slice(&id.to_be_bytes());
        for up in &self.upstreams {
            match ask(*up, &ours, &asked, id).await {
                Ok((reply, cache)) => {
                    if let Some((ttl, m)) = cache {
                        self.store(key, ttl, m);
                    }
                    return Ok(reply);
                }
                Err(e) => debug!("upstream {up}: {e}"),
            }
        }
        warn!("no upstream answered for {} {} (asked {:?})", key.0, RecordType::from(key.1), self.upstreams);
        Err(Unanswered::NoAnswer)
    }

    /// `reply` (ours: a CNAME to `target`, outside the cluster) with the upstream's
    /// answer for `target` appended; `reply` as it is when there is none.
    pub async fn chase(&self, reply: &[u8], target: &[u8], qtype: u16) -> Vec<u8> {
        let appended = async {
            let name = Name::from_ascii(flatnet_model::dns::decode(target)?).ok()?;
            let mut q = Message::new(0, MessageType::Query, OpCode::Query);
            q.metadata.recursion_desired = true;
            q.add_query(Query::query(name, RecordType::from(qtype)));
            let upstream = Message::from_vec(&self.resolve(&q.to_vec().ok()?).await.ok()?).ok()?;
            let mut ours = Message::from_vec(reply).ok()?;
            ours.answers.extend(upstream.answers);
            ours.to_vec().ok()
        };
        appended.await.unwrap_or_else(|| reply.to_vec())
    }

    fn cached(&self, key: &CacheKey, asked: &Message) -> Option<Vec<u8>> {
        let cache = self.cache.lock().ok()?;
        let c = cache.get(key)?;
        let age = c.stored.elapsed().as_secs() as u32;
        if age >= c.ttl {
            return None;
        }
        let mut m = c.reply.clone();
        m.metadata.id = asked.metadata.id;
        m.metadata.recursion_desired = asked.metadata.recursion_desired;
        m.queries.clone_from(&asked.queries);
        for r in m.answers.iter_mut().chain(m.authorities.iter_mut()).chain(m.additionals.iter_mut()) {
            r.ttl = r.ttl.saturating_sub(age);
        }
        m.to_vec().ok()
    }

    fn store(&self, key: CacheKey, ttl: u32, reply: Message) {
        let Ok(mut cache) = self.cache.lock() else { return };
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| (c.stored.elapsed().as_secs() as u32) < c.ttl);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, Cached { stored: Instant::now(), ttl, reply });
    }
}

/// A query id no one can guess from the last (the source port is random too).
fn next_id() -> u16 {
    use std::hash::BuildHasher;
    // Each RandomState has fresh random keys: hashing nothing with it gives a random number.
    std::collections::hash_map::RandomState::new().hash_one(()) as u16
}

fn invalid(e: BadReply) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// One query to one upstream: over UDP from a fresh port, over TCP when the answer is
/// truncated. A UDP datagram that is not the reply (another id, question or sender's
/// junk) is ignored; a bad reply over TCP ends the try.
async fn ask(up: SocketAddr, query: &[u8], asked: &Message, id: u16) -> std::io::Result<Taken> {
    let bind: SocketAddr = if up.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        let reply = &buf[..n];
        if n >= 3 && reply[2] & 0x02 != 0 && reply[..2] == id.to_be_bytes() {
            let tcp = tokio::time::timeout_at(deadline, ask_tcp(up, query))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer over TCP"))??;
            return take_reply(asked, id, &tcp).map_err(invalid);
        }
        match take_reply(asked, id, reply) {
            Ok(t) => return Ok(t),
            Err(e) => debug!("upstream {up}: ignored a datagram: {e}"),
        }
    }
}

/// The first message the upstream sends back over TCP, whatever it holds.
async fn ask_tcp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(up).await?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::Error::other("query over 65535 bytes"))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed).await?;
    let len = s.read_u16().await? as usize;
    let mut reply = vec![0u8; len];
    s.read_exact(&mut reply).await?;
    Ok(reply)
}

/// The upstream-reply path against arbitrary bytes, for the fuzz target and the replay
/// of its corpus: `reply` (with the id of a fixed query written into it) is taken or
/// refused without a panic; a taken reply carries the client's id and, when cacheable,
/// comes back out of the cache answering the same question.
pub fn exercise_reply(reply: &[u8]) {
    let mut asked = Message::new(0x4242, MessageType::Query, OpCode::Query);
    let Ok(name) = Name::from_ascii("www.example.com.") else { return };
    asked.add_query(Query::query(name, RecordType::A));
    let ours: u16 = 0x1717;
    let mut reply = reply.to_vec();
    if reply.len() >= 2 {
        reply[..2].copy_from_slice(&ours.to_be_bytes());
    }
    let Ok((client, cache)) = take_reply(&asked, ours, &reply) else { return };
    assert_eq!(client[..2], asked.metadata.id.to_be_bytes(), "the client's id is put back");
    if let Some((ttl, m)) = cache {
        assert!(ttl > 0 && ttl <= MAX_CACHE_TTL);
        let f = Forwarder::new(Vec::new());
        let key = key_of(&asked).unwrap_or_default();
        f.store(key.clone(), ttl, m);
        if let Some(hit) = f.cached(&key, &asked) {
            let back = Message::from_vec(&hit).ok();
            assert!(back.is_some_and(|b| b.metadata.id == asked.metadata.id && b.queries == asked.queries));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked() -> Message {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii("www.example.com.").unwrap(), RecordType::A));
        m
    }

    fn reply_to(q: &Message, id: u16, name: &str) -> Vec<u8> {
        let mut r = Message::new(id, MessageType::Response, OpCode::Query);
        r.add_query(Query::query(Name::from_ascii(name).unwrap(), q.queries[0].query_type()));
        r.to_vec().unwrap()
    }

    #[test]
    fn an_upstream_reply_is_taken_only_for_its_query() {
        let q = asked();
        let (client, _) = take_reply(&q, 0x99, &reply_to(&q, 0x99, "WWW.example.com.")).unwrap();
        assert_eq!(client[..2], 7u16.to_be_bytes(), "the client's id is put back");
        assert_eq!(take_reply(&q, 0x99, &[0x00]), Err(BadReply::Short(1)), "a short TCP reply");
        assert_eq!(
            take_reply(&q, 0x99, &reply_to(&q, 0x98, "www.example.com.")),
            Err(BadReply::Id { got: 0x98, want: 0x99 })
        );
        assert_eq!(take_reply(&q, 0x99, &reply_to(&q, 0x99, "evil.example.")), Err(BadReply::OtherQuestion));
        let mut not_response = reply_to(&q, 0x99, "www.example.com.");
        not_response[2] &= 0x7f;
        assert_eq!(take_reply(&q, 0x99, &not_response), Err(BadReply::NotResponse));
    }

    #[test]
    fn the_fuzz_corpus_replays_clean() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/upstream_reply");
        let mut n = 0;
        for f in std::fs::read_dir(&dir).expect("the corpus is in the repo") {
            exercise_reply(&std::fs::read(f.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "{} is empty", dir.display());
    }

    #[test]
    fn nameservers_come_from_resolv_conf() {
        let text =
            "# x\nsearch a.b\nnameserver 192.168.1.1\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:5\n";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            vec!["192.168.1.1:53".parse::<SocketAddr>().unwrap(), "[fe80::1]:53".parse().unwrap()]
        );
    }
}
