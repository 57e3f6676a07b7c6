//! `cargo xtask chaos`: three Terrace instances on one Postgres, the
//! simulator injecting a mix of faults. Mid-run one instance is killed with
//! SIGKILL and restarted, and Postgres is restarted once. At the end every
//! generation must be terminal, no hold open, `credited = available + held +
//! captured` for every account, and no generation may have ended later than
//! its deadline plus one lease TTL plus one sweep interval.

use crate::cluster::{self, LedgerCheck, Proc};
use crate::postgres::TestPostgres;
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use terrace_client::{AreaSpec, Client, ClientConfig, ClientError, CreateRequest};
use terrace_domain::{AreaKind, Style};
use uuid::Uuid;

const LEASE_TTL: Duration = Duration::from_secs(6);
const SWEEP: Duration = Duration::from_secs(2);
const GENERATION_TIMEOUT: Duration = Duration::from_secs(60);

fn say(start: Instant, what: &str) {
    println!("[{:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

pub fn run(args: &[String]) -> Result<()> {
    let generations: usize = match args {
        [flag, n] if flag == "--generations" => n.parse()?,
        [] => 300,
        _ => bail!("usage: cargo xtask chaos [--generations N]"),
    };
    let bin = cluster::build()?;
    let dir = PathBuf::from("target/chaos");
    std::fs::create_dir_all(&dir)?;
    let start = Instant::now();
    let pg = TestPostgres::start_with(true)?;
    let sim = cluster::simulator(&bin, &dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(script_faults(&sim))?;
    say(
        start,
        "simulator scripted: 503, 429, hangs, stalls, resets, endless drips, blocked prompts, no image, error events, 400, OVER_QUERY_LIMIT, ZERO_RESULTS, static map 503; otherwise 2 s of model latency",
    );

    let (ttl, sweep, deadline) = (
        format!("{}s", LEASE_TTL.as_secs()),
        format!("{}s", SWEEP.as_secs()),
        format!("{}s", GENERATION_TIMEOUT.as_secs()),
    );
    let env = cluster::server_env(
        &pg,
        &sim,
        &[
            ("TERRACE_LEASE_TTL", &ttl),
            ("TERRACE_SWEEP_INTERVAL", &sweep),
            ("TERRACE_GENERATION_TIMEOUT", &deadline),
            ("TERRACE_AREA_TIMEOUT", "45s"),
            ("TERRACE_LLM_IDLE_TIMEOUT", "5s"),
            ("TERRACE_MAPS_TIMEOUT", "3s"),
            ("TERRACE_SHUTDOWN_GRACE", "5s"),
            ("TERRACE_DB_ACQUIRE_TIMEOUT", "2s"),
            ("TERRACE_MAX_RUNNING", "1000"),
        ],
    );
    let mut servers: Vec<Proc> =
        (0..3).map(|i| cluster::server(&bin, &dir, &format!("terrace-{i}"), &env)).collect::<Result<_>>()?;
    say(
        start,
        &format!(
            "three instances up: {}",
            servers.iter().map(|s| s.addr.clone()).collect::<Vec<_>>().join(", ")
        ),
    );

    let bases: Vec<String> = servers.iter().map(Proc::url).collect();
    let done = Arc::new(AtomicUsize::new(0));
    let driver = {
        let (bases, done) = (bases.clone(), done.clone());
        rt.spawn(async move { drive(bases, generations, done).await })
    };

    // Kill one instance once a third of the creates went out; restart it.
    wait_until(Duration::from_secs(120), || done.load(Ordering::SeqCst) >= generations / 3);
    servers[0].kill();
    say(start, &format!("killed terrace-0 with SIGKILL ({} creates sent)", done.load(Ordering::SeqCst)));
    std::thread::sleep(Duration::from_secs(2));
    servers[0] = cluster::server(&bin, &dir, "terrace-0-restarted", &env)?;
    say(start, &format!("restarted terrace-0 on {}", servers[0].addr));

    wait_until(Duration::from_secs(120), || done.load(Ordering::SeqCst) >= 2 * generations / 3);
    pg.restart().context("restarting Postgres")?;
    say(start, &format!("restarted Postgres (immediate) ({} creates sent)", done.load(Ordering::SeqCst)));

    let (accepted, drove) = rt.block_on(driver)??;
    say(start, &format!("creates finished: {drove}"));

    // Wait for every generation to end: at most a deadline plus a lease and a sweep.
    let bound = GENERATION_TIMEOUT + LEASE_TTL + SWEEP + Duration::from_secs(15);
    let waited = Instant::now();
    loop {
        let unfinished: u64 =
            cluster::sql(&pg, "SELECT count(*) FROM generations WHERE status IN ('pending','processing')")?
                .parse()?;
        if unfinished == 0 {
            break;
        }
        if waited.elapsed() > bound {
            say(start, &format!("{unfinished} generations still unfinished after {bound:?}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let outcomes = cluster::sql(
        &pg,
        "SELECT string_agg(status || ' ' || n, ', ') FROM (SELECT status, count(*) n FROM generations GROUP BY status ORDER BY status) s",
    )?;
    let codes = cluster::sql(
        &pg,
        "SELECT coalesce(string_agg(coalesce(error_code, 'completed') || ' ' || n, ', '), '') FROM (SELECT error_code, count(*) n FROM generation_areas GROUP BY error_code ORDER BY 2 DESC) s",
    )?;
    let latest = cluster::sql(
        &pg,
        "SELECT coalesce(round(max(extract(epoch FROM completed_at - deadline_at))::numeric, 2)::text, 'none') FROM generations WHERE completed_at > deadline_at",
    )?;
    let resumed = cluster::sql(&pg, "SELECT count(*) FROM generations WHERE attempt > 1")?;
    let internal = cluster::sql(
        &pg,
        "SELECT coalesce(string_agg(DISTINCT error_message, '; '), 'none') FROM generation_areas WHERE error_code = 'internal'",
    )?;
    let ledger = LedgerCheck::read(&pg, LEASE_TTL + SWEEP)?;
    say(start, &format!("generations by status: {outcomes}"));
    say(start, &format!("areas by error code: {codes}"));
    say(start, &format!("generations resumed by another attempt: {resumed}"));
    say(start, &format!("internal failures: {internal}"));
    say(
        start,
        &format!("latest end past a deadline: {latest} s (allowed {} s)", (LEASE_TTL + SWEEP).as_secs()),
    );
    say(start, &format!("ledger: {}", ledger.to_json()));
    let report = json!({"generations": generations, "creates": drove, "outcomes": outcomes, "area_codes": codes, "resumed": resumed, "internal": internal, "latest_past_deadline_s": latest, "ledger": ledger.to_json()});
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    for s in &mut servers {
        s.terminate(Duration::from_secs(10));
    }
    if !ledger.ok() {
        bail!("chaos: the promises did not hold: {}", ledger.to_json());
    }
    if ledger.generations != accepted as u64 {
        bail!("chaos: {accepted} creates were accepted but {} generations exist", ledger.generations);
    }
    say(
        start,
        "every accepted create stored, every generation terminal, no hold open, every account conserved, none late",
    );
    Ok(())
}

fn wait_until(bound: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() && start.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn script_faults(sim: &Proc) -> Result<()> {
    let http = reqwest::Client::new();
    let faults = [
        ("gemini", json!({"kind": "status", "status": 503}), 30),
        ("gemini", json!({"kind": "status", "status": 429, "retry_delay_ms": 500}), 15),
        ("gemini", json!({"kind": "hang_before_headers"}), 15),
        ("gemini", json!({"kind": "stall_after_first_event"}), 15),
        ("gemini", json!({"kind": "connection_reset"}), 15),
        ("gemini", json!({"kind": "blocked_prompt", "reason": "SAFETY"}), 10),
        ("gemini", json!({"kind": "no_image"}), 10),
        ("gemini", json!({"kind": "error_event", "status": 500}), 10),
        ("gemini", json!({"kind": "status", "status": 400}), 5),
        // Below the silence limit forever: only the area's deadline ends these.
        ("gemini", json!({"kind": "drip_events", "every_ms": 1000}), 10),
        ("geocode", json!({"kind": "maps_status", "status": "OVER_QUERY_LIMIT"}), 15),
        ("geocode", json!({"kind": "maps_status", "status": "ZERO_RESULTS"}), 5),
        ("static_map", json!({"kind": "status", "status": 503}), 10),
    ];
    for (endpoint, behaviour, times) in faults {
        let body = json!({"endpoint": endpoint, "behaviour": behaviour, "times": times});
        post(&http, &format!("{}/_sim/script", sim.url()), body).await?;
    }
    let latency =
        json!({"endpoint": "gemini", "behaviour": {"kind": "latency", "delay_ms": 2000}, "default": true});
    post(&http, &format!("{}/_sim/script", sim.url()), latency).await
}

async fn post(http: &reqwest::Client, url: &str, body: serde_json::Value) -> Result<()> {
    let r = http.post(url).body(body.to_string()).timeout(Duration::from_secs(10)).send().await?;
    if !r.status().is_success() {
        bail!("{url}: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    Ok(())
}

/// Creates `n` generations across the instances, moving to the next
/// instance (with the same idempotency key) when one does not answer.
async fn drive(bases: Vec<String>, n: usize, done: Arc<AtomicUsize>) -> Result<(usize, String)> {
    let http = reqwest::Client::new();
    let users: Vec<Uuid> = (0..(n / 5).max(1)).map(|_| Uuid::new_v4()).collect();
    for u in &users {
        cluster::grant(&http, &bases[1], *u, 20, "chaos").await?;
    }
    let config = ClientConfig { max_attempts: 3, ..ClientConfig::interactive() };
    let results: Vec<Result<(), ClientError>> = futures::stream::iter(0..n)
        .map(|i| {
            let (bases, users, config, done) = (bases.clone(), users.clone(), config.clone(), done.clone());
            async move {
                let user = users[i % users.len()];
                let kinds = [AreaKind::FrontYard, AreaKind::Backyard, AreaKind::Patio];
                let areas =
                    kinds[..1 + i % 3].iter().map(|a| AreaSpec::new(*a, Style::Mediterranean)).collect();
                let request = CreateRequest::new(format!("{} Chaos Road, Springfield", 10 + i), areas);
                let key = Uuid::new_v4().to_string();
                let mut last = Err(ClientError::Connect("no instance tried".into()));
                for k in 0..bases.len() {
                    let client = Client::new(
                        &bases[(i + k) % bases.len()],
                        &cluster::token(user, false),
                        config.clone(),
                    )?;
                    last = client.create_with_key(&request, &key).await.map(drop);
                    match &last {
                        Err(e)
                            if e.retryable()
                                || matches!(e, ClientError::Timeout | ClientError::Transport(_)) =>
                        {
                            continue;
                        }
                        _ => break,
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                // Pace the run so that the kill and the restart land mid-run.
                tokio::time::sleep(Duration::from_millis(50)).await;
                last
            }
        })
        .buffer_unordered(20)
        .collect()
        .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        *errors.entry(cluster::error_key(e)).or_default() += 1;
    }
    Ok((ok, format!("{ok} created, refused or failed: {errors:?}")))
}
