//! Turns a state-machine transition into the record appended to the conversation log: the
//! new state, the events for history, the desk and customer deliveries for the fan-out.
//! What is left over (Redis effects) is returned for the engine to carry out.

use parley_domain::conversation::{CustomerNotice, DeliveryChange, DeskEvent, Effect, Event};
use parley_domain::{Conversation, EventId, OperatorId, Timestamp};
use parley_nats::ConfigCache;
use parley_proto::{convert, events, v1};

/// An effect on Redis, carried out inline after the record is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisEffect {
    Release(OperatorId),
    Enqueue,
    Dequeue,
}

/// Builds the record for `next` (the state after the transition) from its effects.
/// `extra` events (a routing decision) go after the transition's own.
pub fn build(
    record_id: uuid::Uuid,
    next: &Conversation,
    effects: Vec<Effect>,
    extra: Vec<events::conversation_event::Kind>,
    extra_customer: Vec<v1::customer_update::Kind>,
    now: Timestamp,
    cache: &ConfigCache,
) -> (events::ConversationRecord, Vec<RedisEffect>) {
    let record_id_text = record_id.to_string();
    let summary = convert::conversation(next);
    let mut kinds = Vec::new();
    let mut desk = Vec::new();
    let mut customer = Vec::new();
    let mut redis = Vec::new();
    let conversation_id = next.id.to_string();
    for effect in effects {
        match effect {
            Effect::Log(event) => kinds.push(event_kind(event, next)),
            Effect::Desk { operator, event } => {
                let kind = match event {
                    DeskEvent::Offered { expires } => v1::desk_event::Kind::Offered(v1::ConversationOffered {
                        conversation: Some(summary.clone()),
                        expire_time: Some(convert::timestamp(expires)),
                    }),
                    DeskEvent::Assigned => v1::desk_event::Kind::Assigned(v1::ConversationAssigned {
                        conversation: Some(summary.clone()),
                        customer_display_name: next.customer.display_name.clone(),
                        transfer_note: next.transfer_note.clone(),
                        recent_messages: next.recent_messages.iter().map(convert::message).collect(),
                        reply_window_close_time: next.reply_window_closes().map(convert::timestamp),
                    }),
                    DeskEvent::Message(m) => v1::desk_event::Kind::Message(convert::message(&m)),
                    DeskEvent::Released(reason) => v1::desk_event::Kind::Released(v1::ConversationReleased {
                        conversation_id: conversation_id.clone(),
                        reason: reason.as_str().to_owned(),
                    }),
                    DeskEvent::Delivery(change) => v1::desk_event::Kind::Delivery(delivery_update(next, change)),
                };
                desk.push(events::DeskDelivery {
                    operator_id: operator.to_string(),
                    event: Some(v1::DeskEvent {
                        sequence: 0,
                        // Both set on the way out: the version by the fan-out, the sequence
                        // by the desk stream.
                        conversation_version: 0,
                        event_time: Some(convert::timestamp(now)),
                        kind: Some(kind),
                    }),
                });
            }
            Effect::Customer(notice) => {
                let kind = match notice {
                    CustomerNotice::Queued => v1::customer_update::Kind::Queued(v1::QueuePosition {
                        conversation_id: conversation_id.clone(),
                        position: 0,
                        estimated_wait_seconds: 0,
                    }),
                    CustomerNotice::OperatorJoined(op) => {
                        let name =
                            cache.operator(&next.tenant, op.as_str()).map(|o| o.display_name).unwrap_or_default();
                        v1::customer_update::Kind::OperatorJoined(v1::OperatorJoined {
                            conversation_id: conversation_id.clone(),
                            operator_id: op.to_string(),
                            operator_display_name: name,
                        })
                    }
                    CustomerNotice::Ended { reason } => v1::customer_update::Kind::Ended(v1::ConversationEnded {
                        conversation_id: conversation_id.clone(),
                        reason,
                    }),
                    CustomerNotice::WaitingFor(p) => {
                        let name = cache
                            .operator(&next.tenant, p.operator.as_str())
                            .map(|o| o.display_name)
                            .unwrap_or_default();
                        v1::customer_update::Kind::WaitingForOperator(v1::WaitingForOperator {
                            conversation_id: conversation_id.clone(),
                            operator_id: p.operator.to_string(),
                            operator_display_name: name,
                            until_time: Some(convert::timestamp(p.until)),
                        })
                    }
                };
                customer.push(v1::CustomerUpdate { kind: Some(kind) });
            }
            Effect::ReleaseCapacity(op) => redis.push(RedisEffect::Release(op)),
            Effect::Enqueue => redis.push(RedisEffect::Enqueue),
            Effect::Dequeue => redis.push(RedisEffect::Dequeue),
        }
    }
    kinds.extend(extra);
    customer.extend(extra_customer.into_iter().map(|kind| v1::CustomerUpdate { kind: Some(kind) }));
    let events = kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| events::ConversationEvent {
            event_id: EventId::derive(&[&record_id_text, &i.to_string()]).to_string(),
            event_time: Some(convert::timestamp(now)),
            kind: Some(kind),
        })
        .collect();
    let record = events::ConversationRecord {
        record_id: record_id_text,
        tenant_id: next.tenant.to_string(),
        conversation_id,
        record_time: Some(convert::timestamp(now)),
        state: Some(convert::conversation_state(next)),
        events,
        desk,
        customer_updates: customer,
        route: Some(events::ConversationRoute {
            channel: convert::channel(next.channel) as i32,
            channel_config_id: next.channel_config.to_string(),
            customer_id: next.customer.id.to_string(),
            customer_address: next.customer.address.clone(),
            queue_id: next.queue.to_string(),
            priority: next.priority,
            wait_start_time: Some(convert::timestamp(next.wait_start)),
        }),
    };
    (record, redis)
}

fn event_kind(event: Event, c: &Conversation) -> events::conversation_event::Kind {
    use events::conversation_event::Kind;
    match event {
        Event::Opened => Kind::Opened(events::ConversationOpened {
            channel_config_id: c.channel_config.to_string(),
            customer_address: c.customer.address.clone(),
            customer_display_name: c.customer.display_name.clone(),
            customer_verified_phone: c.customer.verified_phone.clone(),
            queue_id: c.queue.to_string(),
            priority: c.priority,
        }),
        Event::MessageReceived(m) => Kind::MessageReceived(convert::message(&m)),
        Event::MessageSent(m) => Kind::MessageSent(convert::message(&m)),
        Event::Queued { queue, priority, reason } => Kind::Queued(events::ConversationQueued {
            queue_id: queue.to_string(),
            priority,
            reason: reason.as_str().to_owned(),
        }),
        Event::Offered { operator, expires } => Kind::Offered(events::ConversationOffered {
            operator_id: operator.to_string(),
            expire_time: Some(convert::timestamp(expires)),
        }),
        Event::Assigned { operator, reason, note } => Kind::Assigned(events::ConversationAssigned {
            operator_id: operator.to_string(),
            reason: reason.as_str().to_owned(),
            transfer_note: note,
        }),
        Event::Closed { by, reason } => Kind::Closed(events::ConversationClosed { closed_by: by, reason }),
        Event::Delivery(change) => Kind::Delivery(delivery_update(c, change)),
    }
}

fn delivery_update(c: &Conversation, change: DeliveryChange) -> v1::DeliveryUpdate {
    v1::DeliveryUpdate {
        message_id: change.message.to_string(),
        conversation_id: c.id.to_string(),
        state: convert::delivery_state(change.state) as i32,
        failure_reason: change.reason,
        update_time: Some(convert::timestamp(change.at)),
    }
}

/// A routing decision as recorded: who was considered, with what, and why.
#[derive(Debug, Clone)]
pub struct Explained {
    pub decision: parley_policy::Decision,
    pub requirements: parley_domain::routing::Requirements,
    /// Overrides the strategy's name when the conversation waited for one operator.
    pub strategy: Option<&'static str>,
}

/// The routing decision as protobuf.
pub fn decision_proto(
    conversation: &Conversation,
    e: &Explained,
    id: uuid::Uuid,
    now: Timestamp,
) -> v1::RoutingDecision {
    let d = &e.decision;
    v1::RoutingDecision {
        id: id.to_string(),
        conversation_id: conversation.id.to_string(),
        queue_id: conversation.queue.to_string(),
        chosen_operator_id: d.chosen.as_ref().map(|o| o.to_string()).unwrap_or_default(),
        reason: d.reason.clone(),
        candidates: d
            .assessments
            .iter()
            .map(|a| v1::RoutingCandidate {
                operator_id: a.operator.to_string(),
                excluded_because: a.excluded.as_ref().map(|e| e.to_string()).unwrap_or_default(),
                load: a.load,
                capacity: a.capacity,
                weighted_load: f64::from(a.weighted_load_milli) / 1000.0,
                score: a.score,
            })
            .collect(),
        decide_time: Some(convert::timestamp(now)),
        strategy: e.strategy.unwrap_or(d.strategy).to_owned(),
        tie_breaker: d.tie_breaker.unwrap_or_default().to_owned(),
        required_skills: e.requirements.skills.iter().map(convert::skill_level).collect(),
        language: e.requirements.language.clone().unwrap_or_default(),
    }
}

/// The routing decision as an event.
pub fn decision_event(
    conversation: &Conversation,
    e: &Explained,
    id: uuid::Uuid,
    now: Timestamp,
) -> events::conversation_event::Kind {
    events::conversation_event::Kind::Decision(decision_proto(conversation, e, id, now))
}
