//! Provider webhooks: the public HTTP edge where Telegram, WhatsApp, Viber and Twilio-style
//! SMS providers post what customers send and how Parley's messages fared.
//!
//! `POST /webhooks/{tenant}/{channel_config_id}` takes a provider's callback;
//! `GET` on the same path answers WhatsApp's verification handshake. The channel config
//! decides which provider's verifier and parser run. Every request goes, in this order:
//!
//! 1. body size (over the limit → 413, before anything is looked up);
//! 2. the endpoint: tenant known and enabled, channel config known, enabled, of a webhook
//!    channel and with its secret set (otherwise 404, the same answer whichever part is
//!    missing, so the path cannot be used to probe tenants or configs);
//! 3. the signature over the raw bytes with the config's secret (missing → 401, wrong →
//!    403) — nothing before this step has any effect;
//! 4. parsing (malformed, invalid UTF-8 → 400);
//! 5. each event normalised and published to `PARLEY_INBOUND`, waiting for JetStream's ack;
//!    200 only when all are stored, 503 otherwise so the provider retries (a republish is
//!    dropped by the dedupe id).
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with a lowercase message that
//! never contains a secret.

use std::sync::Arc;

use futures_util::StreamExt;
use parley_channels::{ChannelError, Inbound, telegram, twilio, viber, whatsapp};
use parley_domain::{Channel, TenantId, Timestamp};
use parley_kit::axum::body::{Body, Bytes};
use parley_kit::axum::extract::rejection::PathRejection;
use parley_kit::axum::extract::{Path, RawQuery, State};
use parley_kit::axum::http::{HeaderMap, StatusCode, header};
use parley_kit::axum::response::{IntoResponse, Response};
use parley_kit::axum::{Json, Router, routing};
use parley_kit::clock;
use parley_nats::{ConfigCache, Publisher};
use parley_proto::v1;
use parley_proto::v1::channel_config::Settings;
use serde_json::json;
use tracing::Instrument;

use crate::normalise::{self, Source};

/// The webhook endpoints' shared state.
#[derive(Debug, Clone)]
pub struct Webhooks {
    pub cache: ConfigCache,
    pub publisher: Publisher,
    pub max_body_bytes: usize,
}

/// The public router: only the webhook paths (the ops routes stay on the private port).
pub fn router(webhooks: Webhooks) -> Router {
    Router::new()
        .route("/webhooks/{tenant}/{channel_config_id}", routing::get(verify).post(receive))
        .fallback(|| async { WebhookError::not_found().into_response() })
        .with_state(Arc::new(webhooks))
}

/// A refused request: its status, a stable code and a message for the caller (the JSON
/// error of every route on the public listener).
#[derive(Debug)]
pub(crate) struct WebhookError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl WebhookError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn not_found() -> Self {
        Self { status: StatusCode::NOT_FOUND, code: "not_found", message: "no webhook endpoint at this address".into() }
    }

    fn too_large(limit: usize) -> Self {
        ChannelError::TooLarge { limit }.into()
    }
}

impl From<ChannelError> for WebhookError {
    fn from(e: ChannelError) -> Self {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        Self { status, code: e.code(), message: e.to_string() }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": { "code": self.code, "message": self.message } }))).into_response()
    }
}

/// What verifies and parses one channel config's webhooks, with its secrets.
enum Provider {
    Telegram { secret: String },
    WhatsApp { app_secret: String, verify_token: String, phone_number_id: String },
    Viber { auth_token: String },
    Twilio { auth_token: String, webhook_url: String, account_sid: String },
}

impl Provider {
    const fn name(&self) -> &'static str {
        match self {
            Provider::Telegram { .. } => "telegram",
            Provider::WhatsApp { .. } => "whatsapp",
            Provider::Viber { .. } => "viber",
            Provider::Twilio { .. } => "twilio",
        }
    }

    /// The provider of a config, if it is an enabled webhook channel whose secret is set
    /// (without the secret no request could be authenticated, so there is no endpoint).
    fn of(config: &v1::ChannelConfig) -> Option<(Channel, Provider)> {
        if config.disabled {
            return None;
        }
        let set = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let channel = v1::Channel::try_from(config.channel).ok()?;
        match (channel, config.settings.as_ref()?) {
            (v1::Channel::Telegram, Settings::Telegram(s)) => {
                Some((Channel::Telegram, Provider::Telegram { secret: set(&s.webhook_secret)? }))
            }
            (v1::Channel::Whatsapp, Settings::Whatsapp(s)) => Some((
                Channel::WhatsApp,
                Provider::WhatsApp {
                    app_secret: set(&s.app_secret)?,
                    verify_token: s.verify_token.clone(),
                    phone_number_id: s.phone_number_id.clone(),
                },
            )),
            (v1::Channel::Viber, Settings::Viber(s)) => {
                Some((Channel::Viber, Provider::Viber { auth_token: set(&s.auth_token)? }))
            }
            (v1::Channel::Sms, Settings::Sms(s)) => Some((
                Channel::Sms,
                Provider::Twilio {
                    auth_token: set(&s.auth_token)?,
                    webhook_url: set(&s.webhook_url)?,
                    account_sid: s.account_sid.clone(),
                },
            )),
            _ => None,
        }
    }
}

/// The endpoint a path names, if it exists (see the module's step 2).
fn endpoint(cache: &ConfigCache, tenant: &str, config_id: &str) -> Option<(TenantId, Channel, Provider)> {
    let tenant = TenantId::parse(tenant).ok()?;
    let (channel, provider) = cache.with_tenant(&tenant, |t| {
        let t = t?;
        if t.tenant.as_ref().is_none_or(|t| t.disabled) {
            return None;
        }
        Provider::of(t.channels.get(config_id)?)
    })?;
    Some((tenant, channel, provider))
}

/// A header's value; one that is present but not visible ASCII cannot match any signature.
fn header_value<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ChannelError> {
    headers.get(name).map(|v| v.to_str().map_err(|_| ChannelError::BadSignature)).transpose()
}

/// Reads the body, refusing it as soon as it is larger than `max` (a declared length over
/// the limit is refused without reading anything).
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, WebhookError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(WebhookError::too_large(max));
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| WebhookError {
            status: StatusCode::BAD_REQUEST,
            code: "unreadable_body",
            message: "the request body could not be read".into(),
        })?;
        if buf.len() + chunk.len() > max {
            return Err(WebhookError::too_large(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// `GET`: WhatsApp's subscription handshake, answered with `hub.challenge` as text.
async fn verify(
    State(w): State<Arc<Webhooks>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(Path((tenant, config_id))) = path else { return WebhookError::not_found().into_response() };
    let span = tracing::info_span!(
        "webhook_verify",
        tenant = %tenant,
        channel_config = %config_id,
        provider = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    parley_kit::telemetry::set_parent_from(&span, &parley_kit::telemetry::HeaderExtractor(&headers));
    let result = match endpoint(&w.cache, &tenant, &config_id) {
        Some((_, _, Provider::WhatsApp { verify_token, .. })) => {
            span.record("provider", "whatsapp");
            whatsapp::verify_subscription(query.as_deref().unwrap_or_default(), &verify_token)
                .map_err(WebhookError::from)
        }
        _ => Err(WebhookError::not_found()),
    };
    match result {
        Ok(challenge) => {
            span.record("outcome", "verified");
            span.in_scope(|| tracing::info!("webhook subscription verified"));
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], challenge).into_response()
        }
        Err(e) => {
            span.record("outcome", e.code);
            span.in_scope(|| tracing::info!(status = e.status.as_u16(), "webhook verification refused"));
            e.into_response()
        }
    }
}

/// `POST`: a provider's callback.
async fn receive(
    State(w): State<Arc<Webhooks>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Path((tenant, config_id))) = path else { return WebhookError::not_found().into_response() };
    let span = tracing::info_span!(
        "webhook",
        tenant = %tenant,
        channel_config = %config_id,
        provider = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    parley_kit::telemetry::set_parent_from(&span, &parley_kit::telemetry::HeaderExtractor(&headers));
    let result = handle(&w, &tenant, &config_id, &headers, body, &span).instrument(span.clone()).await;
    match result {
        Ok(counts) => {
            span.record("outcome", "accepted");
            span.in_scope(|| {
                tracing::info!(accepted = counts.accepted, duplicates = counts.duplicates, "webhook accepted");
            });
            Json(json!({ "accepted": counts.accepted, "duplicates": counts.duplicates })).into_response()
        }
        Err(e) => {
            span.record("outcome", e.code);
            span.in_scope(|| tracing::info!(status = e.status.as_u16(), error = %e.message, "webhook refused"));
            e.into_response()
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    accepted: u32,
    duplicates: u32,
}

async fn handle(
    w: &Webhooks,
    tenant: &str,
    config_id: &str,
    headers: &HeaderMap,
    body: Body,
    span: &tracing::Span,
) -> Result<Counts, WebhookError> {
    let body = read_body(headers, body, w.max_body_bytes).await?;
    let (tenant, channel, provider) = endpoint(&w.cache, tenant, config_id).ok_or_else(WebhookError::not_found)?;
    span.record("provider", provider.name());
    let now = clock::now();
    let events = verify_and_parse(&provider, headers, &body, now)?;

    let source = Source { tenant: &tenant, channel, channel_config_id: config_id };
    let mut counts = Counts::default();
    for event in events {
        let publication = match event {
            Inbound::Message(m) => {
                if let Some(why) = foreign(&provider, &m) {
                    tracing::warn!(why, "message for another account ignored");
                    continue;
                }
                normalise::message(source, &m, now)
            }
            Inbound::Receipt(r) => normalise::receipt(source, &r, now),
            Inbound::Subscription { subscribed, identity } => {
                tracing::info!(subscribed, user = %identity.external_id, "subscription change");
                continue;
            }
            Inbound::Ignored { reason } => {
                tracing::debug!(reason, "event ignored");
                continue;
            }
        };
        let published = w
            .publisher
            .publish(publication.subject, &publication.dedupe_id, &publication.key, &publication.envelope)
            .await
            .map_err(|e| {
                // Logged with its cause; the provider only learns to retry.
                tracing::warn!(error = %e, "webhook event not stored");
                WebhookError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "unavailable",
                    message: "the events could not be stored; retry later".into(),
                }
            })?;
        if published.duplicate {
            counts.duplicates += 1;
        } else {
            counts.accepted += 1;
        }
        tracing::debug!(id = %publication.dedupe_id, duplicate = published.duplicate, "webhook event stored");
    }
    Ok(counts)
}

/// Steps 3 and 4: the signature, then the payload.
fn verify_and_parse(
    provider: &Provider,
    headers: &HeaderMap,
    body: &[u8],
    now: Timestamp,
) -> Result<Vec<Inbound>, ChannelError> {
    match provider {
        Provider::Telegram { secret } => {
            telegram::verify_secret_token(secret, header_value(headers, telegram::SECRET_HEADER)?)?;
            telegram::parse_update(body)
        }
        Provider::WhatsApp { app_secret, .. } => {
            whatsapp::verify_signature(app_secret, body, header_value(headers, whatsapp::SIGNATURE_HEADER)?)?;
            whatsapp::parse_webhook(body)
        }
        Provider::Viber { auth_token } => {
            viber::verify_signature(auth_token, body, header_value(headers, viber::SIGNATURE_HEADER)?)?;
            viber::parse_callback(body)
        }
        Provider::Twilio { auth_token, webhook_url, .. } => {
            // Twilio signs the decoded parameters, so the form is decoded first; a body that
            // does not decode cannot carry a valid signature and is refused as malformed. A
            // missing signature is reported first, as for the other providers.
            let signature = header_value(headers, twilio::SIGNATURE_HEADER)?.ok_or(ChannelError::MissingSignature)?;
            let params = twilio::verify_form(auth_token, webhook_url, body, Some(signature))?;
            twilio::parse_webhook(&params, now.as_millis())
        }
    }
}

/// Why a signed message is not for this channel config, if it is not: one Meta app may
/// post several numbers' messages to one URL (all signed with the same app secret), and a
/// Twilio-compatible provider names the account.
fn foreign(provider: &Provider, m: &parley_channels::InboundMessage) -> Option<&'static str> {
    match provider {
        Provider::WhatsApp { phone_number_id, .. }
            if !phone_number_id.is_empty() && m.account.as_deref().is_some_and(|a| a != phone_number_id) =>
        {
            Some("phone_number_id is not this channel config's")
        }
        Provider::Twilio { account_sid, .. }
            if !account_sid.is_empty() && m.provider_account.as_deref().is_some_and(|a| a != account_sid) =>
        {
            Some("AccountSid is not this channel config's")
        }
        _ => None,
    }
}
