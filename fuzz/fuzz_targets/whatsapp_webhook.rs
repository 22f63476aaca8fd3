//! cargo-fuzz target: WhatsApp webhook parsing (`parley_fuzz::whatsapp_webhook`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::whatsapp_webhook(data));
