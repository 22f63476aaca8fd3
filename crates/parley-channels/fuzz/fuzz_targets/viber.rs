//! Fuzz target: Viber callback parsing, signature check and classification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_channels::{HttpResponse, viber};

fuzz_target!(|data: &[u8]| {
    let _ = viber::parse_callback(data);
    let _ = viber::classify_response(&HttpResponse { status: 200, body: data, retry_after: None });
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = viber::verify_signature("token", data, Some(s));
    }
});
