//! The netlink writer against `nft` itself: the same transactions (the proxy's base, a
//! full sync of Services of every shape, an endpoint change, a Service deleted; the
//! policy planner's golden ruleset and its removal) applied through `nft` in one
//! namespace and over netlink in another must list the same; so must a full sync
//! streamed into the writer part by part, as the agent writes it. Runs as root in namespaces
//! of its own; says SKIPPED otherwise.

mod common;

use common::{ctx, ip, ips, listing, policy_golden, proxy_base, service, slice};
use flatnet_agent::tables::{self, proxy_sets};
use flatnet_kernel::nf_tables::{self, SetShape};
use flatnet_kernel::sandbox;
use flatnet_kernel::{netns, nft};
use flatnet_model::policy;
use flatnet_model::proxy::{self, Proto, Proxier, plan_service};
use nftables::types::NfFamily;
use std::path::Path;

/// Applies `objects` through nft in `by_nft` and over netlink in `by_netlink`, and
/// requires the two listings of `table` to be the same.
fn apply_both(
    (by_nft, by_netlink): (&Path, &Path),
    table: &str,
    what: &str,
    objects: &[String],
    known: Vec<(String, SetShape)>,
) {
    netns::run_in(by_nft, || nft::apply_objects(objects)).unwrap().unwrap_or_else(|e| panic!("{what} by nft: {e}"));
    netns::run_in(by_netlink, || nf_tables::apply(objects, known))
        .unwrap()
        .unwrap_or_else(|e| panic!("{what} over netlink: {e}"));
    let (a, b) = (listing(by_nft, table), listing(by_netlink, table));
    if a != b {
        let diff: Vec<String> = a
            .lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .take(10)
            .map(|(x, y)| format!("nft:     {x}\nnetlink: {y}"))
            .collect();
        panic!(
            "{what}: the listings differ ({} vs {} lines):\n{}",
            a.lines().count(),
            b.lines().count(),
            diff.join("\n")
        );
    }
}

/// What the agent reads back of the proxy's table over netlink is what nft reads.
fn reads_as_nft(what: &str) {
    let (chains, sets) = nf_tables::table_names(proxy::TABLE).unwrap().unwrap();
    let (mut nft_chains, mut nft_sets) = nft::table_names(NfFamily::IP, proxy::TABLE).unwrap();
    // nft lists maps apart from sets; netlink names both.
    let maps = nft::list_objects(NfFamily::IP, "maps", proxy::TABLE).unwrap();
    nft_sets.extend(maps.iter().filter_map(|m| Some(m["map"]["name"].as_str()?.to_string())));
    let (mut chains, mut sets) = (chains, sets);
    for v in [&mut chains, &mut sets, &mut nft_chains, &mut nft_sets] {
        v.sort();
    }
    assert_eq!((chains, sets), (nft_chains, nft_sets), "{what}: names");
    for (name, shape) in proxy_sets() {
        let kind = if proxy::BASE_SETS.iter().any(|(n, _, m)| *n == name && *m) { "map" } else { "set" };
        let mut ours = nf_tables::set_elements(proxy::TABLE, &name, &shape).unwrap().unwrap();
        let mut theirs = nft::set_elements(NfFamily::IP, proxy::TABLE, kind, &name).unwrap().unwrap();
        ours.sort_by_key(|v| v.to_string());
        theirs.sort_by_key(|v| v.to_string());
        assert_eq!(ours, theirs, "{what}: the elements of {name}");
    }
    assert_eq!(
        nf_tables::rule_comments(proxy::TABLE, "services").unwrap(),
        nft::chain_rule_comments(NfFamily::IP, proxy::TABLE, "services").unwrap(),
        "{what}: the comments of the services chain"
    );
    assert_eq!(nf_tables::rule_comments(proxy::TABLE, "no-such-chain").unwrap(), None);
}

#[test]
fn the_netlink_writer_lists_exactly_as_nft_wrote_it() {
    if let Some(why) = sandbox::unavailable_reason() {
        eprintln!("SKIPPED the_netlink_writer_lists_exactly_as_nft_wrote_it: {why}");
        return;
    }
    sandbox::run(|sb| {
        let by_nft = sb.create_netns("by-nft").unwrap();
        let by_netlink = sb.create_netns("by-netlink").unwrap();
        let apply = |what: &str, objects: &[String]| {
            apply_both((&by_nft, &by_netlink), proxy::TABLE, what, objects, proxy_sets());
            netns::run_in(&by_netlink, || reads_as_nft(what)).unwrap();
        };
        netns::run_in(&by_netlink, || assert_eq!(nf_tables::table_names(proxy::TABLE).unwrap(), None)).unwrap();
        apply("the base", &proxy_base());

        let mut sticky = service("sticky", ip("10.96.0.11"), Proto::Tcp, None);
        sticky.affinity_timeout = Some(600);
        let mut local = service("local", ip("10.96.0.12"), Proto::Tcp, Some(30080));
        local.external_local = true;
        local.external_ips = vec!["203.0.113.7".parse().unwrap()];
        let plans = vec![
            (
                "web",
                plan_service(
                    &ctx(),
                    &service("web", ip("10.96.0.10"), Proto::Tcp, Some(30001)),
                    &[slice(ips(&["10.244.1.2", "10.244.2.3", "10.244.3.4"]), Proto::Tcp, "node-2")],
                ),
            ),
            (
                "dns",
                plan_service(
                    &ctx(),
                    &service("dns", ip("10.96.0.53"), Proto::Udp, None),
                    &[slice(ips(&["10.244.1.9"]), Proto::Udp, "node-1")],
                ),
            ),
            (
                "sticky",
                plan_service(&ctx(), &sticky, &[slice(ips(&["10.244.1.5", "10.244.2.5"]), Proto::Tcp, "node-1")]),
            ),
            ("local", plan_service(&ctx(), &local, &[slice(ips(&["10.244.1.6", "10.244.2.6"]), Proto::Tcp, "node-1")])),
            ("empty", plan_service(&ctx(), &service("empty", ip("10.96.0.13"), Proto::Tcp, Some(30002)), &[])),
        ];
        let mut p = Proxier::new();
        let key = |n: &str| ("default".to_string(), n.to_string());
        let streamed_plans = plans.clone();
        let t = p.full_sync(&proxy::Actual::default(), plans.into_iter().map(|(n, f)| (key(n), f)));
        apply("a full sync", &t.objects);
        // The agent's own way: each Service's rules compiled as it is planned (on a second
        // thread), its chains declared after (into a lane the kernel takes first).
        let streamed = sb.create_netns("streamed").unwrap();
        netns::run_in(&streamed, || {
            tables::write(&proxy_base(), proxy_sets()).unwrap();
            let plans = streamed_plans.into_iter().map(|(n, f)| (key(n), f));
            let mut p = Proxier::new();
            let writer = nf_tables::Writer::new(proxy_sets());
            let (_, writer) =
                tables::compiled_beside(writer, |sink| p.full_sync_into(&proxy::Actual::default(), plans, sink));
            writer.commit().unwrap()
        })
        .unwrap();
        assert_eq!(listing(&streamed, proxy::TABLE), listing(&by_nft, proxy::TABLE), "a full sync streamed");

        let moved = plan_service(
            &ctx(),
            &service("web", ip("10.96.0.10"), Proto::Tcp, Some(30001)),
            &[slice(ips(&["10.244.1.2", "10.244.2.7"]), Proto::Tcp, "node-2")],
        );
        let t = p.update(vec![(key("web"), Some(moved))]);
        apply("an endpoint change", &t.objects);
        let t = p.update(vec![(key("sticky"), None), (key("dns"), None)]);
        apply("Services deleted", &t.objects);
    })
    .unwrap();
}

/// The policy table as nft JSON lists it, read back as the planner's state.
fn policy_state(ns: &Path) -> policy::State {
    netns::run_in(ns, || {
        let out =
            std::process::Command::new("nft").args(["-j", "list", "table", "ip", policy::TABLE]).output().unwrap();
        policy::State::from_listing(&serde_json::from_slice(&out.stdout).unwrap())
    })
    .unwrap()
}

#[test]
fn the_policy_ruleset_written_over_netlink_lists_as_nft_wrote_it() {
    if let Some(why) = sandbox::unavailable_reason() {
        eprintln!("SKIPPED the_policy_ruleset_written_over_netlink_lists_as_nft_wrote_it: {why}");
        return;
    }
    sandbox::run(|sb| {
        let by_nft = sb.create_netns("by-nft").unwrap();
        let by_netlink = sb.create_netns("by-netlink").unwrap();
        let apply = |what: &str, objects: &[String], known| {
            apply_both((&by_nft, &by_netlink), policy::TABLE, what, objects, known);
        };
        // The planner's golden ruleset: the base, pod and port sets, an address block
        // with an except cut out, named and ranged ports, counters, verdict maps.
        apply("the golden policy ruleset", &policy_golden(), Vec::new());
        // What the agent reads back over netlink is the state nft's listing gives.
        let state = policy_state(&by_nft);
        let read = netns::run_in(&by_netlink, flatnet_agent::policy::read_actual).unwrap().unwrap();
        assert_eq!(read, state, "the policy table read over netlink");
        let counters = netns::run_in(&by_netlink, flatnet_agent::policy::drop_counters).unwrap().unwrap();
        assert_eq!(counters.len(), state.counters.len(), "{counters:?}");
        assert!(counters.iter().all(|c| c.packets == 0 && !c.policy.is_empty()), "{counters:?}");
        // Everything taken away again, element by element and chain by chain.
        assert!(!state.pod_sets.is_empty() && !state.block_sets.is_empty() && !state.counters.is_empty());
        let (removal, _) = policy::diff(&state, &policy::State::default());
        apply("the policies removed", &removal, tables::policy_sets(&state));
    })
    .unwrap();
}

#[test]
fn a_refused_command_rolls_the_whole_batch_back_and_is_named() {
    if let Some(why) = sandbox::unavailable_reason() {
        eprintln!("SKIPPED a_refused_command_rolls_the_whole_batch_back_and_is_named: {why}");
        return;
    }
    sandbox::run(|sb| {
        let ns = sb.create_netns("refused").unwrap();
        netns::run_in(&ns, || nf_tables::apply(&proxy_base(), proxy_sets())).unwrap().unwrap();
        let before = listing(&ns, proxy::TABLE);
        // A new Service chain with its rule, and a map element whose chain does not exist.
        let batch = |target: &str| -> Vec<String> {
            vec![
                r#"{"add":{"chain":{"family":"ip","table":"flatnet","name":"svc-new"}}}"#.to_string(),
                r#"{"add":{"rule":{"family":"ip","table":"flatnet","chain":"svc-new","expr":[{"match":{"op":"==","left":{"meta":{"key":"l4proto"}},"right":"tcp"}},{"dnat":{"addr":"10.244.1.2","port":8080}}]}}}"#.to_string(),
                format!(
                    r#"{{"add":{{"element":{{"family":"ip","table":"flatnet","name":"service-ips","elem":[[{{"concat":["10.96.0.99","tcp",80]}},{{"goto":{{"target":"{target}"}}}}]]}}}}}}"#
                ),
            ]
        };
        let e = netns::run_in(&ns, || nf_tables::apply(&batch("no-such-chain"), proxy_sets())).unwrap().unwrap_err();
        let text = e.to_string();
        assert!(text.contains("refused") && text.contains("no-such-chain"), "the error names the object: {text}");
        assert_eq!(listing(&ns, proxy::TABLE), before, "nothing of a refused batch is applied");
        // The next transaction, right this time, goes through whole.
        netns::run_in(&ns, || nf_tables::apply(&batch("svc-new"), proxy_sets())).unwrap().unwrap();
        let after = listing(&ns, proxy::TABLE);
        assert!(after.contains("chain svc-new") && after.contains("10.96.0.99 . tcp . 80 : goto svc-new"), "{after}");
    })
    .unwrap();
}
