//! `flatnet demo`: one node and two pods, wired by the real flatnet CNI plugin exactly
//! as a container runtime runs it, with each hop shown from live kernel state. It all
//! happens in private network namespaces that vanish when the demo ends.

use anyhow::{Context, bail};
use flatnet_cni::exec::{self, Attachment};
use flatnet_kernel::sandbox::{self, Sandbox};
use flatnet_kernel::{Netlink, addr, link, netns, probe, route};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SUBNET: &str = "10.244.1.0/24";

struct Pod {
    name: &'static str,
    netns: PathBuf,
    att: Attachment,
    result: Value,
}

impl Pod {
    fn ip(&self) -> IpAddr {
        let cidr = self.result["ips"][0]["address"].as_str().unwrap_or_default();
        cidr.split('/').next().and_then(|s| s.parse().ok()).unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    fn host_veth(&self) -> &str {
        self.result["interfaces"][1]["name"].as_str().unwrap_or_default()
    }
}

pub fn run() -> anyhow::Result<()> {
    if let Some(why) = sandbox::unavailable_reason() {
        bail!("the demo {why}");
    }
    let me = std::env::current_exe().context("find the flatnet binary")?;
    sandbox::run(|sb| demo(sb, &me))?
}

fn demo(sb: &Sandbox, plugin: &Path) -> anyhow::Result<()> {
    let dirs = vec![plugin.parent().context("binary directory")?.to_path_buf()];
    let config = json!({"cniVersion": "1.1.0", "name": "demo", "type": "flatnet", "subnet": SUBNET,
                        "dataDir": sb.dir().join("ipam")});
    println!("flatnet demo: one node, two pods, wired by the flatnet CNI plugin as a runtime runs it");
    println!("(the node is a private network namespace: this machine's own network is not touched)\n");

    let mut pods = Vec::new();
    for name in ["web", "client"] {
        let netns = sb.create_netns(name)?;
        let att = Attachment {
            container_id: format!("demo-{name}"),
            netns: netns.display().to_string(),
            ifname: "eth0".into(),
            args: vec![("K8S_POD_NAME".into(), name.into())],
        };
        let start = Instant::now();
        let result = exec::exec(plugin, "ADD", Some(&att), &dirs, &config)?;
        let took = start.elapsed();
        let pod = Pod { name, netns, att, result };
        println!(
            "ADD {:<7} -> eth0 {} , host end {} on cni0   ({:.1} ms)",
            pod.name,
            pod.result["ips"][0]["address"].as_str().unwrap_or("?"),
            pod.host_veth(),
            took.as_secs_f64() * 1e3
        );
        pods.push(pod);
    }

    let (web, client) = (&pods[0], &pods[1]);
    println!("\nThe path from client to web, read back from the kernel:");
    show_pod_side(client)?;
    show_node_side(client, web)?;
    show_pod_side(web)?;

    println!("\nChecks:");
    let mut failures = 0;
    let mut row = |what: &str, outcome: Result<String, String>| match &outcome {
        Ok(detail) => println!("  PASS  {what:<44} {detail}"),
        Err(detail) => {
            failures += 1;
            println!("  FAIL  {what:<44} {detail}")
        }
    };
    let seen = probe::tcp(&client.netns, &web.netns, web.ip(), 8080, Duration::from_secs(3));
    row(
        "client -> web:8080 over the bridge (TCP)",
        match seen {
            Ok(src) if src.ip() == client.ip() => Ok(format!("web saw {} (the client's pod IP: no NAT)", src.ip())),
            Ok(src) => Err(format!("web saw {}, expected {}", src.ip(), client.ip())),
            Err(e) => Err(e.to_string()),
        },
    );
    for pod in &pods {
        let mut c = config.clone();
        c["prevResult"] = pod.result.clone();
        let check = exec::exec(plugin, "CHECK", Some(&pod.att), &dirs, &c);
        row(&format!("CHECK {}", pod.name), check.map(|_| "matches the kernel".into()).map_err(|e| e.to_string()));
    }

    for pod in &pods {
        exec::exec(plugin, "DEL", Some(&pod.att), &dirs, &config)?;
    }
    let start = Instant::now();
    let gone = loop {
        let mut nl = Netlink::open()?;
        let left = link::list(&mut nl)?
            .into_iter()
            .filter(|l| l.alias.as_deref().is_some_and(|a| a.starts_with("flatnet:")))
            .count();
        if left == 0 || start.elapsed() > Duration::from_secs(5) {
            break left == 0;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    row(
        "DEL both: addresses released, veths torn down",
        if gone {
            Ok(format!("gone {:.0} ms after DEL returned", start.elapsed().as_secs_f64() * 1e3))
        } else {
            Err("veths remain".into())
        },
    );
    println!();
    if failures > 0 {
        bail!("{failures} check(s) failed");
    }
    println!("All checks passed. Next: `flatnet bench cni` compares this plugin with the reference bridge plugin.");
    Ok(())
}

fn show_pod_side(pod: &Pod) -> anyhow::Result<()> {
    let (eth, addrs, routes) = netns::run_in(&pod.netns, || -> anyhow::Result<_> {
        let mut nl = Netlink::open()?;
        let eth = link::get(&mut nl, "eth0")?.context("eth0 missing")?;
        let addrs: Vec<String> = addr::list(&mut nl, Some(eth.index))?
            .iter()
            .filter(|a| a.1.addr().is_ipv4())
            .map(|a| a.1.to_string())
            .collect();
        let routes = route::list_v4(&mut nl)?;
        Ok((eth, addrs, routes))
    })??;
    let default = routes.iter().find(|r| r.dst.prefix_len() == 0).and_then(|r| r.gateway);
    println!(
        "  [{}] eth0 {} mac {} mtu {}, default via {}",
        pod.name,
        addrs.join(","),
        flatnet_model::names::format_mac(&eth.mac),
        eth.mtu,
        default.map(|g| g.to_string()).unwrap_or_else(|| "none".into())
    );
    Ok(())
}

fn show_node_side(from: &Pod, to: &Pod) -> anyhow::Result<()> {
    let mut nl = Netlink::open()?;
    let br = link::get(&mut nl, "cni0")?.context("cni0 missing")?;
    let gw: Vec<String> = addr::list(&mut nl, Some(br.index))?.iter().map(|a| a.1.to_string()).collect();
    for (pod, dir) in [(from, "in from"), (to, "out to")] {
        let v = link::get(&mut nl, pod.host_veth())?.context("host veth missing")?;
        println!(
            "  [node] {} ({}) {dir} {}: port of cni0, hairpin {}",
            v.name,
            v.alias.as_deref().unwrap_or(""),
            pod.name,
            if v.hairpin == Some(true) { "on" } else { "off" }
        );
        if dir == "in from" {
            println!("  [node] cni0 bridge {} forwards by MAC between its ports", gw.join(","));
        }
    }
    Ok(())
}
