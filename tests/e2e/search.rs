//! Full-text search over history on real PostgreSQL: Russian and English words found in
//! their other forms, the filters (channel, sender, time) and paging, one tenant's messages
//! invisible to another, and bad searches refused with a message naming the field.

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
