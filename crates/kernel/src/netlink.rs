//! A synchronous rtnetlink socket: one request, its answer, done. Short-lived processes
//! such as the CNI plugin pay no async runtime start-up for it. A socket stays in the
//! network namespace it was opened in, whatever the thread does afterwards.

use crate::error::{KernelError, Result};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::io;

pub const CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
pub const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// A netlink socket of `protocol`, bound and connected to the kernel, in the calling
/// thread's network namespace.
pub(crate) fn socket(protocol: isize, op: &str) -> Result<Socket> {
    let mut socket = Socket::new(protocol).map_err(|e| KernelError::refused(op, e))?;
    socket.bind_auto().map_err(|e| KernelError::refused(op, e))?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(|e| KernelError::refused(op, e))?;
    // Extended acks give the kernel's reason text; failing to enable them is harmless.
    let _ = socket.set_ext_ack(true);
    Ok(socket)
}

pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        Ok(Self { socket: socket(NETLINK_ROUTE, "open a netlink socket")?, seq: 0, buf: Vec::with_capacity(64 * 1024) })
    }

    fn send(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.socket.send(&out, 0).map_err(|e| KernelError::refused(op, e))?;
        Ok(self.seq)
    }

    /// Reads answers to `seq` and hands each inner message to `each`, until the ack,
    /// the end of a dump, or the single reply of a get.
    fn receive(&mut self, op: &str, seq: u32, mode: Mode, mut each: impl FnMut(RouteNetlinkMessage)) -> Result<()> {
        let decode = |msg: String| KernelError::Decode { op: op.into(), msg };
        let mut interrupted = false;
        loop {
            self.buf.clear();
            self.socket.recv(&mut self.buf, 0).map_err(|e| KernelError::refused(op, e))?;
            let mut offset = 0;
            while offset < self.buf.len() {
                let bytes = &self.buf[offset..];
                let len = NetlinkBuffer::new_checked(bytes).map_err(|e| decode(e.to_string()))?.length() as usize;
                if len < 16 || len > bytes.len() {
                    return Err(decode(format!("bad message length {len}")));
                }
                offset += (len + 3) & !3;
                let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
                    Ok(m) => m,
                    // One object this crate cannot decode (a newer kernel's attribute)
                    // must not fail a whole dump: skip it. Acks and errors always decode.
                    Err(_) if mode == Mode::Dump => continue,
                    Err(e) => return Err(decode(e.to_string())),
                };
                if msg.header.sequence_number != seq {
                    continue; // A late answer to an earlier request.
                }
                interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(KernelError::refused(op, io::Error::from_raw_os_error(-code.get()))),
                        };
                    }
                    NetlinkPayload::Done(_) if interrupted => {
                        return Err(KernelError::refused(op, io::Error::from_raw_os_error(libc::EINTR)));
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::InnerMessage(inner) => {
                        each(inner);
                        if mode == Mode::Get {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// A request that changes state; waits for the kernel's ack.
    pub fn change(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        let seq = self.send(op, msg, flags)?;
        self.receive(op, seq, Mode::Ack, |_| {})
    }

    /// A get for one object.
    pub fn get(&mut self, op: &str, msg: RouteNetlinkMessage) -> Result<RouteNetlinkMessage> {
        let seq = self.send(op, msg, NLM_F_REQUEST)?;
        let mut answer = None;
        self.receive(op, seq, Mode::Get, |m| answer = Some(m))?;
        answer.ok_or_else(|| KernelError::Decode { op: op.into(), msg: "no answer".into() })
    }

    /// A dump of every object of a kind. A dump the kernel marks as interrupted (the
    /// table changed while it was read) is read again, a few times at most.
    pub fn dump(&mut self, op: &str, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        let mut attempt = 0;
        loop {
            let seq = self.send(op, msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let mut out = Vec::new();
            match self.receive(op, seq, Mode::Dump, |m| out.push(m)) {
                Err(e) if e.errno() == Some(libc::EINTR) && attempt < 5 => attempt += 1,
                other => return other.map(|()| out),
            }
        }
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Mode {
    Ack,
    Get,
    Dump,
}
