//! The terminal diagram of a trace: one block per place (pod, node), the hops inside it
//! with the kernel state behind each, and the tunnel between nodes drawn as such.

use super::hop::{HopKind, Seen, Step, Trace, Verdict};
use std::fmt::Write;

fn mark(step: &Step) -> &'static str {
    match step {
        Step::Pass => "✓",
        Step::Drop { .. } => "✗",
        Step::Unknown { .. } => "?",
    }
}

fn probe_word(s: &Seen) -> String {
    match s {
        Seen::Seen { .. } => "[probe: seen]".into(),
        Seen::Dropped { by, .. } => format!("[probe: DROPPED by {by}]"),
        Seen::NotSeen { .. } => "[probe: not seen]".into(),
    }
}

/// The diagram; `verbose` adds every line of kernel state.
pub fn text(t: &Trace, verbose: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "trace {} → {}", t.from, t.to);
    let mut at = String::new();
    for (i, h) in t.hops.iter().enumerate() {
        if h.at != at {
            if h.kind == HopKind::Decap
                && let Some(prev) = t.hops[..i].iter().rev().find(|x| x.kind == HopKind::Vxlan)
            {
                let f = |k: &str| prev.facts.get(k).cloned().unwrap_or_else(|| "?".into());
                let _ = writeln!(out, "  │");
                let _ = writeln!(
                    out,
                    "  ╞═══ VXLAN  UDP {} → {}:{}  VNI {}  (underlay {}) ═══╡",
                    f("outer_src"),
                    f("outer_dst"),
                    f("udp_port"),
                    f("vni"),
                    f("underlay_device")
                );
            } else if i > 0 {
                let _ = writeln!(out, "  │");
                let _ = writeln!(out, "  ▼");
            }
            at = h.at.clone();
            let _ = writeln!(out, "┌ {at}");
        }
        let probe = h.probe.as_ref().map(|p| format!("  {}", probe_word(p))).unwrap_or_default();
        let _ = writeln!(out, "│ {} {:<15} {}{probe}", mark(&h.step), kind_word(h.kind), h.summary);
        let always = matches!(h.kind, HopKind::Route | HopKind::Vxlan | HopKind::Dnat | HopKind::Router);
        if verbose || always || !matches!(h.step, Step::Pass) {
            for l in &h.state {
                let _ = writeln!(out, "│     {l}");
            }
        }
        match &h.step {
            Step::Drop { by } => {
                let _ = writeln!(out, "│     DROPPED: {by}");
            }
            Step::Unknown { why } => {
                let _ = writeln!(out, "│     UNKNOWN: {why}");
            }
            Step::Pass => {}
        }
        if let Some(Seen::Seen { evidence } | Seen::Dropped { evidence, .. }) = &h.probe
            && verbose
        {
            for e in evidence {
                let _ = writeln!(out, "│     probe: {e}");
            }
        }
    }
    let _ = writeln!(out);
    let _ = match &t.verdict {
        Verdict::Delivered { to } => writeln!(out, "verdict: delivered to {to}"),
        Verdict::Dropped { at, by } => writeln!(out, "verdict: DROPPED at {at} by {by}"),
        Verdict::Unknown { why } => writeln!(out, "verdict: unknown: {why}"),
    };
    if let Some(p) = &t.probe {
        let _ = writeln!(out, "probe: {} → {}", p.sent, outcome_text(&p.outcome));
        if let Some(d) = &p.dropped {
            let _ = writeln!(out, "probe: dropped at {d}");
        }
        let _ = writeln!(out, "probe {}: {}", if p.agrees { "agrees" } else { "DISAGREES" }, p.note);
    }
    out
}

fn outcome_text(o: &super::probe::Outcome) -> String {
    use super::probe::Outcome;
    match o {
        Outcome::Answered { detail } => format!("answered ({detail})"),
        Outcome::Refused { detail } => format!("refused ({detail})"),
        Outcome::TimedOut { after_ms } => format!("no answer after {after_ms} ms"),
        Outcome::Failed { error } => format!("could not send: {error}"),
    }
}

fn kind_word(k: HopKind) -> &'static str {
    match k {
        HopKind::Pod => "pod",
        HopKind::Veth => "veth",
        HopKind::Bridge => "bridge",
        HopKind::Dnat => "service DNAT",
        HopKind::Route => "route",
        HopKind::PolicyEgress => "policy egress",
        HopKind::PolicyIngress => "policy ingress",
        HopKind::Vxlan => "VXLAN encap",
        HopKind::Direct => "direct route",
        HopKind::Router => "router",
        HopKind::Decap => "VXLAN decap",
        HopKind::Deliver => "deliver",
        HopKind::Leave => "leave",
    }
}
