//! The lab on the upstream control plane (kube-apiserver on etcd, kube-controller-manager,
//! kube-scheduler, from `scripts/kubernetes`): nodes registered by the lab kubelets with
//! their own certificates and kept alive by Leases, Pod CIDRs from the controller
//! manager's node IPAM, the demo's every path (pod to pod, Service, DNS, NetworkPolicy),
//! kubectl's Deployment workflow, `kubectl logs` and `kubectl exec` (with a TTY) through
//! the kubelet API, the agents' least privilege, and a clean `lab down`.
//! Without the components built the tests say SKIPPED (CI builds them).

mod common;

use common::lab::{Lab, flatnet, free_port};
use common::{converges, sandboxed};
use std::process::Command;
use std::time::Duration;

fn built() -> Option<String> {
    ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        .iter()
        .find_map(|c| flatnet_lab::upstream::binary(c).err())
}

/// kubectl as the lab's admin, from the host; or, with `kubeconfig`, as one of node-1's
/// processes, from inside node-1 (whose kubeconfigs name the API on the underlay).
fn kubectl(lab: &Lab, kubeconfig: Option<&std::path::Path>, args: &[&str]) -> std::process::Output {
    let mut cmd = match kubeconfig {
        None => {
            let mut c = Command::new("kubectl");
            c.env("KUBECONFIG", lab.state().join("kubeconfig"));
            c
        }
        Some(kc) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", lab.ns("node-1").display())).arg("kubectl").env("KUBECONFIG", kc);
            c
        }
    };
    cmd.args(args).output().unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_lab_runs_on_the_upstream_control_plane() {
    let test = "the_lab_runs_on_the_upstream_control_plane";
    if let Some(why) = built() {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    sandboxed(test, |_| {
        let lab = Lab::up_with(3, &["--control-plane", "kubernetes"]);
        // The real API: its version, Nodes with Pod CIDRs from node IPAM, Leases renewed.
        let version = ok(kubectl(&lab, None, &["version", "-o", "json"]));
        assert!(version.contains("\"gitVersion\": \"v1.37.2\""), "{version}");
        let cidrs = ok(kubectl(&lab, None, &["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]));
        assert_eq!(cidrs.split_whitespace().count(), 3, "{cidrs}");
        assert!(cidrs.split_whitespace().all(|c| c.starts_with("10.244.") && c.ends_with("/24")), "{cidrs}");
        converges("a Lease per node", Duration::from_secs(15), || {
            let leases = ok(kubectl(&lab, None, &["get", "leases", "-n", "kube-node-lease", "-o", "name"]));
            if leases.lines().count() == 3 { Ok(()) } else { Err(leases) }
        });

        // The demo's every path: pod to pod across nodes, the Service, DNS, NetworkPolicy.
        let out = Command::new(flatnet())
            .args(["lab", "demo", "--control-plane", "kubernetes", "--listen", &format!("127.0.0.1:{}", lab.port)])
            .arg("--state-dir")
            .arg(lab.state())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let checks: Vec<&str> = text.lines().filter(|l| l.contains(" PASS ") || l.contains(" FAIL ")).collect();
        assert_eq!(checks.len(), 7, "{text}");
        assert!(checks.iter().all(|l| l.contains(" PASS ")), "{text}");

        // kubectl's Deployment workflow: the pods spread over the nodes, the Service's
        // EndpointSlice (from kube-controller-manager) lists them all, and scaling follows.
        ok(kubectl(&lab, None, &["create", "deployment", "web", "--image=nginx", "--replicas=3"]));
        ok(kubectl(&lab, None, &["expose", "deployment", "web", "--port=80"]));
        converges("3 web pods Ready and in the Service's endpoints", Duration::from_secs(60), || {
            let eps = String::from_utf8_lossy(
                &kubectl(
                    &lab,
                    None,
                    &[
                        "get",
                        "endpointslices",
                        "-l",
                        "kubernetes.io/service-name=web",
                        "-o",
                        "jsonpath={.items[*].endpoints[*].addresses[*]}",
                    ],
                )
                .stdout,
            )
            .into_owned();
            if eps.split_whitespace().count() == 3 { Ok(()) } else { Err(eps) }
        });
        let nodes =
            ok(kubectl(&lab, None, &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.nodeName}"]));
        let distinct: std::collections::BTreeSet<&str> = nodes.split_whitespace().collect();
        assert!(distinct.len() >= 2, "the scheduler spreads the Deployment: {nodes}");
        // The Service reaches every one of them, by the name the cluster DNS gives it.
        // (A bounded poll: the nodes' agents program the Service's endpoints a moment
        // after the EndpointSlice lists them.)
        let mut seen = std::collections::BTreeSet::new();
        converges("web.default to reach all three pods", Duration::from_secs(30), || {
            let out = Command::new(flatnet())
                .args(["lab", "exec", "client", "-n", "flatnet-demo", "--state-dir"])
                .arg(lab.state())
                .args(["--", "wget", "-qO-", "-T", "2", "http://web.default"])
                .output()
                .unwrap();
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(pod) = body.split_whitespace().find_map(|w| w.strip_prefix("pod=")) {
                seen.insert(pod.to_string());
            }
            if seen.len() == 3 { Ok(()) } else { Err(format!("reached {seen:?}")) }
        });
        ok(kubectl(&lab, None, &["scale", "deployment", "web", "--replicas=1"]));
        converges("one endpoint after scaling down", Duration::from_secs(60), || {
            let eps = String::from_utf8_lossy(
                &kubectl(&lab, None, &["get", "endpoints", "web", "-o", "jsonpath={.subsets[*].addresses[*].ip}"])
                    .stdout,
            )
            .into_owned();
            if eps.split_whitespace().count() == 1 { Ok(()) } else { Err(eps) }
        });

        // A hostNetwork pod (as a CNI's DaemonSet runs) is in node-2's own namespace, at
        // node-2's address, with no namespace or CNI call of its own.
        lab.apply(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: hostweb}\nspec:\n  nodeName: node-2\n  hostNetwork: true\n  containers: [{name: web, image: nginx, ports: [{containerPort: 8080}]}]\n",
        );
        assert_eq!(lab.ready_ips(&["hostweb"]), ["192.168.1.12"], "a hostNetwork pod has its node's address");
        let body = common::lab::http_get_at(&lab.ns("node-1"), "192.168.1.12:8080".parse().unwrap()).unwrap();
        assert!(body.contains("pod=hostweb"), "{body}");
        let pins: Vec<String> = std::fs::read_dir(lab.state().join("netns"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let uid = ok(kubectl(&lab, None, &["get", "pod", "hostweb", "-o", "jsonpath={.metadata.uid}"]));
        assert!(!pins.iter().any(|p| p.contains(&uid)), "no namespace of its own: {pins:?}");

        // `kubectl logs` and `kubectl exec` through the API server to the node's kubelet API.
        common::kubectl::logs_and_exec(&lab);
        // The kubelet API lets in the API server only: node-1's kubelet certificate is refused.
        let direct = Command::new("nsenter")
            .arg(format!("--net={}", lab.ns("node-1").display()))
            .args(["curl", "-sk", "--max-time", "5", "https://192.168.1.12:10250/healthz"])
            .output()
            .unwrap();
        assert!(!direct.status.success(), "the kubelet API answered a client without the API server's certificate");

        // Least privilege: the agent reads what it needs and may write nothing else.
        let agent = lab.state().join("nodes/node-1/agent.kubeconfig");
        ok(kubectl(&lab, Some(&agent), &["get", "services", "-A"]));
        let denied = kubectl(&lab, Some(&agent), &["delete", "service", "web"]);
        assert!(!denied.status.success(), "the agent deleted a Service");
        assert!(
            String::from_utf8_lossy(&denied.stderr).contains("Forbidden"),
            "{}",
            String::from_utf8_lossy(&denied.stderr)
        );
        let denied = kubectl(&lab, Some(&agent), &["create", "configmap", "x", "--from-literal=a=b"]);
        assert!(
            String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
            "{}",
            String::from_utf8_lossy(&denied.stderr)
        );
        let kubelet = lab.state().join("nodes/node-1/kubeconfig");
        let denied = kubectl(&lab, Some(&kubelet), &["label", "node", "node-2", "x=y"]);
        assert!(!denied.status.success(), "node-1's kubelet changed node-2");

        // The install manifest as kube-apiserver validates it (schema, defaults, admission),
        // and its ServiceAccounts' rights, which `lab up` applied from it: what the agent
        // and the DNS need, and nothing else.
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/flatnet.yaml");
        let dry = ok(kubectl(&lab, None, &["apply", "--dry-run=server", "-f", manifest]));
        for obj in [
            "daemonset.apps/flatnet-node",
            "deployment.apps/flatnet-dns",
            "service/kube-dns",
            "configmap/flatnet-config",
        ] {
            assert!(dry.contains(obj), "{obj} missing from the dry run: {dry}");
        }
        let can = |sa: &str, verb: &str, what: &str| {
            let out = kubectl(
                &lab,
                None,
                &["auth", "can-i", verb, what, &format!("--as=system:serviceaccount:kube-system:{sa}")],
            );
            String::from_utf8_lossy(&out.stdout).trim() == "yes"
        };
        for (verb, what) in [
            ("list", "pods"),
            ("watch", "endpointslices.discovery.k8s.io"),
            ("patch", "nodes/status"),
            ("list", "networkpolicies.networking.k8s.io"),
        ] {
            assert!(can("flatnet-node", verb, what), "the agent may not {verb} {what}");
        }
        for (verb, what) in [("create", "configmaps"), ("get", "secrets"), ("delete", "pods"), ("update", "services")] {
            assert!(!can("flatnet-node", verb, what), "the agent may {verb} {what}");
        }
        assert!(can("flatnet-dns", "watch", "services"));
        assert!(!can("flatnet-dns", "patch", "nodes"), "the DNS may patch nodes");
        lab.down_and_check_clean();
    });
}

#[test]
fn the_upstream_control_plane_without_its_components_is_refused_and_nothing_is_made() {
    sandboxed("the_upstream_control_plane_without_its_components_is_refused_and_nothing_is_made", |_| {
        let empty = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("lab");
        let out = Command::new(flatnet())
            .env("FLATNET_KUBERNETES_CACHE", empty.path())
            .args(["lab", "up", "--control-plane", "kubernetes", "--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--state-dir")
            .arg(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("run scripts/kubernetes"), "{err}");
        assert!(!dir.exists(), "nothing made: {}", dir.display());
    });
}
