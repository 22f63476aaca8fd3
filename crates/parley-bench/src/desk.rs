//! Delivery to operators: the anchor is a bare tonic streaming server (the same
//! `OpenSession` service and frames, fed from memory) with N sessions open; Parley is the
//! notification service with N operator sessions, fed through `PARLEY_DESK` as routing
//! feeds it. Both get events for every session as fast as they take them (deliveries per
//! second), then paced at half of Parley's rate (delivery latency from the event's time to
//! the client). Then the reconnect storm: every Parley session drops, events keep coming,
//! and all reconnect at once resuming from the last sequence each saw — the time until all
//! have caught up, and how many events were lost or repeated (both must be 0).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{Stream, StreamExt};
use hdrhistogram::Histogram;
use parley_domain::{OperatorId, Role, TenantId};
use parley_nats::{Nats, topology};
use parley_proto::v1::operator_session_service_client::OperatorSessionServiceClient;
use parley_proto::v1::operator_session_service_server::{OperatorSessionService, OperatorSessionServiceServer};
use parley_proto::v1::{self, desk_event, open_session_request, open_session_response};
use parley_testkit::App;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::{Rows, fresh_histogram, ms, rate};

const TENANT: &str = "bench-desk";
/// Sessions share this many HTTP/2 connections (as desks behind a few load balancers do).
const CONNECTIONS: usize = 32;

/// What to measure.
pub struct Spec {
    pub sessions: usize,
    /// Events per session in the saturated run.
    pub events_per_session: usize,
    pub paced_seconds: u64,
    /// Events per session published while every session is away.
    pub storm_events_per_session: usize,
}

/// An event as both servers send it: a message for the session's operator.
fn event(i: u64) -> v1::DeskEvent {
    v1::DeskEvent {
        event_time: Some(parley_proto::Timestamp::from(SystemTime::now())),
        kind: Some(desk_event::Kind::Message(v1::Message {
            id: format!("m-{i}"),
            text: "Здравствуйте! Где мой заказ 4711?".into(),
            sender_kind: v1::SenderKind::Customer as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

// ---- what the clients saw ---------------------------------------------------------------

/// Per session: the last sequence seen and how many events arrived; overall: latencies.
struct Seen {
    last: Vec<AtomicU64>,
    count: Vec<AtomicU64>,
    repeats: AtomicU64,
    total: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
}

impl Seen {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Seen {
            last: (0..n).map(|_| AtomicU64::new(0)).collect(),
            count: (0..n).map(|_| AtomicU64::new(0)).collect(),
            repeats: AtomicU64::new(0),
            total: AtomicU64::new(0),
            latency: Mutex::new(None),
        })
    }

    fn record(&self, session: usize, e: &v1::DeskEvent) {
        // The anchor numbers its own events per session; Parley's are stream sequences.
        let last = self.last[session].swap(e.sequence, Ordering::Relaxed);
        if e.sequence != 0 && e.sequence <= last {
            self.repeats.fetch_add(1, Ordering::Relaxed);
        }
        self.count[session].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        let at = e.event_time.and_then(|t| SystemTime::try_from(t).ok());
        if let Some(at) = at
            && let Some(h) = self.latency.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
        {
            let micros = SystemTime::now().duration_since(at).unwrap_or_default().as_micros() as u64;
            let _ = h.record(micros.max(1));
        }
    }

    fn measure(&self) {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh_histogram());
    }

    fn take(&self) -> Histogram<u64> {
        self.latency.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_else(fresh_histogram)
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Waits until `expected` events in all have arrived, or `limit` passes.
    async fn wait_for(&self, expected: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.total() < expected {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

/// Opens session `i` on `channel` (with `token` if given) resuming after `after`, and
/// records what it shows until `stop` fires; ends when the stream does.
async fn client(
    channel: Channel,
    token: Option<String>,
    i: usize,
    after: u64,
    seen: Arc<Seen>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel(4);
    let frame = |f| v1::OpenSessionRequest { frame: Some(f) };
    tx.send(frame(open_session_request::Frame::Hello(v1::Hello {
        resume_after_sequence: after,
        client_name: format!("bench-{i}"),
        team: false,
    })))
    .await?;
    let mut request = Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse()?);
    }
    let mut stream = OperatorSessionServiceClient::new(channel).open_session(request).await?.into_inner();
    match stream.message().await? {
        Some(v1::OpenSessionResponse { frame: Some(open_session_response::Frame::Welcome(_)) }) => {}
        other => anyhow::bail!("session {i}: expected a welcome, got {other:?}"),
    }
    Ok(tokio::spawn(async move {
        let _tx = tx;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                next = stream.message() => {
                    let Ok(Some(f)) = next else { return };
                    if let Some(open_session_response::Frame::Event(e)) = f.frame {
                        seen.record(i, &e);
                    }
                }
            }
        }
    }))
}

/// Opens every session, `CONNECTIONS` at a time.
async fn open_all(
    channels: &[Channel],
    tokens: &[Option<String>],
    after: &[u64],
    seen: &Arc<Seen>,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let opening = futures_util::stream::iter(0..tokens.len())
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            client(channel, tokens[i].clone(), i, after[i], seen.clone(), stop.clone())
        })
        .buffered(CONNECTIONS * 4);
    opening.collect::<Vec<_>>().await.into_iter().collect()
}

async fn channels(addr: std::net::SocketAddr) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        out.push(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?);
    }
    Ok(out)
}

// ---- the anchor: a bare tonic streaming server ------------------------------------------

/// What a session's stream carries.
type Frame = Result<v1::OpenSessionResponse, Status>;

/// Each open session's sender, by the number in its client name.
#[derive(Default, Clone)]
struct Bare {
    sessions: Arc<Mutex<HashMap<usize, mpsc::Sender<Frame>>>>,
}

type BareStream = Pin<Box<dyn Stream<Item = Frame> + Send>>;

#[tonic::async_trait]
impl OperatorSessionService for Bare {
    type OpenSessionStream = BareStream;

    async fn open_session(
        &self,
        request: Request<Streaming<v1::OpenSessionRequest>>,
    ) -> Result<Response<BareStream>, Status> {
        let mut incoming = request.into_inner();
        let Some(Ok(v1::OpenSessionRequest { frame: Some(open_session_request::Frame::Hello(h)) })) =
            incoming.next().await
        else {
            return Err(Status::invalid_argument("hello first"));
        };
        let i: usize =
            h.client_name.trim_start_matches("bench-").parse().map_err(|_| Status::invalid_argument("name"))?;
        let (tx, rx) = mpsc::channel(256);
        let welcome = v1::Welcome { operator_id: h.client_name, ..Default::default() };
        let _ =
            tx.send(Ok(v1::OpenSessionResponse { frame: Some(open_session_response::Frame::Welcome(welcome)) })).await;
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(i, tx);
        // Keep reading what the client sends until it goes.
        tokio::spawn(async move { while let Some(Ok(_)) = incoming.next().await {} });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl Bare {
    /// Sends event `seq` to session `i`.
    async fn push(&self, i: usize, seq: u64) {
        let tx = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&i).cloned();
        if let Some(tx) = tx {
            let e = v1::DeskEvent { sequence: seq, ..event(seq) };
            let _ = tx.send(Ok(v1::OpenSessionResponse { frame: Some(open_session_response::Frame::Event(e)) })).await;
        }
    }
}

// ---- the load ---------------------------------------------------------------------------

/// Where events go: the bare server's memory, or `PARLEY_DESK`.
#[derive(Clone)]
enum Feed {
    Bare(Bare),
    Parley { publisher: parley_nats::Publisher, subjects: Arc<Vec<String>> },
}

impl Feed {
    async fn send(&self, i: usize, n: u64) -> anyhow::Result<()> {
        match self {
            Feed::Bare(b) => {
                b.push(i, n).await;
                Ok(())
            }
            Feed::Parley { publisher, subjects } => {
                let id = format!("bench-{i}-{n}");
                publisher.publish(subjects[i].clone(), &id, &id, &event(n)).await.map(|_| ()).map_err(|e| e.into())
            }
        }
    }

    /// Sends `per_session` events to every session, up to 512 at a time; paced to `rate`
    /// events per second when given. `first` numbers them (unique per run).
    async fn load(&self, sessions: usize, per_session: usize, first: u64, rate: Option<f64>) -> anyhow::Result<()> {
        let started = Instant::now();
        let total = sessions * per_session;
        let sends = futures_util::stream::iter(0..total)
            .map(|k| {
                let feed = self.clone();
                async move {
                    if let Some(r) = rate {
                        let due = started + Duration::from_secs_f64(k as f64 / r);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    feed.send(k % sessions, first + k as u64).await
                }
            })
            .buffer_unordered(512);
        let results: Vec<anyhow::Result<()>> = sends.collect().await;
        results.into_iter().collect()
    }
}

/// Deliveries per second with `events_per_session` for every session sent at once.
async fn saturated(feed: &Feed, seen: &Arc<Seen>, spec: &Spec) -> anyhow::Result<f64> {
    let n = spec.sessions;
    let expected = (n * spec.events_per_session) as u64;
    let before = seen.total();
    let started = Instant::now();
    feed.load(n, spec.events_per_session, 1_000_000, None).await?;
    anyhow::ensure!(seen.wait_for(before + expected, Duration::from_secs(300)).await, "saturated run: events missing");
    Ok(rate(expected as usize, started.elapsed()))
}

/// Delivery latency (p50, p99 in ms) with events sent at `per_second` for `paced_seconds`.
async fn paced(feed: &Feed, seen: &Arc<Seen>, spec: &Spec, per_second: f64) -> anyhow::Result<(f64, f64)> {
    let n = spec.sessions;
    let per_session = ((per_second * spec.paced_seconds as f64) as usize / n).max(1);
    let before = seen.total();
    seen.measure();
    feed.load(n, per_session, 2_000_000, Some(per_second)).await?;
    anyhow::ensure!(
        seen.wait_for(before + (n * per_session) as u64, Duration::from_secs(300)).await,
        "paced run: events missing"
    );
    let h = seen.take();
    Ok((ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99))))
}

/// Open sessions, recording what they are shown until closed.
struct Clients {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// Opens every session of `tokens` over `links`, each resuming after `after[i]`.
    async fn open(
        links: &[Channel],
        tokens: &[Option<String>],
        after: &[u64],
        seen: &Arc<Seen>,
    ) -> anyhow::Result<Self> {
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = open_all(links, tokens, after, seen, &stop).await?;
        Ok(Clients { stop, tasks })
    }

    async fn close(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The anchor: a bare tonic streaming server on a free port, and where it listens.
async fn bare_server() -> anyhow::Result<(Bare, std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let bare = Bare::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = OperatorSessionServiceServer::new(bare.clone());
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Ok((bare, addr, server))
}

pub async fn run(spec: &Spec) -> anyhow::Result<Rows> {
    let n = spec.sessions;
    let mut rows = Rows::new();

    // Anchor: its sessions stay open (idle) while Parley runs, for the paced run after.
    let (bare, addr, server) = bare_server().await?;
    let anchor_seen = Seen::new(n);
    let anchor = Feed::Bare(bare);
    let anchor_clients = Clients::open(&channels(addr).await?, &vec![None; n], &vec![0; n], &anchor_seen).await?;
    let anchor_rate = saturated(&anchor, &anchor_seen, spec).await?;
    println!("anchor: bare tonic streaming, {n} sessions: {anchor_rate:.0} deliveries/s");

    // Parley.
    let app = App::spawn().await;
    let fx = app.tenant(TENANT, &[]).await;
    let admin = app.admin(&fx.admin_token).await;
    let ids: Vec<String> = (0..n).map(|i| format!("op-{i:05}")).collect();
    let creating = futures_util::stream::iter(ids.iter().cloned())
        .map(|id| {
            let mut admin = admin.clone();
            async move {
                admin
                    .create_operator(v1::CreateOperatorRequest {
                        operator: Some(v1::Operator {
                            id: id.clone(),
                            display_name: id,
                            skills: vec![v1::SkillLevel { skill: "support".into(), proficiency: 3 }],
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(32);
    let created: Vec<Result<(), Status>> = creating.collect().await;
    created.into_iter().collect::<Result<Vec<()>, Status>>()?;
    let tokens: Vec<Option<String>> = ids.iter().map(|id| Some(app.mint(TENANT, Role::Operator, id))).collect();
    let tenant = TenantId::parse(TENANT)?;
    let subjects: Vec<String> = ids
        .iter()
        .map(|id| Ok(topology::desk_subject(&tenant, &OperatorId::parse(id)?)))
        .collect::<anyhow::Result<_>>()?;
    let nats = Nats::connect(
        &parley_kit::config::NatsConfig { url: app.infra.nats.url(), ..Default::default() },
        "bench-desk",
        Duration::from_secs(10),
    )
    .await?;
    let feed = Feed::Parley { publisher: nats.publisher(), subjects: Arc::new(subjects) };
    let notification = app.notification.as_ref().map(|h| h.grpc_addr).ok_or_else(|| anyhow::anyhow!("notification"))?;
    let links = channels(notification).await?;
    let seen = Seen::new(n);
    let opened = Instant::now();
    let clients = Clients::open(&links, &tokens, &vec![0; n], &seen).await?;
    println!("parley: {n} sessions open in {:.1} s", opened.elapsed().as_secs_f64());
    let parley_rate = saturated(&feed, &seen, spec).await?;
    let paced_rate = parley_rate / 2.0;
    let (p50, p99) = paced(&feed, &seen, spec, paced_rate).await?;
    println!("parley: {parley_rate:.0} deliveries/s; paced at {paced_rate:.0}/s p50 {p50:.1} ms, p99 {p99:.1} ms");

    // The anchor's latency at Parley's paced rate.
    let (a50, a99) = paced(&anchor, &anchor_seen, spec, paced_rate).await?;
    anchor_clients.close().await;
    server.abort();

    // The storm: all drop, events keep coming, all come back at once.
    clients.close().await;
    let after: Vec<u64> = seen.last.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let before_counts: Vec<u64> = seen.count.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let away = spec.storm_events_per_session;
    feed.load(n, away, 3_000_000, None).await?;
    let expected = seen.total() + (n * away) as u64;
    let storm = Instant::now();
    let clients = Clients::open(&links, &tokens, &after, &seen).await?;
    let all_back = storm.elapsed();
    let caught_up = seen.wait_for(expected, Duration::from_secs(120)).await;
    let caught_up_in = storm.elapsed();
    // Anything more would be a repeat: give it a moment to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lost: u64 =
        (0..n).map(|i| (before_counts[i] + away as u64).saturating_sub(seen.count[i].load(Ordering::Relaxed))).sum();
    let extra: u64 =
        (0..n).map(|i| seen.count[i].load(Ordering::Relaxed).saturating_sub(before_counts[i] + away as u64)).sum();
    let repeats = seen.repeats.load(Ordering::Relaxed) + extra;
    println!(
        "storm: {n} sessions back in {:.2} s, caught up in {:.2} s ({}), lost {lost}, repeated {repeats}",
        all_back.as_secs_f64(),
        caught_up_in.as_secs_f64(),
        if caught_up { "all" } else { "NOT all" }
    );
    clients.close().await;
    app.stop().await;

    rows.push((format!("anchor: bare tonic streaming server, {n} sessions"), format!("{anchor_rate:.0} deliveries/s")));
    rows.push((
        format!("notification: {n} operator sessions fed through PARLEY_DESK"),
        format!("{parley_rate:.0} deliveries/s ({:.0} % of the anchor)", 100.0 * parley_rate / anchor_rate),
    ));
    rows.push((
        format!("delivery latency paced at {paced_rate:.0}/s (anchor / Parley)"),
        format!("p50 {a50:.2} / {p50:.1} ms, p99 {a99:.2} / {p99:.1} ms"),
    ));
    rows.push((
        format!("reconnect storm: {n} sessions drop, {} events each meanwhile, all resume at once", away),
        format!(
            "all open in {:.2} s, caught up in {:.2} s; lost {lost}, repeated {repeats}",
            all_back.as_secs_f64(),
            caught_up_in.as_secs_f64()
        ),
    ));
    Ok(rows)
}
