//! The channels benchmark, both ways.
//!
//! In: a Telegram-style webhook (a real `Update`, the secret-token header) posted to
//! ingest's listener until it answers 200 — which it does only once JetStream acked the
//! message — next to the same HTTP client against a trivial axum handler and a bare
//! JetStream publish with its ack, at the same concurrency.
//! Out: replies put on `PARLEY_OUTBOUND` until the test kit's Telegram double has received
//! every `sendMessage` from the notification service's senders, next to a bare HTTP client
//! posting the same bodies to the same double at the same concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parley_domain::{Channel, ConversationId, CustomerId, MessageId, TenantId};
use parley_kit::axum;
use parley_proto::v1::channel_config::Settings;
use parley_proto::{events, v1};
use parley_testkit::{App, NatsServer, eventually};

use crate::{Rows, fresh_histogram, ms, rate};

const TENANT: &str = "bench";
const SECRET: &str = "bench-webhook-secret-0123456789";
const TEXT: &str = "Добрый день! Списание 1 990 ₽ по карте — я его не совершала, проверьте, пожалуйста.";

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub requests: usize,
    pub concurrency: usize,
}

/// One side's figures.
struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Figures {
    fn of(n: usize, elapsed: Duration, h: &Histogram<u64>) -> Self {
        Figures {
            per_second: rate(n, elapsed),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
        }
    }

    fn show(&self) -> String {
        format!("{:.0}/s, p50 {:.2} ms, p99 {:.2} ms", self.per_second, self.p50_ms, self.p99_ms)
    }
}

/// Runs `n` jobs (`job(i)` returns when one is done) `concurrency` at a time; the rate and
/// each job's latency.
async fn drive<F, Fut>(n: usize, concurrency: usize, job: F) -> anyhow::Result<Figures>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (job, next) = (job.clone(), next.clone());
        workers.spawn(async move {
            let mut h = fresh_histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(h);
                }
                let t = Instant::now();
                job(i).await?;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
            }
        });
    }
    let mut all = fresh_histogram();
    while let Some(h) = workers.join_next().await {
        all.add(h??)?;
    }
    Ok(Figures::of(n, started.elapsed(), &all))
}

fn update(i: usize) -> Vec<u8> {
    let chat = 5_000_000_000_i64 + (i % 5_000) as i64;
    serde_json::json!({
        "update_id": 800_000_000 + i,
        "message": {
            "message_id": 10 + i,
            "from": {"id": chat, "is_bot": false, "first_name": "Мария", "language_code": "ru"},
            "chat": {"id": chat, "first_name": "Мария", "type": "private"},
            "date": 1_764_400_000,
            "text": TEXT
        }
    })
    .to_string()
    .into_bytes()
}

fn send_body(i: usize) -> Vec<u8> {
    serde_json::json!({"chat_id": 5_000_000_000_i64 + (i % 5_000) as i64, "text": TEXT}).to_string().into_bytes()
}

async fn trivial_server() -> anyhow::Result<std::net::SocketAddr> {
    let app = axum::Router::new().route("/hook", axum::routing::post(|_body: axum::body::Bytes| async { "{}" }));
    let listener = tokio::net::TcpListener::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().pool_max_idle_per_host(1024).build()?)
}

async fn post_ok(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&'static str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<()> {
    let mut r = client.post(url).body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let answer = r.send().await?;
    let status = answer.status();
    let text = answer.text().await?;
    anyhow::ensure!(status.is_success(), "{url} answered {status}: {text}");
    Ok(())
}

pub async fn run(spec: Spec) -> anyhow::Result<Rows> {
    let Spec { requests: n, concurrency } = spec;
    let mut rows = Rows::new();
    let http = client()?;

    // Anchors of the inbound side: the same client against a handler that does nothing,
    // and a bare JetStream publish of the same bytes, one awaited ack at a time per worker.
    let trivial = trivial_server().await?;
    let url = format!("http://{trivial}/hook");
    let (c, u) = (http.clone(), url.clone());
    let axum_figures = drive(n, concurrency, move |i| {
        let (c, u) = (c.clone(), u.clone());
        async move { post_ok(&c, &u, &[], update(i)).await }
    })
    .await?;
    println!("anchor: trivial axum handler: {}", axum_figures.show());
    let nats = NatsServer::start()?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "ANCHOR".into(),
        subjects: vec!["anchor.>".into()],
        ..Default::default()
    })
    .await?;
    let js_figures = drive(n, concurrency, move |i| {
        let js = js.clone();
        async move {
            js.publish(format!("anchor.{}", i % 100), update(i).into()).await?.await?;
            Ok(())
        }
    })
    .await?;
    println!("anchor: bare JetStream publish + ack: {}", js_figures.show());

    // Parley: ingest's webhook, signed as Telegram does, each a new message.
    let infra = parley_testkit::Infra::start().await?;
    let options =
        parley_testkit::AppOptions { send_rate: Some(1_000_000.0), ..parley_testkit::AppOptions::production() };
    let app = App::spawn_with(infra, true, options).await;
    let fx = app.tenant(TENANT, &["anna"]).await;
    let settings =
        Settings::Telegram(v1::TelegramSettings { bot_token: "123:bench".into(), webhook_secret: SECRET.into() });
    fx.create_channel_config(&app, parley_testkit::channel_config("tg", v1::Channel::Telegram, settings)).await;
    let hook = format!("http://{}/webhooks/{TENANT}/tg", app.webhooks_addr());
    // The config reaches ingest's cache within milliseconds.
    eventually(Duration::from_secs(10), "ingest knows the channel config", || {
        let (c, h) = (http.clone(), hook.clone());
        async move {
            let r = c.post(&h).header("X-Telegram-Bot-Api-Secret-Token", SECRET).body(update(n)).send().await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    let (c, h) = (http.clone(), hook.clone());
    let parley_in = drive(n, concurrency, move |i| {
        let (c, h) = (c.clone(), h.clone());
        async move {
            post_ok(
                &c,
                &h,
                &[("X-Telegram-Bot-Api-Secret-Token", SECRET), ("Content-Type", "application/json")],
                update(i),
            )
            .await
        }
    })
    .await?;
    println!("parley: Telegram webhook → JetStream acked: {}", parley_in.show());
    rows.push((format!("anchor: trivial axum handler, {concurrency} clients"), axum_figures.show()));
    rows.push((format!("anchor: bare JetStream publish + ack, {concurrency} publishers"), js_figures.show()));
    rows.push((
        format!("channels: Telegram webhook → JetStream acked, {concurrency} clients"),
        format!(
            "{} ({:.0} % of the axum handler, {:.0} % of bare JetStream)",
            parley_in.show(),
            100.0 * parley_in.per_second / axum_figures.per_second,
            100.0 * parley_in.per_second / js_figures.per_second
        ),
    ));

    // Out: the anchor posts `sendMessage` bodies straight to the provider double.
    let double = format!("{}/bot123:bench/sendMessage", app.providers.base("telegram"));
    let (c, d) = (http.clone(), double.clone());
    let bare_out = drive(n, 32, move |i| {
        let (c, d) = (c.clone(), d.clone());
        async move { post_ok(&c, &d, &[("Content-Type", "application/json")], send_body(i)).await }
    })
    .await?;
    println!("anchor: bare HTTP client → provider double: {}", bare_out.show());

    // Parley: replies on PARLEY_OUTBOUND as the desk session publishes them; done when the
    // double has every one.
    let tenant = TenantId::parse(TENANT)?;
    let publisher =
        parley_nats::Publisher::new(async_nats::jetstream::new(async_nats::connect(app.infra.nats.url()).await?));
    let before = app.providers.received("telegram").len();
    let started = Instant::now();
    let mut publishes = futures_util::stream::iter(0..n)
        .map(|i| {
            let (publisher, tenant) = (publisher.clone(), tenant.clone());
            async move {
                let chat = (5_000_000_000_i64 + (i % 5_000) as i64).to_string();
                let customer = CustomerId::derive(&tenant, Channel::Telegram, &chat);
                let conversation = ConversationId::from_uuid(uuid_of(&format!("c{}", i % 5_000)));
                let message = MessageId::derive(&tenant, "bench", &i.to_string());
                let envelope = events::OutboundEnvelope {
                    tenant_id: TENANT.into(),
                    channel: v1::Channel::Telegram as i32,
                    channel_config_id: "tg".into(),
                    customer_id: customer.to_string(),
                    customer_address: chat,
                    conversation_id: conversation.to_string(),
                    update: Some(v1::CustomerUpdate {
                        kind: Some(v1::customer_update::Kind::Message(v1::Message {
                            id: message.to_string(),
                            conversation_id: conversation.to_string(),
                            customer_id: customer.to_string(),
                            channel: v1::Channel::Telegram as i32,
                            sender_kind: v1::SenderKind::Bot as i32,
                            text: TEXT.into(),
                            ..Default::default()
                        })),
                    }),
                    references: Vec::new(),
                    conversation_version: 0,
                };
                publisher
                    .publish(
                        parley_nats::topology::outbound_subject(&tenant, Channel::Telegram, customer),
                        &message.to_string(),
                        &customer.to_string(),
                        &envelope,
                    )
                    .await
            }
        })
        .buffer_unordered(256);
    while let Some(r) = publishes.next().await {
        r?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while app.providers.received("telegram").len() < before + n {
        anyhow::ensure!(Instant::now() < deadline, "the senders did not send every reply within 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let parley_out = rate(n, started.elapsed());
    println!("parley: replies on PARLEY_OUTBOUND → sent to the double: {parley_out:.0}/s");
    rows.push(("anchor: bare HTTP client → Telegram double, 32 at once".into(), bare_out.show()));
    rows.push((
        "channels: replies → senders → Telegram double (32 lanes)".into(),
        format!("{parley_out:.0} sends/s ({:.0} % of the bare client)", 100.0 * parley_out / bare_out.per_second),
    ));
    app.stop().await;
    Ok(rows)
}

fn uuid_of(name: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes())
}
