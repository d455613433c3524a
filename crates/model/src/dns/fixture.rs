//! A small cluster's zone and the invariants every reply must hold, shared by the unit
//! tests, the fuzz target (`crates/model/fuzz`) and the replay of its corpus.

use super::*;

pub fn port(name: &str, protocol: &str, port: u16) -> Port {
    Port { name: name.into(), protocol: protocol.into(), port }
}

pub fn ep(ip: &str, hostname: Option<&str>, ready: bool) -> Endpoint {
    Endpoint { ip: ip.parse().expect("literal"), hostname: hostname.map(Into::into), ready }
}

/// A ClusterIP Service with a named and an unnamed port, a headless one with a ready
/// endpoint with a hostname, one without and one not ready, an empty headless one, an
/// ExternalName, and a pod.
pub fn sample_zone() -> Zone {
    let svc = |ns: &str, name: &str, kind: ServiceKind, ports: Vec<Port>| Service {
        namespace: ns.into(),
        name: name.into(),
        kind,
        ports,
    };
    let services = [
        (
            svc(
                "default",
                "web",
                ServiceKind::ClusterIp(vec!["10.96.0.20".parse().expect("literal")]),
                vec![port("http", "tcp", 80), port("", "udp", 53)],
            ),
            vec![],
        ),
        (
            svc("db", "pg", ServiceKind::Headless, vec![port("sql", "tcp", 5432)]),
            vec![Slice {
                ports: vec![port("sql", "tcp", 5432)],
                endpoints: vec![
                    ep("10.244.1.5", Some("pg-0"), true),
                    ep("10.244.2.6", None, true),
                    ep("10.244.3.7", Some("pg-2"), false),
                ],
            }],
        ),
        (svc("db", "empty", ServiceKind::Headless, vec![]), vec![Slice::default()]),
        (svc("default", "ext", ServiceKind::ExternalName("db.example.com".into()), vec![]), vec![]),
    ];
    let pods: [(&str, PodIps); 1] = [("default", Box::new(["10.244.1.9".parse().expect("literal")]))];
    let cfg = ZoneConfig { nameserver: Some("10.96.0.10".parse().expect("literal")), ..ZoneConfig::default() };
    Zone::build(&cfg, 1, services.iter().map(|(s, sl)| (s, sl.iter().collect())), pods.iter().map(|(n, ips)| (*n, ips)))
}

/// Runs `packet` through the request path over UDP and TCP and panics when a reply
/// breaks a rule: the query's id, QR set, the question echoed, UDP within its limit.
pub fn exercise(zone: &Zone, packet: &[u8]) {
    let mut out = Vec::new();
    for t in [Transport::Udp, Transport::Tcp] {
        match respond(zone, packet, t, &mut out) {
            Outcome::Reply => {
                assert!(out.len() >= 12, "a reply has a header");
                assert_eq!(out[..2], packet[..2], "the id is echoed");
                assert!(out[2] & 0x80 != 0, "QR is set");
                let qd = u16::from_be_bytes([out[4], out[5]]);
                assert!(qd <= 1);
                if t == Transport::Udp {
                    assert!(out.len() <= EDNS_SIZE as usize, "a UDP reply fits");
                }
            }
            Outcome::Forward => assert!(out.is_empty()),
            Outcome::Drop => {}
        }
    }
    let _ = udp_limit(packet);
    let _ = error_reply(packet, Rcode::Refused, &mut out);
    let mut cut = Vec::new();
    truncate_to(packet, 12, &mut cut);
}
