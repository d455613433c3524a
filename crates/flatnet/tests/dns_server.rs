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
    start_with(dir, port, allow, &[], Stdio::null())
}

fn start_with(dir: &std::path::Path, port: u16, allow: &str, more: &[&str], stderr: Stdio) -> Server {
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
            .args(["--allow-forwarding", allow, "--metrics-addr", "none"])
            .args(more)
            .stderr(stderr)
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

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?.parse().ok()).unwrap_or(0)
}

/// A query for `name` (type A) with id `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
fn a_flood_of_forwarded_queries_to_a_silent_upstream_is_shed_and_the_cluster_still_answers() {
    sandboxed("a_flood_of_forwarded_queries_to_a_silent_upstream_is_shed_and_the_cluster_still_answers", |_| {
        let dir = tempfile::tempdir().unwrap();
        // The upstream takes every query and never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.2:53").unwrap();
        let port = free_port();
        let objects = dir.path().join("objects.json");
        std::fs::write(&objects, OBJECTS).unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 127.0.0.2\n").unwrap();
        let metrics = format!("127.0.0.1:{}", free_port());
        let server = Server(
            Command::new(flatnet())
                .args(["dns", "--from-file"])
                .arg(&objects)
                .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream-resolv-conf"])
                .arg(&resolv)
                .args(["--allow-forwarding", "127.0.0.0/8", "--metrics-addr", &metrics])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        converges("the server answers", Duration::from_secs(10), || {
            match status(port, &["web.default.svc.cluster.local"]) {
                s if s == "NOERROR" => Ok(()),
                s => Err(s),
            }
        });
        let before = rss_kib(server.0.id());
        // 30,000 queries for names outside the cluster, as fast as one socket sends them.
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_nonblocking(true).unwrap();
        let mut servfail = 0;
        let mut buf = [0u8; 512];
        for i in 0..30_000u32 {
            let _ = client.send_to(&query(i as u16, &format!("n{i}.example.com")), ("127.0.0.1", port));
            while let Ok(n) = client.recv(&mut buf) {
                servfail += usize::from(n >= 4 && buf[3] & 0x0f == 2);
            }
        }
        // The cluster's names are answered at once in the middle of it.
        let started = std::time::Instant::now();
        assert_eq!(status(port, &["web.default.svc.cluster.local"]), "NOERROR");
        assert!(started.elapsed() < Duration::from_secs(1), "a cluster name took {:?}", started.elapsed());
        let grown = rss_kib(server.0.id()).saturating_sub(before);
        assert!(grown < 64 * 1024, "the server grew by {grown} KiB under the flood");
        assert!(servfail > 0, "no query was shed: is forwarding bounded?");
        let text = {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(&metrics).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let shed: u64 = text
            .lines()
            .filter(|l| l.starts_with("flatnet_dns_shed_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum();
        assert!(shed > 0, "flatnet_dns_shed_total counts nothing: {text}");
        drop(silent);
    });
}

#[test]
fn a_domain_too_long_for_the_zone_is_refused_before_anything_listens() {
    // 10 labels of 24 bytes: a valid name, but hostmaster.<it> is over 255 bytes.
    let domain = vec!["a".repeat(24); 10].join(".");
    let port = free_port();
    let out = Command::new(flatnet())
        .args(["dns", "--domain", &domain, "--upstream-resolv-conf", "/dev/null"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-addr", "none"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "flatnet dns accepted the domain: {err}");
    assert!(err.contains("--domain") && err.contains("255 bytes"), "{err}");
    assert!(std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok(), "the port was taken: something listened");
}

/// The TTL of the first answer record, or the rcode when there is none.
fn answer_ttl(port: u16, name: &str) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=3", "+tries=1", "+noall", "+answer", name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(1).map_or_else(|| format!("no answer: {text}"), str::to_string)
}

/// Writes a ConfigMap volume's key as the kubelet does: aside, then renamed into place.
fn set_key(dir: &std::path::Path, key: &str, value: &str) {
    let tmp = dir.join(format!(".{key}.tmp"));
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, dir.join(key)).unwrap();
}

#[test]
fn settings_from_a_config_directory_apply_while_serving_and_a_bad_change_is_refused() {
    sandboxed("settings_from_a_config_directory_apply_while_serving_and_a_bad_change_is_refused", |_| {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        set_key(&config, "ttl", "7\n");
        let log = dir.path().join("dns.log");
        let port = free_port();
        let config_arg = config.to_string_lossy().into_owned();
        let _server = start_with(
            dir.path(),
            port,
            "10.244.0.0/16",
            &["--config-dir", &config_arg],
            Stdio::from(std::fs::File::create(&log).unwrap()),
        );
        converges("the TTL from the config directory", Duration::from_secs(10), || {
            match answer_ttl(port, "web.default.svc.cluster.local") {
                t if t == "7" => Ok(()),
                t => Err(t),
            }
        });
        // The domain changes while it serves: the new names answer, the old ones are no
        // longer the cluster's (and this client may not forward).
        set_key(&config, "domain", "corp.example");
        converges("the new domain", Duration::from_secs(10), || {
            match status(port, &["web.default.svc.corp.example"]) {
                s if s == "NOERROR" => Ok(()),
                s => Err(s),
            }
        });
        assert_eq!(status(port, &["web.default.svc.cluster.local"]), "REFUSED");
        // A change that does not parse is refused whole, said in the log, and what was in
        // force stays.
        set_key(&config, "ttl", "soon");
        set_key(&config, "domain", "other.example");
        converges("the refusal in the log", Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("refused") && text.contains("ttl \"soon\"") { Ok(()) } else { Err(text) }
        });
        assert_eq!(answer_ttl(port, "web.default.svc.corp.example"), "7");
        assert_eq!(status(port, &["web.default.svc.other.example"]), "REFUSED");
    });
}
