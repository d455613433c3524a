//! The agent's writing and reading of its tables needs no `nft` binary: with PATH
//! holding nothing, the proxy's base, a full sync of Services, the policy base and its
//! golden ruleset are written, and both tables read back, in a namespace of their own.
//! The test runs itself again as a child whose PATH holds nothing.

mod common;

use common::{ctx, ip, ips, policy_golden, proxy_base, service, slice};
use flatnet_agent::tables;
use flatnet_kernel::{netns, sandbox};
use flatnet_model::policy;
use flatnet_model::proxy::{Proto, Proxier, plan_service};

#[test]
fn the_agent_writes_and_reads_its_tables_without_nft() {
    if let Some(why) = sandbox::unavailable_reason() {
        eprintln!("SKIPPED the_agent_writes_and_reads_its_tables_without_nft: {why}");
        return;
    }
    if std::env::var_os("FLATNET_TEST_WITHOUT_NFT").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "the_agent_writes_and_reads_its_tables_without_nft", "--nocapture"])
            .env("FLATNET_TEST_WITHOUT_NFT", "1")
            .env("PATH", "/nonexistent")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "the run without nft:\n{text}");
        return;
    }
    assert!(std::process::Command::new("nft").arg("--version").output().is_err(), "nft is out of reach");
    sandbox::run(|sb| {
        let ns = sb.create_netns("no-nft").unwrap();
        netns::run_in(&ns, || {
            tables::write(&proxy_base(), tables::proxy_sets()).unwrap();
            let mut svc = service("web", ip("10.96.0.10"), Proto::Tcp, Some(30080));
            svc.affinity_timeout = Some(60);
            let slice = slice(ips(&["10.244.1.2", "10.244.2.3"]), Proto::Tcp, "node-1");
            let mut p = Proxier::new();
            let key = ("default".to_string(), "web".to_string());
            let t = p.full_sync(
                &flatnet_agent::proxy::read_actual().unwrap(),
                [(key.clone(), plan_service(&ctx(), &svc, &[slice]))],
            );
            tables::write(&t.objects, tables::proxy_sets()).unwrap();
            let actual = flatnet_agent::proxy::read_actual().unwrap();
            assert_eq!(actual.service_ips.len(), 1, "{actual:?}");
            assert_eq!(actual.node_ports.len(), 1, "{actual:?}");
            // A second full sync over what was written finds nothing to do.
            let mut again = Proxier::new();
            let t = again.full_sync(&actual, [(key, plan_service(&ctx(), &svc, &[]))]);
            assert!(!t.is_empty(), "an emptied Service is a change");

            let base: Vec<String> = policy::base_transaction().iter().map(|o| o.to_string()).collect();
            tables::write(&base, Vec::new()).unwrap();
            tables::write(&policy_golden(), Vec::new()).unwrap();
            let state = flatnet_agent::policy::read_actual().unwrap();
            assert!(!state.pod_sets.is_empty() && !state.counters.is_empty(), "{state:?}");
            assert_eq!(flatnet_agent::policy::drop_counters().unwrap().len(), state.counters.len());
        })
        .unwrap();
    })
    .unwrap();
}
