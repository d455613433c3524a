//! Reading nf_tables over netlink dumps: chain and set names of a table, a set's
//! elements (as `nft -j` shows them, for the planners that read that form), and the
//! comments of a chain's rules. Nothing of a table is listed that the caller did not ask for.

use super::compile::SetShape;
use super::wire::{self, Attrs};
use super::{Error, receive, socket};
use serde_json::{Value, json};

const F_DUMP: u16 = 0x300;

const GETTABLE: u16 = 1;
const GETCHAIN: u16 = 4;
const GETRULE: u16 = 7;
const GETSET: u16 = 10;
const GETSETELEM: u16 = 13;
const GETOBJ: u16 = 19;

/// The attributes of one message, (type without flags, value).
pub(super) fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[4..len]));
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    out
}

fn get<'a>(a: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    a.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

fn string(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

/// Runs a dump; each reply message's attributes (after the nfgenmsg header) to `each`.
/// None when the kernel says the object does not exist.
fn dump(msg: u16, request: &Attrs, each: impl FnMut(&[u8])) -> Result<Option<()>, Error> {
    talk(msg, F_DUMP, request, each)
}

/// One request (a dump, or a get answered by the object and an acknowledgement).
fn talk(msg: u16, flags: u16, request: &Attrs, mut each: impl FnMut(&[u8])) -> Result<Option<()>, Error> {
    let socket = socket(1 << 16)?;
    let mut out = Vec::new();
    wire::nft_message(&mut out, msg, flags, 1, request);
    socket.send(&out, 0)?;
    receive(&socket, |kind, body| match kind {
        wire::NLMSG_DONE => Some(Ok(Some(()))),
        wire::NLMSG_ERROR => Some(match wire::error_of(body).map_or(0, |(code, _)| code) {
            0 => Ok(Some(())),
            code if code == -libc::ENOENT => Ok(None),
            code => Err(Error::Io(std::io::Error::from_raw_os_error(-code))),
        }),
        // After the nfgenmsg header: the attributes.
        _ => {
            each(body.get(4..).unwrap_or_default());
            None
        }
    })?
}

/// Whether table `ip table` exists.
fn table_exists(table: &str) -> Result<bool, Error> {
    let mut found = false;
    dump(GETTABLE, &Attrs::new(), |m| found |= get(&attrs(m), 1).is_some_and(|n| string(n) == table))?;
    Ok(found)
}

/// Chain names, and set and map names, of a table.
pub type Names = (Vec<String>, Vec<String>);

/// The names of the chains and of the sets and maps of table `ip table`; None when the
/// table does not exist.
pub fn table_names(table: &str) -> Result<Option<Names>, Error> {
    if !table_exists(table)? {
        return Ok(None);
    }
    let (mut chains, mut sets) = (Vec::new(), Vec::new());
    for (msg, name_attr, out) in [(GETCHAIN, 3, &mut chains), (GETSET, 2, &mut sets)] {
        dump(msg, &Attrs::new().str(1, table), |m| {
            let a = attrs(m);
            if get(&a, 1).is_some_and(|t| string(t) == table)
                && let Some(n) = get(&a, name_attr)
            {
                out.push(string(n));
            }
        })?;
    }
    Ok(Some((chains, sets)))
}

/// The comments of the rules of chain `chain` in table `ip table`, in order; None when
/// the table or the chain does not exist.
pub fn rule_comments(table: &str, chain: &str) -> Result<Option<Vec<String>>, Error> {
    // The chain itself first: a dump of a missing chain's rules is just empty.
    if talk(GETCHAIN, wire::F_ACK, &Attrs::new().str(1, table).str(3, chain), |_| {})?.is_none() {
        return Ok(None);
    }
    let mut out = Vec::new();
    let found = dump(GETRULE, &Attrs::new().str(1, table).str(2, chain), |m| {
        let a = attrs(m);
        if get(&a, 1).is_none_or(|t| string(t) != table) || get(&a, 2).is_none_or(|c| string(c) != chain) {
            return;
        }
        // User data: type-length-value, type 0 the comment.
        let mut comment = String::new();
        let mut u = get(&a, 7).unwrap_or_default();
        while u.len() >= 2 {
            let (kind, len) = (u[0], usize::from(u[1]));
            if 2 + len > u.len() {
                break;
            }
            if kind == 0 {
                comment = string(&u[2..2 + len]);
            }
            u = &u[2 + len..];
        }
        out.push(comment);
    })?;
    Ok(found.map(|()| out))
}

/// The elements of set or map `set` of table `ip table`, as `nft -j` lists them (a map
/// element `[key, verdict]`); None when the table or the set does not exist.
pub fn set_elements(table: &str, set: &str, shape: &SetShape) -> Result<Option<Vec<Value>>, Error> {
    let mut out = Vec::new();
    let found = dump(GETSETELEM, &Attrs::new().str(1, table).str(2, set), |m| {
        let a = attrs(m);
        for (_, el) in attrs(get(&a, 3).unwrap_or_default()) {
            let e = attrs(el);
            let Some(key) = get(&e, 1).and_then(|k| get(&attrs(k), 1)).and_then(|k| shape.json(k)) else { continue };
            let verdict = get(&e, 2).and_then(|d| get(&attrs(d), 2)).map(|v| {
                let v = attrs(v);
                let code = get(&v, 1).and_then(|c| c.try_into().ok()).map_or(0, i32::from_be_bytes);
                let target = get(&v, 2).map(string).unwrap_or_default();
                match code {
                    -3 => json!({"jump": {"target": target}}),
                    -4 => json!({"goto": {"target": target}}),
                    1 => json!({"accept": null}),
                    _ => json!({"drop": null}),
                }
            });
            out.push(match verdict {
                Some(v) => json!([key, v]),
                None => key,
            });
        }
    })?;
    Ok(found.map(|()| out))
}

/// The named counters of table `ip table`: (name, packets, bytes).
pub fn counters(table: &str) -> Result<Vec<(String, u64, u64)>, Error> {
    let mut out = Vec::new();
    dump(GETOBJ, &Attrs::new().str(1, table).be32(3, 1), |m| {
        let a = attrs(m);
        if get(&a, 1).is_none_or(|t| string(t) != table) || get(&a, 3) != Some(&1u32.to_be_bytes()[..]) {
            return;
        }
        let data = attrs(get(&a, 4).unwrap_or_default());
        let n = |k| get(&data, k).and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes);
        out.push((get(&a, 2).map(string).unwrap_or_default(), n(2), n(1)));
    })?;
    Ok(out)
}
