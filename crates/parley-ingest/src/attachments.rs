//! Customers' attachments: fetched from the provider after the message is stored, kept in
//! the media store, served to the tenant's operators.
//!
//! A webhook names a file by the provider's reference (a Telegram `file_id`, a WhatsApp
//! media id, a Viber or Twilio URL); the provider gets its 200 as soon as the message is on
//! `PARLEY_INBOUND`, so a slow or large download never makes it retry. The media worker, a
//! durable consumer of that stream shared by every ingest replica, then takes each message
//! with attachments and, per file not stored yet:
//!
//! 1. resolves the reference with the channel configuration's credentials — Telegram
//!    `getFile` gives the file's path, WhatsApp's media endpoint its short-lived URL; Viber
//!    and Twilio give a URL already;
//! 2. downloads it through the SSRF-safe [`Fetcher`] (only the providers' hosts, public
//!    addresses, no redirects elsewhere, size and type limits), with the provider's
//!    credential where it wants one (WhatsApp's bearer token, Twilio's account);
//! 3. stores it under the tenant and the attachment's id.
//!
//! Network trouble and provider 5xx/429 are retried with backoff (the message stays
//! unacknowledged in the stream, so a crash loses nothing); a refusal — too large, a type
//! customers may not send, a host that is not the provider's, a reference the provider does
//! not know — is stored as a failure with its reason, and so is a file still unavailable
//! after `max_deliveries` attempts. Email attachments never pass here: the SMTP listener
//! has their bytes and stores them before it accepts the message.
//!
//! `GET /v1/attachments/{id}` on the public listener serves a file to a bearer of a token
//! of the tenant it belongs to: any other tenant's token, like an unknown id, gets 404.
//! Operators' own files go the other way: `POST /v1/attachments` stores one for a reply
//! (the same types and size limit as customers' files), and the providers that fetch a
//! reply's file themselves get it at a signed, expiring link, `GET /v1/media/…`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parley_channels::telegram;
use parley_domain::{Attachment, AttachmentId, AttachmentKind, Role, TenantId};
use parley_kit::auth::Authenticator;
use parley_kit::axum::extract::rejection::{BytesRejection, QueryRejection};
use parley_kit::axum::extract::{DefaultBodyLimit, Path, Query, State};
use parley_kit::axum::http::{HeaderMap, StatusCode, header};
use parley_kit::axum::response::{IntoResponse, Response};
use parley_kit::axum::{Router, routing};
use parley_kit::clock;
use parley_nats::ConfigCache;
use parley_nats::consume::{Delivery, Handler, Outcome};
use parley_nats::media::{MediaStore, Stored, StoredFile};
use parley_proto::{events, v1};
use serde::{Deserialize, Serialize};

use crate::media::{FetchAuth, FetchError, FetchPolicy, Fetcher};
use crate::webhooks::WebhookError;

/// The media worker's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Whether this replica fetches attachments (every replica serves them).
    pub enabled: bool,
    /// Provider API bases (without trailing slash), for `getFile` and media lookups; their
    /// hosts are media hosts too. Tests point them at local servers.
    pub telegram_api: String,
    pub whatsapp_api: String,
    /// The largest file kept.
    pub max_bytes: usize,
    /// One request's limit (lookup or download).
    pub fetch_timeout_secs: u64,
    /// After this many deliveries, a file still unavailable is given up as failed.
    pub max_deliveries: i64,
    /// Media hosts beyond the providers' own (a self-hosted Bot API server's CDN, say):
    /// `host` exactly, `.domain` for its subdomains.
    pub extra_hosts: Vec<String>,
    /// Plain HTTP and these non-public addresses allowed (tests only: the local stand-in of
    /// a provider).
    pub allow_http: bool,
    pub allow_addresses: Vec<IpAddr>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            telegram_api: "https://api.telegram.org".into(),
            whatsapp_api: "https://graph.facebook.com/v21.0".into(),
            max_bytes: 25 * 1024 * 1024,
            fetch_timeout_secs: 30,
            max_deliveries: 10,
            extra_hosts: Vec::new(),
            allow_http: false,
            allow_addresses: Vec::new(),
        }
    }
}

/// The largest `media.max_bytes` accepted: a file is held in memory while stored.
const MAX_MEDIA_BYTES: usize = 100 * 1024 * 1024;

impl MediaConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, url) in [("telegram_api", &self.telegram_api), ("whatsapp_api", &self.whatsapp_api)] {
            let parsed = reqwest::Url::parse(url).map_err(|e| format!("media.{name}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || url.ends_with('/') || parsed.host_str().is_none() {
                return Err(format!("media.{name} must be an http(s) URL without a trailing slash"));
            }
        }
        if !(1024..=MAX_MEDIA_BYTES).contains(&self.max_bytes) {
            return Err(format!("media.max_bytes must be 1024 to {MAX_MEDIA_BYTES}, got {}", self.max_bytes));
        }
        if !(1..=300).contains(&self.fetch_timeout_secs) {
            return Err(format!("media.fetch_timeout_secs must be 1 to 300, got {}", self.fetch_timeout_secs));
        }
        if !(1..=1000).contains(&self.max_deliveries) {
            return Err(format!("media.max_deliveries must be 1 to 1000, got {}", self.max_deliveries));
        }
        if let Some(h) = self.extra_hosts.iter().find(|h| h.trim_start_matches('.').is_empty() || h.contains('/')) {
            return Err(format!("media.extra_hosts: {h:?} is not a host name"));
        }
        Ok(())
    }

    /// The fetch policy: the providers' hosts, the API bases' hosts and the extra ones.
    pub fn policy(&self) -> FetchPolicy {
        let mut policy = FetchPolicy::providers();
        let api_hosts = [&self.telegram_api, &self.whatsapp_api]
            .into_iter()
            .filter_map(|u| reqwest::Url::parse(u).ok()?.host_str().map(str::to_owned));
        policy.hosts.extend(api_hosts.chain(self.extra_hosts.iter().cloned()));
        policy.max_bytes = self.max_bytes;
        policy.allow_http = self.allow_http;
        policy.allow_addresses = self.allow_addresses.clone();
        policy
    }

    /// How long a message may stay unacknowledged: every file of it, looked up and fetched.
    pub fn ack_wait(&self) -> Duration {
        let per_file = 2 * self.fetch_timeout_secs;
        Duration::from_secs(per_file * parley_domain::MAX_ATTACHMENTS as u64 + 30)
    }
}

/// The largest answer of a provider API lookup read.
const MAX_LOOKUP_BYTES: usize = 64 * 1024;

/// Why a file was not had this time.
#[derive(Debug)]
enum Failure {
    /// Worth another try later.
    Transient(String),
    /// Never will be: stored as failed with this reason.
    Permanent(String),
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Transport(_) => Failure::Transient(e.to_string()),
            FetchError::Status(s) if s == 429 || s >= 500 || s == 408 => Failure::Transient(e.to_string()),
            _ => Failure::Permanent(e.to_string()),
        }
    }
}

/// The media worker: a [`Handler`] of `PARLEY_INBOUND`.
pub struct MediaWorker {
    pub cache: ConfigCache,
    pub store: Arc<dyn MediaStore>,
    pub fetcher: Fetcher,
    /// For the provider API lookups: no redirects, bounded time.
    pub api: reqwest::Client,
    pub config: MediaConfig,
}

impl MediaWorker {
    pub fn new(cache: ConfigCache, store: Arc<dyn MediaStore>, config: MediaConfig) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(config.fetch_timeout_secs);
        let fetcher = Fetcher::new(config.policy(), timeout)?;
        let api = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("parley/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { cache, store, fetcher, api, config })
    }

    /// Downloads one file by the provider's reference, with the configuration's credentials.
    async fn download(&self, config: &v1::ChannelConfig, reference: &str) -> Result<(Vec<u8>, String), Failure> {
        use v1::channel_config::Settings;
        let fetched = match config.settings.as_ref() {
            Some(Settings::Telegram(t)) => {
                let path = self.telegram_file_path(&t.bot_token, reference).await?;
                let url = format!("{}/file/bot{}/{path}", self.config.telegram_api, t.bot_token);
                self.fetcher.fetch(&url, None).await?
            }
            Some(Settings::Whatsapp(w)) => {
                let url = self.whatsapp_media_url(&w.access_token, reference).await?;
                self.fetcher.fetch(&url, Some(FetchAuth::Bearer(&w.access_token))).await?
            }
            Some(Settings::Viber(_)) => self.fetcher.fetch(reference, None).await?,
            Some(Settings::Sms(s)) => {
                self.fetcher.fetch(reference, Some(FetchAuth::Basic(&s.account_sid, &s.auth_token))).await?
            }
            _ => {
                return Err(Failure::Permanent(format!(
                    "channel configuration {} does not fetch attachments from a provider",
                    config.id
                )));
            }
        };
        Ok((fetched.bytes, fetched.mime))
    }

    /// Telegram: `getFile` turns a `file_id` into a path under the bot's file URL.
    async fn telegram_file_path(&self, token: &str, file_id: &str) -> Result<String, Failure> {
        let valid_id = |s: &str| {
            !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !valid_id(file_id) {
            return Err(Failure::Permanent("the Telegram file_id is malformed".into()));
        }
        let request = telegram::get_file(file_id);
        let url = format!("{}/bot{token}/{}", self.config.telegram_api, request.path);
        let call = self.api.post(url).header(header::CONTENT_TYPE, request.content_type).body(request.body);
        let (status, body) = self.lookup(call).await?;
        // Telegram's verdict is in the body; a 4xx with `ok: false` is a refusal for good.
        match telegram::parse_get_file(&body) {
            Ok(path) => {
                let valid_path = !path.is_empty()
                    && !path.split('/').any(|p| p.is_empty() || p == "." || p == "..")
                    && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b));
                if valid_path {
                    Ok(path)
                } else {
                    Err(Failure::Permanent("Telegram answered a malformed file path".into()))
                }
            }
            Err(_) if status == 429 || status >= 500 => {
                Err(Failure::Transient(format!("Telegram getFile answered {status}")))
            }
            Err(e) => Err(Failure::Permanent(e.to_string())),
        }
    }

    /// WhatsApp: the media endpoint turns a media id into a short-lived download URL.
    async fn whatsapp_media_url(&self, token: &str, media_id: &str) -> Result<String, Failure> {
        if media_id.is_empty() || media_id.len() > 64 || !media_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Failure::Permanent("the WhatsApp media id is malformed".into()));
        }
        let call = self.api.get(format!("{}/{media_id}", self.config.whatsapp_api)).bearer_auth(token);
        let (status, body) = self.lookup(call).await?;
        if status == 429 || status >= 500 {
            return Err(Failure::Transient(format!("WhatsApp media lookup answered {status}")));
        }
        #[derive(Deserialize)]
        struct MediaInfo {
            url: Option<String>,
        }
        match serde_json::from_slice::<MediaInfo>(&body) {
            Ok(MediaInfo { url: Some(url) }) if (200..300).contains(&status) => Ok(url),
            _ => Err(Failure::Permanent(format!("WhatsApp media lookup answered {status} without a URL"))),
        }
    }

    /// A provider API call: its status and at most [`MAX_LOOKUP_BYTES`] of its body.
    async fn lookup(&self, call: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), Failure> {
        // The URL can carry the bot token: errors are described without it.
        let transient =
            |e: reqwest::Error| Failure::Transient(format!("provider API unreachable: {}", e.without_url()));
        let mut response = call.send().await.map_err(transient)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transient)? {
            if body.len() + chunk.len() > MAX_LOOKUP_BYTES {
                return Err(Failure::Permanent("the provider's lookup answer is too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    /// One attachment: fetched and stored, or stored as failed; `Err` to try again later.
    async fn resolve(
        &self,
        tenant: &TenantId,
        config: Option<&v1::ChannelConfig>,
        a: &events::InboundAttachment,
        delivered: i64,
    ) -> Result<(), String> {
        let Some(meta) = a.attachment.as_ref() else { return Ok(()) };
        let Ok(id) = AttachmentId::parse(&meta.id) else { return Ok(()) };
        if a.provider_ref.is_empty() {
            return Ok(());
        }
        match self.store.head(tenant, id).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let outcome = match config {
            Some(config) => self.download(config, &a.provider_ref).await,
            None => Err(Failure::Permanent("its channel configuration no longer exists".into())),
        };
        match outcome {
            Ok((bytes, mime)) => {
                let file = StoredFile {
                    mime: mime.trim().to_ascii_lowercase(),
                    file_name: meta.file_name.clone(),
                    size: bytes.len() as u64,
                    digest: String::new(),
                    owner: String::new(),
                };
                let stored = self.store.put(tenant, id, file, Bytes::from(bytes)).await.map_err(|e| e.to_string())?;
                tracing::info!(%tenant, attachment = %id, size = stored.size, mime = %stored.mime, "attachment stored");
                Ok(())
            }
            Err(Failure::Transient(why)) if delivered < self.config.max_deliveries => {
                tracing::warn!(%tenant, attachment = %id, delivered, error = %why, "attachment not fetched; retrying");
                Err(why)
            }
            Err(Failure::Transient(why)) => {
                let reason = format!("gave up after {delivered} attempts: {why}");
                self.give_up(tenant, id, &reason).await
            }
            Err(Failure::Permanent(why)) => self.give_up(tenant, id, &why).await,
        }
    }

    async fn give_up(&self, tenant: &TenantId, id: AttachmentId, reason: &str) -> Result<(), String> {
        tracing::warn!(%tenant, attachment = %id, reason, "attachment cannot be fetched");
        self.store.put_failure(tenant, id, reason).await.map_err(|e| e.to_string())
    }
}

/// Backoff between deliveries of a message whose files are not all had: 2 s doubling to
/// 5 minutes.
fn backoff(delivered: i64) -> Duration {
    let exp = u32::try_from(delivered.clamp(1, 9) - 1).unwrap_or(0);
    Duration::from_secs(2u64.saturating_mul(1 << exp).min(300))
}

impl Handler for MediaWorker {
    async fn handle(&self, d: Delivery) -> Outcome {
        // Whatever else is on the stream is routing's business.
        let Ok(envelope) = d.decode::<events::InboundEnvelope>() else { return Outcome::Ack };
        let Some(events::inbound_envelope::Kind::CustomerMessage(m)) = envelope.kind else { return Outcome::Ack };
        if m.attachments.iter().all(|a| a.provider_ref.is_empty()) {
            return Outcome::Ack;
        }
        let Ok(tenant) = TenantId::parse(&m.tenant_id) else { return Outcome::Ack };
        let config = self.cache.channel(&tenant, &m.channel_config_id);
        let mut retry = false;
        for a in &m.attachments {
            if self.resolve(&tenant, config.as_ref(), a, d.delivered).await.is_err() {
                retry = true;
            }
        }
        if retry { Outcome::Retry(backoff(d.delivered)) } else { Outcome::Ack }
    }
}

// ---- serving ------------------------------------------------------------------------------

/// What the serving routes need.
#[derive(Clone)]
pub struct Serving {
    pub auth: Authenticator,
    pub store: Arc<dyn MediaStore>,
    /// Keys the public links of reply files ([`parley_channels::media_link`]).
    pub link_key: [u8; 32],
    /// What operators may upload: the types and size customers may send.
    pub policy: FetchPolicy,
}

/// `POST /v1/attachments` (upload a reply's file), `GET /v1/attachments/{id}` (a tenant's
/// file, by token) and `GET /v1/media/{tenant}/{id}/{expires}/{mac}` (a reply's file, by
/// a signed link, for the provider that delivers it).
pub fn router(serving: Serving) -> Router {
    let limit = serving.policy.max_bytes;
    Router::new()
        .route("/v1/attachments", routing::post(upload).layer(DefaultBodyLimit::max(limit)))
        .route("/v1/attachments/{id}", routing::get(serve))
        .route("/v1/media/{tenant}/{id}/{expires}/{mac}", routing::get(linked))
        .with_state(Arc::new(serving))
}

/// The principal of a request's bearer token, if it is a tenant's.
async fn tenant_principal(s: &Serving, headers: &HeaderMap) -> Result<parley_kit::auth::Principal, WebhookError> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = s
        .auth
        .authenticate(authorization, clock::now())
        .await
        .map_err(|e| WebhookError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()))?;
    if principal.role == Role::Platform {
        return Err(WebhookError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "attachments belong to a tenant: use a token of the tenant",
        ));
    }
    Ok(principal)
}

fn unavailable(e: parley_nats::media::MediaError) -> WebhookError {
    tracing::warn!(error = %e, "media store unavailable");
    WebhookError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the media store is unavailable; try again")
}

/// The `?name=` of an upload.
#[derive(Debug, Deserialize)]
pub(crate) struct UploadQuery {
    #[serde(default)]
    name: String,
}

/// Stores a file an operator (or an integrator) will send with a reply; answers its
/// attachment, whose id `SendReply.attachment_ids` names.
async fn upload(
    State(s): State<Arc<Serving>>,
    headers: HeaderMap,
    query: Result<Query<UploadQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let stored = async {
        let principal = tenant_principal(&s, &headers).await?;
        let a = store_upload(&*s.store, &s.policy, &principal.tenant, &headers, query, body, String::new()).await?;
        tracing::info!(tenant = %principal.tenant, attachment = %a.id, by = %principal.subject, size = a.size, "file uploaded");
        Ok::<_, WebhookError>(a)
    };
    match stored.await {
        Ok(a) => uploaded(&a),
        Err(e) => e.into_response(),
    }
}

/// Checks and stores an uploaded file (raw body, its `Content-Type`, `?name=`): not empty,
/// within the size limit, of a type customers may be sent, with a clean name.
pub(crate) async fn store_upload(
    store: &dyn MediaStore,
    policy: &FetchPolicy,
    tenant: &TenantId,
    headers: &HeaderMap,
    query: Result<Query<UploadQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
    owner: String,
) -> Result<Attachment, WebhookError> {
    let invalid = |m: String| WebhookError::new(StatusCode::BAD_REQUEST, "invalid_argument", m);
    let Query(query) = query.map_err(|e| invalid(format!("query: {e}")))?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => WebhookError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the file is larger than {} bytes", policy.max_bytes),
        ),
        _ => invalid(format!("body: {e}")),
    })?;
    if body.is_empty() {
        return Err(invalid("the file is empty".into()));
    }
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !policy.type_allowed(&mime) {
        return Err(WebhookError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_type",
            format!(
                "content type {mime:?} is not one customers may be sent (pictures, sound, video, PDF, office documents, text, zip)"
            ),
        ));
    }
    let attachment = Attachment {
        id: AttachmentId::from_uuid(uuid::Uuid::now_v7()),
        kind: AttachmentKind::from_mime(&mime),
        mime: mime.clone(),
        file_name: query.name.trim().to_owned(),
        size: body.len() as u64,
    };
    parley_domain::check_attachment(&attachment).map_err(|e| invalid(format!("name: {e}")))?;
    let file = StoredFile {
        mime,
        file_name: attachment.file_name.clone(),
        size: attachment.size,
        digest: String::new(),
        owner,
    };
    store.put(tenant, attachment.id, file, body).await.map_err(unavailable)?;
    Ok(attachment)
}

/// The answer to an upload: `201` with the attachment.
pub(crate) fn uploaded(a: &Attachment) -> Response {
    (
        StatusCode::CREATED,
        parley_kit::axum::Json(serde_json::json!({
            "id": a.id.to_string(),
            "kind": a.kind.as_str(),
            "mime_type": a.mime,
            "file_name": a.file_name,
            "size_bytes": a.size,
        })),
    )
        .into_response()
}

async fn serve(State(s): State<Arc<Serving>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    match serve_file(&s, &id, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve_file(s: &Serving, id: &str, headers: &HeaderMap) -> Result<Response, WebhookError> {
    let principal = tenant_principal(s, headers).await?;
    let id = AttachmentId::parse(id)
        .map_err(|e| WebhookError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string()))?;
    let not_found =
        || WebhookError::new(StatusCode::NOT_FOUND, "not_found", "no such attachment, or it is not fetched yet");
    match s.store.get(&principal.tenant, id).await.map_err(unavailable)? {
        Some((file, bytes)) => Ok(file.response(bytes)),
        None => match s.store.head(&principal.tenant, id).await.map_err(unavailable)? {
            Some(Stored::Failed(reason)) => Err(WebhookError::new(
                StatusCode::GONE,
                "attachment_failed",
                format!("the attachment could not be fetched from the provider: {reason}"),
            )),
            _ => Err(not_found()),
        },
    }
}

/// A reply's file for the provider delivering it: the link's signature and expiry are the
/// only credential.
async fn linked(
    State(s): State<Arc<Serving>>,
    Path((tenant, id, expires, mac)): Path<(String, String, i64, String)>,
) -> Response {
    let refused = |e: parley_channels::MediaLinkError| {
        WebhookError::new(StatusCode::FORBIDDEN, "bad_link", e.to_string()).into_response()
    };
    let now = clock::now().as_millis() / 1000;
    if let Err(e) = parley_channels::check_media_link(&s.link_key, &tenant, &id, expires, &mac, now) {
        return refused(e);
    }
    // Signed, so both parse; a link to nothing is still answered alike.
    let (Ok(tenant), Ok(id)) = (TenantId::parse(&tenant), AttachmentId::parse(&id)) else {
        return refused(parley_channels::MediaLinkError::BadSignature);
    };
    match s.store.get(&tenant, id).await {
        Ok(Some((file, bytes))) => file.response(bytes),
        Ok(None) => WebhookError::new(StatusCode::NOT_FOUND, "not_found", "the file no longer exists").into_response(),
        Err(e) => unavailable(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated_and_named() {
        assert_eq!(MediaConfig::default().validate(), Ok(()));
        type Case = (fn(&mut MediaConfig), &'static str);
        let cases: [Case; 6] = [
            (|c| c.telegram_api = "ftp://x".into(), "media.telegram_api"),
            (|c| c.whatsapp_api = "https://graph.facebook.com/".into(), "media.whatsapp_api"),
            (|c| c.max_bytes = 10, "media.max_bytes"),
            (|c| c.fetch_timeout_secs = 0, "media.fetch_timeout_secs"),
            (|c| c.max_deliveries = 0, "media.max_deliveries"),
            (|c| c.extra_hosts = vec!["cdn.example/x".into()], "media.extra_hosts"),
        ];
        for (change, key) in cases {
            let mut c = MediaConfig::default();
            change(&mut c);
            let err = c.validate().expect_err(key);
            assert!(err.starts_with(key), "{err}");
        }
    }

    #[test]
    fn refusals_are_permanent_and_network_trouble_is_not() {
        assert!(matches!(Failure::from(FetchError::Transport("reset".into())), Failure::Transient(_)));
        assert!(matches!(Failure::from(FetchError::Status(503)), Failure::Transient(_)));
        assert!(matches!(Failure::from(FetchError::Status(429)), Failure::Transient(_)));
        assert!(matches!(Failure::from(FetchError::Status(404)), Failure::Permanent(_)));
        assert!(matches!(Failure::from(FetchError::TooLarge { limit: 1 }), Failure::Permanent(_)));
        assert!(matches!(Failure::from(FetchError::Refused("x".into())), Failure::Permanent(_)));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(100), Duration::from_secs(300));
    }
}
