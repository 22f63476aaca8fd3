//! cargo-fuzz target: the Telegram secret-token check (`parley_fuzz::telegram_secret`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::telegram_secret(data));
