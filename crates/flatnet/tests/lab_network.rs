//! The pod network end to end in a real lab (control plane, underlay, nodes, kubelets,
//! agents), inside a sandbox: same-node traffic stays on the bridge, cross-node traffic
//! crosses the underlay as VXLAN (or plain routed packets with host-gw) with the
//! client's pod IP preserved, traffic leaving the cluster is masqueraded, the agent
//! repairs whatever is deleted by hand, forgets removed nodes, and restarts without
//! failing a request. `lab down` leaves nothing.

mod common;

use common::lab::{Capture, Lab, flatnet, http_get, run, seen_client_ip};
use common::{converges, eventually, sandboxed};
use flatnet_kernel::{Netlink, link, neigh, netns, route};
use k8s_openapi::api::core::v1::Pod;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  nodeName: node-1
  containers:
  - name: busybox
    image: busybox:1.36
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: neighbor
spec:
  nodeName: node-1
  containers:
  - name: web
    image: nginx:1.25
    ports:
    - containerPort: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: server
spec:
  nodeName: node-2
  containers:
  - name: web
    image: nginx:1.25
    ports:
    - containerPort: 80
"#;

fn routes(node_ns: &Path) -> Vec<String> {
    netns::run_in(node_ns, || {
        let mut nl = Netlink::open().unwrap();
        route::list_owned(&mut nl).unwrap().iter().map(|r| r.dst.to_string()).collect()
    })
    .unwrap()
}

fn vxlan_entries(node_ns: &Path) -> (usize, usize) {
    netns::run_in(node_ns, || {
        let mut nl = Netlink::open().unwrap();
        let Some(dev) = link::get(&mut nl, "flatnet.1").unwrap() else { return (0, 0) };
        (neigh::list_permanent(&mut nl, dev.index).unwrap().len(), neigh::list_fdb(&mut nl, dev.index).unwrap().len())
    })
    .unwrap()
}

fn ip_in(node_ns: &Path, args: &[&str]) {
    run(Command::new("nsenter").arg(format!("--net={}", node_ns.display())).arg("ip").args(args));
}

#[test]
fn vxlan_cluster_end_to_end() {
    sandboxed("vxlan_cluster_end_to_end", |_| {
        let lab = Lab::up(3, "vxlan");
        lab.apply(PODS);
        let ips = lab.ready_ips(&["client", "neighbor", "server"]);
        let (client_ip, neighbor_ip, server_ip) = (&ips[0], &ips[1], &ips[2]);
        let client_ns = lab.pod_netns("client");
        let underlay = lab.ns("underlay");

        // Same node: over the bridge; the underlay carries none of it.
        let cap = Capture::start(&underlay, "lab0", "udp port 8472 or net 10.244.0.0/16");
        let body = http_get(&client_ns, neighbor_ip).unwrap();
        let seen = cap.stop();
        assert_eq!(seen_client_ip(&body), *client_ip, "{body}");
        assert!(seen.trim().is_empty(), "same-node traffic crossed the underlay:\n{seen}");

        // Cross node, as every tutorial does it: wget from the client pod.
        let cap = Capture::start(&underlay, "lab0", "udp port 8472");
        let out = lab.exec("client", &["wget", "-qO-", "-T", "3", &format!("http://{server_ip}")]);
        let seen = cap.stop();
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "wget: {body}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(seen_client_ip(&body), *client_ip, "the server must see the client's pod IP: {body}");
        assert!(body.contains("node=node-2"), "{body}");
        let outer = seen.lines().find(|l| l.contains("192.168.1.11.") && l.contains("> 192.168.1.12.8472"));
        assert!(outer.is_some(), "no VXLAN packet from node-1 to node-2 on the underlay:\n{seen}");
        assert!(
            seen.contains(&format!("{client_ip}.")) && seen.contains(&format!("> {server_ip}.80")),
            "the VXLAN packets do not carry the pod-to-pod packet:\n{seen}"
        );

        // Leaving the cluster: masqueraded to the node's address. The outside host is an
        // address of the underlay namespace, on a documentation range.
        ip_in(&underlay, &["addr", "add", "203.0.113.10/32", "dev", "lo"]);
        let outside = netns::run_in(&underlay, || std::net::TcpListener::bind("203.0.113.10:8080").unwrap()).unwrap();
        let to = netns::run_in(&client_ns, || {
            TcpStream::connect_timeout(&"203.0.113.10:8080".parse().unwrap(), Duration::from_secs(3))
        })
        .unwrap()
        .expect("a pod reaches a host outside the cluster");
        let (_, from) = outside.accept().unwrap();
        drop(to);
        assert_eq!(from.ip().to_string(), "192.168.1.11", "traffic leaving the cluster is masqueraded to the node");

        // Repair: a route, an FDB entry, then the whole VXLAN device deleted by hand.
        let node1 = lab.ns("node-1");
        let before = lab.agent_pid("node-1");
        let node2_cidr = lab.pod_cidr("node-2");
        ip_in(&node1, &["route", "del", &node2_cidr, "proto", "70"]);
        eventually("the route to be restored", Duration::from_secs(3), || routes(&node1).len() == 2);
        let fdb = netns::run_in(&node1, || {
            let mut nl = Netlink::open().unwrap();
            let dev = link::get(&mut nl, "flatnet.1").unwrap().unwrap();
            neigh::list_fdb(&mut nl, dev.index).unwrap()[0]
        })
        .unwrap();
        let mac = fdb.0.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        run(Command::new("nsenter").arg(format!("--net={}", node1.display())).args([
            "bridge",
            "fdb",
            "del",
            &mac,
            "dev",
            "flatnet.1",
            "dst",
            &fdb.1.to_string(),
        ]));
        eventually("the FDB entry to be restored", Duration::from_secs(3), || vxlan_entries(&node1).1 == 2);
        ip_in(&node1, &["link", "del", "flatnet.1"]);
        eventually("flatnet.1, its routes and entries to be back", Duration::from_secs(3), || {
            routes(&node1).len() == 2 && vxlan_entries(&node1) == (2, 2)
        });
        converges("cross-node traffic after the repair", Duration::from_secs(3), || {
            http_get(&client_ns, server_ip).map(|_| ()).map_err(|e| format!("{e}\n{}", lab.dump(&["node-1", "node-2"])))
        });
        assert_eq!(lab.agent_pid("node-1"), before, "the agent repaired without restarting");

        // Agent restarts under a stream of requests: not one fails.
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stream = {
            let (stop, ok, failed, ns, ip) =
                (stop.clone(), ok.clone(), failed.clone(), client_ns.clone(), server_ip.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match http_get(&ns, &ip) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.push(e.to_string());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                errors
            })
        };
        for round in 0..2 {
            for node in ["node-1", "node-2"] {
                let pid = lab.agent_pid(node);
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
                eventually(&format!("{node}'s agent to be restarted (round {round})"), Duration::from_secs(5), || {
                    flatnet_lab::layout::Layout::new(lab.state()).agent(node).is_some_and(|p| p != pid)
                });
            }
            std::thread::sleep(Duration::from_millis(1500)); // a resync pass of each new agent
        }
        stop.store(true, Ordering::Relaxed);
        let errors = stream.join().unwrap();
        assert!(ok.load(Ordering::Relaxed) > 50, "too few requests made: {}", ok.load(Ordering::Relaxed));
        assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed while agents restarted: {errors:?}");

        // Node removal: the others forget it.
        let node2 = lab.ns("node-2");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(lab.client(&rt));
        rt.block_on(nodes.delete("node-3", &Default::default())).unwrap();
        converges("node-3's route, neighbour and FDB entry to disappear", Duration::from_secs(5), || {
            let seen = (routes(&node1), routes(&node2), vxlan_entries(&node1), vxlan_entries(&node2));
            let ok = seen.0 == [node2_cidr.clone()] && seen.1.len() == 1 && seen.2 == (1, 1) && seen.3 == (1, 1);
            if ok { Ok(()) } else { Err(format!("{seen:?}")) }
        });
        assert!(lab.status().contains("node-1"));

        // Containers of one pod share its namespace: the sidecar reaches the server on localhost.
        lab.apply(SIDECAR);
        lab.ready_ips(&["pair"]);
        let log = lab.pod_dir("pair").join("sidecar.log");
        eventually("the sidecar to reach its neighbour container on localhost", Duration::from_secs(10), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("pair"))
        });

        // Deleting a pod stops it and runs CNI DEL: no namespace, no veth, no reservation.
        let neighbor_ns = lab.pod_netns("neighbor");
        let reservations = || {
            std::fs::read_dir(lab.state().join("nodes/node-1/host/var/lib/cni/flatnet/flatnet/ips"))
                .unwrap()
                .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
                .count()
        };
        let (veths, reserved) = (host_veths(&node1), reservations());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let pods: kube::Api<Pod> = kube::Api::namespaced(lab.client(&rt), "default");
        rt.block_on(pods.delete("neighbor", &Default::default())).unwrap();
        eventually("the deleted pod to be gone from the API", Duration::from_secs(10), || {
            rt.block_on(pods.get_opt("neighbor")).unwrap().is_none()
        });
        assert!(!neighbor_ns.exists(), "the pod's network namespace is removed");
        eventually("its host veth to be deleted", Duration::from_secs(3), || host_veths(&node1) == veths - 1);
        assert_eq!(reservations(), reserved - 1, "its address is released");
        lab.down_and_check_clean();
    });
}

const SIDECAR: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: pair
spec:
  nodeName: node-2
  containers:
  - name: web
    image: nginx:1.25
    ports:
    - containerPort: 8080
  - name: sidecar
    image: busybox:1.36
    command: ["sh", "-c", "until wget -qO- http://127.0.0.1:8080/hostname; do sleep 0.2; done; sleep 3600"]
"#;

fn host_veths(node_ns: &Path) -> usize {
    common::in_netns(node_ns, common::pod_veths).len()
}

#[test]
fn host_gw_cluster_routes_pod_ips_unencapsulated() {
    sandboxed("host_gw_cluster_routes_pod_ips_unencapsulated", |_| {
        let lab = Lab::up(2, "host-gw");
        lab.apply(PODS);
        let ips = lab.ready_ips(&["client", "server"]);
        let (client_ip, server_ip) = (&ips[0], &ips[1]);
        let client_ns = lab.pod_netns("client");
        let cap = Capture::start(&lab.ns("underlay"), "lab0", "udp port 8472 or net 10.244.0.0/16");
        let body = http_get(&client_ns, server_ip).unwrap();
        let seen = cap.stop();
        assert_eq!(seen_client_ip(&body), *client_ip, "{body}");
        assert!(!seen.contains(".8472"), "host-gw must not encapsulate:\n{seen}");
        assert!(
            seen.lines().any(|l| l.contains(&format!("{client_ip}.")) && l.contains(&format!("> {server_ip}.80"))),
            "the underlay must carry the plain pod-to-pod packets:\n{seen}"
        );
        // A node off the L2 segment is refused with a reason the operator sees.
        lab.apply(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: far-away\n  annotations:\n    flatnet.dev/backend: host-gw\n    flatnet.dev/underlay-ip: 198.51.100.7\n",
        );
        eventually("lab status to name the node off the segment", Duration::from_secs(5), || {
            let s = lab.status();
            s.contains("far-away") && s.contains("one L2 segment")
        });
        let node1 = lab.ns("node-1");
        assert_eq!(routes(&node1), [ipnet_str(server_ip)], "no route to the far node");
        lab.down_and_check_clean();
    });
}

fn ipnet_str(pod_ip: &str) -> String {
    let mut parts: Vec<&str> = pod_ip.split('.').take(3).collect();
    parts.push("0/24");
    parts.join(".")
}

#[test]
fn lab_down_removes_a_lab_whose_processes_were_killed() {
    sandboxed("lab_down_removes_a_lab_whose_processes_were_killed", |_| {
        let lab = Lab::up(1, "vxlan");
        let kubelet: i32 =
            std::fs::read_to_string(lab.state().join("nodes/node-1/kubelet.pid")).unwrap().trim().parse().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(kubelet), nix::sys::signal::Signal::SIGKILL).unwrap();
        eventually("lab status to show the dead kubelet", Duration::from_secs(5), || {
            lab.status().contains("NOT RUNNING")
        });
        // An agent that cannot find its underlay says so, retries, and lab status shows it.
        let agent = lab.agent_pid("node-1");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent), nix::sys::signal::Signal::SIGKILL).unwrap();
        let mut broken = Command::new("nsenter")
            .arg(format!("--net={}", lab.ns("node-1").display()))
            .arg(flatnet())
            .args(["agent", "--node-name", "node-1", "--iface", "missing0", "--kubeconfig"])
            .arg(lab.state().join("nodes/node-1/kubeconfig"))
            .arg("--subnet-file")
            .arg(lab.state().join("nodes/node-1/subnet.env"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        eventually("lab status to show the agent's error", Duration::from_secs(10), || {
            lab.status().contains("DOWN: underlay interface missing0 not found on this node")
        });
        assert!(broken.try_wait().unwrap().is_none(), "the agent keeps retrying");
        let start = Instant::now();
        lab.down_and_check_clean();
        let _ = broken.wait();
        assert!(start.elapsed() < Duration::from_secs(10));
    });
}

#[test]
fn a_restarted_kubelet_adopts_its_pods() {
    sandboxed("a_restarted_kubelet_adopts_its_pods", |_| {
        let lab = Lab::up(1, "vxlan");
        let web = |n: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {n}}}\nspec:\n  nodeName: node-1\n  containers: [{{name: web, image: nginx:1.25, ports: [{{containerPort: 80}}]}}]\n"
            )
        };
        lab.apply(&format!("{}---\n{}", web("web-a"), web("web-b")));
        let ips = lab.ready_ips(&["web-a", "web-b"]);
        let pid_of = |pod: &str| -> i32 {
            let text = std::fs::read_to_string(lab.pod_dir(pod).join("pids.json")).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["web"].as_i64().unwrap() as i32
        };
        let (a, b) = (pid_of("web-a"), pid_of("web-b"));
        let kubelet: i32 =
            std::fs::read_to_string(lab.state().join("nodes/node-1/kubelet.pid")).unwrap().trim().parse().unwrap();
        let kill = |pid: i32| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap()
        };
        kill(kubelet);
        kill(b); // a container that dies while no kubelet watches
        // `lab up` again starts what is missing: the kubelet.
        run(Command::new(flatnet())
            .args(["lab", "up", "--nodes", "1", "--listen", &format!("127.0.0.1:{}", lab.port), "--state-dir"])
            .arg(lab.state()));
        let node1 = lab.ns("node-1");
        converges("web-b's container to be started again, web-a's adopted", Duration::from_secs(10), || {
            let (now_a, now_b) = (pid_of("web-a"), pid_of("web-b"));
            match (now_a == a, now_b != b && Path::new(&format!("/proc/{now_b}")).exists()) {
                (true, true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        for ip in &ips {
            converges("the pods to answer", Duration::from_secs(5), || {
                netns::run_in(&node1, || http_get_here(ip)).unwrap().map(|_| ()).map_err(|e| e.to_string())
            });
        }
        assert_eq!(lab.ready_ips(&["web-a", "web-b"]), ips, "same addresses after the restart");
        lab.down_and_check_clean();
    });
}

fn http_get_here(ip: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&format!("{ip}:80").parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A failed `flatnet …` run: its stderr.
fn refused(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should have failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    sandboxed("bad_input_is_refused_and_changes_nothing", |_| {
        let fresh = tempfile::tempdir().unwrap();
        let state = fresh.path().join("lab");
        let err = refused(Command::new(flatnet()).args(["lab", "up", "--nodes", "0", "--state-dir"]).arg(&state));
        assert!(err.contains("--nodes must be between 1 and 200"), "{err}");
        let err = refused(Command::new(flatnet()).args(["lab", "up", "--backend", "gre", "--state-dir"]).arg(&state));
        assert!(err.contains("unknown backend \"gre\": use vxlan, host-gw or bgp"), "{err}");
        let err = refused(Command::new(flatnet()).args(["lab", "status", "--state-dir"]).arg(&state));
        assert!(err.contains("the lab is not up"), "{err}");
        assert!(!state.exists(), "a refused command made the state directory");

        let lab = Lab::up(1, "vxlan");
        let err = refused(
            Command::new(flatnet())
                .args(["lab", "up", "--nodes", "2", "--listen", &format!("127.0.0.1:{}", lab.port), "--state-dir"])
                .arg(lab.state()),
        );
        assert!(err.contains("already up with 1 node(s)") && err.contains("lab down"), "{err}");
        assert!(!lab.ns("node-2").exists(), "the refused lab up added a node");

        let file = lab.state().join("bad.yaml");
        let apply = |text: &str| {
            std::fs::write(&file, text).unwrap();
            refused(Command::new(flatnet()).args(["lab", "apply", "-f"]).arg(&file).arg("--state-dir").arg(lab.state()))
        };
        let good =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: good}\nspec: {containers: [{name: c, image: busybox}]}\n";
        let err = apply(&format!("{good}---\nkind: Pod\nmetadata: [unclosed\n"));
        assert!(err.contains("not valid YAML"), "{err}");
        let err = apply(&format!("{good}---\napiVersion: v1\nkind: Frobnicator\nmetadata: {{name: x}}\n"));
        assert!(err.contains("object 2 of the file") && err.contains("does not serve Frobnicator"), "{err}");
        let err = apply(&format!("{good}---\napiVersion: v1\nkind: Pod\nmetadata: {{labels: {{a: b}}}}\n"));
        assert!(err.contains("the Pod has no metadata.name"), "{err}");
        // A NetworkPolicy the API would refuse is refused, with the field and the reason.
        let netpol = |spec: &str| {
            format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad}}\nspec: {spec}\n")
        };
        let err = apply(&netpol("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}"));
        assert!(err.contains("spec.ingress[0].from[0].ipBlock.cidr") && err.contains("is not a CIDR"), "{err}");
        let err = apply(&netpol("{podSelector: {}, ingress: [{ports: [{endPort: 90}]}]}"));
        assert!(err.contains("spec.ingress[0].ports[0].endPort: needs a numeric port"), "{err}");
        let err = apply(&netpol("{podSelector: {matchExpressions: [{key: a, operator: Near}]}}"));
        assert!(err.contains("operator must be In, NotIn, Exists or DoesNotExist"), "{err}");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let netpols: kube::Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
            kube::Api::namespaced(lab.client(&rt), "default");
        assert!(
            rt.block_on(netpols.list(&Default::default())).unwrap().items.is_empty(),
            "a refused policy was stored"
        );
        let pods: kube::Api<Pod> = kube::Api::namespaced(lab.client(&rt), "default");
        let listed = rt.block_on(pods.list(&Default::default())).unwrap();
        assert!(
            listed.items.is_empty(),
            "a refused apply created {:?}",
            listed.items.iter().map(|p| &p.metadata.name).collect::<Vec<_>>()
        );

        let err = refused(
            Command::new(flatnet())
                .args(["lab", "exec", "nosuch", "--state-dir"])
                .arg(lab.state())
                .args(["--", "true"]),
        );
        assert!(err.contains("no running pod default/nosuch"), "{err}");
        lab.down_and_check_clean();
    });
}
