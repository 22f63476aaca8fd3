//! The multi-replica race: three routing replicas on one NATS and Redis, 600 customers
//! arriving at once, then ten seconds of desks accepting, declining and ignoring offers,
//! closing and transferring conversations, going away, logging out and losing their
//! connection, while a supervisor transfers and closes and customers write again — every
//! choice drawn from a seeded generator (the seed is printed; `PARLEY_RACE_SEED` replays
//! it). The conversation log is replayed record by record in stream order and checked after
//! every record: no operator holds more than their capacity, no conversation has two
//! holders, no conversation's records skip or go back. Once things settle, nothing is lost
//! and Redis, the desks and the log agree.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use parley_domain::{Channel, Conversation, OperatorId, QueueId, Status, TenantId, Timestamp};
use parley_e2e::{Desk, describe, submit};
use parley_kit::auth::Bearer;
use parley_nats::conversations::decode_state;
use parley_nats::topology;
use parley_proto::events::conversation_event::Kind as EventKind;
use parley_proto::prost::Message as _;
use parley_proto::v1::open_session_response;
use parley_proto::v1::routing_service_client::RoutingServiceClient;
use parley_proto::{convert, events, v1};
use parley_testkit::{App, AppOptions, Authed, Infra};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

const TENANT: &str = "race";
/// A desk event: the version of the conversation it comes from, and its kind.
type Versioned = (u64, &'static str);
const OPERATORS: usize = 20;
const CUSTOMERS: usize = 600;
const REPLICAS: usize = 3;
const RACE: Duration = Duration::from_secs(10);
/// Queues: id, offer timeout in seconds (0: assigned without an offer), selection.
const QUEUES: [(&str, u64, v1::SelectionStrategy); 4] = [
    // 5 s is the shortest offer timeout a queue may have.
    ("sales", 5, v1::SelectionStrategy::RoundRobin),
    ("billing", 6, v1::SelectionStrategy::LongestIdle),
    ("support", 0, v1::SelectionStrategy::LeastOccupied),
    // Created with the tenant: assigns at once, least occupied.
    ("default", 0, v1::SelectionStrategy::Unspecified),
];
/// Answers a racing client may get: the race was lost (precondition, not found), or the
/// conversation changed too often to win (unavailable, aborted). Anything else is a bug.
const EXPECTED_CODES: [tonic::Code; 5] = [
    tonic::Code::Ok,
    tonic::Code::FailedPrecondition,
    tonic::Code::NotFound,
    tonic::Code::Unavailable,
    tonic::Code::Aborted,
];

/// The seed of this run: `PARLEY_RACE_SEED`, or the clock.
fn seed() -> u64 {
    std::env::var("PARLEY_RACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| parley_kit::clock::now().as_micros() as u64)
}

/// SplitMix64: a seeded generator, so a failing run's choices can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.range(0, items.len() as u64) as usize])
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    /// An independent generator for one actor.
    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

fn status_text(s: &Status) -> String {
    match s {
        Status::Queued => "queued".into(),
        Status::Offered { operator, .. } => format!("offered to {operator}"),
        Status::Assigned { operator } => format!("assigned to {operator}"),
        Status::Closed => "closed".into(),
    }
}

/// One conversation as the replay knows it.
struct Track {
    state: Conversation,
    /// Stream sequence of its last record.
    sequence: u64,
    time: Timestamp,
    /// One line per record, for the excerpt of a failure.
    lines: Vec<String>,
}

/// The conversation log replayed in stream order, with the invariants checked after every
/// record.
struct Replay {
    seed: u64,
    tenant: TenantId,
    capacity: HashMap<String, usize>,
    conversations: HashMap<String, Track>,
    /// What each operator holds (offered or assigned), as the log says.
    held: HashMap<String, BTreeSet<String>>,
    /// Per (operator, conversation), the desk events the log asks to deliver, in order, with
    /// the version (log position) of the record asking.
    desk: HashMap<(String, String), Vec<Versioned>>,
    /// Customer messages by idempotency key: the conversations they were recorded in.
    messages: HashMap<String, Vec<String>>,
    /// Conversations opened by two replicas at once for one customer and closed in favour
    /// of the other (by design both stay in the log, the message in each).
    merged: BTreeSet<String>,
    /// The message (idempotency key) that opened each conversation.
    opened_by: HashMap<String, String>,
    last_sequence: u64,
    records: u64,
    /// Records carrying `Nats-Expected-Last-Subject-Sequence` (the compare-and-set).
    with_expectation: u64,
    /// How often an operator's record left them exactly full.
    full: u64,
    recent: VecDeque<String>,
    violations: Vec<String>,
}

impl Replay {
    fn new(seed: u64, capacity: HashMap<String, usize>) -> Self {
        Self {
            seed,
            tenant: TenantId::parse(TENANT).expect("tenant id"),
            held: capacity.keys().map(|op| (op.clone(), BTreeSet::new())).collect(),
            capacity,
            conversations: HashMap::new(),
            desk: HashMap::new(),
            messages: HashMap::new(),
            merged: BTreeSet::new(),
            opened_by: HashMap::new(),
            last_sequence: 0,
            records: 0,
            with_expectation: 0,
            full: 0,
            recent: VecDeque::new(),
            violations: Vec::new(),
        }
    }

    /// Conversations in a given state, with their holder.
    fn in_state(&self, pick: impl Fn(&Status) -> bool) -> Vec<(String, Option<String>)> {
        let mut out: Vec<_> = self
            .conversations
            .iter()
            .filter(|(_, t)| pick(&t.state.status))
            .map(|(id, t)| (id.clone(), t.state.status.holder().map(|o| o.to_string())))
            .collect();
        out.sort();
        out
    }

    fn excerpt(&self, conversation: &str) -> String {
        let lines = self.conversations.get(conversation).map(|t| t.lines.as_slice()).unwrap_or_default();
        let from = lines.len().saturating_sub(12);
        lines[from..].iter().map(|l| format!("\n      {l}")).collect()
    }

    fn violation(&mut self, sequence: u64, conversation: &str, what: String, related: &[String]) {
        if self.violations.len() >= 20 {
            return;
        }
        let mut text = format!(
            "seed {}: after record #{sequence} of conversation {conversation}: {what}\n    its records:{}",
            self.seed,
            self.excerpt(conversation)
        );
        for other in related.iter().filter(|c| c.as_str() != conversation) {
            text.push_str(&format!("\n    conversation {other}:{}", self.excerpt(other)));
        }
        text.push_str("\n    the log just before:");
        for l in &self.recent {
            text.push_str(&format!("\n      {l}"));
        }
        self.violations.push(text);
    }

    /// Applies one record (its stream sequence, the subject sequence it was appended
    /// expecting, if stored) and checks every invariant.
    fn apply(&mut self, sequence: u64, expected_last: Option<u64>, record: &events::ConversationRecord) {
        let next = match decode_state(record, &self.tenant) {
            Ok(c) => c,
            Err(e) => {
                self.violation(sequence, &record.conversation_id, format!("undecodable state: {e}"), &[]);
                return;
            }
        };
        let id = next.id.to_string();
        let mut problems: Vec<String> = Vec::new();
        let mut related: Vec<String> = Vec::new();
        if record.conversation_id != id {
            problems.push(format!("the record of {} carries the state of {id}", record.conversation_id));
        }
        let time = convert::from_timestamp(record.record_time.as_ref());

        // What the record says happened.
        let mut opened = false;
        let mut messages = 0;
        let mut given: Vec<(String, String)> = Vec::new();
        let mut what = Vec::new();
        for e in &record.events {
            match &e.kind {
                Some(EventKind::Opened(_)) => {
                    opened = true;
                    what.push("opened".to_owned());
                }
                Some(EventKind::MessageReceived(m)) => {
                    messages += 1;
                    if opened {
                        self.opened_by.entry(id.clone()).or_insert_with(|| m.channel_message_id.clone());
                    }
                    self.messages.entry(m.channel_message_id.clone()).or_default().push(id.clone());
                    what.push(format!("message {}", m.channel_message_id));
                }
                Some(EventKind::MessageSent(_)) => messages += 1,
                Some(EventKind::Queued(q)) => what.push(format!("queued in {} ({})", q.queue_id, q.reason)),
                Some(EventKind::Offered(o)) => {
                    given.push((o.operator_id.clone(), "offered".into()));
                    what.push(format!("offered to {}", o.operator_id));
                }
                Some(EventKind::Assigned(a)) => {
                    given.push((a.operator_id.clone(), a.reason.clone()));
                    what.push(format!("assigned to {} ({})", a.operator_id, a.reason));
                }
                Some(EventKind::Closed(c)) => {
                    if c.closed_by == "system" && c.reason.starts_with("merged into") {
                        self.merged.insert(id.clone());
                    }
                    what.push(format!("closed by {} ({})", c.closed_by, c.reason));
                }
                Some(EventKind::Decision(d)) => what.push(format!(
                    "decision: {}",
                    if d.chosen_operator_id.is_empty() { "nobody" } else { d.chosen_operator_id.as_str() }
                )),
                Some(EventKind::Delivery(_)) | None => {}
            }
        }
        let mut desk: Vec<(String, &'static str)> = Vec::new();
        for d in &record.desk {
            match &d.event {
                Some(e) => {
                    let (about, kind) = describe(e);
                    if about != id {
                        problems.push(format!("a desk event for {} is about {about}", d.operator_id));
                    }
                    desk.push((d.operator_id.clone(), kind));
                }
                None => problems.push(format!("an empty desk delivery to {}", d.operator_id)),
            }
        }

        // (c) Order: each record is appended at the sequence of the one before it, never
        // earlier in time, onto a conversation that is still open.
        let previous = self.conversations.get(&id);
        match previous {
            None => {
                if let Some(e) = expected_last
                    && e != 0
                {
                    problems.push(format!("the first record was appended expecting subject sequence {e}, not 0"));
                }
                if !opened {
                    problems.push("the first record does not open the conversation".into());
                }
                if next.message_count != messages {
                    problems.push(format!("message count {} after {messages} message(s)", next.message_count));
                }
            }
            Some(t) => {
                if let Some(e) = expected_last
                    && e != t.sequence
                {
                    problems.push(format!(
                        "appended expecting subject sequence {e}, but the previous record is #{}",
                        t.sequence
                    ));
                }
                if time < t.time {
                    problems.push(format!("record time {time} is before the previous record's {}", t.time));
                }
                if opened {
                    problems.push("opened a second time".into());
                }
                if t.state.status == Status::Closed {
                    problems.push("a record after the conversation was closed".into());
                }
                if next.created != t.state.created || next.customer.id != t.state.customer.id {
                    problems.push("the conversation's creation or customer changed".into());
                }
                if next.message_count != t.state.message_count + messages {
                    problems.push(format!(
                        "message count went from {} to {} with {messages} message(s)",
                        t.state.message_count, next.message_count
                    ));
                }
            }
        }

        // (b) One holder: the state names at most one operator; it changes only through the
        // legal transitions, each telling the old holder's desk and the new one's.
        let prev_status = previous.map(|t| t.state.status.clone());
        let before = prev_status.as_ref().and_then(|s| s.holder()).map(|o| o.to_string());
        let after = next.status.holder().map(|o| o.to_string());
        match (&prev_status, &next.status) {
            (Some(Status::Offered { operator: a, expires: x }), Status::Offered { operator: b, expires: y })
                if a != b || x != y =>
            {
                problems.push(format!("the offer moved from {a} to {b} without going back to the queue"));
            }
            (Some(Status::Offered { operator: a, .. }), Status::Assigned { operator: b }) => {
                if a != b {
                    problems.push(format!("offered to {a} but assigned to {b}"));
                }
                if !given.iter().any(|(o, why)| o == b.as_str() && why == "accepted") {
                    problems.push(format!("{b} owns it with no acceptance recorded"));
                }
                if !desk.iter().any(|(o, k)| o == b.as_str() && *k == "assigned") {
                    problems.push(format!("{b}'s desk is not told it accepted"));
                }
            }
            (Some(Status::Assigned { operator: a }), Status::Assigned { operator: b })
                if a != b && !given.iter().any(|(o, why)| o == b.as_str() && why == "transferred") =>
            {
                problems.push(format!("moved from {a} to {b} with no transfer recorded"));
            }
            (Some(Status::Assigned { .. }), Status::Offered { .. }) => {
                problems.push("an assigned conversation was offered".into());
            }
            (Some(Status::Closed), s) if *s != Status::Closed => problems.push("a closed conversation reopened".into()),
            _ => {}
        }
        if before != after {
            if let Some(b) = &before
                && !desk.iter().any(|(o, k)| o == b && *k == "released")
            {
                problems.push(format!("{b} lost it without their desk being told"));
            }
            if let Some(a) = &after {
                if !desk.iter().any(|(o, k)| o == a && (*k == "offered" || *k == "assigned")) {
                    problems.push(format!("{a} got it without their desk being told"));
                }
                if !given.iter().any(|(o, _)| o == a) {
                    problems.push(format!("{a} holds it with no offer or assignment recorded"));
                }
            }
        }
        for (o, why) in &given {
            if after.as_deref() != Some(o.as_str()) {
                problems
                    .push(format!("an event gives it to {o} ({why}) but the state says {}", status_text(&next.status)));
            }
        }
        if before != after {
            if let Some(b) = &before
                && !self.held.get_mut(b).is_some_and(|set| set.remove(&id))
            {
                problems.push(format!("{b} was its holder but did not hold it"));
            }
            if let Some(a) = &after {
                for (op, set) in &self.held {
                    if set.contains(&id) {
                        problems.push(format!("held by {op} and {a} at once"));
                    }
                }
                match self.held.get_mut(a) {
                    Some(set) => {
                        set.insert(id.clone());
                    }
                    None => problems.push(format!("held by {a}, who is not an operator of the tenant")),
                }
            }
        }

        // (a) Capacity: nobody holds more than their seats.
        if let Some(a) = &after
            && let (Some(set), Some(cap)) = (self.held.get(a), self.capacity.get(a))
        {
            if set.len() > *cap {
                problems.push(format!("{a} holds {} conversations with capacity {cap}: {set:?}", set.len()));
                related.extend(set.iter().cloned());
            } else if set.len() == *cap && before != after {
                self.full += 1;
            }
        }

        for (op, kind) in &desk {
            self.desk.entry((op.clone(), id.clone())).or_default().push((sequence, kind));
        }
        let line = format!(
            "#{sequence} {} -> {}: {}{}",
            prev_status.as_ref().map_or("(new)".into(), status_text),
            status_text(&next.status),
            what.join(", "),
            if desk.is_empty() {
                String::new()
            } else {
                format!("; desks: {}", desk.iter().map(|(o, k)| format!("{o} {k}")).collect::<Vec<_>>().join(", "))
            }
        );
        if expected_last.is_some() {
            self.with_expectation += 1;
        }
        self.last_sequence = sequence;
        self.records += 1;
        let track = self.conversations.entry(id.clone()).or_insert_with(|| Track {
            state: next.clone(),
            sequence,
            time,
            lines: Vec::new(),
        });
        track.state = next;
        track.sequence = sequence;
        track.time = time;
        track.lines.push(line.clone());
        for p in problems {
            self.violation(sequence, &id, p, &related);
        }
        self.recent.push_back(format!("{id}: {line}"));
        if self.recent.len() > 15 {
            self.recent.pop_front();
        }
    }
}

/// Follows the conversation log from its start with an ordered consumer and replays every
/// record as it arrives.
async fn follow_log(nats_url: String, replay: Arc<Mutex<Replay>>, stop: CancellationToken) {
    let client = async_nats::connect(nats_url).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(topology::EVENTS.name).await.expect("events stream");
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: topology::EVENTS.subjects.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer on the log");
    let mut messages = consumer.messages().await.expect("log messages");
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = messages.next() => next,
        };
        let message = next.expect("the log feed stays open").expect("a log message");
        let sequence = message.info().expect("message info").stream_sequence;
        let expected = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Expected-Last-Subject-Sequence"))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        let mut replay = replay.lock().unwrap();
        match events::ConversationRecord::decode(message.payload.clone()) {
            Ok(record) => replay.apply(sequence, expected, &record),
            Err(e) => {
                let subject = message.subject.to_string();
                replay.violation(sequence, &subject, format!("undecodable record: {e}"), &[]);
            }
        }
    }
}

struct Operator {
    id: String,
    token: String,
}

/// What every actor shares.
struct Race {
    replicas: Vec<tonic::transport::Channel>,
    operators: Vec<Operator>,
    supervisor_token: String,
    ingest: Vec<v1::api_channel_service_client::ApiChannelServiceClient<Authed>>,
    /// What each desk holds, as its events say (what an operator acts on): per conversation,
    /// the newest version applied and what it said.
    holding: Mutex<HashMap<String, BTreeMap<String, Versioned>>>,
    /// Per (operator, conversation), the desk events the desk received (version, kind), in
    /// the order received.
    seen: Mutex<HashMap<(String, String), Vec<Versioned>>>,
    /// Customer messages ingest accepted (idempotency keys).
    accepted: Mutex<Vec<String>>,
    /// Outcomes of the racing calls, by call and code.
    outcomes: Mutex<BTreeMap<String, u32>>,
    replay: Arc<Mutex<Replay>>,
    race_over: CancellationToken,
    done: CancellationToken,
    /// Actors that stopped acting (and whose calls have all returned).
    quiet: AtomicUsize,
}

impl Race {
    fn routing(&self, replica: u64, token: &str) -> RoutingServiceClient<Authed> {
        let channel = self.replicas[replica as usize % self.replicas.len()].clone();
        RoutingServiceClient::with_interceptor(channel, Bearer::new(token).expect("token"))
    }

    fn note<T>(&self, call: &str, result: &Result<T, tonic::Status>) {
        let code = result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        let mut outcomes = self.outcomes.lock().unwrap();
        *outcomes.entry(format!("{call}: {code:?}")).or_default() += 1;
        if let Err(s) = result
            && !EXPECTED_CODES.contains(&s.code())
        {
            *outcomes.entry(format!("UNEXPECTED {call}: {code:?} {}", s.message())).or_default() += 1;
        }
    }

    /// A desk event arrived: the desk applies it unless it already applied a newer version
    /// of the conversation (as the API tells desks to).
    fn desk_saw(&self, op: &str, conversation: &str, version: u64, kind: &'static str) {
        self.seen.lock().unwrap().entry((op.to_owned(), conversation.to_owned())).or_default().push((version, kind));
        if kind == "message" {
            return;
        }
        let mut holding = self.holding.lock().unwrap();
        let mine = holding.entry(op.to_owned()).or_default();
        match mine.get(conversation) {
            Some((newest, _)) if *newest > version => {}
            _ => {
                mine.insert(conversation.to_owned(), (version, kind));
            }
        }
    }

    fn assigned_to(&self, op: &str) -> Vec<String> {
        let holding = self.holding.lock().unwrap();
        holding
            .get(op)
            .map(|m| m.iter().filter(|(_, (_, k))| *k == "assigned").map(|(c, _)| c.clone()).collect())
            .unwrap_or_default()
    }

    async fn submit(&self, i: usize, customer: usize, message: usize, queue: &str) {
        let key = format!("cust-{customer}-{message}");
        let mut request = submit(&format!("cust-{customer}"), &format!("Сообщение {message}"), &key);
        request.queue_id = queue.into();
        let result = self.ingest[i % self.ingest.len()].clone().submit_message(request).await;
        match result {
            Ok(_) => self.accepted.lock().unwrap().push(key),
            Err(e) => panic!("ingest refused {key}: {e}"),
        }
    }
}

/// One operator's desk: reads its events, heartbeats, answers offers, and acts at random
/// until the race is over; a dropping desk goes silent past its session's TTL once, then
/// reconnects where it left off.
async fn desk_actor(race: Arc<Race>, app: Arc<App>, i: usize, mut rng: Rng, drop_after: Option<Duration>) {
    let op = &race.operators[i];
    let mut desk = Desk::open(&app, &op.token, 0).await.expect("desk opens");
    let mut actions: JoinSet<()> = JoinSet::new();
    let mut beat = tokio::time::interval(Duration::from_millis(700));
    let started = tokio::time::Instant::now();
    let mut next_act = started + rng.millis(200, 600);
    let mut drop_at = drop_after.map(|d| started + d);
    let mut quiet = false;
    loop {
        let racing = !race.race_over.is_cancelled();
        if !racing && !quiet && actions.is_empty() {
            quiet = true;
            race.quiet.fetch_add(1, Ordering::SeqCst);
        }
        tokio::select! {
            _ = race.done.cancelled() => break,
            frame = desk.frame(Duration::from_secs(3600)) => {
                let open_session_response::Frame::Event(event) = frame else { continue };
                let (conversation, kind) = describe(&event);
                race.desk_saw(&op.id, &conversation, event.conversation_version, kind);
                if kind == "offered" && racing {
                    answer_offer(&race, &mut actions, &op.token, conversation, &mut rng);
                }
            }
            Some(_) = actions.join_next(), if !actions.is_empty() => {}
            _ = beat.tick() => desk.heartbeat().await,
            _ = race.race_over.cancelled(), if racing => {}
            _ = tokio::time::sleep_until(next_act), if racing => {
                act(&race, &mut actions, i, &mut rng).await;
                next_act = tokio::time::Instant::now() + rng.millis(200, 600);
            }
            _ = tokio::time::sleep_until(drop_at.unwrap_or(started)), if racing && drop_at.is_some() => {
                drop_at = None;
                // Silent: no heartbeats and nothing read, past the session's TTL (3 s) and
                // the tenant's reroute delay (2 s); then a new connection resumes.
                tokio::time::sleep(Duration::from_millis(5500)).await;
                let resume = desk.last_sequence;
                drop(desk);
                desk = Desk::open(&app, &op.token, resume).await.expect("desk reconnects");
                race.note("reconnect", &Ok::<(), tonic::Status>(()));
            }
        }
    }
}

/// Accepts (sometimes too late), declines, or ignores an offer.
fn answer_offer(race: &Arc<Race>, actions: &mut JoinSet<()>, token: &str, conversation: String, rng: &mut Rng) {
    let roll = rng.range(0, 100);
    let replica = rng.next();
    let (accept, delay) = match roll {
        // Some acceptances come after the offer ran out.
        0..55 => (true, rng.millis(0, 5500)),
        55..80 => (false, rng.millis(0, 1000)),
        _ => return,
    };
    let race = race.clone();
    let token = token.to_owned();
    actions.spawn(async move {
        tokio::time::sleep(delay).await;
        let mut routing = race.routing(replica, &token);
        if accept {
            let r = routing.accept_offer(v1::AcceptOfferRequest { conversation_id: conversation }).await;
            race.note("accept", &r);
        } else {
            let r = routing
                .decline_offer(v1::DeclineOfferRequest { conversation_id: conversation, reason: "busy".into() })
                .await;
            race.note("decline", &r);
        }
    });
}

/// One random thing an operator does: close or transfer a conversation, go away or log
/// out for a moment.
async fn act(race: &Arc<Race>, actions: &mut JoinSet<()>, i: usize, rng: &mut Rng) {
    let op = &race.operators[i];
    let mine = race.assigned_to(&op.id);
    let mut routing = race.routing(rng.next(), &op.token);
    match rng.range(0, 100) {
        0..35 => {
            if let Some(c) = rng.pick(&mine) {
                let r = routing
                    .close_conversation(v1::CloseConversationRequest {
                        conversation_id: c.clone(),
                        reason: "done".into(),
                    })
                    .await;
                race.note("close (operator)", &r);
            }
        }
        35..45 => {
            if let Some(c) = rng.pick(&mine) {
                let target = if rng.range(0, 10) < 7 {
                    let to = &race.operators[rng.range(0, OPERATORS as u64) as usize].id;
                    v1::transfer_conversation_request::Target::OperatorId(to.clone())
                } else {
                    v1::transfer_conversation_request::Target::QueueId(QUEUES[rng.range(0, 4) as usize].0.into())
                };
                let r = routing
                    .transfer_conversation(v1::TransferConversationRequest {
                        conversation_id: c.clone(),
                        target: Some(target),
                        note: "please take over".into(),
                    })
                    .await;
                race.note("transfer (operator)", &r);
            }
        }
        45..53 => {
            // Away (keeps their conversations) or logged out (which hands them back), and
            // back online a moment later — through another replica, maybe.
            let (status, call) = if rng.range(0, 2) == 0 {
                (v1::OperatorStatus::Away, "away")
            } else {
                (v1::OperatorStatus::Offline, "log out")
            };
            let r = routing
                .set_operator_status(v1::SetOperatorStatusRequest {
                    status: status as i32,
                    reason: "coffee".into(),
                    ..Default::default()
                })
                .await;
            race.note(call, &r);
            let back = rng.millis(500, 2000);
            let mut routing = race.routing(rng.next(), &op.token);
            let race = race.clone();
            actions.spawn(async move {
                tokio::time::sleep(back).await;
                let r = routing
                    .set_operator_status(v1::SetOperatorStatusRequest {
                        status: v1::OperatorStatus::Online as i32,
                        ..Default::default()
                    })
                    .await;
                race.note("back online", &r);
            });
        }
        _ => {}
    }
}

/// A supervisor moving and closing conversations, picked from the log as it stands — and
/// sometimes handing one to the operator who already has it (a stale screen).
async fn supervisor(race: Arc<Race>, mut rng: Rng) {
    while !race.race_over.is_cancelled() {
        tokio::time::sleep(rng.millis(100, 300)).await;
        let (assigned, open, roomy) = {
            let replay = race.replay.lock().unwrap();
            let roomy: Vec<String> = replay
                .held
                .iter()
                .filter(|(op, set)| set.len() < replay.capacity[*op])
                .map(|(op, _)| op.clone())
                .collect();
            (
                replay.in_state(|s| matches!(s, Status::Assigned { .. })),
                replay.in_state(|s| *s != Status::Closed),
                roomy,
            )
        };
        let mut routing = race.routing(rng.next(), &race.supervisor_token);
        let roll = rng.range(0, 100);
        match roll {
            0..60 => {
                let Some((c, owner)) = rng.pick(&assigned).cloned() else { continue };
                let (to, call) = match owner {
                    Some(owner) if roll < 10 => (owner, "transfer to its owner (supervisor)"),
                    // Mostly to someone with a free seat, as a supervisor would pick.
                    _ => match rng.pick(&roomy) {
                        Some(to) if roll < 45 => (to.clone(), "transfer (supervisor)"),
                        _ => (
                            race.operators[rng.range(0, OPERATORS as u64) as usize].id.clone(),
                            "transfer (supervisor)",
                        ),
                    },
                };
                let r = routing
                    .transfer_conversation(v1::TransferConversationRequest {
                        conversation_id: c,
                        target: Some(v1::transfer_conversation_request::Target::OperatorId(to)),
                        note: "from the supervisor".into(),
                    })
                    .await;
                race.note(call, &r);
            }
            60..80 => {
                let Some((c, _)) = rng.pick(&assigned).cloned() else { continue };
                let queue = QUEUES[rng.range(0, 4) as usize].0;
                let r = routing
                    .transfer_conversation(v1::TransferConversationRequest {
                        conversation_id: c,
                        target: Some(v1::transfer_conversation_request::Target::QueueId(queue.into())),
                        note: String::new(),
                    })
                    .await;
                race.note("transfer to a queue (supervisor)", &r);
            }
            _ => {
                let Some((c, _)) = rng.pick(&open).cloned() else { continue };
                let r = routing
                    .close_conversation(v1::CloseConversationRequest { conversation_id: c, reason: "spam".into() })
                    .await;
                race.note("close (supervisor)", &r);
            }
        }
    }
    race.quiet.fetch_add(1, Ordering::SeqCst);
}

/// Customers writing again, one message or two at once: into their open conversation, or,
/// for a customer whose conversation was closed (half the picks), opening a new one — two
/// messages at once may then open two on two replicas, which merge.
async fn customers(race: Arc<Race>, mut rng: Rng) {
    let mut n = 0;
    while !race.race_over.is_cancelled() {
        tokio::time::sleep(rng.millis(30, 90)).await;
        let returning: Vec<usize> = if rng.range(0, 2) == 0 {
            let replay = race.replay.lock().unwrap();
            let mut open = vec![false; CUSTOMERS];
            let mut seen = vec![false; CUSTOMERS];
            for t in replay.conversations.values() {
                if let Some(i) = t.state.customer.address.strip_prefix("cust-").and_then(|i| i.parse::<usize>().ok()) {
                    seen[i] = true;
                    open[i] |= t.state.status != Status::Closed;
                }
            }
            (0..CUSTOMERS).filter(|i| seen[*i] && !open[*i]).collect()
        } else {
            Vec::new()
        };
        let customer = rng.pick(&returning).copied().unwrap_or_else(|| rng.range(0, CUSTOMERS as u64) as usize);
        let queue = QUEUES[rng.range(0, 4) as usize].0;
        n += 2;
        if rng.range(0, 2) == 0 {
            tokio::join!(race.submit(n, customer, 100 + n, queue), race.submit(n + 1, customer, 101 + n, queue));
        } else {
            race.submit(n, customer, 100 + n, queue).await;
        }
    }
    race.quiet.fetch_add(1, Ordering::SeqCst);
}

async fn start_replica(app: &App) -> parley_kit::runtime::ServiceHandle {
    app.routing_replica(AppOptions::default(), "routing-n").await
}

/// How Redis and the log disagree now, if they do (`None`: they agree).
async fn disagreement(race: &Race, redis: &parley_redis::Coordinator, events_end: u64) -> Option<String> {
    let tenant = TenantId::parse(TENANT).expect("tenant id");
    let (held, queued, offered, last) = {
        let r = race.replay.lock().unwrap();
        let mut queued: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (id, t) in &r.conversations {
            if t.state.status == Status::Queued {
                queued.entry(t.state.queue.to_string()).or_default().insert(id.clone());
            }
        }
        let offered = r.in_state(|s| matches!(s, Status::Offered { .. })).len();
        (r.held.clone(), queued, offered, r.last_sequence)
    };
    if last < events_end {
        return Some(format!("the replay is at #{last} of #{events_end}"));
    }
    if offered > 0 {
        let excerpts: String = {
            let r = race.replay.lock().unwrap();
            let ids = r.in_state(|s| matches!(s, Status::Offered { .. }));
            ids.iter().take(3).map(|(c, _)| format!("\n    conversation {c}:{}", r.excerpt(c))).collect()
        };
        let tracked = redis.due_offers(&tenant, Timestamp::from_millis(i64::MAX / 4), 10_000).await.map(|v| v.len());
        return Some(format!("{offered} offers still open ({tracked:?} deadlines in redis){excerpts}"));
    }
    let mut diffs = Vec::new();
    for op in &race.operators {
        let id = OperatorId::parse(&op.id).expect("operator id");
        let in_redis: BTreeSet<String> = match redis.held(&tenant, &id, Channel::Api).await {
            Ok(held) => held.into_iter().collect(),
            Err(e) => return Some(format!("redis: {e}")),
        };
        let in_log = held.get(&op.id).cloned().unwrap_or_default();
        if in_redis != in_log {
            diffs.push(format!("{}: redis holds {in_redis:?}, the log {in_log:?}", op.id));
        }
    }
    let presences = match race
        .routing(0, &race.supervisor_token)
        .list_operator_presences(v1::ListOperatorPresencesRequest {})
        .await
    {
        Ok(r) => r.into_inner().presences,
        Err(e) => return Some(format!("presences: {e}")),
    };
    for p in &presences {
        let load = p.load.iter().find(|l| l.channel == v1::Channel::Api as i32).map_or(0, |l| l.active_conversations);
        let in_log = held.get(&p.operator_id).map_or(0, |s| s.len()) as u32;
        if load != in_log {
            diffs.push(format!("{}: the API reports load {load}, the log {in_log}", p.operator_id));
        }
    }
    for (queue, _, _) in QUEUES {
        let q = QueueId::parse(queue).expect("queue id");
        let in_redis: BTreeSet<String> = match redis.waiting(&tenant, &q, 100_000).await {
            Ok(waiting) => waiting.into_iter().map(|c| c.to_string()).collect(),
            Err(e) => return Some(format!("redis: {e}")),
        };
        let in_log = queued.get(queue).cloned().unwrap_or_default();
        let missing: Vec<_> = in_log.difference(&in_redis).collect();
        let stale: Vec<_> = in_redis.difference(&in_log).collect();
        if !missing.is_empty() || !stale.is_empty() {
            let r = race.replay.lock().unwrap();
            let excerpts: String =
                missing.iter().chain(&stale).map(|c| format!("\n    conversation {c}:{}", r.excerpt(c))).collect();
            diffs.push(format!(
                "queue {queue}: waiting per the log but not in redis {missing:?}; in redis but not waiting {stale:?}{excerpts}"
            ));
        }
    }
    (!diffs.is_empty()).then(|| diffs.join("\n  "))
}

async fn events_end(js: &async_nats::jetstream::Context) -> u64 {
    let mut stream = js.get_stream(topology::EVENTS.name).await.expect("events stream");
    stream.info().await.expect("stream info").state.last_sequence
}

/// Every message ingest accepted is in exactly one conversation not closed as merged —
/// and, besides it, at most in the conversation it opened at the moment another replica
/// opened one for the same customer.
fn every_message_once(seed: u64, r: &Replay, accepted: &[String]) {
    for key in accepted {
        let mut found = r.messages.get(key).cloned().unwrap_or_default();
        let kept = found.iter().filter(|c| !r.merged.contains(*c)).count();
        // Besides the conversation it went to, a message may only be in the one it opened
        // at the moment another replica opened one for the same customer.
        let opened_by_it = found.iter().filter(|c| r.opened_by.get(*c) == Some(key)).count();
        let once = kept >= 1 && (found.len() == 1 || (found.len() == 2 && opened_by_it >= 1));
        if !once {
            // Show every conversation of that customer.
            let customer = key.rsplit_once('-').map_or(key.as_str(), |(c, _)| c);
            for (id, t) in &r.conversations {
                if t.state.customer.address == customer && !found.contains(id) {
                    found.push(id.clone());
                }
            }
        }
        assert!(
            once,
            "seed {seed}: message {key} is in {} conversation(s), {kept} not closed as merged:{}",
            r.messages.get(key).map_or(0, Vec::len),
            found.iter().map(|c| format!("\n  conversation {c}:{}", r.excerpt(c))).collect::<String>()
        );
    }
}

/// The end of the log: every record checked against the compare-and-set it was appended
/// with; every message in exactly one conversation; every conversation waiting, with
/// someone, or closed. Returns the count by status.
fn nothing_lost(seed: u64, r: &Replay, accepted: &[String]) -> BTreeMap<&'static str, usize> {
    // (c) is checked by the compare-and-set expectation each record was stored with.
    assert_eq!(r.with_expectation, r.records, "every record carries the sequence it expected");
    every_message_once(seed, r, accepted);
    assert_eq!(r.messages.len(), accepted.len(), "seed {seed}: messages nobody sent");
    let mut by_status: BTreeMap<&'static str, usize> = BTreeMap::new();
    for t in r.conversations.values() {
        *by_status.entry(t.state.status.name()).or_default() += 1;
    }
    assert!(r.conversations.len() >= CUSTOMERS, "every customer has a conversation");
    assert_eq!(by_status.get("offered"), None, "no offer outlives the settling");
    by_status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_racing_never_overfill_an_operator_or_share_a_conversation() {
    let started = Instant::now();
    let seed = seed();
    println!("race seed {seed} (PARLEY_RACE_SEED={seed} replays these choices)");
    let mut rng = Rng(seed);

    parley_testkit::init_logging();
    let app = App::spawn_with(Infra::start().await.expect("infrastructure"), true, AppOptions::default()).await;
    let names: Vec<String> = (1..=OPERATORS).map(|i| format!("op-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fx = app.tenant(TENANT, &refs).await;
    let mut admin = app.admin(&fx.admin_token).await;

    // One to three seats each.
    let mut capacity = HashMap::new();
    for name in &names {
        let seats = rng.range(1, 4) as u32;
        fx.set_api_seats(&app, name, seats).await;
        capacity.insert(name.clone(), seats as usize);
    }
    for (id, offer_timeout, selection) in QUEUES {
        if id == "default" {
            continue;
        }
        admin
            .create_queue(v1::CreateQueueRequest {
                queue: Some(v1::Queue {
                    id: id.into(),
                    display_name: id.into(),
                    required_skills: vec![v1::SkillLevel { skill: "support".into(), proficiency: 2 }],
                    offer_timeout: (offer_timeout > 0).then(|| convert::duration(Duration::from_secs(offer_timeout))),
                    selection: selection as i32,
                    ..Default::default()
                }),
            })
            .await
            .expect("create queue");
    }
    // Every held conversation takes a whole seat (no replies are sent, but the weights
    // would otherwise let a count exceed the seats by design), and a gone desk's open
    // conversations go back after 2 s, so dropped desks hand work back during the race.
    let mut settings_client = app.routing_client(&fx.admin_token).await;
    let mut settings = settings_client
        .get_routing_settings(v1::GetRoutingSettingsRequest {})
        .await
        .unwrap()
        .into_inner()
        .settings
        .unwrap();
    settings.waiting_weight = 1.0;
    settings.idle_weight = 1.0;
    settings.reroute_after = Some(convert::duration(Duration::from_secs(2)));
    settings_client
        .update_routing_settings(v1::UpdateRoutingSettingsRequest { settings: Some(settings) })
        .await
        .expect("routing settings");

    // Two more replicas, started after the configuration so their caches begin with it.
    let mut extra = Vec::new();
    for _ in 1..REPLICAS {
        extra.push(start_replica(&app).await);
    }
    let mut addrs = vec![app.addrs().routing];
    addrs.extend(extra.iter().map(|h| h.grpc_addr));
    let mut replicas = Vec::new();
    for addr in &addrs {
        replicas.push(parley_testkit::connect(*addr).await);
    }
    let mut ingest = Vec::new();
    for _ in 0..4 {
        ingest.push(app.ingest_client(&fx.integrator_token).await);
    }
    let replay = Arc::new(Mutex::new(Replay::new(seed, capacity.clone())));
    let race = Arc::new(Race {
        replicas,
        operators: fx
            .operator_tokens
            .iter()
            .map(|(id, token)| Operator { id: id.clone(), token: token.clone() })
            .collect(),
        supervisor_token: fx.supervisor_token.clone(),
        ingest,
        holding: Mutex::new(HashMap::new()),
        seen: Mutex::new(HashMap::new()),
        accepted: Mutex::new(Vec::new()),
        outcomes: Mutex::new(BTreeMap::new()),
        replay: replay.clone(),
        race_over: CancellationToken::new(),
        done: CancellationToken::new(),
        quiet: AtomicUsize::new(0),
    });
    // Every replica sees the same seats and settings before anything is routed.
    for replica in 0..REPLICAS as u64 {
        let mut supervisor = race.routing(replica, &race.supervisor_token);
        parley_testkit::eventually(Duration::from_secs(10), "replica sees the configuration", || {
            let mut supervisor = supervisor.clone();
            let capacity = capacity.clone();
            async move {
                let presences = parley_testkit::presences(supervisor.clone()).await?;
                let seats_match = presences.len() == OPERATORS
                    && presences.iter().all(|p| {
                        p.load.iter().map(|l| l.max_conversations as usize).sum::<usize>() == capacity[&p.operator_id]
                    });
                let s = supervisor.get_routing_settings(v1::GetRoutingSettingsRequest {}).await.ok()?.into_inner();
                (seats_match && s.settings?.waiting_weight == 1.0).then_some(())
            }
        })
        .await;
        for (queue, _, _) in QUEUES {
            supervisor.get_queue_status(v1::GetQueueStatusRequest { queue_id: queue.into() }).await.expect("queue");
        }
    }

    let log_stop = CancellationToken::new();
    let log = tokio::spawn(follow_log(app.infra.nats.url(), replay.clone(), log_stop.clone()));

    // Desks connect and operators come online, each through some replica.
    let app = Arc::new(app);
    let mut actors = JoinSet::new();
    // Two desks lose their connection three seconds into the race.
    let dropping: Vec<usize> = {
        let first = rng.range(0, OPERATORS as u64) as usize;
        vec![first, (first + 1 + rng.range(0, OPERATORS as u64 - 1) as usize) % OPERATORS]
    };
    let arrivals = Instant::now();
    for i in 0..OPERATORS {
        let drop_after = dropping.contains(&i).then_some(Duration::from_secs(3));
        actors.spawn(desk_actor(race.clone(), app.clone(), i, rng.fork(), drop_after));
    }
    for op in &race.operators {
        let mut routing = race.routing(rng.next(), &op.token);
        routing
            .set_operator_status(v1::SetOperatorStatusRequest {
                status: v1::OperatorStatus::Online as i32,
                ..Default::default()
            })
            .await
            .expect("online");
    }

    // Six hundred customers at once, across four ingest connections and four queues.
    let mut sends = JoinSet::new();
    for c in 0..CUSTOMERS {
        let race = race.clone();
        let queue = QUEUES[rng.range(0, 4) as usize].0;
        sends.spawn(async move { race.submit(c, c, 1, queue).await });
    }
    while let Some(r) = sends.join_next().await {
        r.expect("submit task");
    }
    println!("{CUSTOMERS} customers accepted by ingest in {:?}", arrivals.elapsed());

    actors.spawn(supervisor(race.clone(), rng.fork()));
    actors.spawn(customers(race.clone(), rng.fork()));
    tokio::time::sleep(RACE).await;
    race.race_over.cancel();
    parley_testkit::eventually(Duration::from_secs(15), "every actor's calls returned", || {
        let n = race.quiet.load(Ordering::SeqCst);
        async move { (n == OPERATORS + 2).then_some(()) }
    })
    .await;
    let fail_early = |replay: &Replay| {
        assert!(
            replay.violations.is_empty(),
            "invariants broken:\n{}\n\ncalls made: {:#?}",
            replay.violations.join("\n\n"),
            race.outcomes.lock().unwrap()
        );
    };
    fail_early(&replay.lock().unwrap());

    // Settle: everyone goes away (keeping what they hold; open offers run out and go back
    // to the queue), then Redis, the API and the log must agree exactly.
    for (n, op) in race.operators.iter().enumerate() {
        race.routing(n as u64, &op.token)
            .set_operator_status(v1::SetOperatorStatusRequest {
                status: v1::OperatorStatus::Away as i32,
                reason: "race over".into(),
                ..Default::default()
            })
            .await
            .expect("away");
    }
    let redis = parley_redis::Coordinator::connect(&app.infra.redis.url(), Duration::from_secs(5)).await.unwrap();
    let nats = async_nats::connect(app.infra.nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(nats);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let end = events_end(&js).await;
        match disagreement(&race, &redis, end).await {
            None => break,
            Some(diff) => {
                assert!(
                    Instant::now() < deadline,
                    "seed {seed}: redis and the log still disagree 20 s after the race:\n  {diff}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }

    let accepted = race.accepted.lock().unwrap().clone();
    let (by_status, expected_desk) = {
        let r = replay.lock().unwrap();
        fail_early(&r);
        (nothing_lost(seed, &r, &accepted), r.desk.clone())
    };

    // Each desk was told exactly what the log says, per conversation: nothing missing,
    // nothing extra, no offer or assignment of a conversation the log gave someone else,
    // and each event carries its change's version, so that ordered by version they are the
    // log's order. (The order of arrival may differ: the fan-out's consumer is shared by the
    // replicas, so two records of one conversation fanned out by two replicas at once can
    // reach the desk swapped; the desk orders them by version. How often is printed.)
    let by_version = |v: Option<&Vec<Versioned>>| {
        let mut v = v.cloned().unwrap_or_default();
        v.sort_by_key(|(version, _)| *version);
        v
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let swapped = loop {
        let seen = race.seen.lock().unwrap().clone();
        let mut diffs: Vec<String> = Vec::new();
        let mut swapped = 0;
        let keys: BTreeSet<&(String, String)> = seen.keys().chain(expected_desk.keys()).collect();
        for key in keys {
            let (want, got) = (expected_desk.get(key), seen.get(key));
            if want == got {
                continue;
            }
            if by_version(want) == by_version(got) {
                swapped += 1;
            } else {
                let excerpt = replay.lock().unwrap().excerpt(&key.1);
                diffs.push(format!("{} on {}: log {want:?}, desk {got:?}; its records:{excerpt}", key.0, key.1));
            }
        }
        if diffs.is_empty() {
            break swapped;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: desks were told otherwise than the log says ({} conversation(s)):\n{}",
            diffs.len(),
            diffs.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // What each desk holds by its events, newest version per conversation, is what the log
    // says it holds.
    {
        let holding = race.holding.lock().unwrap();
        let r = replay.lock().unwrap();
        for op in &race.operators {
            let desk: BTreeSet<String> = holding
                .get(&op.id)
                .map(|m| m.iter().filter(|(_, (_, k))| *k != "released").map(|(c, _)| c.clone()).collect())
                .unwrap_or_default();
            let log = r.held.get(&op.id).cloned().unwrap_or_default();
            assert_eq!(desk, log, "seed {seed}: {}'s desk, applying the newest version of each conversation", op.id);
        }
    }

    let outcomes = race.outcomes.lock().unwrap().clone();
    let unexpected: Vec<_> = outcomes.keys().filter(|k| k.starts_with("UNEXPECTED")).collect();
    assert!(unexpected.is_empty(), "seed {seed}: calls failed unexpectedly: {unexpected:?}");
    {
        let r = replay.lock().unwrap();
        println!(
            "seed {seed}: {} records, {} conversations {by_status:?} ({} merged), an operator left full {} times, {} messages; \
             {swapped} desk conversation(s) received out of version order",
            r.records,
            r.conversations.len(),
            r.merged.len(),
            r.full,
            accepted.len()
        );
    }
    for (call, n) in &outcomes {
        println!("  {call}: {n}");
    }

    race.done.cancel();
    while let Some(r) = actors.join_next().await {
        r.expect("actor");
    }
    log_stop.cancel();
    log.await.expect("log follower");
    for handle in extra {
        handle.stop().await.expect("replica stops");
    }
    let race = Arc::into_inner(race).expect("no actor holds the race");
    drop(race);
    let app = Arc::into_inner(app).expect("no actor holds the app");
    app.stop().await;
    println!("race took {:?}", started.elapsed());
}

/// Returning customers writing two messages at once, picked up by two replicas at once, while
/// a supervisor closes every conversation as soon as it opens: each message opens a
/// conversation, one of the two becomes the customer's open one, and the other's message
/// must follow it there even when it closes at that moment — no message may end up only in
/// a conversation closed as merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_messages_at_once_on_three_replicas_lose_nothing_when_conversations_close() {
    let seed = seed();
    println!("race seed {seed} (PARLEY_RACE_SEED={seed} replays these choices)");
    let mut rng = Rng(seed);
    parley_testkit::init_logging();
    let app = App::spawn_with(Infra::start().await.expect("infrastructure"), true, AppOptions::default()).await;
    let fx = app.tenant(TENANT, &[]).await;
    let mut extra = Vec::new();
    for _ in 1..REPLICAS {
        extra.push(start_replica(&app).await);
    }
    let mut replicas = vec![parley_testkit::connect(app.addrs().routing).await];
    for h in &extra {
        replicas.push(parley_testkit::connect(h.grpc_addr).await);
    }
    let replay = Arc::new(Mutex::new(Replay::new(seed, HashMap::new())));
    let log_stop = CancellationToken::new();
    let log = tokio::spawn(follow_log(app.infra.nats.url(), replay.clone(), log_stop.clone()));

    // The supervisor closes whatever is open, as soon as the log shows it.
    let stop = CancellationToken::new();
    let closer = tokio::spawn({
        let (replay, stop, token, replicas) =
            (replay.clone(), stop.clone(), fx.supervisor_token.clone(), replicas.clone());
        let mut rng = rng.fork();
        async move {
            let mut closed = 0;
            while !stop.is_cancelled() {
                let open = replay.lock().unwrap().in_state(|s| *s != Status::Closed);
                for (c, _) in open {
                    let channel = replicas[rng.range(0, REPLICAS as u64) as usize].clone();
                    let mut routing =
                        RoutingServiceClient::with_interceptor(channel, Bearer::new(&token).expect("token"));
                    let r = routing
                        .close_conversation(v1::CloseConversationRequest { conversation_id: c, reason: "done".into() })
                        .await;
                    if let Err(e) = r {
                        assert!(EXPECTED_CODES.contains(&e.code()), "close failed: {e}");
                    } else {
                        closed += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            closed
        }
    });

    let mut ingest = Vec::new();
    for _ in 0..REPLICAS {
        ingest.push(app.ingest_client(&fx.integrator_token).await);
    }
    let mut accepted = Vec::new();
    let until = Instant::now() + Duration::from_secs(6);
    let mut n = 0;
    while Instant::now() < until {
        tokio::time::sleep(rng.millis(10, 30)).await;
        let customer = rng.range(0, 40);
        let keys = [format!("cust-{customer}-{n}"), format!("cust-{customer}-{}", n + 1)];
        n += 2;
        let send = |key: &str, i: usize| {
            let mut client = ingest[i % ingest.len()].clone();
            let request = submit(&format!("cust-{customer}"), "Ещё вопрос", key);
            async move { client.submit_message(request).await }
        };
        let (a, b) = tokio::join!(send(&keys[0], n), send(&keys[1], n + 1));
        a.expect("ingest accepts");
        b.expect("ingest accepts");
        accepted.extend(keys);
    }
    stop.cancel();
    let closed = closer.await.expect("closer");

    // Every message reaches the log; then each is accounted for.
    parley_testkit::eventually(Duration::from_secs(20), "every message in the log", || {
        let all = {
            let r = replay.lock().unwrap();
            accepted.iter().all(|k| r.messages.contains_key(k))
        };
        async move { all.then_some(()) }
    })
    .await;
    // Let any merge still under way finish.
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let r = replay.lock().unwrap();
        assert!(r.violations.is_empty(), "invariants broken:\n{}", r.violations.join("\n\n"));
        every_message_once(seed, &r, &accepted);
        println!(
            "seed {seed}: {} messages, {} conversations ({} merged), {closed} closed by the supervisor",
            accepted.len(),
            r.conversations.len(),
            r.merged.len()
        );
        assert!(!r.merged.is_empty(), "two messages at once opened two conversations at least once");
    }
    log_stop.cancel();
    log.await.expect("log follower");
    for handle in extra {
        handle.stop().await.expect("replica stops");
    }
    app.stop().await;
}

/// Replicas write an offer's deadline after recording the offer, so two replicas' writes
/// for one conversation can land out of order: the end of an expired offer must never take
/// out the deadline of the offer made after it (which then never expired: found by the
/// race above), and a late write of the earlier deadline must not replace the later one.
#[tokio::test]
async fn offer_deadlines_written_out_of_order_keep_the_latest_offer() {
    let infra = Infra::start().await.expect("infrastructure");
    let redis = parley_redis::Coordinator::connect(&infra.redis.url(), Duration::from_secs(5)).await.unwrap();
    let tenant = TenantId::parse("deadlines").unwrap();
    let id = parley_domain::ConversationId::parse("0c55cb63-fb37-516e-8e77-79287c9a8db5").unwrap();
    let (first, second) = (Timestamp::from_millis(10_000), Timestamp::from_millis(20_000));
    let due = |at: Timestamp| {
        let (redis, tenant) = (redis.clone(), tenant.clone());
        async move { redis.due_offers(&tenant, at, 10).await.unwrap() }
    };

    // The second offer is tracked, then the end of the first lands.
    redis.track_offer(&tenant, id, second).await.unwrap();
    redis.untrack_offer(&tenant, id, first).await.unwrap();
    assert_eq!(due(second).await, vec![id], "the later offer's deadline survives the end of the earlier one");
    // A late write of the first deadline does not bring the later offer's expiry forward.
    redis.track_offer(&tenant, id, first).await.unwrap();
    assert!(due(first).await.is_empty(), "the earlier deadline did not replace the later one");
    // The end of the second offer takes it out.
    redis.untrack_offer(&tenant, id, second).await.unwrap();
    assert!(due(Timestamp::from_millis(i64::MAX / 4)).await.is_empty(), "an ended offer is forgotten");
}

/// The per-second check of gone desks reads only operators whose every session has
/// expired: a heartbeat keeps an operator out of it, the end of one of two sessions does
/// not put them in, the end of the last does at once, and once forgotten (nothing left to
/// reroute) they stay out until a desk of theirs comes and goes again.
#[tokio::test]
async fn gone_desks_are_the_operators_whose_every_session_expired() {
    let infra = Infra::start().await.expect("infrastructure");
    let redis = parley_redis::Coordinator::connect(&infra.redis.url(), Duration::from_secs(5)).await.unwrap();
    let tenant = TenantId::parse("desks").unwrap();
    let (anna, boris) = (OperatorId::parse("anna").unwrap(), OperatorId::parse("boris").unwrap());
    let at = Timestamp::from_millis;
    let gone = |now: Timestamp| {
        let (redis, tenant) = (redis.clone(), tenant.clone());
        async move {
            let mut ops: Vec<String> =
                redis.gone_desks(&tenant, now).await.unwrap().iter().map(|o| o.to_string()).collect();
            ops.sort();
            ops
        }
    };

    redis.heartbeat(&tenant, &anna, "tab-1", at(10_000)).await.unwrap();
    redis.heartbeat(&tenant, &anna, "tab-2", at(12_000)).await.unwrap();
    redis.heartbeat(&tenant, &boris, "desk", at(11_000)).await.unwrap();
    assert!(gone(at(9_000)).await.is_empty(), "every desk is alive");
    // An older heartbeat arriving late does not shorten a desk's life.
    redis.heartbeat(&tenant, &anna, "tab-1", at(9_500)).await.unwrap();
    assert_eq!(gone(at(11_500)).await, vec!["boris"], "anna's second tab lives until 12 s");
    // Anna closes her longer-lived tab at 11.6 s: her other one expired at 10 s.
    redis.end_session(&tenant, &anna, "tab-2", at(11_600)).await.unwrap();
    assert_eq!(gone(at(11_700)).await, vec!["anna", "boris"]);
    // Boris has nothing left to reroute: forgotten, until his desk comes back and goes.
    redis.forget_desk(&tenant, &boris, at(11_000)).await.unwrap();
    assert_eq!(gone(at(20_000)).await, vec!["anna"]);
    redis.heartbeat(&tenant, &boris, "desk", at(30_000)).await.unwrap();
    assert_eq!(gone(at(25_000)).await, vec!["anna"], "boris is back");
    // Forgetting with a deadline older than his new session leaves him be.
    redis.forget_desk(&tenant, &boris, at(11_000)).await.unwrap();
    assert_eq!(gone(at(31_000)).await, vec!["anna", "boris"]);
}
