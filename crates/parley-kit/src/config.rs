//! Layered configuration: defaults → TOML file → `PARLEY_SECTION__KEY` environment →
//! `--set section.key=value` flags, each layer overriding the one before. Unknown keys
//! and invalid values are refused with a message naming the key and where it came from.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A secret value: never printed, logged or shown in `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("\"\"") } else { f.write_str("\"***\"") }
    }
}

/// The configuration flags every Parley binary takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// A TOML configuration file.
    #[arg(long, short = 'c', env = "PARLEY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides one key, e.g. `--set server.grpc_addr=0.0.0.0:7001`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// The configuration is unusable; the message says which key and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A configuration that can check its own values beyond their types.
pub trait Validate {
    fn validate(&self) -> Result<(), String>;
}

/// Loads `T` from its defaults, the file, the environment and the flags, then validates.
pub fn load<T>(args: &ConfigArgs) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = &args.config {
        if !path.exists() {
            return Err(ConfigError::Parse(format!("config file {} does not exist", path.display())));
        }
        figment = figment.merge(Toml::file(path));
    }
    // Only `PARLEY_SECTION__KEY` names of this service's sections are its configuration:
    // one environment can serve every service (each takes its own sections), and other
    // `PARLEY_*` variables (for scripts and tests) are not configuration at all.
    let sections: Vec<String> = match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    figment = figment.merge(
        Env::prefixed("PARLEY_")
            .filter(move |k| {
                k.as_str()
                    .split_once("__")
                    .is_some_and(|(section, _)| sections.iter().any(|s| s.eq_ignore_ascii_case(section)))
            })
            .split("__"),
    );
    for item in &args.set {
        let (key, value) =
            item.split_once('=').ok_or_else(|| ConfigError::Parse(format!("--set {item:?}: expected KEY=VALUE")))?;
        figment = figment.merge((key.trim(), parse_flag_value(value)));
    }
    let config: T = figment.extract().map_err(|e| ConfigError::Parse(flatten(e)))?;
    config.validate().map_err(ConfigError::Invalid)?;
    Ok(config)
}

/// A flag value as TOML would read it (numbers, booleans), else as a string.
fn parse_flag_value(value: &str) -> figment::value::Value {
    match value {
        "true" => figment::value::Value::from(true),
        "false" => figment::value::Value::from(false),
        _ => value
            .parse::<i64>()
            .map(figment::value::Value::from)
            .or_else(|_| value.parse::<f64>().map(figment::value::Value::from))
            .unwrap_or_else(|_| figment::value::Value::from(value.to_owned())),
    }
}

fn flatten(e: figment::Error) -> String {
    e.into_iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

/// Where a service listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The gRPC API (with health and reflection).
    pub grpc_addr: SocketAddr,
    /// HTTP: `/metrics` for Prometheus, `/healthz`, `/readyz` (and webhooks, for ingest).
    pub http_addr: SocketAddr,
    /// How long a shutdown waits for in-flight work before giving up.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    /// Every service config sets its own ports; this default (any free port) is only what
    /// serde falls back to.
    fn default() -> Self {
        Self::on_ports(0, 0)
    }
}

impl ServerConfig {
    /// Defaults for a service whose gRPC port is `grpc` and HTTP port `http`.
    pub fn on_ports(grpc: u16, http: u16) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], http)),
            shutdown_grace_secs: 20,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.shutdown_grace_secs == 0 || self.shutdown_grace_secs > 600 {
            return Err("server.shutdown_grace_secs must be 1 to 600".into());
        }
        Ok(())
    }
}

/// NATS and JetStream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub url: String,
    /// JetStream replicas for Parley's streams and buckets (1, or 3/5 in a cluster).
    pub replicas: usize,
    /// How long JetStream remembers message ids to drop republished duplicates.
    pub dedupe_window_secs: u64,
    /// Consumers allowed on the streams followed per session (`PARLEY_DESK`: one per open
    /// desk session; `PARLEY_OUTBOUND`: one per web chat visitor's socket or poll). NATS
    /// 2.15 limits every stream to 1 000 consumers unless the stream says otherwise.
    pub max_session_consumers: i32,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            replicas: 1,
            dedupe_window_secs: 24 * 3600,
            max_session_consumers: 100_000,
        }
    }
}

impl NatsConfig {
    fn validate(&self) -> Result<(), String> {
        if !self.url.starts_with("nats://") && !self.url.starts_with("tls://") {
            return Err(format!("nats.url {:?} must start with nats:// or tls://", self.url));
        }
        if ![1, 3, 5].contains(&self.replicas) {
            return Err(format!("nats.replicas must be 1, 3 or 5, got {}", self.replicas));
        }
        if !(60..=7 * 24 * 3600).contains(&self.dedupe_window_secs) {
            return Err("nats.dedupe_window_secs must be 60 to 604800".into());
        }
        if !(1_000..=10_000_000).contains(&self.max_session_consumers) {
            return Err("nats.max_session_consumers must be 1000 to 10000000".into());
        }
        Ok(())
    }
}

/// Redis, for presence, capacity and queues.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: "redis://127.0.0.1:6379".into() }
    }
}

impl RedisConfig {
    fn validate(&self) -> Result<(), String> {
        if !self.url.starts_with("redis://") && !self.url.starts_with("rediss://") {
            return Err(format!("redis.url {:?} must start with redis:// or rediss://", self.url));
        }
        Ok(())
    }
}

/// Token signing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The HMAC key tokens are signed with: at least 32 bytes, the same in every service.
    pub signing_key: Secret,
}

impl AuthConfig {
    fn validate(&self) -> Result<(), String> {
        if self.signing_key.expose().len() < 32 {
            return Err("auth.signing_key must be set to at least 32 bytes (PARLEY_AUTH__SIGNING_KEY)".into());
        }
        Ok(())
    }
}

/// Logs and traces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// A `tracing` filter, e.g. `info,parley_routing=debug`.
    pub log_filter: String,
    /// `text` or `json`.
    pub log_format: String,
    /// An OTLP/gRPC endpoint (`http://collector:4317`); empty disables export.
    pub otlp_endpoint: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { log_filter: "info".into(), log_format: "text".into(), otlp_endpoint: String::new() }
    }
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), String> {
        if !["text", "json"].contains(&self.log_format.as_str()) {
            return Err(format!("telemetry.log_format must be text or json, got {:?}", self.log_format));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_filter)
            .map_err(|e| format!("telemetry.log_filter {:?}: {e}", self.log_filter))?;
        if !self.otlp_endpoint.is_empty()
            && !self.otlp_endpoint.starts_with("http://")
            && !self.otlp_endpoint.starts_with("https://")
        {
            return Err(format!("telemetry.otlp_endpoint {:?} must be an http(s) URL", self.otlp_endpoint));
        }
        Ok(())
    }
}

/// The sections every service shares, validated together.
pub fn validate_common(
    server: &ServerConfig,
    auth: &AuthConfig,
    telemetry: &TelemetryConfig,
    nats: &NatsConfig,
) -> Result<(), String> {
    server.validate()?;
    auth.validate()?;
    telemetry.validate()?;
    nats.validate()
}

/// Validates a Redis section (for the services that use Redis).
pub fn validate_redis(redis: &RedisConfig) -> Result<(), String> {
    redis.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        server: SampleServer,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct SampleServer {
        port: u16,
        name: String,
    }

    impl Default for SampleServer {
        fn default() -> Self {
            Self { port: 1, name: "a".into() }
        }
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), String> {
            if self.server.port == 0 { Err("server.port must not be 0".into()) } else { Ok(()) }
        }
    }

    #[test]
    fn layers_override_in_order_and_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("parley-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[server]\nport = 2\nname = \"file\"\n").unwrap();
        let args = ConfigArgs { config: Some(file.clone()), set: vec!["server.name=flag".into()] };
        let c: Sample = load(&args).unwrap();
        assert_eq!((c.server.port, c.server.name.as_str()), (2, "flag"));

        let args = ConfigArgs { config: None, set: vec!["server.port=0".into()] };
        let err = load::<Sample>(&args).unwrap_err().to_string();
        assert!(err.contains("server.port must not be 0"), "{err}");

        let args = ConfigArgs { config: None, set: vec!["server.port=abc".into()] };
        let err = load::<Sample>(&args).unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");

        std::fs::write(&file, "[server]\nprot = 2\n").unwrap();
        let args = ConfigArgs { config: Some(file), set: vec![] };
        let err = load::<Sample>(&args).unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");

        let args = ConfigArgs { config: None, set: vec!["novalue".into()] };
        assert!(load::<Sample>(&args).unwrap_err().to_string().contains("KEY=VALUE"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "\"***\"");
    }
}
