//! The walking skeleton end to end: an integrator's customer writes, routing assigns an
//! online operator, the desk gets it, the operator replies, the integrator's stream gets
//! the reply, and history holds all of it.

use std::time::Duration;

use parley_e2e::{CustomerFeed, Desk, submit};
use parley_proto::v1;
use parley_proto::v1::{customer_update, desk_event, open_session_response};
use parley_testkit::{App, eventually};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_message_reaches_an_operator_and_the_reply_comes_back() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let anna = fx.operator_token("anna");

    let mut desk = Desk::open(&app, anna, 0).await.expect("desk opens");
    let mut routing = app.routing_client(anna).await;
    let presence = routing
        .set_operator_status(v1::SetOperatorStatusRequest {
            status: v1::OperatorStatus::Online as i32,
            ..Default::default()
        })
        .await
        .expect("go online")
        .into_inner()
        .presence
        .unwrap();
    assert!(presence.connected, "the open desk session makes anna connected");

    let mut feed = CustomerFeed::open(&app, &fx.integrator_token, "crm-42", 0).await;
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    let first = ingest
        .submit_message(submit("crm-42", "Здравствуйте! Что за списание 500 ₽? 😡", "crm-42-m1"))
        .await
        .expect("submit")
        .into_inner();
    assert!(!first.duplicate);

    // The desk is offered nothing (the default queue assigns at once): it gets the
    // conversation with its first message.
    let assigned = match desk.event(WAIT).await.kind.unwrap() {
        desk_event::Kind::Assigned(a) => a,
        other => panic!("expected assignment, got {other:?}"),
    };
    let conversation = assigned.conversation.unwrap();
    assert_eq!(conversation.operator_id, "anna");
    assert_eq!(conversation.status, v1::ConversationStatus::Assigned as i32);
    assert_eq!(assigned.customer_display_name, "Иван Петров");
    assert_eq!(assigned.recent_messages.len(), 1);
    assert_eq!(assigned.recent_messages[0].id, first.message_id);
    assert_eq!(assigned.recent_messages[0].text, "Здравствуйте! Что за списание 500 ₽? 😡");

    // The customer hears they are queued, then that anna joined.
    let mut joined = None;
    for _ in 0..3 {
        if let customer_update::Kind::OperatorJoined(j) = feed.next(WAIT).await {
            joined = Some(j);
            break;
        }
    }
    let joined = joined.expect("operator joined");
    assert_eq!((joined.operator_id.as_str(), joined.operator_display_name.as_str()), ("anna", "Operator anna"));

    // Anna replies; the integrator's stream gets it.
    let accepted = match desk.reply(&conversation.id, "r-1", "Добрый день! Сейчас проверю.").await
    {
        open_session_response::Frame::ReplyAccepted(a) => a,
        other => panic!("reply refused: {other:?}"),
    };
    let reply = match feed.next(WAIT).await {
        customer_update::Kind::Message(m) => m,
        other => panic!("expected the reply, got {other:?}"),
    };
    assert_eq!(reply.id, accepted.message_id);
    assert_eq!(reply.text, "Добрый день! Сейчас проверю.");
    assert_eq!(reply.operator_id, "anna");

    // A second message goes to the same conversation and the same operator.
    let second = ingest.submit_message(submit("crm-42", "Жду ответа", "crm-42-m2")).await.expect("submit").into_inner();
    // The desk also gets the echo of anna's own reply, recorded from the outbound stream: it
    // may come before or after the customer's second message (two streams, two consumers).
    let (mut got_second, mut echo) = (None, false);
    while got_second.is_none() || !echo {
        if let desk_event::Kind::Message(m) = desk.event(WAIT).await.kind.unwrap() {
            echo |= m.id == accepted.message_id;
            if m.id == second.message_id {
                got_second = Some(m);
            }
        }
    }
    assert_eq!(got_second.unwrap().conversation_id, conversation.id);

    // History has the customer, the conversation, all three messages in order and the
    // assignment decision.
    let mut history = app.history_client(&fx.supervisor_token).await;
    let messages = eventually(WAIT, "three messages in history", || {
        let mut history = history.clone();
        let id = conversation.id.clone();
        async move {
            let r = history
                .list_messages(v1::ListMessagesRequest { conversation_id: id, ..Default::default() })
                .await
                .ok()?
                .into_inner();
            (r.messages.len() == 3).then_some(r.messages)
        }
    })
    .await;
    let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["Здравствуйте! Что за списание 500 ₽? 😡", "Добрый день! Сейчас проверю.", "Жду ответа"]);
    assert_eq!(messages[1].sender_kind, v1::SenderKind::Operator as i32);
    let got = history
        .get_conversation(v1::GetConversationRequest { conversation_id: conversation.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.message_count, 3);
    let c = got.conversation.unwrap();
    assert_eq!((c.operator_id.as_str(), c.status), ("anna", v1::ConversationStatus::Assigned as i32));
    // The last message changed no stored field of the conversation (its row is not
    // rewritten for it), yet the conversation reads as updated by it.
    let seconds = |t: &Option<parley_proto::Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos / 1_000_000));
    assert_eq!(seconds(&c.update_time), seconds(&messages[2].create_time), "updated by its last message");
    let customer = history
        .get_customer(v1::GetCustomerRequest { customer_id: first.customer_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(customer.identities.len(), 1);
    assert_eq!(customer.identities[0].address, "crm-42");
    let decisions = history
        .list_routing_decisions(v1::ListRoutingDecisionsRequest { conversation_id: conversation.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .decisions;
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].chosen_operator_id, "anna");
    assert_eq!(decisions[0].candidates.len(), 1);
    let timeline = history
        .get_customer_timeline(v1::GetCustomerTimelineRequest { customer_id: first.customer_id, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(timeline.messages.len(), 3);
    assert_eq!(timeline.messages[0].text, "Жду ответа", "newest first");
    assert_eq!(timeline.conversations.len(), 1);

    desk.expect_quiet(Duration::from_millis(300)).await;
    app.stop().await;
}
