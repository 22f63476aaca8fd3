//! Parley's routing service: owns conversations and assignment.
//!
//! Layout:
//! - [`engine`]: every change to a conversation (read, apply, append with compare-and-set,
//!   Redis effects), dispatch of waiting conversations, presence, rebuild.
//! - [`record`]: a transition as the record appended to the conversation log.
//! - [`fast_track`]: fast-track codes: their shape, finding them in messages, using them.
//! - [`preview`]: dry runs of a queue configuration against the conversations waiting now.
//! - [`consumers`]: inbound customer messages, operator replies, and the fan-out of each
//!   record to desks and customers.
//! - [`api`], [`admin`]: the `RoutingService` and `AdminService` gRPC APIs.
//! - [`rebuild`]: restoring Redis from JetStream after Redis lost its data.
//!
//! *Architecture invariant*: a conversation changes only by an append to its subject in
//! `PARLEY_EVENTS` at the sequence it was read at, and capacity only by the Redis claim
//! script. Everything else (Redis queues, offer deadlines) can be rebuilt from those.

pub mod admin;
pub mod api;
pub mod config;
pub mod consumers;
pub mod engine;
pub mod fast_track;
pub mod preview;
pub mod rebuild;
pub mod record;

use std::sync::Arc;
use std::time::Duration;

use parley_kit::auth::{Authenticator, TokenKey};
use parley_kit::runtime::{self, ServiceHandle};
use parley_kit::telemetry::Metrics;
use parley_nats::consume::{self, ConsumerSpec};
use parley_nats::{ConfigCache, Nats, topology};
use parley_proto::v1::admin_service_server::AdminServiceServer;
use parley_proto::v1::routing_service_server::RoutingServiceServer;
use parley_redis::Coordinator;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::RoutingConfig;

/// Starts the routing service; it runs until `token` fires, then drains.
pub async fn start(config: RoutingConfig, metrics: Metrics, token: CancellationToken) -> anyhow::Result<ServiceHandle> {
    let wait = Duration::from_secs(30);
    let nats = Nats::connect(&config.nats, "parley-routing", wait).await?;
    let cache = ConfigCache::start(nats.config_kv().await?, token.clone()).await?;
    let redis = Coordinator::connect(&config.redis.url, wait).await?;
    let presence = nats
        .js
        .get_key_value(topology::buckets::PRESENCE)
        .await
        .map_err(|e| anyhow::anyhow!("presence bucket: {e}"))?;
    let engine = Arc::new(engine::Engine {
        cache: cache.clone(),
        log: nats.conversations().await?,
        redis,
        presence,
        wake: Arc::new(Notify::new()),
        memory: engine::Memory::default(),
        repairs: Default::default(),
        finishing: Default::default(),
        publisher: nats.publisher(),
        prefetch: Default::default(),
    });
    engine.rebuild_if_needed(&nats.js).await?;

    let key = TokenKey::new(config.auth.signing_key.clone());
    let auth = Authenticator::new(key.clone(), Arc::new(cache.clone()));
    let routes = tonic::service::Routes::new(RoutingServiceServer::new(api::RoutingApi { engine: engine.clone() }))
        .add_service(AdminServiceServer::from_arc(admin::AdminApi::new(cache, key, engine.clone())));

    let lanes = config.routing.lanes;
    let ack_wait = Duration::from_secs(config.routing.ack_wait_secs);
    let spec = |stream, durable| ConsumerSpec { lanes, ack_wait, ..ConsumerSpec::new(stream, durable) };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(consume::run(
        nats.js.clone(),
        spec(topology::INBOUND, topology::consumers::ROUTING_INBOUND),
        Arc::new(consumers::Inbound { engine: engine.clone() }),
        metrics.clone(),
        token.clone(),
    ));
    tasks.spawn(consume::run(
        nats.js.clone(),
        spec(topology::OUTBOUND, topology::consumers::ROUTING_OUTBOUND),
        Arc::new(consumers::OperatorReplies { engine: engine.clone() }),
        metrics.clone(),
        token.clone(),
    ));
    tasks.spawn(consume::run(
        nats.js.clone(),
        spec(topology::EVENTS, topology::consumers::ROUTING_FANOUT),
        Arc::new(consumers::Fanout { engine: engine.clone(), publisher: nats.publisher() }),
        metrics.clone(),
        token.clone(),
    ));
    tasks.spawn(engine.clone().run_dispatcher(
        nats.js.clone(),
        Duration::from_millis(config.routing.dispatch_interval_ms),
        token.clone(),
    ));
    tasks.spawn(engine.clone().run_maintenance(
        nats.js.clone(),
        Duration::from_secs(config.routing.reconcile_interval_secs),
        Duration::from_secs(config.routing.repair_interval_secs),
        token.clone(),
    ));
    runtime::launch("routing", &config.server, routes, parley_kit::axum::Router::new(), auth, metrics, token, tasks)
        .await
}
