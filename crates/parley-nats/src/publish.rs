//! Publishing to JetStream: protobuf payloads with their schema name, a dedupe id
//! (`Nats-Msg-Id`), an ordering key, and the current trace context; each publish waits
//! for the stream's acknowledgement, so "published" means "durable".

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use opentelemetry::propagation::Injector;
use parley_domain::{OperatorId, OperatorStatus, TenantId, Timestamp};
use parley_proto::{convert, events, prost, v1};

/// The header naming a payload's protobuf type.
pub const SCHEMA_HEADER: &str = "Parley-Schema";
/// The header carrying the key that orders processing (messages with the same key are
/// handled one at a time, in order, by a consumer).
pub const KEY_HEADER: &str = "Parley-Key";

/// A protobuf payload of a Parley stream.
pub trait Payload: prost::Message + Default {
    /// The full protobuf name, sent as [`SCHEMA_HEADER`].
    const SCHEMA: &'static str;
}

impl Payload for events::InboundEnvelope {
    const SCHEMA: &'static str = "parley.events.v1.InboundEnvelope";
}
impl Payload for events::ConversationRecord {
    const SCHEMA: &'static str = "parley.events.v1.ConversationRecord";
}
impl Payload for events::OutboundEnvelope {
    const SCHEMA: &'static str = "parley.events.v1.OutboundEnvelope";
}
impl Payload for v1::DeskEvent {
    const SCHEMA: &'static str = "parley.v1.DeskEvent";
}

/// Why a publish did not become durable.
#[derive(Debug, thiserror::Error)]
#[error("publish to {subject} failed: {reason}")]
pub struct PublishError {
    pub subject: String,
    pub reason: String,
    /// The subject's last sequence was not the expected one (a concurrent writer won).
    pub conflict: bool,
}

/// An operator's presence as a team event tells it.
#[derive(Debug, Clone, Copy)]
pub struct TeamPresence<'a> {
    pub status: OperatorStatus,
    pub reason: &'a str,
    pub connected: bool,
    pub since: Option<Timestamp>,
}

/// The stream's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub sequence: u64,
    /// The stream already had a message with this dedupe id (within its window).
    pub duplicate: bool,
}

/// Publishes Parley payloads. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher(..)")
    }
}

/// Writes trace context into NATS headers.
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

impl Publisher {
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Tells the tenant's team sessions an operator's presence as it is now: status, reason,
    /// whether a desk is connected, since when the status holds (no load).
    pub async fn presence(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        now: TeamPresence<'_>,
        dedupe_id: &str,
    ) -> Result<Published, PublishError> {
        let at = convert::timestamp(parley_kit::clock::now());
        let event = v1::DeskEvent {
            sequence: 0,
            event_time: Some(at),
            conversation_version: 0,
            kind: Some(v1::desk_event::Kind::Presence(v1::OperatorPresence {
                operator_id: op.to_string(),
                status: convert::operator_status(now.status) as i32,
                reason: now.reason.to_owned(),
                connected: now.connected,
                load: Vec::new(),
                status_change_time: now.since.map(convert::timestamp),
            })),
        };
        self.publish(crate::topology::team_subject(tenant), dedupe_id, op.as_str(), &event).await
    }

    /// Publishes `payload` on `subject` and waits until the stream has it.
    ///
    /// `dedupe_id` must be the same for every retry of the same logical message (a provider
    /// message id, an idempotency key, an event id derived from what it is about).
    pub async fn publish<P: Payload>(
        &self,
        subject: String,
        dedupe_id: &str,
        key: &str,
        payload: &P,
    ) -> Result<Published, PublishError> {
        self.publish_expecting(subject, dedupe_id, key, payload, None).await
    }

    /// Like [`Publisher::publish`], but when `expected_last` is given the stream takes the
    /// message only if the subject's last message has that sequence (0: none yet);
    /// otherwise the error has `conflict` set.
    pub async fn publish_expecting<P: Payload>(
        &self,
        subject: String,
        dedupe_id: &str,
        key: &str,
        payload: &P,
        expected_last: Option<u64>,
    ) -> Result<Published, PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", dedupe_id);
        headers.insert(SCHEMA_HEADER, P::SCHEMA);
        headers.insert(KEY_HEADER, key);
        if let Some(seq) = expected_last {
            headers.insert("Nats-Expected-Last-Subject-Sequence", seq.to_string().as_str());
        }
        parley_kit::telemetry::inject_current(&mut HeaderInjector(&mut headers));
        let body = Bytes::from(payload.encode_to_vec());
        let err = |reason: String, conflict: bool| PublishError { subject: subject.clone(), reason, conflict };
        let ack_future = self
            .js
            .publish_with_headers(subject.clone(), headers, body)
            .await
            .map_err(|e| err(e.to_string(), false))?;
        let ack = ack_future.await.map_err(|e| {
            let conflict = e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence;
            err(e.to_string(), conflict)
        })?;
        Ok(Published { sequence: ack.sequence, duplicate: ack.duplicate })
    }
}
