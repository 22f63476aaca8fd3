//! Parley's ingest service: the edge where customer messages come in.
//!
//! Three edges, one rule. The generic API channel (gRPC `ApiChannelService`, [`api`]): an
//! integrator submits a customer message with an idempotency key and follows what Parley
//! sends back to that customer. Provider webhooks ([`webhooks`], a public HTTP listener
//! apart from the ops port): Telegram, WhatsApp, Viber and Twilio-style SMS post customer
//! messages and delivery receipts, verified by their signatures and parsed by
//! `parley-channels`, normalised by [`normalise`]. An SMTP listener ([`smtp`], public as
//! well): mail servers deliver customers' email to the tenants' support addresses. Every
//! way, each message is validated, normalised into a `CustomerMessage` (or a
//! `DeliveryReceipt`) and published to `PARLEY_INBOUND` with its dedupe id; the sender gets
//! an answer only after JetStream acknowledged it, so an acknowledged message is never
//! lost, and a retry with the same key, provider id or `Message-ID` is recognised instead
//! of stored twice.

pub mod api;
pub mod attachments;
pub mod media;
pub mod normalise;
pub mod smtp;
pub mod webchat;
pub mod webhooks;

use std::net::SocketAddr;

use std::sync::Arc;
use std::time::Duration;

use parley_kit::auth::{Authenticator, TokenKey};
use parley_kit::config::{AuthConfig, NatsConfig, ServerConfig, TelemetryConfig, Validate};
use parley_kit::runtime::{self, HasTelemetry, ServiceHandle};
use parley_kit::telemetry::Metrics;
use parley_nats::consume::{self, ConsumerSpec};
use parley_nats::{ConfigCache, MediaStore, Nats, ObjectMedia, topology};
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
    pub smtp: SmtpConfig,
    pub media: attachments::MediaConfig,
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

/// The SMTP listener for the email channel's inbound mail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Off: no SMTP listener, and email channel configs take no mail in.
    pub enabled: bool,
    /// Where mail servers deliver (plain SMTP; TLS, if any, ends before it).
    pub addr: SocketAddr,
    /// The name this server gives in its greeting (the MX host name mail is sent to).
    pub hostname: String,
    /// Larger messages are refused with 552 (announced as `SIZE`, checked while reading).
    pub max_message_bytes: usize,
    /// Connections served at once; more are told 421 (try later) and closed. Each holds at
    /// most `max_message_bytes` of message.
    pub max_connections: usize,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: SocketAddr::from(([0, 0, 0, 0], 2525)),
            hostname: "localhost".into(),
            max_message_bytes: 25 * 1024 * 1024,
            max_connections: 100,
        }
    }
}

/// The name of the SMTP listener on the service handle ([`ServiceHandle::listener`]).
pub const SMTP_LISTENER: &str = "smtp";

/// The largest `smtp.max_message_bytes` accepted: messages are held in memory while read.
const MAX_SMTP_MESSAGE_BYTES: usize = 100 * 1024 * 1024;

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(7101, 7191),
            nats: NatsConfig::default(),
            auth: AuthConfig::default(),
            telemetry: TelemetryConfig::default(),
            webhooks: WebhooksConfig::default(),
            smtp: SmtpConfig::default(),
            media: attachments::MediaConfig::default(),
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
        self.media.validate()?;
        let smtp = &self.smtp;
        if !(1024..=MAX_SMTP_MESSAGE_BYTES).contains(&smtp.max_message_bytes) {
            return Err(format!(
                "smtp.max_message_bytes must be 1024 to {MAX_SMTP_MESSAGE_BYTES}, got {}",
                smtp.max_message_bytes
            ));
        }
        if !(1..=10_000).contains(&smtp.max_connections) {
            return Err(format!("smtp.max_connections must be 1 to 10000, got {}", smtp.max_connections));
        }
        // It goes into every greeting line: one word of visible ASCII (a host name or an
        // address literal such as `[192.0.2.1]`).
        if smtp.hostname.is_empty() || smtp.hostname.len() > 255 || !smtp.hostname.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!("smtp.hostname must be a host name of visible ASCII, got {:?}", smtp.hostname));
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
    let store: Arc<dyn MediaStore> = Arc::new(ObjectMedia::open(&nats.js).await?);
    let hooks = webhooks::Webhooks {
        cache: cache.clone(),
        publisher: nats.publisher(),
        max_body_bytes: config.webhooks.max_body_bytes,
    };
    let postmaster = smtp::Postmaster {
        cache: cache.clone(),
        publisher: nats.publisher(),
        store: store.clone(),
        max_message_bytes: config.smtp.max_message_bytes,
        thread_key: config.auth.signing_key.expose().as_bytes().to_vec(),
    };
    let cache_for_chat = cache.clone();
    let cache_for_media = cache.clone();
    let api = api::ApiChannel { cache, publisher: nats.publisher(), js: nats.js.clone(), token: token.clone() };
    let routes = tonic::service::Routes::new(ApiChannelServiceServer::new(api));

    // Its own listener, not a route on the ops port: providers must reach it from the
    // internet, and `/metrics` must not be.
    let listener = runtime::bind(config.webhooks.addr).await?;
    let webhooks_addr = listener.local_addr()?;
    let mut tasks = tokio::task::JoinSet::new();
    let chat = webchat::WebChat {
        cache: cache_for_chat,
        publisher: nats.publisher(),
        js: nats.js.clone(),
        hub: parley_nats::hub::Hub::start(
            nats.js.clone(),
            topology::OUTBOUND,
            topology::outbound_channel_filter(parley_domain::Channel::WebChat),
            token.clone(),
        )
        .await?,
        token_key: webchat::token_key(config.auth.signing_key.expose().as_bytes()),
        link_key: parley_channels::media_link_key(config.auth.signing_key.expose().as_bytes()),
        shutdown: token.clone(),
        store: store.clone(),
        policy: config.media.policy(),
    };
    let serving = attachments::Serving {
        auth: auth.clone(),
        store: store.clone(),
        link_key: parley_channels::media_link_key(config.auth.signing_key.expose().as_bytes()),
        policy: config.media.policy(),
    };
    let public = webhooks::router(hooks).merge(webchat::router(chat)).merge(attachments::router(serving));
    if config.media.enabled {
        let spec = ConsumerSpec {
            lanes: 8,
            max_ack_pending: 1_000,
            ack_wait: config.media.ack_wait(),
            ..ConsumerSpec::new(topology::INBOUND, topology::consumers::INGEST_MEDIA)
        };
        let worker = attachments::MediaWorker::new(cache_for_media, store.clone(), config.media.clone())?;
        tasks.spawn(consume::run(nats.js.clone(), spec, Arc::new(worker), metrics.clone(), token.clone()));
    }
    tasks.spawn(runtime::serve_http(listener, public, token.clone()));
    tracing::info!(%webhooks_addr, "webhooks listening");
    // Public too, and a protocol of its own.
    let smtp_addr = if config.smtp.enabled {
        let listener = runtime::bind(config.smtp.addr).await?;
        let addr = listener.local_addr()?;
        let settings = smtp::Settings {
            hostname: config.smtp.hostname.clone(),
            max_message_bytes: config.smtp.max_message_bytes,
            max_recipients: smtp::MAX_RECIPIENTS,
        };
        let (limits, max_connections) = (smtp::Limits::default(), config.smtp.max_connections);
        tasks.spawn(smtp::serve(listener, postmaster, settings, limits, max_connections, token.clone()));
        tracing::info!(smtp_addr = %addr, "smtp listening");
        Some(addr)
    } else {
        None
    };
    let handle =
        runtime::launch("ingest", &config.server, routes, parley_kit::axum::Router::new(), auth, metrics, token, tasks)
            .await?;
    let handle = handle.with_listener(WEBHOOKS_LISTENER, webhooks_addr);
    Ok(match smtp_addr {
        Some(addr) => handle.with_listener(SMTP_LISTENER, addr),
        None => handle,
    })
}

#[cfg(test)]
mod tests {
    use parley_kit::config::Secret;

    use super::*;

    fn valid() -> IngestConfig {
        let mut c = IngestConfig::default();
        c.auth.signing_key = Secret::new("k".repeat(32));
        c
    }

    #[test]
    fn smtp_settings_are_validated_and_named() {
        assert_eq!(valid().validate(), Ok(()));
        /// A change to the section, and the key its error must name.
        type Case = (fn(&mut SmtpConfig), &'static str);
        let cases: [Case; 6] = [
            (|s| s.max_message_bytes = 1023, "smtp.max_message_bytes"),
            (|s| s.max_message_bytes = MAX_SMTP_MESSAGE_BYTES + 1, "smtp.max_message_bytes"),
            (|s| s.max_connections = 0, "smtp.max_connections"),
            (|s| s.hostname = String::new(), "smtp.hostname"),
            (|s| s.hostname = "mx.example.com\r\n250 forged".into(), "smtp.hostname"),
            (|s| s.hostname = "почта.example".into(), "smtp.hostname"),
        ];
        for (change, key) in cases {
            let mut c = valid();
            change(&mut c.smtp);
            let err = c.validate().expect_err(key);
            assert!(err.starts_with(key), "{err}");
        }
        // An address literal is a name too.
        let mut c = valid();
        c.smtp.hostname = "[192.0.2.25]".into();
        assert_eq!(c.validate(), Ok(()));
    }
}
