//! Pseudo-terminals, for a command run with a TTY (`kubectl exec -it`): open a pair,
//! make the terminal end the controlling terminal of a new session, resize it.

use crate::error::{KernelError, Result};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// A terminal's size in characters, as `kubectl` sends it on the resize channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub cols: u16,
    pub rows: u16,
}

fn winsize(s: Size) -> nix::pty::Winsize {
    nix::pty::Winsize { ws_row: s.rows, ws_col: s.cols, ws_xpixel: 0, ws_ypixel: 0 }
}

/// A new pseudo-terminal of `size`: (the controller's end, the terminal's end).
pub fn open(size: Size) -> Result<(OwnedFd, OwnedFd)> {
    let p = nix::pty::openpty(Some(&winsize(size)), None)
        .map_err(|e| KernelError::refused("open a pseudo-terminal", e.into()))?;
    Ok((p.master, p.slave))
}

/// Starts a new session whose controlling terminal is `tty` (the calling process's
/// own, e.g. its standard input), as a shell on a terminal expects.
#[allow(unsafe_code, reason = "TIOCSCTTY has no safe wrapper in nix")]
pub fn take_controlling(tty: BorrowedFd<'_>) -> Result<()> {
    nix::unistd::setsid().map_err(|e| KernelError::refused("start a session", e.into()))?;
    // SAFETY: an ioctl on a descriptor we borrow, with an integer argument.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if rc < 0 {
        return Err(KernelError::refused("take the terminal as the controlling one", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Resizes the terminal of `controller` (its foreground process gets SIGWINCH).
#[allow(unsafe_code, reason = "TIOCSWINSZ has no safe wrapper in nix")]
pub fn resize(controller: BorrowedFd<'_>, size: Size) -> Result<()> {
    let ws = winsize(size);
    // SAFETY: the kernel reads one winsize from a pointer that lives across the call.
    let rc = unsafe { libc::ioctl(controller.as_raw_fd(), libc::TIOCSWINSZ, &raw const ws) };
    if rc < 0 {
        return Err(KernelError::refused("resize the terminal", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn what_is_written_to_one_end_is_read_at_the_other_and_the_size_is_the_one_set() {
        let (controller, tty) = open(Size { cols: 80, rows: 24 }).unwrap();
        resize(controller.as_fd(), Size { cols: 132, rows: 43 }).unwrap();
        let mut ws = nix::pty::Winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        #[allow(unsafe_code, reason = "TIOCGWINSZ, to read back what was set")]
        // SAFETY: the kernel writes one winsize into a value that lives across the call.
        let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &raw mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (132, 43));
        let mut c = std::fs::File::from(controller);
        let mut t = std::fs::File::from(tty);
        c.write_all(b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = t.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi\n");
    }
}
