//! The `parley-ingest` binary: configuration, telemetry, run until SIGTERM, drain.

parley_kit::service_main!(
    "parley-ingest",
    "Parley's ingest service: channel edges, customer messages in",
    parley_ingest::start
);
