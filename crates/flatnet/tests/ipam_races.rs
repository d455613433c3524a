//! IPAM under pressure: many plugins at once, and plugins killed with SIGKILL at any
//! point of ADD or DEL. The invariant: never one address on two live attachments.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn a_hundred_concurrent_adds_get_a_hundred_distinct_addresses() {
    sandboxed("a_hundred_concurrent_adds_get_a_hundred_distinct_addresses", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24");
        let nss: Vec<PathBuf> = (0..100).map(|i| sb.create_netns(&format!("p{i}")).unwrap()).collect();
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = nss
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    let net = &net;
                    s.spawn(move || net.add(&attachment(&format!("c{i}"), ns)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut seen = HashSet::new();
        for (i, r) in results.iter().enumerate() {
            let r = r.as_ref().unwrap_or_else(|e| panic!("ADD {i} failed: {e}"));
            let ip = r["ips"][0]["address"].as_str().unwrap().to_string();
            assert!(seen.insert(ip.clone()), "{ip} handed out twice");
            assert_eq!(pod_ip(&nss[i], "eth0").unwrap().to_string(), ip, "pod {i} holds what ADD returned");
        }
        assert_eq!(net.reserved().len(), 100);
        assert_eq!(pod_veths().len(), 100);
    });
}

/// Starts the plugin for `verb` and SIGKILLs it after `delay`.
fn run_and_kill(net: &Net, verb: &str, att: &flatnet_cni::exec::Attachment, delay: Duration) {
    let mut child = Command::new(flatnet_bin())
        .env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", &att.container_id)
        .env("CNI_NETNS", &att.netns)
        .env("CNI_IFNAME", &att.ifname)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(&serde_json::to_vec(&net.config).unwrap());
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
}

/// Every pod namespace that holds an address: the live attachments.
fn live_addresses(nss: &[PathBuf]) -> HashMap<PathBuf, String> {
    nss.iter().filter_map(|ns| Some((ns.clone(), pod_ip(ns, "eth0")?.addr().to_string()))).collect()
}

fn assert_no_address_shared(nss: &[PathBuf]) {
    let live = live_addresses(nss);
    let mut by_ip: HashMap<&String, Vec<&PathBuf>> = HashMap::new();
    for (ns, ip) in &live {
        by_ip.entry(ip).or_default().push(ns);
    }
    for (ip, holders) in by_ip {
        assert_eq!(holders.len(), 1, "{ip} is live on {holders:?}");
    }
}

#[test]
fn sigkill_at_any_point_never_hands_one_address_to_two_pods() {
    sandboxed("sigkill_at_any_point_never_hands_one_address_to_two_pods", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.1.0/28"); // 13 addresses: reuse comes quickly
        let nss: Vec<PathBuf> = (0..40).map(|i| sb.create_netns(&format!("p{i}")).unwrap()).collect();
        let att = |i: usize| attachment(&format!("c{i}"), &nss[i]);
        // Kill points spread over the whole of ADD (a plugin run takes a few ms).
        let mut outcomes = HashMap::<&str, usize>::new();
        for i in 0..40 {
            let reserved_before = net.reserved().len();
            run_and_kill(&net, "ADD", &att(i), Duration::from_micros(250 * (i as u64 % 16)));
            let outcome = match (net.reserved().len() > reserved_before, pod_ip(&nss[i], "eth0").is_some()) {
                (false, _) => "killed before reserving",
                (true, false) => "killed between reserving and wiring",
                (true, true) => "finished",
            };
            *outcomes.entry(outcome).or_default() += 1;
            assert_no_address_shared(&nss);
            // Every live pod's address is reserved for exactly that pod.
            for (ns, ip) in live_addresses(&nss) {
                assert!(net.reserved().contains(&ip), "{} holds {ip}, which the store does not reserve", ns.display());
            }
            // As a runtime does after a failed ADD: DEL, which must always succeed.
            // Every other one is killed too, and then retried.
            if i % 2 == 0 {
                run_and_kill(&net, "DEL", &att(i), Duration::from_micros(300 * (i as u64 % 10)));
                assert_no_address_shared(&nss);
            }
            net.del(&att(i)).unwrap_or_else(|e| panic!("DEL after a killed ADD {i}: {e}"));
            assert_no_address_shared(&nss);
            // Fill the pool a little so addresses get reused across iterations.
            if i % 3 == 0 {
                let keep = (i + 20) % 40;
                let _ = net.add(&att(keep));
                assert_no_address_shared(&nss);
            }
        }
        eprintln!("killed ADDs: {outcomes:?}");
        assert!(outcomes.len() >= 2, "the kills all landed in one phase of ADD: {outcomes:?}");
        // Clean up as a runtime would: DEL everything; nothing may be left.
        for i in 0..40 {
            net.del(&att(i)).unwrap();
        }
        assert!(net.reserved().is_empty(), "leaked: {:?}", net.reserved());
        wait_no_pod_veths();
    });
}
