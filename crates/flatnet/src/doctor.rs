//! `flatnet doctor` (this node) and `flatnet lab doctor` (each lab node): the options,
//! and each check printed with how to fix what fails.

use flatnet_inspect::doctor::{self, NodeChecks, Options};
use flatnet_lab::layout::Layout;
use flatnet_model::doctor::{Check, Status};
use flatnet_model::node_network::VxlanSettings;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct DoctorOpts {
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
    /// Where the agent serves /healthz.
    #[arg(long, default_value = flatnet_agent::config::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// The VXLAN VNI and port the cluster uses.
    #[arg(long, default_value_t = 1)]
    pub vni: u32,
    #[arg(long, default_value_t = 8472)]
    pub vxlan_port: u16,
    /// The node bridge.
    #[arg(long, default_value = "cni0")]
    pub bridge: String,
}

#[derive(clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub opts: DoctorOpts,
    /// A kubeconfig, to learn this node's peers; without it, the in-cluster service
    /// account (or $KUBECONFIG). Checks that need the API are skipped without one.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name in the API (default: $NODE_NAME, else the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
}

impl DoctorOpts {
    fn options(&self) -> Options {
        Options {
            metrics_addr: self.metrics_addr,
            vxlan: VxlanSettings { vni: self.vni, port: self.vxlan_port },
            bridge: self.bridge.clone(),
        }
    }
}

fn print(node: &str, checks: &[Check]) {
    println!("{node}");
    for c in checks {
        let mark = match c.status {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
        };
        println!("  {mark} {:<13} {}", c.check, c.detail);
        if let Some(fix) = c.fix.as_ref().filter(|_| c.status != Status::Ok) {
            println!("    {:<13} fix: {fix}", "");
        }
    }
}

/// Prints every node's checks; an error when any failed.
fn report(results: Vec<NodeChecks>, json: bool) -> anyhow::Result<()> {
    if json {
        let v: serde_json::Map<String, serde_json::Value> =
            results.iter().map(|(n, c)| (n.clone(), serde_json::to_value(c).expect("serializable"))).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (n, c) in &results {
            print(n, c);
        }
    }
    let failed: Vec<String> = results
        .iter()
        .flat_map(|(n, cs)| cs.iter().filter(|c| c.status == Status::Fail).map(move |c| format!("{n}: {}", c.check)))
        .collect();
    if failed.is_empty() { Ok(()) } else { anyhow::bail!("{} check(s) failed: {}", failed.len(), failed.join(", ")) }
}

/// `flatnet doctor` on this node.
pub fn run_node(args: DoctorArgs) -> anyhow::Result<()> {
    let me = crate::agent::this_node(args.node_name)?;
    let nodes = doctor::cluster_nodes(args.kubeconfig.as_deref()).unwrap_or_else(|e| {
        eprintln!("flatnet doctor: the API is not reachable ({e:#}); checks that need this node's peers are skipped");
        Vec::new()
    });
    let checks = doctor::node(&me, &nodes, &args.opts.options())?;
    report(vec![(me, checks)], args.opts.json)
}

/// `flatnet lab doctor`: every node of the lab, or one.
pub fn run_lab(layout: &Layout, node: Option<&str>, opts: &DoctorOpts) -> anyhow::Result<()> {
    report(doctor::lab(layout, node, &opts.options())?, opts.json)
}
