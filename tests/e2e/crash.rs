//! `kill -9` while messages flow. Of the routing service: after a restart, every message
//! ingest acknowledged reaches an operator's desk exactly once and is stored exactly once.
//! Of a history writer: every recorded message is in PostgreSQL exactly once. And the same
//! rows written by several writers at once are stored once, without errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_e2e::{Desk, submit};
use parley_proto::v1;
use parley_proto::v1::desk_event;
use parley_testkit::{App, Infra, ServiceProcess, eventually};
use tokio_util_free::Stop;

/// A desk that records every customer message it is shown and keeps its session alive.
fn run_desk(mut desk: Desk, seen: Arc<Mutex<Vec<String>>>, stop: Stop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_beat = tokio::time::Instant::now();
        while !stop.is_set() {
            if last_beat.elapsed() > Duration::from_millis(500) {
                desk.heartbeat().await;
                last_beat = tokio::time::Instant::now();
            }
            let frame =
                match tokio::time::timeout(Duration::from_millis(200), desk.event(Duration::from_secs(60))).await {
                    Ok(e) => e,
                    Err(_) => continue,
                };
            let mut seen = seen.lock().unwrap();
            match frame.kind {
                Some(desk_event::Kind::Assigned(a)) => {
                    seen.extend(
                        a.recent_messages
                            .into_iter()
                            .filter(|m| m.sender_kind == v1::SenderKind::Customer as i32)
                            .map(|m| m.id),
                    );
                }
                Some(desk_event::Kind::Message(m)) if m.sender_kind == v1::SenderKind::Customer as i32 => {
                    seen.push(m.id)
                }
                _ => {}
            }
        }
    })
}

mod tokio_util_free {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A stop flag shared with background tasks.
    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_routing_loses_nothing_and_duplicates_nothing() {
    parley_testkit::init_logging();
    let infra = Infra::start().await.expect("infra");
    let mut app = App::spawn_on(infra, false).await;
    let env = vec![
        ("PARLEY_NATS__URL", app.infra.nats.url()),
        ("PARLEY_REDIS__URL", app.infra.redis.url()),
        ("PARLEY_AUTH__SIGNING_KEY", app.signing_key.expose().to_owned()),
        ("PARLEY_ROUTING__ACK_WAIT_SECS", "2".to_owned()),
        ("PARLEY_ROUTING__RECONCILE_INTERVAL_SECS", "2".to_owned()),
        ("PARLEY_ROUTING__DISPATCH_INTERVAL_MS", "100".to_owned()),
    ];
    let mut routing = ServiceProcess::spawn("parley-routing", &env).expect("routing process");
    app.set_routing_addr(routing.grpc_addr);
    let fx = app.tenant("acme", &["anna", "boris"]).await;

    let stop = Stop::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut desks = Vec::new();
    for op in ["anna", "boris"] {
        let desk = Desk::open(&app, fx.operator_token(op), 0).await.expect("desk");
        let mut r = app.routing_client(fx.operator_token(op)).await;
        r.set_operator_status(v1::SetOperatorStatusRequest {
            status: v1::OperatorStatus::Online as i32,
            ..Default::default()
        })
        .await
        .expect("online");
        desks.push(run_desk(desk, seen.clone(), stop.clone()));
    }

    // Six customers (fewer than the ten seats, so every conversation is assigned at once),
    // fifty messages each, interleaved.
    const TOTAL: usize = 300;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let producer = {
        let acked = acked.clone();
        let mut ingest = app.ingest_client(&fx.integrator_token).await;
        tokio::spawn(async move {
            for i in 0..TOTAL {
                let req = submit(&format!("customer-{}", i % 6), &format!("сообщение {i}"), &format!("m-{i}"));
                loop {
                    match ingest.submit_message(req.clone()).await {
                        Ok(r) => {
                            acked.lock().unwrap().push(r.into_inner().message_id);
                            break;
                        }
                        Err(s) if s.code() == tonic::Code::Unavailable => {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Err(s) => panic!("submit failed: {s}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Kill routing in the middle of the stream, then start a new one.
    eventually(Duration::from_secs(30), "a third of the messages acknowledged", || async {
        (acked.lock().unwrap().len() >= TOTAL / 3).then_some(())
    })
    .await;
    routing.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let routing2 = ServiceProcess::spawn("parley-routing", &env).expect("routing restarts");
    app.set_routing_addr(routing2.grpc_addr);
    producer.await.expect("producer");
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), TOTAL);

    // Every acknowledged message reaches a desk exactly once.
    eventually(Duration::from_secs(60), "every message shown on a desk", || async {
        (seen.lock().unwrap().len() >= TOTAL).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await; // let any duplicate arrive
    // What the desks were shown while the conversation flowed (before they go away).
    let shown: Vec<String> = seen.lock().unwrap().clone();
    stop.set();
    for d in desks {
        d.await.expect("desk task");
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in shown.iter() {
        *counts.entry(id.clone()).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "shown twice: {duplicated:?}");
    let missing: Vec<_> = acked.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(missing.is_empty(), "never shown: {missing:?}");
    assert_eq!(counts.len(), TOTAL);

    // And stored exactly once.
    eventually(Duration::from_secs(30), "every message in history", || async {
        (app.table_rows("messages").await == TOTAL as i64).then_some(())
    })
    .await;
    assert_eq!(app.table_rows("conversations").await, 6);
    drop(routing2);
    app.stop().await;
}

/// `kill -9` of the history writer while records flow: after a restart (and with a second
/// writer running all along), every message routing recorded is in PostgreSQL exactly once
/// — nothing lost with the batch that was in flight, nothing doubled by its redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_history_loses_nothing_and_duplicates_nothing() {
    parley_testkit::init_logging();
    let infra = Infra::start().await.expect("infra");
    let app = App::spawn_on(infra, true).await;
    let env = vec![
        ("PARLEY_NATS__URL", app.infra.nats.url()),
        ("PARLEY_AUTH__SIGNING_KEY", app.signing_key.expose().to_owned()),
        ("PARLEY_DATABASE__URL", app.infra.db.url()),
        // Small batches, so a kill lands between many commits.
        ("PARLEY_WRITER__MAX_BATCH", "8".to_owned()),
    ];
    let mut history = ServiceProcess::spawn("parley-history", &env).expect("history process");
    let fx = app.tenant("acme", &[]).await;

    const TOTAL: usize = 300;
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    let mut acked = Vec::new();
    for i in 0..TOTAL {
        let r = ingest
            .submit_message(submit(&format!("customer-{}", i % 40), &format!("сообщение {i}"), &format!("m-{i}")))
            .await
            .expect("submit");
        acked.push(r.into_inner().message_id);
        if i == TOTAL / 3 {
            history.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            history = ServiceProcess::spawn("parley-history", &env).expect("history restarts");
        }
    }

    let db = parley_pg::Db::connect(&app.infra.db.url(), 1, "parley_app").expect("db");
    let tenant = parley_domain::TenantId::parse("acme").unwrap();
    let stored = eventually(Duration::from_secs(60), "every message in PostgreSQL", || async {
        let rows = db
            .tenant_tx(&tenant, |tx| {
                Box::pin(async move {
                    let rows = tx.query("SELECT id::text FROM messages", &[]).await?;
                    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
                })
            })
            .await
            .ok()?;
        (rows.len() >= TOTAL).then_some(rows)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut stored_sorted = stored;
    stored_sorted.sort();
    let mut expected = acked;
    expected.sort();
    assert_eq!(stored_sorted, expected, "each acknowledged message stored exactly once");
    history.kill();
    app.stop().await;
}

/// A batch of tenant `acme`: one SMS customer, their conversation and its `messages`, all
/// made at `now` (a message's time is part of its key, as it is fixed in its record).
fn batch_of(
    customer: uuid::Uuid,
    conversation: uuid::Uuid,
    messages: &[uuid::Uuid],
    now: parley_domain::Timestamp,
) -> parley_pg::TenantBatch {
    parley_pg::TenantBatch {
        tenant: parley_domain::TenantId::parse("acme").unwrap(),
        customers: vec![parley_pg::CustomerRow {
            id: customer,
            display_name: "Иван".into(),
            channel: "sms".into(),
            address: "+79160000000".into(),
            verified_phone: None,
            created_at: now,
        }],
        conversations: vec![parley_pg::ConversationRow {
            id: conversation,
            customer_id: customer,
            channel: "sms".into(),
            channel_config_id: "sms".into(),
            queue_id: "default".into(),
            status: "queued".into(),
            operator_id: None,
            priority: 0,
            created_at: now,
            updated_at: now,
            closed_at: None,
        }],
        messages: messages
            .iter()
            .map(|&id| parley_pg::MessageRow {
                id,
                conversation_id: conversation,
                customer_id: customer,
                channel: "sms".into(),
                sender: "customer".into(),
                operator_id: None,
                body: format!("Дубль {id}"),
                quoted_message_id: None,
                quoted_channel_message_id: None,
                quoted_text: None,
                delivery_state: "accepted".into(),
                channel_message_id: format!("SM-{id}"),
                created_at: now,
                subject: String::new(),
                attachments: Vec::new(),
            })
            .collect(),
        assignments: Vec::new(),
        decisions: Vec::new(),
        deliveries: Vec::new(),
    }
}

/// Rows of tenant `acme` in each of the customer, identity, conversation and message tables.
async fn acme_counts(app: &App) -> Vec<i64> {
    let tenant = parley_domain::TenantId::parse("acme").unwrap();
    let db = parley_pg::Db::connect(&app.infra.db.url(), 1, "parley_app").expect("db");
    db.tenant_tx(&tenant, |tx| {
        Box::pin(async move {
            let mut out = Vec::new();
            for table in ["customers", "customer_identities", "conversations", "messages"] {
                out.push(tx.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get::<_, i64>(0));
            }
            Ok(out)
        })
    })
    .await
    .expect("counts")
}

/// The same batch written by several writers at once (two replicas given the same record,
/// say): one row each, whoever commits first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicate_writes_store_one_row() {
    let app = App::spawn().await;
    let batch = batch_of(uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), &[uuid::Uuid::now_v7()], parley_kit::clock::now());
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (url, batch) = (app.infra.db.url(), batch.clone());
            tokio::spawn(async move {
                let db = parley_pg::Db::connect(&url, 1, "parley_app").expect("db");
                // Each waits for the one that holds the rows, then finds them there: no
                // error, no deadlock, nothing written twice.
                db.write(std::slice::from_ref(&batch)).await.is_ok()
            })
        })
        .collect();
    for w in writers {
        assert!(w.await.expect("writer"), "a writer could not write");
    }
    let counts = acme_counts(&app).await;
    assert_eq!(counts, [1, 1, 1, 1]);
    app.stop().await;
}

/// A batch holding some messages already stored (a redelivery batched with new records)
/// stores the new ones and leaves the stored ones as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_partly_stored_already_adds_only_what_is_new() {
    let app = App::spawn().await;
    let db = parley_pg::Db::connect(&app.infra.db.url(), 2, "parley_app").expect("db");
    let (customer, conversation) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
    let now = parley_kit::clock::now();
    let first = batch_of(customer, conversation, &ids[..2], now);
    db.write(std::slice::from_ref(&first)).await.expect("first batch");
    // The same two messages again, one of them with another body, and a new one.
    let mut again = batch_of(customer, conversation, &ids, now);
    again.messages[0].body = "не та версия".into();
    db.write(std::slice::from_ref(&again)).await.expect("a batch with stored messages is written");
    assert_eq!(acme_counts(&app).await, [1, 1, 1, 3]);
    let tenant = parley_domain::TenantId::parse("acme").unwrap();
    let first_body = db
        .tenant_tx(&tenant, |tx| {
            Box::pin(async move {
                Ok(tx.query_one("SELECT body FROM messages WHERE id = $1", &[&ids[0]]).await?.get::<_, String>(0))
            })
        })
        .await
        .expect("body");
    assert_eq!(first_body, first.messages[0].body, "a stored message is never rewritten");
    app.stop().await;
}
