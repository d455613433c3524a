//! `flatnet dns` as a process, in a sandbox of its own, serving a fixed list of
//! objects: it answers the cluster's names to anyone, forwards other names only for the
//! clients it is told to (so it is no open resolver), and says SERVFAIL when no
//! upstream answers.

mod common;

use common::lab::{flatnet, free_port};
use common::{converges, dig_rcode, sandboxed};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const OBJECTS: &str = r#"{"kind": "List", "items": [
  {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "web", "namespace": "default"},
   "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}}]}"#;

fn status(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=3", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (bind9-dnsutils) is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    dig_rcode(&text)
}

fn start(dir: &std::path::Path, port: u16, allow: &str) -> Server {
    let objects = dir.join("objects.json");
    std::fs::write(&objects, OBJECTS).unwrap();
    // An upstream on loopback where nothing listens: forwarding must fail cleanly.
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.53\n").unwrap();
    Server(
        Command::new(flatnet())
            .args(["dns", "--from-file"])
            .arg(&objects)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream-resolv-conf"])
            .arg(&resolv)
            .args(["--allow-forwarding", allow])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn forwarding_is_only_for_allowed_clients() {
    sandboxed("forwarding_is_only_for_allowed_clients", |_| {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (free_port(), free_port());
        let _refusing = start(dir.path(), p1, "10.244.0.0/16");
        let _allowing = start(dir.path(), p2, "127.0.0.0/8");
        for port in [p1, p2] {
            converges("the server answers", Duration::from_secs(10), || {
                match status(port, &["web.default.svc.cluster.local"]) {
                    s if s == "NOERROR" => Ok(()),
                    s => Err(s),
                }
            });
        }
        assert_eq!(status(p1, &["www.example.com"]), "REFUSED", "a client outside the allowed ranges");
        assert_eq!(status(p1, &["nope.default.svc.cluster.local"]), "NXDOMAIN", "the cluster's names are for all");
        assert_eq!(status(p2, &["www.example.com"]), "SERVFAIL", "allowed, but no upstream answers");
        assert_eq!(status(p2, &["+tcp", "www.example.com"]), "SERVFAIL");
    });
}
