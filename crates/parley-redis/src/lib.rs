//! Parley's Redis adapter: the hot, atomic coordination of routing.
//!
//! Keys (every key of a tenant carries the hash tag `{t:<tenant>}`, so all of a tenant's
//! keys live in one Redis Cluster slot and a Lua script may touch any of them):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{t:T}:op:O` | hash | `status`, `reason`, `since` (ms), `last_assigned` (ms) |
//! | `{t:T}:op:O:sessions` | sorted set | live desk sessions, scored by their expiry (ms) |
//! | `{t:T}:op:O:load:C` | sorted set | conversations O holds (offered or assigned) on channel C: by claim time (ms) until the log records the hold, then 0 (confirmed) |
//! | `{t:T}:op:O:act:C` | hash | per held conversation, `"<ms>:c"` or `"<ms>:o"`: last activity and who spoke last (for weights) |
//! | `{t:T}:holders:C` | set | operators holding anything on channel C (for rerouting when a desk is gone) |
//! | `{t:T}:desks` | sorted set | operators by when their longest-lived desk session expires(d) (ms); the expired ones are checked each second for work to reroute, then forgotten |
//! | `{t:T}:avail:C` | sorted set | online operators with capacity on C, by occupancy then idle time (the shortlist) |
//! | `{t:T}:avail:C:<skill>` | sorted set | the same, per skill they have |
//! | `{t:T}:queue:Q` | sorted set | conversations waiting in queue Q, by `parley_policy::queue_score` |
//! | `{t:T}:offers` | sorted set | conversations offered and waiting for an answer, by deadline (ms) |
//! | `{t:T}:timers` | sorted set | `"<kind>:<conversation>"` by due time (ms): preference ends, maximum waits |
//! | `{t:T}:rr:Q` | string | the queue's last choice, for round robin |
//! | `{t:T}:served:Q` | sorted set | the queue's latest assignments by time, for estimated waits |
//! | `{t:T}:ftfail:<customer>` | string | wrong fast-track codes from a customer this hour |
//! | `parley:rebuilt` | string | present once Redis has been rebuilt from the durable side |
//!
//! Redis may lose everything on a crash; routing notices the missing `parley:rebuilt` and
//! rebuilds statuses, holds, queues and timers from JetStream.
//!
//! *Architecture invariant*: capacity is only ever taken by [`Coordinator::claim`], one
//! Lua script that checks status, live session, weighted capacity and (for queued
//! conversations) that the conversation is still waiting, and takes it, atomically. So no
//! operator is over capacity, however many routers race. Which router's assignment counts
//! is decided by the conversation log (compare-and-set); the loser gives its claim back. A
//! claim is *confirmed* ([`Coordinator::confirm_hold`]) once the log records it; a claim
//! left unconfirmed by a crash is found by [`Coordinator::stale_holds`] and checked against
//! the log — so that check costs what crashes left behind, not one log read per hold.
//!
//! The weight rule lives twice, here in Lua and in `RoutingSettings::weight_milli`; the
//! tests of this crate check they agree.

mod outbound;

use std::time::Duration;

use parley_domain::{
    Channel, ConversationId, CustomerId, OperatorId, OperatorStatus, QueueId, SkillId, TenantId, Timestamp,
};
use redis::aio::ConnectionManager;

pub use outbound::{Rate, SENT_TTL};

/// A Redis failure; routing treats every one as transient.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(String);

impl From<redis::RedisError> for RedisError {
    fn from(e: redis::RedisError) -> Self {
        RedisError(e.to_string())
    }
}

type Result<T> = std::result::Result<T, RedisError>;

/// Why a claim was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefused {
    /// Not online.
    Status,
    /// No live desk session.
    Disconnected,
    /// No room for a whole seat on that channel.
    Full,
    /// The conversation is no longer waiting (another router took it).
    Gone,
    /// The operator holds it already: it is theirs, or it was and the release of that hold
    /// is still on its way. Nothing was taken, so the caller must give nothing back (that
    /// would free the seat of the conversation they hold) and must not count on the hold
    /// (the pending release would take it away).
    Held,
}

/// How held conversations weigh (the tenant's routing settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    pub waiting_milli: u32,
    pub idle_milli: u32,
    pub idle_after: Duration,
}

/// An operator on one channel, as the scripts that change their holds need them.
#[derive(Debug, Clone, Copy)]
pub struct OpCtx<'a> {
    pub tenant: &'a TenantId,
    pub op: &'a OperatorId,
    pub channel: Channel,
    /// Seats on the channel.
    pub capacity: u32,
    /// Their skills, for the per-skill availability indexes.
    pub skills: &'a [SkillId],
    pub weights: Weights,
}

/// An operator's presence as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub status: OperatorStatus,
    pub reason: String,
    pub since: Option<Timestamp>,
    pub connected: bool,
    pub last_assigned: Option<Timestamp>,
    /// Per channel with anything held: conversations, and seats in use in thousandths
    /// (conversations waiting on the customer or idle weigh less).
    pub load: Vec<(Channel, u32, u32)>,
}

/// One operator's routing-relevant presence for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSnapshot {
    pub status: OperatorStatus,
    /// When the status was set.
    pub since: Option<Timestamp>,
    pub connected: bool,
    pub load: u32,
    pub weighted_load_milli: u32,
    pub last_assigned: Option<Timestamp>,
}

/// A timer's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// A conversation's wait for one operator ends.
    Preference,
    /// A conversation reaches its queue's maximum wait.
    MaxWait,
}

impl TimerKind {
    const fn prefix(self) -> &'static str {
        match self {
            TimerKind::Preference => "pref",
            TimerKind::MaxWait => "maxwait",
        }
    }
}

/// Adds to `pipe` what keeps a desk session alive until `expires` (its answers ignored).
fn keep_alive<'p>(
    pipe: &'p mut redis::Pipeline,
    tenant: &TenantId,
    op: &OperatorId,
    session: &str,
    expires: Timestamp,
) -> &'p mut redis::Pipeline {
    let key = sessions_key(tenant, op);
    pipe.cmd("ZADD")
        .arg(&key)
        .arg(expires.as_millis())
        .arg(session)
        .ignore()
        // Keep the set small: drop sessions expired an hour ago.
        .cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(expires.as_millis() - 3_600_000)
        .ignore()
        .cmd("ZADD")
        .arg(desks_key(tenant))
        .arg("GT")
        .arg(expires.as_millis())
        .arg(op.as_str())
        .ignore()
}

fn tag(tenant: &TenantId) -> String {
    format!("{{t:{tenant}}}")
}
fn op_key(tenant: &TenantId, op: &OperatorId) -> String {
    format!("{}:op:{op}", tag(tenant))
}
fn sessions_key(tenant: &TenantId, op: &OperatorId) -> String {
    format!("{}:op:{op}:sessions", tag(tenant))
}
fn load_key(tenant: &TenantId, op: &OperatorId, channel: Channel) -> String {
    format!("{}:op:{op}:load:{channel}", tag(tenant))
}
fn act_key(tenant: &TenantId, op: &OperatorId, channel: Channel) -> String {
    format!("{}:op:{op}:act:{channel}", tag(tenant))
}
fn desks_key(tenant: &TenantId) -> String {
    format!("{}:desks", tag(tenant))
}
fn holders_key(tenant: &TenantId, channel: Channel) -> String {
    format!("{}:holders:{channel}", tag(tenant))
}
fn avail_key(tenant: &TenantId, channel: Channel, skill: Option<&SkillId>) -> String {
    match skill {
        None => format!("{}:avail:{channel}", tag(tenant)),
        Some(s) => format!("{}:avail:{channel}:{s}", tag(tenant)),
    }
}
fn queue_key(tenant: &TenantId, queue: &QueueId) -> String {
    format!("{}:queue:{queue}", tag(tenant))
}
fn offers_key(tenant: &TenantId) -> String {
    format!("{}:offers", tag(tenant))
}
fn timers_key(tenant: &TenantId) -> String {
    format!("{}:timers", tag(tenant))
}
fn rr_key(tenant: &TenantId, queue: &QueueId) -> String {
    format!("{}:rr:{queue}", tag(tenant))
}
fn served_key(tenant: &TenantId, queue: &QueueId) -> String {
    format!("{}:served:{queue}", tag(tenant))
}
fn missed_key(tenant: &TenantId, op: &OperatorId) -> String {
    format!("{}:missed:{op}", tag(tenant))
}
fn ftfail_key(tenant: &TenantId, customer: CustomerId) -> String {
    format!("{}:ftfail:{customer}", tag(tenant))
}

const REBUILT_KEY: &str = "parley:rebuilt";

/// Shared by the scripts that change an operator's holds. KEYS: 1 operator hash,
/// 2 sessions, 3 load, 4 activity, 5 holders, 6 a queue (or any key of the tenant),
/// 7.. availability indexes. ARGV: 1 operator, 2 capacity, 3 now (ms), 4 waiting weight,
/// 5 idle weight, 6 idle after (ms), then the script's own.
const PRELUDE: &str = r#"
local now = tonumber(ARGV[3])
local function weighted()
  local total = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[4])) do
    local sep = string.find(v, ':', 1, true)
    local at = tonumber(string.sub(v, 1, sep - 1))
    if now - at >= tonumber(ARGV[6]) then total = total + tonumber(ARGV[5])
    elseif string.sub(v, sep + 1) == 'o' then total = total + tonumber(ARGV[4])
    else total = total + 1000 end
  end
  return total
end
-- Puts the operator in (or takes them out of) the availability indexes: in while online
-- with room for a whole conversation, scored by occupancy (thousandths of capacity) then
-- last assignment (s). Full operators are out, so finding nobody costs one read.
local function refresh()
  local cap = tonumber(ARGV[2])
  local load = weighted()
  if redis.call('HGET', KEYS[1], 'status') == 'online' and load + 1000 <= cap * 1000 then
    local last = tonumber(redis.call('HGET', KEYS[1], 'last_assigned') or '0')
    local occupancy = math.floor(load / cap)
    local score = occupancy * 10000000000 + math.floor(last / 1000)
    for i = 7, #KEYS do redis.call('ZADD', KEYS[i], score, ARGV[1]) end
  else
    for i = 7, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
  end
end
"#;

/// ARGV 7 conversation, 8 from queue (1|0), 9 the seats that may be filled now (at most
/// the capacity: less while the operator ramps up after coming online).
const CLAIM: &str = r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'online' then return 'status' end
if redis.call('ZCOUNT', KEYS[2], now, '+inf') == 0 then return 'disconnected' end
-- Already held: theirs, or a release still on its way. Not taken again (see ClaimRefused::Held).
if redis.call('ZSCORE', KEYS[3], ARGV[7]) then return 'held' end
if weighted() + 1000 > tonumber(ARGV[9]) * 1000 then return 'full' end
-- Still waiting? (It leaves the queue once its assignment is recorded.)
if ARGV[8] == '1' and not redis.call('ZSCORE', KEYS[6], ARGV[7]) then return 'gone' end
redis.call('ZADD', KEYS[3], now, ARGV[7])
redis.call('HSET', KEYS[4], ARGV[7], now .. ':c')
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[1], 'last_assigned', now)
refresh()
return 'ok'
"#;

/// ARGV 7 conversation.
const RELEASE: &str = r#"
redis.call('ZREM', KEYS[3], ARGV[7])
redis.call('HDEL', KEYS[4], ARGV[7])
if redis.call('ZCARD', KEYS[3]) == 0 then redis.call('SREM', KEYS[5], ARGV[1]) end
refresh()
return 'ok'
"#;

/// ARGV 7 conversation, 8 `"<ms>:c|o"`.
const TOUCH: &str = r#"
if redis.call('HEXISTS', KEYS[4], ARGV[7]) == 1 then redis.call('HSET', KEYS[4], ARGV[7], ARGV[8]) end
refresh()
return 'ok'
"#;

/// ARGV 7 conversation, 8 `"<ms>:c|o"`: a hold restored from the log (rebuild).
const RESTORE: &str = r#"
redis.call('ZADD', KEYS[3], 'NX', 0, ARGV[7])
redis.call('HSETNX', KEYS[4], ARGV[7], ARGV[8])
redis.call('SADD', KEYS[5], ARGV[1])
refresh()
return 'ok'
"#;

const REFRESH: &str = r#"
refresh()
return 'ok'
"#;

/// Removes a member of a deadline set only if its deadline is at or before a bound (KEYS[1]
/// the set, ARGV[1] the member, ARGV[2] the bound): whoever handled a timer or an offer may
/// have set it again for later, and that later one stays.
const DROP_DUE: &str = r#"
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if due and tonumber(due) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 'ok'
"#;

/// Ends a desk session (KEYS[1] the operator's sessions, KEYS[2] the tenant's desks; ARGV[1]
/// the session, ARGV[2] now, ARGV[3] the operator): the session expires now, and the
/// operator's desk deadline becomes that of their longest-lived session.
const END_SESSION: &str = r#"
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('ZADD', KEYS[2], last[2], ARGV[3]) end
return 'ok'
"#;

/// A page of an availability index with what a decision needs of each operator on it, in
/// one round trip (KEYS[1] the index; ARGV[1] first rank, ARGV[2] last rank, ARGV[3] the
/// tenant's operator key prefix, ARGV[4] now in ms, ARGV[5] the channel): per operator, its
/// id and the answers [`read_operator`] and `HVALS` of its activity would give. The keys it
/// reads are the tenant's, in the index's hash slot.
const SHORTLIST: &str = r#"
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local k = ARGV[3] .. id
  out[#out + 1] = id
  out[#out + 1] = redis.call('HMGET', k, 'status', 'reason', 'since', 'last_assigned')
  out[#out + 1] = redis.call('ZCOUNT', k .. ':sessions', ARGV[4], '+inf')
  out[#out + 1] = redis.call('HVALS', k .. ':act:' .. ARGV[5])
end
return out
"#;

/// What the hash of an operator holds.
struct OperatorHash {
    status: OperatorStatus,
    reason: String,
    since: Option<Timestamp>,
    last_assigned: Option<Timestamp>,
}

/// Queues the two reads behind an operator's presence: the hash, and the live sessions.
fn read_operator(pipe: &mut redis::Pipeline, tenant: &TenantId, op: &OperatorId, now: Timestamp) {
    pipe.cmd("HMGET").arg(op_key(tenant, op)).arg("status").arg("reason").arg("since").arg("last_assigned");
    pipe.cmd("ZCOUNT").arg(sessions_key(tenant, op)).arg(now.as_millis()).arg("+inf");
}

/// Parses the answers to [`read_operator`]: the hash, and whether a session is alive.
fn parse_operator(hash: &redis::Value, live: &redis::Value) -> (OperatorHash, bool) {
    let fields: Vec<Option<String>> = redis::from_redis_value(hash.clone()).unwrap_or_default();
    let field = |i: usize| fields.get(i).cloned().flatten();
    let millis = |s: Option<String>| s.and_then(|s| s.parse::<i64>().ok()).map(Timestamp::from_millis);
    let live: u32 = redis::from_redis_value(live.clone()).unwrap_or(0);
    let hash = OperatorHash {
        status: field(0).and_then(|s| OperatorStatus::parse(&s)).unwrap_or_default(),
        reason: field(1).unwrap_or_default(),
        since: millis(field(2)),
        last_assigned: millis(field(3)),
    };
    (hash, live > 0)
}

/// Parses one operator's answers to [`read_operator`] and `HVALS` of its activity.
fn parse_snapshot(values: &[redis::Value], now: Timestamp, weights: Weights) -> OperatorSnapshot {
    let value = |i: usize| values.get(i).cloned().unwrap_or(redis::Value::Nil);
    let (hash, connected) = parse_operator(&value(0), &value(1));
    let entries: Vec<String> = redis::from_redis_value(value(2)).unwrap_or_default();
    OperatorSnapshot {
        status: hash.status,
        since: hash.since,
        connected,
        load: entries.len() as u32,
        weighted_load_milli: entries.iter().map(|e| entry_weight(e, now, weights)).sum(),
        last_assigned: hash.last_assigned,
    }
}

/// The weight of one held conversation's activity entry (`"<ms>:c|o"`), in thousandths —
/// the same rule as the Lua `weighted`.
pub fn entry_weight(entry: &str, now: Timestamp, w: Weights) -> u32 {
    let (at, flag) = entry.split_once(':').unwrap_or((entry, "c"));
    let at = at.parse::<i64>().unwrap_or(0);
    if now.as_millis() - at >= w.idle_after.as_millis() as i64 {
        w.idle_milli
    } else if flag == "o" {
        w.waiting_milli
    } else {
        1000
    }
}

/// The activity entry of a conversation: when, and whether the operator spoke last.
pub fn activity_entry(at: Timestamp, operator_spoke_last: bool) -> String {
    format!("{}:{}", at.as_millis(), if operator_spoke_last { "o" } else { "c" })
}

/// Routing's view of Redis. Cheap to clone (a multiplexed, reconnecting connection).
#[derive(Clone)]
pub struct Coordinator {
    conn: ConnectionManager,
    claim: redis::Script,
    release: redis::Script,
    touch: redis::Script,
    restore: redis::Script,
    refresh: redis::Script,
    drop_due: redis::Script,
    end_session: redis::Script,
    shortlist: redis::Script,
    take_rate: redis::Script,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coordinator(..)")
    }
}

impl Coordinator {
    /// Runs one command whose answer is not needed.
    async fn run(&self, cmd: &redis::Cmd) -> Result<()> {
        let mut c = self.conn.clone();
        cmd.query_async::<()>(&mut c).await?;
        Ok(())
    }

    /// Runs an operator script (see [`PRELUDE`] for the key and argument layout).
    async fn op_script(
        &self,
        script: &redis::Script,
        ctx: &OpCtx<'_>,
        queue: Option<&QueueId>,
        now: Timestamp,
        extra: &[String],
    ) -> Result<String> {
        let mut c = self.conn.clone();
        let mut inv = script.key(op_key(ctx.tenant, ctx.op));
        inv.key(sessions_key(ctx.tenant, ctx.op))
            .key(load_key(ctx.tenant, ctx.op, ctx.channel))
            .key(act_key(ctx.tenant, ctx.op, ctx.channel))
            .key(holders_key(ctx.tenant, ctx.channel))
            .key(match queue {
                Some(q) => queue_key(ctx.tenant, q),
                None => timers_key(ctx.tenant),
            })
            .key(avail_key(ctx.tenant, ctx.channel, None));
        for skill in ctx.skills {
            inv.key(avail_key(ctx.tenant, ctx.channel, Some(skill)));
        }
        inv.arg(ctx.op.as_str())
            .arg(ctx.capacity)
            .arg(now.as_millis())
            .arg(ctx.weights.waiting_milli)
            .arg(ctx.weights.idle_milli)
            .arg(ctx.weights.idle_after.as_millis() as i64);
        for e in extra {
            inv.arg(e);
        }
        Ok(inv.invoke_async(&mut c).await?)
    }

    /// Connects, retrying for up to `wait`.
    pub async fn connect(url: &str, wait: Duration) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let deadline = tokio::time::Instant::now() + wait;
        let conn = loop {
            match client.get_connection_manager().await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(RedisError(format!("cannot connect to {url}: {e}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let script = |body: &str| redis::Script::new(&format!("{PRELUDE}\n{body}"));
        Ok(Self {
            conn,
            claim: script(CLAIM),
            release: script(RELEASE),
            touch: script(TOUCH),
            restore: script(RESTORE),
            refresh: script(REFRESH),
            drop_due: redis::Script::new(DROP_DUE),
            end_session: redis::Script::new(END_SESSION),
            shortlist: redis::Script::new(SHORTLIST),
            take_rate: outbound::take_rate_script(),
        })
    }

    /// Sets an operator's status (and reason, for away), then brings their availability
    /// on each of their channels in line (`channels` has one context per channel).
    pub async fn set_status(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        status: OperatorStatus,
        reason: &str,
        now: Timestamp,
        channels: &[OpCtx<'_>],
    ) -> Result<()> {
        let mut hset = redis::cmd("HSET");
        hset.arg(op_key(tenant, op))
            .arg("status")
            .arg(status.as_str())
            .arg("reason")
            .arg(reason)
            .arg("since")
            .arg(now.as_millis());
        self.run(&hset).await?;
        for ctx in channels {
            self.refresh(ctx, now).await?;
        }
        Ok(())
    }

    /// Sets a status only if Redis has none for the operator (rebuild: never overwrite a
    /// status set since).
    pub async fn restore_status(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        status: OperatorStatus,
        reason: &str,
        since: Timestamp,
        channels: &[OpCtx<'_>],
    ) -> Result<()> {
        let mut c = self.conn.clone();
        let key = op_key(tenant, op);
        redis::pipe()
            .cmd("HSETNX")
            .arg(&key)
            .arg("status")
            .arg(status.as_str())
            .ignore()
            .cmd("HSETNX")
            .arg(&key)
            .arg("reason")
            .arg(reason)
            .ignore()
            .cmd("HSETNX")
            .arg(&key)
            .arg("since")
            .arg(since.as_millis())
            .ignore()
            .query_async::<()>(&mut c)
            .await?;
        for ctx in channels {
            self.refresh(ctx, since).await?;
        }
        Ok(())
    }

    /// Recomputes an operator's place in the availability indexes of one channel (after a
    /// configuration change, or as idle conversations weigh less over time).
    pub async fn refresh(&self, ctx: &OpCtx<'_>, now: Timestamp) -> Result<()> {
        self.op_script(&self.refresh, ctx, None, now, &[]).await.map(|_| ())
    }

    /// Takes an operator out of a channel's availability indexes (capacity or skills
    /// removed by configuration): the skills given are the ones to remove them from.
    pub async fn forget_availability(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        channel: Channel,
        skills: &[SkillId],
    ) -> Result<()> {
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM").arg(avail_key(tenant, channel, None)).arg(op.as_str()).ignore();
        for s in skills {
            pipe.cmd("ZREM").arg(avail_key(tenant, channel, Some(s))).arg(op.as_str()).ignore();
        }
        pipe.query_async::<()>(&mut c).await?;
        Ok(())
    }

    /// Records that a desk session of the operator is alive until `expires`.
    pub async fn heartbeat(&self, tenant: &TenantId, op: &OperatorId, session: &str, expires: Timestamp) -> Result<()> {
        let mut c = self.conn.clone();
        keep_alive(&mut redis::pipe(), tenant, op, session, expires).query_async::<()>(&mut c).await?;
        Ok(())
    }

    /// The first heartbeat of a desk session; true when no other desk of the operator was
    /// alive at `now` (the operator has just connected).
    pub async fn open_session(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        session: &str,
        now: Timestamp,
        expires: Timestamp,
    ) -> Result<bool> {
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("ZCOUNT").arg(sessions_key(tenant, op)).arg(now.as_millis()).arg("+inf");
        let (alive,): (u64,) = keep_alive(&mut pipe, tenant, op, session, expires).query_async(&mut c).await?;
        Ok(alive == 0)
    }

    /// Whether the operator's going away at `gone_since` has been told yet; a new
    /// `gone_since` (they came back and went again) has not.
    pub async fn gone_told(&self, tenant: &TenantId, op: &OperatorId, gone_since: Timestamp) -> Result<bool> {
        let mut c = self.conn.clone();
        let told: Option<i64> = redis::cmd("HGET").arg(op_key(tenant, op)).arg("gone_told").query_async(&mut c).await?;
        Ok(told == Some(gone_since.as_millis()))
    }

    /// Notes that the operator's going away at `gone_since` has been told.
    pub async fn tell_gone(&self, tenant: &TenantId, op: &OperatorId, gone_since: Timestamp) -> Result<()> {
        let mut c = self.conn.clone();
        redis::cmd("HSET")
            .arg(op_key(tenant, op))
            .arg("gone_told")
            .arg(gone_since.as_millis())
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// An operator's status, its reason and time, and whether a desk is connected (no load).
    pub async fn status(&self, tenant: &TenantId, op: &OperatorId, now: Timestamp) -> Result<Presence> {
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        read_operator(&mut pipe, tenant, op, now);
        let values: Vec<redis::Value> = pipe.query_async(&mut c).await?;
        let (hash, connected) = parse_operator(&values[0], &values[1]);
        Ok(Presence {
            status: hash.status,
            reason: hash.reason,
            since: hash.since,
            connected,
            last_assigned: hash.last_assigned,
            load: Vec::new(),
        })
    }

    /// Ends a desk session at once (a clean disconnect): it expires now, which also
    /// remembers when the desk went away (for rerouting its work after a while).
    pub async fn end_session(&self, tenant: &TenantId, op: &OperatorId, session: &str, now: Timestamp) -> Result<()> {
        let mut c = self.conn.clone();
        let _: String = self
            .end_session
            .key(sessions_key(tenant, op))
            .key(desks_key(tenant))
            .arg(session)
            .arg(now.as_millis())
            .arg(op.as_str())
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// For an operator with no session on record (Redis lost it): notes them gone from
    /// `now`, so their work is rerouted after the tenant's delay, not at once.
    pub async fn mark_gone(&self, tenant: &TenantId, op: &OperatorId, now: Timestamp) -> Result<()> {
        let mut c = self.conn.clone();
        redis::pipe()
            .cmd("ZADD")
            .arg(sessions_key(tenant, op))
            .arg("NX")
            .arg(now.as_millis())
            .arg("parley:gone")
            .ignore()
            .cmd("ZADD")
            .arg(desks_key(tenant))
            .arg("NX")
            .arg(now.as_millis())
            .arg(op.as_str())
            .ignore()
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// Operators whose every desk session has expired by `now` and who have not been
    /// forgotten since ([`Coordinator::forget_desk`]): those whose work may need rerouting.
    pub async fn gone_desks(&self, tenant: &TenantId, now: Timestamp) -> Result<Vec<OperatorId>> {
        let ids = self.due_members(desks_key(tenant), now, 100_000).await?;
        Ok(ids.iter().filter_map(|s| OperatorId::parse(s).ok()).collect())
    }

    /// Stops looking at a gone operator (nothing of theirs is left to reroute) unless a
    /// desk of theirs has come back since `gone_since`.
    pub async fn forget_desk(&self, tenant: &TenantId, op: &OperatorId, gone_since: Timestamp) -> Result<()> {
        self.drop_due(desks_key(tenant), op.to_string(), gone_since).await
    }

    /// When each operator's last desk session expires(d); `None` if they never had one.
    pub async fn session_expiries(&self, tenant: &TenantId, ops: &[OperatorId]) -> Result<Vec<Option<Timestamp>>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        for op in ops {
            pipe.cmd("ZRANGE").arg(sessions_key(tenant, op)).arg(-1).arg(-1).arg("WITHSCORES");
        }
        let answers: Vec<Vec<(String, f64)>> = pipe.query_async(&mut c).await?;
        Ok(answers.into_iter().map(|a| a.first().map(|(_, s)| Timestamp::from_millis(*s as i64))).collect())
    }

    /// Reads an operator's presence and load on every channel.
    pub async fn presence(&self, tenant: &TenantId, op: &OperatorId, now: Timestamp, w: Weights) -> Result<Presence> {
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        read_operator(&mut pipe, tenant, op, now);
        for ch in Channel::ALL {
            pipe.cmd("HVALS").arg(act_key(tenant, op, ch));
        }
        let values: Vec<redis::Value> = pipe.query_async(&mut c).await?;
        let (hash, connected) = parse_operator(&values[0], &values[1]);
        let load = Channel::ALL
            .into_iter()
            .zip(&values[2..])
            .filter_map(|(ch, v)| {
                let entries: Vec<String> = redis::from_redis_value(v.clone()).unwrap_or_default();
                let weighted = entries.iter().map(|e| entry_weight(e, now, w)).sum();
                (!entries.is_empty()).then_some((ch, entries.len() as u32, weighted))
            })
            .collect();
        Ok(Presence {
            status: hash.status,
            reason: hash.reason,
            since: hash.since,
            connected,
            last_assigned: hash.last_assigned,
            load,
        })
    }

    /// The conversations an operator holds on a channel.
    pub async fn held(&self, tenant: &TenantId, op: &OperatorId, channel: Channel) -> Result<Vec<String>> {
        let mut c = self.conn.clone();
        Ok(redis::cmd("ZRANGE").arg(load_key(tenant, op, channel)).arg(0).arg(-1).query_async(&mut c).await?)
    }

    /// Operators holding anything on a channel.
    pub async fn holders(&self, tenant: &TenantId, channel: Channel) -> Result<Vec<OperatorId>> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS").arg(holders_key(tenant, channel)).query_async(&mut c).await?;
        Ok(ids.iter().filter_map(|s| OperatorId::parse(s).ok()).collect())
    }

    /// The operators holding `conversation` on `channel` (normally one; more only while a
    /// release is behind).
    pub async fn holding(
        &self,
        tenant: &TenantId,
        channel: Channel,
        conversation: ConversationId,
    ) -> Result<Vec<OperatorId>> {
        let holders = self.holders(tenant, channel).await?;
        if holders.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        let member = conversation.to_string();
        for op in &holders {
            pipe.cmd("ZSCORE").arg(load_key(tenant, op, channel)).arg(&member);
        }
        let scores: Vec<Option<f64>> = pipe.query_async(&mut c).await?;
        Ok(holders.into_iter().zip(scores).filter(|(_, s)| s.is_some()).map(|(op, _)| op).collect())
    }

    /// Atomically reserves a seat for `conversation` with the operator (room for a whole
    /// seat, weighing what they hold); with `from_queue`, only while it still waits in
    /// `queue`. `Ok` means this call took the seat, so the caller owns that reservation and
    /// gives it back if its change is not recorded; a seat the operator already holds for the
    /// conversation is refused as [`ClaimRefused::Held`].
    pub async fn claim(
        &self,
        ctx: &OpCtx<'_>,
        conversation: ConversationId,
        queue: &QueueId,
        from_queue: bool,
        limit: u32,
        now: Timestamp,
    ) -> Result<std::result::Result<(), ClaimRefused>> {
        let extra = [conversation.to_string(), if from_queue { "1" } else { "0" }.to_owned(), limit.to_string()];
        let answer = self.op_script(&self.claim, ctx, Some(queue), now, &extra).await?;
        Ok(match answer.as_str() {
            "ok" => Ok(()),
            "status" => Err(ClaimRefused::Status),
            "disconnected" => Err(ClaimRefused::Disconnected),
            "full" => Err(ClaimRefused::Full),
            "held" => Err(ClaimRefused::Held),
            _ => Err(ClaimRefused::Gone),
        })
    }

    /// Frees the operator's seat held by a conversation (idempotent).
    pub async fn release(&self, ctx: &OpCtx<'_>, conversation: ConversationId, now: Timestamp) -> Result<()> {
        self.op_script(&self.release, ctx, None, now, &[conversation.to_string()]).await.map(|_| ())
    }

    /// Notes new activity in a held conversation (changes its weight).
    pub async fn touch(
        &self,
        ctx: &OpCtx<'_>,
        conversation: ConversationId,
        activity: &str,
        now: Timestamp,
    ) -> Result<()> {
        self.op_script(&self.touch, ctx, None, now, &[conversation.to_string(), activity.to_owned()]).await.map(|_| ())
    }

    /// Restores what a held conversation means in Redis (rebuild): the hold and its
    /// activity. An existing entry keeps its claim time.
    pub async fn restore_hold(
        &self,
        ctx: &OpCtx<'_>,
        conversation: ConversationId,
        activity: &str,
        now: Timestamp,
    ) -> Result<()> {
        self.op_script(&self.restore, ctx, None, now, &[conversation.to_string(), activity.to_owned()])
            .await
            .map(|_| ())
    }

    /// How many operators each availability index holds (to start from the smallest).
    pub async fn index_sizes(&self, tenant: &TenantId, channel: Channel, skills: &[&SkillId]) -> Result<Vec<u64>> {
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        for s in skills {
            pipe.cmd("ZCARD").arg(avail_key(tenant, channel, Some(s)));
        }
        Ok(pipe.query_async(&mut c).await?)
    }

    /// Presence and weighted load of many operators for one channel, in one round trip.
    pub async fn snapshot(
        &self,
        tenant: &TenantId,
        operators: &[OperatorId],
        channel: Channel,
        now: Timestamp,
        weights: Weights,
    ) -> Result<Vec<OperatorSnapshot>> {
        if operators.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        for op in operators {
            read_operator(&mut pipe, tenant, op, now);
            pipe.cmd("HVALS").arg(act_key(tenant, op, channel));
        }
        let values: Vec<redis::Value> = pipe.query_async(&mut c).await?;
        Ok(values.chunks(3).map(|chunk| parse_snapshot(chunk, now, weights)).collect())
    }

    /// A page of an availability index (online operators with room on `channel`, with
    /// `skill` if given; ranks `from..from + count`, least occupied first then idle
    /// longest) with each operator's snapshot (as [`Coordinator::snapshot`]), in one round
    /// trip.
    #[allow(clippy::too_many_arguments)]
    pub async fn shortlist_snapshot(
        &self,
        tenant: &TenantId,
        channel: Channel,
        skill: Option<&SkillId>,
        from: usize,
        count: usize,
        now: Timestamp,
        weights: Weights,
    ) -> Result<Vec<(OperatorId, OperatorSnapshot)>> {
        let mut c = self.conn.clone();
        let values: Vec<redis::Value> = self
            .shortlist
            .key(avail_key(tenant, channel, skill))
            .arg(from)
            .arg(from + count.max(1) - 1)
            .arg(format!("{}:op:", tag(tenant)))
            .arg(now.as_millis())
            .arg(channel.as_str())
            .invoke_async(&mut c)
            .await?;
        Ok(values
            .chunks(4)
            .filter(|chunk| chunk.len() == 4)
            .filter_map(|chunk| {
                let id: String = redis::from_redis_value(chunk[0].clone()).ok()?;
                Some((OperatorId::parse(&id).ok()?, parse_snapshot(&chunk[1..], now, weights)))
            })
            .collect())
    }

    /// Puts a conversation in its queue (or moves it to `score` if there already).
    pub async fn enqueue(
        &self,
        tenant: &TenantId,
        queue: &QueueId,
        conversation: ConversationId,
        score: f64,
    ) -> Result<()> {
        self.run(redis::cmd("ZADD").arg(queue_key(tenant, queue)).arg(score).arg(conversation.to_string())).await
    }

    /// Puts a conversation in its queue unless it is there already (keeps its place).
    pub async fn ensure_queued(
        &self,
        tenant: &TenantId,
        queue: &QueueId,
        conversation: ConversationId,
        score: f64,
    ) -> Result<()> {
        self.run(redis::cmd("ZADD").arg(queue_key(tenant, queue)).arg("NX").arg(score).arg(conversation.to_string()))
            .await
    }

    /// Takes a conversation out of a queue (idempotent).
    pub async fn dequeue(&self, tenant: &TenantId, queue: &QueueId, conversation: ConversationId) -> Result<()> {
        self.run(redis::cmd("ZREM").arg(queue_key(tenant, queue)).arg(conversation.to_string())).await
    }

    /// The first `limit` waiting conversations of a queue, in serving order (`usize::MAX`:
    /// all of them).
    pub async fn waiting(&self, tenant: &TenantId, queue: &QueueId, limit: usize) -> Result<Vec<ConversationId>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let last = if limit == usize::MAX { -1 } else { i64::try_from(limit).unwrap_or(i64::MAX) - 1 };
        let ids: Vec<String> =
            redis::cmd("ZRANGE").arg(queue_key(tenant, queue)).arg(0).arg(last).query_async(&mut c).await?;
        Ok(ids.iter().filter_map(|s| ConversationId::parse(s).ok()).collect())
    }

    /// The first `limit` waiting conversations of a queue with their scores.
    pub async fn waiting_scored(
        &self,
        tenant: &TenantId,
        queue: &QueueId,
        limit: usize,
    ) -> Result<Vec<(ConversationId, f64)>> {
        let mut c = self.conn.clone();
        let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(queue_key(tenant, queue))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await?;
        Ok(entries.into_iter().filter_map(|(id, s)| ConversationId::parse(&id).ok().map(|id| (id, s))).collect())
    }

    /// A queue's length and the score of its head (for the oldest wait).
    pub async fn queue_stats(&self, tenant: &TenantId, queue: &QueueId) -> Result<(u32, Option<f64>)> {
        let mut c = self.conn.clone();
        let key = queue_key(tenant, queue);
        let (len, head): (u32, Vec<(String, f64)>) = redis::pipe()
            .cmd("ZCARD")
            .arg(&key)
            .cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await?;
        Ok((len, head.first().map(|(_, s)| *s)))
    }

    /// How many conversations wait ahead of one with queue score `score`.
    pub async fn ahead_of(&self, tenant: &TenantId, queue: &QueueId, score: f64) -> Result<u32> {
        let mut c = self.conn.clone();
        let mut ahead = redis::cmd("ZCOUNT");
        ahead.arg(queue_key(tenant, queue)).arg("-inf").arg(format!("({score}"));
        Ok(ahead.query_async(&mut c).await?)
    }

    /// Remembers an offer's deadline, so an expired offer is found and moved on. A later
    /// offer's deadline is never replaced by an earlier one's (replicas' writes for one
    /// conversation may land out of order).
    pub async fn track_offer(&self, tenant: &TenantId, conversation: ConversationId, expires: Timestamp) -> Result<()> {
        self.run(
            redis::cmd("ZADD").arg(offers_key(tenant)).arg("GT").arg(expires.as_millis()).arg(conversation.to_string()),
        )
        .await
    }

    /// Forgets an offer (answered, expired or withdrawn) whose deadline is at or before
    /// `up_to`; the conversation's later offer, tracked meanwhile by another replica, stays.
    pub async fn untrack_offer(&self, tenant: &TenantId, conversation: ConversationId, up_to: Timestamp) -> Result<()> {
        self.drop_due(offers_key(tenant), conversation.to_string(), up_to).await
    }

    async fn drop_due(&self, key: String, member: String, up_to: Timestamp) -> Result<()> {
        let mut c = self.conn.clone();
        let _: String = self.drop_due.key(key).arg(member).arg(up_to.as_millis()).invoke_async(&mut c).await?;
        Ok(())
    }

    /// Members of a deadline set due by `now`, earliest first.
    async fn due_members(&self, key: String, now: Timestamp, limit: usize) -> Result<Vec<String>> {
        let mut c = self.conn.clone();
        Ok(redis::cmd("ZRANGEBYSCORE")
            .arg(key)
            .arg("-inf")
            .arg(now.as_millis())
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut c)
            .await?)
    }

    /// Offers whose deadline has passed.
    pub async fn due_offers(&self, tenant: &TenantId, now: Timestamp, limit: usize) -> Result<Vec<ConversationId>> {
        let ids = self.due_members(offers_key(tenant), now, limit).await?;
        Ok(ids.iter().filter_map(|s| ConversationId::parse(s).ok()).collect())
    }

    /// Sets (or moves) a timer.
    pub async fn set_timer(
        &self,
        tenant: &TenantId,
        kind: TimerKind,
        conversation: ConversationId,
        due: Timestamp,
    ) -> Result<()> {
        let member = format!("{}:{conversation}", kind.prefix());
        self.run(redis::cmd("ZADD").arg(timers_key(tenant)).arg(due.as_millis()).arg(member)).await
    }

    /// Cancels a timer (idempotent).
    pub async fn clear_timer(&self, tenant: &TenantId, kind: TimerKind, conversation: ConversationId) -> Result<()> {
        let member = format!("{}:{conversation}", kind.prefix());
        self.run(redis::cmd("ZREM").arg(timers_key(tenant)).arg(member)).await
    }

    /// Removes a timer that has fired, unless it was set again for after `now`.
    pub async fn spend_timer(
        &self,
        tenant: &TenantId,
        kind: TimerKind,
        conversation: ConversationId,
        now: Timestamp,
    ) -> Result<()> {
        self.drop_due(timers_key(tenant), format!("{}:{conversation}", kind.prefix()), now).await
    }

    /// Timers due by `now`.
    pub async fn due_timers(
        &self,
        tenant: &TenantId,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<(TimerKind, ConversationId)>> {
        let members = self.due_members(timers_key(tenant), now, limit).await?;
        Ok(members
            .iter()
            .filter_map(|m| {
                let (kind, id) = m.split_once(':')?;
                let kind = [TimerKind::Preference, TimerKind::MaxWait].into_iter().find(|k| k.prefix() == kind)?;
                Some((kind, ConversationId::parse(id).ok()?))
            })
            .collect())
    }

    /// The queue's last round-robin choice.
    pub async fn last_chosen(&self, tenant: &TenantId, queue: &QueueId) -> Result<Option<OperatorId>> {
        let mut c = self.conn.clone();
        let id: Option<String> = redis::cmd("GET").arg(rr_key(tenant, queue)).query_async(&mut c).await?;
        Ok(id.and_then(|s| OperatorId::parse(&s).ok()))
    }

    /// Records an assignment from a queue: its round-robin choice and, for estimated waits,
    /// when it happened (the latest 50 are kept).
    pub async fn note_served(
        &self,
        tenant: &TenantId,
        queue: &QueueId,
        op: &OperatorId,
        conversation: ConversationId,
        now: Timestamp,
    ) -> Result<()> {
        let mut c = self.conn.clone();
        let served = served_key(tenant, queue);
        redis::pipe()
            .cmd("SET")
            .arg(rr_key(tenant, queue))
            .arg(op.as_str())
            .ignore()
            .cmd("ZADD")
            .arg(&served)
            .arg(now.as_millis())
            .arg(conversation.to_string())
            .ignore()
            .cmd("ZREMRANGEBYRANK")
            .arg(&served)
            .arg(0)
            .arg(-51)
            .ignore()
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// How many conversations the queue has been serving per second lately (`None`
    /// until it has served a few).
    pub async fn service_rate(&self, tenant: &TenantId, queue: &QueueId, now: Timestamp) -> Result<Option<f64>> {
        let mut c = self.conn.clone();
        let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(served_key(tenant, queue))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await?;
        if entries.len() < 3 {
            return Ok(None);
        }
        let oldest = entries[0].1 as i64;
        let span_ms = (now.as_millis() - oldest).max(1000);
        Ok(Some(entries.len() as f64 * 1000.0 / span_ms as f64))
    }

    /// Counts a wrong fast-track code from a customer; returns the count this hour.
    pub async fn note_fast_track_failure(&self, tenant: &TenantId, customer: CustomerId) -> Result<u32> {
        let mut c = self.conn.clone();
        let key = ftfail_key(tenant, customer);
        let (count,): (u32,) = redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(3600)
            .arg("NX")
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(count)
    }

    /// Notes that an offer to the operator expired unanswered; returns how many in a row
    /// (within a day) have.
    pub async fn note_missed_offer(&self, tenant: &TenantId, op: &OperatorId) -> Result<u32> {
        let mut c = self.conn.clone();
        let key = missed_key(tenant, op);
        let (count,): (u32,) = redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(86_400)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(count)
    }

    /// The operator answered (or was set away for not answering): the run starts over.
    pub async fn clear_missed_offers(&self, tenant: &TenantId, op: &OperatorId) -> Result<()> {
        self.run(redis::cmd("DEL").arg(missed_key(tenant, op))).await
    }

    /// Wrong fast-track codes from a customer this hour.
    pub async fn fast_track_failures(&self, tenant: &TenantId, customer: CustomerId) -> Result<u32> {
        let mut c = self.conn.clone();
        let n: Option<u32> = redis::cmd("GET").arg(ftfail_key(tenant, customer)).query_async(&mut c).await?;
        Ok(n.unwrap_or(0))
    }

    /// True once Redis has been rebuilt since it last lost its data.
    pub async fn is_rebuilt(&self) -> Result<bool> {
        let mut c = self.conn.clone();
        Ok(redis::cmd("EXISTS").arg(REBUILT_KEY).query_async::<u32>(&mut c).await? == 1)
    }

    /// Marks the rebuild done.
    pub async fn mark_rebuilt(&self, now: Timestamp) -> Result<()> {
        self.run(redis::cmd("SET").arg(REBUILT_KEY).arg(now.as_millis())).await
    }

    /// Marks a hold as in doubt from `now` (before a change that gives it back is
    /// recorded): should the release never come (a crash between the record and the
    /// release), reconciliation finds it and asks the log. Does nothing if the hold is gone.
    pub async fn doubt_hold(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        channel: Channel,
        conversation: ConversationId,
        now: Timestamp,
    ) -> Result<()> {
        self.set_hold_score(tenant, op, channel, conversation, now.as_millis()).await
    }

    /// Marks a hold as recorded in the log (its claim time becomes 0), so reconciliation
    /// no longer checks it. Does nothing if the hold is gone (released meanwhile).
    pub async fn confirm_hold(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        channel: Channel,
        conversation: ConversationId,
    ) -> Result<()> {
        self.set_hold_score(tenant, op, channel, conversation, 0).await
    }

    /// Sets an existing hold's score (0: confirmed; else since when it is in doubt).
    async fn set_hold_score(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        channel: Channel,
        conversation: ConversationId,
        score: i64,
    ) -> Result<()> {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(load_key(tenant, op, channel)).arg("XX").arg(score).arg(conversation.to_string());
        self.run(&zadd).await
    }

    /// Conversations the operator holds on `channel` that were claimed before `before` and
    /// never confirmed: candidates for reconciliation (a recent claim may still be waiting
    /// for its record).
    pub async fn stale_holds(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        channel: Channel,
        before: Timestamp,
    ) -> Result<Vec<ConversationId>> {
        let mut c = self.conn.clone();
        // Confirmed holds (score 0) are the log's; only claims older than `before` that
        // were never confirmed are in doubt.
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(load_key(tenant, op, channel))
            .arg("(0")
            .arg(format!("({}", before.as_millis()))
            .query_async(&mut c)
            .await?;
        Ok(ids.iter().filter_map(|s| ConversationId::parse(s).ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_weights_follow_the_rule() {
        let w = Weights { waiting_milli: 500, idle_milli: 250, idle_after: Duration::from_secs(300) };
        let now = Timestamp::from_millis(1_000_000);
        assert_eq!(entry_weight(&activity_entry(now, false), now, w), 1000);
        assert_eq!(entry_weight(&activity_entry(now, true), now, w), 500);
        let long_ago = Timestamp::from_millis(1_000_000 - 300_000);
        assert_eq!(entry_weight(&activity_entry(long_ago, false), now, w), 250);
    }
}
