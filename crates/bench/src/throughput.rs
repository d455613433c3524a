//! Single-stream TCP throughput with iperf3, in one run: pod → pod on one node, across
//! nodes over VXLAN, across nodes with host-gw, and a bare veth pair between two
//! namespaces as the baseline. A fifth path is the lab's host-gw topology built by hand
//! without flatnet (the same veths, bridges and routes): what the topology itself costs.
//! Rounds interleave the paths so the machine's drift hits them alike; medians and
//! ratios to the baseline are reported.

use super::lab_harness::BenchLab;
use super::stats::median;
use anyhow::{Context, bail};
use flatnet_kernel::sandbox::{self, Sandbox};
use flatnet_kernel::{Netlink, addr, link, netns};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(clap::Args)]
pub struct ThroughputBenchArgs {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Rounds over the four paths.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

struct Measured {
    label: &'static str,
    client: PathBuf,
    server_ip: String,
    target: Option<f64>,
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
    let vxlan = BenchLab::up(2, "vxlan")?;
    let hostgw = BenchLab::up(2, "host-gw")?;
    for lab in [&vxlan, &hostgw] {
        lab.pod("client", Some("node-1"), false)?;
        lab.pod("cross", Some("node-2"), false)?;
    }
    vxlan.pod("same", Some("node-1"), false)?;
    let ip = |pods: &[flatnet_lab::lifecycle::scenario::ReadyPod], n: &str| {
        pods.iter().find(|p| p.name == n).map(|p| p.ip.clone()).unwrap_or_default()
    };
    let vp = vxlan.wait_ready(3, Duration::from_secs(30))?;
    let hp = hostgw.wait_ready(2, Duration::from_secs(30))?;
    let mut servers: Vec<Server> = Vec::new();
    for ns in [b.clone(), vxlan.pod_netns("same")?, vxlan.pod_netns("cross")?, hostgw.pod_netns("cross")?, hand_server]
    {
        servers.push(Server::start(&ns)?);
    }
    let paths = [
        Measured { label: "bare veth pair (baseline)", client: a, server_ip: "10.99.0.2".into(), target: None },
        Measured {
            label: "pod → pod, same node",
            client: vxlan.pod_netns("client")?,
            server_ip: ip(&vp, "same"),
            target: None,
        },
        Measured {
            label: "pod → pod, cross node, VXLAN",
            client: vxlan.pod_netns("client")?,
            server_ip: ip(&vp, "cross"),
            target: Some(0.85),
        },
        Measured {
            label: "pod → pod, cross node, host-gw",
            client: hostgw.pod_netns("client")?,
            server_ip: ip(&hp, "cross"),
            target: Some(0.95),
        },
        Measured {
            label: "host-gw topology by hand, no flatnet",
            client: hand_client,
            server_ip: "10.97.2.2".into(),
            target: None,
        },
    ];
    println!("iperf3, one TCP stream, {} s per run, {} rounds interleaved", args.seconds, args.rounds);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 0..args.rounds {
        for (i, p) in paths.iter().enumerate() {
            let gbps = iperf(&p.client, &p.server_ip, args.seconds).with_context(|| p.label)?;
            samples[i].push(gbps);
        }
        println!(
            "  round {}: {}",
            round + 1,
            samples.iter().map(|s| format!("{:.2}", s[round])).collect::<Vec<_>>().join(" / ")
        );
    }
    let base = median(&samples[0]);
    println!("\n  {:<38} {:>12} {:>8}  TARGET", "PATH", "MEDIAN Gb/s", "RATIO");
    for (p, s) in paths.iter().zip(&samples) {
        let m = median(s);
        let target =
            p.target.map(|t| format!("≥ {t:.2} {}", if m / base >= t { "met" } else { "MISSED" })).unwrap_or_default();
        println!("  {:<38} {:>12.2} {:>8.3}  {target}", p.label, m, m / base);
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
fn veth_pair(sb: &Sandbox) -> anyhow::Result<(PathBuf, PathBuf)> {
    let [a, b] = namespaces(sb, ["bench-a", "bench-b"])?;
    wire(&a, None, "veth-a", &b, "10.99.0.2/24")?;
    add_address(&a, "veth-a", "10.99.0.1/24")?;
    Ok((a, b))
}

struct Server(Child);

impl Server {
    /// `iperf3 -s` inside the namespace at `ns`, until dropped.
    fn start(ns: &Path) -> anyhow::Result<Self> {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 -s")?;
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf(client: &Path, server: &str, seconds: u32) -> anyhow::Result<f64> {
    let mut last = String::new();
    // The server may need a moment to listen after it was started.
    for _ in 0..20 {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", client.display()))
            .args(["iperf3", "-c", server, "-t", &seconds.to_string(), "-J"])
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
