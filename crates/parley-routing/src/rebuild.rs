//! Rebuilding Redis from the durable side: operator statuses from the presence bucket;
//! queues, offers and capacity reservations from the last record of every conversation in
//! `PARLEY_EVENTS`. Run in full after Redis lost its data, at start and now and then by
//! the maintenance loop; single conversations whose Redis side fell behind are repaired
//! the same way. Every step only adds what is missing, so replicas doing it at the same
//! time, or while routing goes on, do no harm.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::{StreamExt, TryStreamExt};
use parley_domain::{Conversation, ConversationId, OperatorId, QueueId, Sender, Status, TenantId};
use parley_kit::clock;
use parley_nats::conversations::decode_state;
use parley_nats::topology;
use parley_policy::queue_score;
use parley_proto::prost::Message as _;
use parley_proto::{convert, events, v1};
use parley_redis::{TimerKind, activity_entry};

use crate::engine::Engine;

/// The conversations a pass found waiting, by tenant and queue.
pub type Waiting = HashSet<(TenantId, QueueId, ConversationId)>;

/// Adds what Redis misses; returns the conversations it found waiting (for reconciliation,
/// which also takes out what Redis has too much).
pub async fn run(engine: &Engine, js: &jetstream::Context) -> anyhow::Result<Waiting> {
    // Statuses (only where Redis has none: a status set since is newer).
    let keys: Vec<String> = engine.presence.keys().await?.try_collect().await?;
    let mut statuses = 0;
    for key in keys {
        let Some((tenant, op)) = key.split_once('.') else { continue };
        let (Ok(tenant), Ok(op)) = (TenantId::parse(tenant), OperatorId::parse(op)) else { continue };
        let Some(value) = engine.presence.get(key.as_str()).await? else { continue };
        let record = v1::OperatorPresence::decode(value)?;
        let status = convert::from_operator_status("status", record.status).unwrap_or_default();
        let since = convert::from_timestamp(record.status_change_time.as_ref());
        let seats = engine.seats(&tenant, &op);
        let ctxs: Vec<_> = seats.iter().map(|s| s.ctx()).collect();
        engine.redis.restore_status(&tenant, &op, status, &record.reason, since, &ctxs).await?;
        statuses += 1;
    }

    // Conversations: the last record of every subject is the current state.
    let stream = js.get_stream(topology::EVENTS.name).await?;
    let total = stream.get_info().await?.state.messages;
    let mut conversations = 0;
    let mut waiting = Waiting::new();
    if total > 0 {
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: topology::EVENTS.subjects.to_owned(),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let Ok(Some(message)) = next else { break };
            let message = message?;
            let pending = message.info().map(|i| i.pending).unwrap_or(0);
            if let Ok(record) = events::ConversationRecord::decode(message.payload.clone())
                && let Ok(tenant) = TenantId::parse(&record.tenant_id)
                && let Ok(c) = decode_state(&record, &tenant)
            {
                if c.status == Status::Queued {
                    waiting.insert((tenant.clone(), c.queue.clone(), c.id));
                }
                restore(engine, &tenant, &c).await?;
                conversations += 1;
            }
            if pending == 0 {
                break;
            }
        }
    }
    tracing::debug!(statuses, conversations, at = %clock::now(), "redis brought in line with the log");
    Ok(waiting)
}

/// Puts what Redis should hold for one conversation's current state: its queue entry and
/// timers while it waits, its operator's reservation (and offer deadline) while held.
/// Only adds what is missing.
async fn restore(engine: &Engine, tenant: &TenantId, c: &Conversation) -> anyhow::Result<()> {
    let now = clock::now();
    let activity = activity_entry(c.last_activity, c.last_sender == Sender::Operator);
    match &c.status {
        Status::Queued => {
            let score = queue_score(c.priority, c.wait_start);
            engine.redis.ensure_queued(tenant, &c.queue, c.id, score).await?;
            if let Some(p) = &c.preference {
                engine.redis.set_timer(tenant, TimerKind::Preference, c.id, p.until).await?;
            }
            if let Some(max) = engine.cache.queue_model(tenant, c.queue.as_str()).and_then(|q| q.max_wait) {
                let due = c.queue_enter.saturating_add(max);
                engine.redis.set_timer(tenant, TimerKind::MaxWait, c.id, due).await?;
            }
        }
        Status::Offered { operator, expires } => {
            let seat = engine.seat(tenant, operator, c.channel);
            engine.redis.restore_hold(&seat.ctx(), c.id, &activity, now).await?;
            engine.redis.track_offer(tenant, c.id, *expires).await?;
        }
        Status::Assigned { operator } => {
            let seat = engine.seat(tenant, operator, c.channel);
            engine.redis.restore_hold(&seat.ctx(), c.id, &activity, now).await?;
        }
        Status::Closed => {}
    }
    Ok(())
}

/// Repairs the conversations listed as behind their log: each is restored from its
/// current state, and seats it no longer holds are given back.
pub async fn repair_listed(engine: &Engine) -> anyhow::Result<()> {
    let listed: Vec<(TenantId, ConversationId)> =
        engine.repairs.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
    for (i, (tenant, id)) in listed.iter().enumerate() {
        let result = async {
            if let Some(loaded) = engine.log.load(tenant, *id).await? {
                let c = &loaded.conversation;
                restore(engine, tenant, c).await?;
                for op in engine.redis.holding(tenant, c.channel, c.id).await? {
                    if c.status.holder() != Some(&op) {
                        let seat = engine.seat(tenant, &op, c.channel);
                        engine.redis.release(&seat.ctx(), c.id, clock::now()).await?;
                    }
                }
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            // Keep the rest listed for the next round.
            engine.repairs.lock().unwrap_or_else(|p| p.into_inner()).extend(listed[i..].iter().cloned());
            return Err(e);
        }
    }
    if !listed.is_empty() {
        tracing::info!(repaired = listed.len(), "redis brought in line with the log for listed conversations");
        engine.wake.notify_one();
    }
    Ok(())
}
