//! The request path against a small cluster, every reply read back with hickory-proto
//! (an independent implementation of the wire format).

use super::fixture::{ep, port};
use super::*;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use std::net::IpAddr;

fn cluster() -> Zone {
    fixture::sample_zone()
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn ask(zone: &Zone, packet: &[u8], transport: Transport) -> Message {
    let mut out = Vec::new();
    assert_eq!(respond(zone, packet, transport, &mut out), Outcome::Reply);
    Message::from_vec(&out).expect("the reply parses")
}

fn lookup(zone: &Zone, name: &str, t: RecordType) -> Message {
    ask(zone, &query(name, t), Transport::Udp)
}

fn data(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

#[test]
fn a_cluster_ip_service_answers_its_address_whatever_the_case() {
    let z = cluster();
    let m = lookup(&z, "Web.Default.SVC.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(data(&m), ["10.96.0.20"]);
    assert_eq!(m.answers[0].ttl, 5);
    // The client's spelling comes back, in the question and as the answer's owner.
    assert_eq!(m.queries[0].name().to_ascii(), "Web.Default.SVC.cluster.local.");
    assert_eq!(m.answers[0].name.to_ascii(), "Web.Default.SVC.cluster.local.");
}

#[test]
fn missing_names_are_nxdomain_and_missing_types_are_nodata_both_with_the_soa() {
    let z = cluster();
    for (name, t, rcode) in [
        ("nope.default.svc.cluster.local.", RecordType::A, ResponseCode::NXDomain),
        ("web.default.svc.cluster.local.default.svc.cluster.local.", RecordType::A, ResponseCode::NXDomain),
        ("web.default.svc.cluster.local.", RecordType::AAAA, ResponseCode::NoError),
        ("default.svc.cluster.local.", RecordType::A, ResponseCode::NoError),
        ("svc.cluster.local.", RecordType::A, ResponseCode::NoError),
        ("pod.cluster.local.", RecordType::A, ResponseCode::NoError),
        ("empty.db.svc.cluster.local.", RecordType::A, ResponseCode::NXDomain),
        ("10-244-1-8.default.pod.cluster.local.", RecordType::A, ResponseCode::NXDomain),
    ] {
        let m = lookup(&z, name, t);
        assert_eq!(m.metadata.response_code, rcode, "{name} {t}");
        assert!(m.answers.is_empty(), "{name}");
        assert_eq!(m.authorities.len(), 1, "{name}");
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(m.authorities[0].name.to_ascii(), "cluster.local.");
    }
}

#[test]
fn headless_services_answer_ready_endpoints_and_their_hostnames() {
    let z = cluster();
    assert_eq!(data(&lookup(&z, "pg.db.svc.cluster.local.", RecordType::A)), ["10.244.1.5", "10.244.2.6"]);
    assert_eq!(data(&lookup(&z, "pg-0.pg.db.svc.cluster.local.", RecordType::A)), ["10.244.1.5"]);
    assert_eq!(data(&lookup(&z, "10-244-2-6.pg.db.svc.cluster.local.", RecordType::A)), ["10.244.2.6"]);
    // Not ready: no record.
    let m = lookup(&z, "pg-2.pg.db.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn srv_records_name_the_port_and_carry_the_targets_addresses() {
    let z = cluster();
    let m = lookup(&z, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(data(&m), ["0 100 80 web.default.svc.cluster.local."]);
    assert_eq!(m.additionals.iter().map(|r| r.data.to_string()).collect::<Vec<_>>(), ["10.96.0.20"]);
    // The plain form lists every port.
    let m = lookup(&z, "web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(data(&m), ["0 100 53 web.default.svc.cluster.local.", "0 100 80 web.default.svc.cluster.local."]);
    // Headless: one per endpoint, each naming the endpoint.
    let m = lookup(&z, "_sql._tcp.pg.db.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        data(&m),
        ["0 100 5432 10-244-2-6.pg.db.svc.cluster.local.", "0 100 5432 pg-0.pg.db.svc.cluster.local."]
    );
    assert_eq!(m.additionals.len(), 2);
    // An unnamed port has no `_port._proto` name; a wrong protocol is no name either.
    assert_eq!(
        lookup(&z, "_sql._udp.pg.db.svc.cluster.local.", RecordType::SRV).metadata.response_code,
        ResponseCode::NXDomain
    );
}

#[test]
fn reverse_lookups_name_the_service_or_the_endpoint() {
    let z = cluster();
    let m = lookup(&z, "20.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&m), ["web.default.svc.cluster.local."]);
    let m = lookup(&z, "5.1.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&m), ["pg-0.pg.db.svc.cluster.local."]);
    assert_eq!(reverse_name("10.244.1.5".parse::<IpAddr>().unwrap()), "5.1.244.10.in-addr.arpa");
    // An address that is no Service's goes upstream.
    let mut out = Vec::new();
    assert_eq!(
        respond(&z, &query("1.1.168.192.in-addr.arpa.", RecordType::PTR), Transport::Udp, &mut out),
        Outcome::Forward
    );
}

#[test]
fn pods_external_names_and_the_spec_version() {
    let z = cluster();
    assert_eq!(data(&lookup(&z, "10-244-1-9.default.pod.cluster.local.", RecordType::A)), ["10.244.1.9"]);
    // A pod's name in another namespace does not exist.
    let m = lookup(&z, "10-244-1-9.db.pod.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = lookup(&z, "ext.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(m.answers[0].data.to_string(), "db.example.com.");
    let mut out = Vec::new();
    respond(&z, &query("ext.default.svc.cluster.local.", RecordType::A), Transport::Udp, &mut out);
    assert_eq!(cname_to_chase(&z, &out), Some((encode("db.example.com").unwrap(), 1)));
    respond(&z, &query("ext.default.svc.cluster.local.", RecordType::CNAME), Transport::Udp, &mut out);
    assert_eq!(cname_to_chase(&z, &out), None, "a CNAME question wants the CNAME only");
    respond(&z, &query("web.default.svc.cluster.local.", RecordType::A), Transport::Udp, &mut out);
    assert_eq!(cname_to_chase(&z, &out), None);
    let m = lookup(&z, "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(data(&m), ["1.1.0"]);
    let m = lookup(&z, "cluster.local.", RecordType::SOA);
    assert_eq!(m.answers.len(), 1);
    let m = lookup(&z, "cluster.local.", RecordType::NS);
    assert_eq!(data(&m), ["ns.dns.cluster.local."]);
    assert_eq!(data(&lookup(&z, "ns.dns.cluster.local.", RecordType::A)), ["10.96.0.10"]);
    let m = lookup(&z, "web.default.svc.cluster.local.", RecordType::ANY);
    assert_eq!(m.answers.len(), 3, "the A and both SRV");
}

#[test]
fn other_names_are_forwarded() {
    let z = cluster();
    let mut out = Vec::new();
    for name in ["example.com.", "cluster.local.example.com.", "localhost."] {
        assert_eq!(respond(&z, &query(name, RecordType::A), Transport::Udp, &mut out), Outcome::Forward, "{name}");
        assert!(out.is_empty());
    }
}

fn with_edns(name: &str, t: RecordType, size: u16, version: u8) -> Vec<u8> {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    let mut e = Edns::new();
    e.set_max_payload(size);
    e.set_version(version);
    m.edns = Some(e);
    m.to_vec().unwrap()
}

#[test]
fn edns_is_answered_in_kind_and_big_answers_truncate_over_udp_only() {
    let mut endpoints = Vec::new();
    for i in 0..60u8 {
        endpoints.push(ep(&format!("10.244.9.{i}"), None, true));
    }
    let svc = Service { namespace: "ns".into(), name: "big".into(), kind: ServiceKind::Headless, ports: vec![] };
    let slices = [Slice { ports: vec![port("p", "tcp", 1)], endpoints }];
    let z = Zone::build(&ZoneConfig::default(), 1, [(&svc, slices.iter().collect())], []);
    // 60 A records (16 bytes each): over 512, under 1232.
    let plain = query("big.ns.svc.cluster.local.", RecordType::A);
    let m = ask(&z, &plain, Transport::Udp);
    assert!(m.metadata.truncation && m.answers.is_empty());
    let m = ask(&z, &plain, Transport::Tcp);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    let m = ask(&z, &with_edns("big.ns.svc.cluster.local.", RecordType::A, 4096, 0), Transport::Udp);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 1232);
    assert_eq!(udp_limit(&with_edns("a.", RecordType::A, 4096, 0)), 1232);
    assert_eq!(udp_limit(&with_edns("a.", RecordType::A, 100, 0)), 512);
    assert_eq!(udp_limit(&plain), 512);
    // SRV with their additional records for 60 targets: over 1232 too.
    let m = ask(&z, &with_edns("_p._tcp.big.ns.svc.cluster.local.", RecordType::SRV, 4096, 0), Transport::Udp);
    assert!(m.metadata.truncation);
    let m = ask(&z, &with_edns("big.ns.svc.cluster.local.", RecordType::A, 4096, 1), Transport::Udp);
    // 16 is BADVERS in an OPT's extended rcode (hickory names the number BADSIG).
    assert_eq!(u16::from(m.metadata.response_code), 16);
}

fn raw(id: u16, flags: u16, counts: [u16; 4], rest: &[u8]) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        v.extend_from_slice(&c.to_be_bytes());
    }
    v.extend_from_slice(rest);
    v
}

fn rcode_of(z: &Zone, packet: &[u8]) -> Option<u16> {
    let mut out = Vec::new();
    match respond(z, packet, Transport::Udp, &mut out) {
        Outcome::Reply => {
            assert_eq!(&out[..2], &packet[..2], "the id is echoed");
            assert!(out[2] & 0x80 != 0, "QR is set");
            Some(u16::from(out[3] & 0xF))
        }
        Outcome::Drop => None,
        Outcome::Forward => Some(u16::MAX),
    }
}

#[test]
fn bad_packets_get_formerr_notimp_refused_or_nothing() {
    let z = cluster();
    let q = b"\x03web\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01";
    assert_eq!(rcode_of(&z, &raw(1, 0x0100, [1, 0, 0, 0], q)), Some(0));
    assert_eq!(rcode_of(&z, b"\x00\x01\x01"), None, "shorter than a header");
    assert_eq!(rcode_of(&z, &raw(1, 0x8100, [1, 0, 0, 0], q)), None, "a response");
    assert_eq!(rcode_of(&z, &raw(1, 0, [2, 0, 0, 0], q)), Some(1), "two questions");
    assert_eq!(rcode_of(&z, &raw(1, 0, [0, 0, 0, 0], b"")), Some(1), "no question");
    assert_eq!(rcode_of(&z, &raw(1, 0, [1, 0, 0, 0], &q[..10])), Some(1), "cut in the name");
    assert_eq!(rcode_of(&z, &raw(1, 0, [1, 0, 0, 0], &q[..q.len() - 1])), Some(1), "cut in the class");
    assert_eq!(rcode_of(&z, &raw(1, 0, [1, 0, 0, 0], b"\xc0\x0c\x00\x01\x00\x01")), Some(1), "a pointer loop");
    assert_eq!(rcode_of(&z, &raw(1, 0, [1, 0, 0, 1], q)), Some(1), "a missing additional record");
    assert_eq!(rcode_of(&z, &raw(1, 0x1000, [1, 0, 0, 0], q)), Some(4), "opcode STATUS");
    assert_eq!(rcode_of(&z, &raw(1, 0x2800, [1, 0, 0, 0], q)), Some(4), "opcode UPDATE");
    let mut chaos = q.to_vec();
    let n = chaos.len();
    chaos[n - 1] = 3;
    assert_eq!(rcode_of(&z, &raw(1, 0, [1, 0, 0, 0], &chaos)), Some(5), "class CH");
    let mut axfr = q.to_vec();
    axfr[n - 3] = 252;
    assert_eq!(rcode_of(&z, &raw(1, 0, [1, 0, 0, 0], &axfr)), Some(4), "AXFR");
    let mut unknown = q.to_vec();
    unknown[n - 4] = 0xfe;
    assert_eq!(rcode_of(&z, &raw(1, 0, [1, 0, 0, 0], &unknown)), Some(0), "an unknown type: no data");
    let mut out = Vec::new();
    assert!(error_reply(&raw(9, 0x0100, [1, 0, 0, 0], q), Rcode::Refused, &mut out));
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(m.queries.len(), 1);
    assert_eq!(m.queries[0].query_class(), DNSClass::IN);
}

/// A small deterministic generator (xorshift), so a failure reproduces.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn random_and_mutated_packets_never_panic_and_replies_always_parse() {
    let z = cluster();
    let seeds = [
        query("web.default.svc.cluster.local.", RecordType::A),
        query("_sql._tcp.pg.db.svc.cluster.local.", RecordType::SRV),
        with_edns("pg.db.svc.cluster.local.", RecordType::ANY, 4096, 0),
    ];
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::new();
    for i in 0..200_000 {
        let mut p = seeds[i % seeds.len()].clone();
        match rng(&mut s) % 4 {
            0 => {
                let len = (rng(&mut s) % 80) as usize;
                p = (0..len).map(|_| rng(&mut s) as u8).collect();
            }
            1 => p.truncate((rng(&mut s) as usize) % (p.len() + 1)),
            _ => {
                for _ in 0..1 + rng(&mut s) % 4 {
                    let at = (rng(&mut s) as usize) % p.len();
                    p[at] = rng(&mut s) as u8;
                }
            }
        }
        if p.len() > 2 {
            p[2] &= 0x7f; // mostly queries, so the path goes past the first check
        }
        for t in [Transport::Udp, Transport::Tcp] {
            if respond(&z, &p, t, &mut out) == Outcome::Reply {
                let m = Message::from_vec(&out);
                assert!(m.is_ok(), "reply to {p:02x?} does not parse: {out:02x?}");
                assert_eq!(&out[..2], &p[..2]);
                if t == Transport::Udp {
                    assert!(out.len() <= EDNS_SIZE as usize);
                }
            }
        }
    }
}

#[test]
fn an_upstream_reply_too_big_for_the_client_is_cut_to_its_question() {
    let z = cluster();
    let big = ask(&z, &query("pg.db.svc.cluster.local.", RecordType::A), Transport::Tcp).to_vec().unwrap();
    let mut out = Vec::new();
    truncate_to(&big, 1000, &mut out);
    assert_eq!(out, big);
    truncate_to(&big, 40, &mut out);
    let m = Message::from_vec(&out).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert_eq!(m.queries.len(), 1);
}

#[test]
fn the_fuzz_corpus_replays_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/respond");
    let z = cluster();
    let mut n = 0;
    let mut out = Vec::new();
    for f in std::fs::read_dir(&dir).expect("the corpus is in the repo") {
        let packet = std::fs::read(f.unwrap().path()).unwrap();
        fixture::exercise(&z, &packet);
        if respond(&z, &packet, Transport::Udp, &mut out) == Outcome::Reply {
            assert!(Message::from_vec(&out).is_ok(), "reply to {packet:02x?} does not parse");
        }
        n += 1;
    }
    assert!(n >= 20, "only {n} inputs in {}", dir.display());
}

#[test]
fn a_domain_too_long_for_the_zones_own_names_is_refused_and_never_panics() {
    // 10 labels of 24 bytes: a valid name of 251 bytes, but hostmaster.<it> is over 255.
    let domain = vec!["a".repeat(24); 10].join(".");
    assert!(encode(&domain).is_ok());
    let cfg = ZoneConfig { domain, ..ZoneConfig::default() };
    assert!(matches!(cfg.check(), Err(NameError::LongName(_))), "{:?}", cfg.check());
    // Built anyway, the zone serves cluster.local.
    let zone = Zone::build(&cfg, 1, [], []);
    let m = lookup(&zone, "dns-version.cluster.local", RecordType::TXT);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(ZoneConfig::default().check().is_ok());
}
