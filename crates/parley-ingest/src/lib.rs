//! Parley's ingest service: the edge where customer messages come in.
//!
//! Two edges, one rule. The generic API channel (gRPC `ApiChannelService`, [`api`]): an
//! integrator submits a customer message with an idempotency key and follows what Parley
//! sends back to that customer. Provider webhooks ([`webhooks`], a public HTTP listener
//! apart from the ops port): Telegram, WhatsApp, Viber and Twilio-style SMS post customer
//! messages and delivery receipts, verified by their signatures and parsed by
//! `parley-channels`, normalised by [`normalise`]. Either way every message is validated,
//! normalised into a `CustomerMessage` (or a `DeliveryReceipt`) and published to
//! `PARLEY_INBOUND` with its dedupe id; the caller gets an answer only after JetStream
//! acknowledged it, so an acknowledged message is never lost, and a retry with the same key
//! or provider id is recognised instead of stored twice.

pub mod api;
pub mod normalise;
pub mod webhooks;

use std::net::SocketAddr;

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
    pub webhooks: WebhooksConfig,
}

/// The public listener for provider webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where providers post; public, unlike `server.http_addr` (metrics stay private).
    pub addr: SocketAddr,
    /// Larger bodies are refused with 413 before anything else is done.
    pub max_body_bytes: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self { addr: SocketAddr::from(([0, 0, 0, 0], 7180)), max_body_bytes: parley_channels::MAX_WEBHOOK_BYTES }
    }
}

/// The name of the webhook listener on the service handle ([`ServiceHandle::listener`]).
pub const WEBHOOKS_LISTENER: &str = "webhooks";

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(7101, 7191),
            nats: NatsConfig::default(),
            auth: AuthConfig::default(),
            telemetry: TelemetryConfig::default(),
            webhooks: WebhooksConfig::default(),
        }
    }
}

impl Validate for IngestConfig {
    fn validate(&self) -> Result<(), String> {
        parley_kit::config::validate_common(&self.server, &self.auth, &self.telemetry, &self.nats)?;
        // The parsers refuse anything above MAX_WEBHOOK_BYTES anyway.
        if !(1024..=parley_channels::MAX_WEBHOOK_BYTES).contains(&self.webhooks.max_body_bytes) {
            return Err(format!(
                "webhooks.max_body_bytes must be 1024 to {}, got {}",
                parley_channels::MAX_WEBHOOK_BYTES,
                self.webhooks.max_body_bytes
            ));
        }
        Ok(())
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
    let hooks = webhooks::Webhooks {
        cache: cache.clone(),
        publisher: nats.publisher(),
        max_body_bytes: config.webhooks.max_body_bytes,
    };
    let api = api::ApiChannel { cache, publisher: nats.publisher(), js: nats.js.clone(), token: token.clone() };
    let routes = tonic::service::Routes::new(ApiChannelServiceServer::new(api));

    // Its own listener, not a route on the ops port: providers must reach it from the
    // internet, and `/metrics` must not be.
    let listener = runtime::bind(config.webhooks.addr).await?;
    let webhooks_addr = listener.local_addr()?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(runtime::serve_http(listener, webhooks::router(hooks), token.clone()));
    tracing::info!(%webhooks_addr, "webhooks listening");
    let handle =
        runtime::launch("ingest", &config.server, routes, parley_kit::axum::Router::new(), auth, metrics, token, tasks)
            .await?;
    Ok(handle.with_listener(WEBHOOKS_LISTENER, webhooks_addr))
}
