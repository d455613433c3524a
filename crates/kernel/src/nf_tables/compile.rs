//! nft JSON commands (the subset flatnet's planners write: tables, chains, rules, sets
//! and maps, elements) compiled to nf_tables netlink messages, as `nft` itself would
//! send them, so that `nft list` shows the same ruleset whichever wrote it.

use super::wire::{self, Attrs};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// What a value in a register is, for encoding constants compared with it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ty {
    /// An IPv4 address, network order.
    Ipv4,
    /// A layer-4 protocol number, one byte.
    Proto,
    /// A port, network order.
    Port,
    /// A 32-bit number in host order (marks, numgen, fib and ct results).
    Host32,
    /// `fib … type`: an address type (host order).
    AddrType,
    /// `ct state`: a bit set (host order).
    CtState,
    Concat(Vec<Ty>),
}

impl Ty {
    fn len(&self) -> usize {
        match self {
            Ty::Ipv4 | Ty::Host32 | Ty::AddrType | Ty::CtState => 4,
            Ty::Proto => 1,
            Ty::Port => 2,
            Ty::Concat(parts) => parts.iter().map(|p| p.len().next_multiple_of(4)).sum(),
        }
    }

    /// A set key type by its nft name: (type, its nft datatype id).
    fn of_set_type(name: &str) -> Option<(Ty, u32)> {
        Some(match name {
            "ipv4_addr" => (Ty::Ipv4, 7),
            "inet_proto" => (Ty::Proto, 12),
            "inet_service" => (Ty::Port, 13),
            "mark" => (Ty::Host32, 19),
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Unsupported(pub String);

fn unsupported(what: &str, v: &Value) -> Unsupported {
    let mut text = v.to_string();
    if text.len() > 200 {
        text.truncate(200);
        text.push('…');
    }
    Unsupported(format!("{what} is not something flatnet writes over netlink: {text}"))
}

type Result<T> = std::result::Result<T, Unsupported>;

/// A set's key (and whether it maps to verdicts), to encode its elements.
#[derive(Debug, Clone)]
pub struct SetShape {
    key: Ty,
    verdict_map: bool,
    /// An interval set: each element a start, and an end flagged as such.
    interval: bool,
}

impl SetShape {
    /// From nft type names (`["ipv4_addr", "inet_proto", "inet_service"]`).
    pub fn new(types: &[&str], verdict_map: bool) -> Option<Self> {
        let tys: Vec<Ty> = types.iter().map(|t| Ty::of_set_type(t).map(|(ty, _)| ty)).collect::<Option<_>>()?;
        let key = if tys.len() == 1 { tys.into_iter().next()? } else { Ty::Concat(tys) };
        Some(Self { key, verdict_map, interval: false })
    }

    /// Whether it is an interval set (whose elements read back as bare bounds).
    pub fn is_interval(&self) -> bool {
        self.interval
    }

    /// An interval set of `types` (e.g. address ranges).
    pub fn intervals(types: &[&str]) -> Option<Self> {
        Some(Self { interval: true, ..Self::new(types, false)? })
    }

    /// A key's bytes as `nft -j` shows it (an address, a protocol word, a port, or a
    /// `{"concat": […]}` of them).
    pub fn json(&self, bytes: &[u8]) -> Option<Value> {
        fn one(ty: &Ty, b: &[u8]) -> Option<Value> {
            Some(match ty {
                Ty::Ipv4 => Value::String(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?).to_string()),
                Ty::Proto => match *b.first()? {
                    6 => Value::from("tcp"),
                    17 => Value::from("udp"),
                    132 => Value::from("sctp"),
                    1 => Value::from("icmp"),
                    n => Value::from(n),
                },
                Ty::Port => Value::from(u16::from_be_bytes(b.get(..2)?.try_into().ok()?)),
                Ty::Host32 => Value::from(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?)),
                Ty::AddrType | Ty::CtState | Ty::Concat(_) => return None,
            })
        }
        match &self.key {
            Ty::Concat(parts) => {
                let mut at = 0;
                let mut out = Vec::new();
                for p in parts {
                    out.push(one(p, bytes.get(at..)?)?);
                    at += p.len().next_multiple_of(4);
                }
                Some(serde_json::json!({ "concat": out }))
            }
            ty => one(ty, bytes),
        }
    }
}

/// Expressions of one rule being compiled, and the sets it updates from the packet path.
#[derive(Default)]
struct Exprs(Attrs, Vec<String>);

impl Exprs {
    fn push(&mut self, name: &str, data: Attrs) {
        let e = Attrs::new().str(1, name).nested(2, data);
        self.0 = std::mem::take(&mut self.0).nested(1, e);
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32, dreg: u32) {
        self.push("payload", Attrs::new().be32(1, dreg).be32(2, base).be32(3, offset).be32(4, len));
    }

    fn cmp(&mut self, op: u32, data: &[u8]) {
        self.push("cmp", Attrs::new().be32(1, 1).be32(2, op).nested(3, Attrs::new().bytes(1, data)));
    }

    fn bitwise(&mut self, len: usize, mask: &[u8], xor: &[u8]) {
        let len = u32::try_from(len).unwrap_or(0);
        self.push(
            "bitwise",
            Attrs::new()
                .be32(1, 1)
                .be32(2, 1)
                .be32(3, len)
                .nested(4, Attrs::new().bytes(1, mask))
                .nested(5, Attrs::new().bytes(1, xor)),
        );
    }

    fn verdict(&mut self, code: i32, chain: Option<&str>) {
        let mut v = Attrs::new().bytes(1, &code.to_be_bytes());
        if let Some(c) = chain {
            v = v.str(2, c);
        }
        self.push("immediate", Attrs::new().be32(1, 0).nested(2, Attrs::new().nested(2, v)));
    }
}

const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;

/// The register of the `slot`-th 32-bit word of a value loaded at NFT_REG_1, as nft
/// numbers them (NFT_REG_1, then NFT_REG32_01, …).
fn reg(slot: usize) -> u32 {
    if slot == 0 { 1 } else { 8 + u32::try_from(slot).unwrap_or(0) }
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

/// Loads `v` into the registers from `slot` on; returns what it is.
fn load(e: &mut Exprs, v: &Value, slot: usize) -> Result<Ty> {
    let dreg = reg(slot);
    if let Some(p) = v.get("payload") {
        let (base, offset, len, ty) = match (field(p, "protocol"), field(p, "field")) {
            (Some("ip"), Some("saddr")) => (1, 12, 4, Ty::Ipv4),
            (Some("ip"), Some("daddr")) => (1, 16, 4, Ty::Ipv4),
            (Some("th"), Some("sport")) => (2, 0, 2, Ty::Port),
            (Some("th"), Some("dport")) => (2, 2, 2, Ty::Port),
            (Some(proto @ ("tcp" | "udp" | "sctp")), Some(f @ ("sport" | "dport"))) => {
                // As nft: the protocol first (the dependency of a `tcp dport` match).
                e.push("meta", Attrs::new().be32(1, dreg).be32(2, 16));
                e.cmp(CMP_EQ, &constant(&Ty::Proto, &Value::from(proto))?);
                (2, if f == "sport" { 0 } else { 2 }, 2, Ty::Port)
            }
            _ => return Err(unsupported("this payload", v)),
        };
        e.payload(base, offset, len, dreg);
        return Ok(ty);
    }
    if let Some(m) = v.get("meta") {
        let (key, ty) = match field(m, "key") {
            Some("l4proto") => (16, Ty::Proto),
            Some("mark") => (3, Ty::Host32),
            _ => return Err(unsupported("this meta key", v)),
        };
        e.push("meta", Attrs::new().be32(1, dreg).be32(2, key));
        return Ok(ty);
    }
    if let Some(c) = v.get("ct") {
        if field(c, "key") != Some("state") || c.get("dir").is_some() {
            return Err(unsupported("this ct expression", v));
        }
        e.push("ct", Attrs::new().be32(1, dreg).be32(2, 0));
        return Ok(Ty::CtState);
    }
    if let Some(f) = v.get("fib") {
        let mut flags = 0;
        for fl in f.get("flags").and_then(Value::as_array).into_iter().flatten() {
            flags |= match fl.as_str() {
                Some("saddr") => 1,
                Some("daddr") => 2,
                _ => return Err(unsupported("this fib flag", v)),
            };
        }
        if field(f, "result") != Some("type") {
            return Err(unsupported("this fib result", v));
        }
        e.push("fib", Attrs::new().be32(1, dreg).be32(2, 3).be32(3, flags));
        return Ok(Ty::AddrType);
    }
    if let Some(n) = v.get("numgen") {
        let modulus = n.get("mod").and_then(Value::as_u64).and_then(|m| u32::try_from(m).ok());
        let offset = n.get("offset").and_then(Value::as_u64).unwrap_or(0);
        let (Some(modulus), Some("random"), Ok(offset)) = (modulus, field(n, "mode"), u32::try_from(offset)) else {
            return Err(unsupported("this numgen", v));
        };
        e.push("numgen", Attrs::new().be32(1, dreg).be32(2, modulus).be32(3, 1).be32(4, offset));
        return Ok(Ty::Host32);
    }
    if let Some(parts) = v.get("concat").and_then(Value::as_array) {
        let mut tys = Vec::new();
        let mut s = slot;
        for p in parts {
            let ty = load(e, p, s)?;
            s += ty.len().div_ceil(4);
            tys.push(ty);
        }
        return Ok(Ty::Concat(tys));
    }
    if let Some([left, mask]) = v.get("&").and_then(Value::as_array).map(Vec::as_slice) {
        let ty = load(e, left, slot)?;
        let mask = constant(&ty, mask)?;
        e.bitwise(ty.len(), &mask, &vec![0; ty.len()]);
        return Ok(ty);
    }
    Err(unsupported("this expression", v))
}

/// `v` as the bytes of a value of type `ty`.
fn constant(ty: &Ty, v: &Value) -> Result<Vec<u8>> {
    let bad = || unsupported("this constant", v);
    let int = |v: &Value| v.as_u64().ok_or_else(bad);
    Ok(match ty {
        Ty::Ipv4 => v.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()).ok_or_else(bad)?.octets().to_vec(),
        Ty::Proto => vec![match v.as_str() {
            Some("tcp") => 6,
            Some("udp") => 17,
            Some("sctp") => 132,
            Some("icmp") => 1,
            Some(_) => return Err(bad()),
            None => u8::try_from(int(v)?).map_err(|_| bad())?,
        }],
        Ty::Port => u16::try_from(int(v)?).map_err(|_| bad())?.to_be_bytes().to_vec(),
        Ty::Host32 => u32::try_from(int(v)?).map_err(|_| bad())?.to_ne_bytes().to_vec(),
        Ty::AddrType => {
            let t: u32 = match v.as_str() {
                Some("unicast") => 1,
                Some("local") => 2,
                Some("broadcast") => 3,
                Some("multicast") => 5,
                _ => return Err(bad()),
            };
            t.to_ne_bytes().to_vec()
        }
        Ty::CtState => ct_state_bits(v).ok_or_else(bad)?.to_ne_bytes().to_vec(),
        Ty::Concat(parts) => {
            let values = v.get("concat").and_then(Value::as_array).ok_or_else(bad)?;
            if values.len() != parts.len() {
                return Err(bad());
            }
            let mut out = Vec::new();
            for (t, x) in parts.iter().zip(values) {
                out.extend(constant(t, x)?);
                out.resize(out.len().next_multiple_of(4), 0);
            }
            out
        }
    })
}

fn ct_state_bits(v: &Value) -> Option<u32> {
    let names: Vec<&str> = match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().map(Value::as_str).collect::<Option<_>>()?,
        _ => return None,
    };
    names.iter().try_fold(0u32, |acc, n| {
        Some(
            acc | match *n {
                "invalid" => 1,
                "established" => 2,
                "related" => 4,
                "new" => 8,
                "untracked" => 64,
                _ => return None,
            },
        )
    })
}

/// A prefix `{"prefix": {"addr": "10.0.0.0", "len": 8}}`: (network, mask).
fn prefix(v: &Value) -> Option<([u8; 4], [u8; 4])> {
    let p = v.get("prefix")?;
    let addr: Ipv4Addr = field(p, "addr")?.parse().ok()?;
    let len = u32::try_from(p.get("len")?.as_u64()?).ok().filter(|l| *l <= 32)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some(((u32::from(addr) & mask).to_be_bytes(), mask.to_be_bytes()))
}

fn set_name(v: &Value) -> Option<&str> {
    v.as_str()?.strip_prefix('@')
}

fn statement(e: &mut Exprs, s: &Value) -> Result<()> {
    let Some((kind, body)) =
        s.as_object().and_then(|o| o.iter().next()).filter(|_| s.as_object().map(|o| o.len()) == Some(1))
    else {
        return Err(unsupported("this statement", s));
    };
    match kind.as_str() {
        "match" => {
            let (left, right) = (&body["left"], &body["right"]);
            let (op, flags) = match field(body, "op") {
                Some("==") => (CMP_EQ, false),
                Some("!=") => (CMP_NEQ, false),
                // `in`: any of the bits (ct state new,established).
                Some("in") => (CMP_EQ, true),
                _ => return Err(unsupported("this match operator", s)),
            };
            let ty = load(e, left, 0)?;
            if let Some(set) = set_name(right) {
                let mut l = Attrs::new().str(1, set).be32(2, 1);
                if op == CMP_NEQ {
                    l = l.be32(5, 1);
                }
                e.push("lookup", l);
            } else if let Some([from, to]) = right.get("range").and_then(Value::as_array).map(Vec::as_slice) {
                e.push(
                    "range",
                    Attrs::new()
                        .be32(1, 1)
                        .be32(2, op)
                        .nested(3, Attrs::new().bytes(1, &constant(&ty, from)?))
                        .nested(4, Attrs::new().bytes(1, &constant(&ty, to)?)),
                );
            } else if let Some((net, mask)) = prefix(right).filter(|_| ty == Ty::Ipv4) {
                e.bitwise(4, &mask, &[0; 4]);
                e.cmp(op, &net);
            } else if flags {
                if ty != Ty::CtState {
                    return Err(unsupported("`in` on something other than ct state", s));
                }
                e.bitwise(4, &constant(&ty, right)?, &[0; 4]);
                e.cmp(CMP_NEQ, &[0; 4]);
            } else {
                e.cmp(op, &constant(&ty, right)?);
            }
        }
        "vmap" => {
            let Some(map) = set_name(&body["data"]) else { return Err(unsupported("an anonymous verdict map", s)) };
            load(e, &body["key"], 0)?;
            e.push("lookup", Attrs::new().str(1, map).be32(2, 1).be32(3, 0));
        }
        "jump" | "goto" => {
            let chain = field(body, "target").ok_or_else(|| unsupported("a verdict without a target", s))?;
            e.verdict(if kind == "jump" { NFT_JUMP } else { NFT_GOTO }, Some(chain));
        }
        "accept" => e.verdict(1, None),
        "drop" => e.verdict(0, None),
        "return" => e.verdict(-5, None),
        // A named counter object, or a counter of the rule's own.
        "counter" => match body.as_str() {
            Some(name) => e.push("objref", Attrs::new().be32(1, 1).str(2, name)),
            None => e.push("counter", Attrs::new().be64(1, 0).be64(2, 0)),
        },
        "mangle" => {
            if body["key"].get("meta").and_then(|m| field(m, "key")) != Some("mark") {
                return Err(unsupported("this mangle", s));
            }
            let value = &body["value"];
            let (mask, xor) = match (value.get("|"), value.get("^")) {
                (Some(Value::Array(a)), None) if a.len() == 2 && a[0] == body["key"] => {
                    let bit = u32::try_from(a[1].as_u64().ok_or_else(|| unsupported("this mark", s))?)
                        .map_err(|_| unsupported("this mark", s))?;
                    (!bit, bit)
                }
                (None, Some(Value::Array(a))) if a.len() == 2 && a[0] == body["key"] => {
                    let bit = u32::try_from(a[1].as_u64().ok_or_else(|| unsupported("this mark", s))?)
                        .map_err(|_| unsupported("this mark", s))?;
                    (u32::MAX, bit)
                }
                _ => return Err(unsupported("this mark change", s)),
            };
            e.push("meta", Attrs::new().be32(1, 1).be32(2, 3));
            e.bitwise(4, &mask.to_ne_bytes(), &xor.to_ne_bytes());
            e.push("meta", Attrs::new().be32(2, 3).be32(3, 1));
        }
        "masquerade" => {
            let mut flags = 0;
            for f in body.get("flags").and_then(Value::as_array).into_iter().flatten() {
                flags |= match f.as_str() {
                    Some("random") => 4,
                    Some("persistent") => 8,
                    Some("fully-random") => 16,
                    _ => return Err(unsupported("this masquerade flag", s)),
                };
            }
            e.push("masq", if flags == 0 { Attrs::new() } else { Attrs::new().be32(1, flags) });
        }
        "dnat" => {
            let addr = constant(&Ty::Ipv4, &body["addr"])?;
            e.push("immediate", Attrs::new().be32(1, 1).nested(2, Attrs::new().bytes(1, &addr)));
            let mut nat = Attrs::new().be32(1, 1).be32(2, u32::from(wire::FAMILY_IP)).be32(3, 1);
            if let Some(port) = body.get("port") {
                let port = constant(&Ty::Port, port)?;
                e.push("immediate", Attrs::new().be32(1, 2).nested(2, Attrs::new().bytes(1, &port)));
                nat = nat.be32(5, 2);
            }
            e.push("nat", nat);
        }
        "reject" => {
            let (kind, code) = match body.get("type").and_then(Value::as_str) {
                None => (0u32, 3u8),
                Some("tcp reset") => (1, 0),
                Some(_) => return Err(unsupported("this reject", s)),
            };
            e.push("reject", Attrs::new().be32(1, kind).bytes(2, &[code]));
        }
        "set" => {
            let op = match field(body, "op") {
                Some("add") => 0,
                Some("update") => 1,
                _ => return Err(unsupported("this set statement", s)),
            };
            let Some(set) = set_name(&body["set"]) else { return Err(unsupported("this set statement", s)) };
            load(e, &body["elem"], 0)?;
            e.push("dynset", Attrs::new().str(1, set).be32(3, op).be32(4, 1));
            e.1.push(set.to_string());
        }
        _ => return Err(unsupported("this statement", s)),
    }
    Ok(())
}

/// A rule comment as nft stores it: user data, type 0 (NFTNL_UDATA_RULE_COMMENT).
fn comment_udata(c: &str) -> Result<Vec<u8>> {
    let len = u8::try_from(c.len() + 1).map_err(|_| Unsupported(format!("a comment over 254 bytes: {c}")))?;
    let mut out = vec![0, len];
    out.extend_from_slice(c.as_bytes());
    out.push(0);
    Ok(out)
}

/// A transaction being compiled: the messages, and which command each came from.
///
/// Messages go into lanes, which the kernel takes one after the other: lane 0 (`bytes`),
/// then each of `more`. A writer can so compile a command as soon as it has it and
/// still have the kernel see it after commands it compiles later (a full sync declares
/// its chains, sorted, once every Service is planned, but fills each chain as its
/// Service is planned).
pub struct Batch {
    pub bytes: Vec<u8>,
    /// Lanes 1, 2, …: taken by the kernel after `bytes`, in order.
    pub more: Vec<Vec<u8>>,
    /// (sequence number, index of the command) for each message.
    pub origins: Vec<(u32, usize)>,
    /// The last message's sequence number, in the order the kernel takes them (known
    /// once finished).
    pub last_seq: u32,
    lane: usize,
    /// Where each lane's last message starts, and its sequence number.
    last: Vec<Option<(usize, u32)>>,
    seq: u32,
    set_id: u32,
    sets: HashMap<String, SetShape>,
    /// Where the flags of each set this batch adds are (lane, offset): a rule that
    /// updates the set from the packet path makes it dynamic, as nft does.
    new_set_flags: HashMap<String, (usize, usize)>,
    /// Sets that rules update from the packet path, for those declared later.
    dynamic: HashSet<String>,
}

impl Batch {
    /// A batch that knows the sets already in the kernel it may write elements to.
    pub fn new(known: impl IntoIterator<Item = (String, SetShape)>) -> Self {
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u32::try_from(d.as_secs() & 0x0fff_ffff).unwrap_or(1));
        let mut b = Self {
            bytes: Vec::new(),
            more: Vec::new(),
            origins: Vec::new(),
            last_seq: 0,
            lane: 0,
            last: vec![None],
            seq,
            set_id: 1,
            sets: known.into_iter().collect(),
            new_set_flags: HashMap::new(),
            dynamic: HashSet::new(),
        };
        let seq = b.next_seq();
        wire::batch_marker(&mut b.bytes, wire::MSG_BATCH_BEGIN, seq);
        b
    }

    /// Compiles what follows into `lane` (0 first).
    pub fn lane(&mut self, lane: usize) {
        if self.more.len() < lane {
            self.more.resize_with(lane, Vec::new);
            self.last.resize(lane + 1, None);
        }
        self.lane = lane;
    }

    fn buf(&mut self, lane: usize) -> &mut Vec<u8> {
        if lane == 0 { &mut self.bytes } else { &mut self.more[lane - 1] }
    }

    /// Every lane's bytes, in the order the kernel takes them.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.bytes.as_slice()).chain(self.more.iter().map(Vec::as_slice))
    }

    pub fn len(&self) -> usize {
        self.parts().map(<[u8]>::len).sum()
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn msg(&mut self, index: usize, msg: u16, flags: u16, attrs: &Attrs) -> Result<()> {
        if attrs.oversized() {
            return Err(Unsupported(format!("command {index} holds an attribute over 64 KiB")));
        }
        let seq = self.next_seq();
        let lane = self.lane;
        let buf = self.buf(lane);
        let at = buf.len();
        wire::nft_message(buf, msg, flags, seq, attrs);
        self.last[lane] = Some((at, seq));
        self.origins.push((seq, index));
        Ok(())
    }

    /// Marks `set` dynamic (updated from the packet path), whether declared yet or not.
    fn make_dynamic(&mut self, set: &str) {
        if let Some((lane, at)) = self.new_set_flags.get(set).copied() {
            let buf = self.buf(lane);
            let flags = u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes")) | 0x20;
            buf[at..at + 4].copy_from_slice(&flags.to_be_bytes());
        }
        self.dynamic.insert(set.to_string());
    }

    /// Compiles one command (`{"add": {"rule": …}}` and the like), numbered `index`.
    pub fn command(&mut self, index: usize, cmd: &Value) -> Result<()> {
        let Some((op, obj)) = cmd.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) else {
            return Err(unsupported("this command", cmd));
        };
        let Some((kind, body)) = obj.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) else {
            return Err(unsupported("this command", cmd));
        };
        if field(body, "family").is_some_and(|f| f != "ip") {
            return Err(unsupported("a family other than ip", cmd));
        }
        let table = || field(body, "table").ok_or_else(|| unsupported("a command without a table", cmd));
        let name = || field(body, "name").ok_or_else(|| unsupported("a command without a name", cmd));
        match (op.as_str(), kind.as_str()) {
            ("add", "table") => self.msg(index, wire::NEWTABLE, wire::F_CREATE, &Attrs::new().str(1, name()?))?,
            ("delete", "table") => self.msg(index, wire::DELTABLE, 0, &Attrs::new().str(1, name()?))?,
            ("add", "chain") => {
                let mut a = Attrs::new().str(1, table()?).str(3, name()?);
                if let Some(hook) = field(body, "hook") {
                    let num = match hook {
                        "prerouting" => 0,
                        "input" => 1,
                        "forward" => 2,
                        "output" => 3,
                        "postrouting" => 4,
                        _ => return Err(unsupported("this hook", cmd)),
                    };
                    let prio =
                        body.get("prio").and_then(Value::as_i64).and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
                    let policy = match field(body, "policy") {
                        None | Some("accept") => 1,
                        Some("drop") => 0,
                        _ => return Err(unsupported("this chain policy", cmd)),
                    };
                    a = a
                        .nested(4, Attrs::new().be32(1, num).bytes(2, &prio.to_be_bytes()))
                        .be32(5, policy)
                        .str(7, field(body, "type").unwrap_or("filter"));
                }
                self.msg(index, wire::NEWCHAIN, wire::F_CREATE, &a)?;
            }
            ("flush", "chain") => self.msg(index, wire::DELRULE, 0, &Attrs::new().str(1, table()?).str(2, name()?))?,
            ("delete", "chain") => {
                self.msg(index, wire::DELCHAIN, 0, &Attrs::new().str(1, table()?).str(3, name()?))?
            }
            ("add", "rule") => {
                let chain = field(body, "chain").ok_or_else(|| unsupported("a rule without a chain", cmd))?;
                let mut e = Exprs::default();
                for s in body.get("expr").and_then(Value::as_array).into_iter().flatten() {
                    statement(&mut e, s)?;
                }
                for set in &e.1 {
                    self.make_dynamic(set);
                }
                let mut a = Attrs::new().str(1, table()?).str(2, chain).nested(4, e.0);
                if let Some(c) = field(body, "comment") {
                    a = a.bytes(7, &comment_udata(c)?);
                }
                self.msg(index, wire::NEWRULE, wire::F_CREATE | wire::F_APPEND, &a)?;
            }
            ("add", "set" | "map") => self.add_set(index, cmd, kind == "map", table()?, name()?, body)?,
            ("delete", "set" | "map") => {
                self.msg(index, wire::DELSET, 0, &Attrs::new().str(1, table()?).str(2, name()?))?
            }
            ("add", "counter") => {
                let data = Attrs::new().be64(1, 0).be64(2, 0);
                let a = Attrs::new().str(1, table()?).str(2, name()?).be32(3, 1).nested(4, data);
                self.msg(index, wire::NEWOBJ, wire::F_CREATE, &a)?;
            }
            ("delete", "counter") => {
                self.msg(index, wire::DELOBJ, 0, &Attrs::new().str(1, table()?).str(2, name()?).be32(3, 1))?;
            }
            ("add" | "delete", "element") => {
                let set = name()?;
                let shape = self
                    .sets
                    .get(set)
                    .cloned()
                    .ok_or_else(|| unsupported("an element of a set of unknown type", cmd))?;
                let (msg, flags) = if op == "add" { (wire::NEWSETELEM, wire::F_CREATE) } else { (wire::DELSETELEM, 0) };
                let table = table()?;
                // Elements go in messages of under 64 KiB each, as nft sends them.
                let mut list = Attrs::new();
                let flush = |b: &mut Self, list: Attrs| -> Result<()> {
                    if list.0.is_empty() {
                        return Ok(());
                    }
                    b.msg(index, msg, flags, &Attrs::new().str(1, table).str(2, set).nested(3, list))
                };
                for el in body.get("elem").and_then(Value::as_array).into_iter().flatten() {
                    let mut one = Vec::new();
                    if shape.interval {
                        let (start, end) = interval(el).ok_or_else(|| unsupported("this interval", el))?;
                        one.push(Attrs::new().nested(1, Attrs::new().bytes(1, &start)));
                        if let Some(end) = end {
                            one.push(Attrs::new().nested(1, Attrs::new().bytes(1, &end)).be32(3, 1));
                        }
                    } else {
                        one.push(element(&shape, el, op == "add").ok_or_else(|| unsupported("this element", el))?);
                    }
                    for e in one {
                        if list.0.len() + e.0.len() > 60_000 {
                            flush(self, std::mem::take(&mut list))?;
                        }
                        list = list.nested(1, e);
                    }
                }
                flush(self, list)?;
            }
            _ => return Err(unsupported("this command", cmd)),
        }
        Ok(())
    }

    fn add_set(&mut self, index: usize, cmd: &Value, map: bool, table: &str, name: &str, body: &Value) -> Result<()> {
        let types: Vec<&str> = match &body["type"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(unsupported("a set without a type", cmd)),
        };
        let verdict = map && field(body, "map") == Some("verdict");
        if map && !verdict {
            return Err(unsupported("a map to something other than verdicts", cmd));
        }
        let parts: Vec<(Ty, u32)> = types
            .iter()
            .map(|t| Ty::of_set_type(t))
            .collect::<Option<_>>()
            .ok_or_else(|| unsupported("this set type", cmd))?;
        let mut shape = SetShape::new(&types, verdict).ok_or_else(|| unsupported("this set type", cmd))?;
        let mut flags = if self.dynamic.contains(name) { 0x20 } else { 0u32 };
        for f in body.get("flags").and_then(Value::as_array).into_iter().flatten() {
            flags |= match f.as_str() {
                Some("timeout") => 0x10,
                Some("interval") => 0x4,
                Some("constant") => 0x2,
                _ => return Err(unsupported("this set flag", cmd)),
            };
        }
        if verdict {
            flags |= 0x8;
        }
        shape.interval = flags & 0x4 != 0;
        if shape.interval && parts.len() > 1 {
            return Err(unsupported("an interval set of concatenations", cmd));
        }
        if parts.len() > 1 {
            flags |= 0x80;
        }
        let key_type = parts.iter().fold(0u32, |acc, (_, id)| (acc << 6) | id);
        let key_len = u32::try_from(shape.key.len()).unwrap_or(0);
        let id = self.set_id;
        self.set_id += 1;
        let head = Attrs::new().str(1, table).str(2, name);
        // The flags' value: after the message's headers, the attributes before it and its own header.
        let lane = self.lane;
        let flags_at = self.buf(lane).len() + 20 + head.0.len() + 4;
        let mut a = head.be32(3, flags).be32(4, key_type).be32(5, key_len);
        if verdict {
            a = a.be32(6, 0xffff_ff00).be32(7, 0);
        }
        a = a.be32(10, id);
        if let Some(t) = body.get("timeout").and_then(Value::as_u64) {
            a = a.be64(11, t * 1000);
        }
        if parts.len() > 1 {
            let mut fields = Attrs::new();
            for (ty, _) in &parts {
                fields = fields.nested(1, Attrs::new().be32(1, u32::try_from(ty.len()).unwrap_or(0)));
            }
            a = a.nested(9, Attrs::new().nested(2, fields));
        }
        self.msg(index, wire::NEWSET, wire::F_CREATE, &a)?;
        self.sets.insert(name.to_string(), shape);
        self.new_set_flags.insert(name.to_string(), (lane, flags_at));
        Ok(())
    }

    /// Ends the batch, asking the kernel to acknowledge its last message (so the caller
    /// knows when the transaction is done).
    pub fn finish(mut self) -> Self {
        let last_lane = (0..self.last.len()).rev().find(|l| self.last[*l].is_some());
        if let Some(lane) = last_lane
            && let Some((start, seq)) = self.last[lane]
        {
            // The ACK flag of the last command: its flags are bytes 6..8 of its header.
            let buf = self.buf(lane);
            let flags = u16::from_ne_bytes([buf[start + 6], buf[start + 7]]) | wire::F_ACK;
            buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
            self.last_seq = seq;
        }
        let seq = self.next_seq();
        let end = self.more.len();
        wire::batch_marker(self.buf(end), wire::MSG_BATCH_END, seq);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }
}

/// An address, range or prefix of an interval set: its first address and the one after
/// its last (None past 255.255.255.255), as the kernel keeps intervals.
fn interval(el: &Value) -> Option<([u8; 4], Option<[u8; 4]>)> {
    let addr = |v: &Value| v.as_str()?.parse::<Ipv4Addr>().ok().map(u32::from);
    let (first, last) = if let Some(a) = addr(el) {
        (a, a)
    } else if let Some([a, b]) = el.get("range").and_then(Value::as_array).map(Vec::as_slice) {
        (addr(a)?, addr(b)?)
    } else {
        let (net, mask) = prefix(el)?;
        let net = u32::from_be_bytes(net);
        (net, net | !u32::from_be_bytes(mask))
    };
    (first <= last).then(|| (first.to_be_bytes(), last.checked_add(1).map(u32::to_be_bytes)))
}

/// One element: its key, and for a verdict map its verdict.
fn element(shape: &SetShape, el: &Value, add: bool) -> Option<Attrs> {
    let (key, verdict) = match el {
        Value::Array(pair) if shape.verdict_map && pair.len() == 2 => (&pair[0], Some(&pair[1])),
        other => (other, None),
    };
    let mut a = Attrs::new().nested(1, Attrs::new().bytes(1, &constant(&shape.key, key).ok()?));
    if let Some(v) = verdict.filter(|_| add) {
        let (code, target) = match (v.get("goto"), v.get("jump")) {
            (Some(g), _) => (NFT_GOTO, g.get("target")?.as_str()?),
            (_, Some(j)) => (NFT_JUMP, j.get("target")?.as_str()?),
            _ => return None,
        };
        a = a.nested(2, Attrs::new().nested(2, Attrs::new().bytes(1, &code.to_be_bytes()).str(2, target)));
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(cmds: &[Value]) -> Batch {
        let mut b = Batch::new([]);
        for (i, c) in cmds.iter().enumerate() {
            b.command(i, c).unwrap();
        }
        b.finish()
    }

    #[test]
    fn a_rule_carries_its_expressions_and_comment() {
        let b = compile(&[json!({"add": {"rule": {"family": "ip", "table": "t", "chain": "c",
            "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                     {"dnat": {"addr": "10.244.1.5", "port": 8080}}],
            "comment": "x"}}})]);
        let bytes = &b.bytes;
        for name in [&b"meta\0"[..], b"cmp\0", b"immediate\0", b"nat\0"] {
            assert!(bytes.windows(name.len()).any(|w| w == name), "{name:?} in the rule");
        }
        // The address in network order, the port big-endian, the comment as user data.
        assert!(bytes.windows(4).any(|w| w == [10, 244, 1, 5]));
        assert!(bytes.windows(2).any(|w| w == 8080u16.to_be_bytes()));
        assert!(bytes.windows(4).any(|w| w == [0, 2, b'x', 0]));
        assert_eq!(b.origins.len(), 1);
    }

    #[test]
    fn elements_need_a_set_of_known_type_and_keys_of_it() {
        let mut b = Batch::new([]);
        let add = json!({"add": {"element": {"family": "ip", "table": "t", "name": "m", "elem": [1]}}});
        assert!(b.command(0, &add).unwrap_err().0.contains("unknown type"));
        let shape = SetShape::new(&["ipv4_addr", "inet_proto", "inet_service"], true).unwrap();
        let mut b = Batch::new([("m".to_string(), shape)]);
        let good = json!({"add": {"element": {"family": "ip", "table": "t", "name": "m",
            "elem": [[{"concat": ["10.96.0.10", "udp", 53]}, {"goto": {"target": "svc"}}]]}}});
        b.command(0, &good).unwrap();
        // Each field of the key padded to four bytes: address, protocol, port.
        assert!(b.bytes.windows(12).any(|w| w == [10, 96, 0, 10, 17, 0, 0, 0, 0, 53, 0, 0]));
        let bad = json!({"add": {"element": {"family": "ip", "table": "t", "name": "m",
            "elem": [[{"concat": ["not an address", "udp", 53]}, {"goto": {"target": "svc"}}]]}}});
        assert!(b.command(1, &bad).is_err());
    }

    #[test]
    fn ten_thousand_elements_go_in_messages_under_64_kib() {
        let shape = SetShape::new(&["ipv4_addr", "inet_proto", "inet_service"], true).unwrap();
        let mut b = Batch::new([("m".to_string(), shape)]);
        let elems: Vec<Value> = (0..10_000u32)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i).to_string();
                json!([{"concat": [ip, "tcp", 80]}, {"goto": {"target": format!("svc-{i}")}}])
            })
            .collect();
        b.command(0, &json!({"add": {"element": {"family": "ip", "table": "t", "name": "m", "elem": elems}}})).unwrap();
        assert!(b.origins.len() > 5, "{} messages", b.origins.len());
        // Every message (and so every attribute in it) is under 64 KiB.
        let mut at = 20;
        while at < b.bytes.len() {
            let len = u32::from_ne_bytes(b.bytes[at..at + 4].try_into().unwrap()) as usize;
            assert!(len < 65_536);
            at += len;
        }
    }

    #[test]
    fn what_it_cannot_write_is_refused_by_name() {
        let mut b = Batch::new([]);
        let e = b
            .command(
                0,
                &json!({"add": {"rule": {"family": "ip", "table": "t", "chain": "c", "expr": [{"log": null}]}}}),
            )
            .unwrap_err();
        assert!(e.0.contains("this statement") && e.0.contains("log"), "{e}");
        assert!(b.command(0, &json!({"add": {"table": {"family": "inet", "name": "t"}}})).is_err());
    }

    /// The messages of a finished batch, in the order the kernel takes them: (type,
    /// flags, sequence number, the message).
    fn messages(b: &Batch) -> Vec<(u16, u16, u32, Vec<u8>)> {
        let all: Vec<u8> = b.parts().flatten().copied().collect();
        let mut out = Vec::new();
        let mut at = 0;
        while at < all.len() {
            let len = u32::from_ne_bytes(all[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([all[at + 4], all[at + 5]]);
            let flags = u16::from_ne_bytes([all[at + 6], all[at + 7]]);
            let seq = u32::from_ne_bytes(all[at + 8..at + 12].try_into().unwrap());
            out.push((kind, flags, seq, all[at..at + len].to_vec()));
            at += len;
        }
        out
    }

    #[test]
    fn lanes_reach_the_kernel_in_order_whatever_order_they_were_compiled_in() {
        let mut b = Batch::new([]);
        // The rule first, into lane 1; then its chain and the set it updates, into lane 0.
        b.lane(1);
        let rule = json!({"add": {"rule": {"family": "ip", "table": "t", "chain": "c", "expr": [
            {"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@aff"}},
            {"accept": null}]}}});
        b.command(0, &rule).unwrap();
        b.lane(0);
        b.command(1, &json!({"add": {"chain": {"family": "ip", "table": "t", "name": "c"}}})).unwrap();
        b.command(
            2,
            &json!({"add": {"set": {"family": "ip", "table": "t", "name": "aff", "type": "ipv4_addr",
            "flags": ["timeout"], "timeout": 600}}}),
        )
        .unwrap();
        let b = b.finish();
        let kinds: Vec<u16> = messages(&b).iter().map(|m| m.0).collect();
        let nft = |m: u16| (10 << 8) | m;
        assert_eq!(
            kinds,
            [wire::MSG_BATCH_BEGIN, nft(wire::NEWCHAIN), nft(wire::NEWSET), nft(wire::NEWRULE), wire::MSG_BATCH_END],
            "begin, lane 0, lane 1, end"
        );
        let all = messages(&b);
        // The set is declared dynamic though the rule that updates it was compiled first.
        let set = &all[2].3;
        let flags_at = 20 + Attrs::new().str(1, "t").str(2, "aff").0.len() + 4;
        let flags = u32::from_be_bytes(set[flags_at..flags_at + 4].try_into().unwrap());
        assert_eq!(flags & 0x30, 0x30, "timeout and dynamic");
        // The kernel acknowledges the last message it takes: the rule, in lane 1.
        assert_eq!(all[3].1 & wire::F_ACK, wire::F_ACK);
        assert_eq!(b.last_seq, all[3].2);
        assert_eq!(all[1].1 & wire::F_ACK, 0);
    }

    #[test]
    fn the_last_command_asks_for_an_acknowledgement() {
        let b = compile(&[json!({"add": {"table": {"family": "ip", "name": "t"}}})]);
        // Begin (20 bytes), the table (20 + name), end (20).
        let flags = u16::from_ne_bytes([b.bytes[26], b.bytes[27]]);
        assert_eq!(flags & wire::F_ACK, wire::F_ACK);
        let begin_flags = u16::from_ne_bytes([b.bytes[6], b.bytes[7]]);
        assert_eq!(begin_flags & wire::F_ACK, 0);
    }
}
