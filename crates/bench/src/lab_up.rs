//! How long until a fresh lab runs pods: `lab up` with N nodes, then M pods created
//! through the API (placed by the scheduler), until every pod is Ready and answers HTTP
//! from node-1 (most of them across nodes). Medians over a few runs, in a sandbox.

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
    println!(
        "lab up: {} nodes ({}), then {} pods until Ready and reachable; {} runs",
        args.nodes, args.backend, args.pods, args.runs
    );
    let mut runs = Vec::new();
    for i in 0..args.runs {
        let r = sandbox::run(|_| one(&args))??;
        println!(
            "  run {}: lab up {:.2} s, all pods Ready {:.2} s, all reachable {:.2} s",
            i + 1,
            r.up.as_secs_f64(),
            r.ready.as_secs_f64(),
            r.reachable.as_secs_f64()
        );
        runs.push(r);
    }
    let median = |f: fn(&Run) -> Duration| {
        let mut v: Vec<Duration> = runs.iter().map(f).collect();
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    println!(
        "median: lab up {:.2} s; {} pods Ready {:.2} s and reachable {:.2} s after the start",
        median(|r| r.up),
        args.pods,
        median(|r| r.ready),
        median(|r| r.reachable)
    );
    Ok(())
}

fn one(args: &LabUpBenchArgs) -> anyhow::Result<Run> {
    let start = Instant::now();
    let lab = BenchLab::up(args.nodes, &args.backend)?;
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
            bail!("pods not reachable from node-1: {pending:?}");
        }
    }
    Ok(Run { up, ready, reachable: start.elapsed() })
}

fn answers(ip: &str) -> bool {
    flatnet_lab::lifecycle::scenario::http_get(ip, Duration::from_millis(200))
        .is_ok_and(|out| out.starts_with("HTTP/1.1 200"))
}
