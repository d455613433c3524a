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
    /// Installs the plugin on this node (what the DaemonSet's init container runs): this
    /// binary as `flatnet` in the CNI binary directory and `10-flatnet.conflist` in the
    /// config directory, each written aside and renamed into place. With `--uninstall`,
    /// removes both.
    InstallCni {
        /// The CNI binary directory (the host's /opt/cni/bin, mounted).
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: std::path::PathBuf,
        /// The CNI config directory (the host's /etc/cni/net.d, mounted).
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: std::path::PathBuf,
        /// The network name.
        #[arg(long, default_value = "flatnet")]
        name: String,
        #[arg(long)]
        uninstall: bool,
    },
}

fn install_cni(
    bin_dir: &std::path::Path,
    conf_dir: &std::path::Path,
    name: &str,
    uninstall: bool,
) -> anyhow::Result<()> {
    use flatnet_cni::install;
    if uninstall {
        let removed = install::uninstall(bin_dir, conf_dir)?;
        for p in &removed {
            println!("removed {}", p.display());
        }
        if removed.is_empty() {
            println!("nothing to remove in {} or {}", bin_dir.display(), conf_dir.display());
        }
        return Ok(());
    }
    let me = std::env::current_exe()?;
    let done = install::install(&me, bin_dir, conf_dir, name)?;
    for p in [&done.binary, &done.conflist] {
        let how = if done.unchanged.contains(p) { "unchanged" } else { "installed" };
        println!("{how} {}", p.display());
    }
    if !done.portmap {
        println!(
            "no portmap plugin in {}: hostPort is not available (install the CNI reference plugins)",
            bin_dir.display()
        );
    }
    Ok(())
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
            let list = flatnet_cni::install::conflist(&name, subnet.as_deref(), true);
            println!("{}", serde_json::to_string_pretty(&list).expect("json"));
            Ok(())
        }
        Cmd::InstallCni { bin_dir, conf_dir, name, uninstall } => install_cni(&bin_dir, &conf_dir, &name, uninstall),
    };
    match out {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("flatnet: {e:#}");
            1
        }
    }
}
