//! cargo-fuzz target: the providers' send-answer classifiers (`parley_fuzz::send_response`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::send_response(data));
