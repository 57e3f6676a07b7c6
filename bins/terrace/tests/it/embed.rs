//! Terrace embedded as a library in another program: built from a
//! configuration, served, reached, and drained when the host says so.

use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn an_embedded_instance_serves_and_drains_when_its_host_cancels() {
    let vars: HashMap<String, String> =
        [("TERRACE_BIND", "127.0.0.1:0"), ("TERRACE_SHUTDOWN_GRACE", "2s"), ("TERRACE_LOG", "warn")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    let cfg = terrace::config::load(&terrace::config::Env(&vars)).expect("a dev-mode configuration");
    let app = terrace::App::build(cfg).await.expect("the instance builds");
    let url = app.local_url();
    let (_, token) = app.demo().expect("dev mode has a demo user");
    let token = token.to_owned();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(app.serve(stop.clone()));

    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let res = http.get(format!("{url}/v1/account")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let packages = http.get(format!("{url}/v1/billing/packages")).send().await.unwrap();
    assert_eq!(packages.status(), 200, "billing is wired (the Stripe simulator in dev mode)");

    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(4), serving).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "serve ended within the grace: {ended:?}");
    assert!(http.get(format!("{url}/livez")).send().await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn a_configuration_refused_before_binding_is_a_config_error() {
    let vars: HashMap<String, String> =
        [("TERRACE_BIND", "127.0.0.1:0"), ("TERRACE_BLOB_URL", "ftp://nowhere")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    let cfg = terrace::config::load(&terrace::config::Env(&vars)).expect("parses");
    match terrace::App::build(cfg).await {
        Err(terrace::AppError::Config(e)) => assert_eq!(e.var, "TERRACE_BLOB_URL"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}
