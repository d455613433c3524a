//! UPDATE messages (RFC 4271 §4.3): withdrawn IPv4 prefixes, path attributes, NLRI.
//! AS numbers in AS_PATH are always 4 octets, since every session negotiates RFC 6793.
//! Attributes we do not use are kept raw, flags and all, so they encode back unchanged.

use super::{DecodeError, Reader, error_code};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

const FLAG_OPTIONAL: u8 = 0x80;
const FLAG_TRANSITIVE: u8 = 0x40;
const FLAG_EXTENDED_LENGTH: u8 = 0x10;
const WELL_KNOWN: u8 = FLAG_TRANSITIVE;

const ATTR_ORIGIN: u8 = 1;
const ATTR_AS_PATH: u8 = 2;
const ATTR_NEXT_HOP: u8 = 3;
const ATTR_MED: u8 = 4;
const ATTR_LOCAL_PREF: u8 = 5;
/// ATOMIC_AGGREGATE: well-known but of no use to us, so it is kept raw.
const ATTR_ATOMIC_AGGREGATE: u8 = 6;

const SEGMENT_SET: u8 = 1;
const SEGMENT_SEQUENCE: u8 = 2;

/// An UPDATE. One with nothing in it is the End-of-RIB marker for IPv4 unicast.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Prefixes no longer reachable.
    pub withdrawn: Vec<Ipv4Net>,
    /// Attributes shared by every prefix in `nlri`.
    pub attributes: PathAttributes,
    /// Prefixes announced with `attributes`.
    pub nlri: Vec<Ipv4Net>,
}

/// The path attributes of an UPDATE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathAttributes {
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// AS_PATH, as segments.
    pub as_path: Option<Vec<AsSegment>>,
    /// NEXT_HOP.
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF (iBGP only).
    pub local_pref: Option<u32>,
    /// Every other attribute, raw, in the order received.
    pub other: Vec<RawAttribute>,
}

/// Where a route came from (ORIGIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Learned from an interior protocol (or configured).
    Igp,
    /// Learned from EGP.
    Egp,
    /// Learned some other way.
    Incomplete,
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsSegment {
    /// Ordered ASes the route went through.
    Sequence(Vec<u32>),
    /// Unordered ASes from aggregation.
    Set(Vec<u32>),
}

/// A path attribute we do not interpret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAttribute {
    /// Flags byte as received (optional, transitive, partial, extended length).
    pub flags: u8,
    /// Attribute type code.
    pub type_code: u8,
    /// Attribute value.
    pub value: Vec<u8>,
}

impl Update {
    /// The End-of-RIB marker: an UPDATE with no withdrawals, attributes or NLRI.
    pub fn end_of_rib() -> Self {
        Update::default()
    }

    /// Whether this UPDATE is the End-of-RIB marker.
    pub fn is_end_of_rib(&self) -> bool {
        *self == Update::default()
    }

    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        let mut withdrawn = Vec::new();
        for p in &self.withdrawn {
            encode_prefix(*p, &mut withdrawn);
        }
        out.extend_from_slice(&len16(withdrawn.len()));
        out.extend_from_slice(&withdrawn);
        let attrs = self.attributes.encode();
        out.extend_from_slice(&len16(attrs.len()));
        out.extend_from_slice(&attrs);
        for p in &self.nlri {
            encode_prefix(*p, out);
        }
    }

    pub(super) fn decode_body(body: &[u8]) -> Result<Update, DecodeError> {
        let mut r = Reader::new(body, malformed_list);
        let withdrawn_len = usize::from(r.u16()?);
        let withdrawn = decode_prefixes(r.take(withdrawn_len)?)?;
        let attrs_len = usize::from(r.u16()?);
        let attributes = PathAttributes::decode(r.take(attrs_len)?)?;
        let nlri = decode_prefixes(r.take(body.len() - 4 - withdrawn_len - attrs_len)?)?;
        if !nlri.is_empty() {
            let missing = [
                (ATTR_ORIGIN, attributes.origin.is_none()),
                (ATTR_AS_PATH, attributes.as_path.is_none()),
                (ATTR_NEXT_HOP, attributes.next_hop.is_none()),
            ];
            if let Some((code, _)) = missing.iter().find(|(_, m)| *m) {
                return Err(DecodeError::new(
                    error_code::UPDATE,
                    3,
                    vec![*code],
                    format!("UPDATE with NLRI lacks well-known attribute {code}"),
                ));
            }
        }
        Ok(Update { withdrawn, attributes, nlri })
    }
}

impl PathAttributes {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(origin) = self.origin {
            let value = match origin {
                Origin::Igp => 0,
                Origin::Egp => 1,
                Origin::Incomplete => 2,
            };
            encode_attr(WELL_KNOWN, ATTR_ORIGIN, &[value], &mut out);
        }
        if let Some(path) = &self.as_path {
            let mut value = Vec::new();
            for seg in path {
                let (kind, asns) = match seg {
                    AsSegment::Set(a) => (SEGMENT_SET, a),
                    AsSegment::Sequence(a) => (SEGMENT_SEQUENCE, a),
                };
                // A segment holds at most 255 ASes; longer runs become several segments.
                for chunk in asns.chunks(255) {
                    value.push(kind);
                    value.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
                    for asn in chunk {
                        value.extend_from_slice(&asn.to_be_bytes());
                    }
                }
            }
            encode_attr(WELL_KNOWN, ATTR_AS_PATH, &value, &mut out);
        }
        if let Some(nh) = self.next_hop {
            encode_attr(WELL_KNOWN, ATTR_NEXT_HOP, &nh.octets(), &mut out);
        }
        if let Some(med) = self.med {
            encode_attr(FLAG_OPTIONAL, ATTR_MED, &med.to_be_bytes(), &mut out);
        }
        if let Some(pref) = self.local_pref {
            encode_attr(WELL_KNOWN, ATTR_LOCAL_PREF, &pref.to_be_bytes(), &mut out);
        }
        for raw in &self.other {
            encode_attr(raw.flags, raw.type_code, &raw.value, &mut out);
        }
        out
    }

    fn decode(buf: &[u8]) -> Result<PathAttributes, DecodeError> {
        let mut attrs = PathAttributes::default();
        let mut seen = [false; 256];
        let mut r = Reader::new(buf, malformed_list);
        while !r.is_empty() {
            let flags = r.u8()?;
            let type_code = r.u8()?;
            let len = if flags & FLAG_EXTENDED_LENGTH != 0 { usize::from(r.u16()?) } else { usize::from(r.u8()?) };
            let value = r.take(len)?;
            if std::mem::replace(&mut seen[usize::from(type_code)], true) {
                return Err(DecodeError::new(
                    error_code::UPDATE,
                    1,
                    Vec::new(),
                    format!("attribute {type_code} appears twice"),
                ));
            }
            let attr = Attr { flags, type_code, value };
            match type_code {
                ATTR_ORIGIN => {
                    attr.check(WELL_KNOWN, Some(1))?;
                    attrs.origin = Some(match value[0] {
                        0 => Origin::Igp,
                        1 => Origin::Egp,
                        2 => Origin::Incomplete,
                        other => return Err(attr.error(6, format!("ORIGIN value {other}"))),
                    });
                }
                ATTR_AS_PATH => {
                    attr.check(WELL_KNOWN, None)?;
                    attrs.as_path = Some(decode_as_path(value)?);
                }
                ATTR_NEXT_HOP => {
                    attr.check(WELL_KNOWN, Some(4))?;
                    let nh = Ipv4Addr::new(value[0], value[1], value[2], value[3]);
                    if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
                        return Err(attr.error(8, format!("NEXT_HOP {nh} is not a host address")));
                    }
                    attrs.next_hop = Some(nh);
                }
                ATTR_MED => {
                    attr.check(FLAG_OPTIONAL, Some(4))?;
                    attrs.med = Some(be32(value));
                }
                ATTR_LOCAL_PREF => {
                    attr.check(WELL_KNOWN, Some(4))?;
                    attrs.local_pref = Some(be32(value));
                }
                _ if flags & FLAG_OPTIONAL == 0 && type_code != ATTR_ATOMIC_AGGREGATE => {
                    return Err(attr.error(2, format!("unknown well-known attribute {type_code}")));
                }
                _ => attrs.other.push(RawAttribute { flags, type_code, value: value.to_vec() }),
            }
        }
        Ok(attrs)
    }
}

/// An attribute being decoded, kept whole for the NOTIFICATION data RFC 4271 asks for.
struct Attr<'a> {
    flags: u8,
    type_code: u8,
    value: &'a [u8],
}

impl Attr<'_> {
    fn check(&self, kind: u8, len: Option<usize>) -> Result<(), DecodeError> {
        if self.flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) != kind {
            return Err(self.error(4, format!("attribute {} has flags {:#04x}", self.type_code, self.flags)));
        }
        match len {
            Some(len) if len != self.value.len() => {
                Err(self
                    .error(5, format!("attribute {} has length {}, expected {len}", self.type_code, self.value.len())))
            }
            _ => Ok(()),
        }
    }

    fn error(&self, subcode: u8, reason: String) -> DecodeError {
        let mut data = Vec::new();
        encode_attr(self.flags, self.type_code, self.value, &mut data);
        DecodeError::new(error_code::UPDATE, subcode, data, reason)
    }
}

fn decode_as_path(value: &[u8]) -> Result<Vec<AsSegment>, DecodeError> {
    let mut segments = Vec::new();
    let mut r = Reader::new(value, malformed_as_path);
    while !r.is_empty() {
        let kind = r.u8()?;
        let count = usize::from(r.u8()?);
        let asns = r.take(count * 4)?.chunks_exact(4).map(be32).collect();
        segments.push(match kind {
            SEGMENT_SET => AsSegment::Set(asns),
            SEGMENT_SEQUENCE => AsSegment::Sequence(asns),
            _ => return Err(malformed_as_path()),
        });
    }
    Ok(segments)
}

fn encode_attr(flags: u8, type_code: u8, value: &[u8], out: &mut Vec<u8>) {
    let extended = flags & FLAG_EXTENDED_LENGTH != 0 || value.len() > 255;
    if extended {
        out.extend_from_slice(&[flags | FLAG_EXTENDED_LENGTH, type_code]);
        out.extend_from_slice(&len16(value.len()));
    } else {
        out.extend_from_slice(&[flags, type_code, u8::try_from(value.len()).unwrap_or(u8::MAX)]);
    }
    out.extend_from_slice(value);
}

fn encode_prefix(prefix: Ipv4Net, out: &mut Vec<u8>) {
    let len = prefix.prefix_len();
    out.push(len);
    out.extend_from_slice(&prefix.network().octets()[..usize::from(len.div_ceil(8))]);
}

fn decode_prefixes(buf: &[u8]) -> Result<Vec<Ipv4Net>, DecodeError> {
    let mut r = Reader::new(buf, invalid_network);
    let mut out = Vec::new();
    while !r.is_empty() {
        let len = r.u8()?;
        if len > 32 {
            return Err(DecodeError::new(
                error_code::UPDATE,
                10,
                Vec::new(),
                format!("prefix length {len} is longer than 32"),
            ));
        }
        let mut octets = [0u8; 4];
        let bytes = r.take(usize::from(len.div_ceil(8)))?;
        octets[..bytes.len()].copy_from_slice(bytes);
        let net = Ipv4Net::new(Ipv4Addr::from(octets), len).map_err(|_| invalid_network())?;
        out.push(net.trunc());
    }
    Ok(out)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn len16(len: usize) -> [u8; 2] {
    u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes()
}

fn malformed_list() -> DecodeError {
    DecodeError::new(error_code::UPDATE, 1, Vec::new(), "UPDATE lengths do not add up to the message length")
}

fn malformed_as_path() -> DecodeError {
    DecodeError::new(error_code::UPDATE, 11, Vec::new(), "malformed AS_PATH")
}

fn invalid_network() -> DecodeError {
    DecodeError::new(error_code::UPDATE, 10, Vec::new(), "a prefix runs past the end of its field")
}
