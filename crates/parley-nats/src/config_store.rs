//! Tenant configuration in the `parley_config` key-value bucket: the store (writes with
//! compare-and-set, for the admin API) and the cache every service keeps by watching the
//! bucket (reads, and the auth [`Directory`]).
//!
//! Keys: `<tenant>.tenant`, `<tenant>.operator.<id>`, `<tenant>.queue.<id>`,
//! `<tenant>.skill.<id>`, `<tenant>.channel.<id>`, `<tenant>.token.<id>`. Values are the
//! protobuf resources of `parley.v1` (tokens: `parley.events.v1.TokenRecord`).
//!
//! Besides the entries, the cache keeps one index across tenants: email channel configs by
//! their address ([`ConfigCache::email_recipients`]), for the SMTP listener.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use parley_domain::routing::RoutingSettings;
use parley_domain::{Operator, OperatorId, Queue, Role, TenantId};
use parley_kit::auth::{AuthError, Directory, Principal};
use parley_proto::convert;
use parley_proto::prost::Message as _;
use parley_proto::{events, prost, v1};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The kinds of entry under a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The tenant's routing settings (one entry, id `settings`).
    Routing,
    FastTrack,
    Operator,
    Queue,
    Skill,
    Channel,
    Token,
}

impl Kind {
    const fn as_str(self) -> &'static str {
        match self {
            Kind::Routing => "routing",
            Kind::FastTrack => "ftcode",
            Kind::Operator => "operator",
            Kind::Queue => "queue",
            Kind::Skill => "skill",
            Kind::Channel => "channel",
            Kind::Token => "token",
        }
    }
}

/// The key of a tenant's own record.
pub fn tenant_key(tenant: &TenantId) -> String {
    format!("{tenant}.tenant")
}

/// The key of an entry of a tenant.
pub fn key(tenant: &TenantId, kind: Kind, id: &str) -> String {
    format!("{tenant}.{}.{id}", kind.as_str())
}

/// A store operation that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} was changed concurrently (revision mismatch); re-read and retry")]
    Conflict(String),
    /// The same change (by its dedupe id) was stored before: nothing to do.
    #[error("{0} already has this change")]
    AlreadyApplied(String),
    #[error("configuration store unavailable: {0}")]
    Unavailable(String),
}

/// Writes configuration. Cheap to clone.
#[derive(Clone)]
pub struct ConfigStore {
    kv: kv::Store,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigStore(..)")
    }
}

impl ConfigStore {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Reads one entry with its revision.
    pub async fn get<P: prost::Message + Default>(&self, key: &str) -> Result<Option<(P, u64)>, StoreError> {
        match self.kv.entry(key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                let value = P::decode(e.value).map_err(|e| StoreError::Unavailable(format!("{key}: {e}")))?;
                Ok(Some((value, e.revision)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    /// Creates an entry; fails if it exists.
    pub async fn create<P: prost::Message>(&self, key: &str, value: &P) -> Result<u64, StoreError> {
        self.kv.create(key, Bytes::from(value.encode_to_vec())).await.map_err(|e| {
            if e.kind() == kv::CreateErrorKind::AlreadyExists {
                StoreError::AlreadyExists(key.to_owned())
            } else {
                StoreError::Unavailable(e.to_string())
            }
        })
    }

    /// Replaces an existing entry. With `expected` (non-zero) the write happens only if the
    /// entry is still at that revision.
    pub async fn update<P: prost::Message + Default>(
        &self,
        key: &str,
        value: &P,
        expected: u64,
    ) -> Result<u64, StoreError> {
        let current = match self.kv.entry(key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => e.revision,
            Ok(_) => return Err(StoreError::NotFound(key.to_owned())),
            Err(e) => return Err(StoreError::Unavailable(e.to_string())),
        };
        if expected != 0 && expected != current {
            return Err(StoreError::Conflict(key.to_owned()));
        }
        self.kv.update(key, Bytes::from(value.encode_to_vec()), current).await.map_err(|e| {
            if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                StoreError::Conflict(key.to_owned())
            } else {
                StoreError::Unavailable(e.to_string())
            }
        })
    }

    /// Deletes an existing entry.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.kv.entry(key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {}
            Ok(_) => return Err(StoreError::NotFound(key.to_owned())),
            Err(e) => return Err(StoreError::Unavailable(e.to_string())),
        }
        self.kv.delete(key).await.map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

/// One tenant's configuration as cached.
#[derive(Debug, Clone, Default)]
pub struct TenantConfig {
    pub tenant: Option<v1::Tenant>,
    pub operators: BTreeMap<String, v1::Operator>,
    pub queues: BTreeMap<String, v1::Queue>,
    pub skills: BTreeMap<String, v1::Skill>,
    pub channels: BTreeMap<String, v1::ChannelConfig>,
    pub tokens: BTreeMap<String, events::TokenRecord>,
    pub routing: Option<v1::RoutingSettings>,
    pub fast_track: BTreeMap<String, events::FastTrackRecord>,
    /// The operators and queues decoded once, as routing decides with them (entries that
    /// fail to decode are left out, and logged).
    pub operator_models: BTreeMap<String, Arc<Operator>>,
    pub queue_models: BTreeMap<String, Arc<Queue>>,
    pub settings_model: RoutingSettings,
}

/// What the cache holds: every tenant's entries, and the indexes across tenants.
#[derive(Debug, Default)]
struct Snapshot {
    tenants: HashMap<String, TenantConfig>,
    mail: MailIndex,
}

/// Email channel configs by address: the lowercase address → the (tenant, channel config id)
/// of every email channel config with that address, enabled or not (readers check; a
/// tenant's record changes without its configs being rewritten).
#[derive(Debug, Default)]
struct MailIndex(HashMap<String, BTreeSet<(String, String)>>);

/// An address as the index keys it: mail systems treat addresses case-insensitively in
/// practice, whatever RFC 5321 allows for the local part.
fn mail_key(address: &str) -> String {
    address.trim().to_lowercase()
}

/// The address of an email channel config, if it is one and has an address.
fn email_address(config: &v1::ChannelConfig) -> Option<String> {
    match &config.settings {
        Some(v1::channel_config::Settings::Email(s)) if !s.address.trim().is_empty() => Some(mail_key(&s.address)),
        _ => None,
    }
}

impl MailIndex {
    /// Moves a config from the address it had (if any) to the one it has now (if any).
    fn update(&mut self, tenant: &str, id: &str, old: Option<String>, new: Option<String>) {
        if old == new {
            return;
        }
        let entry = (tenant.to_owned(), id.to_owned());
        if let Some(old) = old
            && let Some(set) = self.0.get_mut(&old)
        {
            set.remove(&entry);
            if set.is_empty() {
                self.0.remove(&old);
            }
        }
        if let Some(new) = new {
            self.0.entry(new).or_default().insert(entry);
        }
    }

    fn get(&self, address: &str) -> impl Iterator<Item = &(String, String)> {
        self.0.get(&mail_key(address)).into_iter().flatten()
    }
}

/// Every service's read view of the configuration, kept current by a watch on the bucket.
/// Cheap to clone.
#[derive(Clone)]
pub struct ConfigCache {
    inner: Arc<RwLock<Snapshot>>,
    revision: watch::Receiver<u64>,
    store: ConfigStore,
}

impl std::fmt::Debug for ConfigCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigCache(..)")
    }
}

impl ConfigCache {
    /// Loads the whole bucket, then keeps watching it until the token fires. Returns once
    /// the initial load is complete.
    pub async fn start(kv: kv::Store, token: CancellationToken) -> anyhow::Result<Self> {
        let inner = Arc::new(RwLock::new(Snapshot::default()));
        let (tx, rx) = watch::channel(0u64);
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
        let empty = kv.status().await.map_err(|e| anyhow::anyhow!("config bucket: {e}"))?.values() == 0;
        let mut entries = kv.watch_with_history(">").await.map_err(|e| anyhow::anyhow!("watch config: {e}"))?;
        let task_inner = inner.clone();
        tokio::spawn(async move {
            let mut loaded = Some(loaded_tx);
            if empty && let Some(l) = loaded.take() {
                let _ = l.send(());
            }
            loop {
                let entry = tokio::select! {
                    _ = token.cancelled() => break,
                    e = entries.next() => e,
                };
                match entry {
                    Some(Ok(entry)) => {
                        let revision = entry.revision;
                        let delta = entry.delta;
                        apply(&task_inner, entry);
                        tx.send_modify(|r| *r = (*r).max(revision));
                        if delta == 0
                            && let Some(l) = loaded.take()
                        {
                            let _ = l.send(());
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "config watch error");
                    }
                    None => {
                        tracing::warn!("config watch ended");
                        break;
                    }
                }
            }
        });
        loaded_rx.await.map_err(|_| anyhow::anyhow!("config watch ended before the initial load"))?;
        Ok(Self { inner, revision: rx, store: ConfigStore::new(kv) })
    }

    /// The store this cache reads from.
    pub fn store(&self) -> &ConfigStore {
        &self.store
    }

    /// Waits until the cache has applied at least `revision` (read-your-writes after a store
    /// write), for at most five seconds.
    pub async fn wait_for(&self, revision: u64) {
        let mut rx = self.revision.clone();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|r| *r >= revision)).await;
    }

    /// Reads one tenant's configuration.
    pub fn with_tenant<T>(&self, tenant: &TenantId, f: impl FnOnce(Option<&TenantConfig>) -> T) -> T {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        f(guard.tenants.get(tenant.as_str()).filter(|t| t.tenant.is_some()))
    }

    /// Every tenant record.
    pub fn tenants(&self) -> Vec<v1::Tenant> {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<v1::Tenant> = guard.tenants.values().filter_map(|t| t.tenant.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn operator(&self, tenant: &TenantId, id: &str) -> Option<v1::Operator> {
        self.with_tenant(tenant, |t| t.and_then(|t| t.operators.get(id).cloned()))
    }

    pub fn queue(&self, tenant: &TenantId, id: &str) -> Option<v1::Queue> {
        self.with_tenant(tenant, |t| t.and_then(|t| t.queues.get(id).cloned()))
    }

    pub fn channel(&self, tenant: &TenantId, id: &str) -> Option<v1::ChannelConfig> {
        self.with_tenant(tenant, |t| t.and_then(|t| t.channels.get(id).cloned()))
    }

    /// An operator as routing decides with it.
    pub fn operator_model(&self, tenant: &TenantId, id: &str) -> Option<Arc<Operator>> {
        self.with_tenant(tenant, |t| t.and_then(|t| t.operator_models.get(id).cloned()))
    }

    /// Every operator of the tenant as routing decides with them.
    pub fn operator_models(&self, tenant: &TenantId) -> Vec<Arc<Operator>> {
        self.with_tenant(tenant, |t| t.map(|t| t.operator_models.values().cloned().collect()).unwrap_or_default())
    }

    /// The tenant's operators among `ids`, in that order (unknown ids skipped): one lookup
    /// each, whatever the size of the tenant.
    pub fn operator_models_of(&self, tenant: &TenantId, ids: &[OperatorId]) -> Vec<Arc<Operator>> {
        self.with_tenant(tenant, |t| {
            t.map(|t| ids.iter().filter_map(|id| t.operator_models.get(id.as_str()).cloned()).collect())
                .unwrap_or_default()
        })
    }

    /// How many operators the tenant has.
    pub fn operator_count(&self, tenant: &TenantId) -> usize {
        self.with_tenant(tenant, |t| t.map_or(0, |t| t.operator_models.len()))
    }

    /// A queue as routing decides with it.
    pub fn queue_model(&self, tenant: &TenantId, id: &str) -> Option<Arc<Queue>> {
        self.with_tenant(tenant, |t| t.and_then(|t| t.queue_models.get(id).cloned()))
    }

    /// Every queue of the tenant as routing decides with them.
    pub fn queue_models(&self, tenant: &TenantId) -> Vec<Arc<Queue>> {
        self.with_tenant(tenant, |t| t.map(|t| t.queue_models.values().cloned().collect()).unwrap_or_default())
    }

    /// The tenant's routing settings (the defaults until an admin changes them).
    pub fn routing_settings(&self, tenant: &TenantId) -> RoutingSettings {
        self.with_tenant(tenant, |t| t.map(|t| t.settings_model.clone()).unwrap_or_default())
    }

    /// A fast-track code of the tenant.
    pub fn fast_track(&self, tenant: &TenantId, code: &str) -> Option<events::FastTrackRecord> {
        self.with_tenant(tenant, |t| t.and_then(|t| t.fast_track.get(code).cloned()))
    }

    /// Where mail to `address` goes (compared case-insensitively): every enabled email
    /// channel config with that address of an enabled tenant, as (tenant, channel config
    /// id), in a stable order. Usually one; nothing stops two configs from sharing an
    /// address, and then each gets the mail.
    /// The channel configs (of any tenant, enabled or not) that use an email address.
    pub fn email_address_users(&self, address: &str) -> Vec<(String, String)> {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        guard.mail.get(address).cloned().collect()
    }

    pub fn email_recipients(&self, address: &str) -> Vec<(TenantId, String)> {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        guard
            .mail
            .get(address)
            .filter(|(tenant, id)| {
                let Some(t) = guard.tenants.get(tenant) else { return false };
                t.tenant.as_ref().is_some_and(|r| !r.disabled)
                    && t.channels.get(id).is_some_and(|c| !c.disabled && c.channel == v1::Channel::Email as i32)
            })
            .filter_map(|(tenant, id)| Some((TenantId::parse(tenant).ok()?, id.clone())))
            .collect()
    }

    /// Reads an entry from the store when the cache does not have it yet (created a moment
    /// ago through another replica).
    async fn read_through<P: prost::Message + Default>(&self, key: &str) -> Option<P> {
        self.store.get::<P>(key).await.ok().flatten().map(|(v, _)| v)
    }
}

/// Re-decodes the domain model of the one entry that changed (operator, queue or
/// settings), so routing decides with decoded values without decoding per decision.
fn remodel(t: &mut TenantConfig, tenant: &str, kind: &str, id: &str) {
    let Ok(tenant_id) = TenantId::parse(tenant) else { return };
    match kind {
        "operator" => match t.operators.get(id).map(|o| convert::from_operator(&tenant_id, o)) {
            Some(Ok(m)) => {
                t.operator_models.insert(id.to_owned(), Arc::new(m));
            }
            Some(Err(e)) => {
                tracing::warn!(tenant, operator = id, error = %e, "operator left out of routing");
                t.operator_models.remove(id);
            }
            None => {
                t.operator_models.remove(id);
            }
        },
        "queue" => match t.queues.get(id).map(|q| convert::from_queue(&tenant_id, q)) {
            Some(Ok(m)) => {
                t.queue_models.insert(id.to_owned(), Arc::new(m));
            }
            Some(Err(e)) => {
                tracing::warn!(tenant, queue = id, error = %e, "queue left out of routing");
                t.queue_models.remove(id);
            }
            None => {
                t.queue_models.remove(id);
            }
        },
        _ => {
            t.settings_model =
                t.routing.as_ref().and_then(|r| convert::from_routing_settings(r).ok()).unwrap_or_default();
        }
    }
}

fn apply(inner: &RwLock<Snapshot>, entry: kv::Entry) {
    let mut parts = entry.key.splitn(3, '.');
    let (Some(tenant), Some(kind)) = (parts.next(), parts.next()) else {
        tracing::warn!(key = %entry.key, "ignoring config key of unknown shape");
        return;
    };
    let id = parts.next().unwrap_or("").to_owned();
    let id_copy = id.clone();
    let put = entry.operation == kv::Operation::Put;
    let mut guard = inner.write().unwrap_or_else(|p| p.into_inner());
    let Snapshot { tenants, mail } = &mut *guard;
    let t = tenants.entry(tenant.to_owned()).or_default();
    let revision = entry.revision;
    let value = entry.value;
    macro_rules! upsert {
        ($map:expr, $ty:ty, $rev:expr) => {
            if put {
                match <$ty>::decode(value) {
                    Ok(mut v) => {
                        $rev(&mut v, revision);
                        $map.insert(id, v);
                    }
                    Err(e) => tracing::warn!(key = %entry.key, error = %e, "undecodable config entry"),
                }
            } else {
                $map.remove(&id);
            }
        };
    }
    match kind {
        "tenant" => {
            if put {
                match v1::Tenant::decode(value) {
                    Ok(mut v) => {
                        v.revision = revision;
                        t.tenant = Some(v);
                    }
                    Err(e) => tracing::warn!(key = %entry.key, error = %e, "undecodable tenant"),
                }
            } else {
                t.tenant = None;
            }
        }
        "operator" => {
            upsert!(t.operators, v1::Operator, |v: &mut v1::Operator, r| v.revision = r);
            remodel(t, tenant, kind, &id_copy);
        }
        "queue" => {
            upsert!(t.queues, v1::Queue, |v: &mut v1::Queue, r| v.revision = r);
            remodel(t, tenant, kind, &id_copy);
        }
        "routing" => {
            if put {
                match v1::RoutingSettings::decode(value) {
                    Ok(mut v) => {
                        v.revision = revision;
                        t.routing = Some(v);
                    }
                    Err(e) => tracing::warn!(key = %entry.key, error = %e, "undecodable routing settings"),
                }
            } else {
                t.routing = None;
            }
            remodel(t, tenant, kind, &id_copy);
        }
        "ftcode" => upsert!(t.fast_track, events::FastTrackRecord, |_: &mut events::FastTrackRecord, _| ()),
        "skill" => upsert!(t.skills, v1::Skill, |_: &mut v1::Skill, _| ()),
        "channel" => {
            let old = t.channels.get(&id).and_then(email_address);
            upsert!(t.channels, v1::ChannelConfig, |v: &mut v1::ChannelConfig, r| v.revision = r);
            mail.update(tenant, &id_copy, old, t.channels.get(&id_copy).and_then(email_address));
        }
        "token" => upsert!(t.tokens, events::TokenRecord, |_: &mut events::TokenRecord, _| ()),
        other => tracing::warn!(key = %entry.key, kind = other, "ignoring config entry of unknown kind"),
    }
}

impl Directory for ConfigCache {
    fn check<'a>(
        &'a self,
        principal: &'a Principal,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), AuthError>> + Send + 'a>> {
        Box::pin(async move {
            let tenant = &principal.tenant;
            if principal.role != Role::Platform {
                let cached = self.with_tenant(tenant, |t| t.and_then(|t| t.tenant.clone()));
                let record = match cached {
                    Some(r) => Some(r),
                    None => self.read_through::<v1::Tenant>(&tenant_key(tenant)).await,
                };
                if record.is_none_or(|r| r.disabled) {
                    return Err(AuthError::UnknownTenant(tenant.to_string()));
                }
                if principal.role == Role::Operator {
                    let op = match self.operator(tenant, &principal.subject) {
                        Some(o) => Some(o),
                        None => {
                            self.read_through::<v1::Operator>(&key(tenant, Kind::Operator, &principal.subject)).await
                        }
                    };
                    if op.is_none_or(|o| o.disabled) {
                        return Err(AuthError::UnknownOperator(principal.subject.clone()));
                    }
                }
            }
            // Not `with_tenant`: platform tokens live under the reserved tenant, which has no
            // tenant record.
            let revoked = {
                let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
                guard
                    .tenants
                    .get(tenant.as_str())
                    .and_then(|t| t.tokens.get(&principal.token_id))
                    .is_some_and(|r| r.revoked)
            };
            if revoked {
                return Err(AuthError::Revoked);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(index: &MailIndex, address: &str) -> Vec<(String, String)> {
        index.get(address).cloned().collect()
    }

    fn pair(tenant: &str, id: &str) -> (String, String) {
        (tenant.to_owned(), id.to_owned())
    }

    #[test]
    fn the_mail_index_follows_address_changes_case_insensitively() {
        let mut index = MailIndex::default();
        index.update("acme", "mail", None, Some(mail_key(" Support@Acme.Example ")));
        assert_eq!(found(&index, "support@acme.example"), [pair("acme", "mail")]);
        assert_eq!(found(&index, "SUPPORT@ACME.EXAMPLE"), [pair("acme", "mail")]);
        // Another tenant's config with the same address: both get the mail, in a stable order.
        index.update("globex", "inbox", None, Some(mail_key("support@acme.example")));
        assert_eq!(found(&index, "support@acme.example"), [pair("acme", "mail"), pair("globex", "inbox")]);
        // A changed address moves the config; a deleted config leaves no empty entry behind.
        index.update("acme", "mail", Some(mail_key("support@acme.example")), Some(mail_key("help@acme.example")));
        assert_eq!(found(&index, "support@acme.example"), [pair("globex", "inbox")]);
        assert_eq!(found(&index, "help@acme.example"), [pair("acme", "mail")]);
        index.update("globex", "inbox", Some(mail_key("support@acme.example")), None);
        assert!(found(&index, "support@acme.example").is_empty());
        assert_eq!(index.0.len(), 1);
    }

    #[test]
    fn only_email_configs_with_an_address_are_indexed() {
        let email = |address: &str| v1::ChannelConfig {
            channel: v1::Channel::Email as i32,
            settings: Some(v1::channel_config::Settings::Email(v1::EmailSettings {
                address: address.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(email_address(&email("Help@Acme.Example")).as_deref(), Some("help@acme.example"));
        assert_eq!(email_address(&email("  ")), None);
        let telegram = v1::ChannelConfig {
            settings: Some(v1::channel_config::Settings::Telegram(v1::TelegramSettings::default())),
            ..Default::default()
        };
        assert_eq!(email_address(&telegram), None);
    }
}
