//! The `parley-routing` binary: configuration, telemetry, run until SIGTERM, drain.

parley_kit::service_main!(
    "parley-routing",
    "Parley's routing service: conversations, presence, assignment and the admin API",
    parley_routing::start
);
