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

/// The encoded `FileDescriptorSet` of every Parley proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/parley_descriptor.bin"));

pub use prost;
pub use prost_types;
