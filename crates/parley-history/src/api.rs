//! The history gRPC API: conversations, their messages (keyset pages), customers, a
//! customer's timeline across channels and conversations, routing decisions, search,
//! transcripts, and a customer's erasure under legal holds. Every query runs under the
//! caller's tenant, so another tenant's id is simply not found.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parley_domain::{AttachmentId, AttachmentKind, Channel, DeliveryState, Role, Sender, TenantId, Timestamp};
use parley_kit::auth::{Principal, principal, require};
use parley_kit::clock;
use parley_kit::error::{ApiError, ApiResult};
use parley_nats::{MediaStore, Nats};
use parley_pg::{
    AuditEntry, ConversationFilter, ConversationRow, Cursor, Db, DbError, EraseRefusal, ErasureReceipt, LinkRefusal,
    MessageRow, NoteRow, RetentionPolicy, SearchFilter,
};
use parley_proto::v1::history_service_server::HistoryService;
use parley_proto::{convert, v1};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::transcript;
use crate::writer::{StoredCandidate, StoredRequirements};

/// The gRPC service.
pub struct HistoryApi {
    pub db: Db,
    /// For erasure: the conversation log and reply streams, and the attachments' files.
    pub nats: Nats,
    pub store: Arc<dyn MediaStore>,
}

const READERS: [Role; 4] = [Role::Operator, Role::Supervisor, Role::Admin, Role::Integrator];

fn db_error(e: DbError) -> ApiError {
    match e {
        DbError::Unavailable(m) => ApiError::Unavailable(m),
        DbError::Query(m) => ApiError::Internal(anyhow::anyhow!(m)),
    }
}

fn uuid(field: &str, value: &str) -> ApiResult<Uuid> {
    if value.len() != 36 {
        return Err(ApiError::invalid(format!("{field} must be a UUID in hyphenated form")));
    }
    Uuid::parse_str(value).map_err(|_| ApiError::invalid(format!("{field} must be a UUID in hyphenated form")))
}

fn receipt(r: ErasureReceipt) -> v1::ErasureReceipt {
    v1::ErasureReceipt {
        id: r.id.to_string(),
        customer_id: r.customer_id.to_string(),
        requested_by: r.requested_by,
        reason: r.reason,
        erase_time: Some(convert::timestamp(r.erased_at)),
        conversations: r.conversations as u32,
        messages: r.messages as u32,
        identities: r.identities as u32,
        attachments: r.attachments as u32,
        files: r.files as u32,
        log_records: r.log_records as u64,
    }
}

/// The longest retention, in days (a hundred years).
const MAX_RETENTION_DAYS: u32 = 36_500;

/// A policy's channel as stored: its name, or `*` for every channel.
fn policy_channel(value: i32) -> ApiResult<String> {
    match value {
        0 => Ok("*".to_owned()),
        c => Ok(convert::from_channel("channel", c).map_err(|e| ApiError::invalid(e.to_string()))?.as_str().to_owned()),
    }
}

fn retention_policy(p: RetentionPolicy) -> v1::RetentionPolicy {
    v1::RetentionPolicy {
        channel: if p.channel == "*" { 0 } else { channel_of(&p.channel) },
        days: p.days as u32,
        action: match p.action.as_str() {
            "delete" => v1::RetentionAction::Delete as i32,
            _ => v1::RetentionAction::Anonymise as i32,
        },
        set_by: p.set_by,
        update_time: Some(convert::timestamp(p.updated_at)),
    }
}

fn note_of(n: NoteRow) -> v1::ConversationNote {
    v1::ConversationNote {
        id: n.id.to_string(),
        author: n.author,
        text: n.body,
        create_time: Some(convert::timestamp(n.created_at)),
    }
}

fn csat_answer((score, comment, at): (i16, String, Timestamp)) -> v1::CsatAnswer {
    v1::CsatAnswer { score: score as u32, comment, answer_time: Some(convert::timestamp(at)) }
}

/// A reason as kept on a receipt or a hold: 1 to 500 characters on one line.
fn reason_text(reason: &str) -> ApiResult<String> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid("reason must be 1 to 500 characters on one line"));
    }
    Ok(reason.to_owned())
}

/// The most messages one transcript takes.
const MAX_TRANSCRIPT_MESSAGES: i64 = 20_000;

/// The longest search query taken, in characters.
const MAX_QUERY_CHARS: usize = 256;

/// A search request's filter, each field checked and named when wrong.
fn search_filter(r: &v1::SearchMessagesRequest) -> ApiResult<SearchFilter> {
    let query = r.query.trim();
    let fits = (!query.is_empty() || r.negative_only) && query.chars().count() <= MAX_QUERY_CHARS;
    if !fits || query.contains('\0') {
        return Err(ApiError::invalid(format!(
            "query must be 1 to {MAX_QUERY_CHARS} characters (or empty with negative_only)"
        )));
    }
    let sender = match r.sender_kind {
        0 => None,
        k => Some(
            convert::from_sender("sender_kind", k).map_err(|e| ApiError::invalid(e.to_string()))?.as_str().to_owned(),
        ),
    };
    let (from, to) = time_range(r.start_time.as_ref(), r.end_time.as_ref())?;
    Ok(SearchFilter {
        query: query.to_owned(),
        channel: channel_filter(r.channel)?,
        operator_id: operator_filter(&r.operator_id)?,
        sender,
        from,
        to,
        negative_only: r.negative_only,
    })
}

fn conversation_filter(r: &v1::ListConversationsRequest) -> ApiResult<ConversationFilter> {
    let status = match r.status {
        0 => None,
        s => Some(
            crate::writer::status_name(s)
                .ok_or_else(|| ApiError::invalid(format!("status {s} is unknown")))?
                .to_owned(),
        ),
    };
    let queue_id = match r.queue_id.as_str() {
        "" => None,
        id => Some(convert::queue_id("queue_id", id).map_err(|e| ApiError::invalid(e.to_string()))?.to_string()),
    };
    let (from, to) = time_range(r.start_time.as_ref(), r.end_time.as_ref())?;
    Ok(ConversationFilter {
        status,
        queue_id,
        operator_id: operator_filter(&r.operator_id)?,
        channel: channel_filter(r.channel)?,
        from,
        to,
    })
}

/// A channel filter: unspecified (0) filters nothing.
fn channel_filter(channel: i32) -> ApiResult<Option<String>> {
    match channel {
        0 => Ok(None),
        c => Ok(Some(
            convert::from_channel("channel", c).map_err(|e| ApiError::invalid(e.to_string()))?.as_str().to_owned(),
        )),
    }
}

/// An operator filter: empty filters nothing.
fn operator_filter(id: &str) -> ApiResult<Option<String>> {
    match id {
        "" => Ok(None),
        id => {
            Ok(Some(convert::operator_id("operator_id", id).map_err(|e| ApiError::invalid(e.to_string()))?.to_string()))
        }
    }
}

/// A time range, either end open; the start must come before the end.
fn time_range(
    start: Option<&parley_proto::Timestamp>,
    end: Option<&parley_proto::Timestamp>,
) -> ApiResult<(Option<parley_domain::Timestamp>, Option<parley_domain::Timestamp>)> {
    let from = start.map(|t| convert::from_timestamp(Some(t)));
    let to = end.map(|t| convert::from_timestamp(Some(t)));
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(ApiError::invalid("start_time must be before end_time"));
    }
    Ok((from, to))
}

fn page_size(requested: u32) -> ApiResult<i64> {
    match requested {
        0 => Ok(50),
        1..=500 => Ok(i64::from(requested)),
        _ => Err(ApiError::invalid(format!("page_size must be 0 (default 50) to 500, got {requested}"))),
    }
}

/// Cuts `rows` (read with one extra) to `limit`; returns the next page's token, empty when
/// the extra row shows none follows.
fn next_page<T>(rows: &mut Vec<T>, limit: i64, scope: &str, cursor: impl Fn(&T) -> Cursor) -> String {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    match (more, rows.last()) {
        (true, Some(last)) => encode_token(scope, cursor(last)),
        _ => String::new(),
    }
}

/// Encodes where the next page starts; `scope` ties the token to its listing.
fn encode_token(scope: &str, c: Cursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1|{scope}|{}|{}", c.at.as_micros(), c.id))
}

fn decode_token(scope: &str, token: &str) -> ApiResult<Option<Cursor>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || ApiError::invalid("page_token is invalid or belongs to another listing");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = text.split('|');
    let (Some("v1"), Some(s), Some(micros), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if s != scope {
        return Err(bad());
    }
    let at = micros.parse::<i64>().map_err(|_| bad())?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(Some(Cursor { at: Timestamp::from_micros(at), id }))
}

fn channel_of(name: &str) -> i32 {
    name.parse::<Channel>().map_or(v1::Channel::Unspecified as i32, |c| convert::channel(c) as i32)
}

fn status_of(name: &str) -> i32 {
    (match name {
        "queued" => v1::ConversationStatus::Queued,
        "offered" => v1::ConversationStatus::Offered,
        "assigned" => v1::ConversationStatus::Assigned,
        "closed" => v1::ConversationStatus::Closed,
        _ => v1::ConversationStatus::Unspecified,
    }) as i32
}

pub fn conversation(r: &ConversationRow) -> v1::Conversation {
    v1::Conversation {
        id: r.id.to_string(),
        customer_id: r.customer_id.to_string(),
        channel: channel_of(&r.channel),
        status: status_of(&r.status),
        queue_id: r.queue_id.clone(),
        operator_id: r.operator_id.clone().unwrap_or_default(),
        create_time: Some(convert::timestamp(r.created_at)),
        update_time: Some(convert::timestamp(r.updated_at)),
        close_time: r.closed_at.map(convert::timestamp),
        priority: r.priority,
    }
}

pub fn message(r: &MessageRow) -> v1::Message {
    let quoted = (r.quoted_message_id.is_some() || r.quoted_channel_message_id.is_some() || r.quoted_text.is_some())
        .then(|| v1::QuotedMessage {
            message_id: r.quoted_message_id.map(|u| u.to_string()).unwrap_or_default(),
            channel_message_id: r.quoted_channel_message_id.clone().unwrap_or_default(),
            text: r.quoted_text.clone().unwrap_or_default(),
        });
    v1::Message {
        id: r.id.to_string(),
        conversation_id: r.conversation_id.to_string(),
        customer_id: r.customer_id.to_string(),
        channel: channel_of(&r.channel),
        sender_kind: Sender::parse(&r.sender).map_or(v1::SenderKind::Unspecified as i32, |s| convert::sender(s) as i32),
        operator_id: r.operator_id.clone().unwrap_or_default(),
        text: r.body.clone(),
        quoted,
        delivery_state: DeliveryState::parse(&r.delivery_state)
            .map_or(v1::DeliveryState::Unspecified as i32, |d| convert::delivery_state(d) as i32),
        create_time: Some(convert::timestamp(r.created_at)),
        channel_message_id: r.channel_message_id.clone(),
        subject: r.subject.clone(),
        attachments: r
            .attachments
            .iter()
            .map(|a| v1::Attachment {
                id: a.id.to_string(),
                kind: AttachmentKind::parse(&a.kind)
                    .map_or(v1::AttachmentKind::Unspecified as i32, |k| convert::attachment_kind(k) as i32),
                mime_type: a.mime_type.clone(),
                file_name: a.file_name.clone(),
                size_bytes: u64::try_from(a.size_bytes).unwrap_or(0),
            })
            .collect(),
        template: None,
    }
}

impl HistoryApi {
    /// Records who called what about which target, before the call answers.
    async fn audit(&self, p: &Principal, action: &str, target: String, detail: &str) -> ApiResult<()> {
        let entry = AuditEntry {
            id: Uuid::now_v7(),
            at: clock::now(),
            actor: p.subject.clone(),
            role: p.role.as_str().to_owned(),
            action: action.to_owned(),
            target,
            detail: detail.chars().take(500).collect(),
        };
        self.db.audit(&p.tenant, entry).await.map_err(db_error)
    }

    /// A customer with every identity of their person and who they are linked with.
    async fn customer_record(&self, tenant: &TenantId, id: Uuid) -> ApiResult<v1::Customer> {
        let c = self
            .db
            .customer(tenant, id)
            .await
            .map_err(db_error)?
            .ok_or_else(|| ApiError::not_found(format!("customer {id} not found")))?;
        Ok(v1::Customer {
            id: c.id.to_string(),
            display_name: c.display_name,
            identities: c
                .identities
                .into_iter()
                .map(|(channel, address, seen)| v1::ChannelIdentity {
                    channel: channel_of(&channel),
                    address,
                    first_seen_time: Some(convert::timestamp(seen)),
                })
                .collect(),
            create_time: Some(convert::timestamp(c.created_at)),
            linked: c
                .linked
                .into_iter()
                .map(|(customer, reason)| v1::LinkedCustomer { customer_id: customer.to_string(), reason })
                .collect(),
        })
    }

    async fn existing_conversation(&self, tenant: &TenantId, id: Uuid) -> ApiResult<(ConversationRow, i64)> {
        self.db
            .conversation(tenant, id)
            .await
            .map_err(db_error)?
            .ok_or_else(|| ApiError::not_found(format!("conversation {id} not found")))
    }
}

#[tonic::async_trait]
impl HistoryService for HistoryApi {
    async fn get_conversation(
        &self,
        request: Request<v1::GetConversationRequest>,
    ) -> Result<Response<v1::GetConversationResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let id = uuid("conversation_id", &request.get_ref().conversation_id)?;
        self.audit(&p, "get_conversation", id.to_string(), "").await?;
        let (row, count) = self.existing_conversation(&p.tenant, id).await?;
        let csat = self.db.csat(&p.tenant, id).await.map_err(db_error)?.map(csat_answer);
        Ok(Response::new(v1::GetConversationResponse {
            conversation: Some(conversation(&row)),
            message_count: u32::try_from(count).unwrap_or(u32::MAX),
            csat,
        }))
    }

    async fn list_conversations(
        &self,
        request: Request<v1::ListConversationsRequest>,
    ) -> Result<Response<v1::ListConversationsResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let r = request.into_inner();
        let filter = conversation_filter(&r)?;
        self.audit(&p, "list_conversations", "conversations".into(), "").await?;
        let limit = page_size(r.page_size)?;
        // The token holds to the same filters only.
        let scope = format!("c:{}", parley_domain::EventId::derive(&[&format!("{filter:?}")]));
        let before = decode_token(&scope, &r.page_token)?;
        let mut rows = self.db.list_conversations(&p.tenant, filter, before, limit + 1).await.map_err(db_error)?;
        let next_page_token = next_page(&mut rows, limit, &scope, |m| Cursor { at: m.created_at, id: m.id });
        Ok(Response::new(v1::ListConversationsResponse {
            conversations: rows.iter().map(conversation).collect(),
            next_page_token,
        }))
    }

    async fn list_messages(
        &self,
        request: Request<v1::ListMessagesRequest>,
    ) -> Result<Response<v1::ListMessagesResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let r = request.into_inner();
        let id = uuid("conversation_id", &r.conversation_id)?;
        self.audit(&p, "list_messages", id.to_string(), "").await?;
        let limit = page_size(r.page_size)?;
        let newest_first = match v1::SortOrder::try_from(r.order) {
            Ok(v1::SortOrder::Unspecified) | Ok(v1::SortOrder::OldestFirst) => false,
            Ok(v1::SortOrder::NewestFirst) => true,
            Err(_) => return Err(ApiError::invalid(format!("order {} is unknown", r.order)).into()),
        };
        let scope = format!("m:{id}:{}", if newest_first { "desc" } else { "asc" });
        let after = decode_token(&scope, &r.page_token)?;
        self.existing_conversation(&p.tenant, id).await?;
        // One extra row tells whether another page follows.
        let mut rows = self.db.messages(&p.tenant, id, after, limit + 1, newest_first).await.map_err(db_error)?;
        let next_page_token = next_page(&mut rows, limit, &scope, |m| Cursor { at: m.created_at, id: m.id });
        Ok(Response::new(v1::ListMessagesResponse { messages: rows.iter().map(message).collect(), next_page_token }))
    }

    async fn get_customer(
        &self,
        request: Request<v1::GetCustomerRequest>,
    ) -> Result<Response<v1::GetCustomerResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let id = uuid("customer_id", &request.get_ref().customer_id)?;
        self.audit(&p, "get_customer", id.to_string(), "").await?;
        Ok(Response::new(v1::GetCustomerResponse { customer: Some(self.customer_record(&p.tenant, id).await?) }))
    }

    async fn link_customers(
        &self,
        request: Request<v1::LinkCustomersRequest>,
    ) -> Result<Response<v1::LinkCustomersResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin])?;
        let r = request.into_inner();
        let id = uuid("customer_id", &r.customer_id)?;
        self.audit(&p, "link_customers", id.to_string(), &r.into_customer_id).await?;
        let into = uuid("into_customer_id", &r.into_customer_id)?;
        if id == into {
            return Err(ApiError::invalid("into_customer_id must be another customer").into());
        }
        self.db
            .link_customers(&p.tenant, id, into, p.subject.clone(), clock::now())
            .await
            .map_err(db_error)?
            .map_err(|LinkRefusal::NotFound(c)| ApiError::not_found(format!("customer {c} not found")))?;
        tracing::info!(tenant = %p.tenant, customer = %id, into = %into, by = %p.subject, "customers linked");
        Ok(Response::new(v1::LinkCustomersResponse { customer: Some(self.customer_record(&p.tenant, id).await?) }))
    }

    async fn unlink_customer(
        &self,
        request: Request<v1::UnlinkCustomerRequest>,
    ) -> Result<Response<v1::UnlinkCustomerResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin])?;
        let id = uuid("customer_id", &request.get_ref().customer_id)?;
        self.audit(&p, "unlink_customer", id.to_string(), "").await?;
        self.db
            .unlink_customer(&p.tenant, id, p.subject.clone(), clock::now())
            .await
            .map_err(db_error)?
            .map_err(|LinkRefusal::NotFound(c)| ApiError::not_found(format!("customer {c} not found")))?;
        tracing::info!(tenant = %p.tenant, customer = %id, by = %p.subject, "customer unlinked");
        Ok(Response::new(v1::UnlinkCustomerResponse { customer: Some(self.customer_record(&p.tenant, id).await?) }))
    }

    async fn get_customer_timeline(
        &self,
        request: Request<v1::GetCustomerTimelineRequest>,
    ) -> Result<Response<v1::GetCustomerTimelineResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let r = request.into_inner();
        let id = uuid("customer_id", &r.customer_id)?;
        self.audit(&p, "get_customer_timeline", id.to_string(), "").await?;
        let limit = page_size(r.page_size)?;
        let scope = format!("t:{id}");
        let before = decode_token(&scope, &r.page_token)?;
        if self.db.customer(&p.tenant, id).await.map_err(db_error)?.is_none() {
            return Err(ApiError::not_found(format!("customer {id} not found")).into());
        }
        let mut rows = self.db.timeline(&p.tenant, id, before, limit + 1).await.map_err(db_error)?;
        let next_page_token = next_page(&mut rows, limit, &scope, |m| Cursor { at: m.created_at, id: m.id });
        let mut ids: Vec<Uuid> = rows.iter().map(|m| m.conversation_id).collect();
        ids.sort();
        ids.dedup();
        let conversations = self.db.conversations(&p.tenant, ids).await.map_err(db_error)?;
        Ok(Response::new(v1::GetCustomerTimelineResponse {
            messages: rows.iter().map(message).collect(),
            conversations: conversations.iter().map(conversation).collect(),
            next_page_token,
        }))
    }

    async fn search_messages(
        &self,
        request: Request<v1::SearchMessagesRequest>,
    ) -> Result<Response<v1::SearchMessagesResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let r = request.into_inner();
        let filter = search_filter(&r)?;
        self.audit(&p, "search_messages", "search".into(), &filter.query).await?;
        let limit = page_size(r.page_size)?;
        // The token holds to the same search only.
        let scope = format!("s:{}", parley_domain::EventId::derive(&[&format!("{filter:?}")]));
        let before = decode_token(&scope, &r.page_token)?;
        let mut rows = self.db.search(&p.tenant, filter, before, limit + 1).await.map_err(db_error)?;
        let next_page_token =
            next_page(&mut rows, limit, &scope, |h| Cursor { at: h.message.created_at, id: h.message.id });
        let hits = rows
            .iter()
            .map(|h| v1::SearchHit {
                message: Some(message(&h.message)),
                highlight: h.headline.clone(),
                negative: h.negative,
            })
            .collect();
        Ok(Response::new(v1::SearchMessagesResponse { hits, next_page_token }))
    }

    async fn export_transcript(
        &self,
        request: Request<v1::ExportTranscriptRequest>,
    ) -> Result<Response<v1::ExportTranscriptResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let r = request.into_inner();
        let id = uuid("conversation_id", &r.conversation_id)?;
        self.audit(&p, "export_transcript", id.to_string(), "").await?;
        let format = match v1::TranscriptFormat::try_from(r.format) {
            Ok(v1::TranscriptFormat::Unspecified | v1::TranscriptFormat::Text) => transcript::Format::Text,
            Ok(v1::TranscriptFormat::Json) => transcript::Format::Json,
            Err(_) => return Err(ApiError::invalid(format!("format {} is unknown", r.format)).into()),
        };
        let time_zone = match r.time_zone.as_str() {
            "" => jiff::tz::TimeZone::UTC,
            name => jiff::tz::TimeZone::get(name)
                .map_err(|_| ApiError::invalid(format!("time_zone {name:?} is not an IANA time zone")))?,
        };
        let language = match r.language.as_str() {
            "" | "en" => transcript::Language::En,
            "ru" => transcript::Language::Ru,
            other => return Err(ApiError::invalid(format!("language {other:?} is not \"ru\" or \"en\"")).into()),
        };
        let (conversation, count) = self.existing_conversation(&p.tenant, id).await?;
        if count > MAX_TRANSCRIPT_MESSAGES {
            return Err(ApiError::precondition(format!(
                "the conversation has {count} messages, more than the {MAX_TRANSCRIPT_MESSAGES} a transcript takes"
            ))
            .into());
        }
        let mut messages = Vec::new();
        let mut after = None;
        loop {
            let page = self.db.messages(&p.tenant, id, after, 500, false).await.map_err(db_error)?;
            let full = page.len() == 500;
            after = page.last().map(|m| Cursor { at: m.created_at, id: m.id });
            messages.extend(page);
            if !full {
                break;
            }
        }
        let customer = self.db.customer(&p.tenant, conversation.customer_id).await.map_err(db_error)?;
        let customer_name = customer.map(|c| c.display_name).unwrap_or_default();
        let document = transcript::Transcript {
            conversation: &conversation,
            customer_name: &customer_name,
            messages: &messages,
            time_zone: &time_zone,
            language,
        };
        let (content_type, content) = document.render(format);
        let extension = if format == transcript::Format::Json { "json" } else { "txt" };
        Ok(Response::new(v1::ExportTranscriptResponse {
            content_type: content_type.to_owned(),
            content,
            file_name: format!("transcript-{id}.{extension}"),
        }))
    }

    async fn erase_customer(
        &self,
        request: Request<v1::EraseCustomerRequest>,
    ) -> Result<Response<v1::EraseCustomerResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Admin])?;
        let r = request.into_inner();
        let customer = uuid("customer_id", &r.customer_id)?;
        let reason = reason_text(&r.reason)?;
        self.audit(&p, "erase_customer", customer.to_string(), &reason).await?;
        let erased = self
            .db
            .erase_customer(&p.tenant, customer, p.subject.clone(), reason, clock::now())
            .await
            .map_err(db_error)?
            .map_err(|refusal| match refusal {
                EraseRefusal::NotFound => ApiError::not_found(format!("customer {customer} not found")),
                EraseRefusal::Held(why) => {
                    ApiError::precondition(format!("customer {customer} is under a legal hold ({why}); lift it first"))
                }
                EraseRefusal::Open(ids) => ApiError::precondition(format!(
                    "customer {customer} has {} open conversation(s) ({}); close them first",
                    ids.len(),
                    ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ")
                )),
            })?;
        // The rows are gone; now what lives outside the database. Each step is idempotent:
        // a failure is reported, and erasing again (the customer is gone: NOT_FOUND) is not
        // needed for the database, so the files and records are removed here in full or the
        // call fails for the caller to retry through support.
        let tenant = &p.tenant;
        let mut files = 0;
        for id in &erased.attachments {
            let id = AttachmentId::from_uuid(*id);
            self.store.delete(tenant, id).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
            files += 1;
        }
        let log_records = crate::erasure::purge_streams(&self.nats, tenant, customer, &erased)
            .await
            .map_err(|e| ApiError::Unavailable(format!("the records on the streams: {e}")))?;
        self.db.complete_receipt(tenant, erased.receipt_id, files, log_records as i64).await.map_err(db_error)?;
        tracing::info!(%tenant, %customer, receipt = %erased.receipt_id, by = %p.subject, "customer erased");
        let stored = ErasureReceipt {
            id: erased.receipt_id,
            customer_id: customer,
            requested_by: p.subject.clone(),
            reason: r.reason.trim().to_owned(),
            erased_at: erased.erased_at,
            conversations: erased.conversations.len() as i32,
            messages: erased.messages,
            identities: erased.identities,
            attachments: erased.attachments.len() as i32,
            files,
            log_records: log_records as i64,
        };
        Ok(Response::new(v1::EraseCustomerResponse { receipt: Some(receipt(stored)) }))
    }

    async fn set_legal_hold(
        &self,
        request: Request<v1::SetLegalHoldRequest>,
    ) -> Result<Response<v1::SetLegalHoldResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Admin])?;
        let r = request.into_inner();
        let customer = uuid("customer_id", &r.customer_id)?;
        self.audit(&p, "set_legal_hold", customer.to_string(), if r.hold { "hold" } else { "lift" }).await?;
        let hold = match r.hold {
            true => Some((reason_text(&r.reason)?, p.subject.clone())),
            false => None,
        };
        let known = self.db.set_legal_hold(&p.tenant, customer, hold, clock::now()).await.map_err(db_error)?;
        if !known {
            return Err(ApiError::not_found(format!("customer {customer} not found")).into());
        }
        tracing::info!(tenant = %p.tenant, %customer, hold = r.hold, by = %p.subject, "legal hold changed");
        Ok(Response::new(v1::SetLegalHoldResponse { hold: r.hold }))
    }

    async fn list_erasure_receipts(
        &self,
        request: Request<v1::ListErasureReceiptsRequest>,
    ) -> Result<Response<v1::ListErasureReceiptsResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Admin, Role::Supervisor])?;
        let customer = uuid("customer_id", &request.get_ref().customer_id)?;
        self.audit(&p, "list_erasure_receipts", customer.to_string(), "").await?;
        let receipts = self.db.erasure_receipts(&p.tenant, customer).await.map_err(db_error)?;
        Ok(Response::new(v1::ListErasureReceiptsResponse { receipts: receipts.into_iter().map(receipt).collect() }))
    }

    async fn set_retention_policy(
        &self,
        request: Request<v1::SetRetentionPolicyRequest>,
    ) -> Result<Response<v1::SetRetentionPolicyResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Admin])?;
        let policy = request.into_inner().policy.ok_or_else(|| ApiError::invalid("policy is required"))?;
        let channel = policy_channel(policy.channel)?;
        if policy.days > MAX_RETENTION_DAYS {
            return Err(ApiError::invalid(format!("policy.days must be at most {MAX_RETENTION_DAYS}")).into());
        }
        let action = match v1::RetentionAction::try_from(policy.action) {
            Ok(v1::RetentionAction::Delete) => "delete",
            Ok(v1::RetentionAction::Anonymise) => "anonymise",
            _ => return Err(ApiError::invalid("policy.action must be DELETE or ANONYMISE").into()),
        };
        let stored = RetentionPolicy {
            channel,
            days: policy.days as i32,
            action: action.to_owned(),
            set_by: p.subject.clone(),
            updated_at: clock::now(),
        };
        let detail = format!("{} {} days", stored.action, stored.days);
        self.audit(&p, "set_retention_policy", stored.channel.clone(), &detail).await?;
        self.db.set_retention_policy(&p.tenant, stored.clone()).await.map_err(db_error)?;
        tracing::info!(tenant = %p.tenant, channel = %stored.channel, days = stored.days, action, by = %p.subject, "retention policy set");
        Ok(Response::new(v1::SetRetentionPolicyResponse { policy: Some(retention_policy(stored)) }))
    }

    async fn list_retention_policies(
        &self,
        request: Request<v1::ListRetentionPoliciesRequest>,
    ) -> Result<Response<v1::ListRetentionPoliciesResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Admin, Role::Supervisor])?;
        let policies = self.db.retention_policies(&p.tenant).await.map_err(db_error)?;
        Ok(Response::new(v1::ListRetentionPoliciesResponse {
            policies: policies.into_iter().map(retention_policy).collect(),
        }))
    }

    async fn delete_retention_policy(
        &self,
        request: Request<v1::DeleteRetentionPolicyRequest>,
    ) -> Result<Response<v1::DeleteRetentionPolicyResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Admin])?;
        let channel = policy_channel(request.get_ref().channel)?;
        self.audit(&p, "delete_retention_policy", channel.clone(), "").await?;
        if !self.db.delete_retention_policy(&p.tenant, channel.clone()).await.map_err(db_error)? {
            return Err(ApiError::not_found(format!("no retention policy for {channel}")).into());
        }
        Ok(Response::new(v1::DeleteRetentionPolicyResponse {}))
    }

    async fn list_audit_entries(
        &self,
        request: Request<v1::ListAuditEntriesRequest>,
    ) -> Result<Response<v1::ListAuditEntriesResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Admin, Role::Supervisor])?;
        let r = request.into_inner();
        let limit = page_size(r.page_size)?;
        if r.target.len() > 100 || r.actor.len() > 100 {
            return Err(ApiError::invalid("target and actor must be at most 100 bytes").into());
        }
        let entries = self.db.audit_entries(&p.tenant, r.target, r.actor, limit).await.map_err(db_error)?;
        Ok(Response::new(v1::ListAuditEntriesResponse {
            entries: entries
                .into_iter()
                .map(|e| v1::AuditEntry {
                    time: Some(convert::timestamp(e.at)),
                    actor: e.actor,
                    role: e.role,
                    action: e.action,
                    target: e.target,
                    detail: e.detail,
                })
                .collect(),
        }))
    }

    async fn add_conversation_note(
        &self,
        request: Request<v1::AddConversationNoteRequest>,
    ) -> Result<Response<v1::AddConversationNoteResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin])?;
        let r = request.into_inner();
        let id = uuid("conversation_id", &r.conversation_id)?;
        parley_domain::check_text(&r.text).map_err(|e| ApiError::invalid(format!("text: {e}")))?;
        self.audit(&p, "add_conversation_note", id.to_string(), "").await?;
        let note = NoteRow { id: Uuid::now_v7(), author: p.subject.clone(), body: r.text, created_at: clock::now() };
        if !self.db.add_note(&p.tenant, id, note.clone()).await.map_err(db_error)? {
            return Err(ApiError::not_found(format!("conversation {id} not found")).into());
        }
        Ok(Response::new(v1::AddConversationNoteResponse { note: Some(note_of(note)) }))
    }

    async fn list_conversation_notes(
        &self,
        request: Request<v1::ListConversationNotesRequest>,
    ) -> Result<Response<v1::ListConversationNotesResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &READERS)?;
        let id = uuid("conversation_id", &request.get_ref().conversation_id)?;
        self.audit(&p, "list_conversation_notes", id.to_string(), "").await?;
        self.existing_conversation(&p.tenant, id).await?;
        let notes = self.db.notes(&p.tenant, id).await.map_err(db_error)?;
        Ok(Response::new(v1::ListConversationNotesResponse { notes: notes.into_iter().map(note_of).collect() }))
    }

    async fn record_csat(
        &self,
        request: Request<v1::RecordCsatRequest>,
    ) -> Result<Response<v1::RecordCsatResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Integrator, Role::Admin])?;
        let r = request.into_inner();
        let id = uuid("conversation_id", &r.conversation_id)?;
        if !(1..=5).contains(&r.score) {
            return Err(ApiError::invalid(format!("score must be 1 to 5, got {}", r.score)).into());
        }
        let comment = r.comment.trim().to_owned();
        if comment.chars().count() > 2000 || comment.contains('\0') {
            return Err(ApiError::invalid("comment must be at most 2000 characters").into());
        }
        self.audit(&p, "record_csat", id.to_string(), "").await?;
        let now = clock::now();
        if !self.db.record_csat(&p.tenant, id, r.score as i16, comment.clone(), now).await.map_err(db_error)? {
            return match self.existing_conversation(&p.tenant, id).await {
                Ok(_) => Err(ApiError::precondition(format!("conversation {id} is not closed yet")).into()),
                Err(e) => Err(e.into()),
            };
        }
        Ok(Response::new(v1::RecordCsatResponse { csat: Some(csat_answer((r.score as i16, comment, now))) }))
    }

    async fn list_routing_decisions(
        &self,
        request: Request<v1::ListRoutingDecisionsRequest>,
    ) -> Result<Response<v1::ListRoutingDecisionsResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Supervisor, Role::Admin, Role::Integrator])?;
        let id = uuid("conversation_id", &request.get_ref().conversation_id)?;
        self.audit(&p, "list_routing_decisions", id.to_string(), "").await?;
        self.existing_conversation(&p.tenant, id).await?;
        let rows = self.db.decisions(&p.tenant, id).await.map_err(db_error)?;
        let decisions = rows
            .into_iter()
            .map(|d| {
                let candidates: Vec<StoredCandidate> = serde_json::from_str(&d.candidates_json).unwrap_or_default();
                let requirements: StoredRequirements = serde_json::from_str(&d.requirements_json).unwrap_or_default();
                v1::RoutingDecision {
                    id: d.id.to_string(),
                    conversation_id: d.conversation_id.to_string(),
                    queue_id: d.queue_id,
                    chosen_operator_id: d.chosen_operator_id.unwrap_or_default(),
                    reason: d.reason,
                    candidates: candidates
                        .into_iter()
                        .map(|c| v1::RoutingCandidate {
                            operator_id: c.operator_id,
                            excluded_because: c.excluded_because,
                            load: c.load,
                            capacity: c.capacity,
                            weighted_load: c.weighted_load,
                            score: c.score.unwrap_or(f64::INFINITY),
                        })
                        .collect(),
                    decide_time: Some(convert::timestamp(d.decided_at)),
                    strategy: d.strategy,
                    tie_breaker: d.tie_breaker,
                    required_skills: requirements
                        .skills
                        .into_iter()
                        .map(|(skill, proficiency)| v1::SkillLevel { skill, proficiency })
                        .collect(),
                    language: requirements.language,
                }
            })
            .collect();
        Ok(Response::new(v1::ListRoutingDecisionsResponse { decisions }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_other_listings() {
        let c = Cursor { at: Timestamp::from_micros(1_700_000_000_123_456), id: Uuid::from_u128(42) };
        let t = encode_token("m:x:asc", c);
        assert_eq!(decode_token("m:x:asc", &t).unwrap(), Some(c));
        assert!(decode_token("m:x:desc", &t).is_err());
        assert!(decode_token("m:x:asc", "not-base64!").is_err());
        assert!(decode_token("m:x:asc", &URL_SAFE_NO_PAD.encode("v1|m:x:asc|abc|def")).is_err());
        assert_eq!(decode_token("m:x:asc", "").unwrap(), None);
    }

    #[test]
    fn page_size_bounds() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(500).unwrap(), 500);
        assert!(page_size(501).is_err());
    }
}
