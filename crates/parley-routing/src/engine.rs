//! The routing engine: everything that changes a conversation goes through here.
//!
//! A change is: read the conversation's last record (its state and stream sequence), apply a
//! command to the pure state machine, append the resulting record only if the subject is
//! still at that sequence, then carry out the Redis effects. Two replicas racing on one
//! conversation: one append wins, the other re-reads and re-decides. Capacity is reserved in
//! Redis (atomically, see `parley-redis`) *before* an assignment is appended, and given back
//! if the append does not happen.
//!
//! Deciding who gets a waiting conversation reads the operators from the configuration
//! cache and their presence from Redis: all of them in a small tenant, else a shortlist from
//! Redis's availability index (least occupied first, for the rarest required skill), a page
//! at a time — so a decision costs the same with ten operators or ten thousand.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use parley_domain::conversation::{
    Actor, Command, CustomerRef, DeliveryChange, Opening, Preference, PreferenceReason, QueueReason, Rejected,
    Transition,
};
use parley_domain::routing::{Requirements, RoutingSettings, Selection};
use parley_domain::{
    Channel, ChannelConfigId, Conversation, ConversationId, CustomerId, Message, MessageId, Operator, OperatorId,
    OperatorStatus, Queue, QueueId, Sender, SkillId, Status, TenantId, Timestamp,
};
use parley_kit::clock;
use parley_kit::error::ApiError;
use parley_nats::{ConfigCache, ConversationLog, Loaded, StoreError, TeamPresence};
use parley_policy::{Decision, Exclusion, OperatorView, Request, Waiting, decide, queue_score, serve_order};
use parley_proto::{convert, events, v1};
use parley_redis::{ClaimRefused, Coordinator, OpCtx, TimerKind, Weights, activity_entry};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::fast_track;
use crate::record::{self, Explained, RedisEffect};

/// How many times a change is retried when another replica changed the conversation first.
const MAX_ATTEMPTS: usize = 8;
/// Tenants with at most this many operators are decided over all of them (exact, fully
/// explained); larger ones over shortlists of this size.
const SHORTLIST: usize = 64;
/// Shortlist pages looked at per decision at most.
const MAX_PAGES: usize = 8;
/// Waiting conversations looked at per queue per dispatch pass.
const HEADS_PER_QUEUE: usize = 32;
/// Assignments of one dispatch pass being recorded in the log at once.
const FINISHING: usize = 32;
/// How long a woken dispatcher trusts its last look at whether Redis lost its data.
const REBUILT_CHECK: Duration = Duration::from_millis(100);
/// Reads the reconciliation makes between pauses that let dispatching run.
const RECONCILE_BURST: usize = 32;

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

impl Applied {
    pub fn conversation(self) -> Conversation {
        match self {
            Applied::Done(c) | Applied::Duplicate(c) | Applied::Skipped(c) => c,
        }
    }
}

/// What picking an operator for a conversation came to.
enum Pick {
    /// Nothing to record.
    Done(Dispatched),
    /// The state moved on (a claim refused, a wait ended): load it and try again.
    Again,
    /// A seat is claimed; the assignment is to be recorded.
    Claimed(Claim),
}

/// A seat claimed in Redis for a conversation, not yet recorded in its log.
struct Claim {
    id: ConversationId,
    chosen: OperatorId,
    seat: Seat,
    explained: Explained,
    offer_timeout: Option<Duration>,
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
    /// The operator chosen still holds it from before (the release of their offer or
    /// assignment is on its way): it keeps waiting and is tried again on the next pass.
    Later,
}

/// What rerouting an operator's work did: the holds it found, and how many of those went
/// back to their queues (the rest are theirs still, or their release is on its way).
#[derive(Debug, Default, Clone, Copy)]
pub struct Rerouted {
    pub held: usize,
    pub moved: usize,
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
    /// The trace a waiting conversation was queued in, so that its assignment by a later
    /// dispatch pass continues the customer's trace.
    traces: std::sync::Mutex<HashMap<(TenantId, ConversationId), String>>,
}

impl Memory {
    fn state(&self, tenant: &TenantId, id: ConversationId) -> Option<(Conversation, u64)> {
        self.states.lock().unwrap_or_else(|p| p.into_inner()).get(&(tenant.clone(), id)).cloned()
    }

    fn knows(&self, tenant: &TenantId, id: ConversationId) -> bool {
        self.states.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&(tenant.clone(), id))
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

    fn note_trace(&self, c: &Conversation) {
        let mut traces = self.traces.lock().unwrap_or_else(|p| p.into_inner());
        if traces.len() >= STATE_CACHE {
            traces.clear();
        }
        let key = (c.tenant.clone(), c.id);
        match parley_kit::telemetry::current_traceparent().filter(|_| c.status == Status::Queued) {
            Some(tp) => traces.insert(key, tp),
            None => traces.remove(&key),
        };
    }

    fn take_trace(&self, tenant: &TenantId, id: ConversationId) -> Option<String> {
        self.traces.lock().unwrap_or_else(|p| p.into_inner()).remove(&(tenant.clone(), id))
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

/// An operator on one channel, owned (see [`OpCtx`]).
pub struct Seat {
    tenant: TenantId,
    op: OperatorId,
    channel: Channel,
    capacity: u32,
    skills: Vec<SkillId>,
    weights: Weights,
}

impl Seat {
    /// The operator's seats on this channel (what a transfer to them may fill).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn ctx(&self) -> OpCtx<'_> {
        OpCtx {
            tenant: &self.tenant,
            op: &self.op,
            channel: self.channel,
            capacity: self.capacity,
            skills: &self.skills,
            weights: self.weights,
        }
    }
}

/// The tenant's weights as Redis applies them.
pub fn weights(settings: &RoutingSettings) -> Weights {
    Weights {
        waiting_milli: settings.waiting_weight_milli,
        idle_milli: settings.idle_weight_milli,
        idle_after: settings.idle_after,
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
    /// Conversations whose Redis side fell behind their log (a Redis error after the
    /// record was written), for the maintenance loop to bring in line.
    pub repairs: std::sync::Mutex<HashSet<(TenantId, ConversationId)>>,
    /// Claimed seats being recorded in the log, off the dispatcher's path.
    pub finishing: Finishing,
    /// Publishes the desk part of records that free a seat (see `commit`).
    pub publisher: parley_nats::Publisher,
    /// A pass's first reads, made beside the release that wakes it.
    pub prefetch: Prefetch,
}

/// What a dispatch pass starts from: offers and timers due, and the heads of every queue
/// of the tenant (in the order of `queues`).
struct PassReads {
    now: Timestamp,
    queues: Vec<Arc<Queue>>,
    offers: Vec<ConversationId>,
    timers: Vec<(TimerKind, ConversationId)>,
    heads: Vec<Vec<(ConversationId, f64)>>,
}

/// A pass's first reads made by a change that frees a seat, in the same round trip as the
/// release, so the pass it wakes does not wait for them. None of them depends on the
/// release (it changes who has room, which the pass reads when it picks), so they are as
/// good as the pass's own as long as no pass ran meanwhile: `passes` counts the starts
/// and ends of passes (odd while one runs), and reads are used only if taken while none
/// ran and none has run since.
#[derive(Default)]
pub struct Prefetch {
    passes: std::sync::atomic::AtomicU64,
    reads: std::sync::Mutex<HashMap<TenantId, (u64, PassReads)>>,
}

impl Prefetch {
    /// The reads for `tenant` taken since the last pass, if any.
    fn take(&self, tenant: &TenantId) -> Option<PassReads> {
        let (at, reads) = self.reads.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant)?;
        (at == self.passes.load(std::sync::atomic::Ordering::SeqCst)).then_some(reads)
    }

    /// Counts a pass's start or end.
    fn pass_boundary(&self) {
        self.passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Whether the recordings of a pass wake the dispatcher when they end: when the pass may
/// have left assignable work behind (it claimed, nobody ran out, the queue had more than it
/// looked at) — once they are recorded, the next pass sees past them.
#[derive(Default)]
struct PassEnd {
    /// (the pass has ended, its recordings wake, one ended before the pass did)
    state: std::sync::Mutex<(bool, bool, bool)>,
}

impl PassEnd {
    fn end(&self, wake: bool, notify: &Notify) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = (true, wake, s.2);
        if wake && s.2 {
            notify.notify_one();
        }
    }

    fn finished(&self, notify: &Notify) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *s {
            (true, true, _) => notify.notify_one(),
            (true, false, _) => {}
            (false, _, _) => s.2 = true,
        }
    }
}

/// The recording of claimed seats, which runs beside dispatching: a pass ends once its
/// picks are claimed, and the next pass (the next freed seat) does not wait for the log
/// appends of the last one. Conversations being recorded are passed over by later passes.
pub struct Finishing {
    claimed: std::sync::Mutex<HashSet<(TenantId, ConversationId)>>,
    slots: Arc<tokio::sync::Semaphore>,
    tasks: tokio_util::task::TaskTracker,
}

impl Default for Finishing {
    fn default() -> Self {
        Self {
            claimed: Default::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(FINISHING)),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }
}

impl Finishing {
    fn is_claimed(&self, tenant: &TenantId, id: ConversationId) -> bool {
        self.claimed.lock().unwrap_or_else(|p| p.into_inner()).contains(&(tenant.clone(), id))
    }

    /// Waits until every recording started has ended (at shutdown).
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine(..)")
    }
}

impl Engine {
    /// An operator's seat context on a channel (capacity 0 and no skills if unknown, which
    /// takes them out of the availability indexes).
    pub fn seat(&self, tenant: &TenantId, op: &OperatorId, channel: Channel) -> Seat {
        let model = self.cache.operator_model(tenant, op.as_str());
        let settings = self.cache.routing_settings(tenant);
        Seat {
            tenant: tenant.clone(),
            op: op.clone(),
            channel,
            capacity: model.as_ref().filter(|m| !m.disabled).map_or(0, |m| m.capacity_for(channel)),
            skills: model.as_ref().map(|m| m.skills.iter().map(|s| s.skill.clone()).collect()).unwrap_or_default(),
            weights: weights(&settings),
        }
    }

    /// Every channel an operator has seats on (for status changes).
    pub fn seats(&self, tenant: &TenantId, op: &OperatorId) -> Vec<Seat> {
        let model = self.cache.operator_model(tenant, op.as_str());
        let channels: Vec<Channel> = model.map(|m| m.capacity.iter().map(|(c, _)| *c).collect()).unwrap_or_default();
        channels.into_iter().map(|c| self.seat(tenant, op, c)).collect()
    }

    /// Applies `command` (chosen from the current state; `None` skips, decided on the log's
    /// state rather than a remembered one) with retries on
    /// concurrent changes. A `decision` is recorded with the change.
    pub async fn apply(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        decision: Option<&Explained>,
        mut command: impl FnMut(&Conversation) -> Result<Option<Command>, EngineError>,
    ) -> Result<Applied, EngineError> {
        for attempt in 0..MAX_ATTEMPTS {
            // First try what this replica last saw; after a conflict, read the log.
            let remembered = if attempt == 0 { self.memory.state(tenant, id) } else { None };
            let remembered_used = remembered.is_some();
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
                // Nothing to do is decided on the log's state, never on a remembered one that
                // another replica may have moved on (an offer expired and made again, say).
                if attempt == 0 && remembered_used {
                    self.memory.forget(tenant, id);
                    continue;
                }
                return Ok(Applied::Skipped(loaded.conversation));
            };
            let record_id = message_record_id(id, &cmd);
            let now = clock::now();
            let t = match loaded.conversation.apply(cmd, now) {
                Ok(t) => t,
                // A refusal, like nothing to do, is decided on the log's state: what this
                // replica remembers may be behind a change whose desk and customer events
                // are already out (recorded by another replica, or by this one's dispatcher
                // before it got to remember it).
                Err(_) if attempt == 0 && remembered_used => {
                    self.memory.forget(tenant, id);
                    continue;
                }
                Err(rejected) => return Err(rejected.into()),
            };
            if t.duplicate {
                return Ok(Applied::Duplicate(t.next));
            }
            match self
                .commit(tenant, Some(&loaded.conversation), t, loaded.sequence, decision, Vec::new(), record_id, now)
                .await
            {
                Ok(next) => return Ok(Applied::Done(next)),
                Err(StoreError::Conflict(_)) => {
                    self.memory.forget(tenant, id);
                    continue;
                }
                Err(StoreError::AlreadyApplied(_)) => {
                    // This message was applied before (a redelivery older than what the
                    // state remembers): nothing changes.
                    self.memory.forget(tenant, id);
                    let current = self.log.load(tenant, id).await?.map_or(loaded.conversation, |l| l.conversation);
                    return Ok(Applied::Duplicate(current));
                }
                Err(e) => {
                    self.memory.forget(tenant, id);
                    return Err(e.into());
                }
            }
        }
        Err(EngineError::Unavailable(format!("conversation {id} is changing too fast; retry")))
    }

    /// Appends a transition's record at `expected`, then carries out its Redis effects. The
    /// record's id is `record_id` when the transition is the application of one message
    /// (so applying it twice is refused by the log), a fresh one otherwise.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        tenant: &TenantId,
        previous: Option<&Conversation>,
        t: Transition,
        expected: u64,
        decision: Option<&Explained>,
        extra_customer: Vec<v1::customer_update::Kind>,
        record_id: Option<uuid::Uuid>,
        now: Timestamp,
    ) -> Result<Conversation, StoreError> {
        let extra: Vec<_> =
            decision.map(|d| record::decision_event(&t.next, d, clock::new_id(), now)).into_iter().collect();
        let record_id = record_id.unwrap_or_else(clock::new_id);
        let (rec, redis) = record::build(record_id, &t.next, t.effects, extra, extra_customer, now, &self.cache);
        // Holds this change gives back are in doubt until released: a crash between the
        // record and the release leaves them for reconciliation to find.
        let mut doubt_failed = false;
        for effect in &redis {
            if let RedisEffect::Release(op) = effect
                && let Err(e) = self.redis.doubt_hold(tenant, op, t.next.channel, t.next.id, now).await
            {
                tracing::warn!(conversation = %t.next.id, error = %e, "marking a hold in doubt failed");
                doubt_failed = true;
            }
        }
        let sequence = self.log.append(tenant, &rec, expected).await?;
        // A change that frees a seat tells the desks before the seat is freed, so an
        // operator's desk always hears "released" before a conversation that refills the
        // seat (the fan-out's copy is then dropped as a duplicate; should this publish
        // fail, the fan-out still delivers, in no particular order with the refill).
        if redis.iter().any(|e| matches!(e, RedisEffect::Release(_))) {
            let sends = crate::consumers::desk_sends(&self.publisher, tenant, &rec.record_id, &rec.desk, sequence);
            for result in futures_util::future::join_all(sends).await {
                if let Err(e) = result {
                    tracing::debug!(conversation = %t.next.id, error = %e, "desk told by the fan-out instead");
                }
            }
        }
        if doubt_failed {
            self.repairs.lock().unwrap_or_else(|p| p.into_inner()).insert((tenant.clone(), t.next.id));
        }
        self.memory.remember(&t.next, sequence);
        if previous.is_none_or(|p| p.status != Status::Queued) || t.next.status != Status::Queued {
            self.memory.note_trace(&t.next);
        }
        self.run_redis(tenant, previous, &t.next, redis, now).await;
        Ok(t.next)
    }

    /// Carries out Redis effects and keeps Redis's derived state (offer deadlines, timers,
    /// weights, served log, the customer's last operator) in line with the new state. A
    /// failure here leaves Redis behind the log; reconciliation brings it back.
    async fn run_redis(
        &self,
        tenant: &TenantId,
        previous: Option<&Conversation>,
        next: &Conversation,
        effects: Vec<RedisEffect>,
        now: Timestamp,
    ) {
        let mut failures = Vec::new();
        for effect in effects {
            let result = match &effect {
                RedisEffect::Release(op) => {
                    let seat = self.seat(tenant, op, next.channel);
                    let r = self.release_for_pass(&seat, next.id, now).await;
                    // Capacity freed: a waiting conversation may fit now.
                    self.wake.notify_one();
                    r
                }
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
                failures.push(format!("{effect:?}: {e}"));
            }
        }
        // A hold the log now records (an offer or assignment made, a transfer taken): no
        // longer in doubt for reconciliation.
        if let Some(holder) = next.status.holder()
            && previous.and_then(|p| p.status.holder()) != Some(holder)
            && let Err(e) = self.redis.confirm_hold(tenant, holder, next.channel, next.id).await
        {
            failures.push(format!("confirm hold: {e}"));
        }
        // Offers: the ended one's deadline goes only if no later offer replaced it.
        let r = match (&next.status, previous.map(|p| &p.status)) {
            (Status::Offered { expires, .. }, _) => Some(self.redis.track_offer(tenant, next.id, *expires).await),
            (_, Some(Status::Offered { expires, .. })) => {
                Some(self.redis.untrack_offer(tenant, next.id, *expires).await)
            }
            _ => None,
        };
        if let Some(Err(e)) = r {
            failures.push(format!("offer tracking: {e}"));
        }
        // Timers: a preference's end, the queue's maximum wait.
        if let Err(e) = self.sync_timers(tenant, previous, next).await {
            failures.push(format!("timers: {e}"));
        }
        // Weights: who spoke last in a held conversation.
        if let Some(holder) = next.status.holder()
            && previous.is_some_and(|p| p.last_activity != next.last_activity || p.last_sender != next.last_sender)
        {
            let seat = self.seat(tenant, holder, next.channel);
            let entry = activity_entry(next.last_activity, next.last_sender == Sender::Operator);
            if let Err(e) = self.redis.touch(&seat.ctx(), next.id, &entry, now).await {
                failures.push(format!("weights: {e}"));
            }
        }
        // Served from the queue: round robin and estimated waits.
        if previous.is_some_and(|p| p.status == Status::Queued)
            && let Some(op) = next.status.holder()
            && let Err(e) = self.redis.note_served(tenant, &next.queue, op, next.id, now).await
        {
            failures.push(format!("served log: {e}"));
        }
        // The customer's last operator, for their next conversation.
        if next.status == Status::Closed
            && let Some(Status::Assigned { operator }) = previous.map(|p| &p.status)
            && let Err(e) = self.log.set_last_operator(tenant, next.customer.id, operator, now).await
        {
            failures.push(format!("last operator: {e}"));
        }
        if !failures.is_empty() {
            tracing::warn!(conversation = %next.id, ?failures, "redis behind the log; maintenance will repair it");
            self.repairs.lock().unwrap_or_else(|p| p.into_inner()).insert((tenant.clone(), next.id));
        }
    }

    async fn sync_timers(
        &self,
        tenant: &TenantId,
        previous: Option<&Conversation>,
        next: &Conversation,
    ) -> Result<(), parley_redis::RedisError> {
        let queued = next.status == Status::Queued;
        let pref_due = next.preference.as_ref().filter(|_| queued).map(|p| p.until);
        let prev_pref_due =
            previous.and_then(|p| p.preference.as_ref().filter(|_| p.status == Status::Queued).map(|x| x.until));
        if pref_due != prev_pref_due || previous.is_none() {
            match pref_due {
                Some(due) => self.redis.set_timer(tenant, TimerKind::Preference, next.id, due).await?,
                None => self.redis.clear_timer(tenant, TimerKind::Preference, next.id).await?,
            }
        }
        let max_wait = |c: &Conversation| {
            (c.status == Status::Queued)
                .then(|| self.cache.queue_model(tenant, c.queue.as_str()).and_then(|q| q.max_wait))
                .flatten()
                .map(|w| c.queue_enter.saturating_add(w))
        };
        let due = max_wait(next);
        if previous.is_none() || previous.map(max_wait) != Some(due) {
            match due {
                Some(due) => self.redis.set_timer(tenant, TimerKind::MaxWait, next.id, due).await?,
                None => self.redis.clear_timer(tenant, TimerKind::MaxWait, next.id).await?,
            }
        }
        Ok(())
    }

    /// Handles one customer message: into the customer's open conversation, or a new one
    /// that is queued (or waits for its known or fast-track operator) and offered to an
    /// operator at once if anyone fits.
    pub async fn customer_message(&self, m: &events::CustomerMessage) -> Result<(), EngineError> {
        let invalid = |e: &dyn std::fmt::Display| EngineError::Invalid(e.to_string());
        let tenant = TenantId::parse(&m.tenant_id).map_err(|e| invalid(&e))?;
        let customer = CustomerId::parse(&m.customer_id).map_err(|e| invalid(&e))?;
        let message_id = MessageId::parse(&m.message_id).map_err(|e| invalid(&e))?;
        let channel = convert::from_channel("channel", m.channel).map_err(|e| invalid(&e))?;
        let channel_config = ChannelConfigId::parse(&m.channel_config_id).map_err(|e| invalid(&e))?;
        let quoted = convert::from_quoted(m.quoted.as_ref()).map_err(|e| invalid(&e))?;
        let requirements = Requirements {
            skills: m
                .required_skills
                .iter()
                .map(|s| convert::from_skill_level("required_skills", s))
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(&e))?,
            language: (!m.language.is_empty()).then(|| m.language.clone()),
        };
        let subject = convert::subject("subject", &m.subject).map_err(|e| invalid(&e))?;
        let attachments = m
            .attachments
            .iter()
            .map(|a| a.attachment.clone().ok_or_else(|| EngineError::Invalid("attachments: an entry is empty".into())))
            .collect::<Result<Vec<_>, _>>()?;
        let attachments = convert::from_attachments("attachments", &attachments).map_err(|e| invalid(&e))?;
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
            subject: subject.clone(),
            attachments: attachments.clone(),
        };
        // An email reply naming one of this tenant's open email conversations by the thread
        // token of Parley's own Message-ID joins it, whoever sends it (a colleague answering
        // from another address); otherwise it goes the usual way.
        if let Some(thread) = (!m.thread_conversation_id.is_empty())
            .then(|| ConversationId::parse(&m.thread_conversation_id))
            .transpose()
            .map_err(|e| invalid(&e))?
            && let Some(existing) = self.log.load(&tenant, thread).await?
        {
            let c = &existing.conversation;
            if c.has_message(message_id) {
                return Ok(());
            }
            if c.status != Status::Closed && c.channel == channel && c.channel_config == channel_config {
                match self.apply(&tenant, thread, None, |_| Ok(Some(Command::CustomerMessage(message(thread))))).await {
                    Ok(_) => return Ok(()),
                    // Closed meanwhile: the usual way.
                    Err(EngineError::Rejected(Rejected::Closed)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // The conversation this message opened when another replica opened one for the same
        // customer at the same moment and won the customer's pointer. It is closed as merged
        // once the message is recorded in the winner, never before: closed first, the message
        // was left in a closed conversation only if the winner closed meanwhile (and a
        // redelivery then took it for one handled already).
        let mut merging: Option<ConversationId> = None;
        for _ in 0..MAX_ATTEMPTS {
            // The customer's open conversation as this replica remembers it, else as the
            // pointer in the store says: if it was closed meanwhile, the append fails or is
            // rejected and a new one opens.
            let remembered = self.memory.open(&tenant, customer).map(|id| (id, None));
            let stored = match remembered {
                Some(r) => Some(r),
                None => self.log.open_conversation(&tenant, customer).await?.map(|(id, rev)| (id, Some(rev))),
            };
            if let Some((open, pointer)) = stored {
                let msg = message(open);
                match self.apply(&tenant, open, None, |_| Ok(Some(Command::CustomerMessage(msg.clone())))).await {
                    Ok(applied) => {
                        self.memory.set_open(&tenant, customer, Some(open));
                        if let Some(own) = merging.filter(|own| *own != open) {
                            self.close_merged(&tenant, own).await;
                        }
                        let c = applied.conversation();
                        // A code given while waiting still takes effect.
                        if c.status == Status::Queued && c.preference.is_none() {
                            self.fast_track_while_waiting(&tenant, &c, m).await?;
                        }
                        return Ok(());
                    }
                    Err(EngineError::Rejected(Rejected::Closed)) | Err(EngineError::NotFound(_)) => {
                        self.memory.set_open(&tenant, customer, None);
                        if let Some(rev) = pointer {
                            // The pointer outlived its conversation; clear it.
                            match self.log.clear_open(&tenant, customer, rev).await {
                                Ok(()) | Err(StoreError::Conflict(_)) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            // No open conversation: this message opens one, with an id derived from it, so a
            // redelivery after a crash finds the same conversation.
            let id = ConversationId::opened_by(message_id);
            if let Some(existing) = self.log.load(&tenant, id).await? {
                if existing.conversation.status == Status::Closed {
                    tracing::info!(conversation = %id, message = %message_id, "redelivery of a closed conversation's message");
                    return Ok(());
                }
                // Opened before a crash, or by this message a moment ago; make sure it is the
                // customer's open conversation, else merge it into the one that is.
                match self.log.set_open(&tenant, customer, id).await {
                    Ok(_) => {
                        self.memory.set_open(&tenant, customer, Some(id));
                        self.try_dispatch(&tenant, id, false).await?;
                        return Ok(());
                    }
                    Err(StoreError::AlreadyExists(_)) => {
                        merging = Some(id);
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let now = clock::now();
            let settings = self.cache.routing_settings(&tenant);
            let mut queue = self.queue_for(&tenant, &m.queue_id, &channel_config);
            let mut notices = Vec::new();
            // Outside business hours: to the after-hours queue, or tell the customer.
            if let Some(q) = self.cache.queue_model(&tenant, queue.as_str())
                && !q.is_open(now)
            {
                match &q.after_hours {
                    Some(after) => queue = after.clone(),
                    None => notices.push(v1::customer_update::Kind::Closed(v1::QueueClosed {
                        conversation_id: id.to_string(),
                        open_time: q.business_hours.as_ref().and_then(|h| h.next_open(now)).map(convert::timestamp),
                    })),
                }
            }
            let mut priority = self.cache.queue_model(&tenant, queue.as_str()).map_or(0, |q| q.priority);
            // A valid fast-track code goes straight to its operator; otherwise a returning
            // customer waits a little for their known operator.
            let preference = match fast_track::redeem(self, &tenant, customer, m, now).await? {
                Some(op) => {
                    // Promised a fast lane: if the operator cannot take it, it still comes first.
                    priority = 100;
                    Some(Preference {
                        operator: op,
                        until: now.saturating_add(settings.known_operator_wait),
                        reason: PreferenceReason::FastTrack,
                    })
                }
                None => self.known_operator(&tenant, customer, channel, &settings, now).await?,
            };
            let opening = Opening {
                id,
                tenant: tenant.clone(),
                customer: CustomerRef {
                    id: customer,
                    address: m.customer_address.clone(),
                    display_name: m.customer_display_name.clone(),
                    verified_phone: m.verified_phone.clone(),
                },
                channel,
                channel_config: channel_config.clone(),
                queue,
                priority,
                requirements: requirements.clone(),
                preference,
            };
            let t = Conversation::open(opening, message(id), now);
            let record_id = message_record_id(id, &Command::CustomerMessage(message(id)));
            match self.commit(&tenant, None, t, 0, None, notices, record_id, now).await {
                Ok(_) => {}
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            match self.log.set_open(&tenant, customer, id).await {
                Ok(_) => self.memory.set_open(&tenant, customer, Some(id)),
                Err(StoreError::AlreadyExists(_)) => {
                    // Another replica opened a conversation for this customer at the same
                    // moment with a different message. Both stay in history; the message
                    // goes on into that one, and this one is then closed so the customer
                    // has one open conversation (if that one closed first, this one becomes
                    // the open one).
                    tracing::warn!(conversation = %id, "concurrent open for the same customer; merging this one");
                    merging = Some(id);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            self.try_dispatch(&tenant, id, true).await?;
            return Ok(());
        }
        Err(EngineError::Unavailable("customer's conversation is changing too fast; retry".into()))
    }

    /// Closes a conversation opened at the same moment as the customer's open one, once its
    /// message is recorded there too.
    async fn close_merged(&self, tenant: &TenantId, id: ConversationId) {
        let result = self
            .apply(tenant, id, None, |cur| {
                Ok((cur.status != Status::Closed).then(|| Command::Close {
                    by: Actor::System,
                    reason: "merged into a concurrent conversation".into(),
                }))
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(conversation = %id, error = %e, "closing a merged conversation failed");
        }
    }

    /// A code in a message of a conversation that is already waiting.
    async fn fast_track_while_waiting(
        &self,
        tenant: &TenantId,
        c: &Conversation,
        m: &events::CustomerMessage,
    ) -> Result<(), EngineError> {
        let now = clock::now();
        let Some(op) = fast_track::redeem(self, tenant, c.customer.id, m, now).await? else { return Ok(()) };
        let settings = self.cache.routing_settings(tenant);
        let preference = Preference {
            operator: op,
            until: now.saturating_add(settings.known_operator_wait),
            reason: PreferenceReason::FastTrack,
        };
        self.apply(tenant, c.id, None, |cur| {
            Ok((cur.status == Status::Queued).then(|| Command::Prefer(preference.clone())))
        })
        .await?;
        self.try_dispatch(tenant, c.id, false).await?;
        Ok(())
    }

    /// The customer's operator from before, if they are within the tenant's window and can
    /// take new work (if they are away or gone, the customer does not wait for them).
    async fn known_operator(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        channel: Channel,
        settings: &RoutingSettings,
        now: Timestamp,
    ) -> Result<Option<Preference>, EngineError> {
        let Some(window) = settings.known_operator_window else { return Ok(None) };
        let Some((op, at)) = self.log.last_operator(tenant, customer).await? else { return Ok(None) };
        if now.since(at) > window {
            return Ok(None);
        }
        let Some(model) = self.cache.operator_model(tenant, op.as_str()) else { return Ok(None) };
        if model.disabled || model.capacity_for(channel) == 0 {
            return Ok(None);
        }
        let presence = self.redis.presence(tenant, &op, now, weights(settings)).await?;
        if presence.status != OperatorStatus::Online || !presence.connected {
            return Ok(None);
        }
        Ok(Some(Preference {
            operator: op,
            until: now.saturating_add(settings.known_operator_wait),
            reason: PreferenceReason::KnownOperator,
        }))
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

    /// Closes a conversation; the customer's next message opens a new one.
    pub async fn close(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        by: Actor,
        reason: String,
    ) -> Result<Conversation, EngineError> {
        let c = self
            .apply(tenant, id, None, |_| Ok(Some(Command::Close { by: by.clone(), reason: reason.clone() })))
            .await?
            .conversation();
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

    /// Records an operator's reply (already on its way to the customer) in the log.
    pub async fn operator_message(&self, tenant: &TenantId, message: Message) -> Result<(), EngineError> {
        let id = message.conversation;
        self.apply(tenant, id, None, |_| Ok(Some(Command::RecordOperatorMessage(message.clone())))).await?;
        Ok(())
    }

    /// Records a report on a message Parley sent. Parley's sender names the message; a
    /// provider's report names only the provider's id, mapped back through the sender's
    /// record of it — a report on a message Parley did not send (or whose record is gone)
    /// is dropped with a note. Returns whether it was recorded.
    pub async fn delivery_receipt(&self, r: &events::DeliveryReceipt) -> Result<bool, EngineError> {
        let invalid = |e: &dyn std::fmt::Display| EngineError::Invalid(format!("delivery receipt: {e}"));
        let tenant = TenantId::parse(&r.tenant_id).map_err(|e| invalid(&e))?;
        let state = match v1::DeliveryState::try_from(r.state) {
            Ok(v1::DeliveryState::Unspecified) | Err(_) => return Err(invalid(&format!("state {}", r.state))),
            Ok(s) => convert::from_delivery_state(s as i32),
        };
        let (conversation, message) = if r.message_id.is_empty() {
            match self.redis.provider_message(&tenant, &r.channel_config_id, &r.provider_message_id).await? {
                Some(found) => found,
                None => {
                    tracing::info!(
                        tenant = %tenant,
                        channel_config = %r.channel_config_id,
                        provider_message = %r.provider_message_id,
                        "receipt for a message Parley has no record of sending; dropped"
                    );
                    return Ok(false);
                }
            }
        } else {
            (
                ConversationId::parse(&r.conversation_id).map_err(|e| invalid(&e))?,
                MessageId::parse(&r.message_id).map_err(|e| invalid(&e))?,
            )
        };
        let reason = match (r.error_code.is_empty(), r.error_description.is_empty()) {
            (true, true) => String::new(),
            (false, true) => r.error_code.clone(),
            (true, false) => r.error_description.clone(),
            (false, false) => format!("{}: {}", r.error_code, r.error_description),
        };
        let at = r
            .state_time
            .as_ref()
            .or(r.receive_time.as_ref())
            .map_or_else(clock::now, |t| convert::from_timestamp(Some(t)));
        let change = DeliveryChange { message, state, reason, at };
        // A report that names the message itself (Parley's sender, the web chat's reader)
        // also names its recipient: it must be the conversation's customer, so one visitor
        // cannot mark another's messages read.
        let recipient = (!r.message_id.is_empty() && !r.recipient.is_empty()).then_some(r.recipient.as_str());
        let record = |c: &Conversation| match recipient {
            Some(to) if to != c.customer.address => {
                Err(invalid(&format!("recipient {to:?} is not the customer of conversation {}", c.id)))
            }
            _ => Ok(Some(Command::RecordDelivery(change.clone()))),
        };
        match self.apply(&tenant, conversation, None, record).await {
            Ok(_) => Ok(true),
            Err(EngineError::NotFound(id)) => {
                tracing::warn!(conversation = %id, "receipt for a conversation routing does not know; dropped");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Tells the owner of a conversation that its customer is typing (nothing is recorded:
    /// it is a passing state). The desk event carries the conversation's current version, so
    /// a desk that orders events by it does not drop it.
    pub async fn customer_typing(&self, t: &events::CustomerTyping) -> Result<(), EngineError> {
        let invalid = |e: &dyn std::fmt::Display| EngineError::Invalid(format!("customer typing: {e}"));
        let tenant = TenantId::parse(&t.tenant_id).map_err(|e| invalid(&e))?;
        let id = ConversationId::parse(&t.conversation_id).map_err(|e| invalid(&e))?;
        let (c, version) = match self.memory.state(&tenant, id) {
            Some(known) => known,
            None => match self.log.load(&tenant, id).await? {
                Some(l) => (l.conversation, l.sequence),
                None => return Ok(()),
            },
        };
        if c.customer.address != t.customer_address {
            return Err(invalid(&format!("{:?} is not the customer of conversation {id}", t.customer_address)));
        }
        let Status::Assigned { operator } = &c.status else { return Ok(()) };
        let event = v1::DeskEvent {
            sequence: 0,
            event_time: t.time,
            conversation_version: version,
            kind: Some(v1::desk_event::Kind::Typing(v1::Typing {
                conversation_id: id.to_string(),
                display_name: String::new(),
            })),
        };
        let subject = parley_nats::topology::desk_subject(&tenant, operator);
        self.publisher
            .publish(subject, &clock::new_id().to_string(), operator.as_str(), &event)
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        Ok(())
    }

    /// A queue's configuration in domain form (a missing one requires nothing).
    pub fn queue_config(&self, tenant: &TenantId, queue: &QueueId) -> Arc<Queue> {
        self.cache.queue_model(tenant, queue.as_str()).unwrap_or_else(|| {
            Arc::new(Queue {
                tenant: tenant.clone(),
                id: queue.clone(),
                display_name: queue.to_string(),
                required_skills: Vec::new(),
                language: None,
                priority: 0,
                offer_timeout: None,
                selection: Selection::LeastOccupied,
                aging_delay: None,
                max_wait: None,
                overflow: None,
                expansion: Vec::new(),
                business_hours: None,
                after_hours: None,
            })
        })
    }

    /// What a waiting conversation needs now: its queue's requirements (or its own, after
    /// a transfer to a skill) plus its own, relaxed for the time it has waited in the queue;
    /// nothing at all once past a maximum wait with nowhere to overflow.
    pub fn requirements(&self, c: &Conversation, queue: &Queue, now: Timestamp) -> Requirements {
        let waited = now.since(c.queue_enter);
        if queue.overflow.is_none() && queue.max_wait.is_some_and(|m| waited >= m) {
            return Requirements::none();
        }
        let base = if c.replace_queue_requirements { Requirements::default() } else { queue.requirements() };
        base.merged(&c.requirements).expanded(&queue.expansion, waited)
    }

    /// The request the policy decides: requirements, strategy, preference, round robin.
    pub async fn request_for(
        &self,
        tenant: &TenantId,
        c: &Conversation,
        queue: &Queue,
        now: Timestamp,
    ) -> Result<Request, EngineError> {
        let mut request = Request::new(c.channel, self.requirements(c, queue, now));
        request.excluded = c.declined_by.clone();
        request.selection = queue.selection;
        if let Some(p) = c.preference.as_ref().filter(|p| p.until > now) {
            request.only = self.preferred(tenant, p);
            // A fast-track code is the operator's own invitation: it goes to them (or their
            // team) whatever the queue requires. A known operator must still fit.
            if matches!(p.reason, PreferenceReason::FastTrack | PreferenceReason::FastTrackTeam) {
                request.requirements = Requirements::default();
            }
        }
        if queue.selection == Selection::RoundRobin {
            request.last_chosen = self.redis.last_chosen(tenant, &queue.id).await?;
        }
        Ok(request)
    }

    /// Who a conversation waiting with preference `p` may go to: the operator, or for the
    /// team stage of a fast track, the other members of their team (the operator had
    /// their turn).
    fn preferred(&self, tenant: &TenantId, p: &Preference) -> Vec<OperatorId> {
        if p.reason != PreferenceReason::FastTrackTeam {
            return vec![p.operator.clone()];
        }
        let team = self.cache.operator_model(tenant, p.operator.as_str()).and_then(|o| o.team.clone());
        let mut members: Vec<OperatorId> = self
            .cache
            .operator_models(tenant)
            .iter()
            .filter(|o| team.is_some() && o.team == team && o.id != p.operator)
            .map(|o| o.id.clone())
            .collect();
        members.sort();
        if members.is_empty() {
            members.push(p.operator.clone());
        }
        members
    }

    /// What ends a conversation's wait for particular operators: a fast track whose
    /// operator has a team waits for that team next; otherwise the queue takes over.
    fn end_of_wait(&self, tenant: &TenantId, c: &Conversation, now: Timestamp) -> Command {
        let Some(p) = &c.preference else { return Command::EndPreference };
        if p.reason == PreferenceReason::FastTrack {
            let team = self.cache.operator_model(tenant, p.operator.as_str()).and_then(|o| o.team.clone());
            let has_mates = team.is_some()
                && self.cache.operator_models(tenant).iter().any(|o| o.team == team && o.id != p.operator);
            if has_mates {
                let wait = self.cache.routing_settings(tenant).known_operator_wait;
                return Command::Prefer(Preference {
                    operator: p.operator.clone(),
                    until: now.saturating_add(wait),
                    reason: PreferenceReason::FastTrackTeam,
                });
            }
        }
        Command::EndPreference
    }

    /// Views of the given operators for a channel.
    async fn views(
        &self,
        tenant: &TenantId,
        models: &[Arc<Operator>],
        channel: Channel,
        now: Timestamp,
    ) -> Result<Vec<OperatorView>, EngineError> {
        let ids: Vec<OperatorId> = models.iter().map(|m| m.id.clone()).collect();
        let settings = self.cache.routing_settings(tenant);
        let snapshots = self.redis.snapshot(tenant, &ids, channel, now, weights(&settings)).await?;
        Ok(models.iter().zip(snapshots).map(|(o, s)| view(o, s, &settings, channel, now)).collect())
    }

    /// Ranks `from..from + count` of an availability index as views, read in one round
    /// trip, and how many the index listed (operators the configuration no longer has are
    /// left out of the views).
    async fn page_views(
        &self,
        tenant: &TenantId,
        channel: Channel,
        index: Option<&SkillId>,
        (from, count): (usize, usize),
        now: Timestamp,
    ) -> Result<(usize, Vec<OperatorView>), EngineError> {
        let settings = self.cache.routing_settings(tenant);
        let page = self.redis.shortlist_snapshot(tenant, channel, index, from, count, now, weights(&settings)).await?;
        let listed = page.len();
        let views = page
            .into_iter()
            .filter_map(|(id, s)| {
                let o = self.cache.operator_model(tenant, id.as_str())?;
                Some(view(&o, s, &settings, channel, now))
            })
            .collect();
        Ok((listed, views))
    }

    /// Views of the operators a request would be decided over, at most `max` of them (all of
    /// a tenant that small, else the head of the availability index).
    pub async fn candidate_views(
        &self,
        tenant: &TenantId,
        request: &Request,
        max: usize,
        now: Timestamp,
    ) -> Result<Vec<OperatorView>, EngineError> {
        let models: Vec<Arc<Operator>> = match request.only.is_empty() {
            false => self.only_models(tenant, request),
            true if self.cache.operator_count(tenant) <= max => self.cache.operator_models(tenant),
            true => return Ok(self.page_views(tenant, request.channel, None, (0, max), now).await?.1),
        };
        self.views(tenant, &models, request.channel, now).await
    }

    /// The operators a conversation waits for.
    fn only_models(&self, tenant: &TenantId, request: &Request) -> Vec<Arc<Operator>> {
        self.cache.operator_models_of(tenant, &request.only)
    }

    /// Decides for a request: over the operator(s) it waits for, over every operator of a
    /// small tenant, else over shortlists from the availability index of its rarest
    /// required skill, a page at a time.
    pub async fn decide_for(
        &self,
        tenant: &TenantId,
        request: &Request,
        now: Timestamp,
    ) -> Result<(Decision, Vec<OperatorView>), EngineError> {
        if !request.only.is_empty() {
            let models = self.only_models(tenant, request);
            let views = self.views(tenant, &models, request.channel, now).await?;
            return Ok((decide(request, &views), views));
        }
        // Cost must not grow with the size of the tenant: beyond a shortlist's worth of
        // operators, only the heads of the availability index are looked at.
        if self.cache.operator_count(tenant) <= SHORTLIST {
            let all = self.cache.operator_models(tenant);
            let views = self.views(tenant, &all, request.channel, now).await?;
            return Ok((decide(request, &views), views));
        }
        let skills: Vec<&SkillId> = request.requirements.skills.iter().map(|s| &s.skill).collect();
        let index = match skills.as_slice() {
            [] => None,
            [only] => Some((*only).clone()),
            _ => {
                let sizes = self.redis.index_sizes(tenant, request.channel, &skills).await?;
                skills.iter().zip(sizes).min_by_key(|(_, n)| *n).map(|(s, _)| (*s).clone())
            }
        };
        let mut last = (decide(request, &[]), Vec::new());
        for page in 0..MAX_PAGES {
            let ranks = (page * SHORTLIST, SHORTLIST);
            let (listed, views) = self.page_views(tenant, request.channel, index.as_ref(), ranks, now).await?;
            if listed == 0 {
                break;
            }
            let decision = decide(request, &views);
            let done = decision.chosen.is_some() || listed < SHORTLIST;
            last = (decision, views);
            if done {
                break;
            }
        }
        Ok(last)
    }

    /// Tries to give a waiting conversation to the best operator now. With `record_wait`, a
    /// decision that finds nobody is recorded too (once, when the conversation opens).
    pub async fn try_dispatch(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        record_wait: bool,
    ) -> Result<Dispatched, EngineError> {
        for _ in 0..4 {
            let Some(loaded) = self.log.load(tenant, id).await? else { return Ok(Dispatched::NotWaiting) };
            self.memory.remember(&loaded.conversation, loaded.sequence);
            let c = &loaded.conversation;
            if c.status != Status::Queued {
                // A stale queue entry (Redis behind the log): drop it.
                self.redis.dequeue(tenant, &c.queue, id).await?;
                return Ok(Dispatched::NotWaiting);
            }
            // An enqueue lost in a crash is put back by the repair from the log, not here: a
            // queue write after this read could land behind a dequeue and leave an entry of
            // a conversation that no longer waits.
            match self.pick(tenant, loaded, record_wait).await? {
                Pick::Done(d) => return Ok(d),
                Pick::Again => continue,
                Pick::Claimed(claim) => return self.finish(tenant, claim).await,
            }
        }
        Ok(Dispatched::Nobody)
    }

    /// Decides for a waiting conversation and claims the chosen operator's seat in Redis:
    /// the part of a dispatch that must happen in serving order. [`Engine::finish`] records
    /// it.
    async fn pick(&self, tenant: &TenantId, loaded: Loaded, record_wait: bool) -> Result<Pick, EngineError> {
        let c = loaded.conversation;
        let id = c.id;
        let now = clock::now();
        let queue = self.queue_config(tenant, &c.queue);
        if !queue.is_open(now) && c.preference.is_none() {
            return Ok(Pick::Done(Dispatched::Nobody));
        }
        let request = self.request_for(tenant, &c, &queue, now).await?;
        let (decision, views) = self.decide_for(tenant, &request, now).await?;
        let explained = Explained {
            strategy: c.preference.as_ref().filter(|p| p.until > now).map(|p| p.reason.as_str()),
            requirements: request.requirements.clone(),
            decision,
        };
        let Some(chosen) = explained.decision.chosen.clone() else {
            // Waiting for operators none of whom can take new work at all (away,
            // gone): stop waiting at once (the team, then the queue, takes over).
            if !request.only.is_empty() {
                let unreachable = request.only.iter().all(|only| {
                    explained.decision.assessments.iter().find(|a| &a.operator == only).is_none_or(|a| {
                        matches!(
                            a.excluded,
                            Some(
                                Exclusion::Status(_)
                                    | Exclusion::Disconnected
                                    | Exclusion::Disabled
                                    | Exclusion::NoCapacity
                            )
                        )
                    })
                });
                if unreachable {
                    self.apply(tenant, id, None, |cur| {
                        Ok((cur.status == Status::Queued).then(|| self.end_of_wait(tenant, cur, clock::now())))
                    })
                    .await?;
                    return Ok(Pick::Again);
                }
            }
            if record_wait {
                let t = Transition { next: c.clone(), effects: Vec::new(), duplicate: false };
                match self.commit(tenant, Some(&c), t, loaded.sequence, Some(&explained), Vec::new(), None, now).await {
                    Ok(_) | Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(Pick::Done(Dispatched::Nobody));
        };
        let seat = self.seat(tenant, &chosen, c.channel);
        // What the decision saw them able to fill (less than their seats while ramping up).
        let limit = views.iter().find(|v| v.id == chosen).map_or(seat.capacity, |v| v.capacity);
        match self.redis.claim(&seat.ctx(), id, &c.queue, true, limit, now).await? {
            Ok(()) => {}
            Err(ClaimRefused::Gone) => return Ok(Pick::Done(Dispatched::NotWaiting)),
            // Going ahead on that hold would let the pending release free a seat the new
            // offer or assignment sits in: the next pass tries again.
            Err(ClaimRefused::Held) => return Ok(Pick::Done(Dispatched::Later)),
            // The snapshot was stale (the operator filled up or left): decide again.
            Err(_) => return Ok(Pick::Again),
        }
        Ok(Pick::Claimed(Claim { id, chosen, seat, explained, offer_timeout: queue.offer_timeout }))
    }

    /// Records a claimed seat as an offer or assignment in the conversation's log; gives the
    /// seat back if the conversation changed meanwhile or the record failed.
    async fn finish(&self, tenant: &TenantId, claim: Claim) -> Result<Dispatched, EngineError> {
        let Claim { id, chosen, seat, explained, offer_timeout } = claim;
        // Part of the trace the customer's message was queued in, when this replica saw it.
        let span = tracing::info_span!("routing assign", conversation = %id, operator = %chosen);
        if let Some(tp) = self.memory.take_trace(tenant, id) {
            parley_kit::telemetry::set_parent_from_traceparent(&span, Some(&tp));
        }
        let result = self
            .apply(tenant, id, Some(&explained), |cur| {
                if cur.status != Status::Queued {
                    return Ok(None);
                }
                Ok(Some(match offer_timeout {
                    Some(timeout) => Command::Offer { operator: chosen.clone(), timeout },
                    None => Command::Assign { operator: chosen.clone() },
                }))
            })
            .instrument(span)
            .await;
        match result {
            Ok(Applied::Done(_)) => Ok(Dispatched::To(chosen)),
            Ok(Applied::Skipped(cur)) | Ok(Applied::Duplicate(cur)) => {
                if cur.status.holder() != Some(&chosen) {
                    self.redis.release(&seat.ctx(), id, clock::now()).await?;
                }
                Ok(Dispatched::NotWaiting)
            }
            Err(e) => {
                // The assignment did not happen: give the seat back (the conversation
                // never left its queue).
                self.redis.release(&seat.ctx(), id, clock::now()).await?;
                Err(e)
            }
        }
    }

    /// One pass over a tenant: expired offers, due timers, then the heads of every open
    /// queue in serving order (priority, aging, wait).
    ///
    /// Picks (decide + claim) run one at a time in serving order, so an earlier
    /// conversation is never beaten to a seat by a later one. Recording a pick in the log
    /// (the slow part) runs beside dispatching ([`Finishing`]): the pass ends once its picks
    /// are claimed. When a pass may have left assignable work behind (it claimed every head
    /// it looked at, and the queue had more), each recording wakes the dispatcher as it ends.
    pub async fn dispatch_tenant(self: &Arc<Self>, tenant: &TenantId) -> Result<(), EngineError> {
        let prefetched = self.prefetch.take(tenant);
        self.prefetch.pass_boundary();
        let result = self.pass(tenant, prefetched).await;
        self.prefetch.pass_boundary();
        result
    }

    /// The reads a pass starts with, all in one round trip on the multiplexed connection.
    async fn pass_reads(&self, tenant: &TenantId) -> Result<PassReads, EngineError> {
        let now = clock::now();
        let queues = self.cache.queue_models(tenant);
        let (offers, timers, heads) = tokio::join!(
            self.redis.due_offers(tenant, now, 100),
            self.redis.due_timers(tenant, now, 200),
            self.heads_of_every_queue(tenant, &queues)
        );
        Ok(PassReads { now, queues, offers: offers?, timers: timers?, heads: heads? })
    }

    async fn heads_of_every_queue(
        &self,
        tenant: &TenantId,
        queues: &[Arc<Queue>],
    ) -> Result<Vec<Vec<(ConversationId, f64)>>, EngineError> {
        let reads = queues.iter().map(|q| self.redis.waiting_scored(tenant, &q.id, HEADS_PER_QUEUE));
        Ok(futures_util::future::try_join_all(reads).await?)
    }

    /// Releases a seat and, in the same round trip, takes the reads the pass it wakes will
    /// start from (see [`Prefetch`]).
    async fn release_for_pass(
        &self,
        seat: &Seat,
        id: ConversationId,
        now: Timestamp,
    ) -> Result<(), parley_redis::RedisError> {
        let tenant = &seat.tenant;
        let at = self.prefetch.passes.load(std::sync::atomic::Ordering::SeqCst);
        let ctx = seat.ctx();
        if !at.is_multiple_of(2) {
            // A pass is running: the reads would be stale before the next one starts.
            return self.redis.release(&ctx, id, now).await;
        }
        let (released, reads) = tokio::join!(self.redis.release(&ctx, id, now), self.pass_reads(tenant));
        if let Ok(reads) = reads {
            self.prefetch.reads.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant.clone(), (at, reads));
        }
        released
    }

    /// A dispatch pass over a tenant, from `prefetched` reads if there are any.
    async fn pass(self: &Arc<Self>, tenant: &TenantId, prefetched: Option<PassReads>) -> Result<(), EngineError> {
        let reads = match prefetched {
            Some(reads) => reads,
            None => self.pass_reads(tenant).await?,
        };
        let PassReads { now, queues, offers, timers, mut heads } = reads;
        // Offers and timers that came due are handled first, and the heads read again
        // after them, so a conversation they put back is served in its order.
        if !offers.is_empty() || !timers.is_empty() {
            self.expire_offers(tenant, offers, now).await?;
            self.run_timers(tenant, timers, now).await?;
            heads = self.heads_of_every_queue(tenant, &queues).await?;
        }
        let mut waiting = Vec::new();
        let mut more_waiting = false;
        for (queue, heads) in queues.iter().zip(heads) {
            let open = |q: &QueueId| self.cache.queue_model(tenant, q.as_str()).is_some_and(|q| q.is_open(now));
            if let Some(after) = queue.after_hours.as_ref().filter(|after| !queue.is_open(now) && open(after)) {
                // Closed since these customers arrived: they go where the queue sends its
                // after-hours work (if that is open), keeping their wait and priority.
                if self.close_queue(tenant, &queue.id, &heads, after).await? > 0 && heads.len() == HEADS_PER_QUEUE {
                    self.wake.notify_one();
                }
                continue;
            }
            more_waiting |= heads.len() == HEADS_PER_QUEUE;
            for (id, score) in heads {
                // Being recorded by an earlier pass: not waiting any more.
                if self.finishing.is_claimed(tenant, id) {
                    continue;
                }
                // The score holds the priority and the wait start.
                let (priority, wait_start) = decode_score(score);
                waiting.push(Waiting { conversation: id, priority, wait_start, aging_delay: queue.aging_delay });
            }
        }
        serve_order(&mut waiting, now);
        self.recall(tenant, waiting.iter().map(|w| w.conversation)).await;
        // A kind of conversation: its channel, required skills and language.
        type Kind = (Channel, Vec<(SkillId, u8)>, Option<String>);
        // Once nobody can take a conversation of a kind, the next of that kind is skipped.
        let mut exhausted: HashSet<Kind> = HashSet::new();
        let mut claims = 0usize;
        let pass = Arc::new(PassEnd::default());
        for w in waiting {
            let remembered = self.memory.state(tenant, w.conversation);
            let key = match &remembered {
                Some((c, _)) if c.status == Status::Queued && c.declined_by.is_empty() && c.preference.is_none() => {
                    let queue = self.queue_config(tenant, &c.queue);
                    let r = self.requirements(c, &queue, now);
                    Some((c.channel, r.skills.iter().map(|s| (s.skill.clone(), s.proficiency)).collect(), r.language))
                }
                _ => None,
            };
            if key.as_ref().is_some_and(|k| exhausted.contains(k)) {
                continue;
            }
            // What this replica last saw of a waiting conversation is enough to pick with:
            // recording checks it against the log.
            let picked = match remembered {
                Some((conversation, sequence)) if conversation.status == Status::Queued => {
                    self.pick(tenant, Loaded { conversation, sequence }, false).await
                }
                _ => Ok(Pick::Again),
            };
            let outcome = match picked {
                Ok(Pick::Claimed(claim)) => {
                    claims += 1;
                    self.finish_beside(tenant, claim, pass.clone()).await;
                    continue;
                }
                Ok(Pick::Done(d)) => Ok(d),
                Ok(Pick::Again) => self.try_dispatch(tenant, w.conversation, false).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Dispatched::Nobody) => {
                    if let Some(k) = key {
                        exhausted.insert(k);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(conversation = %w.conversation, error = %e, "dispatch failed"),
            }
        }
        pass.end(more_waiting && claims > 0 && exhausted.is_empty(), &self.wake);
        tracing::debug!(tenant = %tenant, claims, more_waiting, took_ms = clock::now().since(now).as_millis() as u64, "dispatch pass");
        Ok(())
    }

    /// Records a claimed seat beside dispatching (at most [`FINISHING`] at once: beyond
    /// that, the pass waits for a slot); its end may wake the dispatcher ([`PassEnd`]).
    async fn finish_beside(self: &Arc<Self>, tenant: &TenantId, claim: Claim, pass: Arc<PassEnd>) {
        let key = (tenant.clone(), claim.id);
        self.finishing.claimed.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone());
        // The semaphore is never closed, so acquiring only waits.
        let Ok(slot) = self.finishing.slots.clone().acquire_owned().await else { return };
        let engine = self.clone();
        self.finishing.tasks.spawn(async move {
            let id = claim.id;
            if let Err(e) = engine.finish(&key.0, claim).await {
                tracing::warn!(conversation = %id, error = %e, "recording an assignment failed");
            }
            engine.finishing.claimed.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            drop(slot);
            pass.finished(&engine.wake);
        });
    }

    /// Reads from the log, all at once, the states of the given conversations this replica
    /// does not remember (evicted, or changed by another replica), so picking them in
    /// serving order waits on no read. A failed read leaves the pick to read it again.
    async fn recall(&self, tenant: &TenantId, ids: impl Iterator<Item = ConversationId>) {
        let missing: Vec<ConversationId> = ids.filter(|id| !self.memory.knows(tenant, *id)).collect();
        futures_util::stream::iter(missing)
            .for_each_concurrent(FINISHING, |id| async move {
                if let Ok(Some(l)) = self.log.load(tenant, id).await {
                    self.memory.remember(&l.conversation, l.sequence);
                }
            })
            .await;
    }

    /// Moves the given conversations of a closed queue to its after-hours queue; returns
    /// how many moved.
    async fn close_queue(
        &self,
        tenant: &TenantId,
        from: &QueueId,
        heads: &[(ConversationId, f64)],
        to: &QueueId,
    ) -> Result<usize, EngineError> {
        let mut moved = 0;
        for (id, _) in heads {
            let result = self
                .apply(tenant, *id, None, |cur| {
                    Ok((cur.status == Status::Queued && &cur.queue != to)
                        .then(|| Command::MoveQueue { to: to.clone(), reason: QueueReason::AfterHours }))
                })
                .await;
            match result {
                Ok(Applied::Done(_)) => moved += 1,
                Ok(_) => {}
                // A stale entry with no conversation behind it.
                Err(EngineError::NotFound(_)) => self.redis.dequeue(tenant, from, *id).await?,
                Err(e) => tracing::warn!(conversation = %id, error = %e, "moving to the after-hours queue failed"),
            }
        }
        Ok(moved)
    }

    /// Every tenant, a pass each (a tenant with a deep backlog is woken again by its own
    /// recordings, so it does not hold up the others).
    pub async fn dispatch_all(self: &Arc<Self>) {
        let tenants: Vec<TenantId> =
            self.cache.tenants().iter().filter(|t| !t.disabled).filter_map(|t| TenantId::parse(&t.id).ok()).collect();
        for tenant in tenants {
            if let Err(e) = self.dispatch_tenant(&tenant).await {
                tracing::warn!(tenant = %tenant, error = %e, "dispatch pass failed");
            }
        }
    }

    /// Moves the given expired offers back to their queue (the operator is not offered it
    /// again).
    async fn expire_offers(
        &self,
        tenant: &TenantId,
        due: Vec<ConversationId>,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        for id in due {
            let mut missed_by = None;
            let result = self
                .apply(tenant, id, None, |cur| match &cur.status {
                    Status::Offered { expires, operator } if *expires <= clock::now() => {
                        missed_by = Some(operator.clone());
                        Ok(Some(Command::ExpireOffer))
                    }
                    _ => Ok(None),
                })
                .await;
            match result {
                // Back in its queue: the pass that follows offers it on, in serving order.
                Ok(Applied::Done(_)) => {
                    if let Some(op) = missed_by {
                        self.missed_offer(tenant, &op).await?;
                    }
                }
                // Answered, or expired and offered again by another replica meanwhile: the
                // deadline set follows what the log says now.
                Ok(Applied::Skipped(cur)) | Ok(Applied::Duplicate(cur)) => match cur.status {
                    Status::Offered { expires, .. } => self.redis.track_offer(tenant, id, expires).await?,
                    _ => self.redis.untrack_offer(tenant, id, now).await?,
                },
                Err(EngineError::NotFound(_)) => self.redis.untrack_offer(tenant, id, now).await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// An operator let an offer expire. One who lets the tenant's limit of offers in a row
    /// expire has stopped answering: they are set away (their other offers go back to
    /// their queues) until they come back.
    async fn missed_offer(&self, tenant: &TenantId, op: &OperatorId) -> Result<(), EngineError> {
        let limit = self.cache.routing_settings(tenant).away_after_missed_offers;
        let missed = self.redis.note_missed_offer(tenant, op).await?;
        if limit == 0 || missed < limit {
            return Ok(());
        }
        tracing::info!(tenant = %tenant, operator = %op, missed, "operator stopped answering offers; set away");
        self.set_status(tenant, op, OperatorStatus::Away, &format!("not answering: {missed} offers in a row expired"))
            .await?;
        self.reroute(tenant, op, false).await?;
        self.redis.clear_missed_offers(tenant, op).await?;
        Ok(())
    }

    /// The given due timers: a wait for one operator ends (the queue takes over, priority and wait
    /// kept); a queue's maximum wait is reached (overflow, or anyone may take it).
    async fn run_timers(
        &self,
        tenant: &TenantId,
        due: Vec<(TimerKind, ConversationId)>,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        for (kind, id) in due {
            let result = match kind {
                TimerKind::Preference => {
                    self.apply(tenant, id, None, |cur| {
                        let now = clock::now();
                        let due = cur.preference.as_ref().is_some_and(|p| p.until <= now);
                        Ok((cur.status == Status::Queued && due).then(|| self.end_of_wait(tenant, cur, now)))
                    })
                    .await
                }
                TimerKind::MaxWait => {
                    self.apply(tenant, id, None, |cur| {
                        if cur.status != Status::Queued {
                            return Ok(None);
                        }
                        let queue = self.queue_config(tenant, &cur.queue);
                        Ok(queue.overflow.clone().map(|to| Command::MoveQueue { to, reason: QueueReason::Overflow }))
                    })
                    .await
                }
            };
            match result {
                Ok(Applied::Done(_))
                | Ok(Applied::Skipped(_))
                | Ok(Applied::Duplicate(_))
                | Err(EngineError::NotFound(_)) => {
                    // Whatever happened, this timer is spent; a new state may have set it
                    // again for later (a team's wait after the operator's, an overflow
                    // queue's own maximum wait), which stays. The conversation is
                    // dispatched by the pass that follows, in serving order: dispatching it
                    // here would put it ahead of higher-priority conversations whenever a
                    // seat is free.
                    self.redis.spend_timer(tenant, kind, id, now).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sets an operator's status: durably (key-value), then in Redis. Going offline hands
    /// back their pending offers and, if the tenant reroutes, their open conversations.
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
        let seats = self.seats(tenant, op);
        let ctxs: Vec<OpCtx<'_>> = seats.iter().map(Seat::ctx).collect();
        self.redis.set_status(tenant, op, status, reason, now, &ctxs).await?;
        self.tell_presence(tenant, op, &format!("status:{op}:{}", clock::new_id())).await?;
        if status == OperatorStatus::Online {
            self.wake.notify_one();
        }
        if status == OperatorStatus::Offline {
            let settings = self.cache.routing_settings(tenant);
            self.reroute(tenant, op, settings.reroute_after.is_some()).await?;
        }
        Ok(())
    }

    /// Tells the tenant's team sessions (supervisors) the operator's presence as Redis has
    /// it now.
    async fn tell_presence(&self, tenant: &TenantId, op: &OperatorId, dedupe_id: &str) -> Result<(), EngineError> {
        let p = self.redis.status(tenant, op, clock::now()).await?;
        let now = TeamPresence { status: p.status, reason: &p.reason, connected: p.connected, since: p.since };
        self.publisher
            .presence(tenant, op, now, dedupe_id)
            .await
            .map_err(|e| EngineError::Unavailable(format!("presence not told: {e}")))?;
        Ok(())
    }

    /// Puts an operator's offers (and, with `open_too`, their open conversations) back in
    /// their queues, priority and waiting time kept.
    pub async fn reroute(&self, tenant: &TenantId, op: &OperatorId, open_too: bool) -> Result<Rerouted, EngineError> {
        let mut r = Rerouted::default();
        for channel in Channel::ALL {
            for held in self.redis.held(tenant, op, channel).await? {
                r.held += 1;
                let Ok(id) = ConversationId::parse(&held) else { continue };
                let result = self
                    .apply(tenant, id, None, |cur| match &cur.status {
                        Status::Offered { operator, .. } if operator == op => Ok(Some(Command::Requeue)),
                        Status::Assigned { operator } if operator == op && open_too => Ok(Some(Command::Requeue)),
                        _ => Ok(None),
                    })
                    .await;
                match result {
                    Ok(Applied::Done(_)) => r.moved += 1,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(conversation = %id, error = %e, "rerouting failed"),
                }
            }
        }
        // Back in their queues with their priority and wait: the pass this wakes offers
        // them on in serving order, not ahead of more urgent conversations waiting now.
        if r.moved > 0 {
            self.wake.notify_one();
        }
        Ok(r)
    }

    /// Operators whose desks are gone (no live session): their offers go back at once,
    /// their open conversations once the desk has been gone the tenant's `reroute_after`.
    pub async fn reroute_gone(&self, tenant: &TenantId, now: Timestamp, full: bool) -> Result<(), EngineError> {
        let settings = self.cache.routing_settings(tenant);
        // Each second, the operators whose desks have all expired; now and then, everyone
        // holding work (which also finds those whose sessions Redis lost).
        let mut holders: Vec<OperatorId> = Vec::new();
        if full {
            for channel in Channel::ALL {
                holders.extend(self.redis.holders(tenant, channel).await?);
            }
            holders.sort();
            holders.dedup();
        } else {
            holders = self.redis.gone_desks(tenant, now).await?;
        }
        let expiries = self.redis.session_expiries(tenant, &holders).await?;
        for (op, expiry) in holders.iter().zip(expiries) {
            let gone_since = match expiry {
                Some(t) if t > now => continue,
                Some(t) => t,
                None => {
                    // No session on record (Redis lost it): gone from now on.
                    self.redis.mark_gone(tenant, op, now).await?;
                    now
                }
            };
            // Supervisors hear once that the last desk closed or expired (the id makes a
            // second routing replica's telling of it the same message).
            if !self.redis.gone_told(tenant, op, gone_since).await? {
                self.tell_presence(tenant, op, &format!("gone:{op}:{}", gone_since.as_millis())).await?;
                self.redis.tell_gone(tenant, op, gone_since).await?;
            }
            let open_too = settings.reroute_after.is_some_and(|after| now.since(gone_since) >= after);
            let r = self.reroute(tenant, op, open_too).await?;
            if r.moved > 0 {
                tracing::info!(tenant = %tenant, operator = %op, moved = r.moved, open_too, "rerouted the work of a gone desk");
            }
            // Nothing of theirs left to hand back: stop looking at them every second.
            if r.moved == r.held {
                self.redis.forget_desk(tenant, op, gone_since).await?;
            }
        }
        Ok(())
    }

    /// The conversations an operator holds, read from their reservations.
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

    /// Estimated seconds until a conversation at `position` in `queue` is served (0 when
    /// the queue has not served enough lately to tell).
    pub async fn estimated_wait(&self, tenant: &TenantId, queue: &QueueId, position: u32) -> Result<u32, EngineError> {
        let rate = self.redis.service_rate(tenant, queue, clock::now()).await?;
        Ok(rate.filter(|r| *r > 0.0).map_or(0, |r| (f64::from(position) / r).ceil() as u32))
    }

    /// Rebuilds Redis from the durable side if it lost its data (no `parley:rebuilt`).
    pub async fn rebuild_if_needed(&self, js: &async_nats::jetstream::Context) -> anyhow::Result<bool> {
        if self.redis.is_rebuilt().await? {
            return Ok(false);
        }
        tracing::warn!("redis has no routing state; rebuilding from JetStream");
        crate::rebuild::run(self, js).await?;
        self.redis.mark_rebuilt(clock::now()).await?;
        Ok(true)
    }

    /// Gives back reservations nobody holds any more (claimed over `grace` ago by a router
    /// that died before recording them, or in doubt since a change that gave them back and
    /// whose release never came), confirms those the log does record, and recomputes every
    /// operator's availability (idle conversations weigh less over time). Runs beside
    /// dispatching, never in its way.
    pub async fn reconcile(&self, grace: Duration) -> Result<(), EngineError> {
        let now = clock::now();
        let before = Timestamp::from_micros(now.as_micros() - grace.as_micros() as i64);
        let mut released = 0;
        // Upkeep, not urgent: it gives way to dispatching every few reads, so a minutely
        // pass over thousands of holds never holds up an assignment.
        let mut steps = 0usize;
        let mut give_way = || {
            steps += 1;
            steps.is_multiple_of(RECONCILE_BURST)
        };
        for tenant in self.cache.tenants() {
            let Ok(tenant) = TenantId::parse(&tenant.id) else { continue };
            for channel in Channel::ALL {
                for op in self.redis.holders(&tenant, channel).await? {
                    let seat = self.seat(&tenant, &op, channel);
                    for id in self.redis.stale_holds(&tenant, &op, channel, before).await? {
                        if give_way() {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        let held = match self.log.load(&tenant, id).await? {
                            Some(l) => l.conversation.status.holder() == Some(&op),
                            None => false,
                        };
                        if held {
                            // Recorded, but its confirmation was lost (a crash or a Redis
                            // error right after the record).
                            self.redis.confirm_hold(&tenant, &op, channel, id).await?;
                        } else {
                            self.redis.release(&seat.ctx(), id, now).await?;
                            released += 1;
                        }
                    }
                    // Only what operators hold weighs differently as time passes (idle
                    // conversations): the availability of those holding nothing stays.
                    if give_way() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if seat.capacity > 0 {
                        self.redis.refresh(&seat.ctx(), now).await?;
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

    /// Takes out of the Redis queues the conversations that do not wait there. An entry is
    /// written after a read of the log (a dispatcher making sure a waiting conversation is
    /// queued, a rebuild pass); when the conversation moved on in between, the entry stays
    /// behind its dequeue, and in a long queue it would inflate the depth and every position
    /// behind it until it reached the head. The log, read again, decides each one not seen
    /// waiting by the pass (one queued again between that read and the removal is put back
    /// by the next pass).
    async fn drop_stale_queue_entries(&self, waiting: &crate::rebuild::Waiting) -> Result<(), EngineError> {
        let mut dropped = 0;
        for tenant in self.cache.tenants() {
            let Ok(tenant) = TenantId::parse(&tenant.id) else { continue };
            for queue in self.cache.queue_models(&tenant) {
                for id in self.redis.waiting(&tenant, &queue.id, usize::MAX).await? {
                    if waiting.contains(&(tenant.clone(), queue.id.clone(), id)) {
                        continue;
                    }
                    let waits_here =
                        self.log.load(&tenant, id).await?.is_some_and(|l| {
                            l.conversation.status == Status::Queued && l.conversation.queue == queue.id
                        });
                    if !waits_here {
                        self.redis.dequeue(&tenant, &queue.id, id).await?;
                        dropped += 1;
                    }
                }
            }
        }
        if dropped > 0 {
            tracing::info!(dropped, "took out queue entries of conversations no longer waiting there");
        }
        Ok(())
    }

    /// Dispatching: every interval, and at once whenever something may let a waiting
    /// conversation be assigned (capacity freed, an operator online, a conversation
    /// queued); first rebuilding Redis if it lost its data (looked at on each interval and
    /// at most every [`REBUILT_CHECK`] when woken, not a round trip per freed seat). At
    /// cancellation, the recordings of claimed seats still running are finished.
    pub async fn run_dispatcher(
        self: Arc<Self>,
        js: async_nats::jetstream::Context,
        interval: Duration,
        token: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut checked: Option<tokio::time::Instant> = None;
        loop {
            let woken = tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(interval) => false,
                _ = self.wake.notified() => true,
            };
            if !woken || checked.is_none_or(|t| t.elapsed() >= REBUILT_CHECK) {
                if let Err(e) = self.rebuild_if_needed(&js).await {
                    tracing::warn!(error = format!("{e:#}"), "rebuild failed; will retry");
                    continue;
                }
                checked = Some(tokio::time::Instant::now());
            }
            self.dispatch_all().await;
        }
        self.finishing.drain().await;
        Ok(())
    }

    /// Upkeep beside dispatching: every second, the work of gone desks is rerouted and
    /// conversations whose Redis side fell behind are repaired; every `reconcile_every`,
    /// reservations are checked against the log; at start and every `repair_every`, Redis
    /// is brought in line with the whole log (what a replica that crashed between writing
    /// a record and updating Redis left behind).
    pub async fn run_maintenance(
        self: Arc<Self>,
        js: async_nats::jetstream::Context,
        reconcile_every: Duration,
        repair_every: Duration,
        token: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut last_reconcile = tokio::time::Instant::now();
        let mut last_repair: Option<tokio::time::Instant> = None;
        let mut first = true;
        loop {
            if last_repair.is_none_or(|t| t.elapsed() >= repair_every) {
                let started = tokio::time::Instant::now();
                let repaired = async {
                    let waiting = crate::rebuild::run(&self, &js).await?;
                    self.drop_stale_queue_entries(&waiting).await?;
                    anyhow::Ok(())
                };
                match repaired.await {
                    Ok(()) => last_repair = Some(tokio::time::Instant::now()),
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "repair from the log failed; will retry"),
                }
                upkeep_took("repair", started);
                self.wake.notify_one();
            }
            let started = tokio::time::Instant::now();
            if let Err(e) = crate::rebuild::repair_listed(&self).await {
                tracing::warn!(error = format!("{e:#}"), "repairing conversations failed; will retry");
            }
            upkeep_took("repair listed", started);
            // Gone desks: each second those whose sessions all expired; with every
            // reconciliation (and at start) everyone holding work.
            let full = first || last_reconcile.elapsed() >= reconcile_every;
            first = false;
            let started = tokio::time::Instant::now();
            for tenant in self.cache.tenants() {
                let Ok(tenant) = TenantId::parse(&tenant.id) else { continue };
                if let Err(e) = self.reroute_gone(&tenant, clock::now(), full).await {
                    tracing::warn!(tenant = %tenant, error = %e, "rerouting gone desks failed");
                }
            }
            upkeep_took(if full { "gone desks (all holders)" } else { "gone desks" }, started);
            if last_reconcile.elapsed() >= reconcile_every {
                last_reconcile = tokio::time::Instant::now();
                if let Err(e) = self.reconcile(Duration::from_secs(10).min(reconcile_every)).await {
                    tracing::warn!(error = %e, "reconcile failed; will retry");
                }
                upkeep_took("reconcile", last_reconcile);
            }
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// What the policy sees of an operator on a channel: the configured operator with their
/// presence and load (capacity ramping up after they came online).
fn view(
    o: &Operator,
    s: parley_redis::OperatorSnapshot,
    settings: &RoutingSettings,
    channel: Channel,
    now: Timestamp,
) -> OperatorView {
    OperatorView {
        id: o.id.clone(),
        status: s.status,
        connected: s.connected,
        disabled: o.disabled,
        skills: o.skills.clone(),
        languages: o.languages.clone(),
        capacity: match (s.status, s.since) {
            (OperatorStatus::Online, Some(since)) => {
                settings.ramped_capacity(o.capacity_for(channel), now.since(since))
            }
            _ => o.capacity_for(channel),
        },
        load: s.load,
        weighted_load_milli: s.weighted_load_milli,
        last_assigned: s.last_assigned,
    }
}

/// Logs how long a step of upkeep took: at info when long enough to matter beside
/// dispatching (to tell which step a latency stall lines up with), else at debug.
fn upkeep_took(step: &str, started: tokio::time::Instant) {
    let took_ms = started.elapsed().as_millis() as u64;
    if took_ms >= 20 {
        tracing::info!(step, took_ms, "upkeep step");
    } else {
        tracing::debug!(step, took_ms, "upkeep step");
    }
}

/// The record id of a transition that applies one message to a conversation: derived from
/// both, so a redelivered message's record is refused by the log's deduplication.
fn message_record_id(conversation: ConversationId, command: &Command) -> Option<uuid::Uuid> {
    let message = match command {
        Command::CustomerMessage(m) | Command::RecordOperatorMessage(m) => m.id,
        // The same report redelivered makes the same record, which the log's deduplication drops.
        Command::RecordDelivery(d) => {
            let parts = ["delivery-record", &conversation.to_string(), &d.message.to_string(), d.state.as_str()];
            return Some(parley_domain::EventId::derive(&parts).as_uuid());
        }
        _ => return None,
    };
    Some(parley_domain::EventId::derive(&["message-record", &conversation.to_string(), &message.to_string()]).as_uuid())
}

/// A queue score back into (priority, wait start): see `parley_policy::queue_score`.
pub fn decode_score(score: f64) -> (i32, Timestamp) {
    let raw = score as i64;
    let millis = raw.rem_euclid(10_000_000_000_000);
    let priority = -((raw - millis) / 10_000_000_000_000);
    (priority as i32, Timestamp::from_millis(millis))
}

fn default_queue() -> QueueId {
    // A valid slug literal.
    QueueId::parse("default").expect("`default` is a valid queue id")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads() -> PassReads {
        PassReads { now: clock::now(), queues: Vec::new(), offers: Vec::new(), timers: Vec::new(), heads: Vec::new() }
    }

    #[test]
    fn prefetched_reads_serve_only_the_next_pass() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let prefetch = Prefetch::default();
        let store = |at: u64| prefetch.reads.lock().expect("lock").insert(tenant.clone(), (at, reads()));
        // Taken while no pass ran: the next pass starts from them, once.
        store(0);
        assert!(prefetch.take(&tenant).is_some());
        assert!(prefetch.take(&tenant).is_none());
        // A pass started since they were taken: its picks may have changed the heads.
        store(0);
        prefetch.pass_boundary();
        assert!(prefetch.take(&tenant).is_none());
        // Taken while that pass ran, which has ended since.
        store(1);
        prefetch.pass_boundary();
        assert!(prefetch.take(&tenant).is_none());
        // Another tenant's reads are not this one's.
        store(2);
        assert!(prefetch.take(&TenantId::parse("other").expect("tenant")).is_none());
        assert!(prefetch.take(&tenant).is_some());
    }

    #[test]
    fn queue_scores_decode_back() {
        for (p, t) in [(0, 1_800_000_000_123), (100, 5), (-100, 1_700_000_000_000), (7, 0)] {
            let score = queue_score(p, Timestamp::from_millis(t));
            assert_eq!(decode_score(score), (p, Timestamp::from_millis(t)));
        }
    }
}
