//! Parley's Redis adapter: the hot, atomic coordination of routing.
//!
//! Keys (every key of a tenant carries the hash tag `{t:<tenant>}`, so all of a tenant's
//! keys live in one Redis Cluster slot and a Lua script may touch any of them):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{t:T}:op:O` | hash | `status`, `reason`, `since` (ms), `last_assigned` (ms) |
//! | `{t:T}:op:O:sessions` | sorted set | live desk sessions, scored by their expiry (ms) |
//! | `{t:T}:op:O:load:C` | sorted set | conversations operator O holds (offered or assigned) on channel C, scored by when they were claimed (ms) |
//! | `{t:T}:queue:Q` | sorted set | conversations waiting in queue Q, by `parley_policy::queue_score` |
//! | `{t:T}:offers` | sorted set | conversations offered and waiting for an answer, by deadline (ms) |
//! | `parley:rebuilt` | string | present once Redis has been rebuilt from the durable side |
//!
//! Redis may lose everything on a crash; routing notices the missing `parley:rebuilt` and
//! rebuilds statuses, loads and queues from JetStream key-value state.
//!
//! *Architecture invariant*: capacity is only ever taken by [`Coordinator::claim`], one
//! Lua script that checks status, live session, capacity and (for queued conversations)
//! that the conversation is still waiting, and takes it, atomically. So no operator is
//! over capacity, however many routers race. Which router's assignment counts is decided
//! by the conversation log (compare-and-set); the loser gives its claim back. A claim left
//! behind by a crash is found by [`Coordinator::stale_holds`] and given back.

use std::time::Duration;

use parley_domain::{Channel, ConversationId, OperatorId, OperatorStatus, QueueId, TenantId, Timestamp};
use redis::aio::ConnectionManager;

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
    /// At capacity on that channel.
    Full,
    /// The conversation is no longer waiting (another router took it).
    Gone,
}

/// An operator's presence as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub status: OperatorStatus,
    pub reason: String,
    pub since: Option<Timestamp>,
    pub connected: bool,
    pub last_assigned: Option<Timestamp>,
    /// Conversations held per channel.
    pub load: Vec<(Channel, u32)>,
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

fn queue_key(tenant: &TenantId, queue: &QueueId) -> String {
    format!("{}:queue:{queue}", tag(tenant))
}

fn offers_key(tenant: &TenantId) -> String {
    format!("{}:offers", tag(tenant))
}

const REBUILT_KEY: &str = "parley:rebuilt";

/// What the operator hash holds.
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

/// One operator's routing-relevant presence for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSnapshot {
    pub status: OperatorStatus,
    pub connected: bool,
    pub load: u32,
    pub last_assigned: Option<Timestamp>,
}

const CLAIM: &str = r#"
-- KEYS: 1 operator hash, 2 operator sessions, 3 operator load (channel), 4 queue
-- ARGV: 1 conversation, 2 capacity, 3 now (ms), 4 from queue (1|0)
if redis.call('HGET', KEYS[1], 'status') ~= 'online' then return 'status' end
if redis.call('ZCOUNT', KEYS[2], ARGV[3], '+inf') == 0 then return 'disconnected' end
-- Already held (a retried claim): nothing more to take.
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 'ok' end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[2]) then return 'full' end
-- Still waiting? (It leaves the queue once its assignment is recorded.)
if ARGV[4] == '1' and not redis.call('ZSCORE', KEYS[4], ARGV[1]) then return 'gone' end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[1], 'last_assigned', ARGV[3])
return 'ok'
"#;

/// Routing's view of Redis. Cheap to clone (a multiplexed, reconnecting connection).
#[derive(Clone)]
pub struct Coordinator {
    conn: ConnectionManager,
    claim: redis::Script,
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
        Ok(Self { conn, claim: redis::Script::new(CLAIM) })
    }

    /// Sets an operator's status (and reason, for away).
    pub async fn set_status(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        status: OperatorStatus,
        reason: &str,
        now: Timestamp,
    ) -> Result<()> {
        self.run(
            redis::cmd("HSET")
                .arg(op_key(tenant, op))
                .arg("status")
                .arg(status.as_str())
                .arg("reason")
                .arg(reason)
                .arg("since")
                .arg(now.as_millis()),
        )
        .await
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
        Ok(())
    }

    /// Records that a desk session of the operator is alive until `expires`.
    pub async fn heartbeat(&self, tenant: &TenantId, op: &OperatorId, session: &str, expires: Timestamp) -> Result<()> {
        let mut c = self.conn.clone();
        let key = sessions_key(tenant, op);
        redis::pipe()
            .cmd("ZADD")
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
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// Ends a desk session at once (a clean disconnect).
    pub async fn end_session(&self, tenant: &TenantId, op: &OperatorId, session: &str) -> Result<()> {
        self.run(redis::cmd("ZREM").arg(sessions_key(tenant, op)).arg(session)).await
    }

    /// Reads an operator's presence and load on every channel.
    pub async fn presence(&self, tenant: &TenantId, op: &OperatorId, now: Timestamp) -> Result<Presence> {
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        read_operator(&mut pipe, tenant, op, now);
        for ch in Channel::ALL {
            pipe.cmd("ZCARD").arg(load_key(tenant, op, ch));
        }
        let values: Vec<redis::Value> = pipe.query_async(&mut c).await?;
        let (hash, connected) = parse_operator(&values[0], &values[1]);
        let loads = values[2..].iter().map(|v| redis::from_redis_value(v.clone()).unwrap_or(0u32));
        Ok(Presence {
            status: hash.status,
            reason: hash.reason,
            since: hash.since,
            connected,
            last_assigned: hash.last_assigned,
            load: Channel::ALL.into_iter().zip(loads).filter(|(_, n)| *n > 0).collect(),
        })
    }

    /// The conversations an operator holds on a channel.
    pub async fn held(&self, tenant: &TenantId, op: &OperatorId, channel: Channel) -> Result<Vec<String>> {
        let mut c = self.conn.clone();
        Ok(redis::cmd("ZRANGE").arg(load_key(tenant, op, channel)).arg(0).arg(-1).query_async(&mut c).await?)
    }

    /// Atomically reserves `capacity`-bounded room for `conversation` with the operator;
    /// with `from_queue`, only while it is still waiting in `queue`. Idempotent for the same
    /// conversation.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        channel: Channel,
        capacity: u32,
        conversation: ConversationId,
        queue: &QueueId,
        from_queue: bool,
        now: Timestamp,
    ) -> Result<std::result::Result<(), ClaimRefused>> {
        let mut c = self.conn.clone();
        let answer: String = self
            .claim
            .key(op_key(tenant, op))
            .key(sessions_key(tenant, op))
            .key(load_key(tenant, op, channel))
            .key(queue_key(tenant, queue))
            .arg(conversation.to_string())
            .arg(capacity)
            .arg(now.as_millis())
            .arg(if from_queue { "1" } else { "0" })
            .invoke_async(&mut c)
            .await?;
        Ok(match answer.as_str() {
            "ok" => Ok(()),
            "status" => Err(ClaimRefused::Status),
            "disconnected" => Err(ClaimRefused::Disconnected),
            "full" => Err(ClaimRefused::Full),
            _ => Err(ClaimRefused::Gone),
        })
    }

    /// Frees the operator's capacity held by a conversation (idempotent).
    pub async fn release(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        channel: Channel,
        conversation: ConversationId,
    ) -> Result<()> {
        self.run(redis::cmd("ZREM").arg(load_key(tenant, op, channel)).arg(conversation.to_string())).await
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

    /// Takes a conversation out of a queue (idempotent).
    pub async fn dequeue(&self, tenant: &TenantId, queue: &QueueId, conversation: ConversationId) -> Result<()> {
        self.run(redis::cmd("ZREM").arg(queue_key(tenant, queue)).arg(conversation.to_string())).await
    }

    /// The first `limit` waiting conversations of a queue, in serving order.
    pub async fn waiting(&self, tenant: &TenantId, queue: &QueueId, limit: usize) -> Result<Vec<ConversationId>> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(queue_key(tenant, queue))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut c)
            .await?;
        Ok(ids.iter().filter_map(|s| ConversationId::parse(s).ok()).collect())
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

    /// Presence of many operators for one channel, in one round trip.
    pub async fn snapshot(
        &self,
        tenant: &TenantId,
        operators: &[OperatorId],
        channel: Channel,
        now: Timestamp,
    ) -> Result<Vec<OperatorSnapshot>> {
        if operators.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        for op in operators {
            read_operator(&mut pipe, tenant, op, now);
            pipe.cmd("ZCARD").arg(load_key(tenant, op, channel));
        }
        let values: Vec<redis::Value> = pipe.query_async(&mut c).await?;
        let mut out = Vec::with_capacity(operators.len());
        for chunk in values.chunks(3) {
            let (hash, connected) = parse_operator(&chunk[0], &chunk[1]);
            out.push(OperatorSnapshot {
                status: hash.status,
                connected,
                load: redis::from_redis_value(chunk[2].clone()).unwrap_or(0),
                last_assigned: hash.last_assigned,
            });
        }
        Ok(out)
    }

    /// Remembers an offer's deadline, so an expired offer is found and moved on.
    pub async fn track_offer(&self, tenant: &TenantId, conversation: ConversationId, expires: Timestamp) -> Result<()> {
        self.run(redis::cmd("ZADD").arg(offers_key(tenant)).arg(expires.as_millis()).arg(conversation.to_string()))
            .await
    }

    /// Forgets an offer (answered, expired or withdrawn).
    pub async fn untrack_offer(&self, tenant: &TenantId, conversation: ConversationId) -> Result<()> {
        self.run(redis::cmd("ZREM").arg(offers_key(tenant)).arg(conversation.to_string())).await
    }

    /// Offers whose deadline has passed.
    pub async fn due_offers(&self, tenant: &TenantId, now: Timestamp, limit: usize) -> Result<Vec<ConversationId>> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(offers_key(tenant))
            .arg("-inf")
            .arg(now.as_millis())
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut c)
            .await?;
        Ok(ids.iter().filter_map(|s| ConversationId::parse(s).ok()).collect())
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

    /// Restores what a held conversation means in Redis (rebuild): the load entry. An
    /// existing entry keeps its claim time.
    pub async fn restore_hold(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        channel: Channel,
        conversation: ConversationId,
    ) -> Result<()> {
        self.run(redis::cmd("ZADD").arg(load_key(tenant, op, channel)).arg("NX").arg(0).arg(conversation.to_string()))
            .await
    }

    /// Conversations the operator holds on `channel` that were claimed before `before`:
    /// candidates for reconciliation (a recent claim may still be waiting for its record).
    pub async fn stale_holds(
        &self,
        tenant: &TenantId,
        op: &OperatorId,
        channel: Channel,
        before: Timestamp,
    ) -> Result<Vec<ConversationId>> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(load_key(tenant, op, channel))
            .arg("-inf")
            .arg(format!("({}", before.as_millis()))
            .query_async(&mut c)
            .await?;
        Ok(ids.iter().filter_map(|s| ConversationId::parse(s).ok()).collect())
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
}
