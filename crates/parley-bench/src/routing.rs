//! The routing benchmark: over a backlog of waiting conversations, with 100, 1 000 and
//! 10 000 operators online, how many assignments per second routing makes and how long
//! from "capacity freed" (a conversation closed) to "offered" (the next conversation on
//! that operator's desk stream) — next to the anchor, a bare Redis `EVALSHA` of an empty
//! script against the same Redis, measured in the same run.
//!
//! Every operator is full and the backlog is deep, so each close frees exactly one seat
//! and routing must find the one operator with room among all those online: the cost
//! this measures must not grow with the number of operators.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parley_domain::{OperatorId, TenantId};
use parley_proto::prost::Message as _;
use parley_proto::v1;
use parley_proto::v1::desk_event;
use parley_testkit::App;

use crate::{fresh_histogram, ms, rate};

const TENANT: &str = "routebench";

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Operators online at each step (cumulative: each step brings more online).
    pub steps: Vec<usize>,
    /// Conversations waiting before the first step.
    pub queued: usize,
    /// Seats per operator.
    pub seats: u32,
    /// Seconds measured at each step.
    pub seconds: u64,
    /// Closes in flight at once.
    pub concurrency: usize,
    /// The load of a contact center of each step's size, for a second latency measure: each
    /// operator frees a seat once per this many seconds on average.
    pub turnover_secs: f64,
    /// Routing runs as its own process (`parley-routing`, as deployed) rather than in the
    /// bench's process, where it would share two tokio workers with the load it measures
    /// and the other three services.
    pub routing_process: bool,
}

/// p50 and p99 of a histogram of µs, in ms.
#[derive(Debug, Clone, Copy)]
pub struct Quantiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Self {
        Self { p50_ms: ms(h.value_at_quantile(0.5)), p99_ms: ms(h.value_at_quantile(0.99)) }
    }
}

/// Freed → offered with closes paced at `rate`: the whole, and its two parts — up to the
/// decision's record time (close call, seat released, dispatch pass, pick, claim), and
/// from there to the desk (log append, fan-out, desk subject).
#[derive(Debug, Clone, Copy)]
pub struct Paced {
    pub rate: f64,
    pub whole: Quantiles,
    pub decided: Quantiles,
    pub delivered: Quantiles,
    pub samples: u64,
}

impl Paced {
    fn of(rate: f64, latency: &Latency) -> Self {
        Self {
            rate,
            whole: Quantiles::of(&latency.whole),
            decided: Quantiles::of(&latency.decided),
            delivered: Quantiles::of(&latency.delivered),
            samples: latency.whole.len(),
        }
    }
}

impl std::fmt::Display for Paced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Paced { rate, whole, decided, delivered, samples } = self;
        write!(
            f,
            "{rate:.1}/s freed → offered p50 {:.1} ms, p99 {:.1} ms (to the decision p50 {:.1} / p99 {:.1} ms, \
             decision → desk p50 {:.1} / p99 {:.1} ms; {samples} samples)",
            whole.p50_ms, whole.p99_ms, decided.p50_ms, decided.p99_ms, delivered.p50_ms, delivered.p99_ms
        )
    }
}

/// The figures of one step.
#[derive(Debug, Clone)]
pub struct Step {
    pub operators: usize,
    pub backlog: u32,
    /// At saturation (closes as fast as assignments come).
    pub assignments_per_second: f64,
    pub saturated_p99_ms: f64,
    /// Paced at half the saturated rate.
    pub paced: Paced,
    /// Paced at the contact center's own load (`Spec::turnover_secs`).
    pub typical: Paced,
    /// The bare round trips of a refill ([`chain_anchor`]) paced as `typical`, and each
    /// `EVALSHA` among them.
    pub chain: Quantiles,
    pub bare: Quantiles,
}

/// The figures of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub anchor_per_second: f64,
    pub anchor_p50_ms: f64,
    pub anchor_p99_ms: f64,
    pub open_per_second: f64,
    pub steps: Vec<Step>,
}

/// A multiplexed connection (as routing uses Redis) and an empty script loaded on it, so
/// every call is an `EVALSHA`.
async fn empty_script(url: &str) -> anyhow::Result<(redis::aio::ConnectionManager, redis::Script)> {
    let conn = redis::Client::open(url)?.get_connection_manager().await?;
    let script = redis::Script::new("");
    let _: redis::Value = script.invoke_async(&mut conn.clone()).await?;
    Ok((conn, script))
}

/// Bare `EVALSHA` of an empty script, `concurrency` callers over one multiplexed
/// connection (as routing uses Redis), for `seconds`.
async fn anchor(url: &str, concurrency: usize, seconds: u64) -> anyhow::Result<(f64, Histogram<u64>)> {
    let (conn, script) = empty_script(url).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (mut conn, script) = (conn.clone(), script.clone());
        workers.push(tokio::spawn(async move {
            let mut h = fresh_histogram();
            let mut n = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                let _: redis::Value = script.invoke_async(&mut conn).await?;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
                n += 1;
            }
            anyhow::Ok((n, h))
        }));
    }
    let mut total = 0;
    let mut all = fresh_histogram();
    for w in workers {
        let (n, h) = w.await??;
        total += n;
        all.add(h)?;
    }
    Ok((rate(total as usize, started.elapsed()), all))
}

/// One round trip of a refill: a Redis call, or a JetStream publish awaiting its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trip {
    Redis,
    Publish,
}

/// A refill's round trips in order: the hold in doubt; the close appended, the desk told
/// "released"; the release, the pass read, the shortlist, the claim; the offer appended,
/// the desk told.
const REFILL: [Trip; 9] = {
    use Trip::{Publish, Redis};
    [Redis, Publish, Publish, Redis, Redis, Redis, Redis, Publish, Publish]
};

/// What [`REFILL`] holds, in words.
fn refill_trips() -> String {
    let redis = REFILL.iter().filter(|t| **t == Trip::Redis).count();
    format!("{redis} EVALSHA, {} JetStream publishes in a row", REFILL.len() - redis)
}

/// The round trips a refill makes ([`REFILL`]), bare and one after another, as the anchor of the
/// latency at the operators' own load: `EVALSHA` of an empty script where routing calls
/// Redis (hold in doubt; release, pass read, shortlist, claim) and a JetStream publish of a
/// record-sized message with a dedupe id where it appends or tells a desk (the close, the
/// desk's "released"; the offer, the desk's offer). Paced at `per_second` as the closes are,
/// for `seconds`; returns the chains' latencies and those of each `EVALSHA` in them.
async fn chain_anchor(
    redis_url: &str,
    nats_url: &str,
    per_second: f64,
    seconds: u64,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let (conn, script) = empty_script(redis_url).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_CHAIN".into(),
        subjects: vec!["benchchain.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 400]);
    let (chains, calls) = (Arc::new(Mutex::new(fresh_histogram())), Arc::new(Mutex::new(fresh_histogram())));
    let started = Instant::now();
    let n = (per_second * seconds as f64) as usize;
    let mut samples = tokio::task::JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / per_second)).into()).await;
        let (mut conn, script, js, payload) = (conn.clone(), script.clone(), js.clone(), payload.clone());
        let (chains, calls) = (chains.clone(), calls.clone());
        samples.spawn(async move {
            let t0 = Instant::now();
            for (step, trip) in REFILL.into_iter().enumerate() {
                match trip {
                    Trip::Redis => {
                        let t = Instant::now();
                        let _: redis::Value = script.invoke_async(&mut conn).await?;
                        calls.lock().expect("lock").record(t.elapsed().as_micros().max(1) as u64)?;
                    }
                    Trip::Publish => {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("Nats-Msg-Id", format!("{i}:{step}").as_str());
                        let subject = format!("benchchain.{}", i % 100);
                        js.publish_with_headers(subject, headers, payload.clone()).await?.await?;
                    }
                }
            }
            chains.lock().expect("lock").record(t0.elapsed().as_micros().max(1) as u64)?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = samples.join_next().await {
        r??;
    }
    js.delete_stream("BENCH_CHAIN").await?;
    let take = |h: Arc<Mutex<Histogram<u64>>>| h.lock().expect("lock").clone();
    Ok((take(chains), take(calls)))
}

/// What the desk streams showed: every assignment, and when each operator's seat was
/// freed (to time the next assignment to them).
#[derive(Default)]
struct Watch {
    freed: HashMap<String, (Instant, std::time::SystemTime)>,
    latency: Option<Latency>,
    assigned: usize,
    /// Conversations assigned and not yet closed by the bench, oldest first.
    held: std::collections::VecDeque<(String, String)>,
    /// Closes sent by the bench.
    closed: usize,
}

/// Freed → offered, whole and in its two parts (split at the decision's record time).
struct Latency {
    whole: Histogram<u64>,
    decided: Histogram<u64>,
    delivered: Histogram<u64>,
    /// Samples over `PARLEY_BENCH_SLOW_MS` (when set): when they were freed, the whole and
    /// the part up to the decision, in µs — to line stalls up with what else ran.
    slow: Vec<(std::time::SystemTime, u64, u64)>,
    slow_over: Option<Duration>,
}

impl Latency {
    fn new() -> Self {
        let slow_over =
            std::env::var("PARLEY_BENCH_SLOW_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis);
        Self {
            whole: fresh_histogram(),
            decided: fresh_histogram(),
            delivered: fresh_histogram(),
            slow: Vec::new(),
            slow_over,
        }
    }

    fn print_slow(&self) {
        if self.slow_over.is_none() {
            return;
        }
        for (at, whole, decided) in &self.slow {
            let at = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            println!(
                "   slow: freed at {}.{:06} whole {:.3} ms, to the decision {:.1} ms",
                at.as_secs(),
                at.subsec_micros(),
                ms(*whole),
                ms(*decided)
            );
        }
    }

    /// One assignment to an operator freed at `freed`, recorded by routing at `decided`.
    fn record(&mut self, freed: (Instant, std::time::SystemTime), decided: Option<std::time::SystemTime>) {
        let whole = freed.0.elapsed();
        let _ = self.whole.record(whole.as_micros().max(1) as u64);
        let mut to_decision = Duration::ZERO;
        if let Some(decided) = decided {
            // Both clocks are this machine's wall clock; the record time has millisecond
            // precision.
            to_decision = decided.duration_since(freed.1).unwrap_or_default().min(whole);
            let _ = self.decided.record(to_decision.as_micros().max(1) as u64);
            let _ = self.delivered.record((whole - to_decision).as_micros().max(1) as u64);
        }
        if self.slow_over.is_some_and(|over| whole > over) {
            self.slow.push((freed.1, whole.as_micros() as u64, to_decision.as_micros() as u64));
        }
    }
}

type Shared = Arc<Mutex<Watch>>;

fn lock(w: &Shared) -> std::sync::MutexGuard<'_, Watch> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `call(client, i)` for every `i` in `range`, 32 at a time (tonic clients clone
/// cheaply onto one connection).
async fn for_each<C, F, Fut>(client: C, range: std::ops::Range<usize>, call: F) -> anyhow::Result<()>
where
    C: Clone + Send + 'static,
    F: Fn(C, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(range.start));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (client, call, next, end) = (client.clone(), call.clone(), next.clone(), range.end);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return anyhow::Ok(());
                }
                call(client.clone(), i).await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

/// Creates operators `op-00000`… with `seats` seats each.
async fn create_operators(app: &App, admin_token: &str, to: usize, seats: u32) -> anyhow::Result<()> {
    for_each(app.admin(admin_token).await, 0..to, move |mut admin, i| async move {
        let operator = v1::Operator {
            id: operator(i),
            display_name: format!("Operator {i}"),
            skills: vec![v1::SkillLevel { skill: "support".into(), proficiency: 3 }],
            languages: vec!["ru".into()],
            capacity: vec![v1::ChannelCapacity { channel: v1::Channel::Api as i32, max_conversations: seats }],
            ..Default::default()
        };
        admin.create_operator(v1::CreateOperatorRequest { operator: Some(operator) }).await?;
        Ok(())
    })
    .await
}

fn operator(i: usize) -> String {
    format!("op-{i:05}")
}

/// Brings operators `from..to` online: a live desk session each (as the notification
/// service records one), then status online through the API.
async fn bring_online(app: &App, supervisor_token: &str, from: usize, to: usize) -> anyhow::Result<()> {
    let redis = parley_redis::Coordinator::connect(&app.infra.redis.url(), Duration::from_secs(5))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let tenant = TenantId::parse(TENANT)?;
    let until = parley_kit::clock::now().saturating_add(Duration::from_secs(6 * 3600));
    for i in from..to {
        let op = OperatorId::parse(&operator(i))?;
        redis.heartbeat(&tenant, &op, "bench-desk", until).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for_each(app.routing_client(supervisor_token).await, from..to, |mut routing, i| async move {
        let online = v1::SetOperatorStatusRequest {
            operator_id: operator(i),
            status: v1::OperatorStatus::Online as i32,
            reason: String::new(),
        };
        routing.set_operator_status(online).await?;
        Ok(())
    })
    .await
}

/// Submits `n` first messages of distinct customers.
async fn fill_backlog(app: &App, token: &str, n: usize) -> anyhow::Result<()> {
    for_each(app.ingest_client(token).await, 0..n, |mut ingest, i| async move {
        let first = v1::SubmitMessageRequest {
            customer_ref: format!("waiting-{i}"),
            text: "Здравствуйте, помогите с заказом".into(),
            idempotency_key: format!("backlog-{i}"),
            ..Default::default()
        };
        ingest.submit_message(first).await?;
        Ok(())
    })
    .await
}

async fn waiting(app: &App, token: &str) -> anyhow::Result<u32> {
    Ok(app
        .routing_client(token)
        .await
        .get_queue_status(v1::GetQueueStatusRequest { queue_id: "default".into() })
        .await?
        .into_inner()
        .waiting_conversations)
}

pub async fn run(spec: &Spec) -> anyhow::Result<Outcome> {
    let infra = parley_testkit::Infra::start().await?;
    let (anchor_per_second, anchor_h) = anchor(&infra.redis.url(), spec.concurrency, 5).await?;
    println!(
        "   anchor: bare EVALSHA of an empty script, {} callers: {anchor_per_second:>9.0} calls/s, p50 {:.2} ms, p99 {:.2} ms",
        spec.concurrency,
        ms(anchor_h.value_at_quantile(0.5)),
        ms(anchor_h.value_at_quantile(0.99)),
    );

    let mut app = App::spawn_with(infra, !spec.routing_process, parley_testkit::AppOptions::production()).await;
    // The routing process (killed on drop, at the end of the run).
    let _routing = match spec.routing_process {
        true => {
            let env = vec![
                ("PARLEY_NATS__URL", app.infra.nats.url()),
                ("PARLEY_REDIS__URL", app.infra.redis.url()),
                ("PARLEY_AUTH__SIGNING_KEY", app.signing_key.expose().to_owned()),
            ];
            let routing = parley_testkit::ServiceProcess::spawn("parley-routing", &env)?;
            app.set_routing_addr(routing.grpc_addr);
            Some(routing)
        }
        false => None,
    };
    let fx = app.tenant(TENANT, &[]).await;
    let most = spec.steps.iter().copied().max().unwrap_or(0);
    let started = Instant::now();
    create_operators(&app, &fx.admin_token, most, spec.seats).await?;
    println!("   {most} operators created in {:.1} s", started.elapsed().as_secs_f64());

    // Every desk event of the tenant as the desk stream stores it, read as the
    // notification service reads it (one live feed; a publish the stream drops as a
    // duplicate is not an event).
    let watch: Shared = Arc::new(Mutex::new(Watch::default()));
    let js = async_nats::jetstream::new(async_nats::connect(app.infra.nats.url()).await?);
    let subject = format!("parley.desk.{TENANT}.>");
    let mut desks = parley_nats::tail::follow(&js, parley_nats::topology::DESK, subject, 0).await?.messages;
    let reader = {
        let watch = watch.clone();
        tokio::spawn(async move {
            while let Some(m) = desks.next().await {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("   desk feed: {e:#}");
                        continue;
                    }
                };
                let Ok(ev) = v1::DeskEvent::decode(m.payload.as_ref()) else { continue };
                let decided = ev.event_time.and_then(|t| {
                    let nanos = u64::try_from(t.seconds).ok()? * 1_000_000_000 + u64::try_from(t.nanos).ok()?;
                    Some(std::time::UNIX_EPOCH + Duration::from_nanos(nanos))
                });
                let Some(desk_event::Kind::Assigned(a)) = ev.kind else { continue };
                let Some(c) = a.conversation else { continue };
                let mut w = lock(&watch);
                w.assigned += 1;
                if let Some(freed) = w.freed.remove(&c.operator_id)
                    && let Some(latency) = w.latency.as_mut()
                {
                    latency.record(freed, decided);
                }
                w.held.push_back((c.operator_id, c.id));
            }
        })
    };

    let started = Instant::now();
    fill_backlog(&app, &fx.integrator_token, spec.queued).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let n = waiting(&app, &fx.supervisor_token).await?;
        if n as usize >= spec.queued {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {n} of {} conversations queued in 10 minutes", spec.queued);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let open_per_second = rate(spec.queued, started.elapsed());
    println!("   {} conversations queued (submitted and opened): {open_per_second:.0}/s", spec.queued);
    // History and the fan-out work through the backlog's records behind routing; measured
    // while they catch up, the first step would time their catching up too.
    let t = Instant::now();
    {
        use parley_nats::topology::consumers::{HISTORY_EVENTS, ROUTING_FANOUT};
        crate::settle(&js, &[HISTORY_EVENTS, ROUTING_FANOUT], Duration::from_millis(200)).await?;
    }
    println!("   history and fan-out caught up with the backlog in {:.1} s", t.elapsed().as_secs_f64());

    let mut steps = Vec::new();
    let mut online = 0;
    for &n in &spec.steps {
        // More operators online; wait until they are all full.
        let before = lock(&watch).assigned;
        let t = Instant::now();
        bring_online(&app, &fx.supervisor_token, online, n).await?;
        let expected = before + (n - online) * spec.seats as usize;
        let deadline = Instant::now() + Duration::from_secs(600);
        while lock(&watch).assigned < expected {
            anyhow::ensure!(Instant::now() < deadline, "operators not filled in 10 minutes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let fill = rate((n - online) * spec.seats as usize, t.elapsed());
        online = n;
        let backlog = waiting(&app, &fx.supervisor_token).await?;

        // Saturation: closers close as fast as they can; every close frees a seat that
        // routing fills from the backlog.
        let (count, took, saturated) =
            closing(&app, &fx.supervisor_token, &watch, spec.concurrency, None, spec.seconds, backlog as usize).await?;
        let assignments_per_second = rate(count, took);
        // Latency: closes paced at half that rate.
        let paced_rate = assignments_per_second / 2.0;
        let left = waiting(&app, &fx.supervisor_token).await? as usize;
        let (_, _, paced) =
            closing(&app, &fx.supervisor_token, &watch, spec.concurrency, Some(paced_rate), spec.seconds, left).await?;
        paced.print_slow();
        // Latency at the load this many operators make: each frees a seat once per
        // `turnover_secs` on average (at most half the saturated rate), for long enough to see
        // about 600 seats refilled (10 to 60 s).
        let typical_rate = (n as f64 / spec.turnover_secs).min(paced_rate);
        let typical_secs = (600.0 / typical_rate).clamp(spec.seconds as f64, 60.0).ceil() as u64;
        let left = waiting(&app, &fx.supervisor_token).await? as usize;
        let (_, _, typical) =
            closing(&app, &fx.supervisor_token, &watch, spec.concurrency, Some(typical_rate), typical_secs, left)
                .await?;
        typical.print_slow();
        // The round trips a refill makes, bare, at the same pace on the same machine.
        let (bare_chain, bare) =
            chain_anchor(&app.infra.redis.url(), &app.infra.nats.url(), typical_rate, typical_secs).await?;
        let step = Step {
            operators: n,
            backlog,
            assignments_per_second,
            saturated_p99_ms: ms(saturated.whole.value_at_quantile(0.99)),
            paced: Paced::of(paced_rate, &paced),
            typical: Paced::of(typical_rate, &typical),
            chain: Quantiles::of(&bare_chain),
            bare: Quantiles::of(&bare),
        };
        println!(
            "   {n:>6} operators online (filled at {fill:.0}/s), {backlog} waiting: {:>6.0} assignments/s (p99 {:.1} ms saturated); paced at {}",
            step.assignments_per_second, step.saturated_p99_ms, step.paced
        );
        println!(
            "          at this many operators' own load, each freeing a seat every {:.0} s: {}; its round trips bare at that pace ({}) p50 {:.1} ms, p99 {:.1} ms, one EVALSHA p50 {:.2} ms, p99 {:.2} ms",
            spec.turnover_secs,
            step.typical,
            refill_trips(),
            step.chain.p50_ms,
            step.chain.p99_ms,
            step.bare.p50_ms,
            step.bare.p99_ms
        );
        steps.push(step);
    }
    reader.abort();
    app.stop().await;
    Ok(Outcome {
        anchor_per_second,
        anchor_p50_ms: ms(anchor_h.value_at_quantile(0.5)),
        anchor_p99_ms: ms(anchor_h.value_at_quantile(0.99)),
        open_per_second,
        steps,
    })
}

/// Closes held conversations for `seconds`: as fast as routing refills the seats (at most
/// `concurrency` freed and not yet refilled), or paced at `per_second`. Returns the
/// assignments seen meanwhile, the time, and the latencies from each close to the next
/// assignment to that operator. Returns once every freed seat is refilled.
///
/// Each close takes one of the `waiting` conversations; closing more would free seats the
/// backlog cannot refill, so running out is an error that says so.
async fn closing(
    app: &App,
    token: &str,
    watch: &Shared,
    concurrency: usize,
    per_second: Option<f64>,
    seconds: u64,
    waiting: usize,
) -> anyhow::Result<(usize, Duration, Latency)> {
    let (start_assigned, start_closed) = {
        let mut w = lock(watch);
        w.freed.clear();
        w.latency = Some(Latency::new());
        (w.assigned, w.closed)
    };
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let mut routing = app.routing_client(token).await;
        let (watch, next) = (watch.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                if let Some(rate) = per_second {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into()).await;
                }
                if Instant::now() >= until {
                    return anyhow::Ok(());
                }
                let job = {
                    let mut w = lock(&watch);
                    anyhow::ensure!(
                        w.closed - start_closed < waiting,
                        "the backlog ran out ({waiting} were waiting when this phase began): raise --routing-queued \
                         or shorten --routing-seconds"
                    );
                    // Seats freed and not yet refilled.
                    let outstanding = (w.closed - start_closed).saturating_sub(w.assigned - start_assigned);
                    let job = if outstanding < concurrency { w.held.pop_front() } else { None };
                    if let Some((op, _)) = &job {
                        w.freed.insert(op.clone(), (Instant::now(), std::time::SystemTime::now()));
                        w.closed += 1;
                    }
                    job
                };
                let Some((_, id)) = job else {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                };
                routing
                    .close_conversation(v1::CloseConversationRequest { conversation_id: id, reason: "bench".into() })
                    .await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let took = started.elapsed();
    let count = lock(watch).assigned - start_assigned;
    // Wait for the freed seats to be refilled, so the next phase starts from full.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let refilled = {
            let w = lock(watch);
            w.assigned - start_assigned >= w.closed - start_closed
        };
        if refilled {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "freed seats not refilled within 2 minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let latency = lock(watch).latency.take().unwrap_or_else(Latency::new);
    Ok((count, took, latency))
}
