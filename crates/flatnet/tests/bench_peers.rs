//! Smoke runs of the benchmarks that compare flatnet with its peers (small sizes,
//! seconds), so the comparison code cannot rot: `bench cni` beside Debian's and the
//! current reference plugins, `bench dns` beside CoreDNS and NSD, `bench services` beside
//! kube-proxy, `bench throughput` and `bench lab-up` beside Flannel, `bench bgp` beside VXLAN, `bench control-plane` and `bench lab-api` beside kube-apiserver. The peers come from `scripts/peers` and `scripts/kubernetes` (CI builds
//! them); without them the test says SKIPPED.

mod common;

use common::lab::flatnet;
use common::sandboxed;
use flatnet_lab::upstream;
use std::process::Command;

fn bench(args: &[&str]) -> String {
    let out = Command::new(flatnet()).arg("bench").args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "flatnet bench {args:?} failed:\n{text}");
    text
}

/// The numbers of the table row starting with `label` (after it; units dropped).
fn row(text: &str, label: &str) -> Vec<f64> {
    let line =
        text.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("no {label:?} row:\n{text}"));
    let rest = &line.trim_start()[label.len()..];
    rest.split_whitespace()
        .filter_map(|w| w.trim_end_matches(|c: char| c.is_alphabetic() || c == '/').parse().ok())
        .collect()
}

#[test]
fn bench_cni_compares_flatnet_with_debians_and_the_current_reference_plugins() {
    let test = "bench_cni_compares_flatnet_with_debians_and_the_current_reference_plugins";
    if !upstream::peer_dir("plugins", upstream::PLUGINS_VERSION).join("bridge").is_file() {
        eprintln!("SKIPPED {test}: the current reference plugins are not built (scripts/peers plugins)");
        return;
    }
    sandboxed(test, |_| {
        let text = bench(&["cni", "--pods", "4", "--rounds", "1", "--parallel", "2"]);
        assert!(text.contains("current 1.10.0 p50/p99 ms") && text.contains("debian 1.1.1 p50/p99 ms"), "{text}");
        for mode in ["sequential", "parallel"] {
            let line = text.lines().find(|l| l.starts_with(mode) && l.contains("DEL+teardown")).unwrap();
            assert_eq!(line.matches("per pod").count(), 3, "a teardown time for each plugin: {line}");
        }
    });
}

#[test]
fn bench_dns_compares_flatnet_with_coredns_and_nsd() {
    let test = "bench_dns_compares_flatnet_with_coredns_and_nsd";
    if !upstream::peer_dir("coredns", upstream::COREDNS_VERSION).join("coredns").is_file() {
        eprintln!("SKIPPED {test}: CoreDNS is not built (scripts/peers coredns)");
        return;
    }
    sandboxed(test, |_| {
        let text = bench(&[
            "dns",
            "--services",
            "20",
            "--pods",
            "100",
            "--seconds",
            "1",
            "--rounds",
            "1",
            "--latency-qps",
            "1000",
        ]);
        assert!(text.contains("answers compared with nsd: ") && text.contains(", 0 differ"), "{text}");
        // flatnet, CoreDNS, NSD, and the two ratios.
        assert_eq!(row(&text, "queries/s (one core)").len(), 5, "{text}");
        let fresh = row(&text, "Service created → answered, ms");
        assert!(fresh.len() == 3 && fresh[..2].iter().all(|ms| *ms > 0.0), "{text}");
        assert_eq!(row(&text, "MiB per 1,000 objects").len(), 3, "{text}");
    });
}

#[test]
fn bench_services_compares_flatnet_with_kube_proxy() {
    let test = "bench_services_compares_flatnet_with_kube_proxy";
    if let Err(why) = flatnet_lab::upstream::binary("kube-proxy") {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    sandboxed(test, |_| {
        let text = bench(&["services", "--services", "60", "--endpoints", "2", "--changes", "2", "--seconds", "1"]);
        assert!(text.contains("flatnet   kube-proxy"), "{text}");
        // Both sides measured: flatnet, kube-proxy, ratio.
        assert_eq!(row(&text, "new connections/s, 60 Services").len(), 3, "{text}");
        assert!(row(&text, "endpoint change, API write → kernel").len() >= 3, "{text}");
        // flatnet, kube-proxy, the ratio (then the target).
        assert!(row(&text, "full sync cold (table deleted), the sync work").len() >= 3, "{text}");
        assert!(row(&text, "peak RSS after the cold sync").len() >= 3, "{text}");
    });
}

fn flannel_missing() -> Option<String> {
    flatnet_lab::pod_network::flannel_binaries().err()
}

#[test]
fn bench_throughput_compares_flatnet_with_flannel() {
    let test = "bench_throughput_compares_flatnet_with_flannel";
    if let Some(why) = flannel_missing() {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    sandboxed(test, |_| {
        let text = bench(&["throughput", "--seconds", "1", "--rounds", "1"]);
        for network in ["flatnet", "flannel"] {
            for path in ["same node", "cross node, vxlan", "cross node, host-gw"] {
                // 1 stream and ratio, 8 streams and ratio, transactions/s and µs each.
                let r = row(&text, &format!("{network} pod → pod, {path}"));
                assert!(r.len() >= 6 && r[..6].iter().all(|x| *x > 0.0), "{network} {path}: {r:?}\n{text}");
            }
        }
        for path in ["same node", "cross node, vxlan", "cross node, host-gw"] {
            assert_eq!(row(&text, path).len(), 3, "flatnet ÷ Flannel on {path}:\n{text}");
        }
    });
}

#[test]
fn bench_lab_up_compares_flatnet_with_flannel() {
    let test = "bench_lab_up_compares_flatnet_with_flannel";
    if let Some(why) = flannel_missing() {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    sandboxed(test, |_| {
        let text = bench(&["lab-up", "--nodes", "2", "--pods", "4", "--runs", "1"]);
        for network in ["flatnet", "flannel"] {
            let r = row(&text, &format!("{network}  "));
            assert!(r.len() == 3 && r.iter().all(|s| *s > 0.0), "{network}: {r:?}\n{text}");
        }
        assert!(row(&text, "ratio").len() >= 3, "{text}");
    });
}

#[test]
fn bench_bgp_compares_native_routes_with_vxlan_and_measures_convergence() {
    sandboxed("bench_bgp_compares_native_routes_with_vxlan_and_measures_convergence", |_| {
        let text = bench(&["bgp", "--rounds", "1", "--seconds", "1"]);
        for label in ["bare veth pair (baseline)", "rack 1 → rack 2, BGP, native routes", "rack 1 → rack 2, VXLAN"]
        {
            let v = row(&text, label);
            assert!(v.len() >= 4 && v[0] > 0.0 && v[1] > 0.0, "{label}: {v:?}\n{text}");
        }
        assert!(text.contains("BGP ÷ VXLAN: one stream"), "{text}");
        let withdrawn = row(&text, "node cut off → its Pod CIDR gone from every router and node: median");
        assert!(withdrawn[0] > 0.0 && withdrawn[0] < 3.0 * 9.0, "{text}");
        let routed = row(&text, "Pod CIDR assigned → every other node routes it:");
        assert!(routed.last().is_some_and(|ms| *ms < 10_000.0), "{text}");
    });
}

#[test]
fn bench_control_plane_and_lab_api_compare_the_embedded_api_with_kube_apiserver() {
    let test = "bench_control_plane_and_lab_api_compare_the_embedded_api_with_kube_apiserver";
    if let Err(why) = flatnet_lab::kubernetes::binaries() {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    sandboxed(test, |_| {
        let text = bench(&["control-plane", "--runs", "1", "--nodes", "2"]);
        for label in
            ["lab up: Nodes Ready, network up, DNS (s)", "lab demo: every path checked (s)", "control plane RSS (MiB)"]
        {
            let v = row(&text, label);
            assert!(v.len() == 3 && v.iter().all(|x| *x > 0.0), "{label}: {v:?}\n{text}");
        }
        let text = bench(&["lab-api", "--pods", "200", "--services", "20"]);
        assert_eq!(row(&text, "embedded").len(), 5, "{text}");
        assert_eq!(row(&text, "kube-apiserver").len(), 5, "{text}");
        assert!(text.contains("embedded ÷ kube-apiserver: acknowledged"), "{text}");
    });
}
