//! Messages in either direction, with their text rules and delivery states.

use crate::{Channel, ConversationId, CustomerId, MessageId, OperatorId, Timestamp};

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
