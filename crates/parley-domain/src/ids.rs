//! Identifiers: slugs for things people name (tenants, operators, queues) and UUIDs for
//! things Parley creates (conversations, messages, customers). All parse; none generate.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::Channel;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is invalid: {why}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
    pub why: &'static str,
}

/// Checks the slug shape shared by every named id: `[a-z][a-z0-9-]{1,62}`, no trailing '-'.
///
/// The shape is what makes a slug safe as one token of a NATS subject, a Redis key and a
/// key-value key, which is why nothing looser is accepted anywhere.
fn check_slug(kind: &'static str, value: &str) -> Result<(), InvalidId> {
    let err = |why| InvalidId { kind, value: value.chars().take(80).collect(), why };
    if value.len() < 2 || value.len() > 63 {
        return Err(err("must be 2 to 63 characters"));
    }
    let bytes = value.as_bytes();
    if !bytes[0].is_ascii_lowercase() {
        return Err(err("must start with a lowercase letter"));
    }
    if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-') {
        return Err(err("may hold only lowercase letters, digits and '-'"));
    }
    if bytes[bytes.len() - 1] == b'-' {
        return Err(err("must not end with '-'"));
    }
    Ok(())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates.
            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                check_slug($kind, value)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

slug_id!(
    /// A client company of the installation; everything else belongs to exactly one.
    TenantId,
    "tenant id"
);
slug_id!(
    /// An operator, unique within a tenant.
    OperatorId,
    "operator id"
);
slug_id!(
    /// A queue, unique within a tenant.
    QueueId,
    "queue id"
);
slug_id!(
    /// A skill name, unique within a tenant.
    SkillId,
    "skill id"
);
slug_id!(
    /// A team of operators, unique within a tenant.
    TeamId,
    "team id"
);
slug_id!(
    /// One configured channel account (a bot, a number, a mailbox), unique within a tenant.
    ChannelConfigId,
    "channel config id"
);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// Parses the hyphenated form (`xxxxxxxx-xxxx-…`), the only one Parley emits.
            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                if value.len() != 36 {
                    return Err(InvalidId {
                        kind: $kind,
                        value: value.chars().take(80).collect(),
                        why: "must be a UUID in hyphenated form",
                    });
                }
                Uuid::parse_str(value).map(Self).map_err(|_| InvalidId {
                    kind: $kind,
                    value: value.chars().take(80).collect(),
                    why: "must be a UUID in hyphenated form",
                })
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
    };
}

uuid_id!(
    /// A conversation: one customer on one channel from first message to close.
    ConversationId,
    "conversation id"
);
uuid_id!(
    /// A message in either direction.
    MessageId,
    "message id"
);
uuid_id!(
    /// A customer of a tenant, derived from their first channel identity.
    CustomerId,
    "customer id"
);
uuid_id!(
    /// One event of a conversation's log.
    EventId,
    "event id"
);
uuid_id!(
    /// A file sent with a message; its bytes live in the media store under the tenant.
    AttachmentId,
    "attachment id"
);

/// The namespace of every name-based (v5) UUID Parley derives.
const PARLEY_NAMESPACE: Uuid = Uuid::from_u128(0x7061_726c_6579_4000_8000_0000_0000_0001);

fn derive(parts: &[&str]) -> Uuid {
    // A separator that cannot appear inside the parts keeps ("a","bc") apart from ("ab","c").
    let joined = parts.join("\u{1f}");
    Uuid::new_v5(&PARLEY_NAMESPACE, joined.as_bytes())
}

impl CustomerId {
    /// The customer id for an address on a channel of a tenant: the same address always
    /// yields the same id, so ingest needs no lookup to name a customer.
    pub fn derive(tenant: &TenantId, channel: Channel, address: &str) -> Self {
        Self(derive(&["customer", tenant.as_str(), channel.as_str(), address]))
    }
}

impl MessageId {
    /// The message id for a dedupe key (a provider id or an idempotency key): a retried
    /// submission gets the id of the first one.
    pub fn derive(tenant: &TenantId, scope: &str, key: &str) -> Self {
        Self(derive(&["message", tenant.as_str(), scope, key]))
    }
}

impl ConversationId {
    /// The id of the conversation a message opens, so reprocessing the same message after
    /// a crash finds the conversation it already created.
    pub fn opened_by(message: MessageId) -> Self {
        Self(derive(&["conversation", &message.to_string()]))
    }
}

impl AttachmentId {
    /// The id of a message's attachment at a position: a redelivered message names the
    /// same files.
    pub fn derive(message: MessageId, position: usize) -> Self {
        Self(derive(&["attachment", &message.to_string(), &position.to_string()]))
    }
}

impl EventId {
    /// A stable event id from what the event is about, so a republish is deduplicated.
    pub fn derive(parts: &[&str]) -> Self {
        Self(derive(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_accept_the_documented_shape_only() {
        for ok in ["ab", "acme", "acme-bank", "a1", "x-2-y"] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "Acme", "1acme", "acme-", "ac me", "ac.me", "ac*", "ac>", "ас", &"a".repeat(64)] {
            let err = TenantId::parse(bad).unwrap_err();
            assert_eq!(err.kind, "tenant id");
        }
    }

    #[test]
    fn uuid_ids_take_hyphenated_form_only() {
        let id = ConversationId::parse("0190a6f2-8f1e-7c3a-9d4e-0123456789ab").unwrap();
        assert_eq!(id.to_string(), "0190a6f2-8f1e-7c3a-9d4e-0123456789ab");
        assert!(ConversationId::parse("0190a6f28f1e7c3a9d4e0123456789ab").is_err());
        assert!(ConversationId::parse("not-a-uuid").is_err());
        assert!(ConversationId::parse("").is_err());
    }

    #[test]
    fn derived_ids_are_stable_and_separate_parts() {
        let t = TenantId::parse("acme").unwrap();
        let a = CustomerId::derive(&t, Channel::Api, "c-1");
        assert_eq!(a, CustomerId::derive(&t, Channel::Api, "c-1"));
        assert_ne!(a, CustomerId::derive(&t, Channel::Sms, "c-1"));
        let other = TenantId::parse("acme2").unwrap();
        assert_ne!(a, CustomerId::derive(&other, Channel::Api, "c-1"));
        assert_ne!(MessageId::derive(&t, "a", "bc"), MessageId::derive(&t, "ab", "c"));
    }
}
