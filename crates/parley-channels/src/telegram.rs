//! Telegram Bot API: the webhook secret, `Update` parsing, `sendMessage`/`sendPhoto`/
//! `sendDocument` bodies, `getFile` answers and send-response classification.

use parley_domain::Channel;
use parley_domain::message::Quoted;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::short;
use crate::outbound::{HttpResponse, OutboundRequest, SendOutcome, by_status, retry_after_header, snippet};
use crate::sig::{check_size, ct_eq, json, secs_to_ms};
use crate::{ChannelError, Identity, Inbound, InboundMessage, Location, MAX_WEBHOOK_BYTES, MediaKind, MediaRef};

/// The header Telegram sends with the `secret_token` given to `setWebhook`.
pub const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";

/// Checks the `X-Telegram-Bot-Api-Secret-Token` header against the configured secret, in
/// constant time.
pub fn verify_secret_token(expected: &str, header: Option<&str>) -> Result<(), ChannelError> {
    let header = header.filter(|h| !h.is_empty()).ok_or(ChannelError::MissingSignature)?;
    if !expected.is_empty() && ct_eq(header.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ChannelError::BadSignature)
    }
}

/// Our dedupe key for a Telegram message: its id is only unique within its chat.
pub fn message_key(chat_id: i64, message_id: i64) -> String {
    format!("{chat_id}:{message_id}")
}

/// Splits a [`message_key`] (or an edit's key) back into chat id and message id.
pub fn parse_message_key(key: &str) -> Option<(i64, i64)> {
    let mut parts = key.split(':');
    let chat = parts.next()?.parse().ok()?;
    let message = parts.next()?.parse().ok()?;
    Some((chat, message))
}

#[derive(Deserialize)]
struct Update {
    #[allow(dead_code)] // required, so a payload without it is refused as not an Update
    update_id: i64,
    message: Option<Message>,
    edited_message: Option<Message>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct Message {
    message_id: i64,
    from: Option<User>,
    chat: Chat,
    date: i64,
    edit_date: Option<i64>,
    text: Option<String>,
    caption: Option<String>,
    photo: Option<Vec<PhotoSize>>,
    document: Option<File>,
    video: Option<File>,
    voice: Option<File>,
    audio: Option<File>,
    sticker: Option<File>,
    location: Option<TgLocation>,
    venue: Option<Venue>,
    reply_to_message: Option<Box<Message>>,
}

#[derive(Deserialize)]
struct User {
    id: i64,
    #[serde(default)]
    is_bot: bool,
    first_name: String,
    last_name: Option<String>,
    username: Option<String>,
    language_code: Option<String>,
}

#[derive(Deserialize)]
struct Chat {
    id: i64,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PhotoSize {
    file_id: String,
    width: u64,
    height: u64,
    file_size: Option<u64>,
}

#[derive(Deserialize)]
struct File {
    file_id: String,
    file_name: Option<String>,
    mime_type: Option<String>,
    file_size: Option<u64>,
}

#[derive(Deserialize)]
struct TgLocation {
    latitude: f64,
    longitude: f64,
}

#[derive(Deserialize)]
struct Venue {
    location: TgLocation,
    title: String,
    address: Option<String>,
}

/// Parses one webhook `Update` from the raw body. Returns one event: a message, an edit, or
/// `Ignored` for update kinds Parley does not handle.
pub fn parse_update(body: &[u8]) -> Result<Vec<Inbound>, ChannelError> {
    check_size(body, MAX_WEBHOOK_BYTES)?;
    let update: Update = json(body)?;
    let (message, edited) = match (update.message, update.edited_message) {
        (Some(m), _) => (m, false),
        (None, Some(m)) => (m, true),
        (None, None) => {
            let kind = update.other.keys().next().map_or_else(|| "empty".to_owned(), |k| short(k));
            return Ok(vec![Inbound::Ignored { reason: format!("telegram update kind {kind} is not handled") }]);
        }
    };
    Ok(vec![normalise(message, edited)?])
}

fn normalise(m: Message, edited: bool) -> Result<Inbound, ChannelError> {
    if m.chat.kind != "private" {
        return Ok(Inbound::Ignored { reason: format!("telegram {} chats are not handled", short(&m.chat.kind)) });
    }
    let Some(from) = m.from else {
        return Ok(Inbound::Ignored { reason: "telegram message without a sender".to_owned() });
    };
    if from.is_bot {
        return Ok(Inbound::Ignored { reason: "telegram message from a bot".to_owned() });
    }
    let display_name = match &from.last_name {
        Some(last) if !last.is_empty() => format!("{} {last}", from.first_name),
        _ => from.first_name.clone(),
    };
    let sender = Identity {
        channel: Channel::Telegram,
        external_id: from.id.to_string(),
        display_name: Some(display_name).filter(|n| !n.is_empty()).or(from.username),
        language: from.language_code,
    };
    let key = message_key(m.chat.id, m.message_id);
    let (provider_message_id, edit_of, sent_at) = if edited {
        // An edit arrives with the original message_id, so the edit date keeps successive
        // edits apart from each other and from the original.
        let edit_date = m.edit_date.unwrap_or(m.date);
        (format!("{key}:edit:{edit_date}"), Some(key), secs_to_ms(edit_date))
    } else {
        (key, None, secs_to_ms(m.date))
    };
    let mut out = InboundMessage::new(Channel::Telegram, provider_message_id, sender, sent_at)?;
    out.edit_of = edit_of;
    out.reply_address = m.chat.id.to_string();
    out.text = m.text.or(m.caption).unwrap_or_default();
    if let Some(sizes) = m.photo {
        // Telegram lists sizes small to large; pick by area so an odd order does not matter.
        if let Some(p) = sizes.into_iter().rev().max_by_key(|p| p.width.saturating_mul(p.height)) {
            out.attachments.push(MediaRef {
                kind: MediaKind::Image,
                provider_ref: p.file_id,
                mime: None,
                file_name: None,
                size: p.file_size,
            });
        }
    }
    for (kind, file) in [
        (MediaKind::Document, m.document),
        (MediaKind::Video, m.video),
        (MediaKind::Voice, m.voice),
        (MediaKind::Audio, m.audio),
        (MediaKind::Sticker, m.sticker),
    ] {
        if let Some(f) = file {
            out.attachments.push(MediaRef {
                kind,
                provider_ref: f.file_id,
                mime: f.mime_type,
                file_name: f.file_name,
                size: f.file_size,
            });
        }
    }
    out.location = match (m.venue, m.location) {
        (Some(v), _) => Some(Location {
            latitude: v.location.latitude,
            longitude: v.location.longitude,
            name: Some(v.title),
            address: v.address,
        }),
        (None, Some(l)) => Some(Location { latitude: l.latitude, longitude: l.longitude, name: None, address: None }),
        (None, None) => None,
    };
    if let Some(r) = m.reply_to_message {
        out.quoted = Some(Quoted {
            message_id: None,
            channel_message_id: message_key(r.chat.id, r.message_id),
            text: r.text.or(r.caption).unwrap_or_default(),
        });
    }
    if out.text.is_empty() && out.attachments.is_empty() && out.location.is_none() {
        // Service messages (members joined, pinned, …) and content kinds Parley does not
        // carry (polls, contacts, dice) arrive as messages too.
        return Ok(Inbound::Ignored { reason: "telegram message has no text, media or location".to_owned() });
    }
    Ok(Inbound::Message(out))
}

/// `chat_id` as Telegram wants it: a number for numeric ids, else a `@channel` name.
fn chat_id_value(chat_id: &str) -> Value {
    chat_id.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(chat_id))
}

fn with_reply(mut body: Value, reply_to_message_id: Option<i64>) -> Value {
    if let (Some(id), Some(obj)) = (reply_to_message_id, body.as_object_mut()) {
        // Still send if the quoted message was deleted meanwhile: the answer matters more.
        obj.insert("reply_parameters".to_owned(), json!({"message_id": id, "allow_sending_without_reply": true}));
    }
    body
}

/// `sendMessage`: a text, optionally as a reply to a message of that chat.
pub fn send_message(chat_id: &str, text: &str, reply_to_message_id: Option<i64>) -> OutboundRequest {
    let body = json!({"chat_id": chat_id_value(chat_id), "text": text});
    OutboundRequest::json("sendMessage", &with_reply(body, reply_to_message_id))
}

/// `sendPhoto` by `file_id` or HTTPS URL.
pub fn send_photo(
    chat_id: &str,
    photo: &str,
    caption: Option<&str>,
    reply_to_message_id: Option<i64>,
) -> OutboundRequest {
    let mut body = json!({"chat_id": chat_id_value(chat_id), "photo": photo});
    if let Some(c) = caption {
        body["caption"] = Value::from(c);
    }
    OutboundRequest::json("sendPhoto", &with_reply(body, reply_to_message_id))
}

/// `sendDocument` by `file_id` or HTTPS URL.
pub fn send_document(
    chat_id: &str,
    document: &str,
    caption: Option<&str>,
    reply_to_message_id: Option<i64>,
) -> OutboundRequest {
    let mut body = json!({"chat_id": chat_id_value(chat_id), "document": document});
    if let Some(c) = caption {
        body["caption"] = Value::from(c);
    }
    OutboundRequest::json("sendDocument", &with_reply(body, reply_to_message_id))
}

/// `getFile` for a `file_id`.
pub fn get_file(file_id: &str) -> OutboundRequest {
    OutboundRequest::json("getFile", &json!({"file_id": file_id}))
}

#[derive(Deserialize)]
struct ApiResponse {
    ok: bool,
    result: Option<Value>,
    error_code: Option<i64>,
    description: Option<String>,
    parameters: Option<ResponseParameters>,
}

#[derive(Deserialize)]
struct ResponseParameters {
    retry_after: Option<u64>,
}

/// The `file_path` from a `getFile` answer; download it from
/// `https://api.telegram.org/file/bot{token}/{file_path}`.
pub fn parse_get_file(body: &[u8]) -> Result<String, ChannelError> {
    let resp: ApiResponse = json(body)?;
    if !resp.ok {
        return Err(ChannelError::Unsupported(format!(
            "telegram getFile failed: {}",
            resp.description.unwrap_or_else(|| "no description".to_owned())
        )));
    }
    resp.result
        .as_ref()
        .and_then(|r| r.get("file_path"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ChannelError::malformed("telegram getFile answer has no file_path (file larger than 20 MB?)"))
}

/// Classifies the answer to a send. Telegram puts the verdict in the body (`ok`,
/// `error_code`, `parameters.retry_after`); the sent message's key is `{chat}:{message_id}`.
pub fn classify_response(resp: &HttpResponse<'_>) -> SendOutcome {
    let Ok(api) = serde_json::from_slice::<ApiResponse>(resp.body) else {
        return by_status(resp, &snippet(resp.body));
    };
    if api.ok {
        let id = api.result.as_ref().and_then(|r| {
            let message_id = r.get("message_id")?.as_i64()?;
            let chat = r.get("chat")?.get("id")?.as_i64()?;
            Some(message_key(chat, message_id))
        });
        return SendOutcome::Sent { provider_message_id: id };
    }
    let description = api.description.unwrap_or_default();
    if let Some(after) = api.parameters.and_then(|p| p.retry_after) {
        return SendOutcome::Retry { after: Some(std::time::Duration::from_secs(after)) };
    }
    let code = api.error_code.unwrap_or(i64::from(resp.status));
    match code {
        429 | 500..=599 => SendOutcome::Retry { after: retry_after_header(resp.retry_after) },
        // 403: blocked by the user, kicked, or the user is deactivated: permanent.
        _ => SendOutcome::failed(code, description),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`parley-fuzz`): an unknown update kind or chat type was quoted
    /// whole in the reason, however long.
    #[test]
    fn ignored_reasons_quote_a_short_piece_of_the_update() {
        let long = "k".repeat(10_000);
        let kind = format!(r#"{{"update_id":1,"{long}":{{}}}}"#);
        let chat = format!(
            r#"{{"update_id":1,"message":{{"message_id":1,"date":1,"chat":{{"id":1,"type":"{long}"}},"text":"hi"}}}}"#
        );
        for body in [kind, chat] {
            let events = parse_update(body.as_bytes()).unwrap();
            let [Inbound::Ignored { reason }] = &events[..] else { panic!("{events:?}") };
            assert!(reason.chars().count() < 100, "{reason}");
        }
    }
}
