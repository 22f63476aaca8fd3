//! Scenario tests of routing around people: known operators, fast-track codes, transfers to
//! a skill, rerouting the work of silent or logged-out desks, timers across a routing
//! restart and a lost Redis, decision explanations, draining, and capacity per channel.

use std::time::{Duration, Instant};

use parley_e2e::{CustomerFeed, Desk, describe, online, set_status, submit};
use parley_proto::v1::{self, customer_update, desk_event};
use parley_testkit::{App, AppOptions, Infra, TenantFixture, eventually};

const WAIT: Duration = Duration::from_secs(10);

/// Timings with long desk sessions, for tests where presence expiry is not the point.
fn long_sessions() -> AppOptions {
    AppOptions { session_ttl_secs: 30, ..AppOptions::default() }
}

async fn spawn(options: AppOptions) -> App {
    parley_testkit::init_logging();
    App::spawn_with(Infra::start().await.expect("test infrastructure"), true, options).await
}

fn secs(n: u64) -> Option<parley_proto::Duration> {
    Some(parley_proto::convert::duration(Duration::from_secs(n)))
}

fn skill(id: &str, proficiency: u32) -> v1::SkillLevel {
    v1::SkillLevel { skill: id.into(), proficiency }
}

fn capacity(channel: v1::Channel, n: u32) -> v1::ChannelCapacity {
    v1::ChannelCapacity { channel: channel as i32, max_conversations: n }
}

/// A customer message with a fresh idempotency key.
fn message(customer: &str, text: &str) -> v1::SubmitMessageRequest {
    submit(customer, text, &uuid::Uuid::now_v7().to_string())
}

fn to_queue(customer: &str, text: &str, queue: &str) -> v1::SubmitMessageRequest {
    v1::SubmitMessageRequest { queue_id: queue.into(), ..message(customer, text) }
}

async fn go_away(app: &App, token: &str, reason: &str) -> v1::OperatorPresence {
    app.routing_client(token)
        .await
        .set_operator_status(v1::SetOperatorStatusRequest {
            status: v1::OperatorStatus::Away as i32,
            reason: reason.into(),
            ..Default::default()
        })
        .await
        .expect("away")
        .into_inner()
        .presence
        .expect("presence")
}

/// A customer who wrote: their conversation, what they were told first, and their feed.
struct Arrival {
    id: String,
    first: customer_update::Kind,
    feed: CustomerFeed,
}

impl Arrival {
    /// The next update that is not an operator's message.
    async fn update(&mut self) -> customer_update::Kind {
        loop {
            match self.feed.next(WAIT).await {
                customer_update::Kind::Message(_) => continue,
                other => return other,
            }
        }
    }

    /// The operator who joined next (no other routing update may come first).
    async fn joined(&mut self) -> String {
        match self.update().await {
            customer_update::Kind::OperatorJoined(j) => {
                assert_eq!(j.conversation_id, self.id);
                j.operator_id
            }
            other => panic!("expected an operator to join {}, got {other:?}", self.id),
        }
    }

    /// The next update must say the conversation waits in its queue.
    async fn queued(&mut self) {
        match self.update().await {
            customer_update::Kind::Queued(q) => assert_eq!(q.conversation_id, self.id),
            other => panic!("expected {} to be queued, got {other:?}", self.id),
        }
    }

    fn waits_for(&self) -> Option<&str> {
        match &self.first {
            customer_update::Kind::WaitingForOperator(w) => Some(w.operator_id.as_str()),
            _ => None,
        }
    }
}

/// Submits a customer's message that opens a conversation and reads what the customer is
/// told first (queued, or waiting for one operator), which names the conversation.
async fn arrive(app: &App, fx: &TenantFixture, request: v1::SubmitMessageRequest) -> Arrival {
    let mut feed = CustomerFeed::open(app, &fx.integrator_token, &request.customer_ref, 0).await;
    app.ingest_client(&fx.integrator_token).await.submit_message(request).await.expect("submit");
    let first = feed.next(WAIT).await;
    let id = match &first {
        customer_update::Kind::Queued(q) => q.conversation_id.clone(),
        customer_update::Kind::WaitingForOperator(w) => w.conversation_id.clone(),
        other => panic!("expected the conversation to open, got {other:?}"),
    };
    Arrival { id, first, feed }
}

/// The conversation of the next desk event, which must be `what` (messages are skipped:
/// they are the conversation going on, not routing).
async fn next_on(desk: &mut Desk, what: &str) -> String {
    loop {
        let event = desk.event(WAIT).await;
        let (conversation, kind) = describe(&event);
        if kind == "message" {
            continue;
        }
        assert_eq!(kind, what, "unexpected desk event {event:?}");
        return conversation;
    }
}

/// Desk events (messages skipped) until one matches; returns everything seen.
async fn until_on(desk: &mut Desk, conversation: &str, what: &str) -> Vec<(String, &'static str)> {
    let mut seen = Vec::new();
    loop {
        let event = desk.event(WAIT).await;
        let d = describe(&event);
        if d.1 == "message" {
            continue;
        }
        let done = d.0 == conversation && d.1 == what;
        seen.push(d);
        if done {
            return seen;
        }
    }
}

async fn close(app: &App, token: &str, conversation: &str) {
    app.routing_client(token)
        .await
        .close_conversation(v1::CloseConversationRequest {
            conversation_id: conversation.into(),
            reason: "done".into(),
        })
        .await
        .expect("close");
}

/// Closes an operator's conversation and waits until it has left their desk.
async fn close_on(app: &App, fx: &TenantFixture, op: &str, desk: &mut Desk, conversation: &str) {
    close(app, fx.operator_token(op), conversation).await;
    assert_eq!(next_on(desk, "released").await, conversation);
}

/// The decision that gave the conversation to its current holder.
async fn last_assignment(app: &App, fx: &TenantFixture, conversation: &str) -> v1::RoutingDecision {
    fx.decisions(app, conversation)
        .await
        .into_iter()
        .rev()
        .find(|d| !d.chosen_operator_id.is_empty())
        .expect("a decision that chose someone")
}

async fn presence(app: &App, fx: &TenantFixture, op: &str) -> v1::OperatorPresence {
    app.routing_client(&fx.supervisor_token)
        .await
        .get_operator_presence(v1::GetOperatorPresenceRequest { operator_id: op.into() })
        .await
        .expect("presence")
        .into_inner()
        .presence
        .expect("presence")
}

/// What an operator holds, by conversation id.
async fn holdings(app: &App, fx: &TenantFixture, op: &str) -> Vec<v1::Conversation> {
    app.routing_client(&fx.supervisor_token)
        .await
        .list_operator_conversations(v1::ListOperatorConversationsRequest { operator_id: op.into() })
        .await
        .expect("operator conversations")
        .into_inner()
        .conversations
}

fn load(p: &v1::OperatorPresence, channel: v1::Channel) -> (u32, u32) {
    p.load
        .iter()
        .find(|l| l.channel == channel as i32)
        .map_or((0, 0), |l| (l.active_conversations, l.max_conversations))
}

// 1. Known operator.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_customer_goes_back_to_their_operator_within_the_window_and_keeps_their_place_otherwise() {
    let app = spawn(long_sessions()).await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    fx.create_queue(
        &app,
        v1::Queue { id: "care".into(), display_name: "Care".into(), priority: 5, ..Default::default() },
    )
    .await;
    fx.update_settings(&app, |s| {
        s.known_operator_window = secs(60);
        s.known_operator_wait = secs(2);
    })
    .await;
    let mut anna = online(&app, &fx, "anna").await;
    let mut boris = online(&app, &fx, "boris").await;

    // Anna serves c-1 and ends up busier than Boris.
    let first = arrive(&app, &fx, to_queue("c-1", "Не приходит смс", "care")).await;
    assert_eq!(next_on(&mut anna, "assigned").await, first.id);
    let c2 = arrive(&app, &fx, to_queue("c-2", "Вопрос", "care")).await;
    assert_eq!(next_on(&mut boris, "assigned").await, c2.id);
    let c3 = arrive(&app, &fx, to_queue("c-3", "Ещё вопрос", "care")).await;
    assert_eq!(next_on(&mut anna, "assigned").await, c3.id);
    close_on(&app, &fx, "anna", &mut anna, &first.id).await;
    close_on(&app, &fx, "boris", &mut boris, &c2.id).await;

    // Within the window c-1 goes back to Anna, though Boris is idle.
    let mut back = arrive(&app, &fx, to_queue("c-1", "Снова я", "care")).await;
    assert_eq!(back.waits_for(), Some("anna"), "{:?}", back.first);
    assert_eq!(next_on(&mut anna, "assigned").await, back.id);
    assert_eq!(back.joined().await, "anna");
    let d = last_assignment(&app, &fx, &back.id).await;
    assert_eq!((d.chosen_operator_id.as_str(), d.strategy.as_str()), ("anna", "known_operator"));
    boris.expect_quiet(Duration::from_millis(300)).await;
    close_on(&app, &fx, "anna", &mut anna, &back.id).await;

    // Anna away: no waiting for her at all; least occupied routing at once.
    let away = go_away(&app, fx.operator_token("anna"), "обед").await;
    assert_eq!(away.reason, "обед");
    let mut k2 = arrive(&app, &fx, to_queue("c-1", "Алло?", "care")).await;
    assert!(matches!(k2.first, customer_update::Kind::Queued(_)), "must not wait for an away operator: {:?}", k2.first);
    assert_eq!(next_on(&mut boris, "assigned").await, k2.id);
    assert_eq!(k2.joined().await, "boris");
    assert_eq!(last_assignment(&app, &fx, &k2.id).await.strategy, "least_occupied");
    close_on(&app, &fx, "boris", &mut boris, &k2.id).await;

    // Boris (now the last operator) logged out: the same.
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    set_status(&app, fx.operator_token("boris"), v1::OperatorStatus::Offline).await;
    let mut k3 = arrive(&app, &fx, to_queue("c-1", "Есть кто?", "care")).await;
    assert!(matches!(k3.first, customer_update::Kind::Queued(_)), "must not wait for an offline operator");
    assert_eq!(next_on(&mut anna, "assigned").await, k3.id);
    assert_eq!(k3.joined().await, "anna");
    close_on(&app, &fx, "anna", &mut anna, &k3.id).await;

    // Anna (the last operator again) still "online" but her desk closed: the same.
    set_status(&app, fx.operator_token("boris"), v1::OperatorStatus::Online).await;
    let resume = anna.last_sequence;
    drop(anna);
    eventually(WAIT, "anna's desk gone", || async { (!presence(&app, &fx, "anna").await.connected).then_some(()) })
        .await;
    let mut k4 = arrive(&app, &fx, to_queue("c-1", "Ау", "care")).await;
    assert!(matches!(k4.first, customer_update::Kind::Queued(_)), "must not wait for a gone desk");
    assert_eq!(next_on(&mut boris, "assigned").await, k4.id);
    assert_eq!(k4.joined().await, "boris");
    let mut anna = Desk::open(&app, fx.operator_token("anna"), resume).await.expect("desk again");
    close_on(&app, &fx, "boris", &mut boris, &k4.id).await;

    // Boris (the last operator) is online but full, and so is Anna: c-1 waits for Boris up
    // to 2 s, then the queue takes over with the original priority and wait.
    fx.set_api_seats(&app, "boris", 1).await;
    let c5 = arrive(&app, &fx, to_queue("c-5", "Занять Бориса", "care")).await;
    assert_eq!(next_on(&mut boris, "assigned").await, c5.id);
    fx.set_api_seats(&app, "anna", 1).await; // Anna holds c-3's conversation
    let started = Instant::now();
    let mut k5 = arrive(&app, &fx, to_queue("c-1", "Борис, это снова я", "care")).await;
    assert_eq!(k5.waits_for(), Some("boris"), "{:?}", k5.first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut later = arrive(&app, &fx, to_queue("c-6", "Я позже", "care")).await;
    assert!(matches!(later.first, customer_update::Kind::Queued(_)));
    k5.queued().await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "waited only {:?} for Boris", started.elapsed());
    let (p5, p6) = (fx.position(&app, &k5.id).await, fx.position(&app, &later.id).await);
    assert_eq!((p5.position, p6.position), (1, 2), "the returning customer keeps their place");
    assert!(p5.waited_seconds >= 2, "the wait start did not reset: waited {} s", p5.waited_seconds);
    let waited = fx.decisions_made(&app, &k5.id).await;
    let first_decision = waited.first().expect("decision recorded on arrival");
    assert_eq!(first_decision.strategy, "known_operator");
    assert_eq!(first_decision.chosen_operator_id, "");
    let why: Vec<(&str, &str)> =
        first_decision.candidates.iter().map(|c| (c.operator_id.as_str(), c.excluded_because.as_str())).collect();
    assert_eq!(why, [("boris", "at capacity")]);
    // A seat frees up (Anna's): the returning customer is served before the later one.
    close_on(&app, &fx, "anna", &mut anna, &c3.id).await;
    assert_eq!(next_on(&mut anna, "assigned").await, k5.id);
    assert_eq!(k5.joined().await, "anna");
    assert_eq!(fx.position(&app, &later.id).await.position, 1);
    let held = holdings(&app, &fx, "anna").await;
    assert_eq!(held.iter().map(|c| (c.id.as_str(), c.priority)).collect::<Vec<_>>(), [(k5.id.as_str(), 5)]);

    // Outside the window: normal routing. Anna was last, but Boris is less occupied.
    fx.update_settings(&app, |s| s.known_operator_window = secs(2)).await;
    close_on(&app, &fx, "anna", &mut anna, &k5.id).await;
    let closed = Instant::now();
    assert_eq!(next_on(&mut anna, "assigned").await, later.id, "the freed seat goes to the next in line");
    assert_eq!(later.joined().await, "anna");
    fx.set_api_seats(&app, "anna", 5).await;
    fx.set_api_seats(&app, "boris", 5).await;
    close_on(&app, &fx, "boris", &mut boris, &c5.id).await;
    tokio::time::sleep((closed + Duration::from_millis(2500)).saturating_duration_since(Instant::now())).await;
    let mut k6 = arrive(&app, &fx, to_queue("c-1", "Прошло время", "care")).await;
    assert!(matches!(k6.first, customer_update::Kind::Queued(_)), "outside the window: {:?}", k6.first);
    assert_eq!(next_on(&mut boris, "assigned").await, k6.id);
    assert_eq!(k6.joined().await, "boris");
    assert_eq!(last_assignment(&app, &fx, &k6.id).await.strategy, "least_occupied");
    app.stop().await;
}

// 2. Fast-track codes.

async fn issue_code(app: &App, token: &str, max_uses: u32) -> v1::FastTrackCode {
    app.routing_client(token)
        .await
        .issue_fast_track_code(v1::IssueFastTrackCodeRequest { ttl: secs(600), max_uses })
        .await
        .expect("issue code")
        .into_inner()
        .code
        .expect("code")
}

async fn live_codes(app: &App, token: &str) -> Vec<(String, u32)> {
    let mut codes: Vec<(String, u32)> = app
        .routing_client(token)
        .await
        .list_fast_track_codes(v1::ListFastTrackCodesRequest::default())
        .await
        .expect("list codes")
        .into_inner()
        .codes
        .into_iter()
        .map(|c| (c.code, c.uses_left))
        .collect();
    codes.sort();
    codes
}

/// A code of `operator` that expired an hour ago, written into the configuration bucket as
/// `IssueFastTrackCode` writes codes (the API issues codes for at least a minute, too long
/// to wait for in a test).
async fn expired_code(app: &App, tenant: &str, operator: &str, code: &str) {
    use parley_proto::prost::Message as _;
    let now = parley_kit::clock::now();
    let record = parley_proto::events::FastTrackRecord {
        code: code.into(),
        operator_id: operator.into(),
        issue_time: Some(parley_proto::convert::timestamp(parley_domain::Timestamp::from_millis(
            now.as_millis() - 7_200_000,
        ))),
        expire_time: Some(parley_proto::convert::timestamp(parley_domain::Timestamp::from_millis(
            now.as_millis() - 3_600_000,
        ))),
        uses_left: 0,
        revoked: false,
    };
    let js = async_nats::jetstream::new(async_nats::connect(app.infra.nats.url()).await.expect("nats"));
    let kv = js.get_key_value(parley_nats::topology::buckets::CONFIG).await.expect("config bucket");
    kv.put(format!("{tenant}.ftcode.{code}"), record.encode_to_vec().into()).await.expect("write code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_track_code_leads_straight_to_its_operator_within_its_uses_expiry_tenant_and_sender_limits() {
    let app = spawn(long_sessions()).await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    let gx = app.tenant("globex", &["olga"]).await;
    fx.update_settings(&app, |s| {
        s.known_operator_window = secs(0); // off: only codes pick operators here
        s.known_operator_wait = secs(2);
        s.fast_track_max_attempts = 3;
    })
    .await;
    let mut anna = online(&app, &fx, "anna").await;
    let mut boris = online(&app, &fx, "boris").await;
    let mut olga = online(&app, &gx, "olga").await;
    let anna_token = fx.operator_token("anna");

    let single = issue_code(&app, anna_token, 1).await;
    let multi = issue_code(&app, anna_token, 3).await;
    for c in [&single, &multi] {
        assert_eq!(c.code.len(), 6);
        assert!(c.code.chars().all(|ch| ch.is_ascii_digit() || ch.is_ascii_uppercase()), "{}", c.code);
        assert!(!c.code.contains(['0', 'O', '1', 'I', 'L']), "look-alikes in {}", c.code);
        let expires = c.expire_time.as_ref().expect("expiry").seconds;
        let now = parley_kit::clock::now().as_millis() / 1000;
        assert!((now + 590..=now + 610).contains(&expires), "expires in {} s", expires - now);
    }
    assert_eq!(live_codes(&app, anna_token).await.len(), 2);

    // Anna is busier than Boris, so only a code sends a customer to her.
    let c0 = arrive(&app, &fx, message("c-0", "Первый")).await;
    assert_eq!(next_on(&mut anna, "assigned").await, c0.id);

    // The code in the text (any case): straight to Anna.
    let mut x1 = arrive(&app, &fx, message("c-1", &format!("Мой код {}, помогите", single.code.to_lowercase()))).await;
    assert_eq!(x1.waits_for(), Some("anna"), "{:?}", x1.first);
    assert_eq!(next_on(&mut anna, "assigned").await, x1.id);
    assert_eq!(x1.joined().await, "anna");
    assert_eq!(last_assignment(&app, &fx, &x1.id).await.strategy, "fast_track");
    // Single use: spent, and no longer listed.
    assert_eq!(live_codes(&app, anna_token).await, [(multi.code.clone(), 3)]);
    let mut x2 = arrive(&app, &fx, message("c-2", &format!("Код {}", single.code))).await;
    assert!(matches!(x2.first, customer_update::Kind::Queued(_)), "a spent code: {:?}", x2.first);
    assert_eq!(x2.joined().await, "boris");
    let taken = next_on(&mut boris, "assigned").await;
    close_on(&app, &fx, "boris", &mut boris, &taken).await;

    // Multi-use, given in the request's field and in text: each use counted.
    let mut x3 = arrive(
        &app,
        &fx,
        v1::SubmitMessageRequest { fast_track_code: multi.code.clone(), ..message("c-3", "Здравствуйте") },
    )
    .await;
    assert_eq!(x3.joined().await, "anna");
    assert_eq!(next_on(&mut anna, "assigned").await, x3.id);
    assert_eq!(live_codes(&app, anna_token).await, [(multi.code.clone(), 2)]);
    let mut x4 = arrive(&app, &fx, message("c-4", &format!("{} — мне сказали написать это", multi.code))).await;
    assert_eq!(x4.joined().await, "anna");
    assert_eq!(next_on(&mut anna, "assigned").await, x4.id);
    assert_eq!(live_codes(&app, anna_token).await, [(multi.code.clone(), 1)]);

    // Revoked: does nothing.
    app.routing_client(anna_token)
        .await
        .revoke_fast_track_code(v1::RevokeFastTrackCodeRequest { code: multi.code.clone() })
        .await
        .expect("revoke");
    assert!(live_codes(&app, anna_token).await.is_empty());
    let mut x5 = arrive(&app, &fx, message("c-5", &format!("Код {}", multi.code))).await;
    assert!(matches!(x5.first, customer_update::Kind::Queued(_)), "a revoked code: {:?}", x5.first);
    assert_eq!(x5.joined().await, "boris");
    let taken = next_on(&mut boris, "assigned").await;
    close_on(&app, &fx, "boris", &mut boris, &taken).await;

    // Expired: does nothing.
    expired_code(&app, "acme", "anna", "EXP23R").await;
    let mut x6 = arrive(&app, &fx, message("c-6", "Код EXP23R")).await;
    assert!(matches!(x6.first, customer_update::Kind::Queued(_)), "an expired code: {:?}", x6.first);
    assert_eq!(x6.joined().await, "boris");
    let taken = next_on(&mut boris, "assigned").await;
    close_on(&app, &fx, "boris", &mut boris, &taken).await;

    // Tenant-scoped: Olga's code means nothing in acme, and is still whole in globex.
    let olga_code = issue_code(&app, gx.operator_token("olga"), 1).await;
    let mut x7 = arrive(&app, &fx, message("c-7", &format!("Код {}", olga_code.code))).await;
    assert!(matches!(x7.first, customer_update::Kind::Queued(_)), "another tenant's code: {:?}", x7.first);
    assert_eq!(x7.joined().await, "boris");
    let taken = next_on(&mut boris, "assigned").await;
    close_on(&app, &fx, "boris", &mut boris, &taken).await;
    assert_eq!(live_codes(&app, gx.operator_token("olga")).await, [(olga_code.code.clone(), 1)]);
    let mut y1 = arrive(&app, &gx, message("g-1", &format!("Код {}", olga_code.code))).await;
    assert_eq!(y1.waits_for(), Some("olga"));
    assert_eq!(y1.joined().await, "olga");
    assert_eq!(next_on(&mut olga, "assigned").await, y1.id);

    // Wrong codes are limited per sender: after three, even a valid code from c-8 is
    // ignored (c-8 is still routed), while another customer's valid code works.
    let valid = issue_code(&app, anna_token, 5).await;
    for (i, wrong) in ["2345AB", "3456BC", "4567CD"].into_iter().enumerate() {
        let request = if i == 0 {
            message("c-8", &format!("Код {wrong}"))
        } else {
            v1::SubmitMessageRequest { fast_track_code: wrong.into(), ..message("c-8", "Код?") }
        };
        let mut w = arrive(&app, &fx, request).await;
        assert!(matches!(w.first, customer_update::Kind::Queued(_)));
        assert_eq!(w.joined().await, "boris");
        assert_eq!(next_on(&mut boris, "assigned").await, w.id);
        close_on(&app, &fx, "boris", &mut boris, &w.id).await;
    }
    let mut limited = arrive(&app, &fx, message("c-8", &format!("Вот верный код {}", valid.code))).await;
    assert!(matches!(limited.first, customer_update::Kind::Queued(_)), "codes from c-8 are ignored now");
    assert_eq!(limited.joined().await, "boris", "c-8 is still routed");
    assert_eq!(live_codes(&app, anna_token).await, [(valid.code.clone(), 5)], "the ignored code was not used");
    let mut other = arrive(&app, &fx, message("c-9", &format!("Код {}", valid.code))).await;
    assert_eq!(other.joined().await, "anna");
    assert_eq!(next_on(&mut anna, "assigned").await, other.id);
    assert_eq!(live_codes(&app, anna_token).await, [(valid.code.clone(), 4)]);
    assert_eq!(next_on(&mut boris, "assigned").await, limited.id);

    // Anna is full now (five conversations) and Boris too (one seat, taken by c-8), with
    // c-10 waiting. A code holder waits for Anna up to 2 s, then heads the queue.
    assert_eq!(load(&presence(&app, &fx, "anna").await, v1::Channel::Api), (5, 5));
    fx.set_api_seats(&app, "boris", 1).await;
    let waiting = arrive(&app, &fx, message("c-10", "Жду давно")).await;
    assert!(matches!(waiting.first, customer_update::Kind::Queued(_)));
    let started = Instant::now();
    let mut x8 = arrive(&app, &fx, message("c-11", &format!("Код {}", valid.code))).await;
    assert_eq!(x8.waits_for(), Some("anna"));
    x8.queued().await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "waited only {:?} for Anna", started.elapsed());
    assert_eq!(fx.position(&app, &x8.id).await.position, 1, "the code holder heads the queue");
    assert_eq!(fx.position(&app, &waiting.id).await.position, 2);
    close_on(&app, &fx, "boris", &mut boris, &limited.id).await;
    assert_eq!(next_on(&mut boris, "assigned").await, x8.id);
    assert_eq!(x8.joined().await, "boris");
    let held = holdings(&app, &fx, "boris").await;
    assert_eq!(held.iter().map(|c| (c.id.as_str(), c.priority)).collect::<Vec<_>>(), [(x8.id.as_str(), 100)]);
    // Anna frees a seat while a code holder waits for her: it is theirs, not c-10's.
    let mut x9 = arrive(&app, &fx, message("c-12", &format!("Код {}", valid.code))).await;
    assert_eq!(x9.waits_for(), Some("anna"));
    close_on(&app, &fx, "anna", &mut anna, &c0.id).await;
    assert_eq!(next_on(&mut anna, "assigned").await, x9.id);
    assert_eq!(x9.joined().await, "anna");
    assert_eq!(fx.position(&app, &waiting.id).await.position, 1, "c-10 still waits");
    anna.expect_quiet(Duration::from_millis(300)).await;
    boris.expect_quiet(Duration::from_millis(300)).await;
    app.stop().await;
}

// 3. Transfers to a skill, an operator, a queue.

async fn transfer(
    app: &App,
    token: &str,
    conversation: &str,
    target: v1::transfer_conversation_request::Target,
    note: &str,
) -> Result<v1::Conversation, tonic::Status> {
    app.routing_client(token)
        .await
        .transfer_conversation(v1::TransferConversationRequest {
            conversation_id: conversation.into(),
            target: Some(target),
            note: note.into(),
        })
        .await
        .map(|r| r.into_inner().conversation.expect("conversation"))
}

/// The next assignment on a desk, with its note and the messages it carries.
async fn assignment(desk: &mut Desk) -> v1::ConversationAssigned {
    loop {
        match desk.event(WAIT).await.kind.expect("kind") {
            desk_event::Kind::Assigned(a) => return a,
            desk_event::Kind::Message(_) => continue,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }
}

/// Waits until a desk sees a message with this text.
async fn sees_message(desk: &mut Desk, text: &str) {
    loop {
        if let Some(desk_event::Kind::Message(m)) = desk.event(WAIT).await.kind
            && m.text == text
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_to_a_skill_or_queue_hands_the_whole_conversation_and_note_to_someone_else() {
    use v1::transfer_conversation_request::Target;
    let app = spawn(long_sessions()).await;
    let fx = app.tenant("acme", &["anna", "boris", "vera", "gleb"]).await;
    fx.create_skill(&app, "billing").await;
    fx.create_queue(&app, v1::Queue { id: "vip".into(), display_name: "VIP".into(), ..Default::default() }).await;
    // Anna, who transfers, has the skill too: the conversation must still leave her.
    for (op, level) in [("anna", 3), ("boris", 4), ("gleb", 3)] {
        fx.edit_operator(&app, op, |o| o.skills.push(skill("billing", level))).await;
    }
    let mut anna = online(&app, &fx, "anna").await;
    let customer = "c-1";
    let mut c = arrive(&app, &fx, message(customer, "Списали деньги дважды")).await;
    assert_eq!(next_on(&mut anna, "assigned").await, c.id);
    assert_eq!(c.joined().await, "anna");
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    let mut texts = vec!["Списали деньги дважды".to_owned()];
    for (i, (from_anna, text)) in [
        (true, "Сейчас проверю"),
        (false, "Номер заказа 4411"),
        (false, "Карта Visa"),
        (true, "Вижу два списания"),
        (false, "Верните, пожалуйста"),
    ]
    .into_iter()
    .enumerate()
    {
        if from_anna {
            assert!(matches!(
                anna.reply(&c.id, &format!("a{i}"), text).await,
                v1::open_session_response::Frame::ReplyAccepted(_)
            ));
        } else {
            ingest.submit_message(message(customer, text)).await.expect("submit");
        }
        sees_message(&mut anna, text).await;
        texts.push(text.to_owned());
    }
    // Boris already has a conversation, so least-occupied routing alone would pick Anna.
    let mut boris = online(&app, &fx, "boris").await;
    let busy = arrive(&app, &fx, message("c-2", "Другой вопрос")).await;
    assert_eq!(next_on(&mut boris, "assigned").await, busy.id);
    let mut vera = online(&app, &fx, "vera").await; // no billing

    let note = "Двойное списание, клиент ждёт возврат";
    let moved = transfer(&app, fx.operator_token("anna"), &c.id, Target::Skill(skill("billing", 2)), note)
        .await
        .expect("transfer to a skill");
    assert_eq!(moved.queue_id, "default");
    assert_eq!(next_on(&mut anna, "released").await, c.id);
    let got = assignment(&mut boris).await;
    assert_eq!(got.conversation.as_ref().map(|c| c.id.as_str()), Some(c.id.as_str()));
    assert_eq!(got.transfer_note, note, "the receiver gets the note");
    let carried: Vec<&str> = got.recent_messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(carried, texts[texts.len() - 5..], "the latest messages come with it");
    c.queued().await;
    assert_eq!(c.joined().await, "boris");
    let d = last_assignment(&app, &fx, &c.id).await;
    assert_eq!(d.required_skills, [skill("billing", 2)], "the skill replaces the queue's requirements");
    anna.expect_quiet(Duration::from_millis(300)).await;
    vera.expect_quiet(Duration::from_millis(300)).await;
    // The receiver reads the whole history, beyond what the desk event carries.
    let history = app.history_client(fx.operator_token("boris")).await;
    let all = eventually(WAIT, "the whole transcript in history", || {
        let mut history = history.clone();
        let id = c.id.clone();
        let want = texts.len();
        async move {
            let m = history
                .list_messages(v1::ListMessagesRequest { conversation_id: id, ..Default::default() })
                .await
                .ok()?
                .into_inner()
                .messages;
            (m.len() == want).then_some(m)
        }
    })
    .await;
    assert_eq!(all.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), texts);

    // To an operator who cannot take it: refused, saying why; the conversation stays.
    let refused = transfer(&app, fx.operator_token("boris"), &c.id, Target::OperatorId("gleb".into()), "")
        .await
        .expect_err("gleb is offline");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{}", refused.message());
    assert!(refused.message().contains("gleb") && refused.message().contains("not online"), "{}", refused.message());
    fx.set_api_seats(&app, "vera", 1).await;
    let fills = arrive(&app, &fx, message("c-3", "Займу Веру")).await;
    assert_eq!(next_on(&mut vera, "assigned").await, fills.id);
    let refused = transfer(&app, fx.operator_token("boris"), &c.id, Target::OperatorId("vera".into()), "")
        .await
        .expect_err("vera has no room");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{}", refused.message());
    assert!(refused.message().contains("vera") && refused.message().contains("capacity"), "{}", refused.message());
    let still: Vec<String> = holdings(&app, &fx, "boris").await.into_iter().map(|c| c.id).collect();
    assert!(still.contains(&c.id), "a refused transfer leaves it with boris");

    // To a queue: the whole conversation again, now to Anna (the only one with room).
    let vip_note = "Передаю в VIP";
    let moved = transfer(&app, fx.operator_token("boris"), &c.id, Target::QueueId("vip".into()), vip_note)
        .await
        .expect("transfer to a queue");
    assert_eq!(moved.queue_id, "vip");
    assert_eq!(next_on(&mut boris, "released").await, c.id);
    let got = assignment(&mut anna).await;
    assert_eq!(got.conversation.as_ref().map(|c| c.queue_id.as_str()), Some("vip"));
    assert_eq!(got.transfer_note, vip_note);
    assert_eq!(got.recent_messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), texts[texts.len() - 5..]);
    c.queued().await;
    assert_eq!(c.joined().await, "anna");
    boris.expect_quiet(Duration::from_millis(300)).await;
    vera.expect_quiet(Duration::from_millis(100)).await;
    app.stop().await;
}

// 4. Rerouting the work of a silent or logged-out desk.

/// The reason of the next release on a desk (messages skipped).
async fn released(desk: &mut Desk) -> (String, String) {
    loop {
        match desk.event(WAIT).await.kind.expect("kind") {
            desk_event::Kind::Released(r) => return (r.conversation_id, r.reason),
            desk_event::Kind::Message(_) => continue,
            other => panic!("expected a release, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_work_of_a_silent_or_logged_out_desk_goes_back_to_the_queue_in_its_place_and_on_to_others() {
    // Desk sessions live 3 s without a heartbeat.
    let app = spawn(AppOptions::default()).await;
    let fx = app.tenant("acme", &["anna", "boris", "vera"]).await;
    fx.update_settings(&app, |s| {
        s.known_operator_window = secs(0);
        s.reroute_after = secs(3);
    })
    .await;
    fx.create_queue(
        &app,
        v1::Queue { id: "care".into(), display_name: "Care".into(), priority: 4, ..Default::default() },
    )
    .await;
    fx.create_queue(
        &app,
        v1::Queue { id: "sales".into(), display_name: "Sales".into(), offer_timeout: secs(30), ..Default::default() },
    )
    .await;
    fx.set_api_seats(&app, "anna", 3).await;
    fx.set_api_seats(&app, "boris", 2).await;

    let mut anna = online(&app, &fx, "anna").await;
    let anna_alive = anna.keep_alive();
    let a1 = arrive(&app, &fx, to_queue("c-1", "Первый", "care")).await;
    assert_eq!(next_on(&mut anna, "assigned").await, a1.id);
    let a2 = arrive(&app, &fx, to_queue("c-2", "Второй", "care")).await;
    assert_eq!(next_on(&mut anna, "assigned").await, a2.id);
    let offer = arrive(&app, &fx, to_queue("c-3", "Хочу купить", "sales")).await;
    assert_eq!(next_on(&mut anna, "offered").await, offer.id);
    let n1 = arrive(&app, &fx, to_queue("c-4", "Четвёртый", "care")).await;
    let mut boris = online(&app, &fx, "boris").await;
    let _boris_alive = boris.keep_alive();
    assert_eq!(next_on(&mut boris, "assigned").await, n1.id);

    // Anna's desk hangs: connected, but silent.
    let silent = Instant::now();
    drop(anna_alive);
    eventually(WAIT, "anna's presence to expire", || async {
        (!presence(&app, &fx, "anna").await.connected).then_some(())
    })
    .await;
    assert!(silent.elapsed() < Duration::from_secs(5), "presence expired only after {:?}", silent.elapsed());
    assert_eq!(fx.queue_status(&app, "care").await.available_operators, 1, "only boris is available");
    // Her pending offer goes to Boris at once; her open conversations stay hers a while.
    assert_eq!(next_on(&mut boris, "offered").await, offer.id);
    assert_eq!(released(&mut anna).await, (offer.id.clone(), "rerouted".to_owned()));
    let kept: Vec<String> = holdings(&app, &fx, "anna").await.into_iter().map(|c| c.id).collect();
    assert_eq!(kept.len(), 2, "open conversations wait reroute_after before leaving: {kept:?}");
    // Boris is full now; a newer customer waits.
    let n2 = arrive(&app, &fx, to_queue("c-5", "Пятый", "care")).await;
    assert!(matches!(n2.first, customer_update::Kind::Queued(_)));

    // After reroute_after, Anna's conversations go back to the queue ahead of the newer one
    // (priority and original wait kept).
    let mut back = vec![released(&mut anna).await, released(&mut anna).await];
    back.sort();
    let mut expected = vec![(a1.id.clone(), "rerouted".to_owned()), (a2.id.clone(), "rerouted".to_owned())];
    expected.sort();
    assert_eq!(back, expected);
    eventually(WAIT, "rerouted conversations ahead of the newer one", || async {
        let positions = [
            fx.position(&app, &a1.id).await.position,
            fx.position(&app, &a2.id).await.position,
            fx.position(&app, &n2.id).await.position,
        ];
        (positions == [1, 2, 3]).then_some(())
    })
    .await;
    assert!(holdings(&app, &fx, "anna").await.is_empty());

    // Vera logs in and gets all three, with their priority.
    let mut vera = online(&app, &fx, "vera").await;
    let _vera_alive = vera.keep_alive();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_on(&mut vera, "assigned").await);
    }
    got.sort();
    let mut want = vec![a1.id.clone(), a2.id.clone(), n2.id.clone()];
    want.sort();
    assert_eq!(got, want);
    assert!(holdings(&app, &fx, "vera").await.iter().all(|c| c.priority == 4));

    // Boris logs out: his offer and his open conversation go back at once and on to Vera.
    let logout = Instant::now();
    set_status(&app, fx.operator_token("boris"), v1::OperatorStatus::Offline).await;
    let mut gone = vec![released(&mut boris).await, released(&mut boris).await];
    gone.sort();
    let mut expected = vec![(offer.id.clone(), "rerouted".to_owned()), (n1.id.clone(), "rerouted".to_owned())];
    expected.sort();
    assert_eq!(gone, expected);
    let mut moved = vec![until_on_any(&mut vera).await, until_on_any(&mut vera).await];
    moved.sort();
    let mut expected = vec![(offer.id.clone(), "offered"), (n1.id.clone(), "assigned")];
    expected.sort();
    assert_eq!(moved, expected);
    assert!(logout.elapsed() < Duration::from_secs(3), "a logout reroutes at once, not after reroute_after");
    app.stop().await;
}

/// The next routing event on a desk (messages skipped).
async fn until_on_any(desk: &mut Desk) -> (String, &'static str) {
    loop {
        let event = desk.event(WAIT).await;
        let d = describe(&event);
        if d.1 != "message" {
            return d;
        }
    }
}

// 5. Timers across a routing restart, and a Redis that lost everything.

/// A routing replica in this process, against the app's infrastructure.
async fn start_routing(app: &App, name: &'static str) -> parley_kit::runtime::ServiceHandle {
    app.routing_replica(parley_testkit::AppOptions::default(), name).await
}

/// The reason a conversation leaves a desk (other events skipped).
async fn release_of(desk: &mut Desk, conversation: &str) -> String {
    loop {
        if let Some(desk_event::Kind::Released(r)) = desk.event(WAIT).await.kind
            && r.conversation_id == conversation
        {
            return r.reason;
        }
    }
}

/// The operator who joins a conversation next, whatever queue notices come first.
async fn joined_after_waiting(a: &mut Arrival) -> String {
    loop {
        match a.update().await {
            customer_update::Kind::OperatorJoined(j) => return j.operator_id,
            customer_update::Kind::Queued(_) => continue,
            other => panic!("expected {} to be served, got {other:?}", a.id),
        }
    }
}

/// The services without routing, and a routing replica of the test's own to stop and start.
async fn without_routing() -> (App, parley_kit::runtime::ServiceHandle) {
    parley_testkit::init_logging();
    let infra = Infra::start().await.expect("test infrastructure");
    let mut app = App::spawn_with(infra, false, long_sessions()).await;
    let routing = start_routing(&app, "routing-1").await;
    app.set_routing_addr(routing.grpc_addr);
    (app, routing)
}

/// The ids of the conversations an operator holds, sorted.
async fn held(app: &App, fx: &TenantFixture, op: &str) -> Vec<String> {
    let mut ids: Vec<String> = holdings(app, fx, op).await.into_iter().map(|c| c.id).collect();
    ids.sort();
    ids
}

fn named_queue(id: &str) -> v1::Queue {
    v1::Queue { id: id.into(), display_name: id.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn due_timers_fire_after_a_routing_restart() {
    let (mut app, routing) = without_routing().await;
    let fx = app.tenant("acme", &["anna", "boris", "vera"]).await;
    fx.create_skill(&app, "legal").await;
    fx.create_queue(&app, v1::Queue { offer_timeout: secs(5), ..named_queue("sales") }).await;
    fx.create_queue(&app, named_queue("spill")).await;
    fx.create_queue(
        &app,
        v1::Queue {
            required_skills: vec![skill("legal", 1)],
            max_wait: secs(10),
            overflow_queue_id: "spill".into(),
            ..named_queue("slow")
        },
    )
    .await;
    fx.create_queue(
        &app,
        v1::Queue {
            required_skills: vec![skill("support", 5)],
            expansion: vec![v1::ExpansionStep { after: secs(4), proficiency_drop: 2, ..Default::default() }],
            ..named_queue("expert")
        },
    )
    .await;
    fx.update_settings(&app, |s| {
        s.known_operator_window = secs(60);
        s.known_operator_wait = secs(4);
    })
    .await;

    // Vera served c-k before and is full now (one seat, taken by c-f).
    let mut vera = online(&app, &fx, "vera").await;
    let _vera_alive = vera.keep_alive();
    let k0 = arrive(&app, &fx, message("c-k", "Здравствуйте")).await;
    assert_eq!(next_on(&mut vera, "assigned").await, k0.id);
    close_on(&app, &fx, "vera", &mut vera, &k0.id).await;
    fx.set_api_seats(&app, "vera", 1).await;
    let f = arrive(&app, &fx, message("c-f", "Занимаю Веру")).await;
    assert_eq!(next_on(&mut vera, "assigned").await, f.id);

    // Pending timers: a queue's maximum wait (10 s, the shortest allowed; then overflow),
    // an offer to Anna (5 s, the shortest offer timeout), c-k waiting for Vera (4 s) and
    // an expansion step (after 4 s), all due while routing is down.
    let queued_at = Instant::now();
    let mut slow = arrive(&app, &fx, to_queue("c-m", "Юридический вопрос", "slow")).await;
    let mut anna = online(&app, &fx, "anna").await;
    let _anna_alive = anna.keep_alive();
    let offer = arrive(&app, &fx, to_queue("c-o", "Хочу купить", "sales")).await;
    assert_eq!(next_on(&mut anna, "offered").await, offer.id);
    let mut k1 = arrive(&app, &fx, message("c-k", "Снова я")).await;
    assert_eq!(k1.waits_for(), Some("vera"));
    let mut expert = arrive(&app, &fx, to_queue("c-e", "Сложный вопрос", "expert")).await;
    // Boris comes online: none of these is for him yet.
    let mut boris = online(&app, &fx, "boris").await;
    let _boris_alive = boris.keep_alive();
    assert_eq!(holdings(&app, &fx, "anna").await.len(), 1, "the offer is still pending");
    routing.stop().await.expect("routing stops cleanly");

    // Past every deadline with no routing running, then a new instance.
    tokio::time::sleep((queued_at + Duration::from_millis(10_500)).saturating_duration_since(Instant::now())).await;
    let routing = start_routing(&app, "routing-2").await;
    app.set_routing_addr(routing.grpc_addr);
    // The offer expired: it leaves Anna and is offered to the next operator (Boris).
    assert_eq!(release_of(&mut anna, &offer.id).await, "offer_expired");
    assert_eq!(until_on(&mut boris, &offer.id, "offered").await.last().map(|d| d.1), Some("offered"));
    // c-k stopped waiting for Vera; c-m overflowed; c-e's requirements expanded.
    k1.queued().await;
    let k1_by = joined_after_waiting(&mut k1).await;
    let slow_by = joined_after_waiting(&mut slow).await;
    let expert_by = joined_after_waiting(&mut expert).await;
    for by in [&k1_by, &slow_by, &expert_by] {
        assert!(by == "anna" || by == "boris", "served by {by}");
    }
    let d = last_assignment(&app, &fx, &slow.id).await;
    assert_eq!(d.queue_id, "spill", "c-m overflowed");
    let d = last_assignment(&app, &fx, &expert.id).await;
    assert_eq!(d.required_skills, [skill("support", 3)], "c-e's requirement expanded");
    vera.expect_quiet(Duration::from_millis(300)).await;
    routing.stop().await.expect("routing stops cleanly");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_lost_everything_is_rebuilt_from_the_log_without_losing_work_or_capacity() {
    let (mut app, routing) = without_routing().await;
    let fx = app.tenant("acme", &["anna", "boris", "vera"]).await;
    fx.create_skill(&app, "legal").await;
    fx.create_queue(&app, v1::Queue { required_skills: vec![skill("legal", 1)], ..named_queue("legal") }).await;
    fx.create_queue(&app, v1::Queue { offer_timeout: secs(60), ..named_queue("sales") }).await;
    fx.update_settings(&app, |s| s.known_operator_window = secs(0)).await;
    // Vera is full (one seat), Anna and Boris hold some work, Anna has an offer pending,
    // and a customer waits in a queue nobody can serve.
    let mut vera = online(&app, &fx, "vera").await;
    let _vera_alive = vera.keep_alive();
    fx.set_api_seats(&app, "vera", 1).await;
    let f = arrive(&app, &fx, message("c-f", "Занимаю Веру")).await;
    assert_eq!(next_on(&mut vera, "assigned").await, f.id);
    let mut anna = online(&app, &fx, "anna").await;
    let _anna_alive = anna.keep_alive();
    let boris = online(&app, &fx, "boris").await;
    let _boris_alive = boris.keep_alive();
    for c in ["c-1", "c-2", "c-3"] {
        arrive(&app, &fx, message(c, "Вопрос")).await;
    }
    let offer = arrive(&app, &fx, to_queue("c-o", "Хочу купить", "sales")).await;
    let waiting = arrive(&app, &fx, to_queue("c-w", "Нужен юрист", "legal")).await;
    let before = eventually(WAIT, "four conversations held and one offered", || async {
        let all = [held(&app, &fx, "anna").await, held(&app, &fx, "boris").await, held(&app, &fx, "vera").await];
        (all.iter().map(Vec::len).sum::<usize>() == 5).then_some(all)
    })
    .await;
    assert!(before[0].contains(&offer.id) || before[1].contains(&offer.id), "the offer is pending: {before:?}");
    let offered_to = if before[0].contains(&offer.id) { "anna" } else { "boris" };
    go_away(&app, fx.operator_token("boris"), "совещание").await;

    // Routing stops, Redis loses everything, routing starts again.
    routing.stop().await.expect("routing stops cleanly");
    let client = redis::Client::open(app.infra.redis.url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.expect("flushall");
    // The desks' next heartbeats record their sessions again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let routing = start_routing(&app, "routing-2").await;
    app.set_routing_addr(routing.grpc_addr);

    // Holds (the offer among them), statuses and the queue come back from the durable side.
    eventually(WAIT, "holds rebuilt", || async {
        ([held(&app, &fx, "anna").await, held(&app, &fx, "boris").await, held(&app, &fx, "vera").await] == before)
            .then_some(())
    })
    .await;
    assert_eq!(load(&presence(&app, &fx, "vera").await, v1::Channel::Api), (1, 1));
    let boris_now = presence(&app, &fx, "boris").await;
    assert_eq!((boris_now.status, boris_now.reason.as_str()), (v1::OperatorStatus::Away as i32, "совещание"));
    assert_eq!(presence(&app, &fx, "anna").await.status, v1::OperatorStatus::Online as i32);
    eventually(WAIT, "the waiting customer back in line", || async {
        (fx.position(&app, &waiting.id).await.position == 1).then_some(())
    })
    .await;
    // The pending offer still stands and can be accepted.
    app.routing_client(fx.operator_token(offered_to))
        .await
        .accept_offer(v1::AcceptOfferRequest { conversation_id: offer.id.clone() })
        .await
        .expect("the offer survived");

    // Capacity still holds: with Anna and Boris away, full Vera gets nothing new.
    go_away(&app, fx.operator_token("anna"), "обед").await;
    let mut extra = arrive(&app, &fx, message("c-x", "Есть кто?")).await;
    vera.expect_quiet(Duration::from_secs(1)).await;
    assert_eq!(load(&presence(&app, &fx, "vera").await, v1::Channel::Api), (1, 1));
    assert_eq!(fx.position(&app, &extra.id).await.position, 1);
    // Nothing was lost: a freed seat serves the newcomer, a lawyer serves c-w.
    close_on(&app, &fx, "vera", &mut vera, &f.id).await;
    assert_eq!(next_on(&mut vera, "assigned").await, extra.id);
    assert_eq!(extra.joined().await, "vera");
    fx.edit_operator(&app, "anna", |o| o.skills.push(skill("legal", 2))).await;
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    let mut waiting = waiting;
    assert_eq!(until_on(&mut anna, &waiting.id, "assigned").await.last().map(|d| d.1), Some("assigned"));
    assert_eq!(waiting.joined().await, "anna");
    drop(boris);
    routing.stop().await.expect("routing stops cleanly");
    app.stop().await;
}

// 6. "Why did conversation X go to Y?"

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_routing_decision_explains_every_operator_it_passed_over_and_why_the_chosen_won() {
    let app = spawn(long_sessions()).await;
    let ops = ["anna", "boris", "dina", "eve", "fedor", "gleb", "vera"];
    let fx = app.tenant("acme", &ops).await;
    fx.create_skill(&app, "billing").await;
    fx.create_queue(
        &app,
        v1::Queue {
            id: "billing-de".into(),
            display_name: "Billing (de)".into(),
            required_skills: vec![skill("billing", 2)],
            language: "de".into(),
            ..Default::default()
        },
    )
    .await;
    // Everyone can do German billing except Vera (no billing) and Dina (no German).
    for op in ops {
        fx.edit_operator(&app, op, |o| {
            if op != "vera" {
                o.skills.push(skill("billing", 3));
            }
            if op != "dina" {
                o.languages.push("de".into());
            }
            if op == "gleb" {
                o.capacity = vec![capacity(v1::Channel::Api, 1)];
            }
        })
        .await;
    }
    // Gleb fills his one seat, then Eve takes one of her five.
    let mut gleb = online(&app, &fx, "gleb").await;
    let g = arrive(&app, &fx, to_queue("c-g", "Rechnung", "billing-de")).await;
    assert_eq!(next_on(&mut gleb, "assigned").await, g.id);
    let mut eve = online(&app, &fx, "eve").await;
    let e = arrive(&app, &fx, to_queue("c-e", "Rechnung zwei", "billing-de")).await;
    assert_eq!(next_on(&mut eve, "assigned").await, e.id);
    let mut anna = online(&app, &fx, "anna").await;
    let _boris = online(&app, &fx, "boris").await;
    go_away(&app, fx.operator_token("boris"), "перерыв").await;
    let _vera = online(&app, &fx, "vera").await;
    let _dina = online(&app, &fx, "dina").await;
    // Fedor is online by his supervisor's word, but has no desk open.
    app.routing_client(&fx.supervisor_token)
        .await
        .set_operator_status(v1::SetOperatorStatusRequest {
            operator_id: "fedor".into(),
            status: v1::OperatorStatus::Online as i32,
            ..Default::default()
        })
        .await
        .expect("fedor online");

    let x = arrive(&app, &fx, to_queue("c-x", "Doppelte Abbuchung", "billing-de")).await;
    assert_eq!(next_on(&mut anna, "assigned").await, x.id);
    let decision = last_assignment(&app, &fx, &x.id).await;
    assert_eq!(decision.chosen_operator_id, "anna");
    assert_eq!(decision.queue_id, "billing-de");
    assert_eq!(decision.strategy, "least_occupied");
    assert_eq!(decision.tie_breaker, "occupancy", "anna (0 of 5) beat eve (1 of 5) on occupancy");
    assert_eq!(decision.required_skills, [skill("billing", 2)]);
    assert_eq!(decision.language, "de");
    assert!(decision.reason.contains("least occupied"), "{}", decision.reason);
    let why: Vec<(&str, &str)> =
        decision.candidates.iter().map(|c| (c.operator_id.as_str(), c.excluded_because.as_str())).collect();
    assert_eq!(
        why,
        [
            ("anna", ""),
            ("boris", "status away"),
            ("dina", "does not speak de"),
            ("eve", ""),
            ("fedor", "no live desk session"),
            ("gleb", "at capacity"),
            ("vera", "no skill billing"),
        ]
    );
    let by = |id: &str| decision.candidates.iter().find(|c| c.operator_id == id).expect("candidate").clone();
    let (a, ev, gl) = (by("anna"), by("eve"), by("gleb"));
    assert_eq!((a.load, a.capacity, a.score), (0, 5, 0.0));
    assert_eq!((ev.load, ev.capacity, ev.score), (1, 5, 0.2));
    assert_eq!((gl.load, gl.capacity, gl.weighted_load), (1, 1, 1.0));

    // History answers the same question.
    let history = app.history_client(&fx.supervisor_token).await;
    let recorded = eventually(WAIT, "the decision in history", || {
        let mut history = history.clone();
        let id = x.id.clone();
        async move {
            let d = history
                .list_routing_decisions(v1::ListRoutingDecisionsRequest { conversation_id: id })
                .await
                .ok()?
                .into_inner()
                .decisions;
            d.into_iter().find(|d| d.chosen_operator_id == "anna")
        }
    })
    .await;
    assert_eq!(recorded.candidates, decision.candidates);
    assert_eq!(
        (recorded.strategy, recorded.tie_breaker, recorded.reason, recorded.required_skills, recorded.language),
        (decision.strategy, decision.tie_breaker, decision.reason, decision.required_skills, decision.language)
    );
    app.stop().await;
}

// 7. Draining and away.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_operator_finishes_their_work_but_gets_nothing_new_and_away_says_why() {
    let app = spawn(long_sessions()).await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    // Boris is busier than Anna.
    let mut boris = online(&app, &fx, "boris").await;
    for c in ["c-1", "c-2"] {
        let a = arrive(&app, &fx, message(c, "Вопрос")).await;
        assert_eq!(next_on(&mut boris, "assigned").await, a.id);
    }
    let mut anna = online(&app, &fx, "anna").await;
    let mut mine = arrive(&app, &fx, message("c-3", "Помогите")).await;
    assert_eq!(next_on(&mut anna, "assigned").await, mine.id);
    assert_eq!(mine.joined().await, "anna");

    let draining = set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Draining).await;
    assert_eq!(draining.status, v1::OperatorStatus::Draining as i32);
    assert_eq!(fx.queue_status(&app, "default").await.operators_draining, 1);
    // New work goes to Boris though Anna has more room.
    let next = arrive(&app, &fx, message("c-4", "Новый")).await;
    assert_eq!(next_on(&mut boris, "assigned").await, next.id);
    // With Boris full, a newcomer waits rather than go to Anna.
    fx.set_api_seats(&app, "boris", 3).await;
    let mut waits = arrive(&app, &fx, message("c-5", "Жду")).await;
    anna.expect_quiet(Duration::from_millis(500)).await;
    assert_eq!(fx.position(&app, &waits.id).await.position, 1);
    let d = fx.decisions_made(&app, &waits.id).await;
    let anna_why = d[0].candidates.iter().find(|c| c.operator_id == "anna").expect("anna considered");
    assert_eq!(anna_why.excluded_because, "status draining");
    // Nor can it be transferred to her.
    let refused = transfer(
        &app,
        fx.operator_token("boris"),
        &next.id,
        v1::transfer_conversation_request::Target::OperatorId("anna".into()),
        "",
    )
    .await
    .expect_err("anna is draining");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    // Her own conversation goes on: she replies and closes it.
    assert!(matches!(
        anna.reply(&mine.id, "r1", "Готово, всё исправил").await,
        v1::open_session_response::Frame::ReplyAccepted(_)
    ));
    match mine.feed.next(WAIT).await {
        customer_update::Kind::Message(m) => assert_eq!(m.text, "Готово, всё исправил"),
        other => panic!("expected anna's reply, got {other:?}"),
    }
    close_on(&app, &fx, "anna", &mut anna, &mine.id).await;
    anna.expect_quiet(Duration::from_millis(500)).await;

    // Online again: the waiting customer is hers.
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    assert_eq!(next_on(&mut anna, "assigned").await, waits.id);
    assert_eq!(waits.joined().await, "anna");

    // Away, with a reason everyone can read.
    let away = go_away(&app, fx.operator_token("anna"), "обед до 14:00").await;
    assert_eq!((away.status, away.reason.as_str()), (v1::OperatorStatus::Away as i32, "обед до 14:00"));
    let all = app
        .routing_client(&fx.supervisor_token)
        .await
        .list_operator_presences(v1::ListOperatorPresencesRequest {})
        .await
        .expect("presences")
        .into_inner()
        .presences;
    let a = all.iter().find(|p| p.operator_id == "anna").expect("anna listed");
    assert_eq!((a.status, a.reason.as_str(), a.connected), (v1::OperatorStatus::Away as i32, "обед до 14:00", true));
    let q = fx.queue_status(&app, "default").await;
    assert_eq!((q.operators_away, q.operators_draining), (1, 0));
    let refused = app
        .routing_client(fx.operator_token("anna"))
        .await
        .set_operator_status(v1::SetOperatorStatusRequest {
            status: v1::OperatorStatus::Away as i32,
            reason: "  ".into(),
            ..Default::default()
        })
        .await
        .expect_err("away needs a reason");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    app.stop().await;
}

// 8. Capacity per channel.

/// A customer message on the Telegram channel, published as a channel's webhook would
/// (SubmitMessage is the API channel only); returns the conversation it opens.
async fn telegram(app: &App, tenant: &str, chat: &str, text: &str) -> String {
    let channel = parley_domain::Channel::Telegram;
    let (message, _) = parley_e2e::publish_customer_message(app, tenant, channel, "tg", chat, text).await;
    parley_domain::ConversationId::opened_by(message).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capacity_is_per_channel_a_full_channel_takes_nothing_more_while_another_still_takes_work() {
    let app = spawn(long_sessions()).await;
    let fx = app.tenant("acme", &["anna", "vera"]).await;
    let settings = v1::channel_config::Settings::Telegram(v1::TelegramSettings {
        bot_token: "123:abc".into(),
        webhook_secret: "s3cret".into(),
    });
    fx.create_channel_config(&app, parley_testkit::channel_config("tg", v1::Channel::Telegram, settings)).await;
    // Anna: one API chat and one Telegram chat. Vera: Telegram only.
    fx.edit_operator(&app, "anna", |o| {
        o.capacity = vec![capacity(v1::Channel::Api, 1), capacity(v1::Channel::Telegram, 1)];
    })
    .await;
    fx.edit_operator(&app, "vera", |o| o.capacity = vec![capacity(v1::Channel::Telegram, 1)]).await;
    let mut anna = online(&app, &fx, "anna").await;
    let mut vera = online(&app, &fx, "vera").await;

    let a1 = arrive(&app, &fx, message("c-1", "API один")).await;
    assert_eq!(next_on(&mut anna, "assigned").await, a1.id);
    // A second API chat: Anna's API seat is taken and Vera has none; it waits.
    let a2 = arrive(&app, &fx, message("c-2", "API два")).await;
    anna.expect_quiet(Duration::from_millis(500)).await;
    vera.expect_quiet(Duration::from_millis(100)).await;
    let d = fx.decisions_made(&app, &a2.id).await;
    let why: Vec<(&str, &str)> =
        d[0].candidates.iter().map(|c| (c.operator_id.as_str(), c.excluded_because.as_str())).collect();
    assert_eq!(why, [("anna", "at capacity"), ("vera", "no capacity for this channel")]);
    // Telegram chats still come: Vera (idle longest) first, then Anna with her API seat full.
    let t1 = telegram(&app, "acme", "tg-1", "Телеграм один").await;
    assert_eq!(next_on(&mut vera, "assigned").await, t1);
    let t2 = telegram(&app, "acme", "tg-2", "Телеграм два").await;
    assert_eq!(next_on(&mut anna, "assigned").await, t2);
    let p = presence(&app, &fx, "anna").await;
    assert_eq!((load(&p, v1::Channel::Api), load(&p, v1::Channel::Telegram)), ((1, 1), (1, 1)));
    // Both full on Telegram: a third waits; the second API chat still waits too.
    let t3 = telegram(&app, "acme", "tg-3", "Телеграм три").await;
    anna.expect_quiet(Duration::from_millis(500)).await;
    vera.expect_quiet(Duration::from_millis(100)).await;
    assert_eq!(fx.queue_status(&app, "default").await.waiting_conversations, 2);
    assert_eq!(fx.position(&app, &t3).await.position, 2);
    // Anna's API seat frees: the waiting API chat is hers, not the Telegram one.
    close_on(&app, &fx, "anna", &mut anna, &a1.id).await;
    assert_eq!(next_on(&mut anna, "assigned").await, a2.id);
    anna.expect_quiet(Duration::from_millis(500)).await;
    assert_eq!(fx.position(&app, &t3).await.position, 1);
    // Vera's Telegram seat frees: the Telegram chat is hers.
    close_on(&app, &fx, "vera", &mut vera, &t1).await;
    assert_eq!(next_on(&mut vera, "assigned").await, t3);
    app.stop().await;
}

/// Reconciliation checks only the holds the log may not know: a seat claimed by a router
/// that died before recording it is given back, a hold the log records is confirmed (and
/// then left alone), and one put in doubt by a change that never released it is asked of
/// the log — kept while the log still gives it to the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciliation_gives_back_unrecorded_claims_and_keeps_recorded_holds() {
    use parley_domain::{Channel, ConversationId, OperatorId, QueueId, SkillId, TenantId};
    let app = spawn(long_sessions()).await;
    let fx = app.tenant("acme", &["anna"]).await;
    let mut desk = online(&app, &fx, "anna").await;
    let a = arrive(&app, &fx, message("cust-a", "Здравствуйте")).await;
    assert_eq!(next_on(&mut desk, "assigned").await, a.id);

    let redis = parley_redis::Coordinator::connect(&app.infra.redis.url(), Duration::from_secs(5)).await.unwrap();
    let (tenant, anna) = (TenantId::parse("acme").unwrap(), OperatorId::parse("anna").unwrap());
    let recorded = ConversationId::parse(&a.id).unwrap();
    let far = parley_kit::clock::now().saturating_add(Duration::from_secs(3600));
    // The assignment's record confirmed its hold: not in doubt.
    let in_doubt = redis.stale_holds(&tenant, &anna, Channel::Api, far).await.unwrap();
    assert!(in_doubt.is_empty(), "a recorded hold is confirmed, got {in_doubt:?} in doubt");

    // A router claims a seat for a conversation and dies before recording it.
    let orphan = ConversationId::parse(&uuid::Uuid::now_v7().to_string()).unwrap();
    let skills: Vec<SkillId> = Vec::new();
    let weights =
        parley_redis::Weights { waiting_milli: 1000, idle_milli: 1000, idle_after: Duration::from_secs(3600) };
    let ctx = parley_redis::OpCtx {
        tenant: &tenant,
        op: &anna,
        channel: Channel::Api,
        capacity: 5,
        skills: &skills,
        weights,
    };
    let now = parley_kit::clock::now();
    redis.claim(&ctx, orphan, &QueueId::parse("default").unwrap(), false, 5, now).await.unwrap().expect("seat claimed");
    // And a change that would have given back the recorded hold was never recorded either.
    redis.doubt_hold(&tenant, &anna, Channel::Api, recorded, now).await.unwrap();
    let in_doubt = redis.stale_holds(&tenant, &anna, Channel::Api, far).await.unwrap();
    assert_eq!(in_doubt.len(), 2, "both are in doubt now: {in_doubt:?}");

    // Reconciliation (every 2 s here, for claims older than 2 s) settles both.
    eventually(WAIT, "the unrecorded claim given back, the recorded hold kept and confirmed", || async {
        let held = redis.held(&tenant, &anna, Channel::Api).await.unwrap();
        let in_doubt = redis.stale_holds(&tenant, &anna, Channel::Api, far).await.unwrap();
        (held == vec![a.id.clone()] && in_doubt.is_empty()).then_some(())
    })
    .await;
    assert_eq!(load(&presence(&app, &fx, "anna").await, v1::Channel::Api), (1, 5), "one seat in use of five");
}
