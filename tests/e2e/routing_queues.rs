//! Scenario tests of the routing engine's queue features through the real services:
//! weighted capacity, priority and aging, maximum wait and overflow, skill expansion,
//! business hours, selection strategies, fair spread of a backlog, queue position and
//! estimated wait, the queue dry run, and refusal of bad routing configuration.

use std::time::{Duration, Instant};

use parley_domain::{ConversationId, MessageId, TenantId};
use parley_e2e::{CustomerFeed, Desk, online, set_status, submit};
use parley_proto::v1::{customer_update, desk_event};
use parley_proto::{events, v1};
use parley_testkit::{App, AppOptions, Infra, TenantFixture, eventually};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

/// The services with desk sessions that outlive every test here, so nothing depends on
/// heartbeats (presence expiry is not what these tests are about).
async fn spawn() -> App {
    parley_testkit::init_logging();
    let infra = Infra::start().await.expect("test infrastructure");
    App::spawn_with(infra, true, AppOptions { session_ttl_secs: 30, ..AppOptions::default() }).await
}

fn secs(n: i64) -> Option<parley_proto::Duration> {
    Some(parley_proto::Duration { seconds: n, nanos: 0 })
}

/// Shorter than any wait Parley accepts.
fn half_second() -> Option<parley_proto::Duration> {
    Some(parley_proto::Duration { seconds: 0, nanos: 500_000_000 })
}

fn skill(name: &str, proficiency: u32) -> v1::SkillLevel {
    v1::SkillLevel { skill: name.into(), proficiency }
}

fn queue(id: &str) -> v1::Queue {
    v1::Queue { id: id.into(), display_name: format!("Queue {id}"), ..Default::default() }
}

async fn get_queue(app: &App, fx: &TenantFixture, id: &str) -> v1::Queue {
    app.admin(&fx.admin_token)
        .await
        .get_queue(v1::GetQueueRequest { queue_id: id.into() })
        .await
        .expect("get queue")
        .into_inner()
        .queue
        .expect("queue")
}

/// A new customer writes into `queue`; returns the conversation their message opens, once
/// routing has opened it (so conversations open in the order they arrive).
async fn arrive(app: &App, fx: &TenantFixture, customer: &str, queue: &str) -> String {
    let mut request = submit(customer, &format!("Здравствуйте, я {customer}"), &format!("key-{customer}"));
    request.queue_id = queue.into();
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    let accepted = ingest.submit_message(request).await.expect("message accepted").into_inner();
    let message = MessageId::parse(&accepted.message_id).expect("message id");
    let id = ConversationId::opened_by(message).to_string();
    let routing = app.routing_client(&fx.supervisor_token).await;
    eventually(WAIT, &format!("{customer}'s conversation opened"), || {
        let request = v1::GetConversationPositionRequest { conversation_id: id.clone() };
        let mut routing = routing.clone();
        async move { routing.get_conversation_position(request).await.ok().map(|_| ()) }
    })
    .await;
    id
}

/// The next conversation put on a desk (offered or assigned), skipping everything else.
async fn next_given(desk: &mut Desk) -> v1::Conversation {
    loop {
        match desk.event(WAIT).await.kind.expect("event kind") {
            desk_event::Kind::Assigned(a) => return a.conversation.expect("conversation"),
            desk_event::Kind::Offered(o) => return o.conversation.expect("conversation"),
            _ => continue,
        }
    }
}

/// Waits `quiet` and fails if a conversation is put on the desk meanwhile (messages, such
/// as the echo of the operator's own reply, are fine).
async fn expect_nothing_given(desk: &mut Desk, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(frame) = tokio::time::timeout_at(deadline, desk.frame(WAIT + quiet)).await {
        if let v1::open_session_response::Frame::Event(e) = frame {
            let kind = e.kind.expect("event kind");
            assert!(
                !matches!(kind, desk_event::Kind::Assigned(_) | desk_event::Kind::Offered(_)),
                "expected nothing new on the desk, got {kind:?}"
            );
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

/// The decision that gave the conversation to an operator, once there is one.
async fn assignment(app: &App, fx: &TenantFixture, conversation: &str) -> v1::RoutingDecision {
    eventually(WAIT, &format!("{conversation} assigned"), || async {
        fx.decisions(app, conversation).await.into_iter().rev().find(|d| !d.chosen_operator_id.is_empty())
    })
    .await
}

async fn wait_for_depth(app: &App, fx: &TenantFixture, queue: &str, depth: u32) {
    eventually(WAIT, &format!("{depth} waiting in {queue}"), || async {
        (fx.queue_status(app, queue).await.waiting_conversations == depth).then_some(())
    })
    .await;
}

/// The operator's load on the API channel as presence reports it: (active, max).
/// An operator's API-channel load as presence reports it: held, seats, seats in use.
async fn api_load(app: &App, fx: &TenantFixture, op: &str) -> (u32, u32, f64) {
    let presences = app
        .routing_client(&fx.supervisor_token)
        .await
        .list_operator_presences(v1::ListOperatorPresencesRequest {})
        .await
        .expect("presences")
        .into_inner()
        .presences;
    let p = presences.iter().find(|p| p.operator_id == op).expect("operator listed");
    let load = p.load.iter().find(|l| l.channel == v1::Channel::Api as i32).expect("api load");
    (load.active_conversations, load.max_conversations, load.weighted_load)
}

fn candidate<'a>(d: &'a v1::RoutingDecision, op: &str) -> &'a v1::RoutingCandidate {
    d.candidates.iter().find(|c| c.operator_id == op).unwrap_or_else(|| panic!("{op} considered in {d:?}"))
}

fn skills_of(d: &v1::RoutingDecision) -> Vec<(String, u32)> {
    d.required_skills.iter().map(|s| (s.skill.clone(), s.proficiency)).collect()
}

/// Every record of a conversation in the log (`PARLEY_EVENTS`), oldest first.
async fn log_of(app: &App, tenant: &str, conversation: &str) -> Vec<events::ConversationRecord> {
    let client = async_nats::connect(app.infra.nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let log = parley_nats::ConversationLog::new(&js).await.expect("conversation log");
    log.history(&TenantId::parse(tenant).expect("tenant"), ConversationId::parse(conversation).expect("id"))
        .await
        .expect("history of the conversation")
}

// ---- 1. weighted capacity ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_operator_gets_another_conversation_once_theirs_wait_on_customers_only_when_weighted() {
    let app = spawn().await;
    // Two tenants side by side: "acme" counts a conversation the operator answered last as
    // half a seat; "globex" counts it as a whole seat (weighting off).
    let weighted = app.tenant("acme", &["anna"]).await;
    let flat = app.tenant("globex", &["anna"]).await;
    let mut desks = Vec::new();
    let mut held = Vec::new();
    for (fx, weight) in [(&weighted, 0.5), (&flat, 1.0)] {
        fx.set_api_seats(&app, "anna", 2).await;
        let settings = fx.update_settings(&app, |s| s.waiting_weight = weight).await;
        assert_eq!(settings.waiting_weight, weight);
        let mut desk = online(&app, fx, "anna").await;
        let first = arrive(&app, fx, "c-1", "default").await;
        assert_eq!(next_given(&mut desk).await.id, first);
        let second = arrive(&app, fx, "c-2", "default").await;
        assert_eq!(next_given(&mut desk).await.id, second);
        // Both seats hold a conversation where the customer spoke last: the third waits.
        let third = arrive(&app, fx, "c-3", "default").await;
        wait_for_depth(&app, fx, "default", 1).await;
        assert_eq!(api_load(&app, fx, "anna").await, (2, 2, 2.0));
        let waiting = fx.decisions_made(&app, &third).await;
        let anna = candidate(&waiting[0], "anna");
        assert_eq!(anna.excluded_because, "at capacity");
        assert_eq!(anna.weighted_load, 2.0);
        desks.push(desk);
        held.push((first, second, third));
    }

    // Anna answers one conversation in each tenant: at most 1.5 seats in use, still no
    // room for a whole one.
    for (desk, (first, _, _)) in desks.iter_mut().zip(&held) {
        assert!(matches!(desk.reply(first, "r-1", "Смотрю").await, v1::open_session_response::Frame::ReplyAccepted(_)));
    }
    let preview = |fx: &TenantFixture| {
        let app = &app;
        let fx = fx.clone();
        async move {
            let mut routing = app.routing_client(&fx.supervisor_token).await;
            let request = v1::PreviewQueueRequest { queue: Some(queue("default")), limit: 0 };
            routing.preview_queue(request).await.expect("preview").into_inner().decisions
        }
    };
    eventually(WAIT, "acme's answered conversation weighs half a seat", || async {
        let d = preview(&weighted).await;
        (candidate(&d[0], "anna").weighted_load == 1.5).then_some(())
    })
    .await;
    expect_nothing_given(&mut desks[0], Duration::from_millis(800)).await;

    // Anna answers the second one too.
    for (desk, (_, second, _)) in desks.iter_mut().zip(&held) {
        assert!(matches!(
            desk.reply(second, "r-2", "Минуту").await,
            v1::open_session_response::Frame::ReplyAccepted(_)
        ));
    }
    // Weighted: two half seats leave room for the waiting customer.
    let (acme_desk, flat_desk) = desks.split_at_mut(1);
    assert_eq!(next_given(&mut acme_desk[0]).await.id, held[0].2, "acme's anna gets the third conversation");
    let given = assignment(&app, &weighted, &held[0].2).await;
    assert_eq!(given.chosen_operator_id, "anna");
    let anna = candidate(&given, "anna");
    assert_eq!((anna.load, anna.capacity, anna.weighted_load), (2, 2, 1.0), "{given:?}");
    assert_eq!(
        api_load(&app, &weighted, "anna").await,
        (3, 2, 2.0),
        "three conversations held on two seats: two answered at half a seat, one new"
    );
    assert_eq!(weighted.queue_status(&app, "default").await.waiting_conversations, 0);

    // Unweighted: answered conversations still take whole seats; the customer keeps waiting.
    expect_nothing_given(&mut flat_desk[0], Duration::from_millis(1500)).await;
    assert_eq!(flat.queue_status(&app, "default").await.waiting_conversations, 1);
    assert_eq!(api_load(&app, &flat, "anna").await, (2, 2, 2.0));
    let d = preview(&flat).await;
    let anna = candidate(&d[0], "anna");
    assert_eq!((anna.excluded_because.as_str(), anna.weighted_load), ("at capacity", 2.0));
    assert!(flat.decisions(&app, &held[1].2).await.iter().all(|d| d.chosen_operator_id.is_empty()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_conversations_weigh_less_so_a_full_operator_takes_another() {
    let app = spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    // Idle after 2 s: a quarter of a seat.
    fx.update_settings(&app, |s| {
        s.idle_after = secs(2);
        s.idle_weight = 0.25;
    })
    .await;
    fx.set_api_seats(&app, "anna", 2).await;
    let mut anna = online(&app, &fx, "anna").await;
    let first = arrive(&app, &fx, "c-1", "default").await;
    let second = arrive(&app, &fx, "c-2", "default").await;
    assert_eq!(next_given(&mut anna).await.id, first);
    assert_eq!(next_given(&mut anna).await.id, second);
    let started = std::time::Instant::now();
    let third = arrive(&app, &fx, "c-3", "default").await;
    // Both seats are taken by conversations the customers just wrote in.
    expect_nothing_given(&mut anna, Duration::from_millis(1000)).await;
    // Once they have been quiet for 2 s they weigh half a seat together: room for one.
    assert_eq!(next_given(&mut anna).await.id, third);
    assert!(started.elapsed() >= Duration::from_millis(1500), "given before the first two went idle");
    let (held, seats, in_use) = api_load(&app, &fx, "anna").await;
    assert_eq!((held, seats), (3, 2));
    assert!(in_use < 2.0, "two idle conversations and a new one: {in_use} seats in use");
    app.stop().await;
}

// ---- 2. priority and aging -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_basic_queue_waits_behind_vip_until_its_aging_delay_then_goes_first() {
    const AGING: Duration = Duration::from_secs(3);
    let app = spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    fx.set_api_seats(&app, "anna", 1).await;
    fx.create_queue(&app, v1::Queue { priority: 10, ..queue("vip") }).await;
    fx.create_queue(&app, v1::Queue { priority: 0, aging_delay: secs(AGING.as_secs() as i64), ..queue("basic") }).await;
    let mut anna = online(&app, &fx, "anna").await;
    let token = fx.operator_token("anna");
    let holder = arrive(&app, &fx, "holder", "vip").await;
    assert_eq!(next_given(&mut anna).await.id, holder);

    // A basic customer, then a vip one, both waiting for Anna's only seat.
    let basic_arrived = Instant::now();
    let basic = arrive(&app, &fx, "basic-1", "basic").await;
    let vip = arrive(&app, &fx, "vip-1", "vip").await;
    wait_for_depth(&app, &fx, "basic", 1).await;
    wait_for_depth(&app, &fx, "vip", 1).await;
    close(&app, token, &holder).await;
    let served = next_given(&mut anna).await.id;
    assert_eq!(
        served,
        vip,
        "the fresh vip conversation goes before the basic one that waited {:?} (under its {AGING:?} aging delay)",
        basic_arrived.elapsed()
    );

    // Once the basic conversation has waited past its aging delay, it goes before a vip
    // conversation that arrived after it. Its wait started when routing took its message
    // (under load, a while after the test sent it): the sleep runs from there.
    let log = log_of(&app, "acme", &basic).await;
    let wait_start = log.first().and_then(|r| r.state.as_ref()).and_then(|s| s.wait_start_time).expect("wait start");
    let waited = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::try_from(wait_start).expect("a time"))
        .unwrap_or_default();
    tokio::time::sleep((AGING + Duration::from_millis(500)).saturating_sub(waited)).await;
    let vip_later = arrive(&app, &fx, "vip-2", "vip").await;
    wait_for_depth(&app, &fx, "vip", 1).await;
    close(&app, token, &vip).await;
    assert_eq!(next_given(&mut anna).await.id, basic, "the aged basic conversation is served first");
    close(&app, token, &basic).await;
    assert_eq!(next_given(&mut anna).await.id, vip_later);
    app.stop().await;
}

// ---- 3. maximum wait and overflow -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_its_max_wait_a_conversation_overflows_with_wait_and_priority_kept_or_opens_to_anyone() {
    // The shortest maximum wait a queue accepts.
    const MAX_WAIT: Duration = Duration::from_secs(10);
    let app = spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    fx.create_skill(&app, "billing").await;
    fx.set_api_seats(&app, "anna", 1).await;
    fx.create_queue(&app, queue("overflow")).await;
    let max_wait = secs(MAX_WAIT.as_secs() as i64);
    fx.create_queue(
        &app,
        v1::Queue {
            required_skills: vec![skill("billing", 1)],
            priority: 7,
            max_wait,
            overflow_queue_id: "overflow".into(),
            ..queue("first")
        },
    )
    .await;
    // Without an overflow queue, a conversation past its maximum wait may go to anyone.
    fx.create_queue(&app, v1::Queue { required_skills: vec![skill("billing", 1)], max_wait, ..queue("anyone") }).await;
    let mut anna = online(&app, &fx, "anna").await;
    let token = fx.operator_token("anna");
    let holder = arrive(&app, &fx, "holder", "default").await;
    assert_eq!(next_given(&mut anna).await.id, holder);

    let start = Instant::now();
    let anyone = arrive(&app, &fx, "c-anyone", "anyone").await;
    // Waits in the overflow queue from the start, at its priority (0).
    let direct = arrive(&app, &fx, "c-direct", "overflow").await;
    let first = arrive(&app, &fx, "c-first", "first").await;
    // Nobody has billing: the decision at arrival says so.
    let opening = arrival_decision(&app, &fx, &first).await;
    assert_eq!(opening.chosen_operator_id, "");
    assert_eq!(candidate(&opening, "anna").excluded_because, "no skill billing");
    assert_eq!(skills_of(&opening), [("billing".to_owned(), 1)]);

    // Still in its own queue well into the wait.
    tokio::time::sleep_until((start + MAX_WAIT - Duration::from_secs(2)).into()).await;
    assert_eq!(fx.position(&app, &first).await.queue_id, "first");
    assert_eq!(fx.position(&app, &anyone).await.queue_id, "anyone");

    // At its maximum wait it moves to the overflow queue, where it keeps its priority (7)
    // and original wait: ahead of the overflow queue's own, older conversation.
    let moved = eventually(WAIT, "the conversation overflows", || async {
        let p = fx.position(&app, &first).await;
        (p.queue_id == "overflow").then_some(p)
    })
    .await;
    assert!(start.elapsed() >= MAX_WAIT, "moved after {:?}", start.elapsed());
    assert_eq!(moved.position, 1, "priority kept: ahead of the older conversation of priority 0");
    assert!(moved.waited_seconds >= 10, "original wait kept: waited {} s", moved.waited_seconds);
    assert_eq!(fx.position(&app, &direct).await.position, 2);
    let overflow = fx.queue_status(&app, "overflow").await;
    assert_eq!(overflow.waiting_conversations, 2);
    assert!(overflow.oldest_wait_seconds >= 10, "{overflow:?}");
    // The log says why it moved.
    let records = log_of(&app, "acme", &first).await;
    let opened_at = records[0].route.as_ref().and_then(|r| r.wait_start_time).expect("wait start");
    let move_record = records
        .iter()
        .find(|r| {
            r.events.iter().any(|e| {
                matches!(&e.kind, Some(events::conversation_event::Kind::Queued(q))
                    if q.queue_id == "overflow" && q.reason == "overflow" && q.priority == 7)
            })
        })
        .expect("a queued-in-overflow event with reason overflow and priority 7");
    assert_eq!(move_record.route.as_ref().and_then(|r| r.wait_start_time), Some(opened_at));

    // Anna serves it there as soon as she has a seat.
    close(&app, token, &holder).await;
    assert_eq!(next_given(&mut anna).await.id, first);
    let given = assignment(&app, &fx, &first).await;
    assert_eq!((given.queue_id.as_str(), given.chosen_operator_id.as_str()), ("overflow", "anna"));

    // The conversation with nowhere to overflow lost its requirements at its maximum
    // wait: Anna, without billing, takes it next (it is older than the overflow queue's).
    close(&app, token, &first).await;
    assert_eq!(next_given(&mut anna).await.id, anyone);
    let given = assignment(&app, &fx, &anyone).await;
    assert_eq!(given.queue_id, "anyone");
    assert_eq!(given.chosen_operator_id, "anna");
    assert!(given.required_skills.is_empty(), "requirements dropped: {given:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reaching_its_max_wait_does_not_put_a_conversation_ahead_of_higher_priority_ones() {
    // The dispatcher runs only when woken (a seat freed, an operator online), so the
    // maximum wait below passes between two of its passes, deterministically — as it does
    // now and then with any interval.
    parley_testkit::init_logging();
    let infra = Infra::start().await.expect("test infrastructure");
    let options = AppOptions { session_ttl_secs: 30, dispatch_interval_ms: 60_000, ..AppOptions::default() };
    let app = App::spawn_with(infra, true, options).await;
    let fx = app.tenant("acme", &["anna"]).await;
    fx.create_skill(&app, "billing").await;
    fx.set_api_seats(&app, "anna", 1).await;
    fx.create_queue(
        &app,
        v1::Queue { required_skills: vec![skill("billing", 1)], max_wait: secs(10), ..queue("anyone") },
    )
    .await;
    fx.create_queue(&app, v1::Queue { priority: 10, ..queue("vip") }).await;
    let mut anna = online(&app, &fx, "anna").await;
    let token = fx.operator_token("anna");
    let holder = arrive(&app, &fx, "holder", "default").await;
    assert_eq!(next_given(&mut anna).await.id, holder);
    let start = Instant::now();
    let anyone = arrive(&app, &fx, "c-anyone", "anyone").await;
    let vip = arrive(&app, &fx, "c-vip", "vip").await;
    tokio::time::sleep_until((start + Duration::from_millis(10_500)).into()).await;

    // The seat frees just after the first conversation's maximum wait: it may now go to
    // anyone, but the vip conversation has the higher priority and goes first.
    close(&app, token, &holder).await;
    assert_eq!(next_given(&mut anna).await.id, vip, "priority first, whatever timer came due");
    close(&app, token, &vip).await;
    assert_eq!(next_given(&mut anna).await.id, anyone);
    app.stop().await;
}

/// The first decision recorded for a conversation (made when it arrived).
async fn arrival_decision(app: &App, fx: &TenantFixture, conversation: &str) -> v1::RoutingDecision {
    eventually(WAIT, "the arrival decision", || async { fx.decisions(app, conversation).await.into_iter().next() })
        .await
}

// ---- 4. time-based skill expansion ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requirements_relax_step_by_step_and_no_one_below_them_is_offered_early() {
    let app = spawn().await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    fx.create_skill(&app, "billing").await;
    // Anna: support 3, billing 2, German. Boris: support 3, Russian, no billing.
    fx.edit_operator(&app, "anna", |o| {
        o.skills = vec![skill("support", 3), skill("billing", 2)];
        o.languages = vec!["de".into()];
        o.capacity[0].max_conversations = 1;
    })
    .await;
    fx.edit_operator(&app, "boris", |o| o.languages = vec!["ru".into()]).await;
    fx.create_queue(
        &app,
        v1::Queue {
            required_skills: vec![skill("support", 5), skill("billing", 4)],
            language: "de".into(),
            expansion: vec![
                v1::ExpansionStep { after: secs(1), proficiency_drop: 2, ..Default::default() },
                v1::ExpansionStep {
                    after: secs(2),
                    remove_skills: vec!["billing".into()],
                    drop_language: true,
                    ..Default::default()
                },
            ],
            ..queue("experts")
        },
    )
    .await;
    let mut anna = online(&app, &fx, "anna").await;

    // Step 1 (after 1 s): support 3 and billing 2 are enough for Anna, not before.
    let start = Instant::now();
    let first = arrive(&app, &fx, "c-1", "experts").await;
    anna.expect_quiet(Duration::from_millis(700)).await;
    assert_eq!(next_given(&mut anna).await.id, first);
    assert!(start.elapsed() >= Duration::from_secs(1), "given after {:?}", start.elapsed());
    let all = fx.decisions(&app, &first).await;
    let at_arrival = &all[0];
    assert_eq!(at_arrival.chosen_operator_id, "");
    assert_eq!(skills_of(at_arrival), [("support".to_owned(), 5), ("billing".to_owned(), 4)]);
    assert_eq!(at_arrival.language, "de");
    assert_eq!(candidate(at_arrival, "anna").excluded_because, "skill support at 3, needs 5");
    let given = all.last().expect("assignment decision");
    assert_eq!(given.chosen_operator_id, "anna");
    assert_eq!(skills_of(given), [("support".to_owned(), 3), ("billing".to_owned(), 2)]);
    assert_eq!(given.language, "de");

    // Step 2 (after 2 s): billing and the language are dropped; Boris qualifies then.
    // Anna's only seat is taken.
    let mut boris = online(&app, &fx, "boris").await;
    let start = Instant::now();
    let second = arrive(&app, &fx, "c-2", "experts").await;
    boris.expect_quiet(Duration::from_millis(1600)).await;
    assert_eq!(next_given(&mut boris).await.id, second);
    assert!(start.elapsed() >= Duration::from_secs(2), "given after {:?}", start.elapsed());
    let given = assignment(&app, &fx, &second).await;
    assert_eq!(given.chosen_operator_id, "boris");
    assert_eq!(skills_of(&given), [("support".to_owned(), 3)]);
    assert_eq!(given.language, "");
    anna.expect_quiet(Duration::from_millis(200)).await;
    app.stop().await;
}

// ---- 5. business hours ----------------------------------------------------------------------------

/// A one-hour window (09:00–10:00 UTC) on the weekday after tomorrow: closed now. Returns
/// the window and when it opens (seconds since the epoch).
fn closed_window() -> (v1::OpeningWindow, i64) {
    let now = parley_kit::clock::now().as_millis() / 1000;
    let day = now.div_euclid(86_400) + 2;
    // 1970-01-01 was a Thursday; Monday is 1.
    let weekday = (day + 3).rem_euclid(7) + 1;
    let window = v1::OpeningWindow { day: weekday as i32, open: "09:00".into(), close: "10:00".into() };
    (window, day * 86_400 + 9 * 3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_queue_sends_new_customers_after_hours_or_tells_them_when_it_opens() {
    let app = spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let (window, opens_at) = closed_window();
    let hours = v1::BusinessHours { time_zone: "UTC".into(), windows: vec![window] };
    fx.create_queue(&app, queue("night")).await;
    fx.create_queue(
        &app,
        v1::Queue {
            business_hours: Some(hours.clone()),
            after_hours_queue_id: "night".into(),
            ..queue("support-hours")
        },
    )
    .await;
    fx.create_queue(&app, v1::Queue { business_hours: Some(hours), ..queue("closed-only") }).await;
    let mut anna = online(&app, &fx, "anna").await;

    // With an after-hours queue: the conversation lands there and is served.
    let night = arrive(&app, &fx, "c-night", "support-hours").await;
    let given = next_given(&mut anna).await;
    assert_eq!((given.id.as_str(), given.queue_id.as_str()), (night.as_str(), "night"));

    // Without one: the customer is told when the queue opens, and nobody is offered it,
    // though Anna has free seats.
    let mut feed = CustomerFeed::open(&app, &fx.integrator_token, "c-closed", 0).await;
    let closed = arrive(&app, &fx, "c-closed", "closed-only").await;
    let notice = loop {
        match feed.next(WAIT).await {
            customer_update::Kind::Closed(c) => break c,
            customer_update::Kind::Queued(_) => continue,
            other => panic!("expected the queue-closed notice, got {other:?}"),
        }
    };
    assert_eq!(notice.conversation_id, closed);
    assert_eq!(notice.open_time.map(|t| t.seconds), Some(opens_at), "the next opening time");
    anna.expect_quiet(Duration::from_millis(1500)).await;
    let status = fx.queue_status(&app, "closed-only").await;
    assert!(!status.open);
    assert_eq!(status.waiting_conversations, 1);
    assert_eq!(fx.position(&app, &closed).await.position, 1);

    // Opening the queue now: the waiting customer is served.
    let mut open_now = get_queue(&app, &fx, "closed-only").await;
    open_now.business_hours = Some(v1::BusinessHours {
        time_zone: "UTC".into(),
        windows: (1..=7).map(|day| v1::OpeningWindow { day, open: "00:00".into(), close: "24:00".into() }).collect(),
    });
    app.admin(&fx.admin_token)
        .await
        .update_queue(v1::UpdateQueueRequest { queue: Some(open_now.clone()) })
        .await
        .expect("update queue");
    assert!(fx.queue_status(&app, "closed-only").await.open);
    assert_eq!(next_given(&mut anna).await.id, closed);
    loop {
        match feed.next(WAIT).await {
            customer_update::Kind::OperatorJoined(j) => {
                assert_eq!(j.operator_id, "anna");
                break;
            }
            customer_update::Kind::Queued(_) => continue,
            other => panic!("expected anna to join, got {other:?}"),
        }
    }

    // Customers already waiting when their queue closes go to its after-hours queue,
    // keeping their place.
    fx.create_skill(&app, "billing").await;
    fx.create_queue(
        &app,
        v1::Queue {
            required_skills: vec![skill("billing", 1)],
            business_hours: open_now.business_hours.clone(),
            after_hours_queue_id: "night".into(),
            ..queue("day-billing")
        },
    )
    .await;
    let late = arrive(&app, &fx, "c-late", "day-billing").await;
    expect_nothing_given(&mut anna, Duration::from_millis(500)).await;
    let mut closing = get_queue(&app, &fx, "day-billing").await;
    closing.business_hours = Some(v1::BusinessHours { time_zone: "UTC".into(), windows: vec![closed_window().0] });
    app.admin(&fx.admin_token)
        .await
        .update_queue(v1::UpdateQueueRequest { queue: Some(closing) })
        .await
        .expect("update queue");
    let given = next_given(&mut anna).await;
    assert_eq!((given.id.as_str(), given.queue_id.as_str()), (late.as_str(), "night"));
    app.stop().await;
}

// ---- 6. selection strategies -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_selection_strategy_picks_its_operator() {
    let app = spawn().await;

    // Round robin: the next operator after the queue's last choice, in id order, whatever
    // their load (Boris holds two conversations already).
    let rr = app.tenant("rr-co", &["anna", "boris", "vera"]).await;
    rr.create_queue(&app, v1::Queue { selection: v1::SelectionStrategy::RoundRobin as i32, ..queue("turns") }).await;
    let mut desks = vec![online(&app, &rr, "boris").await];
    for customer in ["pre-1", "pre-2"] {
        let c = arrive(&app, &rr, customer, "default").await;
        assert_eq!(assignment(&app, &rr, &c).await.chosen_operator_id, "boris");
    }
    desks.push(online(&app, &rr, "anna").await);
    desks.push(online(&app, &rr, "vera").await);
    let mut turns = Vec::new();
    for i in 0..4 {
        let c = arrive(&app, &rr, &format!("rr-{i}"), "turns").await;
        let d = assignment(&app, &rr, &c).await;
        assert_eq!(d.strategy, "round_robin");
        turns.push(d.chosen_operator_id);
    }
    assert_eq!(turns, ["anna", "boris", "vera", "anna"]);

    // Longest idle: the operator whose last assignment is oldest, though more loaded.
    let li = app.tenant("li-co", &["anna", "boris"]).await;
    li.create_queue(&app, v1::Queue { selection: v1::SelectionStrategy::LongestIdle as i32, ..queue("idle") }).await;
    desks.push(online(&app, &li, "anna").await);
    for customer in ["a-1", "a-2"] {
        let c = arrive(&app, &li, customer, "default").await;
        assert_eq!(assignment(&app, &li, &c).await.chosen_operator_id, "anna");
    }
    desks.push(online(&app, &li, "boris").await);
    let c = arrive(&app, &li, "b-1", "default").await;
    assert_eq!(assignment(&app, &li, &c).await.chosen_operator_id, "boris", "least occupied on the default queue");
    let c = arrive(&app, &li, "idle-1", "idle").await;
    let d = assignment(&app, &li, &c).await;
    assert_eq!((d.chosen_operator_id.as_str(), d.strategy.as_str()), ("anna", "longest_idle"));
    assert_eq!(d.tie_breaker, "idle time");
    assert_eq!((candidate(&d, "anna").load, candidate(&d, "boris").load), (2, 1), "anna was more loaded");
    let c = arrive(&app, &li, "idle-2", "idle").await;
    assert_eq!(assignment(&app, &li, &c).await.chosen_operator_id, "boris", "now boris has waited longest");

    // Least occupied (the default): the lowest share of capacity in use — one of four
    // seats beats one of two, though the latter has been idle longer.
    let lo = app.tenant("lo-co", &["anna", "boris"]).await;
    lo.set_api_seats(&app, "anna", 4).await;
    lo.set_api_seats(&app, "boris", 2).await;
    desks.push(online(&app, &lo, "boris").await);
    let c = arrive(&app, &lo, "l-1", "default").await;
    assert_eq!(assignment(&app, &lo, &c).await.chosen_operator_id, "boris");
    desks.push(online(&app, &lo, "anna").await);
    let c = arrive(&app, &lo, "l-2", "default").await;
    assert_eq!(assignment(&app, &lo, &c).await.chosen_operator_id, "anna");
    let c = arrive(&app, &lo, "l-3", "default").await;
    let d = assignment(&app, &lo, &c).await;
    assert_eq!((d.chosen_operator_id.as_str(), d.strategy.as_str()), ("anna", "least_occupied"));
    assert_eq!(d.tie_breaker, "occupancy");
    assert_eq!((candidate(&d, "anna").score, candidate(&d, "boris").score), (0.25, 0.5));
    drop(desks);
    app.stop().await;
}

// ---- 7. fair spread of a backlog ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_is_spread_over_operators_logging_in_one_after_another() {
    let app = spawn().await;
    let operators = ["anna", "boris", "vera"];
    let fx = app.tenant("acme", &operators).await;
    // Capacity grows from one seat to five over 3 s after coming online.
    fx.update_settings(&app, |s| s.ramp_up = Some(parley_proto::convert::duration(Duration::from_secs(3)))).await;
    let mut desks = Vec::new();
    for op in operators {
        desks.push(Desk::open(&app, fx.operator_token(op), 0).await.expect("desk opens"));
    }
    let mut backlog = Vec::new();
    for i in 0..6 {
        backlog.push(arrive(&app, &fx, &format!("c-{i}"), "default").await);
    }
    wait_for_depth(&app, &fx, "default", 6).await;
    // Shift start: the three log in one right after the other, a fifth of a second apart
    // (people are seconds apart; back-to-back calls would only race the dispatcher).
    for op in operators {
        set_status(&app, fx.operator_token(op), v1::OperatorStatus::Online).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_depth(&app, &fx, "default", 0).await;
    let mut loads = Vec::new();
    for op in operators {
        loads.push((op, api_load(&app, &fx, op).await.0));
    }
    // Who was eligible at each decision, to show how the backlog went.
    let mut story = Vec::new();
    for c in &backlog {
        let d = assignment(&app, &fx, c).await;
        let eligible: Vec<&str> =
            d.candidates.iter().filter(|c| c.excluded_because.is_empty()).map(|c| c.operator_id.as_str()).collect();
        story.push(format!("{} of {eligible:?}", d.chosen_operator_id));
    }
    assert_eq!(
        loads,
        [("anna", 2), ("boris", 2), ("vera", 2)],
        "the backlog is spread, not dumped on the first; assignments: {story:?}"
    );
    drop(desks);
    app.stop().await;
}

// ---- 8. queue position and estimated wait --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_customers_learn_their_position_and_estimated_wait() {
    let app = spawn().await;
    let fx = app.tenant("acme", &["anna", "boris", "vera"]).await;
    fx.set_api_seats(&app, "anna", 1).await;
    let mut anna = online(&app, &fx, "anna").await;
    let boris = Desk::open(&app, fx.operator_token("boris"), 0).await.expect("desk opens");
    set_status(&app, fx.operator_token("boris"), v1::OperatorStatus::Away).await;
    let token = fx.operator_token("anna");
    let first = arrive(&app, &fx, "c-1", "default").await;
    assert_eq!(next_given(&mut anna).await.id, first);

    let mut feed = CustomerFeed::open(&app, &fx.integrator_token, "c-5", 0).await;
    let mut waiting = Vec::new();
    for i in 2..=5 {
        waiting.push(arrive(&app, &fx, &format!("c-{i}"), "default").await);
    }
    wait_for_depth(&app, &fx, "default", 4).await;
    // Positions 1..4 in serving order; no estimate yet (one served so far).
    for (i, c) in waiting.iter().enumerate() {
        let p = fx.position(&app, c).await;
        assert_eq!((p.queue_id.as_str(), p.position, p.estimated_wait_seconds), ("default", i as u32 + 1, 0), "{c}");
    }
    match feed.next(WAIT).await {
        customer_update::Kind::Queued(q) => {
            assert_eq!((q.conversation_id.as_str(), q.position), (waiting[3].as_str(), 4), "the customer is told");
        }
        other => panic!("expected a queue position, got {other:?}"),
    }

    // Two more served: now the queue has a service rate to estimate from.
    close(&app, token, &first).await;
    assert_eq!(next_given(&mut anna).await.id, waiting[0]);
    close(&app, token, &waiting[0]).await;
    assert_eq!(next_given(&mut anna).await.id, waiting[1]);
    wait_for_depth(&app, &fx, "default", 2).await;
    assert_eq!(fx.position(&app, &waiting[1]).await.position, 0, "not waiting any more");
    let next = fx.position(&app, &waiting[2]).await;
    let last = fx.position(&app, &waiting[3]).await;
    assert_eq!((next.position, last.position), (1, 2));
    assert!(next.estimated_wait_seconds > 0, "{next:?}");
    assert!(last.estimated_wait_seconds >= next.estimated_wait_seconds, "{last:?} after {next:?}");

    let status = fx.queue_status(&app, "default").await;
    assert_eq!(status.waiting_conversations, 2);
    assert!(status.oldest_wait_seconds.abs_diff(next.waited_seconds) <= 1, "{status:?} vs {next:?}");
    assert!(status.estimated_wait_seconds >= last.estimated_wait_seconds, "{status:?}");
    assert!(status.open);
    assert_eq!(
        (
            status.available_operators,
            status.operators_online,
            status.operators_away,
            status.operators_offline,
            status.operators_draining
        ),
        (1, 1, 1, 1, 0),
        "anna online, boris away, vera offline"
    );
    drop(boris);
    app.stop().await;
}

// ---- 9. queue dry run ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_preview_explains_what_a_configuration_would_do_and_changes_nothing() {
    let app = spawn().await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    fx.set_api_seats(&app, "anna", 1).await;
    fx.edit_operator(&app, "boris", |o| o.skills = vec![skill("support", 2)]).await;
    fx.create_queue(&app, v1::Queue { required_skills: vec![skill("support", 5)], ..queue("experts") }).await;
    let mut anna = online(&app, &fx, "anna").await;
    let mut boris = online(&app, &fx, "boris").await;
    let first = arrive(&app, &fx, "c-1", "experts").await;
    let second = arrive(&app, &fx, "c-2", "experts").await;
    wait_for_depth(&app, &fx, "experts", 2).await;
    let before = get_queue(&app, &fx, "experts").await;
    let recorded = fx.decisions(&app, &first).await.len();

    // Proposed: support 3 instead of 5.
    let proposal = v1::Queue { required_skills: vec![skill("support", 3)], ..before.clone() };
    let preview = app
        .routing_client(&fx.supervisor_token)
        .await
        .preview_queue(v1::PreviewQueueRequest { queue: Some(proposal.clone()), limit: 0 })
        .await
        .expect("preview")
        .into_inner();
    assert!(preview.open);
    let ids: Vec<&str> = preview.decisions.iter().map(|d| d.conversation_id.as_str()).collect();
    assert_eq!(ids, [first.as_str(), second.as_str()], "one decision per waiting conversation, in order");
    let (would_first, would_second) = (&preview.decisions[0], &preview.decisions[1]);
    assert_eq!(would_first.chosen_operator_id, "anna");
    assert_eq!(skills_of(would_first), [("support".to_owned(), 3)]);
    assert_eq!(candidate(would_first, "boris").excluded_because, "skill support at 2, needs 3");
    // The second would find Anna's only seat taken by the first.
    assert_eq!(would_second.chosen_operator_id, "");
    assert_eq!(candidate(would_second, "anna").excluded_because, "at capacity");

    // Nothing happened.
    anna.expect_quiet(Duration::from_millis(1000)).await;
    boris.expect_quiet(Duration::from_millis(100)).await;
    let after = get_queue(&app, &fx, "experts").await;
    assert_eq!(after, before, "the queue is unchanged");
    assert_eq!(fx.queue_status(&app, "experts").await.waiting_conversations, 2);
    assert_eq!(fx.decisions(&app, &first).await.len(), recorded, "no decision recorded");

    // Applying it does what the preview said.
    app.admin(&fx.admin_token)
        .await
        .update_queue(v1::UpdateQueueRequest { queue: Some(proposal) })
        .await
        .expect("update queue");
    assert_eq!(next_given(&mut anna).await.id, first);
    boris.expect_quiet(Duration::from_millis(500)).await;
    assert_eq!(fx.queue_status(&app, "experts").await.waiting_conversations, 1);
    app.stop().await;
}

// ---- 10. bad configuration --------------------------------------------------------------------

fn refused<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>, code: Code, field: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} naming {field}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{field}: {}", s.message());
            assert!(s.message().contains(field), "message {:?} should name {field:?}", s.message());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_routing_configuration_is_refused_naming_the_field_and_changes_nothing() {
    let app = spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let mut routing = app.routing_client(&fx.admin_token).await;
    let mut admin = app.admin(&fx.admin_token).await;

    // Routing settings.
    let settings_before =
        routing.get_routing_settings(v1::GetRoutingSettingsRequest {}).await.unwrap().into_inner().settings;
    let bad_settings: Vec<(v1::RoutingSettings, &str)> = vec![
        (v1::RoutingSettings { waiting_weight: 1.5, ..Default::default() }, "settings.waiting_weight"),
        (v1::RoutingSettings { waiting_weight: -0.5, ..Default::default() }, "settings.waiting_weight"),
        (v1::RoutingSettings { waiting_weight: f64::NAN, ..Default::default() }, "settings.waiting_weight"),
        (v1::RoutingSettings { idle_weight: 0.05, ..Default::default() }, "settings.idle_weight"),
        (v1::RoutingSettings { idle_after: half_second(), ..Default::default() }, "settings.idle_after"),
        (v1::RoutingSettings { idle_after: secs(2 * 24 * 3600), ..Default::default() }, "settings.idle_after"),
        (v1::RoutingSettings { idle_after: secs(-30), ..Default::default() }, "settings.idle_after"),
        (v1::RoutingSettings { known_operator_wait: secs(7200), ..Default::default() }, "settings.known_operator_wait"),
        (v1::RoutingSettings { reroute_after: secs(-1), ..Default::default() }, "settings.reroute_after"),
        (v1::RoutingSettings { reroute_after: secs(2 * 24 * 3600), ..Default::default() }, "settings.reroute_after"),
        (v1::RoutingSettings { ramp_up: secs(2 * 3600), ..Default::default() }, "settings.ramp_up"),
        (v1::RoutingSettings { ramp_up: secs(-5), ..Default::default() }, "settings.ramp_up"),
        (
            v1::RoutingSettings { known_operator_window: secs(100 * 24 * 3600), ..Default::default() },
            "settings.known_operator_window",
        ),
        (
            v1::RoutingSettings { known_operator_window: secs(-60), ..Default::default() },
            "settings.known_operator_window",
        ),
        (v1::RoutingSettings { fast_track_ttl: secs(10), ..Default::default() }, "settings.fast_track_ttl"),
        (
            v1::RoutingSettings { fast_track_max_attempts: 1000, ..Default::default() },
            "settings.fast_track_max_attempts",
        ),
    ];
    for (settings, field) in bad_settings {
        let request = v1::UpdateRoutingSettingsRequest { settings: Some(settings) };
        refused(routing.update_routing_settings(request).await, Code::InvalidArgument, field);
    }
    let settings_after =
        routing.get_routing_settings(v1::GetRoutingSettingsRequest {}).await.unwrap().into_inner().settings;
    assert_eq!(settings_after, settings_before, "settings unchanged");

    // Queues: a valid base, then one thing wrong at a time, as a new queue and as an
    // update of an existing one.
    fx.create_skill(&app, "billing").await;
    fx.create_queue(&app, queue("spare")).await;
    let base = v1::Queue { required_skills: vec![skill("billing", 3)], ..queue("sales") };
    let existing = fx.create_queue(&app, base.clone()).await;
    let hours = |windows: Vec<v1::OpeningWindow>| v1::BusinessHours { time_zone: "Europe/Moscow".into(), windows };
    let window = |day: i32, open: &str, close: &str| v1::OpeningWindow { day, open: open.into(), close: close.into() };
    let step =
        |after: i64, drop: u32| v1::ExpansionStep { after: secs(after), proficiency_drop: drop, ..Default::default() };
    let bad_queues: Vec<(v1::Queue, Code, &str)> = vec![
        (v1::Queue { selection: 42, ..base.clone() }, Code::InvalidArgument, "queue.selection"),
        (v1::Queue { priority: 101, ..base.clone() }, Code::InvalidArgument, "queue.priority"),
        (v1::Queue { offer_timeout: half_second(), ..base.clone() }, Code::InvalidArgument, "queue.offer_timeout"),
        (v1::Queue { offer_timeout: secs(601), ..base.clone() }, Code::InvalidArgument, "queue.offer_timeout"),
        (v1::Queue { aging_delay: secs(-2), ..base.clone() }, Code::InvalidArgument, "queue.aging_delay"),
        (v1::Queue { aging_delay: secs(25 * 3600), ..base.clone() }, Code::InvalidArgument, "queue.aging_delay"),
        (v1::Queue { max_wait: secs(-10), ..base.clone() }, Code::InvalidArgument, "queue.max_wait"),
        (v1::Queue { max_wait: half_second(), ..base.clone() }, Code::InvalidArgument, "queue.max_wait"),
        (v1::Queue { max_wait: secs(8 * 24 * 3600), ..base.clone() }, Code::InvalidArgument, "queue.max_wait"),
        (
            v1::Queue { expansion: vec![step(2, 1), step(1, 1)], ..base.clone() },
            Code::InvalidArgument,
            "queue.expansion",
        ),
        (v1::Queue { expansion: vec![step(0, 1)], ..base.clone() }, Code::InvalidArgument, "queue.expansion"),
        (v1::Queue { expansion: vec![step(-5, 1)], ..base.clone() }, Code::InvalidArgument, "queue.expansion[0].after"),
        (v1::Queue { expansion: vec![step(5, 0)], ..base.clone() }, Code::InvalidArgument, "queue.expansion[0]"),
        (
            v1::Queue { expansion: vec![step(8 * 24 * 3600, 1)], ..base.clone() },
            Code::InvalidArgument,
            "queue.expansion[0].after",
        ),
        (
            v1::Queue { expansion: vec![step(5, 9)], ..base.clone() },
            Code::InvalidArgument,
            "queue.expansion[0].proficiency_drop",
        ),
        (
            v1::Queue {
                expansion: vec![v1::ExpansionStep {
                    after: secs(5),
                    remove_skills: vec!["karate".into()],
                    ..Default::default()
                }],
                ..base.clone()
            },
            Code::InvalidArgument,
            "queue.expansion[0].remove_skills",
        ),
        (
            v1::Queue {
                expansion: vec![v1::ExpansionStep {
                    after: secs(5),
                    remove_skills: vec!["Not A Skill".into()],
                    ..Default::default()
                }],
                ..base.clone()
            },
            Code::InvalidArgument,
            "queue.expansion[0].remove_skills",
        ),
        (
            v1::Queue { max_wait: secs(60), overflow_queue_id: "nowhere".into(), ..base.clone() },
            Code::InvalidArgument,
            "queue.overflow_queue_id",
        ),
        (
            v1::Queue { max_wait: secs(60), overflow_queue_id: "sales".into(), ..base.clone() },
            Code::InvalidArgument,
            "queue.overflow_queue_id",
        ),
        (
            v1::Queue { overflow_queue_id: "spare".into(), ..base.clone() },
            Code::InvalidArgument,
            "queue.overflow_queue_id",
        ),
        (
            v1::Queue {
                business_hours: Some(hours(vec![window(1, "09:00", "18:00")])),
                after_hours_queue_id: "sales".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "queue.after_hours_queue_id",
        ),
        (
            v1::Queue {
                business_hours: Some(hours(vec![window(1, "09:00", "18:00")])),
                after_hours_queue_id: "nowhere".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "queue.after_hours_queue_id",
        ),
        (
            v1::Queue { after_hours_queue_id: "spare".into(), ..base.clone() },
            Code::InvalidArgument,
            "queue.after_hours_queue_id",
        ),
        (
            v1::Queue {
                business_hours: Some(v1::BusinessHours {
                    time_zone: "Mars/Olympus_Mons".into(),
                    windows: vec![window(1, "09:00", "18:00")],
                }),
                ..base.clone()
            },
            Code::InvalidArgument,
            "queue.business_hours.time_zone",
        ),
        (
            v1::Queue { business_hours: Some(hours(vec![window(1, "18:00", "09:00")])), ..base.clone() },
            Code::InvalidArgument,
            "queue.business_hours.windows[0]",
        ),
        (
            v1::Queue { business_hours: Some(hours(vec![window(1, "25:00", "26:00")])), ..base.clone() },
            Code::InvalidArgument,
            "queue.business_hours.windows[0].open",
        ),
        (
            v1::Queue { business_hours: Some(hours(vec![window(0, "09:00", "18:00")])), ..base.clone() },
            Code::InvalidArgument,
            "queue.business_hours.windows[0].day",
        ),
        (
            v1::Queue { business_hours: Some(hours(vec![])), ..base.clone() },
            Code::InvalidArgument,
            "queue.business_hours.windows",
        ),
        (
            v1::Queue { required_skills: vec![skill("karate", 3)], ..base.clone() },
            Code::InvalidArgument,
            "queue.required_skills",
        ),
        (v1::Queue { language: "RUS".into(), ..base.clone() }, Code::InvalidArgument, "queue.language"),
    ];
    let queues_before = admin.list_queues(v1::ListQueuesRequest {}).await.unwrap().into_inner().queues.len();
    for (bad, code, field) in bad_queues {
        // A reference to "sales" is a reference to the queue itself: aim it at the new one.
        let mut as_new = v1::Queue { id: "fresh".into(), ..bad.clone() };
        for target in [&mut as_new.overflow_queue_id, &mut as_new.after_hours_queue_id] {
            if target == "sales" {
                *target = "fresh".into();
            }
        }
        refused(admin.create_queue(v1::CreateQueueRequest { queue: Some(as_new) }).await, code, field);
        let as_update = v1::Queue { revision: existing.revision, ..bad.clone() };
        refused(admin.update_queue(v1::UpdateQueueRequest { queue: Some(as_update) }).await, code, field);
    }
    assert_eq!(get_queue(&app, &fx, "sales").await, existing, "the queue keeps its revision and content");
    let missing = admin.get_queue(v1::GetQueueRequest { queue_id: "fresh".into() }).await;
    assert_eq!(missing.map(|_| ()).unwrap_err().code(), Code::NotFound, "no queue created");
    let queues_after = admin.list_queues(v1::ListQueuesRequest {}).await.unwrap().into_inner().queues.len();
    assert_eq!(queues_after, queues_before, "no queue created");
    // A queue another one overflows to cannot be deleted from under it.
    fx.create_queue(&app, v1::Queue { max_wait: secs(60), overflow_queue_id: "spare".into(), ..queue("busy") }).await;
    refused(
        admin.delete_queue(v1::DeleteQueueRequest { queue_id: "spare".into() }).await,
        Code::FailedPrecondition,
        "queue spare is the overflow or after-hours queue of queue(s) busy",
    );
    get_queue(&app, &fx, "spare").await;
    // A dry run of a configuration that cannot be valid is refused too.
    let preview = v1::PreviewQueueRequest { queue: Some(v1::Queue { selection: 42, ..base.clone() }), limit: 0 };
    refused(routing.preview_queue(preview).await, Code::InvalidArgument, "queue.selection");
    // An update of a queue that does not exist names it.
    refused(
        admin
            .update_queue(v1::UpdateQueueRequest { queue: Some(v1::Queue { id: "ghost".into(), ..base.clone() }) })
            .await,
        Code::NotFound,
        "queue ghost",
    );
    app.stop().await;
}
