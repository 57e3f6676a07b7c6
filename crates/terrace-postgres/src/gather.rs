//! Creates that wait together are written together.
//!
//! Under load, creates wait for a pooled connection, and each one's
//! transaction costs Postgres mostly what surrounds its statements: the
//! `BEGIN`, the `COMMIT` and its flush of the log, the announcement. So a
//! create first joins a queue ([`Gather::join`]) and then waits for its
//! answer or for a connection and one of the [`WRITERS`] writer slots,
//! whichever comes first. The create that gets them takes what waits in the
//! queue ([`Gather::take`]: oldest first, at most [`MOST`], one per user)
//! and writes it all in one transaction: one commit, one flush and one
//! announcement for all of them (`store::create_together`). While the
//! writers are busy the queue fills, and the next transaction writes more.
//! A create the transaction cannot write with the others (its account
//! locked elsewhere or opened meanwhile, its key used before, a write
//! refused) is handed back to run alone, in a transaction of its own under
//! the lock policy ([`Verdict::Alone`]).
//!
//! The transaction runs in a task of the store's own, bounded by the call
//! deadline, so that no create depends on the caller that happened to take
//! the connection: a caller that gives up leaves the queue ([`Ticket`]), and
//! the others are answered either way. Every wait is bounded: the caller
//! waits at most one call's bound ([`crate::db::Db::call_bound`]) for its
//! verdict.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use terrace_domain::{CreateError, GenerationId};
use terrace_ports::{CreateOutcome, IdempotencyClaim, NewGeneration};
use tokio::sync::oneshot;

/// The most creates one transaction writes.
pub(crate) const MOST: usize = 16;

/// The most transactions writing creates at once, per store. Few, so that
/// creates wait in the queue and are written many at a time, rather than
/// each in a transaction of its own that shares Postgres's CPU with the
/// others; never waiting on a row lock (`SKIP LOCKED`), so that none of them
/// stalls the creates behind it.
pub(crate) const WRITERS: usize = 2;

/// What a waiting create is told.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Its answer.
    Done(Result<CreateOutcome, CreateError>),
    /// Not written with the others: the create runs alone.
    Alone(NewGeneration, Option<IdempotencyClaim>),
}

/// One create in the queue.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) new: NewGeneration,
    pub(crate) key: Option<IdempotencyClaim>,
    reply: oneshot::Sender<Verdict>,
}

impl Waiting {
    /// Answers the create: `Done` with its outcome, or `Alone`.
    pub(crate) fn answer(self, outcome: Option<Result<CreateOutcome, CreateError>>) {
        let verdict = match outcome {
            Some(done) => Verdict::Done(done),
            None => Verdict::Alone(self.new, self.key),
        };
        // A caller that stopped waiting no longer hears its answer; what was
        // written stays written.
        let _ = self.reply.send(verdict);
    }
}

/// The queue of creates waiting for a connection, and how many were
/// written together.
#[derive(Debug)]
pub(crate) struct Gather {
    waiting: Mutex<VecDeque<Waiting>>,
    /// Transactions writing creates now, at most [`WRITERS`].
    writers: std::sync::Arc<tokio::sync::Semaphore>,
    /// Transactions that wrote two creates or more.
    batches: AtomicU64,
    /// The creates those transactions wrote.
    batched: AtomicU64,
}

/// A create's place in the queue. Dropped while the create still waits
/// there (its caller gave up), it takes the create out.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    gather: &'a Gather,
    id: GenerationId,
}

impl Ticket<'_> {
    /// Whether the create still waits in the queue (no transaction took it).
    pub(crate) fn queued(&self) -> bool {
        self.gather.queue().iter().any(|w| w.new.id == self.id)
    }

    /// Takes the create out of the queue: `true` if it was still there.
    pub(crate) fn withdraw(&self) -> bool {
        let mut queue = self.gather.queue();
        let before = queue.len();
        queue.retain(|w| w.new.id != self.id);
        queue.len() != before
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

impl Default for Gather {
    fn default() -> Self {
        Self {
            waiting: Mutex::default(),
            writers: std::sync::Arc::new(tokio::sync::Semaphore::new(WRITERS)),
            batches: AtomicU64::default(),
            batched: AtomicU64::default(),
        }
    }
}

impl Gather {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One of the [`WRITERS`] slots, held by a transaction that writes
    /// creates until it ends. (The semaphore is never closed.)
    pub(crate) async fn writer(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.writers.clone().acquire_owned().await.expect("the writers' semaphore is never closed")
    }

    /// Puts a create in the queue: its place, and where its verdict comes.
    pub(crate) fn join(
        &self,
        new: NewGeneration,
        key: Option<IdempotencyClaim>,
    ) -> (Ticket<'_>, oneshot::Receiver<Verdict>) {
        let (reply, verdict) = oneshot::channel();
        let id = new.id;
        self.queue().push_back(Waiting { new, key, reply });
        (Ticket { gather: self, id }, verdict)
    }

    /// Takes the creates one transaction is to write: the oldest first, at
    /// most [`MOST`], and one per user (a user's later creates wait for the
    /// next transaction, since each one's hold depends on the one before).
    /// Creates whose caller stopped waiting are dropped on the way.
    pub(crate) fn take(&self) -> Vec<Waiting> {
        let mut queue = self.queue();
        let mut taken: Vec<Waiting> = Vec::new();
        let mut left = VecDeque::with_capacity(queue.len());
        while let Some(w) = queue.pop_front() {
            if w.reply.is_closed() {
                continue;
            }
            if taken.len() < MOST && !taken.iter().any(|t| t.new.user_id == w.new.user_id) {
                taken.push(w);
            } else {
                left.push_back(w);
            }
        }
        *queue = left;
        taken
    }

    /// Counts a transaction that wrote `n` creates.
    pub(crate) fn wrote(&self, n: usize) {
        if n >= 2 {
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.batched.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// The creates waiting in the queue now.
    pub(crate) fn queued(&self) -> usize {
        self.queue().len()
    }

    /// Transactions that wrote two creates or more, and the creates they wrote.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.batches.load(Ordering::Relaxed), self.batched.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use terrace_domain::UserId;

    fn create(user: u128) -> NewGeneration {
        let user = UserId(uuid::Uuid::from_u128(user));
        terrace_conformance::new_generation(
            user,
            &[terrace_domain::AreaKind::FrontYard],
            Duration::from_secs(60),
            3,
        )
    }

    #[test]
    fn a_transaction_takes_the_oldest_creates_one_per_user_and_leaves_the_rest_in_order() {
        let gather = Gather::default();
        let users = [1, 2, 1, 3, 2, 4];
        let joined: Vec<_> = users.iter().map(|&u| gather.join(create(u), None)).collect();
        let taken: Vec<u128> = gather.take().iter().map(|w| w.new.user_id.0.as_u128()).collect();
        assert_eq!(taken, [1, 2, 3, 4], "the first of each user, oldest first");
        let next: Vec<u128> = gather.take().iter().map(|w| w.new.user_id.0.as_u128()).collect();
        assert_eq!(next, [1, 2], "the users' later creates, in the next transaction");
        assert!(gather.take().is_empty());
        assert!(joined.iter().all(|(ticket, _)| !ticket.queued()), "every create was taken");
    }

    #[test]
    fn a_transaction_takes_at_most_its_share_and_skips_creates_given_up_on() {
        let gather = Gather::default();
        let mut joined: Vec<_> = (0..MOST as u128 + 3).map(|u| gather.join(create(u), None)).collect();
        // The first caller stops waiting: its verdict's receiver is gone.
        let (first, verdict) = joined.remove(0);
        drop(verdict);
        let taken = gather.take();
        assert_eq!(taken.len(), MOST);
        assert!(taken.iter().all(|w| w.new.id != first.id), "the abandoned create is not written");
        assert_eq!(gather.take().len(), 2, "the rest");
        drop(first);
    }

    #[test]
    fn a_caller_that_gives_up_takes_its_create_out_of_the_queue() {
        let gather = Gather::default();
        let (ticket, _verdict) = gather.join(create(1), None);
        let (_other, _v) = gather.join(create(2), None);
        assert!(ticket.queued());
        drop(ticket);
        let taken: Vec<u128> = gather.take().iter().map(|w| w.new.user_id.0.as_u128()).collect();
        assert_eq!(taken, [2]);
    }

    #[tokio::test]
    async fn a_create_handed_back_gets_its_request_back_to_run_alone() {
        let gather = Gather::default();
        let new = create(7);
        let id = new.id;
        let (_ticket, verdict) = gather.join(new, None);
        let mut taken = gather.take();
        taken.pop().expect("one create").answer(None);
        match verdict.await.expect("answered") {
            Verdict::Alone(new, key) => assert!(new.id == id && key.is_none()),
            other => panic!("expected Alone, got {other:?}"),
        }
    }

    #[test]
    fn only_transactions_of_two_creates_or_more_count_as_written_together() {
        let gather = Gather::default();
        gather.wrote(1);
        gather.wrote(3);
        gather.wrote(2);
        assert_eq!(gather.counts(), (2, 5));
    }
}
