//! ADD then DEL for N pods, sequentially and K at a time, for flatnet and for the
//! reference `bridge` + `host-local` plugins on an equivalent config, in one run inside
//! a private network namespace. Rounds alternate between the two so drift in the
//! machine's speed hits both alike.

use super::stats::{ms, summarize};
use anyhow::{Context, bail};
use flatnet_cni::exec::{self, Attachment};
use flatnet_kernel::sandbox::{self, Sandbox};
use flatnet_kernel::{Netlink, link};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct CniBenchArgs {
    /// Pods per round.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Concurrent plugin runs in the parallel mode.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Rounds per plugin and mode (alternating flatnet, reference, …).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the reference plugins live (Debian: containernetworking-plugins).
    #[arg(long, default_value = "/usr/lib/cni")]
    reference_dir: PathBuf,
}

struct Contender {
    label: &'static str,
    binary: PathBuf,
    dirs: Vec<PathBuf>,
    config: Value,
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

pub fn run(args: CniBenchArgs) -> anyhow::Result<()> {
    if let Some(why) = sandbox::unavailable_reason() {
        bail!("the CNI benchmark {why}");
    }
    let bridge = args.reference_dir.join("bridge");
    if !bridge.is_file() || !args.reference_dir.join("host-local").is_file() {
        bail!(
            "the reference plugins are not in {}: install them (apt-get install containernetworking-plugins) or pass --reference-dir",
            args.reference_dir.display()
        );
    }
    if args.pods == 0 || args.pods > 250 || args.parallel == 0 {
        bail!("--pods must be 1 to 250 (one /24 per contender) and --parallel at least 1");
    }
    let me = std::env::current_exe().context("find the flatnet binary")?;
    sandbox::run(|sb| bench(sb, &args, &me))?
}

fn bench(sb: &Sandbox, args: &CniBenchArgs, flatnet: &Path) -> anyhow::Result<()> {
    let contenders = [
        Contender {
            label: "flatnet",
            binary: flatnet.to_path_buf(),
            dirs: vec![flatnet.parent().expect("a binary has a directory").to_path_buf()],
            config: json!({"cniVersion": "1.0.0", "name": "bench", "type": "flatnet", "bridge": "cni0",
                "subnet": "10.244.1.0/24", "dataDir": sb.dir().join("flatnet-ipam")}),
        },
        Contender {
            label: "bridge+host-local",
            binary: args.reference_dir.join("bridge"),
            dirs: vec![args.reference_dir.clone()],
            config: json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cni1",
                "isGateway": true, "hairpinMode": true,
                "ipam": {"type": "host-local", "subnet": "10.244.2.0/24", "dataDir": sb.dir().join("ref-ipam")}}),
        },
    ];
    let pods: Vec<PathBuf> = (0..args.pods).map(|i| sb.create_netns(&format!("pod{i}"))).collect::<Result<_, _>>()?;
    println!(
        "CNI ADD/DEL latency, {} pods per round, {} rounds, sequential and {} at a time (wall time of each plugin process)",
        args.pods, args.rounds, args.parallel
    );
    let mut results = Vec::new();
    for (mode, width) in [("sequential", 1), ("parallel", args.parallel)] {
        let mut samples: Vec<Samples> = contenders.iter().map(|_| Samples::default()).collect();
        for round in 0..args.rounds {
            for (c, s) in contenders.iter().zip(samples.iter_mut()) {
                let (add, del) =
                    round_trip(c, &pods, width, round).with_context(|| format!("{} {mode} round {round}", c.label))?;
                s.add.extend(add);
                s.del.extend(del);
            }
        }
        results.push((mode, samples));
    }
    println!(
        "{:<11} {:<4} {:>20} {:>20} {:>9}",
        "mode", "verb", "flatnet p50/p99 ms", "reference p50/p99 ms", "p50 ratio"
    );
    for (mode, samples) in &results {
        for (verb, pick) in [("ADD", 0), ("DEL", 1)] {
            let get = |s: &Samples| summarize(if pick == 0 { &s.add } else { &s.del }).expect("samples");
            let (f, r) = (get(&samples[0]), get(&samples[1]));
            println!(
                "{:<11} {:<4} {:>20} {:>20} {:>9.3}",
                mode,
                verb,
                format!("{:.2} / {:.2}", ms(f.p50), ms(f.p99)),
                format!("{:.2} / {:.2}", ms(r.p50), ms(r.p99)),
                ms(f.p50) / ms(r.p50)
            );
        }
    }
    println!("ratio = flatnet p50 / reference p50 (target: at most 0.25)");
    Ok(())
}

/// ADD every pod, then DEL every pod, `width` at a time; returns the per-call durations.
fn round_trip(
    c: &Contender,
    pods: &[PathBuf],
    width: usize,
    round: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let atts: Vec<Attachment> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| Attachment {
            container_id: format!("bench-{round}-{i}"),
            netns: p.to_string_lossy().into_owned(),
            ifname: "eth0".into(),
            args: vec![],
        })
        .collect();
    let add = timed_calls(c, &atts, width, "ADD")?;
    let del = timed_calls(c, &atts, width, "DEL")?;
    // flatnet's DEL leaves the kernel's veth teardown to a detached child: wait for it,
    // so it cannot slow the next contender's round.
    wait_for_no_ports(c.config["bridge"].as_str().unwrap_or("cni0"))?;
    Ok((add, del))
}

fn timed_calls(c: &Contender, atts: &[Attachment], width: usize, verb: &str) -> anyhow::Result<Vec<Duration>> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(atts.len()));
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..width {
            s.spawn(|| {
                while let Some(att) = atts.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let start = Instant::now();
                    let r = exec::exec(&c.binary, verb, Some(att), &c.dirs, &c.config);
                    let took = start.elapsed();
                    match r {
                        Ok(_) => out.lock().expect("lock").push(took),
                        Err(e) => {
                            first_error.lock().expect("lock").get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("lock") {
        return Err(e.into());
    }
    Ok(out.into_inner().expect("lock"))
}

fn wait_for_no_ports(bridge: &str) -> anyhow::Result<()> {
    let mut nl = Netlink::open()?;
    let Some(br) = link::get(&mut nl, bridge)? else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while link::list(&mut nl)?.iter().any(|l| l.master == Some(br.index)) {
        if Instant::now() > deadline {
            bail!("ports of {bridge} were still there 30 s after DEL");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
