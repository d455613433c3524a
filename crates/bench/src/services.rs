//! The Service proxy at scale, in one lab run (one node, in a sandbox):
//! - new connections per second from a pod through a ClusterIP with 10 Services, then
//!   with 10,000 (each with 10 endpoints): the ratio shows whether the cost per
//!   connection grows with the number of Services;
//! - one endpoint change at that scale: from the agent's watch event to the kernel;
//! - a full sync of every Service by a restarted agent, with the table already right
//!   (a restart) and with the table deleted (cold), and the agent's peak RSS;
//! - the kernel's own commit at that scale, apart from any proxy: one set element, one
//!   chain with a DNAT rule that nothing jumps to, one endpoint change (what an endpoint
//!   change can cost at least, with this ruleset).
//!
//! The synthetic endpoints are spread over ten node names, as 100,000 endpoints would be
//! in a real cluster: a tenth of them are on the measured node (for hairpin, and for the
//! Local traffic policies).
//!
//! The figures for the agent come from its own log, which times each sync from the
//! watch event it received to `nft` returning.
//!
//! Side by side, in the same run and from the same API: upstream kube-proxy v1.37.2 in
//! nftables mode (built by `scripts/kubernetes`, default settings) carries the Services
//! of a second, identical node (`lab up --kube-proxy node-2`: the agent there only
//! connects the node). Its figures come from its own metrics: the end of each rules sync
//! (`kubeproxy_sync_proxy_rules_last_timestamp_seconds`), the sync's duration, its RSS.
//! An endpoint change is timed for both from the API write to the rules in the kernel,
//! each proxy while the other is paused (the two share the machine's cores), kube-proxy's
//! changes 1.1 s apart (its default minimum sync period is 1 s).

use super::lab_harness::BenchLab;
use super::stats::{ms, summarize};
use anyhow::{Context, bail};
use flatnet_kernel::{netns, sandbox};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ServicesBenchArgs {
    /// Services at scale.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Endpoint changes to time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Seconds per connection-rate window (three windows per case).
    #[arg(long, default_value_t = 2)]
    seconds: u64,
    /// Measure flatnet alone, without kube-proxy beside it.
    #[arg(long)]
    no_kube_proxy: bool,
}

/// kube-proxy's metrics on a lab node (it listens on the node's loopback).
fn kube_proxy_metrics(node_ns: &Path) -> anyhow::Result<String> {
    netns::run_in(node_ns, || -> anyhow::Result<String> {
        let mut s = TcpStream::connect_timeout(&"127.0.0.1:10249".parse()?, Duration::from_secs(2))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
}

/// A sample's value in a Prometheus exposition text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

const KP_LAST_SYNC: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}";
const KP_SYNC_SUM: &str = "kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=\"IPv4\"}";
const KP_SYNC_COUNT: &str = "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}";

fn epoch_secs(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The wall time (seconds since the epoch) at the start of an agent log line.
fn log_time(line: &str) -> Option<f64> {
    let ts: jiff::Timestamp = line.split_whitespace().next()?.parse().ok()?;
    Some(ts.as_microsecond() as f64 / 1e6)
}

/// Kills kube-proxy on `node` (its kubelet starts it again) and returns the new one's
/// first rules sync (its own timing, ms) and peak RSS (MiB).
fn restart_kube_proxy(lab: &BenchLab, node: &str) -> anyhow::Result<(f64, f64)> {
    let ns = lab.layout.state.join("netns").join(node);
    let old = lab.layout.kube_proxy(node).context("kube-proxy's pid")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGKILL)?;
    let pid =
        wait_for("the new kube-proxy", Duration::from_secs(20), || lab.layout.kube_proxy(node).filter(|p| *p != old))?;
    let took = wait_for("kube-proxy's first sync", Duration::from_secs(300), || {
        let m = kube_proxy_metrics(&ns).ok()?;
        (sample(&m, KP_SYNC_COUNT)? >= 1.0).then(|| sample(&m, KP_SYNC_SUM))?
    })?;
    Ok((took * 1e3, super::stats::memory_mib(pid as u32, "VmHWM:")))
}

pub fn run(args: ServicesBenchArgs) -> anyhow::Result<()> {
    if args.services < 20 {
        bail!("--services must be at least 20 (10 for the small case, and more at scale)");
    }
    if let Some(why) = sandbox::unavailable_reason() {
        bail!("the Services benchmark {why}");
    }
    sandbox::run(|sb| -> anyhow::Result<()> {
        one(&args)?;
        kernel_floor(sb, &args)
    })?
}

/// What the kernel itself takes to commit a transaction to flatnet's table at this
/// scale, in a namespace of its own with the same Services written by the same
/// planner: one element of a set (nothing to validate), one chain with one DNAT rule
/// that nothing jumps to, and one endpoint change as the proxy writes it. A rule with a
/// NAT (or jump, or lookup) expression makes the kernel validate the whole table at
/// commit, every chain reachable from a base chain, so that commit grows with the
/// number of Services whatever the transaction holds.
fn kernel_floor(sb: &sandbox::Sandbox, args: &ServicesBenchArgs) -> anyhow::Result<()> {
    use flatnet_kernel::nf_tables;
    use flatnet_model::proxy::{self, Context, Endpoint, Proto, Proxier, ServicePort, Slice, plan_service};
    use std::net::Ipv4Addr;
    let ns = sb.create_netns("kernel-floor")?;
    let ctx = Context {
        node: "node-1".into(),
        cluster_cidr: "10.244.0.0/16".parse()?,
        service_cidr: "10.96.0.0/12".parse()?,
    };
    let plan = |i: usize, salt: usize| {
        let n = u32::try_from(i).unwrap_or(0);
        let svc = proxy::Service {
            namespace: "default".into(),
            name: format!("bench-{i:05}"),
            cluster_ip: Some(Ipv4Addr::from(0x0a60_0000 + 10 + n)),
            ports: vec![ServicePort { name: "http".into(), protocol: Proto::Tcp, port: 80, node_port: None }],
            ..Default::default()
        };
        let endpoints = (0..args.endpoints)
            .map(|e| Endpoint {
                ip: Ipv4Addr::from(0x0a80_0000 + u32::try_from(i * args.endpoints + e + salt).unwrap_or(0)),
                node: Some(format!("node-{}", 1 + e % 10)),
                ready: true,
                serving: true,
                terminating: false,
            })
            .collect();
        let slice = Slice { ports: vec![("http".into(), Proto::Tcp, 8080)], endpoints };
        (("default".to_string(), format!("bench-{i:05}")), plan_service(&ctx, &svc, &[slice]))
    };
    let sets = flatnet_agent::tables::proxy_sets();
    let base: Vec<String> =
        proxy::base_transaction(ctx.cluster_cidr, ctx.service_cidr).iter().map(|o| o.to_string()).collect();
    let mut proxier = Proxier::new();
    let full = proxier.full_sync(&proxy::Actual::default(), (0..args.services).map(|i| plan(i, 0)));
    let (mut element, mut lone, mut change) = (Vec::new(), Vec::new(), Vec::new());
    netns::run_in(&ns, || -> anyhow::Result<()> {
        nf_tables::apply(&base, sets.clone())?;
        nf_tables::apply(&full.objects, sets.clone())?;
        for round in 0..9usize {
            let ip = Ipv4Addr::from(0x0a01_0000 + u32::try_from(round).unwrap_or(0));
            let o = json!({"add": {"element": {"family": "ip", "table": proxy::TABLE, "name": "hairpin",
                "elem": [{"concat": [ip.to_string(), ip.to_string()]}]}}});
            element.push(nf_tables::apply(&[o.to_string()], sets.clone())?.commit);
            let chain = format!("floor-{round}");
            let objects = [
                json!({"add": {"chain": {"family": "ip", "table": proxy::TABLE, "name": chain}}}).to_string(),
                json!({"add": {"rule": {"family": "ip", "table": proxy::TABLE, "chain": chain, "expr": [
                    {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                    {"dnat": {"addr": "10.244.1.2", "port": 8080}}]}}})
                .to_string(),
            ];
            lone.push(nf_tables::apply(&objects, sets.clone())?.commit);
            let (key, fragment) = plan(round * 97 % args.services, round + 1);
            let t = proxier.update(vec![(key, Some(fragment))]);
            change.push(nf_tables::apply(&t.objects, sets.clone())?.commit);
        }
        Ok(())
    })??;
    let (e, l, c) = (summarize(&element), summarize(&lone), summarize(&change));
    println!();
    println!("The kernel's commit alone, {} Services × {} endpoints (medians of 9):", args.services, args.endpoints);
    let show = |what: &str, s: Option<super::stats::Summary>| {
        if let Some(s) = s {
            println!("  {what:<64} {:>8.1} ms (p99 {:.1})", ms(s.p50), ms(s.p99));
        }
    };
    show("one element of a set", e);
    show("one chain with a DNAT rule that nothing jumps to", l);
    show("one endpoint change (new chain, map element, old chain removed)", c);
    Ok(())
}

fn service(name: &str, selector: Option<&str>) -> serde_json::Value {
    let mut spec = json!({"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}]});
    if let Some(app) = selector {
        spec["selector"] = json!({"app": app});
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn slice(svc: &str, i: usize, endpoints: usize, salt: usize) -> serde_json::Value {
    let eps: Vec<_> = (0..endpoints)
        .map(|e| {
            let n = i * endpoints + e + salt;
            json!({"addresses": [format!("10.{}.{}.{}", 128 + (n >> 16) % 64, (n >> 8) & 255, n & 255)],
                   "conditions": {"ready": true}, "nodeName": format!("node-{}", 1 + n % 10)})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{svc}-bench"), "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

/// Creates synthetic Services `from..to` with their slices, 64 requests at a time.
fn create_synthetic(lab: &BenchLab, from: usize, to: usize, endpoints: usize) -> anyhow::Result<()> {
    let svcs: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(lab.client.clone(), "default");
    lab.rt.block_on(async {
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(from..to)
            .map(|i| {
                let (svcs, slices) = (svcs.clone(), slices.clone());
                async move {
                    let name = format!("bench-{i:05}");
                    svcs.create(&PostParams::default(), &serde_json::from_value(service(&name, None))?).await?;
                    slices
                        .create(&PostParams::default(), &serde_json::from_value(slice(&name, i, endpoints, 0))?)
                        .await?;
                    Ok(())
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<()>>()
    })
}

/// New connections per second from `from` to `to`: connect, one HTTP request, the
/// server's answer and close (the server closes first, so no client port lingers).
pub(super) fn connection_rate(from: &Path, to: SocketAddr, secs: u64) -> anyhow::Result<f64> {
    netns::run_in(from, || -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(secs) {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            s.write_all(b"GET /hostname HTTP/1.0\r\n\r\n")?;
            let mut sink = Vec::new();
            s.read_to_end(&mut sink)?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })?
}

fn median_rate(from: &Path, to: SocketAddr, secs: u64) -> anyhow::Result<(f64, Vec<f64>)> {
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(connection_rate(from, to, secs)?);
    }
    let mut s = v.clone();
    s.sort_by(f64::total_cmp);
    Ok((s[1], v))
}

/// The agent log's lines after byte `from` that contain `needle`, with the milliseconds
/// of their "in X ms".
pub(super) fn logged_ms(log: &Path, from: u64, needle: &str) -> Vec<(String, f64)> {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
    text.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let ms = l.rsplit_once(" in ")?.1.split_once(" ms")?.0.parse().ok()?;
            Some((l.to_string(), ms))
        })
        .collect()
}

pub(super) fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > within {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a restarted agent did: its full sync's time (ms), its peak RSS, its RSS a
/// second after the sync (MiB), and the sync's log line.
struct Restarted {
    ms: f64,
    peak: f64,
    after: f64,
    line: String,
}

/// Kills node-1's agent (its kubelet starts it again) and returns what the new one did.
fn restart_agent(lab: &BenchLab, log: &Path) -> anyhow::Result<Restarted> {
    let old = lab.layout.agent("node-1").context("node-1's agent pid")?;
    let mark = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGKILL)?;
    let line = wait_for("the restarted agent's full sync", Duration::from_secs(120), || {
        logged_ms(log, mark, "full sync:").into_iter().next()
    })?;
    let pid =
        wait_for("the new agent pid", Duration::from_secs(10), || lab.layout.agent("node-1").filter(|p| *p != old))?;
    let peak = super::stats::memory_mib(pid as u32, "VmHWM:");
    // What the agent keeps once the sync is over (a second for it to settle).
    std::thread::sleep(Duration::from_secs(1));
    let after = super::stats::memory_mib(pid as u32, "VmRSS:");
    Ok(Restarted { ms: line.1, peak, after, line: line.0 })
}

/// One Service proxy under test: where its client pod runs and what it reaches.
struct Side {
    name: &'static str,
    node: &'static str,
    client: std::path::PathBuf,
    to: SocketAddr,
}

fn one(args: &ServicesBenchArgs) -> anyhow::Result<()> {
    let kube_proxy = match (args.no_kube_proxy, flatnet_lab::upstream::binary("kube-proxy")) {
        (true, _) => false,
        (false, Ok(_)) => true,
        (false, Err(why)) => {
            println!("kube-proxy: {why}; measuring flatnet alone");
            false
        }
    };
    println!(
        "Services: {} node(s); {} Services × {} endpoints at scale; {} endpoint changes; connection rate over 3 × {} s",
        1 + usize::from(kube_proxy),
        args.services,
        args.endpoints,
        args.changes,
        args.seconds
    );
    let lab = if kube_proxy {
        BenchLab::up_with(2, "vxlan", &["--kube-proxy", "node-2"])?
    } else {
        BenchLab::up(1, "vxlan")?
    };
    let nodes: &[(&'static str, &'static str)] =
        if kube_proxy { &[("flatnet", "node-1"), ("kube-proxy", "node-2")] } else { &[("flatnet", "node-1")] };
    let svcs: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let mut sides = Vec::new();
    for (i, (_, node)) in nodes.iter().enumerate() {
        lab.pod(&format!("server-{}", i + 1), Some(node), true)?;
        lab.pod(&format!("client-{}", i + 1), Some(node), false)?;
    }
    lab.wait_ready(2 * nodes.len(), Duration::from_secs(60))?;
    for (i, (name, node)) in nodes.iter().enumerate() {
        let svc = service(&format!("target-{}", i + 1), Some(&format!("server-{}", i + 1)));
        let target = lab.rt.block_on(svcs.create(&PostParams::default(), &serde_json::from_value(svc)?))?;
        let ip = target.spec.and_then(|s| s.cluster_ip).context("the target Service's ClusterIP")?;
        sides.push(Side {
            name,
            node,
            client: lab.pod_netns(&format!("client-{}", i + 1))?,
            to: format!("{ip}:80").parse()?,
        });
    }
    let log = lab.layout.agent_log("node-1");
    // 10 Services: the targets, `kubernetes`, and synthetic ones.
    let fixed = 1 + sides.len();
    create_synthetic(&lab, 0, 10 - fixed, args.endpoints)?;
    let mut small = Vec::new();
    for s in &sides {
        wait_for(&format!("{} to carry the target Service", s.name), Duration::from_secs(60), || {
            connection_rate(&s.client, s.to, 0).ok()
        })?;
        let (rate, all) = median_rate(&s.client, s.to, args.seconds)?;
        println!("  10 Services, {}: {rate:.0} connections/s (runs: {all:.0?})", s.name);
        small.push(rate);
    }

    let t = Instant::now();
    create_synthetic(&lab, 10 - fixed, args.services - fixed, args.endpoints)?;
    println!("  created {} more Services and EndpointSlices in {:.1} s", args.services - 10, t.elapsed().as_secs_f64());
    let want = args.services;
    for s in &sides {
        let node = lab.layout.state.join("netns").join(s.node);
        let table = if s.name == "flatnet" { "flatnet" } else { "kube-proxy" };
        wait_for(&format!("{} to program every Service", s.name), Duration::from_secs(600), || {
            let n = netns::run_in(&node, || {
                flatnet_kernel::nft::set_elements(nftables::types::NfFamily::IP, table, "map", "service-ips")
                    .ok()
                    .flatten()
                    .map_or(0, |e| e.len())
            })
            .unwrap_or(0);
            (n >= want).then_some(())
        })?;
    }
    let mut large = Vec::new();
    for s in &sides {
        let (rate, all) = median_rate(&s.client, s.to, args.seconds)?;
        println!("  {} Services, {}: {rate:.0} connections/s (runs: {all:.0?})", args.services, s.name);
        large.push(rate);
    }

    // Endpoint changes at scale: flatnet's own event → kernel, and for both the API write
    // → rules in the kernel. Each proxy is timed while the other is paused (SIGSTOP), so
    // neither's sync of the same change takes the other's CPU; a different Service each time.
    let slices: Api<EndpointSlice> = Api::namespaced(lab.client.clone(), "default");
    let kp_ns = lab.layout.state.join("netns/node-2");
    let (mut changes, mut nft_part, mut write_to_kernel) = (Vec::new(), Vec::new(), vec![Vec::new(); sides.len()]);
    let mut commit_part = Vec::new();
    let synthetic = args.services - fixed;
    let pid_of = |side: &Side| {
        if side.name == "flatnet" { lab.layout.agent(side.node) } else { lab.layout.kube_proxy(side.node) }
    };
    let signal = |pid: Option<i32>, sig| {
        if let Some(p) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
        }
    };
    for (k, side) in sides.iter().enumerate() {
        let others: Vec<Option<i32>> = sides.iter().filter(|o| o.name != side.name).map(pid_of).collect();
        others.iter().for_each(|p| signal(*p, nix::sys::signal::Signal::SIGSTOP));
        let measured = (|| -> anyhow::Result<()> {
            for c in 0..args.changes {
                let n = k * args.changes + c;
                let i = synthetic / 2 + n % (synthetic - synthetic / 2);
                let patch = slice(&format!("bench-{i:05}"), i, args.endpoints, 1_000_000 + n);
                let mark = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                let written = epoch_secs(std::time::SystemTime::now());
                lab.rt.block_on(slices.patch(
                    &format!("bench-{i:05}-bench"),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"endpoints": patch["endpoints"]})),
                ))?;
                if side.name == "flatnet" {
                    let (line, took) = wait_for("the agent to apply the change", Duration::from_secs(30), || {
                        logged_ms(&log, mark, "Service(s) updated")
                            .into_iter()
                            .find(|(l, _)| !l.contains(" 0 element(s) changed"))
                    })?;
                    changes.push(Duration::from_secs_f64(took / 1e3));
                    if let Some(at) = log_time(&line) {
                        write_to_kernel[k].push(Duration::from_secs_f64((at - written).max(0.0)));
                    }
                    if let Some(v) = logged_figure(&line, "kernel write ") {
                        nft_part.push(Duration::from_secs_f64(v / 1e3));
                    }
                    if let Some(v) = logged_figure(&line, "kernel commit ") {
                        commit_part.push(Duration::from_secs_f64(v / 1e3));
                    }
                } else {
                    let synced = wait_for("kube-proxy to apply the change", Duration::from_secs(30), || {
                        let m = kube_proxy_metrics(&kp_ns).ok()?;
                        sample(&m, KP_LAST_SYNC).filter(|t| *t > written)
                    })?;
                    write_to_kernel[k].push(Duration::from_secs_f64(synced - written));
                    // kube-proxy syncs at most once a second by default: each change its own sync.
                    std::thread::sleep(Duration::from_millis(1100));
                }
            }
            Ok(())
        })();
        others.iter().for_each(|p| signal(*p, nix::sys::signal::Signal::SIGCONT));
        measured?;
        // The resumed proxy catches up on what it missed, and its next sync is not held
        // back by its minimum sync period.
        std::thread::sleep(Duration::from_secs(2));
    }
    let ch = summarize(&changes).context("no changes timed")?;
    let nft_ch = summarize(&nft_part);
    let commit_ch = summarize(&commit_part);
    let w2k: Vec<_> = write_to_kernel.iter().map(|v| summarize(v)).collect();

    // Restarts: tables already right, then deleted (cold).
    let node = lab.layout.state.join("netns/node-1");
    let warm = restart_agent(&lab, &log)?;
    let kp_warm = if kube_proxy { Some(restart_kube_proxy(&lab, "node-2")?) } else { None };
    netns::run_in(&node, || flatnet_kernel::nft::delete_table(nftables::types::NfFamily::IP, "flatnet"))??;
    let cold = restart_agent(&lab, &log)?;
    let kp_cold = if kube_proxy {
        netns::run_in(&kp_ns, || {
            flatnet_kernel::nft::delete_table(nftables::types::NfFamily::IP, "kube-proxy")?;
            flatnet_kernel::nft::delete_table(nftables::types::NfFamily::IP6, "kube-proxy")
        })??;
        Some(restart_kube_proxy(&lab, "node-2")?)
    } else {
        None
    };
    println!("  restart: {}", warm.line.split_once("full sync:").map_or("", |x| x.1).trim());
    println!("  cold:    {}", cold.line.split_once("full sync:").map_or("", |x| x.1).trim());
    // The agent's own sync work in a full sync: kernel read, plan and kernel write.
    let sync_work = |line: &str| -> f64 {
        ["kernel read ", "plan ", "kernel write "].iter().filter_map(|k| logged_figure(line, k)).sum()
    };

    println!();
    if kube_proxy {
        println!("{:<58} {:>12} {:>12} {:>8} {:>10}", "measure (medians)", "flatnet", "kube-proxy", "ratio", "target");
    } else {
        println!("{:<58} {:>12} {:>10}", "measure (medians)", "flatnet", "target");
    }
    let row = |label: &str, f: f64, k: Option<f64>, unit: &str, target: &str| match k {
        Some(k) if kube_proxy => {
            println!(
                "{label:<58} {:>12} {:>12} {:>8.2} {target:>10}",
                format!("{f:.1}{unit}"),
                format!("{k:.1}{unit}"),
                f / k
            )
        }
        _ if kube_proxy => println!("{label:<58} {:>12} {:>12} {:>8} {target:>10}", format!("{f:.1}{unit}"), "-", "-"),
        _ => println!("{label:<58} {:>12} {target:>10}", format!("{f:.1}{unit}")),
    };
    row("new connections/s through a ClusterIP, 10 Services", small[0], small.get(1).copied(), "/s", "");
    row(&format!("new connections/s, {} Services", args.services), large[0], large.get(1).copied(), "/s", "");
    row(
        "ratio 10 Services / at scale (cost per connection)",
        small[0] / large[0],
        small.get(1).zip(large.get(1)).map(|(a, b)| a / b),
        "",
        "≤ 1.1",
    );
    row(
        &format!("endpoint change, agent's event → kernel (p99 {:.1} ms)", ms(ch.p99)),
        ms(ch.p50),
        None,
        " ms",
        "≤ 20 ms",
    );
    if let Some(n) = nft_ch {
        row("  of which the kernel write (one netlink transaction)", ms(n.p50), None, " ms", "");
    }
    if let Some(n) = commit_ch {
        row("  of which the kernel's commit (send → acknowledged)", ms(n.p50), None, " ms", "");
    }
    if let Some(Some(f)) = w2k.first() {
        let k = w2k.get(1).and_then(|k| k.as_ref());
        row(
            &format!(
                "endpoint change, API write → kernel (p99 {:.1}{})",
                ms(f.p99),
                k.map_or(String::new(), |k| format!(" / {:.1}", ms(k.p99)))
            ),
            ms(f.p50),
            k.map(|k| ms(k.p50)),
            " ms",
            "≤ 0.5×",
        );
    }
    row("full sync after a restart, the proxy's own sync work", sync_work(&warm.line), kp_warm.map(|k| k.0), " ms", "");
    row("full sync after a restart, from the watch lists", warm.ms, None, " ms", "");
    row("full sync cold (table deleted), the sync work", sync_work(&cold.line), kp_cold.map(|k| k.0), " ms", "≤ 0.5×");
    row("full sync cold, from the watch lists", cold.ms, None, " ms", "≤ 2000 ms");
    if let Some(c) = logged_figure(&cold.line, "kernel commit ") {
        row("  of which the kernel's commit", c, None, " ms", "");
    }
    row("peak RSS after the cold sync", cold.peak, kp_cold.map(|k| k.1), " MiB", "≤ 50 MB");
    row("peak RSS after the restart sync", warm.peak, kp_warm.map(|k| k.1), " MiB", "");
    row("RSS a second after the cold sync", cold.after, None, " MiB", "");
    row("RSS a second after the restart sync", warm.after, None, " MiB", "");
    Ok(())
}

/// The figure in milliseconds that follows `key` in one of the agent's log lines
/// ("kernel write 12.3 ms").
pub(super) fn logged_figure(line: &str, key: &str) -> Option<f64> {
    line.split_once(key)?.1.split_once(" ms")?.0.parse().ok()
}
