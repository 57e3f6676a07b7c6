//! [`Ledger`] on Postgres.

use crate::PgStore;
use crate::db::map_err;
use crate::rows::{self, LEDGER_COLUMNS, account_columns, corrupt};
use crate::sql::Sql;
use crate::store::{lock_account, open_account};
use async_trait::async_trait;
use std::collections::HashMap;
use terrace_domain::credits::check_conservation;
use terrace_domain::{
    Account, CreditReference, CreditSource, GrantAmount, LedgerEntry, LedgerError, LedgerKind, StoreError,
    UserId,
};
use terrace_ports::{Grant, Ledger, Page};

async fn account(c: &impl Sql, user: UserId) -> Result<Account, StoreError> {
    let row = c
        .query_opt_cached(
            concat!("SELECT ", account_columns!(), " FROM accounts WHERE user_id = $1"),
            &[&user.0],
        )
        .await
        .map_err(map_err)?
        .ok_or(StoreError::NotFound)?;
    rows::account(&row)
}

/// Credits `amount` tokens to `user` once per `reference`: the unique index on
/// (user_id, reference) makes a reference apply once, whatever the lock
/// policy. Returns whether it was applied now.
pub(crate) async fn credit_once(
    c: &impl Sql,
    user: UserId,
    amount: i64,
    reference: &str,
) -> Result<bool, StoreError> {
    let inserted = c
        .execute_cached(
            "INSERT INTO ledger_entries (user_id, kind, amount, source, reference) \
             VALUES ($1, 'credit', $2, 'token', $3) \
             ON CONFLICT (user_id, reference) WHERE kind = 'credit' AND source = 'token' DO NOTHING",
            &[&user.0, &amount, &reference],
        )
        .await
        .map_err(map_err)?;
    if inserted == 1 {
        c.execute_cached(
            "UPDATE accounts SET token_balance = token_balance + $2, credited = credited + $2, \
             updated_at = now() WHERE user_id = $1",
            &[&user.0, &amount],
        )
        .await
        .map_err(map_err)?;
    }
    Ok(inserted == 1)
}

#[async_trait]
impl Ledger for PgStore {
    async fn open_account(&self, user: UserId, trial_credits: u64) -> Result<Account, LedgerError> {
        self.db()
            .run("open_account", async |c| {
                open_account(&*c, user, trial_credits).await?;
                Ok(account(&*c, user).await?)
            })
            .await
    }

    async fn transactions(
        &self,
        user: UserId,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<Page<LedgerEntry>, LedgerError> {
        let before = terrace_domain::rules::parse_cursor(cursor.as_deref())?.unwrap_or(i64::MAX);
        self.db()
            .run("transactions", async |c| {
                let rows = c
                    .query_cached(
                        &format!(
                            "SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE user_id = $1 AND id < $2 \
                             ORDER BY id DESC LIMIT $3"
                        ),
                        &[&user.0, &before, &(i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1)],
                    )
                    .await
                    .map_err(map_err)?;
                let items = rows.iter().map(rows::ledger_entry).collect::<Result<Vec<_>, _>>()?;
                let (items, next_cursor) = terrace_domain::rules::page(items, limit, |e| e.id);
                Ok(Page { items, next_cursor })
            })
            .await
    }

    async fn grant(
        &self,
        user: UserId,
        amount: GrantAmount,
        reference: &CreditReference,
        trial_credits: u64,
    ) -> Result<Grant, LedgerError> {
        let lock = self.db().lock;
        let amount = i64::try_from(amount.get()).map_err(corrupt)?;
        self.db()
            .run("grant", async |c| {
                open_account(&*c, user, trial_credits).await?;
                let tx = c.transaction().await.map_err(map_err)?;
                if lock_account(&tx, user, lock).await?.is_none() {
                    return Err(LedgerError::AccountBusy);
                }
                let applied = credit_once(&tx, user, amount, reference.as_str()).await?;
                let account = account(&tx, user).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(Grant { account, applied })
            })
            .await
    }

    async fn conservation_violations(&self) -> Result<Vec<String>, LedgerError> {
        self.db()
            .run("conservation_violations", async |c| {
                let accounts = c
                    .query_cached(concat!("SELECT ", account_columns!(), " FROM accounts ORDER BY user_id"), &[])
                    .await
                    .map_err(map_err)?;
                let sums = c
                    .query_cached(
                        "SELECT user_id, kind, COALESCE(sum(amount), 0)::bigint FROM ledger_entries \
                         GROUP BY user_id, kind",
                        &[],
                    )
                    .await
                    .map_err(map_err)?;
                // One synthetic entry per account and kind carries the sum:
                // the domain's check only adds amounts up.
                let mut by_user: HashMap<uuid::Uuid, Vec<LedgerEntry>> = HashMap::new();
                for r in &sums {
                    let user: uuid::Uuid = r.get(0);
                    let kind: String = r.get(1);
                    let amount: i64 = r.get(2);
                    by_user.entry(user).or_default().push(LedgerEntry {
                        id: 0,
                        user_id: UserId(user),
                        kind: LedgerKind::parse(&kind).ok_or_else(|| corrupt(format!("ledger kind {kind}")))?,
                        amount: u64::try_from(amount).map_err(corrupt)?,
                        source: CreditSource::Token,
                        generation_id: None,
                        area: None,
                        reference: None,
                        created_at: chrono::DateTime::UNIX_EPOCH,
                    });
                }
                let mut out = Vec::new();
                for r in &accounts {
                    let a = rows::account(r)?;
                    let entries = by_user.get(&a.user_id.0).map_or(&[][..], Vec::as_slice);
                    if let Err(e) = check_conservation(&a, entries) {
                        out.push(e);
                    }
                }
                // Every hold resolves at most once, and an area's hold state
                // agrees with the ledger.
                let mismatched = c
                    .query_cached(
                        "SELECT a.generation_id::text || ' ' || a.area || ': hold ' || a.hold_state || \
                                ' but ledger has ' || count(l.id) || ' resolution(s)' \
                           FROM generation_areas a \
                           LEFT JOIN ledger_entries l ON l.generation_id = a.generation_id AND l.area = a.area \
                                AND l.kind IN ('capture', 'void') \
                          GROUP BY a.generation_id, a.area, a.hold_state \
                         HAVING count(l.id) <> CASE WHEN a.hold_state = 'held' THEN 0 ELSE 1 END",
                        &[],
                    )
                    .await
                    .map_err(map_err)?;
                out.extend(mismatched.iter().map(|r| r.get::<_, String>(0)));
                Ok(out)
            })
            .await
    }
}
