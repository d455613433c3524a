//! kubectl on the lab's own control plane, as tutorials use it to look into pods:
//! `kubectl logs` and `kubectl exec` (with a TTY) go through the API server, which
//! hands them to the pod's kubelet API over TLS as kube-apiserver does; `attach` says
//! it is not served.

mod common;

use common::kubectl::kubectl;
use common::lab::Lab;
use common::sandboxed;
use std::time::Duration;

#[test]
fn kubectl_logs_and_exec_reach_the_pods_through_the_api_server() {
    sandboxed("kubectl_logs_and_exec_reach_the_pods_through_the_api_server", |_| {
        let lab = Lab::up(2, "vxlan");
        common::kubectl::logs_and_exec(&lab);
        let attach = kubectl(&lab, &["attach", "talker"]);
        let err = String::from_utf8_lossy(&attach.stderr);
        assert!(!attach.status.success() && err.contains("does not serve pods/attach"), "{err}");
        lab.down_and_check_clean();
    });
}

/// The kubectl commands of a pod-networking tutorial, as written (pod names aside):
/// a Deployment exposed as a Service, its endpoints, the pods' and nodes' addresses,
/// and a client pod that reaches a server pod by IP (HTTP, ping), resolves the Service
/// through the cluster DNS, and shows its resolv.conf and routes; the DNS's ConfigMap,
/// edited and taken up; then a pod deleted and the events that tell of it.
/// (`kubectl exec -it` is in the test above.)
#[test]
fn the_tutorials_kubectl_commands_work_as_written() {
    sandboxed("the_tutorials_kubectl_commands_work_as_written", |_| {
        let lab = Lab::up(2, "vxlan");
        let run = |args: &[&str]| common::kubectl::ok(kubectl(&lab, args));
        run(&["create", "deployment", "frontend", "--image=nginx", "--replicas=2"]);
        run(&["expose", "deployment", "frontend", "--port=80"]);
        run(&["run", "client", "--image=busybox", "--", "sleep", "3600"]);
        common::converges("frontend's 2 endpoints and the client Running", Duration::from_secs(60), || {
            let eps = String::from_utf8_lossy(
                &kubectl(&lab, &["get", "endpoints", "frontend", "-o", "jsonpath={.subsets[*].addresses[*].ip}"])
                    .stdout,
            )
            .into_owned();
            let client = String::from_utf8_lossy(
                &kubectl(&lab, &["get", "pod", "client", "-o", "jsonpath={.status.phase}"]).stdout,
            )
            .into_owned();
            if eps.split_whitespace().count() == 2 && client == "Running" {
                Ok(())
            } else {
                Err(format!("{eps} / {client}"))
            }
        });
        let svc = run(&["get", "svc", "frontend", "-o", "wide"]);
        assert!(svc.contains("ClusterIP") && svc.contains("80/TCP") && svc.contains("app=frontend"), "{svc}");
        let eps = run(&["get", "endpoints", "frontend"]);
        assert!(eps.contains(":80"), "{eps}");
        let pods = run(&["get", "pods", "-o", "wide"]);
        assert!(pods.contains("frontend-") && pods.contains("client") && pods.contains("node-"), "{pods}");
        let cidrs = run(&["get", "nodes", "-o", "custom-columns=NAME:.metadata.name,PODCIDR:.spec.podCIDR"]);
        assert!(cidrs.contains("PODCIDR") && cidrs.matches("10.244.").count() == 2, "{cidrs}");
        let server_ip = run(&["get", "pods", "-l", "app=frontend", "-o", "jsonpath={.items[0].status.podIP}"]);
        let server = run(&["get", "pods", "-l", "app=frontend", "-o", "jsonpath={.items[0].metadata.name}"]);
        let page = run(&["exec", "client", "--", "wget", "-qO-", "-T", "5", &format!("http://{server_ip}")]);
        assert!(
            page.contains(&format!("pod={server}")) && page.contains("client=10.244."),
            "no NAT between pods: {page}"
        );
        let ping = run(&["exec", "client", "--", "ping", "-c", "3", "-W", "2", &server_ip]);
        assert!(ping.contains("3 packets transmitted, 3 received") || ping.contains("3 received"), "{ping}");
        let resolv = run(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
        assert!(
            resolv.contains("nameserver 10.96.0.10") && resolv.contains("search default.svc.cluster.local"),
            "{resolv}"
        );
        let lookup = run(&["exec", "client", "--", "nslookup", "frontend.default"]);
        let cluster_ip = run(&["get", "svc", "frontend", "-o", "jsonpath={.spec.clusterIP}"]);
        assert!(lookup.contains(&cluster_ip), "{lookup}");
        let routes = run(&["exec", "client", "--", "ip", "route"]);
        assert!(routes.contains("default via 10.244.") && routes.contains("dev eth0"), "{routes}");
        let dns = run(&["get", "svc", "-n", "kube-system", "kube-dns"]);
        assert!(dns.contains("10.96.0.10"), "{dns}");
        // flatnet's own pods, from its install manifest: an agent per node, and their logs.
        let agents = run(&["get", "pods", "-n", "kube-system", "-l", "k8s-app=flatnet-node"]);
        assert_eq!(
            agents.lines().filter(|l| l.starts_with("flatnet-node-") && l.contains("Running")).count(),
            2,
            "{agents}"
        );
        let logs = run(&["logs", "-n", "kube-system", "-l", "k8s-app=flatnet-node"]);
        assert!(logs.contains("INFO"), "{logs}");
        // The DNS's settings: a ConfigMap, which the DNS pods read again as it changes.
        let domain = run(&["get", "configmap", "-n", "kube-system", "flatnet-dns", "-o", "jsonpath={.data.domain}"]);
        assert_eq!(domain, "cluster.local");
        let ttl = r#"{"data":{"ttl":"17"}}"#;
        run(&["patch", "configmap", "-n", "kube-system", "flatnet-dns", "--type=merge", "-p", ttl]);
        common::converges("the new TTL in the answers", Duration::from_secs(20), || {
            let out = run(&["exec", "client", "--", "dig", "+noall", "+answer", "frontend.default.svc.cluster.local"]);
            if out.split_whitespace().nth(1) == Some("17") { Ok(()) } else { Err(out) }
        });
        run(&["delete", "pod", &server]);
        common::converges("the events of the deleted pod", Duration::from_secs(30), || {
            let events = String::from_utf8_lossy(&kubectl(&lab, &["get", "events"]).stdout).into_owned();
            if events.contains("Killing") && events.contains(&server) && events.contains("Started") {
                Ok(())
            } else {
                Err(events)
            }
        });
        lab.down_and_check_clean();
    });
}
