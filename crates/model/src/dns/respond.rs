//! The request path: one query packet in, one reply packet out (or a verdict that the
//! query is to be forwarded, or dropped). Every byte of the query is distrusted: a
//! malformed packet gets FORMERR, what we do not serve gets NOTIMP or REFUSED, and a
//! packet that is not a query at all is dropped.

use super::name::{MAX_NAME, ReadError, in_zone, read_question_name, skip_name};
use super::rtype;
use super::zone::{RecordSet, Zone};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
    /// EDNS version not supported (extended rcode 16).
    BadVers = 16,
}

/// What the server does with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `out` holds the reply.
    Reply,
    /// The name is not the cluster's: ask the upstream resolvers (`out` is empty).
    Forward,
    /// Not a query (too short, or a response): say nothing.
    Drop,
}

/// The payload size we accept over UDP with EDNS (the DNS flag day's safe size).
pub const EDNS_SIZE: u16 = 1232;
const HEADER: usize = 12;
const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;

struct Edns {
    size: u16,
    version: u8,
}

struct Query {
    id: u16,
    flags: u16,
    /// Offset just past the question (name, type, class).
    question_end: usize,
    key: [u8; MAX_NAME],
    key_len: usize,
    qtype: u16,
    qclass: u16,
    edns: Option<Edns>,
}

/// Why a packet is not answered normally: a bare error reply, or silence.
enum Refusal {
    Drop,
    /// The rcode, and the question's end when the question could be read.
    Error(Rcode, Option<usize>),
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

fn parse(packet: &[u8]) -> Result<Query, Refusal> {
    if packet.len() < HEADER {
        return Err(Refusal::Drop);
    }
    let id = u16_at(packet, 0).ok_or(Refusal::Drop)?;
    let flags = u16_at(packet, 2).ok_or(Refusal::Drop)?;
    if flags & QR != 0 {
        return Err(Refusal::Drop);
    }
    if (flags >> 11) & 0xF != 0 {
        return Err(Refusal::Error(Rcode::NotImp, None));
    }
    let count = |i: usize| u16_at(packet, 4 + 2 * i).unwrap_or(0);
    let (qd, an, ns, ar) = (count(0), count(1), count(2), count(3));
    if qd != 1 {
        return Err(Refusal::Error(Rcode::FormErr, None));
    }
    let mut key = [0u8; MAX_NAME];
    let formerr = |_: ReadError| Refusal::Error(Rcode::FormErr, None);
    let (name_end, key_len) = read_question_name(packet, HEADER, &mut key).map_err(formerr)?;
    let qtype = u16_at(packet, name_end).ok_or(Refusal::Error(Rcode::FormErr, None))?;
    let qclass = u16_at(packet, name_end + 2).ok_or(Refusal::Error(Rcode::FormErr, None))?;
    let question_end = name_end + 4;
    let formerr_q = |_| Refusal::Error(Rcode::FormErr, Some(question_end));
    // Records after the question: only an OPT in the additional section means anything
    // to us, but every record must be whole.
    let mut at = question_end;
    let mut edns = None;
    for i in 0..(an as usize + ns as usize + ar as usize) {
        at = skip_name(packet, at).map_err(formerr_q)?;
        let t = u16_at(packet, at).ok_or(Refusal::Error(Rcode::FormErr, Some(question_end)))?;
        let class = u16_at(packet, at + 2).ok_or(Refusal::Error(Rcode::FormErr, Some(question_end)))?;
        let ttl = packet.get(at + 4..at + 8).ok_or(Refusal::Error(Rcode::FormErr, Some(question_end)))?;
        let rdlen = u16_at(packet, at + 8).ok_or(Refusal::Error(Rcode::FormErr, Some(question_end)))? as usize;
        let version = ttl[1];
        at += 10 + rdlen;
        if at > packet.len() {
            return Err(Refusal::Error(Rcode::FormErr, Some(question_end)));
        }
        if t == rtype::OPT {
            // One OPT, in the additional section only (RFC 6891 6.1.1).
            if edns.is_some() || i < an as usize + ns as usize {
                return Err(Refusal::Error(Rcode::FormErr, Some(question_end)));
            }
            edns = Some(Edns { size: class.max(512), version });
        }
    }
    Ok(Query { id, flags, question_end, key, key_len, qtype, qclass, edns })
}

/// The largest UDP reply the sender of `query` takes: its EDNS size (bounded by
/// ours), else 512.
pub fn udp_limit(query: &[u8]) -> usize {
    match parse(query) {
        Ok(Query { edns: Some(e), .. }) => e.size.clamp(512, EDNS_SIZE) as usize,
        _ => 512,
    }
}

/// Answers `query` from `zone` into `out`.
pub fn respond(zone: &Zone, query: &[u8], transport: Transport, out: &mut Vec<u8>) -> Outcome {
    out.clear();
    let q = match parse(query) {
        Ok(q) => q,
        Err(Refusal::Drop) => return Outcome::Drop,
        Err(Refusal::Error(rcode, question_end)) => {
            bare(query, rcode, question_end, out);
            return Outcome::Reply;
        }
    };
    if let Some(e) = &q.edns
        && e.version > 0
    {
        Reply::new(&q, Rcode::BadVers, false).write(None, query, out, transport);
        return Outcome::Reply;
    }
    match q.qtype {
        rtype::AXFR | rtype::IXFR | rtype::MAILA | rtype::MAILB => {
            Reply::new(&q, Rcode::NotImp, false).write(None, query, out, transport);
            return Outcome::Reply;
        }
        rtype::OPT => {
            Reply::new(&q, Rcode::FormErr, false).write(None, query, out, transport);
            return Outcome::Reply;
        }
        _ => {}
    }
    // IN, or ANY (class 255) as resolvers sometimes ask; nothing else is served.
    if q.qclass != 1 && q.qclass != 255 {
        Reply::new(&q, Rcode::Refused, false).write(None, query, out, transport);
        return Outcome::Reply;
    }
    let name = &q.key[..q.key_len];
    let node = zone.find(name);
    let authoritative = in_zone(name, &zone.origin);
    if !authoritative && node.is_none() {
        return Outcome::Forward;
    }
    let mut reply = Reply::new(&q, Rcode::NoError, true);
    match node {
        None => {
            reply.rcode = Rcode::NxDomain;
            reply.authority(&zone.soa);
        }
        Some(node) => answer(node, q.qtype, &mut reply, zone),
    }
    reply.write(Some(zone), query, out, transport);
    Outcome::Reply
}

fn answer<'z>(sets: &'z [RecordSet], qtype: u16, reply: &mut Reply<'z>, zone: &'z Zone) {
    let set = |t: u16| sets.iter().find(|s| s.rtype == t);
    if let Some(c) = set(rtype::CNAME)
        && qtype != rtype::CNAME
    {
        reply.answers.push(c);
        return;
    }
    if qtype == rtype::ANY {
        reply.answers.extend(sets.iter());
    } else if let Some(s) = set(qtype) {
        reply.answers.push(s);
    }
    if reply.answers.is_empty() {
        reply.authority(&zone.soa);
    }
}

/// A reply being assembled from pre-rendered record sets.
struct Reply<'z> {
    id: u16,
    rd: u16,
    rcode: Rcode,
    aa: bool,
    question_end: usize,
    edns: bool,
    client_size: u16,
    answers: Vec<&'z RecordSet>,
    soa: Option<&'z [u8]>,
}

impl<'z> Reply<'z> {
    fn new(q: &Query, rcode: Rcode, aa: bool) -> Self {
        Reply {
            id: q.id,
            rd: q.flags & RD,
            rcode,
            aa,
            question_end: q.question_end,
            edns: q.edns.is_some(),
            client_size: q.edns.as_ref().map_or(512, |e| e.size),
            answers: Vec::new(),
            soa: None,
        }
    }

    fn authority(&mut self, soa: &'z [u8]) {
        self.soa = Some(soa);
    }

    fn write(&self, zone: Option<&Zone>, query: &[u8], out: &mut Vec<u8>, transport: Transport) {
        let an: u16 = self.answers.iter().map(|s| s.count).sum();
        let extra: u16 = self.answers.iter().map(|s| s.extra_count).sum();
        let ns = u16::from(self.soa.is_some());
        let opt = u16::from(self.edns);
        let (low, ext) = (self.rcode as u16 & 0xF, (self.rcode as u16 >> 4) as u8);
        let mut flags = QR | self.rd | RA | low;
        if self.aa {
            flags |= AA;
        }
        header(out, self.id, flags, [1, an, ns, extra + opt]);
        out.extend_from_slice(&query[HEADER..self.question_end]);
        if let Some(z) = zone {
            for s in &self.answers {
                out.extend_from_slice(z.answers(s));
            }
        }
        if let Some(soa) = self.soa {
            out.extend_from_slice(soa);
        }
        if let Some(z) = zone {
            for s in &self.answers {
                out.extend_from_slice(z.extra(s));
            }
        }
        if self.edns {
            push_opt(out, ext);
        }
        let limit = match transport {
            Transport::Tcp => u16::MAX as usize,
            Transport::Udp => self.client_size.clamp(512, EDNS_SIZE) as usize,
        };
        if out.len() > limit {
            // Too big for the client's buffer: the question alone, TC set; it retries on TCP.
            out.clear();
            header(out, self.id, flags | TC, [1, 0, 0, opt]);
            out.extend_from_slice(&query[HEADER..self.question_end]);
            if self.edns {
                push_opt(out, ext);
            }
        }
    }
}

fn header(out: &mut Vec<u8>, id: u16, flags: u16, counts: [u16; 4]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

fn push_opt(out: &mut Vec<u8>, ext_rcode: u8) {
    out.push(0); // the root
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_SIZE.to_be_bytes());
    out.extend_from_slice(&[ext_rcode, 0, 0, 0]); // version 0, no flags
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// A reply with `rcode` and no records: the question echoed when it could be read.
fn bare(query: &[u8], rcode: Rcode, question_end: Option<usize>, out: &mut Vec<u8>) {
    let id = u16_at(query, 0).unwrap_or(0);
    let rd = u16_at(query, 2).unwrap_or(0) & RD;
    let opcode = u16_at(query, 2).unwrap_or(0) & 0x7800;
    let qd = u16::from(question_end.is_some());
    header(out, id, QR | opcode | rd | RA | rcode as u16, [qd, 0, 0, 0]);
    if let Some(end) = question_end {
        out.extend_from_slice(&query[HEADER..end]);
    }
}

/// An error reply to `query` (REFUSED to a client we do not forward for, SERVFAIL
/// when no upstream answered), or nothing when `query` is not a query.
pub fn error_reply(query: &[u8], rcode: Rcode, out: &mut Vec<u8>) -> bool {
    out.clear();
    match parse(query) {
        Ok(q) => {
            Reply::new(&q, rcode, false).write(None, query, out, Transport::Tcp);
            true
        }
        Err(Refusal::Drop) => false,
        Err(Refusal::Error(r, end)) => {
            bare(query, r, end, out);
            true
        }
    }
}

/// `response` (an upstream's reply) cut to what the client of `query` takes over UDP:
/// as is when it fits, else the header and question with TC set.
pub fn truncate_to(response: &[u8], limit: usize, out: &mut Vec<u8>) {
    out.clear();
    if response.len() <= limit {
        out.extend_from_slice(response);
        return;
    }
    let end = skip_name(response, HEADER).map(|e| e + 4).unwrap_or(HEADER).min(response.len());
    let flags = u16_at(response, 2).unwrap_or(QR) | TC;
    header(out, u16_at(response, 0).unwrap_or(0), flags, [u16::from(end > HEADER), 0, 0, 0]);
    out.extend_from_slice(&response[HEADER..end]);
}

/// When `reply` (ours) answers an A or AAAA question with nothing but a CNAME to a name
/// outside `zone` (an ExternalName Service), that name and the question's type: the
/// server looks it up upstream and appends the answer, as resolvers expect of a
/// recursive server. None otherwise.
pub fn cname_to_chase(zone: &Zone, reply: &[u8]) -> Option<(Vec<u8>, u16)> {
    if u16_at(reply, 6)? != 1 || u16_at(reply, 4)? != 1 {
        return None;
    }
    let name_end = skip_name(reply, HEADER).ok()?;
    let qtype = u16_at(reply, name_end)?;
    if qtype != rtype::A && qtype != rtype::AAAA {
        return None;
    }
    let answer = name_end + 4;
    let owner_end = skip_name(reply, answer).ok()?;
    if u16_at(reply, owner_end)? != rtype::CNAME {
        return None;
    }
    let target = reply.get(owner_end + 10..)?;
    let mut key = [0u8; MAX_NAME];
    let (_, len) = read_question_name(target, 0, &mut key).ok()?;
    let target = key[..len].to_vec();
    (!in_zone(&target, &zone.origin)).then_some((target, qtype))
}
