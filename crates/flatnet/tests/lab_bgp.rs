//! Native routing with BGP on a real lab: nodes in two racks behind BIRD 2 top-of-rack
//! routers, each agent announcing its Pod CIDR to its rack's router; pods cross racks as
//! plain routed packets with the client's pod IP; agents restart under traffic without a
//! failed request; a node that disappears is withdrawn within the hold time. On one
//! segment, the agents peer in a full mesh, repair routes deleted by hand, and refuse bad
//! settings without changing anything.

mod common;

use common::lab::{Capture, Lab, flatnet, http_get, http_get_path, seen_client_ip};
use common::{converges, sandboxed};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn pods(client_node: &str, server_node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {client_node}
  containers: [{{name: busybox, image: busybox:1.36, command: ["sleep", "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server}}
spec:
  nodeName: {server_node}
  containers: [{{name: web, image: nginx:1.25, ports: [{{containerPort: 80}}]}}]
"#
    )
}

/// Requests from `client_ns` to `ip` until stopped: (answered, failed with their errors).
struct Stream {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<Vec<String>>,
}

impl Stream {
    fn start(client_ns: std::path::PathBuf, ip: String) -> Self {
        let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (s, o) = (stop.clone(), ok.clone());
        let handle = std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match http_get(&client_ns, &ip) {
                    Ok(_) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            errors
        });
        Self { stop, ok, handle }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.handle.join().unwrap();
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

fn kill(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
}

/// The message of the node's NetworkUnavailable condition, as kubectl reads it.
fn network_message(lab: &Lab, node: &str) -> String {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", lab.state().join("kubeconfig"))
        .args(["get", "node", node, "-o"])
        .arg("jsonpath={.status.conditions[?(@.type=='NetworkUnavailable')].message}")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The BGP routes (proto 71) on a node: `dst via gateway` lines.
fn bgp_routes(lab: &Lab, node: &str) -> String {
    lab.ip(node, &["route", "show", "proto", "71"])
}

#[test]
fn bgp_routes_pods_natively_across_racks() {
    sandboxed("bgp_routes_pods_natively_across_racks", |_| {
        let lab = Lab::up_with(3, &["--backend", "bgp", "--racks", "2"]);
        let cidr: Vec<String> = (1..=3).map(|i| lab.pod_cidr(&format!("node-{i}"))).collect();

        // Each router holds every node's Pod CIDR; its own rack's with the node as next hop.
        converges("the routers to hold every Pod CIDR", Duration::from_secs(15), || {
            let (r1, r2) = (lab.birdc(1, &["show", "route"]), lab.birdc(2, &["show", "route"]));
            let want = [
                (&r1, &cidr[0], "via 192.168.1.11"),
                (&r1, &cidr[2], "via 192.168.1.13"),
                (&r2, &cidr[1], "via 192.168.2.12"),
                (&r1, &cidr[1], "via 192.168.0.2"),
                (&r2, &cidr[0], "via 192.168.0.1"),
            ];
            for (table, prefix, via) in want {
                let block = table.split(prefix.as_str()).nth(1).unwrap_or("");
                if !block.lines().take(2).any(|l| l.contains(via)) {
                    return Err(format!("{prefix} {via} missing:\nrouter-1:\n{r1}\nrouter-2:\n{r2}"));
                }
            }
            Ok(())
        });
        // node-1's routes: node-3 (same rack) directly, node-2 (other rack) via its router;
        // plain routes, learned by BGP, no tunnel device.
        converges("node-1's BGP routes", Duration::from_secs(10), || {
            let r = bgp_routes(&lab, "node-1");
            let ok = r.contains(&format!("{} via 192.168.1.254 dev eth0", cidr[1]))
                && r.contains(&format!("{} via 192.168.1.13 dev eth0", cidr[2]));
            if ok { Ok(()) } else { Err(format!("{r}\n{}", lab.dump(&["node-1"]))) }
        });
        assert!(!lab.ip("node-1", &["link"]).contains("flatnet.1"), "no VXLAN device with bgp");

        // Across racks: the server sees the client's pod IP; the core carries plain pod IPs.
        lab.apply(&pods("node-1", "node-2"));
        let ips = lab.ready_ips(&["client", "server"]);
        let underlay = lab.ns("underlay");
        let cap = Capture::start(&underlay, "core0", "udp port 8472 or net 10.244.0.0/16");
        let body = http_get(&lab.pod_netns("client"), &ips[1]).unwrap();
        let seen = cap.stop();
        assert_eq!(seen_client_ip(&body), ips[0], "the server must see the client's pod IP: {body}");
        assert!(!seen.contains(".8472"), "VXLAN on the core:\n{seen}");
        assert!(seen.contains(&format!("{}.", ips[0])) && seen.contains(&format!("> {}.80", ips[1])), "{seen}");

        // `flatnet trace --probe`: the BGP route on node-1 and the peer it came from, each
        // router's hop as BIRD has it, no encapsulation; the probe agrees.
        let out = Command::new(flatnet())
            .args(["lab", "trace", "client", "server:80", "--probe", "--state-dir"])
            .arg(lab.state())
            .output()
            .unwrap();
        let trace = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{trace}{}", String::from_utf8_lossy(&out.stderr));
        for want in [
            "learned by BGP from rack-1: next hop 192.168.1.254",
            "┌ router-1",
            "via 192.168.0.2 on core",
            "┌ router-2",
            "via 192.168.2.12 on eth0",
            "probe agrees",
        ] {
            assert!(trace.contains(want), "{want:?} missing:\n{trace}");
        }
        assert!(!trace.contains("VXLAN"), "{trace}");

        // `flatnet status`: the session with the rack's router.
        let status = lab.status();
        assert!(
            status.contains("bgp       AS 64513, router ID 192.168.1.11, peers: rack-1=192.168.1.254:65001"),
            "{status}"
        );
        assert!(status.contains("rack-1") && status.contains("Established"), "{status}");

        // Agents SIGKILLed and restarted under a stream across racks: no request fails
        // (graceful restart: the routers keep their routes, the agents keep the kernel's).
        let stream = Stream::start(lab.pod_netns("client"), ips[1].clone());
        for node in ["node-1", "node-2"] {
            let pid = lab.agent_pid(node);
            kill(pid);
            converges(&format!("{node}'s agent to come back and re-establish"), Duration::from_secs(15), || {
                let now = lab.agent_pid(node);
                let established = lab.birdc(if node == "node-1" { 1 } else { 2 }, &["show", "protocols"]);
                if now != pid
                    && established
                        .lines()
                        // Each node's session (node1, node2, …), not the passive template "node".
                        .filter(|l| l.strip_prefix("node").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit())))
                        .all(|l| l.contains("Established"))
                {
                    Ok(())
                } else {
                    Err(established)
                }
            });
        }
        std::thread::sleep(Duration::from_secs(1)); // traffic after the new sessions' first updates
        let (ok, errors) = stream.finish();
        assert!(ok > 20, "too few requests made: {ok}");
        assert!(errors.is_empty(), "requests failed while agents restarted: {errors:?}");

        // node-3 disappears (its link cut, its processes gone, no goodbye): its prefix is
        // withdrawn everywhere within the hold time (9 s).
        let t = Instant::now();
        lab.ip("node-3", &["link", "set", "eth0", "down"]);
        let kubelet: i32 =
            std::fs::read_to_string(lab.state().join("nodes/node-3/kubelet.pid")).unwrap().trim().parse().unwrap();
        kill(kubelet);
        kill(lab.agent_pid("node-3"));
        converges("node-3's Pod CIDR to be withdrawn everywhere", Duration::from_secs(15), || {
            let seen = [
                lab.birdc(1, &["show", "route"]),
                lab.birdc(2, &["show", "route"]),
                bgp_routes(&lab, "node-1"),
                bgp_routes(&lab, "node-2"),
            ];
            match seen.iter().find(|s| s.contains(cidr[2].as_str())) {
                Some(s) => Err(s.clone()),
                None => Ok(()),
            }
        });
        let took = t.elapsed();
        assert!(took < Duration::from_secs(13), "withdrawn after {took:?}, hold time 9 s");

        // The node comes back as a new Node (`lab up` starts its kubelet again): its Pod
        // CIDR is announced and routed everywhere; nothing else restarts.
        let (agent1, agent2) = (lab.agent_pid("node-1"), lab.agent_pid("node-2"));
        let kubectl = Command::new("kubectl")
            .env("KUBECONFIG", lab.state().join("kubeconfig"))
            .args(["delete", "node", "node-3"])
            .output()
            .unwrap();
        assert!(kubectl.status.success(), "{}", String::from_utf8_lossy(&kubectl.stderr));
        std::thread::sleep(Duration::from_secs(3)); // BIRD takes a failed neighbour again after its error wait
        common::lab::run(
            Command::new(flatnet())
                .args(["lab", "up", "--nodes", "3", "--backend", "bgp", "--racks", "2"])
                .args(["--listen", &format!("127.0.0.1:{}", lab.port), "--state-dir"])
                .arg(lab.state()),
        );
        let cidr3 = lab.pod_cidr("node-3");
        converges("node-3's Pod CIDR routed on node-1 and node-2", Duration::from_secs(10), || {
            let seen = (bgp_routes(&lab, "node-1"), bgp_routes(&lab, "node-2"));
            if seen.0.contains(&cidr3) && seen.1.contains(&cidr3) { Ok(()) } else { Err(format!("{seen:?}")) }
        });
        assert_eq!((lab.agent_pid("node-1"), lab.agent_pid("node-2")), (agent1, agent2), "no agent restarted");
        lab.down_and_check_clean();
    });
}

#[test]
fn bgp_full_mesh_on_one_segment() {
    sandboxed("bgp_full_mesh_on_one_segment", |_| {
        let lab = Lab::up_with(3, &["--backend", "bgp"]);
        let cidr: Vec<String> = (1..=3).map(|i| lab.pod_cidr(&format!("node-{i}"))).collect();
        converges("node-1 to learn both peers' Pod CIDRs", Duration::from_secs(10), || {
            let r = bgp_routes(&lab, "node-1");
            let ok = r.contains(&format!("{} via 192.168.1.12 dev eth0", cidr[1]))
                && r.contains(&format!("{} via 192.168.1.13 dev eth0", cidr[2]));
            if ok { Ok(()) } else { Err(r) }
        });
        let status = lab.status();
        assert!(status.contains("AS 64512, router ID 192.168.1.11, peers: mesh"), "{status}");
        assert_eq!(status.matches("Established").count(), 6, "3 nodes, 2 sessions each:\n{status}");

        // Metrics: each session, up, with prefixes both ways.
        let metrics =
            http_get_path(&lab.ns("node-1"), "127.0.0.1:9402".parse().unwrap(), "/metrics").unwrap_or_default();
        for want in [
            r#"flatnet_bgp_session_established{peer="192.168.1.12",name="node-2"} 1"#,
            r#"flatnet_bgp_prefixes_received{peer="192.168.1.13",name="node-3"} 1"#,
            r#"flatnet_bgp_prefixes_sent{peer="192.168.1.12",name="node-2"} 1"#,
        ] {
            assert!(metrics.contains(want), "{want} missing:\n{metrics}");
        }

        lab.apply(&pods("node-1", "node-3"));
        let ips = lab.ready_ips(&["client", "server"]);
        let body = http_get(&lab.pod_netns("client"), &ips[1]).unwrap();
        assert_eq!(seen_client_ip(&body), ips[0], "{body}");

        // Port 179 taken on node-3 when its agent starts: the Node's condition says so;
        // once freed, the agent speaks BGP again.
        let node3 = lab.ns("node-3");
        let mut taken = None;
        for _ in 0..20 {
            // The killed agent's socket closes once it has exited; the kubelet starts the
            // next agent soon after, which may bind first: then it is killed in turn.
            let pid = nix::unistd::Pid::from_raw(lab.agent_pid("node-3"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let until = std::time::Instant::now() + Duration::from_secs(1);
            while taken.is_none() && std::time::Instant::now() < until {
                match flatnet_kernel::netns::run_in(&node3, || std::net::TcpListener::bind("0.0.0.0:179")) {
                    Ok(Ok(l)) => taken = Some(l),
                    _ => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            if taken.is_some() {
                break;
            }
        }
        let taken = taken.expect("port 179 taken between two agent runs");
        converges("node-3's condition to say port 179 is taken", Duration::from_secs(15), || {
            let msg = network_message(&lab, "node-3");
            if msg.contains("cannot listen for BGP on 0.0.0.0:179: the address is already in use") {
                Ok(())
            } else {
                Err(msg)
            }
        });
        drop(taken);
        converges("node-3 to speak BGP again", Duration::from_secs(15), || {
            let msg = network_message(&lab, "node-3");
            if msg.starts_with("bgp: 2 peer route(s)") { Ok(()) } else { Err(msg) }
        });

        // A route deleted by hand comes back.
        lab.ip("node-1", &["route", "del", &cidr[2]]);
        converges("the deleted route to come back", Duration::from_secs(5), || {
            let r = bgp_routes(&lab, "node-1");
            if r.contains(&cidr[2]) { Ok(()) } else { Err(r) }
        });

        // A peer that is not there: `doctor` names the session and why it is down.
        let kubectl = |args: &[&str]| {
            Command::new("kubectl").env("KUBECONFIG", lab.state().join("kubeconfig")).args(args).output().unwrap()
        };
        let out =
            kubectl(&["annotate", "--overwrite", "node", "node-2", "flatnet.dev/bgp-peers=ghost=192.168.1.99:65001"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        converges("doctor to name the ghost session", Duration::from_secs(20), || {
            let out = Command::new(flatnet())
                .args(["lab", "doctor", "--node", "node-2", "--state-dir"])
                .arg(lab.state())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let line = text.lines().find(|l| l.contains("BGP session with ghost (192.168.1.99)")).unwrap_or("");
            if line.contains("no route to host") || line.contains("timed out") { Ok(()) } else { Err(text) }
        });
        let out = kubectl(&["annotate", "--overwrite", "node", "node-2", "flatnet.dev/bgp-peers=mesh"]);
        assert!(out.status.success());
        converges("node-2 back in the mesh", Duration::from_secs(10), || {
            let r = bgp_routes(&lab, "node-2");
            if r.contains(&cidr[0]) && r.contains(&cidr[2]) { Ok(()) } else { Err(r) }
        });

        // Bad settings on the Node: refused with the reason, nothing else changes.
        let before = bgp_routes(&lab, "node-2");
        let out = kubectl(&["annotate", "--overwrite", "node", "node-2", "flatnet.dev/bgp-as=0"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        converges("node-2's condition to name the bad AS", Duration::from_secs(10), || {
            let msg = network_message(&lab, "node-2");
            if msg.contains("flatnet.dev/bgp-as: AS 0 is reserved") { Ok(()) } else { Err(msg) }
        });
        assert_eq!(bgp_routes(&lab, "node-2"), before, "a refused setting changes nothing");
        let out = kubectl(&["annotate", "--overwrite", "node", "node-2", "flatnet.dev/bgp-peers=300.1.1.1:65001"]);
        assert!(out.status.success());
        converges("node-2's condition to name the bad peer", Duration::from_secs(10), || {
            let msg = network_message(&lab, "node-2");
            // The AS is still the first complaint; both are refused.
            if msg.contains("flatnet.dev/bgp") { Ok(()) } else { Err(msg) }
        });
        assert_eq!(bgp_routes(&lab, "node-2"), before, "a refused setting changes nothing");
        lab.down_and_check_clean();
    });
}

#[test]
fn cross_subnet_vxlan_routes_directly_within_a_rack() {
    sandboxed("cross_subnet_vxlan_routes_directly_within_a_rack", |_| {
        let lab = Lab::up_with(3, &["--backend", "vxlan", "--racks", "2", "--cross-subnet"]);
        let cidr: Vec<String> = (1..=3).map(|i| lab.pod_cidr(&format!("node-{i}"))).collect();
        let r = lab.ip("node-1", &["route"]);
        assert!(r.contains(&format!("{} via 192.168.1.13 dev eth0", cidr[2])), "same rack: direct\n{r}");
        assert!(r.contains(&format!("{} via", cidr[1])) && r.contains("dev flatnet.1"), "other rack: VXLAN\n{r}");
        lab.apply(&pods("node-1", "node-2"));
        let ips = lab.ready_ips(&["client", "server"]);
        let body = http_get(&lab.pod_netns("client"), &ips[1]).unwrap();
        assert_eq!(seen_client_ip(&body), ips[0], "{body}");
        lab.down_and_check_clean();
    });
}

/// `lab demo --racks 2 --backend bgp`: every check passes across the racks, and the
/// routers' tables hold each node's Pod CIDR.
#[test]
fn the_demo_across_racks_with_bgp() {
    sandboxed("the_demo_across_racks_with_bgp", |_| {
        let dir = tempfile::tempdir().unwrap();
        let port = common::lab::free_port();
        let out = Command::new(flatnet())
            .args(["lab", "demo", "--racks", "2", "--backend", "bgp", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = Command::new(flatnet()).args(["lab", "down", "--state-dir"]).arg(dir.path()).output();
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let checks: Vec<&str> = text.lines().filter(|l| l.contains(" PASS ") || l.contains(" FAIL ")).collect();
        assert_eq!(checks.len(), 7, "{text}");
        assert!(checks.iter().all(|l| l.contains(" PASS ")), "{text}");
        assert!(text.contains("(proto 71, learned by BGP): routed natively, no encapsulation"), "{text}");
        let table = text.split("the racks' routers (BIRD 2)").nth(1).unwrap_or("");
        assert_eq!(table.lines().filter(|l| l.contains(" via ") && l.contains("AS path")).count(), 6, "{text}");
    });
}

#[test]
fn host_gw_across_racks_routes_only_its_own_rack_and_says_why() {
    sandboxed("host_gw_across_racks_routes_only_its_own_rack_and_says_why", |_| {
        let lab = Lab::up_with(3, &["--backend", "host-gw", "--racks", "2"]);
        let status = lab.status();
        let node1 = status.split("node-1 (host-gw").nth(1).unwrap_or("");
        assert!(node1.contains("peer      node-3   192.168.1.13    routed"), "{status}");
        assert!(
            node1.contains("NOT ROUTED: host-gw needs every node on one L2 segment, but 192.168.2.12 is outside this node's 192.168.1.0/24"),
            "{status}"
        );
        lab.down_and_check_clean();
    });
}
