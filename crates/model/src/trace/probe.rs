//! What a real packet did: the events of nftables tracing (`nft monitor`, for packets a
//! trace rule marked with `meta nftrace set 1`) on each node, the connection's outcome,
//! and the endpoint conntrack recorded. [`confirm`] sets each hop of a trace to seen,
//! dropped or not seen from them.

pub use super::evidence::{Event, Outcome, Report, Summary, What, parse};

use super::hop::{Hop, HopKind, Seen, Step, Trace, Verdict};
use super::policy::policy_of_chain;

fn on<'a>(r: &'a Report, node: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
    r.events.iter().filter(move |e| e.node == node)
}

fn packet_with(r: &Report, node: &str, dev: &str, input: bool) -> Option<String> {
    on(r, node).find_map(|e| match &e.what {
        What::Packet { iif, oif } => {
            let d = if input { iif } else { oif };
            (d.as_deref() == Some(dev))
                .then(|| format!("{node}: {} {} {} \"{dev}\"", e.table, e.chain, if input { "iif" } else { "oif" }))
        }
        _ => None,
    })
}

fn verdict_word(v: &str) -> &str {
    v.split_whitespace().next().unwrap_or("")
}

/// The first drop any node's trace reports: (node, description).
fn first_drop(r: &Report) -> Option<(String, String)> {
    drops(r).next()
}

/// Every drop the probe's packets met (a SYN and its retransmissions may each meet one),
/// as (node, what).
fn drops(r: &Report) -> impl Iterator<Item = (String, String)> + '_ {
    r.events.iter().filter_map(|e| match &e.what {
        What::Rule { rule, verdict } if verdict_word(verdict) == "drop" => {
            Some((e.node.clone(), format!("table {} chain {}: {}", e.table, e.chain, rule)))
        }
        What::Policy { verdict } if verdict == "drop" => {
            Some((e.node.clone(), format!("table {} chain {}: policy drop", e.table, e.chain)))
        }
        _ => None,
    })
}

/// The endpoint the first DNAT rule the probe matched on `node` sent it to
/// (`… dnat to 10.244.1.4:8080 …`). Conntrack keeps no entry for a connection whose
/// first packet was dropped on the node that DNATed it, so this is how the trace learns
/// the endpoint the kernel chose then.
pub fn dnat_seen(events: &[Event], node: &str) -> Option<(std::net::Ipv4Addr, u16)> {
    events.iter().filter(|e| e.node == node).find_map(|e| match &e.what {
        What::Rule { rule, .. } => {
            let to = rule.split_once("dnat to ")?.1.split(' ').next()?;
            let (ip, port) = to.split_once(':')?;
            Some((ip.parse().ok()?, port.parse().ok()?))
        }
        _ => None,
    })
}

/// The policy names in a drop rule's counters (`counter name "drop-ingress-ns/name"`).
fn policies_in(rule: &str) -> Vec<String> {
    rule.split("counter name \"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter_map(|c| crate::policy::parse_counter_name(c).map(|(_, ns, n)| format!("{ns}/{n}")))
        .collect()
}

fn policy_seen(r: &Report, node: &str, dir: &str) -> Option<Seen> {
    let (base, pod_prefix, pol_prefix) =
        if dir == "ingress" { ("ingress", "in-", "pol-ingress-") } else { ("egress", "out-", "pol-egress-") };
    let mine = |e: &&Event| {
        e.table == crate::policy::TABLE
            && (e.chain == base || e.chain.starts_with(pod_prefix) || e.chain.starts_with(pol_prefix))
    };
    let events: Vec<&Event> = on(r, node).filter(mine).collect();
    if events.is_empty() {
        return None;
    }
    for e in &events {
        if let What::Rule { rule, verdict } = &e.what {
            let v = verdict_word(verdict);
            if v == "drop" {
                let names = policies_in(rule);
                return Some(Seen::Dropped {
                    by: format!("NetworkPolicy {}", names.join(", ")),
                    evidence: vec![format!("{node}: chain {}: {rule} (verdict drop)", e.chain)],
                });
            }
            if v == "accept" {
                let what = match policy_of_chain(&e.chain, dir) {
                    Some(p) => format!("allowed by {p}"),
                    None => format!("accepted: {rule}"),
                };
                return Some(Seen::Seen { evidence: vec![format!("{node}: chain {}: {what}", e.chain)] });
            }
        }
        if let What::Policy { verdict } = &e.what
            && e.chain == base
        {
            return Some(Seen::Seen {
                evidence: vec![format!("{node}: chain {base}: policy {verdict} (not isolated)")],
            });
        }
    }
    None
}

/// What the probe shows at `h`; `reached` when the destination answered or refused
/// (with no drop on the way).
fn hop_seen(h: &Hop, r: &Report, src_node: &str, reached: Option<&str>) -> Option<Seen> {
    let dev = h.facts.get("device").map(String::as_str).unwrap_or("");
    let node = h.at.as_str();
    let seen = |ev: Option<String>| ev.map(|e| Seen::Seen { evidence: vec![e] });
    match h.kind {
        HopKind::Pod => seen(
            r.events
                .iter()
                .find(|e| e.node == src_node)
                .map(|e| format!("{src_node}: the packet arrived ({} {})", e.table, e.chain)),
        ),
        HopKind::Veth | HopKind::Bridge if node == src_node => {
            let bridge = h.facts.get("bridge").map(String::as_str).unwrap_or(dev);
            seen(packet_with(r, node, dev, true).or_else(|| packet_with(r, node, bridge, true)))
        }
        // Bridging to a port is not an IP hook: the pod's answer is what shows it.
        HopKind::Veth => reached.map(|how| Seen::Seen { evidence: vec![format!("the pod behind it {how}")] }),
        HopKind::Bridge => {
            let bridge = h.facts.get("bridge").map(String::as_str).unwrap_or(dev);
            seen(packet_with(r, node, bridge, false).or_else(|| packet_with(r, node, dev, false)))
        }
        HopKind::Dnat if matches!(h.step, Step::Drop { .. }) => on(r, node).find_map(|e| match &e.what {
            What::Rule { rule, verdict } if e.table == crate::proxy::TABLE && verdict_word(verdict) == "drop" => {
                Some(Seen::Dropped {
                    by: format!("chain {}", e.chain),
                    evidence: vec![format!("{node}: chain {}: {rule}", e.chain)],
                })
            }
            _ => None,
        }),
        HopKind::Dnat => {
            let chain = h.facts.get("chain")?;
            let rule = on(r, node).find_map(|e| match &e.what {
                What::Rule { rule, .. } if &e.chain == chain && rule.contains("dnat") => Some(rule.clone()),
                _ => None,
            });
            let mut evidence: Vec<String> = rule.map(|x| format!("{node}: chain {chain}: {x}")).into_iter().collect();
            if let Some((ip, port)) = r.endpoint {
                evidence.push(format!("{node}: conntrack: DNAT to {ip}:{port}"));
            }
            (!evidence.is_empty()).then_some(Seen::Seen { evidence })
        }
        HopKind::Route | HopKind::Vxlan | HopKind::Leave => seen(packet_with(r, node, dev, false)),
        HopKind::Direct => seen(packet_with(r, node, dev, false)),
        HopKind::Decap => seen(packet_with(r, node, dev, true)),
        // Routers have no nftables tracing: an answer from beyond them shows the way.
        HopKind::Router => reached.map(|how| Seen::Seen { evidence: vec![format!("the destination beyond it {how}")] }),
        HopKind::PolicyEgress => policy_seen(r, node, "egress"),
        HopKind::PolicyIngress => policy_seen(r, node, "ingress"),
        HopKind::Deliver => reached.map(|how| Seen::Seen { evidence: vec![format!("the pod {how}")] }),
    }
}

/// Sets each hop's probe result and the trace's probe summary.
pub fn confirm(t: &mut Trace, r: Report) {
    let src_node = t.hops.iter().find(|h| h.kind == HopKind::Veth).map(|h| h.at.clone()).unwrap_or_default();
    let drop = first_drop(&r);
    // A refusal with no drop on the way came from the destination itself: it was reached.
    let reached = match (&r.outcome, &drop) {
        (Outcome::Answered { detail }, _) => Some(format!("answered: {detail}")),
        (Outcome::Refused { detail }, None) => Some(format!("refused: {detail}")),
        _ => None,
    };
    for h in &mut t.hops {
        h.probe = Some(
            hop_seen(h, &r, &src_node, reached.as_deref())
                .unwrap_or_else(|| Seen::NotSeen { why: "no trace event or answer shows the packet here".into() }),
        );
    }
    let dropped = drop.map(|(node, what)| format!("{node}: {what}"));
    let answered = reached.is_some();
    let predicted_drop = t.hops.iter().find(|h| matches!(h.step, Step::Drop { .. }));
    let (agrees, note) = match (&t.verdict, answered, &dropped) {
        (Verdict::Delivered { to }, true, _) => match &r.outcome {
            Outcome::Refused { detail } => (true, format!("the packet reached {to}, which refused it ({detail})")),
            _ => (true, format!("the packet reached {to} and was answered")),
        },
        (Verdict::Delivered { .. }, false, Some(d)) => {
            (false, format!("predicted delivery, but the packet was dropped: {d}"))
        }
        (Verdict::Delivered { .. }, false, None) => (
            false,
            "predicted delivery, but no answer came back (nothing listening, or a drop nftables does not trace)".into(),
        ),
        (Verdict::Dropped { at, .. }, false, Some(d)) => {
            let same = predicted_drop.and_then(|h| h.probe.as_ref()).is_some_and(|s| matches!(s, Seen::Dropped { .. }))
                || drops(&r).any(|(node, _)| node == *at);
            let how = if same { "the probe was dropped there" } else { "the probe was dropped elsewhere" };
            (same, format!("predicted a drop at {at}; {how} ({d})"))
        }
        (Verdict::Dropped { at, .. }, false, None) => (true, format!("predicted a drop at {at}; no answer came back")),
        (Verdict::Dropped { at, .. }, true, _) => (false, format!("predicted a drop at {at}, but an answer came back")),
        (Verdict::Unknown { why }, _, _) => {
            (true, format!("the kernel state could not decide ({why}); the probe shows what happened"))
        }
    };
    t.probe = Some(Summary { sent: r.sent, outcome: r.outcome, dropped, agrees, note, events: r.events });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nft_monitor_trace_lines() {
        let e = parse("node-1", r#"trace id 9d59b453 ip flatnet filter-forward packet: iif "cni0" oif "flatnet.1" ether saddr 0a:58:0a:f4:01:05 ip saddr 10.244.1.5"#).unwrap();
        assert_eq!(e.table, "flatnet");
        assert_eq!(e.chain, "filter-forward");
        assert_eq!(e.what, What::Packet { iif: Some("cni0".into()), oif: Some("flatnet.1".into()) });
        let r = parse(
            "node-2",
            r#"trace id 1 ip flatnet-policy in-00ff counter name "drop-ingress-default/deny" drop (verdict drop)"#,
        );
        assert!(r.is_none(), "a rule line needs the word rule");
        let r = parse(
            "node-2",
            r#"trace id 1 ip flatnet-policy in-00ff rule counter name "drop-ingress-default/deny" drop (verdict drop)"#,
        )
        .unwrap();
        match &r.what {
            What::Rule { rule, verdict } => {
                assert_eq!(verdict, "drop");
                assert_eq!(policies_in(rule), vec!["default/deny".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        let p = parse("n", "trace id 1 ip t pre policy accept ").unwrap();
        assert_eq!(p.what, What::Policy { verdict: "accept".into() });
        assert!(parse("n", "add table ip flatnet-trace").is_none());
    }

    #[test]
    fn the_endpoint_a_dropped_probe_was_sent_to_comes_from_its_dnat_rule() {
        let line = |node, l: &str| parse(node, l).unwrap();
        let events = [
            line(
                "node-1",
                r#"trace id 1 ip flatnet services rule ip daddr . meta l4proto . th dport vmap @service-ips (verdict jump svc-x)"#,
            ),
            line(
                "node-2",
                r#"trace id 1 ip flatnet svc-x rule meta l4proto tcp dnat to 10.244.2.9:80 (verdict accept)"#,
            ),
            line(
                "node-1",
                r#"trace id 1 ip flatnet svc-x rule meta l4proto tcp dnat to 10.244.1.4:8080 comment "default/web:http → 10.244.1.4:8080 (2 of 2)" (verdict accept)"#,
            ),
            line(
                "node-1",
                r#"trace id 1 ip flatnet-policy in-00ff rule counter name "drop-ingress-default/deny" drop (verdict drop)"#,
            ),
        ];
        assert_eq!(dnat_seen(&events, "node-1"), Some(("10.244.1.4".parse().unwrap(), 8080)));
        assert_eq!(dnat_seen(&events[..1], "node-1"), None, "no DNAT rule: no endpoint");
    }
}
