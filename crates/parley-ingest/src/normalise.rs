//! Provider events, as `parley-channels` parsed them, into the envelopes ingest publishes on
//! `PARLEY_INBOUND`: pure (time is an argument), so every rule here is tested without a
//! server.
//!
//! Whatever a provider sends, the result must pass what routing checks (`check_text`, the
//! quoted message's limits): ingest answers 200 once it is published, so a message routing
//! would refuse afterwards would be lost with nobody told.

use parley_channels::{DeliveryReceipt, InboundMessage, MediaKind};
use parley_domain::{
    Attachment, AttachmentId, Channel, CustomerId, EventId, MAX_ATTACHMENTS, MAX_TEXT_CHARS, MessageId, TenantId,
    Timestamp,
};
use parley_nats::topology;
use parley_proto::{convert, events};

/// The channel config a webhook arrived for.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub tenant: &'a TenantId,
    pub channel: Channel,
    pub channel_config_id: &'a str,
}

/// One envelope ready to publish: where, under which dedupe id and ordering key.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub subject: String,
    pub dedupe_id: String,
    pub key: String,
    pub envelope: events::InboundEnvelope,
}

/// The longest display name kept (the API channel refuses longer ones; here they are cut,
/// because the provider cannot be asked to send a shorter one).
const MAX_DISPLAY_NAME_CHARS: usize = 200;
/// Routing refuses a quoted provider id longer than this.
const MAX_QUOTED_ID_BYTES: usize = 256;

/// The message id of a provider message: the same provider message, retried, always gets
/// the same id, so JetStream drops the republish. Scoped by channel config, because provider
/// ids are unique per account, and namespaced apart from the API channel's idempotency keys.
pub fn message_id(tenant: &TenantId, channel_config_id: &str, dedupe_key: &str) -> MessageId {
    MessageId::derive(tenant, &format!("channel:{channel_config_id}"), dedupe_key)
}

/// A customer message.
pub fn message(source: Source<'_>, m: &InboundMessage, now: Timestamp) -> Publication {
    let Source { tenant, channel, channel_config_id } = source;
    let customer_id = CustomerId::derive(tenant, channel, &m.sender.external_id);
    let message_id = message_id(tenant, channel_config_id, &m.provider_message_id);
    let quoted = m.quoted.as_ref().map(|q| {
        let mut q = convert::quoted(q);
        q.text = truncate(&without_nul(&q.text), MAX_TEXT_CHARS);
        q.channel_message_id = without_nul(&q.channel_message_id);
        if q.channel_message_id.len() > MAX_QUOTED_ID_BYTES {
            q.channel_message_id.clear();
        }
        q
    });
    let message = events::CustomerMessage {
        message_id: message_id.to_string(),
        tenant_id: tenant.to_string(),
        channel: convert::channel(channel) as i32,
        channel_config_id: channel_config_id.to_owned(),
        customer_id: customer_id.to_string(),
        customer_address: m.reply_address.clone(),
        customer_display_name: m.sender.display_name.as_deref().map(display_name).unwrap_or_default(),
        text: text(m),
        quoted,
        // Empty: the channel config's default queue.
        queue_id: String::new(),
        channel_message_id: m.provider_message_id.clone(),
        receive_time: Some(convert::timestamp(now)),
        required_skills: Vec::new(),
        language: m.sender.language.as_deref().and_then(iso_639_1).unwrap_or_default(),
        fast_track_code: String::new(),
        // Set by the SMTP listener for email.
        subject: String::new(),
        attachments: attachments(message_id, m),
        // Set by the SMTP listener for email replies that name a conversation.
        thread_conversation_id: String::new(),
        verified_phone: String::new(),
    };
    Publication {
        subject: topology::inbound_subject(tenant, channel),
        dedupe_id: message_id.to_string(),
        key: customer_id.to_string(),
        envelope: events::InboundEnvelope { kind: Some(events::inbound_envelope::Kind::CustomerMessage(message)) },
    }
}

/// The attachments of a message as routing will accept them: at most [`MAX_ATTACHMENTS`]
/// (the rest are named in the text by the placeholder's count), file names without control
/// characters and cut to length, a MIME type only when it is one. Each keeps the provider's
/// reference, for the media worker to fetch it by.
pub fn attachments(message: MessageId, m: &InboundMessage) -> Vec<events::InboundAttachment> {
    m.attachments
        .iter()
        .take(MAX_ATTACHMENTS)
        .enumerate()
        .map(|(position, r)| {
            let mut a = Attachment {
                id: AttachmentId::derive(message, position),
                kind: r.kind,
                mime: r.mime.clone().unwrap_or_default().trim().to_ascii_lowercase(),
                file_name: r
                    .file_name
                    .as_deref()
                    .map(|n| truncate(without_controls(n).trim(), parley_domain::message::MAX_FILE_NAME_CHARS))
                    .unwrap_or_default(),
                size: r.size.unwrap_or(0),
            };
            if parley_domain::check_attachment(&a).is_err() {
                a.mime.clear();
            }
            events::InboundAttachment {
                attachment: Some(convert::attachment(&a)),
                provider_ref: r.provider_ref.clone(),
            }
        })
        .collect()
}

/// A delivery receipt. Its dedupe id is derived from the config, the provider's message id
/// and the state, so each state of a message is kept once however often it is reported.
pub fn receipt(source: Source<'_>, r: &DeliveryReceipt, now: Timestamp) -> Publication {
    let Source { tenant, channel, channel_config_id } = source;
    let state = convert::delivery_state(r.state);
    let dedupe =
        EventId::derive(&["receipt", tenant.as_str(), channel_config_id, &r.provider_message_id, state.as_str_name()]);
    let receipt = events::DeliveryReceipt {
        tenant_id: tenant.to_string(),
        channel: convert::channel(channel) as i32,
        channel_config_id: channel_config_id.to_owned(),
        provider_message_id: r.provider_message_id.clone(),
        state: state as i32,
        // The provider's words, kept as history's failure reason: no NUL.
        error_code: r.error.as_ref().map(|e| without_nul(&e.code)).unwrap_or_default(),
        error_description: r.error.as_ref().and_then(|e| e.description.as_deref()).map(without_nul).unwrap_or_default(),
        recipient: r.recipient.as_deref().map(without_nul).unwrap_or_default(),
        state_time: Some(convert::timestamp(Timestamp::from_millis(r.at))),
        receive_time: Some(convert::timestamp(now)),
        // The provider names only its own id; routing maps it back.
        conversation_id: String::new(),
        message_id: String::new(),
    };
    Publication {
        subject: topology::inbound_subject(tenant, channel),
        dedupe_id: dedupe.to_string(),
        // One provider message's states are handled in order.
        key: format!("receipt:{}", EventId::derive(&[channel_config_id, &r.provider_message_id])),
        envelope: events::InboundEnvelope { kind: Some(events::inbound_envelope::Kind::DeliveryReceipt(receipt)) },
    }
}

/// The text an operator sees: the text or caption; for a message without one, a short
/// placeholder saying what it is; never blank, never longer than routing allows, no NUL,
/// line breaks as `\n` (email bodies come with CRLF).
pub fn text(m: &InboundMessage) -> String {
    let mut text = without_nul(&m.text).replace("\r\n", "\n");
    if text.trim().is_empty() {
        text = placeholder(m);
    }
    if m.edit_of.is_some() {
        text = format!("[edited] {text}");
    }
    truncate(&text, MAX_TEXT_CHARS)
}

/// What a message of `count` files and no text says in its place ("[photo]", "[document:
/// name] (+2 more)"), by its first file.
pub fn files_placeholder(first: MediaKind, first_name: Option<&str>, count: usize) -> String {
    let what = match first {
        MediaKind::Image => "[photo]".to_owned(),
        MediaKind::Video => "[video]".to_owned(),
        MediaKind::Audio => "[audio]".to_owned(),
        MediaKind::Voice => "[voice message]".to_owned(),
        MediaKind::Sticker => "[sticker]".to_owned(),
        MediaKind::Document => match first_name.map(without_controls) {
            Some(name) if !name.trim().is_empty() => format!("[document: {}]", truncate(&name, 200)),
            _ => "[document]".to_owned(),
        },
    };
    match count {
        0 | 1 => what,
        n => format!("{what} (+{} more)", n - 1),
    }
}

fn placeholder(m: &InboundMessage) -> String {
    if let Some(first) = m.attachments.first() {
        return files_placeholder(first.kind, first.file_name.as_deref(), m.attachments.len());
    }
    if let Some(l) = &m.location {
        let name = l.name.as_deref().or(l.address.as_deref()).map(without_controls);
        return match name {
            Some(name) if !name.trim().is_empty() => {
                format!("[location: {}, {}, {}]", truncate(&name, 200), l.latitude, l.longitude)
            }
            _ => format!("[location: {}, {}]", l.latitude, l.longitude),
        };
    }
    if let Some(r) = &m.reaction {
        return match r.emoji.as_deref().map(without_controls) {
            Some(e) if !e.trim().is_empty() => format!("[reaction: {}]", truncate(&e, 16)),
            _ => "[reaction removed]".to_owned(),
        };
    }
    if let Some(p) = m.reply_payload.as_deref().map(without_nul).filter(|p| !p.trim().is_empty()) {
        return format!("[button: {}]", truncate(&p, 200));
    }
    "[message without text]".to_owned()
}

/// A display name without control characters, at most 200 characters.
fn display_name(name: &str) -> String {
    truncate(without_controls(name).trim(), MAX_DISPLAY_NAME_CHARS)
}

/// The ISO 639-1 code of a client's language tag (`ru`, `en-US` → `en`), if it has one.
fn iso_639_1(tag: &str) -> Option<String> {
    let primary = tag.split(['-', '_']).next()?;
    (primary.len() == 2 && primary.bytes().all(|b| b.is_ascii_alphabetic())).then(|| primary.to_ascii_lowercase())
}

/// PostgreSQL text cannot hold NUL, and routing refuses it.
fn without_nul(s: &str) -> String {
    s.replace('\0', "")
}

fn without_controls(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// At most `max` characters, cut at a character boundary with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some(_) => {
            // `max - 1` characters and the ellipsis make `max`.
            let end = s.char_indices().nth(max.saturating_sub(1)).map_or(s.len(), |(i, _)| i);
            format!("{}…", &s[..end])
        }
    }
}

#[cfg(test)]
mod tests {
    use parley_channels::{Identity, Location, MediaRef, Reaction};
    use parley_domain::check_text;

    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("acme").expect("valid tenant")
    }

    fn inbound(text: &str) -> InboundMessage {
        InboundMessage {
            channel: Channel::Telegram,
            provider_message_id: "42:7".into(),
            edit_of: None,
            account: None,
            provider_account: None,
            sender: Identity {
                channel: Channel::Telegram,
                external_id: "42".into(),
                display_name: Some("Иван\u{7}".into()),
                language: Some("ru-RU".into()),
            },
            reply_address: "42".into(),
            text: text.into(),
            attachments: Vec::new(),
            quoted: None,
            location: None,
            reaction: None,
            reply_payload: None,
            sent_at: 1_700_000_000_000,
        }
    }

    fn media(kind: MediaKind, name: Option<&str>) -> MediaRef {
        MediaRef { kind, provider_ref: "f".into(), mime: None, file_name: name.map(Into::into), size: None }
    }

    fn source(t: &TenantId) -> Source<'_> {
        Source { tenant: t, channel: Channel::Telegram, channel_config_id: "tg-main" }
    }

    fn customer_message(p: &Publication) -> &events::CustomerMessage {
        match &p.envelope.kind {
            Some(events::inbound_envelope::Kind::CustomerMessage(m)) => m,
            other => panic!("expected a customer message, got {other:?}"),
        }
    }

    #[test]
    fn the_same_provider_message_always_gets_the_same_ids() {
        let t = tenant();
        let now = Timestamp::from_millis(1);
        let a = message(source(&t), &inbound("Привет"), now);
        let b = message(source(&t), &inbound("Привет"), Timestamp::from_millis(2));
        assert_eq!(a.dedupe_id, b.dedupe_id);
        assert_eq!(customer_message(&a).message_id, a.dedupe_id);
        assert_eq!(a.key, CustomerId::derive(&t, Channel::Telegram, "42").to_string());
        assert_eq!(a.subject, "parley.inbound.acme.telegram");
        // Another channel config of the same tenant is another account: another id.
        let other = Source { channel_config_id: "tg-other", ..source(&t) };
        assert_ne!(message(other, &inbound("Привет"), now).dedupe_id, a.dedupe_id);
        // An API idempotency key equal to the provider id does not collide.
        assert_ne!(MessageId::derive(&t, "api", "42:7").to_string(), a.dedupe_id);
    }

    #[test]
    fn fields_are_cleaned_to_what_routing_accepts() {
        let t = tenant();
        let m = customer_message(&message(source(&t), &inbound("a\0b"), Timestamp::from_millis(1))).clone();
        assert_eq!(m.text, "ab");
        let crlf = message(source(&t), &inbound("Добрый день.\r\nКарта *1234"), Timestamp::from_millis(1));
        assert_eq!(customer_message(&crlf).text, "Добрый день.\nКарта *1234");
        assert_eq!(m.customer_display_name, "Иван");
        assert_eq!(m.language, "ru");
        assert_eq!(m.channel, parley_proto::v1::Channel::Telegram as i32);
        assert_eq!(m.channel_message_id, "42:7");
    }

    #[test]
    fn attachments_carry_stable_ids_clean_names_and_the_provider_s_reference() {
        let t = tenant();
        let mut m = inbound("");
        let mut bad_mime = media(MediaKind::Image, Some("фото\r\n.jpg"));
        bad_mime.mime = Some("image/jpeg\r\nX-Evil: 1".into());
        let mut good = media(MediaKind::Document, Some(&"д".repeat(300)));
        good.mime = Some(" Application/PDF ".into());
        good.size = Some(4096);
        m.attachments = vec![bad_mime, good];
        let p = message(source(&t), &m, Timestamp::from_millis(1));
        let cm = customer_message(&p);
        assert_eq!(cm.attachments.len(), 2);
        let id = MessageId::parse(&cm.message_id).unwrap();
        let first = cm.attachments[0].attachment.clone().unwrap();
        assert_eq!(first.id, AttachmentId::derive(id, 0).to_string());
        assert_eq!(first.file_name, "фото.jpg");
        assert_eq!(first.mime_type, "", "a MIME type that is not one is dropped");
        assert_eq!(cm.attachments[0].provider_ref, "f");
        let second = cm.attachments[1].attachment.clone().unwrap();
        assert_eq!(second.mime_type, "application/pdf");
        assert_eq!(second.size_bytes, 4096);
        assert_eq!(second.file_name.chars().count(), parley_domain::message::MAX_FILE_NAME_CHARS);
        // What routing will decode.
        let list: Vec<_> = cm.attachments.iter().map(|a| a.attachment.clone().unwrap()).collect();
        assert!(convert::from_attachments("attachments", &list).is_ok());
        // More than routing allows: the first ones are kept.
        m.attachments = (0..MAX_ATTACHMENTS + 5).map(|_| media(MediaKind::Image, None)).collect();
        let p = message(source(&t), &m, Timestamp::from_millis(1));
        assert_eq!(customer_message(&p).attachments.len(), MAX_ATTACHMENTS);
    }

    #[test]
    fn media_only_messages_get_a_placeholder_that_passes_check_text() {
        let mut m = inbound("");
        m.attachments = vec![media(MediaKind::Image, None)];
        assert_eq!(text(&m), "[photo]");
        m.attachments = vec![media(MediaKind::Document, Some("счёт.pdf")), media(MediaKind::Image, None)];
        assert_eq!(text(&m), "[document: счёт.pdf] (+1 more)");
        m.attachments.clear();
        m.location = Some(Location { latitude: 55.75, longitude: 37.62, name: None, address: None });
        assert_eq!(text(&m), "[location: 55.75, 37.62]");
        m.location = None;
        m.reaction = Some(Reaction { message_id: "x".into(), emoji: Some("👍".into()) });
        assert_eq!(text(&m), "[reaction: 👍]");
        m.reaction = None;
        assert!(check_text(&text(&m)).is_ok());
        m.text = "  ".into();
        assert!(check_text(&text(&m)).is_ok());
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let long = "я".repeat(MAX_TEXT_CHARS + 10);
        let cut = text(&inbound(&long));
        assert_eq!(cut.chars().count(), MAX_TEXT_CHARS);
        assert!(cut.ends_with('…'));
        assert!(check_text(&cut).is_ok());
        let exact = "я".repeat(MAX_TEXT_CHARS);
        assert_eq!(text(&inbound(&exact)), exact);
        let mut edit = inbound(&exact);
        edit.edit_of = Some("42:7".into());
        assert!(check_text(&text(&edit)).is_ok());
    }

    /// Found by fuzzing (`parley-fuzz`): a provider's NUL in a quoted message's id or a
    /// receipt's error reached history, which cannot store it (and retries the record).
    #[test]
    fn no_nul_reaches_history() {
        let t = tenant();
        let mut m = inbound("hi");
        m.quoted = Some(parley_domain::Quoted {
            message_id: None,
            channel_message_id: "42:\u{0}6".into(),
            text: "a\0".into(),
        });
        let published = message(source(&t), &m, Timestamp::from_millis(1));
        let quoted = customer_message(&published).quoted.clone().expect("quoted");
        assert_eq!((quoted.channel_message_id.as_str(), quoted.text.as_str()), ("42:6", "a"));
        let r = DeliveryReceipt {
            channel: Channel::Viber,
            provider_message_id: "1".into(),
            state: parley_domain::DeliveryState::Failed,
            error: Some(parley_channels::ProviderError { code: "fa\0iled".into(), description: Some("no\0pe".into()) }),
            recipient: Some("u\0".into()),
            at: 1,
        };
        let s = Source { tenant: &t, channel: Channel::Viber, channel_config_id: "vb" };
        let Some(events::inbound_envelope::Kind::DeliveryReceipt(r)) =
            receipt(s, &r, Timestamp::from_millis(1)).envelope.kind
        else {
            panic!("expected a receipt")
        };
        assert_eq!(
            (r.error_code.as_str(), r.error_description.as_str(), r.recipient.as_str()),
            ("failed", "nope", "u")
        );
    }

    #[test]
    fn receipts_dedupe_per_state() {
        let t = tenant();
        let r = DeliveryReceipt {
            channel: Channel::WhatsApp,
            provider_message_id: "wamid.X".into(),
            state: parley_domain::DeliveryState::Delivered,
            error: None,
            recipient: Some("79001234567".into()),
            at: 1_700_000_000_000,
        };
        let s = Source { tenant: &t, channel: Channel::WhatsApp, channel_config_id: "wa" };
        let a = receipt(s, &r, Timestamp::from_millis(1));
        assert_eq!(a.dedupe_id, receipt(s, &r, Timestamp::from_millis(9)).dedupe_id);
        let failed = DeliveryReceipt { state: parley_domain::DeliveryState::Failed, ..r.clone() };
        let b = receipt(s, &failed, Timestamp::from_millis(1));
        assert_ne!(a.dedupe_id, b.dedupe_id);
        assert_eq!(a.key, b.key);
        assert_eq!(a.subject, "parley.inbound.acme.whatsapp");
    }
}
