//! The migration runner: idempotent, and safe when instances start together.

use crate::support::{admin_url, policies, session, with_database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_together_applies_each_migration_once() {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = session(&admin_url()).await;
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let url = with_database(&admin_url(), &name);
    let p = policies();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (url, p) = (url.clone(), p.clone());
            tokio::spawn(async move { terrace_postgres::migrate(&url, &p).await })
        })
        .collect();
    let mut applied = Vec::new();
    for r in runs {
        applied.extend(r.await.unwrap().expect("every run succeeds"));
    }
    let all: Vec<i32> = terrace_postgres::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(applied, all, "each migration applied once in all");
    assert!(terrace_postgres::migrate(&url, &p).await.unwrap().is_empty(), "a later run has nothing to do");
    let s = session(&url).await;
    let n: i64 = s.query_one("SELECT count(*) FROM schema_migrations", &[]).await.unwrap().get(0);
    assert_eq!(n as usize, all.len());
    drop(s);
    admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_migration_is_refused() {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = session(&admin_url()).await;
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let url = with_database(&admin_url(), &name);
    terrace_postgres::migrate(&url, &policies()).await.unwrap();
    let s = session(&url).await;
    s.batch_execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1").await.unwrap();
    let err = terrace_postgres::migrate(&url, &policies()).await.unwrap_err();
    assert!(err.to_string().contains("changed after it was applied"), "{err}");
    drop(s);
    admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_within_the_connect_timeout() {
    // A port nothing listens on: refused at once, never a hang.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let started = std::time::Instant::now();
    assert!(terrace_postgres::migrate(&url, &policies()).await.is_err());
    let store = terrace_postgres::PgStore::connect(
        &url,
        &policies(),
        std::sync::Arc::new(terrace_ports::NoopObserver),
    )
    .await;
    assert!(store.is_err());
    assert!(started.elapsed() < policies().db.connect_timeout * 2 + std::time::Duration::from_secs(1));
}
