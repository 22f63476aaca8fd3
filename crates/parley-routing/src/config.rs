//! The routing service's configuration.

use parley_kit::config::{AuthConfig, NatsConfig, RedisConfig, ServerConfig, TelemetryConfig, Validate};
use parley_kit::runtime::HasTelemetry;
use serde::{Deserialize, Serialize};

/// Everything the routing service reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub server: ServerConfig,
    pub nats: NatsConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub telemetry: TelemetryConfig,
    pub routing: RoutingSection,
}

/// Routing's own knobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// How often waiting conversations and expired offers are looked at, besides the
    /// immediate attempts when something changes.
    pub dispatch_interval_ms: u64,
    /// Concurrent lanes per consumer (messages of one customer always share a lane).
    pub lanes: usize,
    /// How often reservations are checked against the conversation log (capacity held by
    /// nobody after a crash) and availability recomputed.
    pub reconcile_interval_secs: u64,
    /// How often Redis is brought in line with the whole conversation log (as at start):
    /// what a replica that crashed, and did not come back, left behind.
    pub repair_interval_secs: u64,
    /// How long a message may be in processing before JetStream delivers it again
    /// (to another replica, if this one died).
    pub ack_wait_secs: u64,
}

impl Default for RoutingSection {
    fn default() -> Self {
        Self {
            dispatch_interval_ms: 500,
            lanes: 64,
            reconcile_interval_secs: 60,
            repair_interval_secs: 3600,
            ack_wait_secs: 30,
        }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(7201, 7291),
            nats: NatsConfig::default(),
            redis: RedisConfig::default(),
            auth: AuthConfig::default(),
            telemetry: TelemetryConfig::default(),
            routing: RoutingSection::default(),
        }
    }
}

impl Validate for RoutingConfig {
    fn validate(&self) -> Result<(), String> {
        parley_kit::config::validate_common(&self.server, &self.auth, &self.telemetry, &self.nats)?;
        parley_kit::config::validate_redis(&self.redis)?;
        if !(50..=60_000).contains(&self.routing.dispatch_interval_ms) {
            return Err("routing.dispatch_interval_ms must be 50 to 60000".into());
        }
        if !(1..=1024).contains(&self.routing.lanes) {
            return Err("routing.lanes must be 1 to 1024".into());
        }
        if !(1..=3600).contains(&self.routing.reconcile_interval_secs) {
            return Err("routing.reconcile_interval_secs must be 1 to 3600".into());
        }
        if !(1..=86_400).contains(&self.routing.repair_interval_secs) {
            return Err("routing.repair_interval_secs must be 1 to 86400".into());
        }
        if !(1..=600).contains(&self.routing.ack_wait_secs) {
            return Err("routing.ack_wait_secs must be 1 to 600".into());
        }
        Ok(())
    }
}

impl HasTelemetry for RoutingConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}
