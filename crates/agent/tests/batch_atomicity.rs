//! A writer killed in the middle of a large transaction leaves the table as it was or
//! as the transaction makes it, never a mix: the kernel takes a batch whole. A child
//! process (this test binary again) writes a full sync of 2,000 Services × 10
//! endpoints and is SIGKILLed at moments from just before to after its write; each time
//! the table holds either none of the Service chains or all of them.

mod common;

use common::{ctx, proxy_base, service, slice};
use flatnet_agent::tables;
use flatnet_kernel::{netns, nf_tables, sandbox};
use flatnet_model::proxy::{self, Proto, Proxier, plan_service};
use std::net::Ipv4Addr;
use std::time::Duration;

const SERVICES: usize = 2000;

/// The child's part: the full sync of SERVICES Services, in the namespace at `ns`.
fn write_full_sync(ns: &str) {
    let plans = (0..SERVICES).map(|i| {
        let n = u32::try_from(i).unwrap();
        let svc = service(&format!("s{i}"), Ipv4Addr::from(0x0a60_0000 + n + 10), Proto::Tcp, None);
        let slice = slice((0..10u32).map(|e| Ipv4Addr::from(0x0af4_0000 + n * 16 + e)), Proto::Tcp, "node-2");
        (("default".to_string(), format!("s{i}")), plan_service(&ctx(), &svc, &[slice]))
    });
    let t = Proxier::new().full_sync(&proxy::Actual::default(), plans);
    // The parent kills from here on.
    println!("planned");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    netns::run_in(std::path::Path::new(ns), || tables::write(&t.objects, tables::proxy_sets())).unwrap().unwrap();
}

fn service_chains(ns: &std::path::Path) -> usize {
    netns::run_in(ns, || nf_tables::table_names(proxy::TABLE).unwrap().unwrap().0)
        .unwrap()
        .iter()
        .filter(|c| c.starts_with("svc-"))
        .count()
}

#[test]
fn a_writer_killed_mid_transaction_leaves_the_old_table_or_the_new() {
    if let Ok(ns) = std::env::var("FLATNET_TEST_WRITE_IN") {
        write_full_sync(&ns);
        return;
    }
    if let Some(why) = sandbox::unavailable_reason() {
        eprintln!("SKIPPED a_writer_killed_mid_transaction_leaves_the_old_table_or_the_new: {why}");
        return;
    }
    sandbox::run(|sb| {
        let ns = sb.create_netns("killed").unwrap();
        let base = proxy_base();
        let mut outcomes = Vec::new();
        // First left to finish (timing the write), then killed at moments from a tenth
        // of that time to past it.
        let mut took = Duration::ZERO;
        for (run, tenths) in
            [None, Some(1u32), Some(3), Some(5), Some(7), Some(8), Some(9), Some(10), Some(12)].into_iter().enumerate()
        {
            netns::run_in(&ns, || {
                let _ = flatnet_kernel::nft::delete_table(nftables::types::NfFamily::IP, proxy::TABLE);
                tables::write(&base, tables::proxy_sets())
            })
            .unwrap()
            .unwrap();
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "a_writer_killed_mid_transaction_leaves_the_old_table_or_the_new", "--nocapture"])
                .env("FLATNET_TEST_WRITE_IN", &ns)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            while !line.contains("planned") {
                line.clear();
                assert!(
                    std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
                    "the child ended before planning"
                );
            }
            match tenths {
                None => {
                    let started = std::time::Instant::now();
                    assert!(child.wait().unwrap().success());
                    took = started.elapsed();
                }
                Some(t) => {
                    std::thread::sleep(took * t / 10);
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            let n = service_chains(&ns);
            assert!(n == 0 || n == SERVICES, "run {run}: {n} of {SERVICES} Service chains: a half-applied transaction");
            if tenths.is_none() {
                assert_eq!(n, SERVICES, "the transaction left to finish is all there");
            }
            outcomes.push(n);
        }
        eprintln!("the write took {took:?}; Service chains after it and after each kill: {outcomes:?}");
    })
    .unwrap();
}
