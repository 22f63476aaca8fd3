//! Fuzz target: Telegram update parsing, getFile and response classification on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_channels::{HttpResponse, telegram};

fuzz_target!(|data: &[u8]| {
    let _ = telegram::parse_update(data);
    let _ = telegram::parse_get_file(data);
    let _ = telegram::classify_response(&HttpResponse { status: 400, body: data, retry_after: None });
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = telegram::verify_secret_token("secret", Some(s));
        let _ = telegram::parse_message_key(s);
    }
});
