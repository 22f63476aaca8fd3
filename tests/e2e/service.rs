//! What every service binary promises an operator of the installation: invalid
//! configuration exits 64 saying which key is wrong; SIGTERM drains and exits 0; gRPC
//! health, Prometheus metrics and readiness answer.

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use parley_testkit::{App, Infra, ServiceProcess, binary};

/// Runs a service binary with the given settings and returns (exit code, stderr).
fn run_with(bin: &str, env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(binary(bin));
    cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("binary runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const KEY: (&str, &str) = ("PARLEY_AUTH__SIGNING_KEY", "0123456789abcdef0123456789abcdef");

#[test]
fn invalid_configuration_exits_64_and_names_the_key() {
    for bin in ["parley-ingest", "parley-routing", "parley-history", "parley-notification"] {
        let (code, err) = run_with(bin, &[], &[]);
        assert_eq!(code, Some(64), "{bin}: {err}");
        assert!(err.contains("auth.signing_key"), "{bin}: {err}");
    }
    /// (environment, flags, what the error must name)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: [Case; 6] = [
        (&[KEY], &["--set", "routing.lanes=0"], "routing.lanes"),
        (&[KEY, ("PARLEY_SERVER__GRPC_ADDR", "not-an-address")], &[], "grpc_addr"),
        (&[KEY, ("PARLEY_NATS__URL", "http://wrong")], &[], "nats.url"),
        (&[KEY, ("PARLEY_TELEMETRY__LOG_FORMAT", "xml")], &[], "log_format"),
        (&[KEY], &["--set", "routing.no_such_knob=1"], "no_such_knob"),
        (&[KEY], &["--config", "/nonexistent/parley.toml"], "does not exist"),
    ];
    for (env, args, says) in cases {
        let (code, err) = run_with("parley-routing", env, args);
        assert_eq!(code, Some(64), "{args:?}: {err}");
        // Keys from the environment are named as written there (upper case).
        assert!(err.to_lowercase().contains(says), "{args:?} should say {says}: {err}");
    }
    let (code, err) = run_with("parley-history", &[KEY, ("PARLEY_DATABASE__POOL_SIZE", "0")], &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("database.pool_size"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let infra = Infra::start().await.unwrap();
    let env = [
        ("PARLEY_NATS__URL", infra.nats.url()),
        ("PARLEY_REDIS__URL", infra.redis.url()),
        (KEY.0, KEY.1.to_owned()),
        ("PARLEY_DATABASE__URL", infra.db.url()),
    ];
    for bin in ["parley-routing", "parley-ingest", "parley-notification", "parley-history"] {
        let mut service = ServiceProcess::spawn(bin, &env).expect("service starts");
        let code = tokio::task::spawn_blocking(move || service.terminate()).await.unwrap().unwrap();
        assert_eq!(code, Some(0), "{bin} exits 0 after SIGTERM");
    }
}

/// A bare HTTP/1.1 GET; returns (status, body).
fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_metrics_and_readiness_answer() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(parley_testkit::connect(app.addrs().routing).await);
    let serving =
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // One refused call, so the metrics have something to count.
    let mut anna = app.routing_client(fx.operator_token("anna")).await;
    let _ = anna.list_operator_presences(parley_proto::v1::ListOperatorPresencesRequest {}).await;
    let http = app.routing.as_ref().unwrap().http_addr;
    let (status, body) = tokio::task::spawn_blocking(move || http_get(http, "/metrics")).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("parley_grpc_requests_total{"), "{body}");
    assert!(body.contains("code=\"PERMISSION_DENIED\""), "{body}");
    assert!(body.contains("service=\"routing\""), "{body}");
    let (status, _) = tokio::task::spawn_blocking(move || http_get(http, "/readyz")).await.unwrap();
    assert_eq!(status, 200);
    app.stop().await;
}
