//! The admin API: tenants, skills, operators, queues, channel configurations and tokens,
//! stored in the `parley_config` bucket that every service watches. Writes wait until this
//! replica's cache has seen them, so a create followed by a use through routing just works.

use std::sync::Arc;
use std::time::Duration;

use parley_domain::{Channel, Role, SkillId, TenantId, check_display_name};

use crate::engine::Engine;
use parley_kit::auth::{Claims, PLATFORM_TENANT, Principal, TokenKey, principal, require};
use parley_kit::clock;
use parley_kit::error::{ApiError, ApiResult};
use parley_nats::config_store::{Kind, StoreError, key, tenant_key};
use parley_nats::{ConfigCache, ConfigStore};
use parley_proto::v1::admin_service_server::AdminService;
use parley_proto::v1::channel_config::Settings;
use parley_proto::{convert, events, v1};
use tonic::{Request, Response, Status};

/// The gRPC service.
pub struct AdminApi {
    pub cache: ConfigCache,
    pub store: ConfigStore,
    pub key: TokenKey,
    /// To bring an operator's availability in line with a change of their skills or seats.
    pub engine: Arc<Engine>,
}

const READERS: [Role; 3] = [Role::Operator, Role::Supervisor, Role::Admin];
const WRITERS: [Role; 1] = [Role::Admin];

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists(k) => ApiError::AlreadyExists(format!("{} already exists", describe(&k))),
        StoreError::NotFound(k) => ApiError::NotFound(format!("{} not found", describe(&k))),
        StoreError::Conflict(k) => ApiError::Aborted(format!(
            "{} was changed concurrently; re-read it and retry with its revision",
            describe(&k)
        )),
        StoreError::AlreadyApplied(k) => ApiError::AlreadyExists(format!("{} already exists", describe(&k))),
        StoreError::Unavailable(m) => ApiError::Unavailable(m),
    }
}

/// "operator anna" from "acme.operator.anna".
fn describe(key: &str) -> String {
    let mut parts = key.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(t), Some("tenant"), None) => format!("tenant {t}"),
        (Some(_), Some(kind), Some(id)) => format!("{kind} {id}"),
        _ => key.to_owned(),
    }
}

fn slug<T>(field: &str, parse: impl Fn(&str) -> Result<T, parley_domain::InvalidId>, value: &str) -> ApiResult<T> {
    parse(value).map_err(|e| ApiError::invalid(format!("{field}: {e}")))
}

fn name(field: &str, value: &str) -> ApiResult<()> {
    check_display_name(value).map_err(|e| ApiError::invalid(format!("{field}: {}", e.why)))
}

fn required<T>(field: &str, value: Option<T>) -> ApiResult<T> {
    value.ok_or_else(|| ApiError::invalid(format!("{field} is required")))
}

/// Blanks every secret field (responses never carry them).
fn redact(mut c: v1::ChannelConfig) -> v1::ChannelConfig {
    match &mut c.settings {
        Some(Settings::Telegram(s)) => {
            s.bot_token.clear();
            s.webhook_secret.clear();
        }
        Some(Settings::Whatsapp(s)) => {
            s.access_token.clear();
            s.app_secret.clear();
            s.verify_token.clear();
        }
        Some(Settings::Viber(s)) => s.auth_token.clear(),
        Some(Settings::Sms(s)) => s.auth_token.clear(),
        Some(Settings::Email(s)) => s.smtp_password.clear(),
        Some(Settings::Webchat(s)) => s.identity_secret.clear(),
        Some(Settings::Api(_)) | None => {}
    }
    c
}

/// Keeps stored secrets where an update leaves them empty.
fn keep_secrets(new: &mut v1::ChannelConfig, old: &v1::ChannelConfig) {
    fn keep(new: &mut String, old: &str) {
        if new.is_empty() {
            *new = old.to_owned();
        }
    }
    match (&mut new.settings, &old.settings) {
        (Some(Settings::Telegram(n)), Some(Settings::Telegram(o))) => {
            keep(&mut n.bot_token, &o.bot_token);
            keep(&mut n.webhook_secret, &o.webhook_secret);
        }
        (Some(Settings::Whatsapp(n)), Some(Settings::Whatsapp(o))) => {
            keep(&mut n.access_token, &o.access_token);
            keep(&mut n.app_secret, &o.app_secret);
            keep(&mut n.verify_token, &o.verify_token);
        }
        (Some(Settings::Viber(n)), Some(Settings::Viber(o))) => keep(&mut n.auth_token, &o.auth_token),
        (Some(Settings::Sms(n)), Some(Settings::Sms(o))) => keep(&mut n.auth_token, &o.auth_token),
        (Some(Settings::Email(n)), Some(Settings::Email(o))) => keep(&mut n.smtp_password, &o.smtp_password),
        (Some(Settings::Webchat(n)), Some(Settings::Webchat(o))) => keep(&mut n.identity_secret, &o.identity_secret),
        _ => {}
    }
}

fn settings_channel(s: &Settings) -> Channel {
    match s {
        Settings::Api(_) => Channel::Api,
        Settings::Telegram(_) => Channel::Telegram,
        Settings::Whatsapp(_) => Channel::WhatsApp,
        Settings::Viber(_) => Channel::Viber,
        Settings::Sms(_) => Channel::Sms,
        Settings::Email(_) => Channel::Email,
        Settings::Webchat(_) => Channel::WebChat,
    }
}

impl AdminApi {
    pub fn new(cache: ConfigCache, key: TokenKey, engine: Arc<Engine>) -> Arc<Self> {
        let store = cache.store().clone();
        Arc::new(Self { cache, store, key, engine })
    }

    /// After an operator's configuration changed (or went): their availability on every
    /// channel, out of the indexes of skills they no longer have.
    async fn resync_operator(&self, tenant: &TenantId, before: Option<&v1::Operator>, id: &str, deleted: bool) {
        let Ok(op) = parley_domain::OperatorId::parse(id) else { return };
        let old_skills: Vec<SkillId> =
            before.map(|o| o.skills.iter().filter_map(|s| SkillId::parse(&s.skill).ok()).collect()).unwrap_or_default();
        let now = clock::now();
        for channel in Channel::ALL {
            if let Err(e) = self.engine.redis.forget_availability(tenant, &op, channel, &old_skills).await {
                tracing::warn!(operator = %op, error = %e, "availability not updated; reconciliation will");
                return;
            }
            let seat = self.engine.seat(tenant, &op, channel);
            if !deleted
                && seat.ctx().capacity > 0
                && let Err(e) = self.engine.redis.refresh(&seat.ctx(), now).await
            {
                tracing::warn!(operator = %op, error = %e, "availability not updated; reconciliation will");
            }
        }
        self.engine.wake.notify_one();
    }

    /// Checks that the queues a queue sends conversations on to exist.
    fn queue_targets_exist(&self, tenant: &TenantId, q: &v1::Queue) -> ApiResult<()> {
        for (field, target) in
            [("queue.overflow_queue_id", &q.overflow_queue_id), ("queue.after_hours_queue_id", &q.after_hours_queue_id)]
        {
            if !target.is_empty() && self.cache.queue(tenant, target).is_none() {
                return Err(ApiError::invalid(format!("{field}: queue {target:?} does not exist")));
            }
        }
        Ok(())
    }

    /// Waits for this replica's cache to see a write.
    async fn seen(&self, revision: u64) {
        self.cache.wait_for(revision).await;
    }

    fn skills_exist<'a>(
        &self,
        tenant: &TenantId,
        skills: impl IntoIterator<Item = &'a String>,
        field: &str,
    ) -> ApiResult<()> {
        for skill in skills {
            let known = self.cache.with_tenant(tenant, |t| t.is_some_and(|t| t.skills.contains_key(skill)));
            if !known {
                return Err(ApiError::invalid(format!("{field}: skill {skill} does not exist (create it first)")));
            }
        }
        Ok(())
    }

    fn validate_operator(&self, tenant: &TenantId, o: &v1::Operator) -> ApiResult<()> {
        convert::from_operator(tenant, o).map_err(|e| ApiError::invalid(e.to_string()))?;
        self.skills_exist(tenant, o.skills.iter().map(|s| &s.skill), "operator.skills")
    }

    fn validate_queue(&self, tenant: &TenantId, q: &v1::Queue) -> ApiResult<()> {
        convert::from_queue(tenant, q).map_err(|e| ApiError::invalid(e.to_string()))?;
        self.queue_targets_exist(tenant, q)?;
        self.skills_exist(tenant, q.required_skills.iter().map(|s| &s.skill), "queue.required_skills")?;
        // An expansion step may only stop requiring skills that exist.
        for (i, step) in q.expansion.iter().enumerate() {
            self.skills_exist(tenant, &step.remove_skills, &format!("queue.expansion[{i}].remove_skills"))?;
        }
        Ok(())
    }

    fn validate_channel(&self, tenant: &TenantId, c: &v1::ChannelConfig) -> ApiResult<Channel> {
        slug("channel_config.id", parley_domain::ChannelConfigId::parse, &c.id)?;
        let channel =
            convert::from_channel("channel_config.channel", c.channel).map_err(|e| ApiError::invalid(e.to_string()))?;
        name("channel_config.display_name", &c.display_name)?;
        let settings = required("channel_config.settings", c.settings.as_ref())?;
        if settings_channel(settings) != channel {
            return Err(ApiError::invalid(format!(
                "channel_config.settings are for {}, but channel is {channel}",
                settings_channel(settings)
            )));
        }
        match settings {
            Settings::Email(e) => {
                let field = "channel_config.settings.email.address";
                let a = e.address.trim();
                let ok = a.len() <= 254
                    && a.split_once('@').is_some_and(|(local, domain)| {
                        !local.is_empty() && !domain.is_empty() && !domain.contains('@') && !domain.starts_with('.')
                    })
                    && !a.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ','));
                if !ok {
                    return Err(ApiError::invalid(format!(
                        "{field} must be one email address (local@domain), got {a:?}"
                    )));
                }
                // Mail to an address goes to one configuration: a second would make the
                // listener store every mail twice, for two tenants.
                if self.cache.email_address_users(a).iter().any(|(t, id)| t != tenant.as_str() || *id != c.id) {
                    return Err(ApiError::AlreadyExists(format!(
                        "{field} {a:?} is already used by another channel configuration"
                    )));
                }
                if e.smtp_relay_port > 65_535 {
                    return Err(ApiError::invalid(
                        "channel_config.settings.email.smtp_relay_port must be at most 65535",
                    ));
                }
            }
            Settings::Webchat(w) => {
                for o in &w.allowed_origins {
                    let valid = (o.starts_with("https://") || o.starts_with("http://"))
                        && !o.ends_with('/')
                        && o.split_once("://").is_some_and(|(_, host)| !host.is_empty() && !host.contains('/'));
                    if !valid {
                        return Err(ApiError::invalid(format!(
                            "channel_config.settings.webchat.allowed_origins: {o:?} is not an origin (scheme://host[:port], no path)"
                        )));
                    }
                }
            }
            _ => {}
        }
        if self.cache.queue(tenant, &c.default_queue_id).is_none() {
            return Err(ApiError::invalid(format!(
                "channel_config.default_queue_id: queue {:?} does not exist",
                c.default_queue_id
            )));
        }
        Ok(channel)
    }

    /// The tenant a tenant-scoped call acts on (never a platform token's reserved one).
    fn tenant_of(p: &Principal) -> ApiResult<TenantId> {
        if p.is_platform() {
            return Err(ApiError::PermissionDenied(
                "platform tokens manage tenants; issue an admin token of the tenant for this".into(),
            ));
        }
        Ok(p.tenant.clone())
    }

    async fn write_tenant(&self, tenant: &v1::Tenant, create: bool) -> ApiResult<v1::Tenant> {
        let id = slug("tenant.id", TenantId::parse, &tenant.id)?;
        if id.as_str() == PLATFORM_TENANT {
            return Err(ApiError::invalid(format!("tenant.id: {PLATFORM_TENANT:?} is reserved")));
        }
        name("tenant.display_name", &tenant.display_name)?;
        let k = tenant_key(&id);
        let mut stored = tenant.clone();
        stored.revision = 0;
        let revision = if create {
            stored.create_time = Some(convert::timestamp(clock::now()));
            self.store.create(&k, &stored).await.map_err(store_error)?
        } else {
            let (old, _) = self
                .store
                .get::<v1::Tenant>(&k)
                .await
                .map_err(store_error)?
                .ok_or_else(|| ApiError::not_found(format!("tenant {id} not found")))?;
            stored.create_time = old.create_time;
            self.store.update(&k, &stored, tenant.revision).await.map_err(store_error)?
        };
        self.seen(revision).await;
        stored.revision = revision;
        Ok(stored)
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_tenant(
        &self,
        request: Request<v1::CreateTenantRequest>,
    ) -> Result<Response<v1::CreateTenantResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Platform])?;
        let tenant = required("tenant", request.into_inner().tenant)?;
        let created = self.write_tenant(&tenant, true).await?;
        let id = TenantId::parse(&created.id).map_err(|e| ApiError::invalid(e.to_string()))?;
        // Every tenant starts with a queue and an API channel, so it can take messages at once.
        let queue = v1::Queue { id: "default".into(), display_name: "Default".into(), ..Default::default() };
        let q = self.store.create(&key(&id, Kind::Queue, "default"), &queue).await.map_err(store_error)?;
        let api = v1::ChannelConfig {
            id: "api".into(),
            channel: v1::Channel::Api as i32,
            display_name: "API".into(),
            default_queue_id: "default".into(),
            disabled: false,
            settings: Some(Settings::Api(v1::ApiChannelSettings {})),
            revision: 0,
        };
        let c = self.store.create(&key(&id, Kind::Channel, "api"), &api).await.map_err(store_error)?;
        self.seen(q.max(c)).await;
        tracing::info!(tenant = %id, "tenant created");
        Ok(Response::new(v1::CreateTenantResponse { tenant: Some(created) }))
    }

    async fn get_tenant(
        &self,
        request: Request<v1::GetTenantRequest>,
    ) -> Result<Response<v1::GetTenantResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Platform, Role::Admin, Role::Supervisor])?;
        let wanted = request.into_inner().tenant_id;
        let id = if wanted.is_empty() { p.tenant.to_string() } else { wanted };
        if !p.is_platform() && id != p.tenant.as_str() {
            // Another tenant's record does not exist as far as this caller is concerned.
            return Err(ApiError::not_found(format!("tenant {id} not found")).into());
        }
        let id = slug("tenant_id", TenantId::parse, &id)?;
        let tenant = self
            .cache
            .with_tenant(&id, |t| t.and_then(|t| t.tenant.clone()))
            .ok_or_else(|| ApiError::not_found(format!("tenant {id} not found")))?;
        Ok(Response::new(v1::GetTenantResponse { tenant: Some(tenant) }))
    }

    async fn list_tenants(
        &self,
        request: Request<v1::ListTenantsRequest>,
    ) -> Result<Response<v1::ListTenantsResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Platform])?;
        Ok(Response::new(v1::ListTenantsResponse { tenants: self.cache.tenants() }))
    }

    async fn update_tenant(
        &self,
        request: Request<v1::UpdateTenantRequest>,
    ) -> Result<Response<v1::UpdateTenantResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Platform])?;
        let tenant = required("tenant", request.into_inner().tenant)?;
        let updated = self.write_tenant(&tenant, false).await?;
        Ok(Response::new(v1::UpdateTenantResponse { tenant: Some(updated) }))
    }

    async fn create_skill(
        &self,
        request: Request<v1::CreateSkillRequest>,
    ) -> Result<Response<v1::CreateSkillResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let skill = required("skill", request.into_inner().skill)?;
        slug("skill.id", SkillId::parse, &skill.id)?;
        name("skill.display_name", &skill.display_name)?;
        let rev = self.store.create(&key(&tenant, Kind::Skill, &skill.id), &skill).await.map_err(store_error)?;
        self.seen(rev).await;
        Ok(Response::new(v1::CreateSkillResponse { skill: Some(skill) }))
    }

    async fn list_skills(
        &self,
        request: Request<v1::ListSkillsRequest>,
    ) -> Result<Response<v1::ListSkillsResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let tenant = Self::tenant_of(&p)?;
        let skills =
            self.cache.with_tenant(&tenant, |t| t.map(|t| t.skills.values().cloned().collect()).unwrap_or_default());
        Ok(Response::new(v1::ListSkillsResponse { skills }))
    }

    async fn delete_skill(
        &self,
        request: Request<v1::DeleteSkillRequest>,
    ) -> Result<Response<v1::DeleteSkillResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let id = request.into_inner().skill_id;
        slug("skill_id", SkillId::parse, &id)?;
        let users: Vec<String> = self.cache.with_tenant(&tenant, |t| {
            let Some(t) = t else { return vec![] };
            let ops = t
                .operators
                .values()
                .filter(|o| o.skills.iter().any(|s| s.skill == id))
                .map(|o| format!("operator {}", o.id));
            let qs = t
                .queues
                .values()
                .filter(|q| q.required_skills.iter().any(|s| s.skill == id))
                .map(|q| format!("queue {}", q.id));
            ops.chain(qs).collect()
        });
        if !users.is_empty() {
            return Err(ApiError::precondition(format!("skill {id} is in use by {}", users.join(", "))).into());
        }
        self.store.delete(&key(&tenant, Kind::Skill, &id)).await.map_err(store_error)?;
        Ok(Response::new(v1::DeleteSkillResponse {}))
    }

    async fn create_operator(
        &self,
        request: Request<v1::CreateOperatorRequest>,
    ) -> Result<Response<v1::CreateOperatorResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let mut op = required("operator", request.into_inner().operator)?;
        self.validate_operator(&tenant, &op)?;
        op.revision = 0;
        let rev = self.store.create(&key(&tenant, Kind::Operator, &op.id), &op).await.map_err(store_error)?;
        self.seen(rev).await;
        self.resync_operator(&tenant, None, &op.id, false).await;
        op.revision = rev;
        Ok(Response::new(v1::CreateOperatorResponse { operator: Some(op) }))
    }

    async fn get_operator(
        &self,
        request: Request<v1::GetOperatorRequest>,
    ) -> Result<Response<v1::GetOperatorResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let tenant = Self::tenant_of(&p)?;
        let id = request.into_inner().operator_id;
        slug("operator_id", parley_domain::OperatorId::parse, &id)?;
        let op =
            self.cache.operator(&tenant, &id).ok_or_else(|| ApiError::not_found(format!("operator {id} not found")))?;
        Ok(Response::new(v1::GetOperatorResponse { operator: Some(op) }))
    }

    async fn list_operators(
        &self,
        request: Request<v1::ListOperatorsRequest>,
    ) -> Result<Response<v1::ListOperatorsResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let tenant = Self::tenant_of(&p)?;
        let operators =
            self.cache.with_tenant(&tenant, |t| t.map(|t| t.operators.values().cloned().collect()).unwrap_or_default());
        Ok(Response::new(v1::ListOperatorsResponse { operators }))
    }

    async fn update_operator(
        &self,
        request: Request<v1::UpdateOperatorRequest>,
    ) -> Result<Response<v1::UpdateOperatorResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let mut op = required("operator", request.into_inner().operator)?;
        self.validate_operator(&tenant, &op)?;
        let expected = op.revision;
        op.revision = 0;
        let before = self.cache.operator(&tenant, &op.id);
        let rev = self.store.update(&key(&tenant, Kind::Operator, &op.id), &op, expected).await.map_err(store_error)?;
        self.seen(rev).await;
        self.resync_operator(&tenant, before.as_ref(), &op.id, false).await;
        op.revision = rev;
        Ok(Response::new(v1::UpdateOperatorResponse { operator: Some(op) }))
    }

    async fn delete_operator(
        &self,
        request: Request<v1::DeleteOperatorRequest>,
    ) -> Result<Response<v1::DeleteOperatorResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let id = request.into_inner().operator_id;
        slug("operator_id", parley_domain::OperatorId::parse, &id)?;
        let before = self.cache.operator(&tenant, &id);
        self.store.delete(&key(&tenant, Kind::Operator, &id)).await.map_err(store_error)?;
        self.resync_operator(&tenant, before.as_ref(), &id, true).await;
        Ok(Response::new(v1::DeleteOperatorResponse {}))
    }

    async fn create_queue(
        &self,
        request: Request<v1::CreateQueueRequest>,
    ) -> Result<Response<v1::CreateQueueResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let mut q = required("queue", request.into_inner().queue)?;
        self.validate_queue(&tenant, &q)?;
        q.revision = 0;
        let rev = self.store.create(&key(&tenant, Kind::Queue, &q.id), &q).await.map_err(store_error)?;
        self.seen(rev).await;
        q.revision = rev;
        Ok(Response::new(v1::CreateQueueResponse { queue: Some(q) }))
    }

    async fn get_queue(&self, request: Request<v1::GetQueueRequest>) -> Result<Response<v1::GetQueueResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let tenant = Self::tenant_of(&p)?;
        let id = request.into_inner().queue_id;
        slug("queue_id", parley_domain::QueueId::parse, &id)?;
        let q = self.cache.queue(&tenant, &id).ok_or_else(|| ApiError::not_found(format!("queue {id} not found")))?;
        Ok(Response::new(v1::GetQueueResponse { queue: Some(q) }))
    }

    async fn list_queues(
        &self,
        request: Request<v1::ListQueuesRequest>,
    ) -> Result<Response<v1::ListQueuesResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let tenant = Self::tenant_of(&p)?;
        let queues =
            self.cache.with_tenant(&tenant, |t| t.map(|t| t.queues.values().cloned().collect()).unwrap_or_default());
        Ok(Response::new(v1::ListQueuesResponse { queues }))
    }

    async fn update_queue(
        &self,
        request: Request<v1::UpdateQueueRequest>,
    ) -> Result<Response<v1::UpdateQueueResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let mut q = required("queue", request.into_inner().queue)?;
        self.validate_queue(&tenant, &q)?;
        let expected = q.revision;
        q.revision = 0;
        let rev = self.store.update(&key(&tenant, Kind::Queue, &q.id), &q, expected).await.map_err(store_error)?;
        self.seen(rev).await;
        q.revision = rev;
        Ok(Response::new(v1::UpdateQueueResponse { queue: Some(q) }))
    }

    async fn delete_queue(
        &self,
        request: Request<v1::DeleteQueueRequest>,
    ) -> Result<Response<v1::DeleteQueueResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let id = request.into_inner().queue_id;
        slug("queue_id", parley_domain::QueueId::parse, &id)?;
        let users: Vec<String> = self.cache.with_tenant(&tenant, |t| {
            t.map(|t| t.channels.values().filter(|c| c.default_queue_id == id).map(|c| c.id.clone()).collect())
                .unwrap_or_default()
        });
        if !users.is_empty() {
            return Err(ApiError::precondition(format!(
                "queue {id} is the default of channel(s) {}",
                users.join(", ")
            ))
            .into());
        }
        // Conversations would move to a queue that no longer exists.
        let senders: Vec<String> = self.cache.with_tenant(&tenant, |t| {
            t.map(|t| {
                t.queues
                    .values()
                    .filter(|q| q.overflow_queue_id == id || q.after_hours_queue_id == id)
                    .map(|q| q.id.clone())
                    .collect()
            })
            .unwrap_or_default()
        });
        if !senders.is_empty() {
            return Err(ApiError::precondition(format!(
                "queue {id} is the overflow or after-hours queue of queue(s) {}",
                senders.join(", ")
            ))
            .into());
        }
        self.store.delete(&key(&tenant, Kind::Queue, &id)).await.map_err(store_error)?;
        Ok(Response::new(v1::DeleteQueueResponse {}))
    }

    async fn create_channel_config(
        &self,
        request: Request<v1::CreateChannelConfigRequest>,
    ) -> Result<Response<v1::CreateChannelConfigResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let mut c = required("channel_config", request.into_inner().channel_config)?;
        self.validate_channel(&tenant, &c)?;
        c.revision = 0;
        let rev = self.store.create(&key(&tenant, Kind::Channel, &c.id), &c).await.map_err(store_error)?;
        self.seen(rev).await;
        c.revision = rev;
        Ok(Response::new(v1::CreateChannelConfigResponse { channel_config: Some(redact(c)) }))
    }

    async fn get_channel_config(
        &self,
        request: Request<v1::GetChannelConfigRequest>,
    ) -> Result<Response<v1::GetChannelConfigResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Supervisor, Role::Admin])?;
        let tenant = Self::tenant_of(&p)?;
        let id = request.into_inner().channel_config_id;
        slug("channel_config_id", parley_domain::ChannelConfigId::parse, &id)?;
        let c =
            self.cache.channel(&tenant, &id).ok_or_else(|| ApiError::not_found(format!("channel {id} not found")))?;
        Ok(Response::new(v1::GetChannelConfigResponse { channel_config: Some(redact(c)) }))
    }

    async fn list_channel_configs(
        &self,
        request: Request<v1::ListChannelConfigsRequest>,
    ) -> Result<Response<v1::ListChannelConfigsResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Supervisor, Role::Admin])?;
        let tenant = Self::tenant_of(&p)?;
        let configs: Vec<v1::ChannelConfig> =
            self.cache.with_tenant(&tenant, |t| t.map(|t| t.channels.values().cloned().collect()).unwrap_or_default());
        Ok(Response::new(v1::ListChannelConfigsResponse { channel_configs: configs.into_iter().map(redact).collect() }))
    }

    async fn update_channel_config(
        &self,
        request: Request<v1::UpdateChannelConfigRequest>,
    ) -> Result<Response<v1::UpdateChannelConfigResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let mut c = required("channel_config", request.into_inner().channel_config)?;
        self.validate_channel(&tenant, &c)?;
        let k = key(&tenant, Kind::Channel, &c.id);
        let (old, _) = self
            .store
            .get::<v1::ChannelConfig>(&k)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found(format!("channel {} not found", c.id)))?;
        if old.channel != c.channel {
            return Err(ApiError::invalid("channel_config.channel cannot change; create another channel").into());
        }
        keep_secrets(&mut c, &old);
        let expected = c.revision;
        c.revision = 0;
        let rev = self.store.update(&k, &c, expected).await.map_err(store_error)?;
        self.seen(rev).await;
        c.revision = rev;
        Ok(Response::new(v1::UpdateChannelConfigResponse { channel_config: Some(redact(c)) }))
    }

    async fn delete_channel_config(
        &self,
        request: Request<v1::DeleteChannelConfigRequest>,
    ) -> Result<Response<v1::DeleteChannelConfigResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let id = request.into_inner().channel_config_id;
        slug("channel_config_id", parley_domain::ChannelConfigId::parse, &id)?;
        self.store.delete(&key(&tenant, Kind::Channel, &id)).await.map_err(store_error)?;
        Ok(Response::new(v1::DeleteChannelConfigResponse {}))
    }

    async fn issue_token(
        &self,
        request: Request<v1::IssueTokenRequest>,
    ) -> Result<Response<v1::IssueTokenResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Platform, Role::Admin])?;
        let r = request.into_inner();
        let tenant = match (p.is_platform(), r.tenant_id.is_empty()) {
            (true, true) => return Err(ApiError::invalid("tenant_id is required for platform callers").into()),
            (true, false) => slug("tenant_id", TenantId::parse, &r.tenant_id)?,
            (false, true) => p.tenant.clone(),
            (false, false) if r.tenant_id == p.tenant.as_str() => p.tenant.clone(),
            (false, false) => {
                return Err(ApiError::PermissionDenied("admins issue tokens of their own tenant only".into()).into());
            }
        };
        let role = convert::from_role("role", r.role).map_err(|e| ApiError::invalid(e.to_string()))?;
        if role == Role::Platform {
            return Err(ApiError::PermissionDenied(
                "platform tokens are minted with the signing key (parleyctl), not issued".into(),
            )
            .into());
        }
        if tenant.as_str() != PLATFORM_TENANT && self.cache.with_tenant(&tenant, |t| t.is_none()) {
            return Err(ApiError::not_found(format!("tenant {tenant} not found")).into());
        }
        if r.subject.is_empty() || r.subject.len() > 128 || r.subject.chars().any(char::is_control) {
            return Err(ApiError::invalid("subject must be 1 to 128 bytes without control characters").into());
        }
        if role == Role::Operator && self.cache.operator(&tenant, &r.subject).is_none() {
            return Err(ApiError::invalid(format!("subject: operator {} does not exist", r.subject)).into());
        }
        if r.description.chars().count() > 200 {
            return Err(ApiError::invalid("description must be at most 200 characters").into());
        }
        let ttl = convert::from_duration("ttl", r.ttl.as_ref())
            .map_err(|e| ApiError::invalid(e.to_string()))?
            .unwrap_or(Duration::from_secs(30 * 24 * 3600));
        if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(400 * 24 * 3600) {
            return Err(ApiError::invalid("ttl must be 1 minute to 400 days").into());
        }
        let now = clock::now();
        let expires = now.saturating_add(ttl);
        let id = clock::new_id().to_string();
        let record = events::TokenRecord {
            id: id.clone(),
            tenant_id: tenant.to_string(),
            subject: r.subject.clone(),
            role: convert::role(role) as i32,
            description: r.description.clone(),
            issue_time: Some(convert::timestamp(now)),
            expire_time: Some(convert::timestamp(expires)),
            revoked: false,
        };
        let rev = self.store.create(&key(&tenant, Kind::Token, &id), &record).await.map_err(store_error)?;
        self.seen(rev).await;
        let token = self.key.sign(&Claims {
            sub: r.subject,
            tid: tenant.to_string(),
            role: role.as_str().to_owned(),
            jti: id,
            iat: now.as_millis() / 1000,
            exp: expires.as_millis() / 1000,
        });
        Ok(Response::new(v1::IssueTokenResponse { token, info: Some(token_info(&record)) }))
    }

    async fn list_tokens(
        &self,
        request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let now = clock::now();
        let tokens = self.cache.with_tenant(&tenant, |t| {
            t.map(|t| {
                t.tokens
                    .values()
                    .filter(|r| !r.revoked && convert::from_timestamp(r.expire_time.as_ref()) > now)
                    .map(token_info)
                    .collect()
            })
            .unwrap_or_default()
        });
        Ok(Response::new(v1::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &WRITERS)?;
        let tenant = Self::tenant_of(&p)?;
        let id = request.into_inner().token_id;
        if uuid::Uuid::parse_str(&id).is_err() {
            return Err(ApiError::invalid("token_id must be a token id from IssueToken or ListTokens").into());
        }
        let k = key(&tenant, Kind::Token, &id);
        let (mut record, rev) = self
            .store
            .get::<events::TokenRecord>(&k)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found(format!("token {id} not found")))?;
        record.revoked = true;
        let rev = self.store.update(&k, &record, rev).await.map_err(store_error)?;
        self.seen(rev).await;
        Ok(Response::new(v1::RevokeTokenResponse {}))
    }
}

fn token_info(r: &events::TokenRecord) -> v1::TokenInfo {
    v1::TokenInfo {
        id: r.id.clone(),
        tenant_id: r.tenant_id.clone(),
        subject: r.subject.clone(),
        role: r.role,
        description: r.description.clone(),
        issue_time: r.issue_time,
        expire_time: r.expire_time,
    }
}
