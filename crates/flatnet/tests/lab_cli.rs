//! `flatnet lab` as people use it: `lab up` writes a kubeconfig that the real kubectl
//! works with (create, apply, get -o wide, label, describe, delete), and the control
//! plane survives kill -9 without losing an acknowledged write. Each test uses its own
//! state directory and a free port, inside a sandbox (its own network and mount
//! namespaces: the lab's underlay namespace and 127.0.0.1 are the sandbox's), and takes
//! the lab down after.

mod common;

use common::sandboxed;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn flatnet() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flatnet"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Lab {
    dir: tempfile::TempDir,
    port: u16,
}

impl Lab {
    fn up() -> Self {
        let lab = Lab { dir: tempfile::tempdir().unwrap(), port: free_port() };
        lab.start();
        lab
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }

    fn start(&self) {
        let out = Command::new(flatnet())
            .args(["lab", "up", "--listen", &format!("127.0.0.1:{}", self.port), "--state-dir"])
            .arg(self.state())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lab up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn kubeconfig(&self) -> String {
        let out =
            Command::new(flatnet()).args(["lab", "kubeconfig", "--state-dir"]).arg(self.state()).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", self.kubeconfig())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// kubectl that must succeed; returns stdout.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(self.state().join("apiserver.pid")).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(flatnet()).args(["lab", "down", "--state-dir"]).arg(self.state()).output();
    }
}

fn have_kubectl() -> bool {
    Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success())
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: nginx
    image: nginx:1.25
    ports: [{containerPort: 80, name: http}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
spec:
  podSelector: {}
"#;

#[test]
fn kubectl_works_against_the_lab() {
    if !have_kubectl() {
        eprintln!("SKIPPED kubectl_works_against_the_lab: kubectl is not installed");
        return;
    }
    sandboxed("kubectl_works_against_the_lab", |_| kubectl_session());
}

fn kubectl_session() {
    let lab = Lab::up();
    let applied = lab.ok(&["apply", "-f", "-"], Some(MANIFEST));
    for line in ["pod/web created", "service/web created", "networkpolicy.networking.k8s.io/deny-all created"] {
        assert!(applied.contains(line), "{applied}");
    }
    let again = lab.ok(&["apply", "-f", "-"], Some(MANIFEST));
    assert!(again.contains("pod/web unchanged"), "{again}");
    let ns = lab.ok(&["create", "-f", "-"], Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n"));
    assert!(ns.contains("namespace/team-a created"), "{ns}");
    // kubectl's generator subcommands send protobuf, which the lab reads.
    let proto = lab.ok(&["create", "namespace", "team-b"], None);
    assert!(proto.contains("namespace/team-b created"), "{proto}");
    assert_eq!(lab.ok(&["get", "ns", "team-b", "-o", "jsonpath={.status.phase}"], None), "Active");
    // The lab kubelet runs it and reports its IP and readiness.
    lab.ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"], None);
    let ip = lab.ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIP}"], None);
    assert!(ip.starts_with("10.244."), "{ip}");
    let wide = lab.ok(&["get", "pods", "-o", "wide"], None);
    let row = wide.lines().find(|l| l.starts_with("web ")).unwrap_or_else(|| panic!("{wide}"));
    assert!(row.contains(&ip) && row.contains("node-") && row.contains("Running") && row.contains("1/1"), "{wide}");
    let all = lab.ok(&["get", "nodes,pods,svc,endpointslices,netpol", "-A"], None);
    for want in ["node/node-1", "node/node-3", "pod/web", "service/kubernetes", "service/web", "deny-all", ip.as_str()]
    {
        assert!(all.contains(want), "missing {want} in:\n{all}");
    }
    lab.ok(&["label", "pod", "web", "tier=front"], None);
    let yaml = lab.ok(&["get", "pod", "web", "-o", "yaml"], None);
    assert!(yaml.contains("tier: front") && yaml.contains("resourceVersion:"), "{yaml}");
    let described = lab.ok(&["describe", "service", "web"], None);
    assert!(described.contains(&format!("{ip}:80")), "{described}");
    let nodes = lab.ok(&["get", "nodes", "-o", "wide"], None);
    assert!(nodes.contains("10.244.0.0/24") || nodes.contains("10.244."), "{nodes}");
    // Graceful deletion: Terminating until the kubelet has stopped it; kubectl waits.
    let deleted = lab.ok(&["delete", "pod", "web", "--grace-period=5"], None);
    assert!(deleted.contains("pod \"web\" deleted"), "{deleted}");
    let bad = lab.kubectl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n",
        ),
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not in the valid range"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn kill_dash_nine_loses_no_acknowledged_write() {
    if !have_kubectl() {
        eprintln!("SKIPPED kill_dash_nine_loses_no_acknowledged_write: kubectl is not installed");
        return;
    }
    sandboxed("kill_dash_nine_loses_no_acknowledged_write", |_| kill_session());
}

fn kill_session() {
    let lab = Lab::up();
    let mut manifest = String::new();
    for i in 0..50 {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\nspec:\n  containers: [{{name: c, image: x}}]\n"
        ));
    }
    lab.ok(&["create", "-f", "-"], Some(&manifest));
    let rv_before: u64 =
        lab.ok(&["get", "pod", "p49", "-o", "jsonpath={.metadata.resourceVersion}"], None).trim().parse().unwrap();
    // SIGKILL, right after the last acknowledged write.
    let pid = lab.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    while Path::new(&format!("/proc/{pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z")
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    lab.start();
    let names = lab.ok(&["get", "pods", "-o", "name"], None);
    assert_eq!(names.lines().count(), 50, "{names}");
    lab.ok(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: after}\nspec: {containers: [{name: c, image: x}]}\n"),
    );
    let rv_after: u64 =
        lab.ok(&["get", "pod", "after", "-o", "jsonpath={.metadata.resourceVersion}"], None).trim().parse().unwrap();
    assert!(rv_after > rv_before, "resourceVersions continue after the restart ({rv_after} > {rv_before})");
}

#[test]
fn nodes_reach_the_api_on_the_underlay() {
    sandboxed("nodes_reach_the_api_on_the_underlay", |_| {
        let lab = Lab::up();
        let underlay = lab.state().join("netns/underlay");
        let token = std::fs::read_to_string(lab.state().join("token")).unwrap();
        let out = Command::new("nsenter")
            .arg(format!("--net={}", underlay.display()))
            .args(["curl", "-sS", "--max-time", "5", "--cacert"])
            .arg(lab.state().join("ca.crt"))
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", token.trim()))
            .arg(format!("https://192.168.1.1:{}/api/v1/namespaces", lab.port))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && body.contains("NamespaceList"),
            "{body}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Down unmounts the underlay namespace and removes the state.
        let down = Command::new(flatnet()).args(["lab", "down", "--state-dir"]).arg(lab.state()).output().unwrap();
        assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(underlay.to_str().unwrap()), "the underlay is still mounted");
        assert!(!lab.state().join("token").exists());
    });
}

#[test]
fn a_flannel_lab_without_flannel_built_is_refused_before_anything_is_made() {
    sandboxed("a_flannel_lab_without_flannel_built_is_refused_before_anything_is_made", |_| {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lab");
        let out = Command::new(flatnet())
            .args([
                "lab",
                "up",
                "--network",
                "flannel",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--state-dir",
            ])
            .arg(&state)
            .env("FLATNET_PEERS_CACHE", dir.path().join("no-peers"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "lab up went ahead without flanneld");
        assert!(err.contains("flanneld") && err.contains("scripts/peers flannel"), "the error says what to run: {err}");
        assert!(!state.exists(), "nothing of the lab was made");
        // An unknown pod network is refused by name.
        let out = Command::new(flatnet())
            .args(["lab", "up", "--network", "weave", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("use flatnet or flannel"), "{err}");
        assert!(!state.exists());
    });
}

/// What the lab kubelet starts a container with volumes through: `lab enter --mount`
/// gives it a root of its own where each volume is where it asks (under directories the
/// machine does not have, over a file of the machine's, read-only when asked), and the
/// machine's own files are untouched.
#[test]
fn a_container_gets_its_volumes_in_a_root_of_its_own() {
    sandboxed("a_container_gets_its_volumes_in_a_root_of_its_own", |_| {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("token"), "secret").unwrap();
        let script = "cat /no/such/dir/sa/token; echo; /usr/local/bin/flatnet --version; \
                      cat /var/run/secrets/kubernetes.io/serviceaccount/token; echo; \
                      touch /var/run/secrets/kubernetes.io/serviceaccount/x 2>/dev/null || echo read-only; \
                      hostname; pwd";
        let out = Command::new(flatnet())
            .args(["lab", "enter", "--netns", "/proc/self/ns/net", "--hostname", "pod-x", "--workdir", "/no/such/dir"])
            .arg("--mount")
            .arg(format!("{}:/no/such/dir/sa", vol.display()))
            .arg("--mount")
            .arg(format!("{}:/usr/local/bin/flatnet:ro", flatnet().display()))
            .arg("--mount")
            .arg(format!("{}:/var/run/secrets/kubernetes.io/serviceaccount:ro", vol.display()))
            .arg("--root")
            .arg(dir.path().join("root"))
            .args(["--", "sh", "-c", script])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "secret");
        assert!(lines[1].starts_with("flatnet "), "{text}");
        assert_eq!(&lines[2..], ["secret", "read-only", "pod-x", "/no/such/dir"], "{text}");
        assert!(!Path::new("/no/such/dir").exists() && !vol.join("x").exists());
        assert_eq!(std::fs::read_dir(dir.path().join("root")).unwrap().count(), 0, "the root is the container's alone");
        let bad = Command::new(flatnet())
            .args(["lab", "enter", "--netns", "/proc/self/ns/net", "--mount", "relative:path", "--", "true"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&bad.stderr).contains("the target absolute"), "{bad:?}");
    });
}
