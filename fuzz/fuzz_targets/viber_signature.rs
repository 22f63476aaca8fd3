//! cargo-fuzz target: the Viber `X-Viber-Content-Signature` check (`parley_fuzz::viber_signature`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::viber_signature(data));
