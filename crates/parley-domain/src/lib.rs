//! Parley's pure core: the vocabulary every service shares and the conversation state
//! machine.
//!
//! Layout:
//! - [`ids`]: tenant, operator, queue, skill and channel-config slugs; conversation,
//!   message, customer and event UUIDs (parsed, or derived from names; never random).
//! - [`channel`]: the text channels.
//! - [`time`]: [`Timestamp`], a value handed in as `now`.
//! - [`operator`]: roles, operator status, skills, operators and queues as configured.
//! - [`routing`]: selection, expansion, business hours, weights, tenant routing settings.
//! - [`message`]: messages, their text rules and delivery states.
//! - [`conversation`]: the state machine `apply(command, now) -> next + effects`.
//!
//! *Architecture invariant*: nothing here performs IO, reads a clock or draws a random
//! number; no type of prost, tonic, async-nats, redis or tokio-postgres appears here.

pub mod channel;
pub mod conversation;
pub mod ids;
pub mod message;
pub mod operator;
pub mod routing;
pub mod time;

pub use channel::{Channel, UnknownChannel};
pub use conversation::{Conversation, CustomerRef, Status};
pub use ids::{
    AttachmentId, ChannelConfigId, ConversationId, CustomerId, EventId, InvalidId, MessageId, OperatorId, QueueId,
    SkillId, TeamId, TenantId,
};
pub use message::{
    Attachment, AttachmentKind, DeliveryState, InvalidAttachment, InvalidText, MAX_ATTACHMENTS, MAX_TEXT_CHARS,
    Message, Quoted, Sender, check_attachment, check_text, parse_attachment_ids,
};
pub use operator::{InvalidConfig, Operator, OperatorStatus, Queue, Role, SkillLevel, check_display_name};
pub use time::Timestamp;
