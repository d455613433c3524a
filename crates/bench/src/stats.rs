//! Percentiles over measured durations.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub p50: Duration,
    pub p99: Duration,
}

/// Nearest-rank percentiles; None for an empty sample.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort();
    let rank = |p: usize| v[((p * v.len()).div_ceil(100)).saturating_sub(1).min(v.len() - 1)];
    Some(Summary { p50: rank(50), p99: rank(99) })
}

/// A `/proc/PID/status` memory figure (`VmRSS:`, `VmHWM:`) in KiB; 0 when unreadable.
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// The same figure in MiB.
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    memory_kib(pid, field) as f64 / 1024.0
}

/// The median of a non-empty sample (the upper one of an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = summarize(&v).unwrap();
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        let s = summarize(&[Duration::from_millis(7)]).unwrap();
        assert_eq!((s.p50, s.p99), (Duration::from_millis(7), Duration::from_millis(7)));
        assert!(summarize(&[]).is_none());
    }
}
