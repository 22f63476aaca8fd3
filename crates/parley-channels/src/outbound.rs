//! What the senders need that does not depend on the provider: the request a builder returns
//! and the verdict on a provider's answer.

use std::time::Duration;

/// An HTTP request to a provider API, without base URL or credentials: the sender adds those
/// (Telegram `https://api.telegram.org/bot{token}/{path}`, WhatsApp
/// `https://graph.facebook.com/{version}/{path}` with a bearer token, Viber
/// `https://chatapi.viber.com/pa/{path}` with `X-Viber-Auth-Token`, Twilio
/// `https://api.twilio.com/{path}` with basic auth). Every provider call here is a `POST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    pub path: String,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

pub(crate) const JSON: &str = "application/json";
pub(crate) const FORM: &str = "application/x-www-form-urlencoded";

impl OutboundRequest {
    pub(crate) fn json(path: impl Into<String>, body: &serde_json::Value) -> Self {
        OutboundRequest { path: path.into(), content_type: JSON, body: body.to_string().into_bytes() }
    }
}

/// A provider's HTTP answer, as the sender received it.
#[derive(Debug, Clone, Copy)]
pub struct HttpResponse<'a> {
    pub status: u16,
    pub body: &'a [u8],
    /// The `Retry-After` header, if any.
    pub retry_after: Option<&'a str>,
}

/// What to do about a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Accepted. The id is what delivery receipts will name; `None` when a 2xx answer did not
    /// carry one (the message is not resent: it was most likely delivered).
    Sent { provider_message_id: Option<String> },
    /// Transient: try again, after the given delay if the provider named one.
    Retry { after: Option<Duration> },
    /// Permanent: retrying will not help.
    Failed { code: String, description: String },
}

impl SendOutcome {
    pub(crate) fn failed(code: impl ToString, description: impl Into<String>) -> Self {
        SendOutcome::Failed { code: code.to_string(), description: description.into() }
    }
}

/// `Retry-After` in delta-seconds. The HTTP-date form would need a clock, so it is ignored.
pub(crate) fn retry_after_header(value: Option<&str>) -> Option<Duration> {
    value.and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs)
}

/// The verdict from the status line alone, when the body says nothing more specific.
pub(crate) fn by_status(resp: &HttpResponse<'_>, description: &str) -> SendOutcome {
    match resp.status {
        200..=299 => SendOutcome::Sent { provider_message_id: None },
        429 | 500..=599 => SendOutcome::Retry { after: retry_after_header(resp.retry_after) },
        // 408 (request timeout) and 425 (too early) are the 4xx that say "try again".
        408 | 425 => SendOutcome::Retry { after: retry_after_header(resp.retry_after) },
        s => SendOutcome::failed(format!("http_{s}"), description),
    }
}

/// A short, valid-UTF-8 piece of a body for error descriptions.
pub(crate) fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

/// The key of media links, derived from the installation's signing key so that a link
/// cannot be forged from anything else that key signs.
pub fn media_link_key(signing_key: &[u8]) -> [u8; 32] {
    crate::sig::hmac_sha256(signing_key, b"parley media links v1")
}

fn media_link_mac(key: &[u8], tenant: &str, id: &str, expires: i64) -> String {
    let data = format!("{tenant}\u{1f}{id}\u{1f}{expires}");
    hex::encode(&crate::sig::hmac_sha256(key, data.as_bytes())[..16])
}

/// The public, expiring address of a stored file of a reply, for providers that fetch the
/// file themselves (Telegram, WhatsApp and Viber by link, Twilio's `MediaUrl`):
/// `{base}/v1/media/{tenant}/{id}/{expires}/{mac}`, `expires` in Unix seconds.
pub fn media_link(base: &str, key: &[u8], tenant: &str, id: &str, expires: i64) -> String {
    format!("{base}/v1/media/{tenant}/{id}/{expires}/{}", media_link_mac(key, tenant, id, expires))
}

/// Why a media link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MediaLinkError {
    #[error("the link's signature is not valid")]
    BadSignature,
    #[error("the link has expired")]
    Expired,
}

/// Checks a media link's parts (the signature in constant time), then its expiry.
pub fn check_media_link(
    key: &[u8],
    tenant: &str,
    id: &str,
    expires: i64,
    mac: &str,
    now_secs: i64,
) -> Result<(), MediaLinkError> {
    if !crate::sig::ct_eq(mac.as_bytes(), media_link_mac(key, tenant, id, expires).as_bytes()) {
        return Err(MediaLinkError::BadSignature);
    }
    if now_secs > expires {
        return Err(MediaLinkError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_links_hold_only_as_signed_and_until_they_expire() {
        let key = media_link_key(b"signing key of at least thirty-two bytes");
        let link = media_link("https://parley.example", &key, "acme", "0193-ab", 1_000);
        let mac = link.rsplit('/').next().unwrap();
        assert!(link.starts_with("https://parley.example/v1/media/acme/0193-ab/1000/"), "{link}");
        assert_eq!(check_media_link(&key, "acme", "0193-ab", 1_000, mac, 1_000), Ok(()));
        assert_eq!(check_media_link(&key, "acme", "0193-ab", 1_000, mac, 1_001), Err(MediaLinkError::Expired));
        // Another tenant, file, expiry or key: refused, whatever the time.
        for (tenant, id, expires) in
            [("globex", "0193-ab", 1_000), ("acme", "0193-ac", 1_000), ("acme", "0193-ab", 9_999)]
        {
            assert_eq!(check_media_link(&key, tenant, id, expires, mac, 0), Err(MediaLinkError::BadSignature));
        }
        let other = media_link_key(b"another signing key of thirty-two bytes");
        assert_eq!(check_media_link(&other, "acme", "0193-ab", 1_000, mac, 0), Err(MediaLinkError::BadSignature));
    }
}
