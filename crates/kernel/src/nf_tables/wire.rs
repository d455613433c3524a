//! The bytes of nf_tables netlink messages: attributes (type, length, value, padded to
//! four bytes; nested ones flagged), messages (netlink header, nfgenmsg, attributes)
//! and the batch that wraps them into one transaction. Numbers are from the kernel's
//! `linux/netfilter/nf_tables.h` and `linux/netfilter/nfnetlink.h`.

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub const SUBSYS_NFTABLES: u16 = 10;
pub const MSG_BATCH_BEGIN: u16 = 0x10;
pub const MSG_BATCH_END: u16 = 0x11;

pub const NEWTABLE: u16 = 0;
pub const DELTABLE: u16 = 2;
pub const NEWCHAIN: u16 = 3;
pub const DELCHAIN: u16 = 5;
pub const NEWRULE: u16 = 6;
pub const DELRULE: u16 = 8;
pub const NEWSET: u16 = 9;
pub const DELSET: u16 = 11;
pub const NEWSETELEM: u16 = 12;
pub const DELSETELEM: u16 = 14;
pub const NEWOBJ: u16 = 18;
pub const DELOBJ: u16 = 20;

pub const F_REQUEST: u16 = 0x1;
pub const F_ACK: u16 = 0x4;
pub const F_CREATE: u16 = 0x400;
pub const F_APPEND: u16 = 0x800;

const NLA_F_NESTED: u16 = 0x8000;
/// `NFPROTO_IPV4`: the family of an `ip` table.
pub const FAMILY_IP: u8 = 2;

/// Attributes being written, nested ones included. An attribute cannot exceed 64 KiB;
/// one that would is left out and marks the whole as `oversized`.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Attrs(pub Vec<u8>, pub bool);

impl Attrs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn bytes(mut self, kind: u16, value: &[u8]) -> Self {
        self.put(kind, value);
        self
    }

    fn put(&mut self, kind: u16, value: &[u8]) {
        let Ok(len) = u16::try_from(4 + value.len()) else {
            self.1 = true;
            return;
        };
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }

    /// A NUL-terminated string.
    pub fn str(self, kind: u16, s: &str) -> Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.bytes(kind, &v)
    }

    /// A 32-bit number in network byte order (as nf_tables wants its numbers).
    pub fn be32(self, kind: u16, n: u32) -> Self {
        self.bytes(kind, &n.to_be_bytes())
    }

    pub fn be64(self, kind: u16, n: u64) -> Self {
        self.bytes(kind, &n.to_be_bytes())
    }

    pub fn nested(mut self, kind: u16, inner: Attrs) -> Self {
        self.put(kind | NLA_F_NESTED, &inner.0);
        self.1 |= inner.1;
        self
    }

    pub fn oversized(&self) -> bool {
        self.1
    }
}

/// One message: netlink header, nfgenmsg (family, version 0, resource id), attributes.
pub fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &Attrs) {
    let len = u32::try_from(16 + 4 + attrs.0.len()).expect("a message under 4 GiB");
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&(flags | F_REQUEST).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(&attrs.0);
}

/// An nf_tables message of an `ip` table.
pub fn nft_message(out: &mut Vec<u8>, msg: u16, flags: u16, seq: u32, attrs: &Attrs) {
    message(out, (SUBSYS_NFTABLES << 8) | msg, flags, seq, FAMILY_IP, 0, attrs);
}

/// The batch markers around a transaction.
pub fn batch_marker(out: &mut Vec<u8>, kind: u16, seq: u32) {
    message(out, kind, 0, seq, 0, SUBSYS_NFTABLES, &Attrs::new());
}

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

/// The messages of one datagram from the kernel: each one's type and what follows its
/// netlink header.
pub fn replies(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(buf.get(..4)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
        let body = buf.get(16..len)?;
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, body))
    })
}

/// An NLMSG_ERROR's body: (0 or a negative errno, the sequence number it answers).
pub fn error_of(body: &[u8]) -> Option<(i32, u32)> {
    let code = i32::from_ne_bytes(body.get(..4)?.try_into().ok()?);
    // After the code, the header of the message answered: its sequence number at 8.
    let seq = u32::from_ne_bytes(body.get(12..16)?.try_into().ok()?);
    Some((code, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_ones_flagged() {
        let a = Attrs::new().str(1, "ab").nested(2, Attrs::new().be32(1, 7));
        assert_eq!(
            a.0,
            [
                7, 0, 1, 0, b'a', b'b', 0, 0, // "ab\0", padded to 8
                12, 0, 2, 0x80, // nested, 12 bytes
                8, 0, 1, 0, 0, 0, 0, 7,
            ]
        );
    }

    #[test]
    fn a_batch_begins_with_the_nftables_subsystem_as_resource_id() {
        let mut out = Vec::new();
        batch_marker(&mut out, MSG_BATCH_BEGIN, 5);
        assert_eq!(out.len(), 20);
        assert_eq!(&out[0..4], &20u32.to_ne_bytes());
        assert_eq!(&out[4..6], &0x10u16.to_ne_bytes());
        assert_eq!(&out[6..8], &F_REQUEST.to_ne_bytes());
        assert_eq!(&out[8..12], &5u32.to_ne_bytes());
        assert_eq!(&out[16..20], &[0, 0, 0, 10]);
    }
}
