//! The DNS request path against arbitrary packets: no panic, and every reply keeps the
//! rules `fixture::exercise` checks. Run: `cargo fuzz run respond -- -max_total_time=60`
//! (from crates/model; add `-s none` on stable Rust). New inputs land in corpus/respond,
//! which `cargo test` replays.
#![no_main]

use flatnet_model::dns::{Zone, fixture};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static ZONE: OnceLock<Zone> = OnceLock::new();

fuzz_target!(|packet: &[u8]| {
    fixture::exercise(ZONE.get_or_init(fixture::sample_zone), packet);
});
