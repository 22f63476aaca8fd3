//! What a customer's erasure removes outside PostgreSQL: their records on the streams.
//!
//! The conversation log and the reply stream have a subject per conversation or customer,
//! so those are purged by subject. The inbound stream (per tenant and channel), the desk
//! feeds (per operator) and the dead letters (per consumer) mix customers on one subject:
//! they are read through and only the erased customer's messages are deleted, each picked
//! by the ids it carries (the customer's id, their conversations' ids, their addresses), so
//! another customer's message still waiting there is never touched.

use std::collections::HashSet;

use parley_domain::{ConversationId, TenantId};
use parley_nats::{Nats, topology};
use parley_pg::Erased;
use parley_proto::prost::Message as _;
use parley_proto::{events, v1};
use uuid::Uuid;

/// Removes the erased customer's records from every stream; returns how many.
pub async fn purge_streams(nats: &Nats, tenant: &TenantId, customer: Uuid, erased: &Erased) -> anyhow::Result<u64> {
    let mut removed = 0;
    for c in &erased.conversations {
        let subject = topology::events_subject(tenant, ConversationId::from_uuid(*c));
        removed += nats.purge(topology::EVENTS, &subject).await?;
    }
    removed += nats.purge(topology::OUTBOUND, &format!("parley.outbound.{tenant}.*.{customer}")).await?;
    let doomed = Doomed::new(tenant, customer, erased);
    removed +=
        nats.delete_where(topology::INBOUND, &format!("parley.inbound.{tenant}.>"), |p| doomed.inbound(p)).await?;
    removed += nats.delete_where(topology::DESK, &format!("parley.desk.{tenant}.>"), |p| doomed.desk(p)).await?;
    removed += nats.delete_where(topology::DEAD, "parley.dead.>", |p| doomed.dead_letter(p)).await?;
    Ok(removed)
}

/// What marks a stream message as the erased customer's.
struct Doomed {
    tenant: String,
    customer: String,
    conversations: HashSet<String>,
    addresses: HashSet<String>,
}

impl Doomed {
    fn new(tenant: &TenantId, customer: Uuid, erased: &Erased) -> Self {
        Self {
            tenant: tenant.to_string(),
            customer: customer.to_string(),
            conversations: erased.conversations.iter().map(Uuid::to_string).collect(),
            addresses: erased.addresses.iter().cloned().collect(),
        }
    }

    /// A customer message, a typing signal or a delivery receipt of the customer.
    fn inbound(&self, payload: &[u8]) -> bool {
        use events::inbound_envelope::Kind;
        let Ok(envelope) = events::InboundEnvelope::decode(payload) else { return false };
        match envelope.kind {
            Some(Kind::CustomerMessage(m)) => {
                m.tenant_id == self.tenant
                    && (m.customer_id == self.customer || self.conversations.contains(&m.thread_conversation_id))
            }
            Some(Kind::CustomerTyping(t)) => {
                t.tenant_id == self.tenant && self.conversations.contains(&t.conversation_id)
            }
            Some(Kind::DeliveryReceipt(r)) => {
                r.tenant_id == self.tenant && !r.recipient.is_empty() && self.addresses.contains(&r.recipient)
            }
            None => false,
        }
    }

    /// Any desk event about one of the customer's conversations.
    fn desk(&self, payload: &[u8]) -> bool {
        use v1::desk_event::Kind;
        let Ok(event) = v1::DeskEvent::decode(payload) else { return false };
        let conversation = match &event.kind {
            Some(Kind::Offered(o)) => o.conversation.as_ref().map(|c| c.id.as_str()),
            Some(Kind::Assigned(a)) => a.conversation.as_ref().map(|c| c.id.as_str()),
            Some(Kind::Message(m)) => Some(m.conversation_id.as_str()),
            Some(Kind::Released(r)) => Some(r.conversation_id.as_str()),
            Some(Kind::Delivery(d)) => Some(d.conversation_id.as_str()),
            Some(Kind::Typing(t)) => Some(t.conversation_id.as_str()),
            Some(Kind::Presence(_)) | None => None,
        };
        conversation.is_some_and(|c| self.conversations.contains(c))
    }

    /// A dead letter (any schema) that names the customer or one of their conversations.
    fn dead_letter(&self, payload: &[u8]) -> bool {
        let contains = |needle: &str| payload.windows(needle.len()).any(|w| w == needle.as_bytes());
        contains(&self.customer) || self.conversations.iter().any(|c| contains(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doomed() -> Doomed {
        let erased = Erased {
            receipt_id: Uuid::nil(),
            erased_at: parley_kit::clock::now(),
            conversations: vec![Uuid::from_u128(2)],
            messages: 0,
            identities: 1,
            addresses: vec!["+79990001122".into()],
            attachments: Vec::new(),
        };
        Doomed::new(&TenantId::parse("acme").unwrap(), Uuid::from_u128(1), &erased)
    }

    fn inbound(kind: events::inbound_envelope::Kind) -> Vec<u8> {
        events::InboundEnvelope { kind: Some(kind) }.encode_to_vec()
    }

    #[test]
    fn only_the_customers_inbound_records_are_picked() {
        use events::inbound_envelope::Kind;
        let d = doomed();
        let message = |tenant: &str, customer: u128| {
            inbound(Kind::CustomerMessage(events::CustomerMessage {
                tenant_id: tenant.into(),
                customer_id: Uuid::from_u128(customer).to_string(),
                text: "hello".into(),
                ..Default::default()
            }))
        };
        assert!(d.inbound(&message("acme", 1)));
        assert!(!d.inbound(&message("acme", 3)), "another customer");
        assert!(!d.inbound(&message("globex", 1)), "another tenant");
        let receipt = |to: &str| {
            inbound(Kind::DeliveryReceipt(events::DeliveryReceipt {
                tenant_id: "acme".into(),
                recipient: to.into(),
                ..Default::default()
            }))
        };
        assert!(d.inbound(&receipt("+79990001122")));
        assert!(!d.inbound(&receipt("")), "a receipt that names nobody");
        assert!(!d.inbound(&receipt("+79990001123")));
        let typing = |c: u128| {
            inbound(Kind::CustomerTyping(events::CustomerTyping {
                tenant_id: "acme".into(),
                conversation_id: Uuid::from_u128(c).to_string(),
                ..Default::default()
            }))
        };
        assert!(d.inbound(&typing(2)));
        assert!(!d.inbound(&typing(4)));
        assert!(!d.inbound(b"\xff\xfe not protobuf"), "undecodable: left alone");
    }

    #[test]
    fn desk_events_and_dead_letters_are_picked_by_conversation() {
        use v1::desk_event::Kind;
        let d = doomed();
        let released = |c: u128| {
            v1::DeskEvent {
                kind: Some(Kind::Released(v1::ConversationReleased {
                    conversation_id: Uuid::from_u128(c).to_string(),
                    reason: "closed".into(),
                })),
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert!(d.desk(&released(2)));
        assert!(!d.desk(&released(4)));
        assert!(d.dead_letter(&released(2)));
        assert!(d.dead_letter(Uuid::from_u128(1).to_string().as_bytes()));
        assert!(!d.dead_letter(&released(4)));
    }
}
