//! Parley's history service: the record.
//!
//! It applies the schema migrations, consumes the conversation log (`PARLEY_EVENTS`) into
//! PostgreSQL with the batching, idempotent [`writer`], and serves the history gRPC API
//! ([`api`]). All reads and writes run under row-level security with the tenant set per
//! transaction.

pub mod api;
pub mod erasure;
pub mod retention;
pub mod transcript;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use parley_kit::auth::{Authenticator, TokenKey};
use parley_kit::config::{AuthConfig, NatsConfig, Secret, ServerConfig, TelemetryConfig, Validate};
use parley_kit::runtime::{self, HasTelemetry, ServiceHandle};
use parley_kit::telemetry::Metrics;
use parley_nats::consume::{self, ConsumerSpec};
use parley_nats::{ConfigCache, MediaStore, Nats, ObjectMedia, topology};
use parley_proto::v1::history_service_server::HistoryServiceServer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Everything the history service reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    pub server: ServerConfig,
    pub nats: NatsConfig,
    pub database: DatabaseSection,
    pub auth: AuthConfig,
    pub telemetry: TelemetryConfig,
    pub writer: WriterSection,
    pub retention: retention::RetentionSection,
}

/// PostgreSQL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// A libpq-style URL; its user owns the schema (runs migrations).
    pub url: Secret,
    /// Connections in the pool.
    pub pool_size: usize,
    /// The non-owner role every pooled session switches to, so row-level security applies.
    pub app_role: String,
    /// Apply pending migrations at start (otherwise run `parley-history migrate`).
    pub migrate_on_start: bool,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/parley"),
            pool_size: 16,
            app_role: "parley_app".into(),
            migrate_on_start: true,
        }
    }
}

/// The batching writer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterSection {
    /// Records per transaction at most.
    pub max_batch: usize,
    /// How long the first record of a batch waits for company.
    pub max_delay_ms: u64,
    /// Concurrent lanes (records of one conversation share a lane and stay in order). Each
    /// holds its record until the record's batch commits, so this bounds the records in
    /// flight: the writer's depth (the consumer lets twice as many await an ack).
    pub lanes: usize,
    /// Batches committing at once, each on its own connection (a record waits for its
    /// commit, so one conversation's records are never in two batches at a time).
    pub concurrent_batches: usize,
}

impl Default for WriterSection {
    fn default() -> Self {
        Self { max_batch: 1000, max_delay_ms: 5, lanes: 8192, concurrent_batches: 6 }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(7301, 7391),
            nats: NatsConfig::default(),
            database: DatabaseSection::default(),
            auth: AuthConfig::default(),
            telemetry: TelemetryConfig::default(),
            writer: WriterSection::default(),
            retention: retention::RetentionSection::default(),
        }
    }
}

impl Validate for HistoryConfig {
    fn validate(&self) -> Result<(), String> {
        parley_kit::config::validate_common(&self.server, &self.auth, &self.telemetry, &self.nats)?;
        let db = &self.database;
        if !db.url.expose().starts_with("postgres://") && !db.url.expose().starts_with("postgresql://") {
            return Err("database.url must start with postgres:// or postgresql://".into());
        }
        if !(1..=256).contains(&db.pool_size) {
            return Err("database.pool_size must be 1 to 256".into());
        }
        if db.app_role.is_empty() || !db.app_role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err("database.app_role must be a plain role name (letters, digits, _)".into());
        }
        self.retention.validate()?;
        let w = &self.writer;
        if !(1..=10_000).contains(&w.max_batch) || w.max_delay_ms > 1000 || !(1..=16384).contains(&w.lanes) {
            return Err("writer: max_batch 1..=10000, max_delay_ms ≤ 1000, lanes 1..=16384".into());
        }
        if w.concurrent_batches == 0 || w.concurrent_batches >= db.pool_size {
            return Err(format!(
                "writer.concurrent_batches must be 1 to database.pool_size - 1 ({}), leaving a connection for queries",
                db.pool_size.saturating_sub(1)
            ));
        }
        Ok(())
    }
}

impl HasTelemetry for HistoryConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// Months of `messages` made ahead of time.
const MONTHS_AHEAD: i32 = 3;

/// Keeps `messages`' months created ahead: at start, then hourly (a failure is retried at
/// the next hour; until the current month's partition is missing, rows go to the default
/// one, so nothing is refused).
async fn message_months(db: parley_pg::Db, token: CancellationToken) -> anyhow::Result<()> {
    loop {
        match db.ensure_message_months(MONTHS_AHEAD).await {
            Ok(0) => {}
            Ok(made) => tracing::info!(made, "message months created"),
            Err(e) => tracing::warn!(error = %e, "creating message months failed; retrying in an hour"),
        }
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// Applies pending migrations; returns the versions applied.
pub async fn migrate(config: &HistoryConfig) -> anyhow::Result<Vec<i32>> {
    parley_pg::migrate::run(config.database.url.expose()).await
}

/// Starts the history service; it runs until `token` fires, then drains.
pub async fn start(config: HistoryConfig, metrics: Metrics, token: CancellationToken) -> anyhow::Result<ServiceHandle> {
    if config.database.migrate_on_start {
        migrate(&config).await?;
    }
    let db =
        parley_pg::Db::connect(config.database.url.expose(), config.database.pool_size, &config.database.app_role)?;
    db.ping().await.map_err(|e| anyhow::anyhow!("database: {e}"))?;
    let nats = Nats::connect(&config.nats, "parley-history", Duration::from_secs(30)).await?;
    let cache = ConfigCache::start(nats.config_kv().await?, token.clone()).await?;
    let auth = Authenticator::new(TokenKey::new(config.auth.signing_key.clone()), Arc::new(cache.clone()));
    let store: Arc<dyn MediaStore> = Arc::new(ObjectMedia::open(&nats.js).await?);
    let api = api::HistoryApi { db: db.clone(), nats: nats.clone(), store: store.clone() };
    let retention =
        retention::Retention { db: db.clone(), nats: nats.clone(), store, cache, settings: config.retention.clone() };
    let routes = tonic::service::Routes::new(HistoryServiceServer::new(api));

    // The batcher outlives the consumer: it stops when the consumer, after draining, drops
    // the handler that feeds it.
    let (writer, batcher) = writer::start(db.clone(), &config.writer, metrics.clone());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(message_months(db.clone(), token.clone()));
    if config.retention.enabled {
        tasks.spawn(retention.run(token.clone()));
    }
    let spec = ConsumerSpec {
        lanes: config.writer.lanes,
        max_ack_pending: 2 * config.writer.lanes as i64,
        ..ConsumerSpec::new(topology::EVENTS, topology::consumers::HISTORY_EVENTS)
    };
    let (consumer_token, consumer_metrics) = (token.clone(), metrics.clone());
    tasks.spawn(async move {
        let result = consume::run(nats.js.clone(), spec, writer, consumer_metrics, consumer_token).await;
        // The consumer has drained; every handler dropped its sender, so the batcher ends.
        batcher.await.map_err(|e| anyhow::anyhow!("batcher panicked: {e}"))??;
        result
    });
    runtime::launch("history", &config.server, routes, parley_kit::axum::Router::new(), auth, metrics, token, tasks)
        .await
}
