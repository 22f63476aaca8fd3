//! One live feed of a stream's subjects per replica, fanned out in memory to the sessions
//! open on it (desks on `PARLEY_DESK` in notification, web chat visitors on their subjects
//! of `PARLEY_OUTBOUND` in ingest) — instead of a JetStream consumer per session, which
//! makes the server check every stored message against thousands of consumers.
//!
//! A session joins in two steps that leave no gap and no repeat: it first subscribes to the
//! live feed for its subject (learning how far the feed has read, `position`), then reads
//! the stored events after its resume point up to `position` from the stream; the live
//! events it buffered meanwhile follow, those at or before the last one delivered dropped.
//! A session that falls too far behind the feed (a desk that does not read) is dropped
//! with "reconnect and resume": its desk resumes from the last sequence it saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::consume::Delivery;
use crate::tail;
use crate::topology::StreamDef;

/// Live events a session may have waiting before it is dropped.
const BUFFER: usize = 1024;

type Subscribers = HashMap<String, Vec<(u64, mpsc::Sender<Delivery>)>>;

#[derive(Default)]
struct State {
    /// The last stream sequence the feed has handed out.
    position: u64,
    subscribers: Subscribers,
    next_id: u64,
    /// Set when the feed has stopped for good: sessions cannot join.
    stopped: bool,
}

/// Where a session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// With what the feed hands out from now on.
    Now,
    /// After this stream sequence (0: every message kept for the subject).
    After(u64),
}

/// The replica's feed of a stream's subjects (those `filter` matches).
pub struct Hub {
    js: async_nats::jetstream::Context,
    stream: StreamDef,
    filter: String,
    state: Mutex<State>,
}

impl Hub {
    /// Starts following the subjects of `stream` that `filter` matches, from the stream's
    /// current end; runs until `token` fires.
    pub async fn start(
        js: async_nats::jetstream::Context,
        stream: StreamDef,
        filter: String,
        token: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let mut s = js.get_stream(stream.name).await?;
        let position = s.info().await?.state.last_sequence;
        let hub = Arc::new(Hub { js, stream, filter, state: Mutex::new(State { position, ..State::default() }) });
        let feed = hub.clone();
        tokio::spawn(async move { feed.run(token).await });
        Ok(hub)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self: Arc<Self>, token: CancellationToken) {
        'follow: loop {
            let from = self.state().position;
            let feed = tokio::select! {
                _ = token.cancelled() => break,
                f = tail::follow_after(&self.js, self.stream, self.filter.clone(), from) => f,
            };
            let mut feed = match feed {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(stream = self.stream.name, error = %e, "feed cannot start; retrying");
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    _ = token.cancelled() => break 'follow,
                    next = feed.messages.next() => next,
                };
                match next {
                    Some(Ok(d)) => self.hand_out(d),
                    Some(Err(e)) => {
                        tracing::warn!(stream = self.stream.name, error = %e, "feed interrupted; following again");
                        break;
                    }
                    None => break,
                }
            }
        }
        self.stop();
    }

    /// Gives an event to the sessions of its subject; drops those that cannot take it.
    fn hand_out(&self, d: Delivery) {
        let mut state = self.state();
        if d.stream_sequence <= state.position {
            return;
        }
        state.position = d.stream_sequence;
        if let Some(sessions) = state.subscribers.get_mut(&d.subject) {
            sessions.retain(|(_, tx)| tx.try_send(d.clone()).is_ok());
            if sessions.is_empty() {
                state.subscribers.remove(&d.subject);
            }
        }
    }

    fn stop(&self) {
        let mut state = self.state();
        state.stopped = true;
        state.subscribers.clear();
    }

    fn unsubscribe(&self, subject: &str, id: u64) {
        let mut state = self.state();
        if let Some(sessions) = state.subscribers.get_mut(subject) {
            sessions.retain(|(i, _)| *i != id);
            if sessions.is_empty() {
                state.subscribers.remove(subject);
            }
        }
    }

    /// Every message of `subject` after the resume point, in order, live from then on.
    pub async fn follow(self: &Arc<Self>, subject: String, from: Resume) -> anyhow::Result<tail::Tail> {
        let (tx, mut live) = mpsc::channel(BUFFER);
        let (position, id) = {
            let mut state = self.state();
            anyhow::ensure!(!state.stopped, "the feed of {} has stopped", self.stream.name);
            state.next_id += 1;
            let id = state.next_id;
            state.subscribers.entry(subject.clone()).or_default().push((id, tx));
            (state.position, id)
        };
        let guard = Unsubscribe { hub: self.clone(), subject: subject.clone(), id };
        let resume_after = match from {
            Resume::Now => position,
            Resume::After(after) => after,
        };
        let missed = tail::backlog(&self.js, self.stream, subject, resume_after, position).await?;
        let (out, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let _guard = guard;
            let mut last = resume_after;
            for d in missed {
                last = d.stream_sequence;
                if out.send(Ok(d)).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = out.closed() => return,
                    next = live.recv() => match next {
                        Some(d) if d.stream_sequence <= last => {}
                        Some(d) => {
                            last = d.stream_sequence;
                            if out.send(Ok(d)).await.is_err() {
                                return;
                            }
                        }
                        None => {
                            let _ = out.send(Err(anyhow::anyhow!("the session fell behind the feed"))).await;
                            return;
                        }
                    },
                }
            }
        });
        let mut rx = rx;
        let messages = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(tail::Tail { resume_after, messages: Box::pin(messages) })
    }
}

/// Leaves the feed when the session's forwarding ends.
struct Unsubscribe {
    hub: Arc<Hub>,
    subject: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.subject, self.id);
    }
}
