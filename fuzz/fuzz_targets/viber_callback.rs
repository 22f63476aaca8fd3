//! cargo-fuzz target: Viber callback parsing (`parley_fuzz::viber_callback`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::viber_callback(data));
