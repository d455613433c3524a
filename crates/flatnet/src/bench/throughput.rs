//! Single-stream TCP throughput with iperf3, in one run: pod → pod on one node, across
//! nodes over VXLAN, across nodes with host-gw, and a bare veth pair between two
//! namespaces as the baseline. Rounds interleave the four paths so the machine's drift
//! hits them alike; medians and ratios to the baseline are reported.

use super::lab_harness::BenchLab;
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

struct Path4 {
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
    let vxlan = BenchLab::up(2, "vxlan")?;
    let hostgw = BenchLab::up(2, "host-gw")?;
    for lab in [&vxlan, &hostgw] {
        lab.pod("client", Some("node-1"), false)?;
        lab.pod("cross", Some("node-2"), false)?;
    }
    vxlan.pod("same", Some("node-1"), false)?;
    let ip =
        |pods: &[(String, String)], n: &str| pods.iter().find(|p| p.0 == n).map(|p| p.1.clone()).unwrap_or_default();
    let vp = vxlan.wait_ready(3, Duration::from_secs(30))?;
    let hp = hostgw.wait_ready(2, Duration::from_secs(30))?;
    let mut servers: Vec<Server> = Vec::new();
    for ns in [b.clone(), vxlan.pod_netns("same")?, vxlan.pod_netns("cross")?, hostgw.pod_netns("cross")?] {
        servers.push(Server::start(&ns)?);
    }
    let paths = [
        Path4 { label: "bare veth pair (baseline)", client: a, server_ip: "10.99.0.2".into(), target: None },
        Path4 {
            label: "pod → pod, same node",
            client: vxlan.pod_netns("client")?,
            server_ip: ip(&vp, "same"),
            target: None,
        },
        Path4 {
            label: "pod → pod, cross node, VXLAN",
            client: vxlan.pod_netns("client")?,
            server_ip: ip(&vp, "cross"),
            target: Some(0.85),
        },
        Path4 {
            label: "pod → pod, cross node, host-gw",
            client: hostgw.pod_netns("client")?,
            server_ip: ip(&hp, "cross"),
            target: Some(0.95),
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
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&samples[0]);
    println!("\n  {:<34} {:>12} {:>8}  TARGET", "PATH", "MEDIAN Gb/s", "RATIO");
    for (p, s) in paths.iter().zip(&samples) {
        let m = median(s);
        let target =
            p.target.map(|t| format!("≥ {t:.2} {}", if m / base >= t { "met" } else { "MISSED" })).unwrap_or_default();
        println!("  {:<34} {:>12.2} {:>8.3}  {target}", p.label, m, m / base);
    }
    drop(servers);
    Ok(())
}

/// Two namespaces joined by a veth pair, 10.99.0.1 and .2, MTU 1500.
fn veth_pair(sb: &Sandbox) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (a, b) = (sb.create_netns("bench-a")?, sb.create_netns("bench-b")?);
    let peer = netns::NetNs::open(&b)?;
    netns::run_in(&a, || -> anyhow::Result<()> {
        let mut nl = Netlink::open()?;
        link::set_up(&mut nl, 1)?;
        link::create_veth(
            &mut nl,
            &link::VethPair {
                host_name: "veth-a",
                host_mac: [0x02, 0, 0, 0, 0, 2],
                master: None,
                peer_name: "eth0",
                peer_mac: [0x02, 0, 0, 0, 0, 3],
                peer_netns: peer.file().as_fd(),
                mtu: 1500,
            },
        )?;
        let veth = link::get(&mut nl, "veth-a")?.context("veth-a")?;
        addr::add_v4(&mut nl, veth.index, "10.99.0.1/24".parse()?)?;
        Ok(())
    })??;
    netns::run_in(&b, || -> anyhow::Result<()> {
        let mut nl = Netlink::open()?;
        link::set_up(&mut nl, 1)?;
        let eth0 = link::get(&mut nl, "eth0")?.context("eth0")?;
        addr::add_v4(&mut nl, eth0.index, "10.99.0.2/24".parse()?)?;
        link::set_up(&mut nl, eth0.index)?;
        Ok(())
    })??;
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
