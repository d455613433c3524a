use super::render::block_ranges;
use super::*;
use crate::selector::LabelSelector;
use serde_json::Value;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn sel(s: &str) -> LabelSelector {
    LabelSelector::parse(s).unwrap()
}

fn pod(app: &str, ip: &str, node: &str) -> Pod {
    Pod {
        labels: labels(&[("app", app)]),
        ip: Some(ip.parse().unwrap()),
        node: Some(node.into()),
        ports: vec![NamedPort { name: "http".into(), proto: Proto::Tcp, port: if app == "api" { 8080 } else { 80 } }],
        finished: false,
    }
}

fn key(ns: &str, name: &str) -> Key {
    (ns.into(), name.into())
}

/// Two namespaces; web-1 and api-1 on node-1, web-2 on node-2, a db in `data`.
fn cluster() -> Cluster {
    let mut c = Cluster::default();
    c.namespaces.insert("shop".into(), labels(&[("team", "shop")]));
    c.namespaces.insert("data".into(), labels(&[("team", "data")]));
    c.pods.insert(key("shop", "web-1"), pod("web", "10.244.1.2", "node-1"));
    c.pods.insert(key("shop", "web-2"), pod("web", "10.244.2.2", "node-2"));
    c.pods.insert(key("shop", "api-1"), pod("api", "10.244.1.3", "node-1"));
    c.pods.insert(key("data", "db-1"), pod("db", "10.244.2.9", "node-2"));
    c.policies.insert(
        key("shop", "web"),
        Policy {
            pod_selector: sel("app=web"),
            ingress: Some(vec![Rule {
                peers: vec![
                    Peer::Pods { namespaces: Namespaces::Own("shop".into()), pods: sel("app=api") },
                    Peer::Block {
                        cidr: "203.0.113.0/24".parse().unwrap(),
                        except: vec!["203.0.113.128/25".parse().unwrap()],
                    },
                ],
                ports: vec![PortMatch::Named(Proto::Tcp, "http".into()), PortMatch::Range(Proto::Udp, 53, 53)],
            }]),
            egress: None,
        },
    );
    c.policies.insert(
        key("shop", "api-out"),
        Policy {
            pod_selector: sel("app=api"),
            ingress: None,
            egress: Some(vec![Rule {
                peers: vec![Peer::Pods {
                    namespaces: Namespaces::Matching(sel("team=data")),
                    pods: LabelSelector::default(),
                }],
                ports: vec![PortMatch::Named(Proto::Tcp, "http".into()), PortMatch::Range(Proto::Tcp, 5432, 5440)],
            }]),
        },
    );
    c
}

/// A chain's rules with each jump to a policy chain replaced by that chain's rules.
fn expanded(s: &State, chain: &str) -> Vec<String> {
    s.chains[chain]
        .iter()
        .flat_map(|r| {
            let v: Value = serde_json::from_str(r).unwrap();
            match v["expr"][0]["jump"]["target"].as_str() {
                Some(target) => s.chains[target].to_vec(),
                None => vec![r.clone()],
            }
        })
        .collect()
}

fn objects(t: &[String]) -> Vec<Value> {
    t.iter().map(|o| serde_json::from_str(o).unwrap()).collect()
}

#[test]
fn golden_ruleset() {
    let state = plan(&cluster(), "node-1");
    let (t, _) = diff(&State::default(), &state);
    let mut all: Vec<Value> = base_transaction();
    all.extend(objects(&t));
    // Everything but verdict maps is valid nft JSON by the nftables crate's schema.
    for o in &all {
        let typed: Result<nftables::schema::NfObject, _> = serde_json::from_value(o.clone());
        assert!(typed.is_ok() || o["add"]["map"]["map"] == "verdict", "not valid nftables JSON: {o}: {typed:?}");
    }
    let got = serde_json::to_string_pretty(&serde_json::json!({"nftables": all})).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/policy.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &got).unwrap();
    }
    let want = std::fs::read_to_string(path).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert!(got == want, "rendered policy ruleset changed; UPDATE_GOLDEN=1 to accept:\n{got}");
}

#[test]
fn each_node_isolates_only_its_own_pods() {
    let c = cluster();
    let one = plan(&c, "node-1");
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
    assert_eq!(one.ingress.keys().copied().collect::<Vec<_>>(), vec![ip("10.244.1.2")]);
    assert_eq!(one.egress.keys().copied().collect::<Vec<_>>(), vec![ip("10.244.1.3")]);
    assert_eq!(one.local.len(), 2);
    let two = plan(&c, "node-2");
    assert_eq!(two.ingress.keys().copied().collect::<Vec<_>>(), vec![ip("10.244.2.2")]);
    assert!(two.egress.is_empty());
    // The same policies on web-1 and web-2 (same named port number) give one chain.
    assert_eq!(one.ingress[&ip("10.244.1.2")], two.ingress[&ip("10.244.2.2")]);
}

#[test]
fn peers_are_sets_of_pod_ips_and_blocks_with_excepts_cut_out() {
    let s = plan(&cluster(), "node-1");
    let api: Vec<_> = s.pod_sets.values().filter(|v| v.len() == 1).collect();
    assert!(api.iter().any(|v| v.contains(&"10.244.1.3".parse().unwrap())), "{:?}", s.pod_sets);
    let ranges: Vec<_> = s.block_sets.values().map(|r| &**r).collect();
    assert_eq!(ranges, vec![&vec![("203.0.113.0".parse().unwrap(), "203.0.113.127".parse().unwrap())]]);
    // Named ports: egress, the data namespace's pods that have it (db-1 on node-2);
    // ingress, this node's pods the policy selects (web-1).
    let mut nport: Vec<_> = s.port_sets.values().map(|v| v.iter().copied().collect::<Vec<_>>()).collect();
    nport.sort();
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
    assert_eq!(nport, vec![vec![(ip("10.244.1.2"), Proto::Tcp, 80)], vec![(ip("10.244.2.9"), Proto::Tcp, 80)]]);
}

#[test]
fn block_ranges_cut_every_except() {
    let r = block_ranges(
        "10.0.0.0/24".parse().unwrap(),
        &["10.0.0.0/30".parse().unwrap(), "10.0.0.128/25".parse().unwrap(), "10.0.0.9/32".parse().unwrap()],
    );
    let want: Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)> = vec![
        ("10.0.0.4".parse().unwrap(), "10.0.0.8".parse().unwrap()),
        ("10.0.0.10".parse().unwrap(), "10.0.0.127".parse().unwrap()),
    ];
    assert_eq!(r, want);
    assert!(block_ranges("10.0.0.0/24".parse().unwrap(), &["10.0.0.0/16".parse().unwrap()]).is_empty());
}

#[test]
fn named_ingress_ports_resolve_on_the_destination_pod() {
    let mut c = cluster();
    // Two web pods on node-1 that call different ports "http".
    let mut web3 = pod("web", "10.244.1.4", "node-1");
    web3.ports[0].port = 9090;
    c.pods.insert(key("shop", "web-3"), web3);
    let s = plan(&c, "node-1");
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
    // One chain for both: the port is looked up in a set of (pod, protocol, port).
    assert_eq!(s.ingress[&ip("10.244.1.2")], s.ingress[&ip("10.244.1.4")]);
    let chain = expanded(&s, &s.ingress[&ip("10.244.1.2")]);
    let set = chain.iter().find_map(|r| r.split("\"@nport-").nth(1)).map(|r| format!("nport-{}", &r[..16])).unwrap();
    let elems: Vec<_> = s.port_sets[&set].iter().copied().collect();
    assert_eq!(elems, vec![(ip("10.244.1.2"), Proto::Tcp, 80), (ip("10.244.1.4"), Proto::Tcp, 9090)]);
    // A pod without the named port is not in the set; the numeric UDP rule stays.
    c.pods.get_mut(&key("shop", "web-3")).unwrap().ports.clear();
    let s = plan(&c, "node-1");
    assert_eq!(s.port_sets[&set].len(), 1);
    assert!(expanded(&s, &s.ingress[&ip("10.244.1.4")]).iter().any(|r| r.contains("\"udp\"")));
}

#[test]
fn empty_rule_lists_isolate_and_one_empty_rule_allows_all() {
    let mut c = cluster();
    c.policies.clear();
    c.policies.insert(
        key("shop", "deny"),
        Policy { pod_selector: LabelSelector::default(), ingress: Some(vec![]), egress: None },
    );
    let s = plan(&c, "node-1");
    assert_eq!(s.ingress.len(), 2);
    let chain = expanded(&s, s.ingress.values().next().unwrap());
    assert_eq!(chain.len(), 1, "only the counted drop: {chain:?}");
    assert!(chain[0].contains("drop-ingress-shop/deny") && chain[0].contains("drop"));
    c.policies.insert(
        key("shop", "allow"),
        Policy { pod_selector: LabelSelector::default(), ingress: Some(vec![Rule::default()]), egress: None },
    );
    let s = plan(&c, "node-1");
    let chain = expanded(&s, s.ingress.values().next().unwrap());
    assert_eq!(chain[0], r#"{"expr":[{"accept":null}]}"#, "an empty rule accepts at once");
    // Both policies count the drops they make together.
    assert!(
        chain.last().unwrap().contains("drop-ingress-shop/allow")
            && chain.last().unwrap().contains("drop-ingress-shop/deny")
    );
}

#[test]
fn a_pod_relabelled_changes_set_elements_not_chains() {
    let mut c = cluster();
    let old = plan(&c, "node-1");
    // A second api pod on node-2: the web policy's peer set grows by one element.
    c.pods.insert(key("shop", "api-2"), pod("api", "10.244.2.3", "node-2"));
    let new = plan(&c, "node-1");
    let (t, n) = diff(&old, &new);
    assert_eq!((n.chains_added, n.chains_removed), (0, 0), "{t:?}");
    assert_eq!(n.elements_changed, 1, "{t:?}");
    assert_eq!(t.len(), 1);
    assert!(t[0].starts_with(r#"{"add":{"element""#) && t[0].contains("10.244.2.3"), "{t:?}");
    // And back: one delete.
    let (t, _) = diff(&new, &old);
    assert!(t.len() == 1 && t[0].starts_with(r#"{"delete":{"element""#), "{t:?}");
}

#[test]
fn diff_of_equal_states_is_empty_and_removal_goes_in_order() {
    let s = plan(&cluster(), "node-1");
    assert!(diff(&s, &s).0.is_empty());
    let (t, n) = diff(&s, &State::default());
    assert_eq!(n.chains_removed, s.chains.len());
    let pos = |needle: &str| t.iter().position(|o| o.contains(needle)).unwrap_or_else(|| panic!("{needle} in {t:?}"));
    // Map elements go before the chains they jump to, sets and counters after.
    assert!(pos(r#""name":"ingress""#) < pos(r#"{"delete":{"chain""#));
    assert!(pos(r#"{"delete":{"chain""#) < pos(r#"{"delete":{"set""#));
    assert!(pos(r#"{"delete":{"set""#) < pos(r#"{"delete":{"counter""#));
}

#[test]
fn the_kernel_listing_reads_back_as_the_state() {
    let s = plan(&cluster(), "node-1");
    // What `nft -j list table` prints for it, in the shape nft uses.
    let mut listing = vec![serde_json::json!({"metainfo": {"version": "1.0.6"}})];
    let t = |o: Value| -> Value { o };
    for c in &s.counters {
        listing.push(t(
            serde_json::json!({"counter": {"family": "ip", "table": TABLE, "name": c, "packets": 0, "bytes": 0}}),
        ));
    }
    for (name, ips) in &s.pod_sets {
        let elem: Vec<String> = ips.iter().map(ToString::to_string).collect();
        listing.push(serde_json::json!({"set": {"family": "ip", "table": TABLE, "name": name, "type": "ipv4_addr", "elem": elem}}));
    }
    for name in s.block_sets.keys() {
        listing.push(serde_json::json!({"set": {"family": "ip", "table": TABLE, "name": name, "type": "ipv4_addr", "flags": ["interval"]}}));
    }
    for (name, e) in &s.port_sets {
        let elem: Vec<Value> =
            e.iter().map(|(ip, p, port)| serde_json::json!({"concat": [ip.to_string(), p.word(), port]})).collect();
        listing.push(serde_json::json!({"set": {"family": "ip", "table": TABLE, "name": name, "elem": elem}}));
    }
    for name in s.chains.keys().chain(["egress".to_string(), "ingress".to_string()].iter()) {
        listing.push(serde_json::json!({"chain": {"family": "ip", "table": TABLE, "name": name}}));
    }
    for (map, m) in [("ingress", &s.ingress), ("egress", &s.egress)] {
        let elem: Vec<Value> =
            m.iter().map(|(ip, c)| serde_json::json!([ip.to_string(), {"jump": {"target": c}}])).collect();
        listing.push(
            serde_json::json!({"map": {"family": "ip", "table": TABLE, "name": map, "map": "verdict", "elem": elem}}),
        );
    }
    let local: Vec<Value> =
        s.local.iter().map(|ip| serde_json::json!({"concat": [ip.to_string(), ip.to_string()]})).collect();
    listing.push(serde_json::json!({"set": {"family": "ip", "table": TABLE, "name": "local-self", "elem": local}}));
    let read = State::from_listing(&serde_json::json!({"nftables": listing}));
    // A restart over a table that is already right has nothing to do.
    assert!(diff(&read, &s).0.is_empty(), "{:?}", diff(&read, &s).0);
}

#[test]
fn counter_names_round_trip_and_stay_short() {
    let k = key("shop", "web");
    assert_eq!(
        parse_counter_name(&counter_name(Direction::Egress, &k)),
        Some((Direction::Egress, "shop".into(), "web".into()))
    );
    let long = key("n", &"p".repeat(250));
    assert!(counter_name(Direction::Ingress, &long).len() < 256);
}

/// Two of this node's pods can hold one address for a moment (one going, the next
/// coming): a planner that keeps its state maps the address as a plan from nothing
/// does, at every step.
#[test]
fn an_address_two_pods_hold_maps_as_a_plan_from_nothing_does() {
    let mut c = cluster();
    // Web pods isolated for egress too, by another chain than api pods.
    let web_out = Policy { pod_selector: sel("app=web"), ingress: None, egress: Some(vec![Rule::default()]) };
    c.policies.insert(key("shop", "web-out"), web_out);
    let mut planner = Planner::new("node-1");
    assert_eq!(planner.plan(&c), plan(&c, "node-1"));
    let steps: [&dyn Fn(&mut Cluster); 5] = [
        // An api pod (isolated for egress) comes with web-1's address (isolated for ingress).
        &|c| drop(c.pods.insert(key("shop", "z-api"), pod("api", "10.244.1.2", "node-1"))),
        &|c| drop(c.pods.insert(key("shop", "a-web"), pod("web", "10.244.1.2", "node-1"))),
        &|c| drop(c.pods.remove(&key("shop", "web-1"))),
        &|c| drop(c.pods.remove(&key("shop", "z-api"))),
        &|c| c.policies.clear(),
    ];
    for (i, step) in steps.iter().enumerate() {
        step(&mut c);
        let fresh = plan(&c, "node-1");
        assert_eq!(planner.plan(&c), fresh, "step {i}");
        if i == 1 {
            assert!(
                fresh.ingress.contains_key(&"10.244.1.2".parse().unwrap())
                    && fresh.egress.contains_key(&"10.244.1.2".parse().unwrap())
            );
        }
    }
}

/// With many pods, one changed pod refreshes only the sets it is or was in: those sets
/// still come out as a plan from nothing makes them.
#[test]
fn one_pod_changed_among_many_refreshes_its_sets() {
    let mut c = cluster();
    for i in 0..20 {
        c.pods.insert(key("shop", &format!("api-x{i:02}")), pod("api", &format!("10.244.2.{}", 20 + i), "node-2"));
    }
    let mut planner = Planner::new("node-1");
    assert_eq!(planner.plan(&c), plan(&c, "node-1"));
    let steps: [&dyn Fn(&mut Cluster); 3] = [
        &|c| c.pods.get_mut(&key("shop", "api-x03")).unwrap().labels = labels(&[("app", "web")]),
        &|c| c.pods.get_mut(&key("shop", "api-x07")).unwrap().ip = Some("10.244.2.99".parse().unwrap()),
        &|c| drop(c.pods.remove(&key("shop", "api-x11"))),
    ];
    for (i, step) in steps.iter().enumerate() {
        step(&mut c);
        assert_eq!(planner.plan(&c), plan(&c, "node-1"), "step {i}");
    }
}
