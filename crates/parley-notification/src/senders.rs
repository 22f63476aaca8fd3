//! Channel senders: replies on `PARLEY_OUTBOUND` go out to the customer's provider.
//!
//! One durable consumer, shared by every notification replica, takes the operator and bot
//! messages bound for provider channels (Telegram, WhatsApp, Viber, SMS, and email through
//! the configuration's SMTP relay: [`crate::email`]); the API channel's
//! streams and the web chat read the stream themselves. Per message:
//!
//! 1. already sent (a redelivery after a crash between the provider's answer and the ack)?
//!    then it is only acknowledged — the provider's answer was recorded in Redis first;
//! 2. a send slot from the tenant's and the channel configuration's rates (shared by every
//!    replica through Redis), waiting for one if need be;
//! 3. the provider's request, built by `parley-channels`, with the configuration's
//!    credentials (never logged);
//! 4. the provider's answer decides: taken (marked sent, the provider's id kept for its
//!    receipts, `SENT` reported), again later (429 and 5xx honour `Retry-After`, network
//!    errors back off; a short wait is spent in place, keeping the customer's messages in
//!    order, a long one returns the message to the stream), or refused for good (`FAILED`
//!    with the provider's code, shown to the operator and kept in history).
//!
//! Reports travel as `DeliveryReceipt`s on `PARLEY_INBOUND`, next to the providers' own, and
//! routing records them in the conversation's log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_channels::outbound::{HttpResponse, OutboundRequest, SendOutcome};
use parley_channels::whatsapp::MediaSource;
use parley_channels::{telegram, twilio, viber, whatsapp};
use parley_domain::{AttachmentId, Channel, ConversationId, MessageId, TenantId};
use parley_kit::clock;
use parley_nats::consume::{Delivery, Handler, Outcome};
use parley_nats::{ConfigCache, MediaStore, Publisher, topology};
use parley_proto::{convert, events, v1};
use parley_redis::{Coordinator, Rate};
use serde::{Deserialize, Serialize};

/// Sender settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendersSection {
    /// Whether this replica sends at all (a replica may serve only desks).
    pub enabled: bool,
    /// Provider API bases (without trailing slash); tests point them at local servers.
    pub telegram_api: String,
    pub whatsapp_api: String,
    pub viber_api: String,
    pub twilio_api: String,
    /// Where providers reach ingest's public listener (`https://parley.example.com`, no
    /// trailing slash), to fetch the files of replies by signed link; empty: replies with
    /// files go only by email and the API channel.
    pub public_media_url: String,
    /// How long such a link holds.
    pub media_link_secs: u64,
    /// One request's limit.
    pub request_timeout_secs: u64,
    /// How long a message may wait in place for a retry before it goes back to the stream
    /// (longer waits would hold up other customers' messages on the same lane).
    pub wait_in_place_secs: u64,
    /// After this many deliveries from the stream, a message that still cannot be sent
    /// fails for good.
    pub max_deliveries: i64,
    /// Sends per second for one tenant, across channels and replicas.
    pub tenant_rate: RateSetting,
    /// Sends per second for one channel configuration (one bot, one number), by channel.
    pub channel_rates: BTreeMap<String, RateSetting>,
}

/// A rate as configured.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateSetting {
    pub per_second: f64,
    pub burst: u32,
}

impl From<RateSetting> for Rate {
    fn from(r: RateSetting) -> Rate {
        Rate { per_second: r.per_second, burst: r.burst }
    }
}

impl Default for SendersSection {
    fn default() -> Self {
        // The providers' published limits: Telegram about 30 messages a second per bot,
        // WhatsApp Cloud API 80 per number, a Twilio long code 1 (queued beyond by Twilio;
        // 10 keeps its queue short), Viber no public figure.
        let rate = |per_second, burst| RateSetting { per_second, burst };
        Self {
            enabled: true,
            telegram_api: "https://api.telegram.org".into(),
            whatsapp_api: "https://graph.facebook.com/v21.0".into(),
            viber_api: "https://chatapi.viber.com/pa".into(),
            twilio_api: "https://api.twilio.com".into(),
            public_media_url: String::new(),
            media_link_secs: 24 * 3600,
            request_timeout_secs: 15,
            wait_in_place_secs: 30,
            max_deliveries: 20,
            tenant_rate: rate(100.0, 200),
            channel_rates: BTreeMap::from([
                ("telegram".into(), rate(30.0, 30)),
                ("whatsapp".into(), rate(80.0, 80)),
                ("viber".into(), rate(50.0, 50)),
                ("sms".into(), rate(10.0, 10)),
            ]),
        }
    }
}

impl SendersSection {
    pub fn validate(&self) -> Result<(), String> {
        for (name, url) in [
            ("telegram_api", &self.telegram_api),
            ("whatsapp_api", &self.whatsapp_api),
            ("viber_api", &self.viber_api),
            ("twilio_api", &self.twilio_api),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.ends_with('/') {
                return Err(format!("senders.{name} must be an http(s) URL without a trailing slash"));
            }
        }
        if !self.public_media_url.is_empty()
            && (!(self.public_media_url.starts_with("https://") || self.public_media_url.starts_with("http://"))
                || self.public_media_url.ends_with('/'))
        {
            return Err("senders.public_media_url must be empty or an http(s) URL without a trailing slash".into());
        }
        if !(60..=7 * 24 * 3600).contains(&self.media_link_secs) {
            return Err("senders.media_link_secs must be 60 to 604800".into());
        }
        if !(1..=120).contains(&self.request_timeout_secs) {
            return Err("senders.request_timeout_secs must be 1 to 120".into());
        }
        if self.wait_in_place_secs > 120 {
            return Err("senders.wait_in_place_secs must be at most 120".into());
        }
        if !(1..=1000).contains(&self.max_deliveries) {
            return Err("senders.max_deliveries must be 1 to 1000".into());
        }
        let rates = std::iter::once(("tenant_rate", &self.tenant_rate))
            .chain(self.channel_rates.iter().map(|(k, v)| (k.as_str(), v)));
        for (name, r) in rates {
            if !(r.per_second > 0.0 && r.per_second <= 100_000.0) || r.burst == 0 {
                return Err(format!("senders rate {name}: per_second must be in (0, 100000] and burst at least 1"));
            }
        }
        for name in self.channel_rates.keys() {
            if name.parse::<Channel>().is_err() {
                return Err(format!("senders.channel_rates: unknown channel {name:?}"));
            }
        }
        Ok(())
    }

    /// How long the stream waits for an answer before redelivering: beyond any wait in
    /// place plus one request, so a message is never sent by two replicas at once.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.wait_in_place_secs + 2 * self.request_timeout_secs + 30)
    }
}

/// Everything a send needs.
pub struct Senders {
    pub settings: SendersSection,
    pub http: reqwest::Client,
    pub cache: Arc<ConfigCache>,
    pub redis: Coordinator,
    pub publisher: Publisher,
    /// Keys the thread tokens in email replies' Message-IDs.
    pub thread_key: Vec<u8>,
    /// Keys the links providers fetch reply files by.
    pub media_key: [u8; 32],
    /// Reply files (email attaches them).
    pub store: Arc<dyn MediaStore>,
}

/// Why a message cannot be sent at all.
struct Refused(String);

/// A send ready to go.
enum Plan {
    Http(Call),
    Email(Box<crate::email::EmailSend>),
}

/// A provider call ready to go: where, with which credentials.
struct Call {
    url: String,
    auth: Auth,
    request: OutboundRequest,
    classify: fn(&HttpResponse<'_>) -> SendOutcome,
}

enum Auth {
    None,
    Bearer(String),
    Header(&'static str, String),
    Basic(String, String),
}

/// The HTTP client of the senders: no redirects (a provider API never needs one, and
/// following one could lead anywhere), bounded time, TLS with the web's roots.
pub fn http_client(settings: &SendersSection) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(settings.request_timeout_secs))
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("parley/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

impl Senders {
    /// How to send a message on a channel configuration.
    async fn plan(&self, config: &v1::ChannelConfig, out: &Outgoing<'_>, m: &v1::Message) -> Result<Plan, Outcome> {
        use v1::channel_config::Settings;
        if let Some(Settings::Email(e)) = config.settings.as_ref() {
            let mut files = Vec::with_capacity(m.attachments.len());
            for a in &m.attachments {
                let id = AttachmentId::parse(&a.id).map_err(|e| Outcome::Term(format!("attachment id: {e}")))?;
                match self.store.get(&out.tenant, id).await {
                    Ok(Some((file, bytes))) => {
                        files.push(crate::email::File { name: file.file_name, mime: file.mime, bytes })
                    }
                    Ok(None) => return Err(Outcome::Term(format!("file {id} of the reply no longer exists"))),
                    Err(e) => {
                        tracing::warn!(error = %e, "media store unavailable; retrying");
                        return Err(Outcome::Retry(Duration::from_secs(5)));
                    }
                }
            }
            let reply = crate::email::Reply {
                conversation: out.conversation,
                message: out.message,
                to: &out.envelope.customer_address,
                subject: &m.subject,
                text: &m.text,
                references: &out.envelope.references,
                files: &files,
            };
            let timeout = Duration::from_secs(self.settings.request_timeout_secs);
            return crate::email::prepare(config, e, &reply, &self.thread_key, timeout)
                .map(|e| Plan::Email(Box::new(e)))
                .map_err(Outcome::Term);
        }
        self.call(config, out, m).map(Plan::Http).map_err(|Refused(why)| Outcome::Term(why))
    }

    /// The public link a provider fetches a reply's file by.
    fn link(&self, tenant: &TenantId, a: &v1::Attachment) -> Result<String, Refused> {
        let base = &self.settings.public_media_url;
        if base.is_empty() {
            return Err(Refused("no public media URL is configured (senders.public_media_url)".into()));
        }
        let expires = clock::now().as_millis() / 1000 + self.settings.media_link_secs as i64;
        Ok(parley_channels::media_link(base, &self.media_key, tenant.as_str(), &a.id, expires))
    }

    /// The provider call for a message on an HTTP channel configuration.
    fn call(&self, config: &v1::ChannelConfig, out: &Outgoing<'_>, m: &v1::Message) -> Result<Call, Refused> {
        let (to, text) = (out.envelope.customer_address.as_str(), m.text.as_str());
        let caption = (!text.trim().is_empty()).then_some(text);
        let links: Vec<String> = m.attachments.iter().map(|a| self.link(&out.tenant, a)).collect::<Result<_, _>>()?;
        let image = |a: &v1::Attachment| a.kind == v1::AttachmentKind::Image as i32;
        use v1::channel_config::Settings;
        let s = &self.settings;
        let missing = |what: &str| Refused(format!("channel configuration {} has no {what}", config.id));
        match config.settings.as_ref() {
            Some(Settings::Telegram(t)) => {
                if t.bot_token.is_empty() {
                    return Err(missing("bot token"));
                }
                let request = match (m.attachments.first(), links.first()) {
                    (Some(a), Some(link)) if image(a) => telegram::send_photo(to, link, caption, None),
                    (Some(_), Some(link)) => telegram::send_document(to, link, caption, None),
                    _ => telegram::send_message(to, text, None),
                };
                Ok(Call {
                    url: format!("{}/bot{}/{}", s.telegram_api, t.bot_token, request.path),
                    auth: Auth::None,
                    request,
                    classify: telegram::classify_response,
                })
            }
            Some(Settings::Whatsapp(w)) => {
                if w.access_token.is_empty() || w.phone_number_id.is_empty() {
                    return Err(missing("access token or phone number id"));
                }
                let request = match &m.template {
                    Some(t) => {
                        let parameters: Vec<&str> = t.body_parameters.iter().map(String::as_str).collect();
                        whatsapp::template_message(&w.phone_number_id, to, &t.name, &t.language, &parameters)
                    }
                    None => match (m.attachments.first(), links.first()) {
                        (Some(a), Some(link)) if image(a) => {
                            whatsapp::image_message(&w.phone_number_id, to, MediaSource::Link(link), caption, None)
                        }
                        (Some(a), Some(link)) => {
                            let name = (!a.file_name.is_empty()).then_some(a.file_name.as_str());
                            let source = MediaSource::Link(link);
                            whatsapp::document_message(&w.phone_number_id, to, source, name, caption, None)
                        }
                        _ => whatsapp::text_message(&w.phone_number_id, to, text, None),
                    },
                };
                Ok(Call {
                    url: format!("{}/{}", s.whatsapp_api, request.path),
                    auth: Auth::Bearer(w.access_token.clone()),
                    request,
                    classify: whatsapp::classify_response,
                })
            }
            Some(Settings::Viber(v)) => {
                if v.auth_token.is_empty() {
                    return Err(missing("auth token"));
                }
                let content = match (m.attachments.first(), links.first()) {
                    (Some(a), Some(url)) if image(a) => viber::ViberContent::Picture { url, caption: text },
                    (Some(a), Some(url)) => {
                        viber::ViberContent::File { url, size: a.size_bytes, file_name: &a.file_name }
                    }
                    _ => viber::ViberContent::Text(text),
                };
                let request = viber::send_message(to, &v.sender_name, content);
                Ok(Call {
                    url: format!("{}/{}", s.viber_api, request.path),
                    auth: Auth::Header("X-Viber-Auth-Token", v.auth_token.clone()),
                    request,
                    classify: viber::classify_response,
                })
            }
            Some(Settings::Sms(sms)) => {
                if sms.account_sid.is_empty() || sms.auth_token.is_empty() || sms.from_number.is_empty() {
                    return Err(missing("account sid, auth token or sending number"));
                }
                let media: Vec<&str> = links.iter().map(String::as_str).collect();
                let request = twilio::send_message(
                    &sms.account_sid,
                    to,
                    twilio::TwilioSender::From(&sms.from_number),
                    caption,
                    &media,
                    None,
                );
                Ok(Call {
                    url: format!("{}/{}", s.twilio_api, request.path),
                    auth: Auth::Basic(sms.account_sid.clone(), sms.auth_token.clone()),
                    request,
                    classify: twilio::classify_response,
                })
            }
            Some(Settings::Email(_)) | Some(Settings::Api(_)) | Some(Settings::Webchat(_)) | None => {
                Err(Refused(format!("channel configuration {} has no provider to send to", config.id)))
            }
        }
    }

    /// One attempt.
    async fn attempt(&self, plan: &Plan) -> SendOutcome {
        match plan {
            Plan::Http(call) => self.send_once(call).await,
            Plan::Email(email) => crate::email::send(email).await,
        }
    }

    /// One request to the provider; a transport failure is a transient one.
    async fn send_once(&self, call: &Call) -> SendOutcome {
        let mut request = self
            .http
            .post(&call.url)
            .header(http::header::CONTENT_TYPE, call.request.content_type)
            .body(call.request.body.clone());
        request = match &call.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Header(name, value) => request.header(*name, value),
            Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
        };
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after =
                    response.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
                match response.bytes().await {
                    Ok(body) => {
                        (call.classify)(&HttpResponse { status, body: &body, retry_after: retry_after.as_deref() })
                    }
                    Err(e) => {
                        tracing::warn!(status, error = %without_url(&e), "provider answer unreadable; retrying");
                        SendOutcome::Retry { after: None }
                    }
                }
            }
            Err(e) => {
                // The URL can carry a credential (Telegram's bot token): never log it.
                tracing::warn!(error = %without_url(&e), "provider unreachable; retrying");
                SendOutcome::Retry { after: None }
            }
        }
    }

    /// Reports a message's state on the inbound stream, for routing to record.
    async fn report(
        &self,
        out: &Outgoing<'_>,
        state: v1::DeliveryState,
        provider_message_id: &str,
        error: Option<(&str, &str)>,
    ) -> Result<(), String> {
        let now = convert::timestamp(clock::now());
        let receipt = events::DeliveryReceipt {
            tenant_id: out.tenant.to_string(),
            channel: convert::channel(out.channel) as i32,
            channel_config_id: out.envelope.channel_config_id.clone(),
            provider_message_id: provider_message_id.to_owned(),
            state: state as i32,
            error_code: error.map(|e| e.0.to_owned()).unwrap_or_default(),
            error_description: error.map(|e| e.1.to_owned()).unwrap_or_default(),
            recipient: out.envelope.customer_address.clone(),
            state_time: Some(now),
            receive_time: Some(now),
            conversation_id: out.conversation.to_string(),
            message_id: out.message.to_string(),
        };
        let envelope = events::InboundEnvelope { kind: Some(events::inbound_envelope::Kind::DeliveryReceipt(receipt)) };
        let dedupe = format!("sender:{}:{}", out.message, state.as_str_name());
        self.publisher
            .publish(
                topology::inbound_subject(&out.tenant, out.channel),
                &dedupe,
                &format!("receipt:{}", out.message),
                &envelope,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Fails a message for good: reported, then acknowledged.
    async fn fail(&self, out: &Outgoing<'_>, code: &str, description: &str, delivered: i64) -> Outcome {
        tracing::warn!(
            tenant = %out.tenant,
            message = %out.message,
            channel_config = %out.envelope.channel_config_id,
            code,
            description,
            "reply not delivered"
        );
        match self.report(out, v1::DeliveryState::Failed, "", Some((code, description))).await {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "cannot report a failed send; retrying");
                Outcome::Retry(backoff(delivered))
            }
        }
    }

    async fn deliver(&self, out: Outgoing<'_>, m: &v1::Message, delivered: i64) -> Outcome {
        match self.redis.sent_mark(&out.tenant, out.message).await {
            // Sent before: report again (the report may be what was lost) and acknowledge.
            Ok(Some(provider_id)) => {
                return match self.report(&out, v1::DeliveryState::Sent, &provider_id, None).await {
                    Ok(()) => Outcome::Ack,
                    Err(_) => Outcome::Retry(backoff(delivered)),
                };
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check whether a reply was sent; retrying");
                return Outcome::Retry(backoff(delivered));
            }
        }
        let Some(config) = self.cache.channel(&out.tenant, &out.envelope.channel_config_id) else {
            let why = format!("channel configuration {:?} does not exist", out.envelope.channel_config_id);
            return self.fail(&out, "channel_config_missing", &why, delivered).await;
        };
        if config.disabled {
            let why = format!("channel configuration {} is disabled", config.id);
            return self.fail(&out, "channel_disabled", &why, delivered).await;
        }
        let plan = match self.plan(&config, &out, m).await {
            Ok(p) => p,
            Err(Outcome::Term(why)) => return self.fail(&out, "cannot_send", &why, delivered).await,
            Err(other) => return other,
        };
        let tenant_rate = Rate::from(self.settings.tenant_rate);
        let channel_rate =
            self.settings.channel_rates.get(out.channel.as_str()).copied().map_or(tenant_rate, Rate::from);
        let budget = Instant::now() + Duration::from_secs(self.settings.wait_in_place_secs);
        let mut attempt: u32 = 0;
        loop {
            // A send slot first: shared by every replica.
            match self
                .redis
                .take_rate(&out.tenant, &config.id, tenant_rate, channel_rate, clock::now().as_millis())
                .await
            {
                Ok(None) => {}
                Ok(Some(wait)) => {
                    if Instant::now() + wait > budget {
                        return Outcome::Retry(wait);
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rate limiter unavailable; retrying");
                    return Outcome::Retry(backoff(delivered));
                }
            }
            attempt += 1;
            match self.attempt(&plan).await {
                SendOutcome::Sent { provider_message_id } => {
                    let id = provider_message_id.unwrap_or_default();
                    // Marked before anything else, so no later delivery sends it again.
                    let marked =
                        self.redis.mark_sent(&out.tenant, &config.id, out.conversation, out.message, Some(&id)).await;
                    if let Err(e) = marked {
                        tracing::error!(error = %e, message = %out.message, "sent, but cannot mark it sent");
                    }
                    tracing::info!(tenant = %out.tenant, message = %out.message, attempt, "reply sent");
                    return match self.report(&out, v1::DeliveryState::Sent, &id, None).await {
                        Ok(()) => Outcome::Ack,
                        Err(_) => Outcome::Retry(backoff(delivered)),
                    };
                }
                SendOutcome::Failed { code, description } => {
                    return self.fail(&out, &code, &description, delivered).await;
                }
                SendOutcome::Retry { after } => {
                    let wait = after.unwrap_or_else(|| retry_backoff(attempt));
                    if Instant::now() + wait > budget {
                        if delivered >= self.settings.max_deliveries {
                            let why = format!("the provider kept refusing for {delivered} deliveries");
                            return self.fail(&out, "gave_up", &why, delivered).await;
                        }
                        return Outcome::Retry(wait.max(backoff(delivered)));
                    }
                    tracing::info!(message = %out.message, attempt, wait_ms = wait.as_millis() as u64, "retrying a send");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// What is being sent.
struct Outgoing<'a> {
    tenant: TenantId,
    channel: Channel,
    conversation: ConversationId,
    message: MessageId,
    envelope: &'a events::OutboundEnvelope,
}

/// The wait before retry `attempt` (1-based) in place: 250 ms doubling, up to 8 s.
fn retry_backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.saturating_sub(1).min(5))).min(Duration::from_secs(8))
}

/// The wait before the stream redelivers: grows with the deliveries, up to 5 minutes.
fn backoff(delivered: i64) -> Duration {
    Duration::from_secs((2 * delivered.clamp(1, 150) as u64).min(300))
}

/// A request error without its URL, which can carry a credential (Telegram's bot token).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "unreadable answer"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Handler for Senders {
    async fn handle(&self, d: Delivery) -> Outcome {
        let envelope: events::OutboundEnvelope = match d.decode() {
            Ok(e) => e,
            Err(why) => return Outcome::Term(why),
        };
        // Only messages go out to providers; queue positions and the like are for the
        // channels that show them (the widget, the API streams).
        let Some(v1::CustomerUpdate { kind: Some(v1::customer_update::Kind::Message(m)) }) = &envelope.update else {
            return Outcome::Ack;
        };
        if m.sender_kind == v1::SenderKind::Customer as i32 {
            return Outcome::Ack;
        }
        let Ok(channel) = convert::from_channel("channel", envelope.channel) else {
            return Outcome::Term(format!("unknown channel {}", envelope.channel));
        };
        if matches!(channel, Channel::Api | Channel::WebChat) {
            return Outcome::Ack;
        }
        let (tenant, conversation, message) = match (
            TenantId::parse(&envelope.tenant_id),
            ConversationId::parse(&envelope.conversation_id),
            MessageId::parse(&m.id),
        ) {
            (Ok(t), Ok(c), Ok(m)) => (t, c, m),
            _ => return Outcome::Term("outbound message with an invalid tenant, conversation or message id".into()),
        };
        let out = Outgoing { tenant, channel, conversation, message, envelope: &envelope };
        self.deliver(out, m, d.delivered).await
    }
}
