//! Parley's PostgreSQL adapter: versioned migrations, a pool whose sessions act as the
//! non-owner role `parley_app` under row-level security, tenant-scoped transactions
//! (`SET LOCAL parley.tenant` through `set_config(…, true)`), batched idempotent writes
//! and keyset-paginated reads.
//!
//! *Architecture invariant*: every query runs inside [`Db::tenant_tx`] or a batch that sets
//! the tenant for its rows; a pooled connection never carries one tenant's setting into
//! another transaction, because the setting is transaction-local.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use parley_domain::{DeliveryState, TenantId, Timestamp};
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

pub mod migrate;

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.is_closed() || e.as_db_error().is_none() {
            DbError::Unavailable(e.to_string())
        } else {
            // Keep the server's message, which says what is wrong.
            let db = e.as_db_error().map(|d| format!("{}: {}", d.code().code(), d.message())).unwrap_or_default();
            DbError::Query(db)
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::Unavailable(e.to_string())
    }
}

type Result<T> = std::result::Result<T, DbError>;

pub fn to_system_time(t: Timestamp) -> SystemTime {
    let micros = t.as_micros();
    if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    }
}

pub fn from_system_time(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp::from_micros(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        Err(e) => Timestamp::from_micros(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
    }
}

/// The pool of application connections.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    search_window: i64,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db(..)")
    }
}

impl Db {
    /// Opens a pool of up to `size` connections to `url`. Each new connection switches to
    /// `role` (the non-owner application role), so row-level security applies to it even
    /// when the login user owns the tables.
    pub fn connect(url: &str, size: usize, role: &str) -> anyhow::Result<Self> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| anyhow::anyhow!("database url is invalid: {e}"))?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let role = role.to_owned();
        let pool = Pool::builder(manager)
            .max_size(size)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .post_create(Hook::async_fn(move |client, _| {
                let role = role.clone();
                Box::pin(async move {
                    // The role name comes from configuration; quote it as an identifier.
                    let stmt = format!("SET ROLE \"{}\"", role.replace('"', "\"\""));
                    client.batch_execute(&stmt).await.map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| anyhow::anyhow!("database pool: {e}"))?;
        Ok(Self { pool, search_window: SEARCH_WINDOW })
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<()> {
        let c = self.pool.get().await?;
        c.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Creates the months of `messages` from this one to `months_ahead` after it that do
    /// not exist yet; returns how many it created.
    pub async fn ensure_message_months(&self, months_ahead: i32) -> Result<i32> {
        let c = self.pool.get().await?;
        let row = c.query_one("SELECT parley_ensure_message_months(now(), $1)", &[&months_ahead]).await?;
        Ok(row.get(0))
    }

    /// Runs `f` in a transaction scoped to `tenant`.
    pub async fn tenant_tx<T, F>(&self, tenant: &TenantId, f: F) -> Result<T>
    where
        F: for<'t> FnOnce(&'t tokio_postgres::Transaction<'t>) -> futures_like::BoxFuture<'t, Result<T>>,
    {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT set_config('parley.tenant', $1, true)", &[&tenant.as_str()]).await?;
        let out = f(&tx).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Writes batches of rows, each group under its tenant, in one transaction; every
    /// insert is idempotent, so a redelivered batch changes nothing.
    pub async fn write(&self, batches: &[TenantBatch]) -> Result<()> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        for b in batches {
            let tenant = tx.prepare_cached("SELECT set_config('parley.tenant', $1, true)").await?;
            tx.execute(&tenant, &[&b.tenant.as_str()]).await?;
            write_tenant_batch(&tx, b).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The same pool, with searches reading `window` of the newest messages in time order
    /// before the words' index leads (tests compare both ways with a small window).
    pub fn with_search_window(mut self, window: i64) -> Self {
        self.search_window = window.max(1);
        self
    }

    /// A query that sets no tenant: under row-level security it must see nothing (the
    /// isolation test uses this).
    pub async fn count_without_tenant(&self, table: &str) -> Result<i64> {
        let c = self.pool.get().await?;
        let allowed = [
            "customers",
            "customer_identities",
            "conversations",
            "messages",
            "assignments",
            "routing_decisions",
            "message_deliveries",
            "message_attachments",
            "legal_holds",
            "erasure_receipts",
            "retention_policies",
            "customer_links",
            "audit_log",
            "conversation_notes",
            "csat_answers",
        ];
        if !allowed.contains(&table) {
            return Err(DbError::Query(format!("unknown table {table}")));
        }
        let row = c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?;
        Ok(row.get(0))
    }
}

/// Why a customer cannot be erased now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EraseRefusal {
    NotFound,
    /// Under a legal hold, with its reason.
    Held(String),
    /// These conversations are not closed yet.
    Open(Vec<Uuid>),
}

/// What an erasure removed from the database, and what the caller must still remove
/// elsewhere (files, log records).
#[derive(Debug, Clone, PartialEq)]
pub struct Erased {
    pub receipt_id: Uuid,
    pub erased_at: Timestamp,
    pub conversations: Vec<Uuid>,
    pub messages: i32,
    pub identities: i32,
    /// The customer's addresses on their channels (phone, chat id, email).
    pub addresses: Vec<String>,
    pub attachments: Vec<Uuid>,
}

/// An erasure's receipt.
#[derive(Debug, Clone, PartialEq)]
pub struct ErasureReceipt {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub requested_by: String,
    pub reason: String,
    pub erased_at: Timestamp,
    pub conversations: i32,
    pub messages: i32,
    pub identities: i32,
    pub attachments: i32,
    pub files: i32,
    pub log_records: i64,
}

impl Db {
    /// Puts a customer under a legal hold or lifts it; `false` when the customer is unknown.
    pub async fn set_legal_hold(
        &self,
        tenant: &TenantId,
        customer: Uuid,
        hold: Option<(String, String)>,
        now: Timestamp,
    ) -> Result<bool> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let known = tx.query_opt("SELECT 1 FROM customers WHERE id = $1", &[&customer]).await?.is_some();
                if !known {
                    return Ok(false);
                }
                match hold {
                    Some((reason, by)) => {
                        tx.execute(
                            "INSERT INTO legal_holds (tenant_id, customer_id, reason, set_by, set_at)
                             VALUES (current_setting('parley.tenant', true), $1, $2, $3, $4)
                             ON CONFLICT (tenant_id, customer_id) DO UPDATE
                               SET reason = EXCLUDED.reason, set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at",
                            &[&customer, &reason, &by, &to_system_time(now)],
                        )
                        .await?;
                    }
                    None => {
                        tx.execute("DELETE FROM legal_holds WHERE customer_id = $1", &[&customer]).await?;
                    }
                }
                Ok(true)
            })
        })
        .await
    }

    /// Removes a customer and everything of theirs from every table in one transaction —
    /// messages (with their search vectors, deliveries and attachments' rows),
    /// conversations with their assignments and routing decisions, identities, the customer
    /// — and records a receipt. Refused under a legal hold or while a conversation is open.
    pub async fn erase_customer(
        &self,
        tenant: &TenantId,
        customer: Uuid,
        requested_by: String,
        reason: String,
        now: Timestamp,
    ) -> Result<std::result::Result<Erased, EraseRefusal>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                // Lock the customer: a concurrent hold or write waits for the erasure.
                if tx.query_opt("SELECT 1 FROM customers WHERE id = $1 FOR UPDATE", &[&customer]).await?.is_none() {
                    return Ok(Err(EraseRefusal::NotFound));
                }
                if let Some(row) =
                    tx.query_opt("SELECT reason FROM legal_holds WHERE customer_id = $1", &[&customer]).await?
                {
                    return Ok(Err(EraseRefusal::Held(row.get(0))));
                }
                let open: Vec<Uuid> = first_column(
                    tx,
                    "SELECT id FROM conversations WHERE customer_id = $1 AND status <> 'closed'",
                    &[&customer],
                )
                .await?;
                if !open.is_empty() {
                    return Ok(Err(EraseRefusal::Open(open)));
                }
                let conversations: Vec<Uuid> =
                    first_column(tx, "SELECT id FROM conversations WHERE customer_id = $1", &[&customer]).await?;
                // The customer's messages, and every message of their conversations.
                let messages: Vec<Uuid> = first_column(
                    tx,
                    "SELECT id FROM messages WHERE customer_id = $1 OR conversation_id = ANY($2)",
                    &[&customer, &conversations],
                )
                .await?;
                let (removed, attachments) = delete_messages(tx, &messages).await?;
                delete_conversations(tx, &conversations).await?;
                let addresses: Vec<String> = first_column(
                    tx,
                    "DELETE FROM customer_identities WHERE customer_id = $1 RETURNING address",
                    &[&customer],
                )
                .await?;
                let identities = addresses.len();
                // Links of and to the customer: the others stand alone.
                tx.execute("DELETE FROM customer_links WHERE customer_id = $1 OR person_id = $1", &[&customer]).await?;
                tx.execute("DELETE FROM customers WHERE id = $1", &[&customer]).await?;
                let receipt_id = Uuid::now_v7();
                let (n_conv, n_msg, n_id, n_att) =
                    (conversations.len() as i32, removed as i32, identities as i32, attachments.len() as i32);
                tx.execute(
                    "INSERT INTO erasure_receipts (tenant_id, id, customer_id, requested_by, reason, erased_at,
                                                   conversations, messages, identities, attachments)
                     VALUES (current_setting('parley.tenant', true), $1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &receipt_id,
                        &customer,
                        &requested_by,
                        &reason,
                        &to_system_time(now),
                        &n_conv,
                        &n_msg,
                        &n_id,
                        &n_att,
                    ],
                )
                .await?;
                Ok(Ok(Erased {
                    receipt_id,
                    erased_at: now,
                    conversations,
                    messages: n_msg,
                    identities: n_id,
                    addresses,
                    attachments,
                }))
            })
        })
        .await
    }

    /// Completes a receipt with what was removed outside the database.
    pub async fn complete_receipt(&self, tenant: &TenantId, id: Uuid, files: i32, log_records: i64) -> Result<()> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE erasure_receipts SET files = $2, log_records = $3 WHERE id = $1",
                    &[&id, &files, &log_records],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// The receipts of a customer's erasures, newest first.
    pub async fn erasure_receipts(&self, tenant: &TenantId, customer: Uuid) -> Result<Vec<ErasureReceipt>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let rows = tx
                    .query(
                        "SELECT id, customer_id, requested_by, reason, erased_at, conversations, messages, identities,
                                attachments, files, log_records
                         FROM erasure_receipts WHERE customer_id = $1 ORDER BY erased_at DESC",
                        &[&customer],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| ErasureReceipt {
                        id: r.get(0),
                        customer_id: r.get(1),
                        requested_by: r.get(2),
                        reason: r.get(3),
                        erased_at: from_system_time(r.get(4)),
                        conversations: r.get(5),
                        messages: r.get(6),
                        identities: r.get(7),
                        attachments: r.get(8),
                        files: r.get(9),
                        log_records: r.get(10),
                    })
                    .collect())
            })
        })
        .await
    }
}

/// How long a tenant keeps closed conversations of a channel (`*`: every channel without
/// its own policy), and what happens after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub channel: String,
    pub days: i32,
    /// `delete` or `anonymise`.
    pub action: String,
    pub set_by: String,
    pub updated_at: Timestamp,
}

/// What one retention pass did for a tenant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetentionRun {
    pub deleted: Vec<Uuid>,
    pub anonymised: Vec<Uuid>,
    /// Attachments' files to remove from the media store.
    pub files: Vec<Uuid>,
}

impl Db {
    pub async fn set_retention_policy(&self, tenant: &TenantId, p: RetentionPolicy) -> Result<()> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO retention_policies (tenant_id, channel, days, action, set_by, updated_at)
                     VALUES (current_setting('parley.tenant', true), $1, $2, $3, $4, $5)
                     ON CONFLICT (tenant_id, channel) DO UPDATE SET days = EXCLUDED.days, action = EXCLUDED.action,
                       set_by = EXCLUDED.set_by, updated_at = EXCLUDED.updated_at",
                    &[&p.channel, &p.days, &p.action, &p.set_by, &to_system_time(p.updated_at)],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Removes a policy; `false` when there was none.
    pub async fn delete_retention_policy(&self, tenant: &TenantId, channel: String) -> Result<bool> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                Ok(tx.execute("DELETE FROM retention_policies WHERE channel = $1", &[&channel]).await? > 0)
            })
        })
        .await
    }

    pub async fn retention_policies(&self, tenant: &TenantId) -> Result<Vec<RetentionPolicy>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let rows = tx
                    .query(
                        "SELECT channel, days, action, set_by, updated_at FROM retention_policies ORDER BY channel",
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| RetentionPolicy {
                        channel: r.get(0),
                        days: r.get(1),
                        action: r.get(2),
                        set_by: r.get(3),
                        updated_at: from_system_time(r.get(4)),
                    })
                    .collect())
            })
        })
        .await
    }

    /// One retention pass for a tenant: closed conversations past their channel's policy
    /// (or the tenant's `*` one), whose customer is under no legal hold, at most `limit`,
    /// deleted or anonymised in one transaction.
    pub async fn apply_retention(&self, tenant: &TenantId, now: Timestamp, limit: i64) -> Result<RetentionRun> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let due = tx
                    .query(
                        "SELECT c.id, p.action FROM conversations c
                         JOIN retention_policies p ON p.tenant_id = c.tenant_id AND p.channel = COALESCE(
                           (SELECT channel FROM retention_policies WHERE channel = c.channel), '*')
                         WHERE c.status = 'closed' AND c.closed_at <= $1::timestamptz - make_interval(days => p.days)
                           AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.tenant_id = c.tenant_id
                                           AND h.customer_id = c.customer_id)
                           AND NOT (p.action = 'anonymise' AND NOT EXISTS (SELECT 1 FROM messages m
                                    WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.id AND NOT m.anonymised))
                         ORDER BY c.closed_at LIMIT $2",
                        &[&to_system_time(now), &limit],
                    )
                    .await?;
                let mut run = RetentionRun::default();
                for r in &due {
                    let id: Uuid = r.get(0);
                    match r.get::<_, &str>(1) {
                        "delete" => run.deleted.push(id),
                        _ => run.anonymised.push(id),
                    }
                }
                let all: Vec<Uuid> = run.deleted.iter().chain(&run.anonymised).copied().collect();
                if all.is_empty() {
                    return Ok(run);
                }
                if !run.anonymised.is_empty() {
                    run.files = first_column(
                        tx,
                        "DELETE FROM message_attachments a USING messages m
                             WHERE a.tenant_id = m.tenant_id AND a.message_id = m.id AND m.conversation_id = ANY($1)
                             RETURNING a.id",
                        &[&run.anonymised],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE messages SET body = '', subject = '', quoted_text = NULL, anonymised = true
                         WHERE conversation_id = ANY($1)",
                        &[&run.anonymised],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE conversation_notes SET body = '' WHERE conversation_id = ANY($1)",
                        &[&run.anonymised],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE csat_answers SET comment = '' WHERE conversation_id = ANY($1)",
                        &[&run.anonymised],
                    )
                    .await?;
                }
                if !run.deleted.is_empty() {
                    let messages: Vec<Uuid> =
                        first_column(tx, "SELECT id FROM messages WHERE conversation_id = ANY($1)", &[&run.deleted])
                            .await?;
                    let (_, files) = delete_messages(tx, &messages).await?;
                    run.files.extend(files);
                    delete_conversations(tx, &run.deleted).await?;
                }
                Ok(run)
            })
        })
        .await
    }
}

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: Timestamp,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

impl Db {
    pub async fn audit(&self, tenant: &TenantId, e: AuditEntry) -> Result<()> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO audit_log (tenant_id, id, at, actor, role, action, target, detail)
                     VALUES (current_setting('parley.tenant', true), $1, $2, $3, $4, $5, $6, $7)",
                    &[&e.id, &to_system_time(e.at), &e.actor, &e.role, &e.action, &e.target, &e.detail],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// The newest audit entries about a target and/or by an actor (either may be empty).
    pub async fn audit_entries(
        &self,
        tenant: &TenantId,
        target: String,
        actor: String,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let rows = tx
                    .query(
                        "SELECT id, at, actor, role, action, target, detail FROM audit_log
                         WHERE ($1 = '' OR target = $1) AND ($2 = '' OR actor = $2)
                         ORDER BY at DESC, id DESC LIMIT $3",
                        &[&target, &actor, &limit],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| AuditEntry {
                        id: r.get(0),
                        at: from_system_time(r.get(1)),
                        actor: r.get(2),
                        role: r.get(3),
                        action: r.get(4),
                        target: r.get(5),
                        detail: r.get(6),
                    })
                    .collect())
            })
        })
        .await
    }
}

/// An operator's note on a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteRow {
    pub id: Uuid,
    pub author: String,
    pub body: String,
    pub created_at: Timestamp,
}

impl Db {
    /// Adds a note to an existing conversation; `false` when there is no such conversation.
    pub async fn add_note(&self, tenant: &TenantId, conversation: Uuid, note: NoteRow) -> Result<bool> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let n = tx
                    .execute(
                        "INSERT INTO conversation_notes (tenant_id, id, conversation_id, author, body, created_at)
                         SELECT tenant_id, $2, id, $3, $4, $5 FROM conversations WHERE id = $1",
                        &[&conversation, &note.id, &note.author, &note.body, &to_system_time(note.created_at)],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    pub async fn notes(&self, tenant: &TenantId, conversation: Uuid) -> Result<Vec<NoteRow>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let rows = tx
                    .query(
                        "SELECT id, author, body, created_at FROM conversation_notes WHERE conversation_id = $1
                         ORDER BY created_at, id",
                        &[&conversation],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| NoteRow {
                        id: r.get(0),
                        author: r.get(1),
                        body: r.get(2),
                        created_at: from_system_time(r.get(3)),
                    })
                    .collect())
            })
        })
        .await
    }

    /// Records the customer's answer for a closed conversation: `Ok(false)` when there is
    /// no such closed conversation, `Err` kept for the database; a second answer replaces
    /// the first (the customer changed their mind).
    pub async fn record_csat(
        &self,
        tenant: &TenantId,
        conversation: Uuid,
        score: i16,
        comment: String,
        now: Timestamp,
    ) -> Result<bool> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let n = tx
                    .execute(
                        "INSERT INTO csat_answers (tenant_id, conversation_id, score, comment, answered_at)
                         SELECT tenant_id, id, $2, $3, $4 FROM conversations WHERE id = $1 AND status = 'closed'
                         ON CONFLICT (tenant_id, conversation_id) DO UPDATE
                           SET score = EXCLUDED.score, comment = EXCLUDED.comment, answered_at = EXCLUDED.answered_at",
                        &[&conversation, &score, &comment, &to_system_time(now)],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    /// The customer's answer for a conversation, if any: (score, comment, when).
    pub async fn csat(&self, tenant: &TenantId, conversation: Uuid) -> Result<Option<(i16, String, Timestamp)>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                Ok(tx
                    .query_opt(
                        "SELECT score, comment, answered_at FROM csat_answers WHERE conversation_id = $1",
                        &[&conversation],
                    )
                    .await?
                    .map(|r| (r.get(0), r.get(1), from_system_time(r.get(2)))))
            })
        })
        .await
    }
}

/// The first column of every row a query returns.
async fn first_column<T: for<'r> tokio_postgres::types::FromSql<'r>>(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<T>> {
    Ok(tx.query(sql, params).await?.iter().map(|r| r.get(0)).collect())
}

/// Removes messages with their delivery states and attachments' rows (erasure, retention):
/// how many messages went, and the attachments whose files must go too.
async fn delete_messages(tx: &tokio_postgres::Transaction<'_>, messages: &[Uuid]) -> Result<(u64, Vec<Uuid>)> {
    let attachments =
        first_column(tx, "DELETE FROM message_attachments WHERE message_id = ANY($1) RETURNING id", &[&messages])
            .await?;
    tx.execute("DELETE FROM message_deliveries WHERE message_id = ANY($1)", &[&messages]).await?;
    let removed = tx.execute("DELETE FROM messages WHERE id = ANY($1)", &[&messages]).await?;
    Ok((removed, attachments))
}

/// Removes conversations and what hangs on them besides messages: assignments, routing
/// decisions, notes, satisfaction answers.
async fn delete_conversations(tx: &tokio_postgres::Transaction<'_>, conversations: &[Uuid]) -> Result<()> {
    for table in ["assignments", "routing_decisions", "conversation_notes", "csat_answers"] {
        tx.execute(&format!("DELETE FROM {table} WHERE conversation_id = ANY($1)"), &[&conversations]).await?;
    }
    tx.execute("DELETE FROM conversations WHERE id = ANY($1)", &[&conversations]).await?;
    Ok(())
}

/// A boxed future, for the transaction closure (no extra dependency for one alias).
pub mod futures_like {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

/// A customer first seen on a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerRow {
    pub id: Uuid,
    pub display_name: String,
    pub channel: String,
    pub address: String,
    /// A phone number verified for this identity (web chat: by the tenant's site).
    pub verified_phone: Option<String>,
    pub created_at: Timestamp,
}

/// A conversation's newest known state.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub channel: String,
    pub channel_config_id: String,
    pub queue_id: String,
    pub status: String,
    pub operator_id: Option<String>,
    pub priority: i32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub closed_at: Option<Timestamp>,
}

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub customer_id: Uuid,
    pub channel: String,
    pub sender: String,
    pub operator_id: Option<String>,
    pub body: String,
    pub quoted_message_id: Option<Uuid>,
    pub quoted_channel_message_id: Option<String>,
    pub quoted_text: Option<String>,
    pub delivery_state: String,
    pub channel_message_id: String,
    pub created_at: Timestamp,
    /// Email only.
    pub subject: String,
    /// In the channel's order.
    pub attachments: Vec<AttachmentRow>,
}

/// A file sent with a message.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachmentRow {
    pub id: Uuid,
    pub kind: String,
    pub mime_type: String,
    pub file_name: String,
    pub size_bytes: i64,
}

/// An operator getting a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentRow {
    pub event_id: Uuid,
    pub conversation_id: Uuid,
    pub operator_id: String,
    pub reason: String,
    pub note: String,
    pub assigned_at: Timestamp,
}

/// A routing decision with its candidates (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub queue_id: String,
    pub chosen_operator_id: Option<String>,
    pub reason: String,
    pub candidates_json: String,
    pub decided_at: Timestamp,
    pub strategy: String,
    pub tie_breaker: String,
    pub requirements_json: String,
}

/// Rows of one tenant to write together.
#[derive(Debug, Clone)]
pub struct TenantBatch {
    pub tenant: TenantId,
    pub customers: Vec<CustomerRow>,
    pub conversations: Vec<ConversationRow>,
    pub messages: Vec<MessageRow>,
    pub assignments: Vec<AssignmentRow>,
    pub decisions: Vec<DecisionRow>,
    pub deliveries: Vec<DeliveryRow>,
}

/// A message's delivery state as a receipt reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub message_id: Uuid,
    pub state: DeliveryState,
    pub failure_reason: String,
    pub updated_at: Timestamp,
}

impl TenantBatch {
    pub fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            customers: Vec::new(),
            conversations: Vec::new(),
            messages: Vec::new(),
            assignments: Vec::new(),
            decisions: Vec::new(),
            deliveries: Vec::new(),
        }
    }

    /// Takes another batch's rows (of the same tenant). Every field is named, so a new kind
    /// of row cannot be forgotten here.
    pub fn absorb(&mut self, other: TenantBatch) {
        let TenantBatch { tenant, customers, conversations, messages, assignments, decisions, deliveries } = other;
        debug_assert_eq!(tenant, self.tenant);
        self.customers.extend(customers);
        self.conversations.extend(conversations);
        self.messages.extend(messages);
        self.assignments.extend(assignments);
        self.decisions.extend(decisions);
        self.deliveries.extend(deliveries);
    }

    pub fn is_empty(&self) -> bool {
        self.customers.is_empty()
            && self.conversations.is_empty()
            && self.messages.is_empty()
            && self.assignments.is_empty()
            && self.decisions.is_empty()
            && self.deliveries.is_empty()
    }
}

fn times(v: impl Iterator<Item = Timestamp>) -> Vec<SystemTime> {
    v.map(to_system_time).collect()
}

/// Links each of customers `$2` with a phone (their SMS or WhatsApp number, or one their
/// site verified) to the person of the earliest other customer with that phone: both
/// numbers were verified (by the carrier, WhatsApp or the tenant's site). A customer already
/// linked, or unlinked by an operator, keeps that.
const LINK_BY_PHONE: &str = "
    WITH n AS (
      SELECT customer_id, first_seen_at,
             regexp_replace(CASE WHEN channel IN ('sms', 'whatsapp') THEN address ELSE verified_phone END,
                            '[^0-9]', '', 'g') AS phone
      FROM customer_identities
      WHERE tenant_id = $1 AND customer_id = ANY($2)
        AND (channel IN ('sms', 'whatsapp') OR verified_phone IS NOT NULL)
    ), o AS (
      SELECT n.customer_id AS new_id, n.first_seen_at AS new_seen, i.customer_id, i.first_seen_at
      FROM n JOIN customer_identities i ON i.tenant_id = $1 AND i.channel IN ('sms', 'whatsapp')
        AND regexp_replace(i.address, '[^0-9]', '', 'g') = n.phone AND i.customer_id <> n.customer_id
      WHERE length(n.phone) >= 7
      UNION ALL
      SELECT n.customer_id, n.first_seen_at, i.customer_id, i.first_seen_at
      FROM n JOIN customer_identities i ON i.tenant_id = $1 AND i.verified_phone IS NOT NULL
        AND regexp_replace(i.verified_phone, '[^0-9]', '', 'g') = n.phone AND i.customer_id <> n.customer_id
      WHERE length(n.phone) >= 7
    )
    INSERT INTO customer_links (tenant_id, customer_id, person_id, reason, linked_by, linked_at)
    SELECT DISTINCT ON (o.new_id) $1, o.new_id, COALESCE(l.person_id, o.customer_id), 'verified_phone', 'parley',
           o.new_seen
    FROM o LEFT JOIN customer_links l ON l.tenant_id = $1 AND l.customer_id = o.customer_id
    WHERE COALESCE(l.person_id, o.customer_id) <> o.new_id
    ORDER BY o.new_id, o.first_seen_at
    ON CONFLICT (tenant_id, customer_id) DO NOTHING";

/// Messages from arrays, one per column (see [`write_tenant_batch`]).
const INSERT_MESSAGES: &str = "INSERT INTO messages (tenant_id, id, conversation_id, customer_id, channel, sender,
                                   operator_id, body, quoted_message_id, quoted_channel_message_id, quoted_text,
                                   delivery_state, channel_message_id, created_at, subject)
     SELECT $1, * FROM UNNEST($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[],
                              $9::uuid[], $10::text[], $11::text[], $12::text[], $13::text[], $14::timestamptz[],
                              $15::text[])";

async fn write_tenant_batch(tx: &deadpool_postgres::Transaction<'_>, b: &TenantBatch) -> Result<()> {
    let tenant = b.tenant.as_str();
    if !b.customers.is_empty() {
        let mut customers: Vec<&CustomerRow> = b.customers.iter().collect();
        customers.sort_by_key(|c| c.id);
        customers.dedup_by_key(|c| c.id);
        let ids: Vec<Uuid> = customers.iter().map(|c| c.id).collect();
        let names: Vec<&str> = customers.iter().map(|c| c.display_name.as_str()).collect();
        let created = times(customers.iter().map(|c| c.created_at));
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO customers (tenant_id, id, display_name, created_at)
             SELECT $1, * FROM UNNEST($2::uuid[], $3::text[], $4::timestamptz[])
             ON CONFLICT (tenant_id, id) DO NOTHING",
            )
            .await?,
            &[&tenant, &ids, &names, &created],
        )
        .await?;
        let mut identities: Vec<&CustomerRow> = b.customers.iter().collect();
        identities.sort_by(|a, b| (&a.channel, &a.address).cmp(&(&b.channel, &b.address)));
        identities.dedup_by(|a, b| a.channel == b.channel && a.address == b.address);
        let channels: Vec<&str> = identities.iter().map(|c| c.channel.as_str()).collect();
        let addresses: Vec<&str> = identities.iter().map(|c| c.address.as_str()).collect();
        let ids: Vec<Uuid> = identities.iter().map(|c| c.id).collect();
        let phones: Vec<Option<&str>> = identities.iter().map(|c| c.verified_phone.as_deref()).collect();
        let seen = times(identities.iter().map(|c| c.created_at));
        tx.execute(
            &tx.prepare_cached("INSERT INTO customer_identities (tenant_id, channel, address, customer_id, verified_phone, first_seen_at)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::uuid[], $5::text[], $6::timestamptz[])
             ON CONFLICT (tenant_id, channel, address) DO UPDATE SET verified_phone = EXCLUDED.verified_phone
             WHERE EXCLUDED.verified_phone IS NOT NULL
               AND customer_identities.verified_phone IS DISTINCT FROM EXCLUDED.verified_phone").await?,
            &[&tenant, &channels, &addresses, &ids, &phones, &seen],
        )
        .await?;
        // Only identities with a phone can be linked by one.
        if identities.iter().any(|c| c.verified_phone.is_some() || matches!(c.channel.as_str(), "sms" | "whatsapp")) {
            tx.execute(LINK_BY_PHONE, &[&tenant, &ids]).await?;
        }
    }
    if !b.conversations.is_empty() {
        // One row per conversation: the newest state in the batch.
        let mut convs: Vec<&ConversationRow> = b.conversations.iter().collect();
        convs.sort_by(|a, b| a.id.cmp(&b.id).then(b.updated_at.cmp(&a.updated_at)));
        convs.dedup_by_key(|c| c.id);
        let c = &convs;
        let ids: Vec<Uuid> = c.iter().map(|c| c.id).collect();
        let customers: Vec<Uuid> = c.iter().map(|c| c.customer_id).collect();
        let channels: Vec<&str> = c.iter().map(|c| c.channel.as_str()).collect();
        let configs: Vec<&str> = c.iter().map(|c| c.channel_config_id.as_str()).collect();
        let queues: Vec<&str> = c.iter().map(|c| c.queue_id.as_str()).collect();
        let statuses: Vec<&str> = c.iter().map(|c| c.status.as_str()).collect();
        let operators: Vec<Option<&str>> = c.iter().map(|c| c.operator_id.as_deref()).collect();
        let priorities: Vec<i32> = c.iter().map(|c| c.priority).collect();
        let created = times(c.iter().map(|c| c.created_at));
        let updated = times(c.iter().map(|c| c.updated_at));
        let closed: Vec<Option<SystemTime>> = c.iter().map(|c| c.closed_at.map(to_system_time)).collect();
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO conversations (tenant_id, id, customer_id, channel, channel_config_id, queue_id, status,
                                        operator_id, priority, created_at, updated_at, closed_at)
             SELECT $1, * FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[],
                                      $8::text[], $9::int4[], $10::timestamptz[], $11::timestamptz[],
                                      $12::timestamptz[])
             ON CONFLICT (tenant_id, id) DO UPDATE SET
               queue_id = EXCLUDED.queue_id, status = EXCLUDED.status, operator_id = EXCLUDED.operator_id,
               priority = EXCLUDED.priority, updated_at = EXCLUDED.updated_at, closed_at = EXCLUDED.closed_at
             WHERE conversations.updated_at <= EXCLUDED.updated_at",
            )
            .await?,
            &[
                &tenant,
                &ids,
                &customers,
                &channels,
                &configs,
                &queues,
                &statuses,
                &operators,
                &priorities,
                &created,
                &updated,
                &closed,
            ],
        )
        .await?;
    }
    if !b.messages.is_empty() {
        let mut msgs: Vec<&MessageRow> = b.messages.iter().collect();
        msgs.sort_by_key(|m| m.id);
        msgs.dedup_by_key(|m| m.id);
        let m = &msgs;
        let ids: Vec<Uuid> = m.iter().map(|m| m.id).collect();
        let convs: Vec<Uuid> = m.iter().map(|m| m.conversation_id).collect();
        let customers: Vec<Uuid> = m.iter().map(|m| m.customer_id).collect();
        let channels: Vec<&str> = m.iter().map(|m| m.channel.as_str()).collect();
        let senders: Vec<&str> = m.iter().map(|m| m.sender.as_str()).collect();
        let operators: Vec<Option<&str>> = m.iter().map(|m| m.operator_id.as_deref()).collect();
        let bodies: Vec<&str> = m.iter().map(|m| m.body.as_str()).collect();
        let q_ids: Vec<Option<Uuid>> = m.iter().map(|m| m.quoted_message_id).collect();
        let q_channel_ids: Vec<Option<&str>> = m.iter().map(|m| m.quoted_channel_message_id.as_deref()).collect();
        let q_texts: Vec<Option<&str>> = m.iter().map(|m| m.quoted_text.as_deref()).collect();
        let states: Vec<&str> = m.iter().map(|m| m.delivery_state.as_str()).collect();
        let channel_ids: Vec<&str> = m.iter().map(|m| m.channel_message_id.as_str()).collect();
        let created = times(m.iter().map(|m| m.created_at));
        let subjects: Vec<&str> = m.iter().map(|m| m.subject.as_str()).collect();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 15] = [
            &tenant,
            &ids,
            &convs,
            &customers,
            &channels,
            &senders,
            &operators,
            &bodies,
            &q_ids,
            &q_channel_ids,
            &q_texts,
            &states,
            &channel_ids,
            &created,
            &subjects,
        ];
        // First a plain insert, which checks the primary key as it inserts, where
        // ON CONFLICT probes it before every row. A batch holding a message already stored
        // (a redelivery) fails it, rolls back to the savepoint and goes again skipping those.
        tx.batch_execute("SAVEPOINT messages").await?;
        match tx.execute(&tx.prepare_cached(INSERT_MESSAGES).await?, &params).await {
            Ok(_) => tx.batch_execute("RELEASE SAVEPOINT messages").await?,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT messages").await?;
                let again = format!("{INSERT_MESSAGES} ON CONFLICT (tenant_id, id, created_at) DO NOTHING");
                tx.execute(&tx.prepare_cached(&again).await?, &params).await?;
            }
            Err(e) => return Err(e.into()),
        }
        let files: Vec<(Uuid, i16, &AttachmentRow)> =
            m.iter().flat_map(|m| m.attachments.iter().enumerate().map(move |(i, a)| (m.id, i as i16, a))).collect();
        if !files.is_empty() {
            let messages: Vec<Uuid> = files.iter().map(|f| f.0).collect();
            let positions: Vec<i16> = files.iter().map(|f| f.1).collect();
            let ids: Vec<Uuid> = files.iter().map(|f| f.2.id).collect();
            let kinds: Vec<&str> = files.iter().map(|f| f.2.kind.as_str()).collect();
            let mimes: Vec<&str> = files.iter().map(|f| f.2.mime_type.as_str()).collect();
            let names: Vec<&str> = files.iter().map(|f| f.2.file_name.as_str()).collect();
            let sizes: Vec<i64> = files.iter().map(|f| f.2.size_bytes).collect();
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO message_attachments (tenant_id, message_id, position, id, kind, mime_type, file_name,
                                                  size_bytes)
                 SELECT $1, * FROM UNNEST($2::uuid[], $3::int2[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                                          $8::int8[])
                 ON CONFLICT DO NOTHING",
                )
                .await?,
                &[&tenant, &messages, &positions, &ids, &kinds, &mimes, &names, &sizes],
            )
            .await?;
        }
    }
    if !b.assignments.is_empty() {
        let a = &b.assignments;
        let ids: Vec<Uuid> = a.iter().map(|a| a.event_id).collect();
        let convs: Vec<Uuid> = a.iter().map(|a| a.conversation_id).collect();
        let ops: Vec<&str> = a.iter().map(|a| a.operator_id.as_str()).collect();
        let reasons: Vec<&str> = a.iter().map(|a| a.reason.as_str()).collect();
        let notes: Vec<&str> = a.iter().map(|a| a.note.as_str()).collect();
        let at = times(a.iter().map(|a| a.assigned_at));
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO assignments (tenant_id, event_id, conversation_id, operator_id, reason, note, assigned_at)
             SELECT $1, * FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
             ON CONFLICT (tenant_id, event_id) DO NOTHING",
            )
            .await?,
            &[&tenant, &ids, &convs, &ops, &reasons, &notes, &at],
        )
        .await?;
    }
    if !b.decisions.is_empty() {
        let d = &b.decisions;
        let ids: Vec<Uuid> = d.iter().map(|d| d.id).collect();
        let convs: Vec<Uuid> = d.iter().map(|d| d.conversation_id).collect();
        let queues: Vec<&str> = d.iter().map(|d| d.queue_id.as_str()).collect();
        let chosen: Vec<Option<&str>> = d.iter().map(|d| d.chosen_operator_id.as_deref()).collect();
        let reasons: Vec<&str> = d.iter().map(|d| d.reason.as_str()).collect();
        let candidates: Vec<&str> = d.iter().map(|d| d.candidates_json.as_str()).collect();
        let at = times(d.iter().map(|d| d.decided_at));
        let strategies: Vec<&str> = d.iter().map(|d| d.strategy.as_str()).collect();
        let tie_breakers: Vec<&str> = d.iter().map(|d| d.tie_breaker.as_str()).collect();
        let requirements: Vec<&str> = d.iter().map(|d| d.requirements_json.as_str()).collect();
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO routing_decisions (tenant_id, id, conversation_id, queue_id, chosen_operator_id, reason,
                                            candidates, decided_at, strategy, tie_breaker, requirements)
             SELECT $1, u.id, u.conv, u.queue, u.chosen, u.reason, u.candidates::jsonb, u.at, u.strategy, u.tie,
                    u.requirements::jsonb
             FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[],
                         $9::text[], $10::text[], $11::text[])
                  AS u(id, conv, queue, chosen, reason, candidates, at, strategy, tie, requirements)
             ON CONFLICT (tenant_id, id) DO NOTHING",
            )
            .await?,
            &[
                &tenant,
                &ids,
                &convs,
                &queues,
                &chosen,
                &reasons,
                &candidates,
                &at,
                &strategies,
                &tie_breakers,
                &requirements,
            ],
        )
        .await?;
    }
    if !b.deliveries.is_empty() {
        // The furthest state per message in the batch; the table keeps the furthest ever.
        let mut d = b.deliveries.clone();
        d.sort_by(|a, b| a.message_id.cmp(&b.message_id).then(b.state.cmp(&a.state)));
        d.dedup_by_key(|d| d.message_id);
        let ids: Vec<Uuid> = d.iter().map(|d| d.message_id).collect();
        let states: Vec<&str> = d.iter().map(|d| d.state.as_str()).collect();
        let ranks: Vec<i16> = d.iter().map(|d| d.state as i16).collect();
        let reasons: Vec<&str> = d.iter().map(|d| d.failure_reason.as_str()).collect();
        let at = times(d.iter().map(|d| d.updated_at));
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO message_deliveries (tenant_id, message_id, state, rank, failure_reason, updated_at)
             SELECT $1, * FROM UNNEST($2::uuid[], $3::text[], $4::int2[], $5::text[], $6::timestamptz[])
             ON CONFLICT (tenant_id, message_id) DO UPDATE SET
               state = EXCLUDED.state, rank = EXCLUDED.rank, failure_reason = EXCLUDED.failure_reason,
               updated_at = EXCLUDED.updated_at
             WHERE message_deliveries.rank < EXCLUDED.rank",
            )
            .await?,
            &[&tenant, &ids, &states, &ranks, &reasons, &at],
        )
        .await?;
    }
    Ok(())
}

/// Which conversations a listing wants; `None` filters nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConversationFilter {
    pub status: Option<String>,
    pub queue_id: Option<String>,
    /// Conversations this operator held at some time.
    pub operator_id: Option<String>,
    pub channel: Option<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

/// What a message search looks for; `None` filters nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchFilter {
    /// Web-search syntax (`websearch_to_tsquery`), stemmed by the `russian` configuration.
    pub query: String,
    pub channel: Option<String>,
    pub operator_id: Option<String>,
    /// `customer`, `operator`, …
    pub sender: Option<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// Only messages flagged negative; then `query` may be empty (no words to match).
    pub negative_only: bool,
}

/// A message a search found, with the passages that matched and its negativity flag.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHitRow {
    pub message: MessageRow,
    pub headline: String,
    pub negative: bool,
}

/// The end of a query listing rows newest first by `created_at` within a time range
/// (`$5` from, inclusive; `$6` to, exclusive) after a keyset position (`$7`, `$8`), `$9` at
/// most; [`TimePage`] gives those parameters.
const NEWEST_FIRST_PAGE: &str = "AND ($5::timestamptz IS NULL OR created_at >= $5)
       AND ($6::timestamptz IS NULL OR created_at < $6)
       AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8))
     ORDER BY created_at DESC, id DESC LIMIT $9";

/// How many of the newest messages a search with words reads in time order before it
/// lets the words' index lead.
pub const SEARCH_WINDOW: i64 = 20_000;

/// The parameters `$5` to `$8` of [`NEWEST_FIRST_PAGE`].
struct TimePage {
    from: Option<SystemTime>,
    to: Option<SystemTime>,
    before_at: Option<SystemTime>,
    before_id: Option<Uuid>,
}

impl TimePage {
    fn new(from: Option<Timestamp>, to: Option<Timestamp>, before: Option<Cursor>) -> Self {
        Self {
            from: from.map(to_system_time),
            to: to.map(to_system_time),
            before_at: before.map(|c| to_system_time(c.at)),
            before_id: before.map(|c| c.id),
        }
    }
}

/// A keyset position in a time-ordered listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub at: Timestamp,
    pub id: Uuid,
}

fn conversation_row(r: &Row) -> ConversationRow {
    ConversationRow {
        id: r.get("id"),
        customer_id: r.get("customer_id"),
        channel: r.get("channel"),
        channel_config_id: r.get("channel_config_id"),
        queue_id: r.get("queue_id"),
        status: r.get("status"),
        operator_id: r.get("operator_id"),
        priority: r.get("priority"),
        created_at: from_system_time(r.get("created_at")),
        updated_at: from_system_time(r.get("updated_at")),
        closed_at: r.get::<_, Option<SystemTime>>("closed_at").map(from_system_time),
    }
}

fn message_row(r: &Row) -> MessageRow {
    MessageRow {
        id: r.get("id"),
        conversation_id: r.get("conversation_id"),
        customer_id: r.get("customer_id"),
        channel: r.get("channel"),
        sender: r.get("sender"),
        operator_id: r.get("operator_id"),
        body: r.get("body"),
        quoted_message_id: r.get("quoted_message_id"),
        quoted_channel_message_id: r.get("quoted_channel_message_id"),
        quoted_text: r.get("quoted_text"),
        delivery_state: r.get("delivery_state"),
        channel_message_id: r.get("channel_message_id"),
        created_at: from_system_time(r.get("created_at")),
        subject: r.get("subject"),
        attachments: attachment_rows(r),
    }
}

/// The attachments of a message row, from the arrays [`MESSAGE_COLUMNS`] aggregates once per message.
fn attachment_rows(r: &Row) -> Vec<AttachmentRow> {
    // One aggregate row per message; its arrays are NULL when it has no attachments.
    let ids: Vec<Uuid> = r.get::<_, Option<_>>("a_ids").unwrap_or_default();
    let kinds: Vec<String> = r.get::<_, Option<_>>("a_kinds").unwrap_or_default();
    let mimes: Vec<String> = r.get::<_, Option<_>>("a_mimes").unwrap_or_default();
    let names: Vec<String> = r.get::<_, Option<_>>("a_names").unwrap_or_default();
    let sizes: Vec<i64> = r.get::<_, Option<_>>("a_sizes").unwrap_or_default();
    ids.into_iter()
        .zip(kinds)
        .zip(mimes)
        .zip(names)
        .zip(sizes)
        .map(|((((id, kind), mime_type), file_name), size_bytes)| AttachmentRow {
            id,
            kind,
            mime_type,
            file_name,
            size_bytes,
        })
        .collect()
}

/// A conversation's columns, from `conversations` (not aliased). Its row is not rewritten for
/// records that only add messages (see the history writer), so its update time is the later
/// of the row's and its newest message's.
const CONVERSATION_COLUMNS: &str = "id, customer_id, channel, channel_config_id, queue_id, status, operator_id,
     priority, created_at, closed_at,
     GREATEST(updated_at, (SELECT max(lm.created_at) FROM messages lm
                           WHERE lm.tenant_id = conversations.tenant_id AND lm.conversation_id = conversations.id))
       AS updated_at";
/// A message's delivery state is its row's, or the furthest a receipt took it.
const MESSAGE_COLUMNS: &str = "id, conversation_id, customer_id, channel, sender, operator_id, body, quoted_message_id,
     quoted_channel_message_id, quoted_text, COALESCE(d.state, m.delivery_state) AS delivery_state,
     channel_message_id, created_at, subject, a.a_ids, a.a_kinds, a.a_mimes, a.a_names, a.a_sizes
     FROM messages m LEFT JOIN message_deliveries d ON d.tenant_id = m.tenant_id AND d.message_id = m.id
     LEFT JOIN LATERAL (
       SELECT array_agg(x.id ORDER BY x.position) AS a_ids, array_agg(x.kind ORDER BY x.position) AS a_kinds,
              array_agg(x.mime_type ORDER BY x.position) AS a_mimes,
              array_agg(x.file_name ORDER BY x.position) AS a_names,
              array_agg(x.size_bytes ORDER BY x.position) AS a_sizes
       FROM message_attachments x WHERE x.tenant_id = m.tenant_id AND x.message_id = m.id) a ON true";

/// A customer with their identities.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerRecord {
    pub id: Uuid,
    pub display_name: String,
    pub created_at: Timestamp,
    /// The person's, across every linked customer: (channel, address, first seen).
    pub identities: Vec<(String, String, Timestamp)>,
    /// The other customers linked with this one into one person, with why.
    pub linked: Vec<(Uuid, String)>,
}

/// The customers of the person a customer ($1) belongs to, itself included.
const PERSON_MEMBERS: &str = "WITH person AS (
       SELECT COALESCE((SELECT person_id FROM customer_links WHERE customer_id = $1), $1) AS id)
     SELECT person.id FROM person
     UNION SELECT l.customer_id FROM customer_links l, person WHERE l.person_id = person.id";

/// Why a link cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRefusal {
    /// This customer does not exist.
    NotFound(Uuid),
}

impl Db {
    /// One conversation and how many messages it has.
    pub async fn conversation(&self, tenant: &TenantId, id: Uuid) -> Result<Option<(ConversationRow, i64)>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {CONVERSATION_COLUMNS}, (SELECT count(*) FROM messages m
                       WHERE m.tenant_id = conversations.tenant_id AND m.conversation_id = conversations.id)
                       AS message_count
                     FROM conversations WHERE id = $1"
                );
                let row = tx.query_opt(&sql, &[&id]).await?;
                Ok(row.map(|r| (conversation_row(&r), r.get::<_, i64>("message_count"))))
            })
        })
        .await
    }

    /// Conversations by id (those that exist).
    pub async fn conversations(&self, tenant: &TenantId, ids: Vec<Uuid>) -> Result<Vec<ConversationRow>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ANY($1) ORDER BY created_at DESC"
                );
                Ok(tx.query(&sql, &[&ids]).await?.iter().map(conversation_row).collect())
            })
        })
        .await
    }

    /// A page of the conversations a filter matches, newest (by opening) first, before
    /// `before`.
    pub async fn list_conversations(
        &self,
        tenant: &TenantId,
        filter: ConversationFilter,
        before: Option<Cursor>,
        limit: i64,
    ) -> Result<Vec<ConversationRow>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {CONVERSATION_COLUMNS} FROM conversations
                     WHERE ($1::text IS NULL OR status = $1)
                       AND ($2::text IS NULL OR queue_id = $2)
                       AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM assignments a
                             WHERE a.operator_id = $3 AND a.conversation_id = conversations.id))
                       AND ($4::text IS NULL OR channel = $4)
                       {NEWEST_FIRST_PAGE}"
                );
                let page = TimePage::new(filter.from, filter.to, before);
                let rows = tx
                    .query(
                        &sql,
                        &[
                            &filter.status,
                            &filter.queue_id,
                            &filter.operator_id,
                            &filter.channel,
                            &page.from,
                            &page.to,
                            &page.before_at,
                            &page.before_id,
                            &limit,
                        ],
                    )
                    .await?;
                Ok(rows.iter().map(conversation_row).collect())
            })
        })
        .await
    }

    /// A page of a conversation's messages after `after`, oldest or newest first.
    pub async fn messages(
        &self,
        tenant: &TenantId,
        conversation: Uuid,
        after: Option<Cursor>,
        limit: i64,
        newest_first: bool,
    ) -> Result<Vec<MessageRow>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let (cmp, order) = if newest_first { ("<", "DESC") } else { (">", "ASC") };
                let rows = match after {
                    None => {
                        let sql = format!(
                            "SELECT {MESSAGE_COLUMNS} WHERE conversation_id = $1
                             ORDER BY created_at {order}, id {order} LIMIT $2"
                        );
                        tx.query(&sql, &[&conversation, &limit]).await?
                    }
                    Some(c) => {
                        let sql = format!(
                            "SELECT {MESSAGE_COLUMNS} WHERE conversation_id = $1
                               AND (created_at, id) {cmp} ($2, $3)
                             ORDER BY created_at {order}, id {order} LIMIT $4"
                        );
                        tx.query(&sql, &[&conversation, &to_system_time(c.at), &c.id, &limit]).await?
                    }
                };
                Ok(rows.iter().map(message_row).collect())
            })
        })
        .await
    }

    /// A page of a customer's messages across conversations, newest first, before `before`.
    pub async fn timeline(
        &self,
        tenant: &TenantId,
        customer: Uuid,
        before: Option<Cursor>,
        limit: i64,
    ) -> Result<Vec<MessageRow>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let rows = match before {
                    None => {
                        let sql = format!(
                            "SELECT {MESSAGE_COLUMNS} WHERE customer_id IN ({PERSON_MEMBERS})
                             ORDER BY created_at DESC, id DESC LIMIT $2"
                        );
                        tx.query(&sql, &[&customer, &limit]).await?
                    }
                    Some(c) => {
                        let sql = format!(
                            "SELECT {MESSAGE_COLUMNS} WHERE customer_id IN ({PERSON_MEMBERS})
                               AND (created_at, id) < ($2, $3)
                             ORDER BY created_at DESC, id DESC LIMIT $4"
                        );
                        tx.query(&sql, &[&customer, &to_system_time(c.at), &c.id, &limit]).await?
                    }
                };
                Ok(rows.iter().map(message_row).collect())
            })
        })
        .await
    }

    /// Messages matching a search, newest first. With words, the newest messages under the
    /// filters are read first, in time order up to [`SEARCH_WINDOW`] of them (see
    /// [`Db::with_search_window`]): common words
    /// fill the page there at once. Only when that window holds fewer hits than the page do
    /// the words' index entries drive the search (rare words: few matches, sorted by time),
    /// so neither kind of word makes PostgreSQL read what the other kind needs.
    pub async fn search(
        &self,
        tenant: &TenantId,
        filter: SearchFilter,
        before: Option<Cursor>,
        limit: i64,
    ) -> Result<Vec<SearchHitRow>> {
        let window = self.search_window;
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                // Without words, the text's start stands for the passages (and `$1` is unused).
                let (headline, words) = if filter.query.is_empty() {
                    ("left(body, 200)", "$1::text IS NOT NULL")
                } else {
                    (
                        "ts_headline('russian', body, websearch_to_tsquery('russian', $1),
                              'MaxFragments=2, MaxWords=24, MinWords=6, StartSel=«, StopSel=»')",
                        "search @@ websearch_to_tsquery('russian', $1)",
                    )
                };
                let negative = if filter.negative_only { "AND parley_negative(m.search)" } else { "" };
                let filters = "($2::text IS NULL OR channel = $2)
                       AND ($3::text IS NULL OR operator_id = $3)
                       AND ($4::text IS NULL OR sender = $4)";
                let page = TimePage::new(filter.from, filter.to, before);
                let hits = |rows: Vec<Row>| {
                    rows.iter()
                        .map(|r| SearchHitRow {
                            message: message_row(r),
                            headline: r.get("headline"),
                            negative: r.get("negative"),
                        })
                        .collect::<Vec<_>>()
                };
                // `$1` to `$8`, the same in both queries.
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
                    &filter.query,
                    &filter.channel,
                    &filter.operator_id,
                    &filter.sender,
                    &page.from,
                    &page.to,
                    &page.before_at,
                    &page.before_id,
                ];
                if !filter.query.is_empty() {
                    // The newest messages first (`$9` of them), then the words among them.
                    debug_assert!(MESSAGE_COLUMNS.contains("FROM messages m"));
                    let newest = MESSAGE_COLUMNS.replacen(
                        "FROM messages m",
                        &format!("FROM (SELECT * FROM messages WHERE {filters} {NEWEST_FIRST_PAGE}) m"),
                        1,
                    );
                    let sql = format!(
                        "SELECT {headline} AS headline, parley_negative(m.search) AS negative, {newest}
                         WHERE {words} {negative} ORDER BY created_at DESC, id DESC LIMIT $10"
                    );
                    let rows = tx.query(&sql, &[&params[..], &[&window, &limit]].concat()).await?;
                    if rows.len() as i64 >= limit {
                        return Ok(hits(rows));
                    }
                    // Rare words: their index finds every match; reading by time would
                    // scan the whole history for them.
                    tx.batch_execute("SET LOCAL enable_indexscan = off").await?;
                }
                let sql = format!(
                    "SELECT {headline} AS headline, parley_negative(m.search) AS negative, {MESSAGE_COLUMNS}
                     WHERE {words} {negative} AND {filters}
                       {NEWEST_FIRST_PAGE}"
                );
                let rows = tx.query(&sql, &[&params[..], &[&limit]].concat()).await?;
                Ok(hits(rows))
            })
        })
        .await
    }

    /// One customer with their channel identities.
    pub async fn customer(&self, tenant: &TenantId, id: Uuid) -> Result<Option<CustomerRecord>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let Some(row) =
                    tx.query_opt("SELECT id, display_name, created_at FROM customers WHERE id = $1", &[&id]).await?
                else {
                    return Ok(None);
                };
                let sql = format!(
                    "SELECT channel, address, first_seen_at FROM customer_identities
                     WHERE customer_id IN ({PERSON_MEMBERS}) ORDER BY first_seen_at, channel, address"
                );
                let identities = tx
                    .query(&sql, &[&id])
                    .await?
                    .iter()
                    .map(|r| (r.get(0), r.get(1), from_system_time(r.get(2))))
                    .collect();
                let sql = format!(
                    "SELECT m.id, COALESCE(l.reason, (SELECT reason FROM customer_links WHERE customer_id = $1), '')
                     FROM ({PERSON_MEMBERS}) AS m(id)
                     LEFT JOIN customer_links l ON l.customer_id = m.id AND l.person_id <> l.customer_id
                     WHERE m.id <> $1 ORDER BY m.id"
                );
                let linked = tx.query(&sql, &[&id]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
                Ok(Some(CustomerRecord {
                    id: row.get(0),
                    display_name: row.get(1),
                    created_at: from_system_time(row.get(2)),
                    identities,
                    linked,
                }))
            })
        })
        .await
    }

    /// Joins `customer` (with everyone linked to it) to the person of `into`.
    pub async fn link_customers(
        &self,
        tenant: &TenantId,
        customer: Uuid,
        into: Uuid,
        by: String,
        now: Timestamp,
    ) -> Result<std::result::Result<(), LinkRefusal>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                for id in [customer, into] {
                    if tx.query_opt("SELECT 1 FROM customers WHERE id = $1 FOR UPDATE", &[&id]).await?.is_none() {
                        return Ok(Err(LinkRefusal::NotFound(id)));
                    }
                }
                let person: Uuid = tx
                    .query_one(
                        "SELECT COALESCE((SELECT person_id FROM customer_links WHERE customer_id = $1), $1)",
                        &[&into],
                    )
                    .await?
                    .get(0);
                let members: Vec<Uuid> = first_column(tx, PERSON_MEMBERS, &[&customer]).await?;
                for m in members.into_iter().filter(|m| *m != person) {
                    tx.execute(
                        "INSERT INTO customer_links (tenant_id, customer_id, person_id, reason, linked_by, linked_at)
                         VALUES (current_setting('parley.tenant', true), $1, $2, 'operator', $3, $4)
                         ON CONFLICT (tenant_id, customer_id) DO UPDATE SET person_id = EXCLUDED.person_id,
                           reason = EXCLUDED.reason, linked_by = EXCLUDED.linked_by, linked_at = EXCLUDED.linked_at",
                        &[&m, &person, &by, &to_system_time(now)],
                    )
                    .await?;
                }
                // The person itself is linked to nobody else.
                tx.execute("DELETE FROM customer_links WHERE customer_id = $1 AND person_id <> $1", &[&person]).await?;
                Ok(Ok(()))
            })
        })
        .await
    }

    /// Separates `customer` from its person for good (no automatic link comes back); the
    /// others stay together. A person's own customer hands the person to the next member.
    pub async fn unlink_customer(
        &self,
        tenant: &TenantId,
        customer: Uuid,
        by: String,
        now: Timestamp,
    ) -> Result<std::result::Result<(), LinkRefusal>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                if tx.query_opt("SELECT 1 FROM customers WHERE id = $1 FOR UPDATE", &[&customer]).await?.is_none() {
                    return Ok(Err(LinkRefusal::NotFound(customer)));
                }
                // Members that had this customer as their person move to the first of them.
                let followers: Vec<Uuid> = first_column(
                    tx,
                    "SELECT customer_id FROM customer_links WHERE person_id = $1 AND customer_id <> $1
                         ORDER BY linked_at, customer_id",
                    &[&customer],
                )
                .await?;
                if let Some(next) = followers.first() {
                    tx.execute(
                        "UPDATE customer_links SET person_id = $2 WHERE person_id = $1 AND customer_id <> $1",
                        &[&customer, next],
                    )
                    .await?;
                    tx.execute("DELETE FROM customer_links WHERE customer_id = $1", &[next]).await?;
                }
                tx.execute(
                    "INSERT INTO customer_links (tenant_id, customer_id, person_id, reason, linked_by, linked_at)
                     VALUES (current_setting('parley.tenant', true), $1, $1, 'unlinked', $2, $3)
                     ON CONFLICT (tenant_id, customer_id) DO UPDATE SET person_id = EXCLUDED.person_id,
                       reason = EXCLUDED.reason, linked_by = EXCLUDED.linked_by, linked_at = EXCLUDED.linked_at",
                    &[&customer, &by, &to_system_time(now)],
                )
                .await?;
                Ok(Ok(()))
            })
        })
        .await
    }

    /// A conversation's routing decisions, oldest first.
    pub async fn decisions(&self, tenant: &TenantId, conversation: Uuid) -> Result<Vec<DecisionRow>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let rows = tx
                    .query(
                        "SELECT id, conversation_id, queue_id, chosen_operator_id, reason, candidates::text, decided_at,
                                strategy, tie_breaker, requirements::text
                         FROM routing_decisions WHERE conversation_id = $1 ORDER BY decided_at, id",
                        &[&conversation],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| DecisionRow {
                        id: r.get(0),
                        conversation_id: r.get(1),
                        queue_id: r.get(2),
                        chosen_operator_id: r.get(3),
                        reason: r.get(4),
                        candidates_json: r.get(5),
                        decided_at: from_system_time(r.get(6)),
                        strategy: r.get(7),
                        tie_breaker: r.get(8),
                        requirements_json: r.get(9),
                    })
                    .collect())
            })
        })
        .await
    }

    /// A conversation's assignments, oldest first.
    pub async fn assignments(&self, tenant: &TenantId, conversation: Uuid) -> Result<Vec<AssignmentRow>> {
        self.tenant_tx(tenant, move |tx| {
            Box::pin(async move {
                let rows = tx
                    .query(
                        "SELECT event_id, conversation_id, operator_id, reason, note, assigned_at
                         FROM assignments WHERE conversation_id = $1 ORDER BY assigned_at, event_id",
                        &[&conversation],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| AssignmentRow {
                        event_id: r.get(0),
                        conversation_id: r.get(1),
                        operator_id: r.get(2),
                        reason: r.get(3),
                        note: r.get(4),
                        assigned_at: from_system_time(r.get(5)),
                    })
                    .collect())
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_time_round_trips_at_microseconds() {
        for micros in [0, 1, 1_700_000_000_123_456, -5_000_001] {
            let t = Timestamp::from_micros(micros);
            assert_eq!(from_system_time(to_system_time(t)), t);
        }
    }
}
