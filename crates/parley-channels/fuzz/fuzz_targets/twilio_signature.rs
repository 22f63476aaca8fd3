//! Fuzz target: Twilio signature checks, with the input split into URL, header and body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_channels::twilio;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let mut parts = s.splitn(3, '\n');
    let (url, header, body) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let _ = twilio::url_variants(url);
    let _ = twilio::verify_form("token", url, body.as_bytes(), Some(header));
    let _ = twilio::verify_json("token", url, body.as_bytes(), Some(header));
});
