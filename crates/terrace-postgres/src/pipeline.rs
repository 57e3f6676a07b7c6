//! Statements sent together, and transactions in as few round trips as
//! their statements allow.
//!
//! tokio-postgres writes a statement to its connection when the call is
//! first polled, and the server runs what it receives in order. So calls
//! that are polled one after another before any answer is awaited travel
//! together and cost one round trip, and each still gets its own answer
//! (each call carries its own `Sync`, so one statement's error does not
//! skip the next). Two things keep that order safe:
//!
//! - every statement of a [`Batch`] is prepared (or taken from the
//!   connection's cache) *before* any of them is sent, so that no call
//!   stops to prepare while a later one goes ahead of it;
//! - the calls are polled in the batch's order ([`in_order`]).
//!
//! A [`Tx`] sends its `BEGIN` with its first statements and its `COMMIT`
//! with its last writes and with what follows the commit (the
//! announcement). When a write sent with the `COMMIT` fails, the server has
//! aborted the transaction, so the `COMMIT` rolls it back: nothing of it is
//! kept, and the write's error is the answer. A statement that must stop
//! its transaction when it finds something unexpected therefore raises an
//! error (`terrace_refuse`, migration 0003) instead of returning a flag the
//! caller would see only after the commit.

use crate::db::map_err;
use crate::sql::Sql;
use futures::future::{MaybeDone, maybe_done};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use terrace_domain::StoreError;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, GenericClient, Row};

/// One parameter of a statement in a [`Batch`]: owned, or borrowed for the
/// batch's lifetime.
pub(crate) type Param<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// One statement's answer: its rows (none for a write without `RETURNING`).
pub(crate) type Answer = Result<Vec<Row>, Error>;

/// Statements to send at once, each with its parameters, in order.
#[derive(Debug, Default)]
pub(crate) struct Batch<'a> {
    items: Vec<(&'a str, Vec<Param<'a>>)>,
}

impl<'a> Batch<'a> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A batch of one statement.
    pub(crate) fn of(sql: &'a str, params: Vec<Param<'a>>) -> Self {
        let mut b = Self::new();
        b.push(sql, params);
        b
    }

    /// Adds a statement; its answer will be at the index returned.
    pub(crate) fn push(&mut self, sql: &'a str, params: Vec<Param<'a>>) -> usize {
        self.items.push((sql, params));
        self.items.len() - 1
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Adds every statement of `other`, after this batch's.
    pub(crate) fn extend(&mut self, other: Batch<'a>) {
        self.items.extend(other.items);
    }
}

/// Boxes a parameter for [`Batch::push`].
pub(crate) fn p<'a>(v: impl ToSql + Sync + Send + 'a) -> Param<'a> {
    Box::new(v)
}

/// Polls every future in the order given, on every poll, until all are
/// done: futures that send on their first poll send in this order.
/// (`futures::future::join_all` switches to an unordered set for many
/// futures, which promises no order.)
async fn in_order<T>(calls: Vec<Pin<Box<dyn Future<Output = T> + Send + '_>>>) -> Vec<T> {
    let mut calls: Vec<MaybeDone<_>> = calls.into_iter().map(maybe_done).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for call in &mut calls {
            done &= Pin::new(call).poll(cx).is_ready();
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    calls.iter_mut().filter_map(|call| Pin::new(call).take_output()).collect()
}

/// Sends the statements of `parts`, in order, in one round trip, and
/// returns every statement's answer, part by part. `Err` only if a
/// statement could not be prepared (then none was sent).
pub(crate) async fn send<C: Sql>(c: &C, parts: &[&Batch<'_>]) -> Result<Vec<Vec<Answer>>, Error> {
    let items: Vec<&(&str, Vec<Param<'_>>)> = parts.iter().flat_map(|b| &b.items).collect();
    let mut statements = Vec::with_capacity(items.len());
    for (sql, _) in &items {
        statements.push(c.prepared(sql).await?);
    }
    let calls = statements
        .iter()
        .zip(&items)
        .map(|(st, (_, params))| {
            Box::pin(async move {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
                c.pg().query(st, &refs).await
            }) as Pin<Box<dyn Future<Output = Answer> + Send + '_>>
        })
        .collect();
    let mut answers = in_order(calls).await.into_iter();
    Ok(parts.iter().map(|b| answers.by_ref().take(b.len()).collect()).collect())
}

/// The answers of a batch whose statements must all succeed: their rows,
/// or the first error.
pub(crate) fn all_ok(answers: Vec<Answer>) -> Result<Vec<Vec<Row>>, Error> {
    answers.into_iter().collect()
}

/// A transaction on one connection; see the module's documentation. Run
/// through [`transaction!`], which rolls it back if its body returns
/// without committing.
#[derive(Debug)]
pub(crate) struct Tx<'c, C> {
    c: &'c C,
    open: bool,
}

/// Runs `body` in a [`Tx`] named `tx` on the connection `c`. The body
/// begins it with [`Tx::begin_with`] and ends it with [`Tx::commit_with`];
/// if it returns without committing (an error, a refusal, a replay), the
/// transaction is rolled back and nothing it wrote is kept. (A body whose
/// future is dropped midway leaves its connection to
/// [`crate::db::Db::run`], which discards it.)
macro_rules! transaction {
    ($c:expr, |$tx:ident| $body:block) => {{
        let mut $tx = $crate::pipeline::Tx::new($c);
        let out = async {
            let $tx = &mut $tx;
            $body
        }
        .await;
        $tx.close(out).await
    }};
}
pub(crate) use transaction;

impl<'c, C: Sql> Tx<'c, C> {
    pub(crate) fn new(c: &'c C) -> Self {
        Self { c, open: false }
    }

    /// Ends the transaction with the body's outcome: rolls it back if the
    /// body did not commit.
    pub(crate) async fn close<T, E: From<StoreError>>(self, out: Result<T, E>) -> Result<T, E> {
        if self.open {
            // ROLLBACK never fails on a live connection; on a broken one the
            // pool drops the connection on its return.
            if let Err(e) = self.c.pg().batch_execute("ROLLBACK").await {
                tracing::debug!(error = %e, "rolling back failed: the connection is broken");
                if out.is_ok() {
                    return Err(map_err(e).into());
                }
            }
        }
        out
    }
}

const BEGIN: &str = "BEGIN";
const COMMIT: &str = "COMMIT";

impl<C: Sql> Tx<'_, C> {
    /// `BEGIN` and `first` in one round trip: `first`'s answers, in order.
    pub(crate) async fn begin_with(&mut self, first: &Batch<'_>) -> Result<Vec<Answer>, Error> {
        let begin = Batch::of(BEGIN, Vec::new());
        let sent = send(self.c, &[&begin, first]).await?;
        self.open = true;
        let mut answers = sent.into_iter();
        // BEGIN only fails with its connection, and then so did everything after it.
        all_ok(answers.next().unwrap_or_default())?;
        Ok(answers.next().unwrap_or_default())
    }

    /// `last`, `COMMIT` and then `after` in one round trip. `last`'s rows,
    /// with `after`'s answers (it runs after the commit, outside the
    /// transaction); or the first error of `last` or of the commit, and then
    /// nothing was kept.
    pub(crate) async fn commit_with(
        &mut self,
        last: &Batch<'_>,
        after: &Batch<'_>,
    ) -> Result<(Vec<Vec<Row>>, Vec<Answer>), Error> {
        let commit = Batch::of(COMMIT, Vec::new());
        let sent = send(self.c, &[last, &commit, after]).await;
        // Once COMMIT was sent the transaction is over either way: it
        // committed, or (after a failed statement) it rolled back.
        self.open = sent.is_err();
        let mut answers = sent?.into_iter();
        let rows = all_ok(answers.next().unwrap_or_default())?;
        all_ok(answers.next().unwrap_or_default())?;
        Ok((rows, answers.next().unwrap_or_default()))
    }

    /// `COMMIT` alone.
    pub(crate) async fn commit(&mut self) -> Result<(), Error> {
        self.commit_with(&Batch::new(), &Batch::new()).await.map(drop)
    }
}

impl<C: Sql> Sql for Tx<'_, C> {
    type Pg = C::Pg;
    fn pg(&self) -> &C::Pg {
        self.c.pg()
    }
    fn prepared<'a>(
        &'a self,
        sql: &'a str,
    ) -> impl Future<Output = Result<tokio_postgres::Statement, Error>> + Send + 'a {
        self.c.prepared(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

    async fn client() -> deadpool_postgres::Client {
        let url = std::env::var("TERRACE_TEST_DATABASE_URL")
            .expect("TERRACE_TEST_DATABASE_URL is not set: run these tests with `cargo xtask test`");
        let cfg: tokio_postgres::Config = url.parse().unwrap();
        let manager = Manager::from_config(
            cfg,
            tokio_postgres::NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager).max_size(1).build().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), pool.get()).await.unwrap().unwrap()
    }

    /// Forty statements none of which the fresh connection has prepared, each
    /// of which sets one session value and returns it: if any were sent out
    /// of order (one stopping to prepare while a later one went ahead), the
    /// value read last would not be the last one set.
    #[tokio::test]
    async fn a_batch_runs_in_its_order_even_when_nothing_is_prepared_yet() {
        let c = client().await;
        let texts: Vec<String> =
            (0..40).map(|i| format!("SELECT set_config('terrace.order', $1, false) AS s{i}")).collect();
        let values: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let mut batch = Batch::new();
        for (text, value) in texts.iter().zip(&values) {
            batch.push(text, vec![p(value.as_str())]);
        }
        let last = Batch::of("SELECT current_setting('terrace.order')", Vec::new());
        let answers = send(&c, &[&batch, &last]).await.unwrap();
        let set: Vec<String> =
            answers[0].iter().map(|a| a.as_ref().unwrap()[0].get::<_, String>(0)).collect();
        assert_eq!(set, values, "each statement answered its own value, in order");
        assert_eq!(answers[1][0].as_ref().unwrap()[0].get::<_, String>(0), "39", "the last set was last");
    }

    /// A statement that fails in a batch does not stop the ones after it
    /// (each has its own Sync), and a transaction whose write fails with its
    /// COMMIT keeps nothing: the COMMIT rolls back.
    #[tokio::test]
    async fn a_write_that_fails_with_its_commit_rolls_the_transaction_back() {
        let c = client().await;
        c.batch_execute("CREATE TEMP TABLE pipelined (v int PRIMARY KEY)").await.unwrap();
        let out: Result<(), StoreError> = transaction!(&c, |tx| {
            tx.begin_with(&Batch::of("INSERT INTO pipelined VALUES (1)", Vec::new()))
                .await
                .map_err(map_err)?;
            let dup = Batch::of("INSERT INTO pipelined VALUES (1)", Vec::new());
            tx.commit_with(&dup, &Batch::of("SELECT 1", Vec::new())).await.map_err(map_err)?;
            Ok(())
        });
        assert!(matches!(out, Err(StoreError::Internal { .. })), "the duplicate is the answer: {out:?}");
        let n: i64 = c.query_one("SELECT count(*) FROM pipelined", &[]).await.unwrap().get(0);
        assert_eq!(n, 0, "the first insert went with the rollback");
        // Not in a transaction any more: a statement that fails alone
        // leaves the next one unaffected.
        c.batch_execute("INSERT INTO pipelined VALUES (2)").await.unwrap();
        let n: i64 = c.query_one("SELECT count(*) FROM pipelined", &[]).await.unwrap().get(0);
        assert_eq!(n, 1, "autocommit again");
    }
}
