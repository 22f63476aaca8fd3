//! Routing behaviour through the real services: offers, declines and expiries, transfers,
//! close freeing capacity for the next waiting customer, and capacity that holds with two
//! routing replicas racing.

use std::time::Duration;

use parley_e2e::{CustomerFeed, Desk, describe, set_status, submit};
use parley_proto::v1;
use parley_proto::v1::{customer_update, desk_event};
use parley_testkit::{App, eventually};

const WAIT: Duration = Duration::from_secs(10);

async fn create_queue(app: &App, admin_token: &str, id: &str, offer_timeout_secs: u64) {
    app.admin(admin_token)
        .await
        .create_queue(v1::CreateQueueRequest {
            queue: Some(v1::Queue {
                id: id.into(),
                display_name: id.into(),
                required_skills: vec![v1::SkillLevel { skill: "support".into(), proficiency: 2 }],
                offer_timeout: (offer_timeout_secs > 0)
                    .then(|| parley_proto::convert::duration(Duration::from_secs(offer_timeout_secs))),
                ..Default::default()
            }),
        })
        .await
        .expect("create queue");
}

fn on_queue(customer: &str, text: &str, key: &str, queue: &str) -> v1::SubmitMessageRequest {
    let mut r = submit(customer, text, key);
    r.queue_id = queue.into();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_offer_goes_to_the_next_operator_and_an_unanswered_one_expires() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    create_queue(&app, &fx.admin_token, "sales", 5).await;
    let mut anna = Desk::open(&app, fx.operator_token("anna"), 0).await.unwrap();
    let mut boris = Desk::open(&app, fx.operator_token("boris"), 0).await.unwrap();
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    set_status(&app, fx.operator_token("boris"), v1::OperatorStatus::Online).await;

    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    ingest.submit_message(on_queue("c-1", "Хочу купить тариф", "k1", "sales")).await.unwrap();
    // Equally idle operators: the offer goes to the first by id.
    let offer = anna.event(WAIT).await;
    let (conversation, what) = describe(&offer);
    assert_eq!(what, "offered");
    let mut anna_routing = app.routing_client(fx.operator_token("anna")).await;
    anna_routing
        .decline_offer(v1::DeclineOfferRequest { conversation_id: conversation.clone(), reason: "busy".into() })
        .await
        .unwrap();
    assert_eq!(describe(&anna.event(WAIT).await), (conversation.clone(), "released"));
    // Boris is offered it next, and accepts.
    assert_eq!(describe(&boris.event(WAIT).await), (conversation.clone(), "offered"));
    let mut boris_routing = app.routing_client(fx.operator_token("boris")).await;
    // Anna cannot take it back.
    let refused =
        anna_routing.accept_offer(v1::AcceptOfferRequest { conversation_id: conversation.clone() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{}", refused.message());
    let accepted =
        boris_routing.accept_offer(v1::AcceptOfferRequest { conversation_id: conversation.clone() }).await.unwrap();
    assert_eq!(accepted.into_inner().conversation.unwrap().operator_id, "boris");
    match boris.event(WAIT).await.kind.unwrap() {
        desk_event::Kind::Assigned(a) => assert_eq!(a.recent_messages[0].text, "Хочу купить тариф"),
        other => panic!("expected assignment, got {other:?}"),
    }

    // A second customer: Anna is offered it and does not answer; after 5 s it leaves her
    // desk and Boris (with room) is offered it.
    ingest.submit_message(on_queue("c-2", "Вопрос по счёту", "k2", "sales")).await.unwrap();
    let (second, what) = describe(&anna.event(WAIT).await);
    assert_eq!(what, "offered");
    // Both desks stay alive while the offer runs out.
    for _ in 0..6 {
        anna.heartbeat().await;
        boris.heartbeat().await;
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    // Heartbeat answers are interleaved with the events; `event` skips them.
    assert_eq!(describe(&anna.event(WAIT).await), (second.clone(), "released"));
    assert_eq!(describe(&boris.event(WAIT).await), (second, "offered"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_hands_the_whole_conversation_to_the_next_operator() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    let mut anna = Desk::open(&app, fx.operator_token("anna"), 0).await.unwrap();
    let mut boris = Desk::open(&app, fx.operator_token("boris"), 0).await.unwrap();
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    ingest.submit_message(submit("c-1", "Карта заблокирована", "k1")).await.unwrap();
    let (conversation, _) = describe(&anna.event(WAIT).await);
    anna.reply(&conversation, "r1", "Сейчас посмотрю").await;
    set_status(&app, fx.operator_token("boris"), v1::OperatorStatus::Online).await;

    let moved = app
        .routing_client(fx.operator_token("anna"))
        .await
        .transfer_conversation(v1::TransferConversationRequest {
            conversation_id: conversation.clone(),
            target: Some(v1::transfer_conversation_request::Target::OperatorId("boris".into())),
            note: "VIP, карта заблокирована по ошибке".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(moved.operator_id, "boris");
    loop {
        let ev = anna.event(WAIT).await;
        if describe(&ev) == (conversation.clone(), "released") {
            break;
        }
    }
    let assigned = match boris.event(WAIT).await.kind.unwrap() {
        desk_event::Kind::Assigned(a) => a,
        other => panic!("expected assignment, got {other:?}"),
    };
    assert_eq!(assigned.transfer_note, "VIP, карта заблокирована по ошибке");
    let texts: Vec<&str> = assigned.recent_messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["Карта заблокирована", "Сейчас посмотрю"], "the whole conversation moves");
    // Anna no longer owns it; Boris does.
    let refused = anna.reply(&conversation, "r2", "ещё я").await;
    assert!(
        matches!(refused, v1::open_session_response::Frame::ReplyRejected(ref r) if r.code == "FAILED_PRECONDITION"),
        "{refused:?}"
    );
    assert!(matches!(
        boris.reply(&conversation, "b1", "Здравствуйте, я Борис").await,
        v1::open_session_response::Frame::ReplyAccepted(_)
    ));
    // The customer's next message goes to Boris.
    ingest.submit_message(submit("c-1", "Спасибо", "k2")).await.unwrap();
    loop {
        let ev = boris.event(WAIT).await;
        if let Some(desk_event::Kind::Message(m)) = ev.kind
            && m.text == "Спасибо"
        {
            break;
        }
    }
    // History has both assignments.
    let history = app.history_client(&fx.supervisor_token).await;
    eventually(WAIT, "boris in history", || {
        let mut history = history.clone();
        let id = conversation.clone();
        async move {
            let c =
                history.get_conversation(v1::GetConversationRequest { conversation_id: id }).await.ok()?.into_inner();
            (c.conversation?.operator_id == "boris").then_some(())
        }
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_a_conversation_frees_the_seat_for_the_next_customer_in_line() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    // One seat.
    fx.set_api_seats(&app, "anna", 1).await;
    let mut anna = Desk::open(&app, fx.operator_token("anna"), 0).await.unwrap();
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;

    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    ingest.submit_message(submit("first", "Первый", "k1")).await.unwrap();
    let (first, what) = describe(&anna.event(WAIT).await);
    assert_eq!(what, "assigned");
    let mut feed = CustomerFeed::open(&app, &fx.integrator_token, "second", 0).await;
    ingest.submit_message(submit("second", "Второй", "k2")).await.unwrap();
    match feed.next(WAIT).await {
        customer_update::Kind::Queued(q) => assert_eq!(q.position, 1, "first in line"),
        other => panic!("expected to wait, got {other:?}"),
    }
    let status = app
        .routing_client(&fx.supervisor_token)
        .await
        .get_queue_status(v1::GetQueueStatusRequest { queue_id: "default".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.waiting_conversations, 1);
    anna.expect_quiet(Duration::from_millis(500)).await;

    app.routing_client(fx.operator_token("anna"))
        .await
        .close_conversation(v1::CloseConversationRequest { conversation_id: first.clone(), reason: "done".into() })
        .await
        .unwrap();
    assert_eq!(describe(&anna.event(WAIT).await), (first, "released"));
    let (second, what) = describe(&anna.event(WAIT).await);
    assert_eq!(what, "assigned", "the waiting customer gets the freed seat");
    match feed.next(WAIT).await {
        customer_update::Kind::OperatorJoined(j) => assert_eq!(j.conversation_id, second),
        other => panic!("expected anna to join, got {other:?}"),
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_routing_replicas_never_exceed_capacity() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna", "boris", "vera", "gleb"]).await;
    for op in ["anna", "boris", "vera", "gleb"] {
        fx.set_api_seats(&app, op, 2).await;
    }
    // A second routing replica on the same NATS and Redis: the two split the inbound work.
    let second = app.routing_replica(parley_testkit::AppOptions::default(), "routing-2").await;
    let mut desks = Vec::new();
    for op in ["anna", "boris", "vera", "gleb"] {
        desks.push(Desk::open(&app, fx.operator_token(op), 0).await.unwrap());
        set_status(&app, fx.operator_token(op), v1::OperatorStatus::Online).await;
    }
    // Thirty customers at once for eight seats.
    let mut sends = Vec::new();
    for i in 0..30 {
        let mut ingest = app.ingest_client(&fx.integrator_token).await;
        sends.push(tokio::spawn(async move {
            ingest.submit_message(submit(&format!("c-{i}"), "Срочно!", &format!("k{i}"))).await
        }));
    }
    for s in sends {
        s.await.unwrap().unwrap();
    }
    let supervisor = app.routing_client(&fx.supervisor_token).await;
    eventually(WAIT, "eight assigned and 22 waiting", || {
        let mut supervisor = supervisor.clone();
        async move {
            let q = supervisor
                .get_queue_status(v1::GetQueueStatusRequest { queue_id: "default".into() })
                .await
                .ok()?
                .into_inner();
            (q.waiting_conversations == 22).then_some(())
        }
    })
    .await;
    // Every seat filled, and never one more: two replicas may both claim a conversation in
    // the same instant (the log's compare-and-set keeps one, the other gives its seat back
    // and fills it on its next pass), so a seat can be empty for a moment, never doubled.
    eventually(WAIT, "every operator at two of two", || {
        let supervisor = supervisor.clone();
        async move {
            let loads: Vec<(u32, u32)> = parley_testkit::presences(supervisor)
                .await?
                .iter()
                .filter_map(|p| p.load.iter().find(|l| l.channel == v1::Channel::Api as i32))
                .map(|l| (l.active_conversations, l.max_conversations))
                .collect();
            assert!(loads.iter().all(|(active, max)| active <= max), "over capacity: {loads:?}");
            (loads.len() == 4 && loads.iter().all(|&l| l == (2, 2))).then_some(())
        }
    })
    .await;
    // Each desk was given exactly two conversations.
    for mut desk in desks {
        let mut assigned = 0;
        while assigned < 2 {
            if describe(&desk.event(WAIT).await).1 == "assigned" {
                assigned += 1;
            }
        }
        desk.expect_quiet(Duration::from_millis(300)).await;
    }
    second.stop().await.unwrap();
    app.stop().await;
}

/// Regression: a replica whose remembered state was behind (another replica, or its own
/// dispatcher, had recorded a change it had not yet remembered) refused a command the
/// log's state allows ("held by another operator" for a close by the new holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_remembers_an_older_state_decides_on_the_log() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    let second = app.routing_replica(parley_testkit::AppOptions::default(), "routing-2").await;
    let mut anna = Desk::open(&app, fx.operator_token("anna"), 0).await.unwrap();
    let mut boris = Desk::open(&app, fx.operator_token("boris"), 0).await.unwrap();
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    ingest.submit_message(submit("c-1", "Добрый день", "k1")).await.unwrap();
    let (conversation, what) = describe(&anna.event(WAIT).await);
    assert_eq!(what, "assigned");
    set_status(&app, fx.operator_token("boris"), v1::OperatorStatus::Online).await;

    // Both replicas remember the conversation as Anna's: Boris's close is refused by each.
    let mut first_boris = app.routing_client(fx.operator_token("boris")).await;
    let mut second_boris = App::routing_client_at(second.grpc_addr, fx.operator_token("boris")).await;
    let close = |id: &str| v1::CloseConversationRequest { conversation_id: id.into(), reason: "done".into() };
    for client in [&mut first_boris, &mut second_boris] {
        let refused = client.close_conversation(close(&conversation)).await.expect_err("not Boris's yet");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    }
    // The first replica hands it to Boris; the second still remembers Anna.
    app.routing_client(fx.operator_token("anna"))
        .await
        .transfer_conversation(v1::TransferConversationRequest {
            conversation_id: conversation.clone(),
            target: Some(v1::transfer_conversation_request::Target::OperatorId("boris".into())),
            note: String::new(),
        })
        .await
        .expect("transfer");
    assert_eq!(describe(&boris.event(WAIT).await), (conversation.clone(), "assigned"));
    // Boris closes through the second replica: decided on the log, it is his to close.
    let closed = second_boris.close_conversation(close(&conversation)).await.expect("close by the holder");
    assert_eq!(closed.into_inner().conversation.expect("conversation").status, v1::ConversationStatus::Closed as i32);
    assert_eq!(describe(&boris.event(WAIT).await), (conversation.clone(), "released"));
    second.stop().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_desk_resumes_where_it_left_off_with_no_gaps_or_repeats() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let token = fx.operator_token("anna");
    let mut desk = Desk::open(&app, token, 0).await.unwrap();
    set_status(&app, token, v1::OperatorStatus::Online).await;
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    ingest.submit_message(submit("c-1", "m0", "k0")).await.unwrap();
    desk.event(WAIT).await;
    let resume = desk.last_sequence;
    drop(desk); // the network drops

    for i in 1..=5 {
        ingest.submit_message(submit("c-1", &format!("m{i}"), &format!("k{i}"))).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut desk = Desk::open(&app, token, resume).await.unwrap();
    let mut texts = Vec::new();
    while texts.len() < 5 {
        if let Some(desk_event::Kind::Message(m)) = desk.event(WAIT).await.kind {
            texts.push(m.text);
        }
    }
    assert_eq!(texts, ["m1", "m2", "m3", "m4", "m5"]);
    desk.expect_quiet(Duration::from_millis(300)).await;
    app.stop().await;
}

/// Sets an operator's capacity on the API channel and their team.
async fn reshape(app: &App, fx: &parley_testkit::TenantFixture, op: &str, seats: u32, team: &str) {
    fx.edit_operator(app, op, |o| {
        o.capacity[0].max_conversations = seats;
        o.team = team.into();
    })
    .await;
}

/// A fast-track code of the operator whose token is given.
async fn issue_code(app: &App, token: &str, max_uses: u32) -> String {
    let issued = app
        .routing_client(token)
        .await
        .issue_fast_track_code(v1::IssueFastTrackCodeRequest { ttl: None, max_uses })
        .await
        .unwrap()
        .into_inner();
    issued.code.unwrap().code
}

/// The next event on a desk, which must be an assignment; its conversation.
async fn assigned(desk: &mut Desk) -> String {
    let (id, what) = describe(&desk.event(WAIT).await);
    assert_eq!(what, "assigned");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_track_code_falls_back_to_the_operators_team_then_to_the_queue() {
    // Long session TTL: presence expiry is not what this tests.
    let options = parley_testkit::AppOptions { session_ttl_secs: 30, ..Default::default() };
    let app = App::spawn_with(parley_testkit::Infra::start().await.unwrap(), true, options).await;
    let fx = app.tenant("acme", &["anna", "boris", "vera"]).await;
    reshape(&app, &fx, "anna", 1, "north").await;
    reshape(&app, &fx, "boris", 5, "north").await;
    reshape(&app, &fx, "vera", 5, "").await;
    let mut supervisor = app.routing_client(&fx.admin_token).await;
    fx.update_settings(&app, |s| s.known_operator_wait = Some(parley_proto::convert::duration(Duration::from_secs(2))))
        .await;

    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    // Anna is full with one conversation; Boris has one of five; Vera has none.
    let mut anna = Desk::open(&app, fx.operator_token("anna"), 0).await.unwrap();
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    ingest.submit_message(submit("c-0", "Первый", "k0")).await.unwrap();
    assigned(&mut anna).await;
    let mut boris = Desk::open(&app, fx.operator_token("boris"), 0).await.unwrap();
    set_status(&app, fx.operator_token("boris"), v1::OperatorStatus::Online).await;
    ingest.submit_message(submit("c-b", "Второй", "kb")).await.unwrap();
    assigned(&mut boris).await;
    let mut vera = Desk::open(&app, fx.operator_token("vera"), 0).await.unwrap();
    set_status(&app, fx.operator_token("vera"), v1::OperatorStatus::Online).await;

    let code = issue_code(&app, fx.operator_token("anna"), 0).await;
    // The customer brings Anna's code. Anna is full: the conversation waits for her, and
    // nobody else is offered it meanwhile, not even idle Vera.
    let started = std::time::Instant::now();
    ingest.submit_message(submit("c-1", &format!("Здравствуйте, мой код {code}"), "k1")).await.unwrap();
    vera.expect_quiet(Duration::from_millis(1500)).await;
    // Then her team: Boris, though Vera is less occupied.
    let first = assigned(&mut boris).await;
    assert!(started.elapsed() >= Duration::from_millis(1900), "the wait for anna was cut short");
    let decisions = supervisor
        .list_conversation_decisions(v1::ListConversationDecisionsRequest { conversation_id: first.clone() })
        .await
        .unwrap()
        .into_inner()
        .decisions;
    let last = decisions.last().expect("decisions recorded");
    assert_eq!((last.chosen_operator_id.as_str(), last.strategy.as_str()), ("boris", "fast_track_team"));
    // The team stage considers the team alone: Anna had her turn, Vera is not in it.
    let considered: Vec<&str> = last.candidates.iter().map(|c| c.operator_id.as_str()).collect();
    assert_eq!(considered, ["boris"]);

    // With Boris away, nobody of the team can take it: after Anna's wait it goes to the
    // queue, where Vera takes it.
    set_status(&app, fx.operator_token("boris"), v1::OperatorStatus::Away).await;
    let started = std::time::Instant::now();
    ingest.submit_message(submit("c-2", &format!("Код {code}"), "k2")).await.unwrap();
    let second = assigned(&mut vera).await;
    assert!(started.elapsed() >= Duration::from_millis(1900), "the wait for anna was cut short");
    assert_ne!(second, first);
    boris.expect_quiet(Duration::from_millis(300)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conversation_overflows_through_a_chain_of_queues() {
    // Regression: handling a maximum-wait timer removed the timer the overflow queue had
    // just set for its own maximum wait, so the conversation stayed in the second queue.
    let options = parley_testkit::AppOptions { session_ttl_secs: 30, ..Default::default() };
    let app = App::spawn_with(parley_testkit::Infra::start().await.unwrap(), true, options).await;
    let fx = app.tenant("acme", &["anna"]).await;
    let mut admin = app.admin(&fx.admin_token).await;
    fx.create_skill(&app, "billing").await;
    // Created last to first, so each overflow target exists.
    for (id, skill, overflow) in
        [("last", "support", ""), ("second", "billing", "last"), ("first", "billing", "second")]
    {
        admin
            .create_queue(v1::CreateQueueRequest {
                queue: Some(v1::Queue {
                    id: id.into(),
                    display_name: id.into(),
                    required_skills: vec![v1::SkillLevel { skill: skill.into(), proficiency: 1 }],
                    max_wait: (!overflow.is_empty()).then(|| parley_proto::convert::duration(Duration::from_secs(1))),
                    overflow_queue_id: overflow.into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let mut anna = Desk::open(&app, fx.operator_token("anna"), 0).await.unwrap();
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    let started = std::time::Instant::now();
    app.ingest_client(&fx.integrator_token).await.submit_message(on_queue("c-1", "Счёт", "k1", "first")).await.unwrap();
    let id = assigned(&mut anna).await;
    assert!(started.elapsed() >= Duration::from_millis(1900), "two maximum waits of 1 s came before");
    let conversation = app
        .routing_client(&fx.supervisor_token)
        .await
        .list_operator_conversations(v1::ListOperatorConversationsRequest { operator_id: "anna".into() })
        .await
        .unwrap()
        .into_inner()
        .conversations;
    let c = conversation.iter().find(|c| c.id == id).expect("anna holds it");
    assert_eq!(c.queue_id, "last");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_track_code_reaches_its_operator_whatever_the_queue_requires() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let mut admin = app.admin(&fx.admin_token).await;
    fx.create_skill(&app, "billing").await;
    admin
        .create_queue(v1::CreateQueueRequest {
            queue: Some(v1::Queue {
                id: "billing".into(),
                display_name: "Billing".into(),
                required_skills: vec![v1::SkillLevel { skill: "billing".into(), proficiency: 3 }],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut anna = Desk::open(&app, fx.operator_token("anna"), 0).await.unwrap();
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    // Anna has no billing skill: without a code the customer waits for someone who has.
    ingest.submit_message(on_queue("c-0", "Счёт", "k0", "billing")).await.unwrap();
    anna.expect_quiet(Duration::from_millis(500)).await;
    // With her code, the customer she invited reaches her.
    let code = issue_code(&app, fx.operator_token("anna"), 1).await;
    let mut with_code = on_queue("c-1", "Мне дали код", "k1", "billing");
    with_code.fast_track_code = code;
    ingest.submit_message(with_code).await.unwrap();
    let id = assigned(&mut anna).await;
    let decisions = app
        .routing_client(&fx.supervisor_token)
        .await
        .list_conversation_decisions(v1::ListConversationDecisionsRequest { conversation_id: id })
        .await
        .unwrap()
        .into_inner()
        .decisions;
    let last = decisions.last().unwrap();
    assert_eq!((last.chosen_operator_id.as_str(), last.strategy.as_str()), ("anna", "fast_track"));
    assert!(last.required_skills.is_empty(), "the queue's requirements do not apply: {last:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_who_lets_offers_expire_is_set_away_and_their_offer_moves_on() {
    let options = parley_testkit::AppOptions { session_ttl_secs: 30, ..Default::default() };
    let app = App::spawn_with(parley_testkit::Infra::start().await.unwrap(), true, options).await;
    let fx = app.tenant("acme", &["anna"]).await;
    fx.update_settings(&app, |s| s.away_after_missed_offers = Some(2)).await;
    create_queue(&app, &fx.admin_token, "sales", 1).await;
    let mut anna = Desk::open(&app, fx.operator_token("anna"), 0).await.unwrap();
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    app.ingest_client(&fx.integrator_token)
        .await
        .submit_message(on_queue("c-1", "Алло?", "k1", "sales"))
        .await
        .unwrap();
    // Offered, left to expire, offered again (nobody else), left to expire again.
    let mut offers = 0;
    while offers < 2 {
        if describe(&anna.event(WAIT).await).1 == "offered" {
            offers += 1;
        }
    }
    let presence = eventually(WAIT, "anna set away", || async {
        let p = app
            .routing_client(&fx.supervisor_token)
            .await
            .get_operator_presence(v1::GetOperatorPresenceRequest { operator_id: "anna".into() })
            .await
            .ok()?
            .into_inner()
            .presence?;
        (p.status == v1::OperatorStatus::Away as i32).then_some(p)
    })
    .await;
    assert!(presence.reason.starts_with("not answering"), "{}", presence.reason);
    // The conversation waits, first in line, for someone who answers; no more offers to her.
    let position = app
        .routing_client(&fx.supervisor_token)
        .await
        .get_conversation_position(v1::GetConversationPositionRequest {
            conversation_id: describe(&anna.event(WAIT).await).0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(position.position, 1);
    anna.expect_quiet(Duration::from_millis(1500)).await;
    // Back online, she is offered it again.
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    assert_eq!(describe(&anna.event(WAIT).await).1, "offered");
    app.stop().await;
}
