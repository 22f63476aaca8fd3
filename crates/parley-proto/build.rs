//! Compiles `proto/` with protox (pure Rust, so no `protoc` is needed) into prost/tonic code.

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
    std::fs::write(out.join("parley_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
