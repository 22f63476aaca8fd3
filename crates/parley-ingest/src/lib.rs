//! Parley's ingest service: the edge where customer messages come in.
//!
//! This first edge is the generic API channel (gRPC `ApiChannelService`): an integrator
//! submits a customer message with an idempotency key and follows what Parley sends back to
//! that customer. Every message is validated, normalised into a `CustomerMessage` and
//! published to `PARLEY_INBOUND` with its dedupe id; the caller gets an answer only after
//! JetStream acknowledged it, so an acknowledged message is never lost, and a retry with
//! the same key is recognised instead of stored twice.

pub mod api;

use std::sync::Arc;
use std::time::Duration;

use parley_kit::auth::{Authenticator, TokenKey};
use parley_kit::config::{AuthConfig, NatsConfig, ServerConfig, TelemetryConfig, Validate};
use parley_kit::runtime::{self, HasTelemetry, ServiceHandle};
use parley_kit::telemetry::Metrics;
use parley_nats::{ConfigCache, Nats};
use parley_proto::v1::api_channel_service_server::ApiChannelServiceServer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Everything the ingest service reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub server: ServerConfig,
    pub nats: NatsConfig,
    pub auth: AuthConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(7101, 7191),
            nats: NatsConfig::default(),
            auth: AuthConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Validate for IngestConfig {
    fn validate(&self) -> Result<(), String> {
        parley_kit::config::validate_common(&self.server, &self.auth, &self.telemetry, &self.nats)
    }
}

impl HasTelemetry for IngestConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// Starts the ingest service; it runs until `token` fires, then drains.
pub async fn start(config: IngestConfig, metrics: Metrics, token: CancellationToken) -> anyhow::Result<ServiceHandle> {
    let nats = Nats::connect(&config.nats, "parley-ingest", Duration::from_secs(30)).await?;
    let cache = ConfigCache::start(nats.config_kv().await?, token.clone()).await?;
    let auth = Authenticator::new(TokenKey::new(config.auth.signing_key.clone()), Arc::new(cache.clone()));
    let api = api::ApiChannel { cache, publisher: nats.publisher(), js: nats.js.clone(), token: token.clone() };
    let routes = tonic::service::Routes::new(ApiChannelServiceServer::new(api));

    let tasks = tokio::task::JoinSet::new();
    runtime::launch("ingest", &config.server, routes, parley_kit::axum::Router::new(), auth, metrics, token, tasks)
        .await
}
