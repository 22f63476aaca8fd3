//! cargo-fuzz target: the ingest normaliser behind every channel parser (`parley_fuzz::normalise`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::normalise(data));
