//! The end-to-end benchmark: the anchor of bare JetStream (async publish with pipelined
//! acks, pull consume with an ack per message) of the size Parley carries, and Parley
//! from submit to an operator's desk session (ingest → JetStream → routing → JetStream →
//! notification → gRPC stream) at full speed (throughput) and paced at half of it
//! (latency p50/p99), on the same fresh infrastructure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parley_domain::{MessageId, TenantId};
use parley_proto::v1;
use parley_proto::v1::{desk_event, open_session_request, open_session_response};
use parley_testkit::{App, NatsServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Args, Rows, fresh_histogram, rate};

const TENANT: &str = "bench";

const TEXT: &str = "Здравствуйте! Списание 4 990 ₽ по карте *1234 — что это? Я его не совершал, прошу проверить.";

/// Bare JetStream: async publish with a window of outstanding acks, then pull + ack.
async fn anchor(n: usize, payload_size: usize) -> anyhow::Result<(f64, f64)> {
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ANCHOR".into(),
            subjects: vec!["anchor.>".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let payload = bytes::Bytes::from(vec![b'x'; payload_size]);
    let started = Instant::now();
    let mut window = futures_util::stream::FuturesOrdered::new();
    for i in 0..n {
        let ack = js.publish(format!("anchor.{}", i % 100), payload.clone()).await?;
        window.push_back(ack.into_future());
        if window.len() >= 1024
            && let Some(r) = window.next().await
        {
            r?;
        }
    }
    while let Some(r) = window.next().await {
        r?;
    }
    let publish = rate(n, started.elapsed());

    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("anchor".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer.messages().await?;
    let mut got = 0;
    while got < n {
        let m = messages.next().await.ok_or_else(|| anyhow::anyhow!("anchor stream ended"))??;
        m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        got += 1;
    }
    let consume = rate(n, started.elapsed());
    Ok((publish, consume))
}

/// When each message was submitted, and the latencies of those delivered.
#[derive(Default)]
struct Clock {
    sent: HashMap<String, Instant>,
    latency: Option<Histogram<u64>>,
    delivered: usize,
}

type Shared = Arc<Mutex<Clock>>;

fn record(clock: &Shared, id: &str) {
    let mut c = clock.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(at) = c.sent.remove(id) {
        let micros = at.elapsed().as_micros() as u64;
        c.delivered += 1;
        if let Some(h) = c.latency.as_mut() {
            let _ = h.record(micros.max(1));
        }
    }
}

/// Opens a desk for an operator and records every customer message it shows.
async fn desk(app: &App, token: &str, clock: Shared) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel(16);
    let frame = |f| v1::OpenSessionRequest { frame: Some(f) };
    tx.send(frame(open_session_request::Frame::Hello(v1::Hello {
        resume_after_sequence: 0,
        client_name: "bench".into(),
        team: false,
    })))
    .await?;
    let mut stream = app.sessions_client(token).await.open_session(ReceiverStream::new(rx)).await?.into_inner();
    stream.message().await?;
    Ok(tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if tx.send(frame(open_session_request::Frame::Heartbeat(v1::Heartbeat {}))).await.is_err() {
                        return;
                    }
                }
                next = stream.message() => {
                    let Ok(Some(f)) = next else { return };
                    if let Some(open_session_response::Frame::Event(ev)) = f.frame {
                        match ev.kind {
                            Some(desk_event::Kind::Message(m)) => record(&clock, &m.id),
                            Some(desk_event::Kind::Assigned(a)) => {
                                for m in a.recent_messages {
                                    record(&clock, &m.id);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }))
}

/// One load run: `n` messages over `customers`, `concurrency` at a time, optionally paced
/// to `per_second`.
struct Load<'a> {
    run: &'a str,
    n: usize,
    customers: usize,
    concurrency: usize,
    per_second: Option<f64>,
}

/// Runs a load; returns when all its messages are delivered to desks (or after a timeout).
async fn load(app: &App, token: &str, clock: &Shared, spec: Load<'_>) -> anyhow::Result<Duration> {
    let Load { run, n, customers, concurrency, per_second } = spec;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let mut client = app.ingest_client(token).await;
        let (next, clock, run) = (next.clone(), clock.clone(), run.to_owned());
        let tenant = TenantId::parse(TENANT)?;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                if let Some(rate) = per_second {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let key = format!("{run}-{i}");
                // The id Parley will give the message is derived from the idempotency key;
                // note the time before sending, as the desk may see it before the answer.
                let id = MessageId::derive(&tenant, "api", &key).to_string();
                clock.lock().unwrap_or_else(|p| p.into_inner()).sent.insert(id.clone(), Instant::now());
                let req = v1::SubmitMessageRequest {
                    customer_ref: format!("bench-customer-{}", i % customers),
                    text: TEXT.into(),
                    idempotency_key: key,
                    ..Default::default()
                };
                let r = client.submit_message(req).await?.into_inner();
                anyhow::ensure!(r.message_id == id, "message id {} is not the derived {id}", r.message_id);
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pending = clock.lock().unwrap_or_else(|p| p.into_inner()).sent.len();
        if pending == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{pending} messages not delivered within 2 minutes");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(started.elapsed())
}

/// Runs the anchor and Parley end to end; the rows of the summary.
pub async fn run(args: &Args) -> anyhow::Result<Rows> {
    let payload_size = v1::SubmitMessageRequest {
        customer_ref: "bench-customer-000".into(),
        text: TEXT.into(),
        idempotency_key: "run-000000".into(),
        ..Default::default()
    };
    let payload_size = parley_proto::prost::Message::encoded_len(&payload_size) * 3; // the envelope Parley stores is ~3x the request
    println!("\n== anchor: bare JetStream, {} messages of {payload_size} bytes", args.anchor_messages);
    let (publish, consume) = anchor(args.anchor_messages, payload_size).await?;
    println!("   async publish: {publish:>9.0} msg/s");
    println!("   pull + ack:    {consume:>9.0} msg/s");

    println!("\n== Parley end to end: submit → ingest → routing → desk session");
    let infra = parley_testkit::Infra::start().await?;
    let app = App::spawn_with(infra, true, parley_testkit::AppOptions::production()).await;
    let ops: Vec<String> = (0..args.operators).map(|i| format!("op-{i}")).collect();
    let op_refs: Vec<&str> = ops.iter().map(String::as_str).collect();
    let fx = app.tenant(TENANT, &op_refs).await;
    // Room for every customer: raise each operator's capacity.
    let per_operator = args.customers.div_ceil(args.operators).clamp(1, 100) as u32;
    let mut admin = app.admin(&fx.admin_token).await;
    for op in &ops {
        admin
            .update_operator(v1::UpdateOperatorRequest {
                operator: Some(v1::Operator {
                    id: op.clone(),
                    display_name: op.clone(),
                    skills: vec![v1::SkillLevel { skill: "support".into(), proficiency: 3 }],
                    capacity: vec![v1::ChannelCapacity {
                        channel: v1::Channel::Api as i32,
                        max_conversations: per_operator,
                    }],
                    ..Default::default()
                }),
            })
            .await?;
    }
    let clock: Shared = Arc::new(Mutex::new(Clock::default()));
    let mut desks = Vec::new();
    for op in &ops {
        let token = fx.operator_token(op);
        desks.push(desk(&app, token, clock.clone()).await?);
        app.routing_client(token)
            .await
            .set_operator_status(v1::SetOperatorStatusRequest {
                status: v1::OperatorStatus::Online as i32,
                ..Default::default()
            })
            .await?;
    }

    // Warm-up: every customer's first message opens their conversation.
    let c = args.customers;
    let spec = |run, n, per_second| Load { run, n, customers: c, concurrency: args.concurrency, per_second };
    let opened = load(&app, &fx.integrator_token, &clock, spec("open", c, None)).await?;
    println!(
        "   opening {} conversations (first messages): {:>7.0} msg/s",
        args.customers,
        rate(args.customers, opened)
    );

    // Throughput at full speed.
    clock.lock().unwrap_or_else(|p| p.into_inner()).latency = Some(fresh_histogram());
    let took = load(&app, &fx.integrator_token, &clock, spec("full", args.messages, None)).await?;
    let throughput = rate(args.messages, took);
    let full = clock.lock().unwrap_or_else(|p| p.into_inner()).latency.take().unwrap_or_else(fresh_histogram);
    println!(
        "   full speed: {:>7.0} msg/s  (p50 {:.1} ms, p99 {:.1} ms under saturation)",
        throughput,
        full.value_at_quantile(0.5) as f64 / 1000.0,
        full.value_at_quantile(0.99) as f64 / 1000.0
    );

    // Latency at half that rate.
    let half = args.paced_rate.unwrap_or(throughput / 2.0);
    let paced_n = (half * args.paced_seconds as f64) as usize;
    clock.lock().unwrap_or_else(|p| p.into_inner()).latency = Some(fresh_histogram());
    load(&app, &fx.integrator_token, &clock, spec("paced", paced_n, Some(half))).await?;
    let paced = clock.lock().unwrap_or_else(|p| p.into_inner()).latency.take().unwrap_or_else(fresh_histogram);
    let (p50, p99) = (paced.value_at_quantile(0.5) as f64 / 1000.0, paced.value_at_quantile(0.99) as f64 / 1000.0);
    println!(
        "   paced at {half:.0} msg/s for {} s: p50 {p50:.1} ms, p90 {:.1} ms, p99 {p99:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
        args.paced_seconds,
        paced.value_at_quantile(0.9) as f64 / 1000.0,
        paced.value_at_quantile(0.999) as f64 / 1000.0,
        paced.max() as f64 / 1000.0
    );

    let delivered = clock.lock().unwrap_or_else(|p| p.into_inner()).delivered;
    let rows = vec![
        ("anchor: JetStream async publish".to_owned(), format!("{publish:.0} msg/s")),
        ("anchor: JetStream pull + ack".to_owned(), format!("{consume:.0} msg/s")),
        ("Parley: submit → desk, full speed".to_owned(), format!("{throughput:.0} msg/s")),
        (
            "ratio to anchor publish / consume".to_owned(),
            format!("{:.1} % / {:.1} %", 100.0 * throughput / publish, 100.0 * throughput / consume),
        ),
        (format!("Parley: latency at {half:.0} msg/s"), format!("p50 {p50:.1} ms, p99 {p99:.1} ms")),
        ("messages delivered to desks".to_owned(), delivered.to_string()),
    ];
    for d in desks {
        d.abort();
    }
    app.stop().await;
    Ok(rows)
}
