//! cargo-fuzz target: the WhatsApp subscription handshake (`parley_fuzz::whatsapp_subscription`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::whatsapp_subscription(data));
