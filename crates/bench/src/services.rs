//! The Service proxy at scale, in one lab run (one node, in a sandbox):
//! - new connections per second from a pod through a ClusterIP with 10 Services, then
//!   with 10,000 (each with 10 endpoints): the ratio shows whether the cost per
//!   connection grows with the number of Services;
//! - one endpoint change at that scale: from the agent's watch event to the kernel;
//! - a full sync of every Service by a restarted agent, with the table already right
//!   (a restart) and with the table deleted (cold), and the agent's peak RSS.
//!
//! The synthetic endpoints are spread over ten node names, as 100,000 endpoints would be
//! in a real cluster: a tenth of them are on the measured node (for hairpin, and for the
//! Local traffic policies).
//!
//! The figures for the agent come from its own log, which times each sync from the
//! watch event it received to `nft` returning.

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
}

pub fn run(args: ServicesBenchArgs) -> anyhow::Result<()> {
    if let Some(why) = sandbox::unavailable_reason() {
        bail!("the Services benchmark {why}");
    }
    sandbox::run(|_| one(&args))?
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

/// Kills node-1's agent (its kubelet starts it again) and returns the new agent's full
/// sync time and peak RSS.
fn restart_agent(lab: &BenchLab, log: &Path) -> anyhow::Result<(f64, f64, String)> {
    let old = lab.layout.agent("node-1").context("node-1's agent pid")?;
    let mark = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGKILL)?;
    let line = wait_for("the restarted agent's full sync", Duration::from_secs(120), || {
        logged_ms(log, mark, "full sync:").into_iter().next()
    })?;
    let pid =
        wait_for("the new agent pid", Duration::from_secs(10), || lab.layout.agent("node-1").filter(|p| *p != old))?;
    Ok((line.1, super::stats::memory_mib(pid as u32, "VmHWM:"), line.0))
}

fn one(args: &ServicesBenchArgs) -> anyhow::Result<()> {
    println!(
        "Services: 1 node; {} Services × {} endpoints at scale; {} endpoint changes; connection rate over 3 × {} s",
        args.services, args.endpoints, args.changes, args.seconds
    );
    let lab = BenchLab::up(1, "vxlan")?;
    lab.pod("server", Some("node-1"), true)?;
    lab.pod("client", Some("node-1"), false)?;
    lab.wait_ready(2, Duration::from_secs(60))?;
    let svcs: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let target = lab
        .rt
        .block_on(svcs.create(&PostParams::default(), &serde_json::from_value(service("target", Some("server")))?))?;
    let ip = target.spec.and_then(|s| s.cluster_ip).context("the target Service's ClusterIP")?;
    let to: SocketAddr = format!("{ip}:80").parse()?;
    let client = lab.pod_netns("client")?;
    let log = lab.layout.state.join("nodes/node-1/agent.log");
    // 10 Services: the target, `kubernetes`, and 8 synthetic ones.
    create_synthetic(&lab, 0, 8, args.endpoints)?;
    wait_for("the target Service to answer", Duration::from_secs(30), || connection_rate(&client, to, 0).ok())?;
    let (small, small_all) = median_rate(&client, to, args.seconds)?;
    println!("  10 Services: {small:.0} connections/s (runs: {small_all:.0?})");

    let t = Instant::now();
    create_synthetic(&lab, 8, args.services - 2, args.endpoints)?;
    println!("  created {} more Services and EndpointSlices in {:.1} s", args.services - 10, t.elapsed().as_secs_f64());
    let node = lab.layout.state.join("netns/node-1");
    let want = args.services;
    wait_for("the agent to program every Service", Duration::from_secs(600), || {
        let n = netns::run_in(&node, || {
            flatnet_kernel::nft::set_elements(nftables::types::NfFamily::IP, "flatnet", "map", "service-ips")
                .ok()
                .flatten()
                .map_or(0, |e| e.len())
        })
        .unwrap_or(0);
        (n >= want).then_some(())
    })?;
    let (large, large_all) = median_rate(&client, to, args.seconds)?;
    println!("  {} Services: {large:.0} connections/s (runs: {large_all:.0?})", args.services);

    // One endpoint change at scale, from the watch event to the kernel.
    let slices: Api<EndpointSlice> = Api::namespaced(lab.client.clone(), "default");
    let mut changes = Vec::new();
    let mut nft_part = Vec::new();
    for c in 0..args.changes {
        let mark = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let i = 100 + c;
        let patch = slice(&format!("bench-{i:05}"), i, args.endpoints, 1_000_000 + c);
        lab.rt.block_on(slices.patch(
            &format!("bench-{i:05}-bench"),
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": patch["endpoints"]})),
        ))?;
        let (line, took) = wait_for("the agent to apply the change", Duration::from_secs(30), || {
            logged_ms(&log, mark, "Service(s) updated").into_iter().find(|(l, _)| !l.contains(" 0 element(s) changed"))
        })?;
        changes.push(Duration::from_secs_f64(took / 1e3));
        if let Some(nft) =
            line.split_once("nft ").and_then(|(_, r)| r.split_once(" ms")).and_then(|(v, _)| v.parse::<f64>().ok())
        {
            nft_part.push(Duration::from_secs_f64(nft / 1e3));
        }
    }
    let ch = summarize(&changes).context("no changes timed")?;
    let nft_ch = summarize(&nft_part);

    // A restarted agent's full sync: table already right, then table deleted (cold).
    let (warm, warm_rss, warm_line) = restart_agent(&lab, &log)?;
    let deleted = netns::run_in(&node, || flatnet_kernel::nft::delete_table(nftables::types::NfFamily::IP, "flatnet"))?;
    deleted?;
    let (cold, cold_rss, cold_line) = restart_agent(&lab, &log)?;
    println!("  restart: {}", warm_line.split_once("full sync:").map_or("", |x| x.1).trim());
    println!("  cold:    {}", cold_line.split_once("full sync:").map_or("", |x| x.1).trim());

    println!();
    println!("{:<58} {:>12} {:>10}", "measure", "median", "target");
    println!("{:<58} {:>10.0}/s {:>10}", "new connections/s through a ClusterIP, 10 Services", small, "");
    println!("{:<58} {:>10.0}/s {:>10}", format!("new connections/s, {} Services", args.services), large, "");
    println!("{:<58} {:>12.3} {:>10}", "ratio (10 Services / at scale: cost per connection)", small / large, "≤ 1.1");
    println!(
        "{:<58} {:>9.1} ms {:>10}",
        format!("endpoint change at scale, event → kernel (p99 {:.1} ms)", ms(ch.p99)),
        ms(ch.p50),
        "≤ 20 ms"
    );
    if let Some(n) = nft_ch {
        println!("{:<58} {:>9.1} ms {:>10}", "  of which the nft run (spawn, cache, transaction)", ms(n.p50), "");
    }
    println!("{:<58} {:>9.0} ms {:>10}", "full sync after a restart (table already right)", warm, "");
    println!("{:<58} {:>9.0} ms {:>10}", "full sync, cold (table deleted)", cold, "≤ 2000 ms");
    println!("{:<58} {:>8.1} MiB {:>10}", "agent peak RSS (after the cold sync)", cold_rss, "≤ 50 MB");
    println!("{:<58} {:>8.1} MiB {:>10}", "agent peak RSS (after the restart sync)", warm_rss, "");
    Ok(())
}
