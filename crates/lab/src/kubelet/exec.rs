//! `kubectl exec` through the kubelet API, over WebSocket as the API server proxies it to
//! a node that declares `ExtendWebSocketsToKubelet` (Kubernetes 1.36 and later): the
//! `v5.channel.k8s.io` subprotocol (and v4, without its close signal), whose binary
//! messages start with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 the outcome as a
//! `Status`, 4 terminal resizes as `{"Width":…,"Height":…}`, 255 a half-close of the
//! channel in the next byte. With `tty=1` the command runs on a pseudo-terminal that is
//! its controlling terminal; everything it writes comes back on stdout.
//!
//! The command runs in the pod as its container does: in its network namespace, with its
//! resolv.conf, hosts file and hostname, and the container's environment and working
//! directory, read from its process.

use super::sandbox::{self, Sandbox};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flatnet_kernel::pty;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info};

/// The subprotocols served, newest first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// How long output still drains after the command exits (a background child may hold
/// its stdout open forever).
const DRAIN: Duration = Duration::from_secs(2);

/// What an exec asks for, from the query the API server sends the kubelet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecRequest {
    /// `command=…` (repeated, in order), `input`, `output`, `error`, `tty` (`1` or `true`).
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut r = ExecRequest::default();
        let yes = |v: &str| matches!(v, "1" | "true" | "True" | "TRUE" | "t" | "T");
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "command" => r.command.push(v.into_owned()),
                "input" => r.stdin = yes(&v),
                "output" => r.stdout = yes(&v),
                "error" => r.stderr = yes(&v),
                "tty" => r.tty = yes(&v),
                _ => {}
            }
        }
        if r.command.is_empty() {
            return Err("no command given: pass it as `command=` (kubectl exec POD -- CMD)".into());
        }
        if !(r.stdin || r.stdout || r.stderr) {
            return Err("at least one of stdin, stdout or stderr must be asked for".into());
        }
        // As a kubelet: a terminal merges stderr into stdout.
        if r.tty {
            r.stderr = false;
        }
        Ok(r)
    }
}

/// A message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Stdin(Vec<u8>),
    Resize(pty::Size),
    /// The client will send no more on this channel.
    Close(u8),
    /// Empty, or on a channel the client does not write to.
    Ignored,
}

#[derive(serde::Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

impl Incoming {
    pub fn parse(msg: &[u8]) -> Self {
        match msg.split_first() {
            Some((&STDIN, data)) if !data.is_empty() => Incoming::Stdin(data.to_vec()),
            Some((&RESIZE, data)) => match serde_json::from_slice::<TerminalSize>(data) {
                Ok(s) => Incoming::Resize(pty::Size { cols: s.width, rows: s.height }),
                Err(_) => Incoming::Ignored,
            },
            Some((&CLOSE, [channel])) => Incoming::Close(*channel),
            _ => Incoming::Ignored,
        }
    }
}

/// The outcome on the error channel, as a kubelet writes it: `Success`, or the exit
/// code as a `NonZeroExitCode` cause that kubectl exits with.
pub fn outcome(command: &[String], code: i32) -> String {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"}).to_string();
    }
    json!({
        "metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
    .to_string()
}

/// A failure before the command ran, as a `Status` on the error channel.
fn internal(message: &str) -> String {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500}).to_string()
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    Message::Binary(m.into())
}

/// The container's environment and working directory, from its running process.
fn container_context(pid: i32) -> (Vec<(String, String)>, Option<String>) {
    let env = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok().map(|p| p.to_string_lossy().into_owned());
    (env, cwd)
}

/// Answers an exec request for `container` of the pod in `sb` (`None`: no such pod on
/// this node).
pub fn handle(
    sb: Option<Sandbox>,
    container: &str,
    query: &str,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let req = match ExecRequest::parse(query) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let Some(sb) = sb else {
        return (StatusCode::NOT_FOUND, "pod not found on this node").into_response();
    };
    let running = sandbox::recorded_pids(&sb)
        .into_iter()
        .find(|(name, pid)| name == container && sandbox::Process::adopt(name, *pid, &sb.netns).is_some());
    let Some((_, pid)) = running else {
        return (
            StatusCode::NOT_FOUND,
            format!("container {container:?} is not running in pod {}/{}", sb.namespace, sb.name),
        )
            .into_response();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "the flatnet lab kubelet serves exec over WebSocket ({}), as the API server proxies it for kubectl 1.30 and later; SPDY is not served ({e})",
                    PROTOCOLS.join(", ")
                ),
            )
                .into_response();
        }
    };
    let (env, mut cwd) = container_context(pid);
    let mounts = sb.container_mounts(container);
    if !mounts.is_empty() {
        // Its working directory is in a root of its own, which this process does not see.
        cwd = None;
    }
    info!(
        "exec in {}/{} ({container}): {:?}{}",
        sb.namespace,
        sb.name,
        req.command,
        if req.tty { " with a TTY" } else { "" }
    );
    ws.protocols(PROTOCOLS).on_upgrade(move |socket| run(socket, sb, req, (env, cwd), mounts))
}

async fn run(
    socket: WebSocket,
    sb: Sandbox,
    req: ExecRequest,
    (mut env, cwd): (Vec<(String, String)>, Option<String>),
    mounts: Vec<flatnet_kernel::rootfs::Mount>,
) {
    let (mut tx, rx) = socket.split();
    let (out, mut queue) = mpsc::channel::<Message>(32);
    // Every message goes out through this one task, in order.
    let writer = tokio::spawn(async move {
        while let Some(m) = queue.recv().await {
            if tx.send(m).await.is_err() {
                break;
            }
        }
        // A normal closure: kubectl takes it as the end of every stream (any other
        // close it reports as an error, whatever the outcome said).
        let bye = axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() };
        let _ = tx.send(Message::Close(Some(bye))).await;
        let _ = tx.close().await;
    });
    if req.tty && !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "xterm".into()));
    }
    let argv: Vec<OsString> = req.command.iter().map(OsString::from).collect();
    let status = match sandbox::enter_command(&sb, &argv, &env, cwd.as_deref(), &mounts, req.tty) {
        Err(e) => internal(&e),
        Ok(cmd) => {
            let result =
                if req.tty { with_tty(cmd, &req, rx, &out).await } else { with_pipes(cmd, &req, rx, &out).await };
            match result {
                Ok(code) => outcome(&req.command, code),
                Err(e) => internal(&e),
            }
        }
    };
    let _ = out.send(framed(ERROR, status.as_bytes())).await;
    drop(out);
    let _ = writer.await;
}

/// Copies what `r` yields to the client on `channel` until it ends.
async fn pump(mut r: impl AsyncRead + Unpin, channel: u8, out: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    // A terminal's controller reads EIO once the last process on it is gone: an end.
    while let Ok(n @ 1..) = r.read(&mut buf).await {
        if out.send(framed(channel, &buf[..n])).await.is_err() {
            break;
        }
    }
}

/// Waits for the command to exit while feeding it what the client sends; the client
/// going away kills it. Its exit code (128 + the signal when a signal ended it).
async fn feed(
    child: &mut tokio::process::Child,
    mut rx: futures::stream::SplitStream<WebSocket>,
    mut stdin: Option<impl tokio::io::AsyncWrite + Unpin>,
    mut on_resize: impl FnMut(pty::Size),
) -> Result<i32, String> {
    let mut client_gone = false;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| format!("wait for the command: {e}"))?;
                use std::os::unix::process::ExitStatusExt;
                return Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
            }
            msg = rx.next(), if !client_gone => match msg {
                Some(Ok(Message::Binary(b))) => match Incoming::parse(&b) {
                    Incoming::Stdin(data) => {
                        if let Some(w) = stdin.as_mut()
                            && w.write_all(&data).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    Incoming::Close(STDIN) => stdin = None,
                    Incoming::Resize(size) => on_resize(size),
                    Incoming::Close(_) | Incoming::Ignored => {}
                },
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    debug!("exec client went away: ending the command");
                    client_gone = true;
                    stdin = None;
                    let _ = child.start_kill();
                }
            },
        }
    }
}

async fn with_pipes(
    cmd: std::process::Command,
    req: &ExecRequest,
    rx: futures::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Message>,
) -> Result<i32, String> {
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(piped(req.stdin)).stdout(piped(req.stdout)).stderr(piped(req.stderr)).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("start {:?}: {e}", req.command))?;
    let mut pumps = Vec::new();
    if let Some(o) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(o, STDOUT, out.clone())));
    }
    if let Some(e) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(e, STDERR, out.clone())));
    }
    let stdin = child.stdin.take();
    let code = feed(&mut child, rx, stdin, |_| {}).await?;
    let _ = tokio::time::timeout(DRAIN, futures::future::join_all(pumps)).await;
    Ok(code)
}

async fn with_tty(
    cmd: std::process::Command,
    req: &ExecRequest,
    rx: futures::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Message>,
) -> Result<i32, String> {
    let (controller, tty) = pty::open(pty::Size { cols: 80, rows: 24 }).map_err(|e| e.to_string())?;
    let dup = |fd: &std::os::fd::OwnedFd| fd.try_clone().map_err(|e| format!("duplicate the terminal: {e}"));
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::from(dup(&tty)?)).stdout(Stdio::from(dup(&tty)?)).stderr(Stdio::from(tty)).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("start {:?}: {e}", req.command))?;
    // Our copies of the terminal's end are gone with `cmd`: the controller reads its end
    // once the command's last process has closed it.
    drop(cmd);
    let reader = tokio::fs::File::from_std(std::fs::File::from(dup(&controller)?));
    let pumped = tokio::spawn(pump(reader, STDOUT, out.clone()));
    let writer = req.stdin.then(|| dup(&controller)).transpose()?;
    let writer = writer.map(|w| tokio::fs::File::from_std(std::fs::File::from(w)));
    let code = feed(&mut child, rx, writer, |size| {
        let _ = pty::resize(controller.as_fd(), size);
    })
    .await?;
    let _ = tokio::time::timeout(DRAIN, pumped).await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_the_api_server_sends_is_read_in_order() {
        let r = ExecRequest::parse("command=sh&command=-c&command=echo+a%26b&input=1&output=1&error=1").unwrap();
        assert_eq!(r.command, ["sh", "-c", "echo a&b"]);
        assert!(r.stdin && r.stdout && r.stderr && !r.tty);
        let t = ExecRequest::parse("command=sh&input=1&output=1&error=1&tty=1").unwrap();
        assert!(t.tty && !t.stderr, "a terminal merges stderr: {t:?}");
    }

    #[test]
    fn a_request_without_a_command_or_any_stream_is_refused() {
        assert!(ExecRequest::parse("output=1").unwrap_err().contains("no command"));
        assert!(ExecRequest::parse("command=ls").unwrap_err().contains("stdin, stdout or stderr"));
    }

    #[test]
    fn client_messages_are_told_apart_by_their_channel() {
        assert_eq!(Incoming::parse(b"\x00ls\n"), Incoming::Stdin(b"ls\n".to_vec()));
        assert_eq!(Incoming::parse(b"\x00"), Incoming::Ignored);
        assert_eq!(
            Incoming::parse(b"\x04{\"Width\":132,\"Height\":43}"),
            Incoming::Resize(pty::Size { cols: 132, rows: 43 })
        );
        assert_eq!(Incoming::parse(b"\x04nonsense"), Incoming::Ignored);
        assert_eq!(Incoming::parse(&[255, 0]), Incoming::Close(0));
        assert_eq!(Incoming::parse(&[255]), Incoming::Ignored);
        assert_eq!(Incoming::parse(b"\x01out"), Incoming::Ignored);
    }

    #[test]
    fn the_outcome_carries_the_exit_code_as_kubectl_reads_it() {
        let ok: serde_json::Value = serde_json::from_str(&outcome(&["true".into()], 0)).unwrap();
        assert_eq!(ok["status"], "Success");
        let bad: serde_json::Value =
            serde_json::from_str(&outcome(&["sh".into(), "-c".into(), "exit 3".into()], 3)).unwrap();
        assert_eq!(bad["status"], "Failure");
        assert_eq!(bad["reason"], "NonZeroExitCode");
        assert_eq!(bad["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
        assert!(bad["message"].as_str().unwrap().contains("[sh -c exit 3], exit code 3"));
    }
}
