//! Durable pull consumers with explicit ack decisions.
//!
//! A consumer pulls from one durable JetStream consumer (shared by every replica of the
//! service, which split the messages) and hands each message to a [`Handler`], which
//! decides: [`Outcome::Ack`] (done), [`Outcome::Retry`] (a transient failure: redeliver
//! after a delay) or [`Outcome::Term`] (poison: never redeliver). A poison message is copied
//! to `PARLEY_DEAD` (subject `parley.dead.<consumer>`, its headers kept, the reason, stream,
//! subject and sequence added) before it is terminated, so it blocks nothing and is not lost;
//! if that copy cannot be stored, the message is retried instead.
//!
//! Messages run concurrently on `lanes`; messages with the same ordering key
//! ([`crate::publish::KEY_HEADER`], e.g. the customer) always take the same lane, so they
//! are handled one at a time and in stream order within a replica.

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer};
use bytes::Bytes;
use futures_util::StreamExt;
use opentelemetry::propagation::Extractor;
use parley_kit::telemetry::Metrics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::publish::{KEY_HEADER, SCHEMA_HEADER};
use crate::topology::StreamDef;

/// What to do with a handled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    Retry(Duration),
    Term(String),
}

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    pub schema: Option<String>,
    pub key: Option<String>,
    /// The message's sequence in its stream.
    pub stream_sequence: u64,
    /// How many times it has been delivered (1 the first time).
    pub delivered: i64,
    /// The W3C trace context it was published in, if any.
    pub traceparent: Option<String>,
}

impl Delivery {
    /// Decodes the payload as `P`, checking the schema header names `P`.
    pub fn decode<P: crate::publish::Payload>(&self) -> Result<P, String> {
        self.decode_as::<P, P>()
    }

    /// Decodes a payload of type `P` into `V`, a lighter reading of `P` that shares its
    /// field numbers and skips the fields it lacks (checking the schema header names `P`).
    pub fn decode_as<P: crate::publish::Payload, V: parley_proto::prost::Message + Default>(
        &self,
    ) -> Result<V, String> {
        match self.schema.as_deref() {
            Some(s) if s == P::SCHEMA => {}
            Some(s) => return Err(format!("schema {s} is not {}", P::SCHEMA)),
            None => return Err(format!("no {SCHEMA_HEADER} header (expected {})", P::SCHEMA)),
        }
        V::decode(self.payload.clone()).map_err(|e| format!("cannot decode {}: {e}", P::SCHEMA))
    }
}

/// Handles messages of one consumer.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, delivery: Delivery) -> impl Future<Output = Outcome> + Send;
}

/// How a consumer is set up.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: StreamDef,
    pub durable: &'static str,
    /// Restricts to matching subjects; `None` takes the whole stream.
    pub filter: Option<String>,
    /// Concurrent lanes (ordering is per key within a lane).
    pub lanes: usize,
    /// Messages delivered but not yet acknowledged, across all replicas.
    pub max_ack_pending: i64,
    /// After this long without an ack, a message is redelivered.
    pub ack_wait: Duration,
}

impl ConsumerSpec {
    pub fn new(stream: StreamDef, durable: &'static str) -> Self {
        Self { stream, durable, filter: None, lanes: 32, max_ack_pending: 10_000, ack_wait: Duration::from_secs(30) }
    }
}

struct NatsHeaders<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Runs the consumer until the token fires; then stops pulling, finishes (and acks) what
/// it holds, and returns.
pub async fn run<H: Handler>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: Arc<H>,
    metrics: Metrics,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let stream = js
        .get_stream(spec.stream.name)
        .await
        .map_err(|e| anyhow::anyhow!("stream {} unavailable: {e}", spec.stream.name))?;
    let config = consumer::pull::Config {
        durable_name: Some(spec.durable.to_owned()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_ack_pending: spec.max_ack_pending,
        filter_subject: spec.filter.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(spec.durable, config.clone())
        .await
        .map_err(|e| anyhow::anyhow!("consumer {} on {}: {e}", spec.durable, spec.stream.name))?;
    // A consumer made by an older release keeps its limits unless told otherwise (NATS 2.10
    // or newer can change them in place; an older server keeps the old ones, which only
    // bounds how much is in flight).
    let had = &consumer.cached_info().config;
    let had_pending = had.max_ack_pending;
    if had_pending != spec.max_ack_pending || had.ack_wait != spec.ack_wait {
        match stream.update_consumer(config).await {
            Ok(updated) => {
                tracing::info!(
                    consumer = spec.durable,
                    had_pending,
                    max_ack_pending = spec.max_ack_pending,
                    "consumer limits updated"
                );
                consumer = updated;
            }
            Err(e) => {
                tracing::warn!(consumer = spec.durable, error = %e, had_pending, "cannot update the consumer's limits; keeping them")
            }
        }
    }

    let lanes = spec.lanes.max(1);
    let mut senders = Vec::with_capacity(lanes);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..lanes {
        let (tx, mut rx) = mpsc::channel::<jetstream::Message>(64);
        senders.push(tx);
        let handler = handler.clone();
        let metrics = metrics.clone();
        let stream_name = spec.stream.name;
        let dead = DeadLetters { js: js.clone(), consumer: spec.durable };
        workers.spawn(async move {
            while let Some(message) = rx.recv().await {
                handle_one(&*handler, message, stream_name, &metrics, &dead).await;
            }
        });
    }

    tracing::info!(stream = spec.stream.name, consumer = spec.durable, lanes, "consuming");
    'outer: while !token.is_cancelled() {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = spec.durable, error = %e, "cannot pull; retrying");
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = token.cancelled() => break 'outer,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let lane = lane_of(&message, lanes);
                    if senders[lane].send(message).await.is_err() {
                        anyhow::bail!("lane {lane} of {} stopped", spec.durable);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(consumer = spec.durable, error = %e, "pull stream error; reopening");
                    break;
                }
                None => break,
            }
        }
    }
    // Stop pulling; let the lanes finish what they hold, acking each.
    drop(senders);
    while let Some(r) = workers.join_next().await {
        if let Err(e) = r {
            tracing::error!(consumer = spec.durable, error = %e, "lane panicked");
        }
    }
    tracing::info!(consumer = spec.durable, "consumer drained");
    Ok(())
}

fn lane_of(message: &jetstream::Message, lanes: usize) -> usize {
    let mut h = DefaultHasher::new();
    match message.headers.as_ref().and_then(|h| h.get(KEY_HEADER)) {
        Some(key) => key.as_str().hash(&mut h),
        None => message.subject.as_str().hash(&mut h),
    }
    (h.finish() % lanes as u64) as usize
}

/// Headers a dead letter carries besides the original's.
pub const DEAD_REASON_HEADER: &str = "Parley-Dead-Reason";
pub const DEAD_STREAM_HEADER: &str = "Parley-Dead-Stream";
pub const DEAD_SUBJECT_HEADER: &str = "Parley-Dead-Subject";
pub const DEAD_SEQUENCE_HEADER: &str = "Parley-Dead-Sequence";

/// Where one consumer's poison messages go.
struct DeadLetters {
    js: jetstream::Context,
    consumer: &'static str,
}

impl DeadLetters {
    /// Copies a poison message with the reason; deduplicated by the consumer, stream and
    /// sequence, so a redelivery after a crash is stored once (and each consumer's copy is
    /// kept).
    async fn store(
        &self,
        message: &jetstream::Message,
        stream: &str,
        sequence: u64,
        reason: &str,
    ) -> Result<(), String> {
        let mut headers = message.headers.clone().unwrap_or_default();
        let reason: String = reason.chars().filter(|c| !c.is_control()).take(1000).collect();
        headers.insert(DEAD_REASON_HEADER, reason.as_str());
        headers.insert(DEAD_STREAM_HEADER, stream);
        headers.insert(DEAD_SUBJECT_HEADER, message.subject.as_str());
        headers.insert(DEAD_SEQUENCE_HEADER, sequence.to_string().as_str());
        headers.insert("Nats-Msg-Id", format!("dead:{}:{stream}:{sequence}", self.consumer).as_str());
        let ack = self
            .js
            .publish_with_headers(crate::topology::dead_subject(self.consumer), headers, message.payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| e.to_string())
    }
}

async fn handle_one<H: Handler>(
    handler: &H,
    message: jetstream::Message,
    stream: &'static str,
    metrics: &Metrics,
    dead: &DeadLetters,
) {
    let started = Instant::now();
    let info = message.info().ok();
    let headers = message.headers.as_ref();
    let delivery = Delivery {
        subject: message.subject.to_string(),
        payload: message.payload.clone(),
        schema: headers.and_then(|h| h.get(SCHEMA_HEADER)).map(|v| v.as_str().to_owned()),
        key: headers.and_then(|h| h.get(KEY_HEADER)).map(|v| v.as_str().to_owned()),
        stream_sequence: info.as_ref().map_or(0, |i| i.stream_sequence),
        delivered: info.as_ref().map_or(1, |i| i.delivered),
        traceparent: headers.and_then(|h| h.get("traceparent")).map(|v| v.as_str().to_owned()),
    };
    let span = tracing::info_span!("consume", otel.name = %format!("{stream} process"), stream, subject = %delivery.subject, seq = delivery.stream_sequence);
    if let Some(h) = headers {
        parley_kit::telemetry::set_parent_from(&span, &NatsHeaders(h));
    }
    let outcome = handler.handle(delivery).instrument(span.clone()).await;
    let (kind, label) = match &outcome {
        Outcome::Ack => (AckKind::Ack, "ack"),
        Outcome::Retry(delay) => {
            tracing::warn!(parent: &span, delay_ms = delay.as_millis() as u64, "will retry");
            (AckKind::Nak(Some(*delay)), "retry")
        }
        Outcome::Term(reason) => {
            let sequence = info.as_ref().map_or(0, |i| i.stream_sequence);
            match dead.store(&message, stream, sequence, reason).await {
                Ok(()) => {
                    tracing::error!(parent: &span, reason = %reason, "poison message moved to the dead letters");
                    (AckKind::Term, "term")
                }
                Err(e) => {
                    tracing::warn!(parent: &span, reason = %reason, error = %e, "poison message not stored as a dead letter; retrying");
                    (AckKind::Nak(Some(Duration::from_secs(5))), "retry")
                }
            }
        }
    };
    if let Err(e) = message.ack_with(kind).await {
        // The message will be redelivered after ack_wait; handlers are idempotent.
        tracing::warn!(parent: &span, error = %e, "ack failed");
    }
    metrics.observe_stream(stream, label, started);
}
