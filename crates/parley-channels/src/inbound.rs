//! The normalised shape every provider's inbound events are turned into.

use parley_domain::Channel;
use parley_domain::message::{DeliveryState, Quoted};

use crate::ChannelError;

/// One event parsed out of a provider payload. A payload may batch several (WhatsApp), so
/// parsers return `Vec<Inbound>`.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A customer wrote (or edited, or reacted).
    Message(InboundMessage),
    /// The provider reports how far a message Parley sent got.
    Receipt(DeliveryReceipt),
    /// A customer subscribed to or unsubscribed from the account (Viber).
    Subscription { subscribed: bool, identity: Identity },
    /// A well-formed event Parley does not handle; the webhook still answers 200 so the
    /// provider does not retry it.
    Ignored { reason: String },
}

/// Who is on the other side, as the channel names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub channel: Channel,
    /// Telegram user id, WhatsApp `wa_id`, Viber user id, E.164 phone number, email address.
    pub external_id: String,
    pub display_name: Option<String>,
    /// The language the client reports (Telegram `language_code`, Viber `language`).
    pub language: Option<String>,
}

/// A customer message, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    pub channel: Channel,
    /// The dedupe key: stable across provider retries of the same event, unique per channel
    /// account. Telegram ids are only unique per chat, so they are namespaced as
    /// `{chat_id}:{message_id}` (and `…:edit:{edit_date}` for edits).
    pub provider_message_id: String,
    /// For an edit: the dedupe key of the message edited.
    pub edit_of: Option<String>,
    /// Our account the message was sent to: WhatsApp `phone_number_id`, Twilio `To`, the
    /// email recipient. `None` when the payload does not say (Telegram, Viber: the webhook
    /// route names the bot).
    pub account: Option<String>,
    /// The provider's account above `account`: WhatsApp business account id, Twilio
    /// `AccountSid`.
    pub provider_account: Option<String>,
    pub sender: Identity,
    /// Where a reply goes: the Telegram chat id, otherwise the sender's external id.
    pub reply_address: String,
    /// The text; a media caption counts as text. May be empty (a bare photo).
    pub text: String,
    pub attachments: Vec<MediaRef>,
    pub quoted: Option<Quoted>,
    pub location: Option<Location>,
    pub reaction: Option<Reaction>,
    /// The id or payload of a button or list item the customer chose (WhatsApp).
    pub reply_payload: Option<String>,
    /// When the provider says the message was sent, Unix milliseconds.
    pub sent_at: i64,
}

/// What kind of media an attachment is: the domain's kinds.
pub use parley_domain::AttachmentKind as MediaKind;

/// An attachment, by the provider's reference: the bytes are fetched later by the ingest
/// service (Telegram `getFile`, WhatsApp media endpoint, a URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub kind: MediaKind,
    /// Telegram `file_id`, WhatsApp media id, Viber media URL, Twilio `MediaUrlN`, or for
    /// email `part:{index}` into the parsed email's attachments.
    pub provider_ref: String,
    pub mime: Option<String>,
    pub file_name: Option<String>,
    pub size: Option<u64>,
}

/// A shared location.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    pub name: Option<String>,
    pub address: Option<String>,
}

/// A reaction to an earlier message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The provider id of the message reacted to.
    pub message_id: String,
    /// `None` when the customer removed their reaction.
    pub emoji: Option<String>,
}

/// A provider's error attached to a failed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    pub code: String,
    pub description: Option<String>,
}

/// A delivery report for a message Parley sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReceipt {
    pub channel: Channel,
    /// The id the provider gave the message when it accepted it.
    pub provider_message_id: String,
    pub state: DeliveryState,
    pub error: Option<ProviderError>,
    /// The recipient, when the provider says (WhatsApp `recipient_id`, Twilio `To`).
    pub recipient: Option<String>,
    /// When the state was reached, Unix milliseconds.
    pub at: i64,
}

/// Checks an id a parser hands on (a dedupe key, a sender, a receipt's message): not empty
/// and without control characters. Everything downstream keys on these: an empty sender
/// would make one customer of every such message, an empty dedupe key one message, and
/// PostgreSQL cannot store a NUL.
pub(crate) fn check_id(what: &str, id: &str) -> Result<(), ChannelError> {
    if id.is_empty() || id.chars().any(char::is_control) {
        return Err(ChannelError::Malformed(format!("{what} is empty or holds control characters")));
    }
    Ok(())
}

impl InboundMessage {
    /// A message with only the required fields set; parsers fill in the rest. Refused when
    /// its dedupe key or its sender fails [`check_id`].
    pub(crate) fn new(
        channel: Channel,
        provider_message_id: String,
        sender: Identity,
        sent_at: i64,
    ) -> Result<Self, ChannelError> {
        check_id(&format!("{} message id", channel.as_str()), &provider_message_id)?;
        check_id(&format!("{} sender id", channel.as_str()), &sender.external_id)?;
        let reply_address = sender.external_id.clone();
        Ok(InboundMessage {
            channel,
            provider_message_id,
            edit_of: None,
            account: None,
            provider_account: None,
            sender,
            reply_address,
            text: String::new(),
            attachments: Vec::new(),
            quoted: None,
            location: None,
            reaction: None,
            reply_payload: None,
            sent_at,
        })
    }
}
