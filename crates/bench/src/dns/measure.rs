//! One round of load on one server: dnsperf saturating it (queries/s, per CPU-second),
//! then at a fixed rate (p50/p99 latency).

use super::super::stats::{ms, summarize};
use super::servers::Server;
use anyhow::{Context, bail};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// CPU seconds used by `pid` and every process below it.
fn cpu_seconds(pid: u32) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            // After the command: state ppid … utime(12) stime(13) counting from state = 1.
            let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            total += (utime + stime) / tick;
        }
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            todo.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    total
}

/// dnsperf's "Queries per second" and "Queries lost".
fn dnsperf(port: u16, queries: &Path, seconds: u64, extra: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("taskset")
        .args(["-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args(["-l", &seconds.to_string(), "-t", "2"])
        .args(extra)
        .output()
        .context("run dnsperf")?;
    if !out.status.success() {
        bail!("dnsperf failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn stat_line(text: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|l| l.trim().strip_prefix(label)?.split_whitespace().next()?.parse().ok())
}

pub(super) struct Round {
    pub qps: f64,
    pub per_cpu: f64,
    pub lost: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `seconds` per window; the latency window offers `latency_qps`.
pub(super) fn round(s: &Server, queries: &Path, seconds: u64, latency_qps: u32) -> anyhow::Result<Round> {
    let cpu0 = cpu_seconds(s.child.id());
    let text = dnsperf(s.port, queries, seconds, &["-c", "8", "-q", "400"])?;
    let cpu = cpu_seconds(s.child.id()) - cpu0;
    let qps = stat_line(&text, "Queries per second:").context("dnsperf printed no rate")?;
    let completed = stat_line(&text, "Queries completed:").unwrap_or(0.0);
    let lost = stat_line(&text, "Queries lost:").unwrap_or(0.0);
    let rate = latency_qps.to_string();
    let verbose = dnsperf(s.port, queries, seconds, &["-Q", &rate, "-v"])?;
    let lat: Vec<Duration> = verbose
        .lines()
        .filter_map(|l| l.strip_prefix("> ")?.split_whitespace().last()?.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect();
    let sum = summarize(&lat).context("dnsperf reported no query latency")?;
    Ok(Round { qps, per_cpu: completed / cpu.max(0.01), lost, p50_ms: ms(sum.p50), p99_ms: ms(sum.p99) })
}
