//! Conversions between prost types and domain types, in one place. Decoding checks every
//! field the domain type constrains and says which field is wrong.

use std::time::Duration;

use parley_domain::conversation::{CustomerRef, Preference, PreferenceReason, Status};
use parley_domain::routing::{BusinessHours, ExpansionStep, Requirements, RoutingSettings, Selection, Window};
use parley_domain::{
    Attachment, AttachmentId, AttachmentKind, Channel, ChannelConfigId, Conversation, ConversationId, CustomerId,
    DeliveryState, Message, MessageId, Operator, OperatorId, OperatorStatus, Queue, QueueId, Quoted, Role, Sender,
    SkillId, SkillLevel, TeamId, TenantId, Timestamp,
};

use crate::{events, v1};

/// A field that does not decode into its domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct ConvertError {
    pub field: String,
    pub why: String,
}

impl ConvertError {
    pub fn new(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self { field: field.into(), why: why.into() }
    }
}

type Result<T> = std::result::Result<T, ConvertError>;

/// Wraps an id parse error with the field it came from.
fn field<T, E: std::fmt::Display>(name: &str, r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| ConvertError::new(name, e.to_string()))
}

pub fn tenant_id(name: &str, value: &str) -> Result<TenantId> {
    field(name, TenantId::parse(value))
}
pub fn operator_id(name: &str, value: &str) -> Result<OperatorId> {
    field(name, OperatorId::parse(value))
}
pub fn queue_id(name: &str, value: &str) -> Result<QueueId> {
    field(name, QueueId::parse(value))
}
pub fn skill_id(name: &str, value: &str) -> Result<SkillId> {
    field(name, SkillId::parse(value))
}
pub fn channel_config_id(name: &str, value: &str) -> Result<ChannelConfigId> {
    field(name, ChannelConfigId::parse(value))
}
pub fn conversation_id(name: &str, value: &str) -> Result<ConversationId> {
    field(name, ConversationId::parse(value))
}
pub fn message_id(name: &str, value: &str) -> Result<MessageId> {
    field(name, MessageId::parse(value))
}
pub fn customer_id(name: &str, value: &str) -> Result<CustomerId> {
    field(name, CustomerId::parse(value))
}

// ---- time -------------------------------------------------------------------------------

pub fn timestamp(t: Timestamp) -> crate::wkt::Timestamp {
    let (seconds, nanos) = t.to_seconds_nanos();
    crate::wkt::Timestamp { seconds, nanos }
}

pub fn opt_timestamp(t: Option<Timestamp>) -> Option<crate::wkt::Timestamp> {
    t.map(timestamp)
}

pub fn from_timestamp(t: Option<&crate::wkt::Timestamp>) -> Timestamp {
    t.map_or(Timestamp::default(), |t| Timestamp::from_seconds_nanos(t.seconds, t.nanos))
}

pub fn duration(d: Duration) -> crate::wkt::Duration {
    crate::wkt::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn from_duration(name: &str, d: Option<&crate::wkt::Duration>) -> Result<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(ConvertError::new(name, "must not be negative")),
        Some(d) if d.seconds == 0 && d.nanos == 0 => Ok(None),
        Some(d) => Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32))),
    }
}

// ---- enums ------------------------------------------------------------------------------

pub fn channel(c: Channel) -> v1::Channel {
    match c {
        Channel::Api => v1::Channel::Api,
        Channel::WebChat => v1::Channel::Webchat,
        Channel::Email => v1::Channel::Email,
        Channel::Sms => v1::Channel::Sms,
        Channel::Telegram => v1::Channel::Telegram,
        Channel::WhatsApp => v1::Channel::Whatsapp,
        Channel::Viber => v1::Channel::Viber,
    }
}

pub fn from_channel(name: &str, value: i32) -> Result<Channel> {
    match v1::Channel::try_from(value) {
        Ok(v1::Channel::Api) => Ok(Channel::Api),
        Ok(v1::Channel::Webchat) => Ok(Channel::WebChat),
        Ok(v1::Channel::Email) => Ok(Channel::Email),
        Ok(v1::Channel::Sms) => Ok(Channel::Sms),
        Ok(v1::Channel::Telegram) => Ok(Channel::Telegram),
        Ok(v1::Channel::Whatsapp) => Ok(Channel::WhatsApp),
        Ok(v1::Channel::Viber) => Ok(Channel::Viber),
        Ok(v1::Channel::Unspecified) => Err(ConvertError::new(name, "channel must be specified")),
        Err(_) => Err(ConvertError::new(name, format!("unknown channel {value}"))),
    }
}

pub fn role(r: Role) -> v1::Role {
    match r {
        Role::Operator => v1::Role::Operator,
        Role::Supervisor => v1::Role::Supervisor,
        Role::Admin => v1::Role::Admin,
        Role::Integrator => v1::Role::Integrator,
        Role::Platform => v1::Role::Platform,
    }
}

pub fn from_role(name: &str, value: i32) -> Result<Role> {
    match v1::Role::try_from(value) {
        Ok(v1::Role::Operator) => Ok(Role::Operator),
        Ok(v1::Role::Supervisor) => Ok(Role::Supervisor),
        Ok(v1::Role::Admin) => Ok(Role::Admin),
        Ok(v1::Role::Integrator) => Ok(Role::Integrator),
        Ok(v1::Role::Platform) => Ok(Role::Platform),
        Ok(v1::Role::Unspecified) => Err(ConvertError::new(name, "role must be specified")),
        Err(_) => Err(ConvertError::new(name, format!("unknown role {value}"))),
    }
}

pub fn operator_status(s: OperatorStatus) -> v1::OperatorStatus {
    match s {
        OperatorStatus::Online => v1::OperatorStatus::Online,
        OperatorStatus::Away => v1::OperatorStatus::Away,
        OperatorStatus::Offline => v1::OperatorStatus::Offline,
        OperatorStatus::Draining => v1::OperatorStatus::Draining,
    }
}

pub fn from_operator_status(name: &str, value: i32) -> Result<OperatorStatus> {
    match v1::OperatorStatus::try_from(value) {
        Ok(v1::OperatorStatus::Online) => Ok(OperatorStatus::Online),
        Ok(v1::OperatorStatus::Away) => Ok(OperatorStatus::Away),
        Ok(v1::OperatorStatus::Offline) => Ok(OperatorStatus::Offline),
        Ok(v1::OperatorStatus::Draining) => Ok(OperatorStatus::Draining),
        Ok(v1::OperatorStatus::Unspecified) => Err(ConvertError::new(name, "status must be specified")),
        Err(_) => Err(ConvertError::new(name, format!("unknown status {value}"))),
    }
}

pub fn delivery_state(s: DeliveryState) -> v1::DeliveryState {
    match s {
        DeliveryState::Accepted => v1::DeliveryState::Accepted,
        DeliveryState::Sent => v1::DeliveryState::Sent,
        DeliveryState::Delivered => v1::DeliveryState::Delivered,
        DeliveryState::Read => v1::DeliveryState::Read,
        DeliveryState::Failed => v1::DeliveryState::Failed,
    }
}

pub fn from_delivery_state(value: i32) -> DeliveryState {
    match v1::DeliveryState::try_from(value) {
        Ok(v1::DeliveryState::Sent) => DeliveryState::Sent,
        Ok(v1::DeliveryState::Delivered) => DeliveryState::Delivered,
        Ok(v1::DeliveryState::Read) => DeliveryState::Read,
        Ok(v1::DeliveryState::Failed) => DeliveryState::Failed,
        _ => DeliveryState::Accepted,
    }
}

pub fn sender(s: Sender) -> v1::SenderKind {
    match s {
        Sender::Customer => v1::SenderKind::Customer,
        Sender::Operator => v1::SenderKind::Operator,
        Sender::Bot => v1::SenderKind::Bot,
        Sender::System => v1::SenderKind::System,
    }
}

pub fn from_sender(name: &str, value: i32) -> Result<Sender> {
    match v1::SenderKind::try_from(value) {
        Ok(v1::SenderKind::Customer) => Ok(Sender::Customer),
        Ok(v1::SenderKind::Operator) => Ok(Sender::Operator),
        Ok(v1::SenderKind::Bot) => Ok(Sender::Bot),
        Ok(v1::SenderKind::System) => Ok(Sender::System),
        _ => Err(ConvertError::new(name, format!("unknown sender kind {value}"))),
    }
}

pub fn conversation_status(s: &Status) -> v1::ConversationStatus {
    match s {
        Status::Queued => v1::ConversationStatus::Queued,
        Status::Offered { .. } => v1::ConversationStatus::Offered,
        Status::Assigned { .. } => v1::ConversationStatus::Assigned,
        Status::Closed => v1::ConversationStatus::Closed,
    }
}

// ---- messages ---------------------------------------------------------------------------

pub fn quoted(q: &Quoted) -> v1::QuotedMessage {
    v1::QuotedMessage {
        message_id: q.message_id.map(|m| m.to_string()).unwrap_or_default(),
        channel_message_id: q.channel_message_id.clone(),
        text: q.text.clone(),
    }
}

/// Decodes a quoted message; `None` when absent or empty.
pub fn from_quoted(q: Option<&v1::QuotedMessage>) -> Result<Option<Quoted>> {
    let Some(q) = q else { return Ok(None) };
    if q.message_id.is_empty() && q.channel_message_id.is_empty() && q.text.is_empty() {
        return Ok(None);
    }
    let message_id = if q.message_id.is_empty() { None } else { Some(message_id("quoted.message_id", &q.message_id)?) };
    if q.text.chars().count() > parley_domain::MAX_TEXT_CHARS {
        return Err(ConvertError::new("quoted.text", "is longer than 4096 characters"));
    }
    if q.channel_message_id.len() > 256 {
        return Err(ConvertError::new("quoted.channel_message_id", "is longer than 256 bytes"));
    }
    Ok(Some(Quoted { message_id, channel_message_id: q.channel_message_id.clone(), text: q.text.clone() }))
}

pub fn attachment_kind(k: AttachmentKind) -> v1::AttachmentKind {
    match k {
        AttachmentKind::Image => v1::AttachmentKind::Image,
        AttachmentKind::Document => v1::AttachmentKind::Document,
        AttachmentKind::Audio => v1::AttachmentKind::Audio,
        AttachmentKind::Video => v1::AttachmentKind::Video,
        AttachmentKind::Voice => v1::AttachmentKind::Voice,
        AttachmentKind::Sticker => v1::AttachmentKind::Sticker,
    }
}

pub fn from_attachment_kind(name: &str, value: i32) -> Result<AttachmentKind> {
    match v1::AttachmentKind::try_from(value) {
        Ok(v1::AttachmentKind::Image) => Ok(AttachmentKind::Image),
        Ok(v1::AttachmentKind::Document) => Ok(AttachmentKind::Document),
        Ok(v1::AttachmentKind::Audio) => Ok(AttachmentKind::Audio),
        Ok(v1::AttachmentKind::Video) => Ok(AttachmentKind::Video),
        Ok(v1::AttachmentKind::Voice) => Ok(AttachmentKind::Voice),
        Ok(v1::AttachmentKind::Sticker) => Ok(AttachmentKind::Sticker),
        Ok(v1::AttachmentKind::Unspecified) => Err(ConvertError::new(name, "kind must be specified")),
        Err(_) => Err(ConvertError::new(name, format!("unknown attachment kind {value}"))),
    }
}

pub fn attachment(a: &Attachment) -> v1::Attachment {
    v1::Attachment {
        id: a.id.to_string(),
        kind: attachment_kind(a.kind) as i32,
        mime_type: a.mime.clone(),
        file_name: a.file_name.clone(),
        size_bytes: a.size,
    }
}

/// Decodes a message's attachments: at most [`parley_domain::MAX_ATTACHMENTS`], each
/// checked by [`parley_domain::check_attachment`].
pub fn from_attachments(name: &str, list: &[v1::Attachment]) -> Result<Vec<Attachment>> {
    if list.len() > parley_domain::MAX_ATTACHMENTS {
        return Err(ConvertError::new(
            name,
            format!("has {} attachments, more than the {} allowed", list.len(), parley_domain::MAX_ATTACHMENTS),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let at = format!("{name}[{i}]");
            let decoded = Attachment {
                id: field(&format!("{at}.id"), AttachmentId::parse(&a.id))?,
                kind: from_attachment_kind(&format!("{at}.kind"), a.kind)?,
                mime: a.mime_type.clone(),
                file_name: a.file_name.clone(),
                size: a.size_bytes,
            };
            parley_domain::check_attachment(&decoded).map_err(|e| ConvertError::new(at, e.to_string()))?;
            Ok(decoded)
        })
        .collect()
}

pub fn message(m: &Message) -> v1::Message {
    v1::Message {
        id: m.id.to_string(),
        conversation_id: m.conversation.to_string(),
        customer_id: m.customer.to_string(),
        channel: channel(m.channel) as i32,
        sender_kind: sender(m.sender) as i32,
        operator_id: m.operator.as_ref().map(|o| o.to_string()).unwrap_or_default(),
        text: m.text.clone(),
        quoted: m.quoted.as_ref().map(quoted),
        delivery_state: delivery_state(m.delivery) as i32,
        create_time: Some(timestamp(m.created)),
        channel_message_id: m.channel_message_id.clone(),
        subject: m.subject.clone(),
        attachments: m.attachments.iter().map(attachment).collect(),
        // Only a reply being sent carries one.
        template: None,
    }
}

/// The longest subject kept, in characters (RFC 5322 lines stop at 998 bytes).
pub const MAX_SUBJECT_CHARS: usize = 998;

/// A subject as kept: at most [`MAX_SUBJECT_CHARS`], on one line.
pub fn subject(name: &str, s: &str) -> Result<String> {
    if s.chars().count() > MAX_SUBJECT_CHARS || s.contains(['\r', '\n', '\0']) {
        return Err(ConvertError::new(name, "must be one line of at most 998 characters"));
    }
    Ok(s.to_owned())
}

pub fn from_message(m: &v1::Message) -> Result<Message> {
    Ok(Message {
        id: message_id("message.id", &m.id)?,
        conversation: conversation_id("message.conversation_id", &m.conversation_id)?,
        customer: customer_id("message.customer_id", &m.customer_id)?,
        channel: from_channel("message.channel", m.channel)?,
        sender: from_sender("message.sender_kind", m.sender_kind)?,
        operator: if m.operator_id.is_empty() {
            None
        } else {
            Some(operator_id("message.operator_id", &m.operator_id)?)
        },
        text: m.text.clone(),
        quoted: from_quoted(m.quoted.as_ref())?,
        delivery: from_delivery_state(m.delivery_state),
        created: from_timestamp(m.create_time.as_ref()),
        channel_message_id: m.channel_message_id.clone(),
        subject: subject("message.subject", &m.subject)?,
        attachments: from_attachments("message.attachments", &m.attachments)?,
    })
}

// ---- conversations ----------------------------------------------------------------------

/// The public summary of a conversation.
pub fn conversation(c: &Conversation) -> v1::Conversation {
    v1::Conversation {
        id: c.id.to_string(),
        customer_id: c.customer.id.to_string(),
        channel: channel(c.channel) as i32,
        status: conversation_status(&c.status) as i32,
        queue_id: c.queue.to_string(),
        operator_id: c.status.holder().map(|o| o.to_string()).unwrap_or_default(),
        create_time: Some(timestamp(c.created)),
        update_time: Some(timestamp(c.updated)),
        close_time: opt_timestamp(c.closed_at),
        priority: c.priority,
    }
}

/// The durable form of a conversation's routing state.
pub fn conversation_state(c: &Conversation) -> events::ConversationState {
    let (operator_id, offer_expire_time) = match &c.status {
        Status::Offered { operator, expires } => (operator.to_string(), Some(timestamp(*expires))),
        Status::Assigned { operator } => (operator.to_string(), None),
        Status::Queued | Status::Closed => (String::new(), None),
    };
    events::ConversationState {
        id: c.id.to_string(),
        tenant_id: c.tenant.to_string(),
        customer_id: c.customer.id.to_string(),
        customer_address: c.customer.address.clone(),
        customer_display_name: c.customer.display_name.clone(),
        customer_verified_phone: c.customer.verified_phone.clone(),
        channel: channel(c.channel) as i32,
        channel_config_id: c.channel_config.to_string(),
        queue_id: c.queue.to_string(),
        status: conversation_status(&c.status) as i32,
        operator_id,
        priority: c.priority,
        create_time: Some(timestamp(c.created)),
        update_time: Some(timestamp(c.updated)),
        wait_start_time: Some(timestamp(c.wait_start)),
        offer_expire_time,
        declined_by: c.declined_by.iter().map(|o| o.to_string()).collect(),
        recent_message_ids: c.recent_message_ids.iter().flat_map(|m| m.as_uuid().into_bytes()).collect(),
        message_count: c.message_count,
        transfer_note: c.transfer_note.clone(),
        close_time: opt_timestamp(c.closed_at),
        recent_messages: c.recent_messages.iter().map(message).collect(),
        required_skills: c.requirements.skills.iter().map(skill_level).collect(),
        language: c.requirements.language.clone().unwrap_or_default(),
        replace_queue_requirements: c.replace_queue_requirements,
        preferred_operator_id: c.preference.as_ref().map(|p| p.operator.to_string()).unwrap_or_default(),
        preferred_until: c.preference.as_ref().map(|p| timestamp(p.until)),
        preference_reason: c.preference.as_ref().map(|p| p.reason.as_str().to_owned()).unwrap_or_default(),
        queue_enter_time: Some(timestamp(c.queue_enter)),
        last_sender: sender(c.last_sender) as i32,
        last_activity_time: Some(timestamp(c.last_activity)),
        last_customer_message_time: opt_timestamp(c.last_customer_message),
    }
}

pub fn from_conversation_state(s: &events::ConversationState) -> Result<Conversation> {
    let status = match v1::ConversationStatus::try_from(s.status) {
        Ok(v1::ConversationStatus::Queued) => Status::Queued,
        Ok(v1::ConversationStatus::Offered) => Status::Offered {
            operator: operator_id("operator_id", &s.operator_id)?,
            expires: from_timestamp(s.offer_expire_time.as_ref()),
        },
        Ok(v1::ConversationStatus::Assigned) => {
            Status::Assigned { operator: operator_id("operator_id", &s.operator_id)? }
        }
        Ok(v1::ConversationStatus::Closed) => Status::Closed,
        _ => return Err(ConvertError::new("status", format!("unknown conversation status {}", s.status))),
    };
    Ok(Conversation {
        id: conversation_id("id", &s.id)?,
        tenant: tenant_id("tenant_id", &s.tenant_id)?,
        customer: CustomerRef {
            id: customer_id("customer_id", &s.customer_id)?,
            address: s.customer_address.clone(),
            display_name: s.customer_display_name.clone(),
            verified_phone: s.customer_verified_phone.clone(),
        },
        channel: from_channel("channel", s.channel)?,
        channel_config: channel_config_id("channel_config_id", &s.channel_config_id)?,
        queue: queue_id("queue_id", &s.queue_id)?,
        status,
        priority: s.priority,
        created: from_timestamp(s.create_time.as_ref()),
        updated: from_timestamp(s.update_time.as_ref()),
        wait_start: from_timestamp(s.wait_start_time.as_ref()),
        declined_by: s.declined_by.iter().map(|o| operator_id("declined_by", o)).collect::<Result<_>>()?,
        recent_message_ids: {
            if !s.recent_message_ids.len().is_multiple_of(16) {
                return Err(ConvertError::new("recent_message_ids", "is not a whole number of 16-byte ids"));
            }
            s.recent_message_ids
                .chunks_exact(16)
                .map(|b| {
                    let mut id = [0u8; 16];
                    id.copy_from_slice(b);
                    MessageId::from_uuid(uuid::Uuid::from_bytes(id))
                })
                .collect()
        },
        recent_messages: s.recent_messages.iter().map(from_message).collect::<Result<_>>()?,
        message_count: s.message_count,
        transfer_note: s.transfer_note.clone(),
        closed_at: s.close_time.as_ref().map(|t| from_timestamp(Some(t))),
        requirements: Requirements {
            skills: s.required_skills.iter().map(|k| from_skill_level("required_skills", k)).collect::<Result<_>>()?,
            language: (!s.language.is_empty()).then(|| s.language.clone()),
        },
        replace_queue_requirements: s.replace_queue_requirements,
        preference: if s.preferred_operator_id.is_empty() {
            None
        } else {
            Some(Preference {
                operator: operator_id("preferred_operator_id", &s.preferred_operator_id)?,
                until: from_timestamp(s.preferred_until.as_ref()),
                reason: PreferenceReason::parse(&s.preference_reason).ok_or_else(|| {
                    ConvertError::new("preference_reason", format!("unknown {:?}", s.preference_reason))
                })?,
            })
        },
        queue_enter: from_timestamp(s.queue_enter_time.as_ref().or(s.wait_start_time.as_ref())),
        last_sender: from_sender("last_sender", s.last_sender).unwrap_or(Sender::Customer),
        last_activity: from_timestamp(s.last_activity_time.as_ref().or(s.update_time.as_ref())),
        last_customer_message: s.last_customer_message_time.as_ref().map(|t| from_timestamp(Some(t))),
    })
}

// ---- configuration ----------------------------------------------------------------------

pub fn skill_level(s: &SkillLevel) -> v1::SkillLevel {
    v1::SkillLevel { skill: s.skill.to_string(), proficiency: u32::from(s.proficiency) }
}

pub fn from_skill_level(name: &str, s: &v1::SkillLevel) -> Result<SkillLevel> {
    let skill = skill_id(&format!("{name}.skill"), &s.skill)?;
    let proficiency = u8::try_from(s.proficiency).unwrap_or(u8::MAX);
    SkillLevel::new(skill, proficiency).map_err(|e| ConvertError::new(name, e.why))
}

/// Decodes an operator of `tenant`; validates it as the admin API promises.
pub fn from_operator(tenant: &TenantId, o: &v1::Operator) -> Result<Operator> {
    let op = Operator {
        tenant: tenant.clone(),
        id: operator_id("operator.id", &o.id)?,
        display_name: o.display_name.clone(),
        skills: o.skills.iter().map(|s| from_skill_level("operator.skills", s)).collect::<Result<_>>()?,
        languages: o.languages.clone(),
        capacity: o
            .capacity
            .iter()
            .map(|c| Ok((from_channel("operator.capacity.channel", c.channel)?, c.max_conversations)))
            .collect::<Result<_>>()?,
        disabled: o.disabled,
        team: if o.team.is_empty() { None } else { Some(field("operator.team", TeamId::parse(&o.team))?) },
    };
    op.validate().map_err(|e| ConvertError::new(format!("operator.{}", e.field), e.why))?;
    Ok(op)
}

pub fn operator(o: &Operator, revision: u64) -> v1::Operator {
    v1::Operator {
        id: o.id.to_string(),
        display_name: o.display_name.clone(),
        skills: o.skills.iter().map(skill_level).collect(),
        languages: o.languages.clone(),
        capacity: o
            .capacity
            .iter()
            .map(|(c, n)| v1::ChannelCapacity { channel: channel(*c) as i32, max_conversations: *n })
            .collect(),
        disabled: o.disabled,
        revision,
        team: o.team.as_ref().map(|t| t.to_string()).unwrap_or_default(),
    }
}

pub fn from_queue(tenant: &TenantId, q: &v1::Queue) -> Result<Queue> {
    let queue = Queue {
        tenant: tenant.clone(),
        id: queue_id("queue.id", &q.id)?,
        display_name: q.display_name.clone(),
        required_skills: q
            .required_skills
            .iter()
            .map(|s| from_skill_level("queue.required_skills", s))
            .collect::<Result<_>>()?,
        language: if q.language.is_empty() { None } else { Some(q.language.clone()) },
        priority: q.priority,
        offer_timeout: from_duration("queue.offer_timeout", q.offer_timeout.as_ref())?,
        selection: match v1::SelectionStrategy::try_from(q.selection) {
            Ok(v1::SelectionStrategy::Unspecified) | Ok(v1::SelectionStrategy::LeastOccupied) => {
                Selection::LeastOccupied
            }
            Ok(v1::SelectionStrategy::LongestIdle) => Selection::LongestIdle,
            Ok(v1::SelectionStrategy::RoundRobin) => Selection::RoundRobin,
            Err(_) => return Err(ConvertError::new("queue.selection", format!("unknown strategy {}", q.selection))),
        },
        aging_delay: from_duration("queue.aging_delay", q.aging_delay.as_ref())?,
        max_wait: from_duration("queue.max_wait", q.max_wait.as_ref())?,
        overflow: optional_queue("queue.overflow_queue_id", &q.overflow_queue_id)?,
        expansion: q
            .expansion
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let name = format!("queue.expansion[{i}]");
                Ok(ExpansionStep {
                    after: from_duration(&format!("{name}.after"), e.after.as_ref())?.unwrap_or_default(),
                    proficiency_drop: u8::try_from(e.proficiency_drop).unwrap_or(u8::MAX),
                    remove_skills: e
                        .remove_skills
                        .iter()
                        .map(|s| skill_id(&format!("{name}.remove_skills"), s))
                        .collect::<Result<_>>()?,
                    drop_language: e.drop_language,
                })
            })
            .collect::<Result<_>>()?,
        business_hours: q.business_hours.as_ref().map(from_business_hours).transpose()?,
        after_hours: optional_queue("queue.after_hours_queue_id", &q.after_hours_queue_id)?,
    };
    queue.validate().map_err(|e| ConvertError::new(format!("queue.{}", e.field), e.why))?;
    Ok(queue)
}

pub fn queue(q: &Queue, revision: u64) -> v1::Queue {
    v1::Queue {
        id: q.id.to_string(),
        display_name: q.display_name.clone(),
        required_skills: q.required_skills.iter().map(skill_level).collect(),
        language: q.language.clone().unwrap_or_default(),
        priority: q.priority,
        offer_timeout: q.offer_timeout.map(duration),
        revision,
        selection: match q.selection {
            Selection::LeastOccupied => v1::SelectionStrategy::LeastOccupied,
            Selection::LongestIdle => v1::SelectionStrategy::LongestIdle,
            Selection::RoundRobin => v1::SelectionStrategy::RoundRobin,
        } as i32,
        aging_delay: q.aging_delay.map(duration),
        max_wait: q.max_wait.map(duration),
        overflow_queue_id: q.overflow.as_ref().map(|q| q.to_string()).unwrap_or_default(),
        expansion: q
            .expansion
            .iter()
            .map(|e| v1::ExpansionStep {
                after: Some(duration(e.after)),
                proficiency_drop: u32::from(e.proficiency_drop),
                remove_skills: e.remove_skills.iter().map(|s| s.to_string()).collect(),
                drop_language: e.drop_language,
            })
            .collect(),
        business_hours: q.business_hours.as_ref().map(|h| v1::BusinessHours {
            time_zone: h.time_zone_name.clone(),
            windows: h
                .windows
                .iter()
                .map(|w| v1::OpeningWindow {
                    day: i32::from(w.day),
                    open: format!("{:02}:{:02}", w.open_minute / 60, w.open_minute % 60),
                    close: format!("{:02}:{:02}", w.close_minute / 60, w.close_minute % 60),
                })
                .collect(),
        }),
        after_hours_queue_id: q.after_hours.as_ref().map(|q| q.to_string()).unwrap_or_default(),
    }
}

fn optional_queue(name: &str, value: &str) -> Result<Option<QueueId>> {
    if value.is_empty() { Ok(None) } else { Ok(Some(queue_id(name, value)?)) }
}

/// Decodes business hours, resolving the IANA time zone with the tz database compiled in.
pub fn from_business_hours(h: &v1::BusinessHours) -> Result<BusinessHours> {
    let time_zone = jiff::tz::TimeZone::get(&h.time_zone).map_err(|_| {
        ConvertError::new("queue.business_hours.time_zone", format!("{:?} is not an IANA time zone", h.time_zone))
    })?;
    let windows = h
        .windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let name = format!("queue.business_hours.windows[{i}]");
            let day = match v1::DayOfWeek::try_from(w.day) {
                Ok(v1::DayOfWeek::Unspecified) | Err(_) => {
                    return Err(ConvertError::new(format!("{name}.day"), "must be a day of the week"));
                }
                Ok(d) => d as u8,
            };
            let time = |f: &str, v: &str| {
                BusinessHours::parse_time(&format!("{name}.{f}"), v).map_err(|e| ConvertError::new(e.field, e.why))
            };
            Ok(Window { day, open_minute: time("open", &w.open)?, close_minute: time("close", &w.close)? })
        })
        .collect::<Result<_>>()?;
    Ok(BusinessHours { time_zone_name: h.time_zone.clone(), time_zone, windows })
}

/// Decodes routing settings (unset fields take their defaults) and validates them.
pub fn from_routing_settings(s: &v1::RoutingSettings) -> Result<RoutingSettings> {
    let d = RoutingSettings::default();
    let weight = |name: &str, w: f64, default: u32| -> Result<u32> {
        if w == 0.0 {
            return Ok(default);
        }
        if !(0.1..=1.0).contains(&w) {
            return Err(ConvertError::new(name, format!("must be 0.1 to 1, got {w}")));
        }
        Ok((w * 1000.0).round() as u32)
    };
    let settings = RoutingSettings {
        known_operator_window: match &s.known_operator_window {
            None => d.known_operator_window,
            Some(w) => from_duration("known_operator_window", Some(w))?,
        },
        known_operator_wait: from_duration("known_operator_wait", s.known_operator_wait.as_ref())?
            .unwrap_or(d.known_operator_wait),
        waiting_weight_milli: weight("waiting_weight", s.waiting_weight, d.waiting_weight_milli)?,
        idle_weight_milli: weight("idle_weight", s.idle_weight, d.idle_weight_milli)?,
        idle_after: from_duration("idle_after", s.idle_after.as_ref())?.unwrap_or(d.idle_after),
        reroute_after: match &s.reroute_after {
            None => d.reroute_after,
            Some(w) => from_duration("reroute_after", Some(w))?,
        },
        fast_track_ttl: from_duration("fast_track_ttl", s.fast_track_ttl.as_ref())?.unwrap_or(d.fast_track_ttl),
        fast_track_max_attempts: if s.fast_track_max_attempts == 0 {
            d.fast_track_max_attempts
        } else {
            s.fast_track_max_attempts
        },
        ramp_up: match &s.ramp_up {
            None => d.ramp_up,
            Some(w) => from_duration("ramp_up", Some(w))?.unwrap_or_default(),
        },
        away_after_missed_offers: s.away_after_missed_offers.map_or(d.away_after_missed_offers, |n| n),
    };
    settings.validate().map_err(|e| ConvertError::new(e.field, e.why))?;
    Ok(settings)
}

pub fn routing_settings(s: &RoutingSettings, revision: u64) -> v1::RoutingSettings {
    v1::RoutingSettings {
        // An explicit zero says "off".
        known_operator_window: Some(duration(s.known_operator_window.unwrap_or_default())),
        known_operator_wait: Some(duration(s.known_operator_wait)),
        waiting_weight: f64::from(s.waiting_weight_milli) / 1000.0,
        idle_weight: f64::from(s.idle_weight_milli) / 1000.0,
        idle_after: Some(duration(s.idle_after)),
        reroute_after: Some(duration(s.reroute_after.unwrap_or_default())),
        fast_track_ttl: Some(duration(s.fast_track_ttl)),
        fast_track_max_attempts: s.fast_track_max_attempts,
        // An explicit zero says "at once".
        ramp_up: Some(duration(s.ramp_up)),
        away_after_missed_offers: Some(s.away_after_missed_offers),
        revision,
    }
}

#[cfg(test)]
mod tests {
    use parley_domain::conversation::{Command, Opening};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn conversation_state_round_trips_through_protobuf() {
        let tenant = TenantId::parse("acme").unwrap();
        let customer = CustomerId::derive(&tenant, Channel::Api, "c-1");
        let conv = ConversationId::from_uuid(Uuid::from_u128(7));
        let first = Message {
            id: MessageId::from_uuid(Uuid::from_u128(9)),
            conversation: conv,
            customer,
            channel: Channel::Api,
            sender: Sender::Customer,
            operator: None,
            text: "Здравствуйте 👋".into(),
            quoted: Some(Quoted {
                message_id: None, channel_message_id: "n-1".into(), text: "Списание 500 ₽".into()
            }),
            delivery: DeliveryState::Accepted,
            created: Timestamp::from_micros(1_700_000_000_123_456),
            channel_message_id: "k-1".into(),
            subject: "Списание".into(),
            attachments: vec![Attachment {
                id: AttachmentId::derive(MessageId::from_uuid(Uuid::from_u128(9)), 0),
                kind: AttachmentKind::Image,
                mime: "image/jpeg".into(),
                file_name: "чек.jpg".into(),
                size: 48_213,
            }],
        };
        let opening = Opening {
            id: conv,
            tenant: tenant.clone(),
            customer: CustomerRef {
                id: customer,
                address: "c-1".into(),
                display_name: "Иван".into(),
                verified_phone: "+79161234567".into(),
            },
            channel: Channel::Api,
            channel_config: ChannelConfigId::parse("api").unwrap(),
            queue: QueueId::parse("default").unwrap(),
            priority: 3,
            requirements: Requirements {
                skills: vec![SkillLevel::new(SkillId::parse("vip").unwrap(), 2).unwrap()],
                language: Some("ru".into()),
            },
            preference: Some(Preference {
                operator: OperatorId::parse("boris").unwrap(),
                until: Timestamp::from_millis(61_000),
                reason: PreferenceReason::KnownOperator,
            }),
        };
        let opened = Conversation::open(opening, first, Timestamp::from_millis(1_000)).next;
        let offered = opened
            .apply(
                Command::Offer { operator: OperatorId::parse("anna").unwrap(), timeout: Duration::from_secs(20) },
                Timestamp::from_millis(2_000),
            )
            .unwrap()
            .next;
        for c in [opened, offered] {
            let back = from_conversation_state(&conversation_state(&c)).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn a_full_queue_round_trips_and_bad_fields_are_named() {
        let tenant = TenantId::parse("acme").unwrap();
        let q = v1::Queue {
            id: "billing".into(),
            display_name: "Billing".into(),
            required_skills: vec![v1::SkillLevel { skill: "billing".into(), proficiency: 4 }],
            language: "ru".into(),
            priority: 5,
            offer_timeout: Some(duration(Duration::from_secs(20))),
            selection: v1::SelectionStrategy::RoundRobin as i32,
            aging_delay: Some(duration(Duration::from_secs(120))),
            max_wait: Some(duration(Duration::from_secs(600))),
            overflow_queue_id: "general".into(),
            expansion: vec![v1::ExpansionStep {
                after: Some(duration(Duration::from_secs(60))),
                proficiency_drop: 2,
                remove_skills: vec![],
                drop_language: true,
            }],
            business_hours: Some(v1::BusinessHours {
                time_zone: "Europe/Moscow".into(),
                windows: vec![v1::OpeningWindow {
                    day: v1::DayOfWeek::Monday as i32,
                    open: "09:00".into(),
                    close: "18:30".into(),
                }],
            }),
            after_hours_queue_id: "night".into(),
            revision: 0,
        };
        let domain = from_queue(&tenant, &q).unwrap();
        assert_eq!(domain.selection, Selection::RoundRobin);
        assert_eq!(queue(&domain, 0), q);
        let mut bad = q.clone();
        bad.business_hours.as_mut().unwrap().time_zone = "Mars/Olympus".into();
        assert_eq!(from_queue(&tenant, &bad).unwrap_err().field, "queue.business_hours.time_zone");
        let mut bad = q.clone();
        bad.business_hours.as_mut().unwrap().windows[0].close = "08:00".into();
        assert!(from_queue(&tenant, &bad).unwrap_err().field.starts_with("queue.business_hours.windows"));
        let mut bad = q.clone();
        bad.overflow_queue_id = "billing".into();
        assert_eq!(from_queue(&tenant, &bad).unwrap_err().field, "queue.overflow_queue_id");
        let mut bad = q;
        bad.max_wait = None;
        assert_eq!(from_queue(&tenant, &bad).unwrap_err().field, "queue.overflow_queue_id");
    }

    #[test]
    fn routing_settings_default_when_unset_and_refuse_bad_weights() {
        let defaults = from_routing_settings(&v1::RoutingSettings::default()).unwrap();
        assert_eq!(defaults, RoutingSettings::default());
        let off = v1::RoutingSettings { known_operator_window: Some(duration(Duration::ZERO)), ..Default::default() };
        assert_eq!(from_routing_settings(&off).unwrap().known_operator_window, None);
        let bad = v1::RoutingSettings { waiting_weight: 1.5, ..Default::default() };
        assert_eq!(from_routing_settings(&bad).unwrap_err().field, "waiting_weight");
        assert_eq!(from_routing_settings(&routing_settings(&defaults, 0)).unwrap(), defaults);
    }

    #[test]
    fn decoding_names_the_bad_field() {
        let tenant = TenantId::parse("acme").unwrap();
        let o = v1::Operator {
            id: "anna".into(),
            display_name: "Anna".into(),
            skills: vec![v1::SkillLevel { skill: "billing".into(), proficiency: 9 }],
            ..Default::default()
        };
        let e = from_operator(&tenant, &o).unwrap_err();
        assert_eq!(e.field, "operator.skills");
        let o = v1::Operator { id: "Anna!".into(), display_name: "Anna".into(), ..Default::default() };
        assert_eq!(from_operator(&tenant, &o).unwrap_err().field, "operator.id");
        assert_eq!(from_channel("c", 0).unwrap_err().why, "channel must be specified");
        assert!(from_channel("c", 99).is_err());
    }
}
