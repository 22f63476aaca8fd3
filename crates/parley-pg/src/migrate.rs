//! Versioned schema migrations, embedded in the binary and applied in order, each in its
//! own transaction, under an advisory lock so that replicas starting together apply each
//! exactly once. Running them again is a no-op.

use tokio_postgres::NoTls;

/// (version, name, SQL), in order. Never edit an applied migration: add the next one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "decision_details", include_str!("../migrations/0002_decision_details.sql")),
    (3, "message_deliveries", include_str!("../migrations/0003_message_deliveries.sql")),
    (4, "message_subject", include_str!("../migrations/0004_message_subject.sql")),
    (5, "message_attachments", include_str!("../migrations/0005_message_attachments.sql")),
    (6, "message_search", include_str!("../migrations/0006_message_search.sql")),
    (7, "erasure", include_str!("../migrations/0007_erasure.sql")),
    (8, "retention", include_str!("../migrations/0008_retention.sql")),
    (9, "customer_links", include_str!("../migrations/0009_customer_links.sql")),
    (10, "audit", include_str!("../migrations/0010_audit.sql")),
    (11, "notes_and_csat", include_str!("../migrations/0011_notes_and_csat.sql")),
    (12, "conversation_listing", include_str!("../migrations/0012_conversation_listing.sql")),
    (13, "message_negativity", include_str!("../migrations/0013_message_negativity.sql")),
    (14, "messages_by_month", include_str!("../migrations/0014_messages_by_month.sql")),
    (15, "verified_phone", include_str!("../migrations/0015_verified_phone.sql")),
    (16, "messages_by_time", include_str!("../migrations/0016_messages_by_time.sql")),
    (17, "one_index_fewer", include_str!("../migrations/0017_one_index_fewer.sql")),
];

/// An arbitrary, fixed key for `pg_advisory_lock` ("parley" in ASCII).
const LOCK_KEY: i64 = 0x7061_726c_6579;

/// Applies pending migrations as the connecting (owner) user; returns the versions applied.
pub async fn run(url: &str) -> anyhow::Result<Vec<i32>> {
    let (mut client, connection) =
        tokio_postgres::connect(url, NoTls).await.map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {e}"))?;
    let conn = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "migration connection closed");
        }
    });
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]).await?;
    let result = apply(&mut client).await;
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]).await;
    drop(client);
    let _ = conn.await;
    result
}

async fn apply(client: &mut tokio_postgres::Client) -> anyhow::Result<Vec<i32>> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS parley_schema_migrations (
               version integer PRIMARY KEY,
               name text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let applied: Vec<i32> =
        client.query("SELECT version FROM parley_schema_migrations", &[]).await?.iter().map(|r| r.get(0)).collect();
    let mut done = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await.map_err(|e| anyhow::anyhow!("migration {version} ({name}) failed: {e}"))?;
        tx.execute("INSERT INTO parley_schema_migrations (version, name) VALUES ($1, $2)", &[version, name]).await?;
        tx.commit().await?;
        tracing::info!(version, name, "migration applied");
        done.push(*version);
    }
    Ok(done)
}
