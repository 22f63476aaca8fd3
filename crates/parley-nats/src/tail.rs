//! Following one subject of a stream from a sequence on: the resumable feeds behind an
//! operator's desk session and an integrator's customer stream. An ordered consumer (no
//! acks, recreated by the client on any gap) delivers every message after the resume
//! point in stream order, so a client that passes the last sequence it saw gets no gaps and
//! no repeats.

use async_nats::jetstream::{self, consumer};
use futures_util::{Stream, StreamExt};

use crate::consume::Delivery;
use crate::publish::{KEY_HEADER, SCHEMA_HEADER};
use crate::topology::StreamDef;

/// A subject's feed, starting after `resume_after`.
pub struct Tail {
    /// Messages after this stream sequence follow.
    pub resume_after: u64,
    pub messages: std::pin::Pin<Box<dyn Stream<Item = anyhow::Result<Delivery>> + Send>>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail").field("resume_after", &self.resume_after).finish()
    }
}

/// A message as a [`Delivery`], with how many of the consumer's messages are still
/// pending after it.
fn delivery(m: &jetstream::Message) -> anyhow::Result<(Delivery, u64)> {
    let info = m.info().map_err(|e| anyhow::anyhow!("message without info: {e}"))?;
    let headers = m.headers.as_ref();
    let d = Delivery {
        subject: m.subject.to_string(),
        payload: m.payload.clone(),
        schema: headers.and_then(|h| h.get(SCHEMA_HEADER)).map(|v| v.as_str().to_owned()),
        key: headers.and_then(|h| h.get(KEY_HEADER)).map(|v| v.as_str().to_owned()),
        stream_sequence: info.stream_sequence,
        delivered: info.delivered,
        traceparent: headers.and_then(|h| h.get("traceparent")).map(|v| v.as_str().to_owned()),
    };
    Ok((d, info.pending))
}

/// An ordered consumer of `subject` from after sequence `after`, in one round trip. Pushed,
/// not pulled: the server sends each message as it is stored, with no pull request per
/// batch from each of thousands of sessions.
async fn ordered(
    js: &jetstream::Context,
    stream: StreamDef,
    subject: String,
    after: u64,
) -> anyhow::Result<jetstream::consumer::Consumer<consumer::push::OrderedConfig>> {
    let config = consumer::push::OrderedConfig {
        deliver_subject: js.client().new_inbox(),
        filter_subject: subject,
        deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
        ..Default::default()
    };
    js.create_consumer_on_stream(config, stream.name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", stream.name))
}

/// Follows `subject` of `stream` after `after` (0: after the stream's current end).
pub async fn follow(js: &jetstream::Context, stream: StreamDef, subject: String, after: u64) -> anyhow::Result<Tail> {
    let mut s = js.get_stream(stream.name).await.map_err(|e| anyhow::anyhow!("stream {}: {e}", stream.name))?;
    let resume_after = if after == 0 { s.info().await?.state.last_sequence } else { after };
    follow_after(js, stream, subject, resume_after).await
}

/// Follows `subject` of `stream` after sequence `resume_after` (0: from the first message).
pub async fn follow_after(
    js: &jetstream::Context,
    stream: StreamDef,
    subject: String,
    resume_after: u64,
) -> anyhow::Result<Tail> {
    let consumer = ordered(js, stream, subject, resume_after).await?;
    let messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("cannot follow {}: {e}", stream.name))?;
    let messages = messages.map(|m| {
        let m = m.map_err(|e| anyhow::anyhow!("feed interrupted: {e}"))?;
        delivery(&m).map(|(d, _)| d)
    });
    Ok(Tail { resume_after, messages: Box::pin(messages) })
}

/// The stored messages of `subject` after `after` up to and including `until`, in order:
/// what a session missed before it joined a live feed that is at `until`.
pub async fn backlog(
    js: &jetstream::Context,
    stream: StreamDef,
    subject: String,
    after: u64,
    until: u64,
) -> anyhow::Result<Vec<Delivery>> {
    if after >= until {
        return Ok(Vec::new());
    }
    let consumer = ordered(js, stream, subject, after).await?;
    let pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", stream.name))?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| anyhow::anyhow!("backlog interrupted: {e}"))?;
        let (d, left) = delivery(&m)?;
        let seq = d.stream_sequence;
        if seq > until {
            break;
        }
        out.push(d);
        if left == 0 || seq == until {
            break;
        }
    }
    Ok(out)
}
