//! [`BillingLedger`] on Postgres: each Stripe event's id is recorded in the
//! transaction that applies it, so however many times and however
//! concurrently an event arrives, on however many instances, it takes effect
//! once (a second delivery waits on the first's row in `stripe_events`, then
//! finds it). The rules are the domain's ([`Subscription::apply`]).

use crate::PgStore;
use crate::db::map_err;
use crate::ledger::credit_once;
use crate::rows::corrupt;
use crate::sql::Sql;
use crate::store::open_account;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use terrace_domain::billing::{
    BillingChange, BillingEvent, EventOrder, Subscription, SubscriptionChange, SubscriptionStatus,
    WebhookOutcome, purchase_reference,
};
use terrace_domain::{LedgerError, StoreError, UserId};
use terrace_ports::BillingLedger;

const BILLING_COLUMNS: &str = "stripe_customer_id, plan, subscription_id, status, current_period_end, \
                               cancel_at_period_end, applied_created, applied_rank";

fn subscription(row: &tokio_postgres::Row) -> Result<Subscription, StoreError> {
    let status: String = row.get("status");
    let created: Option<i64> = row.get("applied_created");
    let rank: Option<i16> = row.get("applied_rank");
    let applied = match (created, rank) {
        (Some(created), Some(rank)) => {
            Some(EventOrder { created, rank: u8::try_from(rank).map_err(corrupt)? })
        }
        _ => None,
    };
    Ok(Subscription {
        plan: row.get("plan"),
        status: SubscriptionStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?,
        current_period_end: row.get::<_, Option<DateTime<Utc>>>("current_period_end"),
        cancel_at_period_end: row.get("cancel_at_period_end"),
        customer_id: row.get("stripe_customer_id"),
        subscription_id: row.get("subscription_id"),
        applied,
    })
}

/// The user's billing row, locked, made if missing.
async fn lock_billing(c: &impl Sql, user: UserId) -> Result<Subscription, StoreError> {
    c.execute_cached("INSERT INTO billing_accounts (user_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&user.0])
        .await
        .map_err(map_err)?;
    let row = c
        .query_one_cached(
            &format!("SELECT {BILLING_COLUMNS} FROM billing_accounts WHERE user_id = $1 FOR UPDATE"),
            &[&user.0],
        )
        .await
        .map_err(map_err)?;
    subscription(&row)
}

async fn save_billing(c: &impl Sql, user: UserId, s: &Subscription) -> Result<(), StoreError> {
    let (created, rank) = match s.applied {
        Some(o) => (Some(o.created), Some(i16::from(o.rank))),
        None => (None, None),
    };
    c.execute_cached(
        "UPDATE billing_accounts SET stripe_customer_id = $2, plan = $3, subscription_id = $4, status = $5, \
         current_period_end = $6, cancel_at_period_end = $7, applied_created = $8, applied_rank = $9, \
         updated_at = now() WHERE user_id = $1",
        &[
            &user.0,
            &s.customer_id,
            &s.plan,
            &s.subscription_id,
            &s.status.as_str(),
            &s.current_period_end,
            &s.cancel_at_period_end,
            &created,
            &rank,
        ],
    )
    .await
    .map_err(map_err)?;
    Ok(())
}

/// The user a subscription event is about: named, or found by the
/// subscription or customer it names.
async fn billing_user(
    c: &impl Sql,
    named: Option<UserId>,
    change: &SubscriptionChange,
) -> Result<Option<UserId>, StoreError> {
    if named.is_some() {
        return Ok(named);
    }
    let row = c
        .query_opt_cached(
            "SELECT user_id FROM billing_accounts \
             WHERE ($1::text IS NOT NULL AND subscription_id = $1) OR ($2::text IS NOT NULL AND stripe_customer_id = $2) \
             LIMIT 1",
            &[&change.subscription_id, &change.customer_id],
        )
        .await
        .map_err(map_err)?;
    Ok(row.map(|r| UserId(r.get(0))))
}

#[async_trait]
impl BillingLedger for PgStore {
    async fn apply_event(
        &self,
        event: &BillingEvent,
        trial_credits: u64,
    ) -> Result<WebhookOutcome, LedgerError> {
        self.db()
            .run("apply_event", async |c| {
                let tx = c.transaction().await.map_err(map_err)?;
                let first = tx
                    .execute_cached(
                        "INSERT INTO stripe_events (id, type, outcome) VALUES ($1, $2, 'applied') \
                         ON CONFLICT (id) DO NOTHING",
                        &[&event.id, &event.kind],
                    )
                    .await
                    .map_err(map_err)?;
                if first == 0 {
                    return Ok(WebhookOutcome::Duplicate);
                }
                let outcome = match &event.change {
                    BillingChange::Purchase { user, package, payment_intent, customer_id } => {
                        open_account(&tx, *user, trial_credits).await?;
                        if customer_id.is_some() {
                            let mut b = lock_billing(&tx, *user).await?;
                            b.customer_id.clone_from(customer_id);
                            save_billing(&tx, *user, &b).await?;
                        }
                        let tokens = i64::try_from(package.tokens).map_err(corrupt)?;
                        let reference = purchase_reference(payment_intent);
                        if credit_once(&tx, *user, tokens, &reference).await? {
                            WebhookOutcome::Applied
                        } else {
                            WebhookOutcome::Ignored
                        }
                    }
                    BillingChange::Subscription { user, change } => {
                        match billing_user(&tx, *user, change).await? {
                            Some(user) => {
                                open_account(&tx, user, trial_credits).await?;
                                let mut b = lock_billing(&tx, user).await?;
                                if b.apply(change, event.order) {
                                    save_billing(&tx, user, &b).await?;
                                    WebhookOutcome::Applied
                                } else {
                                    // Ids are kept even when the state is stale.
                                    save_billing(&tx, user, &b).await?;
                                    WebhookOutcome::Ignored
                                }
                            }
                            None => WebhookOutcome::Ignored,
                        }
                    }
                    BillingChange::Ignored => WebhookOutcome::Ignored,
                };
                if outcome != WebhookOutcome::Applied {
                    tx.execute_cached(
                        "UPDATE stripe_events SET outcome = 'ignored' WHERE id = $1",
                        &[&event.id],
                    )
                    .await
                    .map_err(map_err)?;
                }
                tx.commit().await.map_err(map_err)?;
                Ok(outcome)
            })
            .await
    }

    async fn subscription(&self, user: UserId) -> Result<Subscription, LedgerError> {
        self.db()
            .run("subscription", async |c| {
                let row = c
                    .query_opt_cached(
                        &format!("SELECT {BILLING_COLUMNS} FROM billing_accounts WHERE user_id = $1"),
                        &[&user.0],
                    )
                    .await
                    .map_err(map_err)?;
                Ok(row.as_ref().map(subscription).transpose()?.unwrap_or_default())
            })
            .await
    }
}
