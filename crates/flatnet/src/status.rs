//! `flatnet status` (this node) and the per-node part of `flatnet lab status`, as text
//! or JSON: the agent's own account next to what the kernel has.

use flatnet_inspect::status::{self, NodeStatus};
use std::net::SocketAddr;
use std::path::Path;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Where the agent serves /status.
    #[arg(long, default_value = flatnet_agent::config::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn ago(t: Option<f64>) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    t.map_or_else(|| "never".into(), |t| format!("{:.1} s ago", (now - t).max(0.0)))
}

/// The text block for one node.
pub fn text(name: &str, s: &NodeStatus) -> String {
    let mut out = String::new();
    let snap = match &s.agent {
        Ok(snap) => snap,
        Err(e) => {
            out.push_str(&format!("{name}: AGENT NOT ANSWERING ({e})\n"));
            for d in &s.devices {
                out.push_str(&format!("  device    {d}\n"));
            }
            return out;
        }
    };
    out.push_str(&format!(
        "{} ({}, pod CIDR {}, MTU {})\n",
        snap.node,
        snap.backend,
        snap.pod_cidr.as_deref().unwrap_or("-"),
        snap.mtu.map_or_else(|| "-".into(), |m| m.to_string())
    ));
    for d in &s.devices {
        out.push_str(&format!("  device    {d}\n"));
    }
    for t in &s.tunnels {
        let state = match (t.routed, t.answered_ms, &t.reason) {
            (false, _, Some(r)) => format!("NOT ROUTED: {r}"),
            (true, Some(ms), _) => format!("routed, tunnel up ({ms:.1} ms)"),
            (true, None, _) if snap.backend == "vxlan" => "routed, TUNNEL NOT ANSWERING".into(),
            _ => "routed".into(),
        };
        out.push_str(&format!("  peer      {:<8} {:<15} {state}\n", t.peer, t.underlay_ip.as_deref().unwrap_or("-")));
    }
    if let Some(b) = &snap.bgp {
        out.push_str(&format!("  bgp       AS {}, router ID {}, peers: {}\n", b.local_as, b.router_id, b.peering));
        for x in &b.sessions {
            let state = if x.state == "Established" {
                format!("Established for {}", ago(Some(x.since)).trim_end_matches(" ago"))
            } else {
                format!("{} since {}", x.state.to_uppercase(), ago(Some(x.since)))
            };
            out.push_str(&format!(
                "  session   {:<8} {:<15} AS {:<10} {state}, {} prefix(es) received, {} sent{}{}\n",
                x.name,
                x.peer,
                x.remote_as,
                x.prefixes_received,
                x.prefixes_sent,
                if x.graceful_restart { ", graceful restart" } else { "" },
                x.last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
            ));
        }
    }
    out.push_str(&format!("  pods      {}\n", snap.pods.len()));
    for p in &snap.pods {
        out.push_str(&format!("            {}/{} {}\n", p.namespace, p.name, p.ip.as_deref().unwrap_or("-")));
    }
    for (r, rec) in &snap.reconcilers {
        let state = match (&rec.pending, &rec.last_error) {
            (Some(what), _) => format!("waiting for {what}"),
            (None, Some(e)) => format!("FAILING: {e}"),
            (None, None) if rec.last_success.is_some() => "in sync".to_string(),
            (None, None) => "not synced yet".to_string(),
        };
        let restarts = match rec.restarts {
            0 => String::new(),
            n => format!(", restarted {n} time(s)"),
        };
        out.push_str(&format!(
            "  sync      {r:<7} {state}; last {} ({} ms), {} sync(s), {} error(s){restarts}\n",
            ago(rec.last_sync),
            rec.last_duration_ms.map_or_else(|| "-".into(), |m| format!("{m:.1}")),
            rec.syncs,
            rec.errors
        ));
    }
    out.push_str(&format!(
        "  programs  {} Service(s), {} endpoint(s), {} NetworkPolicy(ies)\n",
        snap.services, snap.endpoints, snap.policies
    ));
    for t in &s.ruleset {
        out.push_str(&format!(
            "  ruleset   {}: {} chains, {} rules, {} set elements\n",
            t.table, t.chains, t.rules, t.elements
        ));
    }
    out
}

/// `flatnet status` on this node.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let s = status::read(Path::new(flatnet_kernel::netns::OWN), args.metrics_addr)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", text("this node", &s));
    }
    if let Err(e) = &s.agent {
        anyhow::bail!("the agent does not answer on {}: {e}", args.metrics_addr);
    }
    Ok(())
}
