//! Configuration errors, the subcommands, and dev mode on a bare environment.

use crate::support::*;
use serde_json::json;
use std::time::Duration;
use terrace_domain::UserId;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn bad_configuration_exits_2_with_one_line_naming_the_variable() {
    for (pairs, var) in [
        (vec![("TERRACE_ROLE", "boss")], "TERRACE_ROLE"),
        (vec![("TERRACE_BIND", "localhost")], "TERRACE_BIND"),
        (vec![("TERRACE_SHUTDOWN_GRACE", "soon")], "TERRACE_SHUTDOWN_GRACE"),
        (vec![("TERRACE_TRIAL_CREDITS", "-1")], "TERRACE_TRIAL_CREDITS"),
        (vec![("GOOGLE_MAPS_API_KEY", "k")], "GEMINI_API_KEY"),
        (vec![("DATABASE_URL", "postgres://127.0.0.1:1/x")], "TERRACE_BLOB_URL"),
        (vec![("TERRACE_BLOB_URL", "ftp://x")], "TERRACE_BLOB_URL"),
        (
            vec![
                ("DATABASE_URL", "postgres://127.0.0.1:1/x"),
                ("TERRACE_BLOB_URL", "s3://"),
                ("TERRACE_JWT_SECRET", SECRET),
            ],
            "TERRACE_BLOB_URL",
        ),
        (vec![("DATABASE_URL", "mysql://x/y")], "DATABASE_URL"),
        (vec![("TERRACE_JWT_SECRET", "short")], "TERRACE_JWT_SECRET"),
    ] {
        let mut e = env(&pairs);
        set(
            &mut e,
            "TERRACE_BIND",
            pairs.iter().find(|(k, _)| *k == "TERRACE_BIND").map_or("127.0.0.1:0", |(_, v)| v),
        );
        let out = run_to_end(&["serve"], &e).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{pairs:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{pairs:?}: {stderr}");
        assert!(stderr.contains(var), "{pairs:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"), "{pairs:?} bound a port");
    }
    let out = run_to_end(&["migrate"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
    let out = run_to_end(&["token", "--user", &UserId::new_random().to_string()], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TERRACE_JWT_SECRET"));
}

#[tokio::test]
async fn the_token_subcommand_mints_tokens_the_server_accepts() {
    let sim = simulator().await;
    let t = Terrace::start(&base_env(&sim)).await;
    let secret = env(&[("TERRACE_JWT_SECRET", SECRET)]);
    let user = UserId::new_random().to_string();
    let out = run_to_end(&["token", "--user", &user, "--admin", "--ttl", "5m"], &secret).await;
    assert!(out.status.success());
    let admin = format!("Bearer {}", String::from_utf8(out.stdout).unwrap().trim());
    assert_eq!(t.get("/v1/admin/tasks", &admin).await.0, 200);
    let out = run_to_end(&["token", "--user", &user], &secret).await;
    let plain = format!("Bearer {}", String::from_utf8(out.stdout).unwrap().trim());
    let (status, account) = t.get("/v1/account", &plain).await;
    assert_eq!((status, account["user_id"].as_str()), (200, Some(user.as_str())));
    assert_eq!(t.get("/v1/admin/tasks", &plain).await.0, 403);
}

#[tokio::test]
async fn a_bare_environment_is_a_working_dev_service_with_a_demo_token() {
    let t = Terrace::start(&env(&[("TERRACE_BIND", "127.0.0.1:0")])).await;
    let token = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(tok) =
                t.logs().lines().find_map(|l| l.trim().strip_prefix("eyJ").map(|r| format!("eyJ{r}")))
            {
                return tok;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no demo token printed");
    let logs = t.logs();
    assert!(logs.contains("curl") && logs.contains(&t.addr.to_string()), "{logs}");
    assert!(logs.contains("dev mode") && logs.contains("simulator"), "{logs}");
    let bearer = format!("Bearer {token}");
    let (status, g) = t.create(&bearer, &[("front_yard", "japanese_zen")]).await;
    assert_eq!(status, 202, "{g}");
    let done = t.wait_terminal(g["id"].as_str().unwrap(), &bearer).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(t.get("/v1/generations", &bearer).await.1["items"][0]["id"], json!(done["id"]));
}
