//! A two-node world read as the kernel would list it: the trace must walk it as the
//! kernel would.

use super::*;
use serde_json::json;
use std::net::Ipv4Addr;

const CLIENT: &str = "10.244.1.5";
const SERVER: &str = "10.244.2.7";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub(crate) fn link(index: u32, name: &str, kind: &str, master: Option<u32>, addrs: &[&str]) -> LinkFacts {
    LinkFacts {
        index,
        name: name.into(),
        kind: Some(kind.into()),
        mtu: 1450,
        up: true,
        master,
        mac: None,
        peer: None,
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        vxlan: None,
    }
}

fn policy_table(isolated: &str, allowed_from: &str) -> nft::Table {
    let listing = json!({"nftables": [
        {"chain": {"table": "flatnet-policy", "name": "ingress"}},
        {"rule": {"table": "flatnet-policy", "chain": "ingress", "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
        {"rule": {"table": "flatnet-policy", "chain": "ingress", "expr": [
            {"match": {"op": "==", "left": {"concat": [{"payload": {"protocol": "ip", "field": "saddr"}}, {"payload": {"protocol": "ip", "field": "daddr"}}]}, "right": "@local-self"}}, {"accept": null}]}},
        {"rule": {"table": "flatnet-policy", "chain": "ingress", "expr": [
            {"vmap": {"key": {"payload": {"protocol": "ip", "field": "daddr"}}, "data": "@ingress"}}]}},
        {"chain": {"table": "flatnet-policy", "name": "egress"}},
        {"rule": {"table": "flatnet-policy", "chain": "egress", "expr": [
            {"vmap": {"key": {"payload": {"protocol": "ip", "field": "saddr"}}, "data": "@egress"}}]}},
        {"map": {"table": "flatnet-policy", "name": "ingress", "elem": [[isolated, {"jump": {"target": "in-0000000000000001"}}]]}},
        {"map": {"table": "flatnet-policy", "name": "egress"}},
        {"set": {"table": "flatnet-policy", "name": "local-self"}},
        {"set": {"table": "flatnet-policy", "name": "pods-1", "elem": [allowed_from]}},
        {"rule": {"table": "flatnet-policy", "chain": "in-0000000000000001", "expr": [{"jump": {"target": "pol-ingress-default/web-only-00000000000000aa"}}]}},
        {"rule": {"table": "flatnet-policy", "chain": "in-0000000000000001", "expr": [{"counter": "drop-ingress-default/web-only"}, {"drop": null}]}},
        {"rule": {"table": "flatnet-policy", "chain": "pol-ingress-default/web-only-00000000000000aa", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@pods-1"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"range": [8000, 8100]}}},
            {"accept": null}]}},
    ]});
    nft::Table::from_listing(&listing, "flatnet-policy")
}

fn proxy_table() -> nft::Table {
    let listing = json!({"nftables": [
        {"map": {"table": "flatnet", "name": "service-ips", "elem": [
            [{"concat": ["10.96.0.20", "tcp", 80]}, {"goto": {"target": "svc-default/web/tcp/http-1234"}}]]}},
        {"set": {"table": "flatnet", "name": "no-endpoint-services", "elem": [{"concat": ["10.96.0.30", "tcp", 80]}]}},
        {"rule": {"table": "flatnet", "chain": "svc-default/web/tcp/http-1234", "comment": "default/web → 10.244.2.7:8080 (1 of 1)",
            "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"dnat": {"addr": SERVER, "port": 8080}}]}},
    ]});
    nft::Table::from_listing(&listing, "flatnet")
}

/// node-1 (client) and node-2 (server), VXLAN between them, every entry in place.
fn world(dst: &str, port: u16) -> World {
    let mut w = World::default();
    let eth0 = |peer: u32, addr: &str| LinkFacts { peer: Some(peer), ..link(2, "eth0", "veth", None, &[addr]) };
    w.src = PodFacts {
        namespace: "default".into(),
        name: "client".into(),
        ip: Some(ip(CLIENT)),
        node: Some("node-1".into()),
        eth0: Some(eth0(10, "10.244.1.5/24")),
        routes: vec![RouteFacts { dst: "0.0.0.0/0".parse().unwrap(), gateway: Some(ip("10.244.1.1")), oif: Some(2) }],
    };
    let server = PodFacts {
        namespace: "default".into(),
        name: "server".into(),
        ip: Some(ip(SERVER)),
        node: Some("node-2".into()),
        eth0: Some(eth0(20, "10.244.2.7/24")),
        routes: vec![],
    };
    w.pods.insert(ip(SERVER), server);
    w.pods.insert(ip(CLIENT), w.src.clone());
    let vx = |local: &str| VxlanFacts { vni: 1, port: 8472, local: Some(ip(local)), underlay: Some(2) };
    let mut n1 = NodeFacts {
        name: "node-1".into(),
        underlay_ip: Some(ip("192.168.1.2")),
        forwarding: Some(true),
        ..Default::default()
    };
    n1.links = vec![
        link(2, "eth0", "veth", None, &["192.168.1.2/24"]),
        link(3, "cni0", "bridge", None, &["10.244.1.1/24"]),
        LinkFacts { vxlan: Some(vx("192.168.1.2")), ..link(4, "flatnet.1", "vxlan", None, &["10.244.1.0/32"]) },
        link(10, "veth1234", "veth", Some(3), &[]),
    ];
    n1.routes = vec![
        RouteFacts { dst: "10.244.1.0/24".parse().unwrap(), gateway: None, oif: Some(3) },
        RouteFacts { dst: "10.244.2.0/24".parse().unwrap(), gateway: Some(ip("10.244.2.0")), oif: Some(4) },
        RouteFacts { dst: "192.168.1.0/24".parse().unwrap(), gateway: None, oif: Some(2) },
    ];
    n1.neighbours =
        vec![Neighbour { ifindex: 4, ip: ip("10.244.2.0"), mac: Some([2, 0, 0, 0, 0, 2]), state: "permanent".into() }];
    n1.fdb = vec![Fdb { ifindex: 4, mac: [2, 0, 0, 0, 0, 2], dst: ip("192.168.1.3") }];
    let lk = |kind: &str, oif: u32, gw: Option<&str>| Lookup {
        kind: kind.into(),
        oif: Some(oif),
        gateway: gw.map(ip),
        prefsrc: None,
    };
    n1.lookups = vec![
        ((Some(ip(CLIENT)), ip(SERVER), Some(3)), lk("unicast", 4, Some("10.244.2.0"))),
        ((None, ip("192.168.1.3"), None), Lookup { prefsrc: Some(ip("192.168.1.2")), ..lk("unicast", 2, None) }),
    ];
    n1.proxy = Some(proxy_table());
    let mut n2 = NodeFacts {
        name: "node-2".into(),
        underlay_ip: Some(ip("192.168.1.3")),
        forwarding: Some(true),
        ..Default::default()
    };
    n2.links = vec![
        link(2, "eth0", "veth", None, &["192.168.1.3/24"]),
        link(3, "cni0", "bridge", None, &["10.244.2.1/24"]),
        LinkFacts { vxlan: Some(vx("192.168.1.3")), ..link(4, "flatnet.1", "vxlan", None, &["10.244.2.0/32"]) },
        link(20, "veth5678", "veth", Some(3), &[]),
    ];
    n2.lookups = vec![((Some(ip(CLIENT)), ip(SERVER), Some(4)), lk("unicast", 3, None))];
    n2.policy = Some(policy_table(SERVER, CLIENT));
    w.nodes.insert("node-1".into(), n1);
    w.nodes.insert("node-2".into(), n2);
    w.target = Some(Target::Pod("default/server".into()));
    w.packet = Some(Packet { src: ip(CLIENT), dst: ip(dst), proto: L4::Tcp, port: Some(port) });
    w
}

fn kinds(t: &Trace) -> Vec<HopKind> {
    t.hops.iter().map(|h| h.kind).collect()
}

fn hop(t: &Trace, k: HopKind) -> &Hop {
    t.hops.iter().find(|h| h.kind == k).unwrap_or_else(|| panic!("no {k:?} hop in {}", render::text(t, true)))
}

#[test]
fn pod_to_pod_across_nodes_names_devices_routes_outer_ips_and_vni() {
    let t = build(&world(SERVER, 8080));
    use HopKind::*;
    assert_eq!(
        kinds(&t),
        vec![Pod, Veth, Bridge, Route, PolicyEgress, Vxlan, Decap, Route, PolicyIngress, Bridge, Veth, Deliver],
        "{}",
        render::text(&t, true)
    );
    assert_eq!(t.verdict, Verdict::Delivered { to: "pod default/server".into() });
    assert_eq!(hop(&t, Veth).facts["device"], "veth1234");
    assert_eq!(hop(&t, Route).facts["route"], "10.244.2.0/24 via 10.244.2.0 dev flatnet.1");
    let vx = hop(&t, Vxlan);
    assert_eq!(
        (
            vx.facts["outer_src"].as_str(),
            vx.facts["outer_dst"].as_str(),
            vx.facts["vni"].as_str(),
            vx.facts["udp_port"].as_str()
        ),
        ("192.168.1.2", "192.168.1.3", "1", "8472")
    );
    assert_eq!(vx.facts["underlay_device"], "eth0");
    assert_eq!(hop(&t, PolicyIngress).facts["policy"], "default/web-only");
    assert_eq!(t.hops.last().unwrap().at, "pod default/server");
    let text = render::text(&t, false);
    assert!(text.contains("VXLAN  UDP 192.168.1.2 → 192.168.1.3:8472  VNI 1"), "{text}");
}

#[test]
fn a_service_names_the_endpoint_and_its_chain() {
    let mut w = world("10.96.0.20", 80);
    w.target = Some(Target::Service { namespace: "default".into(), name: "web".into() });
    // Without a probe the trace follows the first endpoint; the DNAT changes the port.
    let t = build(&w);
    let d = hop(&t, HopKind::Dnat);
    assert_eq!(d.facts["endpoint"], "10.244.2.7:8080");
    assert_eq!(d.facts["chain"], "svc-default/web/tcp/http-1234");
    assert_eq!(t.verdict, Verdict::Delivered { to: "pod default/server".into() }, "{}", render::text(&t, true));
    // A Service with no endpoint is rejected at the DNAT hop.
    let mut w = world("10.96.0.30", 80);
    w.target = Some(Target::Service { namespace: "default".into(), name: "empty".into() });
    let t = build(&w);
    assert!(matches!(&t.verdict, Verdict::Dropped { by, .. } if by.contains("no ready endpoint")), "{:?}", t.verdict);
}

#[test]
fn a_policy_drop_names_the_policy_and_stops_the_trace() {
    let mut w = world(SERVER, 8080);
    // Only 10.244.1.99 may connect: the client is dropped by web-only on node-2.
    w.nodes.get_mut("node-2").unwrap().policy = Some(policy_table(SERVER, "10.244.1.99"));
    let t = build(&w);
    let h = hop(&t, HopKind::PolicyIngress);
    assert_eq!(h.facts["verdict"], "drop");
    assert_eq!(h.facts["policy"], "default/web-only");
    assert_eq!(h.at, "node-2");
    assert!(matches!(&t.verdict, Verdict::Dropped { at, by } if at == "node-2" && by.contains("default/web-only")));
    assert_eq!(t.hops.last().unwrap().kind, HopKind::PolicyIngress, "nothing after the drop");
    // A port outside the rule's range is dropped too; a pod no map holds is not isolated.
    assert!(matches!(build(&world(SERVER, 9000)).verdict, Verdict::Dropped { .. }));
    let mut w = world(SERVER, 9000);
    w.nodes.get_mut("node-2").unwrap().policy = Some(policy_table("10.244.2.99", CLIENT));
    assert!(matches!(build(&w).verdict, Verdict::Delivered { .. }));
}

#[test]
fn missing_kernel_state_is_named_where_it_breaks_the_path() {
    // No FDB entry for the peer's VTEP: the encapsulated packet has nowhere to go.
    let mut w = world(SERVER, 8080);
    w.nodes.get_mut("node-1").unwrap().fdb.clear();
    let t = build(&w);
    assert!(matches!(&t.verdict, Verdict::Dropped { by, .. } if by.contains("no FDB entry")), "{:?}", t.verdict);
    // Forwarding off on the sending node.
    let mut w = world(SERVER, 8080);
    w.nodes.get_mut("node-1").unwrap().forwarding = Some(false);
    assert!(matches!(&build(&w).verdict, Verdict::Dropped { by, .. } if by.contains("ip_forward")));
    // A VNI that differs between the nodes.
    let mut w = world(SERVER, 8080);
    let n2 = w.nodes.get_mut("node-2").unwrap();
    n2.links.iter_mut().for_each(|l| {
        if let Some(v) = &mut l.vxlan {
            v.vni = 2
        }
    });
    assert!(matches!(&build(&w).verdict, Verdict::Dropped { at, by } if at == "node-2" && by.contains("VNI 2")));
}

#[test]
fn the_probe_confirms_hops_and_reports_the_drop() {
    let mut w = world(SERVER, 8080);
    w.nodes.get_mut("node-2").unwrap().policy = Some(policy_table(SERVER, "10.244.1.99"));
    let mut t = build(&w);
    let lines = [
        ("node-1", r#"trace id a ip flatnet nat-prerouting packet: iif "cni0" ip saddr 10.244.1.5"#),
        ("node-1", r#"trace id a ip flatnet-policy egress packet: iif "cni0" oif "flatnet.1" ip saddr 10.244.1.5"#),
        ("node-1", "trace id a ip flatnet-policy egress policy accept"),
        ("node-2", r#"trace id b ip flatnet-policy ingress packet: iif "flatnet.1" oif "cni0" ip saddr 10.244.1.5"#),
        (
            "node-2",
            r#"trace id b ip flatnet-policy in-0000000000000001 rule counter name "drop-ingress-default/web-only" drop (verdict drop)"#,
        ),
    ];
    let events = lines.iter().filter_map(|(n, l)| probe::parse(n, l)).collect();
    probe::confirm(
        &mut t,
        probe::Report {
            sent: "TCP SYN".into(),
            outcome: probe::Outcome::TimedOut { after_ms: 1000 },
            events,
            endpoint: None,
        },
    );
    let seen = |k: HopKind| hop(&t, k).probe.clone().unwrap();
    assert!(matches!(seen(HopKind::Vxlan), Seen::Seen { .. }));
    assert!(matches!(seen(HopKind::Decap), Seen::Seen { .. }));
    assert!(matches!(seen(HopKind::PolicyEgress), Seen::Seen { .. }));
    assert!(matches!(seen(HopKind::PolicyIngress), Seen::Dropped { by, .. } if by.contains("default/web-only")));
    let p = t.probe.as_ref().unwrap();
    assert!(p.agrees, "{}", p.note);
    assert!(p.dropped.as_deref().unwrap().contains("node-2"));
    // The same events against a trace that predicted delivery disagree.
    let mut t2 = build(&world(SERVER, 8080));
    probe::confirm(
        &mut t2,
        probe::Report {
            sent: "TCP SYN".into(),
            outcome: probe::Outcome::TimedOut { after_ms: 1000 },
            events: t.probe.clone().unwrap().events,
            endpoint: None,
        },
    );
    assert!(!t2.probe.unwrap().agrees);
}

#[test]
fn host_gw_routes_directly_to_the_node() {
    let mut w = world(SERVER, 8080);
    let n1 = w.nodes.get_mut("node-1").unwrap();
    n1.links.retain(|l| l.vxlan.is_none());
    n1.routes[1] = RouteFacts { dst: "10.244.2.0/24".parse().unwrap(), gateway: Some(ip("192.168.1.3")), oif: Some(2) };
    n1.lookups[0].1 = Lookup { kind: "unicast".into(), oif: Some(2), gateway: Some(ip("192.168.1.3")), prefsrc: None };
    let n2 = w.nodes.get_mut("node-2").unwrap();
    n2.links.retain(|l| l.vxlan.is_none());
    n2.lookups[0].0 = (Some(ip(CLIENT)), ip(SERVER), Some(2));
    let t = build(&w);
    use HopKind::*;
    assert_eq!(
        kinds(&t),
        vec![Pod, Veth, Bridge, Route, PolicyEgress, Direct, Route, PolicyIngress, Bridge, Veth, Deliver],
        "{}",
        render::text(&t, true)
    );
    let d = hop(&t, Direct);
    assert_eq!((d.facts["device"].as_str(), d.facts["next_hop"].as_str()), ("eth0", "192.168.1.3"));
    assert_eq!(t.verdict, Verdict::Delivered { to: "pod default/server".into() });
}

#[test]
fn without_the_pods_namespace_the_trace_goes_on_from_the_bridge() {
    // On a real node: no pod namespace, and no bridge port has learned the pod's MAC.
    let mut w = world(SERVER, 8080);
    w.src.eth0 = None;
    w.src.routes.clear();
    w.nodes.get_mut("node-1").unwrap().links.retain(|l| l.name != "veth1234");
    let t = build(&w);
    let v = hop(&t, HopKind::Veth);
    assert_eq!(v.step, Step::Pass);
    assert_eq!(v.facts["bridge"], "cni0");
    assert!(matches!(t.verdict, Verdict::Delivered { .. }), "{}", render::text(&t, true));
}

#[test]
fn bgp_across_racks_shows_the_peer_the_route_came_from_and_each_router() {
    // node-1 (192.168.1.2) reaches node-2's Pod CIDR through rack 1's router and the core.
    let mut w = world(SERVER, 8080);
    let n1 = w.nodes.get_mut("node-1").unwrap();
    n1.links.retain(|l| l.vxlan.is_none());
    n1.routes[1] =
        RouteFacts { dst: "10.244.2.0/24".parse().unwrap(), gateway: Some(ip("192.168.1.254")), oif: Some(2) };
    n1.lookups[0].1 =
        Lookup { kind: "unicast".into(), oif: Some(2), gateway: Some(ip("192.168.1.254")), prefsrc: None };
    n1.bgp_routes = vec![BgpRouteFacts {
        prefix: "10.244.2.0/24".parse().unwrap(),
        next_hop: ip("192.168.1.254"),
        peer: "rack-1".into(),
        as_path: vec![65001, 65002, 64514],
    }];
    let n2 = w.nodes.get_mut("node-2").unwrap();
    n2.underlay_ip = Some(ip("192.168.2.3"));
    n2.links[0] = link(2, "eth0", "veth", None, &["192.168.2.3/24"]);
    n2.links.retain(|l| l.vxlan.is_none());
    n2.lookups = vec![(
        (Some(ip(CLIENT)), ip(SERVER), Some(2)),
        Lookup { kind: "unicast".into(), oif: Some(3), gateway: None, prefsrc: None },
    )];
    let bird = |text: &str| parse_bird_routes(text);
    w.routers = vec![
        RouterFacts {
            name: "router-1".into(),
            addrs: vec![ip("192.168.1.254"), ip("192.168.0.1")],
            routes: bird(
                "Table master4:\n10.244.2.0/24        unicast [rack2 09:47:00.874] * (100) [AS64514i]\n\tvia 192.168.0.2 on core\n\tType: BGP univ\n\tBGP.as_path: 65002 64514\n",
            ),
        },
        RouterFacts {
            name: "router-2".into(),
            addrs: vec![ip("192.168.2.254"), ip("192.168.0.2")],
            routes: bird(
                "10.244.2.0/24        unicast [node1 09:47:00.874] * (100) [AS64514i]\n\tvia 192.168.2.3 on eth0\n\tBGP.as_path: 64514\n                     unicast [node9 09:47:00.874] (100) [AS64599i]\n\tvia 192.168.2.9 on eth0\n",
            ),
        },
    ];
    let t = build(&w);
    use HopKind::*;
    assert_eq!(
        kinds(&t),
        vec![
            Pod,
            Veth,
            Bridge,
            Route,
            PolicyEgress,
            Direct,
            Router,
            Router,
            Route,
            PolicyIngress,
            Bridge,
            Veth,
            Deliver
        ],
        "{}",
        render::text(&t, true)
    );
    assert_eq!(t.verdict, Verdict::Delivered { to: "pod default/server".into() });
    let r = hop(&t, Route);
    assert_eq!(r.facts["bgp_peer"], "rack-1");
    let text = render::text(&t, true);
    assert!(text.contains("learned by BGP from rack-1: next hop 192.168.1.254, AS path 65001 65002 64514"), "{text}");
    assert!(text.contains("10.244.2.0/24 via 192.168.0.2 on core (learned from rack2)"), "{text}");
    assert!(text.contains("10.244.2.0/24 via 192.168.2.3 on eth0 (learned from node1)"), "{text}");
    assert!(!text.contains("VXLAN"), "no encapsulation: {text}");
    // A router without a route drops it, and says so.
    w.routers[1].routes.clear();
    let t = build(&w);
    assert!(
        matches!(&t.verdict, Verdict::Dropped { by, .. } if by.contains("router-2 has no route")),
        "{:?}",
        t.verdict
    );
}
