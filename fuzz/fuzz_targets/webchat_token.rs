//! cargo-fuzz target: web chat visitor tokens (`parley_fuzz::webchat_token`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::webchat_token(data));
