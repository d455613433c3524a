//! Cluster DNS against CoreDNS and NSD, side by side in one run (in a sandbox, on loopback):
//! - a synthetic cluster (1,000 Services, a tenth headless, 10,000 pods, their
//!   EndpointSlices) in a lab API server, read by `flatnet dns` and by CoreDNS with its
//!   kubernetes plugin (the Corefile a kubeadm cluster ships; built by `scripts/peers`,
//!   left out with a note when it is not), and the same records written as a zone file
//!   for NSD (Debian `nsd`), an authoritative server built for speed;
//! - the same query mix for both (Service A, headless A, SRV, pod A, PTR, AAAA with no
//!   data, and NXDOMAIN for search-path misses, as `ndots:5` causes), after a check that
//!   both give the same rcode and answers for every query of the mix;
//! - throughput: dnsperf saturating each server, the server pinned to one CPU and dnsperf
//!   to the other; queries per second, and per CPU-second the server used;
//! - latency: p50 and p99 at a fixed offered rate, from dnsperf's per-query report;
//! - memory: the server's RSS with the cluster loaded, less its RSS with an empty one,
//!   per 1,000 objects (flatnet and CoreDNS; NSD has no API side);
//! - freshness: from a Service created in the API to its name answering.
//!
//! Rounds alternate between the servers; the report gives medians and the ratio.

use super::api_server::ApiServer;
use super::stats::{median, memory_kib, ms, summarize};
use anyhow::{Context, bail};
use flatnet_kernel::sandbox;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct DnsBenchArgs {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Seconds of each throughput and latency window.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds per server (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The offered rate of the latency windows, queries/s.
    #[arg(long, default_value_t = 20_000)]
    latency_qps: u32,
    /// The CoreDNS binary (default: the one `scripts/peers` builds).
    #[arg(long)]
    coredns: Option<PathBuf>,
}

/// Where `scripts/peers` puts CoreDNS.
fn coredns_binary(given: Option<&Path>) -> Option<PathBuf> {
    let cache = std::env::var_os("FLATNET_PEERS_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/flatnet/peers"), PathBuf::from);
    let p = given.map_or_else(|| cache.join("coredns-v1.15.0/coredns"), Path::to_path_buf);
    p.is_file().then_some(p)
}

const NAMESPACES: usize = 20;
const ENDPOINTS: usize = 10;

pub fn run(args: DnsBenchArgs) -> anyhow::Result<()> {
    for tool in ["dnsperf", "nsd", "taskset"] {
        if which(tool).is_none() {
            bail!("the DNS benchmark needs `{tool}` (apt-get install dnsperf nsd util-linux)");
        }
    }
    if let Some(why) = sandbox::unavailable_reason() {
        bail!("the DNS benchmark {why}");
    }
    sandbox::run(|_| bench(&args))?
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// The synthetic cluster.
struct Cluster {
    objects: Vec<Value>,
    zone: String,
    reverse: String,
    queries: Vec<String>,
}

fn pod_ip(i: usize) -> String {
    format!("10.244.{}.{}", i / 250, i % 250 + 2)
}

fn cluster(services: usize, pods: usize) -> Cluster {
    let mut objects = Vec::new();
    let mut zone = String::from(
        "$ORIGIN cluster.local.\n$TTL 5\n@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n\
         @ IN NS ns.dns.cluster.local.\nns.dns IN A 10.96.0.10\ndns-version IN TXT \"1.1.0\"\n",
    );
    let mut reverse = String::from(
        "$ORIGIN 10.in-addr.arpa.\n$TTL 5\n@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n\
         @ IN NS ns.dns.cluster.local.\n",
    );
    let mut queries = Vec::new();
    for i in 0..pods {
        let ns = format!("ns-{}", i % NAMESPACES);
        let ip = pod_ip(i);
        objects.push(
            json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": format!("pod-{i}"), "namespace": ns},
                            "spec": {"containers": [{"name": "app", "image": "busybox"}]},
                            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
        );
        let _ = writeln!(zone, "{}.{ns}.pod IN A {ip}", ip.replace('.', "-"));
    }
    for j in 0..services {
        let ns = format!("ns-{}", j % NAMESPACES);
        let name = format!("svc-{j}");
        let headless = j % 10 == 0;
        let cluster_ip = format!("10.100.{}.{}", j / 250, j % 250 + 1);
        let fqdn = format!("{name}.{ns}.svc");
        let mut spec = json!({"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
        spec["clusterIP"] = json!(if headless { "None".to_string() } else { cluster_ip.clone() });
        objects.push(
            json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": name, "namespace": ns}, "spec": spec}),
        );
        let eps: Vec<usize> = (0..ENDPOINTS).map(|k| (j * ENDPOINTS + k) % pods.max(1)).collect();
        objects.push(json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": format!("{name}-abcde"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": eps.iter().map(|&k| json!({"addresses": [pod_ip(k)], "conditions": {"ready": true}})).collect::<Vec<_>>()}));
        if headless {
            for &k in &eps {
                let ip = pod_ip(k);
                let host = format!("{}.{fqdn}", ip.replace('.', "-"));
                let _ = writeln!(zone, "{fqdn} IN A {ip}\n{host} IN A {ip}");
                let _ = writeln!(zone, "{fqdn} IN SRV 0 100 80 {host}.cluster.local.");
                let _ = writeln!(zone, "_http._tcp.{fqdn} IN SRV 0 100 80 {host}.cluster.local.");
                let o: Vec<&str> = ip.split('.').collect();
                let _ = writeln!(reverse, "{}.{}.{} IN PTR {host}.cluster.local.", o[3], o[2], o[1]);
            }
        } else {
            let _ = writeln!(zone, "{fqdn} IN A {cluster_ip}");
            let _ = writeln!(zone, "{fqdn} IN SRV 0 100 80 {fqdn}.cluster.local.");
            let _ = writeln!(zone, "_http._tcp.{fqdn} IN SRV 0 100 80 {fqdn}.cluster.local.");
            let o: Vec<&str> = cluster_ip.split('.').collect();
            let _ = writeln!(reverse, "{}.{}.{} IN PTR {fqdn}.cluster.local.", o[3], o[2], o[1]);
        }
        // The mix, per Service: what pods ask, search-path misses included.
        let full = format!("{fqdn}.cluster.local");
        queries.push(format!("{full} A"));
        queries.push(format!("{full} A"));
        queries.push(format!("{full}.{ns}.svc.cluster.local A"));
        queries.push(format!("{name}.{ns}.{ns}.svc.cluster.local A"));
        queries.push(format!("_http._tcp.{full} SRV"));
        queries.push(format!("{full} AAAA"));
        queries.push(format!("{}.{ns}.pod.cluster.local A", pod_ip(j * 7 % pods.max(1)).replace('.', "-")));
        queries.push(format!(
            "{}.{}.pod.cluster.local A",
            pod_ip(j * 7 % pods.max(1)).replace('.', "-"),
            format_args!("ns-{}", (j * 7) % NAMESPACES)
        ));
        if !headless {
            let o: Vec<&str> = cluster_ip.split('.').collect();
            queries.push(format!("{}.{}.{}.{}.in-addr.arpa PTR", o[3], o[2], o[1], o[0]));
        }
    }
    Cluster { objects, zone, reverse, queries }
}

/// A server under test: its process, and how to stop it.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
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

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One query, raw: the reply's rcode and its answers' data, for comparing servers.
fn ask(port: u16, name: &str, qtype: &str) -> anyhow::Result<(String, Vec<String>)> {
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

fn start_flatnet(api: &ApiServer) -> anyhow::Result<Server> {
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
fn start_coredns(binary: &Path, dir: &Path, api: &ApiServer) -> anyhow::Result<Server> {
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

/// Creates every object of `c` through the API, `in_flight` requests at a time; pods'
/// addresses go through the status subresource, as a kubelet reports them.
async fn load(api: &ApiServer, c: &Cluster, in_flight: usize) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
    use kube::discovery::ApiResource;
    let client = api.client().await?;
    let resource = |kind: &str| -> ApiResource {
        let (group, version, plural) = match kind {
            "Service" => ("", "v1", "services"),
            "EndpointSlice" => ("discovery.k8s.io", "v1", "endpointslices"),
            _ => ("", "v1", "pods"),
        };
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() { version.into() } else { format!("{group}/{version}") },
            kind: kind.into(),
            plural: plural.into(),
        }
    };
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for i in 0..NAMESPACES {
        let ns = serde_json::from_value(json!({"metadata": {"name": format!("ns-{i}")}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    futures::stream::iter(c.objects.iter())
        .map(|o| {
            let client = client.clone();
            let ar = resource(o["kind"].as_str().unwrap_or(""));
            async move {
                let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
                let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &ar);
                let obj: DynamicObject = serde_json::from_value(o.clone())?;
                api.create(&PostParams::default(), &obj).await?;
                if ar.kind == "Pod" {
                    let name = o["metadata"]["name"].as_str().unwrap_or("");
                    let status = json!({"status": o["status"]});
                    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// From a Service created in the API to each server answering its name: the median of
/// `n` Services, per server.
async fn freshness(api: &ApiServer, servers: &[&Server], n: usize) -> anyhow::Result<Vec<f64>> {
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

fn start_nsd(dir: &Path) -> anyhow::Result<Server> {
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

/// CPU seconds used by `pid` and every process below it.
fn cpu_seconds(pid: u32) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            // After the command: state ppid … utime(12) stime(13) counting from state = 1.
            let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            total += (utime + stime) / tick;
        }
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            todo.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    total
}

/// dnsperf's "Queries per second" and "Queries lost".
fn dnsperf(port: u16, queries: &Path, seconds: u64, extra: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("taskset")
        .args(["-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args(["-l", &seconds.to_string(), "-t", "2"])
        .args(extra)
        .output()
        .context("run dnsperf")?;
    if !out.status.success() {
        bail!("dnsperf failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn stat_line(text: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|l| l.trim().strip_prefix(label)?.split_whitespace().next()?.parse().ok())
}

struct Round {
    qps: f64,
    per_cpu: f64,
    lost: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn round(s: &Server, queries: &Path, args: &DnsBenchArgs) -> anyhow::Result<Round> {
    let cpu0 = cpu_seconds(s.child.id());
    let text = dnsperf(s.port, queries, args.seconds, &["-c", "8", "-q", "400"])?;
    let cpu = cpu_seconds(s.child.id()) - cpu0;
    let qps = stat_line(&text, "Queries per second:").context("dnsperf printed no rate")?;
    let completed = stat_line(&text, "Queries completed:").unwrap_or(0.0);
    let lost = stat_line(&text, "Queries lost:").unwrap_or(0.0);
    let rate = args.latency_qps.to_string();
    let verbose = dnsperf(s.port, queries, args.seconds, &["-Q", &rate, "-v"])?;
    let lat: Vec<Duration> = verbose
        .lines()
        .filter_map(|l| l.strip_prefix("> ")?.split_whitespace().last()?.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect();
    let sum = summarize(&lat).context("dnsperf reported no query latency")?;
    Ok(Round { qps, per_cpu: completed / cpu.max(0.01), lost, p50_ms: ms(sum.p50), p99_ms: ms(sum.p99) })
}

fn bench(args: &DnsBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let c = cluster(args.services, args.pods);
    std::fs::write(dir.path().join("cluster.local.zone"), &c.zone)?;
    std::fs::write(dir.path().join("10.in-addr.arpa.zone"), &c.reverse)?;
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, c.queries.join("\n") + "\n")?;
    println!(
        "cluster: {} Services ({} headless), {} pods, {} objects in all; {} queries in the mix",
        args.services,
        args.services.div_ceil(10),
        args.pods,
        c.objects.len(),
        c.queries.len()
    );
    let coredns = coredns_binary(args.coredns.as_deref());
    if coredns.is_none() {
        println!("CoreDNS: not built (run scripts/peers coredns, or give --coredns): compared with NSD only");
    }
    let api_dir = dir.path().join("api");
    std::fs::create_dir_all(&api_dir)?;
    let api = ApiServer::start(&api_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    // Both API readers start on an empty cluster (memory baseline), then it is loaded.
    let flatnet = start_flatnet(&api)?;
    let core = coredns.as_deref().map(|b| start_coredns(b, dir.path(), &api)).transpose()?;
    let readers: Vec<&Server> = std::iter::once(&flatnet).chain(core.as_ref()).collect();
    let empty: Vec<u64> = readers.iter().map(|s| memory_kib(s.child.id(), "VmRSS:")).collect();
    let t = Instant::now();
    rt.block_on(load(&api, &c, 64))?;
    // Loaded once every reader answers the last Service.
    let j = args.services.saturating_sub(1);
    let last = format!("svc-{j}.ns-{}.svc.cluster.local.", j % NAMESPACES);
    for s in &readers {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ask(s.port, &last, "A").is_ok_and(|(_, d)| !d.is_empty()) {
            if Instant::now() > deadline {
                bail!("{} never answered {last}", s.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!("loaded {} objects through the API in {:.1} s", c.objects.len(), t.elapsed().as_secs_f64());
    let nsd = start_nsd(dir.path())?;
    let servers: Vec<&Server> = readers.iter().copied().chain([&nsd]).collect();

    // Same answers, query by query, against flatnet's.
    for other in &servers[1..] {
        let mut differ = 0;
        for q in &c.queries {
            let (name, t) = q.rsplit_once(' ').context("query line")?;
            let name = format!("{name}.");
            let a = ask(flatnet.port, &name, t).with_context(|| format!("flatnet dns, {q}"))?;
            let b = ask(other.port, &name, t).with_context(|| format!("{}, {q}", other.name))?;
            if a != b {
                if differ < 3 {
                    println!("  differs: {q}: flatnet {a:?}, {} {b:?}", other.name);
                }
                differ += 1;
            }
        }
        println!("answers compared with {}: {} queries, {differ} differ", other.name, c.queries.len());
    }
    if core.is_some() {
        println!(
            "  (CoreDNS differs by design where kubeadm's `pods insecure` answers any dashed address in any \
             namespace, and where a UDP answer over 512 bytes is cut: CoreDNS keeps the records that fit, \
             flatnet and NSD send none, with TC set)"
        );
    }

    let mut rounds: Vec<Vec<Round>> = servers.iter().map(|_| Vec::new()).collect();
    for r in 0..args.rounds {
        for (i, s) in servers.iter().enumerate() {
            let x = round(s, &queries, args)?;
            println!(
                "  round {} {:<12} {:>9.0} q/s  {:>9.0} q/CPU-s  lost {:>5.0}  p50 {:.3} ms  p99 {:.3} ms (at {} q/s)",
                r + 1,
                s.name,
                x.qps,
                x.per_cpu,
                x.lost,
                x.p50_ms,
                x.p99_ms,
                args.latency_qps
            );
            rounds[i].push(x);
        }
    }
    let loaded: Vec<u64> = readers.iter().map(|s| memory_kib(s.child.id(), "VmRSS:")).collect();
    let fresh = rt.block_on(freshness(&api, &readers, 5))?;
    let m = |i: usize, f: fn(&Round) -> f64| median(&rounds[i].iter().map(f).collect::<Vec<_>>());
    println!("\nmedians of {} rounds (each server on CPU 1, dnsperf on CPU 0):", args.rounds);
    let mut head = format!("  {:<30}", "");
    for s in &servers {
        head.push_str(&format!(" {:>12}", s.name));
    }
    for s in &servers[1..] {
        head.push_str(&format!(" {:>14}", format!("flatnet/{}", s.name)));
    }
    println!("{head}");
    type Measure = fn(&Round) -> f64;
    let rows: [(&str, Measure); 4] = [
        ("queries/s (one core)", |r| r.qps),
        ("queries per CPU-second", |r| r.per_cpu),
        ("p50 latency, ms", |r| r.p50_ms),
        ("p99 latency, ms", |r| r.p99_ms),
    ];
    for (label, f) in rows {
        let v: Vec<f64> = (0..servers.len()).map(|i| m(i, f)).collect();
        let mut line = format!("  {label:<30}");
        for x in &v {
            line.push_str(&format!(" {x:>12.3}"));
        }
        for x in &v[1..] {
            line.push_str(&format!(" {:>14.2}", v[0] / x));
        }
        println!("{line}");
    }
    let objects_k = c.objects.len() as f64 / 1000.0;
    let per_k: Vec<f64> =
        loaded.iter().zip(&empty).map(|(l, e)| l.saturating_sub(*e) as f64 / 1024.0 / objects_k).collect();
    let mut line = format!("  {:<30}", "MiB per 1,000 objects");
    for x in &per_k {
        line.push_str(&format!(" {x:>12.3}"));
    }
    line.push_str(&format!(" {:>12}", "-"));
    if per_k.len() > 1 {
        line.push_str(&format!(" {:>14.2}", per_k[0] / per_k[1]));
    }
    println!("{line}");
    let mut line = format!("  {:<30}", "Service created → answered, ms");
    for x in &fresh {
        line.push_str(&format!(" {x:>12.1}"));
    }
    line.push_str(&format!(" {:>12}", "-"));
    if fresh.len() > 1 {
        line.push_str(&format!(" {:>14.2}", fresh[0] / fresh[1]));
    }
    println!("{line}");
    let rss: Vec<String> = readers
        .iter()
        .zip(loaded.iter().zip(&empty))
        .map(|(s, (l, e))| format!("{} {:.1} (empty {:.1})", s.name, *l as f64 / 1024.0, *e as f64 / 1024.0))
        .collect();
    println!("  RSS loaded, MiB: {}", rss.join(", "));
    Ok(())
}
