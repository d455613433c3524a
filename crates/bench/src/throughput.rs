//! Pod-to-pod network performance in one run: single-stream and 8-stream TCP
//! throughput (iperf3) and TCP request/response rate (one byte each way, as netperf's
//! TCP_RR), pod → pod on one node, across nodes over VXLAN and host-gw, the same with
//! Flannel (flanneld and the reference bridge plugin, from `scripts/peers`) on an
//! identical lab, a bare veth pair between two namespaces as the baseline, and the
//! lab's host-gw topology built by hand without any CNI (what the topology itself
//! costs). Rounds interleave the paths so the machine's drift hits them alike; medians,
//! ratios to the baseline and flatnet's ratio to Flannel are reported.

use super::lab_harness::BenchLab;
use super::stats::median;
use anyhow::{Context, bail};
use flatnet_kernel::sandbox::{self, Sandbox};
use flatnet_kernel::{Netlink, addr, link, netns};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ThroughputBenchArgs {
    /// Seconds per run (each of: 1 stream, 8 streams, request/response).
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Rounds over the paths.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Leave Flannel out even when scripts/peers has built it.
    #[arg(long)]
    no_flannel: bool,
}

struct Measured {
    label: String,
    client: PathBuf,
    server_ip: String,
    /// The single-stream ratio to the baseline flatnet aims at.
    target: Option<f64>,
}

/// The TCP port of the request/response server in every server namespace.
const RR_PORT: u16 = 5202;

/// One lab of two nodes with pods `client` and `cross` (node-1, node-2) and, when
/// `same`, a pod `same` beside the client.
struct PathLab {
    lab: BenchLab,
    network: &'static str,
    backend: &'static str,
}

impl PathLab {
    fn up(network: &'static str, backend: &'static str, same: bool) -> anyhow::Result<Self> {
        let lab = BenchLab::up_with(2, backend, &["--network", network])?;
        lab.pod("client", Some("node-1"), false)?;
        lab.pod("cross", Some("node-2"), false)?;
        if same {
            lab.pod("same", Some("node-1"), false)?;
        }
        Ok(Self { lab, network, backend })
    }

    fn path(&self, pods: &[flatnet_lab::lifecycle::scenario::ReadyPod], to: &str) -> anyhow::Result<Measured> {
        let ip = pods.iter().find(|p| p.name == to).map(|p| p.ip.clone()).context("the server pod's IP")?;
        let label = match to {
            "same" => format!("{} pod → pod, same node", self.network),
            _ => format!("{} pod → pod, cross node, {}", self.network, self.backend),
        };
        let target = match (self.network, self.backend, to) {
            ("flatnet", "vxlan", "cross") => Some(0.85),
            ("flatnet", "host-gw", "cross") => Some(0.95),
            _ => None,
        };
        Ok(Measured { label, client: self.lab.pod_netns("client")?, server_ip: ip, target })
    }
}

pub fn run(args: ThroughputBenchArgs) -> anyhow::Result<()> {
    if let Some(why) = sandbox::unavailable_reason() {
        bail!("the throughput benchmark {why}");
    }
    if Command::new("iperf3").arg("--version").output().is_err() {
        bail!("iperf3 is not installed (apt-get install iperf3, or run scripts/setup)");
    }
    sandbox::run(|sb| measure(sb, &args))?
}

fn measure(sb: &Sandbox, args: &ThroughputBenchArgs) -> anyhow::Result<()> {
    let (a, b) = veth_pair(sb)?;
    let (hand_client, hand_server) = hand_built(sb)?;
    let flannel = match (args.no_flannel, flatnet_lab::pod_network::flannel_binaries()) {
        (true, _) => false,
        (false, Ok(_)) => true,
        (false, Err(why)) => {
            println!("Flannel is not compared: {why}");
            false
        }
    };
    let mut labs = vec![PathLab::up("flatnet", "vxlan", true)?, PathLab::up("flatnet", "host-gw", false)?];
    if flannel {
        labs.push(PathLab::up("flannel", "vxlan", true)?);
        labs.push(PathLab::up("flannel", "host-gw", false)?);
    }
    let mut paths = vec![Measured {
        label: "bare veth pair (baseline)".into(),
        client: a,
        server_ip: "10.99.0.2".into(),
        target: None,
    }];
    let mut server_ns = vec![b];
    for l in &labs {
        let pods = l.lab.wait_ready(2 + usize::from(l.backend == "vxlan"), Duration::from_secs(60))?;
        let targets: &[&str] = if l.backend == "vxlan" { &["same", "cross"] } else { &["cross"] };
        for to in targets {
            paths.push(l.path(&pods, to)?);
            server_ns.push(l.lab.pod_netns(to)?);
        }
    }
    paths.push(Measured {
        label: "host-gw topology by hand, no CNI".into(),
        client: hand_client,
        server_ip: "10.97.2.2".into(),
        target: None,
    });
    server_ns.push(hand_server);
    let mut servers = Vec::new();
    for ns in &server_ns {
        servers.push(Server::start(ns)?);
        servers.push(Server::rr(ns)?);
    }
    println!(
        "iperf3 (1 and 8 TCP streams) and TCP request/response, {} s per run, {} rounds interleaved",
        args.seconds, args.rounds
    );
    // Per path: single-stream Gb/s, 8-stream Gb/s, transactions/s.
    let mut samples: Vec<[Vec<f64>; 3]> = paths.iter().map(|_| Default::default()).collect();
    for round in 0..args.rounds {
        for (i, p) in paths.iter().enumerate() {
            samples[i][0].push(iperf(&p.client, &p.server_ip, args.seconds, 1).with_context(|| p.label.clone())?);
            samples[i][1].push(iperf(&p.client, &p.server_ip, args.seconds, 8).with_context(|| p.label.clone())?);
            samples[i][2].push(rr(&p.client, &p.server_ip, args.seconds).with_context(|| p.label.clone())?);
        }
        println!(
            "  round {}: {}",
            round + 1,
            samples.iter().map(|s| format!("{:.2}", s[0][round])).collect::<Vec<_>>().join(" / ")
        );
    }
    let m: Vec<[f64; 3]> = samples.iter().map(|s| [median(&s[0]), median(&s[1]), median(&s[2])]).collect();
    let base = m[0];
    println!(
        "\n  {:<42} {:>9} {:>6} {:>9} {:>6} {:>9} {:>8}  TARGET (1 stream)",
        "PATH (medians)", "1× Gb/s", "RATIO", "8× Gb/s", "RATIO", "RR/s", "RR µs"
    );
    for (p, m) in paths.iter().zip(&m) {
        let target = p
            .target
            .map(|t| format!("≥ {t:.2} {}", if m[0] / base[0] >= t { "met" } else { "MISSED" }))
            .unwrap_or_default();
        println!(
            "  {:<42} {:>9.2} {:>6.3} {:>9.2} {:>6.3} {:>9.0} {:>8.1}  {target}",
            p.label,
            m[0],
            m[0] / base[0],
            m[1],
            m[1] / base[1],
            m[2],
            1e6 / m[2]
        );
    }
    if flannel {
        println!("\n  flatnet ÷ Flannel (goal ≥ 1.00 on each path; for latency ≤ 1.00)");
        for path in ["same node", "cross node, vxlan", "cross node, host-gw"] {
            let find = |net: &str| paths.iter().position(|p| p.label == format!("{net} pod → pod, {path}"));
            if let (Some(f), Some(k)) = (find("flatnet"), find("flannel")) {
                println!(
                    "  {:<22} one stream {:.3}   eight streams {:.3}   RR latency {:.3}",
                    path,
                    m[f][0] / m[k][0],
                    m[f][1] / m[k][1],
                    m[k][2] / m[f][2]
                );
            }
        }
    }
    drop(servers);
    Ok(())
}

/// Runs `f` with a netlink socket inside the namespace at `path`.
fn in_ns<T: Send>(path: &Path, f: impl FnOnce(&mut Netlink) -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    netns::run_in(path, || f(&mut Netlink::open()?))?
}

/// A veth from `host` (its end `host_name` up, on bridge `master` if given) to `eth0`
/// in `peer`, up with `addr`.
fn wire(host: &Path, master: Option<u32>, host_name: &str, peer: &Path, addr: &str) -> anyhow::Result<()> {
    let peer_ns = netns::NetNs::open(peer)?;
    let mac = |s: &str| flatnet_model::names::derived_mac(&format!("{}{s}", host.display()));
    in_ns(host, |nl| {
        let pair = link::VethPair {
            host_name,
            host_mac: mac(host_name),
            master,
            peer_name: "eth0",
            peer_mac: mac(&format!("{host_name}-peer")),
            peer_netns: peer_ns.file().as_fd(),
            mtu: 1500,
        };
        Ok(link::create_veth(nl, &pair)?)
    })?;
    add_address(peer, "eth0", addr)?;
    in_ns(peer, |nl| {
        let eth0 = link::get(nl, "eth0")?.context("eth0")?;
        Ok(link::set_up(nl, eth0.index)?)
    })
}

fn add_address(path: &Path, dev: &str, addr: &str) -> anyhow::Result<()> {
    in_ns(path, |nl| {
        let l = link::get(nl, dev)?.with_context(|| dev.to_string())?;
        addr::add_v4(nl, l.index, addr.parse()?)?;
        Ok(())
    })
}

/// Namespaces named `names` in the sandbox, loopback up.
fn namespaces<const N: usize>(sb: &Sandbox, names: [&str; N]) -> anyhow::Result<[PathBuf; N]> {
    let mut out = Vec::with_capacity(N);
    for n in names {
        let path = sb.create_netns(n)?;
        in_ns(&path, |nl| Ok(link::set_up(nl, 1)?))?;
        out.push(path);
    }
    Ok(out.try_into().expect("one per name"))
}

/// The lab's host-gw path without flatnet: pod A —veth— bridge in node 1 (routing)
/// —veth— underlay bridge —veth— node 2 (routing) bridge —veth— pod B, with static
/// routes. Returns the two pods' namespaces (B is 10.97.2.2).
fn hand_built(sb: &Sandbox) -> anyhow::Result<(PathBuf, PathBuf)> {
    let [pa, n1, u, n2, pb] = namespaces(sb, ["hand-pa", "hand-n1", "hand-u", "hand-n2", "hand-pb"])?;
    let bridge = |path: &Path, name: &str, addr: Option<&str>| {
        in_ns(path, |nl| {
            let mac = flatnet_model::names::derived_mac(&format!("{}{name}", path.display()));
            link::create_bridge(nl, name, mac, Some(1500))?;
            Ok(())
        })?;
        if let Some(a) = addr {
            add_address(path, name, a)?;
        }
        in_ns(path, |nl| Ok(link::get(nl, name)?.context("bridge")?.index))
    };
    let route = |path: &Path, dst: &str, via: &str| {
        in_ns(path, |nl| {
            let eth0 = link::get(nl, "eth0")?.context("eth0")?;
            flatnet_kernel::route::add_v4(nl, dst.parse()?, Some(via.parse()?), eth0.index, None)?;
            Ok(())
        })
    };
    let cni1 = bridge(&n1, "cni0", Some("10.97.1.1/24"))?;
    let cni2 = bridge(&n2, "cni0", Some("10.97.2.1/24"))?;
    let lab0 = bridge(&u, "lab0", None)?;
    wire(&n1, Some(cni1), "vpod", &pa, "10.97.1.2/24")?;
    wire(&n2, Some(cni2), "vpod", &pb, "10.97.2.2/24")?;
    wire(&u, Some(lab0), "n1", &n1, "192.168.1.11/24")?;
    wire(&u, Some(lab0), "n2", &n2, "192.168.1.12/24")?;
    route(&pa, "0.0.0.0/0", "10.97.1.1")?;
    route(&pb, "0.0.0.0/0", "10.97.2.1")?;
    route(&n1, "10.97.2.0/24", "192.168.1.12")?;
    route(&n2, "10.97.1.0/24", "192.168.1.11")?;
    for n in [&n1, &n2] {
        in_ns(n, |_| Ok(flatnet_kernel::sysctl::ensure("net.ipv4.ip_forward", "1")?))?;
    }
    Ok((pa, pb))
}

/// Two namespaces joined by a bare veth pair, 10.99.0.1 and .2, MTU 1500.
pub(crate) fn veth_pair(sb: &Sandbox) -> anyhow::Result<(PathBuf, PathBuf)> {
    let [a, b] = namespaces(sb, ["bench-a", "bench-b"])?;
    wire(&a, None, "veth-a", &b, "10.99.0.2/24")?;
    add_address(&a, "veth-a", "10.99.0.1/24")?;
    Ok((a, b))
}

pub(crate) enum Server {
    Iperf(Child),
    Rr { stop: Arc<AtomicBool>, addr: std::net::SocketAddr, ns: PathBuf },
}

impl Server {
    /// `iperf3 -s` inside the namespace at `ns`, until dropped.
    pub(crate) fn start(ns: &Path) -> anyhow::Result<Self> {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 -s")?;
        Ok(Self::Iperf(child))
    }

    /// A request/response server on RR_PORT in the namespace at `ns`: it answers every
    /// byte with one byte, a connection per thread, until dropped.
    pub(crate) fn rr(ns: &Path) -> anyhow::Result<Self> {
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], RR_PORT));
        let listener = netns::run_in(ns, || std::net::TcpListener::bind(addr))??;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut c) = conn else { continue };
                std::thread::spawn(move || {
                    let _ = c.set_nodelay(true);
                    let mut b = [0u8; 1];
                    while c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {}
                });
            }
        });
        Ok(Self::Rr { stop, addr: std::net::SocketAddr::from(([127, 0, 0, 1], RR_PORT)), ns: ns.to_path_buf() })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match self {
            Self::Iperf(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Self::Rr { stop, addr, ns } => {
                stop.store(true, Ordering::Relaxed);
                // Wakes the accepting thread, which then sees the flag.
                let addr = *addr;
                let _ = netns::run_in(ns, || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
            }
        }
    }
}

/// Gb/s received over `streams` parallel TCP streams.
pub(crate) fn iperf(client: &Path, server: &str, seconds: u32, streams: u32) -> anyhow::Result<f64> {
    let mut last = String::new();
    // The server may need a moment to listen after it was started.
    for _ in 0..20 {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", client.display()))
            .args(["iperf3", "-c", server, "--connect-timeout", "3000", "-t", &seconds.to_string()])
            .args(["-P", &streams.to_string(), "-J"])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e9);
        }
        last = v["error"].as_str().unwrap_or_default().to_string();
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 to {server} failed: {last}")
}

/// Transactions per second: one byte to the server and one back, one at a time over
/// one TCP connection (netperf's TCP_RR).
pub(crate) fn rr(client: &Path, server: &str, seconds: u32) -> anyhow::Result<f64> {
    let addr = std::net::SocketAddr::new(server.parse()?, RR_PORT);
    let mut c = netns::run_in(client, || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))?
        .with_context(|| format!("connect to {addr}"))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (mut b, mut n) = ([1u8; 1], 0u64);
    let start = Instant::now();
    let until = Duration::from_secs(seconds.into());
    while start.elapsed() < until {
        c.write_all(&b)?;
        c.read_exact(&mut b).context("the server's answer")?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
