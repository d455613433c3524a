//! NetworkPolicy at scale, in one lab run (one node, in a sandbox):
//! - new connections per second from one pod to another with no policy, then with
//!   1,000 policies in force (the server isolated by one of them, which allows the
//!   client): the ratio shows whether the cost per connection grows with the number of
//!   policies;
//! - 1,000 policies over 1,000 pods: the time from the last policy written to the API to
//!   the agent's ruleset holding all of them, and the agent's RSS.
//!
//! The 1,000 pods are synthetic (created on node-1 with an address in their status, not
//! run by the lab kubelet): the agent sees and programs them as its own pods. They sit in
//! 10 namespaces with 20 apps each; each policy isolates one app of its namespace, allows
//! ingress from another app and from a labelled namespace's pods on a numeric and a
//! named port, and egress to a namespace and an ipBlock.

use super::lab_harness::BenchLab;
use super::services::{connection_rate, logged_figure, logged_ms, wait_for};
use super::stats::ms;
use super::stats::{median, memory_mib};
use anyhow::{Context, bail};
use flatnet_kernel::{netns, sandbox};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct PolicyBenchArgs {
    /// Policies at scale.
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// Synthetic pods on the node.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Seconds per connection-rate window (five windows per case).
    #[arg(long, default_value_t = 2)]
    seconds: u64,
    /// Single pod relabels to time at scale.
    #[arg(long, default_value_t = 10)]
    changes: usize,
}

const NAMESPACES: usize = 10;
const APPS: usize = 20;

pub fn run(args: PolicyBenchArgs) -> anyhow::Result<()> {
    if let Some(why) = sandbox::unavailable_reason() {
        bail!("the NetworkPolicy benchmark {why}");
    }
    sandbox::run(|_| one(&args))?
}

/// The agent log's first line after byte `from` that reports a sync of `policies`
/// policies (the agent logs each sync once it is in the kernel), with its milliseconds.
fn synced(log: &Path, from: u64, policies: usize) -> Option<(String, f64)> {
    logged_ms(log, from, &format!(": {policies} policies, ")).into_iter().next()
}

/// Each sync the agent logged after byte `from` until the one with `policies` policies:
/// how many policies it left in force, and its own work (plan, diff and kernel write).
fn burst_syncs(log: &Path, from: u64, policies: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (line, _) in logged_ms(log, from, " policies, ") {
        let Some(n) = line.split_once("sync: ").and_then(|(_, r)| r.split_once(' ')).map(|(n, _)| n.to_string()) else {
            continue;
        };
        let work: f64 = ["(plan ", "diff ", "kernel write "].iter().filter_map(|k| logged_figure(&line, k)).sum();
        out.push(format!("{n} ({work:.0} ms)"));
        if n == policies.to_string() {
            break;
        }
    }
    out
}

fn synthetic_pod(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p-{i:04}"), "namespace": format!("bench-{}", i % NAMESPACES),
                     "labels": {"app": format!("app-{}", (i / NAMESPACES) % APPS), "tier": if i.is_multiple_of(3) { "front" } else { "back" }},
                     "annotations": {flatnet_lab::kubelet::SYNTHETIC_ANNOTATION: "true"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx",
                 "ports": [{"name": "http", "containerPort": 8000 + (i % 7) as i64}]}]}})
}

fn synthetic_ip(i: usize) -> String {
    format!("10.250.{}.{}", i / 250, 1 + i % 250)
}

fn synthetic_policy(i: usize) -> serde_json::Value {
    let ns = i % NAMESPACES;
    let app = (i / NAMESPACES) % APPS;
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("pol-{i:04}"), "namespace": format!("bench-{ns}")},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{app}")}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (app + 1) % APPS)}}},
                          {"namespaceSelector": {"matchLabels": {"team": format!("t{}", (ns + 3) % NAMESPACES)}},
                           "podSelector": {"matchLabels": {"tier": "front"}}}],
                 "ports": [{"port": 80}, {"port": "http"}]}],
            "egress": [
                {"to": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", (ns + i) % NAMESPACES)}}}],
                 "ports": [{"port": 53, "protocol": "UDP"}, {"port": 8000, "endPort": 8010}]},
                {"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": [format!("203.0.113.{}/32", i % 256)]}}]}]}})
}

/// Creates `objects` through the API, 64 at a time; returns when the last is written.
fn create_all(lab: &BenchLab, objects: Vec<serde_json::Value>) -> anyhow::Result<Instant> {
    lab.rt.block_on(async {
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(objects)
            .map(|o| async move { flatnet_lab::lifecycle::apply::apply_one(&lab.client, o).await.map(|_| ()) })
            .buffer_unordered(64)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<()>>()
    })?;
    Ok(Instant::now())
}

fn one(args: &PolicyBenchArgs) -> anyhow::Result<()> {
    println!(
        "NetworkPolicy: 1 node; {} policies over {} pods; connection rate over 5 × {} s per case",
        args.policies, args.pods, args.seconds
    );
    let lab = BenchLab::up(1, "vxlan")?;
    lab.pod("server", Some("node-1"), true)?;
    lab.pod("client", Some("node-1"), false)?;
    let ready = lab.wait_ready(2, Duration::from_secs(60))?;
    let server_ip = ready.iter().find(|p| p.name == "server").context("the server pod")?.ip.clone();
    let to: SocketAddr = format!("{server_ip}:80").parse()?;
    let client = lab.pod_netns("client")?;
    let node = lab.layout.state.join("netns/node-1");
    wait_for("the server to answer", Duration::from_secs(30), || connection_rate(&client, to, 0).ok())?;

    // The cluster: namespaces and synthetic pods with their addresses.
    let t = Instant::now();
    let namespaces = (0..NAMESPACES)
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("bench-{n}"), "labels": {"team": format!("t{n}")}}}))
        .collect();
    create_all(&lab, namespaces)?;
    create_all(&lab, (0..args.pods).map(synthetic_pod).collect())?;
    lab.rt.block_on(async {
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..args.pods)
            .map(|i| {
                let api: Api<Pod> = Api::namespaced(lab.client.clone(), &format!("bench-{}", i % NAMESPACES));
                async move {
                    let status = json!({"status": {"phase": "Running", "podIP": synthetic_ip(i), "podIPs": [{"ip": synthetic_ip(i)}]}});
                    api.patch_status(&format!("p-{i:04}"), &PatchParams::default(), &Patch::Merge(&status)).await?;
                    Ok(())
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<()>>()
    })?;
    println!("  created {} namespaces and {} pods in {:.1} s", NAMESPACES, args.pods, t.elapsed().as_secs_f64());

    // Connection rate with no policy (two windows now, three after the policies).
    let mut bare = Vec::new();
    for _ in 0..2 {
        bare.push(connection_rate(&client, to, args.seconds)?);
    }
    let pid = lab.layout.agent("node-1").context("node-1's agent is not running")? as u32;
    let rss_before = memory_mib(pid, "VmRSS:");

    // The policies: the server's own (allowing the client), then the synthetic ones.
    let server_policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "server", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 80}]}]}});
    let mut objects = vec![server_policy];
    objects.extend((0..args.policies.saturating_sub(1)).map(synthetic_policy));
    let want = objects.len();
    let log = lab.layout.agent_log("node-1");
    let mark = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let t0 = Instant::now();
    let last = create_all(&lab, objects)?;
    let written = last.duration_since(t0);
    wait_for("the agent to program every policy", Duration::from_secs(600), || synced(&log, mark, want))?;
    let applied = last.elapsed();
    let line = synced(&log, mark, want).map(|l| l.0).unwrap_or_default();
    let burst = burst_syncs(&log, mark, want);
    let rss = memory_mib(pid, "VmRSS:");
    let peak = memory_mib(pid, "VmHWM:");
    let listing =
        netns::run_in(&node, || flatnet_kernel::nft::list_table(nftables::types::NfFamily::IP, "flatnet-policy"))??;
    let (mut chains, mut rules, mut sets, mut elements, mut isolated) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for o in listing.iter().flat_map(|l| l["nftables"].as_array().cloned().unwrap_or_default()) {
        rules += usize::from(o.get("rule").is_some());
        chains += usize::from(o.get("chain").is_some());
        if let Some(s) = o.get("set").or_else(|| o.get("map")) {
            sets += 1;
            let n = s["elem"].as_array().map_or(0, Vec::len);
            elements += n;
            if s["name"] == "ingress" {
                isolated = n;
            }
        }
    }

    // A Prometheus scrape of the agent at that scale (its per-policy drop counters).
    let scrapes = netns::run_in(&node, || -> anyhow::Result<Vec<Duration>> {
        let mut out = Vec::new();
        for _ in 0..11 {
            let t = Instant::now();
            let body = scrape("127.0.0.1:9402")?;
            out.push(t.elapsed());
            if !body.contains("flatnet_policy_dropped_packets_total") {
                bail!("the agent's /metrics has no per-policy drop counters");
            }
        }
        Ok(out)
    })??;
    // The client is let through by the server's policy.
    if connection_rate(&client, to, 0).is_err() {
        bail!("the client cannot reach the server with its policy in force");
    }
    let mut with = Vec::new();
    for _ in 0..5 {
        with.push(connection_rate(&client, to, args.seconds)?);
    }
    // Single changes at that scale: a pod relabelled (it moves to another app's
    // policies), timed by the agent from the watch event to the kernel.
    let (mut changes, mut change_plan, mut change_commit) = (Vec::new(), Vec::new(), Vec::new());
    let mut change_line = String::new();
    for c in 0..args.changes {
        let mark = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let api: Api<Pod> = Api::namespaced(lab.client.clone(), "bench-0");
        let patch = json!({"metadata": {"labels": {"app": format!("app-{}", (c + 7) % APPS)}}});
        lab.rt.block_on(api.patch(
            &format!("p-{:04}", c * NAMESPACES),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ))?;
        let (line, took) =
            wait_for("the agent to apply a relabel", Duration::from_secs(30), || synced(&log, mark, want))?;
        changes.push(Duration::from_secs_f64(took / 1e3));
        change_line = line.clone();
        for (key, into) in [("(plan ", &mut change_plan), ("kernel commit ", &mut change_commit)] {
            if let Some(v) = logged_figure(&line, key) {
                into.push(Duration::from_secs_f64(v / 1e3));
            }
        }
    }
    let change = super::stats::summarize(&changes).context("no change timed")?;

    // The bare case again once the policies are deleted, so that a drift of the
    // machine's speed during the run falls on both sides.
    let policies: Api<NetworkPolicy> = Api::all(lab.client.clone());
    let all = lab.rt.block_on(policies.list(&Default::default()))?;
    lab.rt.block_on(async {
        futures::stream::iter(all.items)
            .map(|p| {
                let api: Api<NetworkPolicy> =
                    Api::namespaced(lab.client.clone(), p.metadata.namespace.as_deref().unwrap_or("default"));
                async move { api.delete(p.metadata.name.as_deref().unwrap_or(""), &Default::default()).await.map(|_| ()) }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await
    });
    let mark = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    wait_for("the agent to drop every policy", Duration::from_secs(120), || synced(&log, mark, 0))?;
    for _ in 0..3 {
        bare.push(connection_rate(&client, to, args.seconds)?);
    }
    let (b, w) = (median(&bare), median(&with));

    println!();
    println!("{:<62} {:>12} {:>10}", "measure", "median", "target");
    println!("{:<62} {:>10.0}/s {:>10}", "new connections/s pod → pod, no policy", b, "");
    println!("{:<62} {:>10.0}/s {:>10}", format!("new connections/s, {} policies in force", args.policies), w, "");
    println!("{:<62} {:>12.3} {:>10}", "ratio (no policy / with policies: cost per connection)", b / w, "≤ 1.1");
    println!("  runs without: {bare:.0?}; with: {with:.0?}");
    println!(
        "{:<62} {:>9.1} s {:>10}",
        format!("writing {} policies to the API (64 at a time)", args.policies),
        written.as_secs_f64(),
        ""
    );
    println!("{:<62} {:>9.0} ms {:>10}", "last policy written → every policy in the kernel", ms(applied), "≤ 300 ms");
    println!(
        "{:<62} {:>9.0} ms {:>10}",
        format!("one pod relabelled at that scale, event → kernel (p99 {:.0} ms)", ms(change.p99)),
        ms(change.p50),
        "≤ 20 ms"
    );
    let parts = super::stats::summarize(&change_plan).zip(super::stats::summarize(&change_commit));
    if let Some((plan, commit)) = parts {
        println!(
            "{:<62} {:>9.0} ms {:>10}",
            format!("  of which the plan {:.0} ms; the kernel's commit", ms(plan.p50)),
            ms(commit.p50),
            ""
        );
    }
    let scrape_ms = {
        let mut v: Vec<f64> = scrapes.iter().map(|d| ms(*d)).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("{:<62} {:>9.1} ms {:>10}", "a /metrics scrape at that scale (median of 11)", scrape_ms, "≤ 20 ms");
    println!("{:<62} {:>8.1} MiB {:>10}", "agent RSS before the policies", rss_before, "");
    println!("{:<62} {:>8.1} MiB {:>10}", "agent RSS with them", rss, "");
    println!("{:<62} {:>8.1} MiB {:>10}", "agent peak RSS (VmHWM)", peak, "");
    println!("  the agent's log: {}", line.split_once("policy ").map_or("", |x| x.1));
    println!("  the agent's syncs from the first policy to the last (policies in force, its own work):");
    println!("    {}", burst.join(", "));
    println!("  a relabel, in the agent's log: {}", change_line.split_once("policy ").map_or("", |x| x.1));
    println!(
        "  ruleset: {isolated} pods isolated for ingress; {chains} chains, {rules} rules, {sets} sets and maps with {elements} elements"
    );
    Ok(())
}

/// `GET /metrics` on `addr`, from the calling thread's namespace: the body.
fn scrape(addr: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut c =
        std::net::TcpStream::connect(addr).with_context(|| format!("connect to the agent's metrics on {addr}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.1 200") {
        bail!("/metrics answered {}", out.lines().next().unwrap_or(""));
    }
    Ok(out)
}
