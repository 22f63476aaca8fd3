//! A customer's erasure on real PostgreSQL, NATS and the media store: refused under a legal
//! hold and while a conversation is open; then every row of theirs in every table, their
//! attachments' files, their search entries and their records on every stream (the
//! conversation log, replies, inbound, desk feeds, dead letters) are gone, a receipt says
//! how much, and another customer keeps everything.
//! Retention policies, applied continuously: closed conversations past their channel's
//! policy are deleted or anonymised; open ones and those under a legal hold stay.

use std::time::Duration;

use parley_e2e::{accepted, assigned, submit};
use parley_proto::v1;
use parley_testkit::{App, eventually};
use tonic::Code;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

/// Rows of every table that hold anything of these ids, under the tenant.
async fn footprint(app: &App, customer: Uuid, conversation: Uuid, messages: Vec<Uuid>) -> Vec<(&'static str, i64)> {
    let db = parley_pg::Db::connect(&app.infra.db.url(), 1, "parley_app").expect("db");
    let tenant = parley_domain::TenantId::parse("acme").unwrap();
    // Each names the three parameters, as a row `p`.
    let queries: [(&'static str, &'static str); 11] = [
        ("customers", "FROM customers t WHERE t.id = p.c"),
        ("customer_identities", "FROM customer_identities t WHERE t.customer_id = p.c"),
        ("conversations", "FROM conversations t WHERE t.id = p.v OR t.customer_id = p.c"),
        ("messages", "FROM messages t WHERE t.customer_id = p.c OR t.conversation_id = p.v OR t.id = ANY(p.m)"),
        ("message_attachments", "FROM message_attachments t WHERE t.message_id = ANY(p.m)"),
        ("message_deliveries", "FROM message_deliveries t WHERE t.message_id = ANY(p.m)"),
        ("assignments", "FROM assignments t WHERE t.conversation_id = p.v"),
        ("routing_decisions", "FROM routing_decisions t WHERE t.conversation_id = p.v"),
        ("conversation_notes", "FROM conversation_notes t WHERE t.conversation_id = p.v"),
        ("csat_answers", "FROM csat_answers t WHERE t.conversation_id = p.v"),
        ("search", "FROM messages t WHERE t.search @@ websearch_to_tsquery('russian', 'договор')"),
    ];
    let mut out = Vec::new();
    for (table, from) in queries {
        let messages = messages.clone();
        let sql = format!(
            "WITH p AS (SELECT $1::uuid AS c, $2::uuid AS v, $3::uuid[] AS m) SELECT count(*) FROM p, {}",
            &from[5..]
        );
        let n = db
            .tenant_tx(&tenant, move |tx| {
                Box::pin(async move {
                    Ok(tx.query_one(&sql, &[&customer, &conversation, &messages]).await?.get::<_, i64>(0))
                })
            })
            .await
            .expect(table);
        out.push((table, n));
    }
    out
}

/// Every payload on `subject` of `stream`, oldest first.
async fn stream_payloads(js: &async_nats::jetstream::Context, stream: &str, subject: &str) -> Vec<Vec<u8>> {
    use async_nats::jetstream::consumer;
    use futures_util::StreamExt;
    let s = js.get_stream(stream).await.expect("stream");
    let mut reader = s
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("reader");
    let mut left = reader.info().await.expect("reader info").num_pending;
    let mut out = Vec::new();
    let mut messages = reader.messages().await.expect("messages");
    while left > 0 {
        let m = tokio::time::timeout(WAIT, messages.next()).await.expect("in time").expect("more").expect("message");
        left = m.info().expect("info").pending;
        out.push(m.payload.to_vec());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_customer_leaves_nothing_behind_but_a_receipt() {
    let (app, _relay, fx, mut desk, _alive) = crate::email::start_relayed().await;
    let admin = fx.admin_token.clone();
    // Oleg writes with a contract attached; anna answers. Another customer writes too.
    let mail = "From: Oleg <oleg@example.ru>\r\nTo: support@acme.example\r\nSubject: Contract\r\n\
Message-ID: <erase-1@example.ru>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nПришлю договор, удалите потом мои данные\r\n\
--b\r\nContent-Type: application/pdf; name=dogovor.pdf\r\nContent-Disposition: attachment\r\n\r\n%PDF-1.4 contract\r\n--b--\r\n";
    let sent = crate::email::deliver(&app, "oleg@example.ru", &["support@acme.example"], mail.as_bytes()).await;
    assert_eq!(sent.0, 250, "{}", sent.1);
    let a = assigned(&mut desk).await;
    let conversation = a.conversation.expect("conversation");
    let customer: Uuid = conversation.customer_id.parse().unwrap();
    let file = a.recent_messages[0].attachments[0].id.clone();
    let ok = accepted(desk.reply(&conversation.id, "r-1", "Договор получили.").await);
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    let other = ingest.submit_message(submit("crm-9", "Я про договор тоже", "o-1")).await.expect("submit").into_inner();
    let history = app.history_client(&admin).await;
    eventually(WAIT, "history has both customers' messages", || async {
        let found = history
            .clone()
            .search_messages(v1::SearchMessagesRequest { query: "договор".into(), ..Default::default() })
            .await
            .ok()?
            .into_inner();
        (found.hits.len() == 3).then_some(())
    })
    .await;
    let conversation_id: Uuid = conversation.id.parse().unwrap();
    let messages = vec![a.recent_messages[0].id.parse().unwrap(), ok.message_id.parse().unwrap()];
    // A note for colleagues (never sent to the customer).
    let mut anna_history = app.history_client(fx.operator_token("anna")).await;
    let note =
        v1::AddConversationNoteRequest { conversation_id: conversation.id.clone(), text: "Клиент VIP".into() };
    anna_history.add_conversation_note(note).await.expect("note");
    let notes = anna_history
        .list_conversation_notes(v1::ListConversationNotesRequest { conversation_id: conversation.id.clone() })
        .await
        .expect("notes")
        .into_inner()
        .notes;
    assert_eq!((notes[0].author.as_str(), notes[0].text.as_str()), ("anna", "Клиент VIP"));
    // The reply goes out through the relay: a delivery row too.
    parley_e2e::delivery_state(&mut desk, &ok.message_id, v1::DeliveryState::Sent).await;
    eventually(WAIT, "every table holds something of the customer", || async {
        let before = footprint(&app, customer, conversation_id, messages.clone()).await;
        // (The satisfaction answer comes after the close, below.)
        before.iter().all(|(t, n)| *n > 0 || *t == "csat_answers").then_some(())
    })
    .await;

    let mut history = app.history_client(&admin).await;
    let erase = |reason: &str| v1::EraseCustomerRequest { customer_id: customer.to_string(), reason: reason.into() };
    // A legal hold blocks it; so does an open conversation.
    let hold = v1::SetLegalHoldRequest { customer_id: customer.to_string(), hold: true, reason: "case 17/2026".into() };
    history.set_legal_hold(hold).await.expect("hold");
    let refused = history.erase_customer(erase("GDPR request 5")).await.expect_err("held");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("case 17/2026"), "{}", refused.message());
    let lift = v1::SetLegalHoldRequest { customer_id: customer.to_string(), hold: false, reason: String::new() };
    history.set_legal_hold(lift).await.expect("lift");
    let refused = history.erase_customer(erase("GDPR request 5")).await.expect_err("open");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains(&conversation.id), "{}", refused.message());
    // Only admins; a reason is required.
    let supervisor = app.history_client(&fx.supervisor_token).await.erase_customer(erase("x")).await.expect_err("role");
    assert_eq!(supervisor.code(), Code::PermissionDenied);
    assert_eq!(history.erase_customer(erase(" ")).await.expect_err("reason").code(), Code::InvalidArgument);

    let mut routing = app.routing_client(fx.operator_token("anna")).await;
    routing
        .close_conversation(v1::CloseConversationRequest {
            conversation_id: conversation.id.clone(),
            reason: String::new(),
        })
        .await
        .expect("close");
    // Satisfaction after the close: from the integrator, 1 to 5.
    let mut crm = app.history_client(&fx.integrator_token).await;
    let csat = |score: u32| v1::RecordCsatRequest {
        conversation_id: conversation.id.clone(),
        score,
        comment: "Быстро ответили".into(),
    };
    assert_eq!(crm.record_csat(csat(6)).await.expect_err("score").code(), Code::InvalidArgument);
    let operator = anna_history.record_csat(csat(5)).await.expect_err("operators do not answer for customers");
    assert_eq!(operator.code(), Code::PermissionDenied);
    eventually(WAIT, "the answer, once history has the close", || async {
        crm.clone().record_csat(csat(5)).await.ok()
    })
    .await;
    let answer = history
        .get_conversation(v1::GetConversationRequest { conversation_id: conversation.id.clone() })
        .await
        .expect("conversation")
        .into_inner()
        .csat
        .expect("csat");
    assert_eq!((answer.score, answer.comment.as_str()), (5, "Быстро ответили"));
    let receipt = eventually(WAIT, "the erasure, once history has the close", || async {
        history.clone().erase_customer(erase("GDPR request 5")).await.ok().map(|r| r.into_inner().receipt.unwrap())
    })
    .await;
    assert_eq!(
        (receipt.conversations, receipt.messages, receipt.identities, receipt.attachments, receipt.files),
        (1, 2, 1, 1, 1),
        "{receipt:?}"
    );
    assert!(receipt.log_records >= 3, "the log's records and the reply: {receipt:?}");
    assert_eq!(receipt.requested_by, "test-admin");

    // Nothing is left: not in any table, not in the search, not in the media store, not on
    // the conversation log; only the receipt.
    let after = footprint(&app, customer, conversation_id, messages).await;
    let expected: Vec<(&str, i64)> = after.iter().map(|(t, _)| (*t, if *t == "search" { 1 } else { 0 })).collect();
    assert_eq!(after, expected, "only the other customer's message is still found");
    let token = fx.operator_token("anna").to_owned();
    let response = reqwest::Client::new()
        .get(format!("http://{}/v1/attachments/{file}", app.webhooks_addr()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(response.status().as_u16(), 404, "the file is gone");
    let js = async_nats::jetstream::new(async_nats::connect(app.infra.nats.url()).await.expect("nats"));
    let events = js.get_stream("PARLEY_EVENTS").await.expect("stream");
    let left = events.get_last_raw_message_by_subject(&format!("parley.events.acme.{}", conversation.id)).await;
    assert!(left.is_err(), "the conversation log still holds a record");
    // Nor on the inbound stream, the desks' feeds or the dead letters, which mix customers
    // on one subject: the other customer's message is still there.
    let mentions = |payloads: &[Vec<u8>], needle: &str| {
        payloads.iter().filter(|p| p.windows(needle.len()).any(|w| w == needle.as_bytes())).count()
    };
    for (stream, subject) in [
        ("PARLEY_INBOUND", "parley.inbound.acme.>"),
        ("PARLEY_DESK", "parley.desk.acme.>"),
        ("PARLEY_DEAD", "parley.dead.>"),
    ] {
        let payloads = stream_payloads(&js, stream, subject).await;
        for needle in [customer.to_string().as_str(), conversation.id.as_str(), "удалите потом мои данные"]
        {
            assert_eq!(mentions(&payloads, needle), 0, "{stream} still holds {needle}");
        }
    }
    let inbound = stream_payloads(&js, "PARLEY_INBOUND", "parley.inbound.acme.>").await;
    assert_eq!(mentions(&inbound, "Я про договор тоже"), 1, "the other customer's message stays");
    let status =
        history.get_customer(v1::GetCustomerRequest { customer_id: customer.to_string() }).await.expect_err("gone");
    assert_eq!(status.code(), Code::NotFound);
    let receipts = history
        .list_erasure_receipts(v1::ListErasureReceiptsRequest { customer_id: customer.to_string() })
        .await
        .expect("receipts")
        .into_inner()
        .receipts;
    assert_eq!(receipts, vec![receipt]);
    // The other customer keeps everything.
    let kept = history
        .get_customer(v1::GetCustomerRequest { customer_id: other.customer_id.clone() })
        .await
        .expect("the other customer");
    assert_eq!(kept.into_inner().customer.expect("customer").identities.len(), 1);
    app.stop().await;
}

/// A customer writes on the API channel; anna gets it and, if asked, closes it.
async fn conversation(
    app: &App,
    fx: &parley_testkit::TenantFixture,
    desk: &mut parley_e2e::Desk,
    who: &str,
    close: bool,
) -> v1::Conversation {
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    ingest.submit_message(submit(who, &format!("Сообщение от {who}"), who)).await.expect("submit");
    // The desk hears of earlier closes first.
    let conversation = loop {
        if let Some(v1::desk_event::Kind::Assigned(a)) = desk.event(WAIT).await.kind {
            break a.conversation.expect("conversation");
        }
    };
    if close {
        let mut routing = app.routing_client(fx.operator_token("anna")).await;
        let request = v1::CloseConversationRequest { conversation_id: conversation.id.clone(), reason: String::new() };
        routing.close_conversation(request).await.expect("close");
    }
    conversation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_or_anonymises_closed_conversations_but_not_held_or_open_ones() {
    let app = App::spawn().await;
    let acme = app.tenant("acme", &["anna"]).await;
    let mut desk = parley_e2e::online(&app, &acme, "anna").await;
    let _alive = desk.keep_alive();
    let closed = conversation(&app, &acme, &mut desk, "crm-1", true).await;
    let open = conversation(&app, &acme, &mut desk, "crm-2", false).await;
    let held = conversation(&app, &acme, &mut desk, "crm-3", true).await;
    let mut history = app.history_client(&acme.admin_token).await;
    let reader = history.clone();
    let exists = |id: String| {
        let history = reader.clone();
        async move {
            let r = history.clone().get_conversation(v1::GetConversationRequest { conversation_id: id }).await;
            match r {
                Ok(r) => Some(r.into_inner().conversation.expect("conversation").status),
                Err(s) if s.code() == Code::NotFound => None,
                Err(s) => panic!("{s:?}"),
            }
        }
    };
    eventually(WAIT, "history has the closes", || async {
        let closed_status = exists(closed.id.clone()).await?;
        let held_status = exists(held.id.clone()).await?;
        let done = v1::ConversationStatus::Closed as i32;
        (closed_status == done && held_status == done).then_some(())
    })
    .await;
    let hold =
        v1::SetLegalHoldRequest { customer_id: held.customer_id.clone(), hold: true, reason: "dispute 8".into() };
    history.set_legal_hold(hold).await.expect("hold");

    // Bad policies are refused; only admins set them.
    let policy = |channel: v1::Channel, days: u32, action: v1::RetentionAction| v1::SetRetentionPolicyRequest {
        policy: Some(v1::RetentionPolicy {
            channel: channel as i32,
            days,
            action: action as i32,
            ..Default::default()
        }),
    };
    for (bad, field) in [
        (policy(v1::Channel::Api, 36_501, v1::RetentionAction::Delete), "policy.days"),
        (policy(v1::Channel::Api, 1, v1::RetentionAction::Unspecified), "policy.action"),
        (v1::SetRetentionPolicyRequest { policy: None }, "policy"),
    ] {
        let status = history.set_retention_policy(bad).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().contains(field), "{}", status.message());
    }
    let denied = app
        .history_client(&acme.supervisor_token)
        .await
        .set_retention_policy(policy(v1::Channel::Api, 0, v1::RetentionAction::Delete))
        .await
        .expect_err("supervisors do not set policies");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // API conversations go as soon as they are closed.
    let set =
        history.set_retention_policy(policy(v1::Channel::Api, 0, v1::RetentionAction::Delete)).await.expect("set");
    assert_eq!(set.into_inner().policy.expect("policy").set_by, "test-admin");
    eventually(WAIT, "the closed conversation is deleted", || async {
        exists(closed.id.clone()).await.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(exists(open.id.clone()).await.is_some(), "an open conversation stays");
    assert!(exists(held.id.clone()).await.is_some(), "a held customer's conversation stays");
    let listed = history.list_retention_policies(v1::ListRetentionPoliciesRequest {}).await.expect("list").into_inner();
    assert_eq!(listed.policies.len(), 1);

    // Anonymise, for every channel: the conversation stays, its texts go.
    history
        .delete_retention_policy(v1::DeleteRetentionPolicyRequest { channel: v1::Channel::Api as i32 })
        .await
        .expect("delete");
    let status = history
        .delete_retention_policy(v1::DeleteRetentionPolicyRequest { channel: v1::Channel::Api as i32 })
        .await
        .expect_err("gone");
    assert_eq!(status.code(), Code::NotFound);
    let later = conversation(&app, &acme, &mut desk, "crm-4", true).await;
    history
        .set_retention_policy(policy(v1::Channel::Unspecified, 0, v1::RetentionAction::Anonymise))
        .await
        .expect("set");
    let token = acme.supervisor_token.clone();
    eventually(WAIT, "the closed conversation is anonymised", || async {
        let messages = parley_e2e::history_messages(&app, &token, &later.id).await?;
        (!messages.is_empty() && messages.iter().all(|m| m.text.is_empty())).then_some(())
    })
    .await;
    assert!(exists(later.id.clone()).await.is_some(), "an anonymised conversation stays");
    let held_texts = parley_e2e::history_messages(&app, &token, &held.id).await.expect("held");
    assert!(held_texts.iter().all(|m| !m.text.is_empty()), "a held customer's texts stay");
    app.stop().await;
}
