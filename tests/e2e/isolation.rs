//! Tenant isolation: every API called with another tenant's ids answers NOT_FOUND (or
//! PERMISSION_DENIED where the caller names a tenant), nothing leaks into another tenant's
//! streams, and in PostgreSQL a session without a tenant sees no rows at all.

use std::time::Duration;

use parley_e2e::{CustomerFeed, Desk, describe, set_status, submit};
use parley_proto::v1;
use parley_testkit::{App, eventually};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

fn not_found<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected NOT_FOUND, got {v:?}"),
        Err(s) => assert_eq!(s.code(), Code::NotFound, "{what}: {}", s.message()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_tenant_sees_or_touches_another_tenants_data() {
    let app = App::spawn().await;
    let acme = app.tenant("acme", &["anna"]).await;
    let globex = app.tenant("globex", &["boris"]).await;

    // Acme has a conversation with a customer.
    let mut anna = Desk::open(&app, acme.operator_token("anna"), 0).await.unwrap();
    set_status(&app, acme.operator_token("anna"), v1::OperatorStatus::Online).await;
    let mut boris = Desk::open(&app, globex.operator_token("boris"), 0).await.unwrap();
    set_status(&app, globex.operator_token("boris"), v1::OperatorStatus::Online).await;
    let mut globex_feed = CustomerFeed::open(&app, &globex.integrator_token, "shared-ref", 0).await;
    let sent = app
        .ingest_client(&acme.integrator_token)
        .await
        .submit_message(submit("shared-ref", "Секрет acme", "k1"))
        .await
        .unwrap()
        .into_inner();
    let (conversation, _) = describe(&anna.event(WAIT).await);
    let mut acme_history = app.history_client(&acme.supervisor_token).await;
    eventually(WAIT, "acme's conversation in history", || {
        let mut h = acme_history.clone();
        let id = conversation.clone();
        async move { h.get_conversation(v1::GetConversationRequest { conversation_id: id }).await.ok().map(|_| ()) }
    })
    .await;
    acme_history.get_customer(v1::GetCustomerRequest { customer_id: sent.customer_id.clone() }).await.unwrap();

    // Globex, with acme's ids, finds nothing.
    let mut history = app.history_client(&globex.supervisor_token).await;
    not_found(
        history.get_conversation(v1::GetConversationRequest { conversation_id: conversation.clone() }).await,
        "get_conversation",
    );
    not_found(
        history
            .list_messages(v1::ListMessagesRequest { conversation_id: conversation.clone(), ..Default::default() })
            .await,
        "list_messages",
    );
    not_found(
        history.get_customer(v1::GetCustomerRequest { customer_id: sent.customer_id.clone() }).await,
        "get_customer",
    );
    not_found(
        history
            .get_customer_timeline(v1::GetCustomerTimelineRequest {
                customer_id: sent.customer_id.clone(),
                ..Default::default()
            })
            .await,
        "get_customer_timeline",
    );
    not_found(
        history.list_routing_decisions(v1::ListRoutingDecisionsRequest { conversation_id: conversation.clone() }).await,
        "list_routing_decisions",
    );
    not_found(
        history
            .export_transcript(v1::ExportTranscriptRequest {
                conversation_id: conversation.clone(),
                ..Default::default()
            })
            .await,
        "export_transcript",
    );
    let search = history
        .search_messages(v1::SearchMessagesRequest { query: "Секрет".into(), ..Default::default() })
        .await
        .expect("search");
    assert!(search.into_inner().hits.is_empty(), "globex's search finds acme's message");
    let listed = history.list_conversations(v1::ListConversationsRequest::default()).await.expect("list");
    assert!(listed.into_inner().conversations.is_empty(), "globex's listing shows acme's conversation");
    let mut globex_admin_history = app.history_client(&globex.admin_token).await;
    not_found(
        globex_admin_history
            .erase_customer(v1::EraseCustomerRequest { customer_id: sent.customer_id.clone(), reason: "x".into() })
            .await,
        "erase_customer",
    );
    not_found(
        globex_admin_history
            .set_legal_hold(v1::SetLegalHoldRequest {
                customer_id: sent.customer_id.clone(),
                hold: true,
                reason: "x".into(),
            })
            .await,
        "set_legal_hold",
    );
    let receipts = globex_admin_history
        .list_erasure_receipts(v1::ListErasureReceiptsRequest { customer_id: sent.customer_id.clone() })
        .await
        .expect("receipts");
    assert!(receipts.into_inner().receipts.is_empty());
    let mut routing = app.routing_client(&globex.supervisor_token).await;
    not_found(
        routing
            .close_conversation(v1::CloseConversationRequest {
                conversation_id: conversation.clone(),
                reason: String::new(),
            })
            .await,
        "close_conversation",
    );
    not_found(
        routing
            .transfer_conversation(v1::TransferConversationRequest {
                conversation_id: conversation.clone(),
                target: Some(v1::transfer_conversation_request::Target::OperatorId("boris".into())),
                note: String::new(),
            })
            .await,
        "transfer_conversation",
    );
    not_found(
        routing
            .set_operator_status(v1::SetOperatorStatusRequest {
                operator_id: "anna".into(),
                status: v1::OperatorStatus::Offline as i32,
                ..Default::default()
            })
            .await,
        "set_operator_status of another tenant's operator",
    );
    not_found(
        routing.get_operator_presence(v1::GetOperatorPresenceRequest { operator_id: "anna".into() }).await,
        "get_operator_presence",
    );
    let mut boris_routing = app.routing_client(globex.operator_token("boris")).await;
    not_found(
        boris_routing.accept_offer(v1::AcceptOfferRequest { conversation_id: conversation.clone() }).await,
        "accept_offer",
    );
    match boris.reply(&conversation, "x1", "hijack").await {
        v1::open_session_response::Frame::ReplyRejected(r) => assert_eq!(r.code, "NOT_FOUND", "{}", r.message),
        other => panic!("expected the reply refused, got {other:?}"),
    }
    let mut admin = app.admin(&globex.admin_token).await;
    not_found(admin.get_operator(v1::GetOperatorRequest { operator_id: "anna".into() }).await, "get_operator");
    not_found(admin.get_tenant(v1::GetTenantRequest { tenant_id: "acme".into() }).await, "get_tenant");
    let denied = admin
        .issue_token(v1::IssueTokenRequest {
            tenant_id: "acme".into(),
            subject: "x".into(),
            role: v1::Role::Admin as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Nothing of acme's reached globex's desk or its customer stream for the same ref.
    boris.expect_quiet(Duration::from_millis(300)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), globex_feed.next(Duration::from_secs(1))).await.is_err(),
        "globex's stream for the same customer ref stays empty"
    );
    // Acme's conversation is untouched.
    let c = acme_history
        .get_conversation(v1::GetConversationRequest { conversation_id: conversation.clone() })
        .await
        .unwrap();
    assert_eq!(c.into_inner().conversation.unwrap().operator_id, "anna");

    // In the database, a session without a tenant sees nothing, though rows exist.
    assert!(app.table_rows("messages").await > 0);
    let db = parley_pg::Db::connect(&app.infra.db.url(), 1, "parley_app").unwrap();
    for table in [
        "customers",
        "customer_identities",
        "conversations",
        "messages",
        "assignments",
        "routing_decisions",
        "message_attachments",
        "legal_holds",
        "erasure_receipts",
        "retention_policies",
        "customer_links",
        "audit_log",
    ] {
        assert_eq!(db.count_without_tenant(table).await.unwrap(), 0, "{table} without a tenant");
    }
    // And with globex's tenant, none of acme's.
    let rows = db
        .messages(&parley_domain::TenantId::parse("globex").unwrap(), conversation.parse().unwrap(), None, 10, false)
        .await
        .unwrap();
    assert!(rows.is_empty());
    app.stop().await;
}
