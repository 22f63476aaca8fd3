//! Retention, run continuously: every `retention.interval_secs`, for every tenant, the
//! closed conversations past their channel's policy are deleted or anonymised in the
//! database (a batch per transaction, legal holds respected), then their attachments' files
//! are removed from the media store and deleted conversations' records from the
//! conversation log. Every replica may run it: each step is idempotent, and a conversation
//! one replica took is gone (or anonymised) for the next.

use std::sync::Arc;
use std::time::Duration;

use parley_domain::{AttachmentId, ConversationId, TenantId};
use parley_kit::clock;
use parley_nats::{ConfigCache, MediaStore, Nats, topology};
use parley_pg::Db;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Retention settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Off: policies are kept but not applied by this replica.
    pub enabled: bool,
    /// How often the policies are applied.
    pub interval_secs: u64,
    /// Conversations per transaction.
    pub batch: i64,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self { enabled: true, interval_secs: 600, batch: 500 }
    }
}

impl RetentionSection {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=86_400).contains(&self.interval_secs) {
            return Err(format!("retention.interval_secs must be 1 to 86400, got {}", self.interval_secs));
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err(format!("retention.batch must be 1 to 10000, got {}", self.batch));
        }
        Ok(())
    }
}

/// What the job needs.
pub struct Retention {
    pub db: Db,
    pub nats: Nats,
    pub store: Arc<dyn MediaStore>,
    pub cache: ConfigCache,
    pub settings: RetentionSection,
}

impl Retention {
    /// Applies every tenant's policies until `token` fires.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(self.settings.interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            for tenant in self.cache.tenants() {
                let Ok(tenant) = TenantId::parse(&tenant.id) else { continue };
                if let Err(e) = self.apply(&tenant, &token).await {
                    tracing::warn!(%tenant, error = %e, "retention pass failed; next time");
                }
            }
        }
    }

    /// One tenant, batch after batch until nothing is due.
    async fn apply(&self, tenant: &TenantId, token: &CancellationToken) -> anyhow::Result<()> {
        while !token.is_cancelled() {
            let run = self.db.apply_retention(tenant, clock::now(), self.settings.batch).await?;
            if run.deleted.is_empty() && run.anonymised.is_empty() {
                return Ok(());
            }
            for id in &run.files {
                self.store.delete(tenant, AttachmentId::from_uuid(*id)).await?;
            }
            for id in &run.deleted {
                let subject = topology::events_subject(tenant, ConversationId::from_uuid(*id));
                self.nats.purge(topology::EVENTS, &subject).await?;
            }
            tracing::info!(
                %tenant,
                deleted = run.deleted.len(),
                anonymised = run.anonymised.len(),
                files = run.files.len(),
                "retention applied"
            );
        }
        Ok(())
    }
}
