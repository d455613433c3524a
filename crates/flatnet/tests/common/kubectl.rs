//! kubectl against a lab, as its admin, and the checks of what kubectl users do with
//! pods through the API server and the node's kubelet API: `logs` and `exec` (with a
//! TTY), on either control plane.

use super::converges;
use super::lab::Lab;
use super::terminal::Terminal;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// kubectl as the lab's admin, from the host.
pub fn kubectl(lab: &Lab, args: &[&str]) -> Output {
    command(lab, args).output().unwrap()
}

pub fn command(lab: &Lab, args: &[&str]) -> Command {
    let mut c = Command::new("kubectl");
    c.env("KUBECONFIG", lab.state().join("kubeconfig")).args(args);
    c
}

/// Its stdout; a failure shows both streams.
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pod `talker` that prints three lines, then: `kubectl logs` (all, `--tail`, `-c`,
/// `-l`, `-f`),
/// `kubectl exec` (stdout and stderr apart, the exit code, the container's hostname,
/// stdin, a program that is not there, a container that is not there, a pod that has
/// finished) and
/// `kubectl exec -it` on a pseudo-terminal of the client's size.
pub fn logs_and_exec(lab: &Lab) {
    let script = "for i in 1 2 3; do echo line $i; done; sleep 3600";
    ok(kubectl(lab, &["run", "talker", "--image=busybox", "--restart=Never", "--", "sh", "-c", script]));
    converges("talker's log", Duration::from_secs(30), || {
        let out = kubectl(lab, &["logs", "talker"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text == "line 1\nline 2\nline 3\n" {
            Ok(())
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    });
    assert_eq!(ok(kubectl(lab, &["logs", "talker", "--tail", "1"])), "line 3\n");
    assert_eq!(ok(kubectl(lab, &["logs", "talker", "-c", "talker", "--tail=2"])), "line 2\nline 3\n");
    // By label (`kubectl run` labels its pod run=NAME), and following: the stream stays
    // open after the last line, until the client goes.
    assert_eq!(ok(kubectl(lab, &["logs", "-l", "run=talker"])), "line 1\nline 2\nline 3\n");
    let mut follow = command(lab, &["logs", "-f", "talker", "--tail=1"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(follow.stdout.take().unwrap()), &mut first).unwrap();
    assert_eq!(first, "line 3\n");
    // Without -f kubectl exits at once after the last line; with it, it stays.
    let watch_until = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < watch_until {
        assert!(follow.try_wait().unwrap().is_none(), "`logs -f` ended by itself");
        std::thread::sleep(Duration::from_millis(20));
    }
    follow.kill().unwrap();
    follow.wait().unwrap();

    let out = kubectl(lab, &["exec", "talker", "--", "sh", "-c", "echo out; echo err >&2; echo $HOSTNAME; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\ntalker\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("err\n") && err.contains("command terminated with exit code 3"), "{err}");
    let mut cat = command(lab, &["exec", "-i", "talker", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut cat.stdin.take().unwrap(), b"through stdin\n").unwrap();
    assert_eq!(ok(cat.wait_with_output().unwrap()), "through stdin\n");
    let missing = kubectl(lab, &["exec", "talker", "--", "no-such-program"]);
    assert_eq!(missing.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("executable file not found"));
    let nope = kubectl(lab, &["exec", "talker", "-c", "nope", "--", "true"]);
    let err = String::from_utf8_lossy(&nope.stderr);
    assert!(!nope.status.success() && err.contains("container nope is not valid for pod talker"), "{err}");
    // A pod that has finished takes no exec, in the real API's words.
    ok(kubectl(lab, &["run", "done", "--image=busybox", "--restart=Never", "--", "true"]));
    converges("pod done to finish", Duration::from_secs(30), || {
        let phase =
            String::from_utf8_lossy(&kubectl(lab, &["get", "pod", "done", "-o", "jsonpath={.status.phase}"]).stdout)
                .into_owned();
        if phase == "Succeeded" { Ok(()) } else { Err(phase) }
    });
    let finished = kubectl(lab, &["exec", "done", "--", "true"]);
    let err = String::from_utf8_lossy(&finished.stderr);
    assert!(
        !finished.status.success()
            && err.contains("cannot exec into a container in a completed pod; current phase is Succeeded"),
        "{err}"
    );

    let mut term = Terminal::start(
        command(lab, &["exec", "-it", "talker", "--", "sh"]),
        flatnet_kernel::pty::Size { cols: 132, rows: 43 },
    );
    term.expect("# ", Duration::from_secs(20));
    term.type_line("tty; stty size; echo term=$TERM");
    term.expect("term=xterm", Duration::from_secs(10));
    term.type_line("exit 7");
    let (code, screen) = term.finish(Duration::from_secs(10));
    assert_eq!(code, 7, "{screen}");
    assert!(screen.contains("/dev/pts/") && screen.contains("43 132"), "a terminal of the client's size: {screen}");
}
