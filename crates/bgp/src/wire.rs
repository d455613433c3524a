//! The BGP-4 wire format (RFC 4271 and the capabilities we speak), with no I/O: a `Message`
//! encodes to bytes and decodes from them. A decode error carries the NOTIFICATION that
//! RFC 4271 §6 says to send back, so the session never has to guess a code.

mod notification;
mod open;
mod update;

#[cfg(test)]
mod tests;

pub use notification::{Notification, cease, error_code};
pub use open::{AS_TRANS, Capability, GrFamily, GracefulRestart, Open};
pub use update::{AsSegment, Origin, PathAttributes, RawAttribute, Update};

/// Length of the fixed header: 16-byte marker, 2-byte length, 1-byte type.
pub const HEADER_LEN: usize = 19;
/// Largest message RFC 4271 allows (we do not negotiate extended messages).
pub const MAX_LEN: usize = 4096;
/// Address family identifier for IPv4.
pub const AFI_IPV4: u16 = 1;
/// Subsequent address family identifier for unicast.
pub const SAFI_UNICAST: u8 = 1;

const TYPE_OPEN: u8 = 1;
const TYPE_UPDATE: u8 = 2;
const TYPE_NOTIFICATION: u8 = 3;
const TYPE_KEEPALIVE: u8 = 4;
const TYPE_ROUTE_REFRESH: u8 = 5;

/// One BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Opens a session (RFC 4271 §4.2).
    Open(Open),
    /// Announces and withdraws routes (RFC 4271 §4.3); empty means End-of-RIB.
    Update(Update),
    /// Reports an error and closes the session (RFC 4271 §4.5).
    Notification(Notification),
    /// Says the peer is alive (RFC 4271 §4.4).
    Keepalive,
    /// Asks the peer to send its routes again (RFC 2918).
    RouteRefresh {
        /// Address family.
        afi: u16,
        /// Subsequent address family.
        safi: u8,
    },
}

/// Why bytes could not be decoded, with the NOTIFICATION to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (answer: {notification})")]
pub struct DecodeError {
    /// What was wrong, for logs and `last_error`.
    pub reason: String,
    /// What RFC 4271 says to send back before closing.
    pub notification: Notification,
}

impl DecodeError {
    pub(crate) fn new(code: u8, subcode: u8, data: Vec<u8>, reason: impl Into<String>) -> Self {
        DecodeError { reason: reason.into(), notification: Notification { code, subcode, data } }
    }
}

/// A message that does not fit in 4096 bytes; the caller must split it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message of {0} bytes is longer than the 4096 bytes BGP allows")]
pub struct TooLong(pub usize);

impl Message {
    /// Encodes the message with its header.
    pub fn encode(&self) -> Result<Vec<u8>, TooLong> {
        let mut out = vec![0xff; 16];
        out.extend_from_slice(&[0, 0, 0]);
        let kind = match self {
            Message::Open(open) => {
                open.encode_body(&mut out);
                TYPE_OPEN
            }
            Message::Update(update) => {
                update.encode_body(&mut out);
                TYPE_UPDATE
            }
            Message::Notification(n) => {
                out.extend_from_slice(&[n.code, n.subcode]);
                out.extend_from_slice(&n.data);
                TYPE_NOTIFICATION
            }
            Message::Keepalive => TYPE_KEEPALIVE,
            Message::RouteRefresh { afi, safi } => {
                out.extend_from_slice(&afi.to_be_bytes());
                out.extend_from_slice(&[0, *safi]);
                TYPE_ROUTE_REFRESH
            }
        };
        out[18] = kind;
        if out.len() > MAX_LEN {
            return Err(TooLong(out.len()));
        }
        let len = u16::try_from(out.len()).map_err(|_| TooLong(out.len()))?;
        out[16..18].copy_from_slice(&len.to_be_bytes());
        Ok(out)
    }

    /// Length of the first message in `buf` once its header is complete: `Ok(None)` means
    /// "read more". Checks marker, length and type, so a stream can be framed safely.
    pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        if buf[..16].iter().any(|b| *b != 0xff) {
            return Err(DecodeError::new(
                error_code::HEADER,
                1,
                Vec::new(),
                "bad marker: the header does not start with 16 bytes of 0xff",
            ));
        }
        let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
        let kind = buf[18];
        let min = match kind {
            TYPE_OPEN => 29,
            TYPE_UPDATE => 23,
            TYPE_NOTIFICATION => 21,
            TYPE_KEEPALIVE => HEADER_LEN,
            TYPE_ROUTE_REFRESH => 23,
            other => {
                return Err(DecodeError::new(
                    error_code::HEADER,
                    3,
                    vec![other],
                    format!("unknown message type {other}"),
                ));
            }
        };
        let exact = matches!(kind, TYPE_KEEPALIVE | TYPE_ROUTE_REFRESH);
        if len < min || len > MAX_LEN || (exact && len != min) {
            return Err(DecodeError::new(
                error_code::HEADER,
                2,
                buf[16..18].to_vec(),
                format!("bad message length {len} for message type {kind}"),
            ));
        }
        Ok((buf.len() >= len).then_some(len))
    }

    /// Decodes the first message of `buf`: `Ok(None)` when it is not complete yet,
    /// otherwise the message and how many bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
        let Some(len) = Self::frame_len(buf)? else {
            return Ok(None);
        };
        let body = &buf[HEADER_LEN..len];
        let message = match buf[18] {
            TYPE_OPEN => Message::Open(Open::decode_body(body)?),
            TYPE_UPDATE => Message::Update(Update::decode_body(body)?),
            TYPE_NOTIFICATION => {
                Message::Notification(Notification { code: body[0], subcode: body[1], data: body[2..].to_vec() })
            }
            TYPE_KEEPALIVE => Message::Keepalive,
            _ => Message::RouteRefresh { afi: u16::from_be_bytes([body[0], body[1]]), safi: body[3] },
        };
        Ok(Some((message, len)))
    }

    /// Decodes exactly one whole message; trailing or missing bytes are an error.
    pub fn decode_exact(buf: &[u8]) -> Result<Message, DecodeError> {
        match Self::decode(buf)? {
            Some((message, used)) if used == buf.len() => Ok(message),
            _ => Err(DecodeError::new(
                error_code::HEADER,
                2,
                Vec::new(),
                format!("{} bytes do not hold exactly one message", buf.len()),
            )),
        }
    }
}

/// A cursor over a message body that turns running out of bytes into a `DecodeError`.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    short: fn() -> DecodeError,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], short: fn() -> DecodeError) -> Self {
        Reader { buf, short }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err((self.short)());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}
