//! WhatsApp Cloud API: the subscription handshake, `X-Hub-Signature-256`, webhook parsing
//! (messages and statuses, batched), `/messages` bodies, the 24-hour customer service window
//! and send-response classification.

use std::collections::HashMap;
use std::time::Duration;

use parley_domain::Channel;
use parley_domain::message::{DeliveryState, Quoted};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::short;
use crate::inbound::check_id;
use crate::outbound::{HttpResponse, OutboundRequest, SendOutcome, by_status, retry_after_header, snippet};
use crate::sig::{check_size, json, secs_to_ms, verify_hex_sha256};
use crate::{
    ChannelError, DeliveryReceipt, Identity, Inbound, InboundMessage, Location, MAX_WEBHOOK_BYTES, MediaKind, MediaRef,
    ProviderError, Reaction,
};

/// The header Meta signs webhook bodies in.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// Answers the subscription GET: given its query string (without `?`), returns the
/// `hub.challenge` to echo when `hub.mode` is `subscribe` and `hub.verify_token` matches.
pub fn verify_subscription(query: &str, verify_token: &str) -> Result<String, ChannelError> {
    let mut mode = None;
    let mut token = None;
    let mut challenge = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "hub.mode" => mode = Some(v.into_owned()),
            "hub.verify_token" => token = Some(v.into_owned()),
            "hub.challenge" => challenge = Some(v.into_owned()),
            _ => {}
        }
    }
    if mode.as_deref() != Some("subscribe") {
        return Err(ChannelError::malformed("hub.mode is not subscribe"));
    }
    let token = token.ok_or(ChannelError::MissingSignature)?;
    if verify_token.is_empty() || !crate::sig::ct_eq(token.as_bytes(), verify_token.as_bytes()) {
        return Err(ChannelError::BadVerifyToken);
    }
    challenge.filter(|c| !c.is_empty()).ok_or_else(|| ChannelError::malformed("hub.challenge is missing"))
}

/// Checks `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>`.
pub fn verify_signature(app_secret: &str, body: &[u8], header: Option<&str>) -> Result<(), ChannelError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(ChannelError::MissingSignature)?;
    let hex = header.strip_prefix("sha256=").filter(|h| !h.is_empty()).ok_or(ChannelError::BadSignature)?;
    verify_hex_sha256(app_secret.as_bytes(), body, Some(hex))
}

#[derive(Deserialize)]
struct Webhook {
    object: String,
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    id: String,
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    field: String,
    value: Value,
}

#[derive(Deserialize)]
struct MessagesValue {
    metadata: Metadata,
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default)]
    messages: Vec<WaMessage>,
    #[serde(default)]
    statuses: Vec<Status>,
    #[serde(default)]
    errors: Vec<WaError>,
}

#[derive(Deserialize)]
struct Metadata {
    phone_number_id: String,
}

#[derive(Deserialize)]
struct Contact {
    wa_id: String,
    profile: Option<Profile>,
}

#[derive(Deserialize)]
struct Profile {
    name: Option<String>,
}

#[derive(Deserialize)]
struct WaMessage {
    from: String,
    id: String,
    timestamp: String,
    #[serde(rename = "type")]
    kind: String,
    context: Option<Context>,
    text: Option<Text>,
    image: Option<Media>,
    document: Option<Media>,
    audio: Option<Media>,
    video: Option<Media>,
    sticker: Option<Media>,
    location: Option<WaLocation>,
    reaction: Option<WaReaction>,
    button: Option<Button>,
    interactive: Option<Interactive>,
    #[serde(default)]
    errors: Vec<WaError>,
}

#[derive(Deserialize)]
struct Context {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Text {
    body: String,
}

#[derive(Deserialize)]
struct Media {
    id: String,
    mime_type: Option<String>,
    caption: Option<String>,
    filename: Option<String>,
    #[serde(default)]
    voice: bool,
}

#[derive(Deserialize)]
struct WaLocation {
    latitude: f64,
    longitude: f64,
    name: Option<String>,
    address: Option<String>,
}

#[derive(Deserialize)]
struct WaReaction {
    message_id: String,
    emoji: Option<String>,
}

#[derive(Deserialize)]
struct Button {
    text: String,
    payload: Option<String>,
}

#[derive(Deserialize)]
struct Interactive {
    button_reply: Option<Choice>,
    list_reply: Option<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    id: String,
    title: String,
}

#[derive(Deserialize)]
struct Status {
    id: String,
    status: String,
    timestamp: String,
    recipient_id: Option<String>,
    #[serde(default)]
    errors: Vec<WaError>,
}

#[derive(Deserialize)]
struct WaError {
    code: i64,
    title: Option<String>,
    message: Option<String>,
}

impl WaError {
    fn describe(&self) -> String {
        format!("{} {}", self.code, short(self.title.as_deref().or(self.message.as_deref()).unwrap_or("no title")))
    }
}

fn timestamp_ms(s: &str) -> Result<i64, ChannelError> {
    s.parse::<i64>().map(secs_to_ms).map_err(|_| ChannelError::malformed("whatsapp timestamp is not a number"))
}

/// Parses a webhook `POST` body: every message and status of every entry and change, in
/// order. Changes of other fields (account updates, template reviews) come back `Ignored`.
pub fn parse_webhook(body: &[u8]) -> Result<Vec<Inbound>, ChannelError> {
    check_size(body, MAX_WEBHOOK_BYTES)?;
    let hook: Webhook = json(body)?;
    if hook.object != "whatsapp_business_account" {
        return Err(ChannelError::Unsupported(format!("whatsapp object {:?}", short(&hook.object))));
    }
    let mut out = Vec::new();
    for entry in hook.entry {
        for change in entry.changes {
            if change.field != "messages" {
                out.push(Inbound::Ignored {
                    reason: format!("whatsapp field {} is not handled", short(&change.field)),
                });
                continue;
            }
            let value: MessagesValue = serde_json::from_value(change.value)?;
            parse_value(&entry.id, value, &mut out)?;
        }
    }
    Ok(out)
}

fn parse_value(waba: &str, value: MessagesValue, out: &mut Vec<Inbound>) -> Result<(), ChannelError> {
    let names: HashMap<&str, &str> =
        value.contacts.iter().filter_map(|c| Some((c.wa_id.as_str(), c.profile.as_ref()?.name.as_deref()?))).collect();
    for e in &value.errors {
        out.push(Inbound::Ignored { reason: format!("whatsapp reports error {}", e.describe()) });
    }
    for m in value.messages {
        let sender = Identity {
            channel: Channel::WhatsApp,
            external_id: m.from.clone(),
            display_name: names.get(m.from.as_str()).map(|n| (*n).to_owned()),
            language: None,
        };
        let sent_at = timestamp_ms(&m.timestamp)?;
        let mut msg = InboundMessage::new(Channel::WhatsApp, m.id, sender, sent_at)?;
        msg.account = Some(value.metadata.phone_number_id.clone());
        msg.provider_account = Some(waba.to_owned());
        msg.quoted = m.context.and_then(|c| c.id).map(|id| Quoted {
            message_id: None,
            channel_message_id: id,
            text: String::new(),
        });
        let media = |kind: MediaKind, media: Option<Media>| -> Result<(MediaRef, Option<String>), ChannelError> {
            let media =
                media.ok_or_else(|| ChannelError::malformed("whatsapp media message without its media object"))?;
            let kind = if kind == MediaKind::Audio && media.voice { MediaKind::Voice } else { kind };
            Ok((
                MediaRef { kind, provider_ref: media.id, mime: media.mime_type, file_name: media.filename, size: None },
                media.caption,
            ))
        };
        match m.kind.as_str() {
            "text" => {
                msg.text = m.text.ok_or_else(|| ChannelError::malformed("whatsapp text message without text"))?.body;
            }
            "image" | "document" | "audio" | "video" | "sticker" => {
                let (kind, object) = match m.kind.as_str() {
                    "image" => (MediaKind::Image, m.image),
                    "document" => (MediaKind::Document, m.document),
                    "audio" => (MediaKind::Audio, m.audio),
                    "video" => (MediaKind::Video, m.video),
                    _ => (MediaKind::Sticker, m.sticker),
                };
                let (r, caption) = media(kind, object)?;
                msg.attachments.push(r);
                msg.text = caption.unwrap_or_default();
            }
            "location" => {
                let l =
                    m.location.ok_or_else(|| ChannelError::malformed("whatsapp location message without location"))?;
                msg.location =
                    Some(Location { latitude: l.latitude, longitude: l.longitude, name: l.name, address: l.address });
            }
            "reaction" => {
                let r = m.reaction.ok_or_else(|| ChannelError::malformed("whatsapp reaction without reaction"))?;
                // An empty emoji means the customer took their reaction back.
                msg.reaction = Some(Reaction { message_id: r.message_id, emoji: r.emoji.filter(|e| !e.is_empty()) });
            }
            "button" => {
                let b = m.button.ok_or_else(|| ChannelError::malformed("whatsapp button message without button"))?;
                msg.text = b.text;
                msg.reply_payload = b.payload;
            }
            "interactive" => {
                let i = m.interactive.ok_or_else(|| ChannelError::malformed("whatsapp interactive without body"))?;
                let c = i.button_reply.or(i.list_reply).ok_or_else(|| {
                    ChannelError::Unsupported("whatsapp interactive reply other than button or list".to_owned())
                })?;
                msg.text = c.title;
                msg.reply_payload = Some(c.id);
            }
            other => {
                let why = m.errors.first().map(WaError::describe).unwrap_or_else(|| "no error given".to_owned());
                out.push(Inbound::Ignored {
                    reason: format!("whatsapp message type {} is not handled ({why})", short(other)),
                });
                continue;
            }
        }
        out.push(Inbound::Message(msg));
    }
    for s in value.statuses {
        let state = match s.status.as_str() {
            "sent" => DeliveryState::Sent,
            "delivered" => DeliveryState::Delivered,
            "read" => DeliveryState::Read,
            "failed" => DeliveryState::Failed,
            other => {
                out.push(Inbound::Ignored { reason: format!("whatsapp status {} is not handled", short(other)) });
                continue;
            }
        };
        check_id("whatsapp status id", &s.id)?;
        let error = s.errors.first().map(|e| ProviderError {
            code: e.code.to_string(),
            description: e.title.clone().or_else(|| e.message.clone()),
        });
        out.push(Inbound::Receipt(DeliveryReceipt {
            channel: Channel::WhatsApp,
            provider_message_id: s.id,
            state,
            error,
            recipient: s.recipient_id,
            at: timestamp_ms(&s.timestamp)?,
        }));
    }
    Ok(())
}

/// Whether a free-form message may be sent to a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Free-form messages allowed until `closes_at` (Unix milliseconds).
    Open { closes_at: i64 },
    /// Only approved templates may be sent.
    Closed,
}

/// The customer service window: open for 24 hours after the customer's last message.
pub const WINDOW: Duration = parley_domain::conversation::WHATSAPP_REPLY_WINDOW;

/// Whether the window is open at `now`, given when the customer last wrote (Unix ms).
pub fn customer_service_window(last_customer_message_at: Option<i64>, now: i64) -> WindowState {
    let Some(last) = last_customer_message_at else { return WindowState::Closed };
    let closes_at = last.saturating_add(WINDOW.as_millis() as i64);
    if now < closes_at { WindowState::Open { closes_at } } else { WindowState::Closed }
}

/// An image or document: by uploaded media id or by public HTTPS link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaSource<'a> {
    Id(&'a str),
    Link(&'a str),
}

fn base(to: &str, kind: &str, reply_to: Option<&str>) -> Value {
    let mut body = json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": kind});
    if let Some(id) = reply_to {
        body["context"] = json!({"message_id": id});
    }
    body
}

fn path(phone_number_id: &str) -> String {
    format!("{phone_number_id}/messages")
}

/// A text message (inside the window).
pub fn text_message(phone_number_id: &str, to: &str, text: &str, reply_to: Option<&str>) -> OutboundRequest {
    let mut body = base(to, "text", reply_to);
    body["text"] = json!({"body": text, "preview_url": false});
    OutboundRequest::json(path(phone_number_id), &body)
}

fn media_object(source: MediaSource<'_>, caption: Option<&str>) -> Value {
    let mut obj = match source {
        MediaSource::Id(id) => json!({"id": id}),
        MediaSource::Link(link) => json!({"link": link}),
    };
    if let Some(c) = caption {
        obj["caption"] = Value::from(c);
    }
    obj
}

/// An image message.
pub fn image_message(
    phone_number_id: &str,
    to: &str,
    image: MediaSource<'_>,
    caption: Option<&str>,
    reply_to: Option<&str>,
) -> OutboundRequest {
    let mut body = base(to, "image", reply_to);
    body["image"] = media_object(image, caption);
    OutboundRequest::json(path(phone_number_id), &body)
}

/// A document message; `filename` is what the customer's app shows.
pub fn document_message(
    phone_number_id: &str,
    to: &str,
    document: MediaSource<'_>,
    filename: Option<&str>,
    caption: Option<&str>,
    reply_to: Option<&str>,
) -> OutboundRequest {
    let mut body = base(to, "document", reply_to);
    body["document"] = media_object(document, caption);
    if let Some(f) = filename {
        body["document"]["filename"] = Value::from(f);
    }
    OutboundRequest::json(path(phone_number_id), &body)
}

/// The most body parameters a template takes here.
pub const MAX_TEMPLATE_PARAMETERS: usize = 20;

/// Checks a template reference before it is sent, by the rules of the Cloud API: a name of
/// lowercase letters, digits and `_` (at most 512), a language code such as `ru` or `en_US`,
/// and at most [`MAX_TEMPLATE_PARAMETERS`] non-empty body parameters of at most 1024
/// characters without line breaks, tabs or more than four spaces in a row (which WhatsApp
/// refuses with error 132018). The error names the part at fault.
pub fn check_template(name: &str, language: &str, parameters: &[String]) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 512
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err("template.name must be 1 to 512 lowercase letters, digits and '_'".into());
    }
    let mut parts = language.split('_');
    let lang_ok = parts.next().is_some_and(|l| (2..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_lowercase()))
        && parts.all(|p| (2..=4).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !lang_ok {
        return Err("template.language must be a language code such as \"ru\" or \"en_US\"".into());
    }
    if parameters.len() > MAX_TEMPLATE_PARAMETERS {
        return Err(format!("template.body_parameters: at most {MAX_TEMPLATE_PARAMETERS}"));
    }
    for (i, p) in parameters.iter().enumerate() {
        let bad = p.trim().is_empty()
            || p.chars().count() > 1024
            || p.contains(['\n', '\r', '\t', '\0'])
            || p.contains("     ");
        if bad {
            return Err(format!(
                "template.body_parameters[{i}] must be 1 to 1024 characters on one line, without tabs or runs of \
                 more than four spaces"
            ));
        }
    }
    Ok(())
}

/// A template message (the only kind allowed outside the window), with positional body
/// parameters.
pub fn template_message(
    phone_number_id: &str,
    to: &str,
    name: &str,
    language: &str,
    body_params: &[&str],
) -> OutboundRequest {
    let mut body = base(to, "template", None);
    let mut template = json!({"name": name, "language": {"code": language}});
    if !body_params.is_empty() {
        let parameters: Vec<Value> = body_params.iter().map(|p| json!({"type": "text", "text": p})).collect();
        template["components"] = json!([{"type": "body", "parameters": parameters}]);
    }
    body["template"] = template;
    OutboundRequest::json(path(phone_number_id), &body)
}

#[derive(Deserialize)]
struct SendResponse {
    messages: Option<Vec<SentId>>,
    error: Option<GraphError>,
}

#[derive(Deserialize)]
struct SentId {
    id: String,
}

#[derive(Deserialize)]
struct GraphError {
    code: Option<i64>,
    message: Option<String>,
    error_data: Option<Value>,
}

/// Error codes Meta documents as throttling: wait and retry.
const THROTTLED: [i64; 6] = [
    4,      // application request limit reached
    80007,  // WhatsApp business account rate limit
    130429, // Cloud API throughput reached
    131048, // spam rate limit hit
    131056, // too many messages to the same recipient
    133016, // registration rate limit
];

/// Errors that are Meta's own temporary trouble.
const TRANSIENT: [i64; 3] = [1, 2, 131016];

/// Classifies the answer to `POST /{phone_number_id}/messages`.
pub fn classify_response(resp: &HttpResponse<'_>) -> SendOutcome {
    let Ok(parsed) = serde_json::from_slice::<SendResponse>(resp.body) else {
        return by_status(resp, &snippet(resp.body));
    };
    if let Some(e) = parsed.error {
        let code = e.code.unwrap_or(i64::from(resp.status));
        // HTTP 429 is a rate limit whatever code the body gives, as for every provider.
        if THROTTLED.contains(&code) || TRANSIENT.contains(&code) || resp.status == 429 || resp.status >= 500 {
            return SendOutcome::Retry { after: retry_after_header(resp.retry_after) };
        }
        let details = e.error_data.as_ref().and_then(|d| d.get("details")).and_then(Value::as_str);
        // 131047: more than 24 hours since the customer last wrote; only a template will go.
        return SendOutcome::failed(code, details.map(str::to_owned).or(e.message).unwrap_or_default());
    }
    match (resp.status, parsed.messages.and_then(|m| m.into_iter().next())) {
        // An empty id is no id: no receipt could name it.
        (200..=299, Some(m)) => SendOutcome::Sent { provider_message_id: Some(m.id).filter(|id| !id.is_empty()) },
        _ => by_status(resp, &snippet(resp.body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(message: &str, status: &str) -> Vec<u8> {
        format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"field":"messages","value":{{"metadata":{{"phone_number_id":"106540352242922"}},"messages":[{message}],"statuses":[{status}]}}}}]}}]}}"#
        )
        .into_bytes()
    }

    /// Found by fuzzing (`parley-fuzz`): an empty sender became one customer for every such
    /// message, an empty id one dedupe key, a NUL an id history cannot store.
    #[test]
    fn messages_and_statuses_without_usable_ids_are_malformed() {
        let text = |from: &str, id: &str| {
            format!(r#"{{"from":"{from}","id":"{id}","timestamp":"1749416383","type":"text","text":{{"body":"hi"}}}}"#)
        };
        assert!(parse_webhook(&webhook(&text("16505551234", "wamid.A"), "")).is_ok());
        for (from, id) in
            [("", "wamid.A"), ("16505551234", ""), ("1650\\u0000", "wamid.A"), ("16505551234", "wamid.\\n")]
        {
            let err = parse_webhook(&webhook(&text(from, id), "")).unwrap_err();
            assert!(matches!(err, ChannelError::Malformed(_)), "{from:?} {id:?}: {err:?}");
        }
        let status = r#"{"id":"","status":"delivered","timestamp":"1749416400"}"#;
        assert!(matches!(parse_webhook(&webhook("", status)), Err(ChannelError::Malformed(_))));
    }

    /// Found by fuzzing: the reason quoted Meta's error title whole, however long.
    #[test]
    fn ignored_reasons_quote_a_short_piece_of_an_error_title() {
        let title = "x".repeat(10_000);
        let body = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"metadata":{{"phone_number_id":"1"}},"errors":[{{"code":130429,"title":"{title}"}}]}}}}]}}]}}"#
        );
        let events = parse_webhook(body.as_bytes()).unwrap();
        let [Inbound::Ignored { reason }] = &events[..] else { panic!("{events:?}") };
        assert!(reason.chars().count() < 100, "{reason}");
    }

    /// Found by fuzzing: HTTP 429 with an error code outside the throttling list was a
    /// permanent failure; every other provider's 429 is retried.
    #[test]
    fn http_429_is_retried_whatever_the_code() {
        let body = br#"{"error":{"message":"(#131047) Re-engagement message","code":131047}}"#;
        let resp = HttpResponse { status: 429, body, retry_after: Some("7") };
        assert_eq!(classify_response(&resp), SendOutcome::Retry { after: Some(Duration::from_secs(7)) });
        let resp = HttpResponse { status: 400, ..resp };
        assert!(matches!(classify_response(&resp), SendOutcome::Failed { code, .. } if code == "131047"));
    }

    /// Found by fuzzing: an empty id in a 2xx answer was kept as the sent message's id.
    #[test]
    fn an_empty_sent_id_is_no_id() {
        let resp = HttpResponse { status: 200, body: br#"{"messages":[{"id":""}]}"#, retry_after: None };
        assert_eq!(classify_response(&resp), SendOutcome::Sent { provider_message_id: None });
    }
}
