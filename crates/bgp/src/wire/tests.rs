//! Codec tests: byte vectors written by hand from the RFC 4271 layouts, round trips of
//! generated messages, and malformed input that must be refused without a panic.

use super::*;
use ipnet::Ipv4Net;
use proptest::prelude::*;
use std::net::Ipv4Addr;

fn header(len: u16, kind: u8) -> Vec<u8> {
    let mut out = vec![0xff; 16];
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    out
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

#[test]
fn keepalive_is_a_bare_header() {
    let bytes = header(19, 4);
    assert_eq!(Message::Keepalive.encode().unwrap(), bytes);
    assert_eq!(Message::decode_exact(&bytes).unwrap(), Message::Keepalive);
}

#[test]
fn open_with_capabilities_matches_rfc_layout() {
    let mut bytes = header(0, 1);
    bytes.extend_from_slice(&[4]); // version
    bytes.extend_from_slice(&23456u16.to_be_bytes()); // AS_TRANS: the AS is > 65535
    bytes.extend_from_slice(&90u16.to_be_bytes()); // hold time
    bytes.extend_from_slice(&[10, 0, 0, 1]); // BGP identifier
    let caps: Vec<u8> = [
        &[1, 4, 0, 1, 0, 1][..],                // multiprotocol IPv4 unicast
        &[2, 0][..],                            // route refresh
        &[65, 4, 0, 1, 0x11, 0x70][..],         // 4-octet AS 70000
        &[64, 6, 0x80, 120, 0, 1, 1, 0x80][..], // GR: R bit, 120 s, IPv4 unicast F bit
        &[73, 2, 0xab, 0xcd][..],               // unknown, kept raw
    ]
    .concat();
    bytes.push(u8::try_from(caps.len() + 2).unwrap());
    bytes.extend_from_slice(&[2, u8::try_from(caps.len()).unwrap()]);
    bytes.extend_from_slice(&caps);
    let len = u16::try_from(bytes.len()).unwrap();
    bytes[16..18].copy_from_slice(&len.to_be_bytes());

    let open = Open::new(
        70000,
        90,
        Ipv4Addr::new(10, 0, 0, 1),
        vec![
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::RouteRefresh,
            Capability::FourOctetAs(70000),
            Capability::GracefulRestart(GracefulRestart {
                restarting: true,
                notification: false,
                restart_time: 120,
                families: vec![GrFamily { afi: 1, safi: 1, forwarding_preserved: true }],
            }),
            Capability::Unknown { code: 73, value: vec![0xab, 0xcd] },
        ],
    );
    assert_eq!(open.my_as, AS_TRANS);
    assert_eq!(Message::Open(open.clone()).encode().unwrap(), bytes);
    let decoded = Message::decode_exact(&bytes).unwrap();
    assert_eq!(decoded, Message::Open(open.clone()));
    assert_eq!(open.four_octet_as(), Some(70000));
    assert!(open.route_refresh());
}

#[test]
fn update_matches_rfc_layout() {
    let mut bytes = header(0, 2);
    bytes.extend_from_slice(&[0, 5, 24, 10, 244, 1, 0]); // withdrawn: 10.244.1.0/24, 0/0
    let attrs: Vec<u8> = [
        &[0x40, 1, 1, 0][..],                                         // ORIGIN IGP
        &[0x40, 2, 10, 2, 2, 0, 0, 0xfd, 0xe9, 0, 0, 0xfd, 0xe8][..], // AS_SEQUENCE 65001 65000
        &[0x40, 3, 4, 192, 168, 2, 1][..],                            // NEXT_HOP
        &[0x80, 4, 4, 0, 0, 0, 7][..],                                // MED 7
        &[0xd0, 99, 0, 1, 0xee][..],                                  // unknown, extended length
    ]
    .concat();
    bytes.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(&attrs);
    bytes.extend_from_slice(&[16, 10, 245, 25, 10, 244, 3, 128]); // 10.245/16, 10.244.3.128/25
    let len = u16::try_from(bytes.len()).unwrap();
    bytes[16..18].copy_from_slice(&len.to_be_bytes());

    let update = Update {
        withdrawn: vec![net("10.244.1.0/24"), net("0.0.0.0/0")],
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(vec![AsSegment::Sequence(vec![65001, 65000])]),
            next_hop: Some(Ipv4Addr::new(192, 168, 2, 1)),
            med: Some(7),
            local_pref: None,
            other: vec![RawAttribute { flags: 0xd0, type_code: 99, value: vec![0xee] }],
        },
        nlri: vec![net("10.245.0.0/16"), net("10.244.3.128/25")],
    };
    assert_eq!(Message::Update(update.clone()).encode().unwrap(), bytes);
    assert_eq!(Message::decode_exact(&bytes).unwrap(), Message::Update(update));
}

#[test]
fn end_of_rib_is_an_empty_update() {
    let mut bytes = header(23, 2);
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    let Message::Update(u) = Message::decode_exact(&bytes).unwrap() else {
        panic!("not an update");
    };
    assert!(u.is_end_of_rib());
    assert_eq!(Message::Update(Update::end_of_rib()).encode().unwrap(), bytes);
}

#[test]
fn notification_round_trips_and_reads_in_words() {
    let mut bytes = header(23, 3);
    bytes.extend_from_slice(&[6, 3, 0xde, 0xad]);
    let n = Notification { code: 6, subcode: 3, data: vec![0xde, 0xad] };
    assert_eq!(Message::decode_exact(&bytes).unwrap(), Message::Notification(n.clone()));
    assert_eq!(Message::Notification(n.clone()).encode().unwrap(), bytes);
    assert_eq!(n.to_string(), "cease / peer de-configured");
    assert_eq!(Notification::new(2, 2).to_string(), "OPEN message error / bad peer AS");
    assert_eq!(Notification::new(4, 0).to_string(), "hold timer expired");
    let mut shut = Notification::new(6, 2);
    shut.data = b"\x0bmaintenance".to_vec();
    assert_eq!(shut.to_string(), "cease / administratively shut down: \"maintenance\"");
}

#[test]
fn route_refresh_layout() {
    let mut bytes = header(23, 5);
    bytes.extend_from_slice(&[0, 1, 0, 1]);
    let m = Message::RouteRefresh { afi: 1, safi: 1 };
    assert_eq!(m.encode().unwrap(), bytes);
    assert_eq!(Message::decode_exact(&bytes).unwrap(), m);
}

fn code_of(bytes: &[u8]) -> (u8, u8) {
    let err = Message::decode(bytes).expect_err("must be refused");
    (err.notification.code, err.notification.subcode)
}

#[test]
fn malformed_messages_are_refused_with_the_rfc_notification() {
    let mut bad_marker = header(19, 4);
    bad_marker[3] = 0;
    assert_eq!(code_of(&bad_marker), (1, 1));
    assert_eq!(code_of(&header(18, 4)), (1, 2));
    assert_eq!(code_of(&header(20, 4)), (1, 2));
    assert_eq!(code_of(&header(4097, 2)), (1, 2));
    assert_eq!(code_of(&header(19, 9)), (1, 3));

    let mut long_prefix = header(28, 2);
    long_prefix.extend_from_slice(&[0, 0, 0, 0, 33, 1, 2, 3, 4]);
    // NLRI without the mandatory attributes would be 3/3; the bad length is seen first.
    assert_eq!(code_of(&long_prefix), (3, 10));

    let mut truncated_prefix = header(25, 2);
    truncated_prefix.extend_from_slice(&[0, 0, 0, 0, 24, 10]);
    assert_eq!(code_of(&truncated_prefix), (3, 10));

    let mut withdrawn_too_long = header(23, 2);
    withdrawn_too_long.extend_from_slice(&[0, 9, 0, 0]);
    assert_eq!(code_of(&withdrawn_too_long), (3, 1));

    let mut missing = header(27, 2);
    missing.extend_from_slice(&[0, 0, 0, 0, 8, 10, 0, 0]);
    missing.truncate(25);
    missing[16..18].copy_from_slice(&25u16.to_be_bytes());
    assert_eq!(code_of(&missing), (3, 3));

    let mut bad_origin = header(30, 2);
    bad_origin.extend_from_slice(&[0, 0, 0, 4, 0x40, 1, 1, 9, 0, 0, 0]);
    bad_origin.truncate(31);
    bad_origin[16..18].copy_from_slice(&27u16.to_be_bytes());
    bad_origin.truncate(27);
    assert_eq!(code_of(&bad_origin), (3, 6));

    let mut open_v3 = header(29, 1);
    open_v3.extend_from_slice(&[3, 0, 1, 0, 90, 1, 2, 3, 4, 0]);
    assert_eq!(code_of(&open_v3), (2, 1));

    let mut open_hold_2 = header(29, 1);
    open_hold_2.extend_from_slice(&[4, 0, 1, 0, 2, 1, 2, 3, 4, 0]);
    assert_eq!(code_of(&open_hold_2), (2, 6));

    let mut open_bad_params = header(31, 1);
    open_bad_params.extend_from_slice(&[4, 0, 1, 0, 90, 1, 2, 3, 4, 2, 2, 5]);
    assert_eq!(code_of(&open_bad_params), (2, 0));
}

#[test]
fn incomplete_input_asks_for_more() {
    let bytes = Message::Keepalive.encode().unwrap();
    for cut in 0..bytes.len() {
        assert_eq!(Message::decode(&bytes[..cut]), Ok(None));
    }
}

fn arb_net() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, l)| Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc())
}

fn arb_attrs() -> impl Strategy<Value = PathAttributes> {
    let seg = prop_oneof![
        proptest::collection::vec(any::<u32>(), 1..=255).prop_map(AsSegment::Sequence),
        proptest::collection::vec(any::<u32>(), 1..4).prop_map(AsSegment::Set),
    ];
    let raw = (any::<bool>(), 7u8..=255, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
        |(ext, type_code, value)| RawAttribute {
            flags: 0xc0 | if ext || value.len() > 255 { 0x10 } else { 0 },
            type_code,
            value,
        },
    );
    (
        prop_oneof![Just(Origin::Igp), Just(Origin::Egp), Just(Origin::Incomplete)],
        proptest::collection::vec(seg, 0..3),
        (1u32..0xe000_0000).prop_map(Ipv4Addr::from),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(raw, 0..2),
    )
        .prop_map(|(origin, path, nh, med, local_pref, mut other)| {
            other.sort_by_key(|r| r.type_code);
            other.dedup_by_key(|r| r.type_code);
            PathAttributes { origin: Some(origin), as_path: Some(path), next_hop: Some(nh), med, local_pref, other }
        })
}

fn arb_message() -> impl Strategy<Value = Message> {
    let update = (
        proptest::collection::vec(arb_net(), 0..50),
        proptest::option::of(arb_attrs()),
        proptest::collection::vec(arb_net(), 0..50),
    )
        .prop_map(|(withdrawn, attrs, nlri)| match attrs {
            Some(attributes) => Update { withdrawn, attributes, nlri },
            None => Update { withdrawn, ..Update::default() },
        });
    let gr = (
        any::<bool>(),
        any::<bool>(),
        0u16..4096,
        proptest::collection::vec((any::<u16>(), any::<u8>(), any::<bool>()), 0..3),
    )
        .prop_map(|(restarting, notification, restart_time, fams)| {
            Capability::GracefulRestart(GracefulRestart {
                restarting,
                notification,
                restart_time,
                families: fams
                    .into_iter()
                    .map(|(afi, safi, f)| GrFamily { afi, safi, forwarding_preserved: f })
                    .collect(),
            })
        });
    let cap = prop_oneof![
        (any::<u16>(), any::<u8>()).prop_map(|(afi, safi)| Capability::Multiprotocol { afi, safi }),
        Just(Capability::RouteRefresh),
        any::<u32>().prop_map(Capability::FourOctetAs),
        gr,
        (66u8..=255, proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(code, value)| Capability::Unknown { code, value }),
    ];
    let open = (any::<u32>(), prop_oneof![Just(0u16), 3u16..], 1u32.., proptest::collection::vec(cap, 0..8))
        .prop_map(|(asn, hold, id, caps)| Message::Open(Open::new(asn, hold, Ipv4Addr::from(id), caps)));
    prop_oneof![
        open,
        update.prop_map(Message::Update),
        (any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(code, subcode, data)| Message::Notification(Notification { code, subcode, data })),
        Just(Message::Keepalive),
        (any::<u16>(), any::<u8>()).prop_map(|(afi, safi)| Message::RouteRefresh { afi, safi }),
    ]
}

proptest! {
    #[test]
    fn encoded_messages_decode_to_themselves(msg in arb_message()) {
        match msg.encode() {
            Ok(bytes) => prop_assert_eq!(Message::decode_exact(&bytes).unwrap(), msg),
            Err(TooLong(n)) => prop_assert!(n > MAX_LEN),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..200), kind in 1u8..=5) {
        let mut bytes = header(u16::try_from(19 + tail.len()).unwrap(), kind);
        bytes.extend_from_slice(&tail);
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn truncated_messages_are_incomplete_or_refused(msg in arb_message(), cut in 0usize..4096) {
        if let Ok(bytes) = msg.encode() {
            let cut = cut % bytes.len();
            // Cut the body and patch the length: the codec must refuse, not panic.
            let mut short = bytes[..cut.max(19)].to_vec();
            let len = u16::try_from(short.len()).unwrap();
            short[16..18].copy_from_slice(&len.to_be_bytes());
            let _ = Message::decode(&short);
            prop_assert_eq!(Message::decode(&bytes[..cut]), Ok(None));
        }
    }
}
