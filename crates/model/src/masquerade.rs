//! Masquerade for pod traffic that leaves the cluster, planned as nftables JSON: the
//! `postrouting` chain of flatnet's own table `ip flatnet`. Traffic between pods (source
//! and destination both in the cluster CIDR) is never rewritten.

use ipnet::Ipv4Net;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Match, NAT, NATFlag, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::collections::HashSet;

pub const TABLE: &str = "flatnet";
pub const FAMILY: NfFamily = NfFamily::IP;
pub const CHAIN: &str = "postrouting";
/// srcnat, where every NAT tool puts masquerade.
const PRIORITY: i32 = 100;

/// The comments of the chain's rules, in order: the identity the agent compares with
/// what the kernel has, so an unchanged chain is left alone.
pub fn rule_comments(cluster: Ipv4Net) -> Vec<String> {
    vec![format!("flatnet: masquerade pod traffic leaving {cluster}")]
}

fn ip_field(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: Cow::Borrowed("ip"),
        field: Cow::Borrowed(field),
    })))
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
        len: u32::from(net.prefix_len()),
    }))
}

fn rules(cluster: Ipv4Net) -> Vec<Rule<'static>> {
    let comments = rule_comments(cluster);
    let multicast: Ipv4Net = "224.0.0.0/4".parse().expect("literal");
    let expr = vec![
        Statement::Match(Match { left: ip_field("saddr"), right: prefix(cluster), op: Operator::EQ }),
        Statement::Match(Match { left: ip_field("daddr"), right: prefix(cluster), op: Operator::NEQ }),
        Statement::Match(Match { left: ip_field("daddr"), right: prefix(multicast), op: Operator::NEQ }),
        Statement::Masquerade(Some(NAT {
            addr: None,
            family: None,
            port: None,
            flags: Some(HashSet::from([NATFlag::FullyRandom])),
        })),
    ];
    vec![Rule {
        family: FAMILY,
        table: TABLE.into(),
        chain: CHAIN.into(),
        expr: expr.into(),
        comment: Some(comments[0].clone().into()),
        ..Rule::default()
    }]
}

fn chain() -> Chain<'static> {
    Chain {
        family: FAMILY,
        table: TABLE.into(),
        name: CHAIN.into(),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

/// One atomic transaction that leaves the chain holding exactly the desired rules
/// (creating the table and chain if needed). The kernel applies it all or nothing, so
/// no packet ever sees a half-written chain.
pub fn transaction(cluster: Ipv4Net) -> Nftables<'static> {
    let mut objects = vec![
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(Table {
            family: FAMILY,
            name: TABLE.into(),
            handle: None,
        }))),
        NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(chain()))),
        NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(chain()))),
    ];
    objects.extend(rules(cluster).into_iter().map(|r| NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(r)))));
    Nftables { objects: objects.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_transaction() {
        let got = serde_json::to_string_pretty(&transaction("10.244.0.0/16".parse().unwrap())).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/masquerade.json");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path).expect("golden file (UPDATE_GOLDEN=1 writes it)");
        assert_eq!(got.trim(), want.trim(), "rendered ruleset changed; UPDATE_GOLDEN=1 to accept");
        assert!(got.contains("\"fully-random\""));
        assert!(got.contains("\"!=\""), "pod-to-pod traffic must be excluded");
    }
}
