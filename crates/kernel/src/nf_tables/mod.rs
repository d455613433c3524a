//! nf_tables over netlink: flatnet's nft JSON commands compiled to one batch of
//! messages, which the kernel commits whole or not at all. No `nft` process runs; `nft
//! list` shows what was written exactly as if `nft` had written it.

mod compile;
mod read;
mod wire;

pub use compile::{SetShape, Unsupported};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
pub use read::{Names, counters, rule_comments, set_elements, table_names};
use serde_json::Value;

const NETLINK_NETFILTER: isize = 12;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command the encoder does not know (the caller may hand it to `nft`).
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// The kernel refused the transaction; nothing of it was applied.
    #[error("the kernel refused the nf_tables transaction: {0}")]
    Refused(String),
    #[error("nf_tables netlink: {0}")]
    Io(#[from] std::io::Error),
}

/// Compiles `objects` (each one or more nft JSON commands, comma-separated, as the
/// planners render them) into one batch, one object at a time (nothing parsed is kept:
/// a full sync is a hundred thousand commands). `known` gives the key types of sets
/// that already exist, for their elements; sets the batch adds are known from their
/// definition. A message's origin is the index of its object.
fn compile<S: AsRef<str>>(
    objects: &[S],
    known: impl IntoIterator<Item = (String, SetShape)>,
) -> Result<compile::Batch, Error> {
    let mut batch = compile::Batch::new(known);
    for (i, o) in objects.iter().enumerate() {
        let parsed: Vec<Value> = serde_json::from_str(&format!("[{}]", o.as_ref()))
            .map_err(|e| Unsupported(format!("not nft JSON ({e}): {}", short(o.as_ref()))))?;
        for cmd in &parsed {
            batch.command(i, cmd)?;
        }
    }
    Ok(batch.finish())
}

/// Applies `objects` as one transaction in the calling thread's network namespace.
pub fn apply<S: AsRef<str>>(objects: &[S], known: impl IntoIterator<Item = (String, SetShape)>) -> Result<(), Error> {
    let batch = compile(objects, known)?;
    if batch.is_empty() {
        return Ok(());
    }
    // Room for the whole batch in one message (the kernel takes a batch in one piece).
    let socket = socket(batch.bytes.len() + (1 << 16))?;
    let sent = socket.send(&batch.bytes, 0)?;
    if sent != batch.bytes.len() {
        return Err(Error::Refused(format!("the kernel took {sent} of {} bytes of the batch", batch.bytes.len())));
    }
    // The kernel answers errors (and the last command's acknowledgement) in order.
    let mut errors = Vec::new();
    receive(&socket, |kind, body| {
        let (code, seq) = wire::error_of(body).filter(|_| kind == wire::NLMSG_ERROR)?;
        if code != 0 {
            let what = batch
                .origins
                .iter()
                .find(|(s, _)| *s == seq)
                .and_then(|(_, i)| objects.get(*i))
                .map_or_else(|| "the batch".into(), |o| short(o.as_ref()));
            errors.push(format!("{} (in {what})", std::io::Error::from_raw_os_error(-code)));
        }
        (seq == batch.last_seq).then_some(())
    })?;
    if errors.is_empty() { Ok(()) } else { Err(Error::Refused(errors.join("; "))) }
}

/// Reads the kernel's answers, message by message, until `handle` has its result.
fn receive<T>(socket: &netlink_sys::Socket, mut handle: impl FnMut(u16, &[u8]) -> Option<T>) -> Result<T, Error> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        for (kind, body) in wire::replies(&buf[..n]) {
            if let Some(done) = handle(kind, body) {
                return Ok(done);
            }
        }
    }
}

/// A netfilter netlink socket of the calling thread's namespace that can send `room`
/// bytes at once, with a bounded wait for answers.
fn socket(room: usize) -> Result<netlink_sys::Socket, Error> {
    let mut socket = netlink_sys::Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    let room = usize::try_from(i32::MAX).unwrap_or(usize::MAX).min(room);
    setsockopt(&socket, sockopt::SndBufForce, &room).map_err(std::io::Error::from)?;
    setsockopt(&socket, sockopt::RcvBufForce, &(4 << 20)).map_err(std::io::Error::from)?;
    setsockopt(&socket, sockopt::ReceiveTimeout, &TimeVal::new(30, 0)).map_err(std::io::Error::from)?;
    Ok(socket)
}

fn short(s: &str) -> String {
    if s.len() <= 300 {
        return s.to_string();
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl From<Error> for crate::nft::NftError {
    fn from(e: Error) -> Self {
        match e {
            Error::Refused(why) => Self::Refused { stderr: why },
            other => Self::Unavailable(other.to_string()),
        }
    }
}
