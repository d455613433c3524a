//! The probe's findings as plain data: each node's nftables trace events, how the
//! connection ended, and the summary a [`Trace`](super::Trace) carries. Kept apart from
//! [`super::probe`], which reads trace hops, so that the hop types can hold a summary.

use serde::Serialize;
use std::net::Ipv4Addr;

/// One line of `nft monitor` trace output, with the node it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub node: String,
    pub id: String,
    pub table: String,
    pub chain: String,
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// The packet entered a base chain: its input and output devices.
    Packet { iif: Option<String>, oif: Option<String> },
    /// A rule matched, with its verdict (`continue`, `accept`, `drop`, `jump X`, …).
    Rule { rule: String, verdict: String },
    /// The base chain's policy decided.
    Policy { verdict: String },
}

/// Parses `trace id ID FAMILY TABLE CHAIN …`; None for any other line.
pub fn parse(node: &str, line: &str) -> Option<Event> {
    let rest = line.trim().strip_prefix("trace id ")?;
    let mut words = rest.splitn(5, ' ');
    let (id, _family, table, chain, tail) = (words.next()?, words.next()?, words.next()?, words.next()?, words.next()?);
    let what = if let Some(pkt) = tail.strip_prefix("packet: ") {
        What::Packet { iif: quoted_after(pkt, "iif "), oif: quoted_after(pkt, "oif ") }
    } else if let Some(rule) = tail.strip_prefix("rule ") {
        let (text, verdict) = match rule.rfind(" (verdict ") {
            Some(i) => (&rule[..i], rule[i + 10..].trim_end_matches(')')),
            None => (rule, ""),
        };
        What::Rule { rule: text.to_string(), verdict: verdict.to_string() }
    } else if let Some(v) = tail.strip_prefix("policy ") {
        What::Policy { verdict: v.trim().to_string() }
    } else if let Some(v) = tail.strip_prefix("verdict ") {
        What::Rule { rule: String::new(), verdict: v.trim().to_string() }
    } else {
        return None;
    };
    Some(Event { node: node.into(), id: id.into(), table: table.into(), chain: chain.into(), what })
}

fn quoted_after(s: &str, key: &str) -> Option<String> {
    let i = s.find(key)? + key.len();
    let v = s[i..].strip_prefix('"')?;
    Some(v[..v.find('"')?].to_string())
}

/// How the probe's connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// TCP: the handshake completed; UDP or ICMP: an answer came back.
    Answered {
        detail: String,
    },
    /// A reset or an ICMP error came back.
    Refused {
        detail: String,
    },
    /// Nothing came back in time.
    TimedOut {
        after_ms: u64,
    },
    Failed {
        error: String,
    },
}

/// What the probe gathered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub sent: String,
    pub outcome: Outcome,
    pub events: Vec<Event>,
    /// The endpoint conntrack recorded for the connection, when it was DNATed.
    pub endpoint: Option<(Ipv4Addr, u16)>,
}

/// The probe's part of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub sent: String,
    pub outcome: Outcome,
    /// Where the packet was dropped, by what, as the trace events say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
    /// Whether the probe agrees with what the kernel state predicted.
    pub agrees: bool,
    pub note: String,
    pub events: Vec<Event>,
}
