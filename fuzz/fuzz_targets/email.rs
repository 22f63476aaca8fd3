//! cargo-fuzz target: email parsing (`parley_fuzz::email`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::email(data));
