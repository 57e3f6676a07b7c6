//! [`GenerationStore`] on Postgres.

use crate::PgStore;
use crate::db::{is_lock_refused, map_err};
use crate::gather::{Verdict, Waiting};
use crate::listen::{CHANNEL, payload};
use crate::pipeline::{Answer, Batch, Tx, all_ok, p, send, transaction};
use crate::rows::{
    self, LOAD, LOAD_ONE, LOCK, account_columns, corrupt, loaded, loaded_one, push_area, push_generation,
};
use crate::rows::{load, load_one};
use crate::sql::Sql;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use std::time::Duration;
use terrace_domain::rules::{self, Resolution};
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::{
    Area, AreaKind, CreateError, Created, CreditSource, ErrorCode, Failure, Generation, GenerationId,
    GenerationStatus, Geocoded, HoldState, LockPolicy, StoreError, UserId,
};
use terrace_ports::{
    CancelOutcome, CreateOutcome, Finished, GenerationStore, IdempotencyClaim, Lease, LeaseState, ListQuery,
    NewGeneration, Notification, Page, PoolStatus, StoreGauges, WorkerId,
};
use uuid::Uuid;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The statement that announces `notes` once the transaction that made them
/// has committed: sent right after the `COMMIT`, in the same round trip
/// ([`Tx::commit_with`]), and run by the server after the commit, as a
/// statement of its own.
///
/// Never inside the transaction: a transaction that notifies holds
/// Postgres's one notification lock from its commit's start until the
/// commit is flushed, so every notifying commit would wait for the one
/// before it to reach the disk, and concurrent commits could no longer
/// share a flush. This statement writes nothing, so its own commit does not
/// wait for the disk. A notification is a hint — workers also claim every
/// sweep interval, heartbeats carry cancellations, event streams re-read on
/// a timer — so one lost with a crash between the two only delays; a
/// failure is logged, not returned (what it announces is committed). (If the
/// transaction's last write failed, its `COMMIT` rolled back and the
/// announcement is of nothing: listeners re-read and find no change.)
fn announcement(notes: &[Notification]) -> Batch<'static> {
    if notes.is_empty() {
        return Batch::new();
    }
    let payloads: Vec<String> = notes.iter().map(payload).collect();
    Batch::of("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", vec![p(CHANNEL), p(payloads)])
}

/// Logs an announcement that failed ([`announcement`]).
fn announced(answers: Vec<Answer>) {
    if let Err(e) = all_ok(answers) {
        tracing::warn!(error = %map_err(e), "announcing committed changes failed; listeners will poll");
    }
}

/// Commits `tx` with `last`, announcing `notes`, in one round trip: `last`'s rows.
async fn commit_announcing<C: Sql>(
    tx: &mut Tx<'_, C>,
    last: &Batch<'_>,
    notes: &[Notification],
) -> Result<Vec<Vec<tokio_postgres::Row>>, StoreError> {
    let (rows, after) = tx.commit_with(last, &announcement(notes)).await.map_err(map_err)?;
    announced(after);
    Ok(rows)
}

fn changed(ids: &[Uuid]) -> Vec<Notification> {
    ids.iter().map(|id| Notification::Changed(GenerationId(*id))).collect()
}

/// The `credit` entry of each account the CTE `opened` inserted with trial
/// credits.
macro_rules! trial_entry_sql {
    () => {
        "trial AS (
             INSERT INTO ledger_entries (user_id, kind, amount, source, reference)
             SELECT user_id, 'credit', trial_credits, 'trial', 'trial' FROM opened WHERE trial_credits > 0)"
    };
}

/// CTEs that open the account of user `$1` with `$2` trial credits if this
/// statement cannot see it (`opened`, returning its balances), with its
/// `credit` entry. Only an account it cannot see is inserted: an insert that
/// met an existing row would wait for any transaction that changes that
/// row, outside the lock policy; only a request opening the same new
/// account at the same moment is waited for.
macro_rules! open_one_sql {
    () => {
        concat!(
            "opened AS (
                 INSERT INTO accounts (user_id, trial_credits, token_balance, credited)
                 SELECT $1, $2, 0, $2 WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE user_id = $1)
                 ON CONFLICT (user_id) DO NOTHING
                 RETURNING user_id, trial_credits, token_balance, held, captured), ",
            trial_entry_sql!()
        )
    };
}

/// Opens the account if it does not exist, with its trial credits and their
/// `credit` entry, in one statement (so outside any longer transaction), as
/// `open_one_sql!` says.
pub(crate) async fn open_account(c: &impl Sql, user: UserId, trial: u64) -> Result<(), StoreError> {
    let trial = i64::try_from(trial).map_err(corrupt)?;
    c.execute_cached(concat!("WITH ", open_one_sql!(), " SELECT 1"), &[&user.0, &trial])
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Takes a row lock under the lock policy: `lock` gets whether to wait (a
/// timeout: `SET LOCAL lock_timeout` is sent first) or not (`NoWait`: the
/// statement is to take its lock `NOWAIT`). The `SET LOCAL` and the locking
/// statement are pipelined, one wait for both: the driver sends requests in
/// the order their futures are first polled, and `join!` polls the
/// `SET LOCAL` first.
/// The statement that bounds this transaction's lock waits by `d`.
fn lock_timeout_sql(d: Duration) -> String {
    format!("SET LOCAL lock_timeout = '{}ms'", d.as_millis().max(1))
}

async fn under_lock_policy<T>(
    c: &impl Sql,
    policy: LockPolicy,
    lock: impl AsyncFnOnce(bool) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match policy {
        LockPolicy::NoWait => lock(false).await,
        LockPolicy::Timeout(d) => {
            let set = lock_timeout_sql(d);
            let (set, locked) =
                futures::join!(tokio_postgres::GenericClient::batch_execute(c.pg(), &set), lock(true));
            set.map_err(map_err)?;
            locked
        }
    }
}

/// The account row lock, under the lock policy, with whether the user's
/// subscription grants generations now. `Ok(None)` when the lock was refused
/// (SQLSTATE 55P03).
pub(crate) async fn lock_account(
    c: &impl Sql,
    user: UserId,
    policy: LockPolicy,
) -> Result<Option<(terrace_domain::Account, bool)>, StoreError> {
    macro_rules! lock_sql {
        ($wait:literal) => {
            concat!(
                "SELECT ",
                account_columns!(),
                ", COALESCE(b.status = 'active', false) AS subscribed \
                 FROM accounts LEFT JOIN billing_accounts b USING (user_id) \
                 WHERE user_id = $1 FOR UPDATE OF accounts",
                $wait
            )
        };
    }
    under_lock_policy(c, policy, async |wait| {
        let sql = if wait { lock_sql!("") } else { lock_sql!(" NOWAIT") };
        match c.query_opt_cached(sql, &[&user.0]).await {
            Ok(Some(row)) => Ok(Some((rows::account(&row)?, row.get("subscribed")))),
            Ok(None) => Err(StoreError::NotFound),
            Err(e) if is_lock_refused(&e) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    })
    .await
}

/// Books the ledger side of every hold that `before` → `after` resolved: one
/// entry per area, and the account's counters, added to `batch`. Reports
/// voids to the observer after the caller commits (returned as reasons).
fn book<'a>(
    batch: &mut Batch<'a>,
    before: &Generation,
    after: &'a Generation,
) -> Result<Vec<Resolution>, StoreError> {
    let (mut captured, mut trial, mut token) = (0i64, 0i64, 0i64);
    let resolved = rules::resolutions(before, after);
    for r in &resolved {
        let amount = i64::try_from(r.source.per_area()).map_err(corrupt)?;
        let kind = if r.to == HoldState::Captured {
            captured += amount;
            "capture"
        } else {
            match r.source {
                CreditSource::Trial => trial += amount,
                CreditSource::Token => token += amount,
                CreditSource::Subscription => {}
            }
            "void"
        };
        batch.push(
            "INSERT INTO ledger_entries (user_id, kind, amount, source, generation_id, area) \
             VALUES ($1, $2, $6, $3, $4, $5)",
            vec![
                p(after.user_id.0),
                p(kind),
                p(r.source.as_str()),
                p(after.id.0),
                p(r.area.as_str()),
                p(amount),
            ],
        );
    }
    if captured + trial + token > 0 {
        batch.push(
            "UPDATE accounts SET held = held - $2, captured = captured + $3, trial_credits = trial_credits + $4, \
             token_balance = token_balance + $5, updated_at = now() WHERE user_id = $1",
            vec![p(after.user_id.0), p(captured + trial + token), p(captured), p(trial), p(token)],
        );
    }
    Ok(resolved)
}

/// Adds to `batch` the writes of what changed from `before` to `after`:
/// areas, holds, the generation's head (ending its lease unless
/// `keep_lease`).
fn save<'a>(
    batch: &mut Batch<'a>,
    before: &Generation,
    after: &'a Generation,
    keep_lease: bool,
) -> Result<Vec<Resolution>, StoreError> {
    for (b, a) in before.areas.iter().zip(&after.areas) {
        if b != a {
            push_area(batch, after.id, a);
        }
    }
    let resolved = book(batch, before, after)?;
    let head_changed = before.status != after.status
        || before.error != after.error
        || before.completed_at != after.completed_at
        || before.cancel_requested != after.cancel_requested;
    if head_changed || !keep_lease {
        push_generation(batch, after, keep_lease);
    }
    Ok(resolved)
}

/// Takes the generation's row lock, for a worker's write.
const FENCE: &str = "SELECT status, attempt, lease_owner, now() FROM generations WHERE id = $1 FOR UPDATE";

/// Checks a worker's lease from the [`FENCE`]'s answer and returns the
/// transaction's time: `LeaseLost` unless `lease` still holds, `Finished` if
/// the generation is terminal.
fn fence(answer: Answer, lease: &Lease) -> Result<DateTime<Utc>, StoreError> {
    let rows = answer.map_err(map_err)?;
    let row = rows.first().ok_or(StoreError::NotFound)?;
    let status: String = row.get(0);
    let attempt: i32 = row.get(1);
    let owner: Option<String> = row.get(2);
    let now: DateTime<Utc> = row.get(3);
    let status = GenerationStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?;
    let attempt = u32::try_from(attempt).map_err(corrupt)?;
    rules::check_fence(status, attempt, owner.as_deref(), lease.attempt, &lease.owner.0)?;
    Ok(now)
}

/// Begins `tx` with the [`FENCE`] of `lease` (and, if `read`, the
/// generation itself, for a write that changes it), in one round trip. The
/// read is a statement of its own after the lock's, so it sees what the
/// lock's last holder committed.
async fn begin_fenced<C: Sql>(
    tx: &mut Tx<'_, C>,
    lease: &Lease,
    read: bool,
) -> Result<(Option<Generation>, DateTime<Utc>), StoreError> {
    let id = lease.generation_id.0;
    let mut first = Batch::of(FENCE, vec![p(id)]);
    if read {
        first.push(LOAD_ONE, vec![p(id)]);
    }
    let mut answers = tx.begin_with(&first).await.map_err(map_err)?.into_iter();
    let now = fence(answers.next().ok_or(StoreError::NotFound)?, lease)?;
    let g = match answers.next() {
        Some(rows) => Some(loaded_one(&rows.map_err(map_err)?)?.ok_or(StoreError::NotFound)?),
        None => None,
    };
    Ok((g, now))
}

fn area_of(g: &mut Generation, area: AreaKind) -> Result<&mut Area, StoreError> {
    g.area_mut(area).ok_or(StoreError::NotFound)
}

/// What a create finds on its account, under the account's lock.
struct Locked {
    account: terrace_domain::Account,
    /// The user's subscription grants generations now.
    subscribed: bool,
    /// The idempotency key's earlier use within its window: the request's
    /// fingerprint and the generation it made.
    replay: Option<(String, GenerationId)>,
}

impl Locked {
    /// A row of the account lock's answer (`open_and_lock_sql!`,
    /// [`OPEN_AND_LOCK_MANY`]).
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, StoreError> {
        let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).map_err(corrupt);
        let account = terrace_domain::Account {
            user_id: UserId(row.get(0)),
            trial_credits: n(1)?,
            token_balance: n(2)?,
            held: n(3)?,
            captured: n(4)?,
        };
        let replay = match (row.get::<_, Option<String>>(6), row.get::<_, Option<Uuid>>(7)) {
            (Some(hash), Some(id)) => Some((hash, GenerationId(id))),
            _ => None,
        };
        Ok(Locked { account, subscribed: row.get(5), replay })
    }
}

/// The statement that opens one account as `open_one_sql!` does (`$1` the
/// user, `$2` the trial), locks its row (`FOR UPDATE` followed by `$wait`:
/// nothing, `NOWAIT` or `SKIP LOCKED`), and reads its balances,
/// subscription and the earlier use of the key `$3`: the columns
/// [`Locked::from_row`] reads.
macro_rules! open_and_lock_sql {
    ($wait:literal) => {
        concat!(
            "WITH ",
            open_one_sql!(),
            ",
             locked AS (
                 SELECT user_id, trial_credits, token_balance, held, captured FROM accounts
                 WHERE user_id = $1 FOR UPDATE",
            $wait,
            ")
             SELECT a.user_id, a.trial_credits, a.token_balance, a.held, a.captured,
                    COALESCE((SELECT b.status = 'active' FROM billing_accounts b WHERE b.user_id = $1), false),
                    k.request_hash, k.generation_id
               FROM (SELECT * FROM opened UNION ALL SELECT * FROM locked) a
               LEFT JOIN idempotency_keys k ON k.user_id = $1 AND k.key = $3 AND k.expires_at > now()"
        )
    };
}

/// Begins `tx`: opens the account if it does not exist (with its trial
/// credits and their `credit` entry) and takes its row lock under the lock
/// policy, in one statement sent with the `BEGIN` (and the lock timeout's
/// `SET LOCAL`); with it, the subscription and the key's earlier use. `None`
/// when the lock was refused (SQLSTATE 55P03), or when another request
/// opened the account while this statement ran (its snapshot cannot see the
/// new row: the caller answers "busy" and the retry finds it).
async fn begin_locked<C: Sql>(
    tx: &mut Tx<'_, C>,
    new: &NewGeneration,
    key: Option<&IdempotencyClaim>,
    policy: LockPolicy,
) -> Result<Option<Locked>, StoreError> {
    let trial = i64::try_from(new.trial_credits).map_err(corrupt)?;
    let key = key.map(|k| k.key.as_str());
    let set = match policy {
        LockPolicy::NoWait => None,
        LockPolicy::Timeout(d) => Some(lock_timeout_sql(d)),
    };
    let sql = if set.is_some() { open_and_lock_sql!("") } else { open_and_lock_sql!(" NOWAIT") };
    let mut first = Batch::new();
    if let Some(set) = &set {
        first.push(set, Vec::new());
    }
    first.push(sql, vec![p(new.user_id.0), p(trial), p(key)]);
    let mut answers = tx.begin_with(&first).await.map_err(map_err)?;
    let locked = answers.pop().ok_or_else(|| corrupt("the account lock went unanswered"))?;
    all_ok(answers).map_err(map_err)?;
    let rows = match locked {
        Ok(rows) => rows,
        Err(e) if is_lock_refused(&e) => return Ok(None),
        Err(e) => return Err(map_err(e)),
    };
    rows.first().map(Locked::from_row).transpose()
}

/// SQLSTATE of the create's write when its idempotency key was taken by a
/// request that committed while this one waited for the account lock (its
/// snapshot could not see it): the write refuses (`terrace_refuse`, migration 0003), the
/// commit sent with it rolls back, and the answer is "busy", whose retry
/// replays the other request's generation.
const KEY_TAKEN: &str = "TR001";

/// Every write of a create in one statement: the account's new balances,
/// the generation, its areas and their holds (batched) and the idempotency
/// key, returning the generation's `created_at` and `deadline_at`. Sent
/// with the `COMMIT`; refuses with [`KEY_TAKEN`].
fn insert_generation<'a>(
    new: &'a NewGeneration,
    account: &terrace_domain::Account,
    sources: &[CreditSource],
    key: Option<&'a IdempotencyClaim>,
    ttl: f64,
) -> Result<Batch<'a>, StoreError> {
    let n = |v: u64| i64::try_from(v).map_err(corrupt);
    let areas = &new.request.areas;
    let positions: Vec<i16> =
        (0..areas.len()).map(|i| i16::try_from(i).map_err(corrupt)).collect::<Result<_, _>>()?;
    let kinds: Vec<&str> = areas.iter().map(|a| a.area.as_str()).collect();
    let styles: Vec<&str> = areas.iter().map(|a| a.style.as_str()).collect();
    let prompts: Vec<Option<&str>> =
        areas.iter().map(|a| a.custom_prompt.as_ref().map(|p| p.as_str())).collect();
    let strengths: Vec<f64> = areas.iter().map(|a| a.preservation_strength.get()).collect();
    let holds: Vec<&str> = sources.iter().map(|s| s.as_str()).collect();
    let amounts: Vec<i64> = sources.iter().map(|s| n(s.per_area())).collect::<Result<_, _>>()?;
    Ok(Batch::of(
            "WITH account AS (
                 UPDATE accounts SET trial_credits = $2, token_balance = $3, held = $4, updated_at = now()
                 WHERE user_id = $1),
             generation AS (
                 INSERT INTO generations (id, user_id, request_id, status, address, deadline_at)
                 VALUES ($5, $1, $6, 'pending', $7, now() + make_interval(secs => $8))
                 RETURNING created_at, deadline_at),
             areas AS (
                 INSERT INTO generation_areas (generation_id, position, area, style, custom_prompt,
                     preservation_strength, status, stage, progress, hold_source, hold_state)
                 SELECT $5, position, area, style, prompt, strength, 'pending', 'queued', 0, source, 'held'
                   FROM unnest($9::smallint[], $10::text[], $11::text[], $12::text[], $13::float8[], $14::text[])
                        AS t(position, area, style, prompt, strength, source)),
             holds AS (
                 INSERT INTO ledger_entries (user_id, kind, amount, source, generation_id, area)
                 SELECT $1, 'hold', amount, source, $5, area
                   FROM unnest($10::text[], $14::text[], $15::bigint[]) AS t(area, source, amount)),
             idempotency AS (
                 INSERT INTO idempotency_keys (user_id, key, request_hash, generation_id, expires_at)
                 SELECT $1, $16, $17, $5, now() + make_interval(secs => $18) WHERE $16::text IS NOT NULL
                 ON CONFLICT (user_id, key) DO UPDATE SET
                     request_hash = EXCLUDED.request_hash, generation_id = EXCLUDED.generation_id,
                     response_status = NULL, response_body = NULL, created_at = now(),
                     expires_at = EXCLUDED.expires_at
                 WHERE idempotency_keys.expires_at <= now()
                 RETURNING 1)
             SELECT g.created_at, g.deadline_at,
                    CASE WHEN $16::text IS NULL OR EXISTS (SELECT 1 FROM idempotency) THEN true
                         ELSE terrace_refuse('TR001', 'the idempotency key was taken meanwhile') END
               FROM generation g",
            vec![
                p(new.user_id.0),
                p(n(account.trial_credits)?),
                p(n(account.token_balance)?),
                p(n(account.held)?),
                p(new.id.0),
                p(new.request_id.as_str()),
                p(new.request.address.as_str()),
                p(secs(new.deadline)),
                p(positions),
                p(kinds),
                p(styles),
                p(prompts),
                p(strengths),
                p(holds),
                p(amounts),
                p(key.map(|k| k.key.as_str())),
                p(key.map(|k| k.request_hash.as_str())),
                p(ttl),
            ],
        ))
}

/// A create in a transaction of its own: what a create runs when no other
/// create waits with it, or when it could not be written with the others.
async fn create_alone(
    c: &deadpool_postgres::Client,
    new: &NewGeneration,
    idempotency: Option<&IdempotencyClaim>,
    lock: LockPolicy,
    ttl: f64,
) -> Result<CreateOutcome, CreateError> {
    // One transaction, two statements between BEGIN and COMMIT (and the
    // lock timeout's SET LOCAL, sent with the first): open and lock the
    // account (with the key's earlier use, if any), then every write at
    // once. The announcement follows the commit.
    // Two round trips: BEGIN with the account's lock; the writes, COMMIT
    // and the announcement.
    transaction!(c, |tx| {
        let Some(found) = begin_locked(tx, new, idempotency, lock).await? else {
            return Err(CreateError::AccountBusy);
        };
        if let Some((hash, earlier)) = found.replay {
            if Some(hash.as_str()) != idempotency.map(|k| k.request_hash.as_str()) {
                return Err(CreateError::IdempotencyKeyReused);
            }
            let read = Batch::of(LOAD_ONE, vec![p(earlier.0)]);
            let (rows, _) = tx.commit_with(&read, &Batch::new()).await.map_err(map_err)?;
            let generation =
                loaded_one(rows.first().map_or(&[][..], Vec::as_slice))?.ok_or(StoreError::NotFound)?;
            return Ok(CreateOutcome::Replayed(generation));
        }
        let mut account = found.account;
        let sources = match account.hold(new.request.areas.len(), found.subscribed) {
            Ok(sources) => sources,
            Err(e) => {
                // Nothing was held; the account stays open, with its trial.
                tx.commit().await.map_err(map_err)?;
                return Err(CreateError::InsufficientCredits { needed: e.needed, available: e.available });
            }
        };
        let write = insert_generation(new, &account, &sources, idempotency, ttl)?;
        let rows = match tx.commit_with(&write, &announcement(&[Notification::Created(new.id)])).await {
            Ok((rows, after)) => {
                announced(after);
                rows
            }
            // The key was taken by a request that committed while
            // this one waited for the lock: its retry replays it.
            Err(e) if e.code().map(|c| c.code()) == Some(KEY_TAKEN) => {
                return Err(CreateError::AccountBusy);
            }
            Err(e) => return Err(map_err(e).into()),
        };
        Ok(CreateOutcome::Created(written(new, sources, rows.first())?))
    })
}

/// The generation a create wrote, from the answer of its write
/// ([`insert_generation`]), without reading it back.
fn written(
    new: &NewGeneration,
    sources: Vec<CreditSource>,
    rows: Option<&Vec<tokio_postgres::Row>>,
) -> Result<Generation, StoreError> {
    let row = rows.and_then(|r| r.first()).ok_or_else(|| corrupt("the create's write returned no row"))?;
    let created = Created {
        id: new.id,
        user_id: new.user_id,
        request_id: new.request_id.clone(),
        request: new.request.clone(),
        sources,
    };
    Ok(Generation::created(created, row.get(0), row.get(1)))
}

/// Opens (with their trial credits) and locks the accounts of creates
/// written together, in one statement sent with the `BEGIN`: each one's
/// balances, subscription and key's earlier use. It does not wait for other
/// transactions: an account locked by one is skipped (`SKIP LOCKED`), and
/// only accounts this statement cannot see are inserted (an insert that
/// meets an existing row would wait for whoever changes it). A create whose
/// account it skipped, or which another transaction opened while it ran,
/// runs alone, under the lock policy. New accounts are inserted in the order
/// of their users, as by every such statement, so that two of them never
/// wait on each other. Its answer has the columns of
/// `open_and_lock_sql!`'s, one row per account locked.
const OPEN_AND_LOCK_MANY: &str = concat!(
    "WITH wanted AS (
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS w(user_id, trial, key)),
     opened AS (
         INSERT INTO accounts (user_id, trial_credits, token_balance, credited)
         SELECT user_id, trial, 0, trial FROM wanted w
          WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.user_id = w.user_id)
          ORDER BY user_id
         ON CONFLICT (user_id) DO NOTHING
         RETURNING user_id, trial_credits, token_balance, held, captured), ",
    trial_entry_sql!(),
    ",
     locked AS (
         SELECT user_id, trial_credits, token_balance, held, captured FROM accounts
         WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE SKIP LOCKED)
     SELECT a.user_id, a.trial_credits, a.token_balance, a.held, a.captured,
            COALESCE((SELECT b.status = 'active' FROM billing_accounts b WHERE b.user_id = a.user_id), false),
            k.request_hash, k.generation_id
       FROM (SELECT * FROM opened UNION ALL SELECT * FROM locked) a
       JOIN wanted w USING (user_id)
       LEFT JOIN idempotency_keys k ON k.user_id = a.user_id AND k.key = w.key AND k.expires_at > now()"
);

/// Writes creates of different users in one transaction (crate::gather):
/// two round trips, whatever their number — `BEGIN` with every account's
/// lock ([`OPEN_AND_LOCK_MANY`]); then each create's write, the `COMMIT` and
/// one announcement of them all. Each create's answer, in order: `None` for
/// one to run alone — its account was not locked here, its key was used
/// before, or the server refused a write (then nothing was kept, and each
/// create runs alone to find its own answer).
async fn create_together(
    c: &deadpool_postgres::Client,
    creates: &[(&NewGeneration, Option<&IdempotencyClaim>)],
    ttl: f64,
) -> Result<Vec<Option<Result<CreateOutcome, CreateError>>>, StoreError> {
    let users: Vec<Uuid> = creates.iter().map(|(new, _)| new.user_id.0).collect();
    let trials: Vec<i64> = creates
        .iter()
        .map(|(new, _)| i64::try_from(new.trial_credits).map_err(corrupt))
        .collect::<Result<_, _>>()?;
    let keys: Vec<Option<&str>> = creates.iter().map(|(_, key)| key.map(|k| k.key.as_str())).collect();
    let mut answers: Vec<Option<Result<CreateOutcome, CreateError>>> = creates.iter().map(|_| None).collect();
    let outcome: Result<(), StoreError> = transaction!(c, |tx| {
        // A create on its own takes the one-account form: Postgres plans it
        // once per connection, while the form over arrays, whose plan depends
        // on how many accounts it gets, is planned on every call.
        let lock = if creates.len() == 1 {
            Batch::of(open_and_lock_sql!(" SKIP LOCKED"), vec![p(users[0]), p(trials[0]), p(keys[0])])
        } else {
            Batch::of(OPEN_AND_LOCK_MANY, vec![p(&users), p(&trials), p(&keys)])
        };
        let rows = match tx.begin_with(&lock).await.map_err(map_err)?.pop() {
            Some(Ok(rows)) => rows,
            // Refused by the server (a deadlock with a create of another
            // instance, say): nothing was kept; each create runs alone.
            Some(Err(e)) if e.as_db_error().is_some() => return Ok(()),
            Some(Err(e)) => return Err(map_err(e)),
            None => return Err(corrupt("the accounts' lock went unanswered")),
        };
        let mut write = Batch::new();
        let mut writes = Vec::new();
        for row in &rows {
            let Locked { mut account, subscribed, replay } = Locked::from_row(row)?;
            let Some(i) = users.iter().position(|u| *u == account.user_id.0) else { continue };
            if replay.is_some() {
                // The key was used before: the create runs alone, and replays.
                continue;
            }
            let (new, key) = creates[i];
            match account.hold(new.request.areas.len(), subscribed) {
                Ok(sources) => {
                    write.extend(insert_generation(new, &account, &sources, key, ttl)?);
                    writes.push((i, sources));
                }
                // Nothing held; the account stays open, with its trial.
                Err(e) => {
                    answers[i] = Some(Err(CreateError::InsufficientCredits {
                        needed: e.needed,
                        available: e.available,
                    }))
                }
            }
        }
        let notes: Vec<Notification> =
            writes.iter().map(|(i, _)| Notification::Created(creates[*i].0.id)).collect();
        match tx.commit_with(&write, &announcement(&notes)).await {
            Ok((rows, after)) => {
                announced(after);
                for ((i, sources), rows) in writes.into_iter().zip(&rows) {
                    answers[i] =
                        Some(Ok(CreateOutcome::Created(written(creates[i].0, sources, Some(rows))?)));
                }
                Ok(())
            }
            // The server refused a write (a key taken meanwhile, say) and the
            // commit rolled everything back: each create runs alone.
            Err(e) if e.as_db_error().is_some() => {
                answers.iter_mut().for_each(|a| *a = None);
                Ok(())
            }
            Err(e) => Err(map_err(e)),
        }
    });
    outcome.map(|()| answers)
}

/// What a claim may take.
#[derive(Debug, Clone, Copy)]
enum Claimable {
    /// Pending work, and work whose lease expired.
    Any,
    /// Pending work only: found through the index of pending rows
    /// (migration 0004), without reading every running generation's lease.
    Pending,
    /// One generation, if it is claimable.
    One(GenerationId),
}

/// Whether the lease of the generation `g` has lapsed (or there is none):
/// its own expiry passed, or its owner's heartbeat (migration 0005) did.
/// An owner with no row is one of the release before per-worker leases,
/// which renews each generation's expiry itself.
macro_rules! lease_lapsed {
    () => {
        "(g.lease_owner IS NULL OR g.lease_expires_at <= now()
          OR EXISTS (SELECT 1 FROM workers w WHERE w.owner = g.lease_owner AND w.expires_at <= now()))"
    };
}

/// Renews the lease of owner `$1` by `$2` seconds from now (its row in
/// `workers`, migration 0005) if `$when` holds: what a heartbeat does, and
/// a claim that takes anything.
macro_rules! renew_owner_sql {
    ($when:literal) => {
        concat!(
            "INSERT INTO workers (owner, expires_at)
             SELECT $1, now() + make_interval(secs => $2) WHERE ",
            $when,
            "
             ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        )
    };
}

/// The claim of the generations `$which` admits (and `$4`, the one named or
/// NULL): those whose lease lapsed, not past their deadline, oldest first,
/// skipping rows other transactions hold locked; each gets its attempt
/// raised, the lease, and `processing`. The lease's own expiry is the
/// deadline plus one TTL; the owner's row, renewed here when anything is
/// claimed, says until when the owner is alive.
macro_rules! claim_sql {
    ($which:literal) => {
        concat!(
            "WITH picked AS (
                 SELECT g.id FROM generations g
                 WHERE ",
            $which,
            " AND ",
            lease_lapsed!(),
            "
                   AND g.deadline_at > now()
                 ORDER BY g.seq
                 LIMIT $3
                 FOR UPDATE OF g SKIP LOCKED),
             alive AS (",
            renew_owner_sql!("EXISTS (SELECT 1 FROM picked)"),
            ")
             UPDATE generations g
                SET attempt = g.attempt + 1,
                    lease_owner = $1,
                    lease_expires_at = g.deadline_at + make_interval(secs => $2),
                    status = 'processing',
                    started_at = COALESCE(g.started_at, now())
               FROM picked WHERE g.id = picked.id
             RETURNING g.id, g.seq"
        )
    };
}

impl PgStore {
    /// Runs a fenced change in one transaction: reads under the row lock,
    /// applies `change` (the domain's transitions), writes the difference,
    /// and announces it. Voids made here are the worker's to report (the
    /// engine does), so they are not reported to the observer again.
    async fn fenced_change(
        &self,
        what: &'static str,
        lease: &Lease,
        keep_lease: bool,
        change: impl FnOnce(&mut Generation, DateTime<Utc>) -> Result<(), StoreError> + Send,
    ) -> Result<(Generation, Vec<Resolution>), StoreError> {
        // Two round trips: BEGIN, the fence and the read; the writes, COMMIT
        // and the announcement.
        self.db()
            .run(what, async |c| {
                transaction!(&*c, |tx| {
                    let (before, now) = begin_fenced(tx, lease, true).await?;
                    let before = before.ok_or(StoreError::NotFound)?;
                    let mut after = before.clone();
                    change(&mut after, now)?;
                    let mut last = Batch::new();
                    let resolved = save(&mut last, &before, &after, keep_lease)?;
                    commit_announcing(tx, &last, &[Notification::Changed(after.id)]).await?;
                    drop(last);
                    Ok::<_, StoreError>((after, resolved))
                })
            })
            .await
    }

    /// Reports voids nobody else sees: those of a user's cancellation and of
    /// the sweeper's overdue generations.
    fn report(&self, resolved: &[Resolution]) {
        for r in resolved.iter().filter(|r| r.to == HoldState::Voided) {
            self.inner.observer.hold_voided(r.reason.unwrap_or(ErrorCode::Internal));
        }
    }

    /// Claims up to `limit` generations of `which`, oldest first, skipping
    /// rows other transactions hold locked.
    async fn claim_where(
        &self,
        what: &'static str,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
        which: Claimable,
    ) -> Result<Vec<Generation>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (sql, one) = match which {
            Claimable::Any => {
                (claim_sql!("g.status IN ('pending', 'processing') AND $4::uuid IS NULL"), None)
            }
            Claimable::Pending => (claim_sql!("g.status = 'pending' AND $4::uuid IS NULL"), None),
            Claimable::One(id) => {
                (claim_sql!("g.status IN ('pending', 'processing') AND g.id = $4"), Some(id.0))
            }
        };
        // Two round trips: BEGIN and the claim; the read of what was
        // claimed, COMMIT and the announcement.
        self.db()
            .run(what, async |c| {
                transaction!(&*c, |tx| {
                    let claim = Batch::of(sql, vec![p(owner.0.as_str()), p(secs(ttl)), p(limit), p(one)]);
                    let rows = all_ok(tx.begin_with(&claim).await.map_err(map_err)?).map_err(map_err)?;
                    let mut ids: Vec<(i64, Uuid)> =
                        rows.iter().flatten().map(|r| (r.get(1), r.get(0))).collect();
                    ids.sort();
                    let ids: Vec<Uuid> = ids.into_iter().map(|(_, id)| id).collect();
                    if ids.is_empty() {
                        tx.commit().await.map_err(map_err)?;
                        return Ok(Vec::new());
                    }
                    let read = Batch::of(LOAD, vec![p(ids.as_slice())]);
                    let rows = commit_announcing(tx, &read, &changed(&ids)).await?;
                    let claimed = loaded(&ids, rows.first().map_or(&[][..], Vec::as_slice))?;
                    Ok(claimed.into_iter().map(|(g, _)| g).collect())
                })
            })
            .await
    }
}

impl PgStore {
    /// Writes `taken` on `conn` in one transaction ([`create_together`]), in
    /// a task of the store's own bounded by the call deadline and holding
    /// one of the writers' `permit`s, and answers each create
    /// (crate::gather). When the transaction fails, every create gets its
    /// error (a write whose commit may have reached the server is not run
    /// again); when the deadline passes, a timeout.
    fn write_together(
        &self,
        conn: crate::db::Conn,
        permit: tokio::sync::OwnedSemaphorePermit,
        mut taken: Vec<Waiting>,
    ) {
        let store = self.clone();
        // Locks are taken in the users' order, as by every such transaction.
        taken.sort_by_key(|w| w.new.user_id.0);
        self.inner.tasks.spawn(async move {
            let db = store.db();
            let ttl = secs(db.idempotency_ttl);
            let creates: Vec<_> = taken.iter().map(|w| (&w.new, w.key.as_ref())).collect();
            let answers = db
                .run_on(conn, "create", async |c| create_together(c, &creates, ttl).await)
                .await
                .map_err(CreateError::from);
            drop((creates, permit));
            let answers = answers.unwrap_or_else(|e| vec![Some(Err(e)); taken.len()]);
            store.inner.gather.wrote(answers.iter().filter(|a| matches!(a, Some(Ok(_)))).count());
            for (waiting, answer) in taken.into_iter().zip(answers) {
                waiting.answer(answer);
            }
        });
    }
}

#[async_trait]
impl GenerationStore for PgStore {
    async fn create(
        &self,
        new: NewGeneration,
        idempotency: Option<IdempotencyClaim>,
    ) -> Result<CreateOutcome, CreateError> {
        // Joins the creates waiting to be written; whichever gets a
        // connection and a writer slot first writes those waiting then
        // (crate::gather), and a create handed back runs alone.
        let db = self.db();
        let gather = &self.inner.gather;
        let bound = db.call_bound();
        let (ticket, mut verdict) = gather.join(new, idempotency);
        let waited = tokio::time::timeout(bound, async {
            loop {
                if !ticket.queued() {
                    return (&mut verdict).await.ok();
                }
                tokio::select! {
                    biased;
                    answer = &mut verdict => return answer.ok(),
                    conn = async {
                        let permit = gather.writer().await;
                        (permit, db.acquire().await)
                    } => match conn {
                        (permit, Ok(conn)) => {
                            let taken = gather.take();
                            if taken.is_empty() {
                                conn.give_back();
                            } else {
                                self.write_together(conn, permit, taken);
                            }
                        }
                        // No connection: the create fails, unless a
                        // transaction took it meanwhile.
                        (_, Err(e)) if ticket.withdraw() => return Some(Verdict::Done(Err(e.into()))),
                        (_, Err(_)) => {}
                    },
                }
            }
        })
        .await;
        drop(ticket);
        match waited {
            Ok(Some(Verdict::Done(outcome))) => outcome,
            Ok(Some(Verdict::Alone(new, key))) => {
                let (lock, ttl) = (db.lock, secs(db.idempotency_ttl));
                db.run("create", async |c| create_alone(c, &new, key.as_ref(), lock, ttl).await).await
            }
            Ok(None) => {
                Err(StoreError::Unavailable { detail: "the create's transaction ended unanswered".into() }
                    .into())
            }
            Err(_) => Err(StoreError::Timeout { what: format!("create: no answer within {bound:?}") }.into()),
        }
    }

    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError> {
        self.db().read("get", async |c| load_one(c, id, false).await).await
    }

    async fn list(&self, user: UserId, query: ListQuery) -> Result<Page<Generation>, StoreError> {
        let before = rules::parse_cursor(query.cursor.as_deref())?.unwrap_or(i64::MAX);
        let limit = query.limit;
        let status = query.status.map(GenerationStatus::as_str);
        self.db()
            .read("list", async |c| {
                let rows = c
                    .query_cached(
                        "SELECT id FROM generations WHERE user_id = $1 AND seq < $2 \
                         AND ($3::text IS NULL OR status = $3) ORDER BY seq DESC LIMIT $4",
                        &[&user.0, &before, &status, &(i64::try_from(limit).unwrap_or(i64::MAX) + 1)],
                    )
                    .await
                    .map_err(map_err)?;
                let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
                let items = load(c, &ids, false).await?;
                let (items, next_cursor) = rules::page(items, limit, |(_, seq)| *seq);
                Ok(Page { items: items.into_iter().map(|(g, _)| g).collect(), next_cursor })
            })
            .await
    }

    async fn cancel(&self, id: GenerationId) -> Result<CancelOutcome, StoreError> {
        let (outcome, voided) = self
            .db()
            .run("cancel", async |c| {
                // Two round trips: BEGIN, the lock, the read and the time; the
                // writes, COMMIT and the announcement.
                transaction!(&*c, |tx| {
                    let mut first = Batch::of(LOCK, vec![p(vec![id.0])]);
                    first.push(LOAD_ONE, vec![p(id.0)]);
                    first.push("SELECT now()", Vec::new());
                    let answers = all_ok(tx.begin_with(&first).await.map_err(map_err)?).map_err(map_err)?;
                    let [_, read, time] = answers.as_slice() else {
                        return Err(corrupt("the cancel's reads went unanswered"));
                    };
                    let before = loaded_one(read)?.ok_or(StoreError::NotFound)?;
                    if before.status.is_terminal() {
                        return Ok((CancelOutcome::AlreadyTerminal(before), Vec::new()));
                    }
                    let now: DateTime<Utc> =
                        time.first().ok_or_else(|| corrupt("now() returned no row"))?.get(0);
                    let mut after = before.clone();
                    after.cancel_requested = true;
                    after.close(AreaStatus::Cancelled, &Failure::cancelled(), now);
                    let mut last = Batch::new();
                    let voided = save(&mut last, &before, &after, false)?;
                    let notes = [Notification::CancelRequested(id), Notification::Changed(id)];
                    commit_announcing(tx, &last, &notes).await?;
                    drop(last);
                    Ok((CancelOutcome::Cancelled(after), voided))
                })
            })
            .await?;
        self.report(&voided);
        Ok(outcome)
    }

    async fn claim(
        &self,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Generation>, StoreError> {
        self.claim_where("claim", owner, ttl, limit, Claimable::Any).await
    }

    async fn claim_pending(
        &self,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Generation>, StoreError> {
        self.claim_where("claim_pending", owner, ttl, limit, Claimable::Pending).await
    }

    async fn claim_one(
        &self,
        id: GenerationId,
        owner: &WorkerId,
        ttl: Duration,
    ) -> Result<Option<Generation>, StoreError> {
        Ok(self.claim_where("claim_one", owner, ttl, 1, Claimable::One(id)).await?.pop())
    }

    async fn heartbeat(&self, owner: &WorkerId, ttl: Duration) -> Result<Vec<LeaseState>, StoreError> {
        self.db()
            .run("heartbeat", async |c| {
                // One statement for every lease the owner holds: it renews the
                // owner's one row and reads which generations it holds, so no
                // generation row is written or locked. Each lease's own
                // expiry (the deadline plus one TTL) is not renewed, so a
                // stuck worker cannot keep overdue work (and its holds)
                // forever. Rows of owners gone an hour that hold nothing are
                // dropped on the way.
                let rows = c
                    .query_cached(
                        concat!(
                            "WITH alive AS (",
                            renew_owner_sql!("true"),
                            "),
                         gone AS (
                             DELETE FROM workers w
                              WHERE w.expires_at < now() - interval '1 hour' AND w.owner <> $1
                                AND NOT EXISTS (SELECT 1 FROM generations g WHERE g.lease_owner = w.owner))
                         SELECT id, attempt, cancel_requested FROM generations
                          WHERE lease_owner = $1 AND status IN ('pending', 'processing')"
                        ),
                        &[&owner.0, &secs(ttl)],
                    )
                    .await
                    .map_err(map_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(LeaseState {
                            generation_id: GenerationId(r.get(0)),
                            attempt: u32::try_from(r.get::<_, i32>(1)).map_err(corrupt)?,
                            cancel_requested: r.get(2),
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let id = lease.generation_id;
        self.db()
            .run("release", async |c| {
                transaction!(&*c, |tx| {
                    let (before, _) = begin_fenced(tx, lease, true).await?;
                    let before = before.ok_or(StoreError::NotFound)?;
                    let mut after = before.clone();
                    after.areas.iter_mut().for_each(Area::hand_back);
                    let mut last = Batch::new();
                    for (b, a) in before.areas.iter().zip(&after.areas) {
                        if b != a {
                            push_area(&mut last, id, a);
                        }
                    }
                    last.push(
                        "UPDATE generations SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL \
                         WHERE id = $1",
                        vec![p(id.0)],
                    );
                    commit_announcing(tx, &last, &[Notification::Changed(id)]).await?;
                    Ok(())
                })
            })
            .await
    }

    async fn record_geocode(&self, lease: &Lease, geocoded: &Geocoded) -> Result<(), StoreError> {
        let id = lease.generation_id;
        self.db()
            .run("record_geocode", async |c| {
                transaction!(&*c, |tx| {
                    begin_fenced(tx, lease, false).await?;
                    let write = Batch::of(
                        "UPDATE generations SET geocoded_address = $2, lat = $3, lng = $4 WHERE id = $1",
                        vec![
                            p(id.0),
                            p(geocoded.formatted_address.as_str()),
                            p(geocoded.location.lat),
                            p(geocoded.location.lng),
                        ],
                    );
                    commit_announcing(tx, &write, &[Notification::Changed(id)]).await?;
                    Ok(())
                })
            })
            .await
    }

    async fn advance_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        stage: AreaStage,
        progress: u8,
    ) -> Result<(), StoreError> {
        self.fenced_change("advance_area", lease, true, |g, _| {
            area_of(g, area)?.advance(stage, progress).map_err(|_| StoreError::Finished)
        })
        .await
        .map(drop)
    }

    async fn complete_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        image_key: &str,
    ) -> Result<Vec<Resolution>, StoreError> {
        self.fenced_change("complete_area", lease, true, |g, now| {
            area_of(g, area)?.complete(image_key.to_owned(), now).map_err(|_| StoreError::Finished)
        })
        .await
        .map(|(_, resolved)| resolved)
    }

    async fn end_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        status: AreaStatus,
        failure: &Failure,
    ) -> Result<Vec<Resolution>, StoreError> {
        self.fenced_change("end_area", lease, true, |g, now| {
            area_of(g, area)?.end(status, failure.clone(), now).map_err(|_| StoreError::Finished)
        })
        .await
        .map(|(_, resolved)| resolved)
    }

    async fn finish(
        &self,
        lease: &Lease,
        unfinished: AreaStatus,
        failure: &Failure,
    ) -> Result<Finished, StoreError> {
        let (generation, resolved) = self
            .fenced_change("finish", lease, false, |g, now| rules::finish(g, unfinished, failure, now))
            .await?;
        Ok(Finished { generation, resolved })
    }

    async fn end_overdue(&self, limit: usize) -> Result<Vec<GenerationId>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let failure = Failure::generation_deadline();
        let (ids, voided) = self
            .db()
            .run("end_overdue", async |c| {
                // Three round trips: BEGIN and the overdue rows' locks; their
                // read and the time; the writes, COMMIT and the announcement.
                transaction!(&*c, |tx| {
                    let pick = Batch::of(
                        concat!(
                            "SELECT g.id FROM generations g
                              WHERE g.status IN ('pending', 'processing') AND g.deadline_at <= now()
                                AND ",
                            lease_lapsed!(),
                            "
                              ORDER BY g.deadline_at
                              LIMIT $1
                              FOR UPDATE OF g SKIP LOCKED"
                        ),
                        vec![p(limit)],
                    );
                    let rows = all_ok(tx.begin_with(&pick).await.map_err(map_err)?).map_err(map_err)?;
                    let ids: Vec<Uuid> = rows.iter().flatten().map(|r| r.get(0)).collect();
                    if ids.is_empty() {
                        tx.commit().await.map_err(map_err)?;
                        return Ok((Vec::new(), Vec::new()));
                    }
                    let mut reads = Batch::of(LOAD, vec![p(ids.as_slice())]);
                    reads.push("SELECT now()", Vec::new());
                    let answers = send(tx, &[&reads]).await.map_err(map_err)?.into_iter().flatten().collect();
                    let [read, time] = all_ok(answers)
                        .map_err(map_err)?
                        .try_into()
                        .map_err(|_| corrupt("the overdue generations' reads went unanswered"))?;
                    let mut overdue = loaded(&ids, &read)?;
                    // Accounts in one order, so that sweepers never deadlock.
                    overdue.sort_by_key(|(g, _)| (g.user_id, g.id));
                    let now: DateTime<Utc> =
                        time.first().ok_or_else(|| corrupt("now() returned no row"))?.get(0);
                    let closed: Vec<(Generation, Generation)> = overdue
                        .into_iter()
                        .map(|(before, _)| {
                            let mut after = before.clone();
                            after.close(AreaStatus::Failed, &failure, now);
                            (before, after)
                        })
                        .collect();
                    let mut last = Batch::new();
                    let mut voided = Vec::new();
                    for (before, after) in &closed {
                        voided.extend(save(&mut last, before, after, false)?);
                    }
                    let ended: Vec<GenerationId> = closed.iter().map(|(_, after)| after.id).collect();
                    let notes: Vec<Notification> =
                        ended.iter().map(|id| Notification::Changed(*id)).collect();
                    commit_announcing(tx, &last, &notes).await?;
                    Ok::<_, StoreError>((ended, voided))
                })
            })
            .await?;
        self.report(&voided);
        Ok(ids)
    }

    async fn forget_expired_keys(&self, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db()
            .run("forget_expired_keys", async |c| {
                // Oldest first, through idempotency_keys_expiry; a key that a
                // create is taking over right now is skipped, not waited for.
                let forgotten = c
                    .execute_cached(
                        "DELETE FROM idempotency_keys k
                          USING (SELECT user_id, key FROM idempotency_keys
                                  WHERE expires_at <= now()
                                  ORDER BY expires_at
                                  LIMIT $1
                                  FOR UPDATE SKIP LOCKED) expired
                          WHERE k.user_id = expired.user_id AND k.key = expired.key",
                        &[&limit],
                    )
                    .await
                    .map_err(map_err)?;
                usize::try_from(forgotten).map_err(corrupt)
            })
            .await
    }

    fn notifications(&self) -> BoxStream<'static, Notification> {
        self.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db()
            .run("ping", async |c| {
                c.execute_cached("SELECT 1", &[]).await.map_err(map_err)?;
                Ok(())
            })
            .await
    }

    async fn gauges(&self, lease_ttl: Duration) -> Result<StoreGauges, StoreError> {
        self.db()
            .run("gauges", async |c| {
                let row = c
                    .query_one_cached(
                        "SELECT (SELECT COALESCE(sum(held), 0)::bigint FROM accounts),
                                (SELECT count(*) FROM generations
                                  WHERE status IN ('pending', 'processing')
                                    AND deadline_at < now() - make_interval(secs => $1))",
                        &[&secs(lease_ttl)],
                    )
                    .await
                    .map_err(map_err)?;
                Ok(StoreGauges {
                    credits_held: u64::try_from(row.get::<_, i64>(0)).map_err(corrupt)?,
                    stuck: u64::try_from(row.get::<_, i64>(1)).map_err(corrupt)?,
                })
            })
            .await
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        Some(self.pool())
    }
}
