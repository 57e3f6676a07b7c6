//! The database itself keeps the credit promises, whatever a buggy writer
//! sends it.

use crate::support::{TestDb, policies, session};
use std::time::Duration;
use terrace_conformance::{key_claim, new_generation};
use terrace_domain::{AreaKind, CreditReference, GrantAmount, UserId};
use terrace_ports::{CancelOutcome, CreateOutcome, GenerationStore, Ledger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_broken_credit_states() {
    let db = TestDb::create().await;
    let store = db.store(&policies()).await;
    let user = UserId::new_random();
    let reference = CreditReference::parse("pay-1").unwrap();
    store.grant(user, GrantAmount::parse(2).unwrap(), &reference, 1).await.unwrap();
    let CreateOutcome::Created(g) = store
        .create(new_generation(user, &[AreaKind::Patio], Duration::from_secs(60), 1), None)
        .await
        .unwrap()
    else {
        panic!("created")
    };
    let CancelOutcome::Cancelled(_) = store.cancel(g.id).await.unwrap() else { panic!("cancelled") };
    let s = session(&db.url).await;
    let u = user.0;
    let refused = [
        (
            "a negative balance",
            format!("UPDATE accounts SET token_balance = -1, credited = credited - 3 WHERE user_id = '{u}'"),
        ),
        (
            "credits from nowhere",
            format!("UPDATE accounts SET token_balance = token_balance + 1 WHERE user_id = '{u}'"),
        ),
        (
            "a second resolution of one hold",
            format!(
                "INSERT INTO ledger_entries (user_id, kind, amount, source, generation_id, area) \
                 VALUES ('{u}', 'capture', 1, 'trial', '{}', 'patio')",
                g.id
            ),
        ),
        (
            "a resolved hold held again",
            format!(
                "UPDATE generation_areas SET status = 'pending', hold_state = 'held', error_code = NULL, error_message = NULL WHERE generation_id = '{}'",
                g.id
            ),
        ),
        (
            "a credit reference applied twice",
            format!(
                "INSERT INTO ledger_entries (user_id, kind, amount, source, reference) VALUES ('{u}', 'credit', 2, 'token', 'pay-1')"
            ),
        ),
        (
            "a completed area without its capture",
            format!(
                "UPDATE generation_areas SET status = 'completed', image_key = 'k' WHERE generation_id = '{}'",
                g.id
            ),
        ),
        (
            "a terminal generation with a lease",
            format!(
                "UPDATE generations SET lease_owner = 'w', lease_expires_at = now() WHERE id = '{}'",
                g.id
            ),
        ),
    ];
    for (what, sql) in refused {
        let r = s.batch_execute(&sql).await;
        assert!(r.is_err(), "the database accepted {what}");
    }
    assert!(store.conservation_violations().await.unwrap().is_empty());
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conservation_check_reports_a_counter_that_disagrees_with_the_ledger() {
    let db = TestDb::create().await;
    let store = db.store(&policies()).await;
    let user = UserId::new_random();
    store.open_account(user, 3).await.unwrap();
    // Still conserved on the row, but no longer what the ledger says.
    let s = session(&db.url).await;
    s.batch_execute(&format!(
        "UPDATE accounts SET trial_credits = 4, credited = 4 WHERE user_id = '{}'",
        user.0
    ))
    .await
    .unwrap();
    let violations = store.conservation_violations().await.unwrap();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains(&user.0.to_string()));
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_idempotency_key_may_be_used_again() {
    let db = TestDb::create().await;
    let store = db.store(&policies()).await;
    let user = UserId::new_random();
    let claim = |hash: &str| Some(key_claim("k", hash));
    let new = || new_generation(user, &[AreaKind::Patio], Duration::from_secs(60), 5);
    let CreateOutcome::Created(first) = store.create(new(), claim("a")).await.unwrap() else {
        panic!("created")
    };
    let s = session(&db.url).await;
    s.batch_execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'").await.unwrap();
    let CreateOutcome::Created(second) = store.create(new(), claim("b")).await.unwrap() else {
        panic!("an expired key starts afresh")
    };
    assert_ne!(first.id, second.id);
    match store.create(new(), claim("b")).await.unwrap() {
        CreateOutcome::Replayed(generation) => assert_eq!(generation.id, second.id),
        other => panic!("{other:?}"),
    }
    assert!(store.conservation_violations().await.unwrap().is_empty());
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_idempotency_keys_are_forgotten_oldest_first_and_open_ones_kept() {
    let db = TestDb::create().await;
    let store = db.store(&policies()).await;
    let user = UserId::new_random();
    let claim = |key: &str| Some(key_claim(key, "h"));
    let new = || new_generation(user, &[AreaKind::Patio], Duration::from_secs(60), 5);
    for key in ["oldest", "older", "open"] {
        let created = store.create(new(), claim(key)).await.unwrap();
        assert!(matches!(created, CreateOutcome::Created(_)), "{created:?}");
    }
    assert_eq!(store.forget_expired_keys(10).await.unwrap(), 0, "every window is still open");
    let s = session(&db.url).await;
    s.batch_execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '2 minutes' WHERE key = 'oldest';
         UPDATE idempotency_keys SET expires_at = now() - interval '1 minute' WHERE key = 'older';",
    )
    .await
    .unwrap();
    let keys = async || -> Vec<String> {
        s.query("SELECT key FROM idempotency_keys ORDER BY key", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(store.forget_expired_keys(1).await.unwrap(), 1);
    assert_eq!(keys().await, ["older", "open"], "the oldest goes first");
    assert_eq!(store.forget_expired_keys(10).await.unwrap(), 1);
    assert_eq!(store.forget_expired_keys(10).await.unwrap(), 0);
    assert_eq!(keys().await, ["open"]);
    match store.create(new(), claim("open")).await.unwrap() {
        CreateOutcome::Replayed(_) => {}
        other => panic!("the open key still replays: {other:?}"),
    }
    assert!(store.conservation_violations().await.unwrap().is_empty());
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_breaks_a_rule_is_refused_and_the_error_names_the_rule() {
    let db = TestDb::create().await;
    let store = db.store(&policies()).await;
    let user = UserId::new_random();
    let CreateOutcome::Created(g) = store
        .create(new_generation(user, &[AreaKind::Patio], Duration::from_secs(60), 5), None)
        .await
        .unwrap()
    else {
        panic!("created")
    };
    let s = session(&db.url).await;
    let broken = [
        (
            format!("UPDATE accounts SET token_balance = -1 WHERE user_id = '{}'", user.0),
            "accounts_token_balance_check",
        ),
        (format!("UPDATE accounts SET held = held + 1 WHERE user_id = '{}'", user.0), "accounts_conserved"),
        (format!("UPDATE generations SET status = 'lost' WHERE id = '{}'", g.id), "generations_status_check"),
        (format!("UPDATE generations SET lat = 1 WHERE id = '{}'", g.id), "generations_location_whole"),
        (
            format!("UPDATE generation_areas SET progress = 101 WHERE generation_id = '{}'", g.id),
            "generation_areas_progress_check",
        ),
        (
            format!("UPDATE generation_areas SET status = 'failed' WHERE generation_id = '{}'", g.id),
            "areas_hold_follows_status",
        ),
        (format!("UPDATE ledger_entries SET amount = 2 WHERE generation_id = '{}'", g.id), "ledger_links"),
    ];
    for (sql, rule) in broken {
        let e = s.batch_execute(&sql).await.expect_err(rule);
        let db_error = e.as_db_error().unwrap_or_else(|| panic!("{rule}: {e}"));
        assert_eq!(db_error.code(), &tokio_postgres::error::SqlState::CHECK_VIOLATION, "{rule}: {db_error}");
        assert_eq!(db_error.constraint(), Some(rule), "{db_error}");
    }
    // A rule that is unknown (NULL) passes, as a CHECK's does: no lat and no lng.
    s.batch_execute(&format!("UPDATE generations SET lat = NULL, lng = NULL WHERE id = '{}'", g.id))
        .await
        .unwrap();
    assert!(store.conservation_violations().await.unwrap().is_empty());
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_rule_is_validated_once_migrated() {
    let db = TestDb::create().await;
    let s = session(&db.url).await;
    let rows = s
        .query(
            "SELECT conrelid::regclass::text, conname, convalidated FROM pg_constraint
              WHERE contype = 'c' AND conname LIKE '%\\_rules' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let rules: Vec<(String, String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let expected: Vec<(String, String, bool)> =
        ["accounts", "generation_areas", "generations", "ledger_entries"]
            .iter()
            .map(|t| (t.to_string(), format!("{t}_rules"), true))
            .collect();
    assert_eq!(rules, expected, "one rule per table, each validated");
    db.drop_now().await;
}
