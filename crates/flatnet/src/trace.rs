//! `flatnet trace SRC DST[:PORT][/PROTO]` (on a node) and `flatnet lab trace` (in the
//! lab): the arguments, and the trace printed as text or JSON.

use flatnet_inspect::trace::{self, Request};
use flatnet_lab::layout::Layout;
use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct TraceArgs {
    /// The pod the packet leaves: `namespace/name` (or `name`, in namespace default).
    pub src: String,
    /// Where it goes: a pod (`namespace/name`), a Service (`name.namespace`, or its DNS
    /// name) or an IP, then `:PORT` and `/tcp`, `/udp`, `/sctp` or `/icmp`. A Service
    /// without a port takes its first port; anything else without one is pinged.
    pub dst: String,
    /// Send a real packet along the path and confirm each hop with nftables tracing.
    #[arg(long)]
    pub probe: bool,
    /// Print the trace as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show all the kernel state behind every hop.
    #[arg(short, long)]
    pub verbose: bool,
}

impl TraceArgs {
    fn request(&self) -> Request {
        Request { src: self.src.clone(), dst: self.dst.clone(), probe: self.probe }
    }
}

/// `flatnet trace` on a node: what this node can see.
#[derive(clap::Args)]
pub struct NodeTraceArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// A kubeconfig; without it, the in-cluster service account (or $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name in the API (default: $NODE_NAME, else the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Where the container runtime pins pods' network namespaces (searched for the
    /// pod's address, to read its eth0 and to send the probe from it).
    #[arg(long = "pod-netns-dir", default_values = ["/run/netns", "/var/run/netns"])]
    pub pod_netns_dirs: Vec<PathBuf>,
}

fn print(t: &flatnet_model::trace::Trace, args: &TraceArgs) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(t)?);
    } else {
        print!("{}", flatnet_model::trace::render::text(t, args.verbose));
    }
    Ok(())
}

/// `flatnet trace` on a node.
pub fn run_node(args: NodeTraceArgs) -> anyhow::Result<()> {
    let me = crate::agent::this_node(args.node_name)?;
    let t = trace::node(me, args.kubeconfig.as_deref(), args.pod_netns_dirs, &args.trace.request())?;
    print(&t, &args.trace)
}

/// `flatnet lab trace`.
pub fn run_lab(layout: Layout, args: &TraceArgs) -> anyhow::Result<()> {
    let t = trace::lab(layout, &args.request())?;
    print(&t, args)
}
