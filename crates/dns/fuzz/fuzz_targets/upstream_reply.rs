//! The forwarder's upstream-reply path against arbitrary replies: no panic, and a
//! taken reply keeps the rules `forward::exercise_reply` checks. Run: `cargo fuzz run
//! upstream_reply -s none -- -max_total_time=60` (from crates/dns). New inputs land in
//! corpus/upstream_reply, which `cargo test` replays.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|reply: &[u8]| {
    flatnet_dns::forward::exercise_reply(reply);
});
