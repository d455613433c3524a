//! The command line (everything but the CNI plugin path).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "flatnet", version, about = "flatnet: a Kubernetes pod network", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One node, two pods wired by the CNI plugin, every hop shown (needs root).
    Demo,
    /// The lab: a Kubernetes-compatible cluster on this machine.
    Lab {
        #[command(subcommand)]
        what: crate::lab::LabCmd,
    },
    /// The node agent: routes to every other node's pods (VXLAN or direct), masquerade,
    /// and the subnet file for the CNI plugin. Runs until SIGTERM.
    Agent(crate::agent::AgentArgs),
    /// The cluster DNS server (the Kubernetes DNS spec for `cluster.local`, a caching
    /// forwarder for every other name). Runs until SIGTERM.
    Dns(crate::dns::DnsArgs),
    /// The path a packet takes from a pod, hop by hop, read from this node's kernel
    /// (`--probe` sends a real one and confirms each hop).
    Trace(crate::trace::NodeTraceArgs),
    /// This node's network: pod CIDR, peers and their tunnels, pods, each reconciler's
    /// last sync and error, the ruleset's size (from the agent and the kernel).
    Status(crate::status::StatusArgs),
    /// Checks this node for the usual causes of a broken pod network, and says how to fix
    /// each (exit status 1 when a check fails).
    Doctor(crate::doctor::DoctorArgs),
    /// Benchmarks, compared side by side with a reference in one run.
    Bench {
        #[command(subcommand)]
        what: flatnet_bench::BenchCmd,
    },
    /// Prints a CNI network config list for this node (install it in /etc/cni/net.d).
    CniConfig {
        /// The network name.
        #[arg(long, default_value = "flatnet")]
        name: String,
        /// The node's pod subnet; without it the plugin reads /run/flatnet/subnet.env.
        #[arg(long)]
        subnet: Option<String>,
    },
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let out = match cli.command {
        Cmd::Bench { what } => flatnet_bench::run(what),
        Cmd::Demo => crate::demo::run(),
        Cmd::Agent(args) => crate::agent::run(args),
        Cmd::Dns(args) => crate::dns::run(args),
        Cmd::Lab { what } => crate::lab::run(what),
        Cmd::Trace(args) => crate::trace::run_node(args),
        Cmd::Doctor(args) => crate::doctor::run_node(args),
        Cmd::Status(args) => crate::status::run(args),
        Cmd::CniConfig { name, subnet } => {
            let mut plugin = serde_json::json!({"type": "flatnet", "bridge": "cni0"});
            if let Some(s) = subnet {
                plugin["subnet"] = serde_json::json!(s);
            }
            let list = serde_json::json!({
                "cniVersion": "1.1.0",
                "name": name,
                "plugins": [plugin, {"type": "portmap", "capabilities": {"portMappings": true}}],
            });
            println!("{}", serde_json::to_string_pretty(&list).expect("json"));
            Ok(())
        }
    };
    match out {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("flatnet: {e:#}");
            1
        }
    }
}
