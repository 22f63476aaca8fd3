//! The conversation state machine: `apply(command, now)` returns the next state and the
//! effects to carry out (events to publish, desks to notify, capacity to release). It
//! performs none of them, so every rule here is testable without NATS or Redis.
//!
//! ```text
//!            open            offer             accept
//!   (new) ────────▶ Queued ─────────▶ Offered ────────▶ Assigned ──┐
//!                    ▲  │ assign        │ decline/expire   │ transfer to operator
//!                    │  └───────────────┼──────────────────▶ (new owner)
//!                    └──────────────────┘◀── transfer to queue / requeue
//!   any open state ── close ──▶ Closed
//! ```

use std::time::Duration;

use crate::routing::Requirements;
use crate::{
    Channel, ChannelConfigId, ConversationId, CustomerId, DeliveryState, Message, MessageId, OperatorId, QueueId,
    Sender, SkillLevel, TenantId, Timestamp,
};

/// How many message ids a conversation remembers to recognise redeliveries. Redeliveries
/// come within seconds (a crashed router's unacknowledged messages), and a customer's
/// messages are handled one at a time, so a few dozen is ample.
pub const RECENT_IDS: usize = 32;
/// How many messages a conversation carries for a newly assigned operator (the rest of
/// the transcript is in history).
pub const RECENT_MESSAGES: usize = 5;

/// The customer a conversation is with, as the channel named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRef {
    pub id: CustomerId,
    pub address: String,
    pub display_name: String,
    /// A phone number verified for the customer (web chat: by the tenant's site); empty
    /// when none.
    pub verified_phone: String,
}

/// Where a conversation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Queued,
    Offered { operator: OperatorId, expires: Timestamp },
    Assigned { operator: OperatorId },
    Closed,
}

impl Status {
    pub const fn name(&self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Offered { .. } => "offered",
            Status::Assigned { .. } => "assigned",
            Status::Closed => "closed",
        }
    }

    /// The operator holding the conversation (owning it or offered it), if any.
    pub fn holder(&self) -> Option<&OperatorId> {
        match self {
            Status::Offered { operator, .. } | Status::Assigned { operator } => Some(operator),
            Status::Queued | Status::Closed => None,
        }
    }
}

/// One conversation's whole routing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: ConversationId,
    pub tenant: TenantId,
    pub customer: CustomerRef,
    pub channel: Channel,
    pub channel_config: ChannelConfigId,
    pub queue: QueueId,
    pub status: Status,
    pub priority: i32,
    pub created: Timestamp,
    pub updated: Timestamp,
    /// When it began waiting; kept across requeues so nobody loses their place.
    pub wait_start: Timestamp,
    /// Operators who declined it, let an offer expire, or transferred it to a queue or
    /// skill: passed over while anyone else can take it.
    pub declined_by: Vec<OperatorId>,
    /// Latest message ids, newest last.
    pub recent_message_ids: Vec<MessageId>,
    /// Latest messages, newest last.
    pub recent_messages: Vec<Message>,
    pub message_count: u32,
    pub transfer_note: String,
    pub closed_at: Option<Timestamp>,
    /// What this conversation needs beyond its queue's requirements.
    pub requirements: Requirements,
    /// `requirements` replace the queue's (after a transfer to a skill).
    pub replace_queue_requirements: bool,
    /// An operator it waits for before anyone else may take it.
    pub preference: Option<Preference>,
    /// When it entered its current queue.
    pub queue_enter: Timestamp,
    /// Who wrote last, and when.
    pub last_sender: Sender,
    pub last_activity: Timestamp,
    /// When the customer last wrote (the WhatsApp customer-service window runs from it).
    pub last_customer_message: Option<Timestamp>,
}

/// Why a conversation waits for one operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferenceReason {
    /// The customer's operator from before.
    KnownOperator,
    /// The customer gave the operator's fast-track code.
    FastTrack,
    /// The fast-track operator could not take it: any member of their team may.
    FastTrackTeam,
}

impl PreferenceReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            PreferenceReason::KnownOperator => "known_operator",
            PreferenceReason::FastTrack => "fast_track",
            PreferenceReason::FastTrackTeam => "fast_track_team",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [PreferenceReason::KnownOperator, PreferenceReason::FastTrack, PreferenceReason::FastTrackTeam]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// An operator a conversation waits for, until a deadline (with reason
/// [`PreferenceReason::FastTrackTeam`], any member of that operator's team).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    pub operator: OperatorId,
    pub until: Timestamp,
    pub reason: PreferenceReason,
}

/// Who acts on a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An operator, who may act only on conversations they hold.
    Operator(OperatorId),
    /// A supervisor or admin of the tenant, who may act on any.
    Supervisor(String),
    /// Parley itself (timeouts, presence loss).
    System,
}

impl Actor {
    pub fn name(&self) -> &str {
        match self {
            Actor::Operator(id) => id.as_str(),
            Actor::Supervisor(s) => s,
            Actor::System => "system",
        }
    }
}

/// Where a transfer sends a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferTarget {
    Operator(OperatorId),
    Queue(QueueId),
    /// Back into its queue, needing this skill instead of the queue's requirements.
    Skill(SkillLevel),
}

/// Why a conversation went (back) to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueReason {
    New,
    Transferred,
    Declined,
    OfferExpired,
    OperatorUnavailable,
    /// Waited its queue's maximum; moved to the overflow queue.
    Overflow,
    /// Its queue is closed; moved to the after-hours queue.
    AfterHours,
    /// Stopped waiting for a particular operator.
    PreferenceEnded,
}

impl QueueReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            QueueReason::New => "new",
            QueueReason::Transferred => "transferred",
            QueueReason::Declined => "declined",
            QueueReason::OfferExpired => "offer_expired",
            QueueReason::OperatorUnavailable => "operator_unavailable",
            QueueReason::Overflow => "overflow",
            QueueReason::AfterHours => "after_hours",
            QueueReason::PreferenceEnded => "preference_ended",
        }
    }
}

/// Why an operator got a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignReason {
    Routed,
    Accepted,
    Transferred,
}

impl AssignReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            AssignReason::Routed => "routed",
            AssignReason::Accepted => "accepted",
            AssignReason::Transferred => "transferred",
        }
    }
}

/// Why a conversation left an operator's desk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    Closed,
    Transferred,
    OfferDeclined,
    OfferExpired,
    Rerouted,
}

impl ReleaseReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Closed => "closed",
            ReleaseReason::Transferred => "transferred",
            ReleaseReason::OfferDeclined => "offer_declined",
            ReleaseReason::OfferExpired => "offer_expired",
            ReleaseReason::Rerouted => "rerouted",
        }
    }
}

/// What can happen to a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A customer wrote.
    CustomerMessage(Message),
    /// An operator's reply, already on its way to the customer: it is recorded whatever
    /// the state now is (the check was made when it was sent).
    RecordOperatorMessage(Message),
    /// A message sent to the customer got further, or failed for good: recorded whatever
    /// the state now is (a receipt can come after the conversation closed).
    RecordDelivery(DeliveryChange),
    /// Offer to an operator whose capacity the caller has reserved.
    Offer {
        operator: OperatorId,
        timeout: Duration,
    },
    /// Give to an operator whose capacity the caller has reserved, without an offer.
    Assign {
        operator: OperatorId,
    },
    Accept {
        operator: OperatorId,
    },
    Decline {
        operator: OperatorId,
    },
    /// The pending offer's deadline has passed.
    ExpireOffer,
    /// For a target operator, the caller has reserved their capacity.
    Transfer {
        by: Actor,
        target: TransferTarget,
        note: String,
    },
    Close {
        by: Actor,
        reason: String,
    },
    /// The holder went away (offline, heartbeat lost): back to the queue, priority kept.
    Requeue,
    /// While queued: wait for this operator until the deadline.
    Prefer(Preference),
    /// While queued: stop waiting for a particular operator (deadline passed, or they
    /// cannot take it).
    EndPreference,
    /// While queued: move to another queue (maximum wait, after hours), keeping the
    /// original wait and priority.
    MoveQueue {
        to: QueueId,
        reason: QueueReason,
    },
}

/// An event for the conversation's log (stream EVENTS, then history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Opened,
    MessageReceived(Message),
    MessageSent(Message),
    Queued { queue: QueueId, priority: i32, reason: QueueReason },
    Offered { operator: OperatorId, expires: Timestamp },
    Assigned { operator: OperatorId, reason: AssignReason, note: String },
    Closed { by: String, reason: String },
    Delivery(DeliveryChange),
}

/// Something an operator's desk must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeskEvent {
    Offered {
        expires: Timestamp,
    },
    /// Carries the conversation's latest messages and any transfer note.
    Assigned,
    Message(Message),
    Released(ReleaseReason),
    Delivery(DeliveryChange),
}

/// A message's new delivery state, as its sender or the provider reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryChange {
    pub message: MessageId,
    pub state: DeliveryState,
    /// Why it failed, for `Failed`.
    pub reason: String,
    /// When the state was reached, as reported.
    pub at: Timestamp,
}

/// Something the customer is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerNotice {
    Queued,
    OperatorJoined(OperatorId),
    Ended {
        reason: String,
    },
    /// Waiting for this operator until the deadline.
    WaitingFor(Preference),
}

/// An effect for the caller to carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Log(Event),
    Desk {
        operator: OperatorId,
        event: DeskEvent,
    },
    Customer(CustomerNotice),
    /// The operator's reserved capacity for this conversation is free again.
    ReleaseCapacity(OperatorId),
    /// Put the conversation in its queue (ordered by priority, then wait start).
    Enqueue,
    /// Take the conversation out of its queue.
    Dequeue,
}

/// Why a command does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("conversation is closed")]
    Closed,
    #[error("conversation is {0}, not {1}")]
    WrongStatus(&'static str, &'static str),
    #[error("conversation is held by another operator")]
    NotHolder,
    #[error("the offer expired")]
    OfferExpired,
    #[error("the offer has not expired yet")]
    OfferPending,
    #[error("conversation is already with operator {0}")]
    SameOperator(OperatorId),
}

/// The result of a command that applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub next: Conversation,
    pub effects: Vec<Effect>,
    /// True when the command was a redelivery already applied: nothing changes.
    pub duplicate: bool,
}

/// What a new conversation starts from.
#[derive(Debug, Clone)]
pub struct Opening {
    pub id: ConversationId,
    pub tenant: TenantId,
    pub customer: CustomerRef,
    pub channel: Channel,
    pub channel_config: ChannelConfigId,
    pub queue: QueueId,
    pub priority: i32,
    pub requirements: Requirements,
    /// Waiting for one operator first (known operator, fast track).
    pub preference: Option<Preference>,
}

/// WhatsApp's customer-service window: free-form replies for 24 hours after the customer
/// last wrote; after that, only approved templates.
pub const WHATSAPP_REPLY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

impl Conversation {
    /// On WhatsApp, until when a free-form reply may be sent; `None` on other channels, and
    /// when the customer's last message time is unknown.
    pub fn reply_window_closes(&self) -> Option<Timestamp> {
        if self.channel != Channel::WhatsApp {
            return None;
        }
        // Conversations recorded before the customer's own time was kept fall back to the
        // last activity, when the customer spoke last.
        let last = self.last_customer_message.or((self.last_sender == Sender::Customer).then_some(self.last_activity));
        last.map(|t| t.saturating_add(WHATSAPP_REPLY_WINDOW))
    }

    /// Opens a conversation with its first customer message: it is logged, queued, and the
    /// customer told.
    pub fn open(opening: Opening, first: Message, now: Timestamp) -> Transition {
        let conversation = Conversation {
            id: opening.id,
            tenant: opening.tenant,
            customer: opening.customer,
            channel: opening.channel,
            channel_config: opening.channel_config,
            queue: opening.queue.clone(),
            status: Status::Queued,
            priority: opening.priority,
            created: now,
            updated: now,
            wait_start: now,
            declined_by: Vec::new(),
            recent_message_ids: Vec::new(),
            recent_messages: Vec::new(),
            message_count: 0,
            transfer_note: String::new(),
            closed_at: None,
            requirements: opening.requirements,
            replace_queue_requirements: false,
            preference: opening.preference.clone(),
            queue_enter: now,
            last_sender: Sender::Customer,
            last_activity: now,
            last_customer_message: None,
        };
        let mut t = conversation.with_message(first.clone(), now);
        t.effects = vec![
            Effect::Log(Event::Opened),
            Effect::Log(Event::MessageReceived(first)),
            Effect::Log(Event::Queued { queue: opening.queue, priority: opening.priority, reason: QueueReason::New }),
            Effect::Enqueue,
            Effect::Customer(match opening.preference {
                Some(p) => CustomerNotice::WaitingFor(p),
                None => CustomerNotice::Queued,
            }),
        ];
        t
    }

    /// True when this message id was already applied.
    pub fn has_message(&self, id: MessageId) -> bool {
        self.recent_message_ids.contains(&id)
    }

    fn with_message(&self, message: Message, now: Timestamp) -> Transition {
        let mut next = self.clone();
        next.updated = now;
        next.last_sender = message.sender;
        next.last_activity = now;
        if message.sender == Sender::Customer {
            next.last_customer_message = Some(message.created);
        }
        next.message_count = next.message_count.saturating_add(1);
        next.recent_message_ids.push(message.id);
        if next.recent_message_ids.len() > RECENT_IDS {
            next.recent_message_ids.remove(0);
        }
        next.recent_messages.push(message);
        if next.recent_messages.len() > RECENT_MESSAGES {
            next.recent_messages.remove(0);
        }
        Transition { next, effects: Vec::new(), duplicate: false }
    }

    fn unchanged(&self) -> Transition {
        Transition { next: self.clone(), effects: Vec::new(), duplicate: true }
    }

    /// Applies one command at time `now`.
    pub fn apply(&self, command: Command, now: Timestamp) -> Result<Transition, Rejected> {
        match command {
            Command::CustomerMessage(message) => self.customer_message(message, now),
            Command::RecordOperatorMessage(message) => Ok(self.operator_message(message, now)),
            Command::RecordDelivery(change) => Ok(self.delivery(change)),
            Command::Offer { operator, timeout } => self.offer(operator, timeout, now),
            Command::Assign { operator } => {
                self.expect_queued("queued")?;
                Ok(self.assign(operator, AssignReason::Routed, None, now))
            }
            Command::Accept { operator } => self.accept(operator, now),
            Command::Decline { operator } => self.decline(operator, now),
            Command::ExpireOffer => self.expire_offer(now),
            Command::Transfer { by, target, note } => self.transfer(by, target, note, now),
            Command::Close { by, reason } => self.close(by, reason, now),
            Command::Requeue => self.requeue(now),
            Command::Prefer(p) => {
                self.expect_queued("queued")?;
                let mut next = self.clone();
                next.updated = now;
                next.preference = Some(p.clone());
                // The customer is told whom they wait for; a team is not one person to name.
                let effects = match p.reason {
                    PreferenceReason::FastTrackTeam => Vec::new(),
                    _ => vec![Effect::Customer(CustomerNotice::WaitingFor(p))],
                };
                Ok(Transition { next, effects, duplicate: false })
            }
            Command::EndPreference => {
                self.expect_queued("queued")?;
                if self.preference.is_none() {
                    return Ok(self.unchanged());
                }
                let mut next = self.clone();
                next.updated = now;
                next.preference = None;
                let effects = vec![
                    Effect::Log(Event::Queued {
                        queue: next.queue.clone(),
                        priority: next.priority,
                        reason: QueueReason::PreferenceEnded,
                    }),
                    Effect::Customer(CustomerNotice::Queued),
                ];
                Ok(Transition { next, effects, duplicate: false })
            }
            Command::MoveQueue { to, reason } => {
                self.expect_queued("queued")?;
                if to == self.queue {
                    return Ok(self.unchanged());
                }
                let mut next = self.clone();
                next.updated = now;
                next.queue = to.clone();
                next.queue_enter = now;
                let effects = vec![
                    Effect::Dequeue,
                    Effect::Log(Event::Queued { queue: to, priority: next.priority, reason }),
                    Effect::Enqueue,
                    Effect::Customer(CustomerNotice::Queued),
                ];
                Ok(Transition { next, effects, duplicate: false })
            }
        }
    }

    fn expect_queued(&self, wanted: &'static str) -> Result<(), Rejected> {
        match self.status {
            Status::Queued => Ok(()),
            Status::Closed => Err(Rejected::Closed),
            _ => Err(Rejected::WrongStatus(self.status.name(), wanted)),
        }
    }

    fn customer_message(&self, message: Message, now: Timestamp) -> Result<Transition, Rejected> {
        if self.has_message(message.id) {
            return Ok(self.unchanged());
        }
        if self.status == Status::Closed {
            return Err(Rejected::Closed);
        }
        let mut t = self.with_message(message.clone(), now);
        t.effects.push(Effect::Log(Event::MessageReceived(message.clone())));
        if let Status::Assigned { operator } = &self.status {
            t.effects.push(Effect::Desk { operator: operator.clone(), event: DeskEvent::Message(message) });
        }
        Ok(t)
    }

    fn operator_message(&self, message: Message, now: Timestamp) -> Transition {
        if self.has_message(message.id) {
            return self.unchanged();
        }
        let mut t = self.with_message(message.clone(), now);
        t.effects.push(Effect::Log(Event::MessageSent(message.clone())));
        if message.sender == Sender::Operator
            && let Some(author) = &message.operator
        {
            // The author's other desks (and their own after a reload) see what was sent.
            t.effects.push(Effect::Desk { operator: author.clone(), event: DeskEvent::Message(message) });
        }
        t
    }

    /// Records a delivery state. A message still among the recent ones keeps its state, and a
    /// report that does not move it forward (a repeat, `delivered` after `read`) changes
    /// nothing; an older message's report is recorded as it comes (history keeps the
    /// furthest state). The operator holding the conversation — or, with nobody holding it,
    /// the message's author — sees it.
    fn delivery(&self, change: DeliveryChange) -> Transition {
        let mut next = self.clone();
        let mut author = None;
        if let Some(m) = next.recent_messages.iter_mut().find(|m| m.id == change.message) {
            if change.state <= m.delivery {
                return self.unchanged();
            }
            m.delivery = change.state;
            author = m.operator.clone();
        }
        let mut effects = vec![Effect::Log(Event::Delivery(change.clone()))];
        let owner = match &self.status {
            Status::Assigned { operator } => Some(operator.clone()),
            _ => None,
        };
        if let Some(operator) = owner.or(author) {
            effects.push(Effect::Desk { operator, event: DeskEvent::Delivery(change) });
        }
        Transition { next, effects, duplicate: false }
    }

    fn offer(&self, operator: OperatorId, timeout: Duration, now: Timestamp) -> Result<Transition, Rejected> {
        self.expect_queued("queued")?;
        let expires = now.saturating_add(timeout);
        let mut next = self.clone();
        next.updated = now;
        next.status = Status::Offered { operator: operator.clone(), expires };
        let effects = vec![
            Effect::Dequeue,
            Effect::Log(Event::Offered { operator: operator.clone(), expires }),
            Effect::Desk { operator, event: DeskEvent::Offered { expires } },
        ];
        Ok(Transition { next, effects, duplicate: false })
    }

    fn assign(&self, operator: OperatorId, reason: AssignReason, note: Option<String>, now: Timestamp) -> Transition {
        let mut next = self.clone();
        next.updated = now;
        next.status = Status::Assigned { operator: operator.clone() };
        next.declined_by.clear();
        next.preference = None;
        // A transfer to an operator brings its own note; routing one transferred to a queue
        // or skill keeps the note the transfer left for whoever takes it.
        if let Some(note) = note {
            next.transfer_note = note;
        }
        let mut effects = Vec::new();
        if self.status == Status::Queued {
            effects.push(Effect::Dequeue);
        }
        effects.extend([
            Effect::Log(Event::Assigned { operator: operator.clone(), reason, note: next.transfer_note.clone() }),
            Effect::Desk { operator: operator.clone(), event: DeskEvent::Assigned },
            Effect::Customer(CustomerNotice::OperatorJoined(operator)),
        ]);
        Transition { next, effects, duplicate: false }
    }

    fn accept(&self, operator: OperatorId, now: Timestamp) -> Result<Transition, Rejected> {
        match &self.status {
            Status::Offered { operator: offered, expires } => {
                if offered != &operator {
                    return Err(Rejected::NotHolder);
                }
                if now > *expires {
                    return Err(Rejected::OfferExpired);
                }
                Ok(self.assign(operator, AssignReason::Accepted, None, now))
            }
            // Accepting twice is harmless: the second one changes nothing.
            Status::Assigned { operator: owner } if owner == &operator => Ok(self.unchanged()),
            Status::Closed => Err(Rejected::Closed),
            other => Err(Rejected::WrongStatus(other.name(), "offered")),
        }
    }

    /// Back to the queue from an offer or an assignment, releasing the holder.
    fn back_to_queue(
        &self,
        holder: &OperatorId,
        queue_reason: QueueReason,
        release: ReleaseReason,
        now: Timestamp,
    ) -> Transition {
        let mut next = self.clone();
        next.updated = now;
        next.status = Status::Queued;
        if matches!(queue_reason, QueueReason::Declined | QueueReason::OfferExpired)
            && !next.declined_by.contains(holder)
        {
            next.declined_by.push(holder.clone());
        }
        let effects = vec![
            Effect::ReleaseCapacity(holder.clone()),
            Effect::Desk { operator: holder.clone(), event: DeskEvent::Released(release) },
            Effect::Log(Event::Queued { queue: next.queue.clone(), priority: next.priority, reason: queue_reason }),
            Effect::Enqueue,
            Effect::Customer(CustomerNotice::Queued),
        ];
        Transition { next, effects, duplicate: false }
    }

    fn decline(&self, operator: OperatorId, now: Timestamp) -> Result<Transition, Rejected> {
        match &self.status {
            Status::Offered { operator: offered, .. } if offered == &operator => {
                Ok(self.back_to_queue(&operator, QueueReason::Declined, ReleaseReason::OfferDeclined, now))
            }
            Status::Offered { .. } => Err(Rejected::NotHolder),
            Status::Closed => Err(Rejected::Closed),
            other => Err(Rejected::WrongStatus(other.name(), "offered")),
        }
    }

    fn expire_offer(&self, now: Timestamp) -> Result<Transition, Rejected> {
        match &self.status {
            Status::Offered { operator, expires } => {
                if now < *expires {
                    return Err(Rejected::OfferPending);
                }
                Ok(self.back_to_queue(operator, QueueReason::OfferExpired, ReleaseReason::OfferExpired, now))
            }
            Status::Closed => Err(Rejected::Closed),
            other => Err(Rejected::WrongStatus(other.name(), "offered")),
        }
    }

    fn check_actor(&self, by: &Actor, owner: &OperatorId) -> Result<(), Rejected> {
        match by {
            Actor::Operator(id) if id != owner => Err(Rejected::NotHolder),
            _ => Ok(()),
        }
    }

    fn transfer(
        &self,
        by: Actor,
        target: TransferTarget,
        note: String,
        now: Timestamp,
    ) -> Result<Transition, Rejected> {
        let owner = match &self.status {
            Status::Assigned { operator } => operator.clone(),
            Status::Closed => return Err(Rejected::Closed),
            other => return Err(Rejected::WrongStatus(other.name(), "assigned")),
        };
        self.check_actor(&by, &owner)?;
        match target {
            TransferTarget::Operator(to) => {
                if to == owner {
                    return Err(Rejected::SameOperator(to));
                }
                let mut t = self.assign(to, AssignReason::Transferred, Some(note), now);
                t.effects.splice(
                    0..0,
                    [
                        Effect::ReleaseCapacity(owner.clone()),
                        Effect::Desk { operator: owner, event: DeskEvent::Released(ReleaseReason::Transferred) },
                    ],
                );
                Ok(t)
            }
            TransferTarget::Queue(queue) => {
                let mut moved = self.passed_on_by(&owner);
                if moved.queue != queue {
                    moved.queue_enter = now;
                }
                moved.queue = queue;
                moved.transfer_note = note;
                Ok(moved.back_to_queue(&owner, QueueReason::Transferred, ReleaseReason::Transferred, now))
            }
            TransferTarget::Skill(skill) => {
                let mut moved = self.passed_on_by(&owner);
                moved.requirements =
                    Requirements { skills: vec![skill], language: moved.requirements.language.clone() };
                moved.replace_queue_requirements = true;
                moved.transfer_note = note;
                Ok(moved.back_to_queue(&owner, QueueReason::Transferred, ReleaseReason::Transferred, now))
            }
        }
    }

    /// A copy that passes over the operator who handed it on: a transfer to a queue or a
    /// skill is meant for someone else (unless nobody else can take it, as with a decline).
    fn passed_on_by(&self, owner: &OperatorId) -> Conversation {
        let mut moved = self.clone();
        if !moved.declined_by.contains(owner) {
            moved.declined_by.push(owner.clone());
        }
        moved
    }

    fn close(&self, by: Actor, reason: String, now: Timestamp) -> Result<Transition, Rejected> {
        let mut effects = Vec::new();
        match &self.status {
            Status::Closed => return Err(Rejected::Closed),
            Status::Queued => {
                if let Actor::Operator(_) = by {
                    return Err(Rejected::NotHolder);
                }
                effects.push(Effect::Dequeue);
            }
            Status::Offered { operator, .. } | Status::Assigned { operator } => {
                self.check_actor(&by, operator)?;
                effects.push(Effect::ReleaseCapacity(operator.clone()));
                effects.push(Effect::Desk {
                    operator: operator.clone(),
                    event: DeskEvent::Released(ReleaseReason::Closed),
                });
            }
        }
        let mut next = self.clone();
        next.updated = now;
        next.status = Status::Closed;
        next.closed_at = Some(now);
        effects.push(Effect::Log(Event::Closed { by: by.name().to_owned(), reason: reason.clone() }));
        effects.push(Effect::Customer(CustomerNotice::Ended { reason }));
        Ok(Transition { next, effects, duplicate: false })
    }

    fn requeue(&self, now: Timestamp) -> Result<Transition, Rejected> {
        match &self.status {
            Status::Offered { operator, .. } | Status::Assigned { operator } => {
                Ok(self.back_to_queue(operator, QueueReason::OperatorUnavailable, ReleaseReason::Rerouted, now))
            }
            Status::Closed => Err(Rejected::Closed),
            Status::Queued => Err(Rejected::WrongStatus("queued", "offered or assigned")),
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn op(s: &str) -> OperatorId {
        OperatorId::parse(s).unwrap()
    }

    fn msg(n: u128, sender: Sender) -> Message {
        Message {
            id: MessageId::from_uuid(Uuid::from_u128(n)),
            conversation: ConversationId::from_uuid(Uuid::from_u128(1)),
            customer: CustomerId::from_uuid(Uuid::from_u128(2)),
            channel: Channel::Api,
            sender,
            operator: (sender == Sender::Operator).then(|| op("anna")),
            text: format!("message {n}"),
            quoted: None,
            delivery: DeliveryState::Accepted,
            created: Timestamp::from_millis(n as i64),
            channel_message_id: format!("k{n}"),
            subject: String::new(),
            attachments: Vec::new(),
        }
    }

    fn opened() -> Conversation {
        let opening = Opening {
            id: ConversationId::from_uuid(Uuid::from_u128(1)),
            tenant: TenantId::parse("acme").unwrap(),
            customer: CustomerRef {
                id: CustomerId::from_uuid(Uuid::from_u128(2)),
                address: "c-1".into(),
                display_name: "Ivan".into(),
                verified_phone: String::new(),
            },
            channel: Channel::Api,
            channel_config: ChannelConfigId::parse("api").unwrap(),
            queue: QueueId::parse("default").unwrap(),
            priority: 0,
            requirements: Requirements::default(),
            preference: None,
        };
        Conversation::open(opening, msg(100, Sender::Customer), Timestamp::from_millis(1_000)).next
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn open_logs_queues_and_tells_the_customer() {
        let opening = Opening {
            id: ConversationId::from_uuid(Uuid::from_u128(1)),
            tenant: TenantId::parse("acme").unwrap(),
            customer: CustomerRef {
                id: CustomerId::from_uuid(Uuid::from_u128(2)),
                address: "c".into(),
                display_name: String::new(),
                verified_phone: String::new(),
            },
            channel: Channel::Api,
            channel_config: ChannelConfigId::parse("api").unwrap(),
            queue: QueueId::parse("default").unwrap(),
            priority: 5,
            requirements: Requirements::default(),
            preference: None,
        };
        let t = Conversation::open(opening, msg(100, Sender::Customer), at(1_000));
        assert_eq!(t.next.status, Status::Queued);
        assert_eq!(t.next.message_count, 1);
        assert_eq!(t.next.wait_start, at(1_000));
        assert!(matches!(t.effects[0], Effect::Log(Event::Opened)));
        assert!(t.effects.contains(&Effect::Enqueue));
        assert!(t.effects.contains(&Effect::Customer(CustomerNotice::Queued)));
    }

    #[test]
    fn redelivered_customer_message_changes_nothing() {
        let c = opened();
        let t = c.apply(Command::CustomerMessage(msg(100, Sender::Customer)), at(2_000)).unwrap();
        assert!(t.duplicate);
        assert!(t.effects.is_empty());
        assert_eq!(t.next, c);
    }

    #[test]
    fn messages_reach_the_desk_only_once_assigned() {
        let c = opened();
        let queued = c.apply(Command::CustomerMessage(msg(101, Sender::Customer)), at(2_000)).unwrap();
        assert!(!queued.effects.iter().any(|e| matches!(e, Effect::Desk { .. })));
        let assigned = queued.next.apply(Command::Assign { operator: op("anna") }, at(3_000)).unwrap();
        assert!(assigned.effects.contains(&Effect::Desk { operator: op("anna"), event: DeskEvent::Assigned }));
        assert!(assigned.effects.contains(&Effect::Dequeue));
        let third = assigned.next.apply(Command::CustomerMessage(msg(102, Sender::Customer)), at(4_000)).unwrap();
        assert!(
            matches!(&third.effects[1], Effect::Desk { operator, event: DeskEvent::Message(m) } if operator == &op("anna") && m.id == msg(102, Sender::Customer).id)
        );
        assert_eq!(third.next.message_count, 3);
    }

    /// History rewrites a conversation's row only for records that do more than add
    /// messages or delivery states: those must leave every field of the row but the update
    /// time as it was, whatever the status.
    #[test]
    fn messages_and_delivery_states_change_no_field_history_stores_but_the_update_time() {
        let row = |c: &Conversation| {
            let fields = (c.id, c.customer.id, c.channel, c.channel_config.clone(), c.queue.clone());
            (fields, c.status.clone(), c.priority, c.created, c.closed_at)
        };
        let queued = opened();
        let assigned = queued.apply(Command::Assign { operator: op("anna") }, at(2_000)).unwrap().next;
        for c in [queued, assigned] {
            let received = c.apply(Command::CustomerMessage(msg(201, Sender::Customer)), at(3_000)).unwrap();
            assert!(matches!(received.effects[0], Effect::Log(Event::MessageReceived(_))));
            assert_eq!(row(&received.next), row(&c));
            let sent = received.next.apply(Command::RecordOperatorMessage(msg(202, Sender::Operator)), at(4_000));
            let sent = sent.unwrap();
            assert!(matches!(sent.effects[0], Effect::Log(Event::MessageSent(_))));
            assert_eq!(row(&sent.next), row(&c));
            let change = DeliveryChange {
                message: msg(202, Sender::Operator).id,
                state: DeliveryState::Delivered,
                reason: String::new(),
                at: at(5_000),
            };
            let delivered = sent.next.apply(Command::RecordDelivery(change), at(5_000)).unwrap();
            assert!(matches!(delivered.effects[0], Effect::Log(Event::Delivery(_))));
            assert_eq!(row(&delivered.next), row(&c));
            assert_eq!(delivered.next.updated, sent.next.updated);
        }
    }

    #[test]
    fn offer_accept_and_expiry() {
        let c = opened();
        let offered =
            c.apply(Command::Offer { operator: op("anna"), timeout: Duration::from_secs(30) }, at(2_000)).unwrap().next;
        assert_eq!(offered.status, Status::Offered { operator: op("anna"), expires: at(32_000) });
        assert_eq!(offered.apply(Command::Accept { operator: op("boris") }, at(3_000)), Err(Rejected::NotHolder));
        assert_eq!(offered.apply(Command::Accept { operator: op("anna") }, at(32_001)), Err(Rejected::OfferExpired));
        assert_eq!(offered.apply(Command::ExpireOffer, at(31_999)), Err(Rejected::OfferPending));
        let expired = offered.apply(Command::ExpireOffer, at(32_000)).unwrap();
        assert_eq!(expired.next.status, Status::Queued);
        assert_eq!(expired.next.declined_by, vec![op("anna")]);
        assert_eq!(expired.next.wait_start, at(1_000), "requeue keeps the original wait");
        assert!(expired.effects.contains(&Effect::ReleaseCapacity(op("anna"))));
        let accepted = offered.apply(Command::Accept { operator: op("anna") }, at(5_000)).unwrap();
        assert_eq!(accepted.next.status, Status::Assigned { operator: op("anna") });
        let again = accepted.next.apply(Command::Accept { operator: op("anna") }, at(6_000)).unwrap();
        assert!(again.duplicate);
    }

    #[test]
    fn decline_remembers_the_operator() {
        let offered = opened()
            .apply(Command::Offer { operator: op("anna"), timeout: Duration::from_secs(30) }, at(2_000))
            .unwrap()
            .next;
        assert_eq!(offered.apply(Command::Decline { operator: op("boris") }, at(3_000)), Err(Rejected::NotHolder));
        let t = offered.apply(Command::Decline { operator: op("anna") }, at(3_000)).unwrap();
        assert_eq!(t.next.declined_by, vec![op("anna")]);
        assert!(t.effects.contains(&Effect::Desk {
            operator: op("anna"),
            event: DeskEvent::Released(ReleaseReason::OfferDeclined)
        }));
    }

    #[test]
    fn transfer_moves_ownership_and_capacity() {
        let assigned = opened().apply(Command::Assign { operator: op("anna") }, at(2_000)).unwrap().next;
        let by_other = assigned.apply(
            Command::Transfer {
                by: Actor::Operator(op("boris")),
                target: TransferTarget::Operator(op("vera")),
                note: String::new(),
            },
            at(3_000),
        );
        assert_eq!(by_other, Err(Rejected::NotHolder));
        let t = assigned
            .apply(
                Command::Transfer {
                    by: Actor::Operator(op("anna")),
                    target: TransferTarget::Operator(op("vera")),
                    note: "VIP".into(),
                },
                at(3_000),
            )
            .unwrap();
        assert_eq!(t.next.status, Status::Assigned { operator: op("vera") });
        assert_eq!(t.next.transfer_note, "VIP");
        assert_eq!(t.effects[0], Effect::ReleaseCapacity(op("anna")));
        assert!(t.effects.contains(&Effect::Desk { operator: op("vera"), event: DeskEvent::Assigned }));
        assert!(!t.effects.contains(&Effect::Dequeue));
        let to_queue = assigned
            .apply(
                Command::Transfer {
                    by: Actor::Supervisor("sv".into()),
                    target: TransferTarget::Queue(QueueId::parse("billing").unwrap()),
                    note: String::new(),
                },
                at(3_000),
            )
            .unwrap();
        assert_eq!(to_queue.next.status, Status::Queued);
        assert_eq!(to_queue.next.queue.as_str(), "billing");
        assert_eq!(to_queue.next.wait_start, at(1_000));
    }

    #[test]
    fn the_note_of_a_transfer_to_a_queue_or_skill_reaches_whoever_takes_it() {
        let assigned = opened().apply(Command::Assign { operator: op("anna") }, at(2_000)).unwrap().next;
        let skill = SkillLevel { skill: crate::SkillId::parse("billing").unwrap(), proficiency: 2 };
        for target in [TransferTarget::Queue(QueueId::parse("vip").unwrap()), TransferTarget::Skill(skill)] {
            let by = Command::Transfer { by: Actor::Operator(op("anna")), target, note: "VIP".into() };
            let moved = assigned.apply(by, at(3_000)).unwrap().next;
            let routed = moved.apply(Command::Assign { operator: op("boris") }, at(4_000)).unwrap();
            assert_eq!(routed.next.transfer_note, "VIP", "the desk's assignment carries the note");
            assert!(routed.effects.contains(&Effect::Log(Event::Assigned {
                operator: op("boris"),
                reason: AssignReason::Routed,
                note: "VIP".into()
            })));
            let offer = Command::Offer { operator: op("boris"), timeout: Duration::from_secs(30) };
            let offered = moved.apply(offer, at(4_000)).unwrap().next;
            let accepted = offered.apply(Command::Accept { operator: op("boris") }, at(5_000)).unwrap();
            assert_eq!(accepted.next.transfer_note, "VIP");
        }
    }

    #[test]
    fn a_transfer_to_a_queue_or_skill_passes_over_the_sender() {
        let assigned = opened().apply(Command::Assign { operator: op("anna") }, at(2_000)).unwrap().next;
        let skill = SkillLevel { skill: crate::SkillId::parse("billing").unwrap(), proficiency: 2 };
        for target in [TransferTarget::Queue(QueueId::parse("vip").unwrap()), TransferTarget::Skill(skill)] {
            let by = Command::Transfer { by: Actor::Operator(op("anna")), target, note: String::new() };
            let moved = assigned.apply(by, at(3_000)).unwrap().next;
            assert_eq!(moved.declined_by, vec![op("anna")]);
            let taken = moved.apply(Command::Assign { operator: op("boris") }, at(4_000)).unwrap().next;
            assert!(taken.declined_by.is_empty(), "forgotten once someone takes it");
        }
    }

    #[test]
    fn delivery_states_only_move_forward_and_reach_the_owner() {
        let assigned = opened().apply(Command::Assign { operator: op("anna") }, at(2_000)).unwrap().next;
        assert_eq!(assigned.last_customer_message, Some(at(100)), "the opening message's time");
        let reply = msg(104, Sender::Operator);
        let replied = assigned.apply(Command::RecordOperatorMessage(reply.clone()), at(3_000)).unwrap().next;
        assert_eq!(replied.last_customer_message, Some(at(100)), "an operator's reply does not move it");
        let change = |state, ms| DeliveryChange { message: reply.id, state, reason: String::new(), at: at(ms) };
        let sent = replied.apply(Command::RecordDelivery(change(DeliveryState::Sent, 3_100)), at(3_100)).unwrap();
        assert!(!sent.duplicate);
        assert_eq!(sent.next.recent_messages.last().unwrap().delivery, DeliveryState::Sent);
        assert_eq!(
            sent.effects,
            vec![
                Effect::Log(Event::Delivery(change(DeliveryState::Sent, 3_100))),
                Effect::Desk { operator: op("anna"), event: DeskEvent::Delivery(change(DeliveryState::Sent, 3_100)) },
            ]
        );
        let read = sent.next.apply(Command::RecordDelivery(change(DeliveryState::Read, 3_300)), at(3_300)).unwrap();
        assert_eq!(read.next.recent_messages.last().unwrap().delivery, DeliveryState::Read);
        // A repeat, or a report that comes late (delivered after read), changes nothing.
        for late in [DeliveryState::Read, DeliveryState::Delivered, DeliveryState::Sent] {
            let t = read.next.apply(Command::RecordDelivery(change(late, 3_400)), at(3_400)).unwrap();
            assert!(t.duplicate && t.effects.is_empty(), "{late:?} after read");
        }
        // After close, the author still hears about it; a message no longer among the recent
        // ones is recorded as reported.
        let closed = read
            .next
            .apply(Command::Close { by: Actor::Operator(op("anna")), reason: String::new() }, at(4_000))
            .unwrap()
            .next;
        let failed = closed.apply(Command::RecordDelivery(change(DeliveryState::Failed, 4_100)), at(4_100)).unwrap();
        assert!(failed.effects.contains(&Effect::Desk {
            operator: op("anna"),
            event: DeskEvent::Delivery(change(DeliveryState::Failed, 4_100))
        }));
        let old = DeliveryChange { message: msg(7, Sender::Operator).id, ..change(DeliveryState::Delivered, 4_200) };
        let t = closed.apply(Command::RecordDelivery(old.clone()), at(4_200)).unwrap();
        assert_eq!(t.effects, vec![Effect::Log(Event::Delivery(old))], "nobody holds it, the author is unknown");
    }

    #[test]
    fn close_releases_and_is_final() {
        let assigned = opened().apply(Command::Assign { operator: op("anna") }, at(2_000)).unwrap().next;
        assert_eq!(
            assigned.apply(Command::Close { by: Actor::Operator(op("boris")), reason: String::new() }, at(3_000)),
            Err(Rejected::NotHolder)
        );
        let closed = assigned
            .apply(Command::Close { by: Actor::Operator(op("anna")), reason: "solved".into() }, at(3_000))
            .unwrap();
        assert_eq!(closed.next.status, Status::Closed);
        assert!(closed.effects.contains(&Effect::ReleaseCapacity(op("anna"))));
        assert_eq!(
            closed.next.apply(Command::CustomerMessage(msg(103, Sender::Customer)), at(4_000)),
            Err(Rejected::Closed)
        );
        // An operator reply already sent is still recorded after close.
        let late = closed.next.apply(Command::RecordOperatorMessage(msg(104, Sender::Operator)), at(4_000)).unwrap();
        assert!(late.effects.iter().any(|e| matches!(e, Effect::Log(Event::MessageSent(_)))));
    }

    #[test]
    fn preferences_and_queue_moves_keep_the_original_wait() {
        let c = opened();
        let p = Preference { operator: op("anna"), until: at(61_000), reason: PreferenceReason::KnownOperator };
        let waiting = c.apply(Command::Prefer(p.clone()), at(2_000)).unwrap();
        assert_eq!(waiting.next.preference, Some(p.clone()));
        assert_eq!(waiting.effects, vec![Effect::Customer(CustomerNotice::WaitingFor(p))]);
        let ended = waiting.next.apply(Command::EndPreference, at(61_000)).unwrap();
        assert_eq!(ended.next.preference, None);
        assert!(ended.effects.contains(&Effect::Customer(CustomerNotice::Queued)));
        let moved = ended
            .next
            .apply(
                Command::MoveQueue { to: QueueId::parse("overflow").unwrap(), reason: QueueReason::Overflow },
                at(90_000),
            )
            .unwrap();
        assert_eq!(moved.next.queue.as_str(), "overflow");
        assert_eq!(moved.next.wait_start, at(1_000), "overflow keeps the original wait");
        assert_eq!(moved.next.queue_enter, at(90_000));
        assert_eq!(moved.effects[0], Effect::Dequeue);
        // Assigned conversations do not move.
        let assigned = moved.next.apply(Command::Assign { operator: op("anna") }, at(91_000)).unwrap().next;
        assert!(
            assigned
                .apply(
                    Command::MoveQueue { to: QueueId::parse("x2").unwrap(), reason: QueueReason::Overflow },
                    at(92_000)
                )
                .is_err()
        );
    }

    #[test]
    fn a_transfer_to_a_skill_replaces_the_requirements_and_tracks_who_spoke_last() {
        let assigned = opened().apply(Command::Assign { operator: op("anna") }, at(2_000)).unwrap().next;
        let replied =
            assigned.apply(Command::RecordOperatorMessage(msg(200, Sender::Operator)), at(3_000)).unwrap().next;
        assert_eq!((replied.last_sender, replied.last_activity), (Sender::Operator, at(3_000)));
        let skill = SkillLevel { skill: crate::SkillId::parse("billing").unwrap(), proficiency: 3 };
        let t = replied
            .apply(
                Command::Transfer {
                    by: Actor::Operator(op("anna")),
                    target: TransferTarget::Skill(skill.clone()),
                    note: String::new(),
                },
                at(4_000),
            )
            .unwrap();
        assert_eq!(t.next.status, Status::Queued);
        assert!(t.next.replace_queue_requirements);
        assert_eq!(t.next.requirements.skills, vec![skill]);
        assert!(t.effects.contains(&Effect::ReleaseCapacity(op("anna"))));
    }

    #[test]
    fn recent_lists_are_bounded() {
        let mut c = opened();
        for n in 0..300u128 {
            c = c.apply(Command::CustomerMessage(msg(1_000 + n, Sender::Customer)), at(2_000)).unwrap().next;
        }
        assert_eq!(c.recent_message_ids.len(), RECENT_IDS);
        assert_eq!(c.recent_messages.len(), RECENT_MESSAGES);
        assert_eq!(c.message_count, 301);
        assert_eq!(c.recent_messages.last().unwrap().id, msg(1_299, Sender::Customer).id);
    }
}
