//! cargo-fuzz target: the Twilio `X-Twilio-Signature` checks (`parley_fuzz::twilio_signature`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::twilio_signature(data));
