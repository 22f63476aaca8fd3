//! History: the raw anchor is a binary `COPY` of the message rows the writer stores into a
//! table of the messages' shape (the same columns, generated search vector and indexes);
//! Parley is the history writer from the
//! conversation log (`PARLEY_EVENTS`) to committed rows — throughput draining a backlog
//! (the writer alone, as when publishers run on other machines) and with the harness
//! publishing meanwhile on the same cores, and the time from publish to committed row at
//! half of it. Then search: `SearchMessages` latency over a
//! generated corpus of Russian and English messages.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use parley_domain::conversation::{Command, Opening};
use parley_domain::routing::Requirements;
use parley_domain::{
    Channel, ChannelConfigId, Conversation, ConversationId, CustomerId, CustomerRef, DeliveryState, Message, MessageId,
    QueueId, Sender, TenantId,
};
use parley_nats::{ConfigCache, Nats, topology};
use parley_proto::v1;
use parley_testkit::{App, Infra};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::{Rows, fresh_histogram, ms, rate};

const WORDS: [&str; 48] = [
    "жалоба",
    "списание",
    "карта",
    "перевод",
    "кредит",
    "вклад",
    "заявка",
    "отделение",
    "оператор",
    "возврат",
    "доставка",
    "заказ",
    "платёж",
    "комиссия",
    "лимит",
    "блокировка",
    "приложение",
    "пароль",
    "договор",
    "счёт",
    "ошибка",
    "деньги",
    "банкомат",
    "кэшбэк",
    "refund",
    "complaint",
    "card",
    "payment",
    "delivery",
    "order",
    "account",
    "transfer",
    "password",
    "limit",
    "branch",
    "loan",
    "deposit",
    "invoice",
    "charge",
    "blocked",
    "app",
    "error",
    "cashback",
    "fee",
    "contract",
    "support",
    "balance",
    "statement",
];

/// Words one message in [`RARE_EVERY`] has (each word one in four of those).
const RARE: [&str; 4] = ["роспотребнадзор", "chargeback", "эскалация", "переплата"];
const RARE_EVERY: u64 = 5_000;

/// A message text of `n` words picked by `seed`, one message in [`RARE_EVERY`] with a rare
/// word too.
fn text(seed: u64, n: usize) -> String {
    if seed.is_multiple_of(RARE_EVERY) {
        let rare = RARE[((seed / RARE_EVERY) % RARE.len() as u64) as usize];
        return format!("{} {rare}", text(seed + 1, n));
    }
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            WORDS[(x % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What to measure.
pub struct Spec {
    pub records: usize,
    pub paced_seconds: u64,
    pub search_messages: usize,
    pub searches: usize,
}

/// One customer message as the anchor COPYs it (the columns the writer fills for one).
#[derive(Clone)]
struct CopyRow {
    id: uuid::Uuid,
    conversation: uuid::Uuid,
    customer: uuid::Uuid,
    body: String,
    channel_message_id: String,
    created_at: SystemTime,
}

/// The anchor: binary COPY of `rows` into a fresh table shaped like `messages`.
async fn copy_anchor(client: &tokio_postgres::Client, rows: impl Iterator<Item = CopyRow>) -> anyhow::Result<f64> {
    client
        .batch_execute("DROP TABLE IF EXISTS bench_messages; CREATE TABLE bench_messages (LIKE messages INCLUDING ALL)")
        .await?;
    checkpoint(client).await?;
    let started = Instant::now();
    let n = copy_rows(client, "bench_messages", "anchor", rows).await?;
    Ok(rate(n, started.elapsed()))
}

/// Writes out every dirty page before a timed phase, so that no phase pays for a checkpoint
/// the one before it started (the WAL of each phase would otherwise trigger one at a
/// different point of the next, and the rates swing by a third from run to run).
async fn checkpoint(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client.batch_execute("CHECKPOINT").await?;
    Ok(())
}

/// `n` generated messages, each its own conversation and customer, with time-ordered ids
/// and times a second apart.
fn generated_rows(n: usize, seed: u64) -> impl Iterator<Item = CopyRow> {
    let start = SystemTime::now() - Duration::from_secs(n as u64);
    (0..n).map(move |i| {
        let seed = seed + i as u64;
        let conversation = uuid::Uuid::now_v7();
        CopyRow {
            id: uuid::Uuid::now_v7(),
            conversation,
            customer: conversation,
            body: text(seed, 8 + (seed % 12) as usize),
            channel_message_id: format!("k-{seed}"),
            created_at: start + Duration::from_secs(i as u64),
        }
    })
}

/// The message rows the history writer stores for `records` (the same ids, conversations,
/// customers, texts and times), for the anchor to COPY the same data.
fn rows_of(records: &[Record]) -> Vec<CopyRow> {
    use parley_proto::prost::Message as _;
    records
        .iter()
        .flat_map(|(_, r)| {
            let history = parley_proto::events::ConversationRecordHistory::decode(r.encode_to_vec().as_slice())
                .expect("a record decodes as history reads it");
            parley_history::writer::rows(&history).expect("rows of a bench record").messages
        })
        .map(|m| CopyRow {
            id: m.id,
            conversation: m.conversation_id,
            customer: m.customer_id,
            body: m.body,
            channel_message_id: m.channel_message_id,
            created_at: parley_pg::to_system_time(m.created_at),
        })
        .collect()
}

/// COPYs `rows` as customer messages of tenant `tenant` into `table`; returns how many.
async fn copy_rows(
    client: &tokio_postgres::Client,
    table: &str,
    tenant: &str,
    rows: impl Iterator<Item = CopyRow>,
) -> anyhow::Result<usize> {
    let sink = client
        .copy_in(&format!(
            "COPY {table} (tenant_id, id, conversation_id, customer_id, channel, sender, body, delivery_state,
                           channel_message_id, created_at, subject) FROM STDIN BINARY"
        ))
        .await?;
    let types = [
        Type::TEXT,
        Type::UUID,
        Type::UUID,
        Type::UUID,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TEXT,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    let mut n = 0;
    for r in rows {
        writer
            .as_mut()
            .write(&[
                &tenant,
                &r.id,
                &r.conversation,
                &r.customer,
                &"telegram",
                &"customer",
                &r.body,
                &"accepted",
                &r.channel_message_id,
                &r.created_at,
                &"",
            ])
            .await?;
        n += 1;
    }
    writer.finish().await?;
    Ok(n)
}

/// A conversation record with the conversation it belongs to, as the bench publishes it.
type Record = (ConversationId, parley_proto::events::ConversationRecord);

/// The records of conversation `i`, as routing appends them: the first opens it with the
/// customer's first message, each of the next `messages - 1` adds one more message.
fn conversation_records(cache: &ConfigCache, tenant: &TenantId, i: u64, messages: usize) -> Vec<Record> {
    let now = parley_kit::clock::now();
    let address = format!("bench-{i}-{}", uuid::Uuid::now_v7().simple());
    let customer = CustomerId::derive(tenant, Channel::Telegram, &address);
    let message = |n: usize, conversation: Option<ConversationId>| {
        let id = MessageId::derive(tenant, "bench", &format!("{address}/{n}"));
        Message {
            id,
            conversation: conversation.unwrap_or_else(|| ConversationId::opened_by(id)),
            customer,
            channel: Channel::Telegram,
            sender: Sender::Customer,
            operator: None,
            text: text(i * 16 + n as u64, 12),
            quoted: None,
            delivery: DeliveryState::Accepted,
            created: now,
            channel_message_id: format!("{address}/{n}"),
            subject: String::new(),
            attachments: Vec::new(),
        }
    };
    let first = message(0, None);
    let id = first.conversation;
    let opening = Opening {
        id,
        tenant: tenant.clone(),
        customer: CustomerRef {
            id: customer,
            address: address.clone(),
            display_name: "Bench".into(),
            verified_phone: String::new(),
        },
        channel: Channel::Telegram,
        channel_config: ChannelConfigId::parse("tg").expect("id"),
        queue: QueueId::parse("default").expect("id"),
        priority: 0,
        requirements: Requirements::default(),
        preference: None,
    };
    let mut out = Vec::with_capacity(messages);
    let mut t = Conversation::open(opening, first, now);
    for n in 1..=messages {
        let next = t.next.clone();
        let (record, _) =
            parley_routing::record::build(uuid::Uuid::now_v7(), &t.next, t.effects, vec![], vec![], now, cache);
        out.push((id, record));
        if n == messages {
            break;
        }
        t = next.apply(Command::CustomerMessage(message(n, Some(id))), now).expect("a customer message applies");
    }
    out
}

/// Records of `conversations` conversations of `per` messages each, in publishing order:
/// every conversation's first record, then every conversation's second, and so on (so
/// one conversation's records, far apart, reach the stream in order even when published
/// concurrently).
fn interleaved(cache: &ConfigCache, tenant: &TenantId, first: u64, conversations: usize, per: usize) -> Vec<Record> {
    let mut each: Vec<_> =
        (0..conversations as u64).map(|i| conversation_records(cache, tenant, first + i, per).into_iter()).collect();
    let mut out = Vec::with_capacity(conversations * per);
    for _ in 0..per {
        out.extend(each.iter_mut().filter_map(Iterator::next));
    }
    out
}

/// Publishes a record; returns its stream sequence.
async fn publish(
    nats: &Nats,
    tenant: &TenantId,
    id: ConversationId,
    r: &parley_proto::events::ConversationRecord,
) -> anyhow::Result<u64> {
    let published = nats
        .publisher()
        .publish(topology::events_subject(tenant, id), &r.record_id, &id.to_string(), r)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(published.sequence)
}

/// How records reach the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Published while the writer runs: the harness's publishing shares the machine.
    Live,
    /// Published while the history service is stopped, then drained by it: the writer
    /// alone, as when publishers run elsewhere.
    Backlog,
}

/// Publishes `records` (at most 256 at once) and waits until the `bench` tenant has that
/// many messages more; returns committed rows per second, timed from the first
/// publish ([`Feed::Live`]) or from the history service's start ([`Feed::Backlog`]).
async fn write_all(
    app: &mut App,
    nats: &Nats,
    client: &tokio_postgres::Client,
    tenant: &TenantId,
    records: Vec<Record>,
    feed: Feed,
) -> anyhow::Result<f64> {
    use futures_util::StreamExt as _;
    let before = count(client, "bench").await?;
    if feed == Feed::Backlog {
        app.stop_history().await?;
    } else {
        checkpoint(client).await?;
    }
    let mut started = Instant::now();
    let mut inflight = futures_util::stream::FuturesUnordered::new();
    for (id, r) in &records {
        inflight.push(publish(nats, tenant, *id, r));
        if inflight.len() >= 256 {
            inflight.next().await.transpose()?;
        }
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    if feed == Feed::Backlog {
        checkpoint(client).await?;
        started = Instant::now();
        app.start_history().await?;
    }
    // The writer acknowledges a record only once its rows have committed, so the history
    // consumer with nothing pending and nothing awaiting an ack means every row is in. It is
    // asked of NATS, not PostgreSQL, so that waiting costs the database nothing; the rows are
    // counted once the clock has stopped.
    crate::settle(&nats.js, &[topology::consumers::HISTORY_EVENTS], Duration::from_millis(5)).await?;
    let elapsed = started.elapsed();
    let rows = count(client, "bench").await?;
    anyhow::ensure!(
        rows == before + records.len() as i64,
        "{rows} messages committed, expected {}",
        before + records.len() as i64
    );
    Ok(rate(records.len(), elapsed))
}

async fn count(client: &tokio_postgres::Client, tenant: &str) -> anyhow::Result<i64> {
    Ok(client.query_one("SELECT count(*) FROM messages WHERE tenant_id = $1", &[&tenant]).await?.get(0))
}

pub async fn run(spec: &Spec) -> anyhow::Result<Rows> {
    let infra = Infra::start().await?;
    let mut app = App::spawn_on(infra, true).await;
    // The search section's tenant; then routing stops: its fan-out would deliver the
    // records below to desks and customers on the same two cores, and measured here is
    // the history service's writer.
    let fx = app.tenant("search", &[]).await;
    if let Some(routing) = app.routing.take() {
        routing.stop().await?;
    }
    let (client, connection) = tokio_postgres::connect(&app.infra.db.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    // The owner is under row-level security too (FORCE): this session is the bench tenants'.
    client.batch_execute("SELECT set_config('parley.tenant', 'bench', false)").await?;
    let mut rows = Rows::new();

    // Parley: records published as fast as JetStream takes them; rows committed.
    let nats = Nats::connect(
        &parley_kit::config::NatsConfig { url: app.infra.nats.url(), ..Default::default() },
        "bench",
        Duration::from_secs(10),
    )
    .await?;
    let token = tokio_util::sync::CancellationToken::new();
    let cache = ConfigCache::start(nats.config_kv().await?, token.clone()).await?;
    let tenant = TenantId::parse("bench").expect("tenant");
    // First every record opens a conversation (the worst case: customer, identity,
    // conversation and message rows for one message), then conversations of eight
    // messages (one opening, seven more messages: conversation and message rows). Each is
    // published while the history service is stopped and timed from its start: the
    // harness's publishing would otherwise take CPU from the writer it measures. Then the
    // conversations again, published while the writer runs.
    let opening =
        write_all(&mut app, &nats, &client, &tenant, interleaved(&cache, &tenant, 0, spec.records, 1), Feed::Backlog)
            .await?;
    println!("parley: history writer, opening records → committed rows: {opening:.0} rows/s");

    // Conversations of eight messages, three rounds. Each round COPYs, as the anchor, the
    // very message rows the writer then stores for its conversations: their ids are derived
    // from the channel's message ids, so they land all over every index, as the writer's
    // do. The anchor used until 2026-12-06, generated rows with time-ordered ids (each
    // index insert at the end of the index), is measured beside it. This machine's speed
    // swings by a third within a minute: rounds alternate the anchor and the writer, and
    // the best of each is compared.
    let per = 8;
    let (mut anchor, mut ordered, mut writer): (f64, f64, f64) = (0.0, 0.0, 0.0);
    for round in 0..3 {
        let mixed = interleaved(&cache, &tenant, (1 + round) * spec.records as u64, spec.records / per, per);
        let copied = copy_anchor(&client, rows_of(&mixed).into_iter()).await?;
        let generated = copy_anchor(&client, generated_rows(spec.records, 0)).await?;
        let written = write_all(&mut app, &nats, &client, &tenant, mixed, Feed::Backlog).await?;
        println!(
            "round {}: COPY of the writer's rows {copied:.0} rows/s, of time-ordered rows {generated:.0} rows/s; \
             the writer, conversations of {per} messages: {written:.0} rows/s ({:.0} % of the COPY before it)",
            round + 1,
            100.0 * written / copied
        );
        (anchor, ordered, writer) = (anchor.max(copied), ordered.max(generated), writer.max(written));
    }
    let mixed = interleaved(&cache, &tenant, 4 * spec.records as u64, spec.records / per, per);
    let live = write_all(&mut app, &nats, &client, &tenant, mixed, Feed::Live).await?;
    println!("parley: history writer, the same published while it writes → committed rows: {live:.0} rows/s");

    // Publish → committed at half the throughput. A record counts as committed once the
    // history consumer's ack floor passes its stream sequence: the writer acknowledges only
    // after commit, and the floor waits for every record before it too (so this errs long).
    // Asked of NATS, the watch costs the database nothing.
    let pace = (opening / 2.0).max(1.0);
    let pending: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let done = Arc::new(Mutex::new(fresh_histogram()));
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = {
        let (pending, done, stop) = (pending.clone(), done.clone(), stop.clone());
        let stream = nats.js.get_stream(topology::EVENTS.name).await?;
        tokio::spawn(async move {
            while !stop.is_cancelled() || !pending.lock().expect("lock").is_empty() {
                if let Ok(info) = stream.consumer_info(topology::consumers::HISTORY_EVENTS).await {
                    let now = Instant::now();
                    let mut p = pending.lock().expect("lock");
                    let later = p.split_off(&(info.ack_floor.stream_sequence + 1));
                    for t0 in std::mem::replace(&mut *p, later).into_values() {
                        let _ = done.lock().expect("lock").record((now - t0).as_micros() as u64);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let n = (pace * spec.paced_seconds as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / pace);
    let before = count(&client, "bench").await?;
    let begin = Instant::now();
    for i in 0..n {
        tokio::time::sleep_until((begin + interval.mul_f64(i as f64)).into()).await;
        let (id, r) = conversation_records(&cache, &tenant, 1_000_000 + i, 1).pop().expect("the opening record");
        let t0 = Instant::now();
        let sequence = publish(&nats, &tenant, id, &r).await?;
        pending.lock().expect("lock").insert(sequence, t0);
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .map_err(|_| anyhow::anyhow!("records not acknowledged"))??;
    let rows_now = count(&client, "bench").await?;
    anyhow::ensure!(rows_now == before + n as i64, "{} paced messages committed of {n}", rows_now - before);
    let h = done.lock().expect("lock").clone();
    rows.push((
        "anchor: binary COPY of the writer's rows into the messages' table shape (best of 3)".into(),
        format!("{anchor:.0} rows/s"),
    ));
    rows.push((
        "anchor until 2026-12-06: COPY of generated rows with time-ordered ids (best of 3)".into(),
        format!("{ordered:.0} rows/s"),
    ));
    rows.push((
        "history: a backlog on PARLEY_EVENTS drained → committed rows, each record opening a conversation".into(),
        format!("{opening:.0} rows/s ({:.0} % of COPY)", 100.0 * opening / anchor),
    ));
    rows.push((
        format!(
            "history: a backlog on PARLEY_EVENTS drained → committed rows, conversations of {per} messages (best of 3)"
        ),
        format!("{writer:.0} rows/s ({:.0} % of COPY)", 100.0 * writer / anchor),
    ));
    rows.push((
        format!("history: records published while the writer runs → committed rows, conversations of {per} messages"),
        format!("{live:.0} rows/s ({:.0} % of COPY)", 100.0 * live / anchor),
    ));
    rows.push((
        format!("history: publish → committed, paced at {pace:.0}/s"),
        format!("p50 {:.1} ms, p99 {:.1} ms", ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99))),
    ));

    // Search over a generated corpus (the search index rebuilt after the load, as a bulk
    // import would do).
    println!("generating {} messages to search…", spec.search_messages);
    let started = Instant::now();
    // The generated messages go one a second back from now: their months are made first.
    client
        .batch_execute(&format!(
            "SELECT set_config('parley.tenant', 'search', false);
             SELECT parley_ensure_message_months(now() - make_interval(secs => {}), 3);
             DROP INDEX messages_search; DROP INDEX messages_time",
            spec.search_messages + 3600
        ))
        .await?;
    copy_rows(&client, "messages", "search", generated_rows(spec.search_messages, 7)).await?;
    client
        .batch_execute(
            "CREATE INDEX messages_search ON messages USING gin (search);
             CREATE INDEX messages_time ON messages (tenant_id, created_at DESC, id DESC); ANALYZE messages",
        )
        .await?;
    println!("  loaded and indexed in {:.0} s", started.elapsed().as_secs_f64());
    let mut history = app.history_client(&fx.supervisor_token).await;
    // Common words (one, two, a phrase), then a rare word, then a word no message has.
    let kinds = ["common words", "a rare word", "a word found nowhere"];
    let mut h = [fresh_histogram(), fresh_histogram(), fresh_histogram()];
    let mut hits = [0usize; 3];
    let mut counts = [0usize; 3];
    for i in 0..spec.searches {
        let (kind, query) = match i % 5 {
            0 => (0, WORDS[i % WORDS.len()].to_owned()),
            1 => (0, format!("{} {}", WORDS[i % WORDS.len()], WORDS[(i * 7 + 3) % WORDS.len()])),
            2 => (0, format!("\"{} {}\"", WORDS[i % WORDS.len()], WORDS[(i * 5 + 1) % WORDS.len()])),
            3 => (1, RARE[(i / 5) % RARE.len()].to_owned()),
            _ => (2, format!("абракадабра{}", i % 7)),
        };
        let t0 = Instant::now();
        let r = history
            .search_messages(v1::SearchMessagesRequest { query, page_size: 20, ..Default::default() })
            .await?
            .into_inner();
        h[kind].record(t0.elapsed().as_micros() as u64)?;
        hits[kind] += r.hits.len();
        counts[kind] += 1;
    }
    for (k, name) in kinds.iter().enumerate() {
        rows.push((
            format!("history: SearchMessages over {} messages, {name}, first page of 20", spec.search_messages),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms ({} queries, {:.1} hits each)",
                ms(h[k].value_at_quantile(0.5)),
                ms(h[k].value_at_quantile(0.99)),
                counts[k],
                hits[k] as f64 / counts[k].max(1) as f64
            ),
        ));
    }
    token.cancel();
    app.stop().await;
    Ok(rows)
}
