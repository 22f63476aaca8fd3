//! cargo-fuzz target: SMS segment counting (`parley_fuzz::sms_segments`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::sms_segments(data));
