//! Targets over `parley-ingest`: the SMTP command parser, the web chat's frames and visitor
//! tokens, and the normaliser that turns whatever a channel parser accepted into what
//! routing and history take.

use base64::Engine as _;
use parley_channels::{Inbound, email as mail, hmac_sha256, telegram, twilio, viber, whatsapp};
use parley_domain::{Channel, ChannelConfigId, CustomerId, MessageId, TenantId, Timestamp, check_text};
use parley_ingest::normalise::{self as normaliser, Publication, Source};
use parley_ingest::smtp::protocol::{Outcome, Reply, Session, Settings, Step};
use parley_ingest::webchat::{self, Frame};
use parley_proto::events::inbound_envelope::Kind;
use parley_proto::{convert, events};

use crate::{RECEIVED_AT, utf8};

/// The mailboxes of the SMTP target: `support@` and `help@acme.test` are one config (route
/// 1), `info@globex.test` another (route 2).
fn mailbox(address: &str) -> Vec<u32> {
    match address.to_lowercase().as_str() {
        "support@acme.test" | "help@acme.test" => vec![1],
        "info@globex.test" => vec![2],
        _ => Vec::new(),
    }
}

/// RFC 5321 § 4.5.3.1.5: a reply line is at most 512 octets, its code and CRLF included.
const MAX_REPLY_LINE: usize = 512;

/// A reply as the client reads it: a code, and lines that nothing the client sent can break
/// or stretch past the limit.
fn check_reply(r: &Reply) {
    assert!((200..600).contains(&r.code()), "reply code {}", r.code());
    assert!(!r.lines().is_empty(), "a reply without text");
    for line in r.lines() {
        assert!(!line.contains(['\r', '\n']), "a client's text broke a reply line: {line:?}");
    }
    for line in r.encode().split_inclusive("\r\n") {
        assert!(line.ends_with("\r\n") && line.starts_with(&r.code().to_string()), "reply line {line:?}");
        assert!(line.len() <= MAX_REPLY_LINE, "a reply line of {} octets: {line:.100}…", line.len());
    }
}

/// The SMTP conversation: input is command lines. Every reply is well-formed; a mail goes to
/// DATA only after a greeting, from a plausible sender, to between one and the most
/// recipients allowed, each a known mailbox given once, with each route once.
pub fn smtp_command(data: &[u8]) {
    let settings = Settings { hostname: "mx.parley.test".into(), max_message_bytes: 1000, max_recipients: 3 };
    let mut session = Session::<u32>::new(settings.clone());
    check_reply(&session.greeting());
    let mut greeted = false;
    for line in data.split_inclusive(|&b| b == b'\n') {
        let verb = line.split(|&b| b == b' ').next().unwrap_or_default().trim_ascii().to_ascii_uppercase();
        let hello = verb == b"EHLO" || verb == b"HELO";
        match session.command(line, mailbox) {
            Step::Reply(r) => {
                check_reply(&r);
                greeted |= hello && r.code() == 250;
                if verb == b"MAIL" && r.code() == 250 {
                    assert!(greeted, "a mail started before a greeting");
                }
            }
            Step::Data { go_ahead, envelope } => {
                check_reply(&go_ahead);
                assert_eq!(go_ahead.code(), 354);
                assert!(greeted, "DATA before a greeting");
                let sender = &envelope.sender;
                assert!(sender.is_empty() || sender.contains('@'), "sender {sender:?}");
                let recipients = &envelope.recipients;
                assert!((1..=settings.max_recipients).contains(&recipients.len()), "{recipients:?}");
                for (i, r) in recipients.iter().enumerate() {
                    assert!(!mailbox(r).is_empty(), "mail for {r:?}, which is no mailbox here");
                    let lower = r.to_lowercase();
                    assert!(!recipients[..i].iter().any(|o| o.to_lowercase() == lower), "{r:?} twice");
                }
                let routes = &envelope.routes;
                assert!(!routes.is_empty(), "a mail with nowhere to go");
                for (i, route) in routes.iter().enumerate() {
                    assert!(recipients.iter().any(|r| mailbox(r).contains(route)), "route {route} of no recipient");
                    assert!(!routes[..i].contains(route), "route {route} twice");
                }
                // What the connection answers once the data is read.
                let why = String::from_utf8_lossy(line).into_owned();
                for outcome in [Outcome::Stored, Outcome::TooBig, Outcome::Unparseable(why), Outcome::NotStored] {
                    check_reply(&outcome.reply(&settings));
                }
            }
            Step::Close(r) => {
                check_reply(&r);
                assert_eq!(r.code(), 221);
                return;
            }
        }
    }
}

/// A web chat WebSocket frame (text frames are UTF-8): read the same way every time, and a
/// refusal says why.
pub fn webchat_frame(data: &[u8]) {
    let Some(text) = utf8(data) else { return };
    let frame = Frame::parse(text);
    assert_eq!(frame, Frame::parse(text), "reading a frame is not deterministic");
    if let Err(message) = &frame {
        assert!(!message.is_empty(), "a refusal without a reason");
    }
}

/// The key visitor tokens are signed with here; [`OTHER_KEY`] is another installation's.
const KEY: &[u8] = b"parley fuzz web chat token key";
const OTHER_KEY: &[u8] = b"another installation's web chat key";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Visitor tokens. Presented as they are, bytes nobody signed name no visitor. Signed as a
/// token's payload, they name a visitor only when complete and unexpired, one that signs back
/// to itself, and not under another key, with the payload changed, or once expired.
pub fn webchat_token(data: &[u8]) {
    let now = RECEIVED_AT;
    if let Some(raw) = utf8(data) {
        assert_eq!(webchat::verify(raw, KEY, now), None, "an unsigned token was accepted");
    }
    let body = B64.encode(data);
    let token = format!("{body}.{}", B64.encode(hmac_sha256(KEY, body.as_bytes())));
    let Some(visitor) = webchat::verify(&token, KEY, now) else { return };
    assert!(visitor.expires_ms > now, "an expired token was accepted");
    assert_eq!(webchat::verify(&webchat::sign(&visitor, KEY), KEY, now), Some(visitor.clone()), "no round trip");
    assert_eq!(webchat::verify(&token, OTHER_KEY, now), None, "accepted under another key");
    assert_eq!(webchat::verify(&token, KEY, visitor.expires_ms), None, "accepted once expired");
    let first = if body.starts_with('A') { "B" } else { "A" };
    let changed = format!("{first}{}", &token[1..]);
    assert_eq!(webchat::verify(&changed, KEY, now), None, "accepted a changed payload");
}

/// The ingest normaliser behind every channel: the input goes to each channel's parser, and
/// whatever one accepts is normalised into what ingest publishes. Routing must accept every
/// customer message (text that passes `check_text`, a quoted message and subject within
/// its limits, valid ids) and PostgreSQL must be able to store every string (no NUL):
/// ingest has answered the provider by then, so a message refused later is lost.
pub fn normalise(data: &[u8]) {
    let tenant = TenantId::parse("acme").expect("a valid tenant");
    let now = Timestamp::from_millis(RECEIVED_AT);
    let parsed = [
        (Channel::Telegram, telegram::parse_update(data)),
        (Channel::WhatsApp, whatsapp::parse_webhook(data)),
        (Channel::Viber, viber::parse_callback(data)),
        (Channel::Sms, twilio::parse_form(data).and_then(|params| twilio::parse_webhook(&params, RECEIVED_AT))),
        (
            Channel::Email,
            mail::parse_email(data, 1 << 20, RECEIVED_AT).map(|email| vec![Inbound::Message(email.message)]),
        ),
    ];
    for (channel, events) in parsed {
        let source = Source { tenant: &tenant, channel, channel_config_id: "cfg-1" };
        for event in events.unwrap_or_default() {
            match event {
                Inbound::Message(m) => {
                    let publication = normaliser::message(source, &m, now);
                    assert_eq!(publication, normaliser::message(source, &m, now), "not deterministic");
                    check_customer_message(&publication, channel);
                }
                Inbound::Receipt(r) => {
                    let publication = normaliser::receipt(source, &r, now);
                    assert_eq!(publication, normaliser::receipt(source, &r, now), "not deterministic");
                    check_receipt(&publication);
                }
                Inbound::Subscription { .. } | Inbound::Ignored { .. } => {}
            }
        }
    }
}

fn storable(field: &str, value: &str) {
    assert!(!value.contains('\0'), "{field} holds a NUL, which PostgreSQL cannot store: {value:?}");
}

/// What routing's `customer_message` checks, and what history stores.
fn check_customer_message(p: &Publication, channel: Channel) {
    let Some(Kind::CustomerMessage(m)) = &p.envelope.kind else { panic!("a message published as {p:?}") };
    if let Err(e) = check_text(&m.text) {
        panic!("routing refuses the text ({e}): {:.200?}", m.text);
    }
    assert!(TenantId::parse(&m.tenant_id).is_ok() && CustomerId::parse(&m.customer_id).is_ok());
    assert!(MessageId::parse(&m.message_id).is_ok() && ChannelConfigId::parse(&m.channel_config_id).is_ok());
    assert_eq!(convert::from_channel("channel", m.channel).ok(), Some(channel));
    if let Err(e) = convert::from_quoted(m.quoted.as_ref()) {
        panic!("routing refuses the quoted message ({e}): {:.200?}", m.quoted);
    }
    assert!(convert::subject("subject", &m.subject).is_ok(), "subject {:?}", m.subject);
    assert_eq!((p.dedupe_id.as_str(), p.key.as_str()), (m.message_id.as_str(), m.customer_id.as_str()));
    assert!(!m.channel_message_id.is_empty() && !m.customer_address.is_empty(), "{m:?}");
    let name = &m.customer_display_name;
    assert!(name.chars().count() <= 200 && !name.chars().any(char::is_control), "display name {name:?}");
    let language = &m.language;
    assert!(language.is_empty() || language.len() == 2 && language.bytes().all(|b| b.is_ascii_lowercase()));
    storable("channel_message_id", &m.channel_message_id);
    storable("customer_address", &m.customer_address);
    if let Some(q) = &m.quoted {
        storable("quoted.channel_message_id", &q.channel_message_id);
        storable("quoted.text", &q.text);
    }
    // Routing decodes the attachments; history stores their names and types.
    let attachments: Vec<_> = m.attachments.iter().map(|a| a.attachment.clone().expect("an attachment")).collect();
    if let Err(e) = convert::from_attachments("attachments", &attachments) {
        panic!("routing refuses the attachments ({e}): {attachments:.200?}");
    }
    for a in &attachments {
        storable("attachment.file_name", &a.file_name);
        storable("attachment.mime_type", &a.mime_type);
    }
}

/// What routing maps back to a message and history stores.
fn check_receipt(p: &Publication) {
    let Some(Kind::DeliveryReceipt(r)) = &p.envelope.kind else { panic!("a receipt published as {p:?}") };
    let events::DeliveryReceipt { provider_message_id, error_code, error_description, recipient, .. } = r;
    assert!(!provider_message_id.is_empty() && !p.dedupe_id.is_empty(), "{r:?}");
    storable("provider_message_id", provider_message_id);
    storable("error_code", error_code);
    storable("error_description", error_description);
    storable("recipient", recipient);
}
