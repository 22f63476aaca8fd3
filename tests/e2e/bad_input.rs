//! Bad input of every kind gets the right gRPC status with a message saying what is wrong,
//! and changes nothing: no message on any stream, no row in history.

use parley_domain::Role;
use parley_e2e::{Desk, raw_unary, submit};
use parley_proto::prost::Message as _;
use parley_proto::v1;
use parley_testkit::App;
use tonic::Code;

fn expect(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, says: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} ({says}), got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            assert!(s.message().contains(says), "message {:?} should say {says:?}", s.message());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let inbound_before = app.stream_len("PARLEY_INBOUND").await;
    let events_before = app.stream_len("PARLEY_EVENTS").await;

    // --- authentication ---------------------------------------------------------------
    let mut no_token = parley_proto::v1::api_channel_service_client::ApiChannelServiceClient::new(
        parley_testkit::connect(app.addrs().ingest).await,
    );
    expect(no_token.submit_message(submit("c", "hi", "k")).await, Code::Unauthenticated, "missing authorization");

    let forged = parley_kit::auth::TokenKey::new(parley_kit::config::Secret::new("x".repeat(40))).sign(
        &parley_kit::auth::Claims {
            sub: "crm".into(),
            tid: "acme".into(),
            role: "integrator".into(),
            jti: "j".into(),
            iat: parley_kit::clock::now().as_millis() / 1000,
            exp: parley_kit::clock::now().as_millis() / 1000 + 600,
        },
    );
    let mut ingest = app.ingest_client(&forged).await;
    expect(ingest.submit_message(submit("c", "hi", "k")).await, Code::Unauthenticated, "signature is invalid");

    let mut ghost = app.ingest_client(&app.mint("ghost", Role::Integrator, "crm")).await;
    expect(
        ghost.submit_message(submit("c", "hi", "k")).await,
        Code::Unauthenticated,
        "tenant \"ghost\" does not exist",
    );

    let mut garbage = app.ingest_client("not.a.jwt").await;
    expect(garbage.submit_message(submit("c", "hi", "k")).await, Code::Unauthenticated, "token is malformed");

    // A well-signed token for an operator who does not exist.
    let mut nobody = app.routing_client(&app.mint("acme", Role::Operator, "nobody")).await;
    expect(
        nobody.get_operator_presence(v1::GetOperatorPresenceRequest::default()).await,
        Code::Unauthenticated,
        "operator \"nobody\" does not exist",
    );
    expect(
        Desk::open(&app, &app.mint("acme", Role::Operator, "nobody"), 0).await.map(|_| ()),
        Code::Unauthenticated,
        "nobody",
    );

    // --- roles ------------------------------------------------------------------------
    let mut as_operator = app.ingest_client(fx.operator_token("anna")).await;
    expect(as_operator.submit_message(submit("c", "hi", "k")).await, Code::PermissionDenied, "role operator");
    let mut admin_as_integrator = app.admin(&fx.integrator_token).await;
    expect(
        admin_as_integrator
            .create_operator(v1::CreateOperatorRequest {
                operator: Some(v1::Operator { id: "eve".into(), display_name: "Eve".into(), ..Default::default() }),
            })
            .await,
        Code::PermissionDenied,
        "role integrator",
    );
    let mut tenant_admin = app.admin(&fx.admin_token).await;
    expect(
        tenant_admin
            .create_tenant(v1::CreateTenantRequest {
                tenant: Some(v1::Tenant { id: "evil".into(), display_name: "E".into(), ..Default::default() }),
            })
            .await,
        Code::PermissionDenied,
        "role admin",
    );
    let mut anna_routing = app.routing_client(fx.operator_token("anna")).await;
    expect(
        anna_routing.list_operator_presences(v1::ListOperatorPresencesRequest {}).await,
        Code::PermissionDenied,
        "needs one of: supervisor, admin",
    );

    // --- message content ---------------------------------------------------------------
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    expect(ingest.submit_message(submit("c", "", "k1")).await, Code::InvalidArgument, "text is empty");
    expect(ingest.submit_message(submit("c", "   \n", "k1")).await, Code::InvalidArgument, "text is empty");
    expect(ingest.submit_message(submit("c", &"я".repeat(4097), "k1")).await, Code::InvalidArgument, "4097 characters");
    expect(ingest.submit_message(submit("c", "a\0b", "k1")).await, Code::InvalidArgument, "NUL");
    expect(ingest.submit_message(submit("c", "hi", "")).await, Code::InvalidArgument, "idempotency_key is required");
    expect(ingest.submit_message(submit("c", "hi", "has space")).await, Code::InvalidArgument, "idempotency_key");
    expect(ingest.submit_message(submit("", "hi", "k1")).await, Code::InvalidArgument, "customer_ref");
    expect(ingest.submit_message(submit(&"c".repeat(300), "hi", "k1")).await, Code::InvalidArgument, "customer_ref");
    let mut bad_queue = submit("c", "hi", "k1");
    bad_queue.queue_id = "Billing Queue".into();
    expect(ingest.submit_message(bad_queue).await, Code::InvalidArgument, "queue_id");
    let mut unknown_queue = submit("c", "hi", "k1");
    unknown_queue.queue_id = "vip".into();
    expect(ingest.submit_message(unknown_queue).await, Code::NotFound, "queue vip not found");
    let mut bad_quote = submit("c", "hi", "k1");
    bad_quote.quoted = Some(v1::QuotedMessage { message_id: "nope".into(), ..Default::default() });
    expect(ingest.submit_message(bad_quote).await, Code::InvalidArgument, "quoted.message_id");

    // Invalid UTF-8 in the text field, which no typed client can send.
    let mut body =
        v1::SubmitMessageRequest { customer_ref: "c".into(), idempotency_key: "k1".into(), ..Default::default() }
            .encode_to_vec();
    body.extend_from_slice(&[0x1a, 0x02, 0xff, 0xfe]); // field 3 (text), 2 bytes, not UTF-8
    let status =
        raw_unary(app.addrs().ingest, "/parley.v1.ApiChannelService/SubmitMessage", &fx.integrator_token, body).await;
    assert_ne!(status.code(), Code::Ok);
    assert!(status.message().contains("UTF-8"), "{}", status.message());

    // --- ids -------------------------------------------------------------------------
    let mut history = app.history_client(&fx.supervisor_token).await;
    expect(
        history.get_conversation(v1::GetConversationRequest { conversation_id: "not-a-uuid".into() }).await,
        Code::InvalidArgument,
        "conversation_id must be a UUID",
    );
    let unknown = "0190a6f2-8f1e-7c3a-9d4e-0123456789ab";
    expect(
        history.get_conversation(v1::GetConversationRequest { conversation_id: unknown.into() }).await,
        Code::NotFound,
        "not found",
    );
    expect(
        history
            .list_messages(v1::ListMessagesRequest {
                conversation_id: unknown.into(),
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    expect(
        history
            .list_messages(v1::ListMessagesRequest {
                conversation_id: unknown.into(),
                page_size: 10_000,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    expect(
        anna_routing.accept_offer(v1::AcceptOfferRequest { conversation_id: "xyz".into() }).await,
        Code::InvalidArgument,
        "conversation_id",
    );
    expect(
        anna_routing.accept_offer(v1::AcceptOfferRequest { conversation_id: unknown.into() }).await,
        Code::NotFound,
        "not found",
    );
    let mut supervisor = app.routing_client(&fx.supervisor_token).await;
    expect(
        supervisor
            .set_operator_status(v1::SetOperatorStatusRequest {
                operator_id: "ghost".into(),
                status: v1::OperatorStatus::Online as i32,
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "operator ghost not found",
    );
    expect(
        supervisor
            .set_operator_status(v1::SetOperatorStatusRequest {
                operator_id: "anna".into(),
                status: 0,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "status must be specified",
    );
    expect(
        supervisor
            .set_operator_status(v1::SetOperatorStatusRequest {
                operator_id: "anna".into(),
                status: v1::OperatorStatus::Away as i32,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "reason is required",
    );
    expect(
        anna_routing
            .set_operator_status(v1::SetOperatorStatusRequest {
                operator_id: "boris".into(),
                status: v1::OperatorStatus::Online as i32,
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "only on themselves",
    );

    // --- admin validation ------------------------------------------------------------
    expect(
        tenant_admin
            .create_operator(v1::CreateOperatorRequest {
                operator: Some(v1::Operator {
                    id: "eve".into(),
                    display_name: "Eve".into(),
                    skills: vec![v1::SkillLevel { skill: "karate".into(), proficiency: 3 }],
                    ..Default::default()
                }),
            })
            .await,
        Code::InvalidArgument,
        "skill karate does not exist",
    );
    expect(
        tenant_admin
            .create_operator(v1::CreateOperatorRequest {
                operator: Some(v1::Operator {
                    id: "eve".into(),
                    display_name: "Eve".into(),
                    capacity: vec![v1::ChannelCapacity { channel: v1::Channel::Api as i32, max_conversations: 0 }],
                    ..Default::default()
                }),
            })
            .await,
        Code::InvalidArgument,
        "max conversations",
    );
    expect(
        tenant_admin
            .create_operator(v1::CreateOperatorRequest {
                operator: Some(v1::Operator {
                    id: "anna".into(),
                    display_name: "Anna again".into(),
                    ..Default::default()
                }),
            })
            .await,
        Code::AlreadyExists,
        "operator anna already exists",
    );
    let mut platform = app.admin(&app.platform_token()).await;
    expect(
        platform
            .issue_token(v1::IssueTokenRequest {
                tenant_id: "ghost".into(),
                subject: "x".into(),
                role: v1::Role::Admin as i32,
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "tenant ghost not found",
    );
    expect(
        platform
            .create_tenant(v1::CreateTenantRequest {
                tenant: Some(v1::Tenant { id: "platform".into(), display_name: "P".into(), ..Default::default() }),
            })
            .await,
        Code::InvalidArgument,
        "reserved",
    );

    // --- nothing was published or stored ------------------------------------------------
    assert_eq!(app.stream_len("PARLEY_INBOUND").await, inbound_before, "no inbound message");
    assert_eq!(app.stream_len("PARLEY_EVENTS").await, events_before, "no conversation record");
    assert_eq!(app.table_rows("messages").await, 0);
    assert_eq!(app.table_rows("conversations").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_submission_is_one_message() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &[]).await;
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    let first = ingest.submit_message(submit("c-9", "Повтор", "same-key")).await.unwrap().into_inner();
    let again = ingest.submit_message(submit("c-9", "Повтор", "same-key")).await.unwrap().into_inner();
    assert!(!first.duplicate);
    assert!(again.duplicate, "the retry is recognised");
    assert_eq!(first.message_id, again.message_id);
    assert_eq!(app.stream_len("PARLEY_INBOUND").await, 1);
    // Another tenant may use the same key for its own message.
    let other = app.tenant("globex", &[]).await;
    let mut ingest2 = app.ingest_client(&other.integrator_token).await;
    let theirs = ingest2.submit_message(submit("c-9", "Повтор", "same-key")).await.unwrap().into_inner();
    assert!(!theirs.duplicate);
    assert_ne!(theirs.message_id, first.message_id);
    parley_testkit::eventually(std::time::Duration::from_secs(10), "both messages stored", || async {
        (app.table_rows("messages").await == 2).then_some(())
    })
    .await;
    app.stop().await;
}

/// A record on the conversation log no reader can decode is moved to `PARLEY_DEAD` by each
/// consumer with its reason, blocks nothing behind it, and is stored once however often it
/// is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_record_goes_to_the_dead_letters_and_blocks_nothing() {
    use parley_nats::consume::{DEAD_REASON_HEADER, DEAD_STREAM_HEADER};
    use parley_nats::publish::{KEY_HEADER, SCHEMA_HEADER};

    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let js = async_nats::jetstream::new(async_nats::connect(app.infra.nats.url()).await.expect("nats"));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(SCHEMA_HEADER, "parley.events.v1.ConversationRecord");
    headers.insert(KEY_HEADER, "poison");
    let subject = format!("parley.events.acme.{}", uuid::Uuid::now_v7());
    js.publish_with_headers(subject.clone(), headers, b"\xff\xfe not protobuf".as_slice().into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    // What comes after it is written as usual.
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    let after = ingest.submit_message(submit("crm-1", "После яда", "k-1")).await.expect("submit").into_inner();
    let history = app.history_client(&fx.supervisor_token).await;
    parley_testkit::eventually(std::time::Duration::from_secs(15), "the next record is in history", || {
        let mut history = history.clone();
        let customer = after.customer_id.clone();
        async move {
            let timeline = history
                .get_customer_timeline(v1::GetCustomerTimelineRequest { customer_id: customer, ..Default::default() })
                .await
                .ok()?
                .into_inner();
            (!timeline.messages.is_empty()).then_some(())
        }
    })
    .await;

    // Each reader of the log has its dead letter, with the reason and where it came from.
    let dead = js.get_stream("PARLEY_DEAD").await.expect("dead letters");
    let letter = |consumer: &'static str| {
        let dead = dead.clone();
        async move {
            let m = dead.get_last_raw_message_by_subject(&format!("parley.dead.{consumer}")).await.ok()?;
            Some(m)
        }
    };
    let history_letter =
        parley_testkit::eventually(std::time::Duration::from_secs(10), "history's dead letter", || {
            letter("history-events")
        })
        .await;
    assert_eq!(history_letter.payload.as_ref(), b"\xff\xfe not protobuf");
    let h = &history_letter.headers;
    assert_eq!(h.get(DEAD_STREAM_HEADER).map(|v| v.as_str()), Some("PARLEY_EVENTS"));
    let reason = h.get(DEAD_REASON_HEADER).map(|v| v.as_str().to_owned()).unwrap_or_default();
    assert!(reason.contains("decode"), "{reason}");
    parley_testkit::eventually(std::time::Duration::from_secs(10), "the fan-out's dead letter", || {
        letter("routing-fanout")
    })
    .await;
    // One each, and nothing more comes.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(app.stream_len("PARLEY_DEAD").await, 2);
    app.stop().await;
}
