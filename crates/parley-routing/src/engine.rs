//! The routing engine: everything that changes a conversation goes through here.
//!
//! A change is: read the conversation's last record (its state and stream sequence), apply a
//! command to the pure state machine, append the resulting record only if the subject is
//! still at that sequence, then carry out the Redis effects. Two replicas racing on one
//! conversation: one append wins, the other re-reads and re-decides. Capacity is reserved in
//! Redis (atomically, see `parley-redis`) *before* an assignment is appended, and given back
//! if the append does not happen.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use parley_domain::conversation::{Command, CustomerRef, Opening, Rejected, Transition};
use parley_domain::{
    Channel, ChannelConfigId, Conversation, ConversationId, CustomerId, Message, MessageId, OperatorId, OperatorStatus,
    Queue, QueueId, Sender, Status, TenantId, Timestamp,
};
use parley_kit::clock;
use parley_kit::error::ApiError;
use parley_nats::{ConfigCache, ConversationLog, StoreError};
use parley_policy::{Decision, OperatorView, Request, decide, queue_score};
use parley_proto::{convert, events, v1};
use parley_redis::{ClaimRefused, Coordinator};
use tokio::sync::Notify;

use crate::record::{self, RedisEffect};

/// How many times a change is retried when another replica changed the conversation first.
const MAX_ATTEMPTS: usize = 8;

/// Why the engine could not do something.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("conversation {0} not found")]
    NotFound(ConversationId),
    #[error("{0}")]
    Rejected(#[from] Rejected),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Unavailable(e.to_string())
    }
}

impl From<parley_redis::RedisError> for EngineError {
    fn from(e: parley_redis::RedisError) -> Self {
        EngineError::Unavailable(e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::NotFound(id) => ApiError::NotFound(format!("conversation {id} not found")),
            EngineError::Rejected(r) => ApiError::FailedPrecondition(r.to_string()),
            EngineError::Invalid(m) => ApiError::InvalidArgument(m),
            EngineError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

/// What a change did.
#[derive(Debug, Clone)]
pub enum Applied {
    /// Appended; the conversation is now this.
    Done(Conversation),
    /// Already applied before (a redelivery); nothing changed.
    Duplicate(Conversation),
    /// The command did not apply to the current state; nothing changed.
    Skipped(Conversation),
}

/// What a dispatch attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dispatched {
    /// Given (or offered) to this operator.
    To(OperatorId),
    /// Nobody eligible now; it keeps waiting.
    Nobody,
    /// Not waiting any more (taken by another replica, closed).
    NotWaiting,
}

/// How many conversations' last known state a replica keeps in memory.
const STATE_CACHE: usize = 100_000;

/// This replica's memory of recent conversations: the last state it read or wrote (with its
/// log sequence) and customers' open conversations. Only a shortcut: every change is still
/// an append at the remembered sequence, so a stale entry makes the append fail, and the
/// engine then reads the log.
#[derive(Default)]
pub struct Memory {
    states: std::sync::Mutex<HashMap<(TenantId, ConversationId), (Conversation, u64)>>,
    open: std::sync::Mutex<HashMap<(TenantId, CustomerId), ConversationId>>,
}

impl Memory {
    fn state(&self, tenant: &TenantId, id: ConversationId) -> Option<(Conversation, u64)> {
        self.states.lock().unwrap_or_else(|p| p.into_inner()).get(&(tenant.clone(), id)).cloned()
    }

    fn remember(&self, c: &Conversation, sequence: u64) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if states.len() >= STATE_CACHE {
            // Crude but bounded: start over rather than track recency.
            states.clear();
        }
        if c.status == Status::Closed {
            states.remove(&(c.tenant.clone(), c.id));
        } else {
            states.insert((c.tenant.clone(), c.id), (c.clone(), sequence));
        }
    }

    fn forget(&self, tenant: &TenantId, id: ConversationId) {
        self.states.lock().unwrap_or_else(|p| p.into_inner()).remove(&(tenant.clone(), id));
    }

    fn open(&self, tenant: &TenantId, customer: CustomerId) -> Option<ConversationId> {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).get(&(tenant.clone(), customer)).copied()
    }

    fn set_open(&self, tenant: &TenantId, customer: CustomerId, id: Option<ConversationId>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= STATE_CACHE {
            open.clear();
        }
        match id {
            Some(id) => open.insert((tenant.clone(), customer), id),
            None => open.remove(&(tenant.clone(), customer)),
        };
    }
}

/// The engine and everything it reads and writes. Shared by the consumers, the API and the
/// background loops.
pub struct Engine {
    pub cache: ConfigCache,
    pub log: ConversationLog,
    pub redis: Coordinator,
    pub presence: kv::Store,
    /// Woken when something may let a waiting conversation be assigned.
    pub wake: Arc<Notify>,
    pub memory: Memory,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine(..)")
    }
}

impl Engine {
    /// Applies `command` (chosen from the current state; `None` skips) with retries on
    /// concurrent changes. A `decision` is recorded with the change.
    pub async fn apply(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        decision: Option<&Decision>,
        mut command: impl FnMut(&Conversation) -> Result<Option<Command>, EngineError>,
    ) -> Result<Applied, EngineError> {
        for attempt in 0..MAX_ATTEMPTS {
            // First try what this replica last saw; after a conflict, read the log.
            let remembered = if attempt == 0 { self.memory.state(tenant, id) } else { None };
            let loaded = match remembered {
                Some((conversation, sequence)) => parley_nats::Loaded { conversation, sequence },
                None => match self.log.load(tenant, id).await? {
                    Some(l) => {
                        self.memory.remember(&l.conversation, l.sequence);
                        l
                    }
                    None => return Err(EngineError::NotFound(id)),
                },
            };
            let Some(cmd) = command(&loaded.conversation)? else {
                return Ok(Applied::Skipped(loaded.conversation));
            };
            let now = clock::now();
            let t = loaded.conversation.apply(cmd, now)?;
            if t.duplicate {
                return Ok(Applied::Duplicate(t.next));
            }
            match self.commit(tenant, Some(&loaded.conversation), t, loaded.sequence, decision, now).await {
                Ok(next) => return Ok(Applied::Done(next)),
                Err(StoreError::Conflict(_)) => {
                    self.memory.forget(tenant, id);
                    continue;
                }
                Err(e) => {
                    self.memory.forget(tenant, id);
                    return Err(e.into());
                }
            }
        }
        Err(EngineError::Unavailable(format!("conversation {id} is changing too fast; retry")))
    }

    /// Appends a transition's record at `expected`, then carries out its Redis effects.
    async fn commit(
        &self,
        tenant: &TenantId,
        previous: Option<&Conversation>,
        t: Transition,
        expected: u64,
        decision: Option<&Decision>,
        now: Timestamp,
    ) -> Result<Conversation, StoreError> {
        let extra: Vec<_> =
            decision.map(|d| record::decision_event(&t.next, d, clock::new_id(), now)).into_iter().collect();
        let (rec, redis) = record::build(clock::new_id(), &t.next, t.effects, extra, now, &self.cache);
        let sequence = self.log.append(tenant, &rec, expected).await?;
        self.memory.remember(&t.next, sequence);
        self.run_redis(tenant, previous, &t.next, redis).await;
        Ok(t.next)
    }

    /// Carries out Redis effects. A failure here leaves Redis behind the durable state;
    /// the rebuild and the dispatcher's checks bring it back in line.
    async fn run_redis(
        &self,
        tenant: &TenantId,
        previous: Option<&Conversation>,
        next: &Conversation,
        effects: Vec<RedisEffect>,
    ) {
        for effect in effects {
            let result = match &effect {
                RedisEffect::Release(op) => self.redis.release(tenant, op, next.channel, next.id).await,
                RedisEffect::Enqueue => {
                    let score = queue_score(next.priority, next.wait_start);
                    self.redis.enqueue(tenant, &next.queue, next.id, score).await
                }
                RedisEffect::Dequeue => {
                    let queue = previous.map_or(&next.queue, |p| &p.queue);
                    self.redis.dequeue(tenant, queue, next.id).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(conversation = %next.id, ?effect, error = %e, "redis effect failed; will be reconciled");
            }
            if matches!(effect, RedisEffect::Release(_)) {
                // Capacity freed: a waiting conversation may fit now. (A new conversation
                // is dispatched inline, so enqueueing needs no wake-up.)
                self.wake.notify_one();
            }
        }
        let offered_before = previous.is_some_and(|p| matches!(p.status, Status::Offered { .. }));
        let result = match &next.status {
            Status::Offered { expires, .. } => self.redis.track_offer(tenant, next.id, *expires).await,
            _ if offered_before => self.redis.untrack_offer(tenant, next.id).await,
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(conversation = %next.id, error = %e, "offer tracking failed; will be reconciled");
        }
    }

    /// Handles one customer message: into the customer's open conversation, or a new one
    /// that is queued and offered to an operator at once if anyone fits.
    pub async fn customer_message(&self, m: &events::CustomerMessage) -> Result<(), EngineError> {
        let tenant = TenantId::parse(&m.tenant_id).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let customer = CustomerId::parse(&m.customer_id).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let message_id = MessageId::parse(&m.message_id).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let channel = convert::from_channel("channel", m.channel).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let channel_config =
            ChannelConfigId::parse(&m.channel_config_id).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let quoted = convert::from_quoted(m.quoted.as_ref()).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let message = |conversation: ConversationId| Message {
            id: message_id,
            conversation,
            customer,
            channel,
            sender: Sender::Customer,
            operator: None,
            text: m.text.clone(),
            quoted: quoted.clone(),
            delivery: parley_domain::DeliveryState::Accepted,
            created: convert::from_timestamp(m.receive_time.as_ref()),
            channel_message_id: m.channel_message_id.clone(),
        };
        for _ in 0..MAX_ATTEMPTS {
            // The customer's open conversation as this replica remembers it: if it was closed
            // meanwhile (here or elsewhere), the append fails or is rejected and the pointer
            // is read from the store below.
            if let Some(open) = self.memory.open(&tenant, customer) {
                let msg = message(open);
                match self.apply(&tenant, open, None, |_| Ok(Some(Command::CustomerMessage(msg.clone())))).await {
                    Ok(_) => return Ok(()),
                    Err(EngineError::Rejected(Rejected::Closed)) | Err(EngineError::NotFound(_)) => {
                        self.memory.set_open(&tenant, customer, None);
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some((open, pointer)) = self.log.open_conversation(&tenant, customer).await? {
                let msg = message(open);
                match self.apply(&tenant, open, None, |_| Ok(Some(Command::CustomerMessage(msg.clone())))).await {
                    Ok(_) => {
                        self.memory.set_open(&tenant, customer, Some(open));
                        return Ok(());
                    }
                    Err(EngineError::Rejected(Rejected::Closed)) | Err(EngineError::NotFound(_)) => {
                        // The pointer outlived its conversation; clear it and open a new one.
                        match self.log.clear_open(&tenant, customer, pointer).await {
                            Ok(()) | Err(StoreError::Conflict(_)) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            // No open conversation: this message opens one, with an id derived from it, so a
            // redelivery after a crash finds the same conversation.
            let id = ConversationId::opened_by(message_id);
            if let Some(existing) = self.log.load(&tenant, id).await? {
                if existing.conversation.status == Status::Closed {
                    // An old message delivered again after its conversation ended.
                    tracing::info!(conversation = %id, message = %message_id, "redelivery of a closed conversation's message");
                    return Ok(());
                }
                // Opened before a crash; make sure it is the customer's open conversation.
                match self.log.set_open(&tenant, customer, id).await {
                    Ok(_) => {
                        self.try_dispatch(&tenant, id, false).await?;
                        return Ok(());
                    }
                    Err(StoreError::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let queue = self.queue_for(&tenant, &m.queue_id, &channel_config);
            let priority = self.cache.queue(&tenant, queue.as_str()).map_or(0, |q| q.priority);
            let opening = Opening {
                id,
                tenant: tenant.clone(),
                customer: CustomerRef {
                    id: customer,
                    address: m.customer_address.clone(),
                    display_name: m.customer_display_name.clone(),
                },
                channel,
                channel_config: channel_config.clone(),
                queue,
                priority,
            };
            let now = clock::now();
            let t = Conversation::open(opening, message(id), now);
            match self.commit(&tenant, None, t, 0, None, now).await {
                Ok(_) => {}
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            match self.log.set_open(&tenant, customer, id).await {
                Ok(_) => self.memory.set_open(&tenant, customer, Some(id)),
                Err(StoreError::AlreadyExists(_)) => {
                    // Another replica opened a conversation for this customer at the same
                    // moment with a different message. Both stay in history; this one is
                    // closed so the customer has one open conversation.
                    tracing::warn!(conversation = %id, "concurrent open for the same customer; closing this one");
                    let _ = self
                        .apply(&tenant, id, None, |_| {
                            Ok(Some(Command::Close {
                                by: parley_domain::conversation::Actor::System,
                                reason: "merged into a concurrent conversation".into(),
                            }))
                        })
                        .await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            self.try_dispatch(&tenant, id, true).await?;
            return Ok(());
        }
        Err(EngineError::Unavailable("customer's conversation is changing too fast; retry".into()))
    }

    /// The queue a new conversation waits in: the one asked for if it exists, else the
    /// channel's default, else `default`.
    fn queue_for(&self, tenant: &TenantId, asked: &str, channel_config: &ChannelConfigId) -> QueueId {
        let exists = |q: &str| self.cache.queue(tenant, q).is_some();
        if !asked.is_empty() && exists(asked) {
            return QueueId::parse(asked).unwrap_or_else(|_| default_queue());
        }
        if let Some(cfg) = self.cache.channel(tenant, channel_config.as_str())
            && exists(&cfg.default_queue_id)
        {
            return QueueId::parse(&cfg.default_queue_id).unwrap_or_else(|_| default_queue());
        }
        default_queue()
    }

    /// Records an operator's reply (already on its way to the customer) in the log.
    pub async fn operator_message(&self, tenant: &TenantId, message: Message) -> Result<(), EngineError> {
        let id = message.conversation;
        self.apply(tenant, id, None, |_| Ok(Some(Command::RecordOperatorMessage(message.clone())))).await?;
        Ok(())
    }

    /// Closes a conversation; the customer's next message opens a new one.
    pub async fn close(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        by: parley_domain::conversation::Actor,
        reason: String,
    ) -> Result<Conversation, EngineError> {
        let applied = self
            .apply(tenant, id, None, |_| Ok(Some(Command::Close { by: by.clone(), reason: reason.clone() })))
            .await?;
        let c = match applied {
            Applied::Done(c) | Applied::Duplicate(c) | Applied::Skipped(c) => c,
        };
        self.memory.set_open(tenant, c.customer.id, None);
        if let Some((open, revision)) = self.log.open_conversation(tenant, c.customer.id).await?
            && open == id
        {
            match self.log.clear_open(tenant, c.customer.id, revision).await {
                // Conflict: the pointer moved on already.
                Ok(()) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(c)
    }

    /// The tenant's operators as the policy sees them for `channel`.
    pub async fn operator_views(&self, tenant: &TenantId, channel: Channel) -> Result<Vec<OperatorView>, EngineError> {
        let operators: Vec<v1::Operator> =
            self.cache.with_tenant(tenant, |t| t.map(|t| t.operators.values().cloned().collect()).unwrap_or_default());
        let ops: Vec<parley_domain::Operator> =
            operators.iter().filter_map(|o| convert::from_operator(tenant, o).ok()).collect();
        let ids: Vec<OperatorId> = ops.iter().map(|o| o.id.clone()).collect();
        let snapshots = self.redis.snapshot(tenant, &ids, channel, clock::now()).await?;
        Ok(ops
            .into_iter()
            .zip(snapshots)
            .map(|(o, s)| OperatorView {
                capacity: o.capacity_for(channel),
                id: o.id,
                status: s.status,
                connected: s.connected,
                disabled: o.disabled,
                skills: o.skills,
                languages: o.languages,
                load: s.load,
                last_assigned: s.last_assigned,
            })
            .collect())
    }

    /// A queue's configuration in domain form (a missing or broken one requires nothing).
    pub fn queue_config(&self, tenant: &TenantId, queue: &QueueId) -> Queue {
        self.cache.queue(tenant, queue.as_str()).and_then(|q| convert::from_queue(tenant, &q).ok()).unwrap_or(Queue {
            tenant: tenant.clone(),
            id: queue.clone(),
            display_name: queue.to_string(),
            required_skills: Vec::new(),
            language: None,
            priority: 0,
            offer_timeout: None,
        })
    }

    /// Tries to give a waiting conversation to the best operator now. With `record_wait`, a
    /// decision that finds nobody is recorded too (once, when the conversation opens).
    pub async fn try_dispatch(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        record_wait: bool,
    ) -> Result<Dispatched, EngineError> {
        for _ in 0..3 {
            let Some(loaded) = self.log.load(tenant, id).await? else { return Ok(Dispatched::NotWaiting) };
            let c = loaded.conversation;
            if c.status != Status::Queued {
                // A stale queue entry (Redis behind the log): drop it.
                self.redis.dequeue(tenant, &c.queue, id).await?;
                return Ok(Dispatched::NotWaiting);
            }
            // The log says it waits: make sure Redis agrees (an enqueue lost in a crash).
            self.redis.ensure_queued(tenant, &c.queue, id, queue_score(c.priority, c.wait_start)).await?;
            let queue = self.queue_config(tenant, &c.queue);
            let request = Request {
                channel: c.channel,
                required_skills: queue.required_skills.clone(),
                language: queue.language.clone(),
                excluded: c.declined_by.clone(),
            };
            let views = self.operator_views(tenant, c.channel).await?;
            let decision = decide(&request, &views);
            let Some(chosen) = decision.chosen.clone() else {
                if record_wait {
                    let now = clock::now();
                    let t = Transition { next: c.clone(), effects: Vec::new(), duplicate: false };
                    match self.commit(tenant, Some(&c), t, loaded.sequence, Some(&decision), now).await {
                        Ok(_) | Err(StoreError::Conflict(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                return Ok(Dispatched::Nobody);
            };
            let capacity = views.iter().find(|v| v.id == chosen).map_or(0, |v| v.capacity);
            let now = clock::now();
            match self.redis.claim(tenant, &chosen, c.channel, capacity, id, &c.queue, true, now).await? {
                Ok(()) => {}
                Err(ClaimRefused::Gone) => return Ok(Dispatched::NotWaiting),
                // The snapshot was stale (the operator filled up or left): decide again.
                Err(_) => continue,
            }
            let op = chosen.clone();
            let offer_timeout = queue.offer_timeout;
            let result = self
                .apply(tenant, id, Some(&decision), |cur| {
                    if cur.status != Status::Queued {
                        return Ok(None);
                    }
                    Ok(Some(match offer_timeout {
                        Some(timeout) => Command::Offer { operator: op.clone(), timeout },
                        None => Command::Assign { operator: op.clone() },
                    }))
                })
                .await;
            return match result {
                Ok(Applied::Done(_)) => Ok(Dispatched::To(chosen)),
                Ok(Applied::Skipped(cur)) | Ok(Applied::Duplicate(cur)) => {
                    if cur.status.holder() != Some(&chosen) {
                        self.redis.release(tenant, &chosen, c.channel, id).await?;
                    }
                    Ok(Dispatched::NotWaiting)
                }
                Err(e) => {
                    // The assignment did not happen: give the capacity back (the
                    // conversation never left its queue).
                    self.redis.release(tenant, &chosen, c.channel, id).await?;
                    Err(e)
                }
            };
        }
        Ok(Dispatched::Nobody)
    }

    /// One pass over every queue of every tenant, and every expired offer.
    pub async fn dispatch_all(&self) {
        for tenant in self.cache.tenants() {
            if tenant.disabled {
                continue;
            }
            let Ok(tenant_id) = TenantId::parse(&tenant.id) else { continue };
            if let Err(e) = self.expire_offers(&tenant_id).await {
                tracing::warn!(tenant = %tenant_id, error = %e, "expiring offers failed");
            }
            let queues: Vec<String> = self
                .cache
                .with_tenant(&tenant_id, |t| t.map(|t| t.queues.keys().cloned().collect()).unwrap_or_default());
            for queue in queues {
                let Ok(queue) = QueueId::parse(&queue) else { continue };
                let waiting = match self.redis.waiting(&tenant_id, &queue, 32).await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading queue failed");
                        return;
                    }
                };
                for id in waiting {
                    if let Err(e) = self.try_dispatch(&tenant_id, id, false).await {
                        tracing::warn!(conversation = %id, error = %e, "dispatch failed");
                    }
                }
            }
        }
    }

    /// Moves expired offers back to their queue (the operator is not offered it again).
    async fn expire_offers(&self, tenant: &TenantId) -> Result<(), EngineError> {
        let now = clock::now();
        for id in self.redis.due_offers(tenant, now, 100).await? {
            let result = self
                .apply(tenant, id, None, |cur| match &cur.status {
                    Status::Offered { expires, .. } if *expires <= clock::now() => Ok(Some(Command::ExpireOffer)),
                    _ => Ok(None),
                })
                .await;
            match result {
                Ok(Applied::Done(_)) => {
                    self.try_dispatch(tenant, id, false).await?;
                }
                Ok(_) | Err(EngineError::NotFound(_)) => self.redis.untrack_offer(tenant, id).await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sets an operator's status: durably (key-value), then in Redis. Going offline hands
    /// back their pending offers.
    pub async fn set_status(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        status: OperatorStatus,
        reason: &str,
    ) -> Result<(), EngineError> {
        let now = clock::now();
        let record = v1::OperatorPresence {
            operator_id: op.to_string(),
            status: convert::operator_status(status) as i32,
            reason: reason.to_owned(),
            connected: false,
            load: Vec::new(),
            status_change_time: Some(convert::timestamp(now)),
        };
        let key = format!("{tenant}.{op}");
        self.presence
            .put(key.as_str(), parley_proto::prost::Message::encode_to_vec(&record).into())
            .await
            .map_err(|e| EngineError::Unavailable(format!("presence store: {e}")))?;
        self.redis.set_status(tenant, op, status, reason, now).await?;
        if status == OperatorStatus::Online {
            self.wake.notify_one();
        }
        if status == OperatorStatus::Offline {
            self.withdraw_offers(tenant, op).await?;
        }
        Ok(())
    }

    /// Puts every conversation offered to `op` back in its queue.
    async fn withdraw_offers(&self, tenant: &TenantId, op: &OperatorId) -> Result<(), EngineError> {
        for channel in Channel::ALL {
            for held in self.redis.held(tenant, op, channel).await? {
                let Ok(id) = ConversationId::parse(&held) else { continue };
                let result = self
                    .apply(tenant, id, None, |cur| match &cur.status {
                        Status::Offered { operator, .. } if operator == op => Ok(Some(Command::Requeue)),
                        _ => Ok(None),
                    })
                    .await;
                if let Err(e) = result {
                    tracing::warn!(conversation = %id, error = %e, "withdrawing offer failed");
                }
            }
        }
        Ok(())
    }

    /// The conversations an operator holds, read from their capacity reservations.
    pub async fn held_conversations(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
    ) -> Result<Vec<Conversation>, EngineError> {
        let mut out = Vec::new();
        for channel in Channel::ALL {
            for held in self.redis.held(tenant, op, channel).await? {
                let Ok(id) = ConversationId::parse(&held) else { continue };
                if let Some(loaded) = self.log.load(tenant, id).await?
                    && loaded.conversation.status.holder() == Some(op)
                {
                    out.push(loaded.conversation);
                }
            }
        }
        out.sort_by_key(|c| c.created);
        Ok(out)
    }

    /// Rebuilds Redis from the durable side if it lost its data (no `parley:rebuilt`):
    /// statuses from the presence bucket, queues, offers and reservations from the last
    /// record of every conversation.
    pub async fn rebuild_if_needed(&self, js: &async_nats::jetstream::Context) -> anyhow::Result<bool> {
        if self.redis.is_rebuilt().await? {
            return Ok(false);
        }
        tracing::warn!("redis has no routing state; rebuilding from JetStream");
        crate::rebuild::run(self, js).await?;
        self.redis.mark_rebuilt(clock::now()).await?;
        Ok(true)
    }

    /// Brings Redis in line with the log after crashes: every waiting conversation in its
    /// queue, every held one reserved, and reservations nobody holds any more (claimed over
    /// `grace` ago, by a router that died before recording the assignment) given back.
    pub async fn reconcile(&self, js: &async_nats::jetstream::Context, grace: Duration) -> anyhow::Result<()> {
        crate::rebuild::run(self, js).await?;
        let before = Timestamp::from_micros(clock::now().as_micros() - grace.as_micros() as i64);
        let mut released = 0;
        for tenant in self.cache.tenants() {
            let Ok(tenant) = TenantId::parse(&tenant.id) else { continue };
            let operators: Vec<String> = self
                .cache
                .with_tenant(&tenant, |t| t.map(|t| t.operators.keys().cloned().collect()).unwrap_or_default());
            for op in operators.iter().filter_map(|o| OperatorId::parse(o).ok()) {
                for channel in Channel::ALL {
                    for id in self.redis.stale_holds(&tenant, &op, channel, before).await? {
                        let held = match self.log.load(&tenant, id).await? {
                            Some(l) => l.conversation.status.holder() == Some(&op),
                            None => false,
                        };
                        if !held {
                            self.redis.release(&tenant, &op, channel, id).await?;
                            released += 1;
                        }
                    }
                }
            }
        }
        if released > 0 {
            tracing::warn!(released, "gave back capacity held by no conversation");
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Periodic work: rebuild Redis if it was lost, reconcile it with the log, expire
    /// offers, dispatch waiting conversations; also woken early whenever something changes.
    pub async fn run_dispatcher(
        self: Arc<Self>,
        js: async_nats::jetstream::Context,
        interval: Duration,
        reconcile_every: Duration,
        token: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut last_reconcile = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
                _ = self.wake.notified() => {}
            }
            if let Err(e) = self.rebuild_if_needed(&js).await {
                tracing::warn!(error = format!("{e:#}"), "rebuild failed; will retry");
                continue;
            }
            if last_reconcile.elapsed() >= reconcile_every {
                last_reconcile = tokio::time::Instant::now();
                if let Err(e) = self.reconcile(&js, Duration::from_secs(10).min(reconcile_every)).await {
                    tracing::warn!(error = format!("{e:#}"), "reconcile failed; will retry");
                }
            }
            self.dispatch_all().await;
        }
    }
}

fn default_queue() -> QueueId {
    // A valid slug literal.
    QueueId::parse("default").expect("`default` is a valid queue id")
}
