//! Keeps one node-level process running (the agent), as a kubelet keeps a DaemonSet pod:
//! started if absent, restarted when it exits, adopted (by its pid file) when a previous
//! kubelet started it.

use crate::layout::running_pid;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::{info, warn};

pub struct Supervisor {
    stop: Arc<AtomicBool>,
}

impl Supervisor {
    pub fn start(
        name: &'static str,
        cmd: Vec<String>,
        env: Vec<(String, String)>,
        pid_file: PathBuf,
        log: PathBuf,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let args: Vec<&str> = cmd.iter().skip(1).map(String::as_str).collect();
                if running_pid(&pid_file, &args).is_some() {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                let Some((program, args)) = cmd.split_first() else { return };
                let out = std::fs::OpenOptions::new().create(true).append(true).open(&log);
                let mut c = Command::new(program);
                c.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
                if let Ok(out) = out {
                    if let Ok(err) = out.try_clone() {
                        c.stderr(err);
                    }
                    c.stdout(out);
                }
                let mut child = match c.spawn() {
                    Ok(ch) => ch,
                    Err(e) => {
                        warn!("start the {name}: {e}; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
                let _ = std::fs::write(&pid_file, child.id().to_string());
                info!("started the {name} (pid {})", child.id());
                let status = loop {
                    match child.try_wait() {
                        Ok(Some(st)) => break Some(st),
                        Ok(None) if stopping.load(Ordering::Relaxed) => break None,
                        Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                        Err(_) => break None,
                    }
                };
                if let Some(st) = status {
                    warn!("the {name} exited ({st}); restarting it");
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        });
        Self { stop }
    }

    /// Stops supervising; the process keeps running.
    pub fn detach(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
