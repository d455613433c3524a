//! flatnet installed on the lab as an operator installs it, from deploy/flatnet.yaml:
//! the agents are the DaemonSet's pods (one per node, hostNetwork, their logs through
//! `kubectl logs`), the init container has put the plugin and its configuration in each
//! node's CNI directories, and deleting an agent pod brings a new one without losing a
//! packet of the traffic already flowing.

mod common;

use common::kubectl::kubectl;
use common::lab::Lab;
use common::sandboxed;
use std::time::Duration;

const PAIR: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: server}
spec:
  nodeName: node-2
  containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
"#;

/// The agent pods as `kubectl get pods -o wide` shows them: (name, ready, status, node).
fn agent_pods(lab: &Lab) -> Vec<(String, String, String, String)> {
    let out = common::kubectl::ok(kubectl(
        lab,
        &["get", "pods", "-n", "kube-system", "-l", "k8s-app=flatnet-node", "-o", "wide", "--no-headers"],
    ));
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string(), f[6].to_string())
        })
        .collect()
}

#[test]
fn the_manifest_runs_an_agent_pod_per_node_and_an_agent_pod_can_be_replaced_without_loss() {
    sandboxed("the_manifest_runs_an_agent_pod_per_node_and_an_agent_pod_can_be_replaced_without_loss", |_| {
        let lab = Lab::up(2, "vxlan");
        // One Ready agent per node, on the node's own address.
        let pods = agent_pods(&lab);
        let mut nodes: Vec<&str> = pods.iter().map(|p| p.3.as_str()).collect();
        nodes.sort();
        assert_eq!(nodes, ["node-1", "node-2"], "{pods:?}");
        assert!(pods.iter().all(|p| p.1 == "1/1" && p.2 == "Running"), "{pods:?}");
        let wide = common::kubectl::ok(kubectl(&lab, &["get", "pods", "-n", "kube-system", "-o", "wide"]));
        assert!(wide.contains("192.168.1.11") && wide.contains("192.168.1.12"), "hostNetwork: {wide}");
        // The init container installed the plugin and its configuration, atomically named.
        for node in ["node-1", "node-2"] {
            let root = lab.state().join("nodes").join(node).join("host");
            assert!(root.join("opt/cni/bin/flatnet").is_file(), "{node}: no plugin");
            let conf = std::fs::read_to_string(root.join("etc/cni/net.d/10-flatnet.conflist")).unwrap();
            assert!(conf.contains("\"type\": \"flatnet\""), "{conf}");
        }
        let logs = common::kubectl::ok(kubectl(&lab, &["logs", "-n", "kube-system", "-l", "k8s-app=flatnet-node"]));
        assert!(logs.contains("INFO"), "the agents' logs: {logs}");
        let args = common::kubectl::ok(kubectl(
            &lab,
            &[
                "get",
                "pods",
                "-n",
                "kube-system",
                "-l",
                "k8s-app=flatnet-node",
                "-o",
                "jsonpath={.items[0].spec.containers[0].args}",
            ],
        ));
        assert!(args.contains("--backend=$(FLATNET_BACKEND)"), "the manifest's own flags: {args}");

        // Traffic across the nodes while node-1's agent pod is deleted and replaced.
        lab.apply(PAIR);
        let ips = lab.ready_ips(&["server", "client"]);
        let (old, ..) = pods.iter().find(|p| p.3 == "node-1").cloned().unwrap();
        let old_pid = lab.agent_pid("node-1");
        let server_ip = ips[0].clone();
        let ping = std::thread::scope(|s| {
            let ping =
                s.spawn(|| lab.exec("client", &["ping", "-q", "-c", "600", "-i", "0.02", "-W", "1", &server_ip]));
            std::thread::sleep(Duration::from_millis(1500));
            common::kubectl::ok(kubectl(&lab, &["delete", "pod", "-n", "kube-system", &old]));
            common::converges("a new Ready agent pod on node-1", Duration::from_secs(30), || {
                let now = agent_pods(&lab);
                match now.iter().find(|p| p.3 == "node-1") {
                    Some(p) if p.0 != old && p.1 == "1/1" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            });
            ping.join().unwrap()
        });
        let text = String::from_utf8_lossy(&ping.stdout);
        assert!(
            text.contains("600 packets transmitted, 600 packets received, 0% packet loss")
                || text.contains("600 packets transmitted, 600 received, 0% packet loss"),
            "{text}{}",
            String::from_utf8_lossy(&ping.stderr)
        );
        assert_ne!(lab.agent_pid("node-1"), old_pid, "a new agent process");
        lab.down_and_check_clean();
    });
}
