//! The web chat channel: what the widget on a tenant's site talks to, on ingest's public
//! listener beside the webhooks.
//!
//! - `POST /webchat/{tenant}/{channel_config_id}/sessions` opens a visitor session: a new
//!   anonymous visitor, the same visitor again (`visitor_id` from an earlier session, kept
//!   by the widget), or a user the tenant's site vouches for (`identity`: the user id and
//!   `HMAC-SHA256(identity_secret, user_id)` in hex, computed by the site's server; with
//!   the user's verified `phone`, the signed text is `user_id`, a line feed, then `phone`,
//!   and history links the visitor to the SMS and WhatsApp customers with that number). The
//!   answer's `token` is signed by Parley and names the tenant, the config and the customer,
//!   so it cannot be moved to another; it expires after a day.
//! - `GET …/ws?after=N`: a WebSocket whose first frame is `{"type": "auth", "token": …}`
//!   (the token stays out of URLs, which get logged; `?token=` in the URL works too). Parley sends every update for the customer
//!   after stream sequence `N` (messages, queue position, operator joined, conversation
//!   ended, delivery states), each with its `seq`; a new visitor starts from the `after` the
//!   session answered with (0 replays every update kept for the customer); a widget that reconnects passes the last
//!   `seq` it saw and gets exactly what it missed. Each update also has its conversation's
//!   `version`: the widget ignores a status update older than one it applied. The widget sends messages, each with its
//!   own `client_id` (a resend with the same id is stored once), `read` for a message the
//!   visitor has seen (the operator's desk sees the reply become `READ`), `typing` (passed on
//!   to the operator at most every 2 s; the operator's typing comes down as an update), and
//!   pings.
//! - Long-poll fallback for networks that break WebSockets: `GET …/updates?after=N` with
//!   `Authorization: Bearer <token>` (or `?token=`)
//!   (answers as soon as there is something, or after 25 s with nothing) and
//!   `POST …/messages` with `Authorization: Bearer <token>`.
//! - `POST …/files?name=…` with the token: a file the visitor will send, stored at once and
//!   marked as this visitor's; a message names up to 10 such files by id
//!   (`attachment_ids`), and only the visitor who uploaded a file can name it.
//!
//! Browsers are held to the config's `allowed_origins` (an empty list allows any origin).
//! Errors are JSON, as the webhooks' are.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use parley_channels::{ct_eq, hmac_sha256, verify_hex_sha256};
use parley_domain::{
    AttachmentKind, Channel, ConversationId, CustomerId, MessageId, TenantId, check_text, parse_attachment_ids,
};
use parley_kit::axum::extract::rejection::{BytesRejection, QueryRejection};
use parley_kit::axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use parley_kit::axum::extract::{DefaultBodyLimit, Path, Query, State};
use parley_kit::axum::http::{HeaderMap, StatusCode, header};
use parley_kit::axum::response::{IntoResponse, Response};
use parley_kit::axum::{Json, Router, routing};
use parley_kit::clock;
use parley_nats::hub::{Hub, Resume};
use parley_nats::{ConfigCache, MediaStore, Publisher, Stored, tail, topology};
use parley_proto::v1::channel_config::Settings;
use parley_proto::{convert, events, v1};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::attachments::{UploadQuery, store_upload, uploaded};
use crate::media::FetchPolicy;

/// How long a visitor token is good for.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a long poll waits for something to say.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// The most updates one poll answers with.
const POLL_BATCH: usize = 100;
/// A visitor's typing is passed on at most this often.
const TYPING_EVERY: Duration = Duration::from_secs(2);
/// The largest frame or body the widget may send.
const MAX_INPUT: usize = 64 * 1024;

/// The web chat endpoints' shared state.
#[derive(Clone)]
pub struct WebChat {
    pub cache: ConfigCache,
    pub publisher: Publisher,
    pub js: async_nats::jetstream::Context,
    /// The replica's one feed of every web chat subject of `PARLEY_OUTBOUND`.
    pub hub: Arc<Hub>,
    /// Signs visitor tokens (derived from the service's signing key).
    pub token_key: Vec<u8>,
    /// Signs the links to the files operators send (`/v1/media/…`, served beside).
    pub link_key: [u8; 32],
    pub shutdown: CancellationToken,
    /// Where visitors' files go, and what they may send (the same as operators).
    pub store: Arc<dyn MediaStore>,
    pub policy: FetchPolicy,
}

/// The most files one visitor message carries.
const MAX_VISITOR_FILES: usize = 10;

/// The routes, to merge into the public router.
pub fn router(chat: WebChat) -> Router {
    Router::new()
        .route("/webchat/{tenant}/{channel_config_id}/sessions", routing::post(open_session).options(preflight))
        .route("/webchat/{tenant}/{channel_config_id}/ws", routing::get(socket))
        .route("/webchat/{tenant}/{channel_config_id}/updates", routing::get(poll).options(preflight))
        .route("/webchat/{tenant}/{channel_config_id}/messages", routing::post(post_message).options(preflight))
        .route(
            "/webchat/{tenant}/{channel_config_id}/files",
            routing::post(upload_file).options(preflight).layer(DefaultBodyLimit::max(chat.policy.max_bytes)),
        )
        .layer(parley_kit::axum::middleware::map_response(cross_origin))
        .route("/widget.js", routing::get(widget))
        .with_state(Arc::new(chat))
}

/// The widget's script, for a tenant's site to load (`<script src=…/widget.js>`).
const WIDGET: &str = include_str!("../../../web/widget/widget.js");

async fn widget() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        WIDGET,
    )
        .into_response()
}

/// The widget runs on the tenant's site, another origin: a browser may read the answers
/// there. Which origins may talk at all is each config's `allowed_origins`, checked by
/// every endpoint (a refused origin reads a 403 that says why); no cookies are involved.
async fn cross_origin(headers: HeaderMap, mut response: Response) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    response
}

/// A browser's preflight before a JSON or authorized request from the widget.
async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type, authorization"),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

/// The key visitor tokens are signed with, derived from the service's signing key (so a
/// visitor token is never a valid API token, nor the other way round).
pub fn token_key(signing_key: &[u8]) -> Vec<u8> {
    hmac_sha256(signing_key, b"parley web chat visitor tokens v1").to_vec()
}

/// A refused request.
#[derive(Debug)]
pub struct ChatError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ChatError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no web chat at this address")
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
    fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }
    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    fn json(&self) -> Value {
        json!({ "error": { "code": self.code, "message": self.message } })
    }
}

impl IntoResponse for ChatError {
    fn into_response(self) -> Response {
        (self.status, Json(self.json())).into_response()
    }
}

type ChatResult<T> = Result<T, ChatError>;

/// A visitor as a verified token names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visitor {
    pub tenant: TenantId,
    pub channel_config_id: String,
    /// `visitor:<id>` or `user:<id>`: the customer's address on the channel.
    pub address: String,
    pub display_name: String,
    /// The phone number the tenant's site vouched for with the identity; empty when none.
    pub phone: String,
    pub expires_ms: i64,
}

impl Visitor {
    /// Whose files a visitor's uploads are: only this visitor, in this chat, may send them.
    fn owner(&self) -> String {
        format!("webchat:{}:{}", self.channel_config_id, self.address)
    }

    fn customer(&self) -> CustomerId {
        CustomerId::derive(&self.tenant, Channel::WebChat, &self.address)
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `base64url(json).base64url(hmac)`.
pub fn sign(v: &Visitor, key: &[u8]) -> String {
    let payload = json!({
        "t": v.tenant.as_str(), "c": v.channel_config_id, "a": v.address, "n": v.display_name, "p": v.phone,
        "e": v.expires_ms,
    })
    .to_string();
    let body = B64.encode(payload.as_bytes());
    let sig = B64.encode(hmac_sha256(key, body.as_bytes()));
    format!("{body}.{sig}")
}

/// The visitor a token names, if Parley signed it and it has not expired.
pub fn verify(token: &str, key: &[u8], now_ms: i64) -> Option<Visitor> {
    let (body, sig) = token.split_once('.')?;
    let sig = B64.decode(sig).ok()?;
    if !ct_eq(&hmac_sha256(key, body.as_bytes()), &sig) {
        return None;
    }
    let v: Value = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
    let visitor = Visitor {
        tenant: TenantId::parse(v["t"].as_str()?).ok()?,
        channel_config_id: v["c"].as_str()?.to_owned(),
        address: v["a"].as_str()?.to_owned(),
        display_name: v["n"].as_str()?.to_owned(),
        phone: v["p"].as_str().unwrap_or_default().to_owned(),
        expires_ms: v["e"].as_i64()?,
    };
    (visitor.expires_ms > now_ms).then_some(visitor)
}

/// An id no one can guess: 128 random bits, base64url.
fn new_visitor_id() -> String {
    B64.encode(uuid::Uuid::new_v4().as_bytes())
}

fn valid_visitor_id(id: &str) -> bool {
    (16..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl WebChat {
    /// The enabled web chat config at this address, with its settings.
    fn config(&self, tenant: &str, id: &str) -> ChatResult<(TenantId, v1::WebChatSettings)> {
        let tenant = TenantId::parse(tenant).map_err(|_| ChatError::not_found())?;
        let found = self.cache.with_tenant(&tenant, |t| {
            let t = t?;
            if t.tenant.as_ref().is_none_or(|t| t.disabled) {
                return None;
            }
            let c = t.channels.get(id).filter(|c| !c.disabled && c.channel == v1::Channel::Webchat as i32)?;
            match c.settings.as_ref() {
                Some(Settings::Webchat(s)) => Some(s.clone()),
                _ => None,
            }
        });
        found.map(|s| (tenant, s)).ok_or_else(ChatError::not_found)
    }

    /// A browser's request must come from one of the config's origins.
    fn check_origin(settings: &v1::WebChatSettings, headers: &HeaderMap) -> ChatResult<()> {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
            return Ok(()); // Not a browser: the token is what counts.
        };
        if settings.allowed_origins.is_empty()
            || settings.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
        {
            Ok(())
        } else {
            Err(ChatError::new(StatusCode::FORBIDDEN, "permission_denied", format!("origin {origin} is not allowed")))
        }
    }

    /// The visitor of a request: its token verified, for this tenant and config.
    fn visitor(&self, tenant: &str, config: &str, token: Option<&str>, headers: &HeaderMap) -> ChatResult<Visitor> {
        let (_, settings) = self.config(tenant, config)?;
        Self::check_origin(&settings, headers)?;
        self.visitor_of(tenant, config, token)
    }

    /// The visitor a token names, if it is valid for this tenant and config.
    fn visitor_of(&self, tenant: &str, config: &str, token: Option<&str>) -> ChatResult<Visitor> {
        let token = token.ok_or_else(|| ChatError::unauthenticated("a visitor token is required"))?;
        let visitor = verify(token, &self.token_key, clock::now().as_millis())
            .ok_or_else(|| ChatError::unauthenticated("the visitor token is invalid or expired; open a new session"))?;
        if visitor.tenant.as_str() != tenant || visitor.channel_config_id != config {
            return Err(ChatError::unauthenticated("the visitor token is for another chat"));
        }
        Ok(visitor)
    }

    /// Puts something of a visitor's on `PARLEY_INBOUND`, acknowledged by JetStream.
    async fn publish(
        &self,
        v: &Visitor,
        kind: events::inbound_envelope::Kind,
        dedupe_id: &str,
        key: &str,
    ) -> Result<parley_nats::publish::Published, parley_nats::publish::PublishError> {
        let envelope = events::InboundEnvelope { kind: Some(kind) };
        self.publisher.publish(topology::inbound_subject(&v.tenant, Channel::WebChat), dedupe_id, key, &envelope).await
    }

    /// The last sequence of `PARLEY_OUTBOUND` now: updates published from here on are after it.
    async fn position(&self) -> ChatResult<u64> {
        let mut stream =
            self.js.get_stream(topology::OUTBOUND.name).await.map_err(|e| ChatError::unavailable(e.to_string()))?;
        let info = stream.info().await.map_err(|e| ChatError::unavailable(e.to_string()))?;
        Ok(info.state.last_sequence)
    }

    /// The visitor's updates after stream sequence `after` (0: all that are kept), as they
    /// come. The session's answer says where a new visitor starts (`after`), so a widget
    /// that polls or connects only after its first message still gets the answer to it.
    async fn feed(&self, v: &Visitor, after: u64) -> ChatResult<tail::Tail> {
        let subject = topology::outbound_subject(&v.tenant, Channel::WebChat, v.customer());
        self.hub.follow(subject, Resume::After(after)).await.map_err(|e| ChatError::unavailable(e.to_string()))
    }

    /// Tells the operator of the visitor's conversation that the visitor is typing.
    async fn typing(&self, v: &Visitor, conversation: &str) -> ChatResult<()> {
        let conversation =
            ConversationId::parse(conversation).map_err(|e| ChatError::bad(format!("conversation_id: {e}")))?;
        let typing = events::CustomerTyping {
            tenant_id: v.tenant.to_string(),
            conversation_id: conversation.to_string(),
            customer_address: v.address.clone(),
            time: Some(convert::timestamp(clock::now())),
        };
        let kind = events::inbound_envelope::Kind::CustomerTyping(typing);
        self.publish(v, kind, &uuid::Uuid::new_v4().to_string(), &v.customer().to_string())
            .await
            .map(|_| ())
            .map_err(|e| ChatError::unavailable(e.to_string()))
    }

    /// Notes that the visitor has read a message of their conversation: a `READ` delivery
    /// state for routing to record (it checks the conversation is the visitor's).
    async fn read(&self, v: &Visitor, conversation: &str, message: &str) -> ChatResult<()> {
        let conversation =
            ConversationId::parse(conversation).map_err(|e| ChatError::bad(format!("conversation_id: {e}")))?;
        let message = MessageId::parse(message).map_err(|e| ChatError::bad(format!("message_id: {e}")))?;
        let now = Some(convert::timestamp(clock::now()));
        let receipt = events::DeliveryReceipt {
            tenant_id: v.tenant.to_string(),
            channel: v1::Channel::Webchat as i32,
            channel_config_id: v.channel_config_id.clone(),
            state: v1::DeliveryState::Read as i32,
            recipient: v.address.clone(),
            state_time: now,
            receive_time: now,
            conversation_id: conversation.to_string(),
            message_id: message.to_string(),
            ..Default::default()
        };
        let kind = events::inbound_envelope::Kind::DeliveryReceipt(receipt);
        self.publish(v, kind, &format!("webchat-read:{}:{message}", v.address), &format!("receipt:{message}"))
            .await
            .map(|_| ())
            .map_err(|e| ChatError::unavailable(format!("not noted ({e}); send it again")))
    }

    /// The files a visitor's message names: each uploaded by this visitor in this chat, once.
    async fn visitor_files(&self, v: &Visitor, ids: &[String]) -> ChatResult<Vec<events::InboundAttachment>> {
        let ids = parse_attachment_ids(ids, MAX_VISITOR_FILES).map_err(ChatError::bad)?;
        let mut files = Vec::with_capacity(ids.len());
        for (i, id) in ids.into_iter().enumerate() {
            let stored = self.store.head(&v.tenant, id).await.map_err(|e| ChatError::unavailable(e.to_string()))?;
            let file = match stored {
                Some(Stored::File(f)) if ct_eq(f.owner.as_bytes(), v.owner().as_bytes()) => f,
                _ => {
                    return Err(ChatError::new(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("attachment_ids[{i}]: no file {id} was uploaded in this chat"),
                    ));
                }
            };
            files.push(events::InboundAttachment {
                attachment: Some(v1::Attachment {
                    id: id.to_string(),
                    kind: convert::attachment_kind(AttachmentKind::from_mime(&file.mime)) as i32,
                    mime_type: file.mime,
                    file_name: file.file_name,
                    size_bytes: file.size,
                }),
                // Stored already: nothing for the media worker to fetch.
                provider_ref: String::new(),
            });
        }
        Ok(files)
    }

    /// Stores a visitor's message; the same `client_id` again is the same message.
    async fn submit(
        &self,
        v: &Visitor,
        client_id: &str,
        text: &str,
        attachment_ids: &[String],
    ) -> ChatResult<(MessageId, bool)> {
        if client_id.is_empty() || client_id.len() > 128 || !client_id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ChatError::bad("client_id must be 1 to 128 printable ASCII characters"));
        }
        let files = self.visitor_files(v, attachment_ids).await?;
        // Files may go without text: the operator then reads what they are.
        let text = match files.first().and_then(|f| f.attachment.as_ref()) {
            Some(first) if text.trim().is_empty() => {
                let kind = AttachmentKind::from_mime(&first.mime_type);
                let name = (!first.file_name.is_empty()).then_some(first.file_name.as_str());
                crate::normalise::files_placeholder(kind, name, files.len())
            }
            _ => text.to_owned(),
        };
        let text = text.as_str();
        check_text(text).map_err(|e| ChatError::bad(e.to_string()))?;
        let customer = v.customer();
        let key = format!("{}:{client_id}", v.address);
        let message_id = MessageId::derive(&v.tenant, &format!("webchat:{}", v.channel_config_id), &key);
        let message = events::CustomerMessage {
            message_id: message_id.to_string(),
            tenant_id: v.tenant.to_string(),
            channel: v1::Channel::Webchat as i32,
            channel_config_id: v.channel_config_id.clone(),
            customer_id: customer.to_string(),
            customer_address: v.address.clone(),
            customer_display_name: v.display_name.clone(),
            text: text.to_owned(),
            verified_phone: v.phone.clone(),
            channel_message_id: client_id.to_owned(),
            receive_time: Some(convert::timestamp(clock::now())),
            attachments: files,
            ..Default::default()
        };
        let kind = events::inbound_envelope::Kind::CustomerMessage(message);
        let published = self.publish(v, kind, &message_id.to_string(), &customer.to_string()).await.map_err(|e| {
            ChatError::unavailable(format!("message not stored ({e}); send it again with the same client_id"))
        })?;
        Ok((message_id, published.duplicate))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenSession {
    /// From an earlier session, to be the same visitor again.
    visitor_id: Option<String>,
    name: Option<String>,
    identity: Option<Identity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    user_id: String,
    /// The user's phone number, as the site verified it (optional).
    phone: Option<String>,
    /// Hex HMAC-SHA256 with the config's identity secret of `user_id`, or with a phone of
    /// `user_id`, `\n`, `phone`.
    signature: String,
}

/// A phone number as people write it: `+`, digits, spaces, dashes and brackets, with 7 to
/// 15 digits.
fn valid_phone(phone: &str) -> bool {
    let digits = phone.bytes().filter(u8::is_ascii_digit).count();
    phone.len() <= 32
        && (7..=15).contains(&digits)
        && phone.bytes().all(|b| b.is_ascii_digit() || b" +-()".contains(&b))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ChatResult<T> {
    if body.len() > MAX_INPUT {
        return Err(ChatError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "the body is larger than 64 KiB"));
    }
    serde_json::from_slice(body).map_err(|e| ChatError::bad(format!("malformed JSON: {e}")))
}

async fn open_session(
    State(chat): State<Arc<WebChat>>,
    Path((tenant, config)): Path<(String, String)>,
    headers: HeaderMap,
    body: parley_kit::axum::body::Bytes,
) -> ChatResult<Json<Value>> {
    let (tenant_id, settings) = chat.config(&tenant, &config)?;
    WebChat::check_origin(&settings, &headers)?;
    let req: OpenSession = parse_json(&body)?;
    let name = req.name.unwrap_or_default();
    if name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ChatError::bad("name must be at most 200 characters without control characters"));
    }
    let (address, visitor_id, verified, phone) = match (req.identity, req.visitor_id) {
        (Some(id), _) => {
            if settings.identity_secret.is_empty() {
                return Err(ChatError::bad("this chat does not verify identities"));
            }
            if id.user_id.is_empty() || id.user_id.len() > 256 || id.user_id.chars().any(char::is_control) {
                return Err(ChatError::bad("identity.user_id must be 1 to 256 bytes without control characters"));
            }
            let phone = id.phone.unwrap_or_default();
            if !phone.is_empty() && !valid_phone(&phone) {
                return Err(ChatError::bad(
                    "identity.phone must be 7 to 15 digits, optionally with +, spaces, dashes and brackets",
                ));
            }
            // The same check as a provider's hex HMAC-SHA256 webhook signature.
            let secret = settings.identity_secret.as_bytes();
            let signed = if phone.is_empty() { id.user_id.clone() } else { format!("{}\n{phone}", id.user_id) };
            if verify_hex_sha256(secret, signed.as_bytes(), Some(&id.signature)).is_err() {
                let what = if phone.is_empty() { "identity.user_id" } else { "identity.user_id and identity.phone" };
                return Err(ChatError::unauthenticated(format!("identity.signature does not match {what}")));
            }
            (format!("user:{}", id.user_id), None, true, phone)
        }
        (None, Some(v)) if valid_visitor_id(&v) => (format!("visitor:{v}"), Some(v), false, String::new()),
        (None, Some(_)) => return Err(ChatError::bad("visitor_id must be the one an earlier session returned")),
        (None, None) => {
            let v = new_visitor_id();
            (format!("visitor:{v}"), Some(v), false, String::new())
        }
    };
    let expires_ms = clock::now().as_millis() + TOKEN_TTL.as_millis() as i64;
    let visitor =
        Visitor { tenant: tenant_id, channel_config_id: config, address, display_name: name, phone, expires_ms };
    // Where the visitor's updates start: a widget that polls (or connects) only after its
    // first message still gets the answer to it.
    let after = chat.position().await?;
    Ok(Json(json!({
        "token": sign(&visitor, &chat.token_key),
        "customer_id": visitor.customer().to_string(),
        "visitor_id": visitor_id,
        "verified": verified,
        "expires_at_ms": expires_ms,
        "after": after,
    })))
}

#[derive(Debug, Deserialize)]
struct FeedQuery {
    token: Option<String>,
    #[serde(default)]
    after: u64,
}

async fn socket(
    State(chat): State<Arc<WebChat>>,
    Path((tenant, config)): Path<(String, String)>,
    Query(q): Query<FeedQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> ChatResult<Response> {
    let upgrade = upgrade.max_message_size(MAX_INPUT);
    if q.token.is_some() {
        let visitor = chat.visitor(&tenant, &config, q.token.as_deref(), &headers)?;
        let feed = chat.feed(&visitor, q.after).await?;
        return Ok(upgrade.on_upgrade(move |ws| converse(chat, visitor, feed, ws)));
    }
    // The token comes in the first frame instead, out of the URL (which servers and proxies
    // log): the address and origin are checked now, the token once it arrives.
    let (_, settings) = chat.config(&tenant, &config)?;
    WebChat::check_origin(&settings, &headers)?;
    Ok(upgrade.on_upgrade(move |mut ws| async move {
        let started = async {
            let first = tokio::time::timeout(AUTH_WITHIN, ws.next())
                .await
                .map_err(|_| ChatError::unauthenticated("no auth frame within 10 seconds"))?;
            let token = match first {
                Some(Ok(WsMessage::Text(t))) => serde_json::from_str::<Value>(&t)
                    .ok()
                    .filter(|v| v["type"] == "auth")
                    .and_then(|v| v["token"].as_str().map(str::to_owned))
                    .ok_or_else(|| {
                        ChatError::unauthenticated(r#"the first frame must be {"type": "auth", "token": "…"}"#)
                    })?,
                _ => return Err(ChatError::unauthenticated("the socket closed before its auth frame")),
            };
            let visitor = chat.visitor_of(&tenant, &config, Some(&token))?;
            let feed = chat.feed(&visitor, q.after).await?;
            Ok((visitor, feed))
        };
        match started.await {
            Ok((visitor, feed)) => converse(chat, visitor, feed, ws).await,
            Err(e) => {
                let frame = json!({"type": "error", "code": e.code, "message": e.message});
                let _ = ws.send(WsMessage::Text(frame.to_string().into())).await;
                let _ = ws.send(WsMessage::Close(None)).await;
            }
        }
    }))
}

/// How long a socket opened without a token has to send its `auth` frame.
const AUTH_WITHIN: Duration = Duration::from_secs(10);

/// A text frame the widget sends on the WebSocket. Absent or non-string fields read as
/// empty; what they must hold is checked where they are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Message { client_id: String, text: String, attachment_ids: Vec<String> },
    Read { conversation_id: String, message_id: String },
    Typing { conversation_id: String },
    Ping,
}

impl Frame {
    /// Reads a frame; the error is the message of the `error` frame that answers it.
    pub fn parse(text: &str) -> Result<Frame, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
        let field = |name: &str| v[name].as_str().unwrap_or_default().to_owned();
        match v["type"].as_str() {
            Some("message") => {
                let ids = match &v["attachment_ids"] {
                    Value::Null => Vec::new(),
                    Value::Array(ids) => ids
                        .iter()
                        .map(|id| id.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or("attachment_ids must be a list of strings")?,
                    _ => return Err("attachment_ids must be a list of strings".into()),
                };
                Ok(Frame::Message { client_id: field("client_id"), text: field("text"), attachment_ids: ids })
            }
            Some("read") => {
                Ok(Frame::Read { conversation_id: field("conversation_id"), message_id: field("message_id") })
            }
            Some("typing") => Ok(Frame::Typing { conversation_id: field("conversation_id") }),
            Some("ping") => Ok(Frame::Ping),
            other => Err(format!("unknown frame type {other:?}; send \"message\", \"read\" or \"ping\"")),
        }
    }
}

/// One WebSocket: updates down, messages up, until either side ends it.
async fn converse(chat: Arc<WebChat>, visitor: Visitor, mut feed: tail::Tail, ws: WebSocket) {
    let (mut tx, mut rx) = ws.split();
    let mut last_typing: Option<std::time::Instant> = None;
    let hello = json!({"type": "welcome", "after": feed.resume_after, "customer_id": visitor.customer().to_string()});
    if tx.send(WsMessage::Text(hello.to_string().into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = chat.shutdown.cancelled() => {
                let _ = tx.send(WsMessage::Close(None)).await;
                return;
            }
            next = feed.messages.next() => {
                let frame = match next {
                    Some(Ok(d)) => match update_frame(&d, &chat.link_key) {
                        Some(f) => f,
                        None => continue,
                    },
                    Some(Err(e)) => json!({"type": "error", "code": "unavailable",
                                           "message": format!("{e}; reconnect with the last seq")}),
                    None => return,
                };
                if tx.send(WsMessage::Text(frame.to_string().into())).await.is_err() {
                    return;
                }
            }
            incoming = rx.next() => {
                let text = match incoming {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue, // pings are answered by the library; binary is ignored
                };
                let answer = match Frame::parse(&text) {
                    Err(message) => json!({"type": "error", "code": "invalid_argument", "message": message}),
                    Ok(Frame::Message { client_id, text, attachment_ids }) => match chat.submit(&visitor, &client_id, &text, &attachment_ids).await {
                        Ok((id, duplicate)) => json!({"type": "accepted", "client_id": client_id,
                                                      "message_id": id.to_string(), "duplicate": duplicate}),
                        Err(e) => json!({"type": "error", "client_id": client_id, "code": e.code, "message": e.message}),
                    },
                    Ok(Frame::Read { conversation_id, message_id }) => {
                        match chat.read(&visitor, &conversation_id, &message_id).await {
                            Ok(()) => json!({"type": "read_noted", "message_id": message_id}),
                            Err(e) => json!({"type": "error", "code": e.code, "message": e.message}),
                        }
                    }
                    Ok(Frame::Typing { conversation_id }) => {
                        let now = std::time::Instant::now();
                        if last_typing.is_none_or(|at| now.duration_since(at) >= TYPING_EVERY) {
                            last_typing = Some(now);
                            if let Err(e) = chat.typing(&visitor, &conversation_id).await {
                                tracing::debug!(error = %e.message, "typing not passed on");
                            }
                        }
                        continue;
                    }
                    Ok(Frame::Ping) => json!({"type": "pong"}),
                };
                if tx.send(WsMessage::Text(answer.to_string().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn poll(
    State(chat): State<Arc<WebChat>>,
    Path((tenant, config)): Path<(String, String)>,
    Query(q): Query<FeedQuery>,
    headers: HeaderMap,
) -> ChatResult<Json<Value>> {
    // The token as a bearer header (out of the URL), or in the query.
    let token = q.token.as_deref().or(bearer(&headers));
    let visitor = chat.visitor(&tenant, &config, token, &headers)?;
    let mut feed = chat.feed(&visitor, q.after).await?;
    let mut updates = Vec::new();
    let mut last = feed.resume_after;
    // Wait for the first update; then take what is already there, without waiting.
    let deadline = tokio::time::Instant::now() + POLL_WAIT;
    while updates.len() < POLL_BATCH {
        let wait = if updates.is_empty() { deadline } else { tokio::time::Instant::now() + Duration::from_millis(20) };
        match tokio::time::timeout_at(wait, feed.messages.next()).await {
            Ok(Some(Ok(d))) => {
                last = d.stream_sequence;
                if let Some(f) = update_frame(&d, &chat.link_key) {
                    updates.push(f);
                }
            }
            Ok(Some(Err(e))) if updates.is_empty() => return Err(ChatError::unavailable(e.to_string())),
            Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
        }
    }
    Ok(Json(json!({"updates": updates, "last_seq": last})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    client_id: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    attachment_ids: Vec<String>,
}

async fn post_message(
    State(chat): State<Arc<WebChat>>,
    Path((tenant, config)): Path<(String, String)>,
    headers: HeaderMap,
    body: parley_kit::axum::body::Bytes,
) -> ChatResult<Json<Value>> {
    let visitor = chat.visitor(&tenant, &config, bearer(&headers), &headers)?;
    let m: PostMessage = parse_json(&body)?;
    let (id, duplicate) = chat.submit(&visitor, &m.client_id, &m.text, &m.attachment_ids).await?;
    Ok(Json(json!({"message_id": id.to_string(), "duplicate": duplicate})))
}

/// The visitor's bearer token of a request.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// `POST …/files?name=`: a file the visitor will send (raw body with its `Content-Type`,
/// `Authorization: Bearer <visitor token>`); the same checks as operators' uploads. Only
/// this visitor can then name it in a message.
async fn upload_file(
    State(chat): State<Arc<WebChat>>,
    Path((tenant, config)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<Query<UploadQuery>, QueryRejection>,
    body: Result<parley_kit::axum::body::Bytes, BytesRejection>,
) -> Response {
    let visitor = match chat.visitor(&tenant, &config, bearer(&headers), &headers) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    match store_upload(&*chat.store, &chat.policy, &visitor.tenant, &headers, query, body, visitor.owner()).await {
        Ok(a) => {
            tracing::info!(tenant = %visitor.tenant, attachment = %a.id, size = a.size, "visitor file uploaded");
            uploaded(&a)
        }
        Err(e) => e.into_response(),
    }
}

fn time_ms(t: Option<&parley_proto::Timestamp>) -> i64 {
    convert::from_timestamp(t).as_millis()
}

fn state_name(state: i32) -> &'static str {
    match v1::DeliveryState::try_from(state) {
        Ok(v1::DeliveryState::Sent) => "sent",
        Ok(v1::DeliveryState::Delivered) => "delivered",
        Ok(v1::DeliveryState::Read) => "read",
        Ok(v1::DeliveryState::Failed) => "failed",
        _ => "accepted",
    }
}

/// How long the link to a file an operator sent works.
const FILE_LINK_TTL: Duration = Duration::from_secs(24 * 3600);

/// The files of a message as the widget reads them, each with a signed link relative to
/// this listener (the widget reads it against the address it talks to).
fn files(tenant: &str, attachments: &[v1::Attachment], link_key: &[u8]) -> Vec<Value> {
    let expires = clock::now().as_millis() / 1000 + FILE_LINK_TTL.as_secs() as i64;
    attachments
        .iter()
        .map(|a| {
            json!({"id": a.id, "file_name": a.file_name, "mime_type": a.mime_type, "size_bytes": a.size_bytes,
                   "url": parley_channels::media_link("", link_key, tenant, &a.id, expires)})
        })
        .collect()
}

/// An outbound update as the widget reads it; `None` for what the widget does not show.
fn update_frame(d: &parley_nats::consume::Delivery, link_key: &[u8]) -> Option<Value> {
    let envelope: events::OutboundEnvelope = match d.decode() {
        Ok(e) => e,
        Err(why) => {
            tracing::warn!(seq = d.stream_sequence, why, "skipping undecodable outbound message");
            return None;
        }
    };
    use v1::customer_update::Kind;
    let update = match envelope.update?.kind? {
        Kind::Message(m) => json!({
            "kind": "message", "message_id": m.id, "text": m.text,
            "attachments": files(&envelope.tenant_id, &m.attachments, link_key),
            "from": match v1::SenderKind::try_from(m.sender_kind) {
                Ok(v1::SenderKind::Operator) => "operator",
                Ok(v1::SenderKind::Bot) => "bot",
                Ok(v1::SenderKind::Customer) => "customer",
                _ => "system",
            },
            "at_ms": time_ms(m.create_time.as_ref()),
        }),
        Kind::Queued(q) => json!({"kind": "queued", "position": q.position,
                                  "estimated_wait_seconds": q.estimated_wait_seconds}),
        Kind::OperatorJoined(o) => json!({"kind": "operator_joined", "operator_name": o.operator_display_name}),
        Kind::Ended(e) => json!({"kind": "ended", "reason": e.reason}),
        Kind::Delivery(u) => json!({"kind": "delivery", "message_id": u.message_id, "state": state_name(u.state)}),
        Kind::Closed(c) => {
            json!({"kind": "queue_closed", "opens_at_ms": c.open_time.as_ref().map(|t| time_ms(Some(t)))})
        }
        Kind::Typing(t) => json!({"kind": "typing", "name": t.display_name}),
        Kind::WaitingForOperator(w) => json!({"kind": "waiting_for_operator", "operator_name": w.operator_display_name,
                                              "until_ms": time_ms(w.until_time.as_ref())}),
    };
    Some(json!({"type": "update", "seq": d.stream_sequence, "conversation_id": envelope.conversation_id,
               "version": envelope.conversation_version, "update": update}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visitor(expires_ms: i64) -> Visitor {
        Visitor {
            tenant: TenantId::parse("acme").unwrap(),
            channel_config_id: "site".into(),
            address: "visitor:AAAAAAAAAAAAAAAAAAAAAA".into(),
            display_name: "Иван".into(),
            phone: "+7 916 123-45-67".into(),
            expires_ms,
        }
    }

    #[test]
    fn tokens_verify_only_unchanged_unexpired_and_with_the_key() {
        let key = b"k".repeat(32);
        let v = visitor(2_000);
        let token = sign(&v, &key);
        assert_eq!(verify(&token, &key, 1_000), Some(v.clone()));
        assert_eq!(verify(&token, &key, 2_000), None, "expired");
        assert_eq!(verify(&token, b"another key", 1_000), None);
        // Another visitor's body under this signature.
        let other = sign(&Visitor { address: "user:42".into(), ..v.clone() }, &key);
        let forged = format!("{}.{}", other.split_once('.').unwrap().0, token.split_once('.').unwrap().1);
        assert_eq!(verify(&forged, &key, 1_000), None);
        // Another phone under this signature.
        let other = sign(&Visitor { phone: "+7 900 000-00-00".into(), ..v }, &key);
        let forged = format!("{}.{}", other.split_once('.').unwrap().0, token.split_once('.').unwrap().1);
        assert_eq!(verify(&forged, &key, 1_000), None);
        for junk in ["", ".", "abc", "a.b", "%%%.%%%"] {
            assert_eq!(verify(junk, &key, 1_000), None, "{junk:?}");
        }
    }

    #[test]
    fn visitor_ids_are_unguessable_and_checked() {
        let (a, b) = (new_visitor_id(), new_visitor_id());
        assert_ne!(a, b);
        assert!(valid_visitor_id(&a) && a.len() == 22);
        assert!(!valid_visitor_id("short"));
        assert!(!valid_visitor_id("has space in it, long enough"));
    }

    #[test]
    fn phones_are_written_as_people_write_them() {
        for ok in ["+79161234567", "+7 (916) 123-45-67", "8 916 123 45 67", "4915112345678"] {
            assert!(valid_phone(ok), "{ok}");
        }
        for bad in
            ["", "123456", "+7 916 123-45-67 ext 5", "79161234567890123", "+7\u{0}9161234567", "+7.916.123.45.67"]
        {
            assert!(!valid_phone(bad), "{bad:?}");
        }
    }
}
