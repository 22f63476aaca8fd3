//! Conversation state: the log of transitions on `PARLEY_EVENTS` (the last record of a
//! conversation's subject is its state; a transition is appended only if the subject is
//! still at the sequence it was read at), and the customer's open-conversation pointer in
//! the `parley_conversations` bucket (created with `create`, so only one can exist).

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use parley_domain::{Conversation, ConversationId, CustomerId, OperatorId, TenantId, Timestamp};
use parley_proto::convert;
use parley_proto::events;
use parley_proto::prost::Message as _;

use crate::config_store::StoreError;
use crate::publish::{Payload, Publisher, SCHEMA_HEADER};
use crate::topology;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A conversation as last recorded, with the record's stream sequence.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub conversation: Conversation,
    pub sequence: u64,
}

/// Reads and appends conversation records. Cheap to clone.
#[derive(Clone)]
pub struct ConversationLog {
    stream: stream::Stream,
    publisher: Publisher,
    pointers: kv::Store,
}

impl std::fmt::Debug for ConversationLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConversationLog(..)")
    }
}

fn open_key(tenant: &TenantId, customer: CustomerId) -> String {
    format!("{tenant}.open.{customer}")
}

fn last_key(tenant: &TenantId, customer: CustomerId) -> String {
    format!("{tenant}.last.{customer}")
}

/// Decodes a record's state, checking it belongs to `tenant`.
pub fn decode_state(record: &events::ConversationRecord, tenant: &TenantId) -> Result<Conversation, StoreError> {
    let state = record.state.as_ref().ok_or_else(|| unavailable("record without state"))?;
    let conversation = convert::from_conversation_state(state).map_err(unavailable)?;
    if &conversation.tenant != tenant {
        return Err(StoreError::Unavailable(format!(
            "record of {} holds another tenant's state",
            record.conversation_id
        )));
    }
    Ok(conversation)
}

impl ConversationLog {
    pub async fn new(js: &jetstream::Context) -> anyhow::Result<Self> {
        let stream = js
            .get_stream(topology::EVENTS.name)
            .await
            .map_err(|e| anyhow::anyhow!("stream {}: {e}", topology::EVENTS.name))?;
        let pointers = js
            .get_key_value(topology::buckets::CONVERSATIONS)
            .await
            .map_err(|e| anyhow::anyhow!("bucket {}: {e}", topology::buckets::CONVERSATIONS))?;
        Ok(Self { stream, publisher: Publisher::new(js.clone()), pointers })
    }

    /// The conversation's current state, if it exists.
    pub async fn load(&self, tenant: &TenantId, id: ConversationId) -> Result<Option<Loaded>, StoreError> {
        let subject = topology::events_subject(tenant, id);
        let message = match self.stream.direct_get_last_for_subject(subject.as_str()).await {
            Ok(m) => m,
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        match message.headers.get(SCHEMA_HEADER).map(|v| v.as_str()) {
            Some(s) if s == events::ConversationRecord::SCHEMA => {}
            other => return Err(unavailable(format!("{subject}: unexpected schema {other:?}"))),
        }
        let record = events::ConversationRecord::decode(message.payload).map_err(unavailable)?;
        Ok(Some(Loaded { conversation: decode_state(&record, tenant)?, sequence: message.sequence }))
    }

    /// Appends a transition if the conversation is still at `expected` (0: new); on a race
    /// returns `Conflict` and the caller re-reads. A record whose id (its dedupe id) was
    /// appended before — the same message applied again after a redelivery — returns
    /// `AlreadyApplied`: JetStream's deduplication makes applying a message exactly once
    /// per conversation a property of the log, not of how many ids the state remembers.
    pub async fn append(
        &self,
        tenant: &TenantId,
        record: &events::ConversationRecord,
        expected: u64,
    ) -> Result<u64, StoreError> {
        let id = ConversationId::parse(&record.conversation_id).map_err(unavailable)?;
        let subject = topology::events_subject(tenant, id);
        match self
            .publisher
            .publish_expecting(subject.clone(), &record.record_id, &record.conversation_id, record, Some(expected))
            .await
        {
            Ok(p) if p.duplicate => Err(StoreError::AlreadyApplied(subject)),
            Ok(p) => Ok(p.sequence),
            Err(e) if e.conflict => Err(StoreError::Conflict(subject)),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The customer's open conversation, if any, with the pointer's revision.
    pub async fn open_conversation(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
    ) -> Result<Option<(ConversationId, u64)>, StoreError> {
        let key = open_key(tenant, customer);
        match self.pointers.entry(key.as_str()).await.map_err(unavailable)? {
            Some(e) if e.operation == kv::Operation::Put => {
                let text = std::str::from_utf8(&e.value).map_err(unavailable)?;
                let id = ConversationId::parse(text).map_err(unavailable)?;
                Ok(Some((id, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Makes `id` the customer's open conversation; `AlreadyExists` if they have one.
    pub async fn set_open(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        id: ConversationId,
    ) -> Result<u64, StoreError> {
        let key = open_key(tenant, customer);
        self.pointers.create(key.as_str(), Bytes::from(id.to_string())).await.map_err(|e| {
            if e.kind() == kv::CreateErrorKind::AlreadyExists { StoreError::AlreadyExists(key) } else { unavailable(e) }
        })
    }

    /// Who served the customer last, and when their conversation ended.
    pub async fn last_operator(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
    ) -> Result<Option<(OperatorId, Timestamp)>, StoreError> {
        match self.pointers.entry(last_key(tenant, customer)).await.map_err(unavailable)? {
            Some(e) if e.operation == kv::Operation::Put => {
                let last = events::LastOperator::decode(e.value).map_err(unavailable)?;
                let op = OperatorId::parse(&last.operator_id).map_err(unavailable)?;
                Ok(Some((op, convert::from_timestamp(last.time.as_ref()))))
            }
            _ => Ok(None),
        }
    }

    /// Remembers who served the customer, for their next conversation.
    pub async fn set_last_operator(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        op: &OperatorId,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let value = events::LastOperator { operator_id: op.to_string(), time: Some(convert::timestamp(at)) };
        self.pointers.put(last_key(tenant, customer), Bytes::from(value.encode_to_vec())).await.map_err(unavailable)?;
        Ok(())
    }

    /// Reads every record of a conversation, oldest first (for explaining its routing).
    pub async fn history(
        &self,
        tenant: &TenantId,
        id: ConversationId,
    ) -> Result<Vec<events::ConversationRecord>, StoreError> {
        use futures_util::StreamExt;
        let subject = topology::events_subject(tenant, id);
        let last = match self.stream.direct_get_last_for_subject(subject.as_str()).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(e)),
        };
        let consumer = self
            .stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        let mut out = Vec::new();
        while let Some(m) =
            tokio::time::timeout(std::time::Duration::from_secs(5), messages.next()).await.map_err(unavailable)?
        {
            let m = m.map_err(unavailable)?;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            out.push(events::ConversationRecord::decode(m.payload.clone()).map_err(unavailable)?);
            if seq >= last {
                break;
            }
        }
        Ok(out)
    }

    /// Clears the customer's open conversation if the pointer is still at `revision`.
    pub async fn clear_open(&self, tenant: &TenantId, customer: CustomerId, revision: u64) -> Result<(), StoreError> {
        let key = open_key(tenant, customer);
        self.pointers.delete_expect_revision(key.as_str(), Some(revision)).await.map_err(|e| {
            if e.kind() == kv::DeleteErrorKind::WrongLastRevision { StoreError::Conflict(key) } else { unavailable(e) }
        })
    }
}
