//! Parley's contracts: the public gRPC API (`parley.v1`) and the payloads of its JetStream
//! streams and key-value entries (`parley.events.v1`), generated from `proto/` at build
//! time, plus the conversions between them and the domain types.
//!
//! *API boundary*: prost types stop here. Services convert at their edge with [`convert`]
//! and hand domain types to the core.

/// Generated code, nested as the protobuf packages are (cross-package paths use `super`).
#[allow(clippy::all, missing_docs)]
pub mod parley {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/parley.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/parley.v1.serde.rs"));
    }
    pub mod events {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/parley.events.v1.rs"));
        }
    }
}

pub use parley::events::v1 as events;
pub use parley::v1;

pub mod convert;
pub mod wkt;

pub use wkt::{Duration, Timestamp};

/// The encoded `FileDescriptorSet` of every Parley proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/parley_descriptor.bin"));

pub use prost;

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_types::{DescriptorProto, FileDescriptorSet};

    fn message(fds: &FileDescriptorSet, name: &str) -> DescriptorProto {
        fds.file
            .iter()
            .filter(|f| f.package() == "parley.events.v1")
            .flat_map(|f| f.message_type.iter())
            .find(|m| m.name() == name)
            .cloned()
            .unwrap_or_else(|| panic!("message {name} in the descriptor set"))
    }

    /// A view reads another message's bytes: each of its fields must be that message's
    /// field of the same number, name, type and label.
    fn assert_view(view: &str, of: &str) {
        let fds = FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let (view, of) = (message(&fds, view), message(&fds, of));
        for f in &view.field {
            let twin = of.field.iter().find(|g| g.number() == f.number()).unwrap_or_else(|| {
                panic!("{}.{} (#{}) has no twin in {}", view.name(), f.name(), f.number(), of.name())
            });
            assert_eq!((twin.name(), twin.r#type(), twin.label()), (f.name(), f.r#type(), f.label()), "{}", f.name());
            if twin.type_name() != f.type_name() {
                // A message field may itself be read through a view of its type.
                let short = |t: &str| t.rsplit('.').next().unwrap_or(t).to_owned();
                assert_view(&short(f.type_name()), &short(twin.type_name()));
            }
        }
    }

    #[test]
    fn record_views_match_the_record() {
        assert_view("ConversationRecordDeliveries", "ConversationRecord");
        assert_view("ConversationRecordHistory", "ConversationRecord");
        assert_view("ConversationStateSummary", "ConversationState");
    }
}
