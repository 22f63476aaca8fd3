//! cargo-fuzz target: the WhatsApp `X-Hub-Signature-256` check (`parley_fuzz::whatsapp_signature`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::whatsapp_signature(data));
