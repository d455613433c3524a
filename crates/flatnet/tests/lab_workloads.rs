//! Workloads on the lab, through kubectl, as tutorials run them: a Deployment's pods
//! spread over the nodes behind a Service (EndpointSlices and core/v1 Endpoints), scaled,
//! and rolled to a new template through a new ReplicaSet; a DaemonSet on every node,
//! rolled node by node; deleting the Deployment takes its ReplicaSets and pods with it.
//! What kube-apiserver refuses (a selector that does not match the template, a
//! ConfigMap over 1 MiB) is refused the same way, and nothing is stored; `kubectl apply`
//! of a `kind: List` applies its items.

mod common;

use common::kubectl::{kubectl, ok};
use common::lab::Lab;
use common::{converges, sandboxed};
use std::time::Duration;

fn get(lab: &Lab, args: &[&str]) -> String {
    String::from_utf8_lossy(&kubectl(lab, args).stdout).trim().to_string()
}

/// The words of a jsonpath answer, in order.
fn sorted(words: &str) -> Vec<&str> {
    let mut v: Vec<&str> = words.split_whitespace().collect();
    v.sort_unstable();
    v
}

fn until(lab: &Lab, what: &str, args: &[&str], want: &str) {
    converges(what, Duration::from_secs(60), || match get(lab, args) {
        got if got == want => Ok(()),
        got => Err(got),
    });
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"#;

const AGENT: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: agent, image: busybox, command: [sleep, "3600"]}]
"#;

#[test]
fn deployments_replicasets_and_daemonsets_run_and_roll_on_the_lab() {
    sandboxed("deployments_replicasets_and_daemonsets_run_and_roll_on_the_lab", |_| {
        let lab = Lab::up(2, "vxlan");
        lab.apply(WEB);
        until(
            &lab,
            "3 web pods available",
            &["get", "deploy", "web", "-o", "jsonpath={.status.availableReplicas}"],
            "3",
        );
        let nodes = get(&lab, &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.nodeName}"]);
        let distinct: std::collections::BTreeSet<&str> = nodes.split_whitespace().collect();
        assert_eq!(distinct.len(), 2, "spread over both nodes: {nodes}");
        let hash =
            get(&lab, &["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.labels.pod-template-hash}"]);
        assert!(!hash.is_empty() && !hash.contains(' '), "one ReplicaSet, labelled with its template's hash: {hash}");
        until(
            &lab,
            "the Service's Endpoints",
            &["get", "endpoints", "web", "-o", "jsonpath={.subsets[*].addresses[*].ip}"],
            &{
                let ips = get(&lab, &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.podIP}"]);
                sorted(&ips).join(" ")
            },
        );
        let all = ok(kubectl(&lab, &["get", "all"]));
        for want in ["deployment.apps/web", "replicaset.apps/web-", "pod/web-", "service/web"] {
            assert!(all.contains(want), "{want} missing from `kubectl get all`:\n{all}");
        }

        // Scale down, then roll a new template out: a new ReplicaSet takes over, within
        // the surge, and `kubectl rollout status` sees it through.
        ok(kubectl(&lab, &["scale", "deployment", "web", "--replicas=2"]));
        until(&lab, "2 web pods", &["get", "deploy", "web", "-o", "jsonpath={.status.replicas}"], "2");
        ok(kubectl(&lab, &["set", "image", "deployment/web", "web=nginx:1.27"]));
        ok(kubectl(&lab, &["rollout", "status", "deployment/web", "--timeout=60s"]));
        until(
            &lab,
            "the new template's pods only",
            &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"],
            "nginx:1.27 nginx:1.27",
        );
        let sets = get(&lab, &["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[*].spec.replicas}"]);
        assert_eq!(sorted(&sets), ["0", "2"], "the old ReplicaSet scaled to 0, the new one to 2");

        // A DaemonSet: one pod on each node; a new template replaces them node by node.
        lab.apply(AGENT);
        until(&lab, "a pod per node", &["get", "ds", "node-agent", "-o", "jsonpath={.status.numberReady}"], "2");
        let on = get(&lab, &["get", "pods", "-l", "app=node-agent", "-o", "jsonpath={.items[*].spec.nodeName}"]);
        assert_eq!(sorted(&on), ["node-1", "node-2"]);
        ok(kubectl(&lab, &["set", "image", "ds/node-agent", "agent=busybox:1.36"]));
        ok(kubectl(&lab, &["rollout", "status", "ds/node-agent", "--timeout=60s"]));
        until(
            &lab,
            "the DaemonSet's new template on both nodes",
            &["get", "pods", "-l", "app=node-agent", "-o", "jsonpath={.items[*].spec.containers[0].image}"],
            "busybox:1.36 busybox:1.36",
        );

        // Deleting the Deployment takes its ReplicaSets and pods with it.
        ok(kubectl(&lab, &["delete", "deployment", "web"]));
        until(&lab, "web's ReplicaSets gone", &["get", "rs", "-l", "app=web", "-o", "name"], "");
        until(&lab, "web's pods gone", &["get", "pods", "-l", "app=web", "-o", "name"], "");

        // Refused as kube-apiserver refuses them, and nothing stored.
        let bad = kubectl_stdin(
            &lab,
            "apply",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad}\nspec:\n  selector: {matchLabels: {app: one}}\n  template:\n    metadata: {labels: {app: other}}\n    spec: {containers: [{name: c, image: nginx}]}\n",
        );
        assert!(bad.contains("`selector` does not match template `labels`"), "{bad}");
        assert!(get(&lab, &["get", "deploy", "-o", "name"]).is_empty(), "nothing stored");
        let big = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{k: \"{}\"}}\n",
            "x".repeat(1024 * 1024 + 1)
        );
        let refused = kubectl_stdin(&lab, "create", &big);
        assert!(
            refused.contains("Too long: may not be more than 1048576 bytes"),
            "{}",
            &refused[..refused.len().min(300)]
        );
        assert!(get(&lab, &["get", "configmap", "big", "-o", "name"]).is_empty());

        // `kubectl apply -f` of a `kind: List`, twice: made, then unchanged.
        let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: settings}, data: {mode: fast}}\n- {apiVersion: v1, kind: Service, metadata: {name: listed}, spec: {selector: {app: listed}, ports: [{port: 80}]}}\n";
        let file = lab.dir.path().join("list.yaml");
        std::fs::write(&file, list).unwrap();
        let path = file.to_string_lossy().into_owned();
        let first = ok(kubectl(&lab, &["apply", "-f", &path]));
        assert!(first.contains("configmap/settings created") && first.contains("service/listed created"), "{first}");
        let again = ok(kubectl(&lab, &["apply", "-f", &path]));
        assert!(
            again.contains("configmap/settings unchanged") && again.contains("service/listed unchanged"),
            "{again}"
        );
        assert_eq!(get(&lab, &["get", "configmap", "settings", "-o", "jsonpath={.data.mode}"]), "fast");
        lab.down_and_check_clean();
    });
}

/// `kubectl VERB -f -` of `yaml`: its stderr (the refusal).
fn kubectl_stdin(lab: &Lab, verb: &str, yaml: &str) -> String {
    let mut child = common::kubectl::command(lab, &[verb, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "kubectl accepted it");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
