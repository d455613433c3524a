//! nf_tables over netlink: flatnet's nft JSON commands compiled to one batch of
//! messages, which the kernel commits whole or not at all. No `nft` process runs; `nft
//! list` shows what was written exactly as if `nft` had written it.

mod compile;
mod read;
mod wire;

pub use compile::{SetShape, Unsupported};
use nix::sys::socket::{MsgFlags, sendmsg, setsockopt, sockopt};
use nix::sys::time::TimeVal;
pub use read::{Names, counters, rule_comments, set_elements, table_names};
use serde_json::Value;
use std::os::fd::AsRawFd;

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

/// Compiles one object (one or more nft JSON commands, comma-separated, as the planners
/// render them) into `batch`; each message's origin is `index`. Nothing parsed is kept.
fn command(batch: &mut compile::Batch, index: usize, object: &str) -> Result<(), Error> {
    let parsed: Vec<Value> = serde_json::from_str(&format!("[{object}]"))
        .map_err(|e| Unsupported(format!("not nft JSON ({e}): {}", short(object))))?;
    for cmd in &parsed {
        batch.command(index, cmd)?;
    }
    Ok(())
}

/// How long a transaction took: building its messages, and the kernel's commit (from
/// the send to its acknowledgement).
#[derive(Debug, Clone, Copy, Default)]
pub struct Took {
    pub compile: std::time::Duration,
    pub commit: std::time::Duration,
}

/// "compile 0.3 ms, kernel commit 75.6 ms", as the agent logs it.
impl std::fmt::Display for Took {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        write!(f, "compile {:.1} ms, kernel commit {:.1} ms", ms(self.compile), ms(self.commit))
    }
}

/// Applies `objects` as one transaction in the calling thread's network namespace.
/// `known` gives the key types of sets that already exist, for their elements; sets the
/// transaction adds are known from their definition.
pub fn apply<S: AsRef<str>>(objects: &[S], known: impl IntoIterator<Item = (String, SetShape)>) -> Result<Took, Error> {
    let mut writer = Writer::new(known);
    for o in objects {
        writer.push(0, o.as_ref());
    }
    writer.commit()
}

/// One transaction, compiled as its objects come (each is parsed, compiled and
/// dropped), so a writer that produces them one at a time never holds their text: at
/// 10,000 Services × 10 endpoints a full sync is 38 MB of text for 45 MB of messages.
/// Objects go into lanes that the kernel takes in order (see `compile::Batch`).
pub struct Writer {
    batch: compile::Batch,
    /// The start of each object's text, to name it if the kernel refuses it.
    names: Vec<Box<str>>,
    compiling: std::time::Duration,
    /// The first object the encoder could not compile; the rest are not compiled.
    failed: Option<Error>,
}

impl Writer {
    /// `known` as for [`apply`].
    pub fn new(known: impl IntoIterator<Item = (String, SetShape)>) -> Self {
        Self { batch: compile::Batch::new(known), names: Vec::new(), compiling: Default::default(), failed: None }
    }

    /// Compiles `object` (one or more nft JSON commands, comma-separated) into `lane`.
    pub fn push(&mut self, lane: usize, object: &str) {
        if self.failed.is_some() {
            return;
        }
        let started = std::time::Instant::now();
        let index = self.names.len();
        self.batch.lane(lane);
        match command(&mut self.batch, index, object) {
            Ok(()) => self.names.push(short(object).into_boxed_str()),
            Err(e) => self.failed = Some(e),
        }
        self.compiling += started.elapsed();
    }

    /// Sends the transaction and waits for the kernel's answer. An object the encoder
    /// could not compile is [`Error::Unsupported`], and nothing is sent.
    pub fn commit(self) -> Result<Took, Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let started = std::time::Instant::now();
        let batch = self.batch.finish();
        let compile = self.compiling + started.elapsed();
        let committing = std::time::Instant::now();
        let names = self.names;
        commit(&batch, |i| names.get(i).map(|n| n.to_string()))?;
        Ok(Took { compile, commit: committing.elapsed() })
    }
}

/// Sends `batch` and waits for the kernel's answer; `name` names the object a refused
/// message came from.
fn commit(batch: &compile::Batch, name: impl Fn(usize) -> Option<String>) -> Result<(), Error> {
    if batch.is_empty() {
        return Ok(());
    }
    // Room for the whole batch in one message (the kernel takes a batch in one piece),
    // sent from its lanes as they are.
    let len = batch.len();
    let socket = socket(len + (1 << 16))?;
    let parts: Vec<std::io::IoSlice> = batch.parts().map(std::io::IoSlice::new).collect();
    let sent = sendmsg::<()>(socket.as_raw_fd(), &parts, &[], MsgFlags::empty(), None).map_err(std::io::Error::from)?;
    if sent != len {
        return Err(Error::Refused(format!("the kernel took {sent} of {len} bytes of the batch")));
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
                .and_then(|(_, i)| name(*i))
                .unwrap_or_else(|| "the batch".into());
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

/// The start of `s` (200 bytes at most, cut at a character boundary), "…" if cut: an
/// object's name in an error, kept for every object of a transaction until it commits.
fn short(s: &str) -> String {
    if s.len() <= 200 {
        return s.to_string();
    }
    let mut end = 200;
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
