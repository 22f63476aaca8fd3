//! Compiles `proto/` with protox (pure Rust, so no `protoc` is needed) into prost/tonic code,
//! and the proto3 JSON mapping of the public API (`parley.v1`) with pbjson.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "parley/v1/common.proto",
        "parley/v1/ingest.proto",
        "parley/v1/routing.proto",
        "parley/v1/history.proto",
        "parley/v1/notification.proto",
        "parley/v1/admin.proto",
        "parley/events/v1/events.proto",
    ];
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("parley_descriptor.bin"), &descriptors)?;
    // Timestamps and durations are Parley's own copies of the well-known types, which carry
    // their JSON form (RFC 3339, "1.5s").
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".google.protobuf.Timestamp", "crate::wkt::Timestamp")
        .extern_path(".google.protobuf.Duration", "crate::wkt::Duration")
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .extern_path(".google.protobuf.Timestamp", "crate::wkt::Timestamp")
        .extern_path(".google.protobuf.Duration", "crate::wkt::Duration")
        .build(&[".parley.v1"])?;
    Ok(())
}
