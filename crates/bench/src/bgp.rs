//! Native routing by BGP across racks, in one run:
//! - throughput: iperf3 single stream (and TCP request/response) from a pod in rack 1 to
//!   a pod in rack 2, routed by BGP and encapsulated in VXLAN on an identical two-rack
//!   lab, each as a ratio to a bare veth pair;
//! - convergence: a node cut off without a goodbye, until its Pod CIDR is withdrawn from
//!   every router and node; and a node's Pod CIDR assigned, until every other node has
//!   the route. Medians over several rounds.

use super::lab_harness::BenchLab;
use super::stats::median;
use super::throughput::{Server, iperf, rr, veth_pair};
use anyhow::{Context, bail};
use flatnet_kernel::route::{FLATNET_BGP_PROTOCOL, list_owned};
use flatnet_kernel::sandbox::{self, Sandbox};
use flatnet_kernel::{Netlink, netns};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BgpBenchArgs {
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Rounds of the throughput paths, and of each convergence measurement.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

pub fn run(args: BgpBenchArgs) -> anyhow::Result<()> {
    if let Some(why) = sandbox::unavailable_reason() {
        bail!("the BGP benchmark {why}");
    }
    if Command::new("iperf3").arg("--version").output().is_err() {
        bail!("iperf3 is not installed (apt-get install iperf3, or run scripts/setup)");
    }
    flatnet_lab::racks::bird_binary().map_err(anyhow::Error::msg)?;
    sandbox::run(|sb| measure(sb, &args))?
}

fn measure(sb: &Sandbox, args: &BgpBenchArgs) -> anyhow::Result<()> {
    let (a, b) = veth_pair(sb)?;
    let bgp = BenchLab::up_with(3, "bgp", &["--racks", "2"])?;
    let vxlan = BenchLab::up_with(2, "vxlan", &["--racks", "2"])?;
    for lab in [&bgp, &vxlan] {
        lab.pod("client", Some("node-1"), false)?;
        lab.pod("server", Some("node-2"), false)?;
    }
    let mut paths = vec![("bare veth pair (baseline)".to_string(), a, "10.99.0.2".to_string())];
    let mut servers = vec![Server::start(&b)?, Server::rr(&b)?];
    for (label, lab) in [("BGP, native routes", &bgp), ("VXLAN", &vxlan)] {
        let pods = lab.wait_ready(2, Duration::from_secs(60))?;
        let ip = pods.iter().find(|p| p.name == "server").map(|p| p.ip.clone()).context("the server's IP")?;
        let server = lab.pod_netns("server")?;
        servers.push(Server::start(&server)?);
        servers.push(Server::rr(&server)?);
        paths.push((format!("rack 1 → rack 2, {label}"), lab.pod_netns("client")?, ip));
    }
    println!("iperf3 one TCP stream and TCP request/response, pod in rack 1 → pod in rack 2, {} rounds", args.rounds);
    let mut samples: Vec<[Vec<f64>; 2]> = paths.iter().map(|_| Default::default()).collect();
    for round in 0..args.rounds {
        for (i, (label, client, ip)) in paths.iter().enumerate() {
            samples[i][0].push(iperf(client, ip, args.seconds, 1).with_context(|| label.clone())?);
            samples[i][1].push(rr(client, ip, args.seconds).with_context(|| label.clone())?);
        }
        let gbps: Vec<String> = samples.iter().map(|s| format!("{:.2}", s[0][round])).collect();
        println!("  round {}: {} Gb/s", round + 1, gbps.join(" / "));
    }
    drop(servers);
    let m: Vec<[f64; 2]> = samples.iter().map(|s| [median(&s[0]), median(&s[1])]).collect();
    println!("\n  {:<34} {:>8} {:>8} {:>9} {:>8}", "PATH (medians)", "Gb/s", "RATIO", "RR/s", "RR µs");
    for ((label, _, _), v) in paths.iter().zip(&m) {
        println!("  {label:<34} {:>8.2} {:>8.3} {:>9.0} {:>8.1}", v[0], v[0] / m[0][0], v[1], 1e6 / v[1]);
    }
    println!("  BGP ÷ VXLAN: one stream {:.3}, request/response latency {:.3}", m[1][0] / m[2][0], m[2][1] / m[1][1]);
    drop(vxlan);
    convergence(&bgp, args.rounds)
}

/// Cuts node-3 off and brings it back, `rounds` times: the withdrawal everywhere, and the
/// time from its Pod CIDR being assigned again to both other nodes routing it.
fn convergence(lab: &BenchLab, rounds: usize) -> anyhow::Result<()> {
    let hold = flatnet_lab::lifecycle::up::LAB_HOLD_TIME;
    println!("\nconvergence on 3 nodes in 2 racks (hold time {hold} s), {rounds} rounds");
    let nodes: kube::Api<Node> = kube::Api::all(lab.client.clone());
    let (mut withdrawn, mut announced) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let cidr = pod_cidr(lab, &nodes).context("node-3 has no Pod CIDR")?;
        // Cut off: its link down first (no FIN reaches anyone), then its processes.
        let ns = lab.layout.node_ns("node-3");
        cut_eth0(&ns)?;
        let t = Instant::now();
        for pid in [lab.layout.kubelet("node-3"), lab.layout.agent("node-3")].into_iter().flatten() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        wait(Duration::from_secs(u64::from(hold) * 3), || Ok(!anywhere(lab, cidr)?))
            .with_context(|| format!("node-3's {cidr} to be withdrawn"))?;
        withdrawn.push(t.elapsed().as_secs_f64());
        // Back, a while later as a replaced node comes (BIRD waits a second or two after a
        // failed session before it takes the same neighbour again): a new Node object,
        // a Pod CIDR assigned, announced.
        std::thread::sleep(Duration::from_secs(3));
        lab.rt.block_on(nodes.delete("node-3", &Default::default()))?;
        wait(Duration::from_secs(10), || Ok(lab.rt.block_on(nodes.get_opt("node-3"))?.is_none()))?;
        // `lab up` starts its kubelet again; the poll below runs meanwhile.
        let up = lab.up_again()?;
        let mut assigned = None;
        wait(Duration::from_secs(30), || {
            if assigned.is_none() {
                assigned = pod_cidr(lab, &nodes).map(|c| (c, Instant::now()));
            }
            Ok(match assigned {
                Some((c, _)) => in_kernels(lab, c)?,
                None => false,
            })
        })
        .context("node-3's new Pod CIDR to be routed on node-1 and node-2")?;
        let out = up.wait_with_output()?;
        if !out.status.success() {
            bail!("lab up did not finish: {}", String::from_utf8_lossy(&out.stderr));
        }
        let (c, at) = assigned.expect("set before the wait ended");
        announced.push(at.elapsed().as_secs_f64());
        println!(
            "  round {round}: {cidr} withdrawn everywhere in {:.2} s; {c} assigned → routed on both others in {:.0} ms",
            withdrawn[round - 1],
            announced[round - 1] * 1e3
        );
    }
    println!("\n  node cut off → its Pod CIDR gone from every router and node: median {:.2} s", median(&withdrawn));
    println!("  Pod CIDR assigned → every other node routes it:             median {:.0} ms", median(&announced) * 1e3);
    Ok(())
}

/// node-3's Pod CIDR, when the API has one.
fn pod_cidr(lab: &BenchLab, nodes: &kube::Api<Node>) -> Option<Ipv4Net> {
    let n = lab.rt.block_on(nodes.get_opt("node-3")).ok()??;
    n.spec?.pod_cidr?.parse().ok()
}

/// Whether any router's table or node-1's or node-2's kernel still has `cidr`.
fn anywhere(lab: &BenchLab, cidr: Ipv4Net) -> anyhow::Result<bool> {
    let birdc = flatnet_lab::racks::birdc_binary().map_err(anyhow::Error::msg)?;
    for rack in [1, 2] {
        let out = Command::new(&birdc)
            .arg("-s")
            .arg(lab.layout.router_dir(rack).join("bird.ctl"))
            .args(["show", "route", "for", &cidr.to_string()])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with(&cidr.to_string())) {
            return Ok(true);
        }
    }
    Ok(in_kernel(&lab.layout.node_ns("node-1"), cidr)? || in_kernel(&lab.layout.node_ns("node-2"), cidr)?)
}

fn in_kernels(lab: &BenchLab, cidr: Ipv4Net) -> anyhow::Result<bool> {
    Ok(in_kernel(&lab.layout.node_ns("node-1"), cidr)? && in_kernel(&lab.layout.node_ns("node-2"), cidr)?)
}

/// Whether the node has a BGP route (proto 71) to `cidr`.
fn in_kernel(ns: &Path, cidr: Ipv4Net) -> anyhow::Result<bool> {
    netns::run_in(ns, || -> anyhow::Result<bool> {
        let mut nl = Netlink::open()?;
        Ok(list_owned(&mut nl)?.iter().any(|r| r.dst == cidr && r.protocol == FLATNET_BGP_PROTOCOL))
    })?
}

/// Takes the node's eth0 down (`lab up` brings it back).
fn cut_eth0(ns: &Path) -> anyhow::Result<()> {
    netns::run_in(ns, || -> anyhow::Result<()> {
        let mut nl = Netlink::open()?;
        let eth0 = flatnet_kernel::link::get(&mut nl, "eth0")?.context("eth0")?;
        Ok(flatnet_kernel::link::set_down(&mut nl, eth0.index)?)
    })?
}

/// Polls `done` every 2 ms until it holds, for at most `within`.
fn wait(within: Duration, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !done()? {
        if Instant::now() > deadline {
            bail!("not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}
