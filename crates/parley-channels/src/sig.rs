//! Signature helpers shared by the providers: keyed MACs over raw bytes, compared in constant
//! time so a forger learns nothing from how long a rejection took.

use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use crate::ChannelError;

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // `new_from_slice` accepts keys of any length for HMAC, so this cannot fail.
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("hmac accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub(crate) fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    // As above: HMAC takes keys of any length.
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).expect("hmac accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Checks a hex-encoded HMAC-SHA256 header (case-insensitive hex) against the raw body.
pub fn verify_hex_sha256(key: &[u8], body: &[u8], header: Option<&str>) -> Result<(), ChannelError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(ChannelError::MissingSignature)?;
    let given = hex::decode(header).map_err(|_| ChannelError::BadSignature)?;
    if ct_eq(&given, &hmac_sha256(key, body)) { Ok(()) } else { Err(ChannelError::BadSignature) }
}

/// Parses a JSON body from raw bytes, telling invalid UTF-8 apart from bad JSON (serde_json
/// would report both as syntax errors).
pub(crate) fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ChannelError> {
    std::str::from_utf8(body).map_err(|_| ChannelError::InvalidUtf8)?;
    Ok(serde_json::from_slice(body)?)
}

/// Checks the size before any parsing, so an oversized payload costs nothing.
pub(crate) fn check_size(body: &[u8], limit: usize) -> Result<(), ChannelError> {
    if body.len() > limit { Err(ChannelError::TooLarge { limit }) } else { Ok(()) }
}

/// Seconds to milliseconds without overflow (a hostile timestamp saturates, never panics).
pub(crate) fn secs_to_ms(secs: i64) -> i64 {
    secs.saturating_mul(1000)
}
