//! `attnlab_sim::fixture::parse` on arbitrary bytes: it must return a case
//! or an error naming the file, never panic, overflow or allocate beyond
//! what the bytes justify.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = attnlab_sim::fixture::parse("fuzz", data) {
        assert!(e.to_string().starts_with("fuzz: "), "{e}");
    }
});
