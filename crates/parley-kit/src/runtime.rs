//! The runtime every service shares: one cancellation token fired by SIGTERM/SIGINT, the
//! gRPC server (with health, reflection, trace context and metrics), the HTTP server for
//! `/metrics`, `/healthz` and `/readyz`, and the `main` wrapper.
//!
//! Shutdown order, for every service: the token fires → intake stops (consumers stop
//! pulling, servers refuse new connections) → in-flight work finishes within the grace
//! period → telemetry is flushed → the process exits.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigArgs, Validate};
use crate::telemetry::{self, Metrics, Telemetry};

/// A token cancelled on SIGTERM or SIGINT (Ctrl-C).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        fire.cancel();
    });
    token
}

/// Whether the service is ready for traffic (`/readyz`).
#[derive(Clone, Default, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The HTTP routes every service has: Prometheus `/metrics`, liveness, readiness.
pub fn ops_router(metrics: Metrics, readiness: Readiness) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let r = readiness.clone();
                async move {
                    if r.get() {
                        (http::StatusCode::OK, "ready")
                    } else {
                        (http::StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

/// Binds a TCP listener, with the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Serves HTTP until the token fires, then finishes open requests.
pub async fn serve_http(listener: TcpListener, router: axum::Router, token: CancellationToken) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|s| {
        if let Err(e) = s.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router).with_graceful_shutdown(token.cancelled_owned()).await?;
    Ok(())
}

/// Serves gRPC: the given routes plus `grpc.health.v1` and server reflection, with a span
/// per request (child of the caller's trace), per-RPC metrics and bearer-token auth. Stops accepting when the
/// token fires and returns once open calls finish.
pub async fn serve_grpc(
    listener: TcpListener,
    routes: tonic::service::Routes,
    auth: crate::auth::Authenticator,
    metrics: Metrics,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(parley_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Replies are small and latency matters: without TCP_NODELAY, Nagle's algorithm and
    // delayed ACKs hold some responses for 40 ms (seen as the p99 in `make bench`).
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
        conn.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    });
    let shutdown = {
        let token = token.clone();
        async move {
            token.cancelled().await;
            reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        }
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .trace_fn(telemetry::grpc_request_span)
        .layer(telemetry::RpcMetricsLayer::new(metrics))
        .layer(crate::auth::AuthLayer::new(auth))
        .add_routes(routes)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Runs a service binary: parse config (exit 64 with the reason if invalid), start
/// telemetry, run `serve` until SIGTERM/SIGINT and its drain finish, flush telemetry.
pub async fn run_main<C, F, Fut>(service: &'static str, args: ConfigArgs, serve: F) -> ExitCode
where
    C: serde::Serialize + serde::de::DeserializeOwned + Default + Validate,
    F: FnOnce(C, Metrics, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
    C: HasTelemetry,
{
    let config: C = match crate::config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{service}: {e}");
            return ExitCode::from(64);
        }
    };
    let telemetry: Telemetry = match telemetry::init(service, config.telemetry()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{service}: cannot start telemetry: {e:#}");
            return ExitCode::from(70);
        }
    };
    let token = shutdown_on_signals();
    let metrics = telemetry.metrics.clone();
    let result = serve(config, metrics, token).await;
    let code = match result {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "stopped with an error");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

/// A service configuration with a telemetry section.
pub trait HasTelemetry {
    fn telemetry(&self) -> &crate::config::TelemetryConfig;
}

/// Runs a service's tasks until the token fires or one of them fails (which fires the
/// token, so the others stop too), then waits up to `grace` for the rest to drain.
pub async fn supervise(
    name: &str,
    mut tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    token: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut first_error: Option<anyhow::Error> = None;
    let note = |result: Option<Result<anyhow::Result<()>, tokio::task::JoinError>>,
                first: &mut Option<anyhow::Error>| {
        match result {
            None | Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => {
                tracing::error!(service = name, error = format!("{e:#}"), "task failed");
                first.get_or_insert(e);
            }
            Some(Err(join)) => {
                tracing::error!(service = name, error = %join, "task panicked");
                first.get_or_insert(anyhow::anyhow!("task panicked: {join}"));
            }
        }
    };
    // Run until asked to stop, or until any task ends on its own (which is a failure:
    // every task is meant to run until the token fires).
    while !token.is_cancelled() && !tasks.is_empty() {
        tokio::select! {
            _ = token.cancelled() => {}
            r = tasks.join_next() => {
                note(r, &mut first_error);
                if !token.is_cancelled() {
                    first_error.get_or_insert_with(|| anyhow::anyhow!("a task of {name} stopped unexpectedly"));
                    token.cancel();
                }
            }
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(None) => break,
            Ok(r) => note(r, &mut first_error),
            Err(_) => {
                tracing::warn!(service = name, left = tasks.len(), "grace period over; aborting the rest");
                tasks.abort_all();
                break;
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Binds a service's gRPC and HTTP listeners, serves them (the HTTP port with `extra_http`
/// routes beside `/metrics`, `/healthz` and `/readyz`), and supervises them together with
/// the service's own `tasks` until the token fires.
#[allow(clippy::too_many_arguments)]
pub async fn launch(
    name: &'static str,
    server: &crate::config::ServerConfig,
    routes: tonic::service::Routes,
    extra_http: axum::Router,
    auth: crate::auth::Authenticator,
    metrics: Metrics,
    token: CancellationToken,
    mut tasks: tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<ServiceHandle> {
    let grpc = bind(server.grpc_addr).await?;
    let http = bind(server.http_addr).await?;
    let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    let readiness = Readiness::default();
    tasks.spawn(serve_grpc(grpc, routes, auth, metrics.clone(), token.clone()));
    tasks.spawn(serve_http(http, ops_router(metrics, readiness.clone()).merge(extra_http), token.clone()));
    readiness.set(true);
    tracing::info!(service = name, %grpc_addr, %http_addr, "started");
    let grace = Duration::from_secs(server.shutdown_grace_secs);
    let task = tokio::spawn(supervise(name, tasks, token.clone(), grace));
    Ok(ServiceHandle::new(name, grpc_addr, http_addr, token, task))
}

/// A running service: where it listens, and how to stop it (Options → Service → Handle).
#[derive(Debug)]
pub struct ServiceHandle {
    pub name: &'static str,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Listeners a service has beside its gRPC and ops ports (ingest's public webhooks),
    /// by name, so callers that bound port 0 can find them.
    listeners: Vec<(&'static str, SocketAddr)>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ServiceHandle {
    /// Wraps a started service's supervision task.
    pub fn new(
        name: &'static str,
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
        token: CancellationToken,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    ) -> Self {
        Self { name, grpc_addr, http_addr, listeners: Vec::new(), token, task }
    }

    /// Names another listener of the service (see [`ServiceHandle::listener`]).
    #[must_use]
    pub fn with_listener(mut self, name: &'static str, addr: SocketAddr) -> Self {
        self.listeners.push((name, addr));
        self
    }

    /// Where the service's listener of that name is bound, if it has one.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// The token that stops the service.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Waits until the service stops (its token fired and it drained, or it failed).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.map_err(|e| anyhow::anyhow!("{} panicked: {e}", self.name))?
    }

    /// Stops the service and waits for it to drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.wait().await
    }
}

/// The whole `main.rs` of a service binary: parse the shared flags, then [`run_main`] with
/// the service's `start`, waiting for it to stop.
#[macro_export]
macro_rules! service_main {
    ($name:literal, $about:literal, $start:path) => {
        #[derive(::clap::Parser)]
        #[command(name = $name, version, about = $about)]
        struct Cli {
            #[command(flatten)]
            config: $crate::config::ConfigArgs,
        }

        #[tokio::main]
        async fn main() -> ::std::process::ExitCode {
            let cli = <Cli as ::clap::Parser>::parse();
            $crate::runtime::run_main($name, cli.config, |config, metrics, token| async move {
                $start(config, metrics, token).await?.wait().await
            })
            .await
        }
    };
}
