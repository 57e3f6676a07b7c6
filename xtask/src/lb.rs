//! `cargo xtask lb`: Terrace behind HAProxy through a rolling restart.
//!
//! Postgres, the simulator, three Terrace instances on fixed loopback ports
//! and HAProxy in front of them with `deploy/haproxy.cfg`. For a bounded time
//! (60 s unless `--duration` says otherwise) clients create generations (each
//! with an `Idempotency-Key`), read their status and follow their event
//! streams, all through the load balancer, with no retries of their own.
//! Meanwhile each instance in turn gets SIGTERM, is waited for until it
//! exited, is started again on its port and is waited for until HAProxy
//! routes to it again; then the next. The run passes only if no request
//! failed, every event stream ended with its generation's terminal event or
//! a clean close, every generation ended and was stored once, and every hold
//! resolved with every account conserved.

use crate::cluster::{self, LedgerCheck, Proc};
use crate::postgres::TestPostgres;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use terrace_client::wire::Problem;
use terrace_client::{AreaSpec, CreateRequest, Generation};
use terrace_domain::{AreaKind, GenerationStatus, Style};
use tokio::task::JoinHandle;
use uuid::Uuid;

const INSTANCES: usize = 3;
const LEASE_TTL: Duration = Duration::from_secs(6);
const SWEEP: Duration = Duration::from_secs(2);
const GENERATION_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long the simulated model takes per design.
const MODEL_LATENCY_MS: u64 = 2000;
/// How long an instance may take to come back into HAProxy's rotation.
const READY_BOUND: Duration = Duration::from_secs(30);
/// A non-streaming request answers within this, or it failed (HAProxy's
/// server timeout is 35 s).
const REQUEST_BOUND: Duration = Duration::from_secs(40);
/// An event stream sends something at least every keepalive (15 s).
const STREAM_SILENCE_BOUND: Duration = Duration::from_secs(20);
/// The users each creator takes turns among.
const USERS_PER_CREATOR: usize = 4;

#[derive(Debug, Clone)]
struct Options {
    duration: Duration,
    creators: usize,
    /// The HAProxy configuration to run (to try a change to it).
    config: PathBuf,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options {
            duration: Duration::from_secs(60),
            creators: 4,
            config: PathBuf::from("deploy/haproxy.cfg"),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--duration" => o.duration = parse_duration(value)?,
                "--creators" => o.creators = value.parse::<usize>()?.max(1),
                "--config" => o.config = PathBuf::from(value),
                _ => bail!("unknown flag {flag}: use --duration 60s --creators N --config FILE"),
            }
        }
        Ok(o)
    }
}

/// `90`, `90s`, `2m` or `500ms`.
fn parse_duration(s: &str) -> Result<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().with_context(|| format!("{s:?} is not a duration like 60s"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        _ => bail!("{s:?} is not a duration like 60s"),
    })
}

fn say(start: Instant, what: &str) {
    println!("[{:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn find_haproxy() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("haproxy")).find(|p| p.is_file()).context(
        "haproxy not found: install HAProxy 2.6 or later (Debian: apt-get install haproxy; .ci/run does)",
    )
}

/// Which request a figure is about.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Create,
    Status,
    Stream,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Create, Kind::Status, Kind::Stream];
    fn name(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Status => "status",
            Kind::Stream => "stream",
        }
    }
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    requests: [AtomicU64; 3],
    /// Failures by kind and reason.
    failures: Mutex<BTreeMap<String, u64>>,
    /// The longest wait by kind, in microseconds: until the answer, or for a
    /// stream until its first event.
    longest: [AtomicU64; 3],
    /// The longest wait of a request that overlapped a restart.
    longest_in_restart: AtomicU64,
    /// Odd while an instance is being restarted; each restart adds two.
    epoch: AtomicU64,
    streams_opened: AtomicU64,
    streams_terminal: AtomicU64,
    streams_clean_closes: AtomicU64,
    streams_broken: AtomicU64,
    /// The longest time from a stream's clean close to the next stream's
    /// first event, in microseconds.
    longest_reconnect: AtomicU64,
    generations_seen_terminal: AtomicU64,
    /// Generations created, with the index of the user who owns each.
    created: Mutex<Vec<(Uuid, usize)>>,
    stop: AtomicBool,
}

impl Seen {
    fn begin(&self) -> (Instant, u64) {
        (Instant::now(), self.epoch.load(Ordering::SeqCst))
    }

    /// Records one request that started at `began` (with the epoch then).
    fn record(&self, kind: Kind, (began, epoch): (Instant, u64), outcome: Result<(), String>) {
        let waited = began.elapsed().as_micros() as u64;
        self.requests[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.longest[kind as usize].fetch_max(waited, Ordering::Relaxed);
        if epoch % 2 == 1 || self.epoch.load(Ordering::SeqCst) != epoch {
            self.longest_in_restart.fetch_max(waited, Ordering::Relaxed);
        }
        if let Err(why) = outcome {
            self.fail(kind, &why);
        }
    }

    fn fail(&self, kind: Kind, why: &str) {
        let key = format!("{}: {why}", kind.name());
        *self.failures.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += 1;
    }

    fn failures(&self) -> BTreeMap<String, u64> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A failure as a report key: the status and the problem's code, or the error.
async fn status_failure(r: reqwest::Response) -> String {
    let status = r.status().as_u16();
    let code = r.text().await.ok().and_then(|t| serde_json::from_str::<Problem>(&t).ok()).map(|p| p.code);
    format!("{status} {}", code.unwrap_or_default())
}

/// One server as HAProxy sees it.
#[derive(Debug, Clone, Default)]
struct ServerStat {
    /// `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (coming up), …
    status: String,
    /// Sessions it has been given since HAProxy started.
    sessions: u64,
}

/// HAProxy's view of the backend's servers by name, from `show stat` on the
/// runtime API socket.
fn server_stats(socket: &Path) -> Result<HashMap<String, ServerStat>> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to HAProxy's socket {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"show stat\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(px), Some(sv), Some(status), Some(stot)) =
        (col("pxname"), col("svname"), col("status"), col("stot"))
    else {
        bail!("unexpected `show stat` answer: {text}");
    };
    Ok(lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(px) == Some(&"terrace") && f.get(sv).is_some_and(|s| s.starts_with("terrace-")))
        .map(|f| {
            let field = |i: usize| f.get(i).copied().unwrap_or_default();
            let stat =
                ServerStat { status: field(status).to_owned(), sessions: field(stot).parse().unwrap_or(0) };
            (field(sv).to_owned(), stat)
        })
        .collect())
}

/// Waits (at most `bound`) until HAProxy's view of `server` satisfies `want`.
fn wait_for_server(
    socket: &Path,
    server: &str,
    bound: Duration,
    what: &str,
    want: impl Fn(&ServerStat) -> bool,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let stat = server_stats(socket)?.remove(server).unwrap_or_default();
        if want(&stat) {
            return Ok(());
        }
        if start.elapsed() > bound {
            bail!("{server} is not {what} after {bound:?}: HAProxy says {stat:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The figures of one restart.
#[derive(Debug)]
struct Restart {
    server: String,
    /// SIGTERM until HAProxy no longer saw it as UP.
    out_of_rotation: Duration,
    /// SIGTERM until the process exited.
    exited: Duration,
    /// Its start until HAProxy routed to it again.
    back_in_rotation: Duration,
}

pub fn run(args: &[String]) -> Result<()> {
    let o = Options::parse(args)?;
    let haproxy = find_haproxy()?;
    let bin = cluster::build()?;
    let dir = PathBuf::from("target/lb");
    std::fs::create_dir_all(&dir)?;
    let start = Instant::now();
    let pg = TestPostgres::start()?;
    let sim = cluster::simulator(&bin, &dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(script_latency(&sim))?;

    // Each instance keeps its port across restarts, as behind a real load
    // balancer whose configuration names them.
    let ports: Vec<u16> = (0..INSTANCES).map(|_| free_port()).collect::<Result<_>>()?;
    let (ttl, sweep, deadline, grace) = (
        format!("{}s", LEASE_TTL.as_secs()),
        format!("{}s", SWEEP.as_secs()),
        format!("{}s", GENERATION_TIMEOUT.as_secs()),
        format!("{}s", SHUTDOWN_GRACE.as_secs()),
    );
    let envs: Vec<Vec<(String, String)>> = ports
        .iter()
        .map(|port| {
            let bind = format!("127.0.0.1:{port}");
            cluster::server_env(
                &pg,
                &sim,
                &[
                    ("TERRACE_BIND", &bind),
                    ("TERRACE_LEASE_TTL", &ttl),
                    ("TERRACE_SWEEP_INTERVAL", &sweep),
                    ("TERRACE_GENERATION_TIMEOUT", &deadline),
                    ("TERRACE_AREA_TIMEOUT", "45s"),
                    ("TERRACE_SHUTDOWN_GRACE", &grace),
                    ("TERRACE_DB_ACQUIRE_TIMEOUT", "2s"),
                ],
            )
        })
        .collect();
    cluster::migrate(&bin, &envs[0])?;
    let mut servers: Vec<Proc> = (0..INSTANCES)
        .map(|i| cluster::server(&bin, &dir, &format!("terrace-{i}"), &envs[i]))
        .collect::<Result<_>>()?;

    // HAProxy, from the deployment's own file, filled in through the environment.
    let lb_addr = format!("127.0.0.1:{}", free_port()?);
    let socket = std::path::absolute(dir.join("haproxy.sock"))?;
    let _ = std::fs::remove_file(&socket);
    // A stream lives at most the generation timeout plus one minute.
    let stream_timeout = format!("{}s", (GENERATION_TIMEOUT + Duration::from_secs(70)).as_secs());
    let mut lb_env = vec![
        ("TERRACE_LB_BIND".to_owned(), lb_addr.clone()),
        ("TERRACE_LB_ADMIN_BIND".to_owned(), format!("127.0.0.1:{}", free_port()?)),
        ("TERRACE_LB_SOCKET".to_owned(), socket.display().to_string()),
        ("TERRACE_LB_STREAM_TIMEOUT".to_owned(), stream_timeout),
    ];
    for (i, port) in ports.iter().enumerate() {
        lb_env.push((format!("TERRACE_BACKEND_{i}"), format!("127.0.0.1:{port}")));
    }
    let lb_log = dir.join("haproxy.log");
    let config = o.config.to_str().context("the configuration's path is not UTF-8")?;
    let mut lb = Proc::start_at(
        "haproxy",
        &haproxy,
        &["-db", "-f", config],
        &lb_env,
        lb_log.clone(),
        &lb_addr,
        Duration::from_secs(10),
    )?;
    for i in 0..INSTANCES {
        wait_for_server(&socket, &format!("terrace-{i}"), READY_BOUND, "UP", |s| s.status == "UP")?;
    }
    say(
        start,
        &format!(
            "HAProxy on {lb_addr} routes to three instances: {}",
            servers.iter().map(|s| s.addr.clone()).collect::<Vec<_>>().join(", ")
        ),
    );

    let seen = Arc::new(Seen::default());
    let lb_url = format!("http://{lb_addr}");
    let driver = {
        let (seen, lb_url, creators) = (seen.clone(), lb_url.clone(), o.creators);
        rt.spawn(async move { drive(lb_url, creators, seen).await })
    };

    // The rolling restart: one instance at a time, each back in rotation
    // before the next goes; more rounds while the run's time lasts.
    wait_until(Duration::from_secs(30), || seen.created.lock().map(|c| c.len() >= 8).unwrap_or(false));
    say(start, "traffic flowing; rolling restart begins");
    let mut restarts: Vec<Restart> = Vec::new();
    let drive_start = Instant::now();
    let mut round: u32 = 0;
    let restarted: Result<()> = (|| {
        loop {
            for (i, env) in envs.iter().enumerate() {
                let r = restart(&bin, &dir, &mut servers, i, round, env, &socket, &seen)?;
                say(
                    start,
                    &format!(
                        "restarted {}: exited {:.1} s after SIGTERM, out of HAProxy's rotation after {:.1} s, back in rotation {:.1} s after its start",
                        r.server,
                        r.exited.as_secs_f64(),
                        r.out_of_rotation.as_secs_f64(),
                        r.back_in_rotation.as_secs_f64()
                    ),
                );
                restarts.push(r);
            }
            round += 1;
            let per_round = drive_start.elapsed() / round;
            if drive_start.elapsed() + per_round > o.duration {
                break;
            }
        }
        // The rest of the run's time, traffic only.
        let left = o.duration.saturating_sub(drive_start.elapsed());
        std::thread::sleep(left);
        Ok(())
    })();
    seen.stop.store(true, Ordering::SeqCst);
    say(start, "traffic stopped; following the last generations to their end");
    let driven = rt.block_on(driver);

    // Every generation ends by its deadline plus a lease and a sweep.
    let bound = GENERATION_TIMEOUT + LEASE_TTL + SWEEP + Duration::from_secs(15);
    let waited = Instant::now();
    while waited.elapsed() < bound {
        let unfinished: u64 =
            cluster::sql(&pg, "SELECT count(*) FROM generations WHERE status IN ('pending','processing')")?
                .parse()?;
        if unfinished == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ledger = LedgerCheck::read(&pg, LEASE_TTL + SWEEP)?;
    let outcomes = cluster::sql(
        &pg,
        "SELECT coalesce(string_agg(status || ' ' || n, ', '), 'none') FROM (SELECT status, count(*) n FROM generations GROUP BY status ORDER BY status) s",
    )?;
    let resumed = cluster::sql(&pg, "SELECT count(*) FROM generations WHERE attempt > 1")?;
    for s in &mut servers {
        s.terminate(SHUTDOWN_GRACE + Duration::from_secs(5));
    }
    lb.terminate(Duration::from_secs(5));
    let lb_seen = LbLog::read(&lb_log);

    let created = seen.created.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    let failures = seen.failures();
    let requests: u64 = seen.requests.iter().map(|r| r.load(Ordering::Relaxed)).sum();
    let by_kind: serde_json::Map<String, serde_json::Value> = Kind::ALL
        .iter()
        .map(|k| {
            (
                k.name().to_owned(),
                json!({
                    "requests": seen.requests[*k as usize].load(Ordering::Relaxed),
                    "longest_wait_ms": ms(seen.longest[*k as usize].load(Ordering::Relaxed)),
                }),
            )
        })
        .collect();
    let report = json!({
        "duration_s": o.duration.as_secs_f64(),
        "creators": o.creators,
        "restarts": restarts.iter().map(|r| json!({
            "server": r.server,
            "out_of_rotation_s": r.out_of_rotation.as_secs_f64(),
            "exited_s": r.exited.as_secs_f64(),
            "back_in_rotation_s": r.back_in_rotation.as_secs_f64(),
        })).collect::<Vec<_>>(),
        "requests": requests,
        "by_kind": by_kind,
        "failures": failures,
        "longest_wait_during_restarts_ms": ms(seen.longest_in_restart.load(Ordering::Relaxed)),
        "streams": {
            "opened": seen.streams_opened.load(Ordering::Relaxed),
            "ended_with_terminal_event": seen.streams_terminal.load(Ordering::Relaxed),
            "closed_cleanly_then_reconnected": seen.streams_clean_closes.load(Ordering::Relaxed),
            "broken": seen.streams_broken.load(Ordering::Relaxed),
            "longest_reconnect_ms": ms(seen.longest_reconnect.load(Ordering::Relaxed)),
        },
        "generations": {
            "created": created,
            "seen_terminal_by_clients": seen.generations_seen_terminal.load(Ordering::Relaxed),
            "by_status": outcomes,
            "resumed_by_another_attempt": resumed,
        },
        "load_balancer": {
            "requests_logged": lb_seen.requests,
            "retried": lb_seen.retried,
            "redispatched": lb_seen.redispatched,
            "answered_5xx": lb_seen.server_errors,
        },
        "ledger": ledger.to_json(),
    });
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;

    say(start, &format!("restarts: {} (SIGTERM, exit, start, back in HAProxy's rotation)", restarts.len()));
    say(
        start,
        &format!(
            "requests through the load balancer: {requests} ({}), failed: {}",
            Kind::ALL
                .iter()
                .map(|k| format!("{} {}", k.name(), seen.requests[*k as usize].load(Ordering::Relaxed)))
                .collect::<Vec<_>>()
                .join(", "),
            failures.values().sum::<u64>()
        ),
    );
    for (why, n) in &failures {
        say(start, &format!("  failed: {n} × {why}"));
    }
    say(
        start,
        &format!(
            "streams: {} opened, {} ended with the terminal event, {} closed cleanly by a draining instance and reconnected, {} broken",
            seen.streams_opened.load(Ordering::Relaxed),
            seen.streams_terminal.load(Ordering::Relaxed),
            seen.streams_clean_closes.load(Ordering::Relaxed),
            seen.streams_broken.load(Ordering::Relaxed),
        ),
    );
    say(
        start,
        &format!(
            "longest wait a client saw: {:.0} ms during the restarts (create {:.0} ms, status {:.0} ms, stream's first event {:.0} ms, stream reconnect {:.0} ms over the whole run)",
            ms(seen.longest_in_restart.load(Ordering::Relaxed)),
            ms(seen.longest[Kind::Create as usize].load(Ordering::Relaxed)),
            ms(seen.longest[Kind::Status as usize].load(Ordering::Relaxed)),
            ms(seen.longest[Kind::Stream as usize].load(Ordering::Relaxed)),
            ms(seen.longest_reconnect.load(Ordering::Relaxed)),
        ),
    );
    say(
        start,
        &format!(
            "HAProxy: {} requests logged, {} retried ({} on another instance), {} answered 5xx",
            lb_seen.requests, lb_seen.retried, lb_seen.redispatched, lb_seen.server_errors
        ),
    );
    say(
        start,
        &format!(
            "generations: {created} created, {} seen terminal by their clients; by status: {outcomes}; resumed by another attempt: {resumed}",
            seen.generations_seen_terminal.load(Ordering::Relaxed)
        ),
    );
    say(start, &format!("ledger: {}", ledger.to_json()));

    restarted.context("the rolling restart failed")?;
    driven.context("the clients' task failed")??;
    let mut broken = Vec::new();
    if !failures.is_empty() {
        broken.push(format!("{} requests failed", failures.values().sum::<u64>()));
    }
    if seen.streams_broken.load(Ordering::Relaxed) > 0 {
        broken.push("event streams broke".to_owned());
    }
    if seen.generations_seen_terminal.load(Ordering::Relaxed) != created {
        broken.push("not every generation was seen to end by its client".to_owned());
    }
    if ledger.generations != created {
        broken.push(format!("{created} creates were accepted but {} generations exist", ledger.generations));
    }
    if !ledger.ok() {
        broken.push(format!("the ledger check failed: {}", ledger.to_json()));
    }
    if restarts.len() < INSTANCES {
        broken.push("not every instance was restarted".to_owned());
    }
    if !broken.is_empty() {
        bail!("lb: {}; see {}", broken.join("; "), dir.display());
    }
    say(
        start,
        "no request failed, every stream ended with its terminal event or a clean close, every generation ended and was stored once, no hold open, every account conserved",
    );
    Ok(())
}

fn wait_until(bound: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() && start.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One step of the rolling restart: SIGTERM to instance `i`, wait (bounded)
/// until it exited, start it again on its port, wait (bounded) until HAProxy
/// routes to it again.
#[allow(clippy::too_many_arguments)]
fn restart(
    bin: &Path,
    dir: &Path,
    servers: &mut [Proc],
    i: usize,
    round: u32,
    env: &[(String, String)],
    socket: &Path,
    seen: &Seen,
) -> Result<Restart> {
    let server = format!("terrace-{i}");
    seen.epoch.fetch_add(1, Ordering::SeqCst);
    let sent = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &servers[i].pid().to_string()])
        .status()
        .context("sending SIGTERM")?;
    let mut out_of_rotation = None;
    let bound = SHUTDOWN_GRACE + Duration::from_secs(5);
    let status = loop {
        if out_of_rotation.is_none()
            && server_stats(socket)?.get(&server).is_none_or(|s| !s.status.starts_with("UP"))
        {
            out_of_rotation = Some(sent.elapsed());
        }
        if let Some(status) = servers[i].exited() {
            break status;
        }
        if sent.elapsed() > bound {
            servers[i].kill();
            bail!("{server} did not exit within {bound:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited = sent.elapsed();
    if !status.success() {
        bail!("{server} exited with {status} after SIGTERM; see {}", servers[i].log.display());
    }
    // A quick restart could be back before HAProxy noticed it was gone; wait
    // until it did, so that every restart goes the whole way: out of
    // rotation, then back in once its checks pass.
    if out_of_rotation.is_none() {
        wait_for_server(socket, &server, Duration::from_secs(10), "out of rotation", |s| {
            !s.status.starts_with("UP")
        })?;
    }
    let out_of_rotation = out_of_rotation.unwrap_or(sent.elapsed());
    let started = Instant::now();
    servers[i] = cluster::server(bin, dir, &format!("{server}-round{}", round + 1), env)?;
    wait_for_server(socket, &server, READY_BOUND, "UP", |s| s.status == "UP")?;
    let back_in_rotation = started.elapsed();
    // The next one goes only once this one has taken a share of the traffic.
    let before = server_stats(socket)?.get(&server).map_or(0, |s| s.sessions);
    wait_for_server(socket, &server, READY_BOUND, "taking traffic", |s| s.sessions >= before + 50)?;
    seen.epoch.fetch_add(1, Ordering::SeqCst);
    Ok(Restart { server, out_of_rotation, exited, back_in_rotation })
}

async fn script_latency(sim: &Proc) -> Result<()> {
    let http = reqwest::Client::new();
    let body = json!({"endpoint": "gemini", "behaviour": {"kind": "latency", "delay_ms": MODEL_LATENCY_MS}, "default": true});
    let r = http
        .post(format!("{}/_sim/script", sim.url()))
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("could not script the simulator: {}", r.status());
    }
    Ok(())
}

/// The clients: `creators` users each creating generations one after
/// another, a follower on each generation's event stream, and status
/// readers, until `seen.stop`; then waits (bounded) for the followers.
async fn drive(lb: String, creators: usize, seen: Arc<Seen>) -> Result<()> {
    // Idle connections are dropped well before HAProxy closes them (10 s),
    // so that no request of the run races a close the client caused itself.
    let http = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(5)).build()?;
    // Each creator takes turns among its own users, so that no user holds
    // more event streams at once than TERRACE_MAX_STREAMS_PER_USER (8), and
    // no two creates of one account overlap (409 `account_busy`).
    let users: Vec<Uuid> = (0..creators * USERS_PER_CREATOR).map(|_| Uuid::new_v4()).collect();
    for u in &users {
        cluster::grant(&http, &lb, *u, 100_000, "lb").await?;
    }
    let tokens: Arc<Vec<String>> = Arc::new(users.iter().map(|u| cluster::token(*u, false)).collect());
    let followers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();

    let mut tasks = Vec::new();
    for c in 0..creators {
        let (http, lb, seen, tokens, followers) =
            (http.clone(), lb.clone(), seen.clone(), tokens.clone(), followers.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !seen.stop.load(Ordering::SeqCst) {
                n += 1;
                let user = c * USERS_PER_CREATOR + (n as usize) % USERS_PER_CREATOR;
                if let Some(id) = create(&http, &lb, &tokens[user], c, n, &seen).await {
                    seen.created.lock().unwrap_or_else(|p| p.into_inner()).push((id, user));
                    let (http, lb, seen, token) =
                        (http.clone(), lb.clone(), seen.clone(), tokens[user].clone());
                    let follower = tokio::spawn(async move { follow(&http, &lb, &token, id, &seen).await });
                    followers.lock().unwrap_or_else(|p| p.into_inner()).push(follower);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    for r in 0..4 {
        let (http, lb, seen, tokens) = (http.clone(), lb.clone(), seen.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !seen.stop.load(Ordering::SeqCst) {
                let pick = {
                    let created = seen.created.lock().unwrap_or_else(|p| p.into_inner());
                    (!created.is_empty()).then(|| created[fastrand::usize(..created.len())])
                };
                if let Some((id, owner)) = pick {
                    n += 1;
                    status(&http, &lb, &tokens[owner], id, &format!("lb-s{r}-{n}"), &seen).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    // Every follower ends by its generation's end, bounded in `follow`.
    let followers = std::mem::take(&mut *followers.lock().unwrap_or_else(|p| p.into_inner()));
    for f in followers {
        f.await?;
    }
    Ok(())
}

/// One create through the load balancer, with an idempotency key (so that
/// the load balancer may send it again) and a request id that must come
/// back. Returns the generation's id when it was accepted.
async fn create(
    http: &reqwest::Client,
    lb: &str,
    token: &str,
    c: usize,
    n: u64,
    seen: &Seen,
) -> Option<Uuid> {
    let areas = [(AreaKind::Backyard, Style::JapaneseZen), (AreaKind::FrontYard, Style::Mediterranean)]
        [..1 + (n as usize) % 2]
        .iter()
        .map(|(area, style)| AreaSpec::new(*area, *style))
        .collect();
    let body = CreateRequest::new(format!("{} Rolling Lane, Springfield", 10 + n), areas);
    let request_id = format!("lb-c{c}-{n}");
    let began = seen.begin();
    let sent = http
        .post(format!("{lb}/v1/generations"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("idempotency-key", Uuid::new_v4().to_string())
        .header("x-request-id", &request_id)
        .body(serde_json::to_string(&body).expect("a create request serialises"))
        .timeout(REQUEST_BOUND)
        .send()
        .await;
    let (outcome, id) = match sent {
        Err(e) => (Err(chain(&e)), None),
        Ok(r) if r.status() != reqwest::StatusCode::ACCEPTED => (Err(status_failure(r).await), None),
        Ok(r) => {
            let echoed = r.headers().get("x-request-id").and_then(|v| v.to_str().ok()) == Some(&request_id);
            let id =
                r.text().await.ok().and_then(|t| serde_json::from_str::<Generation>(&t).ok()).map(|g| g.id);
            match (echoed, id) {
                (false, _) => (Err("X-Request-Id did not come back".to_owned()), id),
                (true, None) => (Err("202 without a generation id".to_owned()), None),
                (true, Some(id)) => (Ok(()), Some(id)),
            }
        }
    };
    seen.record(Kind::Create, began, outcome);
    id
}

async fn status(http: &reqwest::Client, lb: &str, token: &str, id: Uuid, request_id: &str, seen: &Seen) {
    let began = seen.begin();
    let sent = http
        .get(format!("{lb}/v1/generations/{id}"))
        .bearer_auth(token)
        .header("x-request-id", request_id)
        .timeout(REQUEST_BOUND)
        .send()
        .await;
    let outcome = match sent {
        Err(e) => Err(chain(&e)),
        Ok(r) if r.status() != reqwest::StatusCode::OK => Err(status_failure(r).await),
        Ok(r) => match r.text().await {
            Ok(t) if serde_json::from_str::<Generation>(&t).is_ok_and(|g| g.id == id) => Ok(()),
            Ok(_) => Err("200 without the generation".to_owned()),
            Err(e) => Err(format!("body: {}", chain(&e))),
        },
    };
    seen.record(Kind::Status, began, outcome);
}

/// How one event stream ended.
enum End {
    /// It sent the terminal state and then closed.
    Terminal,
    /// It closed cleanly before the terminal state (a draining instance).
    Closed,
    /// It broke after it was opened: a failure.
    Broken(String),
    /// It could not be opened (recorded as a failed request).
    NotOpened,
}

/// Follows generation `id` over its event stream through the load balancer
/// until it sees a terminal state, reconnecting after a clean close; bounded
/// by the generation's deadline plus a lease and a sweep and some slack.
async fn follow(http: &reqwest::Client, lb: &str, token: &str, id: Uuid, seen: &Seen) {
    let until = Instant::now() + GENERATION_TIMEOUT + LEASE_TTL + SWEEP + Duration::from_secs(30);
    let mut closed_at: Option<Instant> = None;
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        match stream_once(http, lb, token, id, &format!("lb-f-{id}-{n}"), seen, &mut closed_at).await {
            End::Terminal => {
                seen.streams_terminal.fetch_add(1, Ordering::Relaxed);
                seen.generations_seen_terminal.fetch_add(1, Ordering::Relaxed);
                return;
            }
            End::Closed => {
                seen.streams_clean_closes.fetch_add(1, Ordering::Relaxed);
                closed_at = Some(Instant::now());
            }
            End::Broken(why) => {
                seen.streams_broken.fetch_add(1, Ordering::Relaxed);
                seen.fail(Kind::Stream, &why);
                closed_at = Some(Instant::now());
                // Not at once: this is already a failure.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            End::NotOpened => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    seen.fail(Kind::Stream, "no terminal event within the generation's bound");
}

/// One event stream: opened, read until its end. The time to its first
/// event is the request's wait.
async fn stream_once(
    http: &reqwest::Client,
    lb: &str,
    token: &str,
    id: Uuid,
    request_id: &str,
    seen: &Seen,
    closed_at: &mut Option<Instant>,
) -> End {
    let began = seen.begin();
    let open = tokio::time::timeout(
        REQUEST_BOUND,
        http.get(format!("{lb}/v1/generations/{id}/events"))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .header("x-request-id", request_id)
            .send(),
    )
    .await;
    let mut r = match open {
        Err(_) => {
            seen.record(Kind::Stream, began, Err("no answer within the bound".to_owned()));
            return End::NotOpened;
        }
        Ok(Err(e)) => {
            seen.record(Kind::Stream, began, Err(chain(&e)));
            return End::NotOpened;
        }
        Ok(Ok(r)) if r.status() != reqwest::StatusCode::OK => {
            let why = status_failure(r).await;
            seen.record(Kind::Stream, began, Err(why));
            return End::NotOpened;
        }
        Ok(Ok(r)) => r,
    };
    let event_stream = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    if !event_stream {
        seen.record(Kind::Stream, began, Err("not text/event-stream".to_owned()));
        return End::NotOpened;
    }
    seen.streams_opened.fetch_add(1, Ordering::Relaxed);
    let mut buf: Vec<u8> = Vec::new();
    let mut first = true;
    let mut terminal = false;
    loop {
        let chunk = match tokio::time::timeout(STREAM_SILENCE_BOUND, r.chunk()).await {
            Err(_) => {
                return End::Broken(format!("silent for {STREAM_SILENCE_BOUND:?}"));
            }
            Ok(Err(e)) => return End::Broken(format!("broken: {}", chain(&e))),
            Ok(Ok(None)) if terminal => return End::Terminal,
            Ok(Ok(None)) => {
                if first {
                    seen.record(Kind::Stream, began, Ok(()));
                }
                return End::Closed;
            }
            Ok(Ok(Some(bytes))) => bytes,
        };
        buf.extend_from_slice(&chunk);
        while let Some(at) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..at + 2).collect();
            let Some(status) = generation_status(&frame) else { continue };
            if first {
                first = false;
                seen.record(Kind::Stream, began, Ok(()));
                if let Some(at) = closed_at.take() {
                    seen.longest_reconnect.fetch_max(at.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
            }
            if terminal {
                return End::Broken("an event after the terminal one".to_owned());
            }
            terminal = status.is_terminal();
        }
    }
}

/// The generation's status in an `event: generation` frame; `None` for a
/// comment (keepalive).
fn generation_status(frame: &[u8]) -> Option<GenerationStatus> {
    let text = std::str::from_utf8(frame).ok()?;
    if !text.lines().any(|l| l == "event: generation") {
        return None;
    }
    let data: String = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    serde_json::from_str::<Generation>(&data).ok().map(|g| g.status)
}

/// What HAProxy's log says about the requests it proxied.
#[derive(Debug, Default)]
struct LbLog {
    requests: u64,
    retried: u64,
    redispatched: u64,
    server_errors: u64,
}

impl LbLog {
    /// Reads the request lines of `deploy/haproxy.cfg`'s log format:
    /// `… %ST %B %tsc %ac/%fc/%bc/%sc/%rc …`.
    fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut seen = Self::default();
        // A client closing an idle connection is logged as a `<BADREQ>`.
        for line in text.lines().filter(|l| l.contains(" terrace_public ") && !l.ends_with("\"<BADREQ>\"")) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(status), Some(conns)) = (fields.get(5), fields.get(8)) else { continue };
            seen.requests += 1;
            if status.parse::<u16>().is_ok_and(|s| s >= 500) {
                seen.server_errors += 1;
            }
            let retries = conns.rsplit('/').next().unwrap_or("0");
            if retries != "0" {
                seen.retried += 1;
            }
            if retries.starts_with('+') {
                seen.redispatched += 1;
            }
        }
        seen
    }
}
