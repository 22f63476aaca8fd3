//! Parley's notification service: delivery to operators, and replies to customers.
//!
//! Operator desks hold an `OpenSession` stream ([`session`]) on any replica; each session
//! follows the operator's subject in `PARLEY_DESK` from the sequence the desk last saw, so a
//! desk that reconnects to another replica after a drop or a replica's death catches up with
//! no gaps and no repeats. The frames a desk sends keep its session alive in Redis, which is
//! what makes the operator `connected` for routing. Replies go from here to
//! `PARLEY_OUTBOUND`, from where the [`senders`] deliver them to the customers' providers
//! and routing records them.

pub mod desk;
pub mod email;
pub mod senders;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use parley_kit::auth::{Authenticator, TokenKey};
use parley_kit::config::{AuthConfig, NatsConfig, RedisConfig, ServerConfig, TelemetryConfig, Validate};
use parley_kit::runtime::{self, HasTelemetry, ServiceHandle};
use parley_kit::telemetry::Metrics;
use parley_nats::consume::{self, ConsumerSpec};
use parley_nats::hub::Hub;
use parley_nats::{ConfigCache, MediaStore, Nats, ObjectMedia, topology};
use parley_proto::v1::operator_session_service_server::OperatorSessionServiceServer;
use parley_redis::Coordinator;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Everything the notification service reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationConfig {
    pub server: ServerConfig,
    pub nats: NatsConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub telemetry: TelemetryConfig,
    pub sessions: SessionsSection,
    pub senders: senders::SendersSection,
    pub desk: desk::DeskSection,
}

/// Desk session timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsSection {
    /// How often desks are asked to send a heartbeat.
    pub heartbeat_interval_secs: u64,
    /// How long a session counts as alive after the desk's last frame.
    pub ttl_secs: u64,
}

impl Default for SessionsSection {
    fn default() -> Self {
        Self { heartbeat_interval_secs: 5, ttl_secs: 15 }
    }
}

impl Default for NotificationConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(7401, 7491),
            nats: NatsConfig::default(),
            redis: RedisConfig::default(),
            auth: AuthConfig::default(),
            telemetry: TelemetryConfig::default(),
            sessions: SessionsSection::default(),
            senders: senders::SendersSection::default(),
            desk: desk::DeskSection::default(),
        }
    }
}

impl Validate for NotificationConfig {
    fn validate(&self) -> Result<(), String> {
        parley_kit::config::validate_common(&self.server, &self.auth, &self.telemetry, &self.nats)?;
        parley_kit::config::validate_redis(&self.redis)?;
        let s = &self.sessions;
        if !(1..=60).contains(&s.heartbeat_interval_secs) {
            return Err("sessions.heartbeat_interval_secs must be 1 to 60".into());
        }
        if s.ttl_secs < 2 * s.heartbeat_interval_secs || s.ttl_secs > 600 {
            return Err("sessions.ttl_secs must be at least twice the heartbeat interval and at most 600".into());
        }
        self.senders.validate()?;
        self.desk.validate()
    }
}

impl HasTelemetry for NotificationConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// Starts the notification service; it runs until `token` fires, then drains.
pub async fn start(
    config: NotificationConfig,
    metrics: Metrics,
    token: CancellationToken,
) -> anyhow::Result<ServiceHandle> {
    let wait = Duration::from_secs(30);
    let nats = Nats::connect(&config.nats, "parley-notification", wait).await?;
    let cache = Arc::new(ConfigCache::start(nats.config_kv().await?, token.clone()).await?);
    let redis = Coordinator::connect(&config.redis.url, wait).await?;
    let auth = Authenticator::new(TokenKey::new(config.auth.signing_key.clone()), cache.clone());
    let store: Arc<dyn MediaStore> = Arc::new(ObjectMedia::open(&nats.js).await?);
    let sessions = Arc::new(session::Sessions {
        hub: Hub::start(nats.js.clone(), topology::DESK, topology::DESK.subjects.into(), token.clone()).await?,
        log: nats.conversations().await?,
        publisher: nats.publisher(),
        redis,
        heartbeat: Duration::from_secs(config.sessions.heartbeat_interval_secs),
        session_ttl: Duration::from_secs(config.sessions.ttl_secs),
        token: token.clone(),
        store: store.clone(),
        media_links: !config.senders.public_media_url.is_empty(),
    });
    let routes = tonic::service::Routes::new(OperatorSessionServiceServer::new(session::SessionApi(sessions.clone())));

    let mut tasks = tokio::task::JoinSet::new();
    if config.senders.enabled {
        let spec = ConsumerSpec {
            ack_wait: config.senders.ack_wait(),
            ..ConsumerSpec::new(topology::OUTBOUND, topology::consumers::NOTIFICATION_SENDERS)
        };
        let senders = senders::Senders {
            http: senders::http_client(&config.senders)?,
            settings: config.senders.clone(),
            cache,
            redis: sessions.redis.clone(),
            publisher: nats.publisher(),
            thread_key: config.auth.signing_key.expose().as_bytes().to_vec(),
            media_key: parley_channels::media_link_key(config.auth.signing_key.expose().as_bytes()),
            store,
        };
        tasks.spawn(consume::run(nats.js.clone(), spec, Arc::new(senders), metrics.clone(), token.clone()));
    }
    let web = match config.desk.enabled {
        true => desk::router(desk::Desk::new(&config.desk, sessions.clone(), auth.clone())?),
        false => parley_kit::axum::Router::new(),
    };
    runtime::launch("notification", &config.server, routes, web, auth, metrics, token, tasks).await
}
