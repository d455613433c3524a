//! `flatnet lab …`: a Kubernetes cluster on this machine made of network namespaces. A
//! control plane (API server, store, controllers) in the host's namespace, an underlay
//! namespace with a bridge, and nodes plugged into it, each running the lab kubelet and
//! the flatnet agent.

mod demo;
mod status;
mod up;

use anyhow::{Context, bail};
use clap::Subcommand;
use flatnet_lab::layout::Layout;
use flatnet_lab::lifecycle::settings::DEFAULT_STATE_DIR;
use flatnet_lab::lifecycle::{apply, exec, processes};
use flatnet_lab::pod_network::PodNetwork;
use flatnet_model::node_network::Backend;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:6443";

#[derive(clap::Args, Clone)]
pub struct StateDir {
    /// Where the lab keeps its state (everything it makes on disk is under it).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

impl StateDir {
    pub fn layout(&self) -> Layout {
        Layout::new(&self.state_dir)
    }
}

#[derive(clap::Args, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub state: StateDir,
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// How many nodes (node-1 … node-N).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// How pods on different nodes reach each other: vxlan, host-gw or bgp.
    #[arg(long, default_value = "vxlan")]
    pub backend: Backend,
    /// Spread the nodes over this many racks: each its own L2 segment and subnet
    /// (192.168.R.0/24) behind a top-of-rack router running BIRD 2, the routers joined by
    /// a core. With bgp, nodes peer with their rack's router; on one rack, with each other.
    #[arg(long, default_value_t = 1)]
    pub racks: usize,
    /// With vxlan: route directly to peers on the node's own segment, VXLAN only to
    /// peers in other subnets (Calico's CrossSubnet, Flannel's DirectRouting).
    #[arg(long)]
    pub cross_subnet: bool,
    /// Nodes whose Services upstream kube-proxy (nftables mode, built by
    /// scripts/kubernetes) carries instead of the flatnet agent; repeat or separate with commas.
    #[arg(long = "kube-proxy", value_delimiter = ',')]
    pub kube_proxy_nodes: Vec<String>,
    /// The pod network: flatnet, or flannel (flanneld from scripts/peers in place of the
    /// agent, pods wired by the reference bridge plugin) to compare the two.
    #[arg(long, default_value = "flatnet")]
    pub network: PodNetwork,
    /// The API: embedded (the lab's own, the default: no Go, sub-second start) or
    /// kubernetes (kube-apiserver on etcd, kube-controller-manager and kube-scheduler,
    /// built by scripts/kubernetes).
    #[arg(long, default_value = "embedded")]
    pub control_plane: flatnet_lab::kubernetes::ControlPlane,
}

impl UpArgs {
    pub fn config(&self) -> flatnet_lab::lifecycle::up::UpConfig {
        flatnet_lab::lifecycle::up::UpConfig {
            layout: self.state.layout(),
            listen: self.listen,
            nodes: self.nodes,
            backend: self.backend,
            racks: self.racks,
            cross_subnet: self.cross_subnet,
            kube_proxy_nodes: self.kube_proxy_nodes.clone(),
            network: self.network,
            control_plane: self.control_plane,
        }
    }
}

#[derive(Subcommand)]
pub enum LabCmd {
    /// Builds the lab: control plane, underlay, nodes with their kubelet and agent.
    Up(UpArgs),
    /// Stops the lab and removes every namespace, process, mount and file it made.
    Down(StateDir),
    /// Brings the lab up if needed, deploys pods on two nodes and checks every path.
    Demo(UpArgs),
    /// Nodes, their network status, pods and processes.
    Status(StateDir),
    /// Creates or updates the objects in a YAML or JSON file (like `kubectl apply -f`).
    Apply {
        #[command(flatten)]
        state: StateDir,
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Runs a command inside a pod: its network namespace, resolv.conf and hostname.
    Exec {
        #[command(flatten)]
        state: StateDir,
        pod: String,
        #[arg(short = 'n', long = "namespace", default_value = "default")]
        namespace: String,
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// The path a packet takes from a pod, hop by hop, from every node's kernel state
    /// (`--probe` sends a real one and confirms each hop).
    Trace {
        #[command(flatten)]
        state: StateDir,
        #[command(flatten)]
        args: crate::trace::TraceArgs,
    },
    /// Checks each node for the usual causes of a broken pod network, with fixes.
    Doctor {
        #[command(flatten)]
        state: StateDir,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        opts: crate::doctor::DoctorOpts,
    },
    /// Prints the path of the lab's kubeconfig.
    Kubeconfig(StateDir),
    /// Runs the control plane in the foreground (what `lab up` starts).
    #[command(hide = true)]
    Serve {
        #[command(flatten)]
        state: StateDir,
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Also listen on 192.168.1.1 inside this network namespace (the lab underlay).
        #[arg(long)]
        underlay_netns: Option<PathBuf>,
        /// The embedded API server, or the upstream components in the underlay.
        #[arg(long, default_value = "embedded")]
        control_plane: flatnet_lab::kubernetes::ControlPlane,
    },
    /// Runs one node's kubelet (and through it the agent) inside the node's namespace.
    #[command(hide = true)]
    Kubelet {
        #[command(flatten)]
        state: StateDir,
        #[arg(long)]
        node: String,
        #[arg(long)]
        node_ip: std::net::Ipv4Addr,
        #[arg(long, default_value = "vxlan")]
        backend: Backend,
        /// kube-proxy, when it carries this node's Services instead of the agent.
        #[arg(long)]
        kube_proxy: Option<PathBuf>,
        #[arg(long, default_value = "flatnet")]
        network: PodNetwork,
        /// More flags for the agent (its BGP peers, say).
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// The pod network is installed by a DaemonSet (flatnet's manifest): the kubelet
        /// runs no agent and takes the CNI configuration the DaemonSet installs.
        #[arg(long)]
        installed_cni: bool,
        /// An annotation of the Node it registers, KEY=VALUE.
        #[arg(long = "node-annotation", value_parser = parse_key_value)]
        annotations: Vec<(String, String)>,
    },
    /// Runs BIRD as the router of one rack, inside the router's namespace.
    #[command(hide = true)]
    Router {
        #[command(flatten)]
        state: StateDir,
        #[arg(long)]
        rack: usize,
    },
    /// Enters a pod and executes a command (what the kubelet starts containers with).
    #[command(hide = true)]
    Enter {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        resolv_conf: Option<PathBuf>,
        #[arg(long)]
        hosts: Option<PathBuf>,
        #[arg(long)]
        hostname: Option<String>,
        /// A volume, SOURCE:TARGET[:ro] (the container then gets a root of its own).
        #[arg(long = "mount", value_parser = flatnet_kernel::rootfs::Mount::parse)]
        mounts: Vec<flatnet_kernel::rootfs::Mount>,
        /// An empty directory where the container's root is built (with --mount).
        #[arg(long)]
        root: Option<PathBuf>,
        /// The directory to change into, inside.
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Standard input is a terminal: make it the controlling one of a new session.
        #[arg(long)]
        tty: bool,
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// The built-in server the lab runs for containers that declare ports.
    #[command(hide = true)]
    Netexec {
        #[arg(long)]
        pod: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        node: String,
        #[arg(long = "port", required = true)]
        ports: Vec<String>,
    },
}

pub fn run(cmd: LabCmd) -> anyhow::Result<()> {
    match cmd {
        LabCmd::Up(args) => up::up(&args).context(
            "lab up did not finish; `flatnet lab down` removes what it made, and the logs are in the state directory",
        ),
        LabCmd::Down(s) => up::down(&s.layout()),
        LabCmd::Demo(args) => demo::run(&args),
        LabCmd::Status(s) => status::run(&s.layout()),
        LabCmd::Apply { state, file } => apply::run(&state.layout(), &file, |applied| println!("{applied}")),
        LabCmd::Doctor { state, node, opts } => crate::doctor::run_lab(&state.layout(), node.as_deref(), &opts),
        LabCmd::Trace { state, args } => crate::trace::run_lab(state.layout(), &args),
        LabCmd::Exec { state, pod, namespace, command } => exec::exec(&state.layout(), &namespace, &pod, &command),
        LabCmd::Kubeconfig(s) => {
            let path = s.layout().kubeconfig();
            if !path.is_file() {
                bail!("the lab is not up (no {}): run `flatnet lab up`", path.display());
            }
            println!("{}", path.display());
            Ok(())
        }
        LabCmd::Serve { state, listen, underlay_netns, control_plane } => match (control_plane, underlay_netns) {
            (flatnet_lab::kubernetes::ControlPlane::Kubernetes, Some(u)) => {
                processes::serve_kubernetes(&state.layout(), listen, &u, crate::shutdown::requested)
            }
            (flatnet_lab::kubernetes::ControlPlane::Kubernetes, None) => {
                bail!("--control-plane kubernetes runs in the lab's underlay: give --underlay-netns")
            }
            (_, u) => processes::serve(&state.layout(), listen, u.as_deref(), crate::shutdown::requested),
        },
        LabCmd::Kubelet {
            state,
            node,
            node_ip,
            backend,
            kube_proxy,
            network,
            agent_args,
            installed_cni,
            annotations,
        } => {
            crate::agent::init_logging();
            let args = processes::KubeletArgs {
                node: &node,
                ip: node_ip,
                backend,
                network,
                kube_proxy: kube_proxy.as_deref(),
                agent_args: &agent_args,
                installed_cni,
                annotations: &annotations,
            };
            processes::kubelet(&state.layout(), &args, crate::shutdown::requested)
        }
        LabCmd::Router { state, rack } => processes::router(&state.layout(), rack),
        LabCmd::Enter { netns, resolv_conf, hosts, hostname, mounts, root, workdir, tty, command } => {
            if tty {
                use std::os::fd::AsFd;
                flatnet_kernel::pty::take_controlling(std::io::stdin().as_fd())?;
            }
            let ctx = flatnet_kernel::enter::PodContext { netns, resolv_conf, hosts, hostname, mounts, root, workdir };
            flatnet_kernel::enter::enter(&ctx)?;
            // A program that is not there (in the container's root) is said as a
            // container runtime says it, with a shell's exit code, which `kubectl exec`
            // passes on.
            if let Some(program) = command.first()
                && !program_exists(program)
            {
                eprintln!("exec: {:?}: executable file not found in $PATH", program.to_string_lossy());
                std::process::exit(127);
            }
            Err(flatnet_kernel::enter::exec_entered(&command).into())
        }
        LabCmd::Netexec { pod, namespace, node, ports } => exec::netexec(pod, namespace, node, &ports),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

/// `program` is a path to a file, or a name found on `$PATH`.
fn program_exists(program: &std::ffi::OsStr) -> bool {
    let p = std::path::Path::new(program);
    if p.components().count() > 1 {
        return p.is_file();
    }
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
