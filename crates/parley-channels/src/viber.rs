//! Viber REST Bot API: `X-Viber-Content-Signature`, callback parsing (messages, subscription
//! changes, delivery reports) and `send_message` bodies.

use parley_domain::Channel;
use parley_domain::message::DeliveryState;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::inbound::check_id;
use crate::outbound::{HttpResponse, OutboundRequest, SendOutcome, by_status, snippet};
use crate::sig::{check_size, json, verify_hex_sha256};
use crate::{
    ChannelError, DeliveryReceipt, Identity, Inbound, InboundMessage, Location, MAX_WEBHOOK_BYTES, MediaKind, MediaRef,
    ProviderError,
};

/// The header Viber signs callbacks in.
pub const SIGNATURE_HEADER: &str = "X-Viber-Content-Signature";

/// Checks `X-Viber-Content-Signature: <hex HMAC-SHA256(auth token, raw body)>`.
pub fn verify_signature(auth_token: &str, body: &[u8], header: Option<&str>) -> Result<(), ChannelError> {
    verify_hex_sha256(auth_token.as_bytes(), body, header)
}

#[derive(Deserialize)]
struct Callback {
    event: String,
    timestamp: i64,
    message_token: Option<Value>,
    sender: Option<User>,
    user: Option<User>,
    user_id: Option<String>,
    message: Option<ViberMessage>,
    desc: Option<String>,
}

#[derive(Deserialize)]
struct User {
    id: String,
    name: Option<String>,
    language: Option<String>,
}

#[derive(Deserialize)]
struct ViberMessage {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    media: Option<String>,
    file_name: Option<String>,
    size: Option<u64>,
    location: Option<ViberLocation>,
    contact: Option<ViberContact>,
}

#[derive(Deserialize)]
struct ViberLocation {
    lat: f64,
    lon: f64,
    address: Option<String>,
}

#[derive(Deserialize)]
struct ViberContact {
    name: Option<String>,
    phone_number: Option<String>,
}

/// Viber's message tokens are 64-bit numbers: JSON numbers in callbacks, kept as decimal text
/// here. A token beyond 64 bits would have lost digits in transit, so it is refused.
fn token(value: Option<Value>) -> Result<String, ChannelError> {
    match value {
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Ok(s),
        Some(_) => Err(ChannelError::malformed("viber message_token is not an integer")),
        None => Err(ChannelError::malformed("viber callback without message_token")),
    }
}

fn identity(user: User) -> Result<Identity, ChannelError> {
    check_id("viber user id", &user.id)?;
    Ok(Identity { channel: Channel::Viber, external_id: user.id, display_name: user.name, language: user.language })
}

/// Parses one callback from the raw body.
pub fn parse_callback(body: &[u8]) -> Result<Vec<Inbound>, ChannelError> {
    check_size(body, MAX_WEBHOOK_BYTES)?;
    let cb: Callback = json(body)?;
    let event = match cb.event.as_str() {
        "message" => message(cb)?,
        "subscribed" => {
            let user = cb.user.ok_or_else(|| ChannelError::malformed("viber subscribed without user"))?;
            Inbound::Subscription { subscribed: true, identity: identity(user)? }
        }
        "unsubscribed" => {
            let id = cb.user_id.ok_or_else(|| ChannelError::malformed("viber unsubscribed without user_id"))?;
            let user = User { id, name: None, language: None };
            Inbound::Subscription { subscribed: false, identity: identity(user)? }
        }
        "delivered" | "seen" | "failed" => {
            let (state, error) = match cb.event.as_str() {
                "delivered" => (DeliveryState::Delivered, None),
                "seen" => (DeliveryState::Read, None),
                _ => (DeliveryState::Failed, Some(ProviderError { code: "failed".to_owned(), description: cb.desc })),
            };
            Inbound::Receipt(DeliveryReceipt {
                channel: Channel::Viber,
                provider_message_id: token(cb.message_token)?,
                state,
                error,
                recipient: cb.user_id,
                at: cb.timestamp,
            })
        }
        // The user opened the chat; they are not subscribed yet and may only be answered in
        // the HTTP response (a welcome message), which is the ingest service's business.
        "conversation_started" => Inbound::Ignored { reason: "viber conversation_started".to_owned() },
        // Sent once when the webhook is set; answering 200 is all it needs.
        "webhook" => Inbound::Ignored { reason: "viber webhook check".to_owned() },
        "client_status" | "action" => Inbound::Ignored { reason: format!("viber event {} is not handled", cb.event) },
        other => {
            let other: String = other.chars().take(40).collect();
            Inbound::Ignored { reason: format!("viber event {other} is not handled") }
        }
    };
    Ok(vec![event])
}

fn message(cb: Callback) -> Result<Inbound, ChannelError> {
    let sender = cb.sender.ok_or_else(|| ChannelError::malformed("viber message without sender"))?;
    let m = cb.message.ok_or_else(|| ChannelError::malformed("viber message without message"))?;
    let mut out = InboundMessage::new(Channel::Viber, token(cb.message_token)?, identity(sender)?, cb.timestamp)?;
    let media = |kind: MediaKind, m: &ViberMessage| -> Result<MediaRef, ChannelError> {
        let url = m.media.clone().ok_or_else(|| ChannelError::malformed("viber media message without media url"))?;
        Ok(MediaRef { kind, provider_ref: url, mime: None, file_name: m.file_name.clone(), size: m.size })
    };
    match m.kind.as_str() {
        "text" => out.text = m.text.unwrap_or_default(),
        "picture" => {
            out.attachments.push(media(MediaKind::Image, &m)?);
            out.text = m.text.unwrap_or_default();
        }
        "video" => out.attachments.push(media(MediaKind::Video, &m)?),
        "file" => out.attachments.push(media(MediaKind::Document, &m)?),
        "sticker" => out.attachments.push(media(MediaKind::Sticker, &m)?),
        "location" => {
            let l = m.location.ok_or_else(|| ChannelError::malformed("viber location message without location"))?;
            out.location = Some(Location { latitude: l.lat, longitude: l.lon, name: None, address: l.address });
        }
        "contact" => {
            // A shared contact card becomes text the operator can read and copy.
            let c = m.contact.ok_or_else(|| ChannelError::malformed("viber contact message without contact"))?;
            out.text = [c.name, c.phone_number].into_iter().flatten().collect::<Vec<_>>().join(" ");
        }
        "url" => out.text = m.media.unwrap_or_default(),
        other => {
            let other: String = other.chars().take(40).collect();
            return Ok(Inbound::Ignored { reason: format!("viber message type {other} is not handled") });
        }
    }
    Ok(Inbound::Message(out))
}

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViberContent<'a> {
    Text(&'a str),
    /// A JPEG/PNG by public URL with its caption (Viber requires the field, empty allowed).
    Picture {
        url: &'a str,
        caption: &'a str,
    },
    /// A file by public URL; Viber wants its size and name.
    File {
        url: &'a str,
        size: u64,
        file_name: &'a str,
    },
}

/// `POST /pa/send_message`; `sender_name` is the bot name shown above the message.
pub fn send_message(receiver: &str, sender_name: &str, content: ViberContent<'_>) -> OutboundRequest {
    let mut body = json!({"receiver": receiver, "min_api_version": 1, "sender": {"name": sender_name}});
    match content {
        ViberContent::Text(text) => {
            body["type"] = json!("text");
            body["text"] = json!(text);
        }
        ViberContent::Picture { url, caption } => {
            body["type"] = json!("picture");
            body["media"] = json!(url);
            body["text"] = json!(caption);
        }
        ViberContent::File { url, size, file_name } => {
            body["type"] = json!("file");
            body["media"] = json!(url);
            body["size"] = json!(size);
            body["file_name"] = json!(file_name);
        }
    }
    OutboundRequest::json("send_message", &body)
}

#[derive(Deserialize)]
struct SendResponse {
    status: i64,
    status_message: Option<String>,
    message_token: Option<Value>,
}

/// Classifies the answer to `send_message`. Viber answers HTTP 200 with a `status` code in
/// the body; 0 is success.
pub fn classify_response(resp: &HttpResponse<'_>) -> SendOutcome {
    let Ok(parsed) = serde_json::from_slice::<SendResponse>(resp.body) else {
        return by_status(resp, &snippet(resp.body));
    };
    if !(200..300).contains(&resp.status) {
        return by_status(resp, &snippet(resp.body));
    }
    let description = parsed.status_message.unwrap_or_default();
    match parsed.status {
        0 => SendOutcome::Sent { provider_message_id: token(parsed.message_token).ok() },
        // 12: too many requests.
        12 => SendOutcome::Retry { after: None },
        // 5: receiver not registered, 6: not subscribed, 7/8/9/10: account trouble, …
        code => SendOutcome::failed(code, description),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`parley-fuzz`): an empty user id became one customer for every
    /// such message, and a subscription of nobody.
    #[test]
    fn callbacks_without_a_usable_user_id_are_malformed() {
        let message = |id: &str| {
            format!(
                r#"{{"event":"message","timestamp":1457764197627,"message_token":4912661846655238145,"sender":{{"id":"{id}"}},"message":{{"type":"text","text":"hi"}}}}"#
            )
        };
        assert!(parse_callback(message("01234567890A=").as_bytes()).is_ok());
        for bad in [
            message(""),
            message("0123\\u0000"),
            r#"{"event":"subscribed","timestamp":1,"user":{"id":""}}"#.to_owned(),
            r#"{"event":"unsubscribed","timestamp":1,"user_id":""}"#.to_owned(),
        ] {
            let err = parse_callback(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, ChannelError::Malformed(_)), "{bad}: {err:?}");
        }
    }
}
