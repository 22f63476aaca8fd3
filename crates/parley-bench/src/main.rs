//! `make bench`: Parley's benchmark harness. Each section measures a raw anchor and Parley
//! in the same run, on fresh local infrastructure, and prints both with their ratio:
//!
//! 1. **end to end** ([`e2e`]): bare JetStream publish/consume vs Parley from submit to an
//!    operator's desk session (throughput, and latency at half of it);
//! 2. **routing** ([`routing`]): bare Redis `EVALSHA` of an empty script vs routing's
//!    assignments per second and "capacity freed → offered" latency with 100, 1 000 and
//!    10 000 operators online over a backlog of 100 000 waiting conversations, at half the
//!    saturated rate and at the load that many operators make (beside the round trips a
//!    refill makes, bare and paced alike);
//! 3. **policy** ([`policy`]): the pure policy's decisions per second;
//! 4. **channels** ([`channels`]): a trivial axum handler and a bare JetStream publish vs
//!    a Telegram webhook until JetStream acked it; a bare HTTP client vs the senders, both
//!    against the same local provider double;
//! 5. **history** ([`history`]): a bare binary `COPY` of the writer's own rows into tables
//!    of their shape vs the history writer from `PARLEY_EVENTS` to committed rows (throughput, and publish →
//!    committed at half of it); `SearchMessages` latency over a generated corpus.
//!
//! 6. **desk** ([`desk`]): a bare tonic streaming server vs the notification service, both
//!    with 2 000 operator sessions (deliveries per second, latency at half of Parley's
//!    rate), then a reconnect storm of every session (time to caught up, lost, repeated).
//!
//! The numbers go into `BENCHMARKS.md`.

mod channels;
mod desk;
mod e2e;
mod history;
mod policy;
mod routing;

use std::time::Duration;

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(name = "parley-bench", about = "Parley's benchmark harness")]
pub struct Args {
    /// Sections to run (all by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Messages for the raw JetStream anchor.
    #[arg(long, default_value_t = 100_000)]
    anchor_messages: usize,
    /// Messages for Parley at full speed.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Customers (one conversation each).
    #[arg(long, default_value_t = 500)]
    customers: usize,
    /// Operators (each with a desk session).
    #[arg(long, default_value_t = 20)]
    operators: usize,
    /// Concurrent submissions in flight.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Seconds of paced load for the latency measurement.
    #[arg(long, default_value_t = 10)]
    paced_seconds: u64,
    /// Pace the latency run at this rate instead of half the measured throughput.
    #[arg(long)]
    paced_rate: Option<f64>,
    /// Routing: operators online at each step.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1_000, 10_000])]
    routing_operators: Vec<usize>,
    /// Routing: conversations waiting before the first step.
    #[arg(long, default_value_t = 100_000)]
    routing_queued: usize,
    /// Routing: seats per operator.
    #[arg(long, default_value_t = 2)]
    routing_seats: u32,
    /// Routing: seconds measured per step.
    #[arg(long, default_value_t = 10)]
    routing_seconds: u64,
    /// Routing: closes in flight at once (and callers of the Redis anchor).
    #[arg(long, default_value_t = 32)]
    routing_concurrency: usize,
    /// Routing: for the latency at a contact center's own load, each online operator frees
    /// a seat once per this many seconds on average (two seats, conversations of two
    /// minutes; chats usually last longer).
    #[arg(long, default_value_t = 60.0)]
    routing_turnover_secs: f64,
    /// Routing: run the routing service inside the bench's process instead of as its own
    /// `parley-routing` process.
    #[arg(long)]
    routing_in_process: bool,
    /// Channels: webhook requests and replies sent.
    #[arg(long, default_value_t = 20_000)]
    channel_requests: usize,
    /// Channels: webhook clients at once.
    #[arg(long, default_value_t = 64)]
    channel_concurrency: usize,
    /// History: conversation records written (and rows COPYed for the anchor).
    #[arg(long, default_value_t = 50_000)]
    history_records: usize,
    /// History: messages generated for the search measurement.
    #[arg(long, default_value_t = 10_000_000)]
    search_messages: usize,
    /// History: searches timed.
    #[arg(long, default_value_t = 300)]
    searches: usize,
    /// Desk: concurrent operator sessions.
    #[arg(long, default_value_t = 2_000)]
    desk_sessions: usize,
    /// Desk: events per session in the saturated run.
    #[arg(long, default_value_t = 20)]
    desk_events: usize,
    /// Desk: events per session published while every session is away (reconnect storm).
    #[arg(long, default_value_t = 5)]
    desk_storm_events: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    E2e,
    Routing,
    Policy,
    Channels,
    History,
    Desk,
}

/// Rows of the summary table: measure, value.
pub type Rows = Vec<(String, String)>;

pub fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Microseconds to milliseconds.
pub fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

pub fn fresh_histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits: cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Waits until every consumer in `consumers` of the conversation log has nothing pending
/// and nothing awaiting an ack, asking NATS every `poll` (so waiting costs the services
/// being measured nothing); gives up after 10 minutes.
pub async fn settle(js: &async_nats::jetstream::Context, consumers: &[&str], poll: Duration) -> anyhow::Result<()> {
    let stream = js.get_stream(parley_nats::topology::EVENTS.name).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    for name in consumers {
        loop {
            let info = stream.consumer_info(*name).await?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{name} still has {} pending and {} awaiting an ack after 10 minutes",
                info.num_pending,
                info.num_ack_pending
            );
            tokio::time::sleep(poll).await;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("parley-bench: {args:?}");
    anyhow::ensure!(
        args.routing_turnover_secs.is_finite() && args.routing_turnover_secs > 0.0,
        "--routing-turnover-secs must be a positive number of seconds"
    );
    // Service logs only when asked for (PARLEY_TEST_LOG=<filter>).
    parley_testkit::init_logging();
    let runs = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let mut rows = Rows::new();
    if runs(Section::E2e) {
        println!("\n== end to end: bare JetStream, then submit → ingest → routing → desk session");
        rows.extend(e2e::run(&args).await?);
    }
    if runs(Section::Routing) {
        println!(
            "\n== routing: bare Redis EVALSHA, then assignments over {} waiting conversations",
            args.routing_queued
        );
        let spec = routing::Spec {
            steps: args.routing_operators.clone(),
            queued: args.routing_queued,
            seats: args.routing_seats,
            seconds: args.routing_seconds,
            concurrency: args.routing_concurrency,
            turnover_secs: args.routing_turnover_secs,
            routing_process: !args.routing_in_process,
        };
        let out = routing::run(&spec).await?;
        rows.push((
            format!("anchor: Redis EVALSHA of an empty script, {} callers", spec.concurrency),
            format!(
                "{:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms",
                out.anchor_per_second, out.anchor_p50_ms, out.anchor_p99_ms
            ),
        ));
        rows.push(("routing: conversations queued (submit + open)".into(), format!("{:.0}/s", out.open_per_second)));
        for s in &out.steps {
            rows.push((
                format!("routing: {} operators online, {} waiting", s.operators, s.backlog),
                format!(
                    "{:.0} assignments/s ({:.2} % of anchor calls; p99 {:.1} ms saturated); paced at {:.0}/s freed → offered p50 {:.1} ms, p99 {:.1} ms",
                    s.assignments_per_second,
                    100.0 * s.assignments_per_second / out.anchor_per_second,
                    s.saturated_p99_ms,
                    s.paced.rate,
                    s.paced.whole.p50_ms,
                    s.paced.whole.p99_ms
                ),
            ));
            rows.push((
                format!(
                    "routing: {} operators online, each freeing a seat every {:.0} s",
                    s.operators, args.routing_turnover_secs
                ),
                format!(
                    "{:.1}/s freed → offered p50 {:.1} ms, p99 {:.1} ms ({} samples); its round trips bare at that pace p50 {:.1} ms, p99 {:.1} ms (one EVALSHA p99 {:.2} ms)",
                    s.typical.rate,
                    s.typical.whole.p50_ms,
                    s.typical.whole.p99_ms,
                    s.typical.samples,
                    s.chain.p50_ms,
                    s.chain.p99_ms,
                    s.bare.p99_ms
                ),
            ));
        }
        if let (Some(first), Some(last)) = (out.steps.first(), out.steps.last()) {
            rows.push((
                format!("routing: throughput kept from {} to {} operators", first.operators, last.operators),
                format!("{:.0} %", 100.0 * last.assignments_per_second / first.assignments_per_second),
            ));
        }
    }
    if runs(Section::Policy) {
        println!("\n== policy: decide() calls per second");
        for f in policy::run(&[64, 1_000, 10_000], 1.0) {
            rows.push((
                format!("policy: {} operators, {}", f.operators, f.selection.as_str()),
                format!("{:.0} decisions/s", f.decisions_per_second),
            ));
        }
    }
    if runs(Section::Channels) {
        println!("\n== channels: webhooks in, provider sends out");
        let spec = channels::Spec { requests: args.channel_requests, concurrency: args.channel_concurrency };
        rows.extend(channels::run(spec).await?);
    }
    if runs(Section::History) {
        println!("\n== history: bare COPY, then the writer from the conversation log; search");
        let spec = history::Spec {
            records: args.history_records,
            paced_seconds: args.paced_seconds,
            search_messages: args.search_messages,
            searches: args.searches,
        };
        rows.extend(history::run(&spec).await?);
    }
    if runs(Section::Desk) {
        println!("\n== desk: bare tonic streaming, then the notification service; reconnect storm");
        let spec = desk::Spec {
            sessions: args.desk_sessions,
            events_per_session: args.desk_events,
            paced_seconds: args.paced_seconds,
            storm_events_per_session: args.desk_storm_events,
        };
        rows.extend(desk::run(&spec).await?);
    }
    println!("\n== summary (paste into BENCHMARKS.md)");
    println!("| measure | value |");
    println!("|---|---|");
    for (measure, value) in rows {
        println!("| {measure} | {value} |");
    }
    Ok(())
}
