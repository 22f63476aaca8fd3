//! Parley's test harness (`spawn_app`, in the zero-to-production style).
//!
//! Layout:
//! - [`servers`]: real `nats-server`, `redis-server` and a per-test PostgreSQL database.
//! - [`App`]: the four services started in-process on free ports against that
//!   infrastructure, with a random signing key, and typed, authenticated clients.
//! - [`ServiceProcess`]: a service binary as a child process, for `kill -9` tests.
//! - [`providers::Providers`]: the messaging providers' send APIs, as a local double that
//!   every [`App`]'s notification service sends to; [`mail::MailRelay`], an SMTP relay
//!   for email replies.
//! - [`eventually`]: polls a condition instead of sleeping.
//!
//! Logs are silent unless `PARLEY_TEST_LOG` is set (to a `tracing` filter, e.g. `info`).

pub mod mail;
pub mod providers;
pub mod servers;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parley_domain::Role;
use parley_kit::auth::{Bearer, Claims, PLATFORM_TENANT, TokenKey};
use parley_kit::config::{Secret, ServerConfig, TelemetryConfig};
use parley_kit::runtime::ServiceHandle;
use parley_kit::telemetry::Metrics;
use parley_proto::v1;
use parley_proto::v1::admin_service_client::AdminServiceClient;
use parley_proto::v1::api_channel_service_client::ApiChannelServiceClient;
use parley_proto::v1::history_service_client::HistoryServiceClient;
use parley_proto::v1::operator_session_service_client::OperatorSessionServiceClient;
use parley_proto::v1::routing_service_client::RoutingServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use servers::{NatsServer, RedisServer, TestDatabase};

/// A client with a bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Every operator's presence (status, connection, load per channel) as a routing replica
/// sees it; `None` when the call fails (for polling with [`eventually`]).
pub async fn presences(mut routing: RoutingServiceClient<Authed>) -> Option<Vec<v1::OperatorPresence>> {
    let request = v1::ListOperatorPresencesRequest {};
    Some(routing.list_operator_presences(request).await.ok()?.into_inner().presences)
}

/// Shows service logs in tests when `PARLEY_TEST_LOG` is set.
pub fn init_logging() {
    if let Ok(filter) = std::env::var("PARLEY_TEST_LOG") {
        let config = TelemetryConfig { log_filter: filter, ..TelemetryConfig::default() };
        let _ = parley_kit::telemetry::init("test", &config);
    }
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// NATS, Redis and a database, all fresh.
pub struct Infra {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub db: TestDatabase,
}

impl Infra {
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Self { nats: NatsServer::start()?, redis: RedisServer::start()?, db: TestDatabase::create().await? })
    }
}

/// The random signing key of one test installation.
fn random_key() -> Secret {
    Secret::new(format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()))
}

fn any_port() -> ServerConfig {
    let mut s = ServerConfig::on_ports(0, 0);
    s.shutdown_grace_secs = 10;
    s
}

/// Timing knobs of the services an [`App`] starts.
#[derive(Debug, Clone, Copy)]
pub struct AppOptions {
    pub dispatch_interval_ms: u64,
    pub reconcile_interval_secs: u64,
    pub ack_wait_secs: u64,
    pub heartbeat_interval_secs: u64,
    pub session_ttl_secs: u64,
    /// Replaces every send rate of the notification service's senders (tenant and each
    /// channel) with this many a second (and as large a burst), for benchmarks.
    pub send_rate: Option<f64>,
    /// Deliveries after which ingest's media worker gives up on a file.
    pub media_max_deliveries: i64,
    /// How often history applies retention policies.
    pub retention_interval_secs: u64,
}

impl Default for AppOptions {
    /// Quick timeouts, so tests of crashes and expiries finish fast.
    fn default() -> Self {
        Self {
            dispatch_interval_ms: 100,
            reconcile_interval_secs: 2,
            ack_wait_secs: 3,
            heartbeat_interval_secs: 1,
            session_ttl_secs: 3,
            send_rate: None,
            media_max_deliveries: 3,
            // Every second, so tests see retention act.
            retention_interval_secs: 1,
        }
    }
}

impl AppOptions {
    /// The services' own defaults (what an installation runs with), for benchmarks.
    pub fn production() -> Self {
        let routing = parley_routing::config::RoutingSection::default();
        let sessions = parley_notification::SessionsSection::default();
        Self {
            dispatch_interval_ms: routing.dispatch_interval_ms,
            reconcile_interval_secs: routing.reconcile_interval_secs,
            ack_wait_secs: routing.ack_wait_secs,
            heartbeat_interval_secs: sessions.heartbeat_interval_secs,
            session_ttl_secs: sessions.ttl_secs,
            send_rate: None,
            media_max_deliveries: parley_ingest::attachments::MediaConfig::default().max_deliveries,
            retention_interval_secs: parley_history::retention::RetentionSection::default().interval_secs,
        }
    }
}

/// The four services running in this process against [`Infra`].
pub struct App {
    pub infra: Infra,
    pub signing_key: Secret,
    pub key: TokenKey,
    pub ingest: Option<ServiceHandle>,
    pub routing: Option<ServiceHandle>,
    pub history: Option<ServiceHandle>,
    pub notification: Option<ServiceHandle>,
    /// Where the notification service's senders send (Telegram, WhatsApp, Viber, Twilio).
    pub providers: providers::Providers,
    addrs: Addrs,
    options: AppOptions,
}

/// Where each service's gRPC API listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub ingest: std::net::SocketAddr,
    pub routing: std::net::SocketAddr,
    pub history: std::net::SocketAddr,
    pub notification: std::net::SocketAddr,
}

impl App {
    /// Fresh infrastructure and all four services.
    pub async fn spawn() -> Self {
        init_logging();
        let infra = Infra::start().await.expect("test infrastructure");
        Self::spawn_on(infra, true).await
    }

    /// The services on given infrastructure; without `with_routing`, routing is left for
    /// the test to run (as a process, say).
    pub async fn spawn_on(infra: Infra, with_routing: bool) -> Self {
        Self::spawn_with(infra, with_routing, AppOptions::default()).await
    }

    /// The services on given infrastructure with given timings.
    pub async fn spawn_with(infra: Infra, with_routing: bool, options: AppOptions) -> Self {
        let signing_key = random_key();
        let key = TokenKey::new(signing_key.clone());
        let nats = parley_kit::config::NatsConfig { url: infra.nats.url(), ..Default::default() };
        let redis = parley_kit::config::RedisConfig { url: infra.redis.url() };
        let auth = parley_kit::config::AuthConfig { signing_key: signing_key.clone() };
        let telemetry = TelemetryConfig::default();

        let routing = if with_routing {
            Some(start_routing(&infra, &signing_key, options, "routing").await.expect("routing starts"))
        } else {
            None
        };
        let providers = providers::Providers::start().await.expect("provider double starts");
        let ingest_config = parley_ingest::IngestConfig {
            server: any_port(),
            nats: nats.clone(),
            auth: auth.clone(),
            telemetry: telemetry.clone(),
            webhooks: parley_ingest::WebhooksConfig {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                ..Default::default()
            },
            smtp: parley_ingest::SmtpConfig {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                hostname: "mx.parley.test".into(),
                ..Default::default()
            },
            media: parley_ingest::attachments::MediaConfig {
                telegram_api: providers.base("telegram"),
                whatsapp_api: providers.base("whatsapp"),
                fetch_timeout_secs: 5,
                max_deliveries: options.media_max_deliveries,
                // The provider double, and nothing else of the local network.
                allow_http: true,
                allow_addresses: vec![std::net::IpAddr::from([127, 0, 0, 1])],
                ..Default::default()
            },
        };
        let ingest = parley_ingest::start(ingest_config, Metrics::new("ingest"), CancellationToken::new())
            .await
            .expect("ingest starts");
        let history = start_history(&infra, &signing_key, options).await.expect("history starts");
        let mut senders = parley_notification::senders::SendersSection {
            telegram_api: providers.base("telegram"),
            whatsapp_api: providers.base("whatsapp"),
            viber_api: providers.base("viber"),
            twilio_api: providers.base("twilio"),
            // Ingest's public listener, where the providers fetch reply files.
            public_media_url: format!(
                "http://{}",
                ingest.listener(parley_ingest::WEBHOOKS_LISTENER).expect("ingest's public listener")
            ),
            request_timeout_secs: 5,
            ..Default::default()
        };
        if let Some(per_second) = options.send_rate {
            let rate = parley_notification::senders::RateSetting { per_second, burst: per_second as u32 };
            senders.tenant_rate = rate;
            senders.channel_rates.values_mut().for_each(|r| *r = rate);
        }
        let notification_config = parley_notification::NotificationConfig {
            server: any_port(),
            nats,
            redis,
            auth,
            telemetry,
            sessions: parley_notification::SessionsSection {
                heartbeat_interval_secs: options.heartbeat_interval_secs,
                ttl_secs: options.session_ttl_secs,
            },
            senders,
            // The desk's gateway calls routing (when it runs here) and history.
            desk: parley_notification::desk::DeskSection {
                routing_url: format!("http://{}", routing.as_ref().map_or(ingest.grpc_addr, |r| r.grpc_addr)),
                history_url: format!("http://{}", history.grpc_addr),
                ingest_url: format!(
                    "http://{}",
                    ingest.listener(parley_ingest::WEBHOOKS_LISTENER).expect("ingest's public listener")
                ),
                ..Default::default()
            },
        };
        let notification =
            parley_notification::start(notification_config, Metrics::new("notification"), CancellationToken::new())
                .await
                .expect("notification starts");
        let addrs = Addrs {
            ingest: ingest.grpc_addr,
            routing: routing.as_ref().map_or(ingest.grpc_addr, |r| r.grpc_addr),
            history: history.grpc_addr,
            notification: notification.grpc_addr,
        };
        Self {
            infra,
            signing_key,
            key,
            ingest: Some(ingest),
            routing,
            history: Some(history),
            notification: Some(notification),
            providers,
            addrs,
            options,
        }
    }

    /// Another routing replica in this process against this app's infrastructure (several
    /// replicas split the work; stopping one leaves the others).
    pub async fn routing_replica(&self, options: AppOptions, name: &'static str) -> ServiceHandle {
        start_routing(&self.infra, &self.signing_key, options, name).await.expect("routing replica starts")
    }

    /// Stops the history service (its durable consumer keeps what is published meanwhile).
    pub async fn stop_history(&mut self) -> anyhow::Result<()> {
        match self.history.take() {
            Some(history) => history.stop().await,
            None => Ok(()),
        }
    }

    /// Starts the history service again after [`App::stop_history`]; its API moves to a new
    /// address, which [`App::history_client`] follows (the desk gateway keeps the old one).
    pub async fn start_history(&mut self) -> anyhow::Result<()> {
        self.stop_history().await?;
        let history = start_history(&self.infra, &self.signing_key, self.options).await?;
        self.addrs.history = history.grpc_addr;
        self.history = Some(history);
        Ok(())
    }

    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// Where ingest's public webhook listener is bound.
    pub fn webhooks_addr(&self) -> std::net::SocketAddr {
        self.ingest
            .as_ref()
            .and_then(|i| i.listener(parley_ingest::WEBHOOKS_LISTENER))
            .expect("ingest runs with its webhook listener")
    }

    /// Where ingest's SMTP listener is bound.
    pub fn smtp_addr(&self) -> std::net::SocketAddr {
        self.ingest
            .as_ref()
            .and_then(|i| i.listener(parley_ingest::SMTP_LISTENER))
            .expect("ingest runs with its SMTP listener")
    }

    /// Points the routing clients at a routing service started elsewhere.
    pub fn set_routing_addr(&mut self, addr: std::net::SocketAddr) {
        self.addrs.routing = addr;
    }

    /// A token minted directly with the signing key (as `parleyctl token` does).
    pub fn mint(&self, tenant: &str, role: Role, subject: &str) -> String {
        let now = parley_kit::clock::now().as_millis() / 1000;
        self.key.sign(&Claims {
            sub: subject.into(),
            tid: tenant.into(),
            role: role.as_str().into(),
            jti: uuid::Uuid::now_v7().to_string(),
            iat: now,
            exp: now + 3600,
        })
    }

    pub fn platform_token(&self) -> String {
        self.mint(PLATFORM_TENANT, Role::Platform, "test-platform")
    }

    pub async fn admin(&self, token: &str) -> AdminServiceClient<Authed> {
        AdminServiceClient::with_interceptor(connect(self.addrs.routing).await, Bearer::new(token).expect("token"))
    }

    pub async fn routing_client(&self, token: &str) -> RoutingServiceClient<Authed> {
        Self::routing_client_at(self.addrs.routing, token).await
    }

    /// A routing client of one replica (see [`App::routing_replica`]).
    pub async fn routing_client_at(addr: std::net::SocketAddr, token: &str) -> RoutingServiceClient<Authed> {
        RoutingServiceClient::with_interceptor(connect(addr).await, Bearer::new(token).expect("token"))
    }

    pub async fn ingest_client(&self, token: &str) -> ApiChannelServiceClient<Authed> {
        ApiChannelServiceClient::with_interceptor(connect(self.addrs.ingest).await, Bearer::new(token).expect("token"))
    }

    pub async fn history_client(&self, token: &str) -> HistoryServiceClient<Authed> {
        HistoryServiceClient::with_interceptor(connect(self.addrs.history).await, Bearer::new(token).expect("token"))
    }

    pub async fn sessions_client(&self, token: &str) -> OperatorSessionServiceClient<Authed> {
        OperatorSessionServiceClient::with_interceptor(
            connect(self.addrs.notification).await,
            Bearer::new(token).expect("token"),
        )
    }

    /// Creates a tenant with the given operators (all with skill `support` at 3 and
    /// capacity 5 on the API channel) and routing settings without ramp-up; returns its
    /// tokens.
    pub async fn tenant(&self, tenant: &str, operators: &[&str]) -> TenantFixture {
        let mut platform = self.admin(&self.platform_token()).await;
        platform
            .create_tenant(v1::CreateTenantRequest {
                tenant: Some(v1::Tenant {
                    id: tenant.into(),
                    display_name: format!("Tenant {tenant}"),
                    ..Default::default()
                }),
            })
            .await
            .expect("create tenant");
        let admin_token = platform
            .issue_token(v1::IssueTokenRequest {
                tenant_id: tenant.into(),
                subject: "test-admin".into(),
                role: v1::Role::Admin as i32,
                ..Default::default()
            })
            .await
            .expect("admin token")
            .into_inner()
            .token;
        let mut admin = self.admin(&admin_token).await;
        admin
            .create_skill(v1::CreateSkillRequest {
                skill: Some(v1::Skill { id: "support".into(), display_name: "Support".into() }),
            })
            .await
            .expect("create skill");
        for op in operators {
            admin
                .create_operator(v1::CreateOperatorRequest {
                    operator: Some(v1::Operator {
                        id: (*op).into(),
                        display_name: format!("Operator {op}"),
                        skills: vec![v1::SkillLevel { skill: "support".into(), proficiency: 3 }],
                        languages: vec!["ru".into(), "en".into()],
                        capacity: vec![v1::ChannelCapacity { channel: v1::Channel::Api as i32, max_conversations: 5 }],
                        ..Default::default()
                    }),
                })
                .await
                .expect("create operator");
        }
        let issue = |subject: &str, role: v1::Role| v1::IssueTokenRequest {
            subject: subject.into(),
            role: role as i32,
            ..Default::default()
        };
        let integrator_token = admin
            .issue_token(issue("test-crm", v1::Role::Integrator))
            .await
            .expect("integrator token")
            .into_inner()
            .token;
        let supervisor_token = admin
            .issue_token(issue("test-supervisor", v1::Role::Supervisor))
            .await
            .expect("supervisor token")
            .into_inner()
            .token;
        let mut operator_tokens = Vec::new();
        for op in operators {
            let t = admin.issue_token(issue(op, v1::Role::Operator)).await.expect("operator token").into_inner().token;
            operator_tokens.push(((*op).to_owned(), t));
        }
        let fx = TenantFixture { id: tenant.into(), admin_token, integrator_token, supervisor_token, operator_tokens };
        // Full capacity as soon as an operator is online: most tests are not about the
        // ramp-up at shift start (those that are set it).
        fx.update_settings(self, |s| s.ramp_up = Some(parley_proto::convert::duration(Duration::ZERO))).await;
        fx
    }

    /// Stops every service still running here, draining each.
    pub async fn stop(mut self) {
        for handle in [self.ingest.take(), self.routing.take(), self.notification.take(), self.history.take()]
            .into_iter()
            .flatten()
        {
            let name = handle.name;
            if let Err(e) = handle.stop().await {
                panic!("{name} did not stop cleanly: {e:#}");
            }
        }
    }
}

/// The history service against `infra`, accepting tokens signed with `signing_key`.
pub async fn start_history(infra: &Infra, signing_key: &Secret, options: AppOptions) -> anyhow::Result<ServiceHandle> {
    let config = parley_history::HistoryConfig {
        server: any_port(),
        nats: parley_kit::config::NatsConfig { url: infra.nats.url(), ..Default::default() },
        database: parley_history::DatabaseSection {
            url: Secret::new(infra.db.url()),
            pool_size: 8,
            ..Default::default()
        },
        auth: parley_kit::config::AuthConfig { signing_key: signing_key.clone() },
        telemetry: TelemetryConfig::default(),
        writer: parley_history::WriterSection::default(),
        retention: parley_history::retention::RetentionSection {
            interval_secs: options.retention_interval_secs,
            ..Default::default()
        },
    };
    parley_history::start(config, Metrics::new("history"), CancellationToken::new()).await
}

/// Starts a routing service in this process on free ports.
async fn start_routing(
    infra: &Infra,
    signing_key: &Secret,
    options: AppOptions,
    name: &'static str,
) -> anyhow::Result<ServiceHandle> {
    let config = parley_routing::RoutingConfig {
        server: any_port(),
        nats: parley_kit::config::NatsConfig { url: infra.nats.url(), ..Default::default() },
        redis: parley_kit::config::RedisConfig { url: infra.redis.url() },
        auth: parley_kit::config::AuthConfig { signing_key: signing_key.clone() },
        telemetry: TelemetryConfig::default(),
        routing: parley_routing::config::RoutingSection {
            dispatch_interval_ms: options.dispatch_interval_ms,
            lanes: 64,
            reconcile_interval_secs: options.reconcile_interval_secs,
            ack_wait_secs: options.ack_wait_secs,
            ..Default::default()
        },
    };
    parley_routing::start(config, Metrics::new(name), CancellationToken::new()).await
}

/// A channel config named by its id, waiting in the `default` queue.
pub fn channel_config(id: &str, channel: v1::Channel, settings: v1::channel_config::Settings) -> v1::ChannelConfig {
    v1::ChannelConfig {
        id: id.into(),
        channel: channel as i32,
        display_name: id.into(),
        default_queue_id: "default".into(),
        settings: Some(settings),
        ..Default::default()
    }
}

/// A tenant made by [`App::tenant`], with a token per role.
#[derive(Debug, Clone)]
pub struct TenantFixture {
    pub id: String,
    pub admin_token: String,
    pub integrator_token: String,
    pub supervisor_token: String,
    pub operator_tokens: Vec<(String, String)>,
}

impl TenantFixture {
    pub fn operator_token(&self, op: &str) -> &str {
        &self.operator_tokens.iter().find(|(o, _)| o == op).expect("operator of the fixture").1
    }

    /// Creates a channel config in the tenant (see [`channel_config`]).
    pub async fn create_channel_config(&self, app: &App, config: v1::ChannelConfig) {
        app.admin(&self.admin_token)
            .await
            .create_channel_config(v1::CreateChannelConfigRequest { channel_config: Some(config) })
            .await
            .expect("create channel config");
    }

    /// Creates a skill in the tenant.
    pub async fn create_skill(&self, app: &App, id: &str) {
        let skill = v1::Skill { id: id.into(), display_name: id.into() };
        app.admin(&self.admin_token)
            .await
            .create_skill(v1::CreateSkillRequest { skill: Some(skill) })
            .await
            .expect("create skill");
    }

    /// Creates a queue in the tenant; returns it as stored.
    pub async fn create_queue(&self, app: &App, queue: v1::Queue) -> v1::Queue {
        app.admin(&self.admin_token)
            .await
            .create_queue(v1::CreateQueueRequest { queue: Some(queue) })
            .await
            .expect("create queue")
            .into_inner()
            .queue
            .expect("queue")
    }

    /// Reads an operator's configuration, changes it, and writes it back.
    pub async fn edit_operator(&self, app: &App, id: &str, change: impl FnOnce(&mut v1::Operator)) {
        let mut admin = app.admin(&self.admin_token).await;
        let mut op = admin
            .get_operator(v1::GetOperatorRequest { operator_id: id.into() })
            .await
            .expect("get operator")
            .into_inner()
            .operator
            .expect("operator");
        change(&mut op);
        admin.update_operator(v1::UpdateOperatorRequest { operator: Some(op) }).await.expect("update operator");
    }

    /// Gives an operator `seats` seats on the API channel and none elsewhere.
    pub async fn set_api_seats(&self, app: &App, id: &str, seats: u32) {
        let api = v1::ChannelCapacity { channel: v1::Channel::Api as i32, max_conversations: seats };
        self.edit_operator(app, id, |o| o.capacity = vec![api]).await;
    }

    /// Every routing decision about a conversation, oldest first (as the supervisor sees them).
    pub async fn decisions(&self, app: &App, conversation: &str) -> Vec<v1::RoutingDecision> {
        app.routing_client(&self.supervisor_token)
            .await
            .list_conversation_decisions(v1::ListConversationDecisionsRequest { conversation_id: conversation.into() })
            .await
            .expect("decisions")
            .into_inner()
            .decisions
    }

    /// The decisions about a conversation once there is at least one: a dispatch pass
    /// records its decision a moment after the conversation shows in its queue.
    pub async fn decisions_made(&self, app: &App, conversation: &str) -> Vec<v1::RoutingDecision> {
        eventually(Duration::from_secs(10), &format!("a decision about {conversation}"), || async {
            let d = self.decisions(app, conversation).await;
            (!d.is_empty()).then_some(d)
        })
        .await
    }

    /// A waiting conversation's place in its queue and estimated wait.
    pub async fn position(&self, app: &App, conversation: &str) -> v1::GetConversationPositionResponse {
        app.routing_client(&self.supervisor_token)
            .await
            .get_conversation_position(v1::GetConversationPositionRequest { conversation_id: conversation.into() })
            .await
            .expect("position")
            .into_inner()
    }

    /// A queue's depth and waits.
    pub async fn queue_status(&self, app: &App, queue: &str) -> v1::GetQueueStatusResponse {
        app.routing_client(&self.supervisor_token)
            .await
            .get_queue_status(v1::GetQueueStatusRequest { queue_id: queue.into() })
            .await
            .expect("queue status")
            .into_inner()
    }

    /// Reads the tenant's routing settings, changes them, and writes them back.
    pub async fn update_settings(
        &self,
        app: &App,
        change: impl FnOnce(&mut v1::RoutingSettings),
    ) -> v1::RoutingSettings {
        let mut routing = app.routing_client(&self.admin_token).await;
        let mut settings = routing
            .get_routing_settings(v1::GetRoutingSettingsRequest {})
            .await
            .expect("read settings")
            .into_inner()
            .settings
            .expect("settings");
        change(&mut settings);
        routing
            .update_routing_settings(v1::UpdateRoutingSettingsRequest { settings: Some(settings) })
            .await
            .expect("update settings")
            .into_inner()
            .settings
            .expect("settings")
    }
}

/// A gRPC channel to a local address.
pub async fn connect(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect to service")
}

/// A Parley service binary running as a child process (to `kill -9` it).
pub struct ServiceProcess {
    child: Child,
    pub grpc_addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
}

/// Where cargo put the binaries of this build (next to the test executable's `deps/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) }).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built; run `cargo build --bins` first (make test does)", path.display());
    path
}

impl ServiceProcess {
    /// Starts `bin` with `PARLEY_SECTION__KEY` settings in `env`, on a free gRPC port, and
    /// waits until it listens.
    pub fn spawn(bin: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let port = servers::free_port();
        let grpc_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let http_addr = std::net::SocketAddr::from(([127, 0, 0, 1], servers::free_port()));
        let mut cmd = Command::new(binary(bin));
        cmd.env("PARLEY_SERVER__GRPC_ADDR", grpc_addr.to_string())
            .env("PARLEY_SERVER__HTTP_ADDR", http_addr.to_string())
            // Ingest's public webhook and SMTP listeners (other services ignore the
            // sections): free ports, so test processes never race for the default ones.
            .env("PARLEY_WEBHOOKS__ADDR", format!("127.0.0.1:{}", servers::free_port()))
            .env("PARLEY_SMTP__ADDR", format!("127.0.0.1:{}", servers::free_port()))
            .env("PARLEY_TELEMETRY__LOG_FILTER", std::env::var("PARLEY_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("PARLEY_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(&grpc_addr, Duration::from_millis(100)).is_err() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{bin} exited with {status} before listening");
            }
            anyhow::ensure!(Instant::now() < deadline, "{bin} did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, grpc_addr, http_addr })
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let status = self.child.wait()?;
        Ok(status.code())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl App {
    /// How many messages a Parley stream holds now (to prove bad input published nothing).
    pub async fn stream_len(&self, stream: &str) -> u64 {
        let client = async_nats::connect(self.infra.nats.url()).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await.expect("stream exists");
        s.info().await.expect("stream info").state.messages
    }

    /// Rows in a history table, counted as the owner (bypassing row-level security).
    pub async fn table_rows(&self, table: &str) -> i64 {
        let (client, conn) = tokio_postgres::connect(&self.infra.db.url(), tokio_postgres::NoTls).await.expect("db");
        tokio::spawn(conn);
        client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count").get(0)
    }
}
