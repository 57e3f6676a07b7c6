//! The terminal front end (`terrace generate | status | cancel`) against a
//! real server.

use crate::support::{Terrace, base_env, run_to_end, simulator};
use terrace_domain::UserId;
use terrace_simulator::{Behaviour, Endpoint};

fn bare(token: &str) -> String {
    token.trim_start_matches("Bearer ").to_owned()
}

#[tokio::test]
async fn generate_follows_a_generation_to_its_end_and_saves_the_images() {
    let sim = simulator().await;
    let server = Terrace::start(&base_env(&sim)).await;
    let token = bare(&server.token(UserId::new_random()));
    let out_dir = std::env::temp_dir().join(format!("terrace-front-{}", uuid::Uuid::new_v4().simple()));
    let url = format!("http://{}", server.addr);
    let args = [
        "generate",
        "--address",
        "12 Garden Lane, Springfield",
        "--area",
        "front_yard:japanese_zen",
        "--area",
        "backyard:mediterranean",
        "--out",
        out_dir.to_str().unwrap(),
        "--url",
        &url,
        "--token",
        &token,
    ];
    let out = run_to_end(&args, &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" completed (captured 2, voided 0)"), "{stdout}");
    let saved: Vec<_> = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(saved.len(), 2, "{saved:?}");
    for p in saved {
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{} is not a PNG", p.display());
    }
    let _ = std::fs::remove_dir_all(out_dir);
}

#[tokio::test]
async fn status_and_cancel_speak_of_one_generation() {
    let sim = simulator().await;
    sim.set_default(Endpoint::Gemini, Behaviour::HangBeforeHeaders);
    let mut env = base_env(&sim);
    crate::support::set(&mut env, "TERRACE_LLM_IDLE_TIMEOUT", "60s");
    let server = Terrace::start(&env).await;
    let token = server.token(UserId::new_random());
    let (status, g) = server.create(&token, &[("patio", "tropical_resort")]).await;
    assert_eq!(status, 202, "{g}");
    let id = g["id"].as_str().unwrap().to_owned();
    let target = [
        ("TERRACE_URL".to_owned(), format!("http://{}", server.addr)),
        ("TERRACE_TOKEN".to_owned(), bare(&token)),
    ];

    let out = run_to_end(&["cancel", &id], &target).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("{id} cancelled")), "{stdout}");

    let out = run_to_end(&["status", &id], &target).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("cancelled") && stdout.contains("patio"), "{stdout}");

    let out = run_to_end(&["status", "not-a-uuid"], &target).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn usage_errors_exit_2_and_say_what_is_wrong() {
    let out = run_to_end(
        &["generate", "--address", "12 Garden Lane", "--area", "roof:japanese_zen", "--token", "t"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("roof:japanese_zen"));
    let out = run_to_end(&["status", "00000000-0000-0000-0000-000000000000"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TERRACE_TOKEN"));
}

#[tokio::test]
async fn serve_migrates_an_empty_database_at_startup() {
    let admin_url = crate::support::test_database_url();
    let name = format!("terrace_empty_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await.unwrap();
    let conn = tokio::spawn(conn);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    conn.abort();
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&format!("/{name}"));

    let sim = simulator().await;
    let mut env = base_env(&sim);
    crate::support::set(&mut env, "DATABASE_URL", url.as_str());
    crate::support::set(&mut env, "TERRACE_BLOB_URL", "memory://");
    let server = Terrace::start(&env).await;
    let token = server.token(UserId::new_random());
    let (status, g) = server.create(&token, &[("patio", "tropical_resort")]).await;
    assert_eq!(status, 202, "{g}");
    let g = server.wait_terminal(g["id"].as_str().unwrap(), &token).await;
    assert_eq!(g["status"], "completed", "{g}");
    assert!(server.logs().contains("migrations applied"), "{}", server.logs());
}
