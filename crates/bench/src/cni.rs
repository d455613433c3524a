//! ADD then DEL for N pods, sequentially and K at a time, for flatnet and for the
//! reference `bridge` + `host-local` plugins on an equivalent config (Debian's 1.1.1 and
//! the current release that `scripts/peers` builds), in one run inside a private network
//! namespace. Rounds alternate between them so drift in the machine's speed hits all
//! alike. DEL is also timed until the host veths are really gone: flatnet defers the
//! kernel's teardown, so its DEL returning early is not the whole cost.

use super::stats::{median, ms, summarize};
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
    /// Where the current reference plugins live (default: what `scripts/peers` builds).
    #[arg(long)]
    current_dir: Option<PathBuf>,
}

/// The current reference plugins, where `scripts/peers` builds them.
fn current_plugins(given: Option<&Path>) -> Option<PathBuf> {
    let dir = given.map_or_else(
        || flatnet_lab::upstream::peer_dir("plugins", flatnet_lab::upstream::PLUGINS_VERSION),
        Path::to_path_buf,
    );
    (dir.join("bridge").is_file() && dir.join("host-local").is_file()).then_some(dir)
}

struct Contender {
    label: String,
    binary: PathBuf,
    dirs: Vec<PathBuf>,
    config: Value,
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
    /// Per round: from the first DEL to the last of its host veths gone, per pod.
    teardown: Vec<f64>,
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

fn reference(label: &str, dir: &Path, bridge: &str, subnet: &str, ipam: PathBuf) -> Contender {
    Contender {
        label: label.into(),
        binary: dir.join("bridge"),
        dirs: vec![dir.to_path_buf()],
        config: json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": bridge,
            "isGateway": true, "hairpinMode": true,
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": ipam}}),
    }
}

fn bench(sb: &Sandbox, args: &CniBenchArgs, flatnet: &Path) -> anyhow::Result<()> {
    let mut contenders = vec![
        Contender {
            label: "flatnet".into(),
            binary: flatnet.to_path_buf(),
            dirs: flatnet.parent().map(Path::to_path_buf).into_iter().collect(),
            config: json!({"cniVersion": "1.0.0", "name": "bench", "type": "flatnet", "bridge": "cni0",
                "subnet": "10.244.1.0/24", "dataDir": sb.dir().join("flatnet-ipam")}),
        },
        reference("debian 1.1.1", &args.reference_dir, "cni1", "10.244.2.0/24", sb.dir().join("ref-ipam")),
    ];
    match current_plugins(args.current_dir.as_deref()) {
        Some(dir) => {
            contenders.push(reference("current 1.10.0", &dir, "cni2", "10.244.3.0/24", sb.dir().join("cur-ipam")))
        }
        None => println!(
            "the current reference plugins are not built (run scripts/peers plugins): compared with Debian's only"
        ),
    }
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
                round_trip(c, &pods, width, round, s).with_context(|| format!("{} {mode} round {round}", c.label))?;
            }
        }
        results.push((mode, samples));
    }
    let mut head = format!("{:<11} {:<13}", "mode", "verb");
    for c in &contenders {
        head.push_str(&format!(" {:>22}", format!("{} p50/p99 ms", c.label)));
    }
    for c in &contenders[1..] {
        head.push_str(&format!(" {:>24}", format!("flatnet/{} p50", c.label)));
    }
    println!("{head}");
    for (mode, samples) in &results {
        for (verb, pick) in [("ADD", 0), ("DEL", 1)] {
            let sums: Vec<_> = samples
                .iter()
                .map(|s| summarize(if pick == 0 { &s.add } else { &s.del }).context("no samples"))
                .collect::<anyhow::Result<_>>()?;
            let mut line = format!("{mode:<11} {verb:<13}");
            for x in &sums {
                line.push_str(&format!(" {:>22}", format!("{:.2} / {:.2}", ms(x.p50), ms(x.p99))));
            }
            for x in &sums[1..] {
                line.push_str(&format!(" {:>24.3}", ms(sums[0].p50) / ms(x.p50)));
            }
            println!("{line}");
        }
        let teardown: Vec<f64> = samples.iter().map(|s| median(&s.teardown)).collect();
        let mut line = format!("{mode:<11} {:<13}", "DEL+teardown");
        for x in &teardown {
            line.push_str(&format!(" {:>22}", format!("{x:.2} per pod")));
        }
        for x in &teardown[1..] {
            line.push_str(&format!(" {:>24.3}", teardown[0] / x));
        }
        println!("{line}");
    }
    println!(
        "ratio = flatnet / reference (targets: ADD p50 at most 0.25 of the current release, DEL with teardown at most 0.5);\n\
         DEL+teardown = the DEL phase from its first call to the last host veth gone, per pod (median of rounds)"
    );
    Ok(())
}

/// ADD every pod, then DEL every pod, `width` at a time, into `s`: the per-call
/// durations, and the DEL phase until the bridge has no port left.
fn round_trip(c: &Contender, pods: &[PathBuf], width: usize, round: usize, s: &mut Samples) -> anyhow::Result<()> {
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
    s.add.extend(timed_calls(c, &atts, width, "ADD")?);
    let start = Instant::now();
    s.del.extend(timed_calls(c, &atts, width, "DEL")?);
    // flatnet's DEL leaves the kernel's veth teardown to a detached child: the phase
    // ends when it is done (which also keeps it from slowing the next contender's round).
    wait_for_no_ports(c.config["bridge"].as_str().unwrap_or("cni0"))?;
    s.teardown.push(ms(start.elapsed()) / pods.len() as f64);
    Ok(())
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
