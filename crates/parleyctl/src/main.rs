//! `parleyctl`: Parley's command line over its gRPC APIs (admin, routing, ingest, history,
//! notification). Errors print as `error: CODE: message` and exit 1; bad arguments exit 2.

mod demo;
mod desk;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use parley_kit::auth::{Bearer, Claims, PLATFORM_TENANT, TokenKey};
use parley_kit::config::Secret;
use parley_proto::v1;
use parley_proto::v1::admin_service_client::AdminServiceClient;
use parley_proto::v1::api_channel_service_client::ApiChannelServiceClient;
use parley_proto::v1::history_service_client::HistoryServiceClient;
use parley_proto::v1::operator_session_service_client::OperatorSessionServiceClient;
use parley_proto::v1::routing_service_client::RoutingServiceClient;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Manage and try a Parley installation.
#[derive(Parser)]
#[command(name = "parleyctl", version, about)]
struct Cli {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(subcommand)]
    command: Command,
}

/// Where the services are, and who is calling.
#[derive(Args, Clone, Debug)]
pub struct Endpoints {
    /// Routing service (admin and routing APIs).
    #[arg(long, env = "PARLEY_ROUTING_URL", default_value = "http://127.0.0.1:7201", global = true)]
    pub routing: String,
    /// Ingest service (API channel).
    #[arg(long, env = "PARLEY_INGEST_URL", default_value = "http://127.0.0.1:7101", global = true)]
    pub ingest: String,
    /// History service.
    #[arg(long, env = "PARLEY_HISTORY_URL", default_value = "http://127.0.0.1:7301", global = true)]
    pub history: String,
    /// Notification service (operator sessions).
    #[arg(long, env = "PARLEY_NOTIFICATION_URL", default_value = "http://127.0.0.1:7401", global = true)]
    pub notification: String,
    /// Bearer token for the call.
    #[arg(long, env = "PARLEY_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Tokens: mint a platform token with the signing key, or issue, list, revoke tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Tenants (platform token).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Skills of the token's tenant.
    #[command(subcommand)]
    Skill(SkillCmd),
    /// Operators of the token's tenant.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Queues of the token's tenant.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Channel configurations of the token's tenant.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Fast-track codes.
    #[command(subcommand)]
    Code(CodeCmd),
    /// The tenant's routing settings.
    #[command(subcommand)]
    Settings(SettingsCmd),
    /// Where a waiting conversation stands.
    Position { conversation: String },
    /// Set an operator's status.
    Status {
        /// online, away, offline or draining.
        status: String,
        /// The operator (default: the token's own).
        #[arg(long, default_value = "")]
        operator: String,
        /// Why, for away.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Send a customer message on the API channel (integrator token).
    Send {
        /// The customer's id in your system.
        #[arg(long)]
        customer: String,
        #[arg(long)]
        text: String,
        /// Idempotency key (default: a fresh one).
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value = "")]
        queue: String,
    },
    /// Follow what Parley sends to a customer (integrator token).
    Watch {
        #[arg(long)]
        customer: String,
        /// Resume after this sequence.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// An operator desk in the terminal: prints offers and messages (operator token).
    Desk(desk::DeskArgs),
    /// A conversation with its messages.
    Conversation { id: String },
    /// Why a conversation went where it went: its routing decisions.
    Why { id: String },
    /// A customer's messages across conversations and channels, newest first.
    Timeline { customer_id: String },
    /// Close a conversation.
    Close {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Transfer a conversation to an operator or a queue.
    Transfer {
        id: String,
        #[arg(long, conflicts_with = "to_queue", required_unless_present = "to_queue")]
        to_operator: Option<String>,
        #[arg(long)]
        to_queue: Option<String>,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Seed a demo tenant and drive one conversation through the running services.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Mint a platform token with the installation's signing key (PARLEY_AUTH__SIGNING_KEY).
    Platform {
        #[arg(long, env = "PARLEY_AUTH__SIGNING_KEY", hide_env_values = true)]
        signing_key: String,
        /// Lifetime in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: i64,
    },
    /// Issue a token of a tenant (admin token; platform tokens name --tenant).
    Issue {
        #[arg(long, default_value = "")]
        tenant: String,
        /// operator, supervisor, admin or integrator.
        #[arg(long)]
        role: String,
        /// The operator id for operator tokens; a name otherwise.
        #[arg(long)]
        subject: String,
        /// Lifetime in days.
        #[arg(long, default_value_t = 30)]
        days: u64,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
enum TenantCmd {
    Create {
        id: String,
        #[arg(long)]
        name: String,
    },
    List,
    Get {
        #[arg(default_value = "")]
        id: String,
    },
    /// Disable (or with --enable, enable) a tenant.
    Disable {
        id: String,
        #[arg(long)]
        enable: bool,
    },
}

#[derive(Subcommand)]
enum SkillCmd {
    Create {
        id: String,
        #[arg(long)]
        name: String,
    },
    List,
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
enum OperatorCmd {
    Create(OperatorSpec),
    /// Replace an operator's settings.
    Update(OperatorSpec),
    List,
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Args)]
struct OperatorSpec {
    id: String,
    #[arg(long)]
    name: String,
    /// SKILL:LEVEL, level 1 to 5 (repeatable), e.g. --skill billing:3.
    #[arg(long = "skill")]
    skills: Vec<String>,
    /// ISO 639-1 code (repeatable).
    #[arg(long = "language")]
    languages: Vec<String>,
    /// CHANNEL:MAX conversations at once (repeatable), e.g. --capacity api:3.
    #[arg(long = "capacity")]
    capacity: Vec<String>,
}

#[derive(Subcommand)]
enum QueueCmd {
    Create(QueueSpec),
    /// Replace a queue's settings.
    Update(QueueSpec),
    /// Dry run: what these settings would do to the conversations waiting in the queue now.
    Preview {
        #[command(flatten)]
        spec: QueueSpec,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    List,
    /// Waiting conversations, oldest wait and available operators.
    Status {
        id: String,
    },
}

/// A queue's settings on the command line.
#[derive(Args)]
struct QueueSpec {
    id: String,
    #[arg(long)]
    name: String,
    /// SKILL:LEVEL required (repeatable).
    #[arg(long = "skill")]
    skills: Vec<String>,
    #[arg(long, default_value = "")]
    language: String,
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i32,
    /// Seconds an offer waits for accept; 0 assigns at once.
    #[arg(long, default_value_t = 0)]
    offer_timeout: u64,
    /// least-occupied, longest-idle or round-robin.
    #[arg(long, default_value = "least-occupied")]
    selection: String,
    /// Seconds after which a waiting conversation is served before newer ones of
    /// higher-priority queues; 0 never.
    #[arg(long, default_value_t = 0)]
    aging: u64,
    /// Seconds a conversation may wait here; 0 no limit.
    #[arg(long, default_value_t = 0)]
    max_wait: u64,
    /// Where conversations go after --max-wait.
    #[arg(long, default_value = "")]
    overflow: String,
    /// An expansion step AFTER:DROP[:SKILL,SKILL][:nolang] — after AFTER seconds, lower
    /// proficiencies by DROP, stop requiring the skills, and the language (repeatable).
    #[arg(long = "expand")]
    expand: Vec<String>,
    /// Business hours: "TIME_ZONE DAYS=HH:MM-HH:MM ...", e.g.
    /// "Europe/Moscow mon-fri=09:00-18:00 sat=10:00-14:00".
    #[arg(long)]
    hours: Option<String>,
    /// Where conversations go while the queue is closed.
    #[arg(long, default_value = "")]
    after_hours: String,
}

#[derive(Subcommand)]
enum CodeCmd {
    /// Issue a fast-track code for yourself (operator token).
    Issue {
        /// Lifetime in minutes (default: the tenant's).
        #[arg(long)]
        minutes: Option<u64>,
        /// Conversations it may open; 0 any number.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// Your live codes (supervisors: --operator).
    List {
        #[arg(long, default_value = "")]
        operator: String,
    },
    Revoke {
        code: String,
    },
}

#[derive(Subcommand)]
enum SettingsCmd {
    Get,
    /// Change routing settings (unset flags keep their value).
    Set {
        /// Minutes a returning customer is sent back to their operator; 0 off.
        #[arg(long)]
        known_operator_minutes: Option<u64>,
        /// Seconds a returning customer waits for their full operator.
        #[arg(long)]
        known_operator_wait: Option<u64>,
        #[arg(long)]
        waiting_weight: Option<f64>,
        #[arg(long)]
        idle_weight: Option<f64>,
        /// Seconds after which a conversation counts as idle.
        #[arg(long)]
        idle_after: Option<u64>,
        /// Seconds after a desk is gone before its open conversations are rerouted; 0 never.
        #[arg(long)]
        reroute_after: Option<u64>,
        /// Seconds over which an operator's capacity grows to full after coming online; 0 at once.
        #[arg(long)]
        ramp_up: Option<u64>,
        /// Offers in a row an operator may let expire before being set away; 0 never.
        #[arg(long)]
        away_after_missed_offers: Option<u32>,
    },
}

#[derive(Subcommand)]
enum ChannelCmd {
    /// Add an API channel (other channels take provider settings; see the admin API).
    Create {
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "default")]
        queue: String,
    },
    List,
}

/// A client with the bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

impl Endpoints {
    fn token(&self) -> anyhow::Result<&str> {
        self.token.as_deref().ok_or_else(|| anyhow::anyhow!("no token: pass --token or set PARLEY_TOKEN"))
    }

    async fn channel(url: &str) -> anyhow::Result<Channel> {
        Channel::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("bad url {url}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))
    }

    fn bearer(token: &str) -> anyhow::Result<Bearer> {
        Bearer::new(token).map_err(|e| anyhow::anyhow!("{e}"))
    }

    pub async fn admin_as(&self, token: &str) -> anyhow::Result<AdminServiceClient<Authed>> {
        Ok(AdminServiceClient::with_interceptor(Self::channel(&self.routing).await?, Self::bearer(token)?))
    }
    pub async fn routing_as(&self, token: &str) -> anyhow::Result<RoutingServiceClient<Authed>> {
        Ok(RoutingServiceClient::with_interceptor(Self::channel(&self.routing).await?, Self::bearer(token)?))
    }
    pub async fn ingest_as(&self, token: &str) -> anyhow::Result<ApiChannelServiceClient<Authed>> {
        Ok(ApiChannelServiceClient::with_interceptor(Self::channel(&self.ingest).await?, Self::bearer(token)?))
    }
    pub async fn history_as(&self, token: &str) -> anyhow::Result<HistoryServiceClient<Authed>> {
        Ok(HistoryServiceClient::with_interceptor(Self::channel(&self.history).await?, Self::bearer(token)?))
    }
    pub async fn sessions_as(&self, token: &str) -> anyhow::Result<OperatorSessionServiceClient<Authed>> {
        Ok(OperatorSessionServiceClient::with_interceptor(
            Self::channel(&self.notification).await?,
            Self::bearer(token)?,
        ))
    }
}

/// A platform token minted with the signing key.
pub fn mint_platform(signing_key: &str, minutes: i64) -> anyhow::Result<String> {
    anyhow::ensure!(signing_key.len() >= 32, "the signing key must be at least 32 bytes");
    anyhow::ensure!((1..=24 * 60).contains(&minutes), "--minutes must be 1 to 1440");
    let now = parley_kit::clock::now().as_millis() / 1000;
    Ok(TokenKey::new(Secret::new(signing_key)).sign(&Claims {
        sub: "parleyctl".into(),
        tid: PLATFORM_TENANT.into(),
        role: "platform".into(),
        jti: uuid::Uuid::now_v7().to_string(),
        iat: now,
        exp: now + minutes * 60,
    }))
}

fn parse_pairs<T>(
    flag: &str,
    values: &[String],
    example: &str,
    make: impl Fn(&str, u32) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    values
        .iter()
        .map(|v| {
            let (name, n) = v
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--{flag} {v:?}: expected NAME:NUMBER, e.g. {example}"))?;
            let n: u32 = n.parse().map_err(|_| anyhow::anyhow!("--{flag} {v:?}: {n:?} is not a number"))?;
            make(name, n)
        })
        .collect()
}

fn skills(values: &[String]) -> anyhow::Result<Vec<v1::SkillLevel>> {
    parse_pairs("skill", values, "billing:3", |s, n| Ok(v1::SkillLevel { skill: s.into(), proficiency: n }))
}

pub fn channel_enum(name: &str) -> anyhow::Result<v1::Channel> {
    let c: parley_domain::Channel = name.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(parley_proto::convert::channel(c))
}

fn role_enum(name: &str) -> anyhow::Result<v1::Role> {
    let r = parley_domain::Role::parse(name)
        .ok_or_else(|| anyhow::anyhow!("unknown role {name:?} (operator, supervisor, admin, integrator)"))?;
    Ok(parley_proto::convert::role(r))
}

fn status_enum(name: &str) -> anyhow::Result<v1::OperatorStatus> {
    let s = parley_domain::OperatorStatus::parse(name)
        .ok_or_else(|| anyhow::anyhow!("unknown status {name:?} (online, away, offline, draining)"))?;
    Ok(parley_proto::convert::operator_status(s))
}

fn queue_from(spec: QueueSpec) -> anyhow::Result<v1::Queue> {
    let secs = |n: u64| (n > 0).then(|| parley_proto::convert::duration(Duration::from_secs(n)));
    let selection = match spec.selection.as_str() {
        "least-occupied" => v1::SelectionStrategy::LeastOccupied,
        "longest-idle" => v1::SelectionStrategy::LongestIdle,
        "round-robin" => v1::SelectionStrategy::RoundRobin,
        other => anyhow::bail!("--selection {other:?}: expected least-occupied, longest-idle or round-robin"),
    };
    let expansion = spec
        .expand
        .iter()
        .map(|step| {
            let bad = || anyhow::anyhow!("--expand {step:?}: expected AFTER:DROP[:SKILL,SKILL][:nolang], e.g. 60:1");
            let mut parts = step.split(':');
            let after: u64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let drop: u32 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let mut remove_skills = Vec::new();
            let mut drop_language = false;
            for p in parts {
                if p == "nolang" {
                    drop_language = true;
                } else if !p.is_empty() {
                    remove_skills.extend(p.split(',').map(str::to_owned));
                }
            }
            Ok(v1::ExpansionStep { after: secs(after), proficiency_drop: drop, remove_skills, drop_language })
        })
        .collect::<anyhow::Result<_>>()?;
    let business_hours = spec.hours.as_deref().map(parse_hours).transpose()?;
    Ok(v1::Queue {
        id: spec.id,
        display_name: spec.name,
        required_skills: skills(&spec.skills)?,
        language: spec.language,
        priority: spec.priority,
        offer_timeout: secs(spec.offer_timeout),
        revision: 0,
        selection: selection as i32,
        aging_delay: secs(spec.aging),
        max_wait: secs(spec.max_wait),
        overflow_queue_id: spec.overflow,
        expansion,
        business_hours,
        after_hours_queue_id: spec.after_hours,
    })
}

/// "Europe/Moscow mon-fri=09:00-18:00 sat=10:00-14:00" as business hours.
fn parse_hours(text: &str) -> anyhow::Result<v1::BusinessHours> {
    let bad = |why: &str| anyhow::anyhow!("--hours {text:?}: {why}; e.g. \"Europe/Moscow mon-fri=09:00-18:00\"");
    let mut parts = text.split_whitespace();
    let time_zone = parts.next().ok_or_else(|| bad("no time zone"))?.to_owned();
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let day = |d: &str| DAYS.iter().position(|x| *x == d).map(|i| i as i32 + 1).ok_or_else(|| bad("unknown day"));
    let mut windows = Vec::new();
    for part in parts {
        let (days, times) = part.split_once('=').ok_or_else(|| bad("expected DAYS=HH:MM-HH:MM"))?;
        let (open, close) = times.split_once('-').ok_or_else(|| bad("expected HH:MM-HH:MM"))?;
        let (first, last) = match days.split_once('-') {
            Some((a, b)) => (day(a)?, day(b)?),
            None => (day(days)?, day(days)?),
        };
        if last < first {
            return Err(bad("day range runs backwards"));
        }
        for d in first..=last {
            windows.push(v1::OpeningWindow { day: d, open: open.to_owned(), close: close.to_owned() });
        }
    }
    if windows.is_empty() {
        return Err(bad("no opening windows"));
    }
    Ok(v1::BusinessHours { time_zone, windows })
}

fn operator_from(spec: OperatorSpec) -> anyhow::Result<v1::Operator> {
    let capacity = parse_pairs("capacity", &spec.capacity, "api:3", |c, n| {
        Ok(v1::ChannelCapacity { channel: channel_enum(c)? as i32, max_conversations: n })
    })?;
    Ok(v1::Operator {
        id: spec.id,
        display_name: spec.name,
        skills: skills(&spec.skills)?,
        languages: spec.languages,
        capacity,
        ..Default::default()
    })
}

pub fn time(t: Option<&parley_proto::Timestamp>) -> String {
    t.map(|t| {
        let secs = t.seconds.rem_euclid(86_400);
        format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    })
    .unwrap_or_default()
}

pub fn show_message(m: &v1::Message) -> String {
    let who = match v1::SenderKind::try_from(m.sender_kind).unwrap_or_default() {
        v1::SenderKind::Customer => "customer".to_owned(),
        v1::SenderKind::Operator => format!("operator {}", m.operator_id),
        v1::SenderKind::Bot => "bot".to_owned(),
        _ => "system".to_owned(),
    };
    let quote = m.quoted.as_ref().map(|q| format!(" (replying to: \"{}\")", q.text)).unwrap_or_default();
    format!("[{}] {who}: {}{quote}", time(m.create_time.as_ref()), m.text)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let e = &cli.endpoints;
    match cli.command {
        Command::Token(TokenCmd::Platform { signing_key, minutes }) => {
            println!("{}", mint_platform(&signing_key, minutes)?)
        }
        Command::Token(TokenCmd::Issue { tenant, role, subject, days, description }) => {
            let r = e
                .admin_as(e.token()?)
                .await?
                .issue_token(v1::IssueTokenRequest {
                    tenant_id: tenant,
                    subject,
                    role: role_enum(&role)? as i32,
                    ttl: Some(parley_proto::convert::duration(Duration::from_secs(days * 86_400))),
                    description,
                })
                .await?
                .into_inner();
            let info = r.info.unwrap_or_default();
            eprintln!("token id {} (expires at {} UTC)", info.id, time(info.expire_time.as_ref()));
            println!("{}", r.token);
        }
        Command::Token(TokenCmd::List) => {
            for t in e.admin_as(e.token()?).await?.list_tokens(v1::ListTokensRequest {}).await?.into_inner().tokens {
                println!(
                    "{}  {:?}  {}  {}",
                    t.id,
                    v1::Role::try_from(t.role).unwrap_or_default(),
                    t.subject,
                    t.description
                );
            }
        }
        Command::Token(TokenCmd::Revoke { id }) => {
            e.admin_as(e.token()?).await?.revoke_token(v1::RevokeTokenRequest { token_id: id.clone() }).await?;
            println!("revoked {id}");
        }
        Command::Tenant(cmd) => {
            let mut admin = e.admin_as(e.token()?).await?;
            match cmd {
                TenantCmd::Create { id, name } => {
                    let t = admin
                        .create_tenant(v1::CreateTenantRequest {
                            tenant: Some(v1::Tenant { id, display_name: name, ..Default::default() }),
                        })
                        .await?
                        .into_inner()
                        .tenant
                        .unwrap_or_default();
                    println!("created tenant {} (with queue `default` and channel `api`)", t.id);
                }
                TenantCmd::List => {
                    for t in admin.list_tenants(v1::ListTenantsRequest {}).await?.into_inner().tenants {
                        println!("{}  {}{}", t.id, t.display_name, if t.disabled { "  (disabled)" } else { "" });
                    }
                }
                TenantCmd::Get { id } => {
                    let t = admin
                        .get_tenant(v1::GetTenantRequest { tenant_id: id })
                        .await?
                        .into_inner()
                        .tenant
                        .unwrap_or_default();
                    println!("{}  {}  disabled={} revision={}", t.id, t.display_name, t.disabled, t.revision);
                }
                TenantCmd::Disable { id, enable } => {
                    let mut t = admin
                        .get_tenant(v1::GetTenantRequest { tenant_id: id })
                        .await?
                        .into_inner()
                        .tenant
                        .unwrap_or_default();
                    t.disabled = !enable;
                    let t = admin
                        .update_tenant(v1::UpdateTenantRequest { tenant: Some(t) })
                        .await?
                        .into_inner()
                        .tenant
                        .unwrap_or_default();
                    println!("tenant {} disabled={}", t.id, t.disabled);
                }
            }
        }
        Command::Skill(cmd) => {
            let mut admin = e.admin_as(e.token()?).await?;
            match cmd {
                SkillCmd::Create { id, name } => {
                    admin
                        .create_skill(v1::CreateSkillRequest {
                            skill: Some(v1::Skill { id: id.clone(), display_name: name }),
                        })
                        .await?;
                    println!("created skill {id}");
                }
                SkillCmd::List => {
                    for s in admin.list_skills(v1::ListSkillsRequest {}).await?.into_inner().skills {
                        println!("{}  {}", s.id, s.display_name);
                    }
                }
                SkillCmd::Delete { id } => {
                    admin.delete_skill(v1::DeleteSkillRequest { skill_id: id.clone() }).await?;
                    println!("deleted skill {id}");
                }
            }
        }
        Command::Operator(cmd) => {
            let mut admin = e.admin_as(e.token()?).await?;
            match cmd {
                OperatorCmd::Create(spec) => {
                    let op = admin
                        .create_operator(v1::CreateOperatorRequest { operator: Some(operator_from(spec)?) })
                        .await?;
                    println!("created operator {}", op.into_inner().operator.unwrap_or_default().id);
                }
                OperatorCmd::Update(spec) => {
                    let op = admin
                        .update_operator(v1::UpdateOperatorRequest { operator: Some(operator_from(spec)?) })
                        .await?;
                    println!("updated operator {}", op.into_inner().operator.unwrap_or_default().id);
                }
                OperatorCmd::List => {
                    for o in admin.list_operators(v1::ListOperatorsRequest {}).await?.into_inner().operators {
                        print_operator(&o);
                    }
                }
                OperatorCmd::Get { id } => {
                    print_operator(
                        &admin
                            .get_operator(v1::GetOperatorRequest { operator_id: id })
                            .await?
                            .into_inner()
                            .operator
                            .unwrap_or_default(),
                    );
                }
                OperatorCmd::Delete { id } => {
                    admin.delete_operator(v1::DeleteOperatorRequest { operator_id: id.clone() }).await?;
                    println!("deleted operator {id}");
                }
            }
        }
        Command::Queue(cmd) => match cmd {
            QueueCmd::Create(spec) => {
                let q = e
                    .admin_as(e.token()?)
                    .await?
                    .create_queue(v1::CreateQueueRequest { queue: Some(queue_from(spec)?) })
                    .await?;
                println!("created queue {}", q.into_inner().queue.unwrap_or_default().id);
            }
            QueueCmd::Update(spec) => {
                let mut admin = e.admin_as(e.token()?).await?;
                let q = admin.update_queue(v1::UpdateQueueRequest { queue: Some(queue_from(spec)?) }).await?;
                println!("updated queue {}", q.into_inner().queue.unwrap_or_default().id);
            }
            QueueCmd::Preview { spec, limit } => {
                let r = e
                    .routing_as(e.token()?)
                    .await?
                    .preview_queue(v1::PreviewQueueRequest { queue: Some(queue_from(spec)?), limit })
                    .await?
                    .into_inner();
                println!("queue {} now", if r.open { "open" } else { "closed" });
                for d in r.decisions {
                    let who = if d.chosen_operator_id.is_empty() {
                        "waits".to_owned()
                    } else {
                        format!("→ {}", d.chosen_operator_id)
                    };
                    println!("  {} {who} — {}", &d.conversation_id[..8], d.reason);
                }
            }
            QueueCmd::List => {
                for q in e.admin_as(e.token()?).await?.list_queues(v1::ListQueuesRequest {}).await?.into_inner().queues
                {
                    let skills: Vec<String> =
                        q.required_skills.iter().map(|s| format!("{}:{}", s.skill, s.proficiency)).collect();
                    println!("{}  {}  priority={} skills=[{}]", q.id, q.display_name, q.priority, skills.join(","));
                }
            }
            QueueCmd::Status { id } => {
                let s = e
                    .routing_as(e.token()?)
                    .await?
                    .get_queue_status(v1::GetQueueStatusRequest { queue_id: id })
                    .await?
                    .into_inner();
                println!(
                    "queue {}: {} waiting, oldest {} s, {} operators available",
                    s.queue_id, s.waiting_conversations, s.oldest_wait_seconds, s.available_operators
                );
            }
        },
        Command::Channel(cmd) => {
            let mut admin = e.admin_as(e.token()?).await?;
            match cmd {
                ChannelCmd::Create { id, name, queue } => {
                    let c = v1::ChannelConfig {
                        id,
                        channel: v1::Channel::Api as i32,
                        display_name: name,
                        default_queue_id: queue,
                        settings: Some(v1::channel_config::Settings::Api(v1::ApiChannelSettings {})),
                        ..Default::default()
                    };
                    let c =
                        admin.create_channel_config(v1::CreateChannelConfigRequest { channel_config: Some(c) }).await?;
                    println!("created channel {}", c.into_inner().channel_config.unwrap_or_default().id);
                }
                ChannelCmd::List => {
                    for c in
                        admin.list_channel_configs(v1::ListChannelConfigsRequest {}).await?.into_inner().channel_configs
                    {
                        println!(
                            "{}  {:?}  {}  queue={}{}",
                            c.id,
                            v1::Channel::try_from(c.channel).unwrap_or_default(),
                            c.display_name,
                            c.default_queue_id,
                            if c.disabled { "  (disabled)" } else { "" }
                        );
                    }
                }
            }
        }
        Command::Code(cmd) => {
            let mut routing = e.routing_as(e.token()?).await?;
            match cmd {
                CodeCmd::Issue { minutes, uses } => {
                    let ttl = minutes.map(|m| parley_proto::convert::duration(Duration::from_secs(m * 60)));
                    let code = routing
                        .issue_fast_track_code(v1::IssueFastTrackCodeRequest { ttl, max_uses: uses })
                        .await?
                        .into_inner()
                        .code
                        .unwrap_or_default();
                    eprintln!(
                        "valid until {} UTC, {} use(s)",
                        time(code.expire_time.as_ref()),
                        if code.uses_left == 0 { "any".to_owned() } else { code.uses_left.to_string() }
                    );
                    println!("{}", code.code);
                }
                CodeCmd::List { operator } => {
                    for c in routing
                        .list_fast_track_codes(v1::ListFastTrackCodesRequest { operator_id: operator })
                        .await?
                        .into_inner()
                        .codes
                    {
                        println!(
                            "{}  {}  until {}  uses left {}",
                            c.code,
                            c.operator_id,
                            time(c.expire_time.as_ref()),
                            c.uses_left
                        );
                    }
                }
                CodeCmd::Revoke { code } => {
                    routing.revoke_fast_track_code(v1::RevokeFastTrackCodeRequest { code: code.clone() }).await?;
                    println!("revoked {code}");
                }
            }
        }
        Command::Settings(cmd) => {
            let mut routing = e.routing_as(e.token()?).await?;
            let mut s = routing
                .get_routing_settings(v1::GetRoutingSettingsRequest {})
                .await?
                .into_inner()
                .settings
                .unwrap_or_default();
            if let SettingsCmd::Set {
                known_operator_minutes,
                known_operator_wait,
                waiting_weight,
                idle_weight,
                idle_after,
                reroute_after,
                ramp_up,
                away_after_missed_offers,
            } = cmd
            {
                let secs = |n: u64| Some(parley_proto::convert::duration(Duration::from_secs(n)));
                if let Some(m) = known_operator_minutes {
                    s.known_operator_window = secs(m * 60);
                }
                if let Some(n) = known_operator_wait {
                    s.known_operator_wait = secs(n);
                }
                if let Some(w) = waiting_weight {
                    s.waiting_weight = w;
                }
                if let Some(w) = idle_weight {
                    s.idle_weight = w;
                }
                if let Some(n) = idle_after {
                    s.idle_after = secs(n);
                }
                if let Some(n) = reroute_after {
                    s.reroute_after = secs(n);
                }
                if let Some(n) = ramp_up {
                    s.ramp_up = secs(n);
                }
                if away_after_missed_offers.is_some() {
                    s.away_after_missed_offers = away_after_missed_offers;
                }
                s = routing
                    .update_routing_settings(v1::UpdateRoutingSettingsRequest { settings: Some(s) })
                    .await?
                    .into_inner()
                    .settings
                    .unwrap_or_default();
            }
            let secs = |d: &Option<parley_proto::Duration>| d.as_ref().map_or(0, |d| d.seconds);
            println!(
                "known operator: {} min window, {} s wait; weights: waiting {}, idle {} after {} s; reroute after {} s; ramp-up {} s; away after {} missed offers; fast-track codes live {} min, {} wrong tries an hour",
                secs(&s.known_operator_window) / 60,
                secs(&s.known_operator_wait),
                s.waiting_weight,
                s.idle_weight,
                secs(&s.idle_after),
                secs(&s.reroute_after),
                secs(&s.ramp_up),
                s.away_after_missed_offers.unwrap_or_default(),
                secs(&s.fast_track_ttl) / 60,
                s.fast_track_max_attempts
            );
        }
        Command::Position { conversation } => {
            let p = e
                .routing_as(e.token()?)
                .await?
                .get_conversation_position(v1::GetConversationPositionRequest { conversation_id: conversation })
                .await?
                .into_inner();
            if p.position == 0 {
                println!("not waiting (queue {})", p.queue_id);
            } else {
                println!(
                    "queue {}: position {}, waited {} s, about {} s to go",
                    p.queue_id, p.position, p.waited_seconds, p.estimated_wait_seconds
                );
            }
        }
        Command::Status { status, operator, reason } => {
            let p = e
                .routing_as(e.token()?)
                .await?
                .set_operator_status(v1::SetOperatorStatusRequest {
                    operator_id: operator,
                    status: status_enum(&status)? as i32,
                    reason,
                })
                .await?
                .into_inner()
                .presence
                .unwrap_or_default();
            println!(
                "{} is {:?}{} (desk {})",
                p.operator_id,
                v1::OperatorStatus::try_from(p.status).unwrap_or_default(),
                if p.reason.is_empty() { String::new() } else { format!(": {}", p.reason) },
                if p.connected { "connected" } else { "not connected" }
            );
        }
        Command::Send { customer, text, key, queue } => {
            let key = key.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7()));
            let r = e
                .ingest_as(e.token()?)
                .await?
                .submit_message(v1::SubmitMessageRequest {
                    customer_ref: customer,
                    text,
                    idempotency_key: key,
                    queue_id: queue,
                    ..Default::default()
                })
                .await?
                .into_inner();
            println!(
                "accepted message {} for customer {}{}",
                r.message_id,
                r.customer_id,
                if r.duplicate { " (duplicate)" } else { "" }
            );
        }
        Command::Watch { customer, after } => {
            let mut stream = e
                .ingest_as(e.token()?)
                .await?
                .stream_customer_updates(v1::StreamCustomerUpdatesRequest {
                    customer_ref: customer,
                    after_sequence: after,
                })
                .await?
                .into_inner();
            while let Some(item) = stream.next().await {
                let r = item?;
                println!("#{} {}", r.sequence, describe_update(r.update.and_then(|u| u.kind)));
            }
        }
        Command::Desk(args) => desk::run(e, args).await?,
        Command::Conversation { id } => {
            let mut h = e.history_as(e.token()?).await?;
            let c = h.get_conversation(v1::GetConversationRequest { conversation_id: id.clone() }).await?.into_inner();
            let conv = c.conversation.unwrap_or_default();
            println!(
                "conversation {} — {:?}, queue {}, operator {}, {} messages",
                conv.id,
                v1::ConversationStatus::try_from(conv.status).unwrap_or_default(),
                conv.queue_id,
                if conv.operator_id.is_empty() { "-" } else { &conv.operator_id },
                c.message_count
            );
            let mut token = String::new();
            loop {
                let page = h
                    .list_messages(v1::ListMessagesRequest {
                        conversation_id: id.clone(),
                        page_size: 200,
                        page_token: token,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                for m in &page.messages {
                    println!("  {}", show_message(m));
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        Command::Why { id } => {
            let decisions = e
                .history_as(e.token()?)
                .await?
                .list_routing_decisions(v1::ListRoutingDecisionsRequest { conversation_id: id })
                .await?
                .into_inner()
                .decisions;
            for d in decisions {
                println!(
                    "[{}] queue {}: {} — {}",
                    time(d.decide_time.as_ref()),
                    d.queue_id,
                    if d.chosen_operator_id.is_empty() {
                        "nobody".to_owned()
                    } else {
                        format!("chose {}", d.chosen_operator_id)
                    },
                    d.reason
                );
                for c in d.candidates {
                    let verdict =
                        if c.excluded_because.is_empty() { "eligible".to_owned() } else { c.excluded_because };
                    println!("    {:<16} {}/{}  {}", c.operator_id, c.load, c.capacity, verdict);
                }
            }
        }
        Command::Timeline { customer_id } => {
            let t = e
                .history_as(e.token()?)
                .await?
                .get_customer_timeline(v1::GetCustomerTimelineRequest {
                    customer_id,
                    page_size: 50,
                    ..Default::default()
                })
                .await?
                .into_inner();
            for m in t.messages {
                println!("{}  {}", &m.conversation_id[..8], show_message(&m));
            }
        }
        Command::Close { id, reason } => {
            e.routing_as(e.token()?)
                .await?
                .close_conversation(v1::CloseConversationRequest { conversation_id: id.clone(), reason })
                .await?;
            println!("closed {id}");
        }
        Command::Transfer { id, to_operator, to_queue, note } => {
            use v1::transfer_conversation_request::Target;
            let target = match (to_operator, to_queue) {
                (Some(op), _) => Target::OperatorId(op),
                (None, Some(q)) => Target::QueueId(q),
                (None, None) => anyhow::bail!("--to-operator or --to-queue is required"),
            };
            let c = e
                .routing_as(e.token()?)
                .await?
                .transfer_conversation(v1::TransferConversationRequest {
                    conversation_id: id,
                    target: Some(target),
                    note,
                })
                .await?
                .into_inner()
                .conversation
                .unwrap_or_default();
            println!(
                "conversation {} now {:?} ({})",
                c.id,
                v1::ConversationStatus::try_from(c.status).unwrap_or_default(),
                c.operator_id
            );
        }
        Command::Demo(args) => demo::run(e, args).await?,
    }
    Ok(())
}

fn print_operator(o: &v1::Operator) {
    let skills: Vec<String> = o.skills.iter().map(|s| format!("{}:{}", s.skill, s.proficiency)).collect();
    let caps: Vec<String> = o
        .capacity
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                parley_proto::convert::from_channel("", c.channel).map_or("?", |c| c.as_str()),
                c.max_conversations
            )
        })
        .collect();
    println!(
        "{}  {}  skills=[{}] languages=[{}] capacity=[{}]{}",
        o.id,
        o.display_name,
        skills.join(","),
        o.languages.join(","),
        caps.join(","),
        if o.disabled { "  (disabled)" } else { "" }
    );
}

pub fn describe_update(kind: Option<v1::customer_update::Kind>) -> String {
    use v1::customer_update::Kind;
    match kind {
        Some(Kind::Message(m)) => show_message(&m),
        Some(Kind::Queued(q)) if q.estimated_wait_seconds > 0 => {
            format!("waiting in the queue (position {}, about {} s)", q.position, q.estimated_wait_seconds)
        }
        Some(Kind::Queued(q)) => format!("waiting in the queue (position {})", q.position),
        Some(Kind::OperatorJoined(j)) => {
            format!("{} ({}) joined the conversation", j.operator_display_name, j.operator_id)
        }
        Some(Kind::Ended(e)) => {
            format!("conversation ended{}", if e.reason.is_empty() { String::new() } else { format!(": {}", e.reason) })
        }
        Some(Kind::Delivery(d)) => {
            format!("message {} is {:?}", d.message_id, v1::DeliveryState::try_from(d.state).unwrap_or_default())
        }
        Some(Kind::Closed(c)) => format!("the queue is closed now; opens at {} UTC", time(c.open_time.as_ref())),
        Some(Kind::WaitingForOperator(w)) => {
            format!(
                "waiting for {} ({}) until {} UTC",
                w.operator_display_name,
                w.operator_id,
                time(w.until_time.as_ref())
            )
        }
        Some(Kind::Typing(_)) => "the operator is typing…".into(),
        None => "(empty update)".into(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("error: {}: {}", parley_kit::telemetry::code_name(s.code()), s.message()),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
