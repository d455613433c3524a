//! OPEN messages (RFC 4271 §4.2) and the capabilities we use: multiprotocol (RFC 4760),
//! route refresh (RFC 2918), graceful restart (RFC 4724) and 4-octet AS numbers (RFC 6793).
//! Capabilities we do not know are kept as raw bytes.

use super::{DecodeError, Reader, error_code};
use std::net::Ipv4Addr;

/// The 2-byte AS number a speaker with a 4-octet AS puts in the OPEN (RFC 6793).
pub const AS_TRANS: u16 = 23456;

const PARAM_CAPABILITIES: u8 = 2;
const CAP_MULTIPROTOCOL: u8 = 1;
const CAP_ROUTE_REFRESH: u8 = 2;
const CAP_GRACEFUL_RESTART: u8 = 64;
const CAP_FOUR_OCTET_AS: u8 = 65;

/// An OPEN message. `my_as` is the 2-byte field; the real AS is in `Capability::FourOctetAs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The 2-byte "My Autonomous System" field (`AS_TRANS` when the AS does not fit).
    pub my_as: u16,
    /// Proposed hold time in seconds (0, or at least 3).
    pub hold_time: u16,
    /// The sender's BGP identifier.
    pub bgp_id: Ipv4Addr,
    /// Capabilities, in the order they appeared.
    pub capabilities: Vec<Capability>,
}

/// One capability advertised in an OPEN (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions for one AFI/SAFI.
    Multiprotocol {
        /// Address family.
        afi: u16,
        /// Subsequent address family.
        safi: u8,
    },
    /// Route refresh.
    RouteRefresh,
    /// Graceful restart.
    GracefulRestart(GracefulRestart),
    /// Support for 4-octet AS numbers, with the sender's AS.
    FourOctetAs(u32),
    /// Anything else, kept as it came.
    Unknown {
        /// Capability code.
        code: u8,
        /// Capability value.
        value: Vec<u8>,
    },
}

/// The graceful restart capability (RFC 4724 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// The R bit: the sender has just restarted.
    pub restarting: bool,
    /// The N bit of RFC 8538 (graceful restart for NOTIFICATIONs too).
    pub notification: bool,
    /// How long the sender asks its peer to keep its routes, in seconds (12 bits).
    pub restart_time: u16,
    /// Families the sender can restart for.
    pub families: Vec<GrFamily>,
}

/// One address family in the graceful restart capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrFamily {
    /// Address family.
    pub afi: u16,
    /// Subsequent address family.
    pub safi: u8,
    /// The F bit: forwarding state was kept across the restart.
    pub forwarding_preserved: bool,
}

impl Open {
    /// An OPEN for `asn`, putting `AS_TRANS` in the 2-byte field when it does not fit.
    pub fn new(asn: u32, hold_time: u16, bgp_id: Ipv4Addr, capabilities: Vec<Capability>) -> Self {
        Open { my_as: u16::try_from(asn).unwrap_or(AS_TRANS), hold_time, bgp_id, capabilities }
    }

    /// The sender's AS from the 4-octet AS capability, if it sent one.
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        })
    }

    /// The sender's graceful restart capability, if any.
    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }

    /// Whether the sender understands ROUTE-REFRESH.
    pub fn route_refresh(&self) -> bool {
        self.capabilities.contains(&Capability::RouteRefresh)
    }

    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(4);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        let len_at = out.len();
        out.push(0);
        // Capabilities go into as few parameters as fit in 255 bytes each.
        let mut param: Vec<u8> = Vec::new();
        let mut params: Vec<Vec<u8>> = Vec::new();
        for cap in &self.capabilities {
            let encoded = cap.encode();
            if !param.is_empty() && param.len() + encoded.len() > 255 {
                params.push(std::mem::take(&mut param));
            }
            param.extend_from_slice(&encoded);
        }
        if !param.is_empty() {
            params.push(param);
        }
        for p in params {
            out.push(PARAM_CAPABILITIES);
            out.push(u8::try_from(p.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&p);
        }
        out[len_at] = u8::try_from(out.len() - len_at - 1).unwrap_or(u8::MAX);
    }

    pub(super) fn decode_body(body: &[u8]) -> Result<Open, DecodeError> {
        let mut r = Reader::new(body, short_open);
        let version = r.u8()?;
        if version != 4 {
            return Err(DecodeError::new(
                error_code::OPEN,
                1,
                vec![0, 4],
                format!("peer speaks BGP version {version}; we speak only 4"),
            ));
        }
        let my_as = r.u16()?;
        let hold_time = r.u16()?;
        if hold_time == 1 || hold_time == 2 {
            return Err(DecodeError::new(
                error_code::OPEN,
                6,
                Vec::new(),
                format!("unacceptable hold time {hold_time} s (must be 0 or at least 3)"),
            ));
        }
        let id = r.take(4)?;
        let bgp_id = Ipv4Addr::new(id[0], id[1], id[2], id[3]);
        if bgp_id.is_unspecified() {
            return Err(DecodeError::new(error_code::OPEN, 3, Vec::new(), "BGP identifier 0.0.0.0"));
        }
        let opt_len = usize::from(r.u8()?);
        let mut params = Reader::new(r.take(opt_len)?, short_open);
        if !r.is_empty() {
            return Err(short_open());
        }
        let mut capabilities = Vec::new();
        while !params.is_empty() {
            let kind = params.u8()?;
            let len = usize::from(params.u8()?);
            let value = params.take(len)?;
            if kind != PARAM_CAPABILITIES {
                return Err(DecodeError::new(
                    error_code::OPEN,
                    4,
                    Vec::new(),
                    format!("unsupported optional parameter type {kind}"),
                ));
            }
            let mut caps = Reader::new(value, short_open);
            while !caps.is_empty() {
                let code = caps.u8()?;
                let len = usize::from(caps.u8()?);
                capabilities.push(Capability::decode(code, caps.take(len)?));
            }
        }
        Ok(Open { my_as, hold_time, bgp_id, capabilities })
    }
}

fn short_open() -> DecodeError {
    DecodeError::new(error_code::OPEN, 0, Vec::new(), "OPEN optional parameters do not add up to their length")
}

impl Capability {
    fn encode(&self) -> Vec<u8> {
        let (code, value) = match self {
            Capability::Multiprotocol { afi, safi } => {
                let [a, b] = afi.to_be_bytes();
                (CAP_MULTIPROTOCOL, vec![a, b, 0, *safi])
            }
            Capability::RouteRefresh => (CAP_ROUTE_REFRESH, Vec::new()),
            Capability::FourOctetAs(asn) => (CAP_FOUR_OCTET_AS, asn.to_be_bytes().to_vec()),
            Capability::GracefulRestart(gr) => {
                let mut flags = (gr.restart_time & 0x0fff).to_be_bytes();
                flags[0] |= if gr.restarting { 0x80 } else { 0 };
                flags[0] |= if gr.notification { 0x40 } else { 0 };
                let mut value = flags.to_vec();
                for f in &gr.families {
                    value.extend_from_slice(&f.afi.to_be_bytes());
                    value.push(f.safi);
                    value.push(if f.forwarding_preserved { 0x80 } else { 0 });
                }
                (CAP_GRACEFUL_RESTART, value)
            }
            Capability::Unknown { code, value } => (*code, value.clone()),
        };
        let mut out = vec![code, u8::try_from(value.len()).unwrap_or(u8::MAX)];
        out.extend_from_slice(&value);
        out
    }

    /// Decodes one capability; a known code with a malformed value is kept raw, since an
    /// unusable capability is the same to us as an unknown one.
    fn decode(code: u8, value: &[u8]) -> Capability {
        match (code, value.len()) {
            (CAP_MULTIPROTOCOL, 4) => {
                Capability::Multiprotocol { afi: u16::from_be_bytes([value[0], value[1]]), safi: value[3] }
            }
            (CAP_ROUTE_REFRESH, 0) => Capability::RouteRefresh,
            (CAP_FOUR_OCTET_AS, 4) => {
                Capability::FourOctetAs(u32::from_be_bytes([value[0], value[1], value[2], value[3]]))
            }
            (CAP_GRACEFUL_RESTART, n) if n >= 2 && (n - 2) % 4 == 0 => Capability::GracefulRestart(GracefulRestart {
                restarting: value[0] & 0x80 != 0,
                notification: value[0] & 0x40 != 0,
                restart_time: u16::from_be_bytes([value[0], value[1]]) & 0x0fff,
                families: value[2..]
                    .chunks_exact(4)
                    .map(|c| GrFamily {
                        afi: u16::from_be_bytes([c[0], c[1]]),
                        safi: c[2],
                        forwarding_preserved: c[3] & 0x80 != 0,
                    })
                    .collect(),
            }),
            _ => Capability::Unknown { code, value: value.to_vec() },
        }
    }
}
