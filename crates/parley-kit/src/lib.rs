//! Parley's shared kit, used by every service binary and the CLI.
//!
//! Layout:
//! - [`config`]: defaults → file → `PARLEY_SECTION__KEY` env → `--set` flags, validated.
//! - [`telemetry`]: tracing + OpenTelemetry (OTLP), trace context propagation, Prometheus.
//! - [`auth`]: HS256 bearer tokens, the gRPC interceptor, role checks.
//! - [`error`]: API errors and their gRPC status codes.
//! - [`runtime`]: signals, supervision and drain, gRPC and HTTP servers, `main` wrapper.
//! - [`clock`]: the only place time is read and ids are drawn.

pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod runtime;
pub mod telemetry;

pub use error::{ApiError, ApiResult};

/// The HTTP framework of the services' HTTP ports, re-exported so they share one version.
pub use axum;

/// Every Parley binary links this crate, so this sets their allocator: mimalloc, because
/// the message path allocates many small, short-lived buffers (protobuf, headers) across
/// threads, where glibc's malloc spent a sixth of the CPU in `make bench`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
