//! The two long-running processes `lab up` starts: the control plane (`lab serve`) and
//! each node's kubelet (`lab kubelet`, which runs the node's agent). Each stops when
//! `stop` (called inside its runtime) resolves.

use crate::apiserver::admission::ClusterConfig;
use crate::kubelet::Daemon;
use crate::layout::Layout;
use crate::pod_network::PodNetwork;
use crate::underlay;
use anyhow::Context;
use flatnet_model::node_network::Backend;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

/// The control plane: the API server on `listen` (and on the underlay, inside the
/// namespace at `underlay`), the store, the controllers and the stand-in upstream DNS.
pub fn serve<F: Future<Output = ()>>(
    layout: &Layout,
    listen: SocketAddr,
    underlay: Option<&Path>,
    stop: impl FnOnce() -> std::io::Result<F>,
) -> anyhow::Result<()> {
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
            crate::upstream_dns::bind_in(path, upstream_dns_addr)
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
        let pki = crate::tls::load_or_create(&layout.state)?;
        let cp = crate::control_plane::start(&layout.state, token, ClusterConfig::default(), listen.port()).await?;
        // Pods' `log` and `exec` go to their kubelets, through the underlay.
        let kubelet_pki = crate::kubernetes::pki::Pki::of(layout);
        if let (Some(path), true) = (underlay, kubelet_pki.ca_cert().is_file()) {
            let (cert, key) = kubelet_pki.kubelet_client();
            let dialer = crate::apiserver::kubelet_proxy::KubeletDialer::new(
                path.to_path_buf(),
                &kubelet_pki.ca_cert(),
                &cert,
                &key,
            )?;
            let _ = cp.api.kubelets.set(dialer);
        }
        let (stopping, _) = tokio::sync::watch::channel(false);
        let mut servers = Vec::new();
        let upstream_dns = upstream_dns.map(|s| tokio::spawn(crate::upstream_dns::serve(s)));
        for l in listeners {
            eprintln!("flatnet lab control plane listening on https://{}", l.local_addr()?);
            let (api, pki, mut stopped) = (cp.api.clone(), pki.clone(), stopping.subscribe());
            servers.push(tokio::spawn(async move {
                crate::control_plane::serve(api, l, &pki, async move {
                    let _ = stopped.changed().await;
                })
                .await
            }));
        }
        stop()?.await;
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

/// Moves this process into the network namespace at `path` (`what` names it in errors).
/// Call it while the process is still single-threaded: every thread started later is
/// in the namespace, and so is every child.
fn enter_for_good(path: &Path, what: &str) -> anyhow::Result<()> {
    let ns = flatnet_kernel::netns::NetNs::open(path).with_context(|| format!("open {what}'s namespace"))?;
    nix::sched::setns(std::os::fd::AsFd::as_fd(ns.file()), nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("enter {what}'s namespace"))
}

/// What one node's kubelet runs with.
#[derive(Clone, Copy)]
pub struct KubeletArgs<'a> {
    pub node: &'a str,
    pub ip: Ipv4Addr,
    pub backend: Backend,
    pub network: PodNetwork,
    /// kube-proxy, when it carries this node's Services instead of the agent.
    pub kube_proxy: Option<&'a Path>,
    /// More flags for the agent (its BGP peers, say).
    pub agent_args: &'a [String],
    /// flatnet is installed from its manifest (the agent a DaemonSet's pod).
    pub installed_cni: bool,
    /// The Node's annotations (its BGP settings, when the agent is a DaemonSet's pod).
    pub annotations: &'a [(String, String)],
}

/// The kubelet process: enters the node's namespace, then runs the kubelet (which runs
/// the agent, as `flatnet agent`, or flanneld on a Flannel lab). Call it while the
/// process is still single-threaded.
pub fn kubelet<F: Future<Output = ()>>(
    layout: &Layout,
    k: &KubeletArgs<'_>,
    stop: impl FnOnce() -> std::io::Result<F>,
) -> anyhow::Result<()> {
    let KubeletArgs { node, ip, backend, network, kube_proxy, agent_args, installed_cni, annotations } = *k;
    enter_for_good(&layout.node_ns(node), &format!("node {node}"))?;
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    let mut agent = vec![
        me,
        "agent".into(),
        "--node-name".into(),
        node.into(),
        "--kubeconfig".into(),
        layout.agent_kubeconfig(node).to_string_lossy().into_owned(),
        "--backend".into(),
        backend.to_string(),
        "--iface".into(),
        "eth0".into(),
        "--subnet-file".into(),
        layout.subnet_file(node).to_string_lossy().into_owned(),
        "--policy-socket".into(),
        layout.agent_socket(node).to_string_lossy().into_owned(),
    ];
    agent.extend(agent_args.iter().cloned());
    // On a kube-proxy node, kube-proxy (nftables mode, as kubeadm would run it) carries
    // Services and the agent only connects the node and enforces policy.
    let mut daemons = Vec::new();
    if let Some(bin) = kube_proxy {
        agent.extend(["--service-proxy".into(), "none".into()]);
        let s = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
        let cmd = vec![
            s(bin.to_path_buf()),
            "--kubeconfig".into(),
            s(layout.node_kubeconfig(node)),
            "--hostname-override".into(),
            node.into(),
            "--proxy-mode".into(),
            "nftables".into(),
            "--cluster-cidr".into(),
            "10.244.0.0/16".into(),
            "--metrics-bind-address".into(),
            "127.0.0.1:10249".into(),
            "--healthz-bind-address".into(),
            "127.0.0.1:10256".into(),
            // The conntrack table is the host's: a lab node leaves it alone.
            "--conntrack-max-per-core".into(),
            "0".into(),
        ];
        daemons.push(Daemon { name: "kube-proxy", cmd, env: Vec::new() });
    }
    if network == PodNetwork::Flannel {
        let (flanneld, _) = crate::pod_network::flannel_binaries().map_err(anyhow::Error::msg)?;
        let (cmd, env) = crate::pod_network::flanneld(layout, node, backend, &flanneld)
            .with_context(|| format!("write node {node}'s Flannel configuration"))?;
        daemons.push(Daemon { name: "flanneld", cmd, env });
    }
    let cfg = crate::kubelet::KubeletConfig {
        layout: layout.clone(),
        node: node.into(),
        node_ip: ip,
        kubeconfig: layout.node_kubeconfig(node),
        agent: (network == PodNetwork::Flatnet && !installed_cni).then_some(agent),
        daemons,
        cni: if installed_cni { crate::pod_network::Cni::Installed } else { crate::pod_network::Cni::Lab(network) },
        annotations: annotations.to_vec(),
        cluster_dns: "10.96.0.10".into(),
        cluster_domain: "cluster.local".into(),
        api: crate::kubernetes::kubelet_api_tls(layout, node),
    };
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).max_blocking_threads(8).enable_all().build()?;
    rt.block_on(async {
        let stop = stop()?;
        crate::kubelet::run(cfg, stop).await.map_err(anyhow::Error::from)
    })
}

/// The router process of `rack`: enters the router's namespace and becomes BIRD, which
/// runs in the foreground with its configuration, control socket and log in the router's
/// directory. Call it while the process is still single-threaded.
pub fn router(layout: &Layout, rack: usize) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let name = crate::racks::router_name(rack);
    enter_for_good(&layout.router_ns(rack), &name)?;
    let bird = crate::racks::bird_binary().map_err(anyhow::Error::msg)?;
    let dir = layout.router_dir(rack);
    let err = std::process::Command::new(&bird)
        .arg("-f")
        .arg("-c")
        .arg(dir.join("bird.conf"))
        .arg("-s")
        .arg(dir.join("bird.ctl"))
        .exec();
    Err(anyhow::Error::new(err).context(format!("run {}", bird.display())))
}

/// The upstream control plane (`lab serve --control-plane kubernetes`): listens on
/// `listen` on the host, then enters the underlay namespace, where it runs etcd,
/// kube-apiserver, kube-controller-manager and kube-scheduler (restarting any that
/// exits) and the stand-in upstream DNS, and forwards each connection from `listen` to
/// the API server there. Call it while the process is still single-threaded.
pub fn serve_kubernetes<F: Future<Output = ()>>(
    layout: &Layout,
    listen: SocketAddr,
    underlay: &Path,
    stop: impl FnOnce() -> std::io::Result<F>,
) -> anyhow::Result<()> {
    use crate::kubernetes::components;
    let host = std::net::TcpListener::bind(listen)
        .with_context(|| format!("listen on {listen}: is another lab or API server running there?"))?;
    host.set_nonblocking(true)?;
    enter_for_good(underlay, "the underlay")?;
    let upstream_dns = crate::upstream_dns::bind_in(underlay, SocketAddr::new(underlay::control_plane_ip().into(), 53))
        .context("listen on 192.168.1.1:53 (UDP) in the underlay")?;
    let pki = crate::kubernetes::pki::Pki::of(layout);
    let dir = components::dir(layout);
    let supervisors: Vec<_> = components::all(layout, &pki, &crate::upstream::binary)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|c| {
            let (pid, log) = (dir.join(format!("{}.pid", c.name)), dir.join(format!("{}.log", c.name)));
            crate::kubelet::supervisor::Supervisor::start(c.name, c.cmd, Vec::new(), pid, log)
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let host = tokio::net::TcpListener::from_std(host)?;
        let dns = tokio::spawn(crate::upstream_dns::serve(upstream_dns));
        eprintln!(
            "flatnet lab: kube-apiserver on 192.168.1.1:{} in the underlay, forwarded from {listen}",
            components::PORT
        );
        let forward = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = host.accept().await else { continue };
                tokio::spawn(async move {
                    let to = SocketAddr::from(([127, 0, 0, 1], components::PORT));
                    if let Ok(mut api) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut api).await;
                    }
                });
            }
        });
        stop()?.await;
        forward.abort();
        dns.abort();
        anyhow::Ok(())
    })?;
    // The components go with the lab's namespaces (`lab down` stops every process in them).
    for s in supervisors {
        s.detach();
    }
    Ok(())
}
