//! cargo-fuzz target: the SMTP command parser (`parley_fuzz::smtp_command`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::smtp_command(data));
