//! What a trace reports: the hops in order, each with what it does to the packet, the
//! kernel state behind it and what the probe saw there, and the verdict at the end.

use super::evidence::Summary;
use super::nft::Packet;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HopKind {
    Pod,
    Veth,
    Bridge,
    Dnat,
    Route,
    PolicyEgress,
    PolicyIngress,
    Vxlan,
    Direct,
    /// A router between the nodes (a rack's top-of-rack router, read from BIRD).
    Router,
    Decap,
    Deliver,
    Leave,
}

/// What a hop does with the packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Step {
    Pass,
    Drop { by: String },
    Unknown { why: String },
}

/// What the probe saw at a hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Seen {
    Seen { evidence: Vec<String> },
    Dropped { by: String, evidence: Vec<String> },
    NotSeen { why: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub kind: HopKind,
    /// Where: `pod ns/name`, a node's name, or `underlay`.
    pub at: String,
    pub summary: String,
    /// Machine-readable facts (device, route, endpoint, policy, outer addresses, VNI …).
    pub facts: BTreeMap<String, String>,
    /// The kernel state behind the hop, a line each.
    pub state: Vec<String>,
    pub step: Step,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<Seen>,
}

impl Hop {
    pub(super) fn new(kind: HopKind, at: impl Into<String>, summary: impl Into<String>) -> Self {
        Hop {
            kind,
            at: at.into(),
            summary: summary.into(),
            facts: BTreeMap::new(),
            state: Vec::new(),
            step: Step::Pass,
            probe: None,
        }
    }
    pub(super) fn fact(mut self, k: &str, v: impl ToString) -> Self {
        self.facts.insert(k.to_string(), v.to_string());
        self
    }
    pub(super) fn line(mut self, s: impl Into<String>) -> Self {
        self.state.push(s.into());
        self
    }
    pub(super) fn drop(mut self, by: impl Into<String>) -> Self {
        self.step = Step::Drop { by: by.into() };
        self
    }
    pub(super) fn unknown(mut self, why: impl Into<String>) -> Self {
        self.step = Step::Unknown { why: why.into() };
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verdict {
    Delivered { to: String },
    Dropped { at: String, by: String },
    Unknown { why: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub from: String,
    pub to: String,
    pub packet: Packet,
    pub hops: Vec<Hop>,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<Summary>,
}
