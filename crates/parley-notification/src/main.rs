//! The `parley-notification` binary: configuration, telemetry, run until SIGTERM, drain.

parley_kit::service_main!(
    "parley-notification",
    "Parley's notification service: operator desk sessions and replies",
    parley_notification::start
);
