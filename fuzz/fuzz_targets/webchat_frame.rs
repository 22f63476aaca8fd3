//! cargo-fuzz target: web chat WebSocket frames (`parley_fuzz::webchat_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::webchat_frame(data));
