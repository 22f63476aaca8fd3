//! Email: RFC 5322 parsing (any charset, encoded words, RFC 2231 names, HTML-only bodies),
//! auto-reply detection, and thread tokens in our outgoing Message-IDs that a customer cannot
//! forge into another conversation.

use mail_parser::{HeaderValue, MessageParser, MimeHeaders};
use parley_domain::message::Quoted;
use parley_domain::{Channel, ConversationId, MessageId};
use sha2::Digest;

use crate::sig::{check_size, ct_eq, hmac_sha256, secs_to_ms};
use crate::{ChannelError, Identity, InboundMessage, MediaKind, MediaRef};

/// A mailbox: an address and its decoded display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub address: String,
    pub name: Option<String>,
}

/// An attachment or inline image, with its bytes (email has no provider to fetch them from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAttachment {
    /// Decoded file name (encoded words and RFC 2231 `filename*=` included).
    pub name: Option<String>,
    /// `type/subtype`, lowercase; `application/octet-stream` when not given.
    pub mime: String,
    /// Without angle brackets; set for inline images an HTML body refers to as `cid:`.
    pub content_id: Option<String>,
    pub inline: bool,
    pub bytes: Vec<u8>,
}

/// Why a message looks automatic; auto-replies are stored but must never be answered
/// automatically (two auto-responders would loop) nor reopen a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoReply {
    /// `Auto-Submitted` other than `no` (RFC 3834).
    AutoSubmitted(String),
    /// `Precedence: bulk`, `junk` or `list`.
    Precedence(String),
    /// `X-Autoreply` or `X-Autorespond` present.
    XAutoreply,
    /// `X-Auto-Response-Suppress: All` or `AutoReply` (Exchange out-of-office replies).
    AutoResponseSuppress,
    /// `Return-Path: <>`: a bounce or another null-sender message.
    NullReturnPath,
    /// `List-Id` present: a mailing list.
    MailingList,
}

/// A parsed email. `message` is the normalised view shared with the other channels; the rest
/// is what only email has.
#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    pub message: InboundMessage,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub subject: Option<String>,
    /// Without angle brackets.
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    /// `message.attachments[i].provider_ref` is `part:{i}`, an index into this.
    pub attachments: Vec<EmailAttachment>,
    pub auto_reply: Option<AutoReply>,
}

fn id_list(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(list) => list.iter().map(|t| t.to_string()).collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .map(|id| id.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
    .filter(|id| !id.is_empty())
    .collect()
}

fn mailboxes(address: Option<&mail_parser::Address<'_>>) -> Vec<Mailbox> {
    address
        .map(|a| {
            a.iter()
                .filter_map(|addr| {
                    Some(Mailbox {
                        address: addr.address()?.trim().to_owned(),
                        name: addr.name().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()),
                    })
                })
                .filter(|m| m.address.contains('@'))
                .collect()
        })
        .unwrap_or_default()
}

fn detect_auto_reply(m: &mail_parser::Message<'_>) -> Option<AutoReply> {
    let raw = |name: &str| m.header_raw(name).map(|v| v.trim().to_owned());
    if let Some(v) = raw("Auto-Submitted").filter(|v| !v.eq_ignore_ascii_case("no") && !v.is_empty()) {
        return Some(AutoReply::AutoSubmitted(v.to_ascii_lowercase()));
    }
    if let Some(v) = raw("Precedence").map(|v| v.to_ascii_lowercase())
        && matches!(v.as_str(), "bulk" | "junk" | "list")
    {
        return Some(AutoReply::Precedence(v));
    }
    if raw("X-Autoreply").is_some() || raw("X-Autorespond").is_some() {
        return Some(AutoReply::XAutoreply);
    }
    if let Some(v) = raw("X-Auto-Response-Suppress")
        && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("all") || t.trim().eq_ignore_ascii_case("autoreply"))
    {
        return Some(AutoReply::AutoResponseSuppress);
    }
    if raw("Return-Path").is_some_and(|v| v.replace(' ', "") == "<>") {
        return Some(AutoReply::NullReturnPath);
    }
    if raw("List-Id").is_some() {
        return Some(AutoReply::MailingList);
    }
    None
}

/// Parses a raw RFC 5322 message of at most `max_bytes`. `received_at` (Unix ms) stands in
/// for a missing or invalid `Date`.
pub fn parse_email(raw: &[u8], max_bytes: usize, received_at: i64) -> Result<Email, ChannelError> {
    check_size(raw, max_bytes)?;
    let m = MessageParser::default().parse(raw).ok_or_else(|| ChannelError::malformed("not an email message"))?;
    let from =
        mailboxes(m.from()).into_iter().next().ok_or_else(|| ChannelError::malformed("email has no from address"))?;
    let to = mailboxes(m.to());
    // One with control characters cannot be stored as a key: the bytes' hash stands in.
    let message_id =
        m.message_id().map(|id| id.trim().to_owned()).filter(|id| !id.is_empty() && !id.chars().any(char::is_control));
    let in_reply_to = id_list(m.in_reply_to());
    let references = id_list(m.references());
    let sent_at = m.date().filter(|d| d.is_valid()).map_or(received_at, |d| secs_to_ms(d.to_timestamp()));

    let attachments: Vec<EmailAttachment> = m
        .attachments()
        .map(|part| {
            let mime = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_owned(),
                })
                .map_or_else(|| "application/octet-stream".to_owned(), |t| t.to_ascii_lowercase());
            EmailAttachment {
                name: part.attachment_name().map(str::to_owned),
                mime,
                content_id: part.content_id().map(|c| c.trim_start_matches('<').trim_end_matches('>').to_owned()),
                inline: part.content_disposition().is_some_and(|d| d.is_inline()),
                bytes: part.contents().to_vec(),
            }
        })
        .collect();

    // Prefer the text/plain bodies; for an HTML-only message mail-parser lists the HTML part
    // as the text body and converts it to plain text.
    let text = (0..m.text_body_count())
        .filter_map(|i| m.body_text(i))
        .map(|t| t.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n\n");

    let provider_message_id = match &message_id {
        Some(id) => id.clone(),
        // Without a Message-ID the bytes themselves are the identity: a re-delivery of the
        // same message dedupes, a different message does not.
        None => format!("sha256:{}", hex::encode(sha2::Sha256::digest(raw))),
    };
    let sender = Identity {
        channel: Channel::Email,
        // Addresses are matched case-insensitively in practice, and the customer id derived
        // from this must not change with how a client capitalises it.
        external_id: from.address.to_lowercase(),
        display_name: from.name.clone(),
        language: None,
    };
    let mut message = InboundMessage::new(Channel::Email, provider_message_id, sender, sent_at)?;
    message.account = to.first().map(|t| t.address.to_lowercase());
    message.text = text;
    message.quoted =
        in_reply_to.first().map(|id| Quoted { message_id: None, channel_message_id: id.clone(), text: String::new() });
    message.attachments = attachments
        .iter()
        .enumerate()
        .map(|(i, a)| MediaRef {
            kind: MediaKind::from_mime(&a.mime),
            provider_ref: format!("part:{i}"),
            mime: Some(a.mime.clone()),
            file_name: a.name.clone(),
            size: Some(a.bytes.len() as u64),
        })
        .collect();
    Ok(Email {
        message,
        from,
        to,
        subject: m.subject().map(str::to_owned),
        message_id,
        in_reply_to,
        references,
        attachments,
        auto_reply: detect_auto_reply(&m),
    })
}

/// The version tag of our Message-ID local part, so the format can change later.
const TOKEN_PREFIX: &str = "pm1";
/// Bytes of HMAC kept: 96 bits is far beyond guessing, and keeps the id short.
const MAC_BYTES: usize = 12;

fn token_mac(key: &[u8], conversation: &str, message: &str) -> String {
    let data = format!("{TOKEN_PREFIX}\u{1f}{conversation}\u{1f}{message}");
    hex::encode(&hmac_sha256(key, data.as_bytes())[..MAC_BYTES])
}

/// Our Message-ID for an outgoing email: `<pm1.{conversation}.{message}.{mac}@{domain}>`.
/// The MAC (keyed with `key`, a server secret) binds the two ids, so a customer who edits
/// the conversation id in a reply's headers gets no conversation at all.
pub fn outgoing_message_id(conversation: ConversationId, message: MessageId, domain: &str, key: &[u8]) -> String {
    let (c, m) = (conversation.to_string(), message.to_string());
    format!("<{TOKEN_PREFIX}.{c}.{m}.{}@{domain}>", token_mac(key, &c, &m))
}

/// The conversation a token-bearing id names, if its MAC is valid.
fn verify_token(id: &str, key: &[u8]) -> Option<ConversationId> {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>');
    let local = id.rsplit_once('@').map_or(id, |(l, _)| l);
    let mut parts = local.split('.');
    let (prefix, c, m, mac) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if prefix != TOKEN_PREFIX || parts.next().is_some() {
        return None;
    }
    let conversation = ConversationId::parse(c).ok()?;
    MessageId::parse(m).ok()?;
    ct_eq(token_mac(key, c, m).as_bytes(), mac.to_ascii_lowercase().as_bytes()).then_some(conversation)
}

/// Finds the conversation a reply belongs to from its `In-Reply-To` and `References` (most
/// relevant first: In-Reply-To, then References from the newest), ignoring any id whose MAC
/// does not verify.
pub fn thread_token(in_reply_to: &[String], references: &[String], key: &[u8]) -> Option<ConversationId> {
    referenced_ids(in_reply_to, references).iter().find_map(|id| verify_token(id, key))
}

/// Every referenced Message-ID, most relevant first and without duplicates, so ingest can
/// also match ids it stored (a provider's own Message-ID for a message it relayed).
pub fn referenced_ids(in_reply_to: &[String], references: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in in_reply_to.iter().chain(references.iter().rev()) {
        let id = id.trim().trim_start_matches('<').trim_end_matches('>');
        if !id.is_empty() && !out.iter().any(|o| o == id) {
            out.push(id.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`parley-fuzz`): a NUL in the From address became a customer
    /// address history cannot store; one in the Message-ID, a dedupe key it cannot store.
    #[test]
    fn control_characters_never_reach_the_sender_or_the_key() {
        let mail = |from: &str, id: &str| format!("From: {from}\r\nMessage-ID: <{id}>\r\n\r\nhi\r\n").into_bytes();
        let ok = parse_email(&mail("oleg@example.ru", "m-1@example.ru"), 1 << 20, 0).unwrap();
        assert_eq!(ok.message.provider_message_id, "m-1@example.ru");
        assert!(parse_email(&mail("ole\0g@example.ru", "m-1@example.ru"), 1 << 20, 0).is_err());
        let hashed = parse_email(&mail("oleg@example.ru", "m-\x011@example.ru"), 1 << 20, 0).unwrap();
        assert_eq!(hashed.message_id, None);
        assert!(hashed.message.provider_message_id.starts_with("sha256:"));
    }

    /// Found by fuzzing: mail-parser 0.11's quoted-printable decoder subtracts past zero on
    /// a part that is only a soft line break before its boundary, a panic wherever overflow
    /// checks are on (debug and test builds; the root Cargo.toml turns them off for
    /// mail-parser, as release builds have them, where the subtraction wraps harmlessly).
    #[test]
    fn a_part_of_only_a_soft_line_break_is_read() {
        let mail = "From: oleg@example.ru\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
                    Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=\r\n\
                    --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nДа\r\n--b--\r\n";
        let parsed = parse_email(mail.as_bytes(), 1 << 20, 0).unwrap();
        assert!(parsed.message.text.contains("Да"), "{:?}", parsed.message.text);
    }
}
