//! `flatnet lab up` and `lab down` as the terminal shows them: each step as it goes,
//! then the nodes and how to use the lab.

use super::UpArgs;
use flatnet_lab::lifecycle::up::{NodeSummary, Progress};
use flatnet_lab::lifecycle::{cluster_dns, down, up as lab_up};
use flatnet_lab::{layout::Layout, underlay};
use std::time::Instant;

/// Brings the lab up, showing each step, then what it runs and how to use it.
pub fn up(args: &UpArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let summary = lab_up::up(&args.config(), &mut show)?;
    print_summary(args, &summary, started);
    Ok(())
}

/// Prints a step of `lab up` as it goes.
pub fn show(p: Progress<'_>) {
    use std::io::Write;
    match p {
        Progress::Lab { nodes, backend } => println!("flatnet lab: {nodes} node(s), backend {backend}"),
        Progress::Step(what) => {
            print!("  {what:<62} ");
            let _ = std::io::stdout().flush();
        }
        Progress::Done(took) => println!("done ({} ms)", took.as_millis()),
    }
}

pub fn print_summary(args: &UpArgs, summary: &[NodeSummary], started: Instant) {
    let layout = args.state.layout();
    println!("\nthe lab is up in {:.1} s", started.elapsed().as_secs_f64());
    println!("  {:<8} {:<14} {:<15} NETWORK", "NODE", "IP", "POD CIDR");
    for n in summary {
        println!("  {:<8} {:<14} {:<15} {}", n.name, n.ip, n.pod_cidr, n.network);
    }
    println!("  API server  {} (from nodes: {})", args.listen, lab_up::node_server(args.listen, args.control_plane));
    println!(
        "  DNS         {} (kube-dns; other names go to the lab's upstream {}, which knows {})",
        cluster_dns::SERVICE_IP,
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
}

/// Takes the lab down and says what went.
pub fn down(layout: &Layout) -> anyhow::Result<()> {
    let removed = down::down(layout)?;
    println!(
        "the lab is down: {} process(es) stopped, {} namespace(s) and {} removed",
        removed.processes,
        removed.namespaces,
        layout.state.display()
    );
    Ok(())
}
