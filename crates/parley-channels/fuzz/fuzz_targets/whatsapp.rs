//! Fuzz target: WhatsApp webhook parsing, signature check, handshake and classification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_channels::{HttpResponse, whatsapp};

fuzz_target!(|data: &[u8]| {
    let _ = whatsapp::parse_webhook(data);
    let _ = whatsapp::classify_response(&HttpResponse { status: 400, body: data, retry_after: None });
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = whatsapp::verify_signature("secret", data, Some(s));
        let _ = whatsapp::verify_subscription(s, "token");
    }
});
