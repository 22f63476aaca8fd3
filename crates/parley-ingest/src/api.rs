//! The API channel: `SubmitMessage` and `StreamCustomerUpdates`.

use futures_util::StreamExt;
use parley_domain::{Channel, CustomerId, MessageId, QueueId, Role, TenantId, check_text};
use parley_kit::auth::{principal, require};
use parley_kit::clock;
use parley_kit::error::{ApiError, ApiResult};
use parley_nats::{ConfigCache, Publisher, tail, topology};
use parley_proto::v1::api_channel_service_server::ApiChannelService;
use parley_proto::{convert, events, v1};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The gRPC service.
pub struct ApiChannel {
    pub cache: ConfigCache,
    pub publisher: Publisher,
    pub js: async_nats::jetstream::Context,
    pub token: CancellationToken,
}

const CALLERS: [Role; 2] = [Role::Integrator, Role::Admin];

fn check_customer_ref(value: &str) -> ApiResult<()> {
    if value.is_empty() || value.len() > 256 {
        return Err(ApiError::invalid("customer_ref must be 1 to 256 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid("customer_ref must not contain control characters"));
    }
    Ok(())
}

fn check_idempotency_key(value: &str) -> ApiResult<()> {
    if value.is_empty() {
        return Err(ApiError::invalid("idempotency_key is required (a key unique per message, reused on retries)"));
    }
    if value.len() > 128 || !value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ApiError::invalid("idempotency_key must be 1 to 128 printable ASCII characters without spaces"));
    }
    Ok(())
}

fn check_display_name(value: &str) -> ApiResult<()> {
    if value.chars().count() > 200 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "customer_display_name must be at most 200 characters without control characters",
        ));
    }
    Ok(())
}

impl ApiChannel {
    /// The tenant's enabled API channel (`api` unless another was configured).
    fn api_channel(&self, tenant: &TenantId) -> ApiResult<v1::ChannelConfig> {
        self.cache
            .with_tenant(tenant, |t| {
                let t = t?;
                let api = |c: &&v1::ChannelConfig| c.channel == v1::Channel::Api as i32 && !c.disabled;
                t.channels.get("api").filter(api).or_else(|| t.channels.values().find(api)).cloned()
            })
            .ok_or_else(|| ApiError::precondition(format!("tenant {tenant} has no enabled API channel")))
    }
}

#[tonic::async_trait]
impl ApiChannelService for ApiChannel {
    async fn submit_message(
        &self,
        request: Request<v1::SubmitMessageRequest>,
    ) -> Result<Response<v1::SubmitMessageResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &CALLERS)?;
        let r = request.into_inner();
        check_customer_ref(&r.customer_ref)?;
        check_display_name(&r.customer_display_name)?;
        check_text(&r.text).map_err(|e| ApiError::invalid(e.to_string()))?;
        check_idempotency_key(&r.idempotency_key)?;
        let quoted = convert::from_quoted(r.quoted.as_ref()).map_err(|e| ApiError::invalid(e.to_string()))?;
        if !r.queue_id.is_empty() {
            let q = QueueId::parse(&r.queue_id).map_err(|e| ApiError::invalid(format!("queue_id: {e}")))?;
            if self.cache.queue(&p.tenant, q.as_str()).is_none() {
                return Err(ApiError::not_found(format!("queue {q} not found")).into());
            }
        }
        let mut required_skills = Vec::with_capacity(r.required_skills.len());
        for s in &r.required_skills {
            let level =
                convert::from_skill_level("required_skills", s).map_err(|e| ApiError::invalid(e.to_string()))?;
            let known =
                self.cache.with_tenant(&p.tenant, |t| t.is_some_and(|t| t.skills.contains_key(level.skill.as_str())));
            if !known {
                return Err(ApiError::not_found(format!("skill {} not found", level.skill)).into());
            }
            required_skills.push(convert::skill_level(&level));
        }
        let iso_639_1 = r.language.len() == 2 && r.language.bytes().all(|b| b.is_ascii_lowercase());
        if !r.language.is_empty() && !iso_639_1 {
            return Err(ApiError::invalid("language must be a lowercase ISO 639-1 code, e.g. \"ru\"").into());
        }
        if r.fast_track_code.len() > 16 || r.fast_track_code.chars().any(|c| !c.is_ascii_alphanumeric()) {
            return Err(ApiError::invalid("fast_track_code must be up to 16 letters and digits").into());
        }
        let channel = self.api_channel(&p.tenant)?;
        let tenant = &p.tenant;
        let customer_id = CustomerId::derive(tenant, Channel::Api, &r.customer_ref);
        let message_id = MessageId::derive(tenant, "api", &r.idempotency_key);
        let now = clock::now();
        let message = events::CustomerMessage {
            message_id: message_id.to_string(),
            tenant_id: tenant.to_string(),
            channel: v1::Channel::Api as i32,
            channel_config_id: channel.id.clone(),
            customer_id: customer_id.to_string(),
            customer_address: r.customer_ref.clone(),
            customer_display_name: r.customer_display_name.clone(),
            text: r.text,
            quoted: quoted.as_ref().map(convert::quoted),
            queue_id: r.queue_id,
            channel_message_id: r.idempotency_key,
            receive_time: Some(convert::timestamp(now)),
            required_skills,
            language: r.language,
            fast_track_code: r.fast_track_code,
            subject: String::new(),
            attachments: Vec::new(),
            thread_conversation_id: String::new(),
            verified_phone: String::new(),
        };
        let envelope = events::InboundEnvelope { kind: Some(events::inbound_envelope::Kind::CustomerMessage(message)) };
        let subject = topology::inbound_subject(tenant, Channel::Api);
        let published = self
            .publisher
            .publish(subject, &message_id.to_string(), &customer_id.to_string(), &envelope)
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!("message not accepted ({e}); retry with the same idempotency key"))
            })?;
        tracing::debug!(message = %message_id, duplicate = published.duplicate, "customer message accepted");
        Ok(Response::new(v1::SubmitMessageResponse {
            message_id: message_id.to_string(),
            customer_id: customer_id.to_string(),
            duplicate: published.duplicate,
            accept_time: Some(convert::timestamp(now)),
        }))
    }

    type StreamCustomerUpdatesStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<v1::StreamCustomerUpdatesResponse, Status>> + Send>>;

    async fn stream_customer_updates(
        &self,
        request: Request<v1::StreamCustomerUpdatesRequest>,
    ) -> Result<Response<Self::StreamCustomerUpdatesStream>, Status> {
        let p = principal(&request)?;
        require(&p, &CALLERS)?;
        let r = request.into_inner();
        check_customer_ref(&r.customer_ref)?;
        let customer = CustomerId::derive(&p.tenant, Channel::Api, &r.customer_ref);
        let subject = topology::outbound_subject(&p.tenant, Channel::Api, customer);
        let feed = tail::follow(&self.js, topology::OUTBOUND, subject, r.after_sequence)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let token = self.token.clone();
        let stream = feed.messages.take_until(token.cancelled_owned()).filter_map(|item| async move {
            match item {
                Err(e) => Some(Err(Status::unavailable(format!("{e}; resume with the last sequence")))),
                Ok(d) => match d.decode::<events::OutboundEnvelope>() {
                    Ok(envelope) => Some(Ok(v1::StreamCustomerUpdatesResponse {
                        sequence: d.stream_sequence,
                        update: envelope.update,
                        conversation_id: envelope.conversation_id,
                        conversation_version: envelope.conversation_version,
                    })),
                    Err(why) => {
                        tracing::warn!(seq = d.stream_sequence, why, "skipping undecodable outbound message");
                        None
                    }
                },
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_printable_ascii() {
        assert!(check_idempotency_key("order-42:msg-1").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("has space").is_err());
        assert!(check_idempotency_key("ключ").is_err());
        assert!(check_idempotency_key(&"k".repeat(129)).is_err());
    }

    #[test]
    fn customer_refs_are_bounded() {
        assert!(check_customer_ref("crm:123").is_ok());
        assert!(check_customer_ref("").is_err());
        assert!(check_customer_ref("a\nb").is_err());
        assert!(check_customer_ref(&"x".repeat(257)).is_err());
    }
}
