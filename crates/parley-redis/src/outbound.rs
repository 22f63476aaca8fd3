//! What channel senders keep in Redis: which replies a provider has already taken (so a
//! redelivered send is not sent twice), the provider's id of each (so the provider's later
//! receipts find the message), and the send rates of tenants and channels, shared by every
//! notification replica.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{t:T}:sent:M` | string | the provider's id for message M (empty when it gave none), once sent |
//! | `{t:T}:pmid:C:P` | string | `"<conversation> <message>"` for provider id P on channel configuration C |
//! | `{t:T}:rate` | string | the tenant's send schedule (GCRA theoretical arrival time, ms) |
//! | `{t:T}:rate:C` | string | the channel configuration's send schedule |
//!
//! All of them expire (the marks after [`SENT_TTL`], the schedules once idle); losing them
//! in a Redis crash loses the protection against a second send of a message whose send was
//! in flight, and the mapping of receipts still to come — never a message.

use std::time::Duration;

use parley_domain::{ConversationId, MessageId, TenantId};

use crate::{Coordinator, RedisError, Result, tag};

/// How long a sent mark and a provider id's mapping are kept: longer than the outbound
/// stream keeps a message, and than providers keep sending receipts (WhatsApp: 30 days for
/// a read, but the stream's 7 days bound what could be resent).
pub const SENT_TTL: Duration = Duration::from_secs(8 * 24 * 3600);

/// A send rate: at most `per_second` on average, with up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    fn interval_ms(self) -> f64 {
        1000.0 / self.per_second.max(0.001)
    }
}

/// Generic cell rate algorithm over two schedules (tenant, channel): a send is allowed when
/// both allow it, and then counts against both. KEYS: 1 tenant, 2 channel. ARGV: 1 now (ms),
/// 2/3 tenant interval (ms) and burst, 4/5 channel interval and burst. Returns 0 when
/// allowed, else how many ms until it would be.
const TAKE_RATE: &str = r#"
local now = tonumber(ARGV[1])
local function plan(key, interval, burst)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  return new_tat, allow_at - now
end
local t_tat, t_wait = plan(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
local c_tat, c_wait = plan(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]))
local wait = math.max(t_wait, c_wait)
if wait > 0 then return math.ceil(wait) end
redis.call('SET', KEYS[1], string.format('%.3f', t_tat), 'PX', math.ceil(t_tat - now) + 1000)
redis.call('SET', KEYS[2], string.format('%.3f', c_tat), 'PX', math.ceil(c_tat - now) + 1000)
return 0
"#;

fn sent_key(tenant: &TenantId, message: MessageId) -> String {
    format!("{}:sent:{message}", tag(tenant))
}
fn provider_key(tenant: &TenantId, channel_config: &str, provider_id: &str) -> String {
    format!("{}:pmid:{channel_config}:{provider_id}", tag(tenant))
}

impl Coordinator {
    /// The provider's id for a message already sent (empty when the provider gave none), or
    /// `None` when it has not been sent.
    pub async fn sent_mark(&self, tenant: &TenantId, message: MessageId) -> Result<Option<String>> {
        let mut c = self.conn.clone();
        Ok(redis::cmd("GET").arg(sent_key(tenant, message)).query_async(&mut c).await?)
    }

    /// Marks a message sent, with the provider's id and its mapping back, in one step.
    pub async fn mark_sent(
        &self,
        tenant: &TenantId,
        channel_config: &str,
        conversation: ConversationId,
        message: MessageId,
        provider_id: Option<&str>,
    ) -> Result<()> {
        let ttl = SENT_TTL.as_secs();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("SET").arg(sent_key(tenant, message)).arg(provider_id.unwrap_or("")).arg("EX").arg(ttl);
        if let Some(p) = provider_id.filter(|p| !p.is_empty()) {
            pipe.cmd("SET")
                .arg(provider_key(tenant, channel_config, p))
                .arg(format!("{conversation} {message}"))
                .arg("EX")
                .arg(ttl);
        }
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await?;
        Ok(())
    }

    /// The conversation and message a provider's id names, when Parley sent it.
    pub async fn provider_message(
        &self,
        tenant: &TenantId,
        channel_config: &str,
        provider_id: &str,
    ) -> Result<Option<(ConversationId, MessageId)>> {
        let mut c = self.conn.clone();
        let found: Option<String> =
            redis::cmd("GET").arg(provider_key(tenant, channel_config, provider_id)).query_async(&mut c).await?;
        let Some(found) = found else { return Ok(None) };
        let parsed =
            found.split_once(' ').and_then(|(c, m)| Some((ConversationId::parse(c).ok()?, MessageId::parse(m).ok()?)));
        parsed.map(Some).ok_or_else(|| RedisError(format!("malformed provider id mapping {found:?}")))
    }

    /// Takes one send from the tenant's and the channel configuration's rates: `None` when
    /// it may go now, else how long to wait before asking again.
    pub async fn take_rate(
        &self,
        tenant: &TenantId,
        channel_config: &str,
        tenant_rate: Rate,
        channel_rate: Rate,
        now_ms: i64,
    ) -> Result<Option<Duration>> {
        let mut c = self.conn.clone();
        let wait: i64 = self
            .take_rate
            .key(format!("{}:rate", tag(tenant)))
            .key(format!("{}:rate:{channel_config}", tag(tenant)))
            .arg(now_ms)
            .arg(tenant_rate.interval_ms())
            .arg(tenant_rate.burst.max(1))
            .arg(channel_rate.interval_ms())
            .arg(channel_rate.burst.max(1))
            .invoke_async(&mut c)
            .await?;
        Ok((wait > 0).then(|| Duration::from_millis(wait as u64)))
    }
}

pub(crate) fn take_rate_script() -> redis::Script {
    redis::Script::new(TAKE_RATE)
}
