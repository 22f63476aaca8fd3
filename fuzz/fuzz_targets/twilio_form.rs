//! cargo-fuzz target: Twilio's form decoding and webhook parsing (`parley_fuzz::twilio_form`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::twilio_form(data));
