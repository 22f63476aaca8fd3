//! Fuzz target: email parsing and thread-token lookup on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_channels::email;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = email::parse_email(data, 1 << 20, 0) {
        let _ = email::thread_token(&e.in_reply_to, &e.references, b"key");
    }
});
