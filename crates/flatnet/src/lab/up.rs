//! Bringing the lab up and down, and the two long-running processes it starts: the
//! control plane (`lab serve`) and each node's kubelet (`lab kubelet`).

use super::UpArgs;
use anyhow::{Context, bail};
use flatnet_lab::apiserver::admission::ClusterConfig;
use flatnet_lab::layout::Layout;
use flatnet_lab::{nodes, underlay};
use flatnet_model::node_network::Backend;
use k8s_openapi::api::core::v1::Node;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// What `lab up` chose, kept for `status`, `demo` and a second `up`.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct Settings {
    pub backend: String,
    pub nodes: usize,
    pub listen: SocketAddr,
}

pub fn settings(layout: &Layout) -> Option<Settings> {
    serde_json::from_str(&std::fs::read_to_string(layout.settings()).ok()?).ok()
}

/// A node as `lab up` reports it.
pub struct NodeSummary {
    pub name: String,
    pub ip: String,
    pub pod_cidr: String,
    pub network: String,
}

pub fn serve(layout: &Layout, listen: SocketAddr, underlay: Option<&Path>) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(layout.token())
        .with_context(|| format!("read the API token in {}", layout.state.display()))?
        .trim()
        .to_string();
    // The underlay socket is opened before any runtime thread exists (namespaces are per thread).
    let underlay_addr = SocketAddr::new(underlay::control_plane_ip().into(), listen.port());
    let underlay_listener = underlay
        .map(|path| {
            underlay::listen_in(path, underlay_addr)
                .with_context(|| format!("listen on {underlay_addr} in the underlay {}", path.display()))
        })
        .transpose()?;
    let upstream_dns_addr = SocketAddr::new(underlay::control_plane_ip().into(), 53);
    let upstream_dns = underlay
        .map(|path| {
            flatnet_lab::upstream_dns::bind_in(path, upstream_dns_addr)
                .with_context(|| format!("listen on {upstream_dns_addr} (UDP) in the underlay {}", path.display()))
        })
        .transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let mut listeners = vec![
            tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listen on {listen}: is another lab or API server running there?"))?,
        ];
        if let Some(l) = underlay_listener {
            listeners.push(tokio::net::TcpListener::from_std(l)?);
        }
        let pki = flatnet_lab::tls::load_or_create(&layout.state)?;
        let cp =
            flatnet_lab::control_plane::start(&layout.state, token, ClusterConfig::default(), listen.port()).await?;
        let (stopping, _) = tokio::sync::watch::channel(false);
        let mut servers = Vec::new();
        let upstream_dns = upstream_dns.map(|s| tokio::spawn(flatnet_lab::upstream_dns::serve(s)));
        for l in listeners {
            eprintln!("flatnet lab control plane listening on https://{}", l.local_addr()?);
            let (api, pki, mut stopped) = (cp.api.clone(), pki.clone(), stopping.subscribe());
            servers.push(tokio::spawn(async move {
                flatnet_lab::control_plane::serve(api, l, &pki, async move {
                    let _ = stopped.changed().await;
                })
                .await
            }));
        }
        crate::shutdown::requested()?.await;
        stopping.send_replace(true);
        cp.shutdown().await;
        if let Some(t) = upstream_dns {
            t.abort();
        }
        for s in servers {
            let _ = s.await;
        }
        Ok(())
    })
}

fn step(what: &str) {
    use std::io::Write;
    print!("  {what:<62} ");
    let _ = std::io::stdout().flush();
}

fn done(t: Instant) {
    println!("done ({} ms)", t.elapsed().as_millis());
}

/// Builds (or completes) the lab and waits until every node's network is up.
pub fn up(args: &UpArgs) -> anyhow::Result<Vec<NodeSummary>> {
    if args.nodes == 0 || args.nodes > nodes::MAX_NODES {
        bail!("--nodes must be between 1 and {}", nodes::MAX_NODES);
    }
    let layout = args.state.layout();
    if let Some(s) = settings(&layout)
        && layout.apiserver().is_some()
        && (s.backend != args.backend.to_string() || s.nodes != args.nodes)
    {
        bail!(
            "the lab is already up with {} node(s) and backend {}; run `flatnet lab down` first to change that",
            s.nodes,
            s.backend
        );
    }
    let started = Instant::now();
    println!("flatnet lab: {} node(s), backend {}", args.nodes, args.backend);
    std::fs::create_dir_all(layout.netns_dir()).with_context(|| format!("create {}", layout.state.display()))?;
    flatnet_kernel::netns::make_shared_dir(&layout.netns_dir())
        .context("prepare the namespace directory (needs root)")?;

    let t = Instant::now();
    step("control plane (API server, store, controllers)");
    let token = match std::fs::read_to_string(layout.token()) {
        Ok(t) => t.trim().to_string(),
        Err(_) => {
            let t = flatnet_lab::kubeconfig::new_token();
            write_private(&layout.token(), &t)?;
            t
        }
    };
    flatnet_lab::tls::load_or_create(&layout.state)?;
    underlay::create(&layout.underlay_ns()).context("create the lab underlay network namespace (needs root)")?;
    start_control_plane(&layout, args.listen)?;
    let ca = std::fs::read_to_string(layout.state.join("ca.crt")).context("read the lab's CA certificate")?;
    write_private(
        &layout.kubeconfig(),
        &flatnet_lab::kubeconfig::render(&format!("https://{}", args.listen), &ca, &token),
    )?;
    let settings = Settings { backend: args.backend.to_string(), nodes: args.nodes, listen: args.listen };
    std::fs::write(layout.settings(), serde_json::to_string_pretty(&settings)?)?;
    done(t);

    let node_server = format!("https://{}:{}", underlay::control_plane_ip(), args.listen.port());
    for i in 1..=args.nodes {
        let (name, ip) = (nodes::name(i), nodes::ip(i));
        let t = Instant::now();
        step(&format!("{name}: netns, eth0 {ip} on {}, kubelet, agent", underlay::BRIDGE));
        std::fs::create_dir_all(layout.node_dir(&name))?;
        write_private(&layout.node_kubeconfig(&name), &flatnet_lab::kubeconfig::render(&node_server, &ca, &token))?;
        nodes::create(&layout.underlay_ns(), &layout.node_ns(&name), &name, ip)
            .with_context(|| format!("create node {name}"))?;
        start_kubelet(&layout, &name, ip, args.backend)?;
        done(t);
    }
    let t = Instant::now();
    step("waiting for every node's network (podCIDR, routes to peers)");
    let rt = super::runtime()?;
    let summary = rt.block_on(wait_nodes_ready(&layout, args.nodes, Duration::from_secs(60)))?;
    done(t);
    let t = Instant::now();
    step(&format!("cluster DNS: kube-dns {} → 2 flatnet dns pods", super::cluster_dns::SERVICE_IP));
    rt.block_on(async {
        let client = super::client(&layout).await?;
        super::cluster_dns::deploy(&client, &layout, args.nodes).await
    })?;
    done(t);
    println!("\nthe lab is up in {:.1} s", started.elapsed().as_secs_f64());
    println!("  {:<8} {:<14} {:<15} NETWORK", "NODE", "IP", "POD CIDR");
    for n in &summary {
        println!("  {:<8} {:<14} {:<15} {}", n.name, n.ip, n.pod_cidr, n.network);
    }
    println!("  API server  {} (from nodes: {node_server})", args.listen);
    println!(
        "  DNS         {} (kube-dns; other names go to the lab's upstream {}, which knows {})",
        super::cluster_dns::SERVICE_IP,
        underlay::control_plane_ip(),
        flatnet_lab::upstream_dns::ZONE
    );
    println!("  kubeconfig  {}", layout.kubeconfig().display());
    println!("\ntry:");
    println!("  export KUBECONFIG={}", layout.kubeconfig().display());
    println!("  kubectl get nodes -o wide");
    println!("  kubectl run web --image=nginx:1.25 --port=80   # or: flatnet lab apply -f pod.yaml");
    println!("  flatnet lab exec <pod> -- ip route");
    println!("  flatnet lab exec <pod> -- getent hosts kubernetes.default   # cluster DNS");
    println!("  flatnet lab demo     # pods on two nodes, every path checked");
    Ok(summary)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    flatnet_lab::write_file(path, text, 0o600).with_context(|| format!("write {}", path.display()))
}

fn start_control_plane(layout: &Layout, listen: SocketAddr) -> anyhow::Result<()> {
    if layout.apiserver().is_some() {
        return Ok(());
    }
    let log = std::fs::File::create(layout.state.join("apiserver.log"))?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["lab", "serve", "--state-dir"])
        .arg(&layout.state)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--underlay-netns")
        .arg(layout.underlay_ns())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("start the control plane")?;
    std::fs::write(layout.apiserver_pid(), child.id().to_string())?;
    wait_listening(listen, Duration::from_secs(20)).with_context(|| {
        format!("the control plane did not come up; its log is {}", layout.state.join("apiserver.log").display())
    })
}

fn start_kubelet(layout: &Layout, node: &str, ip: Ipv4Addr, backend: Backend) -> anyhow::Result<()> {
    if layout.kubelet(node).is_some() {
        return Ok(());
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(layout.node_dir(node).join("kubelet.log"))?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["lab", "kubelet", "--state-dir"])
        .arg(&layout.state)
        .args(["--node", node, "--node-ip", &ip.to_string(), "--backend", &backend.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start the kubelet of {node}"))?;
    std::fs::write(layout.kubelet_pid(node), child.id().to_string())?;
    Ok(())
}

fn wait_listening(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits until `count` nodes are registered, have a podCIDR, and their agent reports
/// the network up (NetworkUnavailable=False).
async fn wait_nodes_ready(layout: &Layout, count: usize, within: Duration) -> anyhow::Result<Vec<NodeSummary>> {
    let api: kube::Api<Node> = kube::Api::all(super::client(layout).await?);
    let deadline = Instant::now() + within;
    loop {
        let mut problems = Vec::new();
        let list = match api.list(&Default::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        };
        let wanted: HashSet<String> = (1..=count).map(nodes::name).collect();
        let mut summary: Vec<NodeSummary> = list
            .iter()
            .filter(|n| n.metadata.name.as_ref().is_some_and(|x| wanted.contains(x)))
            .map(|n| {
                let net = super::status::network_condition(n);
                if net.0 != super::status::Network::Up {
                    problems.push(format!("{}: {}", n.metadata.name.as_deref().unwrap_or(""), net.1));
                }
                NodeSummary {
                    name: n.metadata.name.clone().unwrap_or_default(),
                    ip: flatnet_agent::node::internal_ip(n).map(|i| i.to_string()).unwrap_or_default(),
                    pod_cidr: n.spec.as_ref().and_then(|s| s.pod_cidr.clone()).unwrap_or_default(),
                    network: net.1,
                }
            })
            .collect();
        if summary.len() < count {
            problems.push(format!("{} of {count} nodes registered", summary.len()));
        }
        if problems.is_empty() {
            summary.sort_by_key(|n| n.name.trim_start_matches("node-").parse::<usize>().unwrap_or(0));
            return Ok(summary);
        }
        if Instant::now() > deadline {
            bail!(
                "the nodes' network did not come up within {within:?}: {}\n(logs: {}/nodes/*/kubelet.log, agent.log)",
                problems.join("; "),
                layout.state.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The kubelet process: enters the node's namespace, then runs the kubelet (which runs the agent).
pub fn kubelet(layout: &Layout, node: &str, ip: Ipv4Addr, backend: Backend) -> anyhow::Result<()> {
    let ns = flatnet_kernel::netns::NetNs::open(layout.node_ns(node))
        .with_context(|| format!("open node {node}'s namespace"))?;
    // Still single-threaded: entering here moves every thread started later.
    nix::sched::setns(std::os::fd::AsFd::as_fd(ns.file()), nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("enter node {node}'s namespace"))?;
    crate::agent::init_logging();
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    let agent = vec![
        me,
        "agent".into(),
        "--node-name".into(),
        node.into(),
        "--kubeconfig".into(),
        layout.node_kubeconfig(node).to_string_lossy().into_owned(),
        "--backend".into(),
        backend.to_string(),
        "--iface".into(),
        "eth0".into(),
        "--subnet-file".into(),
        layout.subnet_file(node).to_string_lossy().into_owned(),
        "--policy-socket".into(),
        layout.agent_socket(node).to_string_lossy().into_owned(),
    ];
    let cfg = flatnet_lab::kubelet::KubeletConfig {
        layout: layout.clone(),
        node: node.into(),
        node_ip: ip,
        kubeconfig: layout.node_kubeconfig(node),
        agent: Some(agent),
        cluster_dns: "10.96.0.10".into(),
        cluster_domain: "cluster.local".into(),
    };
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).max_blocking_threads(8).enable_all().build()?;
    rt.block_on(async {
        let stop = crate::shutdown::requested()?;
        flatnet_lab::kubelet::run(cfg, stop).await.map_err(anyhow::Error::from)
    })
}

/// Stops every lab process and removes every namespace, mount and file.
pub fn down(layout: &Layout) -> anyhow::Result<()> {
    let pins = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(layout.netns_dir())
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    // Everything running inside a lab namespace: kubelets, agents, containers, the
    // plugin's teardown helpers. SIGKILL, so no supervisor restarts anything; again
    // until none is left, since one may have been forking as the first scan ran.
    let mut stopped = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let inodes: HashSet<u64> =
            pins().iter().filter_map(|p| flatnet_kernel::netns::NetNs::open(p).ok()?.id().ok()).collect();
        let victims = flatnet_kernel::netns::processes_in(&inodes);
        if victims.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("processes {victims:?} in the lab's namespaces survive SIGKILL; run `flatnet lab down` again");
        }
        for pid in victims {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            stopped.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(pid) = layout.apiserver() {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        stopped.insert(pid.as_raw());
    }
    let pins = pins();
    for p in &pins {
        flatnet_kernel::netns::remove_named(p).with_context(|| format!("remove {}", p.display()))?;
    }
    flatnet_kernel::netns::unmount_dir(&layout.netns_dir())?;
    match std::fs::remove_dir_all(&layout.state) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).context(format!("remove {}", layout.state.display()))
        }
        _ => {
            // The default state directory's parent (/var/lib/flatnet) goes too when
            // the lab was all it held.
            if layout.state == Path::new(super::DEFAULT_STATE_DIR)
                && let Some(parent) = layout.state.parent()
            {
                let _ = std::fs::remove_dir(parent);
            }
            println!(
                "the lab is down: {} process(es) stopped, {} namespace(s) and {} removed",
                stopped.len(),
                pins.len(),
                layout.state.display()
            );
            Ok(())
        }
    }
}
