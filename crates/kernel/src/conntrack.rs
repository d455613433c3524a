//! IPv4 conntrack entries over ctnetlink (nfnetlink's conntrack subsystem), with the
//! messages built and read by hand: list the entries, and delete those DNATed to an
//! endpoint that went away, so its flows do not keep going to a dead address.

use crate::error::{KernelError, Result};
use netlink_packet_core::{NLA_F_NESTED, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use std::io;
use std::net::Ipv4Addr;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNETLINK_V0: u8 = 0;
const AF_INET: u8 = libc::AF_INET as u8;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// One conntrack entry's original and reply tuples (IPv4 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub proto: u8,
    pub orig_src: Ipv4Addr,
    pub orig_dst: Ipv4Addr,
    pub orig_sport: u16,
    pub orig_dport: u16,
    pub reply_src: Ipv4Addr,
    pub reply_dst: Ipv4Addr,
    pub reply_sport: u16,
    pub reply_dport: u16,
}

/// A listed entry, with what it takes to name it again in a delete.
struct Entry {
    flow: Flow,
    /// The conntrack zone, when not the default one (as the kernel sent it, big endian).
    zone: Option<[u8; 2]>,
}

/// Lists IPv4 conntrack entries of the calling thread's network namespace.
pub fn list() -> Result<Vec<Flow>> {
    let mut ct = Ctnetlink::open()?;
    Ok(ct.dump("list conntrack entries")?.into_iter().map(|e| e.flow).collect())
}

/// Deletes the entries `doomed` picks (`what` names them in errors); returns how many
/// went. One that vanished meanwhile (ENOENT) is not an error.
fn delete_where(what: &str, doomed: impl Fn(&Flow) -> bool) -> Result<usize> {
    let mut ct = Ctnetlink::open()?;
    let mut deleted = 0;
    for entry in ct.dump(&format!("list conntrack entries to delete those {what}"))? {
        if doomed(&entry.flow) && ct.delete(&entry)? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Deletes the entries whose protocol is `proto` and that were DNATed to
/// `endpoint`:`port` (reply source == endpoint and reply source port == port, and
/// original destination != endpoint). Returns how many were deleted.
pub fn delete_dnat_to(proto: u8, endpoint: Ipv4Addr, port: u16) -> Result<usize> {
    delete_where(&format!("DNATed to {endpoint}:{port}"), |f| {
        f.proto == proto && f.reply_src == endpoint && f.reply_sport == port && f.orig_dst != endpoint
    })
}

/// Deletes every conntrack entry with one of `ips` as an address of either direction;
/// returns how many went. For an address that just got a new owner, or a new isolation:
/// none of its earlier flows may pass as established.
pub fn delete_involving(ips: &std::collections::BTreeSet<Ipv4Addr>) -> Result<usize> {
    if ips.is_empty() {
        return Ok(0);
    }
    delete_where("of new pod addresses", |f| {
        [f.orig_src, f.orig_dst, f.reply_src, f.reply_dst].iter().any(|ip| ips.contains(ip))
    })
}

struct Ctnetlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Ctnetlink {
    /// Opens a socket in the calling thread's network namespace.
    fn open() -> Result<Self> {
        let socket = crate::netlink::socket(NETLINK_NETFILTER, "open a ctnetlink socket")?;
        Ok(Self { socket, seq: 0, buf: Vec::with_capacity(64 * 1024) })
    }

    fn send(&mut self, op: &str, msg: u16, flags: u16, attrs: &[u8]) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDRLEN + 4 + attrs.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes()); // Port id: the kernel fills it in.
        // nfgenmsg: family, version, resource id.
        out.extend_from_slice(&[AF_INET, NFNETLINK_V0, 0, 0]);
        out.extend_from_slice(attrs);
        self.socket.send(&out, 0).map_err(|e| KernelError::refused(op, e))?;
        Ok(self.seq)
    }

    /// Reads answers to `seq` and hands the payload (after the netlink header) of each
    /// ctnetlink message to `each`, until the ack or the end of a dump.
    fn receive(&mut self, op: &str, seq: u32, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let decode = |msg: String| KernelError::Decode { op: op.into(), msg };
        let refused = |errno: i32| KernelError::refused(op, io::Error::from_raw_os_error(errno));
        let mut interrupted = false;
        loop {
            self.buf.clear();
            self.socket.recv(&mut self.buf, 0).map_err(|e| KernelError::refused(op, e))?;
            if self.buf.is_empty() {
                return Err(decode("the socket returned nothing".into()));
            }
            let mut offset = 0;
            while offset < self.buf.len() {
                let bytes = &self.buf[offset..];
                if bytes.len() < NLMSG_HDRLEN {
                    return Err(decode(format!("truncated message header ({} bytes)", bytes.len())));
                }
                let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                if len < NLMSG_HDRLEN || len > bytes.len() {
                    return Err(decode(format!("bad message length {len}")));
                }
                offset += align(len);
                let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
                let flags = u16::from_ne_bytes([bytes[6], bytes[7]]);
                let msg_seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
                let payload = &bytes[NLMSG_HDRLEN..len];
                if msg_seq != seq {
                    continue; // A late answer to an earlier request.
                }
                interrupted |= flags & NLM_F_DUMP_INTR != 0;
                match kind {
                    NLMSG_ERROR => {
                        let code = read_i32(payload).ok_or_else(|| decode("truncated error message".into()))?;
                        return if code == 0 { Ok(()) } else { Err(refused(-code)) };
                    }
                    NLMSG_DONE => {
                        // A dump that failed midway says so in the done message.
                        return match read_i32(payload) {
                            Some(code) if code < 0 => Err(refused(-code)),
                            _ if interrupted => Err(refused(libc::EINTR)),
                            _ => Ok(()),
                        };
                    }
                    _ if kind >> 8 == NFNL_SUBSYS_CTNETLINK => each(payload)?,
                    _ => {}
                }
            }
        }
    }

    /// Every IPv4 entry. A dump the kernel marks as interrupted (the table changed while
    /// it was read) is read again, a few times at most.
    fn dump(&mut self, op: &str) -> Result<Vec<Entry>> {
        let mut attempt = 0;
        loop {
            let seq = self.send(op, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, &[])?;
            let mut out = Vec::new();
            let result = self.receive(op, seq, |payload| {
                let entry = parse_entry(payload).map_err(|msg| KernelError::Decode { op: op.into(), msg })?;
                out.extend(entry);
                Ok(())
            });
            match result {
                Err(e) if e.errno() == Some(libc::EINTR) && attempt < 5 => attempt += 1,
                other => return other.map(|()| out),
            }
        }
    }

    /// Deletes one entry, named by its original tuple; Ok(false) when it was gone already.
    fn delete(&mut self, entry: &Entry) -> Result<bool> {
        let f = &entry.flow;
        let op = format!(
            "delete conntrack entry proto {} {}:{} -> {}:{}",
            f.proto, f.orig_src, f.orig_sport, f.orig_dst, f.orig_dport
        );
        let mut attrs = Vec::new();
        nest(&mut attrs, CTA_TUPLE_ORIG, |b| {
            nest(b, CTA_TUPLE_IP, |b| {
                put(b, CTA_IP_V4_SRC, &f.orig_src.octets());
                put(b, CTA_IP_V4_DST, &f.orig_dst.octets());
            });
            nest(b, CTA_TUPLE_PROTO, |b| {
                put(b, CTA_PROTO_NUM, &[f.proto]);
                put(b, CTA_PROTO_SRC_PORT, &f.orig_sport.to_be_bytes());
                put(b, CTA_PROTO_DST_PORT, &f.orig_dport.to_be_bytes());
            });
        });
        if let Some(zone) = entry.zone {
            put(&mut attrs, CTA_ZONE, &zone);
        }
        let seq = self.send(&op, IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, &attrs)?;
        match self.receive(&op, seq, |_| Ok(())) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn read_i32(bytes: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// Appends one attribute, padded to 4 bytes.
fn put(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    buf.extend_from_slice(&((NLA_HDRLEN + data.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align(buf.len()), 0);
}

/// Appends a nested attribute whose contents `fill` appends.
fn nest(buf: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; NLA_HDRLEN]);
    fill(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

/// The attributes in `bytes`, as (type without flags, payload).
fn attributes(mut bytes: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut out = Vec::new();
    while bytes.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > bytes.len() {
            return Err(format!("bad attribute length {len} (type {kind}, {} bytes left)", bytes.len()));
        }
        out.push((kind, &bytes[NLA_HDRLEN..len]));
        bytes = &bytes[align(len).min(bytes.len())..];
    }
    Ok(out)
}

/// One ctnetlink message (nfgenmsg and attributes); None for an entry that is not IPv4.
fn parse_entry(payload: &[u8]) -> Result<Option<Entry>, String> {
    if payload.len() < 4 {
        return Err(format!("truncated nfgenmsg ({} bytes)", payload.len()));
    }
    if payload[0] != AF_INET {
        return Ok(None);
    }
    let (mut orig, mut reply, mut zone) = (None, None, None);
    for (kind, data) in attributes(&payload[4..])? {
        match kind {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(data)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(data)?),
            CTA_ZONE => zone = Some(fixed::<2>(data, "CTA_ZONE")?),
            _ => {}
        }
    }
    let (Some(orig), Some(reply)) = (orig, reply) else { return Ok(None) };
    let (Some((proto, orig_src, orig_dst)), Some((_, reply_src, reply_dst))) = (orig.ipv4(), reply.ipv4()) else {
        return Ok(None);
    };
    let flow = Flow {
        proto,
        orig_src,
        orig_dst,
        orig_sport: orig.sport,
        orig_dport: orig.dport,
        reply_src,
        reply_dst,
        reply_sport: reply.sport,
        reply_dport: reply.dport,
    };
    Ok(Some(Entry { flow, zone }))
}

#[derive(Default)]
struct Tuple {
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    proto: Option<u8>,
    sport: u16,
    dport: u16,
}

impl Tuple {
    fn ipv4(&self) -> Option<(u8, Ipv4Addr, Ipv4Addr)> {
        Some((self.proto?, self.src?, self.dst?))
    }
}

fn parse_tuple(bytes: &[u8]) -> Result<Tuple, String> {
    let mut t = Tuple::default();
    for (kind, data) in attributes(bytes)? {
        match kind {
            CTA_TUPLE_IP => {
                for (kind, data) in attributes(data)? {
                    match kind {
                        CTA_IP_V4_SRC => t.src = Some(fixed::<4>(data, "CTA_IP_V4_SRC")?.into()),
                        CTA_IP_V4_DST => t.dst = Some(fixed::<4>(data, "CTA_IP_V4_DST")?.into()),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (kind, data) in attributes(data)? {
                    match kind {
                        CTA_PROTO_NUM => t.proto = Some(fixed::<1>(data, "CTA_PROTO_NUM")?[0]),
                        CTA_PROTO_SRC_PORT => t.sport = u16::from_be_bytes(fixed(data, "CTA_PROTO_SRC_PORT")?),
                        CTA_PROTO_DST_PORT => t.dport = u16::from_be_bytes(fixed(data, "CTA_PROTO_DST_PORT")?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(t)
}

fn fixed<const N: usize>(data: &[u8], what: &str) -> Result<[u8; N], String> {
    data.try_into().map_err(|_| format!("{what} has {} bytes, expected {N}", data.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox;
    use std::io::Write;
    use std::net::UdpSocket;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    const RULES: &str = "table ip t {
    chain out {
        type nat hook output priority -100; policy accept;
        ip daddr 127.0.0.2 udp dport 9 dnat to 127.0.0.1:5353
    }
}
";

    fn nft(rules: &str) {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        child.stdin.take().expect("nft stdin").write_all(rules.as_bytes()).expect("write rules to nft");
        let out = child.wait_with_output().expect("wait for nft");
        assert!(out.status.success(), "nft refused the rules: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn is_dnat_flow(f: &Flow) -> bool {
        f.proto == 17
            && f.orig_dst == Ipv4Addr::new(127, 0, 0, 2)
            && f.orig_dport == 9
            && f.reply_src == Ipv4Addr::LOCALHOST
            && f.reply_sport == 5353
    }

    #[test]
    fn lists_and_deletes_dnat_flows() {
        let test = "conntrack::tests::lists_and_deletes_dnat_flows";
        if let Some(why) = sandbox::unavailable_reason() {
            eprintln!("SKIPPED {test}: {why}");
            return;
        }
        if Command::new("nft").arg("--version").output().is_err() {
            eprintln!("SKIPPED {test}: the nft binary is missing (install nftables)");
            return;
        }
        sandbox::run(|_| {
            nft(RULES);
            let server = UdpSocket::bind("127.0.0.1:5353").expect("bind the server");
            server.set_read_timeout(Some(Duration::from_secs(5))).expect("set a read timeout");
            let client = UdpSocket::bind("127.0.0.1:0").expect("bind the client");
            client.send_to(b"ping", "127.0.0.2:9").expect("send the datagram");
            let mut buf = [0u8; 16];
            let (n, from) = server.recv_from(&mut buf).expect("the DNATed datagram reaches the server");
            assert_eq!(&buf[..n], b"ping");
            assert_eq!(from, client.local_addr().unwrap());

            let flows = list().expect("list conntrack entries");
            let flow = flows.iter().find(|f| is_dnat_flow(f)).unwrap_or_else(|| panic!("no DNAT flow in {flows:?}"));
            assert_eq!(flow.orig_src, Ipv4Addr::LOCALHOST);
            assert_eq!(flow.orig_sport, client.local_addr().unwrap().port());
            assert_eq!(flow.reply_dst, Ipv4Addr::LOCALHOST);
            assert_eq!(flow.reply_dport, flow.orig_sport);

            // Entries to another endpoint or protocol stay.
            assert_eq!(delete_dnat_to(6, Ipv4Addr::LOCALHOST, 5353).expect("delete nothing"), 0);
            assert_eq!(delete_dnat_to(17, Ipv4Addr::new(127, 0, 0, 3), 5353).expect("delete nothing"), 0);
            assert!(list().expect("list again").iter().any(is_dnat_flow));

            assert_eq!(delete_dnat_to(17, Ipv4Addr::LOCALHOST, 5353).expect("delete the flow"), 1);
            let flows = list().expect("list after delete");
            assert!(!flows.iter().any(is_dnat_flow), "the DNAT flow is still there: {flows:?}");
            assert_eq!(delete_dnat_to(17, Ipv4Addr::LOCALHOST, 5353).expect("delete again"), 0);
        })
        .expect("could not build the sandbox");
    }
}
