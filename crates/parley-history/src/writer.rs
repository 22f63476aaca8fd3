//! The history writer: conversation records from `PARLEY_EVENTS` into PostgreSQL.
//!
//! Each record becomes rows (the conversation's newest state, its new customer, messages,
//! assignments, routing decisions). Records from all lanes are gathered for a few
//! milliseconds into one batch, written in one transaction (each tenant's rows under its
//! own `parley.tenant` setting), and only then acknowledged; while one batch commits, the
//! next gathers and commits beside it (`writer.concurrent_batches`). Every insert is idempotent, so
//! a redelivered record changes nothing; the lanes keep each conversation's records in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parley_domain::{Sender, TenantId};
use parley_kit::telemetry::Metrics;
use parley_kit::telemetry::prometheus_client::metrics::counter::Counter;
use parley_kit::telemetry::prometheus_client::metrics::family::Family;
use parley_nats::consume::{Delivery, Handler, Outcome};
use parley_pg::{
    AssignmentRow, AttachmentRow, ConversationRow, CustomerRow, Db, DecisionRow, DeliveryRow, MessageRow, TenantBatch,
};
use parley_proto::{convert, events, v1};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// A routing candidate as stored in `routing_decisions.candidates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCandidate {
    pub operator_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub excluded_because: String,
    pub load: u32,
    pub capacity: u32,
    #[serde(default)]
    pub weighted_load: f64,
    /// `None` when not ranked (excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// The requirements a decision applied, as stored in `routing_decisions.requirements`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StoredRequirements {
    #[serde(default)]
    pub skills: Vec<(String, u32)>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub language: String,
}

/// How a conversation status is stored (`None` for unspecified or unknown values).
pub fn status_name(status: i32) -> Option<&'static str> {
    match v1::ConversationStatus::try_from(status) {
        Ok(v1::ConversationStatus::Queued) => Some("queued"),
        Ok(v1::ConversationStatus::Offered) => Some("offered"),
        Ok(v1::ConversationStatus::Assigned) => Some("assigned"),
        Ok(v1::ConversationStatus::Closed) => Some("closed"),
        _ => None,
    }
}

/// The conversation's row from the state summary a record carries.
fn conversation_row(tenant: &TenantId, s: &events::ConversationStateSummary) -> Result<ConversationRow, String> {
    if s.tenant_id != tenant.as_str() {
        return Err(format!("state of tenant {:?} in a record of {tenant}", s.tenant_id));
    }
    let uuid = |field: &str, v: &str| uuid::Uuid::parse_str(v).map_err(|e| format!("state.{field}: {e}"));
    let channel = convert::from_channel("state.channel", s.channel).map_err(|e| e.to_string())?;
    let status = status_name(s.status).ok_or_else(|| format!("state.status {} is unknown", s.status))?;
    Ok(ConversationRow {
        id: uuid("id", &s.id)?,
        customer_id: uuid("customer_id", &s.customer_id)?,
        channel: channel.as_str().to_owned(),
        channel_config_id: s.channel_config_id.clone(),
        queue_id: s.queue_id.clone(),
        status: status.to_owned(),
        operator_id: (!s.operator_id.is_empty()).then(|| s.operator_id.clone()),
        priority: s.priority,
        created_at: convert::from_timestamp(s.create_time.as_ref()),
        updated_at: convert::from_timestamp(s.update_time.as_ref()),
        closed_at: s.close_time.as_ref().map(|t| convert::from_timestamp(Some(t))),
    })
}

/// Whether a record changes the conversation's row. A record that only adds messages or
/// delivery states leaves every stored field as it was but the update time (a message never
/// changes a conversation's status, queue, operator, priority or close), and the update time
/// is read as the later of the row's and the newest message's; so the row is rewritten only
/// for the other records: about one record in eight of a typical conversation, where every
/// message once rewrote it.
fn changes_row(record: &events::ConversationRecordHistory) -> bool {
    use events::conversation_event::Kind;
    record.events.is_empty()
        || record
            .events
            .iter()
            .any(|e| !matches!(e.kind, Some(Kind::MessageReceived(_) | Kind::MessageSent(_) | Kind::Delivery(_))))
}

/// Turns one record (read without what only routing needs) into the rows it adds.
pub fn rows(record: &events::ConversationRecordHistory) -> Result<TenantBatch, String> {
    let tenant = TenantId::parse(&record.tenant_id).map_err(|e| e.to_string())?;
    let state = record.state.as_ref().ok_or("record without state")?;
    let row = conversation_row(&tenant, state)?;
    let (conversation_id, customer_id, channel) = (row.id, row.customer_id, row.channel.clone());
    let mut batch = TenantBatch::new(tenant);
    if changes_row(record) {
        batch.conversations.push(row);
    }
    for event in &record.events {
        let at = convert::from_timestamp(event.event_time.as_ref());
        let event_id = uuid::Uuid::parse_str(&event.event_id).map_err(|e| format!("event_id: {e}"))?;
        use events::conversation_event::Kind;
        match &event.kind {
            Some(Kind::Opened(o)) => batch.customers.push(CustomerRow {
                id: customer_id,
                display_name: o.customer_display_name.clone(),
                channel: channel.clone(),
                address: o.customer_address.clone(),
                verified_phone: (!o.customer_verified_phone.is_empty()).then(|| o.customer_verified_phone.clone()),
                created_at: at,
            }),
            Some(Kind::MessageReceived(m)) | Some(Kind::MessageSent(m)) => {
                let m = convert::from_message(m).map_err(|e| e.to_string())?;
                batch.messages.push(MessageRow {
                    id: m.id.as_uuid(),
                    conversation_id: m.conversation.as_uuid(),
                    customer_id: m.customer.as_uuid(),
                    channel: m.channel.as_str().to_owned(),
                    sender: m.sender.as_str().to_owned(),
                    operator_id: m.operator.map(|o| o.to_string()),
                    body: m.text,
                    quoted_message_id: m.quoted.as_ref().and_then(|q| q.message_id).map(|id| id.as_uuid()),
                    quoted_channel_message_id: m.quoted.as_ref().map(|q| q.channel_message_id.clone()),
                    quoted_text: m.quoted.as_ref().map(|q| q.text.clone()),
                    delivery_state: m.delivery.as_str().to_owned(),
                    channel_message_id: m.channel_message_id,
                    subject: m.subject,
                    created_at: m.created,
                    attachments: m
                        .attachments
                        .iter()
                        .map(|a| AttachmentRow {
                            id: a.id.as_uuid(),
                            kind: a.kind.as_str().to_owned(),
                            mime_type: a.mime.clone(),
                            file_name: a.file_name.clone(),
                            size_bytes: i64::try_from(a.size).unwrap_or(i64::MAX),
                        })
                        .collect(),
                });
            }
            Some(Kind::Assigned(a)) => batch.assignments.push(AssignmentRow {
                event_id,
                conversation_id,
                operator_id: a.operator_id.clone(),
                reason: a.reason.clone(),
                note: a.transfer_note.clone(),
                assigned_at: at,
            }),
            Some(Kind::Decision(d)) => {
                let candidates: Vec<StoredCandidate> = d
                    .candidates
                    .iter()
                    .map(|c| StoredCandidate {
                        operator_id: c.operator_id.clone(),
                        excluded_because: c.excluded_because.clone(),
                        load: c.load,
                        capacity: c.capacity,
                        weighted_load: c.weighted_load,
                        score: c.score.is_finite().then_some(c.score),
                    })
                    .collect();
                let requirements = StoredRequirements {
                    skills: d.required_skills.iter().map(|s| (s.skill.clone(), s.proficiency)).collect(),
                    language: d.language.clone(),
                };
                batch.decisions.push(DecisionRow {
                    id: uuid::Uuid::parse_str(&d.id).map_err(|e| format!("decision id: {e}"))?,
                    conversation_id,
                    queue_id: d.queue_id.clone(),
                    chosen_operator_id: (!d.chosen_operator_id.is_empty()).then(|| d.chosen_operator_id.clone()),
                    reason: d.reason.clone(),
                    // Serializing plain structs cannot fail.
                    candidates_json: serde_json::to_string(&candidates).expect("candidates serialize"),
                    decided_at: convert::from_timestamp(d.decide_time.as_ref()),
                    strategy: d.strategy.clone(),
                    tie_breaker: d.tie_breaker.clone(),
                    requirements_json: serde_json::to_string(&requirements).expect("requirements serialize"),
                });
            }
            Some(Kind::Delivery(u)) => batch.deliveries.push(DeliveryRow {
                message_id: uuid::Uuid::parse_str(&u.message_id).map_err(|e| format!("delivery message_id: {e}"))?,
                state: convert::from_delivery_state(u.state),
                failure_reason: u.failure_reason.clone(),
                updated_at: convert::from_timestamp(u.update_time.as_ref()),
            }),
            Some(Kind::Queued(_)) | Some(Kind::Offered(_)) | Some(Kind::Closed(_)) | None => {}
        }
    }
    debug_assert!(batch.messages.iter().all(|m| Sender::parse(&m.sender).is_some()));
    Ok(batch)
}

type Pending = (TenantBatch, oneshot::Sender<Result<(), String>>);

/// Hands records to the batcher and waits for their commit.
pub struct Writer {
    tx: mpsc::Sender<Pending>,
}

impl Handler for Writer {
    async fn handle(&self, d: Delivery) -> Outcome {
        // The state without routing's recent messages: those are skipped unread.
        let record = match d.decode_as::<events::ConversationRecord, events::ConversationRecordHistory>() {
            Ok(r) => r,
            Err(why) => return Outcome::Term(why),
        };
        let batch = match rows(&record) {
            Ok(b) => b,
            Err(why) => return Outcome::Term(format!("record {}: {why}", record.record_id)),
        };
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send((batch, done_tx)).await.is_err() {
            return Outcome::Retry(Duration::from_secs(1));
        }
        match done_rx.await {
            Ok(Ok(())) => Outcome::Ack,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, delivered = d.delivered, "history write failed; will retry");
                Outcome::Retry(Duration::from_millis((250 * d.delivered.clamp(1, 40)) as u64))
            }
            Err(_) => Outcome::Retry(Duration::from_secs(1)),
        }
    }
}

/// Starts the batcher; returns the consumer handler feeding it. The batcher ends when the
/// handler is dropped and the batches it started have committed.
pub fn start(
    db: Db,
    settings: &crate::WriterSection,
    metrics: Metrics,
) -> (Arc<Writer>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let (tx, rx) = mpsc::channel::<Pending>(settings.max_batch * 2);
    let limits = Limits {
        max_batch: settings.max_batch,
        max_delay: Duration::from_millis(settings.max_delay_ms),
        concurrent: settings.concurrent_batches.max(1),
    };
    let task = tokio::spawn(batcher(db, rx, limits, metrics));
    (Arc::new(Writer { tx }), task)
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_batch: usize,
    max_delay: Duration,
    concurrent: usize,
}

async fn batcher(db: Db, mut rx: mpsc::Receiver<Pending>, limits: Limits, metrics: Metrics) -> anyhow::Result<()> {
    let rows_written = prometheus_rows();
    metrics.register("history_rows_written", "Rows written to PostgreSQL by kind", rows_written.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.concurrent));
    let mut writing = tokio::task::JoinSet::new();
    loop {
        // A slot first, so records gather while every slot is committing. The channel
        // closes only once the consumer has drained its lanes and dropped the handler, so
        // shutdown never strands a record; the batches started are awaited below.
        let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
        while writing.try_join_next().is_some() {}
        let Some(first) = rx.recv().await else { break };
        let mut pending = vec![first];
        let deadline = tokio::time::Instant::now() + limits.max_delay;
        while pending.len() < limits.max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => pending.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        let (db, rows_written) = (db.clone(), rows_written.clone());
        writing.spawn(async move {
            write_batch(&db, pending, &rows_written).await;
            drop(slot);
        });
    }
    while writing.join_next().await.is_some() {}
    Ok(())
}

/// Writes one batch in one transaction and tells each record's handler how it went.
async fn write_batch(db: &Db, pending: Vec<Pending>, rows_written: &RowsFamily) {
    let mut by_tenant: BTreeMap<String, TenantBatch> = BTreeMap::new();
    let mut waiters = Vec::with_capacity(pending.len());
    for (batch, done) in pending {
        waiters.push(done);
        let merged =
            by_tenant.entry(batch.tenant.to_string()).or_insert_with(|| TenantBatch::new(batch.tenant.clone()));
        merged.absorb(batch);
    }
    let batches: Vec<TenantBatch> = by_tenant.into_values().collect();
    let result = db.write(&batches).await.map_err(|e| e.to_string());
    if result.is_ok() {
        for b in &batches {
            rows_written
                .get_or_create(&vec![("kind".to_owned(), "message".to_owned())])
                .inc_by(b.messages.len() as u64);
            rows_written
                .get_or_create(&vec![("kind".to_owned(), "conversation".to_owned())])
                .inc_by(b.conversations.len() as u64);
        }
    }
    for done in waiters {
        let _ = done.send(result.clone());
    }
}

type RowsFamily = Family<Vec<(String, String)>, Counter>;

fn prometheus_rows() -> RowsFamily {
    RowsFamily::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::conversation_event::Kind;

    fn record(kinds: Vec<Kind>) -> events::ConversationRecordHistory {
        events::ConversationRecordHistory {
            events: kinds
                .into_iter()
                .map(|k| events::ConversationEvent { kind: Some(k), ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_records_that_change_more_than_messages_rewrite_the_conversation_row() {
        // Messages and delivery states leave the row as it was (but its update time).
        assert!(!changes_row(&record(vec![Kind::MessageReceived(Default::default())])));
        assert!(!changes_row(&record(vec![Kind::MessageSent(Default::default()), Kind::Delivery(Default::default())])));
        // Anything else rewrites it, with or without messages beside it.
        assert!(changes_row(&record(vec![
            Kind::Opened(Default::default()),
            Kind::MessageReceived(Default::default()),
            Kind::Queued(Default::default()),
        ])));
        assert!(changes_row(&record(vec![Kind::Assigned(Default::default())])));
        assert!(changes_row(&record(vec![Kind::MessageSent(Default::default()), Kind::Closed(Default::default())])));
        assert!(changes_row(&record(vec![Kind::Decision(Default::default())])));
        // A record saying nothing of what happened is written as it comes.
        assert!(changes_row(&record(Vec::new())));
    }
}
