//! cargo-fuzz target: Telegram `Update` parsing (`parley_fuzz::telegram_update`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::telegram_update(data));
