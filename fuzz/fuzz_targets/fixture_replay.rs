//! A case `fixture::parse` accepts, replayed through every emulated backend:
//! no backend may panic (a caught panic becomes a row whose reason says so),
//! and the work stays proportionate to the file (`max_kv_reuse`,
//! `max_kv_splits`, the memory budget).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = attnlab_sim::fixture::parse("fuzz", data) {
        for row in attnlab_sim::replay::replay_fixture(&f, None) {
            let reason = row.reason.unwrap_or_default();
            assert!(!reason.contains("panicked"), "{}: {reason}", row.backend);
        }
    }
});
