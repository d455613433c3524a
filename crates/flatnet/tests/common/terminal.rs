//! A command driven through a pseudo-terminal, as a person at a terminal drives
//! `kubectl exec -it`: what it prints is gathered, input is typed once the expected
//! output has appeared (a bounded wait), and its exit code is read at the end.

use flatnet_kernel::pty;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Terminal {
    child: Child,
    input: std::fs::File,
    seen: Arc<Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Terminal {
    /// Starts `cmd` with its standard streams on a new terminal of `size`.
    pub fn start(mut cmd: Command, size: pty::Size) -> Self {
        let (controller, tty) = pty::open(size).unwrap();
        let dup = || Stdio::from(tty.try_clone().unwrap());
        let child = cmd.stdin(dup()).stdout(dup()).stderr(dup()).spawn().unwrap();
        drop(cmd);
        drop(tty);
        let input = std::fs::File::from(controller.try_clone().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gather = seen.clone();
        let reader = std::thread::spawn(move || {
            let mut out = std::fs::File::from(controller);
            let mut buf = [0u8; 4096];
            // EIO once the command and its children have closed the terminal.
            while let Ok(n @ 1..) = out.read(&mut buf) {
                gather.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { child, input, seen, reader }
    }

    /// Everything printed so far.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until `text` has been printed.
    pub fn expect(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.screen().contains(text) {
            assert!(
                Instant::now() < deadline,
                "waited {within:?} for {text:?}; the terminal shows:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn type_line(&mut self, line: &str) {
        self.input.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    /// Waits (bounded) for the command to exit: its exit code and all it printed.
    pub fn finish(mut self, within: Duration) -> (i32, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The terminal's last user is gone: what it printed is all read.
                let screen = self.seen.clone();
                self.reader.join().unwrap();
                return (st.code().unwrap_or(-1), String::from_utf8_lossy(&screen.lock().unwrap()).into_owned());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("still running after {within:?}; the terminal shows:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
