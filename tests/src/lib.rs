//! End-to-end test support for Parley: an operator desk client over `OpenSession`, and a
//! customer-updates reader over `StreamCustomerUpdates`. The tests live in `e2e/`.

use std::time::Duration;

use parley_proto::v1;
use parley_proto::v1::{open_session_request, open_session_response};
use parley_testkit::App;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// An operator's desk: an open session, the events it got, and a way to reply.
pub struct Desk {
    tx: mpsc::Sender<v1::OpenSessionRequest>,
    rx: tonic::Streaming<v1::OpenSessionResponse>,
    /// The sequence to resume after (the last event seen).
    pub last_sequence: u64,
    /// Ids of the operators' own messages this desk has been shown.
    echoed: std::collections::HashSet<String>,
}

impl Desk {
    /// Opens a session for the operator whose token is given, resuming after `resume`.
    pub async fn open(app: &App, token: &str, resume: u64) -> Result<Self, tonic::Status> {
        Self::open_with(app, token, hello(resume)).await
    }

    /// Opens a team session (a supervisor's: operators' presence), resuming after `resume`.
    pub async fn open_team(app: &App, token: &str, resume: u64) -> Result<Self, tonic::Status> {
        let mut hello = hello(resume);
        if let Some(open_session_request::Frame::Hello(h)) = &mut hello.frame {
            h.team = true;
        }
        Self::open_with(app, token, hello).await
    }

    async fn open_with(app: &App, token: &str, hello: v1::OpenSessionRequest) -> Result<Self, tonic::Status> {
        let mut client = app.sessions_client(token).await;
        let (tx, rx) = mpsc::channel(64);
        tx.send(hello).await.expect("queue hello");
        let mut stream = client.open_session(ReceiverStream::new(rx)).await?.into_inner();
        let first = stream.message().await?.ok_or_else(|| tonic::Status::unknown("session closed before welcome"))?;
        let Some(open_session_response::Frame::Welcome(w)) = first.frame else {
            panic!("expected welcome, got {first:?}");
        };
        Ok(Self { tx, rx: stream, last_sequence: w.resume_after_sequence, echoed: Default::default() })
    }

    /// The next frame, within `within`.
    pub async fn frame(&mut self, within: Duration) -> open_session_response::Frame {
        let next = tokio::time::timeout(within, self.rx.message()).await.expect("desk frame in time");
        let frame = next.expect("desk stream healthy").expect("desk stream open").frame.expect("frame set");
        if let open_session_response::Frame::Event(e) = &frame {
            assert!(e.sequence > self.last_sequence, "sequence went back: {} after {}", e.sequence, self.last_sequence);
            self.last_sequence = e.sequence;
            if let Some(v1::desk_event::Kind::Message(m)) = &e.kind
                && m.sender_kind == v1::SenderKind::Operator as i32
            {
                self.echoed.insert(m.id.clone());
            }
        }
        frame
    }

    /// The next desk event (skipping heartbeats), or the status the session ended with.
    pub async fn try_event(&mut self, within: Duration) -> Result<v1::DeskEvent, tonic::Status> {
        loop {
            let next = tokio::time::timeout(within, self.rx.message()).await.expect("desk frame in time");
            let frame = next?.ok_or_else(|| tonic::Status::unknown("the session ended without a status"))?;
            match frame.frame {
                Some(open_session_response::Frame::Event(e)) => {
                    assert!(
                        e.sequence > self.last_sequence,
                        "sequence went back: {} after {}",
                        e.sequence,
                        self.last_sequence
                    );
                    self.last_sequence = e.sequence;
                    return Ok(e);
                }
                _ => continue,
            }
        }
    }

    /// The next desk event (skipping heartbeats).
    pub async fn event(&mut self, within: Duration) -> v1::DeskEvent {
        loop {
            match self.frame(within).await {
                open_session_response::Frame::Event(e) => return e,
                open_session_response::Frame::Heartbeat(_) => continue,
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }

    /// Waits for no event for `quiet` (nothing more is coming). Heartbeat answers and other
    /// frames that are not events are let through until the time is up.
    pub async fn expect_quiet(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(next) = tokio::time::timeout_at(deadline, self.rx.message()).await {
            let Some(frame) = next.ok().flatten().and_then(|f| f.frame) else { return };
            assert!(!matches!(frame, open_session_response::Frame::Event(_)), "expected no more events, got {frame:?}");
        }
    }

    /// Heartbeats in the background until the returned guard is dropped: the desk stays
    /// connected however long the test waits. Dropping the guard is a desk that hangs
    /// without closing its connection (its session then expires after the TTL).
    pub fn keep_alive(&self) -> KeepAlive {
        let tx = self.tx.clone();
        KeepAlive(tokio::spawn(async move {
            let beat =
                || v1::OpenSessionRequest { frame: Some(open_session_request::Frame::Heartbeat(v1::Heartbeat {})) };
            while tx.send(beat()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }))
    }

    /// Sends a reply and waits for its answer.
    pub async fn reply(&mut self, conversation: &str, client_id: &str, text: &str) -> open_session_response::Frame {
        self.send_reply(v1::SendReply {
            conversation_id: conversation.into(),
            client_message_id: client_id.into(),
            text: text.into(),
            template: None,
            attachment_ids: Vec::new(),
        })
        .await
    }

    /// Sends a reply as given and waits for its answer.
    pub async fn send_reply(&mut self, reply: v1::SendReply) -> open_session_response::Frame {
        self.send(open_session_request::Frame::Reply(reply)).await;
        loop {
            match self.frame(Duration::from_secs(10)).await {
                f @ (open_session_response::Frame::ReplyAccepted(_)
                | open_session_response::Frame::ReplyRejected(_)) => {
                    return f;
                }
                open_session_response::Frame::Heartbeat(_) | open_session_response::Frame::Event(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    pub async fn send(&self, frame: open_session_request::Frame) {
        self.tx.send(v1::OpenSessionRequest { frame: Some(frame) }).await.expect("desk stream open");
    }

    /// Keeps the session alive while a test waits.
    pub async fn heartbeat(&self) {
        self.send(open_session_request::Frame::Heartbeat(v1::Heartbeat {})).await;
    }
}

/// Stops a desk's background heartbeats when dropped (see [`Desk::keep_alive`]).
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn hello(resume: u64) -> v1::OpenSessionRequest {
    v1::OpenSessionRequest {
        frame: Some(open_session_request::Frame::Hello(v1::Hello {
            resume_after_sequence: resume,
            client_name: "e2e".into(),
            team: false,
        })),
    }
}

/// Reads a customer's updates as the integrator sees them.
pub struct CustomerFeed {
    rx: tonic::Streaming<v1::StreamCustomerUpdatesResponse>,
    pub last_sequence: u64,
}

impl CustomerFeed {
    pub async fn open(app: &App, token: &str, customer_ref: &str, after: u64) -> Self {
        let mut client = app.ingest_client(token).await;
        let rx = client
            .stream_customer_updates(v1::StreamCustomerUpdatesRequest {
                customer_ref: customer_ref.into(),
                after_sequence: after,
            })
            .await
            .expect("open customer stream")
            .into_inner();
        Self { rx, last_sequence: after }
    }

    pub async fn next(&mut self, within: Duration) -> v1::customer_update::Kind {
        let r = tokio::time::timeout(within, self.rx.next()).await.expect("customer update in time");
        let r = r.expect("stream open").expect("stream healthy");
        assert!(r.sequence > self.last_sequence);
        self.last_sequence = r.sequence;
        r.update.and_then(|u| u.kind).expect("update kind")
    }
}

/// A customer message from the integrator.
pub fn submit(customer: &str, text: &str, key: &str) -> v1::SubmitMessageRequest {
    v1::SubmitMessageRequest {
        customer_ref: customer.into(),
        customer_display_name: "Иван Петров".into(),
        text: text.into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// Sends raw protobuf bytes to a unary method (to send what no typed client can: invalid
/// UTF-8 in a string field, say) and returns the status.
pub async fn raw_unary(addr: std::net::SocketAddr, path: &'static str, token: &str, body: Vec<u8>) -> tonic::Status {
    use bytes_codec::RawCodec;
    let channel = parley_testkit::connect(addr).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    match grpc.unary(request, tonic::codegen::http::uri::PathAndQuery::from_static(path), RawCodec).await {
        Ok(_) => tonic::Status::ok("accepted"),
        Err(status) => status,
    }
}

mod bytes_codec {
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    /// Bytes in, bytes out: no protobuf on the client side.
    pub struct RawCodec;

    pub struct Raw;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            use bytes::BufMut;
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            use bytes::Buf;
            let mut out = vec![0; src.remaining()];
            src.copy_to_slice(&mut out);
            Ok(Some(out))
        }
    }
}

/// Sets the calling operator's status.
pub async fn set_status(app: &App, token: &str, status: v1::OperatorStatus) -> v1::OperatorPresence {
    app.routing_client(token)
        .await
        .set_operator_status(v1::SetOperatorStatusRequest {
            status: status as i32,
            reason: "test".into(),
            ..Default::default()
        })
        .await
        .expect("set status")
        .into_inner()
        .presence
        .expect("presence")
}

/// A channel fixture's bytes (`crates/parley-channels/tests/fixtures`).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../crates/parley-channels/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// The desk's next event, which must be an assignment.
pub async fn assigned(desk: &mut Desk) -> v1::ConversationAssigned {
    match desk.event(Duration::from_secs(10)).await.kind.expect("event kind") {
        v1::desk_event::Kind::Assigned(a) => a,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

/// The desk's next event, an assignment: its conversation and first message's text.
pub async fn assigned_text(desk: &mut Desk) -> (v1::Conversation, String) {
    let a = assigned(desk).await;
    let text = a.recent_messages.first().map(|m| m.text.clone()).unwrap_or_default();
    (a.conversation.expect("conversation"), text)
}

/// The answer to a reply, which must have been accepted.
pub fn accepted(frame: open_session_response::Frame) -> v1::ReplyAccepted {
    match frame {
        open_session_response::Frame::ReplyAccepted(a) => a,
        other => panic!("expected the reply accepted, got {other:?}"),
    }
}

/// The envelopes `PARLEY_INBOUND` holds after sequence `after`.
pub async fn inbound_after(app: &App, after: u64) -> Vec<parley_proto::events::InboundEnvelope> {
    use parley_proto::prost::Message as _;
    let client = async_nats::connect(app.infra.nats.url()).await.expect("nats");
    let stream = async_nats::jetstream::new(client).get_stream("PARLEY_INBOUND").await.expect("stream");
    let last = app.stream_len("PARLEY_INBOUND").await;
    let mut out = Vec::new();
    for seq in after + 1..=last {
        let m = stream.get_raw_message(seq).await.expect("stored message");
        out.push(parley_proto::events::InboundEnvelope::decode(m.payload).expect("an inbound envelope"));
    }
    out
}

/// Waits for the desk to hear that an operator's reply reached `state` (skipping other
/// events) and to be shown the reply itself — in either order: the sender may hear from
/// the provider before routing has recorded the reply. Returns the failure reason. Fails if
/// the message fails while another state is awaited.
pub async fn delivery_state(desk: &mut Desk, message_id: &str, state: v1::DeliveryState) -> String {
    let mut reached = None;
    loop {
        if let Some(reason) = &reached
            && desk.echoed.contains(message_id)
        {
            return String::clone(reason);
        }
        if let Some(v1::desk_event::Kind::Delivery(d)) = desk.event(Duration::from_secs(10)).await.kind
            && d.message_id == message_id
        {
            if d.state == state as i32 {
                reached = Some(d.failure_reason);
                continue;
            }
            assert!(
                d.state != v1::DeliveryState::Failed as i32,
                "expected {state:?}, the message failed: {}",
                d.failure_reason
            );
        }
    }
}

/// Opens the operator's desk and puts them online.
pub async fn online(app: &App, fx: &parley_testkit::TenantFixture, op: &str) -> Desk {
    let desk = Desk::open(app, fx.operator_token(op), 0).await.expect("desk opens");
    set_status(app, fx.operator_token(op), v1::OperatorStatus::Online).await;
    desk
}

/// The conversation a desk event is about, with what happened.
pub fn describe(event: &v1::DeskEvent) -> (String, &'static str) {
    use v1::desk_event::Kind;
    match event.kind.as_ref().expect("event kind") {
        Kind::Offered(o) => (o.conversation.as_ref().expect("conversation").id.clone(), "offered"),
        Kind::Assigned(a) => (a.conversation.as_ref().expect("conversation").id.clone(), "assigned"),
        Kind::Message(m) => (m.conversation_id.clone(), "message"),
        Kind::Released(r) => (r.conversation_id.clone(), "released"),
        Kind::Delivery(d) => (d.conversation_id.clone(), "delivery"),
        Kind::Typing(t) => (t.conversation_id.clone(), "typing"),
        Kind::Presence(p) => (p.operator_id.clone(), "presence"),
    }
}

/// A conversation's messages as history lists them (oldest first), or `None` while history
/// cannot answer.
pub async fn history_messages(app: &App, token: &str, conversation: &str) -> Option<Vec<v1::Message>> {
    let request = v1::ListMessagesRequest { conversation_id: conversation.to_owned(), ..Default::default() };
    let response = app.history_client(token).await.list_messages(request).await.ok()?;
    Some(response.into_inner().messages)
}

/// A customer message published on `PARLEY_INBOUND` as ingest publishes a channel's (for
/// tests about what comes after ingest): the message and customer ids it was given.
pub async fn publish_customer_message(
    app: &App,
    tenant: &str,
    channel: parley_domain::Channel,
    channel_config: &str,
    address: &str,
    text: &str,
) -> (parley_domain::MessageId, parley_domain::CustomerId) {
    use parley_domain::{CustomerId, MessageId, TenantId};
    use parley_proto::events;
    let tenant = TenantId::parse(tenant).expect("tenant");
    let key = uuid::Uuid::now_v7().to_string();
    let message = MessageId::derive(&tenant, "test", &key);
    let customer = CustomerId::derive(&tenant, channel, address);
    let envelope = events::InboundEnvelope {
        kind: Some(events::inbound_envelope::Kind::CustomerMessage(events::CustomerMessage {
            message_id: message.to_string(),
            tenant_id: tenant.to_string(),
            channel: parley_proto::convert::channel(channel) as i32,
            channel_config_id: channel_config.into(),
            customer_id: customer.to_string(),
            customer_address: address.into(),
            customer_display_name: "Customer".into(),
            text: text.into(),
            channel_message_id: key,
            receive_time: Some(parley_proto::convert::timestamp(parley_kit::clock::now())),
            ..Default::default()
        })),
    };
    let js = async_nats::jetstream::new(async_nats::connect(app.infra.nats.url()).await.expect("nats"));
    parley_nats::Publisher::new(js)
        .publish(
            parley_nats::topology::inbound_subject(&tenant, channel),
            &message.to_string(),
            &customer.to_string(),
            &envelope,
        )
        .await
        .expect("publish");
    (message, customer)
}
