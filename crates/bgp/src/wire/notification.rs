//! NOTIFICATION messages (RFC 4271 §4.5) and the words for their codes, so that logs and
//! `last_error` say "cease / peer de-configured" rather than "6/3".

use std::fmt;

/// Error codes of RFC 4271 §4.5 and RFC 2918.
pub mod error_code {
    /// Message Header Error.
    pub const HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
}

/// Cease subcodes (RFC 4486, RFC 8538).
pub mod cease {
    /// Administrative Shutdown.
    pub const ADMIN_SHUTDOWN: u8 = 2;
    /// Peer De-configured.
    pub const PEER_DECONFIGURED: u8 = 3;
    /// Connection Collision Resolution.
    pub const COLLISION: u8 = 7;
}

/// A NOTIFICATION: an error code, a subcode and data whose meaning depends on both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Error code (1–6 in RFC 4271, 7 in RFC 7313).
    pub code: u8,
    /// Error subcode; 0 when the code has none.
    pub subcode: u8,
    /// Diagnostic data.
    pub data: Vec<u8>,
}

impl Notification {
    /// A notification without data.
    pub fn new(code: u8, subcode: u8) -> Self {
        Notification { code, subcode, data: Vec::new() }
    }

    fn code_name(&self) -> Option<&'static str> {
        Some(match self.code {
            1 => "message header error",
            2 => "OPEN message error",
            3 => "UPDATE message error",
            4 => "hold timer expired",
            5 => "finite state machine error",
            6 => "cease",
            7 => "ROUTE-REFRESH message error",
            _ => return None,
        })
    }

    fn subcode_name(&self) -> Option<&'static str> {
        Some(match (self.code, self.subcode) {
            (1, 1) => "connection not synchronized",
            (1, 2) => "bad message length",
            (1, 3) => "bad message type",
            (2, 1) => "unsupported version number",
            (2, 2) => "bad peer AS",
            (2, 3) => "bad BGP identifier",
            (2, 4) => "unsupported optional parameter",
            (2, 6) => "unacceptable hold time",
            (2, 7) => "unsupported capability",
            (2, 8) => "role mismatch",
            (3, 1) => "malformed attribute list",
            (3, 2) => "unrecognized well-known attribute",
            (3, 3) => "missing well-known attribute",
            (3, 4) => "attribute flags error",
            (3, 5) => "attribute length error",
            (3, 6) => "invalid ORIGIN attribute",
            (3, 8) => "invalid NEXT_HOP attribute",
            (3, 9) => "optional attribute error",
            (3, 10) => "invalid network field",
            (3, 11) => "malformed AS_PATH",
            (5, 1) => "unexpected message in OpenSent",
            (5, 2) => "unexpected message in OpenConfirm",
            (5, 3) => "unexpected message in Established",
            (6, 1) => "maximum number of prefixes reached",
            (6, 2) => "administratively shut down",
            (6, 3) => "peer de-configured",
            (6, 4) => "administratively reset",
            (6, 5) => "connection rejected",
            (6, 6) => "other configuration change",
            (6, 7) => "connection collision resolution",
            (6, 8) => "out of resources",
            (6, 9) => "hard reset",
            (6, 10) => "BFD down",
            (7, 1) => "invalid message length",
            _ => return None,
        })
    }

    /// The shutdown communication of RFC 9003 (cease 2 and 4), if the data holds one.
    pub fn shutdown_message(&self) -> Option<&str> {
        if self.code != error_code::CEASE || !matches!(self.subcode, 2 | 4) {
            return None;
        }
        let (len, text) = self.data.split_first()?;
        let text = text.get(..usize::from(*len))?;
        std::str::from_utf8(text).ok().filter(|t| !t.is_empty())
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code_name() {
            Some(name) => f.write_str(name)?,
            None => write!(f, "error code {}", self.code)?,
        }
        match self.subcode_name() {
            Some(name) => write!(f, " / {name}")?,
            None if self.subcode != 0 => write!(f, " / subcode {}", self.subcode)?,
            None => {}
        }
        if let Some(text) = self.shutdown_message() {
            write!(f, ": \"{text}\"")?;
        }
        Ok(())
    }
}
