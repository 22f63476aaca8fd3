//! One operator desk session: the `OpenSession` bidirectional stream.
//!
//! Down: `welcome`, then every event of the operator's subject in `PARLEY_DESK` after the
//! resume point, each with its stream sequence (a reconnecting desk passes the last one it
//! saw and misses nothing, repeats nothing). Up: replies (checked against the conversation's
//! current owner, then published to `PARLEY_OUTBOUND` with an id derived from the desk's
//! own id, so a resend never reaches the customer twice), typing and `read` (passed on to a
//! web chat visitor), acknowledgements and heartbeats, each of which keeps the session —
//! and so the operator's presence — alive. A team session (`hello.team`, supervisors)
//! carries the tenant's presence changes instead and takes only heartbeats.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use parley_channels::segments::{self, SegmentCount, SmsEncoding};
use parley_channels::whatsapp;
use parley_domain::Status as ConversationStatus;
use parley_domain::{
    AttachmentKind, Channel, ConversationId, MAX_ATTACHMENTS, MessageId, OperatorId, Role, Sender, TenantId,
    check_text, parse_attachment_ids,
};
use parley_kit::auth::{Principal, principal, require};
use parley_kit::clock;
use parley_kit::error::ApiError;
use parley_kit::telemetry::code_name;
use parley_nats::hub::Resume;
use parley_nats::{ConversationLog, MediaStore, Publisher, Stored, TeamPresence, tail, topology};
use parley_proto::v1::operator_session_service_server::OperatorSessionService;
use parley_proto::v1::{open_session_request, open_session_response};
use parley_proto::{convert, events, v1};
use parley_redis::Coordinator;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Where an email reply belongs: the customer's messages it answers and its subject.
struct EmailThread {
    /// Message-IDs of the customer's recent mails, oldest first.
    references: Vec<String>,
    subject: String,
}

impl EmailThread {
    fn of(c: &parley_domain::Conversation) -> Self {
        let customer = || c.recent_messages.iter().filter(|m| m.sender == Sender::Customer);
        let references = customer().map(|m| m.channel_message_id.clone()).filter(|id| !id.is_empty()).collect();
        let last = customer().rev().map(|m| m.subject.trim()).find(|s| !s.is_empty()).unwrap_or_default();
        // One "Re:" however deep the thread is.
        let mut base = last;
        while let Some(rest) = base.get(..3).filter(|p| p.eq_ignore_ascii_case("re:")).map(|_| base[3..].trim_start()) {
            base = rest;
        }
        let subject = if base.is_empty() { String::new() } else { format!("Re: {base}") };
        EmailThread { references, subject: subject.chars().take(convert::MAX_SUBJECT_CHARS).collect() }
    }
}

/// An update for a conversation's customer, on its channel.
fn outbound(c: &parley_domain::Conversation, kind: v1::customer_update::Kind) -> events::OutboundEnvelope {
    events::OutboundEnvelope {
        tenant_id: c.tenant.to_string(),
        channel: convert::channel(c.channel) as i32,
        channel_config_id: c.channel_config.to_string(),
        customer_id: c.customer.id.to_string(),
        customer_address: c.customer.address.clone(),
        conversation_id: c.id.to_string(),
        update: Some(v1::CustomerUpdate { kind: Some(kind) }),
        references: Vec::new(),
        conversation_version: 0,
    }
}

/// Who a session is for.
struct Desk {
    tenant: TenantId,
    /// The operator whose events it carries; `None` for a team session.
    operator: Option<OperatorId>,
    session: String,
    /// The token's subject (the operator, or the supervisor of a team session).
    subject: String,
}

/// A desk's typing is passed on at most this often per conversation.
const TYPING_EVERY: Duration = Duration::from_secs(2);

/// Shared by every session of a replica.
pub struct Sessions {
    /// The replica's live feed of every desk subject.
    pub hub: Arc<parley_nats::hub::Hub>,
    pub log: ConversationLog,
    pub publisher: Publisher,
    pub redis: Coordinator,
    pub heartbeat: Duration,
    pub session_ttl: Duration,
    pub token: CancellationToken,
    /// Where reply files are (uploaded through ingest).
    pub store: Arc<dyn MediaStore>,
    /// Whether providers can be given links to reply files (`senders.public_media_url` set).
    pub media_links: bool,
}

/// What a session sends the desk: a frame, or the error that ends the session.
pub type Frame = Result<v1::OpenSessionResponse, Status>;

/// The gRPC service over the shared session state.
pub struct SessionApi(pub Arc<Sessions>);

fn frame(f: open_session_response::Frame) -> Frame {
    Ok(v1::OpenSessionResponse { frame: Some(f) })
}

#[tonic::async_trait]
impl OperatorSessionService for SessionApi {
    type OpenSessionStream = tokio_stream::wrappers::ReceiverStream<Frame>;

    async fn open_session(
        &self,
        request: Request<Streaming<v1::OpenSessionRequest>>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let p = principal(&request)?;
        // Refused before waiting for `hello` (which says which kind of session it is).
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin])?;
        let mut incoming = request.into_inner();
        // The desk speaks first: `hello` says where to resume.
        let hello = match tokio::time::timeout(HELLO_WITHIN, incoming.next()).await {
            Ok(Some(Ok(v1::OpenSessionRequest { frame: Some(open_session_request::Frame::Hello(h)) }))) => h,
            Ok(Some(Err(e))) => return Err(e),
            Ok(_) => return Err(Status::invalid_argument("the first frame must be `hello`")),
            Err(_) => return Err(Status::deadline_exceeded("no `hello` within 10 seconds")),
        };
        let rx = self.0.open(&p, hello, incoming).await?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// How long a desk has to say `hello` after connecting.
pub const HELLO_WITHIN: Duration = Duration::from_secs(10);

impl Sessions {
    /// Opens a session for the principal's operator after its `hello`: the same for the
    /// gRPC stream and the web desk's WebSocket. `incoming` is the rest of what the desk
    /// sends; the answer is what to send it, ending when the session does.
    pub async fn open<S>(
        self: &Arc<Self>,
        p: &Principal,
        hello: v1::Hello,
        incoming: S,
    ) -> Result<mpsc::Receiver<Frame>, Status>
    where
        S: Stream<Item = Result<v1::OpenSessionRequest, Status>> + Send + Unpin + 'static,
    {
        if hello.client_name.chars().count() > 100 {
            return Err(Status::invalid_argument("hello.client_name must be at most 100 characters"));
        }
        let (subject, operator) = if hello.team {
            require(p, &[Role::Supervisor, Role::Admin])?;
            (topology::team_subject(&p.tenant), None)
        } else {
            require(p, &[Role::Operator])?;
            let operator =
                OperatorId::parse(&p.subject).map_err(|e| ApiError::invalid(format!("token subject: {e}")))?;
            (topology::desk_subject(&p.tenant, &operator), Some(operator))
        };
        let feed = self
            .hub
            .follow(
                subject,
                match hello.resume_after_sequence {
                    0 => Resume::Now,
                    after => Resume::After(after),
                },
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel(256);
        let session = clock::new_id().to_string();
        let me = self.clone();
        let desk = Desk { tenant: p.tenant.clone(), operator, session, subject: p.subject.clone() };
        tracing::info!(tenant = %desk.tenant, who = %desk.subject, team = hello.team, session = %desk.session, resume_after = feed.resume_after, client = %hello.client_name, "desk session opened");
        tokio::spawn(async move {
            me.run(desk, feed, incoming, tx).await;
        });
        Ok(rx)
    }

    async fn run<S>(self: Arc<Self>, desk: Desk, mut feed: tail::Tail, mut incoming: S, tx: mpsc::Sender<Frame>)
    where
        S: Stream<Item = Result<v1::OpenSessionRequest, Status>> + Send + Unpin,
    {
        let welcome = v1::Welcome {
            operator_id: desk.subject.clone(),
            resume_after_sequence: feed.resume_after,
            heartbeat_interval_seconds: self.heartbeat.as_secs() as u32,
        };
        if tx.send(frame(open_session_response::Frame::Welcome(welcome))).await.is_err() {
            return;
        }
        let tenant = &desk.tenant;
        if let Some(operator) = &desk.operator {
            self.connected(tenant, operator, &desk.session).await;
        }
        // When this desk last passed on typing, per conversation (see `TYPING_EVERY`).
        let mut typing_sent: std::collections::HashMap<String, std::time::Instant> = Default::default();
        loop {
            tokio::select! {
                _ = self.token.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("server shutting down; reconnect and resume"))).await;
                    break;
                }
                next = feed.messages.next() => {
                    let Some(item) = next else { break };
                    let out = match item {
                        Ok(d) => match d.decode::<v1::DeskEvent>() {
                            Ok(mut event) => {
                                // The last hop of the message's trace: onto the desk's stream.
                                let span = tracing::info_span!("desk deliver", otel.name = "desk deliver", who = %desk.subject, seq = d.stream_sequence);
                                parley_kit::telemetry::set_parent_from_traceparent(&span, d.traceparent.as_deref());
                                let _entered = span.enter();
                                event.sequence = d.stream_sequence;
                                frame(open_session_response::Frame::Event(event))
                            }
                            Err(why) => {
                                tracing::warn!(seq = d.stream_sequence, why, "skipping undecodable desk event");
                                continue;
                            }
                        },
                        Err(e) => Err(Status::unavailable(format!("{e}; reconnect and resume"))),
                    };
                    let failed = out.is_err();
                    if tx.send(out).await.is_err() || failed {
                        break;
                    }
                }
                up = incoming.next() => {
                    let request = match up {
                        Some(Ok(r)) => r,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "desk stream error");
                            break;
                        }
                        None => break,
                    };
                    let Some(operator) = &desk.operator else {
                        // A team session: heartbeats and acknowledgements only.
                        let reply = match request.frame {
                            Some(open_session_request::Frame::Heartbeat(_)) => {
                                Some(open_session_response::Frame::Heartbeat(v1::Heartbeat {}))
                            }
                            Some(open_session_request::Frame::Ack(_)) => None,
                            Some(open_session_request::Frame::Reply(r)) => {
                                Some(open_session_response::Frame::ReplyRejected(v1::ReplyRejected {
                                    client_message_id: r.client_message_id,
                                    code: code_name(tonic::Code::PermissionDenied).to_owned(),
                                    message: "a team session sends no replies; open an operator's session".into(),
                                }))
                            }
                            Some(open_session_request::Frame::Typing(_) | open_session_request::Frame::Read(_)) => None,
                            Some(open_session_request::Frame::Hello(_)) | None => {
                                let _ = tx.send(Err(Status::invalid_argument("`hello` is only the first frame"))).await;
                                break;
                            }
                        };
                        if let Some(f) = reply && tx.send(frame(f)).await.is_err() {
                            break;
                        }
                        continue;
                    };
                    self.alive(tenant, operator, &desk.session).await;
                    let reply = match request.frame {
                        Some(open_session_request::Frame::Reply(r)) => Some(self.reply(tenant, operator, r).await),
                        Some(open_session_request::Frame::Typing(t)) => {
                            let now = std::time::Instant::now();
                            let due = typing_sent.get(&t.conversation_id).is_none_or(|at| now.duration_since(*at) >= TYPING_EVERY);
                            if due {
                                typing_sent.insert(t.conversation_id.clone(), now);
                                if let Err(e) = self.typing(tenant, operator, &t.conversation_id).await {
                                    tracing::debug!(error = %e, "typing not passed on");
                                }
                            }
                            None
                        }
                        Some(open_session_request::Frame::Heartbeat(_)) => {
                            Some(open_session_response::Frame::Heartbeat(v1::Heartbeat {}))
                        }
                        Some(open_session_request::Frame::Read(r)) => {
                            if let Err(e) = self.read(tenant, operator, &r).await {
                                tracing::debug!(error = %e, "read not passed on");
                            }
                            None
                        }
                        Some(open_session_request::Frame::Ack(a)) => {
                            tracing::trace!(operator = %operator, sequence = a.sequence, "desk acknowledged");
                            None
                        }
                        Some(open_session_request::Frame::Hello(_)) | None => {
                            let _ = tx.send(Err(Status::invalid_argument("`hello` is only the first frame"))).await;
                            break;
                        }
                    };
                    if let Some(f) = reply && tx.send(frame(f)).await.is_err() {
                        break;
                    }
                }
            }
        }
        if let Some(operator) = &desk.operator
            && let Err(e) = self.redis.end_session(tenant, operator, &desk.session, clock::now()).await
        {
            tracing::warn!(error = %e, "ending session in redis");
        }
        tracing::info!(tenant = %tenant, who = %desk.subject, session = %desk.session, "desk session closed");
    }

    /// The session's first heartbeat; if no other desk of the operator was alive, tells
    /// the team they have connected. (Routing tells them when the last desk closes or
    /// expires.)
    async fn connected(&self, tenant: &TenantId, operator: &OperatorId, session: &str) {
        let now = clock::now();
        let first =
            match self.redis.open_session(tenant, operator, session, now, now.saturating_add(self.session_ttl)).await {
                Ok(first) => first,
                Err(e) => {
                    tracing::warn!(error = %e, "session heartbeat not recorded");
                    return;
                }
            };
        if !first {
            return;
        }
        let told = async {
            let p = self.redis.status(tenant, operator, now).await?;
            let now = TeamPresence { status: p.status, reason: &p.reason, connected: p.connected, since: p.since };
            self.publisher.presence(tenant, operator, now, &format!("connected:{operator}:{session}")).await?;
            anyhow::Ok(())
        };
        if let Err(e) = told.await {
            tracing::warn!(operator = %operator, error = %e, "the team was not told the operator connected");
        }
    }

    /// Keeps the session (and so the operator's presence) alive for another TTL.
    async fn alive(&self, tenant: &TenantId, operator: &OperatorId, session: &str) {
        let expires = clock::now().saturating_add(self.session_ttl);
        if let Err(e) = self.redis.heartbeat(tenant, operator, session, expires).await {
            tracing::warn!(error = %e, "session heartbeat not recorded");
        }
    }

    /// Checks and sends one reply; the answer says whether it is on its way.
    async fn reply(&self, tenant: &TenantId, operator: &OperatorId, r: v1::SendReply) -> open_session_response::Frame {
        let client_message_id = r.client_message_id.clone();
        match self.send_reply(tenant, operator, r).await {
            Ok((message_id, sms)) => open_session_response::Frame::ReplyAccepted(v1::ReplyAccepted {
                client_message_id,
                message_id: message_id.to_string(),
                accept_time: Some(convert::timestamp(clock::now())),
                sms_segments: sms.map_or(0, |s| s.segments as u32),
                sms_encoding: match sms.map(|s| s.encoding) {
                    Some(SmsEncoding::Gsm7) => "GSM-7".into(),
                    Some(SmsEncoding::Ucs2) => "UCS-2".into(),
                    None => String::new(),
                },
            }),
            Err(e) => {
                let status: Status = e.into();
                open_session_response::Frame::ReplyRejected(v1::ReplyRejected {
                    client_message_id,
                    code: code_name(status.code()).to_owned(),
                    message: status.message().to_owned(),
                })
            }
        }
    }

    /// A conversation the operator owns now, with its version (read from the log).
    async fn owned(
        &self,
        tenant: &TenantId,
        operator: &OperatorId,
        id: ConversationId,
    ) -> Result<(parley_domain::Conversation, u64), ApiError> {
        let loaded = self
            .log
            .load(tenant, id)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .ok_or_else(|| ApiError::not_found(format!("conversation {id} not found")))?;
        match &loaded.conversation.status {
            ConversationStatus::Assigned { operator: owner } if owner == operator => {
                Ok((loaded.conversation, loaded.sequence))
            }
            ConversationStatus::Closed => Err(ApiError::precondition("conversation is closed")),
            _ => Err(ApiError::precondition("conversation is not assigned to you")),
        }
    }

    /// Tells the customer of a conversation the operator owns that they are typing.
    async fn typing(&self, tenant: &TenantId, operator: &OperatorId, conversation: &str) -> Result<(), ApiError> {
        let id = ConversationId::parse(conversation).map_err(|e| ApiError::invalid(format!("conversation_id: {e}")))?;
        let (c, version) = self.owned(tenant, operator, id).await?;
        let typing = v1::Typing { conversation_id: id.to_string(), display_name: String::new() };
        let envelope = events::OutboundEnvelope {
            conversation_version: version,
            ..outbound(&c, v1::customer_update::Kind::Typing(typing))
        };
        let subject = topology::outbound_subject(tenant, c.channel, c.customer.id);
        self.publisher
            .publish(subject, &clock::new_id().to_string(), &c.customer.id.to_string(), &envelope)
            .await
            .map(|_| ())
            .map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    /// Tells a web chat visitor that the operator has seen their messages up to one: a
    /// `READ` delivery update on the customer's subject (once per message).
    async fn read(&self, tenant: &TenantId, operator: &OperatorId, r: &v1::DeskRead) -> Result<(), ApiError> {
        let id = ConversationId::parse(&r.conversation_id)
            .map_err(|e| ApiError::invalid(format!("conversation_id: {e}")))?;
        let message = MessageId::parse(&r.message_id).map_err(|e| ApiError::invalid(format!("message_id: {e}")))?;
        let (c, version) = self.owned(tenant, operator, id).await?;
        if c.channel != Channel::WebChat {
            return Ok(());
        }
        // Only a message of this customer in this conversation.
        let theirs = c.recent_messages.iter().any(|m| m.id == message && m.sender == Sender::Customer);
        if !theirs {
            return Err(ApiError::not_found(format!("no message {message} of the customer in conversation {id}")));
        }
        let read = v1::DeliveryUpdate {
            conversation_id: id.to_string(),
            message_id: message.to_string(),
            state: v1::DeliveryState::Read as i32,
            failure_reason: String::new(),
            update_time: Some(convert::timestamp(clock::now())),
        };
        let envelope = events::OutboundEnvelope {
            conversation_version: version,
            ..outbound(&c, v1::customer_update::Kind::Delivery(read))
        };
        let subject = topology::outbound_subject(tenant, c.channel, c.customer.id);
        self.publisher
            .publish(subject, &format!("read:{message}"), &c.customer.id.to_string(), &envelope)
            .await
            .map(|_| ())
            .map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    /// The stored files a reply names, as attachments: each a file of the tenant, once.
    async fn reply_files(&self, tenant: &TenantId, ids: &[String]) -> Result<Vec<v1::Attachment>, ApiError> {
        let ids = parse_attachment_ids(ids, MAX_ATTACHMENTS).map_err(ApiError::invalid)?;
        let mut files = Vec::with_capacity(ids.len());
        for (i, id) in ids.into_iter().enumerate() {
            let stored = self.store.head(tenant, id).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
            let Some(Stored::File(file)) = stored else {
                return Err(ApiError::NotFound(format!("attachment_ids[{i}]: no file {id} was uploaded")));
            };
            files.push(v1::Attachment {
                id: id.to_string(),
                kind: convert::attachment_kind(AttachmentKind::from_mime(&file.mime)) as i32,
                mime_type: file.mime,
                file_name: file.file_name,
                size_bytes: file.size,
            });
        }
        Ok(files)
    }

    /// What each channel can carry: one file a message on Telegram, WhatsApp and Viber (a
    /// Viber file without text), ten on MMS and the web chat, all on email and the API
    /// channel; the providers fetch files by link, so those need the public media URL.
    fn check_files_fit(&self, channel: Channel, files: &[v1::Attachment], text: &str) -> Result<(), ApiError> {
        let max = match channel {
            Channel::Telegram | Channel::WhatsApp | Channel::Viber => 1,
            Channel::Sms => 10,
            Channel::Email | Channel::Api => MAX_ATTACHMENTS,
            // The widget fetches them from ingest by a signed link.
            Channel::WebChat => 10,
        };
        if files.len() > max {
            return Err(ApiError::invalid(match max {
                0 => format!("attachment_ids: replies on {channel} carry text only"),
                _ => format!("attachment_ids: a reply on {channel} carries at most {max} file(s)"),
            }));
        }
        let image = files.iter().all(|f| f.kind == v1::AttachmentKind::Image as i32);
        if channel == Channel::Viber && !image && !text.trim().is_empty() {
            return Err(ApiError::invalid(
                "attachment_ids: Viber sends a file without text; send the text as a reply of its own",
            ));
        }
        let by_link = matches!(channel, Channel::Telegram | Channel::WhatsApp | Channel::Viber | Channel::Sms);
        if by_link && !self.media_links {
            return Err(ApiError::precondition(format!(
                "files cannot be sent on {channel}: its provider fetches them by link, and no public media URL \
                 is configured (senders.public_media_url)"
            )));
        }
        Ok(())
    }

    async fn send_reply(
        &self,
        tenant: &TenantId,
        operator: &OperatorId,
        r: v1::SendReply,
    ) -> Result<(MessageId, Option<SegmentCount>), ApiError> {
        let id = ConversationId::parse(&r.conversation_id)
            .map_err(|e| ApiError::invalid(format!("conversation_id: {e}")))?;
        if r.client_message_id.is_empty()
            || r.client_message_id.len() > 128
            || !r.client_message_id.bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            return Err(ApiError::invalid("client_message_id must be 1 to 128 printable ASCII characters"));
        }
        let text = match &r.template {
            Some(t) => {
                whatsapp::check_template(&t.name, &t.language, &t.body_parameters).map_err(ApiError::invalid)?;
                if !r.attachment_ids.is_empty() {
                    return Err(ApiError::invalid("attachment_ids: a template goes without files"));
                }
                template_text(&r.text, t)
            }
            None => r.text.clone(),
        };
        // A file may go without text.
        if !text.is_empty() || r.attachment_ids.is_empty() {
            check_text(&text).map_err(|e| ApiError::invalid(e.to_string()))?;
        }
        let files = self.reply_files(tenant, &r.attachment_ids).await?;
        let (c, _) = self.owned(tenant, operator, id).await?;
        if r.template.is_some() && c.channel != Channel::WhatsApp {
            return Err(ApiError::invalid(format!(
                "template: templates are sent on WhatsApp only, and this conversation is on {}",
                c.channel
            )));
        }
        if !files.is_empty() {
            self.check_files_fit(c.channel, &files, &text)?;
        }
        let now = clock::now();
        // A template is what may go after the window has closed.
        if c.channel == Channel::WhatsApp
            && r.template.is_none()
            && c.reply_window_closes().is_none_or(|closes| now >= closes)
        {
            return Err(ApiError::precondition(
                "the WhatsApp 24-hour window is closed (the customer last wrote more than 24 hours ago): \
                 only an approved template message may be sent",
            ));
        }
        let sms = (c.channel == Channel::Sms).then(|| segments::count(&text));
        let email = (c.channel == Channel::Email).then(|| EmailThread::of(&c));
        let message_id = MessageId::derive(tenant, &format!("reply:{operator}"), &r.client_message_id);
        let message = v1::Message {
            id: message_id.to_string(),
            conversation_id: id.to_string(),
            customer_id: c.customer.id.to_string(),
            channel: convert::channel(c.channel) as i32,
            sender_kind: v1::SenderKind::Operator as i32,
            operator_id: operator.to_string(),
            text,
            quoted: None,
            delivery_state: v1::DeliveryState::Accepted as i32,
            create_time: Some(convert::timestamp(now)),
            channel_message_id: r.client_message_id,
            subject: email.as_ref().map(|e| e.subject.clone()).unwrap_or_default(),
            attachments: files,
            template: r.template,
        };
        let envelope = events::OutboundEnvelope {
            references: email.map(|e| e.references).unwrap_or_default(),
            ..outbound(&c, v1::customer_update::Kind::Message(message))
        };
        let subject = topology::outbound_subject(tenant, c.channel, c.customer.id);
        self.publisher.publish(subject, &message_id.to_string(), &c.customer.id.to_string(), &envelope).await.map_err(
            |e| ApiError::Unavailable(format!("reply not sent ({e}); resend with the same client_message_id")),
        )?;
        Ok((message_id, sms))
    }
}

/// What the desk and history show of a template reply: the operator's own text, or the
/// template's name and parameters.
fn template_text(text: &str, t: &v1::WhatsAppTemplate) -> String {
    if !text.trim().is_empty() {
        return text.to_owned();
    }
    let shown = match t.body_parameters.is_empty() {
        true => format!("[template {}]", t.name),
        false => format!("[template {}] {}", t.name, t.body_parameters.join(" · ")),
    };
    shown.chars().take(parley_domain::MAX_TEXT_CHARS).collect()
}
