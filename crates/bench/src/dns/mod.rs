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

mod cluster;
mod measure;
mod servers;

use super::stats::{median, memory_kib};
use anyhow::{Context, bail};
use cluster::{NAMESPACES, cluster, load};
use flatnet_kernel::sandbox;
use measure::{Round, round};
use servers::{ApiServer, Server, ask, coredns_binary, freshness, start_coredns, start_flatnet, start_nsd};
use std::path::{Path, PathBuf};
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
            let x = round(s, &queries, args.seconds, args.latency_qps)?;
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
    // Rows only the API readers have (NSD: "-"), with flatnet / CoreDNS.
    let readers_row = |label: &str, v: &[f64], decimals: usize| {
        let mut line = format!("  {label:<30}");
        for x in v {
            line.push_str(&format!(" {x:>12.decimals$}"));
        }
        line.push_str(&format!(" {:>12}", "-"));
        if v.len() > 1 {
            line.push_str(&format!(" {:>14.2}", v[0] / v[1]));
        }
        println!("{line}");
    };
    readers_row("MiB per 1,000 objects", &per_k, 3);
    readers_row("Service created → answered, ms", &fresh, 1);
    let rss: Vec<String> = readers
        .iter()
        .zip(loaded.iter().zip(&empty))
        .map(|(s, (l, e))| format!("{} {:.1} (empty {:.1})", s.name, *l as f64 / 1024.0, *e as f64 / 1024.0))
        .collect();
    println!("  RSS loaded, MiB: {}", rss.join(", "));
    Ok(())
}
