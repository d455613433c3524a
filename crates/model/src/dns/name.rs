//! Domain names in wire form: length-prefixed labels ending in the root's zero byte.
//! The zone keys its names lowercased, so a lookup is one hash of the query's bytes.

/// The longest name DNS allows, in wire bytes.
pub const MAX_NAME: usize = 255;
const MAX_LABEL: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty label in {0:?}")]
    EmptyLabel(String),
    #[error("label longer than 63 bytes in {0:?}")]
    LongLabel(String),
    #[error("name longer than 255 bytes: {0:?}")]
    LongName(String),
}

/// `a.b.c` (a trailing dot is allowed) as lowercased wire bytes.
pub fn encode(dotted: &str) -> Result<Vec<u8>, NameError> {
    let mut out = Vec::with_capacity(dotted.len() + 2);
    let trimmed = dotted.strip_suffix('.').unwrap_or(dotted);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel(dotted.into()));
            }
            if label.len() > MAX_LABEL {
                return Err(NameError::LongLabel(dotted.into()));
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    if out.len() > MAX_NAME {
        return Err(NameError::LongName(dotted.into()));
    }
    Ok(out)
}

/// Wire bytes (no compression) as `a.b.c.`; None when they are not a whole name.
pub fn decode(wire: &[u8]) -> Option<String> {
    let mut s = String::new();
    let mut i = 0;
    loop {
        let len = *wire.get(i)? as usize;
        if len == 0 {
            return Some(if s.is_empty() { ".".into() } else { s });
        }
        if len > MAX_LABEL {
            return None;
        }
        let label = wire.get(i + 1..i + 1 + len)?;
        s.extend(label.iter().map(|&b| b as char));
        s.push('.');
        i += 1 + len;
    }
}

/// Why a name in a packet could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The packet ends inside the name.
    Short,
    /// A compression pointer, a reserved label type, or a name over 255 bytes.
    Malformed,
}

/// Reads the uncompressed name at `packet[at..]` into `key` (lowercased); returns the
/// offset just past it and the key's length.
pub fn read_question_name(packet: &[u8], at: usize, key: &mut [u8; MAX_NAME]) -> Result<(usize, usize), ReadError> {
    let mut i = at;
    let mut n = 0;
    loop {
        let len = *packet.get(i).ok_or(ReadError::Short)? as usize;
        if len == 0 {
            if n >= MAX_NAME {
                return Err(ReadError::Malformed);
            }
            key[n] = 0;
            return Ok((i + 1, n + 1));
        }
        // 0xC0 is a pointer, 0x40 and 0x80 are reserved: none belongs in a question.
        if len > MAX_LABEL {
            return Err(ReadError::Malformed);
        }
        let label = packet.get(i + 1..i + 1 + len).ok_or(ReadError::Short)?;
        if n + 1 + len >= MAX_NAME {
            return Err(ReadError::Malformed);
        }
        key[n] = len as u8;
        for (d, s) in key[n + 1..n + 1 + len].iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        n += 1 + len;
        i += 1 + len;
    }
}

/// Skips any name (compressed or not) at `packet[at..]`; returns the offset past it.
pub fn skip_name(packet: &[u8], at: usize) -> Result<usize, ReadError> {
    let mut i = at;
    let mut total = 0;
    loop {
        let len = *packet.get(i).ok_or(ReadError::Short)? as usize;
        match len {
            0 => return Ok(i + 1),
            l if l & 0xC0 == 0xC0 => {
                packet.get(i + 1).ok_or(ReadError::Short)?;
                return Ok(i + 2);
            }
            l if l > MAX_LABEL => return Err(ReadError::Malformed),
            l => {
                total += l + 1;
                if total >= MAX_NAME {
                    return Err(ReadError::Malformed);
                }
                packet.get(i + 1..i + 1 + l).ok_or(ReadError::Short)?;
                i += 1 + l;
            }
        }
    }
}

/// True when wire name `name` is `zone` or below it.
pub fn in_zone(name: &[u8], zone: &[u8]) -> bool {
    if !name.ends_with(zone) {
        return false;
    }
    // The suffix must start on a label boundary.
    let start = name.len() - zone.len();
    let mut i = 0;
    while i < start {
        i += 1 + name[i] as usize;
    }
    i == start
}

/// The wire names of `name`'s ancestors strictly below `zone` plus `zone` itself
/// (`a.b.zone` gives `b.zone`, `zone`).
pub fn ancestors<'a>(name: &'a [u8], zone: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut i = 0;
    std::iter::from_fn(move || {
        if name.len() - i <= zone.len() {
            return None;
        }
        i += 1 + name[i] as usize;
        Some(&name[i..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_lowercased_and_decode_back() {
        assert_eq!(encode("Web.Default.svc.").unwrap(), b"\x03web\x07default\x03svc\x00");
        assert_eq!(decode(&encode("a.b").unwrap()).unwrap(), "a.b.");
        assert_eq!(encode(".").unwrap(), b"\x00");
        assert!(matches!(encode("a..b"), Err(NameError::EmptyLabel(_))));
        assert!(matches!(encode(&"x".repeat(64)), Err(NameError::LongLabel(_))));
        assert!(matches!(encode(&["abcdefghi"; 30].join(".")), Err(NameError::LongName(_))));
    }

    #[test]
    fn zone_membership_is_on_label_boundaries() {
        let zone = encode("cluster.local").unwrap();
        assert!(in_zone(&encode("a.svc.cluster.local").unwrap(), &zone));
        assert!(in_zone(&zone, &zone));
        assert!(!in_zone(&encode("xcluster.local").unwrap(), &zone));
        let name = encode("a.b.cluster.local").unwrap();
        let up: Vec<String> = ancestors(&name, &zone).map(|n| decode(n).unwrap()).collect();
        assert_eq!(up, ["b.cluster.local.", "cluster.local."]);
    }

    #[test]
    fn question_names_reject_pointers_and_overlong_names() {
        let mut key = [0u8; MAX_NAME];
        assert_eq!(read_question_name(b"\x01A\x00", 0, &mut key), Ok((3, 3)));
        assert_eq!(&key[..3], b"\x01a\x00");
        assert_eq!(read_question_name(b"\xc0\x0c", 0, &mut key), Err(ReadError::Malformed));
        assert_eq!(read_question_name(b"\x05ab", 0, &mut key), Err(ReadError::Short));
        let long: Vec<u8> =
            std::iter::repeat_n(b"\x3f".iter().chain([b'a'; 63].iter()).copied(), 4).flatten().collect();
        assert_eq!(read_question_name(&long, 0, &mut key), Err(ReadError::Malformed));
    }
}
