//! [`GenerationStore`] on Postgres.

use crate::PgStore;
use crate::db::{is_lock_refused, map_err};
use crate::listen::{CHANNEL, payload};
use crate::rows::{self, account_columns, corrupt, load, load_one, write_area, write_generation};
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

/// Announces `notes` once the transaction that made them has committed, in
/// a statement of its own on the same connection.
///
/// Never inside the transaction: a transaction that notifies holds
/// Postgres's one notification lock from its commit's start until the
/// commit is flushed, so every notifying commit would wait for the one
/// before it to reach the disk, and concurrent commits could no longer
/// share a flush. This statement writes nothing, so its own commit does not
/// wait for the disk. A notification is a hint — workers also claim every
/// sweep interval, heartbeats carry cancellations, event streams re-read on
/// a timer — so one lost with a crash between the two only delays; a
/// failure here is logged, not returned (what it announces is committed).
async fn announce(c: &impl Sql, notes: &[Notification]) {
    if notes.is_empty() {
        return;
    }
    let payloads: Vec<String> = notes.iter().map(payload).collect();
    if let Err(e) =
        c.execute_cached("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", &[&CHANNEL, &payloads]).await
    {
        tracing::warn!(error = %map_err(e), "announcing committed changes failed; listeners will poll");
    }
}

fn changed(ids: &[Uuid]) -> Vec<Notification> {
    ids.iter().map(|id| Notification::Changed(GenerationId(*id))).collect()
}

pub(crate) async fn now(c: &impl Sql) -> Result<DateTime<Utc>, StoreError> {
    let row = c.query_one_cached("SELECT now()", &[]).await.map_err(map_err)?;
    Ok(row.get(0))
}

/// Opens the account if it does not exist, with its trial credits and their
/// `credit` entry, in one statement (so outside any longer transaction: the
/// insert of a new account never waits on another request's transaction).
pub(crate) async fn open_account(c: &impl Sql, user: UserId, trial: u64) -> Result<(), StoreError> {
    let trial = i64::try_from(trial).map_err(corrupt)?;
    c.execute_cached(
        "WITH opened AS (
             INSERT INTO accounts (user_id, trial_credits, token_balance, credited)
             VALUES ($1, $2, 0, $2)
             ON CONFLICT (user_id) DO NOTHING
             RETURNING user_id, trial_credits)
         INSERT INTO ledger_entries (user_id, kind, amount, source, reference)
         SELECT user_id, 'credit', trial_credits, 'trial', 'trial' FROM opened WHERE trial_credits > 0",
        &[&user.0, &trial],
    )
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
async fn under_lock_policy<T>(
    c: &impl Sql,
    policy: LockPolicy,
    lock: impl AsyncFnOnce(bool) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match policy {
        LockPolicy::NoWait => lock(false).await,
        LockPolicy::Timeout(d) => {
            let set = format!("SET LOCAL lock_timeout = '{}ms'", d.as_millis().max(1));
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
/// entry per area, and the account's counters. Reports voids to the observer
/// after the caller commits (returned as reasons).
async fn book(c: &impl Sql, before: &Generation, after: &Generation) -> Result<Vec<Resolution>, StoreError> {
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
        c.execute_cached(
            "INSERT INTO ledger_entries (user_id, kind, amount, source, generation_id, area) \
             VALUES ($1, $2, $6, $3, $4, $5)",
            &[&after.user_id.0, &kind, &r.source.as_str(), &after.id.0, &r.area.as_str(), &amount],
        )
        .await
        .map_err(map_err)?;
    }
    if captured + trial + token > 0 {
        c.execute_cached(
            "UPDATE accounts SET held = held - $2, captured = captured + $3, trial_credits = trial_credits + $4, \
             token_balance = token_balance + $5, updated_at = now() WHERE user_id = $1",
            &[&after.user_id.0, &(captured + trial + token), &captured, &trial, &token],
        )
        .await
        .map_err(map_err)?;
    }
    Ok(resolved)
}

/// Writes what changed from `before` to `after`: areas, holds, the
/// generation's head (ending its lease unless `keep_lease`).
async fn save(
    c: &impl Sql,
    before: &Generation,
    after: &Generation,
    keep_lease: bool,
) -> Result<Vec<Resolution>, StoreError> {
    for (b, a) in before.areas.iter().zip(&after.areas) {
        if b != a {
            write_area(c, after.id, a).await?;
        }
    }
    let resolved = book(c, before, after).await?;
    let head_changed = before.status != after.status
        || before.error != after.error
        || before.completed_at != after.completed_at
        || before.cancel_requested != after.cancel_requested;
    if head_changed || !keep_lease {
        write_generation(c, after, keep_lease).await?;
    }
    Ok(resolved)
}

/// Checks a worker's lease under the generation's row lock and returns the
/// transaction's time: `LeaseLost` unless `lease` still holds, `Finished` if
/// the generation is terminal.
async fn fence(c: &impl Sql, lease: &Lease) -> Result<DateTime<Utc>, StoreError> {
    let row = c
        .query_opt_cached(
            "SELECT status, attempt, lease_owner, now() FROM generations WHERE id = $1 FOR UPDATE",
            &[&lease.generation_id.0],
        )
        .await
        .map_err(map_err)?
        .ok_or(StoreError::NotFound)?;
    let status: String = row.get(0);
    let attempt: i32 = row.get(1);
    let owner: Option<String> = row.get(2);
    let now: DateTime<Utc> = row.get(3);
    let status = GenerationStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?;
    let attempt = u32::try_from(attempt).map_err(corrupt)?;
    rules::check_fence(status, attempt, owner.as_deref(), lease.attempt, &lease.owner.0)?;
    Ok(now)
}

/// [`fence`], then the generation itself, for a write that changes it.
async fn fenced(c: &impl Sql, lease: &Lease) -> Result<(Generation, DateTime<Utc>), StoreError> {
    let now = fence(c, lease).await?;
    let g = load_one(c, lease.generation_id, false).await?.ok_or(StoreError::NotFound)?;
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

/// Opens the account if it does not exist (with its trial credits and their
/// `credit` entry) and takes its row lock under the lock policy, in one
/// statement; with it, the subscription and the key's earlier use. `None`
/// when the lock was refused (SQLSTATE 55P03), or when another request
/// opened the account while this statement ran (its snapshot cannot see the
/// new row: the caller answers "busy" and the retry finds it).
async fn open_and_lock(
    c: &impl Sql,
    new: &NewGeneration,
    key: Option<&IdempotencyClaim>,
    policy: LockPolicy,
) -> Result<Option<Locked>, StoreError> {
    macro_rules! open_and_lock_sql {
        ($wait:literal) => {
            concat!(
                "WITH opened AS (
                     INSERT INTO accounts (user_id, trial_credits, token_balance, credited)
                     VALUES ($1, $2, 0, $2)
                     ON CONFLICT (user_id) DO NOTHING
                     RETURNING user_id, trial_credits, token_balance, held, captured),
                 trial AS (
                     INSERT INTO ledger_entries (user_id, kind, amount, source, reference)
                     SELECT user_id, 'credit', trial_credits, 'trial', 'trial' FROM opened WHERE trial_credits > 0),
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
    let trial = i64::try_from(new.trial_credits).map_err(corrupt)?;
    let key = key.map(|k| k.key.as_str());
    under_lock_policy(c, policy, async |wait| {
        let sql = if wait { open_and_lock_sql!("") } else { open_and_lock_sql!(" NOWAIT") };
        match c.query_opt_cached(sql, &[&new.user_id.0, &trial, &key]).await {
            Ok(Some(row)) => {
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
                Ok(Some(Locked { account, subscribed: row.get(5), replay }))
            }
            Ok(None) => Ok(None),
            Err(e) if is_lock_refused(&e) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    })
    .await
}

/// Every write of a create in one statement: the account's new balances,
/// the generation, its areas and their holds (batched) and the idempotency
/// key. Returns the generation's `created_at` and
/// `deadline_at`, or `None` when the key is held by a request that
/// committed meanwhile (nothing is kept: the caller rolls back).
async fn insert_generation(
    c: &impl Sql,
    new: &NewGeneration,
    account: &terrace_domain::Account,
    sources: &[CreditSource],
    key: Option<&IdempotencyClaim>,
    ttl: f64,
) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, StoreError> {
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
    let row = c
        .query_one_cached(
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
                    $16::text IS NULL OR EXISTS (SELECT 1 FROM idempotency)
               FROM generation g",
            &[
                &new.user_id.0,
                &n(account.trial_credits)?,
                &n(account.token_balance)?,
                &n(account.held)?,
                &new.id.0,
                &new.request_id.as_str(),
                &new.request.address.as_str(),
                &secs(new.deadline),
                &positions,
                &kinds,
                &styles,
                &prompts,
                &strengths,
                &holds,
                &amounts,
                &key.map(|k| k.key.as_str()),
                &key.map(|k| k.request_hash.as_str()),
                &ttl,
            ],
        )
        .await
        .map_err(map_err)?;
    let key_stored: bool = row.get(2);
    Ok(key_stored.then(|| (row.get(0), row.get(1))))
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
        self.db()
            .run(what, async |c| {
                let tx = c.transaction().await.map_err(map_err)?;
                let (before, now) = fenced(&tx, lease).await?;
                let mut after = before.clone();
                change(&mut after, now)?;
                let resolved = save(&tx, &before, &after, keep_lease).await?;
                tx.commit().await.map_err(map_err)?;
                announce(&*c, &[Notification::Changed(after.id)]).await;
                Ok::<_, StoreError>((after, resolved))
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

    /// Claims up to `limit` claimable generations (only `one`, if named),
    /// oldest first, skipping rows other transactions hold locked.
    async fn claim_where(
        &self,
        what: &'static str,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
        one: Option<GenerationId>,
    ) -> Result<Vec<Generation>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db()
            .run(what, async |c| {
                let tx = c.transaction().await.map_err(map_err)?;
                let rows = tx
                    .query_cached(
                        "WITH picked AS (
                             SELECT id FROM generations
                             WHERE status IN ('pending', 'processing')
                               AND (lease_expires_at IS NULL OR lease_expires_at <= now())
                               AND deadline_at > now()
                               AND ($4::uuid IS NULL OR id = $4)
                             ORDER BY seq
                             LIMIT $3
                             FOR UPDATE SKIP LOCKED)
                         UPDATE generations g
                            SET attempt = g.attempt + 1,
                                lease_owner = $1,
                                lease_expires_at = LEAST(now(), g.deadline_at) + make_interval(secs => $2),
                                status = 'processing',
                                started_at = COALESCE(g.started_at, now())
                           FROM picked WHERE g.id = picked.id
                         RETURNING g.id, g.seq",
                        &[&owner.0, &secs(ttl), &limit, &one.map(|g| g.0)],
                    )
                    .await
                    .map_err(map_err)?;
                let mut ids: Vec<(i64, Uuid)> = rows.iter().map(|r| (r.get(1), r.get(0))).collect();
                ids.sort();
                let ids: Vec<Uuid> = ids.into_iter().map(|(_, id)| id).collect();
                let claimed = load(&tx, &ids, false).await?;
                tx.commit().await.map_err(map_err)?;
                announce(&*c, &changed(&ids)).await;
                Ok(claimed.into_iter().map(|(g, _)| g).collect())
            })
            .await
    }
}

#[async_trait]
impl GenerationStore for PgStore {
    async fn create(
        &self,
        new: NewGeneration,
        idempotency: Option<IdempotencyClaim>,
    ) -> Result<CreateOutcome, CreateError> {
        let (lock, ttl) = (self.db().lock, secs(self.db().idempotency_ttl));
        let new = &new;
        let idempotency = idempotency.as_ref();
        // One transaction, two statements between BEGIN and COMMIT (and the
        // lock timeout's SET LOCAL, sent with the first): open and lock the
        // account (with the key's earlier use, if any), then every write at
        // once. The announcement follows the commit.
        self.db()
            .run("create", async |c| {
                let tx = c.transaction().await.map_err(map_err)?;
                let Some(found) = open_and_lock(&tx, new, idempotency, lock).await? else {
                    return Err(CreateError::AccountBusy);
                };
                if let Some((hash, earlier)) = found.replay {
                    if Some(hash.as_str()) != idempotency.map(|k| k.request_hash.as_str()) {
                        return Err(CreateError::IdempotencyKeyReused);
                    }
                    let generation = load_one(&tx, earlier, false).await?.ok_or(StoreError::NotFound)?;
                    tx.commit().await.map_err(map_err)?;
                    return Ok(CreateOutcome::Replayed(generation));
                }
                let mut account = found.account;
                let sources = match account.hold(new.request.areas.len(), found.subscribed) {
                    Ok(sources) => sources,
                    Err(e) => {
                        // Nothing was held; the account stays open, with its trial.
                        tx.commit().await.map_err(map_err)?;
                        return Err(CreateError::InsufficientCredits {
                            needed: e.needed,
                            available: e.available,
                        });
                    }
                };
                let Some((created_at, deadline_at)) =
                    insert_generation(&tx, new, &account, &sources, idempotency, ttl).await?
                else {
                    // The key was taken by a request that committed while
                    // this one waited for the lock: its retry replays it.
                    return Err(CreateError::AccountBusy);
                };
                tx.commit().await.map_err(map_err)?;
                announce(&*c, &[Notification::Created(new.id)]).await;
                // What was written, without reading it back.
                let created = Created {
                    id: new.id,
                    user_id: new.user_id,
                    request_id: new.request_id.clone(),
                    request: new.request.clone(),
                    sources,
                };
                Ok(CreateOutcome::Created(Generation::created(created, created_at, deadline_at)))
            })
            .await
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
                let tx = c.transaction().await.map_err(map_err)?;
                let before = load_one(&tx, id, true).await?.ok_or(StoreError::NotFound)?;
                if before.status.is_terminal() {
                    return Ok((CancelOutcome::AlreadyTerminal(before), Vec::new()));
                }
                let now = now(&tx).await?;
                let mut after = before.clone();
                after.cancel_requested = true;
                after.close(AreaStatus::Cancelled, &Failure::cancelled(), now);
                let voided = save(&tx, &before, &after, false).await?;
                tx.commit().await.map_err(map_err)?;
                announce(&*c, &[Notification::CancelRequested(id), Notification::Changed(id)]).await;
                Ok((CancelOutcome::Cancelled(after), voided))
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
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.claim_where("claim", owner, ttl, limit, None).await
    }

    async fn claim_one(
        &self,
        id: GenerationId,
        owner: &WorkerId,
        ttl: Duration,
    ) -> Result<Option<Generation>, StoreError> {
        Ok(self.claim_where("claim_one", owner, ttl, 1, Some(id)).await?.pop())
    }

    async fn heartbeat(&self, owner: &WorkerId, ttl: Duration) -> Result<Vec<LeaseState>, StoreError> {
        self.db()
            .run("heartbeat", async |c| {
                // One statement for every lease the owner holds. A lease never
                // reaches past the deadline by more than one TTL, so a stuck
                // worker cannot keep overdue work (and its holds) forever.
                let rows = c
                    .query_cached(
                        "UPDATE generations
                            SET lease_expires_at = LEAST(now(), deadline_at) + make_interval(secs => $2)
                          WHERE lease_owner = $1 AND status IN ('pending', 'processing')
                      RETURNING id, attempt, cancel_requested",
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
                let tx = c.transaction().await.map_err(map_err)?;
                let (before, _) = fenced(&tx, lease).await?;
                let mut after = before.clone();
                after.areas.iter_mut().for_each(Area::hand_back);
                for (b, a) in before.areas.iter().zip(&after.areas) {
                    if b != a {
                        write_area(&tx, id, a).await?;
                    }
                }
                tx.execute_cached(
                    "UPDATE generations SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = $1",
                    &[&id.0],
                )
                .await
                .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                announce(&*c, &[Notification::Changed(id)]).await;
                Ok(())
            })
            .await
    }

    async fn record_geocode(&self, lease: &Lease, geocoded: &Geocoded) -> Result<(), StoreError> {
        let id = lease.generation_id;
        self.db()
            .run("record_geocode", async |c| {
                let tx = c.transaction().await.map_err(map_err)?;
                fence(&tx, lease).await?;
                tx.execute_cached(
                    "UPDATE generations SET geocoded_address = $2, lat = $3, lng = $4 WHERE id = $1",
                    &[&id.0, &geocoded.formatted_address, &geocoded.location.lat, &geocoded.location.lng],
                )
                .await
                .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                announce(&*c, &[Notification::Changed(id)]).await;
                Ok(())
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
                let tx = c.transaction().await.map_err(map_err)?;
                let rows = tx
                    .query_cached(
                        "SELECT id FROM generations
                          WHERE status IN ('pending', 'processing') AND deadline_at <= now()
                            AND (lease_expires_at IS NULL OR lease_expires_at <= now())
                          ORDER BY deadline_at
                          LIMIT $1
                          FOR UPDATE SKIP LOCKED",
                        &[&limit],
                    )
                    .await
                    .map_err(map_err)?;
                let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
                let mut overdue = load(&tx, &ids, false).await?;
                // Accounts in one order, so that sweepers never deadlock.
                overdue.sort_by_key(|(g, _)| (g.user_id, g.id));
                let now = now(&tx).await?;
                let mut voided = Vec::new();
                let mut ended = Vec::new();
                for (before, _) in overdue {
                    let mut after = before.clone();
                    after.close(AreaStatus::Failed, &failure, now);
                    voided.extend(save(&tx, &before, &after, false).await?);
                    ended.push(after.id);
                }
                tx.commit().await.map_err(map_err)?;
                announce(&*c, &changed(&ended.iter().map(|g| g.0).collect::<Vec<_>>())).await;
                Ok::<_, StoreError>((ended, voided))
            })
            .await?;
        self.report(&voided);
        Ok(ids)
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
                                    AND deadline_at + make_interval(secs => $1) < now())",
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
