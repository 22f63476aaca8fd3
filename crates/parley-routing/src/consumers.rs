//! Routing's three stream consumers:
//! - inbound customer messages → conversations (lanes keyed by customer); delivery receipts
//!   on the same stream → the message's delivery state in its conversation's log;
//! - operator replies on `PARLEY_OUTBOUND` → recorded in the conversation log;
//! - the fan-out: each conversation record's desk and customer parts → `PARLEY_DESK` and
//!   `PARLEY_OUTBOUND`, with dedupe ids derived from the record, so a redelivered record
//!   is never delivered twice.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use parley_domain::{CustomerId, OperatorId, Sender, TenantId};
use parley_nats::consume::{Delivery, Handler, Outcome};
use parley_nats::{Publisher, topology};
use parley_proto::{convert, events, v1};

use crate::engine::{Engine, EngineError};

/// Backoff for transient failures: grows with the delivery count, up to 10 s.
fn backoff(delivered: i64) -> Duration {
    Duration::from_millis((200 * delivered.clamp(1, 50) as u64).min(10_000))
}

fn outcome(result: Result<(), EngineError>, delivered: i64) -> Outcome {
    match result {
        Ok(()) => Outcome::Ack,
        Err(EngineError::Invalid(why)) => Outcome::Term(why),
        Err(e) => {
            tracing::warn!(error = %e, delivered, "transient failure");
            Outcome::Retry(backoff(delivered))
        }
    }
}

/// Customer messages from ingest.
pub struct Inbound {
    pub engine: Arc<Engine>,
}

impl Handler for Inbound {
    async fn handle(&self, d: Delivery) -> Outcome {
        let envelope: events::InboundEnvelope = match d.decode() {
            Ok(e) => e,
            Err(why) => return Outcome::Term(why),
        };
        match envelope.kind {
            Some(events::inbound_envelope::Kind::CustomerMessage(m)) => {
                let Ok(tenant) = TenantId::parse(&m.tenant_id) else {
                    return Outcome::Term(format!("invalid tenant {:?}", m.tenant_id));
                };
                if !self
                    .engine
                    .cache
                    .with_tenant(&tenant, |t| t.and_then(|t| t.tenant.as_ref()).is_some_and(|t| !t.disabled))
                {
                    return Outcome::Term(format!("tenant {tenant} unknown or disabled"));
                }
                outcome(self.engine.customer_message(&m).await, d.delivered)
            }
            Some(events::inbound_envelope::Kind::DeliveryReceipt(r)) => {
                outcome(self.engine.delivery_receipt(&r).await.map(|_| ()), d.delivered)
            }
            Some(events::inbound_envelope::Kind::CustomerTyping(t)) => {
                outcome(self.engine.customer_typing(&t).await, d.delivered)
            }
            None => Outcome::Term("inbound envelope without content".into()),
        }
    }
}

/// Operator replies, recorded in the conversation log once sent.
pub struct OperatorReplies {
    pub engine: Arc<Engine>,
}

impl Handler for OperatorReplies {
    async fn handle(&self, d: Delivery) -> Outcome {
        let envelope: events::OutboundEnvelope = match d.decode() {
            Ok(e) => e,
            Err(why) => return Outcome::Term(why),
        };
        // Only operator messages are recorded here; conversation updates on this stream
        // come from the fan-out and are already in the log.
        let Some(v1::CustomerUpdate { kind: Some(v1::customer_update::Kind::Message(m)) }) = envelope.update else {
            return Outcome::Ack;
        };
        if m.sender_kind != v1::SenderKind::Operator as i32 {
            return Outcome::Ack;
        }
        let (tenant, message) = match (TenantId::parse(&envelope.tenant_id), convert::from_message(&m)) {
            (Ok(t), Ok(m)) => (t, m),
            (Err(e), _) => return Outcome::Term(e.to_string()),
            (_, Err(e)) => return Outcome::Term(e.to_string()),
        };
        debug_assert_eq!(message.sender, Sender::Operator);
        match self.engine.operator_message(&tenant, message).await {
            Err(EngineError::NotFound(id)) => {
                tracing::warn!(conversation = %id, "reply to a conversation routing does not know; not recorded");
                Outcome::Ack
            }
            other => outcome(other, d.delivered),
        }
    }
}

/// Publishes a record's desk deliveries (each to its operator's desk subject, stamped with
/// the record's `version`), with dedupe ids derived from the record: the replica that
/// wrote the record publishes them at once, and the fan-out's publishing them again is
/// dropped by JetStream's deduplication.
pub fn desk_sends<'a>(
    publisher: &Publisher,
    tenant: &TenantId,
    record_id: &str,
    desk: &'a [events::DeskDelivery],
    version: u64,
) -> Vec<futures_util::future::BoxFuture<'a, Result<(), parley_nats::publish::PublishError>>> {
    let mut sends = Vec::new();
    for (i, delivery) in desk.iter().enumerate() {
        let Ok(op) = OperatorId::parse(&delivery.operator_id) else { continue };
        let Some(mut event) = delivery.event.clone() else { continue };
        event.conversation_version = version;
        let subject = topology::desk_subject(tenant, &op);
        let dedupe = format!("{record_id}:d{i}");
        let publisher = publisher.clone();
        sends.push(Box::pin(async move {
            publisher.publish(subject, &dedupe, &delivery.operator_id, &event).await.map(|_| ())
        }) as futures_util::future::BoxFuture<'a, _>);
    }
    sends
}

/// Delivers each record's desk and customer parts.
pub struct Fanout {
    pub engine: Arc<Engine>,
    pub publisher: Publisher,
}

impl Handler for Fanout {
    async fn handle(&self, d: Delivery) -> Outcome {
        // Only the deliveries and the route: the state and events are skipped unread.
        let record = match d.decode_as::<events::ConversationRecord, events::ConversationRecordDeliveries>() {
            Ok(r) => r,
            Err(why) => return Outcome::Term(why),
        };
        match self.deliver(&record, d.stream_sequence).await {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(error = %e, record = %record.record_id, "fan-out failed");
                Outcome::Retry(backoff(d.delivered))
            }
        }
    }
}

impl Fanout {
    /// Publishes a record's deliveries; `version` is the record's place in the log, which
    /// desks order one conversation's events by.
    async fn deliver(&self, record: &events::ConversationRecordDeliveries, version: u64) -> Result<(), String> {
        if record.desk.is_empty() && record.customer_updates.is_empty() {
            return Ok(());
        }
        let tenant = TenantId::parse(&record.tenant_id).map_err(|e| e.to_string())?;
        let route = record.route.as_ref().ok_or("record without route")?;
        let channel = convert::from_channel("route.channel", route.channel).map_err(|e| e.to_string())?;
        let customer = CustomerId::parse(&route.customer_id).map_err(|e| e.to_string())?;
        let mut sends = desk_sends(&self.publisher, &tenant, &record.record_id, &record.desk, version);
        for (i, update) in record.customer_updates.iter().enumerate() {
            let mut update = update.clone();
            if let Some(v1::customer_update::Kind::Queued(q)) = &mut update.kind
                && let Ok(queue) = parley_domain::QueueId::parse(&route.queue_id)
            {
                // Tell the customer where they stand: one behind everyone ahead in line (by
                // the same order the queue uses, whether or not this entry is in Redis yet).
                let wait_start = convert::from_timestamp(route.wait_start_time.as_ref());
                let score = parley_policy::queue_score(route.priority, wait_start);
                q.position = self.engine.redis.ahead_of(&tenant, &queue, score).await.map_or(0, |n| n + 1);
                q.estimated_wait_seconds = self.engine.estimated_wait(&tenant, &queue, q.position).await.unwrap_or(0);
            }
            let envelope = events::OutboundEnvelope {
                tenant_id: record.tenant_id.clone(),
                channel: route.channel,
                channel_config_id: route.channel_config_id.clone(),
                customer_id: route.customer_id.clone(),
                customer_address: route.customer_address.clone(),
                conversation_id: record.conversation_id.clone(),
                update: Some(update),
                references: Vec::new(),
                conversation_version: version,
            };
            let subject = topology::outbound_subject(&tenant, channel, customer);
            let dedupe = format!("{}:c{i}", record.record_id);
            let publisher = self.publisher.clone();
            let key = route.customer_id.clone();
            sends.push(Box::pin(async move { publisher.publish(subject, &dedupe, &key, &envelope).await.map(|_| ()) }));
        }
        for result in join_all(sends).await {
            result.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
