//! How long until a fresh lab runs pods: `lab up` with N nodes, then M pods created
//! through the API (placed by the scheduler), until every pod is Ready and answers HTTP
//! from node-1 (most of them across nodes). Medians over a few runs, in a sandbox, for
//! flatnet and for Flannel (flanneld and the reference bridge, from `scripts/peers`)
//! interleaved, with the ratio.

use super::lab_harness::BenchLab;
use anyhow::bail;
use flatnet_kernel::sandbox;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct LabUpBenchArgs {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 30)]
    pods: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value = "vxlan")]
    backend: String,
    /// Leave Flannel out even when scripts/peers has built it.
    #[arg(long)]
    no_flannel: bool,
}

struct Run {
    up: Duration,
    ready: Duration,
    reachable: Duration,
}

pub fn run(args: LabUpBenchArgs) -> anyhow::Result<()> {
    if let Some(why) = sandbox::unavailable_reason() {
        bail!("the lab benchmark {why}");
    }
    let mut networks = vec!["flatnet"];
    match (args.no_flannel, flatnet_lab::pod_network::flannel_binaries()) {
        (true, _) => {}
        (false, Ok(_)) => networks.push("flannel"),
        (false, Err(why)) => println!("Flannel is not compared: {why}"),
    }
    println!(
        "lab up: {} nodes ({}), then {} pods until Ready and reachable; {} runs of {}, interleaved",
        args.nodes,
        args.backend,
        args.pods,
        args.runs,
        networks.join(" and ")
    );
    let mut runs: Vec<Vec<Run>> = networks.iter().map(|_| Vec::new()).collect();
    for i in 0..args.runs {
        for (n, network) in networks.iter().enumerate() {
            let r = sandbox::run(|_| one(&args, network))??;
            println!(
                "  run {} {network:<8} lab up {:.2} s, all pods Ready {:.2} s, all reachable {:.2} s",
                i + 1,
                r.up.as_secs_f64(),
                r.ready.as_secs_f64(),
                r.reachable.as_secs_f64()
            );
            runs[n].push(r);
        }
    }
    let median = |runs: &[Run], f: fn(&Run) -> Duration| {
        let mut v: Vec<Duration> = runs.iter().map(f).collect();
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let figures: Vec<[f64; 3]> = runs
        .iter()
        .map(|r| [median(r, |r| r.up), median(r, |r| r.ready - r.up), median(r, |r| r.reachable - r.up)])
        .collect();
    println!(
        "\n  {:<10} {:>10} {:>22} {:>26}",
        "MEDIANS", "LAB UP s", "PODS READY s (after up)", "PODS REACHABLE s (after up)"
    );
    for (network, f) in networks.iter().zip(&figures) {
        println!("  {network:<10} {:>10.2} {:>22.2} {:>26.2}", f[0], f[1], f[2]);
    }
    if let [f, k] = figures[..] {
        let ready = f[1] / k[1];
        println!(
            "  {:<10} {:>10.2} {:>22.2} {:>26.2}   pods Ready: goal ≤ 0.50 {}",
            "ratio",
            f[0] / k[0],
            ready,
            f[2] / k[2],
            if ready <= 0.5 { "met" } else { "MISSED" }
        );
    }
    Ok(())
}

fn one(args: &LabUpBenchArgs, network: &str) -> anyhow::Result<Run> {
    let start = Instant::now();
    let lab = BenchLab::up_with(args.nodes, &args.backend, &["--network", network])?;
    let up = start.elapsed();
    for i in 0..args.pods {
        lab.pod(&format!("web-{i}"), None, true)?;
    }
    let pods = lab.wait_ready(args.pods, Duration::from_secs(120))?;
    let ready = start.elapsed();
    let node1 = lab.layout.node_ns("node-1");
    let mut pending: Vec<String> = pods.into_iter().map(|p| p.ip).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        pending =
            flatnet_kernel::netns::run_in(&node1, || pending.iter().filter(|ip| !answers(ip)).cloned().collect())?;
        if Instant::now() > deadline {
            bail!("{network}: pods not reachable from node-1: {pending:?}");
        }
    }
    Ok(Run { up, ready, reachable: start.elapsed() })
}

fn answers(ip: &str) -> bool {
    flatnet_lab::lifecycle::scenario::http_get(ip, Duration::from_millis(200))
        .is_ok_and(|out| out.starts_with("HTTP/1.1 200"))
}
