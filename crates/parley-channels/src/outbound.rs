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
