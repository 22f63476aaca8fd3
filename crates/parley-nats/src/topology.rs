//! Every stream, subject, consumer and bucket Parley uses, named here and nowhere else, and
//! `ensure`, which creates or updates them (idempotent, safe from every replica at once).
//!
//! | stream | subjects | written by | read by |
//! |---|---|---|---|
//! | `PARLEY_INBOUND` | `parley.inbound.<tenant>.<channel>` | ingest | routing, ingest (media worker) |
//! | `PARLEY_EVENTS` | `parley.events.<tenant>.<conversation>` | routing (one record per transition) | history, routing's fan-out |
//! | `PARLEY_DESK` | `parley.desk.<tenant>.<operator>`, `parley.desk.<tenant>._team` | routing's fan-out; routing and notification (presence, on `_team`) | notification (operator and team sessions) |
//! | `PARLEY_OUTBOUND` | `parley.outbound.<tenant>.<channel>.<customer>` | notification | routing, channel senders, API streams |
//! | `PARLEY_DEAD` | `parley.dead.<consumer>` | every consumer (poison messages, with the reason) | people |
//!
//! Tenant ids and operator ids are slugs and the others UUIDs or channel names, so every
//! token is safe in a subject (no `.`, `*`, `>` or spaces can appear).

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use parley_domain::{Channel, ConversationId, CustomerId, OperatorId, TenantId};
use parley_kit::config::NatsConfig;

/// A stream's fixed shape.
#[derive(Debug, Clone, Copy)]
pub struct StreamDef {
    pub name: &'static str,
    pub subjects: &'static str,
    pub max_age: Duration,
    /// Followed by an ordered consumer per live session (desks, web chat visitors), so it
    /// needs room for many consumers (`nats.max_session_consumers`).
    pub per_session: bool,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

pub const INBOUND: StreamDef = StreamDef {
    name: "PARLEY_INBOUND",
    subjects: "parley.inbound.>",
    max_age: DAY.saturating_mul(7),
    per_session: false,
};
pub const EVENTS: StreamDef = StreamDef {
    name: "PARLEY_EVENTS",
    subjects: "parley.events.>",
    max_age: DAY.saturating_mul(14),
    per_session: false,
};
pub const DESK: StreamDef =
    StreamDef { name: "PARLEY_DESK", subjects: "parley.desk.>", max_age: DAY.saturating_mul(7), per_session: true };
pub const OUTBOUND: StreamDef = StreamDef {
    name: "PARLEY_OUTBOUND",
    subjects: "parley.outbound.>",
    max_age: DAY.saturating_mul(7),
    per_session: true,
};

/// Poison messages of every consumer, with the reason, kept for a month for an operator of
/// the installation to look at (and republish once the cause is fixed).
pub const DEAD: StreamDef =
    StreamDef { name: "PARLEY_DEAD", subjects: "parley.dead.>", max_age: DAY.saturating_mul(30), per_session: false };

pub const STREAMS: [StreamDef; 5] = [INBOUND, EVENTS, DESK, OUTBOUND, DEAD];

/// Where a consumer's poison messages go.
pub fn dead_subject(consumer: &str) -> String {
    format!("parley.dead.{consumer}")
}

/// Durable consumers (shared by all replicas of their service, which split the work).
pub mod consumers {
    /// Routing reads customer messages.
    pub const ROUTING_INBOUND: &str = "routing-inbound";
    /// Routing records operator replies in the conversation log.
    pub const ROUTING_OUTBOUND: &str = "routing-outbound";
    /// Routing delivers each record's desk and customer parts.
    pub const ROUTING_FANOUT: &str = "routing-fanout";
    /// History writes the conversation log to PostgreSQL.
    pub const HISTORY_EVENTS: &str = "history-events";
    /// Notification sends replies to the customers' providers.
    pub const NOTIFICATION_SENDERS: &str = "notification-senders";
    /// Ingest's media worker on `PARLEY_INBOUND`: fetches customers' attachments.
    pub const INGEST_MEDIA: &str = "ingest-media";
}

/// Key-value buckets.
pub mod buckets {
    /// Tenants, operators, skills, queues, channels and tokens (keys `<tenant>.<kind>.<id>`).
    pub const CONFIG: &str = "parley_config";
    /// Open-conversation pointers (`<tenant>.open.<customer>`), changed with compare-and-set.
    pub const CONVERSATIONS: &str = "parley_conversations";
    /// Operator statuses as last set (`<tenant>.<operator>`), from which Redis is rebuilt.
    pub const PRESENCE: &str = "parley_presence";
    /// Attachments' bytes (object store, objects `<tenant>/<attachment>`).
    pub const MEDIA: &str = "parley_media";
}

pub fn inbound_subject(tenant: &TenantId, channel: Channel) -> String {
    format!("parley.inbound.{tenant}.{channel}")
}

pub fn events_subject(tenant: &TenantId, conversation: ConversationId) -> String {
    format!("parley.events.{tenant}.{conversation}")
}

pub fn desk_subject(tenant: &TenantId, operator: &OperatorId) -> String {
    format!("parley.desk.{tenant}.{operator}")
}

/// A tenant's team events (operators' presence, for supervisors). Operator ids are slugs,
/// which never start with `_`, so this never names an operator.
pub fn team_subject(tenant: &TenantId) -> String {
    format!("parley.desk.{tenant}._team")
}

pub fn outbound_subject(tenant: &TenantId, channel: Channel, customer: CustomerId) -> String {
    format!("parley.outbound.{tenant}.{channel}.{customer}")
}

/// Every outbound subject of one channel (for that channel's sender).
pub fn outbound_channel_filter(channel: Channel) -> String {
    format!("parley.outbound.*.{channel}.>")
}

/// Creates or updates every stream and bucket. Safe to run concurrently and repeatedly.
pub async fn ensure(js: &jetstream::Context, config: &NatsConfig) -> anyhow::Result<()> {
    for def in STREAMS {
        let cfg = stream::Config {
            name: def.name.to_owned(),
            subjects: vec![def.subjects.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: def.max_age,
            duplicate_window: Duration::from_secs(config.dedupe_window_secs),
            num_replicas: config.replicas,
            allow_direct: true,
            // Otherwise the server's default (1 000 since NATS 2.15).
            max_consumers: if def.per_session { config.max_session_consumers } else { 0 },
            ..Default::default()
        };
        create_or_update_stream(js, cfg).await?;
    }
    // Configuration and statuses are kept forever; an open-conversation pointer is dropped a
    // month after it was set (conversations time out long before).
    for (bucket, description, max_age) in [
        (buckets::CONFIG, "Parley tenant configuration", Duration::ZERO),
        (buckets::CONVERSATIONS, "Parley open-conversation pointers", DAY.saturating_mul(30)),
        (buckets::PRESENCE, "Parley operator statuses", Duration::ZERO),
    ] {
        let cfg = kv::Config {
            bucket: bucket.to_owned(),
            description: description.to_owned(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        };
        if js.get_key_value(bucket).await.is_err() {
            // Two replicas starting at once may both try; the loser finds it created.
            if let Err(e) = js.create_key_value(cfg).await
                && js.get_key_value(bucket).await.is_err()
            {
                anyhow::bail!("cannot create key-value bucket {bucket}: {e} (NATS 2.10 or newer is required)");
            }
        }
    }
    if js.get_object_store(buckets::MEDIA).await.is_err() {
        let cfg = object_store::Config {
            bucket: buckets::MEDIA.to_owned(),
            description: Some("Parley attachments".to_owned()),
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        };
        if let Err(e) = js.create_object_store(cfg).await
            && js.get_object_store(buckets::MEDIA).await.is_err()
        {
            anyhow::bail!("cannot create object store {}: {e}", buckets::MEDIA);
        }
    }
    Ok(())
}

async fn create_or_update_stream(js: &jetstream::Context, cfg: stream::Config) -> anyhow::Result<()> {
    let name = cfg.name.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let had = existing.info().await.map(|i| i.config.max_consumers).unwrap_or(cfg.max_consumers);
            let wanted = cfg.max_consumers;
            if let Err(e) = js.update_stream(cfg.clone()).await {
                // NATS before 2.12 cannot change a stream's consumer limit: keep it.
                if wanted == had || wanted == 0 {
                    anyhow::bail!("cannot update stream {name}: {e}");
                }
                tracing::warn!(stream = %name, had, wanted, error = %e, "the stream's consumer limit cannot be changed on this NATS; keeping it");
                js.update_stream(stream::Config { max_consumers: had, ..cfg })
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot update stream {name}: {e}"))?;
            }
        }
        Err(_) => {
            if let Err(e) = js.create_stream(cfg).await
                && js.get_stream(&name).await.is_err()
            {
                anyhow::bail!("cannot create stream {name}: {e}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_stay_inside_their_streams() {
        let t = TenantId::parse("acme").unwrap();
        let op = OperatorId::parse("anna").unwrap();
        let conv = ConversationId::parse("0190a6f2-8f1e-7c3a-9d4e-0123456789ab").unwrap();
        let cust = CustomerId::derive(&t, Channel::Api, "x");
        for (subject, def) in [
            (inbound_subject(&t, Channel::Sms), INBOUND),
            (events_subject(&t, conv), EVENTS),
            (desk_subject(&t, &op), DESK),
            (outbound_subject(&t, Channel::Api, cust), OUTBOUND),
        ] {
            let prefix = def.subjects.trim_end_matches('>');
            assert!(subject.starts_with(prefix), "{subject} outside {}", def.subjects);
            assert!(!subject.contains(['*', '>', ' ']));
        }
        assert_eq!(events_subject(&t, conv).split('.').count(), 4);
    }
}
