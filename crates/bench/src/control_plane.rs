//! The two control planes side by side, run after run in one sandbox each: the embedded
//! API server and the upstream one (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler from `scripts/kubernetes`). For each: seconds until `lab up` has every
//! Node Ready with its network up and the cluster DNS serving, then seconds for `lab
//! demo` (pods deployed and every path checked), and the control plane's resident
//! memory after the demo. Medians and ratios.

use super::lab_harness::BenchLab;
use super::stats::{median, memory_mib};
use anyhow::{Context, bail};
use flatnet_kernel::sandbox;
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ControlPlaneBenchArgs {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

struct Run {
    up: f64,
    demo: f64,
    rss_mib: f64,
}

pub fn run(args: ControlPlaneBenchArgs) -> anyhow::Result<()> {
    if let Some(why) = sandbox::unavailable_reason() {
        bail!("the control plane benchmark {why}");
    }
    flatnet_lab::kubernetes::binaries().map_err(anyhow::Error::msg)?;
    let planes = ["embedded", "kubernetes"];
    println!(
        "lab up ({} nodes, vxlan) then lab demo, {} runs of each control plane, interleaved",
        args.nodes, args.runs
    );
    let mut runs: [Vec<Run>; 2] = Default::default();
    for i in 1..=args.runs {
        for (p, plane) in planes.iter().enumerate() {
            let r = sandbox::run(|_| one(args.nodes, plane))??;
            println!(
                "  run {i} {plane:<10} lab up {:.2} s, demo {:.2} s, control plane RSS {:.0} MiB",
                r.up, r.demo, r.rss_mib
            );
            runs[p].push(r);
        }
    }
    let m = |p: usize, f: fn(&Run) -> f64| median(&runs[p].iter().map(f).collect::<Vec<_>>());
    println!("\n  {:<42} {:>10} {:>11} {:>7}", "MEDIANS", "embedded", "kubernetes", "RATIO");
    for (label, f) in [
        ("lab up: Nodes Ready, network up, DNS (s)", (|r: &Run| r.up) as fn(&Run) -> f64),
        ("lab demo: every path checked (s)", |r: &Run| r.demo),
        ("control plane RSS (MiB)", |r: &Run| r.rss_mib),
    ] {
        println!("  {label:<42} {:>10.2} {:>11.2} {:>7.2}", m(0, f), m(1, f), m(1, f) / m(0, f));
    }
    Ok(())
}

fn one(nodes: usize, plane: &str) -> anyhow::Result<Run> {
    let t = Instant::now();
    let lab = BenchLab::up_with(nodes, "vxlan", &["--control-plane", plane])?;
    let up = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let out = Command::new(std::env::current_exe()?)
        .args(["lab", "demo", "--control-plane", plane, "--nodes", &nodes.to_string(), "--state-dir"])
        .arg(&lab.layout.state)
        .args(lab.listen_args())
        .output()?;
    if !out.status.success() {
        bail!("lab demo failed on the {plane} control plane: {}", String::from_utf8_lossy(&out.stdout));
    }
    let demo = t.elapsed().as_secs_f64();
    Ok(Run { up, demo, rss_mib: rss(&lab).context("read the control plane's memory")? })
}

/// The control plane's resident memory: the `lab serve` process, and with the upstream
/// control plane every component it runs.
fn rss(lab: &BenchLab) -> Option<f64> {
    let serve = u32::try_from(lab.layout.apiserver()?).ok()?;
    let dir = flatnet_lab::kubernetes::components::dir(&lab.layout);
    let components: f64 = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        .iter()
        .filter_map(|c| std::fs::read_to_string(dir.join(format!("{c}.pid"))).ok()?.trim().parse::<u32>().ok())
        .map(|pid| memory_mib(pid, "VmRSS:"))
        .sum();
    Some(memory_mib(serve, "VmRSS:") + components)
}
