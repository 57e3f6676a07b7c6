//! Creates that wait for a connection at the same moment are written in one
//! transaction, and each still gets its own answer: created, short of
//! credits, replayed, or run alone when its account is locked elsewhere or
//! a write of the transaction is refused.

use crate::support::{TestDb, policies, refuse_inserts, session};
use std::time::Duration;
use terrace_conformance::{eventually, key_claim, new_generation};
use terrace_domain::{AreaKind, CreateError, LockPolicy, UserId};
use terrace_ports::{CreateOutcome, GenerationStore, IdempotencyClaim, Ledger, NewGeneration};
use terrace_postgres::PgStore;
use tokio::task::JoinHandle;

const LONG: Duration = Duration::from_secs(600);
const BOUND: Duration = Duration::from_secs(5);

type Answer = Result<CreateOutcome, CreateError>;

/// A store on one pooled connection, whose creates wait up to two seconds
/// for an account lock.
async fn one_connection_store(db: &TestDb) -> PgStore {
    let mut p = policies();
    p.db.pool_size = 1;
    p.lock = LockPolicy::Timeout(Duration::from_secs(2));
    db.store(&p).await
}

fn spawn_create(store: &PgStore, new: NewGeneration, key: Option<IdempotencyClaim>) -> JoinHandle<Answer> {
    let store = store.clone();
    tokio::spawn(async move { store.create(new, key).await })
}

/// Holds the store's one connection: a create for an account that `s` has
/// locked waits there for the lock (having run alone, since the transaction
/// of creates skips locked accounts). Returns that create.
async fn hold_the_connection(db: &TestDb, store: &PgStore, s: &tokio_postgres::Client) -> JoinHandle<Answer> {
    let blocker = UserId::new_random();
    store.open_account(blocker, 3).await.unwrap();
    s.batch_execute(&format!("BEGIN; SELECT 1 FROM accounts WHERE user_id = '{}' FOR UPDATE", blocker.0))
        .await
        .unwrap();
    let first = spawn_create(store, new_generation(blocker, &[AreaKind::Patio], LONG, 3), None);
    // A session of its own: inside `s`'s transaction the activity view would not change.
    let watcher = session(&db.url).await;
    eventually("the first create waits for the lock on the connection", BOUND, async || {
        let row = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .await
            .ok()?;
        (row.get::<_, i64>(0) == 1 && store.pool().available == 0).then_some(())
    })
    .await;
    first
}

/// Waits until `n` creates wait to be written.
async fn until_queued(store: &PgStore, n: usize) {
    eventually("the creates wait in the queue", BOUND, async || {
        (store.pool().creates_queued == n).then_some(())
    })
    .await;
}

async fn answer(task: JoinHandle<Answer>) -> Answer {
    tokio::time::timeout(BOUND, task).await.expect("answered in time").expect("the task ran")
}

fn created(answer: Answer) -> terrace_domain::Generation {
    match answer {
        Ok(CreateOutcome::Created(g)) => g,
        other => panic!("expected a new generation, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_that_wait_together_are_written_in_one_transaction_each_with_its_own_answer() {
    let db = TestDb::create().await;
    let store = one_connection_store(&db).await;
    let s = session(&db.url).await;
    let other = session(&db.url).await;

    let rich: Vec<UserId> = (0..3).map(|_| UserId::new_random()).collect();
    for user in &rich {
        store.open_account(*user, 3).await.unwrap();
    }
    let fresh = UserId::new_random(); // no account yet: opened by the transaction
    let poor = UserId::new_random();
    store.open_account(poor, 0).await.unwrap();
    let busy = UserId::new_random(); // locked by another session: runs alone
    store.open_account(busy, 3).await.unwrap();
    let replaying = UserId::new_random(); // its key made a generation before: replays
    let key = key_claim("together-1", "hash-1");
    let earlier = created(
        store.create(new_generation(replaying, &[AreaKind::Patio], LONG, 3), Some(key.clone())).await,
    );
    let given_up = UserId::new_random(); // its caller stops waiting: never written
    store.open_account(given_up, 3).await.unwrap();

    let first = hold_the_connection(&db, &store, &s).await;
    other
        .batch_execute(&format!("BEGIN; SELECT 1 FROM accounts WHERE user_id = '{}' FOR UPDATE", busy.0))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for user in rich.iter().chain([&fresh]) {
        tasks.push(spawn_create(&store, new_generation(*user, &[AreaKind::FrontYard], LONG, 3), None));
    }
    let poor_task = spawn_create(&store, new_generation(poor, &[AreaKind::FrontYard], LONG, 0), None);
    let busy_task = spawn_create(&store, new_generation(busy, &[AreaKind::FrontYard], LONG, 3), None);
    let replay_task =
        spawn_create(&store, new_generation(replaying, &[AreaKind::FrontYard], LONG, 3), Some(key.clone()));
    let abandoned = spawn_create(&store, new_generation(given_up, &[AreaKind::FrontYard], LONG, 3), None);
    until_queued(&store, 8).await;
    abandoned.abort();
    until_queued(&store, 7).await;
    assert_eq!(store.pool().create_batches, 0, "nothing written together yet");

    // The connection comes free: the next create takes every waiting one.
    s.batch_execute("COMMIT").await.unwrap();
    created(answer(first).await);
    let mut written = Vec::new();
    for task in tasks {
        written.push(created(answer(task).await));
    }
    assert_eq!(
        answer(poor_task).await,
        Err(CreateError::InsufficientCredits { needed: 1, available: 0 }),
        "short of credits, in the transaction with the others"
    );
    let pool = store.pool();
    assert_eq!((pool.create_batches, pool.batched_creates), (1, 4), "one transaction wrote the four");
    assert!(!busy_task.is_finished(), "the busy account's create waits for its lock");

    // The busy account's create runs alone, under the lock policy: it waits
    // for the other session's lock and then writes.
    other.batch_execute("COMMIT").await.unwrap();
    assert_eq!(created(answer(busy_task).await).user_id, busy);
    // The create whose key was used before runs alone too, and replays.
    match answer(replay_task).await {
        Ok(CreateOutcome::Replayed(g)) => assert_eq!(g.id, earlier.id, "the key's generation"),
        other => panic!("expected the replay, got {other:?}"),
    }
    for (g, user) in written.iter().zip(rich.iter().chain([&fresh])) {
        assert_eq!(g.user_id, *user);
        assert_eq!(store.get(g.id).await.unwrap().as_ref().map(|g| g.id), Some(g.id), "stored");
    }

    assert_eq!(
        store.open_account(fresh, 3).await.unwrap().trial_credits,
        2,
        "opened with its trial, one held"
    );
    assert_eq!(store.open_account(poor, 0).await.unwrap().held, 0, "nothing held");
    let none: i64 = s
        .query_one("SELECT count(*) FROM generations WHERE user_id = $1", &[&given_up.0])
        .await
        .unwrap()
        .get(0);
    assert_eq!(none, 0, "the create given up on while it waited was not written");
    assert_eq!(store.pool().create_batches, 1);
    assert!(store.conservation_violations().await.unwrap().is_empty());
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_write_of_the_transaction_is_refused_each_create_runs_alone() {
    let db = TestDb::create().await;
    let store = one_connection_store(&db).await;
    let s = session(&db.url).await;
    let admin = session(&db.url).await;
    let users: Vec<UserId> = (0..3).map(|_| UserId::new_random()).collect();
    for user in &users {
        store.open_account(*user, 3).await.unwrap();
    }
    let news: Vec<NewGeneration> =
        users.iter().map(|u| new_generation(*u, &[AreaKind::Patio, AreaKind::FrontYard], LONG, 3)).collect();
    let refused = news[1].id;
    refuse_inserts(&admin, "generation_areas", &format!("NEW.generation_id = '{}'", refused.0)).await;

    let first = hold_the_connection(&db, &store, &s).await;
    let tasks: Vec<_> = news.into_iter().map(|new| spawn_create(&store, new, None)).collect();
    until_queued(&store, 3).await;
    s.batch_execute("COMMIT").await.unwrap();
    created(answer(first).await);
    let answers: Vec<Answer> = futures::future::join_all(tasks.into_iter().map(answer)).await;
    assert_eq!(created(answers[0].clone()).user_id, users[0]);
    assert!(
        matches!(answers[1], Err(CreateError::Store(_))),
        "the refused write's own error: {:?}",
        answers[1]
    );
    assert_eq!(created(answers[2].clone()).user_id, users[2]);
    assert_eq!(store.pool().create_batches, 0, "the transaction together kept nothing");
    let held: i64 =
        s.query_one("SELECT held FROM accounts WHERE user_id = $1", &[&users[1].0]).await.unwrap().get(0);
    assert_eq!(held, 0, "nothing held for the refused create");
    assert!(store.conservation_violations().await.unwrap().is_empty());
    db.drop_now().await;
}

/// Many creates at once, on few connections: users with one or several
/// creates in flight, some short of credits, pairs of retries under one
/// idempotency key. Every answer agrees with what was stored, and the
/// credits balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_creates_gets_answers_that_agree_with_what_was_stored() {
    use std::collections::HashMap;
    use terrace_domain::{CreditReference, GrantAmount};
    let db = TestDb::create().await;
    let mut p = policies();
    p.db.pool_size = 4;
    p.lock = LockPolicy::Timeout(Duration::from_secs(2));
    let store = db.store(&p).await;
    let users: Vec<UserId> = (0..30).map(|_| UserId::new_random()).collect();
    for (i, user) in users.iter().enumerate() {
        // Trial credits 0 or 3, and 0 to 3 tokens: some users run short.
        store.open_account(*user, if i % 3 == 0 { 0 } else { 3 }).await.unwrap();
        if i % 4 > 0 {
            let reference = CreditReference::parse(&format!("crowd-{i}")).unwrap();
            store.grant(*user, GrantAmount::parse(i as i64 % 4).unwrap(), &reference, 3).await.unwrap();
        }
    }
    // Eight creates per user; creates 2j and 2j+1 are one request sent twice.
    let mut tasks = Vec::new();
    for (i, user) in users.iter().enumerate() {
        for j in 0..8 {
            let areas: &[AreaKind] =
                if j % 4 == 3 { &[AreaKind::Patio, AreaKind::FrontYard] } else { &[AreaKind::Patio] };
            let key = (j < 4).then(|| key_claim(&format!("crowd-{i}-{}", j / 2), &format!("hash-{}", j / 2)));
            tasks.push((i, key.clone(), spawn_create(&store, new_generation(*user, areas, LONG, 3), key)));
        }
    }
    let mut created: HashMap<usize, Vec<terrace_domain::Generation>> = HashMap::new();
    let mut replayed = Vec::new();
    for (i, key, task) in tasks {
        match answer(task).await {
            Ok(CreateOutcome::Created(g)) => created.entry(i).or_default().push(g),
            Ok(CreateOutcome::Replayed(g)) => replayed.push((i, key.expect("only keyed creates replay"), g)),
            Err(CreateError::InsufficientCredits { .. } | CreateError::AccountBusy) => {}
            Err(e) => panic!("a create failed: {e:?}"),
        }
    }
    let s = session(&db.url).await;
    for (i, user) in users.iter().enumerate() {
        let mine = created.get(&i).map_or(&[][..], Vec::as_slice);
        let row = s
            .query_one(
                "SELECT (SELECT count(*) FROM generations WHERE user_id = $1),
                        (SELECT held FROM accounts WHERE user_id = $1),
                        (SELECT count(*) FROM idempotency_keys WHERE user_id = $1)",
                &[&user.0],
            )
            .await
            .unwrap();
        let (stored, held, keys): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(stored as usize, mine.len(), "user {i}: every generation stored was answered as created");
        let areas: usize = mine.iter().map(|g| g.areas.len()).sum();
        assert_eq!(held as usize, areas, "user {i}: one credit held per area created");
        assert!(keys <= 2, "user {i}: at most one generation per key");
    }
    for (i, key, g) in &replayed {
        let stored: Option<uuid::Uuid> = s
            .query_opt(
                "SELECT generation_id FROM idempotency_keys WHERE user_id = $1 AND key = $2",
                &[&users[*i].0, &key.key.as_str()],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        assert_eq!(stored, Some(g.id.0), "a replay answers the generation its key made");
        assert!(created[i].iter().any(|c| c.id == g.id), "and that generation was answered as created");
    }
    assert!(created.values().map(Vec::len).sum::<usize>() > 30, "most users created something");
    assert!(store.pool().create_batches > 0, "some creates were written together");
    assert!(store.conservation_violations().await.unwrap().is_empty());
    db.drop_now().await;
}
