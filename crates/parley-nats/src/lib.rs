//! Parley's NATS adapter.
//!
//! Layout:
//! - [`topology`]: every stream, subject, consumer and bucket name, and `ensure`.
//! - [`publish`]: protobuf payloads with schema, dedupe id, ordering key and trace context.
//! - [`consume`]: durable pull consumers, lanes ordered by key, ack / retry / term.
//! - [`tail`]: resumable feeds of one subject (desk sessions, customer streams).
//! - [`config_store`]: tenant configuration (writes) and the watched cache (reads, auth).
//! - [`media`]: attachments' bytes in the Object Store, behind the `MediaStore` trait.
//! - [`conversations`]: the conversation log (state by compare-and-set appends) and
//!   open-conversation pointers.
//!
//! *API boundary*: async-nats types do not leave this crate except the connection handle
//! ([`Nats`]) that services pass back into it.

pub mod config_store;
pub mod consume;
pub mod conversations;
pub mod hub;
pub mod media;
pub mod publish;
pub mod tail;
pub mod topology;

use std::time::Duration;

use async_nats::jetstream;
use parley_kit::config::NatsConfig;

pub use config_store::{ConfigCache, ConfigStore, StoreError};
pub use consume::{ConsumerSpec, Delivery, Handler, Outcome};
pub use conversations::{ConversationLog, Loaded};
pub use media::{MediaStore, ObjectMedia, Stored, StoredFile};
pub use publish::{Payload, Published, Publisher, TeamPresence};

/// A connection to NATS with its JetStream context.
#[derive(Clone)]
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nats(..)")
    }
}

impl Nats {
    /// Connects (retrying for up to `wait`) and ensures the topology exists.
    pub async fn connect(config: &NatsConfig, name: &str, wait: Duration) -> anyhow::Result<Self> {
        let deadline = tokio::time::Instant::now() + wait;
        let client = loop {
            let attempt = async_nats::ConnectOptions::new()
                .name(name)
                .connection_timeout(Duration::from_secs(3))
                .connect(config.url.as_str());
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(c)) => break c,
                Ok(Err(e)) => {
                    if tokio::time::Instant::now() >= deadline {
                        anyhow::bail!("cannot connect to NATS at {}: {e}", config.url);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => anyhow::bail!("cannot connect to NATS at {} within {wait:?}", config.url),
            }
        };
        let info = client.server_info();
        if !version_at_least(&info.version, 2, 10) {
            anyhow::bail!(
                "NATS server at {} is version {}; Parley needs 2.10 or newer (key-value watch with many filters)",
                config.url,
                info.version
            );
        }
        if !info.jetstream {
            anyhow::bail!("NATS server at {} has JetStream disabled; start it with -js", config.url);
        }
        let js = jetstream::new(client.clone());
        topology::ensure(&js, config).await?;
        Ok(Self { client, js })
    }

    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.js.clone())
    }

    pub async fn config_kv(&self) -> anyhow::Result<jetstream::kv::Store> {
        self.js.get_key_value(topology::buckets::CONFIG).await.map_err(|e| anyhow::anyhow!("config bucket: {e}"))
    }

    pub async fn conversations(&self) -> anyhow::Result<ConversationLog> {
        ConversationLog::new(&self.js).await
    }

    /// Removes every record of a subject (wildcards allowed) from a stream: erasure.
    /// Returns how many were removed.
    pub async fn purge(&self, stream: topology::StreamDef, subject: &str) -> anyhow::Result<u64> {
        let s = self.js.get_stream(stream.name).await.map_err(|e| anyhow::anyhow!("stream {}: {e}", stream.name))?;
        let purged = s.purge().filter(subject).await.map_err(|e| anyhow::anyhow!("purging {subject}: {e}"))?;
        Ok(purged.purged)
    }

    /// Removes from a stream every message of `subject` (wildcards allowed) whose payload
    /// `doomed` picks, reading the subject from its start to the stream's end as it stands
    /// now: erasure of records that share a subject with other customers' records. Returns
    /// how many were removed.
    pub async fn delete_where(
        &self,
        stream: topology::StreamDef,
        subject: &str,
        doomed: impl Fn(&[u8]) -> bool,
    ) -> anyhow::Result<u64> {
        use futures_util::StreamExt;
        let s = self.js.get_stream(stream.name).await.map_err(|e| anyhow::anyhow!("stream {}: {e}", stream.name))?;
        let mut consumer = s
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot read {subject}: {e}"))?;
        let mut left = consumer.info().await.map_err(|e| anyhow::anyhow!("cannot read {subject}: {e}"))?.num_pending;
        let mut sequences = Vec::new();
        if left > 0 {
            let mut messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("cannot read {subject}: {e}"))?;
            while left > 0 {
                let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
                    .await
                    .map_err(|_| anyhow::anyhow!("reading {subject} stalled"))?;
                let Some(m) = next else { anyhow::bail!("reading {subject} ended early") };
                let m = m.map_err(|e| anyhow::anyhow!("reading {subject}: {e}"))?;
                let info = m.info().map_err(|e| anyhow::anyhow!("message without info: {e}"))?;
                if doomed(&m.payload) {
                    sequences.push(info.stream_sequence);
                }
                left = info.pending;
            }
        }
        let mut removed = 0;
        for seq in sequences {
            match s.delete_message(seq).await {
                Ok(true) => removed += 1,
                // Aged out or removed meanwhile: gone either way.
                Ok(false) => {}
                Err(e)
                    if matches!(e.kind(), jetstream::stream::DeleteMessageErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND) => {}
                Err(e) => anyhow::bail!("removing message {seq} of {}: {e}", stream.name),
            }
        }
        Ok(removed)
    }
}

/// Compares a `major.minor.patch` version string.
fn version_at_least(version: &str, major: u64, minor: u64) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_compare() {
        assert!(super::version_at_least("2.10.0", 2, 10));
        assert!(super::version_at_least("2.15.1", 2, 10));
        assert!(super::version_at_least("3.0.0", 2, 10));
        assert!(!super::version_at_least("2.9.10", 2, 10));
        assert!(!super::version_at_least("", 2, 10));
    }
}
