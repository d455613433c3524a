//! The servers under test: flatnet dns and CoreDNS reading the API, NSD reading zone
//! files; how to ask them, and how fast a new Service's name answers.

pub(super) use super::super::api_server::ApiServer;
use super::super::stats::{median, ms};
use anyhow::{Context, bail};
use serde_json::json;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/peers` puts CoreDNS.
pub(super) fn coredns_binary(given: Option<&Path>) -> Option<PathBuf> {
    let p = given.map_or_else(
        || flatnet_lab::upstream::peer_dir("coredns", flatnet_lab::upstream::COREDNS_VERSION).join("coredns"),
        Path::to_path_buf,
    );
    p.is_file().then_some(p)
}

/// A server under test: its process, and how to stop it.
pub(super) struct Server {
    pub name: &'static str,
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One query, raw: the reply's rcode and its answers' data, for comparing servers.
pub(super) fn ask(port: u16, name: &str, qtype: &str) -> anyhow::Result<(String, Vec<String>)> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let t: RecordType = qtype.parse().map_err(|e| anyhow::anyhow!("{qtype}: {e}"))?;
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name)?, t));
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.send_to(&m.to_vec()?, ("127.0.0.1", port))?;
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf)?;
    let r = Message::from_vec(&buf[..n])?;
    let mut data: Vec<String> = r.answers.iter().map(|a| a.data.to_string().to_lowercase()).collect();
    data.sort();
    Ok((r.metadata.response_code.to_string(), data))
}

fn wait_answering(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ask(port, "dns-version.cluster.local.", "TXT").is_err() {
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited ({st}) before answering");
        }
        if Instant::now() > deadline {
            bail!("{what} did not answer within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(super) fn start_flatnet(api: &ApiServer) -> anyhow::Result<Server> {
    let port = free_udp_port()?;
    let mut child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(std::env::current_exe()?)
        .args(["dns", "--kubeconfig"])
        .arg(&api.kubeconfig_path)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--udp-threads", "1", "--metrics-addr", "none"])
        .args(["--upstream-resolv-conf", "/dev/null"])
        .stderr(Stdio::null())
        .spawn()
        .context("start flatnet dns")?;
    wait_answering(port, &mut child, "flatnet dns")?;
    Ok(Server { name: "flatnet dns", child, port })
}

/// CoreDNS on one core with the Corefile kubeadm ships (forwarding to an upstream that
/// is not there: the benchmark asks only the cluster's names).
pub(super) fn start_coredns(binary: &Path, dir: &Path, api: &ApiServer) -> anyhow::Result<Server> {
    let port = free_udp_port()?;
    let corefile = format!(
        ".:{port} {{
    bind 127.0.0.1
    errors
    health 127.0.0.1:{health} {{
       lameduck 5s
    }}
    ready 127.0.0.1:{ready}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
       kubeconfig {kubeconfig}
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 5
    }}
    prometheus 127.0.0.1:{metrics}
    forward . 127.0.0.2:53 {{
       max_concurrent 1000
    }}
    cache 30 {{
       disable success cluster.local
       disable denial cluster.local
    }}
    loop
    reload
    loadbalance
}}
",
        health = free_udp_port()?,
        ready = free_udp_port()?,
        metrics = free_udp_port()?,
        kubeconfig = api.kubeconfig_path.display()
    );
    let path = dir.join("Corefile");
    std::fs::write(&path, corefile)?;
    let log = std::fs::File::create(dir.join("coredns.log"))?;
    let mut child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(binary)
        .arg("-conf")
        .arg(&path)
        .env("GOMAXPROCS", "1")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start CoreDNS")?;
    wait_answering(port, &mut child, "CoreDNS").with_context(|| {
        format!("CoreDNS's log: {}", std::fs::read_to_string(dir.join("coredns.log")).unwrap_or_default())
    })?;
    Ok(Server { name: "coredns", child, port })
}

/// From a Service created in the API to each server answering its name: the median of
/// `n` Services, per server.
pub(super) async fn freshness(api: &ApiServer, servers: &[&Server], n: usize) -> anyhow::Result<Vec<f64>> {
    use kube::api::{Api, PostParams};
    let client = api.client().await?;
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client, "ns-0");
    let mut took: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    for k in 0..n {
        let (name, ip) = (format!("late-{k}"), format!("10.100.250.{}", k + 1));
        let svc = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))?;
        let fqdn = format!("{name}.ns-0.svc.cluster.local.");
        let start = Instant::now();
        services.create(&PostParams::default(), &svc).await?;
        let mut left: Vec<usize> = (0..servers.len()).collect();
        while !left.is_empty() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("{fqdn} not answered within 30 s");
            }
            left.retain(|&i| match ask(servers[i].port, &fqdn, "A") {
                Ok((_, data)) if data.contains(&ip) => {
                    took[i].push(ms(start.elapsed()));
                    false
                }
                _ => true,
            });
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(took.iter().map(|t| median(t)).collect())
}

pub(super) fn start_nsd(dir: &Path) -> anyhow::Result<Server> {
    let port = free_udp_port()?;
    let d = dir.display();
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  server-count: 1\n  username: \"\"\n  \
         zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
         zonelistfile: \"{d}/zone.list\"\n  logfile: \"{d}/nsd.log\"\n  verbosity: 0\n  hide-version: yes\n  \
         rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n\
         remote-control:\n  control-enable: no\n\
         zone:\n  name: cluster.local\n  zonefile: cluster.local.zone\n\
         zone:\n  name: 10.in-addr.arpa\n  zonefile: 10.in-addr.arpa.zone\n"
    );
    let conf_path = dir.join("nsd.conf");
    std::fs::write(&conf_path, conf)?;
    let mut child = Command::new("taskset")
        .args(["-c", "1", "nsd", "-d", "-c"])
        .arg(&conf_path)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("start nsd")?;
    wait_answering(port, &mut child, "nsd")
        .with_context(|| format!("nsd's log: {}", std::fs::read_to_string(dir.join("nsd.log")).unwrap_or_default()))?;
    Ok(Server { name: "nsd", child, port })
}
