//! Messages in either direction, with their text rules and delivery states.

use crate::{AttachmentId, Channel, ConversationId, CustomerId, MessageId, OperatorId, Timestamp};

/// The longest message text accepted from any side, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Customer,
    Operator,
    Bot,
    System,
}

impl Sender {
    pub const fn as_str(self) -> &'static str {
        match self {
            Sender::Customer => "customer",
            Sender::Operator => "operator",
            Sender::Bot => "bot",
            Sender::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Sender> {
        [Sender::Customer, Sender::Operator, Sender::Bot, Sender::System].into_iter().find(|v| v.as_str() == s)
    }
}

/// How far a message got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeliveryState {
    Accepted,
    Sent,
    Delivered,
    Read,
    Failed,
}

impl DeliveryState {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Accepted => "accepted",
            DeliveryState::Sent => "sent",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Read => "read",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Accepted,
            DeliveryState::Sent,
            DeliveryState::Delivered,
            DeliveryState::Read,
            DeliveryState::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// Why a text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidText {
    #[error("text is empty")]
    Empty,
    #[error("text has {0} characters, more than the {MAX_TEXT_CHARS} allowed")]
    TooLong(usize),
    #[error("text contains a NUL character")]
    Nul,
}

/// Checks a message text: not blank, at most [`MAX_TEXT_CHARS`], no NUL (which PostgreSQL
/// text cannot store).
pub fn check_text(text: &str) -> Result<(), InvalidText> {
    if text.trim().is_empty() {
        return Err(InvalidText::Empty);
    }
    let n = text.chars().count();
    if n > MAX_TEXT_CHARS {
        return Err(InvalidText::TooLong(n));
    }
    if text.contains('\0') {
        return Err(InvalidText::Nul);
    }
    Ok(())
}

/// The message an earlier one answers, carried to the operator as context.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Quoted {
    pub message_id: Option<MessageId>,
    pub channel_message_id: String,
    pub text: String,
}

/// The most files one message carries (WhatsApp and Telegram send one per message, an
/// MMS up to ten, an email what its sender attached).
pub const MAX_ATTACHMENTS: usize = 20;
/// The longest attachment file name kept, in characters.
pub const MAX_FILE_NAME_CHARS: usize = 255;
/// The longest MIME type kept, in bytes (RFC 6838 allows 127 + '/' + 127).
pub const MAX_MIME_BYTES: usize = 255;

/// What an attachment is, as the channel tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachmentKind {
    Image,
    Document,
    Audio,
    Video,
    Voice,
    Sticker,
}

impl AttachmentKind {
    pub const ALL: [AttachmentKind; 6] = [
        AttachmentKind::Image,
        AttachmentKind::Document,
        AttachmentKind::Audio,
        AttachmentKind::Video,
        AttachmentKind::Voice,
        AttachmentKind::Sticker,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AttachmentKind::Image => "image",
            AttachmentKind::Document => "document",
            AttachmentKind::Audio => "audio",
            AttachmentKind::Video => "video",
            AttachmentKind::Voice => "voice",
            AttachmentKind::Sticker => "sticker",
        }
    }

    pub fn parse(s: &str) -> Option<AttachmentKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind a MIME type suggests, for channels that only give the MIME type (MMS, email).
    pub fn from_mime(mime: &str) -> AttachmentKind {
        let top = mime.split('/').next().unwrap_or_default().trim().to_ascii_lowercase();
        match top.as_str() {
            "image" => AttachmentKind::Image,
            "audio" => AttachmentKind::Audio,
            "video" => AttachmentKind::Video,
            _ => AttachmentKind::Document,
        }
    }
}

/// A file sent with a message: what the channel said of it. The bytes are kept in the media
/// store under the tenant and the attachment's id, and served to the tenant's operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub id: AttachmentId,
    pub kind: AttachmentKind,
    /// As the channel declared it; empty when it did not.
    pub mime: String,
    /// Empty when the channel gave none.
    pub file_name: String,
    /// As declared by the channel; 0 when unknown.
    pub size: u64,
}

/// Why an attachment's description is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAttachment {
    #[error("file name has {0} characters, more than the {MAX_FILE_NAME_CHARS} allowed")]
    FileNameTooLong(usize),
    #[error("file name contains control characters")]
    FileNameControl,
    #[error("MIME type {0:?} is not type/subtype of at most {MAX_MIME_BYTES} bytes")]
    Mime(String),
}

/// Parses the `attachment_ids` of a message: at most `max`, each an attachment id, none
/// twice. The error names the field.
pub fn parse_attachment_ids(ids: &[String], max: usize) -> Result<Vec<crate::AttachmentId>, String> {
    if ids.len() > max {
        return Err(format!("attachment_ids: at most {max} files a message"));
    }
    let mut out = Vec::with_capacity(ids.len());
    for (i, raw) in ids.iter().enumerate() {
        let id = crate::AttachmentId::parse(raw).map_err(|e| format!("attachment_ids[{i}]: {e}"))?;
        if out.contains(&id) {
            return Err(format!("attachment_ids[{i}]: named twice"));
        }
        out.push(id);
    }
    Ok(out)
}

/// Checks what an attachment says of itself: a file name of printable characters, a MIME
/// type that is `type/subtype` in visible ASCII (parameters allowed), or empty ones.
pub fn check_attachment(a: &Attachment) -> Result<(), InvalidAttachment> {
    let n = a.file_name.chars().count();
    if n > MAX_FILE_NAME_CHARS {
        return Err(InvalidAttachment::FileNameTooLong(n));
    }
    if a.file_name.chars().any(char::is_control) {
        return Err(InvalidAttachment::FileNameControl);
    }
    let mime_ok = a.mime.is_empty()
        || (a.mime.len() <= MAX_MIME_BYTES
            && a.mime.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            && a.mime.split(';').next().is_some_and(|t| {
                let mut parts = t.trim().splitn(2, '/');
                matches!((parts.next(), parts.next()), (Some(a), Some(b)) if !a.is_empty() && !b.is_empty())
            }));
    if !mime_ok {
        return Err(InvalidAttachment::Mime(a.mime.chars().take(80).collect()));
    }
    Ok(())
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub conversation: ConversationId,
    pub customer: CustomerId,
    pub channel: Channel,
    pub sender: Sender,
    pub operator: Option<OperatorId>,
    pub text: String,
    pub quoted: Option<Quoted>,
    pub delivery: DeliveryState,
    pub created: Timestamp,
    /// The provider's id or the caller's idempotency key (an email's Message-ID).
    pub channel_message_id: String,
    /// Email only: the subject line; empty elsewhere.
    pub subject: String,
    /// Files sent with it, in the order the channel gave them.
    pub attachments: Vec<Attachment>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_ids_are_parsed_bounded_and_named_once() {
        let a = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".to_owned();
        let b = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c".to_owned();
        assert_eq!(parse_attachment_ids(&[a.clone(), b.clone()], 2).map(|v| v.len()), Ok(2));
        assert_eq!(
            parse_attachment_ids(&[a.clone(), b.clone()], 1),
            Err("attachment_ids: at most 1 files a message".into())
        );
        assert_eq!(parse_attachment_ids(&[a.clone(), a.clone()], 5), Err("attachment_ids[1]: named twice".into()));
        let bad = parse_attachment_ids(&[a, "x".into()], 5).unwrap_err();
        assert!(bad.starts_with("attachment_ids[1]: "), "{bad}");
    }

    #[test]
    fn names_round_trip() {
        for s in [Sender::Customer, Sender::Operator, Sender::Bot, Sender::System] {
            assert_eq!(Sender::parse(s.as_str()), Some(s));
        }
        for d in [
            DeliveryState::Accepted,
            DeliveryState::Sent,
            DeliveryState::Delivered,
            DeliveryState::Read,
            DeliveryState::Failed,
        ] {
            assert_eq!(DeliveryState::parse(d.as_str()), Some(d));
        }
        assert_eq!(Sender::parse("robot"), None);
    }

    #[test]
    fn text_rules() {
        assert_eq!(check_text(""), Err(InvalidText::Empty));
        assert_eq!(check_text(" \n\t"), Err(InvalidText::Empty));
        assert_eq!(check_text("a\0b"), Err(InvalidText::Nul));
        assert!(check_text(&"я".repeat(MAX_TEXT_CHARS)).is_ok());
        assert_eq!(check_text(&"я".repeat(MAX_TEXT_CHARS + 1)), Err(InvalidText::TooLong(MAX_TEXT_CHARS + 1)));
    }

    #[test]
    fn attachment_descriptions_are_checked() {
        let message = MessageId::derive(&crate::TenantId::parse("acme").unwrap(), "api", "k");
        let ok = Attachment {
            id: AttachmentId::derive(message, 0),
            kind: AttachmentKind::Document,
            mime: "application/pdf".into(),
            file_name: "счёт №5.pdf".into(),
            size: 1024,
        };
        assert_eq!(check_attachment(&ok), Ok(()));
        assert_eq!(
            check_attachment(&Attachment { mime: String::new(), file_name: String::new(), ..ok.clone() }),
            Ok(())
        );
        let text = Attachment { mime: "text/plain; charset=utf-8".into(), ..ok.clone() };
        assert_eq!(check_attachment(&text), Ok(()));
        let long = Attachment { file_name: "a".repeat(MAX_FILE_NAME_CHARS + 1), ..ok.clone() };
        assert_eq!(check_attachment(&long), Err(InvalidAttachment::FileNameTooLong(MAX_FILE_NAME_CHARS + 1)));
        let control = Attachment { file_name: "a\nb.pdf".into(), ..ok.clone() };
        assert_eq!(check_attachment(&control), Err(InvalidAttachment::FileNameControl));
        for bad in ["pdf", "/pdf", "image/", "image/jp\u{e9}g", "image/png\r\nX-Evil: 1"] {
            let a = Attachment { mime: bad.into(), ..ok.clone() };
            assert!(matches!(check_attachment(&a), Err(InvalidAttachment::Mime(_))), "{bad}");
        }
        // Positions and messages give distinct ids; the same ones the same id.
        assert_ne!(AttachmentId::derive(message, 0), AttachmentId::derive(message, 1));
        assert_eq!(AttachmentId::derive(message, 1), AttachmentId::derive(message, 1));
        for k in AttachmentKind::ALL {
            assert_eq!(AttachmentKind::parse(k.as_str()), Some(k));
        }
    }
}
