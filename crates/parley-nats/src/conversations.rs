//! Conversation routing state in the `parley_conversations` bucket, changed only with
//! compare-and-set so that two routing replicas can never both apply a change to the same
//! conversation: the loser re-reads and re-decides.
//!
//! Keys: `<tenant>.conv.<conversation>` (the state) and `<tenant>.open.<customer>` (the
//! customer's open conversation, created with `create` so only one can exist).

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::TryStreamExt;
use parley_domain::{Conversation, ConversationId, CustomerId, TenantId};
use parley_proto::convert;
use parley_proto::events;
use parley_proto::prost::Message as _;

use crate::config_store::StoreError;

/// A conversation with the revision it was read at.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub conversation: Conversation,
    pub revision: u64,
}

/// Reads and writes conversation state. Cheap to clone.
#[derive(Clone)]
pub struct ConversationStore {
    kv: kv::Store,
}

impl std::fmt::Debug for ConversationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConversationStore(..)")
    }
}

fn conv_key(tenant: &TenantId, id: ConversationId) -> String {
    format!("{tenant}.conv.{id}")
}

fn open_key(tenant: &TenantId, customer: CustomerId) -> String {
    format!("{tenant}.open.{customer}")
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl ConversationStore {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    pub async fn get(&self, tenant: &TenantId, id: ConversationId) -> Result<Option<Versioned>, StoreError> {
        let key = conv_key(tenant, id);
        match self.kv.entry(key.as_str()).await.map_err(unavailable)? {
            Some(e) if e.operation == kv::Operation::Put => {
                let state = events::ConversationState::decode(e.value).map_err(unavailable)?;
                let conversation = convert::from_conversation_state(&state).map_err(unavailable)?;
                if &conversation.tenant != tenant {
                    return Err(StoreError::Unavailable(format!("{key} holds another tenant's conversation")));
                }
                Ok(Some(Versioned { conversation, revision: e.revision }))
            }
            _ => Ok(None),
        }
    }

    /// Stores a new conversation; fails with `AlreadyExists` if the id is taken.
    pub async fn create(&self, c: &Conversation) -> Result<u64, StoreError> {
        let key = conv_key(&c.tenant, c.id);
        let value = Bytes::from(convert::conversation_state(c).encode_to_vec());
        self.kv.create(key.as_str(), value).await.map_err(|e| {
            if e.kind() == kv::CreateErrorKind::AlreadyExists { StoreError::AlreadyExists(key) } else { unavailable(e) }
        })
    }

    /// Replaces a conversation read at `revision`; fails with `Conflict` if it changed since.
    pub async fn update(&self, c: &Conversation, revision: u64) -> Result<u64, StoreError> {
        let key = conv_key(&c.tenant, c.id);
        let value = Bytes::from(convert::conversation_state(c).encode_to_vec());
        self.kv.update(key.as_str(), value, revision).await.map_err(|e| {
            if e.kind() == kv::UpdateErrorKind::WrongLastRevision { StoreError::Conflict(key) } else { unavailable(e) }
        })
    }

    /// The customer's open conversation, if any, with the pointer's revision.
    pub async fn open_conversation(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
    ) -> Result<Option<(ConversationId, u64)>, StoreError> {
        let key = open_key(tenant, customer);
        match self.kv.entry(key.as_str()).await.map_err(unavailable)? {
            Some(e) if e.operation == kv::Operation::Put => {
                let text = std::str::from_utf8(&e.value).map_err(unavailable)?;
                let id = ConversationId::parse(text).map_err(unavailable)?;
                Ok(Some((id, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Makes `id` the customer's open conversation; fails with `AlreadyExists` if the
    /// customer has one (another replica won the race).
    pub async fn set_open(&self, tenant: &TenantId, customer: CustomerId, id: ConversationId) -> Result<u64, StoreError> {
        let key = open_key(tenant, customer);
        self.kv.create(key.as_str(), Bytes::from(id.to_string())).await.map_err(|e| {
            if e.kind() == kv::CreateErrorKind::AlreadyExists { StoreError::AlreadyExists(key) } else { unavailable(e) }
        })
    }

    /// Clears the customer's open conversation if it is still `id` at `revision`.
    pub async fn clear_open(&self, tenant: &TenantId, customer: CustomerId, revision: u64) -> Result<(), StoreError> {
        let key = open_key(tenant, customer);
        self.kv.delete_expect_revision(key.as_str(), Some(revision)).await.map_err(|e| {
            if e.kind() == kv::DeleteErrorKind::WrongLastRevision { StoreError::Conflict(key) } else { unavailable(e) }
        })
    }

    /// Every conversation of every tenant still in the bucket (for rebuilding Redis after
    /// it lost its data). Closed ones are included; callers filter.
    pub async fn all(&self) -> Result<Vec<Versioned>, StoreError> {
        let keys: Vec<String> = self.kv.keys().await.map_err(unavailable)?.try_collect().await.map_err(unavailable)?;
        let mut out = Vec::new();
        for key in keys.iter().filter(|k| k.split('.').nth(1) == Some("conv")) {
            if let Some(e) = self.kv.entry(key.as_str()).await.map_err(unavailable)?
                && e.operation == kv::Operation::Put
            {
                let state = events::ConversationState::decode(e.value).map_err(unavailable)?;
                let conversation = convert::from_conversation_state(&state).map_err(unavailable)?;
                out.push(Versioned { conversation, revision: e.revision });
            }
        }
        Ok(out)
    }
}
