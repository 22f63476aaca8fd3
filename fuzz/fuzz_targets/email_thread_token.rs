//! cargo-fuzz target: email thread tokens (`parley_fuzz::email_thread_token`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::email_thread_token(data));
