//! The embedded migration runner.
//!
//! The SQL files of `migrations/` are compiled in. [`migrate`] applies the ones
//! a database lacks, in order, in one transaction, under a transaction-level
//! advisory lock, so that instances starting together apply each migration
//! once and never see a half-migrated schema. Each applied migration's
//! checksum is recorded; a migration edited after it was applied is an error.
//!
//! A database with migrations this binary does not know (a newer release
//! already ran) is accepted: under the expand/contract rule of
//! `migrations/README.md`, an older binary still works against a newer schema.

use crate::db::{map_err, pg_config};
use std::time::Duration;
use terrace_domain::{Policies, StoreError};
use tokio_postgres::NoTls;

/// One migration: its version (the file's number), name and SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial", sql: include_str!("../../../migrations/0001_initial.sql") },
    Migration { version: 2, name: "billing", sql: include_str!("../../../migrations/0002_billing.sql") },
    Migration { version: 3, name: "refuse", sql: include_str!("../../../migrations/0003_refuse.sql") },
    Migration {
        version: 4,
        name: "pending_index",
        sql: include_str!("../../../migrations/0004_pending_index.sql"),
    },
    Migration {
        version: 5,
        name: "worker_leases",
        sql: include_str!("../../../migrations/0005_worker_leases.sql"),
    },
    Migration {
        version: 6,
        name: "unfinished_by_deadline",
        sql: include_str!("../../../migrations/0006_unfinished_by_deadline.sql"),
    },
    Migration { version: 7, name: "row_rules", sql: include_str!("../../../migrations/0007_row_rules.sql") },
    Migration {
        version: 8,
        name: "validate_row_rules",
        sql: include_str!("../../../migrations/0008_validate_row_rules.sql"),
    },
];

/// Arbitrary, fixed: the advisory lock that serialises migration runs.
const LOCK_KEY: i64 = 0x7465_7272_6163_6501;

/// FNV-1a, enough to notice an edited file.
fn checksum(sql: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Applies every migration the database lacks and returns their versions.
///
/// Bounded: connecting by the connect timeout, every statement by the
/// server's statement timeout (the advisory lock by the lock timeout), and
/// the whole run by their sum on the client side.
pub async fn migrate(url: &str, policies: &Policies) -> Result<Vec<i32>, StoreError> {
    let cfg = pg_config(url, &policies.db, "terrace-migrate")?;
    let db = &policies.db;
    let bound = db.connect_timeout
        + (db.statement_timeout + Duration::from_secs(1)) * (MIGRATIONS.len() as u32 + 4)
        + db.lock_timeout;
    // Instances starting together queue for the lock rather than fail at once.
    let wait = db.statement_timeout.max(db.lock_timeout);
    match tokio::time::timeout(bound + wait, run(cfg, wait)).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout { what: format!("migrating: not done within {bound:?}") }),
    }
}

async fn run(cfg: tokio_postgres::Config, lock_wait: Duration) -> Result<Vec<i32>, StoreError> {
    let (mut client, connection) = cfg.connect(NoTls).await.map_err(map_err)?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "migration connection ended");
        }
    });
    let result = apply(&mut client, lock_wait).await;
    drop(client);
    driver.abort();
    result
}

async fn apply(client: &mut tokio_postgres::Client, lock_wait: Duration) -> Result<Vec<i32>, StoreError> {
    let tx = client.transaction().await.map_err(map_err)?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{}ms'", lock_wait.as_millis().max(1)))
        .await
        .map_err(map_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await.map_err(map_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             checksum   text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(map_err)?;
    let rows = tx.query("SELECT version, checksum FROM schema_migrations", &[]).await.map_err(map_err)?;
    let applied: std::collections::HashMap<i32, String> =
        rows.iter().map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1))).collect();
    let mut done = Vec::new();
    for m in MIGRATIONS {
        let sum = checksum(m.sql);
        match applied.get(&m.version) {
            Some(existing) if *existing == sum => continue,
            Some(_) => {
                return Err(StoreError::Internal {
                    detail: format!(
                        "migration {} ({}) was changed after it was applied; add a new migration instead",
                        m.version, m.name
                    ),
                });
            }
            None => {}
        }
        tx.batch_execute(m.sql).await.map_err(|e| StoreError::Internal {
            detail: format!("migration {} ({}) failed: {}", m.version, m.name, describe(&e)),
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &sum],
        )
        .await
        .map_err(map_err)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        done.push(m.version);
    }
    if let Some(newest) = applied.keys().max().filter(|v| **v > MIGRATIONS.last().map_or(0, |m| m.version)) {
        tracing::info!(version = newest, "the database has migrations newer than this release");
    }
    tx.commit().await.map_err(map_err)?;
    Ok(done)
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_checksums_see_edits() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_ne!(checksum("SELECT 1"), checksum("SELECT 2"));
        assert_eq!(checksum("x"), checksum("x"));
    }
}
