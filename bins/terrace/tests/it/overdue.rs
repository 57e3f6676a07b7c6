//! Holds never outlive their deadline for want of a worker (CONTRACT §5):
//! with only `TERRACE_ROLE=api` instances up, overdue work still ends.

use crate::support::*;
use std::time::Duration;
use terrace_domain::UserId;

async fn api_only_instances_end_overdue_work(backend: Backend) {
    let sim = simulator().await;
    let mut env = base_env(&sim);
    backend.apply(&mut env);
    set(&mut env, "TERRACE_ROLE", "api");
    set(&mut env, "TERRACE_GENERATION_TIMEOUT", "1s");
    set(&mut env, "TERRACE_AREA_TIMEOUT", "1s");
    let t = Terrace::start(&env).await;
    let token = t.token(UserId::new_random());
    let (status, g) = t.create(&token, &[("front_yard", "japanese_zen"), ("patio", "mediterranean")]).await;
    assert_eq!(status, 202, "{g}");
    assert_eq!(t.account(&token).await["held"], 2);
    let id = g["id"].as_str().unwrap();
    // The bound: deadline + lease TTL (2s) + sweep interval, plus slack for the test's own polling.
    let done = t.wait_for(id, &token, Duration::from_secs(6), is_terminal).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "deadline_exceeded");
    assert_eq!((done["voided"].as_u64(), done["captured"].as_u64()), (Some(2), Some(0)));
    let deadline = chrono::DateTime::parse_from_rfc3339(done["deadline_at"].as_str().unwrap()).unwrap();
    let ended = chrono::DateTime::parse_from_rfc3339(done["completed_at"].as_str().unwrap()).unwrap();
    let late = (ended - deadline).to_std().unwrap_or_default();
    eprintln!("deadline to void with only an api instance up: {late:?}");
    assert!(late <= Duration::from_millis(2000 + 200 + 500), "ended {late:?} after its deadline");
    let account = t.account(&token).await;
    assert_eq!(account["held"], 0);
    assert_conserved(&account, 3);
    assert!(t.logs().contains("ended overdue generations"), "{}", t.logs());
}

#[tokio::test]
async fn api_only_instances_end_overdue_work_in_memory() {
    api_only_instances_end_overdue_work(Backend::Memory).await;
}

#[tokio::test]
async fn api_only_instances_end_overdue_work_on_postgres() {
    api_only_instances_end_overdue_work(crate::support::Backend::postgres().await).await;
}
