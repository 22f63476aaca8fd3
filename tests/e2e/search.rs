//! History's reading tools on real PostgreSQL. Full-text search: Russian and English words
//! found in their other forms, the filters (channel, sender, time, negativity) and paging, one tenant's
//! messages invisible to another, and bad searches refused with a message naming the
//! field. Conversations listed by status, queue, operator, channel and time. Messages kept
//! by month. Transcripts: a
//! conversation as text or JSON in the reader's zone and language.

use std::time::Duration;

use parley_e2e::submit;
use parley_proto::v1;
use parley_testkit::{App, eventually};

const WAIT: Duration = Duration::from_secs(15);

fn search(query: &str) -> v1::SearchMessagesRequest {
    v1::SearchMessagesRequest { query: query.into(), ..Default::default() }
}

/// The texts a search finds (all pages of `page_size`), newest first.
async fn found(app: &App, token: &str, mut request: v1::SearchMessagesRequest) -> Vec<String> {
    let mut history = app.history_client(token).await;
    let mut texts = Vec::new();
    loop {
        let page = history.search_messages(request.clone()).await.expect("search").into_inner();
        texts.extend(page.hits.iter().map(|h| h.message.as_ref().expect("message").text.clone()));
        if page.next_page_token.is_empty() {
            return texts;
        }
        request.page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_found_by_their_words_in_russian_and_english() {
    let app = App::spawn().await;
    let acme = app.tenant("acme", &["anna"]).await;
    let globex = app.tenant("globex", &["boris"]).await;
    let mut ingest = app.ingest_client(&acme.integrator_token).await;
    let texts = [
        ("c-1", "У меня жалоба на списание 500 ₽"),
        ("c-2", "Жалобы на ваш банк уже писал, ответа нет"),
        ("c-3", "I want a refund for order 4711"),
        ("c-4", "Refunds take too long, this is my second complaint"),
        ("c-5", "Здравствуйте, подскажите график работы"),
    ];
    for (i, (customer, text)) in texts.iter().enumerate() {
        ingest.submit_message(submit(customer, text, &format!("k-{i}"))).await.expect("submit");
        // Distinct times, so newest-first is one order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut theirs = app.ingest_client(&globex.integrator_token).await;
    theirs.submit_message(submit("g-1", "Жалоба от другого клиента", "g-k")).await.expect("submit");

    let token = acme.supervisor_token.clone();
    eventually(WAIT, "history has every message", || async {
        (found(&app, &token, search("жалоба OR refund OR график")).await.len() == 5).then_some(())
    })
    .await;

    // Word forms: the noun's other cases, the verb's other tenses, plurals.
    assert_eq!(
        found(&app, &token, search("жалоба")).await,
        ["Жалобы на ваш банк уже писал, ответа нет", "У меня жалоба на списание 500 ₽"]
    );
    assert_eq!(
        found(&app, &token, search("refunded")).await,
        ["Refunds take too long, this is my second complaint", "I want a refund for order 4711"]
    );
    // All words must occur; a phrase in order; a word excluded; a number as it is.
    assert_eq!(found(&app, &token, search("жалобы ответа")).await, ["Жалобы на ваш банк уже писал, ответа нет"]);
    assert_eq!(found(&app, &token, search("\"second complaint\"")).await.len(), 1);
    assert_eq!(found(&app, &token, search("\"complaint second\"")).await.len(), 0);
    assert_eq!(found(&app, &token, search("refund -complaint")).await, ["I want a refund for order 4711"]);
    assert_eq!(found(&app, &token, search("4711")).await, ["I want a refund for order 4711"]);

    // The matched words are marked in the passage shown.
    let hit = app
        .history_client(&token)
        .await
        .search_messages(search("списания"))
        .await
        .expect("search")
        .into_inner()
        .hits
        .remove(0);
    assert!(hit.highlight.contains("«списание»"), "{}", hit.highlight);

    // Paging: one at a time, the same two in the same order.
    let paged = v1::SearchMessagesRequest { page_size: 1, ..search("жалоба") };
    assert_eq!(found(&app, &token, paged).await.len(), 2);

    // Filters: channel, sender, time.
    let api_only = v1::SearchMessagesRequest { channel: v1::Channel::Api as i32, ..search("жалоба") };
    assert_eq!(found(&app, &token, api_only).await.len(), 2);
    let telegram_only = v1::SearchMessagesRequest { channel: v1::Channel::Telegram as i32, ..search("жалоба") };
    assert!(found(&app, &token, telegram_only).await.is_empty());
    let operators =
        v1::SearchMessagesRequest { sender_kind: v1::SenderKind::Operator as i32, ..search("жалоба") };
    assert!(found(&app, &token, operators).await.is_empty());
    let future = parley_proto::convert::timestamp(parley_kit::clock::now());
    let later = v1::SearchMessagesRequest { start_time: Some(future), ..search("жалоба") };
    assert!(found(&app, &token, later).await.is_empty());
    let earlier = v1::SearchMessagesRequest { end_time: Some(future), ..search("жалоба") };
    assert_eq!(found(&app, &token, earlier).await.len(), 2);

    // Another tenant finds only its own.
    assert_eq!(found(&app, &globex.supervisor_token, search("жалоба")).await, ["Жалоба от другого клиента"]);

    // Negativity: complaints are flagged, and found with or without words.
    let negative = v1::SearchMessagesRequest { negative_only: true, ..search("") };
    assert_eq!(
        found(&app, &token, negative.clone()).await,
        [
            "Refunds take too long, this is my second complaint",
            "Жалобы на ваш банк уже писал, ответа нет",
            "У меня жалоба на списание 500 ₽"
        ]
    );
    assert_eq!(
        found(&app, &token, v1::SearchMessagesRequest { query: "refund".into(), ..negative.clone() }).await,
        ["Refunds take too long, this is my second complaint"]
    );
    assert_eq!(found(&app, &globex.supervisor_token, negative).await, ["Жалоба от другого клиента"]);
    let hits =
        app.history_client(&token).await.search_messages(search("refund")).await.expect("search").into_inner().hits;
    let flags: Vec<bool> = hits.iter().map(|h| h.negative).collect();
    assert_eq!(flags, [true, false], "the complaint is flagged, the plain refund request is not");

    // Bad searches: refused, naming what is wrong.
    let mut history = app.history_client(&token).await;
    let epoch = parley_proto::convert::timestamp(parley_domain::Timestamp::from_millis(0));
    let bad = [
        (search("  "), "query"),
        (search(&"я".repeat(257)), "query"),
        (v1::SearchMessagesRequest { page_token: "garbage".into(), ..search("жалоба") }, "page_token"),
        (v1::SearchMessagesRequest { page_size: 501, ..search("жалоба") }, "page_size"),
        (v1::SearchMessagesRequest { channel: 99, ..search("жалоба") }, "channel"),
        (v1::SearchMessagesRequest { operator_id: "Not An Id".into(), ..search("жалоба") }, "operator_id"),
        (
            v1::SearchMessagesRequest { start_time: Some(future), end_time: Some(epoch), ..search("жалоба") },
            "start_time",
        ),
    ];
    for (request, field) in bad {
        let status = history.search_messages(request).await.expect_err(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
    // A page token of one search does not continue another.
    let first = history
        .search_messages(v1::SearchMessagesRequest { page_size: 1, ..search("жалоба") })
        .await
        .expect("search")
        .into_inner();
    let other = v1::SearchMessagesRequest { page_token: first.next_page_token, ..search("refund") };
    assert_eq!(history.search_messages(other).await.expect_err("foreign token").code(), tonic::Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_exports_as_a_transcript_in_text_and_json() {
    let app = App::spawn().await;
    let acme = app.tenant("acme", &["anna"]).await;
    let mut desk = parley_e2e::online(&app, &acme, "anna").await;
    let _alive = desk.keep_alive();
    let mut ingest = app.ingest_client(&acme.integrator_token).await;
    ingest.submit_message(submit("crm-7", "Где мой заказ?\nНомер 4711", "t-1")).await.expect("submit");
    let (conversation, _) = parley_e2e::assigned_text(&mut desk).await;
    parley_e2e::accepted(desk.reply(&conversation.id, "r-1", "Уже в пути, будет завтра.").await);
    let token = acme.supervisor_token.clone();
    eventually(WAIT, "history has both messages", || async {
        let messages = parley_e2e::history_messages(&app, &token, &conversation.id).await?;
        (messages.len() == 2).then_some(())
    })
    .await;

    let mut history = app.history_client(&token).await;
    let request = |format: v1::TranscriptFormat, tz: &str, language: &str| v1::ExportTranscriptRequest {
        conversation_id: conversation.id.clone(),
        format: format as i32,
        time_zone: tz.into(),
        language: language.into(),
    };
    let text = history
        .export_transcript(request(v1::TranscriptFormat::Text, "Europe/Moscow", "ru"))
        .await
        .expect("text transcript")
        .into_inner();
    assert_eq!(text.content_type, "text/plain; charset=utf-8");
    assert_eq!(text.file_name, format!("transcript-{}.txt", conversation.id));
    let lines: Vec<&str> = text.content.lines().collect();
    assert!(lines[0].starts_with(&format!("Обращение {} (api), открыто ", conversation.id)), "{}", text.content);
    assert!(lines[0].ends_with("[Europe/Moscow]"), "{}", lines[0]);
    assert!(
        lines.iter().any(|l| l.ends_with("Клиент (Customer crm-7): Где мой заказ?")
            || l.contains("Клиент") && l.ends_with("Где мой заказ?")),
        "{}",
        text.content
    );
    assert!(lines.iter().any(|l| l.trim() == "Номер 4711"), "{}", text.content);
    assert!(lines.iter().any(|l| l.ends_with("Оператор anna: Уже в пути, будет завтра.")), "{}", text.content);

    let json = history.export_transcript(request(v1::TranscriptFormat::Json, "", "")).await.expect("json").into_inner();
    assert_eq!(json.content_type, "application/json");
    let v: serde_json::Value = serde_json::from_str(&json.content).expect("JSON");
    let senders: Vec<&str> = v["messages"].as_array().unwrap().iter().map(|m| m["sender"].as_str().unwrap()).collect();
    assert_eq!(senders, ["customer", "operator"]);
    assert!(v["messages"][0]["time"].as_str().unwrap().ends_with("+00:00"), "{v}");

    // Bad requests name the field; another tenant's conversation is not found.
    for (r, field) in [
        (request(v1::TranscriptFormat::Text, "Mars/Olympus", "ru"), "time_zone"),
        (request(v1::TranscriptFormat::Text, "", "de"), "language"),
        (v1::ExportTranscriptRequest { format: 9, ..request(v1::TranscriptFormat::Text, "", "") }, "format"),
        (
            v1::ExportTranscriptRequest { conversation_id: "x".into(), ..request(v1::TranscriptFormat::Text, "", "") },
            "conversation_id",
        ),
    ] {
        let status = history.export_transcript(r).await.expect_err(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
    let globex = app.tenant("globex", &[]).await;
    let status = app
        .history_client(&globex.supervisor_token)
        .await
        .export_transcript(request(v1::TranscriptFormat::Text, "", ""))
        .await
        .expect_err("another tenant's");
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Who read it is on record, in acme's audit only.
    let audit = history
        .list_audit_entries(v1::ListAuditEntriesRequest { target: conversation.id.clone(), ..Default::default() })
        .await
        .expect("audit")
        .into_inner()
        .entries;
    let exports: Vec<(&str, &str)> =
        audit.iter().filter(|e| e.action == "export_transcript").map(|e| (e.actor.as_str(), e.role.as_str())).collect();
    // Two exports and three refused ones: an attempt is on record too (the one with a
    // malformed id named nothing to record).
    assert_eq!(exports.len(), 5, "{audit:?}");
    assert!(exports.iter().all(|e| *e == ("test-supervisor", "supervisor")), "{exports:?}");
    assert!(audit.iter().any(|e| e.action == "list_messages"), "{audit:?}");
    let theirs = app
        .history_client(&globex.supervisor_token)
        .await
        .list_audit_entries(v1::ListAuditEntriesRequest { target: conversation.id.clone(), ..Default::default() })
        .await
        .expect("globex's audit");
    assert!(
        theirs.into_inner().entries.iter().all(|e| e.actor != "test-supervisor" || e.action == "export_transcript")
    );
    let denied = app
        .history_client(acme.operator_token("anna"))
        .await
        .list_audit_entries(v1::ListAuditEntriesRequest::default())
        .await
        .expect_err("operators do not read the audit");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    app.stop().await;
}

/// The customers of the conversations a listing finds (all pages), in its order.
async fn listed(app: &App, token: &str, mut request: v1::ListConversationsRequest) -> Vec<String> {
    let mut history = app.history_client(token).await;
    let mut ids = Vec::new();
    loop {
        let page = history.list_conversations(request.clone()).await.expect("list").into_inner();
        ids.extend(page.conversations.iter().map(|c| c.customer_id.clone()));
        if page.next_page_token.is_empty() {
            return ids;
        }
        request.page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_listed_by_status_queue_operator_channel_and_time() {
    let app = App::spawn().await;
    let acme = app.tenant("acme", &["anna"]).await;
    let globex = app.tenant("globex", &["boris"]).await;
    acme.create_queue(&app, v1::Queue { id: "sales".into(), display_name: "Продажи".into(), ..Default::default() })
        .await;
    acme.set_api_seats(&app, "anna", 1).await;
    let mut anna = parley_e2e::online(&app, &acme, "anna").await;
    let mut ingest = app.ingest_client(&acme.integrator_token).await;
    // c-1 goes to Anna and is closed; with Anna away, c-2 and c-3 (on sales) wait.
    let first = ingest.submit_message(submit("c-1", "Первый", "k-1")).await.expect("submit").into_inner().customer_id;
    let (conversation, what) = parley_e2e::describe(&anna.event(WAIT).await);
    assert_eq!(what, "assigned");
    app.routing_client(acme.operator_token("anna"))
        .await
        .close_conversation(v1::CloseConversationRequest { conversation_id: conversation, reason: "done".into() })
        .await
        .expect("close");
    parley_e2e::set_status(&app, acme.operator_token("anna"), v1::OperatorStatus::Away).await;
    let opened_later = parley_proto::convert::timestamp(parley_kit::clock::now());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = ingest.submit_message(submit("c-2", "Второй", "k-2")).await.expect("submit").into_inner();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let third = ingest
        .submit_message(v1::SubmitMessageRequest { queue_id: "sales".into(), ..submit("c-3", "Третий", "k-3") })
        .await
        .expect("submit")
        .into_inner();
    let (second, third) = (second.customer_id, third.customer_id);
    let mut theirs = app.ingest_client(&globex.integrator_token).await;
    theirs.submit_message(submit("g-1", "Чужой", "g-k")).await.expect("submit");

    let token = acme.supervisor_token.clone();
    let all = v1::ListConversationsRequest::default();
    eventually(WAIT, "history has the three conversations, c-1 closed", || async {
        let closed = v1::ListConversationsRequest { status: v1::ConversationStatus::Closed as i32, ..all.clone() };
        (listed(&app, &token, all.clone()).await.len() == 3 && listed(&app, &token, closed).await.len() == 1)
            .then_some(())
    })
    .await;
    // Newest first, a page at a time.
    assert_eq!(
        listed(&app, &token, v1::ListConversationsRequest { page_size: 1, ..all.clone() }).await,
        [third.clone(), second.clone(), first.clone()]
    );
    let by = |r: v1::ListConversationsRequest| listed(&app, &token, r);
    let status = |s: v1::ConversationStatus| v1::ListConversationsRequest { status: s as i32, ..all.clone() };
    assert_eq!(by(status(v1::ConversationStatus::Closed)).await, [first.as_str()]);
    assert_eq!(by(status(v1::ConversationStatus::Queued)).await, [third.clone(), second.clone()]);
    assert!(by(status(v1::ConversationStatus::Assigned)).await.is_empty());
    assert_eq!(by(v1::ListConversationsRequest { queue_id: "sales".into(), ..all.clone() }).await, [third.as_str()]);
    assert_eq!(by(v1::ListConversationsRequest { operator_id: "anna".into(), ..all.clone() }).await, [first.as_str()]);
    assert_eq!(
        by(v1::ListConversationsRequest { channel: v1::Channel::Api as i32, ..all.clone() }).await,
        [third.clone(), second.clone(), first.clone()]
    );
    assert!(by(v1::ListConversationsRequest { channel: v1::Channel::Telegram as i32, ..all.clone() }).await.is_empty());
    assert_eq!(
        by(v1::ListConversationsRequest { start_time: Some(opened_later), ..all.clone() }).await,
        [third.clone(), second.clone()]
    );
    assert_eq!(
        by(v1::ListConversationsRequest { end_time: Some(opened_later), ..all.clone() }).await,
        [first.as_str()]
    );
    // Another tenant lists its own only.
    assert_eq!(listed(&app, &globex.supervisor_token, all.clone()).await.len(), 1);

    // Bad requests are refused, naming what is wrong.
    let mut history = app.history_client(&token).await;
    let page = history
        .list_conversations(v1::ListConversationsRequest { page_size: 1, ..all.clone() })
        .await
        .expect("list")
        .into_inner();
    let cases = [
        (v1::ListConversationsRequest { status: 99, ..all.clone() }, "status"),
        (v1::ListConversationsRequest { channel: 99, ..all.clone() }, "channel"),
        (v1::ListConversationsRequest { queue_id: "no such queue!".into(), ..all.clone() }, "queue_id"),
        (v1::ListConversationsRequest { operator_id: "a\u{0}b".into(), ..all.clone() }, "operator_id"),
        (v1::ListConversationsRequest { page_size: 501, ..all.clone() }, "page_size"),
        (v1::ListConversationsRequest { page_token: "not a token".into(), ..all.clone() }, "page_token"),
        // A token holds to the filters it was given with.
        (
            v1::ListConversationsRequest {
                page_token: page.next_page_token.clone(),
                ..status(v1::ConversationStatus::Queued)
            },
            "page_token",
        ),
        (
            v1::ListConversationsRequest {
                start_time: Some(opened_later),
                end_time: Some(opened_later),
                ..all.clone()
            },
            "start_time",
        ),
    ];
    for (request, field) in cases {
        let refused = history.list_conversations(request.clone()).await.expect_err(field);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{field}: {}", refused.message());
        assert!(refused.message().contains(field), "{field}: {}", refused.message());
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_kept_by_month_and_one_dated_outside_the_months_still_lands() {
    let app = App::spawn().await;
    let acme = app.tenant("acme", &["anna"]).await;
    let (owner, connection) = tokio_postgres::connect(&app.infra.db.url(), tokio_postgres::NoTls).await.expect("db");
    tokio::spawn(connection);
    let month_of = |at: &str| format!("messages_{}", &at[..7].replace('-', "_"));
    let partitions = async || -> Vec<String> {
        owner
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                    WHERE i.inhparent = 'messages'::regclass ORDER BY 1",
                &[],
            )
            .await
            .expect("partitions")
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    // This month and the next three exist, besides the default.
    let now: String = owner.query_one("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')", &[]).await.unwrap().get(0);
    let ahead: String = owner
        .query_one("SELECT to_char((now() AT TIME ZONE 'UTC') + interval '3 months', 'YYYY-MM')", &[])
        .await
        .unwrap()
        .get(0);
    let made = partitions().await;
    for month in [month_of(&now), month_of(&ahead), "messages_default".into()] {
        assert!(made.contains(&month), "{month} in {made:?}");
    }
    // Migrating again changes nothing.
    assert!(parley_pg::migrate::run(&app.infra.db.url()).await.expect("migrate").is_empty());

    // A message through ingest lands in this month's partition, and is read back through it.
    let sent = app
        .ingest_client(&acme.integrator_token)
        .await
        .submit_message(submit("c-1", "Сообщение этого месяца", "k-1"))
        .await
        .expect("submit")
        .into_inner();
    let id = uuid::Uuid::parse_str(&sent.message_id).unwrap();
    let token = acme.supervisor_token.clone();
    eventually(WAIT, "the message is in history", || async {
        (found(&app, &token, search("сообщение")).await.len() == 1).then_some(())
    })
    .await;
    owner.batch_execute("SET parley.tenant = 'acme'").await.unwrap();
    let place: String = owner
        .query_one("SELECT tableoid::regclass::text FROM messages WHERE id = $1", &[&id])
        .await
        .expect("the row")
        .get(0);
    assert_eq!(place, month_of(&now));

    // A row dated years ahead (a far clock) goes to the default partition; making months
    // later leaves its month there rather than failing, and it is still found.
    owner
        .execute(
            "INSERT INTO messages (tenant_id, id, conversation_id, customer_id, channel, sender, body,
                                   delivery_state, channel_message_id, created_at)
             VALUES ('acme', $1, $1, $1, 'api', 'customer', 'Сообщение из будущего', 'accepted', 'far',
                     now() + interval '5 years')",
            &[&uuid::Uuid::now_v7()],
        )
        .await
        .expect("a far row");
    let far: String = owner
        .query_one("SELECT tableoid::regclass::text FROM messages WHERE channel_message_id = 'far'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(far, "messages_default");
    let created: i32 = owner
        .query_one("SELECT parley_ensure_message_months(now(), 72)", &[])
        .await
        .expect("months made around the far row")
        .get(0);
    assert!(created >= 60, "made {created} months");
    let future_month: String = owner
        .query_one("SELECT to_char((now() AT TIME ZONE 'UTC') + interval '5 years', 'YYYY-MM')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!partitions().await.contains(&month_of(&future_month)), "the far row's month stays in the default");
    assert_eq!(found(&app, &token, search("сообщение")).await.len(), 2);
    app.stop().await;
}

/// A search with words runs one of two ways: through the newest messages in time order
/// (common words fill the page there), or, when that window holds less than a page, led by
/// the words' index (rare words). Both give the same pages, whatever the window's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_gives_the_same_pages_through_the_newest_messages_or_the_words_index() {
    use parley_pg::{Cursor, Db, MessageRow, SearchFilter, TenantBatch};
    let app = App::spawn().await;
    let tenant = parley_domain::TenantId::parse("acme").unwrap();
    let db = Db::connect(&app.infra.db.url(), 2, "parley_app").expect("db");
    // 120 messages a minute apart: "карта" in every second one, "роспотребнадзор" in three
    // of the oldest (instead), an operator's "карта" every tenth; another tenant's "карта".
    let now = parley_kit::clock::now().as_micros();
    let conversation = uuid::Uuid::now_v7();
    let message = |i: i64, body: String| MessageRow {
        id: uuid::Uuid::now_v7(),
        conversation_id: conversation,
        customer_id: conversation,
        channel: "sms".into(),
        sender: if i % 10 == 0 { "operator" } else { "customer" }.into(),
        operator_id: (i % 10 == 0).then(|| "anna".to_owned()),
        body,
        quoted_message_id: None,
        quoted_channel_message_id: None,
        quoted_text: None,
        delivery_state: "accepted".into(),
        channel_message_id: format!("m-{i}"),
        created_at: parley_domain::Timestamp::from_micros(now - (120 - i) * 60_000_000),
        subject: String::new(),
        attachments: Vec::new(),
    };
    let mut batch = TenantBatch::new(tenant.clone());
    for i in 0..120 {
        let words = match i {
            3 | 5 | 8 => format!("Пишу в роспотребнадзор, сообщение {i}"),
            _ if i % 2 == 0 => format!("Заблокирована карта, сообщение {i}"),
            _ => format!("Где мой заказ, сообщение {i}"),
        };
        batch.messages.push(message(i, words));
    }
    let mut other = TenantBatch::new(parley_domain::TenantId::parse("globex").unwrap());
    other.messages.push(message(200, "Чужая карта".into()));
    db.write(&[batch, other]).await.expect("messages written");

    // Every page of a search, newest first.
    async fn pages(db: &Db, tenant: &parley_domain::TenantId, filter: SearchFilter, size: i64) -> Vec<String> {
        let mut texts = Vec::new();
        let mut before = None;
        loop {
            let page = db.search(tenant, filter.clone(), before, size).await.expect("search");
            texts.extend(page.iter().map(|h| h.message.body.clone()));
            match page.last() {
                Some(last) if page.len() as i64 == size => {
                    before = Some(Cursor { at: last.message.created_at, id: last.message.id })
                }
                _ => return texts,
            }
        }
    }
    let filter = |query: &str| SearchFilter { query: query.into(), ..Default::default() };
    let searches = [
        filter("карта"),
        filter("роспотребнадзор"),
        filter("карты OR заказ"),
        filter("\"сообщение 7\""),
        filter("нигде"),
        SearchFilter { sender: Some("operator".into()), ..filter("карта") },
        SearchFilter { negative_only: true, ..filter("сообщение") },
    ];
    let expected: Vec<usize> = vec![59, 3, 117, 1, 0, 12, 3];
    for (search, count) in searches.into_iter().zip(expected) {
        // A window wider than the history: the time order alone.
        let wide = pages(&db.clone().with_search_window(1_000), &tenant, search.clone(), 7).await;
        assert_eq!(wide.len(), count, "{search:?}: {wide:?}");
        assert!(wide.iter().all(|t| !t.starts_with("Чужая")), "another tenant's message: {wide:?}");
        for window in [1, 5, 40] {
            let narrow = pages(&db.clone().with_search_window(window), &tenant, search.clone(), 7).await;
            assert_eq!(narrow, wide, "{search:?} with a window of {window}");
        }
    }
    app.stop().await;
}
