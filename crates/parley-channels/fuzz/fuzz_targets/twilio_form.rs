//! Fuzz target: Twilio form decoding and webhook normalisation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_channels::{HttpResponse, twilio};

fuzz_target!(|data: &[u8]| {
    if let Ok(params) = twilio::parse_form(data) {
        let _ = twilio::parse_webhook(&params, 0);
    }
    let _ = twilio::classify_response(&HttpResponse { status: 400, body: data, retry_after: None });
});
